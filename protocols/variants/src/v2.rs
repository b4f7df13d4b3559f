//! v2: the client-assisted linear layer (DESIGN.md section 3).
//!
//! For a public weight `W` (`d_out x d_in`) the dealer samples a one-time mask `R`
//! (`n x d_in`) and computes `S = R * enc(W)^T mod 2^64`; only the client holds `R` and
//! `S`. Online, per linear unit ([`Linear`]: qkv, o, gate+up, down, and the head):
//!
//! ```text
//! client -> server   Y = enc(X) + R            8 * n * d_in bytes   (Lane::Masked(0))
//! server -> client   Z = Y * enc(W)^T          8 * n * d_out bytes  (Lane::Masked(0))
//! client             Z - S = enc(X) * enc(W)^T, decoded with F + F_w bits, plus bias
//! ```
//!
//! One round per linear unit: `4 * layers + 1` rounds and exactly
//! `8 * n * (d_in + d_out)` payload bytes per unit per forward pass. `Y` is uniformly
//! random to the server whatever `X` is, because `R` is uniform and used once. The
//! server learns only the shape of each request (`n`, which is public: the prompt length).
//! The client computes embeddings, RMSNorm, RoPE, attention with its own KV cache,
//! SwiGLU and sampling in plaintext with the reference kernels.
//!
//! The server needs no per-session state beyond the position in the forward order: it
//! answers units in [`Linear::all`] order, takes `n` from the payload length, and ends
//! the session on an empty frame.

use crate::limits::{check_pass, unit_rows};
use crate::plan::SessionShape;
use crate::RingWeights;
use rayon::prelude::*;
use shardlm_configs::FixedPoint;
use shardlm_model::kernels::Tensor;
use shardlm_model::plain::ClearState;
use shardlm_model::{Linear, ModelOps, Weights};
use shardlm_mpc::masked_linear as masked;
use shardlm_mpc::material::{MaskedLinear, MaskedLinearRequest};
use shardlm_mpc::material::{MaterialError, MaterialSource};
use shardlm_mpc::ring::{decode, encode_f32};
use shardlm_mpc::share::P0;
use shardlm_transport::{Channel, Lane, TransportError};
use std::sync::Arc;

/// The lane v2 requests travel on.
pub const V2_LANE: Lane = Lane::Masked(0);

