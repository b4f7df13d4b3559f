//! Fuzz/property campaign over checkpoint loading (issue 14): mutated safetensors headers
//! of `testdata/tiny-bytes/model.safetensors` (length prefix, JSON, dtype, shape,
//! data_offsets), damaged header bytes, truncated and random files, and configs whose
//! shapes disagree with the tensors, each written to a temporary model directory and
//! loaded with `ModelDir::open` + `load_weights`. The default suite runs a short seeded
//! campaign; `SHARDLM_LONG_TESTS=1` runs 10^5 cases:
//!
//! ```text
//! SHARDLM_LONG_TESTS=1 cargo test --release -p shardlm-model --test fuzz_safetensors -- --nocapture
//! ```
//!
//! Every case ends in weights (only where the file is still a valid checkpoint of the
//! config) or a `LoadError` naming the file, having allocated at most twice the file.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use shardlm_model::{LoadError, ModelDir, Weights};
use shardlm_testkit::campaign::{self, CaseResult, Outcome, PeakAlloc};
use shardlm_testkit::fixtures;
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

struct Original {
    file: Vec<u8>,
    header: Value,
    header_len: usize,
    config: Value,
    weights: Weights,
}

fn original() -> &'static Original {
    static O: OnceLock<Original> = OnceLock::new();
    O.get_or_init(|| {
        let dir = fixtures::tiny_bytes();
        let file = std::fs::read(dir.join("model.safetensors")).unwrap();
        let header_len = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
        let header = serde_json::from_slice(&file[8..8 + header_len]).unwrap();
        let config = serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        let weights = ModelDir::open(&dir).unwrap().load_weights().unwrap();
        Original { file, header, header_len, config, weights }
    })
}

thread_local! {
    /// This thread's model directory (config.json, tokenizer.json, model.safetensors).
    static DIR: RefCell<Option<tempfile::TempDir>> = const { RefCell::new(None) };
}

fn model_dir() -> PathBuf {
    DIR.with(|d| {
        let mut d = d.borrow_mut();
        let dir = d.get_or_insert_with(|| {
            let t = tempfile::tempdir().unwrap();
            std::fs::copy(fixtures::tiny_bytes().join("tokenizer.json"), t.path().join("tokenizer.json"))
                .unwrap();
            t
        });
        dir.path().to_path_buf()
    })
}

fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    if n == 0 {
        0
    } else {
        rng.next_u64() % n
    }
}

fn huge(rng: &mut ChaCha8Rng) -> Value {
    match below(rng, 8) {
        0 => json!(1u64 << 40),
        1 => json!(1u64 << 63),
        2 => json!(u64::MAX),
        3 => json!(-1),
        4 => json!(1.5),
        5 => json!(0),
        6 => json!((1u64 << 32) + 1),
        _ => json!(rng.next_u64()),
    }
}

/// One structural change to a parsed header.
fn mutate_header(rng: &mut ChaCha8Rng, header: &mut Value) {
    let Value::Object(map) = header else { return };
    let names: Vec<String> = map.keys().filter(|k| *k != "__metadata__").cloned().collect();
    if names.is_empty() {
        return;
    }
    let name = names[below(rng, names.len() as u64) as usize].clone();
    let (s, e) = {
        let o = &map[&name]["data_offsets"];
        (o[0].as_u64().unwrap_or(0), o[1].as_u64().unwrap_or(0))
    };
    let file_len = original().file.len() as u64;
    let t = map.get_mut(&name).unwrap();
    match below(rng, 14) {
        0 | 1 => {
            t["dtype"] = json!(
                ["F16", "F32", "F64", "I16", "U8", "BOOL", "I64", "F8_E4M3", "bf16", ""]
                    [below(rng, 10) as usize]
            );
            if below(rng, 5) == 0 {
                t["dtype"] = huge(rng);
            }
        }
        2..=4 => {
            let Some(shape) = t["shape"].as_array_mut().filter(|s| !s.is_empty()) else {
                t["shape"] = json!([64]);
                return;
            };
            let at = below(rng, shape.len() as u64) as usize;
            match below(rng, 8) {
                0 => shape.push(json!(1 + below(rng, 2))),
                1 => shape[at] = json!(shape[at].as_u64().unwrap_or(1).saturating_mul(2)),
                2 => shape[at] = json!(0),
                3 => shape[at] = huge(rng),
                4 => shape.clear(),
                5 => shape.reverse(),
                6 => {
                    shape.remove(at);
                }
                _ => t["shape"] = json!("64"),
            }
        }
        5..=8 => {
            let k = 1 + below(rng, 4096);
            t["data_offsets"] = match below(rng, 10) {
                0 => json!([s, e + k]),
                1 => json!([s.saturating_sub(k), e]),
                2 => json!([e, s]),
                3 => json!([0, u64::MAX]),
                4 => json!([s, s]),
                5 => json!([s, 1u64 << 63]),
                6 => json!([s]),
                7 => json!([s, e, e]),
                8 => json!([s + k, e + k]),
                _ => json!([s, file_len + k]),
            };
        }
        9 => {
            map.remove(&name);
        }
        10 => {
            // Renamed, possibly into a layer the config does not have.
            let v = map.remove(&name).unwrap();
            let new =
                ["model.layers.2.mlp.up_proj.weight", "lm_head.weight", "x", ""][below(rng, 4) as usize];
            map.insert(new.into(), v);
        }
        11 => {
            // A second name for the same bytes (overlapping offsets).
            let v = map[&name].clone();
            map.insert(format!("{name}.copy"), v);
        }
        12 => {
            map.insert(
                "__metadata__".into(),
                [json!({"format": 5}), json!([1]), json!("pt")][below(rng, 3) as usize].clone(),
            );
        }
        _ => *header = [json!([]), json!(5), json!("x"), json!(null)][below(rng, 4) as usize].clone(),
    }
}

