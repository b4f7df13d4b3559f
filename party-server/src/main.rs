//! `shardlm-server`: the server party (P1). It holds the GPU and serves sessions; it
//! never sees the prompt or the output.
//!
//! * `serve`: load a checkpoint once (ring-encoded, prepared on the backend), listen on
//!   QUIC with mutual TLS, answer `info`/`health`, and run each client's session of a
//!   served variant on its own thread. Ctrl-C stops accepting and closes connections.
//! * `keygen`: write this party's certificate and key and print its fingerprint.
//! * `synth-model`: seeded random weights of a preset's shape, for work without downloads.
//! * `cc-software-ca`: a test CA for v3-cc's software attestation provider.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use shardlm_attest::providers::{CollectOptions, Collector};
use shardlm_attest::software::SoftwareProvider;
use shardlm_attest::ProviderKind;
use shardlm_configs::cli::TimeoutFlags;
use shardlm_configs::{FixedPoint, ModelConfig, Variant};
use shardlm_gpu::DeviceChoice;
use shardlm_model::fingerprint::fingerprint;
use shardlm_model::ModelDir;
use shardlm_mpc::material::Material;
use shardlm_mpc::share::P1;
use shardlm_transport::{Identity, QuicConfig, QuicServer};
use shardlm_variants::registry;
use shardlm_variants::server::{MpcMaterial, ServerParty};
use shardlm_variants::v3_mpc::Nonlinear;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

#[derive(Parser)]
#[command(
    name = "shardlm-server",
    version,
    about = "ShardLM server party: serves private inference sessions"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve private inference sessions over QUIC.
    Serve(Box<ServeArgs>),
    /// Write this party's certificate and key (key mode 0600) and print the fingerprint
    /// to give to clients (`--server-fingerprint`).
    Keygen(KeygenArgs),
    /// Write a synthetic checkpoint: seeded random weights of a preset's exact shape,
    /// bf16 safetensors, and a byte-level tokenizer.
    SynthModel(SynthArgs),
    /// Make a test CA for the software attestation provider (v3-cc without confidential
    /// hardware: tests, CI and trying the protocol out; it protects nothing).
    CcSoftwareCa(CcCaArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Hugging Face model directory.
    #[arg(long, env = "SHARDLM_MODEL_DIR")]
    model_dir: PathBuf,
    /// Expected architecture preset (e.g. `qwen2.5-1.5b`); the checkpoint must have its shape.
    #[arg(long, env = "SHARDLM_MODEL_ARCH")]
    model_arch: Option<String>,
    /// UDP port to listen on (0 picks a free one and prints it).
    #[arg(long, env = "SHARDLM_PORT", default_value_t = 4433)]
    port: u16,
    /// Address to bind.
    #[arg(long, default_value = "0.0.0.0")]
    bind: std::net::IpAddr,
    /// Directory with this server's cert.pem and key.pem (`shardlm-server keygen`).
    #[arg(long)]
    identity: PathBuf,
    /// Fingerprint of a client allowed to connect (repeatable); clients print theirs with
    /// `shardlm-client keygen`.
    #[arg(long = "allow-client", required = true, num_args = 1..)]
    allow_client: Vec<String>,
    /// Number of GPUs to use; without CUDA in this build or on this host, 0.
    #[arg(long, env = "SHARDLM_NUM_GPUS", default_value_t = 0)]
    num_gpus: usize,
    /// Compute device: auto, cpu or cuda.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// The server's part of a v3-mpc or v3-ot bundle (`DIR/p1` of `shardlm-client
    /// dealer --variant v3-mpc|v3-ot --out DIR`; the client gets `DIR/p0`): enables
    /// sessions of the bundle's variant, one at a time, in the bundle's session order.
    /// One bundle per server: serving both variants takes two servers. A directory that
    /// also holds the client's part is refused.
    #[arg(long)]
    material: Option<PathBuf>,
    /// Sessions served at once; more clients are told the server is busy (default: two
    /// per CPU core, at least 2, at most 64).
    #[arg(long)]
    max_sessions: Option<u32>,
    /// QUIC initial congestion window, bytes (lower it on links shared with other traffic).
    #[arg(long, default_value_t = 1 << 20)]
    initial_window: u64,
    /// Serve v3-cc, attested by these providers (comma-separated: sev-snp, tdx, nvidia,
    /// software). A hardware provider whose platform is absent stops the server at start.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    cc_provider: Vec<ProviderKind>,
    /// The software provider's test CA directory (`shardlm-server cc-software-ca`).
    /// Software attestation gives no hardware protection; clients must opt in.
    #[arg(long, value_name = "DIR")]
    cc_software_ca: Option<PathBuf>,
    /// TDX: this platform's quote collateral (QuoteCollateralV3 JSON from the cloud
    /// provider's PCCS), reread at every session so that refreshing it needs no restart.
    #[arg(long, value_name = "FILE")]
    cc_tdx_collateral: Option<PathBuf>,
    /// NVIDIA: the GPU (NVML index) whose evidence attests the sessions.
    #[arg(long, value_name = "N", default_value_t = 0)]
    cc_nvidia_gpu: u32,
    #[command(flatten)]
    timeouts: TimeoutFlags,
}

