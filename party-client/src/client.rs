//! The client party's sessions, for every command: loading the client's copy of the
//! public model, reaching the server party (QUIC with mutual TLS and pinned
//! fingerprints, or an in-process loopback server with ephemeral identities), getting
//! each session's one-time material, and opening the variant's
//! [`ClientSession`] on the connected channel.
//!
//! [`Client`] is the one runner: `generate`, `eval`, `benchmark` and `demo` call
//! [`Client::open`] and [`Client::finish`] and never look at the variant; what a
//! variant needs comes from [`shardlm_variants::registry`].

use anyhow::{anyhow, bail, Context, Result};
use rand::rngs::OsRng;
use shardlm_attest::providers::Collector;
use shardlm_attest::{Policy, ProviderKind, Trust};
use shardlm_configs::{FixedPoint, Timeouts, Variant};
use shardlm_gpu::Backend;
use shardlm_model::fingerprint::fingerprint;
use shardlm_model::{ModelDir, Weights};
use shardlm_mpc::material::{BundleWriter, IdealDealer, Material};
use shardlm_mpc::prg::Seed;
use shardlm_mpc::share::P0;
use shardlm_transport::handshake::{MaterialBinding, Request, ServerInfo};
use shardlm_transport::{Counters, TransportError};
use shardlm_transport::{Identity, QuicChannel, QuicClient, QuicConfig, QuicServer};
use shardlm_variants::limits::params_of;
use shardlm_variants::plan::{deal_sessions, plan_session, SessionShape};
use shardlm_variants::registry::{self, MaterialNeed};
use shardlm_variants::server::{MpcMaterial, MpcMaterialQueue, ServerParty};
use shardlm_variants::session::{open_local, open_private, ClientContext, ClientSession};
use shardlm_variants::v3::{LinkModel, Schedule};
use shardlm_variants::v3_cc::CcTrust;
use shardlm_variants::v3_mpc::Nonlinear;
use shardlm_variants::RingWeights;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The client's copy of the public model.
pub struct LocalModel {
    /// The directory.
    pub dir: ModelDir,
    /// Weights (the client uses embeddings, norm gains and biases).
    pub weights: Arc<Weights>,
    /// Fingerprint compared in the handshake.
    pub fingerprint: String,
}

impl LocalModel {
    /// Loads a model directory and its fingerprint.
    pub fn load(path: &Path) -> Result<Self> {
        let dir = ModelDir::open(path)?;
        let fingerprint = fingerprint(&dir)?;
        let weights = Arc::new(dir.load_weights()?);
        Ok(Self { dir, weights, fingerprint })
    }
}

/// Where and how to reach the server party.
#[derive(Clone)]
pub struct Remote {
    /// Server address.
    pub addr: SocketAddr,
    /// This client's identity.
    pub identity: Identity,
    /// The server's pinned certificate fingerprint.
    pub server_fingerprint: String,
    /// Transport settings.
    pub config: QuicConfig,
}

/// Parses `host:port`, `quic://host:port` or `http://host:port` (the seed's form).
pub fn parse_server(text: &str) -> Result<SocketAddr> {
    let t = text.trim();
    let t = t.strip_prefix("http://").or_else(|| t.strip_prefix("https://")).unwrap_or(t);
    let t = t.trim_end_matches('/');
    Ok(shardlm_transport::quic::resolve_addr(t)?)
}

impl Remote {
    /// Opens a session of `variant` and `shape` for `model` (on bundle session `binding`
    /// for variants whose server holds material): connect, handshake, return the channel.
    pub fn session(
        &self,
        variant: Variant,
        model: &LocalModel,
        shape: SessionShape,
        binding: Option<MaterialBinding>,
    ) -> Result<(QuicChannel, ServerInfo), TransportError> {
        let mut session_id = [0u8; 16];
        rand::RngCore::fill_bytes(&mut OsRng, &mut session_id);
        let request = Request::Session {
            variant: variant.name().into(),
            model_fingerprint: model.fingerprint.clone(),
            session_id,
            params: params_of(shape),
            material: binding,
        };
        QuicClient::session(self.addr, &self.identity, &self.server_fingerprint, self.config.clone(), request)
    }

    /// The server's devices as its `info` reports them.
    pub fn devices(&self) -> Result<String> {
        let info =
            QuicClient::info(self.addr, &self.identity, &self.server_fingerprint, self.config.clone())?;
        Ok(info.devices.join(", "))
    }
}

