//! `shardlm-server`: the server party (P1). It holds the GPU and serves sessions; it
//! never sees the prompt or the output.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use shardlm_configs::ModelConfig;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "shardlm-server", version, about = "ShardLM server party: serves private inference sessions")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a synthetic checkpoint: seeded random weights of a preset's exact shape,
    /// bf16 safetensors, and a byte-level tokenizer.
    SynthModel(SynthArgs),
}

#[derive(Args)]
struct SynthArgs {
    /// Preset: tiny, qwen2.5-0.5b, qwen2.5-1.5b, qwen2.5-7b, qwen2.5-14b, qwen2.5-72b.
    #[arg(long)]
    preset: String,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Seed of the weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn main() -> std::process::ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::SynthModel(a) => synth(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn synth(a: SynthArgs) -> Result<()> {
    let config = ModelConfig::preset(&a.preset)?;
    shardlm_protocols::model::synth::write_synthetic_model(&config, &a.out, a.seed)
        .with_context(|| format!("writing synthetic model `{}`", a.preset))?;
    println!(
        "wrote {} ({} parameters, seed {}) to {}",
        config.name,
        config.parameter_count(),
        a.seed,
        a.out.display()
    );
    Ok(())
}
