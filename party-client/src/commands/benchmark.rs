//! `benchmark`: timed generations of any variant and the seed's JSON report
//! ([`crate::bench`]), with exact traffic and a per-phase breakdown.

use super::{progress_bar, PartyArgs};
use crate::bench::{self, RunMeasurement};
use crate::client::{Client, LocalModel};
use crate::text::TextCodec;
use anyhow::{bail, Context, Result};
use clap::Args;
use shardlm_configs::{FixedPoint, ModelConfig, Variant};
use shardlm_model::generate::{generate, StopPolicy};
use shardlm_model::sampling::{Sampler, SamplingConfig};
use shardlm_model::Rows;
use shardlm_variants::plan::SessionShape;
use shardlm_variants::session::ClientSession;
use std::path::PathBuf;
use std::time::Instant;

/// Flags of `benchmark`.
#[derive(Args, Debug)]
pub struct BenchmarkArgs {
    /// Hugging Face model directory.
    #[arg(long, env = "SHARDLM_MODEL_DIR")]
    pub model_dir: PathBuf,
    /// Variant to measure (`local` is the plaintext engine).
    #[arg(long, alias = "variant", default_value = "v2")]
    pub endpoint: Variant,
    #[command(flatten)]
    pub(crate) party: PartyArgs,
    /// The prompt.
    #[arg(short, long)]
    pub prompt: String,
    /// Format the prompt as one user turn of the Qwen chat template.
    #[arg(long)]
    pub chat: bool,
    /// New tokens per run (end tokens are ignored: every run generates exactly this many).
    #[arg(long, default_value_t = 8)]
    pub max_tokens: usize,
    /// Measured runs.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Unmeasured warmup runs.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Where to write the JSON report.
    #[arg(long)]
    pub output: PathBuf,
}

/// One timed generation on a session (end tokens ignored, so every run is the same
/// work).
pub fn measured_run(
    session: &mut dyn ClientSession,
    config: &ModelConfig,
    prompt: &[u32],
    max_new: usize,
) -> Result<RunMeasurement> {
    let mut sampler = Sampler::new(SamplingConfig::default());
    let setup = session.counters();
    let t = Instant::now();
    let g = generate(
        |t, p, r| session.forward(t, p, r).map(Some),
        config,
        prompt,
        max_new,
        &mut sampler,
        StopPolicy::Never,
        |_| {},
    )?;
    let total = t.elapsed();
    let phases = session.phases().clone();
    Ok(RunMeasurement {
        embedding_ms: phases.get("embed").as_secs_f64() * 1e3 / (g.decode.len() + 1) as f64,
        prefill_ms: g.prefill.as_secs_f64() * 1e3,
        total_ms: total.as_secs_f64() * 1e3,
        new_tokens: g.tokens.len(),
        decode_ms: g.decode.iter().map(|d| d.as_secs_f64() * 1e3).collect(),
        traffic: session.counters(),
        setup,
        phases,
        prefill_chunks: session.prefill_chunks(),
    })
}

/// Runs `benchmark`.
pub fn run(a: BenchmarkArgs) -> Result<()> {
    if a.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let variant = a.party.variant(a.endpoint);
    let model = LocalModel::load(&a.model_dir)?;
    let config = model.dir.config.clone();
    let codec = TextCodec::load(&model.dir.tokenizer)?;
    let prompt = codec.encode_prompt(&a.prompt, a.chat)?;
    let mut client = Client::new(variant, &a.party.options()?, &model)?;
    let shape = SessionShape::new(prompt.len(), a.max_tokens, Rows::Last);
    let total = a.warmup + a.runs;
    let bar = progress_bar(total as u64, "{msg} [{bar:30}] {pos}/{len} runs ({elapsed})");
    bar.set_message(format!("benchmark {variant}"));
    let mut runs = Vec::with_capacity(a.runs);
    let mut notes = Vec::new();
    for i in 0..total {
        let mut session = client.open(&model, shape)?;
        if i == 0 {
            notes = session.notes();
        }
        let mut m = measured_run(session.as_mut(), &config, &prompt, a.max_tokens)?;
        m.traffic = client.finish(session)?;
        if i >= a.warmup {
            runs.push(m);
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let fixed = FixedPoint::default();
    let cfg = serde_json::json!({
        "prompt_tokens": prompt.len(),
        "max_new_tokens": a.max_tokens,
        "runs": a.runs,
        "warmup": a.warmup,
        "mode": client.describe(),
        "attestation": notes,
        "fixed_point": {"frac_bits": fixed.frac_bits, "weight_frac_bits": fixed.weight_frac_bits},
        "client_threads": std::thread::available_parallelism().map_or(1, |n| n.get()),
    });
    for note in &notes {
        eprintln!("{variant}: {note}");
    }
    let report = bench::report(&config.name, &client.device(), variant.name(), cfg, &runs);
    std::fs::write(&a.output, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("{}: cannot write report", a.output.display()))?;
    eprintln!(
        "{variant}: prefill {:.1} ms (p50 {:.1}), total {:.1} ms, {:.2} tokens/s, {} bytes sent, {} received, {} rounds per run; report in {}",
        report.results.prefill.mean,
        report.results.prefill.p50,
        report.results.total.mean,
        report.results.tokens_per_second,
        report.bytes_sent,
        report.bytes_received,
        report.rounds,
        a.output.display()
    );
    Ok(())
}
