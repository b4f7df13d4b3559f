//! Sessions with a server party: loading the client's copy of the public model,
//! connecting over QUIC (mutual TLS, pinned fingerprints, application handshake), an
//! in-process loopback server with ephemeral identities, and building the client side
//! of a private variant on the connected channel.

use anyhow::{anyhow, bail, Context, Result};
use rand::rngs::OsRng;
use shardlm_configs::{FixedPoint, Timeouts, Variant};
use shardlm_gpu::Backend;
use shardlm_model::fingerprint::fingerprint;
use shardlm_model::Rows;
use shardlm_model::{ModelDir, Weights};
use shardlm_mpc::material::{BundleWriter, IdealDealer, Manifest, Material};
use shardlm_mpc::prg::Seed;
use shardlm_mpc::share::P0;
use shardlm_transport::handshake::ServerInfo;
use shardlm_transport::{
    close_code, Channel, Counters, Identity, QuicChannel, QuicClient, QuicConfig, QuicServer,
};
use shardlm_variants::server::{MpcMaterial, MpcMaterialQueue, ServerParty};
use shardlm_variants::v2::{deal_sessions, Pipeline, RingWeights, V2Client};
use shardlm_variants::v3_mpc::MpcParty;
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        id.copy_from_slice(&blake3::hash(&now.to_le_bytes()).as_bytes()[..16]);
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
}

/// A server party running in this process on 127.0.0.1 with ephemeral identities:
/// `--loopback` and `demo`. Traffic goes through real QUIC.
pub struct Loopback {
    /// How the client reaches it.
    pub remote: Remote,
    /// Where the in-process server takes each v3-mpc session's P1 material from.
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
pub enum MaterialPlan {
    /// The client deals each session itself just before it starts (the default
    /// deployment: the client is its own dealer), into a private temporary bundle that
    /// is deleted when the session ends.
    DealPerSession {
        /// The client's ring-encoded weights.
        ring: Arc<RingWeights>,
        /// Where the per-session bundles go.
        dir: tempfile::TempDir,
    },
    /// A bundle made offline by `shardlm-client dealer`.
    Bundle {
        /// The bundle directory.
        dir: PathBuf,
        /// The open material, kept between sessions.
        open: Option<Material<P0>>,
    },
}

/// A private variant's client side, ready to open sessions: the server it talks to
/// (remote or in-process) and where its material comes from.
pub struct Private {
    /// The variant.
    pub variant: Variant,
    /// The server.
    pub remote: Remote,
    _loopback: Option<Loopback>,
    material: MaterialPlan,
    sessions: u64,
    chunk_rows: Option<usize>,
}

/// The client of a v2 session over QUIC with file-backed material.
pub type V2Session = V2Client<QuicChannel, Material<P0>>;

impl Private {
    /// A private client for `variant` talking to `remote`; `loopback` is kept alive with it.
    pub fn new(variant: Variant, remote: Remote, loopback: Option<Loopback>, material: MaterialPlan) -> Self {
        Self { variant, remote, _loopback: loopback, material, sessions: 0, chunk_rows: None }
    }

    /// v3: overrides the automatic chunk size.
    pub fn with_chunk_rows(mut self, rows: Option<usize>) -> Self {
        self.chunk_rows = rows;
        self
    }

    /// Gets material for a session of `prompt_tokens` + `max_new` tokens and connects.
    pub fn open(
        &mut self,
        model: &LocalModel,
        prompt_tokens: usize,
        max_new: usize,
        rows: Rows,
    ) -> Result<V2Session> {
        self.sessions += 1;
        let masks = match &mut self.material {
            MaterialPlan::DealPerSession { ring, dir } => {
                let bundle = dir.path().join(format!("session-{}", self.sessions));
                let mut w = BundleWriter::create(
                    &bundle,
                    &model.fingerprint,
                    self.variant.name(),
                    Seed::random(&mut OsRng),
                )?;
                deal_sessions(&mut w, ring, prompt_tokens, max_new, rows, 1, |_, _| {})?;
                w.finish()?;
                Material::<P0>::open(&bundle, Some(&model.fingerprint))?
            }
            MaterialPlan::Bundle { dir, open } => {
                let mut m = match open.take() {
                    Some(m) => m,
                    None => Material::<P0>::open(dir, Some(&model.fingerprint))?,
                };
                let manifest = Manifest::read(dir)?;
                if manifest.variant != self.variant.name() {
                    bail!(
                        "{}: the bundle was dealt for {}, this session is {}",
                        dir.display(),
                        manifest.variant,
                        self.variant
                    );
                }
                let start = manifest.next_session_start(m.consumed()).cloned().with_context(|| {
                    format!("{}: every session of this bundle is used; deal more with `shardlm-client dealer --sessions K`", dir.display())
                })?;
                m.advance_to(&start)?;
                m
            }
        };
        let (chan, _) = self.remote.session(self.variant, model)?;
        let client = V2Client::new(model.weights.clone(), FixedPoint::default(), chan, masks);
        Ok(match self.variant {
            Variant::V3 => client.with_pipeline(Pipeline { chunk_rows: self.chunk_rows }),
            _ => client,
        })
    }

