//! One session abstraction for the client party over every variant: open it on a
//! channel with the session's material, run forward passes, read the counters, finish.
//! `generate`, `eval`, `benchmark`, `demo` and `experiment` each have one code path over
//! a `Box<dyn ClientSession>`; adding a variant is one more implementor here, not an
//! arm in every command.
//!
//! Every session wraps its [`ModelOps`] implementation in [`Timed`], so per-phase times
//! (embedding, norms, linear units with their round trips, attention, ...) come for free.

use crate::limits::recv_budget;
use crate::plan::SessionShape;
use crate::registry::{spec, MaterialNeed};
use crate::v2::{V2Client, V2Error};
use crate::v3::{Schedule, V3Client, V3Error};
use crate::v3_cc::{CcClient, CcError, CcTrust};
use crate::v3_mpc::{MpcParty, MpcPartyError, Nonlinear};
use crate::RingWeights;
use shardlm_configs::{FixedPoint, ModelConfig, Variant};
use shardlm_gpu::Backend;
use shardlm_model::qwen2::forward;
use shardlm_model::timing::{PhaseTimes, Timed};
use shardlm_model::{EngineError, Logits, ModelOps, PlainEngine, Rows, Weights};
use shardlm_mpc::material::Material;
use shardlm_mpc::prg::Seed;
use shardlm_mpc::share::P0;
use shardlm_transport::{close_code, Channel, Counters, Lane};
use std::sync::Arc;
use std::time::Duration;

