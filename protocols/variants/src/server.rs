//! The server party's session dispatch: one loaded model in the encodings every served
//! variant needs, shared by all sessions, admission of each session's declared shape
//! and material, and the per-variant session loop. IO-free beyond [`Channel`]; the QUIC
//! accept loop lives in the transport crate and the binary.
//!
//! v2/v3 need nothing per session. The fully private variants (v3-mpc, v3-ot) need
//! P1's one-time material for each session: a server that has a source of it
//! ([`ServerParty::with_mpc_material`]) serves the one variant the material is for (a
//! bundle is dealt for one variant; the two differ only in how the nonlinear layers
//! are computed, [`Nonlinear`]). With a dealt bundle the client names the bundle and
//! the session index in the handshake; the server admits it only for its own bundle,
//! for a bound client, and at or after its next unspent session, so both parties stand
//! at the same place of the bundle before any material is consumed.

use super::v2::{ServerSessionStats, V2Error, V2Server};
use super::v3::V3Server;
use super::v3_mpc::{serve_driven, MpcParty, MpcPartyError, Nonlinear};
use crate::limits::{recv_budget, shape_of};
use crate::plan::SessionShape;
use crate::registry::{spec, MaterialNeed};
use crate::v3_cc::CcServer;
use crate::RingWeights;
use shardlm_attest::providers::Collector;
use shardlm_configs::{FixedPoint, ModelConfig, Variant};
use shardlm_gpu::Backend;
use shardlm_model::Weights;
use shardlm_mpc::material::{Material, MaterialError};
use shardlm_mpc::prg::Seed;
use shardlm_mpc::share::P1;
use shardlm_transport::handshake::{
    ClientHello, GemmCost, MaterialBinding, Mismatch, Request, ServerInfo, PROTOCOL_VERSION,
};
use shardlm_transport::{close_code, Channel};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

/// Queue of P1 material for fully private sessions (v3-mpc, v3-ot), one entry per
/// session, filled by the in-process loopback client.
pub type MpcMaterialQueue = Arc<Mutex<VecDeque<Material<P1>>>>;

/// How long a session waits for a bundle another session is using.
pub const BUNDLE_WAIT: Duration = Duration::from_secs(10);

/// Where a server party takes the material of its fully private variant from.
pub enum MpcMaterial {
    /// One entry per session, pushed by an in-process dealer (`--loopback`).
    Queue(MpcMaterialQueue),
    /// P1's part of a dealt bundle (`serve --material DIR/p1`), open (and locked) for
    /// the server's lifetime; sessions are served one at a time, in the bundle's order.
    Bundle(Box<Mutex<Material<P1>>>),
}

/// Errors of a served session.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A v2/v3 session failed.
    #[error(transparent)]
    V2(Box<V2Error>),
    /// A v3-mpc or v3-ot session failed.
    #[error(transparent)]
    Mpc(Box<MpcPartyError>),
    /// This server cannot serve the variant.
    #[error("variant {0} is not served by this server{1}")]
    NotServed(Variant, &'static str),
    /// The session's request breaks what the server admits.
    #[error("{0}")]
    Refused(String),
}

impl From<V2Error> for ServeError {
    fn from(e: V2Error) -> Self {
        ServeError::V2(Box::new(e))
    }
}

impl From<MpcPartyError> for ServeError {
    fn from(e: MpcPartyError) -> Self {
        ServeError::Mpc(Box::new(e))
    }
}

impl From<MaterialError> for ServeError {
    fn from(e: MaterialError) -> Self {
        MpcPartyError::Material(e).into()
    }
}

/// A loaded server party.
pub struct ServerParty {
    config: ModelConfig,
    weights: Arc<Weights>,
    ring: Arc<RingWeights>,
    v2: V2Server,
    v3: V3Server,
    backend_name: String,
    backend: Arc<dyn Backend>,
    mpc: Option<FullyPrivate>,
    cc: Option<CcServer>,
    gemm: Option<GemmCost>,
}

/// The fully private variant a server serves: its material and how its nonlinear
/// layers are computed (which says the variant).
struct FullyPrivate {
    material: MpcMaterial,
    nonlinear: Nonlinear,
}

fn mismatch(
    field: &str,
    server: impl Into<String>,
    client: impl Into<String>,
    hint: impl Into<String>,
) -> Mismatch {
    Mismatch { field: field.into(), server: server.into(), client: client.into(), hint: hint.into() }
}