#[derive(Args)]
struct CcCaArgs {
    /// Output directory: ca.pem (for clients) and ca.key (0600, for this server).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct KeygenArgs {
    /// Output directory for cert.pem and key.pem.
    #[arg(long)]
    out: PathBuf,
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
    // Before any thread starts: freed buffers are reused, not faulted in again.
    shardlm_gpu::host_memory::keep_freed_memory();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(a) => serve(*a),
        Command::Keygen(a) => keygen(a),
        Command::SynthModel(a) => synth(a),
        Command::CcSoftwareCa(a) => cc_software_ca(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", shardlm_configs::cli::error_line(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

fn serve(a: ServeArgs) -> Result<()> {
    let timeouts = a.timeouts.timeouts().map_err(anyhow::Error::msg)?;
    let identity = Identity::load(&a.identity)?;
    let (backend, note) = match (a.device, a.num_gpus) {
        (DeviceChoice::Auto, n) if n > 0 => {
            let (b, note) = shardlm_gpu::best_available();
            if !b.name().starts_with("cuda") {
                tracing::warn!("SHARDLM_NUM_GPUS={n} but no GPU backend is available: {note}");
            }
            (b, note)
        }
        (choice, _) => shardlm_gpu::open(choice)?,
    };
    eprintln!("backend: {note}");
    let dir = ModelDir::open(&a.model_dir)?;
    if let Some(arch) = &a.model_arch {
        let want = ModelConfig::preset(arch)
            .with_context(|| format!("SHARDLM_MODEL_ARCH / --model-arch `{arch}`"))?;
        check_arch(&want, &dir.config)
            .with_context(|| format!("{} is not a {arch} checkpoint", a.model_dir.display()))?;
    }
    let t = std::time::Instant::now();
    let fp = fingerprint(&dir)?;
    let weights = dir.load_weights()?;
    let mut party = ServerParty::new(Arc::new(weights), FixedPoint::default(), backend)?;
    if let Some(dir) = &a.material {
        let (material, nonlinear) = open_material(dir, &fp)?;
        party = party.with_mpc_material(material, nonlinear);
    }
    if let Some(collector) = cc_collector(&a)? {
        party = party.with_cc(Arc::new(collector), &fp);
    }
    let party = Arc::new(party);
    eprintln!("model {} ({fp}) ready in {:.1} s", dir.config.name, t.elapsed().as_secs_f64());

    let info = party.info(&fp);
    let cfg = QuicConfig { initial_window: a.initial_window, ..QuicConfig::with_timeouts(timeouts) };
    let server =
        Arc::new(QuicServer::bind(SocketAddr::new(a.bind, a.port), &identity, &a.allow_client, cfg)?);
    println!("listening on {} (server fingerprint {})", server.local_addr(), server.fingerprint());
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let stopper = server.clone();
    std::thread::Builder::new()
        .name("shardlm-signal".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            if rt.block_on(tokio::signal::ctrl_c()).is_ok() {
                eprintln!("shutting down: no new sessions, closing connections");
                stopper.close();
            }
        })
        .context("starting the signal thread")?;

    let max_sessions = a.max_sessions.unwrap_or_else(default_max_sessions);
    let admitting = party.clone();
    server.serve(
        &info,
        max_sessions,
        move |hello, fp| admitting.admit(hello, fp),
        move |mut chan, hello| {
            let t = std::time::Instant::now();
            if let Some(stats) = party.serve_client(&mut chan, &hello.request)? {
                tracing::info!(
                    "session done: {} requests, {} forward passes, {:.2} s",
                    stats.requests,
                    stats.forward_passes,
                    t.elapsed().as_secs_f64()
                );
            }
            Ok::<(), String>(())
        },
    );
    Ok(())
}

/// Opens (and locks) the server's part of a v3-mpc or v3-ot bundle now rather than at
/// the first session, says what it holds, and returns it with the way its variant
/// computes the nonlinear layers.
fn open_material(dir: &std::path::Path, fp: &str) -> Result<(MpcMaterial, Nonlinear)> {
    let material =
        Material::<P1>::open(dir, Some(fp)).with_context(|| format!("--material {}", dir.display()))?;
    let manifest = material.manifest().context("a dealt bundle has a manifest")?;
    let Some(nonlinear) = manifest.variant.parse::<Variant>().ok().and_then(Nonlinear::of) else {
        bail!("{}: a {} bundle; --material needs a v3-mpc or v3-ot bundle", dir.display(), manifest.variant);
    };
    let variant = nonlinear.variant();
    registry::implemented(variant)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("--material {}", dir.display()))?;
    eprintln!(
        "material: bundle {} for {variant}, {} of {} sessions left, {}{}",
        manifest.bundle_id.get(..16).unwrap_or(&manifest.bundle_id),
        manifest.sessions.len() - material.next_session().unwrap_or(manifest.sessions.len()),
        manifest.sessions.len(),
        manifest.dealer.role.promise(true),
        if manifest.bound_clients.is_empty() {
            String::new()
        } else {
            format!("; bound to {} client(s)", manifest.bound_clients.len())
        }
    );
    Ok((MpcMaterial::Bundle(Box::new(Mutex::new(material))), nonlinear))
}

