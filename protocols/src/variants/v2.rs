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

use crate::model::kernels::{self, LayerCache, Rope, Tensor};
use crate::model::{Linear, Logits, ModelOps, Norm, Rows, Weights};
use rayon::prelude::*;
use shardlm_configs::{FixedPoint, ModelConfig};
use shardlm_gpu::{Backend, RingMatrix};
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
    #[error("material: {0}")]
    Material(String),
    /// The peer sent something the protocol does not allow.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// Plaintext engine error (token out of range, cache mismatch).
    #[error(transparent)]
    Engine(#[from] crate::model::EngineError),
    /// Backend error.
    #[error(transparent)]
    Backend(#[from] shardlm_gpu::BackendError),
}

/// Encodes `x` with `frac_bits` fractional bits into the ring (round to nearest, two's
/// complement).
pub fn encode(x: f32, frac_bits: u32) -> u64 {
    ((x as f64) * (1u64 << frac_bits) as f64).round() as i64 as u64
}

/// Decodes a ring element with `frac_bits` fractional bits as a signed value.
pub fn decode(v: u64, frac_bits: u32) -> f64 {
    (v as i64) as f64 / (1u64 << frac_bits) as f64
}

/// The public weights in ring encoding, `enc(W)` with `F_w` fractional bits, per linear
/// unit: what the server multiplies by and what the dealer computes `S` with.
pub struct RingWeights {
    config: ModelConfig,
    fixed: FixedPoint,
    units: Vec<(Linear, RingMatrix)>,
}

impl RingWeights {
    /// Encodes every linear unit of `w` and prepares it on `backend` (on a GPU backend:
    /// uploads it once).
    pub fn encode(w: &Weights, fixed: FixedPoint, backend: &dyn Backend) -> Result<Self, V2Error> {
        let units = Linear::all(&w.config)
            .into_iter()
            .map(|lin| {
                let v = w.linear(lin);
                let enc: Vec<u64> = v.weight.par_iter().map(|&x| encode(x, fixed.weight_frac_bits)).collect();
                Ok((lin, backend.prepare_ring(&enc, v.d_out, v.d_in)?))
            })
            .collect::<Result<_, V2Error>>()?;
        Ok(Self { config: w.config.clone(), fixed, units })
    }

    /// `enc(W)` of a unit, `d_out x d_in`, prepared for ring GEMM.
    pub fn unit(&self, lin: Linear) -> &RingMatrix {
        let i = match lin {
            Linear::LmHead => self.units.len() - 1,
            Linear::Qkv(l) => 4 * l,
            Linear::O(l) => 4 * l + 1,
            Linear::GateUp(l) => 4 * l + 2,
            Linear::Down(l) => 4 * l + 3,
        };
        debug_assert_eq!(self.units[i].0, lin);
        &self.units[i].1
    }

    /// The model shape.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The encoding.
    pub fn fixed(&self) -> FixedPoint {
        self.fixed
    }
}

/// A mask and its image for one request: `R` (`n x d_in`) and `S = R enc(W)^T`
/// (`n x d_out`). Held by the client only; used once.
pub struct MaskedLinear {
    /// The mask.
    pub r: Vec<u64>,
    /// Its image under the unit's weights.
    pub s: Vec<u64>,
}

/// Where the client's one-time masks come from: the dealer's material file, or an
/// in-process dealer in tests. Each call must return fresh material.
pub trait MaskSource {
    /// The material for the next request of `linear` on `n` positions.
    fn next_masked_linear(&mut self, linear: Linear, n: usize, d_in: usize, d_out: usize) -> Result<MaskedLinear, V2Error>;
}

/// Computes `S = R * enc(W)^T` for a mask: the dealer's work for one request.
pub fn mask_image(
    backend: &dyn Backend,
    weights: &RingWeights,
    linear: Linear,
    r: &[u64],
    n: usize,
) -> Result<Vec<u64>, V2Error> {
    let (_, d_out) = linear.dims(weights.config());
    let mut s = vec![0u64; n * d_out];
    backend.ring_matmul_prepared(r, weights.unit(linear), n, &mut s)?;
    Ok(s)
}

/// An in-process dealer: fresh uniform masks from a seeded ChaCha stream and their
/// images. For tests and `--loopback` runs; the same math as the material files.
pub struct InProcessDealer {
    weights: Arc<RingWeights>,
    backend: Arc<dyn Backend>,
    rng: rand_chacha::ChaCha20Rng,
}

impl InProcessDealer {
    /// A dealer over ring weights, seeded.
    pub fn new(weights: Arc<RingWeights>, backend: Arc<dyn Backend>, seed: [u8; 32]) -> Self {
        use rand_chacha::rand_core::SeedableRng;
        Self { weights, backend, rng: rand_chacha::ChaCha20Rng::from_seed(seed) }
    }
}

impl MaskSource for InProcessDealer {
    fn next_masked_linear(&mut self, linear: Linear, n: usize, d_in: usize, _d_out: usize) -> Result<MaskedLinear, V2Error> {
        use rand_chacha::rand_core::RngCore;
        let r: Vec<u64> = (0..n * d_in).map(|_| self.rng.next_u64()).collect();
        let s = mask_image(self.backend.as_ref(), &self.weights, linear, &r, n)?;
        Ok(MaskedLinear { r, s })
    }
}

/// Masks dealt ahead of time for a whole planned session, consumed in order: what a
/// material file holds, kept in memory (`--loopback`, tests). Dealing before the session
/// keeps the dealer's work out of the online timings.
pub struct DealtMasks {
    queue: std::collections::VecDeque<(Linear, usize, MaskedLinear)>,
}

impl DealtMasks {
    /// Deals every masked linear request of `plan` (from [`crate::model::planner::Planner`]).
    pub fn deal(
        plan: &[crate::model::planner::PlannedOp],
        weights: &RingWeights,
        backend: &dyn Backend,
        seed: [u8; 32],
    ) -> Result<Self, V2Error> {
        use rand_chacha::rand_core::{RngCore, SeedableRng};
        let mut rng = rand_chacha::ChaCha20Rng::from_seed(seed);
        let mut queue = std::collections::VecDeque::new();
        for op in plan {
            if let crate::model::planner::PlannedOp::Linear { linear, rows, d_in, .. } = op {
                let r: Vec<u64> = (0..rows * d_in).map(|_| rng.next_u64()).collect();
                let s = mask_image(backend, weights, *linear, &r, *rows)?;
                queue.push_back((*linear, *rows, MaskedLinear { r, s }));
            }
        }
        Ok(Self { queue })
    }

    /// Requests left.
    pub fn remaining(&self) -> usize {
        self.queue.len()
    }
}

impl MaskSource for DealtMasks {
    fn next_masked_linear(&mut self, linear: Linear, n: usize, _d_in: usize, _d_out: usize) -> Result<MaskedLinear, V2Error> {
        match self.queue.pop_front() {
            Some((l, rows, m)) if l == linear && rows == n => Ok(m),
            Some((l, rows, _)) => Err(V2Error::Material(format!(
                "the dealt plan expected {l:?} on {rows} positions next, the forward pass asks for {linear:?} on {n}; deal for this prompt length"
            ))),
            None => Err(V2Error::Material(
                "material exhausted: the session needs more tokens than were dealt; raise --max-new-tokens or --prompt-tokens of the dealer".into(),
            )),
        }
    }
}

/// The client party of v2: plaintext nonlinear layers, masked linear requests.
pub struct V2Client<C, M> {
    weights: Arc<Weights>,
    fixed: FixedPoint,
    chan: C,
    masks: M,
    rope: Rope,
    cache: Vec<LayerCache>,
}

impl<C: Channel, M: MaskSource> V2Client<C, M> {
    /// A client for one session over `chan`, drawing masks from `masks`. `weights` are
    /// the public weights (the client uses embeddings, norm gains and biases).
    pub fn new(weights: Arc<Weights>, fixed: FixedPoint, chan: C, masks: M) -> Self {
        let rope = Rope::new(&weights.config);
        let cache = vec![LayerCache::default(); weights.config.num_hidden_layers];
        Self { weights, fixed, chan, masks, rope, cache }
    }

    /// The channel (for counters).
    pub fn channel(&self) -> &C {
        &self.chan
    }

    /// Forgets the cached sequence; the server keeps answering in forward order.
    pub fn reset(&mut self) {
        self.cache.iter_mut().for_each(|c| *c = LayerCache::default());
    }

    /// Ends the session: tells the server with an empty frame and returns the channel.
    pub fn finish(mut self) -> Result<C, V2Error> {
        self.chan.send_bytes(V2_LANE, &[])?;
        Ok(self.chan)
    }
}

impl<C: Channel, M: MaskSource> ModelOps for V2Client<C, M> {
    type Act = Tensor;
    type Error = V2Error;

    fn embed(&mut self, tokens: &[u32]) -> Result<Tensor, V2Error> {
        let h = self.weights.config.hidden_size;
        let vocab = self.weights.config.vocab_size;
        let mut data = Vec::with_capacity(tokens.len() * h);
        for &t in tokens {
            if t as usize >= vocab {
                return Err(crate::model::EngineError::TokenOutOfRange { token: t, vocab }.into());
            }
            data.extend_from_slice(&self.weights.embed[t as usize * h..(t as usize + 1) * h]);
        }
        Ok(Tensor::new(tokens.len(), h, data))
    }

    fn rms_norm(&mut self, x: &Tensor, norm: Norm) -> Result<Tensor, V2Error> {
        let w = &self.weights;
        let gain = match norm {
            Norm::Input(l) => &w.layers[l].input_norm,
            Norm::PostAttention(l) => &w.layers[l].post_norm,
            Norm::Final => &w.final_norm,
        };
        Ok(kernels::rms_norm(x, gain, w.config.rms_norm_eps))
    }

    fn linear(&mut self, x: &Tensor, linear: Linear) -> Result<Tensor, V2Error> {
        let (d_in, d_out) = linear.dims(&self.weights.config);
        let n = x.rows;
        let m = self.masks.next_masked_linear(linear, n, d_in, d_out)?;
        if m.r.len() != n * d_in || m.s.len() != n * d_out {
            return Err(V2Error::Material(format!(
                "mask for {linear:?} has {}+{} elements, the request needs {}x{} and {}x{}",
                m.r.len(),
                m.s.len(),
                n,
                d_in,
                n,
                d_out
            )));
        }
        let f = self.fixed.frac_bits;
        let y: Vec<u64> = x.data.par_iter().zip(&m.r).map(|(&v, &r)| encode(v, f).wrapping_add(r)).collect();
        self.chan.send_u64s(V2_LANE, &y)?;
        let z = self.chan.recv_u64s(V2_LANE, n * d_out)?;
        let bits = f + self.fixed.weight_frac_bits;
        let mut out: Vec<f32> = z.par_iter().zip(&m.s).map(|(&z, &s)| decode(z.wrapping_sub(s), bits) as f32).collect();
        if let Some(b) = self.weights.linear(linear).bias {
            for row in out.chunks_mut(d_out) {
                row.iter_mut().zip(b).for_each(|(o, b)| *o += b);
            }
        }
        Ok(Tensor::new(n, d_out, out))
    }

    fn rope(&mut self, qkv: &mut Tensor, start_pos: usize) -> Result<(), V2Error> {
        let c = &self.weights.config;
        self.rope.apply(qkv, 0, c.num_attention_heads, start_pos);
        self.rope.apply(qkv, c.q_dim(), c.num_key_value_heads, start_pos);
        Ok(())
    }

    fn attention(&mut self, qkv: &Tensor, layer: usize, start_pos: usize) -> Result<Tensor, V2Error> {
        let c = &self.weights.config;
        let cached = self.cache[layer].k.len() / c.kv_dim();
        if cached != start_pos {
            return Err(crate::model::EngineError::CacheMismatch { cached, start_pos }.into());
        }
        Ok(kernels::attention(c, qkv, &mut self.cache[layer], start_pos))
    }

    fn swiglu(&mut self, gate_up: &Tensor) -> Result<Tensor, V2Error> {
        Ok(kernels::swiglu(gate_up))
    }

    fn add(&mut self, a: &Tensor, b: &Tensor) -> Result<Tensor, V2Error> {
        Ok(kernels::add(a, b))
    }

    fn select_rows(&mut self, x: &Tensor, rows: Rows) -> Result<Tensor, V2Error> {
        Ok(match rows {
            Rows::All => x.clone(),
            Rows::Last => Tensor::new(1, x.cols, x.row(x.rows - 1).to_vec()),
        })
    }

    fn reveal_logits(&mut self, logits: &Tensor) -> Result<Option<Logits>, V2Error> {
        Ok(Some(Logits { vocab: logits.cols, data: logits.data.clone() }))
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
    backend: Arc<dyn Backend>,
}

impl V2Server {
    /// A server over ring-encoded weights (shared by all sessions).
    pub fn new(weights: Arc<RingWeights>, backend: Arc<dyn Backend>) -> Self {
        Self { weights, backend }
    }

    /// Serves one session until the client's empty end frame. Every request is checked
    /// against the forward order and its size before any work is done.
    pub fn serve_session<C: Channel>(&self, chan: &mut C) -> Result<ServerSessionStats, V2Error> {
        let order = Linear::all(self.weights.config());
        let mut stats = ServerSessionStats::default();
        loop {
            let lin = order[(stats.requests % order.len() as u64) as usize];
            let (d_in, d_out) = lin.dims(self.weights.config());
            let bytes = chan.recv_bytes(V2_LANE)?;
            if bytes.is_empty() {
                if stats.requests % order.len() as u64 != 0 {
                    return Err(V2Error::Protocol(format!("session ended in the middle of a forward pass, before {lin:?}")));
                }
                return Ok(stats);
            }
            if bytes.len() % (8 * d_in) != 0 {
                return Err(V2Error::Protocol(format!(
                    "request for {lin:?} has {} bytes, not a multiple of 8 x d_in = {}",
                    bytes.len(),
                    8 * d_in
                )));
            }
            let n = bytes.len() / (8 * d_in);
            let y = shardlm_transport::le_bytes_to_u64s(&bytes);
            let mut z = vec![0u64; n * d_out];
            self.backend.ring_matmul_prepared(&y, self.weights.unit(lin), n, &mut z)?;
            chan.send_u64s(V2_LANE, &z)?;
            stats.requests += 1;
            if lin == Linear::LmHead {
                stats.forward_passes += 1;
            }
        }
    }
}
