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
use shardlm_configs::{FixedPoint, Timeouts, Variant};
use shardlm_gpu::Backend;
use shardlm_model::fingerprint::fingerprint;
use shardlm_model::{ModelDir, Weights};
use shardlm_mpc::material::{BundleWriter, IdealDealer, Manifest, Material};
use shardlm_mpc::prg::Seed;
use shardlm_mpc::share::P0;
use shardlm_transport::handshake::ServerInfo;
use shardlm_transport::Counters;
use shardlm_transport::{Identity, QuicChannel, QuicClient, QuicConfig, QuicServer};
use shardlm_variants::plan::{deal_sessions, plan_session, SessionShape};
use shardlm_variants::registry::{self, MaterialNeed};
use shardlm_variants::server::{MpcMaterial, MpcMaterialQueue, ServerParty};
use shardlm_variants::session::{open_local, open_private, ClientContext, ClientSession};
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
    /// Opens a session of `variant` for `model`: connect, handshake, return the channel.
    pub fn session(&self, variant: Variant, model: &LocalModel) -> Result<(QuicChannel, ServerInfo)> {
        let mut id = [0u8; 16];
        rand::RngCore::fill_bytes(&mut OsRng, &mut id);
        QuicClient::session(
            self.addr,
            &self.identity,
            &self.server_fingerprint,
            self.config.clone(),
            variant.name(),
            &model.fingerprint,
            id,
        )
        .with_context(|| format!("opening a {variant} session with {}", self.addr))
    }

    /// The server's devices as its `info` reports them.
    pub fn devices(&self) -> Result<String> {
        let info =
            QuicClient::info(self.addr, &self.identity, &self.server_fingerprint, self.config.clone())?;
        Ok(info.devices.join(", "))
    }
}

/// A server party running in this process on 127.0.0.1 with ephemeral identities:
/// `--loopback` and `demo`. Traffic goes through real QUIC.
pub struct Loopback {
    /// How the client reaches it.
    pub remote: Remote,
    /// Where the in-process server takes each fully private session's P1 material from.
    pub mpc_material: MpcMaterialQueue,
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

    /// Prepares the server party for `model` on `backend` and starts serving.
    pub fn start(model: &LocalModel, backend: Arc<dyn Backend>, timeouts: Timeouts) -> Result<Self> {
        let server_id = Identity::generate("shardlm-server")?;
        let client_id = Identity::generate("shardlm-client")?;
        let mpc_material = MpcMaterialQueue::default();
        let party = Arc::new(
            ServerParty::new(model.weights.clone(), FixedPoint::default(), backend.clone())?
                .with_mpc_material(MpcMaterial::Queue(mpc_material.clone())),
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
            s.serve(&info, move |mut chan, hello| party.serve_client(&mut chan, &hello.request).map(|_| ()))
        })?;
        Ok(Self { remote, mpc_material, ring, server, thread: Some(thread) })
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
    /// v3: rows per pipelined chunk.
    pub chunk_rows: Option<usize>,
    /// QUIC initial congestion window in bytes.
    pub initial_window: u64,
    /// Network deadlines.
    pub timeouts: Timeouts,
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
            let lb = Loopback::start(model, backend.clone(), opts.timeouts)?;
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
            (None, MaterialNeed::None, _) => bail!("{variant} is not available as a client session in this build"),
        };
        let ctx = ClientContext { weights: model.weights.clone(), ring, chunk_rows: opts.chunk_rows };
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
        let material = p.take_material(variant, model, shape)?;
        let (chan, _) = p.remote.session(variant, model)?;
        Ok(open_private(variant, &p.ctx, Box::new(chan), material, Seed::random(&mut OsRng))?)
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
                MaterialSupply::IdealLoopback => {}
            }
        }
        Ok(end.counters)
    }
}

impl Private {
    /// This session's material, positioned at the session's start.
    fn take_material(
        &mut self,
        variant: Variant,
        model: &LocalModel,
        shape: SessionShape,
    ) -> Result<Material<P0>> {
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
                Ok(Material::<P0>::open(&bundle, Some(&model.fingerprint))?)
            }
            MaterialSupply::Bundle { dir, open } => {
                let mut m = match open.take() {
                    Some(m) => m,
                    None => Material::<P0>::open(dir, Some(&model.fingerprint))?,
                };
                let manifest = Manifest::read(dir)?;
                if manifest.variant != variant.name() {
                    bail!(
                        "{}: the bundle was dealt for {}, this session is {variant}",
                        dir.display(),
                        manifest.variant
                    );
                }
                let start = manifest.next_session_start(m.consumed()).cloned().with_context(|| {
                    format!(
                        "{}: every session of this bundle is used; deal more with `shardlm-client dealer --variant {variant} --sessions K`",
                        dir.display()
                    )
                })?;
                m.advance_to(&start)?;
                Ok(m)
            }
            MaterialSupply::IdealLoopback => {
                let lb = self.loopback.as_ref().context("the ideal dealer needs the in-process server")?;
                let (m0, m1) = IdealDealer::new(Seed::random(&mut OsRng)).split();
                lb.mpc_material.lock().map_err(|_| anyhow!("material queue poisoned"))?.push_back(m1);
                Ok(m0)
            }
        }
    }
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