impl ServerParty {
    /// Prepares the model: weights in ring encoding, prepared on the backend once, and
    /// the backend's GEMM cost measured ([`RingWeights::calibrate`]; v3 clients plan
    /// their chunks with it).
    pub fn new(
        weights: Arc<Weights>,
        fixed: FixedPoint,
        backend: Arc<dyn Backend>,
    ) -> Result<Self, shardlm_gpu::BackendError> {
        let backend_name = backend.name();
        let ring = Arc::new(RingWeights::encode(&weights, fixed, backend.clone())?);
        let gemm = Some(ring.calibrate()?);
        Ok(Self {
            config: weights.config.clone(),
            weights,
            backend_name,
            backend,
            v2: V2Server::new(ring.clone()),
            v3: V3Server::new(ring.clone()),
            ring,
            mpc: None,
            cc: None,
            gemm,
        })
    }

    /// Serves one fully private variant too, `nonlinear.variant()` (v3-mpc for
    /// [`Nonlinear::Polynomial`], v3-ot for [`Nonlinear::Tables`]), taking each
    /// session's P1 material from `source`. A dealt bundle is for one variant: give the
    /// one its manifest names.
    pub fn with_mpc_material(mut self, source: MpcMaterial, nonlinear: Nonlinear) -> Self {
        self.mpc = Some(FullyPrivate { material: source, nonlinear });
        self
    }

    /// The fully private variant this party serves, if any.
    pub fn fully_private(&self) -> Option<Variant> {
        self.mpc.as_ref().map(|m| m.nonlinear.variant())
    }

    /// Serves v3-cc too: the plaintext engine for the model with `fingerprint`,
    /// attested by `collector`'s providers.
    pub fn with_cc(mut self, collector: Arc<Collector>, fingerprint: &str) -> Self {
        self.cc =
            Some(CcServer::new(self.weights.clone(), self.backend.clone(), collector, fingerprint.into()));
        self
    }