/// How long a software-attestation leaf certificate is valid.
pub const CC_LEAF_VALIDITY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Sessions an in-process loopback server runs at once.
const LOOPBACK_SESSIONS: u32 = 4;

/// A server party running in this process on 127.0.0.1 with ephemeral identities:
/// `--loopback` and `demo`. Traffic goes through real QUIC.
pub struct Loopback {
    /// How the client reaches it.
    pub remote: Remote,
    /// Where the in-process server takes each fully private session's P1 material from.
    pub mpc_material: MpcMaterialQueue,
    /// The test CA (PEM) of the in-process server's software attestation (v3-cc).
    pub software_ca: String,
    ring: Arc<RingWeights>,
    server: Arc<QuicServer>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Loopback {
    /// The server party's ring-encoded weights: the in-process client deals its masks
    /// with this same copy (the weights are public) instead of encoding a second one.
    pub fn ring(&self) -> Arc<RingWeights> {
        self.ring.clone()
    }

    /// Prepares the server party for `model` on `backend` and starts serving. Its v3-cc
    /// is attested by the software provider with a CA made for it (`software_ca`, PEM):
    /// the server runs in the client's own process, so nothing hardware-backed is there.
    /// Of the fully private variants it serves `variant` when that is one (v3-mpc or
    /// v3-ot), else v3-mpc, with material the in-process client deals per session.
    pub fn start(
        model: &LocalModel,
        backend: Arc<dyn Backend>,
        timeouts: Timeouts,
        variant: Variant,
    ) -> Result<Self> {
        let server_id = Identity::generate("shardlm-server")?;
        let client_id = Identity::generate("shardlm-client")?;
        let mpc_material = MpcMaterialQueue::default();
        let ca_dir = tempfile::Builder::new().prefix("shardlm-loopback-ca-").tempdir()?;
        let ca = shardlm_attest::software::make_ca(ca_dir.path())?;
        let software_ca = std::fs::read_to_string(&ca)?;
        let provider = shardlm_attest::software::SoftwareProvider::load(ca_dir.path(), CC_LEAF_VALIDITY)?;
        let collector = Arc::new(Collector::new(&[ProviderKind::Software], Some(provider))?);
        let party = Arc::new(
            ServerParty::new(model.weights.clone(), FixedPoint::default(), backend.clone())?
                .with_mpc_material(
                    MpcMaterial::Queue(mpc_material.clone()),
                    Nonlinear::of(variant).unwrap_or_default(),
                )
                .with_cc(collector, &model.fingerprint),
        );
        let ring = party.ring().clone();
        let info = party.info(&model.fingerprint);
        let config = QuicConfig::with_timeouts(timeouts);
        let server = Arc::new(QuicServer::bind(
            "127.0.0.1:0".parse().map_err(|e| anyhow!("{e}"))?,
            &server_id,
            &[client_id.fingerprint()],
            config.clone(),
        )?);
        let remote = Remote {
            addr: server.local_addr(),
            identity: client_id,
            server_fingerprint: server.fingerprint().to_string(),
            config,
        };
        let s = server.clone();
        let thread = std::thread::Builder::new().name("shardlm-loopback-server".into()).spawn(move || {
            let admitting = party.clone();
            s.serve(
                &info,
                LOOPBACK_SESSIONS,
                move |hello, fp| admitting.admit(hello, fp),
                move |mut chan, hello| party.serve_client(&mut chan, &hello.request).map(|_| ()),
            )
        })?;
        Ok(Self { remote, mpc_material, software_ca, ring, server, thread: Some(thread) })
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        self.server.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Where a private client's one-time material comes from.
pub enum MaterialSupply {
    /// The client deals each session itself just before it starts (v2/v3's default
    /// deployment: the client is its own dealer), into a private temporary bundle that
    /// is deleted when the session ends.
    DealPerSession {
        /// Where the per-session bundles go.
        dir: tempfile::TempDir,
    },
    /// A bundle made offline by `shardlm-client dealer` (P0's part).
    Bundle {
        /// The bundle directory.
        dir: PathBuf,
        /// The open material, kept between sessions.
        open: Option<Material<P0>>,
    },
    /// `--loopback` for a variant that needs both parties' material: the ideal dealer
    /// deals each session, P1's half goes to the in-process server.
    IdealLoopback,
    /// The variant needs no dealt material (v3-cc).
    None,
}

/// How a command reaches the server party, as its flags say.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// `-s host:port` of a remote server party.
    pub server: Option<String>,
    /// Run the server party in this process (`--loopback`).
    pub loopback: bool,
    /// This client's identity directory (with `server`).
    pub identity: Option<PathBuf>,
    /// The server's pinned fingerprint (with `server`).
    pub server_fingerprint: Option<String>,
    /// A dealt bundle for this client's sessions.
    pub material: Option<PathBuf>,
    /// v3: rows per chunk of a multi-row pass (`None`: the client's model chooses).
    pub chunk_rows: Option<usize>,
    /// v3: the link rate each way, bits/s, for the model that cuts passes into chunks
    /// (`None`: 1 Gbit/s assumed).
    pub link_rate: Option<u64>,
    /// QUIC initial congestion window in bytes.
    pub initial_window: u64,
    /// Network deadlines.
    pub timeouts: Timeouts,
    /// v3-cc: the attestation policy file.
    pub cc_policy: Option<PathBuf>,
    /// v3-cc: the software provider's test CA (PEM), accepted only with
    /// `insecure_software_attestation`.
    pub cc_software_ca: Option<PathBuf>,
    /// v3-cc: accept the software provider (no hardware protection).
    pub insecure_software_attestation: bool,
}

/// A private variant's client side, ready to open sessions.
struct Private {
    ctx: ClientContext,
    remote: Remote,
    loopback: Option<Loopback>,
    material: MaterialSupply,
    sessions: u64,
}

/// The client's runner for one variant: the plaintext engine, or a private variant with
/// its server and its material.
pub struct Client {
    variant: Variant,
    backend: Arc<dyn Backend>,
    private: Option<Private>,
}

impl Client {
    /// Prepares `variant` for `model` as `opts` say (connects nothing yet).
    pub fn new(variant: Variant, opts: &ClientOptions, model: &LocalModel) -> Result<Client> {
        let spec = registry::implemented(variant).map_err(anyhow::Error::msg)?;
        let (backend, _) = shardlm_gpu::best_available();
        if !spec.needs_server {
            return Ok(Client { variant, backend, private: None });
        }
        let (remote, loopback) = if opts.loopback {
            let lb = Loopback::start(model, backend.clone(), opts.timeouts, variant)?;
            (lb.remote.clone(), Some(lb))
        } else {
            (remote_from(opts)?, None)
        };
        let ring = match &loopback {
            Some(lb) => lb.ring(),
            None => Arc::new(RingWeights::encode(&model.weights, FixedPoint::default(), backend.clone())?),
        };
        let material = match (&opts.material, spec.material, opts.loopback) {
            (Some(dir), _, _) => MaterialSupply::Bundle { dir: dir.clone(), open: None },
            (None, MaterialNeed::ClientOnly, _) => MaterialSupply::DealPerSession {
                dir: tempfile::Builder::new().prefix("shardlm-material-").tempdir()?,
            },
            (None, MaterialNeed::BothParties, true) => MaterialSupply::IdealLoopback,
            (None, MaterialNeed::BothParties, false) => bail!(
                "{variant} against a server needs `--material DIR`: P0's part of a bundle from `shardlm-client dealer --variant {variant}` (the server is started with P1's part of the same bundle)"
            ),
            (None, MaterialNeed::None, _) => MaterialSupply::None,
        };
        let cc = if variant == Variant::V3Cc { Some(cc_trust(opts, loopback.as_ref())?) } else { None };
        let ctx = ClientContext {
            weights: model.weights.clone(),
            ring,
            schedule: Schedule {
                chunk_rows: opts.chunk_rows,
                link: LinkModel { rate_bps: opts.link_rate, ..LinkModel::default() },
            },
            model_fingerprint: model.fingerprint.clone(),
            cc,
        };
        let private = Private { ctx, remote, loopback, material, sessions: 0 };
        Ok(Client { variant, backend, private: Some(private) })
    }

    /// The variant.
    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// What computes, for reports: the local engine, or the variant and its server.
    pub fn describe(&self) -> String {
        match &self.private {
            None => "local plaintext engine".into(),
            Some(p) => format!("{} with server {}", self.variant, p.remote.addr),
        }
    }

    /// The device that does the heavy work: the local backend, or the server's as its
    /// `info` reports it.
    pub fn device(&self) -> String {
        match &self.private {
            None => self.backend.name(),
            Some(p) => p.remote.devices().unwrap_or_else(|_| "unknown".into()),
        }
    }

    /// Opens one session of `shape`: validates the shape, gets the session's material
    /// (deals it, or takes the next session of a bundle), connects and hands back the
    /// variant's session. The material is ready before the connection is made, so a
    /// session's time online does not include dealing.
    pub fn open(&mut self, model: &LocalModel, shape: SessionShape) -> Result<Box<dyn ClientSession>> {
        shape.validate(&model.dir.config)?;
        let variant = self.variant;
        let Some(p) = self.private.as_mut() else {
            return Ok(open_local(model.weights.clone(), self.backend.clone()));
        };
        p.sessions += 1;
        let (mut material, mut binding) = p.session_material(variant, model, shape)?;
        let connected = p.remote.session(variant, model, shape, binding.clone());
        let (chan, info) = match (connected, material.as_ref().and_then(Material::manifest)) {
            (Ok(connected), _) => connected,
            (Err(e), Some(_)) if bundle_session_behind(&e).is_some() => {
                // A session was lost on one side (a crash between reserving and using):
                // the server is ahead. Skip forward to its next session and retry once.
                let next = bundle_session_behind(&e).unwrap_or_default();
                eprintln!("note: the server's part of the bundle is at session {next}, this client's behind; skipping forward");
                if let Some(b) = binding.as_mut() {
                    b.session = next as u64;
                }
                p.remote
                    .session(variant, model, shape, binding.clone())
                    .with_context(|| p.context(variant))?
            }
            (Err(e), _) => return Err(anyhow::Error::new(e).context(p.context(variant))),
        };
        if let (Some(b), Some(m)) = (&binding, material.as_mut()) {
            // Admitted by the server: reserve the session before any material is used.
            m.start_session(usize::try_from(b.session).unwrap_or(usize::MAX))?;
        }
        // v3 plans its chunks for this connection's RTT and the server's measured GEMM.
        p.ctx.schedule.link.rtt = chan.rtt();
        p.ctx.schedule.link.gemm = info.ring_gemm;
        Ok(open_private(variant, shape, &p.ctx, Box::new(chan), material, Seed::random(&mut OsRng))?)
    }

    /// Ends a session cleanly, keeps a bundle open for the next one, and returns the
    /// session's traffic.
    pub fn finish(&mut self, session: Box<dyn ClientSession>) -> Result<Counters> {
        let end = session.finish()?;
        if let Some(p) = self.private.as_mut() {
            match &mut p.material {
                MaterialSupply::Bundle { open, .. } => *open = end.material,
                MaterialSupply::DealPerSession { dir } => {
                    // Spent one-time material has no further use: release the disk now.
                    drop(end.material);
                    let _ = std::fs::remove_dir_all(dir.path().join(format!("session-{}", p.sessions)));
                }
                MaterialSupply::IdealLoopback | MaterialSupply::None => {}
            }
        }
        Ok(end.counters)
    }
}

/// The server's next bundle session, when a handshake was refused because this client
/// is behind it.
fn bundle_session_behind(e: &TransportError) -> Option<usize> {
    let TransportError::Handshake(f) = e else { return None };
    let m = f.mismatch.as_ref().filter(|m| m.field == "bundle session")?;
    let (server, client) = (m.server.parse::<usize>().ok()?, m.client.parse::<usize>().ok()?);
    (server > client).then_some(server)
}

impl Private {
    fn context(&self, variant: Variant) -> String {
        format!("opening a {variant} session with {}", self.remote.addr)
    }

    /// This session's material and, for a dealt bundle whose server holds material, the
    /// bundle session to name in the handshake. Dealt or opened before connecting, so
    /// material problems are reported before anything leaves this host; a bundle session
    /// is reserved only once the server admitted it.
    fn session_material(
        &mut self,
        variant: Variant,
        model: &LocalModel,
        shape: SessionShape,
    ) -> Result<(Option<Material<P0>>, Option<MaterialBinding>)> {
        let both = registry::spec(variant).material == MaterialNeed::BothParties;
        match &mut self.material {
            MaterialSupply::DealPerSession { dir } => {
                let bundle = dir.path().join(format!("session-{}", self.sessions));
                let plan = plan_session(variant, &self.ctx.weights, &self.ctx.ring, shape)?;
                let mut w = BundleWriter::create(
                    &bundle,
                    &model.fingerprint,
                    variant.name(),
                    Seed::random(&mut OsRng),
                )?;
                deal_sessions(&mut w, &plan, &self.ctx.ring, 1, |_, _| {})?;
                w.finish()?;
                let mut m = Material::<P0>::open(&bundle, Some(&model.fingerprint))?;
                m.start_session(0)?;
                Ok((Some(m), None))
            }
            MaterialSupply::Bundle { dir, open } => {
                let m = match open.take() {
                    Some(m) => m,
                    None => {
                        let m = Material::<P0>::open(dir, Some(&model.fingerprint))?;
                        if let Some(manifest) = m.manifest() {
                            eprintln!(
                                "material: bundle {} ({})",
                                dir.display(),
                                manifest.dealer.role.promise(both)
                            );
                        }
                        m
                    }
                };
                let manifest = m.manifest().context("a dealt bundle has a manifest")?;
                if manifest.variant != variant.name() {
                    bail!(
                        "{}: the bundle was dealt for {}, this session is {variant}",
                        dir.display(),
                        manifest.variant
                    );
                }
                if let Err(why) = shape.check_dealt(manifest.session_shape.as_ref()) {
                    bail!("{}: {why}; nothing was used", dir.display());
                }
                let Some(next) = m.next_session() else {
                    bail!(
                        "{}: every session of this bundle is spent; deal more with `shardlm-client dealer --variant {variant} --sessions K`",
                        dir.display()
                    );
                };
                // Read and check the session's material from disk now, not while the
                // server waits on an admitted session.
                m.verify_session(next)?;
                let binding = MaterialBinding { bundle_id: manifest.bundle_id.clone(), session: next as u64 };
                let mut m = m;
                if both {
                    Ok((Some(m), Some(binding)))
                } else {
                    // The server holds nothing of this bundle: reserve the session now.
                    m.start_session(next)?;
                    Ok((Some(m), None))
                }
            }
            MaterialSupply::IdealLoopback => {
                let lb = self.loopback.as_ref().context("the ideal dealer needs the in-process server")?;
                let (m0, m1) = IdealDealer::new(Seed::random(&mut OsRng)).split();
                lb.mpc_material.lock().map_err(|_| anyhow!("material queue poisoned"))?.push_back(m1);
                Ok((Some(m0), None))
            }
            MaterialSupply::None => Ok((None, None)),
        }
    }
}

/// What a v3-cc client trusts: its policy file, or (only with the explicit insecure flag,
/// and always for the in-process loopback server) the software provider's CA.
fn cc_trust(opts: &ClientOptions, loopback: Option<&Loopback>) -> Result<CcTrust> {
    let software_ca = match (loopback, &opts.cc_software_ca, opts.insecure_software_attestation) {
        (Some(lb), _, _) => Some(lb.software_ca.clone()),
        (None, Some(ca), true) => Some(
            std::fs::read_to_string(ca).with_context(|| format!("--cc-software-ca {}", ca.display()))?,
        ),
        (None, Some(_), false) => bail!(
            "--cc-software-ca trusts the software provider, which gives no hardware protection: say so with --insecure-software-attestation"
        ),
        (None, None, _) => None,
    };
    let policy = match (&opts.cc_policy, &software_ca) {
        (Some(p), _) => Policy::load(p).with_context(|| format!("--cc-policy {}", p.display()))?,
        (None, Some(_)) => Policy::software_only(),
        (None, None) => bail!(
            "v3-cc needs an attestation policy: `--cc-policy FILE` (which hardware must attest the server and what it must show; docs/design.md section 3), or for testing `--insecure-software-attestation --cc-software-ca CA.pem`"
        ),
    };
    Ok(CcTrust { policy, trust: Trust { software_ca } })
}

/// The remote server of `-s`, with its identity and fingerprint flags.
fn remote_from(opts: &ClientOptions) -> Result<Remote> {
    let Some(server) = &opts.server else {
        bail!("say where the server party is: `-s HOST:PORT`, or `--loopback` to run it in this process, or `--local` for the plaintext engine");
    };
    let identity = opts
        .identity
        .as_ref()
        .context("`-s` needs `--identity DIR` (make one with `shardlm-client keygen --out DIR`)")?;
    let server_fingerprint = opts
        .server_fingerprint
        .clone()
        .context("`-s` needs `--server-fingerprint` (printed by `shardlm-server keygen` on the server)")?;
    Ok(Remote {
        addr: parse_server(server)?,
        identity: Identity::load(identity)?,
        server_fingerprint,
        config: QuicConfig {
            initial_window: opts.initial_window,
            ..QuicConfig::with_timeouts(opts.timeouts)
        },
    })
}