/// Errors of a v2 session.
#[derive(Debug, thiserror::Error)]
pub enum V2Error {
    /// The channel failed (peer gone, timeout, malformed frame).
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// Material is missing, exhausted, or does not fit the request.
    #[error(transparent)]
    Material(#[from] MaterialError),
    /// The masked-linear core rejected its operands.
    #[error(transparent)]
    Mpc(#[from] shardlm_mpc::MpcError),
    /// The peer sent something the protocol does not allow.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// Plaintext engine error (token out of range, cache mismatch).
    #[error(transparent)]
    Engine(#[from] shardlm_model::EngineError),
    /// Backend error.
    #[error(transparent)]
    Backend(#[from] shardlm_gpu::BackendError),
}

/// The client party of v2: plaintext nonlinear layers, masked linear requests.
pub struct V2Client<C, M> {
    weights: Arc<Weights>,
    fixed: FixedPoint,
    chan: C,
    masks: M,
    clear: ClearState,
}

impl<C: Channel, M: MaterialSource<P0>> V2Client<C, M> {
    /// A client for one session over `chan`, drawing masks from `masks`. `weights` are
    /// the public weights (the client uses embeddings, norm gains and biases).
    pub fn new(weights: Arc<Weights>, fixed: FixedPoint, chan: C, masks: M) -> Self {
        let clear = ClearState::new(weights.clone());
        Self { weights, fixed, chan, masks, clear }
    }

    /// The channel (for counters).
    pub fn channel(&self) -> &C {
        &self.chan
    }

    /// Forgets the cached sequence; the server keeps answering in forward order.
    pub fn reset(&mut self) {
        self.clear.reset();
    }

    /// Ends the session: tells the server with an empty frame and returns the channel.
    pub fn finish(self) -> Result<C, V2Error> {
        self.finish_with_material().map(|(c, _)| c)
    }

    /// Like [`V2Client::finish`], also returning the material source for the next session.
    pub fn finish_with_material(mut self) -> Result<(C, M), V2Error> {
        self.chan.send_bytes(V2_LANE, &[])?;
        Ok((self.chan, self.masks))
    }
}

/// One client-assisted linear unit on the client, v2's and v3's alike: masks `x` with
/// `material` (`Y = enc(x) + R`), hands `Y` to `exchange`, which returns the server's
/// `Z = Y enc(W)^T`, removes `S`, decodes with `F + F_w` fractional bits and adds the
/// unit's bias from `clear`.
pub(crate) fn client_linear<E: From<shardlm_mpc::MpcError>>(
    clear: &ClearState,
    fixed: FixedPoint,
    x: &Tensor,
    linear: Linear,
    material: MaskedLinear,
    exchange: impl FnOnce(Vec<u64>) -> Result<Vec<u64>, E>,
) -> Result<Tensor, E> {
    let (n, d_out) = (x.rows, material.d_out);
    let f = fixed.frac_bits;
    let x_enc: Vec<u64> = x.data.par_iter().map(|&v| encode_f32(v, f)).collect();
    let (state, y) = masked::client_request(&x_enc, material)?;
    let z = exchange(y)?;
    let product = masked::client_finish(state, &z)?;
    let bits = f + fixed.weight_frac_bits;
    let out: Vec<f32> = product.par_iter().map(|&v| decode(v, bits) as f32).collect();
    let mut out = Tensor::new(n, d_out, out);
    clear.add_bias(&mut out, linear);
    Ok(out)
}

impl<C: Channel, M: MaterialSource<P0>> ModelOps for V2Client<C, M> {
    type Act = Tensor;
    type Error = V2Error;

    shardlm_model::delegate_clear_ops!(clear, V2Error);

    fn linear(&mut self, x: &Tensor, linear: Linear) -> Result<Tensor, V2Error> {
        let c = &self.weights.config;
        let (d_in, d_out) = linear.dims(c);
        let n = x.rows;
        let material = self.masks.take(MaskedLinearRequest {
            n,
            d_in,
            d_out,
            weight: linear.weight_id(c.num_hidden_layers),
        })?;
        let chan = &mut self.chan;
        client_linear(&self.clear, self.fixed, x, linear, material, |y| {
            chan.send_vec(V2_LANE, shardlm_transport::u64s_to_le_bytes(&y))?;
            Ok(chan.recv_u64s(V2_LANE, n * d_out)?)
        })
    }
}

/// What the server did in a session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerSessionStats {
    /// Linear requests answered.
    pub requests: u64,
    /// Forward passes completed (head requests answered).
    pub forward_passes: u64,
}

/// The server party of v2: answers masked linear requests with `Y enc(W)^T`.
pub struct V2Server {
    weights: Arc<RingWeights>,
}

impl V2Server {
    /// A server over ring-encoded weights (shared by all sessions).
    pub fn new(weights: Arc<RingWeights>) -> Self {
        Self { weights }
    }

    /// Serves one session of `shape` until the client's empty end frame. Every request
    /// is checked against the forward order and the declared shape (rows of the pass,
    /// number of passes) before any work is done.
    pub fn serve_session<C: Channel>(
        &self,
        chan: &mut C,
        shape: SessionShape,
    ) -> Result<ServerSessionStats, V2Error> {
        let order = Linear::all(self.weights.config());
        let mut stats = ServerSessionStats::default();
        loop {
            let at = (stats.requests % order.len() as u64) as usize;
            let lin = order[at];
            let pass = (stats.requests / order.len() as u64) as usize;
            let want = unit_rows(shape, lin, pass);
            let done = self.answer_whole(chan, lin, want)?;
            if !done {
                if at != 0 {
                    return Err(V2Error::Protocol(format!(
                        "session ended in the middle of a forward pass, before {lin:?}"
                    )));
                }
                return Ok(stats);
            }
            check_pass(shape, pass).map_err(V2Error::Protocol)?;
            stats.requests += 1;
            if lin == Linear::LmHead {
                stats.forward_passes += 1;
            }
        }
    }

    /// v2: one request of `want` rows for `lin`; `false` on the end frame.
    fn answer_whole<C: Channel>(&self, chan: &mut C, lin: Linear, want: usize) -> Result<bool, V2Error> {
        let (d_in, _) = lin.dims(self.weights.config());
        let bytes = chan.recv_bytes(V2_LANE)?;
        if bytes.is_empty() {
            return Ok(false);
        }
        if bytes.len() != 8 * want * d_in {
            return Err(V2Error::Protocol(format!(
                "request for {lin:?} has {} bytes; the declared shape allows {want} rows x {d_in} x 8 = {} bytes",
                bytes.len(),
                8 * want * d_in
            )));
        }
        let y = shardlm_transport::le_bytes_to_u64s(&bytes);
        let z = self.weights.multiply(lin, &y, want)?;
        chan.send_vec(V2_LANE, shardlm_transport::u64s_to_le_bytes(&z))?;
        Ok(true)
    }
}