    /// The variants this party serves.
    pub fn variants(&self) -> Vec<Variant> {
        let mut v = vec![Variant::V2, Variant::V3];
        if self.cc.is_some() {
            v.push(Variant::V3Cc);
        }
        v.extend(self.fully_private());
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
            attestation: self.cc.as_ref().map(CcServer::providers).unwrap_or_default(),
            ring_gemm: self.gemm,
        }
    }

    /// Admits a session before the handshake is answered (after the transport checked
    /// version, variant and model): the declared shape must fit the model, and a session
    /// on a dealt bundle must name this server's bundle, come from a client the bundle
    /// is bound to, and start at or after the next unspent session. Requests that are
    /// not sessions are always admitted.
    pub fn admit(&self, hello: &ClientHello, client_fingerprint: &str) -> Result<(), Mismatch> {
        let Request::Session { variant, params, material, .. } = &hello.request else { return Ok(()) };
        let shape = shape_of(params, &self.config).map_err(|e| {
            mismatch(
                "session shape",
                format!("{} positions", self.config.max_position_embeddings),
                format!("{params:?}"),
                e,
            )
        })?;
        let variant: Variant =
            variant.parse().map_err(|e: String| mismatch("variant", "", variant.as_str(), e))?;
        if spec(variant).material != MaterialNeed::BothParties {
            return Ok(());
        }
        if let Some(served) = self.fully_private().filter(|s| *s != variant) {
            return Err(mismatch("variant", served.name(), variant.name(), other_bundle(served, variant)));
        }
        match (self.mpc.as_ref().map(|m| &m.material), material) {
            (Some(MpcMaterial::Bundle(m)), Some(binding)) => {
                // A session in progress holds the lock; its bundle id and binding do not change.
                match m.try_lock() {
                    Ok(m) => check_binding(&m, binding, client_fingerprint, shape),
                    Err(TryLockError::WouldBlock) => Ok(()),
                    Err(TryLockError::Poisoned(p)) => {
                        check_binding(&p.into_inner(), binding, client_fingerprint, shape)
                    }
                }
            }
            (Some(MpcMaterial::Bundle(_)), None) => Err(mismatch(
                "bundle",
                "a dealt bundle",
                "none",
                "this server serves from a dealt bundle: run the client with `--material DIR/p0` of the same bundle",
            )),
            _ => Ok(()),
        }
    }

    /// Handles one admitted client whose handshake asked for `request`: runs the session
    /// of its variant, then closes the channel (normally, or as a protocol violation with
    /// the error as the reason, which the client reports). `Ok(None)` for requests that
    /// are not sessions (the accept loop answers those).
    pub fn serve_client<C: Channel>(
        &self,
        chan: &mut C,
        request: &Request,
    ) -> Result<Option<ServerSessionStats>, String> {
        let Request::Session { variant, params, material, .. } = request else { return Ok(None) };
        let outcome = variant.parse::<Variant>().and_then(|v| {
            let shape = shape_of(params, &self.config)?;
            chan.set_recv_budget(recv_budget(v, &self.config, shape, true));
            self.serve_session(chan, v, shape, material.as_ref()).map_err(|e| e.to_string())
        });
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

    /// Runs one session of `variant` and `shape` on `chan` until the client ends it.
    pub fn serve_session<C: Channel>(
        &self,
        chan: &mut C,
        variant: Variant,
        shape: SessionShape,
        binding: Option<&MaterialBinding>,
    ) -> Result<ServerSessionStats, ServeError> {
        match variant {
            Variant::V2 => Ok(self.v2.serve_session(chan, shape)?),
            Variant::V3Cc => match &self.cc {
                Some(cc) => {
                    let passes = cc.serve(chan, shape).map_err(|e| ServeError::Refused(e.to_string()))?;
                    Ok(ServerSessionStats { requests: passes, forward_passes: passes })
                }
                None => Err(ServeError::NotServed(variant, ": start it with --cc-provider")),
            },
            Variant::V3 => Ok(self.v3.serve_session(chan, shape)?),
            Variant::V3Mpc | Variant::V3Ot => {
                let Some(mpc) = self.mpc.as_ref() else {
                    return Err(ServeError::NotServed(
                        variant,
                        match variant {
                            Variant::V3Ot => {
                                ": start it with --material DIR/p1 (P1's part of a v3-ot bundle)"
                            }
                            _ => ": start it with --material DIR/p1 (P1's part of a v3-mpc bundle)",
                        },
                    ));
                };
                let served = mpc.nonlinear.variant();
                if served != variant {
                    return Err(ServeError::Refused(other_bundle(served, variant)));
                }
                let passes = match &mpc.material {
                    MpcMaterial::Queue(queue) => {
                        let mut material = queue
                            .lock()
                            .map_err(|_| ServeError::NotServed(variant, ": its material queue is poisoned"))?
                            .pop_front()
                            .ok_or(ServeError::NotServed(
                                variant,
                                ": no material was dealt for this session",
                            ))?;
                        self.run_mpc(chan, &mut material, mpc.nonlinear, shape)?
                    }
                    MpcMaterial::Bundle(bundle) => {
                        let binding = binding.ok_or_else(|| {
                            ServeError::Refused(
                                "a session on a dealt bundle must name its bundle session".into(),
                            )
                        })?;
                        let mut slot = wait_for(bundle, BUNDLE_WAIT)?;
                        let index = usize::try_from(binding.session).unwrap_or(usize::MAX);
                        // The handshake admitted it; check again under the lock, then skip
                        // forward to it and reserve it before any material is used.
                        check_binding(&slot, binding, "", shape)
                            .map_err(|m| ServeError::Refused(m.to_string()))?;
                        slot.start_session(index)?;
                        self.run_mpc(chan, &mut slot, mpc.nonlinear, shape)?
                    }
                };
                Ok(ServerSessionStats { requests: 0, forward_passes: passes })
            }
            other => Err(ServeError::NotServed(other, "")),
        }
    }

    fn run_mpc<C: Channel>(
        &self,
        chan: &mut C,
        material: &mut Material<P1>,
        nonlinear: Nonlinear,
        shape: SessionShape,
    ) -> Result<u64, ServeError> {
        let seed = Seed::random(&mut rand_core::OsRng);
        let party = MpcParty::new(self.weights.clone(), self.ring.clone(), chan, material, seed)
            .with_nonlinear(nonlinear)
            .driven();
        let (passes, _, _) = serve_driven(party, &self.config, shape)?;
        Ok(passes)
    }
}

/// Why a server whose material is for the fully private variant `served` refuses a
/// session of the other one, `asked`.
fn other_bundle(served: Variant, asked: Variant) -> String {
    format!(
        "this server's material is a {served} bundle; {asked} sessions need a server started with --material DIR/p1 of a {asked} bundle"
    )
}

