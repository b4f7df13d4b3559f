//! The server party's session dispatch: one loaded model in the encodings every served
//! variant needs, shared by all sessions, and the per-variant session loop. IO-free
//! beyond [`Channel`]; the QUIC accept loop lives in the transport crate and the binary.
//!
//! v2/v3 need nothing per session. v3-mpc needs P1's one-time material for each session:
//! a server that has a source of it ([`ServerParty::with_mpc_material`]) serves v3-mpc,
//! taking one session's material per client session, in order.

use super::v2::{ServerSessionStats, V2Error, V2Server};
use super::v3_mpc::{serve_driven, MpcParty, MpcPartyError};
use crate::RingWeights;
use shardlm_configs::{FixedPoint, ModelConfig, Variant};
use shardlm_gpu::Backend;
use shardlm_model::Weights;
use shardlm_mpc::material::Material;
use shardlm_mpc::prg::Seed;
use shardlm_mpc::share::P1;
use shardlm_transport::handshake::{Request, ServerInfo, PROTOCOL_VERSION};
use shardlm_transport::{close_code, Channel};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// Queue of P1 material for v3-mpc sessions, one entry per session, filled by the
/// in-process loopback client.
pub type MpcMaterialQueue = Arc<Mutex<VecDeque<Material<P1>>>>;

/// Where a server party takes v3-mpc material from.
pub enum MpcMaterial {
    /// One entry per session, pushed by an in-process dealer (`--loopback`).
    Queue(MpcMaterialQueue),
    /// P1's shard of a dealt bundle (`serve --material DIR`): sessions are taken in
    /// order, each starting where the dealer marked it; v3-mpc sessions are served one
    /// at a time (the shard is used by one session at a time).
    Bundle {
        /// The bundle directory (holding at least `manifest.json` and `p1.shard`).
        dir: std::path::PathBuf,
        /// The model fingerprint the bundle must have been dealt for.
        fingerprint: String,
        /// The open shard between sessions.
        open: Mutex<Option<Material<P1>>>,
    },
}

