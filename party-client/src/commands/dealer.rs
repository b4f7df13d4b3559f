//! `dealer`: deals one-time material offline into a bundle, asking the planner what
//! each session of the variant consumes.

use super::progress_bar;
use crate::client::LocalModel;
use anyhow::{bail, Result};
use clap::Args;
use shardlm_configs::{FixedPoint, Variant};
use shardlm_model::Rows;
use shardlm_mpc::material::{BundleWriter, DealerRole};
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
    /// Output directory (must not hold a bundle): each party's part goes to its own
    /// subdirectory, `OUT/p0` for the client and `OUT/p1` for the server.
    #[arg(long)]
    pub out: PathBuf,
    /// Who runs this dealer: `client` (the client party's own host) or `independent` (a
    /// host trusted by neither party's operator). Recorded in the manifest. For variants
    /// where the server holds material (v3-mpc, v3-ot) the full promise needs `independent`,
    /// and the choice must be stated.
    #[arg(long, value_enum)]
    pub role: Option<RoleArg>,
    /// Client certificate fingerprint allowed to consume the server's part (repeatable;
    /// default: any client the server allows).
    #[arg(long = "bind-client")]
    pub bind_client: Vec<String>,
}

/// `--role`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum RoleArg {
    /// The client party's host.
    Client,
    /// A host independent of both parties.
    Independent,
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
    let both = spec.material == MaterialNeed::BothParties;
    let role = match (a.role, both) {
        (Some(RoleArg::Independent), _) => DealerRole::Independent,
        (Some(RoleArg::Client), _) | (None, false) => DealerRole::Client,
        (None, true) => bail!(
            "say who deals this {} bundle: `--role independent` on a host independent of both parties (each party sees only its own part), or `--role client` on the client's own host (the prompt stays private from the server, but the client could recover every intermediate activation)",
            a.variant
        ),
    };
    if !a.bind_client.is_empty() && !both {
        bail!(
            "--bind-client binds the server's part of the bundle; {} gives the server no material",
            a.variant
        );
    }
    let seed = Seed::random(&mut rand::rngs::OsRng);
    let mut writer = BundleWriter::create(&a.out, &model.fingerprint, a.variant.name(), seed)?
        .dealt_by(role)
        .bind_clients(a.bind_client.clone());
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
    for (i, (party, who)) in [("p0", "the client"), ("p1", "the server")].iter().enumerate() {
        let Some(shard) = manifest.shards.get(*party) else {
            println!("  {party}: none ({who} needs no material for {})", a.variant);
            continue;
        };
        println!(
            "  {}/{party}/{party}.shard: {} bytes = {} bytes of material (as planned) + {} bytes of header, seeds and alignment; give {party}/ to {who} only",
            a.out.display(),
            shard.bytes,
            planned[i],
            shard.bytes.saturating_sub(planned[i])
        );
    }
    println!("  dealer: {}", role.promise(both));
    Ok(())
}