/// The bundle's lock, waiting at most `wait` for a session that holds it.
fn wait_for(
    bundle: &Mutex<Material<P1>>,
    wait: Duration,
) -> Result<MutexGuard<'_, Material<P1>>, ServeError> {
    let until = Instant::now() + wait;
    loop {
        match bundle.try_lock() {
            Ok(g) => return Ok(g),
            Err(TryLockError::Poisoned(p)) => return Ok(p.into_inner()),
            Err(TryLockError::WouldBlock) if Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(TryLockError::WouldBlock) => {
                return Err(ServeError::Refused(format!(
                "the server's bundle is in use by another session for more than {wait:?}; retry when it ends"
            )))
            }
        }
    }
}

/// Whether `binding` fits the bundle `m` for client `client_fingerprint` (empty: not
/// checked again) and a session of `shape` (the shape its sessions were dealt for).
fn check_binding(
    m: &Material<P1>,
    binding: &MaterialBinding,
    client_fingerprint: &str,
    shape: SessionShape,
) -> Result<(), Mismatch> {
    let Some(manifest) = m.manifest() else { return Ok(()) };
    if let Some(dealt) = &manifest.session_shape {
        shape
            .check_dealt(Some(dealt))
            .map_err(|why| mismatch("bundle shape", dealt.to_string(), shape.dealt().to_string(), why))?;
    }
    if binding.bundle_id != manifest.bundle_id {
        return Err(mismatch(
            "bundle",
            &manifest.bundle_id,
            &binding.bundle_id,
            "the two parties hold parts of different bundles: give the client the p0 part of the server's bundle",
        ));
    }
    if !client_fingerprint.is_empty()
        && !manifest.bound_clients.is_empty()
        && !manifest.bound_clients.iter().any(|c| c == client_fingerprint)
    {
        return Err(mismatch(
            "bundle client",
            manifest.bound_clients.join(", "),
            client_fingerprint,
            "this bundle was dealt for other clients (dealer --bind-client)",
        ));
    }
    let next = m.next_session();
    match next {
        Some(next) if binding.session as usize >= next => Ok(()),
        _ => Err(mismatch(
            "bundle session",
            next.map_or_else(|| "none left".to_string(), |n| n.to_string()),
            binding.session.to_string(),
            format!(
                "the client's part is behind the server's (a session was lost on one side); {}",
                next.map_or_else(
                    || "every session of this bundle is spent: deal a new one".to_string(),
                    |n| format!("the client skips to session {n}")
                )
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardlm_model::{ModelDir, Rows};
    use shardlm_testkit::fixtures;
    use shardlm_transport::memory::pair;

    fn party() -> ServerParty {
        let md = ModelDir::open(&fixtures::tiny_bytes()).unwrap();
        let backend: Arc<dyn Backend> = Arc::new(shardlm_gpu::CpuBackend::new());
        ServerParty::new(Arc::new(md.load_weights().unwrap()), FixedPoint::default(), backend).unwrap()
    }

    #[test]
    fn a_server_serves_the_one_fully_private_variant_of_its_material() {
        let shape = SessionShape::new(2, 1, Rows::Last);
        let bare = party();
        assert_eq!(bare.fully_private(), None);
        for v in [Variant::V3Mpc, Variant::V3Ot] {
            assert!(!bare.variants().contains(&v));
            let (mut chan, _client) = pair();
            let e = bare.serve_session(&mut chan, v, shape, None).unwrap_err().to_string();
            assert!(e.contains(&format!("{v} bundle")), "{e}");
        }
        for (nonlinear, other) in
            [(Nonlinear::Polynomial, Variant::V3Ot), (Nonlinear::Tables, Variant::V3Mpc)]
        {
            let p = party().with_mpc_material(MpcMaterial::Queue(MpcMaterialQueue::default()), nonlinear);
            let served = nonlinear.variant();
            assert_eq!(p.fully_private(), Some(served));
            assert!(p.variants().contains(&served) && !p.variants().contains(&other));
            assert!(p.info("fp").variants.contains(&served.to_string()));
            let (mut chan, _client) = pair();
            let e = p.serve_session(&mut chan, other, shape, None).unwrap_err().to_string();
            assert!(
                e.contains(&format!("this server's material is a {served} bundle"))
                    && e.contains(&format!(
                        "{other} sessions need a server started with --material DIR/p1 of a {other} bundle"
                    )),
                "{e}"
            );
        }
    }
}
