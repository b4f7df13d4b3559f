//! `dealer`: deals one-time material offline into a bundle, asking the planner what
//! each session of the variant consumes.

use super::progress_bar;
use crate::client::LocalModel;
use anyhow::{bail, Result};
use clap::Args;
use shardlm_configs::{FixedPoint, Variant};
use shardlm_model::Rows;
use shardlm_mpc::material::BundleWriter;
use shardlm_mpc::prg::Seed;
use shardlm_variants::plan::{deal_sessions, plan_session, SessionShape};
use shardlm_variants::registry::{self, MaterialNeed};
use shardlm_variants::RingWeights;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Flags of `dealer`.
#[derive(Args, Debug)]
pub struct DealerArgs {
    /// Hugging Face model directory (the public weights).
    #[arg(long, env = "SHARDLM_MODEL_DIR")]
    pub model_dir: PathBuf,
    /// Variant the material is for.
    #[arg(long, default_value = "v2")]
    pub variant: Variant,
    /// Prompt length of each session, in tokens.
    #[arg(long)]
    pub prompt_tokens: usize,
    /// New tokens per session.
    #[arg(long)]
    pub max_new_tokens: usize,
    /// Sessions in the bundle.
    #[arg(long, default_value_t = 1)]
    pub sessions: usize,
    /// Material for every position's logits in the prefill (`eval --all-positions`).
    #[arg(long)]
    pub all_positions: bool,
    /// Output directory (must not hold a bundle).
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `dealer`.
pub fn run(a: DealerArgs) -> Result<()> {
    let spec = registry::implemented(a.variant).map_err(anyhow::Error::msg)?;
    if spec.material == MaterialNeed::None {
        bail!("{} consumes no dealer material", a.variant);
    }
    if a.sessions == 0 {
        bail!("--sessions must be at least 1");
    }
    let t = Instant::now();
    let model = LocalModel::load(&a.model_dir)?;
    let rows = if a.all_positions { Rows::All } else { Rows::Last };
    let shape = SessionShape::new(a.prompt_tokens, a.max_new_tokens, rows);
    shape.validate(&model.dir.config)?;
    let (backend, note) = shardlm_gpu::best_available();
    let ring = Arc::new(RingWeights::encode(&model.weights, FixedPoint::default(), backend)?);
    let plan = plan_session(a.variant, &model.weights, &ring, shape)?;
    let planned = plan.raw_bytes()?.map(|b| (b * a.sessions as f64).round() as u64);
    let seed = Seed::random(&mut rand::rngs::OsRng);
    let mut writer = BundleWriter::create(&a.out, &model.fingerprint, a.variant.name(), seed)?;
    let bar = progress_bar(0, "dealing [{bar:30}] {pos}/{len} requests ({elapsed}, eta {eta})");
    deal_sessions(&mut writer, &plan, &ring, a.sessions, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    let manifest = writer.finish()?;
    bar.finish_and_clear();
    println!(
        "bundle {} for {} ({}): {} sessions of {} + {} tokens, dealt in {:.1} s on {}",
        a.out.display(),
        a.variant,
        model.fingerprint,
        a.sessions,
        a.prompt_tokens,
        a.max_new_tokens,
        t.elapsed().as_secs_f64(),
        note
    );
    for (i, party) in ["p0", "p1"].iter().enumerate() {
        let written = manifest.shards.get(*party).map_or(0, |s| s.bytes);
        println!(
            "  {party}.shard: {written} bytes = {} bytes of material (as planned) + {} bytes of header, seeds and alignment",
            planned[i],
            written.saturating_sub(planned[i])
        );
    }
    Ok(())
}
