//! The plaintext engine against transformers oracles (DESIGN.md section 7): full
//! last-position logits within 1e-3, argmax at every position, and the greedy tokens
//! identical. Always on the vendored `testdata/tiny-bytes` (greedy_16); on
//! `../shared/oracle/tiny-qwen2` (greedy_8) when it is beside the checkout; with
//! `SHARDLM_REAL_MODEL_DIR` set to a real Qwen2.5-Coder-0.5B-Instruct directory, on the
//! nine chat prompts of `testdata/qwen2.5-coder-0.5b-instruct/reference.json` (greedy_16).

use shardlm_model::qwen2::forward;
use shardlm_model::sampling::argmax;
use shardlm_model::{ModelDir, PlainEngine, Rows};
use shardlm_testkit::fixtures;
use std::path::Path;
use std::sync::Arc;

fn load(dir: &Path) -> (ModelDir, PlainEngine) {
    let md = ModelDir::open(dir).unwrap_or_else(|e| panic!("oracle model {}: {e}", dir.display()));
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

/// Every case of the oracle in `dir`: `cases` of them, full last-position logits within
/// 1e-3, argmax at every position, and `greedy_n` greedy tokens.
fn matches_transformers(dir: &Path, cases: usize, greedy_n: usize) {
    let (md, mut engine) = load(dir);
    let reference = fixtures::reference(dir);
    assert_eq!(reference.len(), cases);
    for (i, case) in reference.iter().enumerate() {
        engine.reset();
        let ids = &case.input_ids;
        let logits = forward(&mut engine, &md.config, ids, 0, Rows::All).unwrap().unwrap();
        assert_eq!(logits.rows(), ids.len());
        let want = case.last_logits.as_ref().expect("the oracle has full last-position logits");
        let max_diff = want.iter().zip(logits.last()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(max_diff < 1e-3, "case {i}: max |logit diff| {max_diff}");
        let argmax_all: Vec<u32> = (0..logits.rows()).map(|r| argmax(logits.row(r))).collect();
        assert_eq!(argmax_all, case.argmax_all_positions, "case {i}: argmax at every position");
        let g = greedy(&mut engine, &md, ids, argmax(logits.last()), greedy_n);
        assert_eq!(g, case.greedy, "case {i}: greedy_{greedy_n}");
    }
}

#[test]
fn tiny_bytes_matches_transformers() {
    matches_transformers(&fixtures::tiny_bytes(), 5, 16);
}

#[test]
fn tiny_qwen2_matches_transformers() {
    let Some(dir) = fixtures::tiny_qwen2() else { return };
    matches_transformers(&dir, 4, 8);
}

#[test]
fn decode_with_cache_equals_full_recompute() {
    let (md, mut engine) = load(&fixtures::tiny_bytes());
    let ids = b"Privacy!".map(u32::from);
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
    let Some(dir) = fixtures::real_model_dir() else { return };
    let (md, mut engine) = load(&dir);
    for (i, case) in fixtures::reference(&fixtures::real_reference()).iter().enumerate() {
        engine.reset();
        let ids = &case.input_ids;
        let logits = forward(&mut engine, &md.config, ids, 0, Rows::All).unwrap().unwrap();
        let max_diff = case
            .top20_ids
            .iter()
            .zip(&case.top20_logits)
            .map(|(&t, l)| (logits.last()[t as usize] - l).abs())
            .fold(0.0f32, f32::max);
        assert!(max_diff < 1e-3, "case {i}: max |top-20 logit diff| {max_diff}");
        let argmax_all: Vec<u32> = (0..logits.rows()).map(|r| argmax(logits.row(r))).collect();
        assert_eq!(argmax_all, case.argmax_all_positions, "case {i}");
        let g = greedy(&mut engine, &md, ids, argmax(logits.last()), 16);
        assert_eq!(g, case.greedy, "case {i}: greedy_16");
    }
}
