//! The server party's session dispatch: one loaded model in the encodings every served
//! variant needs, shared by all sessions, and the per-variant session loop. IO-free
//! beyond [`Channel`]; the QUIC accept loop lives in the transport crate and the binary.

use super::v2::{RingWeights, ServerSessionStats, V2Error, V2Server};
use crate::model::Weights;
use shardlm_configs::{FixedPoint, ModelConfig, Variant};
use shardlm_gpu::Backend;
use shardlm_transport::Channel;
use std::sync::Arc;

/// Variants this server build serves.
pub const SERVED_VARIANTS: &[Variant] = &[Variant::V2, Variant::V3];

/// A loaded server party.
pub struct ServerParty {
    config: ModelConfig,
    v2: V2Server,
    backend_name: String,
}

impl ServerParty {
    /// Prepares the model: weights in ring encoding, prepared on the backend once.
    pub fn new(weights: &Weights, fixed: FixedPoint, backend: Arc<dyn Backend>) -> Result<Self, V2Error> {
        let backend_name = backend.name();
        let ring = Arc::new(RingWeights::encode(weights, fixed, backend)?);
        Ok(Self { config: weights.config.clone(), backend_name, v2: V2Server::new(ring) })
    }

    /// The model shape.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The backend's name, for `info`.
    pub fn backend_name(&self) -> &str {
        &self.backend_name
    }

    /// Runs one session of `variant` on `chan` until the client ends it.
    pub fn serve_session<C: Channel>(&self, chan: &mut C, variant: Variant) -> Result<ServerSessionStats, V2Error> {
        match variant {
            Variant::V2 => self.v2.serve_session(chan),
            Variant::V3 => self.v2.serve_pipelined(chan),
            other => Err(V2Error::Protocol(format!("variant {other} is not served by this server"))),
        }
    }
}