/// Two sessions per core (a session's heavy work is GEMMs on the backend; the rest is
/// waiting on the network), at least 2 and at most 64.
fn default_max_sessions() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (2 * cores as u32).clamp(2, 64)
}

/// How long the software provider's leaf certificate is valid: a server process that
/// runs longer must be restarted to keep attesting with it.
const CC_LEAF_VALIDITY: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// The v3-cc evidence collector of `--cc-provider`, checked now so that a server that
/// cannot attest says so at start.
fn cc_collector(a: &ServeArgs) -> Result<Option<Collector>> {
    if a.cc_provider.is_empty() {
        if a.cc_software_ca.is_some() {
            bail!("--cc-software-ca without --cc-provider software: say which providers attest this server");
        }
        return Ok(None);
    }
    let software = match (&a.cc_software_ca, a.cc_provider.contains(&ProviderKind::Software)) {
        (Some(dir), true) => Some(
            SoftwareProvider::load(dir, CC_LEAF_VALIDITY)
                .with_context(|| format!("--cc-software-ca {}", dir.display()))?,
        ),
        (None, true) => bail!(
            "--cc-provider software needs its test CA: `shardlm-server cc-software-ca --out DIR`, then `--cc-software-ca DIR`"
        ),
        (Some(_), false) => bail!("--cc-software-ca is only used by --cc-provider software"),
        (None, false) => None,
    };
    let options = CollectOptions { tdx_collateral: a.cc_tdx_collateral.clone(), nvidia_gpu: a.cc_nvidia_gpu };
    let collector = Collector::with_options(&a.cc_provider, software, options).context("--cc-provider")?;
    let names: Vec<String> = collector.kinds().iter().map(|k| k.to_string()).collect();
    eprintln!("v3-cc: attested by {}", names.join(", "));
    if collector.kinds().contains(&ProviderKind::Software) {
        eprintln!("v3-cc: {}", shardlm_attest::software::NO_PROTECTION);
    }
    Ok(Some(collector))
}

fn cc_software_ca(a: CcCaArgs) -> Result<()> {
    let cert = shardlm_attest::software::make_ca(&a.out)?;
    println!("{}", cert.display());
    eprintln!(
        "wrote {} (give it to clients: --insecure-software-attestation --cc-software-ca) and ca.key (this server's: --cc-software-ca {}). {}",
        cert.display(),
        a.out.display(),
        shardlm_attest::software::NO_PROTECTION
    );
    Ok(())
}

fn check_arch(want: &ModelConfig, got: &ModelConfig) -> Result<()> {
    let fields = [
        ("hidden_size", want.hidden_size, got.hidden_size),
        ("intermediate_size", want.intermediate_size, got.intermediate_size),
        ("num_hidden_layers", want.num_hidden_layers, got.num_hidden_layers),
        ("num_attention_heads", want.num_attention_heads, got.num_attention_heads),
        ("num_key_value_heads", want.num_key_value_heads, got.num_key_value_heads),
        ("vocab_size", want.vocab_size, got.vocab_size),
    ];
    for (name, w, g) in fields {
        if w != g {
            bail!("{name} is {g}, the preset has {w}");
        }
    }
    Ok(())
}

fn keygen(a: KeygenArgs) -> Result<()> {
    let fp = shardlm_transport::keygen(&a.out, "shardlm-server")?;
    println!("{fp}");
    eprintln!(
        "wrote {}/cert.pem and key.pem; give clients this fingerprint for --server-fingerprint",
        a.out.display()
    );
    Ok(())
}

fn synth(a: SynthArgs) -> Result<()> {
    let config = ModelConfig::preset(&a.preset)?;
    shardlm_model::synth::write_synthetic_model(&config, &a.out, a.seed)
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