/// A config that is valid on its own but disagrees with the tiny checkpoint's tensors.
fn mismatched_config(rng: &mut ChaCha8Rng) -> Value {
    let mut c = original().config.clone();
    let (field, value) = [
        ("hidden_size", 32),
        ("hidden_size", 128),
        ("intermediate_size", 64),
        ("intermediate_size", 256),
        ("num_hidden_layers", 1),
        ("num_hidden_layers", 3),
        ("vocab_size", 319),
        ("vocab_size", 321),
        ("num_attention_heads", 2),
        ("num_attention_heads", 8),
        ("num_key_value_heads", 1),
        ("num_key_value_heads", 4),
        ("head_dim", 8),
        ("head_dim", 32),
    ][below(rng, 14) as usize];
    c[field] = json!(value);
    if below(rng, 4) == 0 {
        c["tie_word_embeddings"] = json!(false); // lm_head.weight is then missing
    }
    c
}

fn with_header(header: &Value, data: &[u8]) -> Vec<u8> {
    let text = serde_json::to_vec(header).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend(data);
    out
}

fn rejection(e: &LoadError, dir: &Path) -> Result<String, String> {
    let shown = e.to_string();
    let names_file =
        ["model.safetensors", "config.json"].iter().any(|f| shown.contains(&*dir.join(f).to_string_lossy()));
    if !names_file {
        return Err(format!("the error does not name the file: {shown}"));
    }
    Ok(match e {
        LoadError::Safetensors { detail, .. } => {
            format!("safetensors: {}", detail.split(['(', '"']).next().unwrap_or(""))
        }
        LoadError::Shape { name, .. } => {
            format!("shape of {}", campaign::kind(&name.replace("model.layers.", "L")))
        }
        LoadError::MissingTensor { .. } => "missing tensor".into(),
        LoadError::Dtype { dtype, .. } => format!("dtype {dtype}"),
        LoadError::ExtraLayer { .. } => "tensor of a layer beyond the config".into(),
        LoadError::Io { .. } => "io".into(),
        LoadError::Config { source, .. } => format!("config: {}", campaign::kind(&source.to_string())),
        other => return Err(format!("unexpected error kind: {other:?}")),
    })
}

