//! The plaintext engine against the transformers oracle in `../shared/oracle/tiny-qwen2`
//! (DESIGN.md section 7): full last-position logits within 1e-3, argmax at every
//! position, and greedy_8 identical. With `SHARDLM_REAL_MODEL_DIR` set to a real
//! Qwen2.5-Coder-0.5B-Instruct directory, the same on the nine chat prompts of
//! `../shared/models/qwen2.5-coder-0.5b-instruct/reference.json` (greedy_16).

use shardlm_model::qwen2::forward;
use shardlm_model::sampling::argmax;
use shardlm_model::{ModelDir, PlainEngine, Rows};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

fn load(dir: &Path) -> (ModelDir, PlainEngine) {
    let md = ModelDir::open(dir)
        .unwrap_or_else(|e| panic!("oracle model missing ({e}); ../shared must sit beside the checkout"));
    let w = Arc::new(md.load_weights().expect("oracle weights load"));
    let engine = PlainEngine::new(w, Arc::new(shardlm_gpu::CpuBackend::new()));
    (md, engine)
}

fn greedy(engine: &mut PlainEngine, md: &ModelDir, ids: &[u32], first: u32, n: usize) -> Vec<u32> {
    let mut out = vec![first];
    let mut pos = ids.len();
    while out.len() < n {
        let l = forward(engine, &md.config, &[*out.last().unwrap()], pos, Rows::Last).unwrap().unwrap();
        out.push(argmax(l.last()));
        pos += 1;
    }
    out
}

fn as_u32(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn tiny_qwen2_matches_transformers() {
    let dir = shared().join("oracle/tiny-qwen2");
    let (md, mut engine) = load(&dir);
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let cases = reference["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for (i, case) in cases.iter().enumerate() {
        engine.reset();
        let ids = as_u32(&case["input_ids"]);
        let logits = forward(&mut engine, &md.config, &ids, 0, Rows::All).unwrap().unwrap();
        assert_eq!(logits.rows(), ids.len());
        let want: Vec<f32> =
            case["last_logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        let max_diff = want.iter().zip(logits.last()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(max_diff < 1e-3, "case {i}: max |logit diff| {max_diff}");
        let argmax_all: Vec<u32> = (0..logits.rows()).map(|r| argmax(logits.row(r))).collect();
        assert_eq!(argmax_all, as_u32(&case["argmax_all_positions"]), "case {i}: argmax at every position");
        let g = greedy(&mut engine, &md, &ids, argmax(logits.last()), 8);
        assert_eq!(g, as_u32(&case["greedy_8"]), "case {i}: greedy_8");
    }
}

#[test]
fn decode_with_cache_equals_full_recompute() {
    let (md, mut engine) = load(&shared().join("oracle/tiny-qwen2"));
    let ids = [9707u32, 11, 1246, 525, 498, 30, 42, 7];
    let full = forward(&mut engine, &md.config, &ids, 0, Rows::All).unwrap().unwrap();
    engine.reset();
    forward(&mut engine, &md.config, &ids[..5], 0, Rows::Last).unwrap();
    for (p, &t) in ids.iter().enumerate().skip(5) {
        let step = forward(&mut engine, &md.config, &[t], p, Rows::Last).unwrap().unwrap();
        let diff = step.last().iter().zip(full.row(p)).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(diff < 1e-4, "position {p}: cached decode differs by {diff}");
    }
    // A step that does not continue the cache is an error, not a wrong answer.
    let err = forward(&mut engine, &md.config, &[1], 3, Rows::Last).unwrap_err();
    assert!(err.to_string().contains("KV cache holds 8 positions"), "{err}");
}

#[test]
fn real_qwen25_coder_matches_transformers() {
    let Ok(dir) = std::env::var("SHARDLM_REAL_MODEL_DIR") else {
        eprintln!("skipped: set SHARDLM_REAL_MODEL_DIR to a Qwen2.5-Coder-0.5B-Instruct directory (../shared/tools/fetch-qwen2.5-coder-0.5b.sh makes one)");
        return;
    };
    let (md, mut engine) = load(Path::new(&dir));
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(shared().join("models/qwen2.5-coder-0.5b-instruct/reference.json")).unwrap(),
    )
    .unwrap();
    for (i, case) in reference["cases"].as_array().unwrap().iter().enumerate() {
        engine.reset();
        let ids = as_u32(&case["input_ids"]);
        let logits = forward(&mut engine, &md.config, &ids, 0, Rows::All).unwrap().unwrap();
        let top_ids = as_u32(&case["top20_ids"]);
        let top_logits = case["top20_logits"].as_array().unwrap();
        let max_diff = top_ids
            .iter()
            .zip(top_logits)
            .map(|(&t, l)| (logits.last()[t as usize] - l.as_f64().unwrap() as f32).abs())
            .fold(0.0f32, f32::max);
        assert!(max_diff < 1e-3, "case {i}: max |top-20 logit diff| {max_diff}");
        let argmax_all: Vec<u32> = (0..logits.rows()).map(|r| argmax(logits.row(r))).collect();
        assert_eq!(argmax_all, as_u32(&case["argmax_all_positions"]), "case {i}");
        let g = greedy(&mut engine, &md, &ids, argmax(logits.last()), 16);
        assert_eq!(g, as_u32(&case["greedy_16"]), "case {i}: greedy_16");
    }
}