    /// Ends a session cleanly, keeps its material source, and returns the traffic.
    pub fn finish(&mut self, client: V2Session) -> Result<Counters> {
        let (mut chan, masks) = client.finish_with_material()?;
        match &mut self.material {
            MaterialPlan::Bundle { open, .. } => *open = Some(masks),
            MaterialPlan::DealPerSession { dir, .. } => {
                // Spent one-time material has no further use: release the disk now.
                drop(masks);
                let _ = std::fs::remove_dir_all(dir.path().join(format!("session-{}", self.sessions)));
            }
        }
        let counters = chan.counters();
        // Wait for the server to close after the end frame, so nothing is cut off.
        let _ = chan.recv_bytes_within(shardlm_transport::Lane::Control, Duration::from_secs(5));
        chan.close(close_code::NORMAL, "done");
        Ok(counters)
    }
}

/// The client side of v3-mpc: both parties compute on shares. With `--loopback` the
/// server party runs in this process and the client deals each session with the ideal
/// dealer, handing P1's half to it; against a remote server, P0's shard of a bundle dealt
/// by `dealer --variant v3-mpc` (the server holds the P1 shard of the same bundle).
pub struct MpcPrivate {
    remote: Remote,
    loopback: Option<Loopback>,
    ring: Arc<RingWeights>,
    bundle: Option<(PathBuf, Option<Material<P0>>)>,
}

/// The client party of a v3-mpc session.
pub type MpcSession = MpcParty<P0, QuicChannel, Material<P0>>;

impl MpcPrivate {
    /// In-process server party on 127.0.0.1 (`--loopback`).
    pub fn loopback(
        model: &LocalModel,
        backend: Arc<dyn Backend>,
        timeouts: shardlm_configs::Timeouts,
    ) -> Result<Self> {
        let loopback = Loopback::start(model, backend, timeouts)?;
        let ring = loopback.ring();
        Ok(Self { remote: loopback.remote.clone(), loopback: Some(loopback), ring, bundle: None })
    }

    /// A remote server party, with P0's shard of a dealt bundle in `bundle`.
    pub fn remote(
        remote: Remote,
        bundle: PathBuf,
        model: &LocalModel,
        backend: Arc<dyn Backend>,
    ) -> Result<Self> {
        let ring = Arc::new(RingWeights::encode(&model.weights, FixedPoint::default(), backend)?);
        Ok(Self { remote, loopback: None, ring, bundle: Some((bundle, None)) })
    }

    /// The server.
    pub fn server(&self) -> &Remote {
        &self.remote
    }

    /// Gets one session's material and connects.
    pub fn open(&mut self, model: &LocalModel) -> Result<MpcSession> {
        let m0 = match (&mut self.bundle, &self.loopback) {
            (Some((dir, open)), _) => {
                let mut m = match open.take() {
                    Some(m) => m,
                    None => Material::<P0>::open(dir, Some(&model.fingerprint))?,
                };
                let manifest = Manifest::read(dir)?;
                if manifest.variant != Variant::V3Mpc.name() {
                    bail!("{}: the bundle was dealt for {}, this session is v3-mpc", dir.display(), manifest.variant);
                }
                let start = manifest.next_session_start(m.consumed()).cloned().with_context(|| {
                    format!("{}: every session of this bundle is used; deal more with `shardlm-client dealer --variant v3-mpc --sessions K`", dir.display())
                })?;
                m.advance_to(&start)?;
                m
            }
            (None, Some(lb)) => {
                let (m0, m1) = IdealDealer::new(Seed::random(&mut OsRng)).split();
                lb.mpc_material.lock().map_err(|_| anyhow!("material queue poisoned"))?.push_back(m1);
                m0
            }
            (None, None) => bail!("v3-mpc needs dealer material: `--material DIR` (from `shardlm-client dealer --variant v3-mpc`) or `--loopback`"),
        };
        let (chan, _) = self.remote.session(Variant::V3Mpc, model)?;
        Ok(MpcParty::new(model.weights.clone(), self.ring.clone(), chan, m0, Seed::random(&mut OsRng))
            .driven())
    }

    /// Ends a session cleanly, keeps a bundle open for the next, returns the traffic.
    pub fn finish(&mut self, mut party: MpcSession) -> Result<Counters> {
        party.end_steps()?;
        let counters = party.counters();
        let (mut chan, material) = party.finish()?;
        if let Some((_, open)) = &mut self.bundle {
            *open = Some(material);
        }
        let _ = chan.recv_bytes_within(shardlm_transport::Lane::Control, Duration::from_secs(5));
        chan.close(close_code::NORMAL, "done");
        Ok(counters)
    }
}