/// A client session's failure.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// A v2 session failed.
    #[error(transparent)]
    V2(#[from] V2Error),
    /// A v3 session failed.
    #[error(transparent)]
    V3(#[from] V3Error),
    /// A v3-mpc or v3-ot session failed.
    #[error(transparent)]
    Mpc(#[from] MpcPartyError),
    /// The plaintext engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A v3-cc session failed (attestation, sealed channel, protocol).
    #[error(transparent)]
    Cc(#[from] CcError),
    /// The variant revealed no logits to the client (a protocol bug, never expected).
    #[error("the {0} session revealed no logits to the client")]
    NoLogits(Variant),
    /// The variant cannot be opened this way.
    #[error("{0}")]
    Unsupported(String),
}

/// What a finished session leaves behind.
#[derive(Debug, Default)]
pub struct SessionEnd {
    /// The channel's counters at the end (all traffic of the session).
    pub counters: Counters,
    /// The material source, for the next session of the same bundle.
    pub material: Option<Material<P0>>,
}

/// A client session of any variant.
pub trait ClientSession: Send {
    /// The variant.
    fn variant(&self) -> Variant;
    /// One forward pass: logits for `rows` of `tokens` at positions `start..`.
    fn forward(&mut self, tokens: &[u32], start: usize, rows: Rows) -> Result<Logits, SessionError>;
    /// Traffic so far.
    fn counters(&self) -> Counters;
    /// Time per operation kind so far.
    fn phases(&self) -> &PhaseTimes;
    /// What the user must know about this session, one line each (v3-cc: what the
    /// attestation established, or that nothing protects it). Printed by every command
    /// and recorded in every report.
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
    /// Chunks the last pass of several rows was cut into (v3's wavefront); 1 for
    /// variants that send each unit whole.
    fn prefill_chunks(&self) -> usize {
        1
    }
    /// Ends the session cleanly (the server is told, its last messages are waited for)
    /// and returns the counters and the material source.
    fn finish(self: Box<Self>) -> Result<SessionEnd, SessionError>;
}

/// The operations a variant's client side offers beyond [`ModelOps`].
trait SessionOps: ModelOps + Send {
    fn counters(&self) -> Counters;
    fn end(self) -> Result<SessionEnd, SessionError>;
}

/// A [`ClientSession`] over any [`SessionOps`].
struct OpsSession<O> {
    variant: Variant,
    config: ModelConfig,
    ops: Timed<O>,
}

impl<O> ClientSession for OpsSession<O>
where
    O: SessionOps,
    SessionError: From<O::Error>,
{
    fn variant(&self) -> Variant {
        self.variant
    }
    fn forward(&mut self, tokens: &[u32], start: usize, rows: Rows) -> Result<Logits, SessionError> {
        forward(&mut self.ops, &self.config, tokens, start, rows)?.ok_or(SessionError::NoLogits(self.variant))
    }
    fn counters(&self) -> Counters {
        self.ops.inner.counters()
    }
    fn phases(&self) -> &PhaseTimes {
        &self.ops.times
    }
    fn finish(self: Box<Self>) -> Result<SessionEnd, SessionError> {
        self.ops.inner.end()
    }
}

/// How long a finishing client waits for the server to close after its end frame.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Waits for the server's close after the end frame (so nothing in flight is cut off),
/// then closes our side.
fn close_after_end<C: Channel>(chan: &mut C) -> Counters {
    let counters = chan.counters();
    let _ = chan.recv_bytes_within(Lane::Control, CLOSE_WAIT);
    chan.close(close_code::NORMAL, "done");
    counters
}

impl<C: Channel> SessionOps for V2Client<C, Material<P0>> {
    fn counters(&self) -> Counters {
        self.channel().counters()
    }
    fn end(self) -> Result<SessionEnd, SessionError> {
        let (mut chan, material) = self.finish_with_material()?;
        Ok(SessionEnd { counters: close_after_end(&mut chan), material: Some(material) })
    }
}

impl<C: Channel> SessionOps for MpcParty<P0, C, Material<P0>> {
    fn counters(&self) -> Counters {
        MpcParty::counters(self)
    }
    fn end(mut self) -> Result<SessionEnd, SessionError> {
        self.end_steps()?;
        let counters = MpcParty::counters(&self);
        let (mut chan, material) = self.finish()?;
        close_after_end(&mut chan);
        Ok(SessionEnd { counters, material: Some(material) })
    }
}

impl<C: Channel> ClientSession for V3Client<C, Material<P0>> {
    fn variant(&self) -> Variant {
        Variant::V3
    }
    fn forward(&mut self, tokens: &[u32], start: usize, rows: Rows) -> Result<Logits, SessionError> {
        Ok(V3Client::forward(self, tokens, start, rows)?)
    }
    fn counters(&self) -> Counters {
        V3Client::counters(self)
    }
    fn phases(&self) -> &PhaseTimes {
        V3Client::phases(self)
    }
    fn prefill_chunks(&self) -> usize {
        V3Client::prefill_chunks(self)
    }
    fn finish(self: Box<Self>) -> Result<SessionEnd, SessionError> {
        let counters = self.counters();
        let (mut chan, material) = self.finish_with_material()?;
        close_after_end(&mut chan);
        Ok(SessionEnd { counters, material: Some(material) })
    }
}

impl SessionOps for PlainEngine {
    fn counters(&self) -> Counters {
        Counters::default()
    }
    fn end(self) -> Result<SessionEnd, SessionError> {
        Ok(SessionEnd::default())
    }
}

/// What a client needs to open sessions of a model: its copy of the public weights and
/// the same weights in ring encoding (the dealer and v3-mpc multiply by them).
#[derive(Clone)]
pub struct ClientContext {
    /// The public weights.
    pub weights: Arc<Weights>,
    /// The weights in ring encoding.
    pub ring: Arc<RingWeights>,
    /// v3: how multi-row passes are cut into chunks (the opener fills in the link of
    /// each session).
    pub schedule: Schedule,
    /// The model fingerprint (v3-cc binds its evidence to it).
    pub model_fingerprint: String,
    /// v3-cc: the attestation policy and trust (`None`: v3-cc refused).
    pub cc: Option<CcTrust>,
}

/// Opens the plaintext engine as a session (no channel, no material).
pub fn open_local(weights: Arc<Weights>, backend: Arc<dyn Backend>) -> Box<dyn ClientSession> {
    let config = weights.config.clone();
    Box::new(OpsSession {
        variant: Variant::Local,
        config,
        ops: Timed::new(PlainEngine::new(weights, backend)),
    })
}

/// Opens the client side of a private session of `variant` and `shape` on `chan`
/// (handshake done) with this session's `material` (P0's part, positioned at the
/// session's start). What the server may send is bounded by the shape
/// ([`crate::limits::recv_budget`]). `rng_seed` seeds the party's private randomness
/// (fresh OS entropy in deployment).
pub fn open_private(
    variant: Variant,
    shape: SessionShape,
    ctx: &ClientContext,
    mut chan: Box<dyn Channel>,
    material: Option<Material<P0>>,
    rng_seed: Seed,
) -> Result<Box<dyn ClientSession>, SessionError> {
    let s = spec(variant);
    if !s.implemented || !s.needs_server {
        return Err(SessionError::Unsupported(format!(
            "{variant} has no private client session in this build"
        )));
    }
    let config = ctx.weights.config.clone();
    chan.set_recv_budget(recv_budget(variant, &config, shape, false));
    if variant == Variant::V3Cc {
        let trust = ctx.cc.as_ref().ok_or_else(|| {
            SessionError::Unsupported("v3-cc needs an attestation policy (--cc-policy FILE)".into())
        })?;
        return Ok(Box::new(CcClient::open(chan, &config, &ctx.model_fingerprint, trust)?));
    }
    let material = material
        .ok_or_else(|| SessionError::Unsupported(format!("{variant} needs this session's material")))?;
    Ok(match (variant, s.material, Nonlinear::of(variant)) {
        (Variant::V2, MaterialNeed::ClientOnly, _) => {
            let client = V2Client::new(ctx.weights.clone(), FixedPoint::default(), chan, material);
            Box::new(OpsSession { variant, config, ops: Timed::new(client) })
        }
        (Variant::V3, MaterialNeed::ClientOnly, _) => {
            Box::new(V3Client::new(ctx.weights.clone(), FixedPoint::default(), chan, material, ctx.schedule))
        }
        // v3-mpc and v3-ot: the same party, computing the nonlinear layers their way.
        (_, MaterialNeed::BothParties, Some(nonlinear)) => {
            let party = MpcParty::new(ctx.weights.clone(), ctx.ring.clone(), chan, material, rng_seed)
                .with_nonlinear(nonlinear)
                .driven();
            Box::new(OpsSession { variant, config, ops: Timed::new(party) })
        }
        _ => return Err(SessionError::Unsupported(format!("no client session for {variant} in this build"))),
    })
}