/// Errors of a served session.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A v2/v3 session failed.
    #[error(transparent)]
    V2(#[from] V2Error),
    /// A v3-mpc session failed.
    #[error(transparent)]
    Mpc(#[from] MpcPartyError),
    /// This server cannot serve the variant.
    #[error("variant {0} is not served by this server{1}")]
    NotServed(Variant, &'static str),
}

/// A loaded server party.
pub struct ServerParty {
    config: ModelConfig,
    weights: Arc<Weights>,
    ring: Arc<RingWeights>,
    v2: V2Server,
    backend_name: String,
    mpc_material: Option<MpcMaterial>,
}

impl ServerParty {
    /// Prepares the model: weights in ring encoding, prepared on the backend once.
    pub fn new(
        weights: Arc<Weights>,
        fixed: FixedPoint,
        backend: Arc<dyn Backend>,
    ) -> Result<Self, shardlm_gpu::BackendError> {
        let backend_name = backend.name();
        let ring = Arc::new(RingWeights::encode(&weights, fixed, backend)?);
        Ok(Self {
            config: weights.config.clone(),
            weights,
            backend_name,
            v2: V2Server::new(ring.clone()),
            ring,
            mpc_material: None,
        })
    }

    /// Serves v3-mpc too, taking each session's P1 material from `source`.
    pub fn with_mpc_material(mut self, source: MpcMaterial) -> Self {
        self.mpc_material = Some(source);
        self
    }

    /// The variants this party serves.
    pub fn variants(&self) -> Vec<Variant> {
        let mut v = vec![Variant::V2, Variant::V3];
        if self.mpc_material.is_some() {
            v.push(Variant::V3Mpc);
        }
        v
    }

    /// The ring-encoded weights, prepared on this party's backend (an in-process client
    /// deals with the same copy instead of encoding its own).
    pub fn ring(&self) -> &Arc<RingWeights> {
        &self.ring
    }

    /// The model shape.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The backend's name, for `info`.
    pub fn backend_name(&self) -> &str {
        &self.backend_name
    }

    /// What `info` answers for this party serving a model with `fingerprint`.
    pub fn info(&self, fingerprint: &str) -> ServerInfo {
        ServerInfo {
            model: self.config.name.clone(),
            architecture: "Qwen2ForCausalLM".into(),
            fingerprint: fingerprint.to_string(),
            variants: self.variants().iter().map(|v| v.to_string()).collect(),
            devices: vec![self.backend_name.clone()],
            version: env!("CARGO_PKG_VERSION").into(),
            protocol_version: PROTOCOL_VERSION,
        }
    }

    /// Handles one accepted client whose handshake asked for `request`: runs the session
    /// of its variant, then closes the channel (normally, or as a protocol violation with
    /// the error as the reason, which the client reports). `Ok(None)` for requests that
    /// are not sessions (the accept loop answers those).
    pub fn serve_client<C: Channel>(
        &self,
        chan: &mut C,
        request: &Request,
    ) -> Result<Option<ServerSessionStats>, String> {
        let Request::Session { variant, .. } = request else { return Ok(None) };
        let outcome = variant
            .parse::<Variant>()
            .map_err(|e| e.to_string())
            .and_then(|v| self.serve_session(chan, v).map_err(|e| e.to_string()));
        match outcome {
            Ok(stats) => {
                chan.close(close_code::NORMAL, "session complete");
                Ok(Some(stats))
            }
            Err(e) => {
                chan.close(close_code::PROTOCOL_VIOLATION, &e);
                Err(e)
            }
        }
    }

    /// Runs one session of `variant` on `chan` until the client ends it.
    pub fn serve_session<C: Channel>(
        &self,
        chan: &mut C,
        variant: Variant,
    ) -> Result<ServerSessionStats, ServeError> {
        match variant {
            Variant::V2 => Ok(self.v2.serve_session(chan)?),
            Variant::V3 => Ok(self.v2.serve_pipelined(chan)?),
            Variant::V3Mpc => match self.mpc_material.as_ref() {
                None => Err(ServeError::NotServed(
                    variant,
                    ": start it with --material DIR (P1's shard of a v3-mpc bundle)",
                )),
                Some(MpcMaterial::Queue(queue)) => {
                    let material = queue
                        .lock()
                        .map_err(|_| ServeError::NotServed(variant, ": its material queue is poisoned"))?
                        .pop_front()
                        .ok_or(ServeError::NotServed(variant, ": no material was dealt for this session"))?;
                    let (passes, _) = self.run_mpc(chan, material)?;
                    Ok(ServerSessionStats { requests: 0, forward_passes: passes })
                }
                Some(MpcMaterial::Bundle { dir, fingerprint, open }) => {
                    let mut slot = open
                        .lock()
                        .map_err(|_| ServeError::NotServed(variant, ": its material lock is poisoned"))?;
                    let mut material = match slot.take() {
                        Some(m) => m,
                        None => {
                            Material::<P1>::open(dir, Some(fingerprint)).map_err(MpcPartyError::Material)?
                        }
                    };
                    let manifest =
                        shardlm_mpc::material::Manifest::read(dir).map_err(MpcPartyError::Material)?;
                    let start =
                        manifest.next_session_start(material.consumed()).cloned().ok_or_else(|| {
                            MpcPartyError::Material(shardlm_mpc::material::MaterialError::Exhausted {
                                kind: "sessions".into(),
                                needed: 1,
                                left: 0,
                            })
                        })?;
                    material.advance_to(&start).map_err(MpcPartyError::Material)?;
                    let (passes, material) = self.run_mpc(chan, material)?;
                    *slot = Some(material);
                    Ok(ServerSessionStats { requests: 0, forward_passes: passes })
                }
            },
            other => Err(ServeError::NotServed(other, "")),
        }
    }

    fn run_mpc<C: Channel>(
        &self,
        chan: &mut C,
        material: Material<P1>,
    ) -> Result<(u64, Material<P1>), ServeError> {
        let seed = Seed::random(&mut rand_core::OsRng);
        let party = MpcParty::new(self.weights.clone(), self.ring.clone(), chan, material, seed).driven();
        let (passes, _, material) = serve_driven(party, &self.config)?;
        Ok((passes, material))
    }
}