fn load_case(i: u64) -> CaseResult {
    let o = original();
    let mut rng = ChaCha8Rng::seed_from_u64(0x5AFE_7E25 ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let data = &o.file[8 + o.header_len..];
    let mut config = o.config.clone();
    let mut must_reject = false;
    let mut must_match = false;
    let file: Vec<u8> = match below(&mut rng, 20) {
        0 => {
            must_match = true;
            o.file.clone()
        }
        1 => {
            // Tensor bytes changed, header intact: still a valid checkpoint.
            let mut f = o.file.clone();
            let at = 8 + o.header_len + below(&mut rng, data.len() as u64) as usize;
            f[at] ^= 1 << below(&mut rng, 8);
            f
        }
        2 | 3 => {
            config = mismatched_config(&mut rng);
            must_reject = true;
            o.file.clone()
        }
        4..=11 => {
            let mut h = o.header.clone();
            for _ in 0..1 + below(&mut rng, 2) {
                mutate_header(&mut rng, &mut h);
                if !h.is_object() {
                    break;
                }
            }
            with_header(&h, data)
        }
        12 | 13 => {
            let mut f = o.file.clone();
            let n: u64 = match below(&mut rng, 12) {
                0 => 0,
                1 => 1,
                2 => o.header_len as u64 - 1,
                3 => o.header_len as u64 + 1,
                4 => f.len() as u64 - 8,
                5 => f.len() as u64,
                6 => 100_000_000,
                7 => 100_000_001,
                8 => u64::MAX,
                9 => 1 << 63,
                10 => 7,
                _ => rng.next_u64() >> below(&mut rng, 64),
            };
            f[..8].copy_from_slice(&n.to_le_bytes());
            f
        }
        14 | 15 => {
            // Damaged header bytes under an intact length prefix.
            let mut f = o.file.clone();
            for _ in 0..1 + below(&mut rng, 3) {
                let at = 8 + below(&mut rng, o.header_len as u64) as usize;
                match below(&mut rng, 3) {
                    0 => f[at] ^= 1 << below(&mut rng, 8),
                    1 => f[at] = b"{}[],:\"0-9eE \\\x00\xff"[below(&mut rng, 16) as usize],
                    _ => {
                        f.remove(at);
                    }
                }
            }
            f
        }
        16..=18 => {
            let mut f = o.file.clone();
            if below(&mut rng, 4) == 0 {
                let n = 1 + below(&mut rng, 64) as usize;
                f.extend((0..n).map(|_| rng.next_u32() as u8));
            } else {
                // Truncated: inside the prefix, the header, or the tensor data.
                let at = match below(&mut rng, 3) {
                    0 => below(&mut rng, 8),
                    1 => below(&mut rng, 8 + o.header_len as u64),
                    _ => below(&mut rng, f.len() as u64),
                };
                f.truncate(at as usize);
            }
            f
        }
        _ => {
            let n = below(&mut rng, 96) as usize;
            let mut f: Vec<u8> = (0..n).map(|_| rng.next_u32() as u8).collect();
            if n >= 8 && below(&mut rng, 2) == 0 {
                f[..8].copy_from_slice(&((n - 8) as u64).to_le_bytes());
            }
            f
        }
    };

    let dir = model_dir();
    std::fs::write(dir.join("config.json"), serde_json::to_vec(&config).unwrap())
        .map_err(|e| e.to_string())?;
    std::fs::write(dir.join("model.safetensors"), &file).map_err(|e| e.to_string())?;
    campaign::reset_peak();
    let result = ModelDir::open(&dir).and_then(|md| md.load_weights());
    let peak = campaign::peak();
    // bf16 -> f32 doubles a tensor; nothing else is sized by the header.
    let bound = 2 * file.len() + (64 << 10);
    if peak > bound {
        return Err(format!("a {}-byte file made a {peak}-byte allocation", file.len()));
    }
    match result {
        Ok(w) => {
            if must_reject {
                return Err(format!("loaded with a config that disagrees with the tensors: {config}"));
            }
            if must_match && (w.embed != o.weights.embed || w.layers[1].down_w != o.weights.layers[1].down_w)
            {
                return Err("the clean checkpoint loaded different weights".into());
            }
            Ok(Outcome::Accepted)
        }
        Err(e) => {
            if must_match {
                return Err(format!("the clean checkpoint was refused: {e}"));
            }
            Ok(Outcome::Rejected(rejection(&e, &dir)?))
        }
    }
}

/// >= 10^5 checkpoint files in the long run.
#[test]
fn safetensors_campaign() {
    original();
    campaign::run("safetensors", campaign::cases(400, 100_000), load_case);
}

/// A config with fewer layers than the checkpoint used to load silently (the extra
/// layers ignored); it is now refused, naming a tensor of the first extra layer.
#[test]
fn fewer_layers_in_config_than_in_weights_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let src = fixtures::tiny_bytes();
    for f in ["tokenizer.json", "model.safetensors"] {
        std::fs::copy(src.join(f), t.path().join(f)).unwrap();
    }
    let mut config = original().config.clone();
    config["num_hidden_layers"] = json!(1);
    std::fs::write(t.path().join("config.json"), config.to_string()).unwrap();
    let e = ModelDir::open(t.path()).unwrap().load_weights().unwrap_err();
    assert!(matches!(e, LoadError::ExtraLayer { layers: 1, .. }), "{e}");
    assert!(e.to_string().contains("model.safetensors: tensor `model.layers.1."), "{e}");
}

/// Issue 14's reproducer: `num_hidden_layers = 2^40` in config.json made serve, generate
/// and the dealer abort allocating the layer list; the directory now fails to open with
/// the config error naming the file, the field and the bound.
#[test]
fn config_with_2_pow_40_layers_is_a_load_error() {
    let t = tempfile::tempdir().unwrap();
    let src = fixtures::tiny_bytes();
    for f in ["tokenizer.json", "model.safetensors"] {
        std::fs::copy(src.join(f), t.path().join(f)).unwrap();
    }
    let mut config = original().config.clone();
    config["num_hidden_layers"] = json!(1u64 << 40);
    std::fs::write(t.path().join("config.json"), config.to_string()).unwrap();
    let e = ModelDir::open(t.path()).unwrap_err();
    assert!(matches!(e, LoadError::Config { .. }), "{e}");
    let want = format!(
        "{}: model config field `num_hidden_layers`: 1099511627776 is above the supported maximum of 1024",
        t.path().join("config.json").display()
    );
    assert_eq!(e.to_string(), want);
}
