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

use crate::limits::unit_rows;
use crate::plan::SessionShape;
use crate::RingWeights;
use rayon::prelude::*;
use shardlm_configs::FixedPoint;
use shardlm_model::kernels::Tensor;
use shardlm_model::plain::ClearState;
use shardlm_model::{Linear, ModelOps, Weights};
use shardlm_mpc::masked_linear as masked;
use shardlm_mpc::material::MaskedLinearRequest;
use shardlm_mpc::material::{MaterialError, MaterialSource};
use shardlm_mpc::ring::{decode, encode_f32};
use shardlm_mpc::share::P0;
use shardlm_transport::{Channel, Lane, TransportError};
use std::sync::Arc;

/// The lane v2 requests travel on.
pub const V2_LANE: Lane = Lane::Masked(0);

/// v3's pipelining: the positions of a request are split into chunks that travel on
/// `lanes` masked lanes at once, so the server multiplies chunk `i + 1` while the network
/// carries chunk `i` back and the client decodes chunk `i - 1`. Before the chunks the
/// client sends a 16-byte header `[n, chunk_rows]` on the control lane (`n = 0` ends the
/// session). Same masks, same products, same bits as v2: only the schedule differs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pipeline {
    /// Rows per chunk; `None` lets [`ChunkTuner`] choose from measured costs.
    pub chunk_rows: Option<usize>,
}

/// Masked lanes v3 rotates its chunks over.
pub const V3_LANES: u8 = 4;

impl Pipeline {
    /// The default chunk size before any measurement: about four chunks per request, at
    /// least 8 rows each (a decode step of one row is one chunk, exactly v2).
    pub fn auto_chunk_rows(n: usize) -> usize {
        if n < 16 {
            n.max(1)
        } else {
            n.div_ceil(4).max(8)
        }
    }
}

/// Chooses v3's chunk count per kind of linear unit from measured costs: while a kind
/// has untried candidates (1, 2 or 4 chunks) the next request of that kind tries one;
/// after that, every request uses the candidate with the lowest measured time per row.
/// A prefill has `layers` requests of each kind, so the first three layers explore and
/// the rest exploit. Where overlapping does not pay (two cores shared by both parties on
/// loopback) this converges to one chunk, the v2 schedule; on a GPU server across a
/// network, to the pipelined one. Chunking never changes the result bits.
#[derive(Clone, Debug, Default)]
pub struct ChunkTuner {
    /// (unit kind, chunks) -> (seconds, rows) measured.
    samples: std::collections::BTreeMap<(u8, usize), (f64, usize)>,
}

const CHUNK_CANDIDATES: [usize; 3] = [1, 2, 4];

fn unit_kind(l: Linear) -> u8 {
    match l {
        Linear::Qkv(_) => 0,
        Linear::O(_) => 1,
        Linear::GateUp(_) => 2,
        Linear::Down(_) => 3,
        Linear::LmHead => 4,
    }
}

impl ChunkTuner {
    /// Rows per chunk for the next request of `linear` on `n` rows.
    pub fn choose(&self, linear: Linear, n: usize) -> usize {
        if n < 16 {
            return n.max(1);
        }
        let kind = unit_kind(linear);
        let untried = CHUNK_CANDIDATES.iter().find(|c| !self.samples.contains_key(&(kind, **c)));
        let chunks = match untried {
            Some(c) => *c,
            None => CHUNK_CANDIDATES
                .iter()
                .copied()
                .min_by(|a, b| {
                    let per_row = |c: usize| {
                        self.samples.get(&(kind, c)).map_or(f64::MAX, |(t, r)| t / *r.max(&1) as f64)
                    };
                    per_row(*a).total_cmp(&per_row(*b))
                })
                .unwrap_or(1),
        };
        n.div_ceil(chunks)
    }

    /// Records how long a request of `n` rows in chunks of `rows` took.
    pub fn record(&mut self, linear: Linear, n: usize, rows: usize, seconds: f64) {
        if n < 16 {
            return;
        }
        let e = self.samples.entry((unit_kind(linear), n.div_ceil(rows))).or_default();
        e.0 += seconds;
        e.1 += n;
    }

