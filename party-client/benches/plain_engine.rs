//! Plaintext engine speed: 98-token prefill and decode tokens/s (issue 2's target:
//! transformers f32 on 2 threads measures 0.886 s prefill and 8.6 tokens/s on our CI
//! machine for Qwen2.5-0.5B). Run with
//! `SHARDLM_REAL_MODEL_DIR=DIR cargo bench -p shardlm-client --bench plain_engine`;
//! without the variable it synthesizes a `qwen2.5-0.5b`-shaped model in a temp dir.

use shardlm_model::qwen2::forward;
use shardlm_model::sampling::argmax;
use shardlm_model::{ModelDir, PlainEngine, Rows};
use std::sync::Arc;
use std::time::Instant;

fn main() {
    let tmp;
    let dir = match std::env::var("SHARDLM_REAL_MODEL_DIR") {
        Ok(d) => std::path::PathBuf::from(d),
        Err(_) => {
            tmp = tempfile::tempdir().expect("temp dir");
            let cfg = shardlm_configs::ModelConfig::preset("qwen2.5-0.5b").expect("preset");
            eprintln!(
                "SHARDLM_REAL_MODEL_DIR not set: synthesizing qwen2.5-0.5b weights in {}",
                tmp.path().display()
            );
            shardlm_model::synth::write_synthetic_model(&cfg, tmp.path(), 1).expect("synth");
            tmp.path().to_path_buf()
        }
    };
    let prompt_len: usize = std::env::var("PROMPT_TOKENS").ok().and_then(|v| v.parse().ok()).unwrap_or(98);
    let decode_len: usize = std::env::var("DECODE_TOKENS").ok().and_then(|v| v.parse().ok()).unwrap_or(32);
    let runs: usize = std::env::var("RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);

    let t = Instant::now();
    let md = ModelDir::open(&dir).expect("model dir");
    let weights = Arc::new(md.load_weights().expect("weights"));
    println!(
        "model {} loaded in {:.2} s; {} rayon threads",
        md.config.name,
        t.elapsed().as_secs_f64(),
        rayon::current_num_threads()
    );
    let mut engine = shardlm_model::timing::Timed::new(PlainEngine::new(
        weights,
        Arc::new(shardlm_gpu::CpuBackend::new()),
    ));
    let prompt: Vec<u32> = (0..prompt_len as u32).map(|i| 1000 + (i * 7919) % 20000).collect();

    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    for run in 0..=runs {
        engine.inner.reset();
        engine.times = Default::default();
        let t = Instant::now();
        let l = forward(&mut engine, &md.config, &prompt, 0, Rows::Last).expect("prefill").expect("logits");
        let p = t.elapsed().as_secs_f64();
        if run == runs {
            let mut v: Vec<_> = engine.times.by_op.iter().map(|(k, d)| (*k, d.as_secs_f64() * 1e3)).collect();
            v.sort_by(|a, b| b.1.total_cmp(&a.1));
            println!(
                "prefill phases (ms): {}",
                v.iter().map(|(k, ms)| format!("{k} {ms:.1}")).collect::<Vec<_>>().join(", ")
            );
        }
        let mut next = argmax(l.last());
        let t = Instant::now();
        for i in 0..decode_len {
            let l = forward(&mut engine, &md.config, &[next], prompt_len + i, Rows::Last)
                .expect("decode")
                .expect("logits");
            next = argmax(l.last());
        }
        let d = decode_len as f64 / t.elapsed().as_secs_f64();
        if run > 0 {
            prefill.push(p);
            decode.push(d);
        }
        println!(
            "{} prefill {prompt_len} tokens {:.3} s, decode {:.2} tokens/s",
            if run == 0 { "warmup" } else { "run   " },
            p,
            d
        );
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "mean over {runs} runs: prefill {:.3} s (transformers f32 2 threads: 0.886 s), decode {:.2} tokens/s (transformers: 8.6)",
        mean(&prefill),
        mean(&decode)
    );
}
