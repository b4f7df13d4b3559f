//! Oracle fixtures: model directories with transformers' reference answers.
//!
//! `testdata/tiny-bytes` is vendored (a random Qwen2 of 250 KB with a byte-level
//! tokenizer; 5 cases with full last-position logits, top-20, all-position argmax and
//! greedy_16 from Hugging Face transformers). `../shared/oracle/tiny-qwen2` (the real
//! Qwen tokenizer, 42 MB) and a real checkpoint (`SHARDLM_REAL_MODEL_DIR`) are optional.

use std::path::{Path, PathBuf};

/// The workspace's `testdata/` directory.
pub fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `testdata/tiny-bytes`: always present.
pub fn tiny_bytes() -> PathBuf {
    testdata().join("tiny-bytes")
}

/// The real checkpoint's reference answers (9 chat prompts) and config, vendored.
pub fn real_reference() -> PathBuf {
    testdata().join("qwen2.5-coder-0.5b-instruct/reference.json")
}

/// `../shared/REL` beside the checkout when it exists; otherwise prints that the
/// calling test skips and returns `None`.
pub fn optional_shared(rel: &str) -> Option<PathBuf> {
    let p = testdata().join("../../shared").join(rel);
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipped: {rel} is not beside the checkout (../shared/{rel}); this optional oracle only runs where it is");
        None
    }
}

/// `../shared/oracle/tiny-qwen2` (real Qwen tokenizer) when present, else a printed skip.
pub fn tiny_qwen2() -> Option<PathBuf> {
    optional_shared("oracle/tiny-qwen2")
}

/// The real Qwen2.5-Coder-0.5B-Instruct directory named by `SHARDLM_REAL_MODEL_DIR`,
/// else a printed skip saying how to get one.
pub fn real_model_dir() -> Option<PathBuf> {
    match std::env::var_os("SHARDLM_REAL_MODEL_DIR") {
        Some(d) => Some(PathBuf::from(d)),
        None => {
            eprintln!("skipped: set SHARDLM_REAL_MODEL_DIR to a Qwen2.5-Coder-0.5B-Instruct directory (`shardlm-client fetch-model` makes one)");
            None
        }
    }
}

/// One case of a reference file.
#[derive(Clone, Debug)]
pub struct Case {
    /// The prompt's token ids.
    pub input_ids: Vec<u32>,
    /// Full last-position logits, when the reference has them.
    pub last_logits: Option<Vec<f32>>,
    /// Top-20 ids of the last position.
    pub top20_ids: Vec<u32>,
    /// Their logits.
    pub top20_logits: Vec<f32>,
    /// Argmax at every position.
    pub argmax_all_positions: Vec<u32>,
    /// Greedy continuation (`greedy_8` or `greedy_16`, whichever the file has).
    pub greedy: Vec<u32>,
}

fn u32s(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().map(|a| a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect()).unwrap_or_default()
}

fn f32s(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().map(|a| a.iter().filter_map(|x| x.as_f64()).map(|x| x as f32).collect()).unwrap_or_default()
}

/// Reads a reference file (`reference.json` of an oracle directory, or a path to one).
pub fn reference(path: &Path) -> Vec<Case> {
    let file = if path.is_dir() { path.join("reference.json") } else { path.to_path_buf() };
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    v["cases"]
        .as_array()
        .unwrap_or_else(|| panic!("{}: no cases", file.display()))
        .iter()
        .map(|c| Case {
            input_ids: u32s(&c["input_ids"]),
            last_logits: c.get("last_logits").map(f32s),
            top20_ids: u32s(&c["top20_ids"]),
            top20_logits: f32s(&c["top20_logits"]),
            argmax_all_positions: u32s(&c["argmax_all_positions"]),
            greedy: u32s(
                c.get("greedy_16").or_else(|| c.get("greedy_8")).unwrap_or(&serde_json::Value::Null),
            ),
        })
        .collect()
}

/// The input ids of every case of an oracle directory.
pub fn case_inputs(dir: &Path) -> Vec<Vec<u32>> {
    reference(dir).into_iter().map(|c| c.input_ids).collect()
}