    /// The chunk count chosen per unit kind so far (for reports).
    pub fn summary(&self) -> Vec<(u8, usize)> {
        (0..5u8)
            .filter_map(|k| {
                CHUNK_CANDIDATES
                    .iter()
                    .filter_map(|c| self.samples.get(&(k, *c)).map(|(t, r)| (*c, t / *r.max(&1) as f64)))
                    .min_by(|a, b| a.1.total_cmp(&b.1))
                    .map(|(c, _)| (k, c))
            })
            .collect()
    }
}

impl Pipeline {
    /// Rows per chunk for a request of `n` rows (never more than `n`).
    pub fn rows(&self, n: usize) -> usize {
        self.chunk_rows.map_or_else(|| Self::auto_chunk_rows(n), |c| c.max(1)).min(n.max(1))
    }

    fn lane(&self, chunk: usize) -> Lane {
        Lane::Masked((chunk % V3_LANES as usize) as u8)
    }
}

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
    pipeline: Option<Pipeline>,
    tuner: ChunkTuner,
}

impl<C: Channel, M: MaterialSource<P0>> V2Client<C, M> {
    /// A client for one session over `chan`, drawing masks from `masks`. `weights` are
    /// the public weights (the client uses embeddings, norm gains and biases).
    pub fn new(weights: Arc<Weights>, fixed: FixedPoint, chan: C, masks: M) -> Self {
        let clear = ClearState::new(weights.clone());
        Self { weights, fixed, chan, masks, clear, pipeline: None, tuner: ChunkTuner::default() }
    }

    /// Makes this a v3 client: requests are pipelined in chunks over several lanes.
    pub fn with_pipeline(mut self, pipeline: Pipeline) -> Self {
        self.pipeline = Some(pipeline);
        self
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
        match self.pipeline {
            None => self.chan.send_bytes(V2_LANE, &[])?,
            Some(_) => self.chan.send_u64s(Lane::Control, &[0, 0])?,
        }
        Ok((self.chan, self.masks))
    }

    /// Sends `Y` and receives `Z = Y enc(W)^T`, in one piece (v2) or pipelined (v3).
    fn exchange(
        &mut self,
        linear: Linear,
        y: &[u64],
        n: usize,
        d_in: usize,
        d_out: usize,
    ) -> Result<Vec<u64>, V2Error> {
        let Some(p) = self.pipeline else {
            self.chan.send_vec(V2_LANE, shardlm_transport::u64s_to_le_bytes(y))?;
            return Ok(self.chan.recv_u64s(V2_LANE, n * d_out)?);
        };
        let started = std::time::Instant::now();
        let rows = match p.chunk_rows {
            Some(_) => p.rows(n),
            None => self.tuner.choose(linear, n),
        };
        self.chan.send_u64s(Lane::Control, &[n as u64, rows as u64])?;
        for (j, chunk) in y.chunks(rows * d_in).enumerate() {
            self.chan.send_vec(p.lane(j), shardlm_transport::u64s_to_le_bytes(chunk))?;
        }
        let mut z = Vec::with_capacity(n * d_out);
        for j in 0..n.div_ceil(rows) {
            let r = rows.min(n - j * rows);
            z.extend(self.chan.recv_u64s(p.lane(j), r * d_out)?);
        }
        self.tuner.record(linear, n, rows, started.elapsed().as_secs_f64());
        Ok(z)
    }

    /// v3: the chunk counts the tuner settled on per unit kind (qkv, o, gate_up, down,
    /// head), from this session's measurements.
    pub fn chunking(&self) -> Vec<(u8, usize)> {
        self.tuner.summary()
    }
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
        let f = self.fixed.frac_bits;
        let x_enc: Vec<u64> = x.data.par_iter().map(|&v| encode_f32(v, f)).collect();
        let (state, y) = masked::client_request(&x_enc, material)?;
        let z = self.exchange(linear, &y, n, d_in, d_out)?;
        let product = masked::client_finish(state, &z)?;
        let bits = f + self.fixed.weight_frac_bits;
        let out: Vec<f32> = product.par_iter().map(|&v| decode(v, bits) as f32).collect();
        let mut out = Tensor::new(n, d_out, out);
        self.clear.add_bias(&mut out, linear);
        Ok(out)
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
        self.serve(chan, shape, None)
    }

    /// Serves one v3 session: every request comes as a header and chunks on
    /// [`V3_LANES`] lanes, in the chunk size the client chose.
    pub fn serve_pipelined<C: Channel>(
        &self,
        chan: &mut C,
        shape: SessionShape,
    ) -> Result<ServerSessionStats, V2Error> {
        self.serve(chan, shape, Some(Pipeline::default()))
    }

    fn serve<C: Channel>(
        &self,
        chan: &mut C,
        shape: SessionShape,
        pipeline: Option<Pipeline>,
    ) -> Result<ServerSessionStats, V2Error> {
        let order = Linear::all(self.weights.config());
        let mut stats = ServerSessionStats::default();
        loop {
            let at = (stats.requests % order.len() as u64) as usize;
            let lin = order[at];
            let pass = (stats.requests / order.len() as u64) as usize;
            let want = unit_rows(shape, lin, pass);
            let done = match pipeline {
                None => self.answer_whole(chan, lin, want)?,
                Some(p) => self.answer_chunks(chan, lin, want, p)?,
            };
            if !done {
                if at != 0 {
                    return Err(V2Error::Protocol(format!(
                        "session ended in the middle of a forward pass, before {lin:?}"
                    )));
                }
                return Ok(stats);
            }
            if pass >= shape.max_new_tokens {
                return Err(V2Error::Protocol(format!(
                    "a forward pass beyond the declared {} (the session's token budget)",
                    shape.max_new_tokens
                )));
            }
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

    /// v3: a header `[n, rows]` and `n / rows` chunks for `lin`; `false` on the end
    /// header.
    fn answer_chunks<C: Channel>(
        &self,
        chan: &mut C,
        lin: Linear,
        want: usize,
        p: Pipeline,
    ) -> Result<bool, V2Error> {
        let (d_in, _) = lin.dims(self.weights.config());
        let header = chan.recv_u64s(Lane::Control, 2)?;
        let (n, rows) = (header[0], header[1]);
        if n == 0 {
            return Ok(false);
        }
        if n != want as u64 || rows == 0 || rows > n {
            return Err(V2Error::Protocol(format!(
                "request header for {lin:?} says {n} rows in chunks of {rows}; the declared shape allows {want} rows"
            )));
        }
        let (n, rows) = (n as usize, rows as usize);
        for j in 0..n.div_ceil(rows) {
            let r = rows.min(n - j * rows);
            let y = chan.recv_u64s(p.lane(j), r * d_in)?;
            let z = self.weights.multiply(lin, &y, r)?;
            chan.send_vec(p.lane(j), shardlm_transport::u64s_to_le_bytes(&z))?;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuner_explores_each_candidate_then_keeps_the_fastest() {
        let mut t = ChunkTuner::default();
        let n = 98;
        assert_eq!(t.choose(Linear::GateUp(0), 1), 1, "decode steps are one chunk");
        let mut tried = Vec::new();
        for (layer, secs) in [(0, 0.30), (1, 0.20), (2, 0.25)] {
            let rows = t.choose(Linear::GateUp(layer), n);
            tried.push(n.div_ceil(rows));
            t.record(Linear::GateUp(layer), n, rows, secs);
        }
        assert_eq!(tried, vec![1, 2, 4]);
        // Two chunks measured fastest: kept for the rest of the layers.
        assert_eq!(n.div_ceil(t.choose(Linear::GateUp(3), n)), 2);
        // Other unit kinds are tuned separately.
        assert_eq!(n.div_ceil(t.choose(Linear::Down(3), n)), 1);
        assert_eq!(t.summary(), vec![(2, 2)]);
    }
}
