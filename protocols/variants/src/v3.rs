//! v3: v2's client-assisted linear layer (DESIGN.md section 3), scheduled as a wavefront
//! of chunked prefills so that the uplink, the server's GEMM, the downlink and the
//! client's own work overlap.
//!
//! Every operation of a Qwen2 forward pass is causal along positions: row `i` of every
//! unit's input depends only on rows `0..=i` of the previous units (norms, SwiGLU and
//! residuals are row-wise; attention reads keys and values of earlier rows only). So a
//! prompt of `n` rows is cut into `C` chunks of consecutive rows ([`ChunkPlan`]), and
//! chunk `j` runs the ordinary forward pass ([`qwen2::decoder`], written once against
//! [`ModelOps`]) as a prefill at position `start_j` through a KV cache shared with the
//! other chunks ([`KvCache`]: its attention waits until chunks `0..j` appended their keys
//! and values of that layer). All `C` chunks are in flight at once, one per worker
//! thread, each on its own masked lane:
//!
//! ```text
//! client -> server   [n, rows]                          Lane::Control, once per pass
//! for unit u in forward order, for chunk j in 0..C:
//!   client -> server   Y_uj = enc(X_uj) + R_uj            Lane::Masked(j)
//!   server -> client   Z_uj = Y_uj enc(W_u)^T             Lane::Masked(j)
//! ```
//!
//! The server answers in exactly that order (unit-major, chunk-minor), starting on chunk
//! `j` of unit `u` as soon as it arrives, while the answer of chunk `j - 1` streams back
//! and chunk `j`'s worker on the client decodes, normalises and attends to the rows of
//! unit `u - 1`. The LM head of a `Rows::Last` pass is sent by the last chunk only (one
//! row). With one chunk (every decode step) this is v2 plus the 16-byte header.
//!
//! Same masks (`R` of a unit is split by rows, each row used once), same products, same
//! bits as v2; the bytes differ from v2's by the headers only. The server still learns
//! only the shape. [`Counters::rounds`] of a v3 session is the longest chain of dependent
//! round trips (one per unit, as in v2), which is what multiplies the RTT; the messages
//! of different chunks interleave on the wire.
//!
//! The client's channel is driven by one thread ([`relay`]): it forwards each worker's
//! request as soon as the worker makes it and hands each answer to its worker, reading
//! answers in the server's order.

use crate::limits::{check_pass, unit_rows};
use crate::plan::SessionShape;
use crate::v2::{client_linear, ServerSessionStats, V2Error};
use crate::RingWeights;
use shardlm_configs::{FixedPoint, ModelConfig};
use shardlm_model::kernels::{LayerCache, Tensor};
use shardlm_model::plain::{attend, ClearState};
use shardlm_model::qwen2;
use shardlm_model::timing::{PhaseTimes, Timed};
use shardlm_model::{EngineError, Linear, Logits, ModelOps, Rows, Weights};
use shardlm_mpc::material::{MaskedLinear, MaskedLinearRequest, MaterialSource};
use shardlm_mpc::share::P0;
use shardlm_transport::handshake::GemmCost;
use shardlm_transport::{Channel, Counters, Lane, TransportError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

/// The most chunks a pass may be cut into (each has its own masked lane).
pub const MAX_CHUNKS: usize = 8;

/// The fewest rows a chunk gets when the client's model chooses ([`ChunkPlan::choose`]):
/// below it the server's GEMM leaves its efficient regime.
pub const MIN_MODEL_CHUNK_ROWS: usize = 8;

/// The link rate the model assumes when the user gave none (`--link-rate`), bits/s.
pub const DEFAULT_RATE_BPS: u64 = 1_000_000_000;

/// The time of a pass whose work streams through `stages` (seconds of compute, of
/// uplink and of downlink for the whole pass) in `chunks` chunks, with `rounds`
/// dependent round trips of `rtt` seconds on each chunk's chain:
///
/// ```text
/// T(C) = max( max(stages) + (sum(stages) - max(stages)) / C,   rounds x rtt + sum(stages) / C )
/// ```
///
/// The first term is the throughput bound: the bottleneck stage works the whole pass, the
/// others only while the pipeline fills and drains (one chunk's share). The second is
/// the latency bound: one chunk's chain of round trips, each carrying that chunk's share
/// of every stage. With one chunk (v2, every decode step) it is `rounds x rtt + sum`,
/// the sequential cost. The `experiment` cost model predicts with the same formula.
pub fn pipelined_seconds(stages: [f64; 3], chunks: usize, rounds: f64, rtt: f64) -> f64 {
    let c = chunks.max(1) as f64;
    let sum: f64 = stages.iter().sum();
    let max = stages.iter().copied().fold(0.0, f64::max);
    (max + (sum - max) / c).max(rounds * rtt + sum / c)
}

/// What the client knows of the link and of the server when it cuts a pass.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LinkModel {
    /// Round-trip time (the connection's estimate after the handshake).
    pub rtt: Duration,
    /// Link rate each way, bits/s (`--link-rate`); `None`: [`DEFAULT_RATE_BPS`].
    pub rate_bps: Option<u64>,
    /// The server's ring-GEMM cost as it measured it; `None`: not known, taken as free.
    pub gemm: Option<GemmCost>,
}

impl LinkModel {
    /// The predicted time of a pass cut as `plan` ([`pipelined_seconds`]): the server's
    /// GEMM time from its measured cost per weight and call of every request of the
    /// plan, the bytes of each direction at the link rate, one round trip per unit. The
    /// client's own work is left out (small next to these on the machines measured; see
    /// docs/v2-v3.md).
    pub fn predict(&self, plan: &ChunkPlan, config: &ModelConfig) -> f64 {
        let rate = self.rate_bps.unwrap_or(DEFAULT_RATE_BPS).max(1) as f64;
        let g = self.gemm.unwrap_or_default();
        let (mut up, mut down, mut gemm) = (0.0, 0.0, 0.0);
        let mut chain = vec![0usize; plan.chunks()];
        for (linear, chunk, rows) in plan.order(config) {
            let (d_in, d_out) = linear.dims(config);
            up += (8 * rows * d_in) as f64 * 8.0 / rate;
            down += (8 * rows * d_out) as f64 * 8.0 / rate;
            gemm += (d_in * d_out) as f64 * (g.fixed_ps as f64 + rows as f64 * g.row_ps as f64) * 1e-12;
            chain[chunk] += 1;
        }
        let rounds = chain.into_iter().max().unwrap_or(0) as f64;
        pipelined_seconds([gemm, up, down], plan.chunks(), rounds, self.rtt.as_secs_f64())
    }
}

/// How a v3 client cuts its passes of several rows.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Schedule {
    /// Rows per chunk (`--chunk-rows`); `None`: the model chooses ([`ChunkPlan::choose`]).
    pub chunk_rows: Option<usize>,
    /// What the model plans for.
    pub link: LinkModel,
}

/// How long the relay waits for a worker's next request before calling it stuck.
const WORKER_STALL: Duration = Duration::from_secs(300);

/// How often the relay looks for new requests while it waits for an answer and some
/// worker may still produce one.
const RELAY_POLL: Duration = Duration::from_millis(1);

/// The lane of chunk `j`.
pub fn chunk_lane(j: usize) -> Lane {
    Lane::Masked(j as u8)
}

/// How a pass of `n` rows is cut: chunks of `rows` consecutive rows (the last may be
/// shorter), and which chunks send the LM head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkPlan {
    /// Rows of the pass.
    pub n: usize,
    /// Rows per chunk.
    pub rows: usize,
    /// Rows of the LM head request: `n` (every row) or 1 (the last row only).
    pub head_rows: usize,
}

impl ChunkPlan {
    /// The plan for `n` rows in chunks of `rows`, checked: `rows` in `1..=n`, at most
    /// [`MAX_CHUNKS`] chunks, `head_rows` either `n` or 1.
    pub fn new(n: usize, rows: usize, head_rows: usize) -> Result<Self, String> {
        if n == 0 || rows == 0 || rows > n {
            return Err(format!("{n} rows in chunks of {rows}: a chunk has 1 to {n} rows"));
        }
        if n.div_ceil(rows) > MAX_CHUNKS {
            return Err(format!(
                "{n} rows in chunks of {rows} make {} chunks; at most {MAX_CHUNKS} are allowed",
                n.div_ceil(rows)
            ));
        }
        if head_rows != n && head_rows != 1 {
            return Err(format!("an LM head of {head_rows} rows in a pass of {n}"));
        }
        Ok(Self { n, rows, head_rows })
    }

    /// The plan the client's model predicts fastest for `n` rows ([`LinkModel::predict`]
    /// over 1 to [`MAX_CHUNKS`] chunks of at least [`MIN_MODEL_CHUNK_ROWS`] rows; a plan
    /// with more chunks must be predicted 2% faster to be chosen). One chunk for a decode
    /// step: exactly v2.
    pub fn choose(
        n: usize,
        head_rows: usize,
        config: &ModelConfig,
        link: &LinkModel,
    ) -> Result<Self, String> {
        let mut best = ChunkPlan::new(n, n.max(1), head_rows)?;
        let mut best_time = link.predict(&best, config);
        for chunks in 2..=MAX_CHUNKS {
            if n / chunks < MIN_MODEL_CHUNK_ROWS {
                break;
            }
            let rows = n.div_ceil(chunks);
            let plan = ChunkPlan::new(n, rows, head_rows)?;
            if plan.chunks() != chunks {
                continue;
            }
            let t = link.predict(&plan, config);
            if t < best_time * 0.98 {
                (best, best_time) = (plan, t);
            }
        }
        Ok(best)
    }

    /// Number of chunks.
    pub fn chunks(&self) -> usize {
        self.n.div_ceil(self.rows)
    }

    /// First row and row count of chunk `j`.
    pub fn range(&self, j: usize) -> (usize, usize) {
        let start = j * self.rows;
        (start, self.rows.min(self.n - start))
    }

    /// Rows chunk `j` sends for `linear`.
    pub fn unit_rows(&self, j: usize, linear: Linear) -> usize {
        match linear {
            Linear::LmHead if self.head_rows != self.n => usize::from(j + 1 == self.chunks()),
            _ => self.range(j).1,
        }
    }

    /// Every request of the pass in the server's order: (unit, chunk, rows), units in
    /// forward order, chunks in order, empty requests left out.
    pub fn order(&self, config: &ModelConfig) -> Vec<(Linear, usize, usize)> {
        Linear::all(config)
            .into_iter()
            .flat_map(|l| (0..self.chunks()).map(move |j| (l, j, self.unit_rows(j, l))))
            .filter(|r| r.2 > 0)
            .collect()
    }
}

/// Errors of a v3 client session.
#[derive(Debug, thiserror::Error)]
pub enum V3Error {
    /// The protocol failed (channel, material, peer, engine).
    #[error(transparent)]
    Session(#[from] V2Error),
    /// A chunk worker stopped because another part of the pass failed first (never the
    /// error a pass returns when the cause is known).
    #[error("the pass was aborted")]
    Aborted,
}

impl From<shardlm_mpc::MpcError> for V3Error {
    fn from(e: shardlm_mpc::MpcError) -> Self {
        V3Error::Session(e.into())
    }
}

impl From<EngineError> for V3Error {
    fn from(e: EngineError) -> Self {
        V3Error::Session(e.into())
    }
}

fn err(e: impl Into<V2Error>) -> V3Error {
    V3Error::Session(e.into())
}

/// The client's KV cache, shared by the chunks of a pass: one lock and one signal per
/// layer, so chunks at different layers never wait for each other.
pub struct KvCache {
    layers: Vec<(Mutex<LayerCache>, Condvar)>,
    aborted: AtomicBool,
}

impl KvCache {
    fn new(layers: usize) -> Self {
        Self {
            layers: (0..layers).map(|_| (Mutex::default(), Condvar::new())).collect(),
            aborted: AtomicBool::new(false),
        }
    }

    fn reset(&mut self) {
        for (m, _) in &mut self.layers {
            *m.get_mut().unwrap_or_else(PoisonError::into_inner) = LayerCache::default();
        }
        *self.aborted.get_mut() = false;
    }

    fn abort(&self) {
        self.aborted.store(true, Ordering::SeqCst);
        self.layers.iter().for_each(|(_, c)| c.notify_all());
    }

    /// Causal attention of a chunk at `start_pos`: waits until the layer holds exactly
    /// the `start_pos` earlier positions (the chunks before this one), then appends this
    /// chunk's keys and values and attends, with the plaintext engine's kernel.
    fn attention(
        &self,
        config: &ModelConfig,
        qkv: &Tensor,
        layer: usize,
        start_pos: usize,
    ) -> Result<Tensor, V3Error> {
        let (lock, grown) = self
            .layers
            .get(layer)
            .ok_or_else(|| err(V2Error::Protocol(format!("the model has no layer {layer}"))))?;
        let kvd = config.kv_dim().max(1);
        let mut cache = lock.lock().unwrap_or_else(PoisonError::into_inner);
        // The earlier chunks append this layer's keys and values; wait for them.
        while cache.k.len() / kvd < start_pos {
            if self.aborted.load(Ordering::SeqCst) {
                return Err(V3Error::Aborted);
            }
            cache = grown
                .wait_timeout(cache, Duration::from_millis(50))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let out = attend(config, qkv, &mut cache, start_pos);
        drop(cache);
        grown.notify_all();
        Ok(out?)
    }

    fn positions(&self, kvd: usize) -> usize {
        self.layers
            .first()
            .map_or(0, |(m, _)| m.lock().unwrap_or_else(PoisonError::into_inner).k.len() / kvd.max(1))
    }
}

/// A pass's masks: each unit's material is taken once, in forward order, by the first
/// chunk that reaches the unit, and split by rows among the chunks.
struct PassMasks<'m, M> {
    source: &'m mut M,
    plan: ChunkPlan,
    layers: usize,
    pieces: HashMap<Linear, Vec<Option<MaskedLinear>>>,
}

impl<M: MaterialSource<P0>> PassMasks<'_, M> {
    fn take(&mut self, linear: Linear, chunk: usize, config: &ModelConfig) -> Result<MaskedLinear, V3Error> {
        if !self.pieces.contains_key(&linear) {
            let (d_in, d_out) = linear.dims(config);
            let rows: Vec<usize> = (0..self.plan.chunks()).map(|j| self.plan.unit_rows(j, linear)).collect();
            let n = rows.iter().sum();
            let m = self
                .source
                .take(MaskedLinearRequest { n, d_in, d_out, weight: linear.weight_id(self.layers) })
                .map_err(err)?;
            let pieces = m.split_rows(&rows).map_err(err)?;
            self.pieces.insert(linear, pieces.into_iter().map(Some).collect());
        }
        self.pieces
            .get_mut(&linear)
            .and_then(|p| p.get_mut(chunk))
            .and_then(Option::take)
            .ok_or_else(|| err(V2Error::Protocol(format!("chunk {chunk} asked twice for {linear:?}"))))
    }
}

/// How a chunk's linear requests reach the server.
enum Link<'c, C> {
    /// One chunk: the worker talks to the channel itself, on lane 0.
    Direct(&'c mut C),
    /// Several chunks: the worker hands its requests to the relay and waits for its
    /// answers.
    Relayed(Relayed),
}

impl<C: Channel> Link<'_, C> {
    /// Sends `Y` (`rows x d_in`) and returns `Z` (`rows x d_out`).
    fn exchange(&mut self, y: Vec<u64>, rows: usize, d_out: usize) -> Result<Vec<u64>, V3Error> {
        match self {
            Link::Direct(chan) => {
                chan.send_vec(chunk_lane(0), shardlm_transport::u64s_to_le_bytes(&y)).map_err(err)?;
                chan.recv_u64s(chunk_lane(0), rows * d_out).map_err(err)
            }
            Link::Relayed(r) => {
                let y = shardlm_transport::u64s_to_le_bytes(&y);
                r.to.send(ToRelay::Request { chunk: r.chunk, y }).map_err(|_| V3Error::Aborted)?;
                let z = r.from.recv().map_err(|_| V3Error::Aborted)?;
                debug_assert_eq!(z.len(), 8 * rows * d_out, "the relay checks answer sizes");
                Ok(shardlm_transport::le_bytes_to_u64s(&z))
            }
        }
    }
}

/// What a worker tells the relay.
enum ToRelay {
    /// Send `Y` on the chunk's lane.
    Request { chunk: usize, y: Vec<u8> },
    /// The worker stopped with an error.
    Failed,
}

/// A worker's ends of the relay.
struct Relayed {
    chunk: usize,
    to: mpsc::Sender<ToRelay>,
    from: mpsc::Receiver<Vec<u8>>,
}

/// One chunk's [`ModelOps`]: plaintext nonlinear layers (the plaintext engine's kernels),
/// masked linear requests through `link`.
struct ChunkOps<'a, C, M> {
    chunk: usize,
    config: &'a ModelConfig,
    clear: &'a ClearState,
    cache: &'a KvCache,
    masks: &'a Mutex<PassMasks<'a, M>>,
    fixed: FixedPoint,
    link: Link<'a, C>,
}

impl<C: Channel, M: MaterialSource<P0>> ModelOps for ChunkOps<'_, C, M> {
    type Act = Tensor;
    type Error = V3Error;

    shardlm_model::delegate_stateless_clear_ops!(clear, V3Error);

    fn attention(&mut self, qkv: &Tensor, layer: usize, start_pos: usize) -> Result<Tensor, V3Error> {
        self.cache.attention(self.config, qkv, layer, start_pos)
    }

    fn linear(&mut self, x: &Tensor, linear: Linear) -> Result<Tensor, V3Error> {
        let (_, d_out) = linear.dims(self.config);
        let material = self.masks.lock().unwrap_or_else(PoisonError::into_inner).take(
            linear,
            self.chunk,
            self.config,
        )?;
        let link = &mut self.link;
        client_linear(self.clear, self.fixed, x, linear, material, |y| link.exchange(y, x.rows, d_out))
    }
}

/// The client party of v3.
pub struct V3Client<C, M> {
    config: ModelConfig,
    fixed: FixedPoint,
    chan: C,
    masks: M,
    clear: ClearState,
    cache: KvCache,
    schedule: Schedule,
    prefill_chunks: usize,
    rounds: u64,
    times: PhaseTimes,
}

impl<C: Channel, M: MaterialSource<P0> + Send> V3Client<C, M> {
    /// A client for one session over `chan`, drawing masks from `masks`, cutting its
    /// passes as `schedule` says.
    pub fn new(weights: Arc<Weights>, fixed: FixedPoint, chan: C, masks: M, schedule: Schedule) -> Self {
        let config = weights.config.clone();
        let cache = KvCache::new(config.num_hidden_layers);
        let clear = ClearState::new(weights);
        // Rounds before the session (the handshake) count as they were counted.
        let rounds = chan.counters().rounds;
        Self {
            config,
            fixed,
            chan,
            masks,
            clear,
            cache,
            schedule,
            prefill_chunks: 1,
            rounds,
            times: PhaseTimes::default(),
        }
    }

    /// Forgets the cached sequence.
    pub fn reset(&mut self) {
        self.cache.reset();
    }

    /// Positions currently cached.
    pub fn cached_positions(&self) -> usize {
        self.cache.positions(self.config.kv_dim())
    }

    /// Traffic so far; `rounds` is the longest chain of dependent round trips.
    pub fn counters(&self) -> Counters {
        let mut c = self.chan.counters();
        c.rounds = self.rounds;
        c
    }

    /// Time per operation kind, summed over the chunks (which run concurrently, so the
    /// sum of a multi-chunk pass exceeds its wall time).
    pub fn phases(&self) -> &PhaseTimes {
        &self.times
    }

    /// Chunks the last pass of several rows was cut into.
    pub fn prefill_chunks(&self) -> usize {
        self.prefill_chunks
    }

    /// Ends the session (an all-zero header) and returns the channel and the material.
    pub fn finish_with_material(mut self) -> Result<(C, M), V3Error> {
        self.chan.send_u64s(Lane::Control, &[0, 0]).map_err(err)?;
        Ok((self.chan, self.masks))
    }

    /// One forward pass: logits of `rows` of `tokens` at positions `start..`.
    pub fn forward(&mut self, tokens: &[u32], start: usize, rows: Rows) -> Result<Logits, V3Error> {
        let n = tokens.len();
        self.clear.check_tokens(tokens).map_err(err)?;
        let head_rows = if rows == Rows::All { n } else { 1 };
        let plan = match self.schedule.chunk_rows {
            Some(r) => ChunkPlan::new(n, r.max(n.div_ceil(MAX_CHUNKS)).clamp(1, n.max(1)), head_rows),
            None => ChunkPlan::choose(n, head_rows, &self.config, &self.schedule.link),
        }
        .map_err(|e| err(V2Error::Protocol(e)))?;
        self.chan.send_u64s(Lane::Control, &[n as u64, plan.rows as u64]).map_err(err)?;
        if n > 1 {
            self.prefill_chunks = plan.chunks();
        }
        let order = plan.order(&self.config);
        let depth = (0..plan.chunks()).map(|j| order.iter().filter(|r| r.1 == j).count()).max().unwrap_or(0);
        let result = self.run_pass(tokens, start, plan, &order);
        if result.is_err() {
            self.cache.abort();
        }
        self.rounds += depth as u64;
        result
    }

    fn run_pass(
        &mut self,
        tokens: &[u32],
        start: usize,
        plan: ChunkPlan,
        order: &[(Linear, usize, usize)],
    ) -> Result<Logits, V3Error> {
        let layers = self.config.num_hidden_layers;
        let masks = Mutex::new(PassMasks { source: &mut self.masks, plan, layers, pieces: HashMap::new() });
        let (config, clear, cache, fixed) = (&self.config, &self.clear, &self.cache, self.fixed);
        let ops = |chunk, link| ChunkOps { chunk, config, clear, cache, masks: &masks, fixed, link };
        let run = |mut ops: Timed<ChunkOps<'_, C, M>>, chunk: usize| {
            let (first, count) = plan.range(chunk);
            let (pos, toks) = (start + first, &tokens[first..first + count]);
            let x = qwen2::decoder(&mut ops, config, toks, pos)?;
            let logits = match (plan.head_rows == plan.n, chunk + 1 == plan.chunks()) {
                (false, false) => None,
                (true, _) => qwen2::head(&mut ops, &x, Rows::All)?,
                (false, true) => qwen2::head(&mut ops, &x, Rows::Last)?,
            };
            Ok::<_, V3Error>((logits, ops.times))
        };
        if plan.chunks() == 1 {
            let (logits, times) = run(Timed::new(ops(0, Link::Direct(&mut self.chan))), 0)?;
            merge(&mut self.times, &times);
            return logits.ok_or_else(|| err(V2Error::Protocol("no logits".into())));
        }
        let chan = &mut self.chan;
        let (to_relay, inbox) = mpsc::channel();
        let outcome = std::thread::scope(|s| {
            let mut answers = Vec::new();
            let mut workers = Vec::new();
            for chunk in 0..plan.chunks() {
                let (tx, rx) = mpsc::channel();
                answers.push(tx);
                let link = Link::Relayed(Relayed { chunk, to: to_relay.clone(), from: rx });
                let ops = Timed::new(ops(chunk, link));
                let to_relay = to_relay.clone();
                workers.push(s.spawn(move || {
                    let r = run(ops, chunk);
                    if r.is_err() {
                        let _ = to_relay.send(ToRelay::Failed);
                    }
                    r
                }));
            }
            drop(to_relay);
            let relayed = relay(chan, config, order, &inbox, answers);
            if relayed.is_err() {
                cache.abort();
            }
            let results: Vec<_> = workers
                .into_iter()
                .map(|w| {
                    w.join().unwrap_or_else(|_| Err(err(V2Error::Protocol("a chunk worker panicked".into()))))
                })
                .collect();
            (relayed, results)
        });
        let (relayed, results) = outcome;
        self.combine(relayed, results)
    }

    /// The logits of a multi-chunk pass in row order, or its cause of failure: the
    /// relay's own error (the channel: the server went away, a malformed answer) before
    /// a worker's (the material, the engine); a part stopped only because another
    /// failed ([`V3Error::Aborted`]) is never the error reported when a cause is known.
    fn combine(
        &mut self,
        relayed: Result<(), V3Error>,
        results: Vec<WorkerResult>,
    ) -> Result<Logits, V3Error> {
        let mut logits: Vec<f32> = Vec::new();
        let mut vocab = self.config.vocab_size;
        let mut worker_error = None;
        for r in results {
            match r {
                Ok((l, times)) => {
                    merge(&mut self.times, &times);
                    if let Some(l) = l {
                        vocab = l.vocab;
                        logits.extend(l.data);
                    }
                }
                Err(V3Error::Aborted) => {}
                Err(e) => {
                    worker_error.get_or_insert(e);
                }
            }
        }
        match (relayed, worker_error) {
            (Err(e), _) if !matches!(e, V3Error::Aborted) => Err(e),
            (_, Some(e)) => Err(e),
            (Err(e), None) => Err(e),
            (Ok(()), None) => Ok(Logits { vocab, data: logits }),
        }
    }
}

/// What a chunk worker returns: its logits (the chunks that send the head) and times.
type WorkerResult = Result<(Option<Logits>, PhaseTimes), V3Error>;

fn merge(into: &mut PhaseTimes, from: &PhaseTimes) {
    for (op, t) in &from.by_op {
        *into.by_op.entry(op).or_default() += *t;
    }
}

/// Drives the channel for the chunk workers of one pass: forwards each request as soon
/// as its worker makes it, and reads the answers in the server's `order`, handing each
/// to its worker. Blocks on the network only when every worker waits for an answer;
/// otherwise it polls for new requests every [`RELAY_POLL`].
fn relay<C: Channel>(
    chan: &mut C,
    config: &ModelConfig,
    order: &[(Linear, usize, usize)],
    inbox: &mpsc::Receiver<ToRelay>,
    answers: Vec<mpsc::Sender<Vec<u8>>>,
) -> Result<(), V3Error> {
    let chunks = answers.len();
    let mut total = vec![0usize; chunks];
    order.iter().for_each(|r| total[r.1] += 1);
    let (mut sent, mut answered) = (vec![0usize; chunks], vec![0usize; chunks]);
    let forward = |chan: &mut C, msg: ToRelay, sent: &mut [usize]| -> Result<(), V3Error> {
        match msg {
            ToRelay::Request { chunk, y } => {
                chan.send_vec(chunk_lane(chunk), y).map_err(err)?;
                sent[chunk] += 1;
                Ok(())
            }
            ToRelay::Failed => Err(V3Error::Aborted),
        }
    };
    for &(linear, chunk, rows) in order {
        while sent[chunk] <= answered[chunk] {
            match inbox.recv_timeout(WORKER_STALL) {
                Ok(msg) => forward(chan, msg, &mut sent)?,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(err(V2Error::Protocol(format!(
                        "chunk {chunk} made no request for {linear:?} within {WORKER_STALL:?}"
                    ))))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(V3Error::Aborted),
            }
        }
        let z = loop {
            while let Ok(msg) = inbox.try_recv() {
                forward(chan, msg, &mut sent)?;
            }
            let idle = (0..chunks).all(|i| sent[i] == total[i] || sent[i] > answered[i]);
            let got = match idle {
                true => chan.recv_bytes(chunk_lane(chunk)),
                false => chan.recv_bytes_within(chunk_lane(chunk), RELAY_POLL),
            };
            match got {
                Ok(z) => break z,
                Err(TransportError::Timeout { .. }) if !idle => continue,
                Err(e) => return Err(err(e)),
            }
        };
        let want = 8 * rows * linear.dims(config).1;
        if z.len() != want {
            return Err(err(TransportError::Malformed {
                lane: chunk_lane(chunk),
                problem: format!("the answer to {linear:?} has {} bytes; {rows} rows need {want}", z.len()),
            }));
        }
        answered[chunk] += 1;
        if answers[chunk].send(z).is_err() {
            return Err(V3Error::Aborted);
        }
    }
    Ok(())
}

/// The server party of v3: answers each pass's chunks in the wavefront order.
pub struct V3Server {
    weights: Arc<RingWeights>,
}

impl V3Server {
    /// A server over ring-encoded weights (shared by all sessions).
    pub fn new(weights: Arc<RingWeights>) -> Self {
        Self { weights }
    }

    /// Serves one session of `shape` until the client's all-zero header. Every header
    /// and chunk is checked against the declared shape before any work is done.
    pub fn serve_session<C: Channel>(
        &self,
        chan: &mut C,
        shape: SessionShape,
    ) -> Result<ServerSessionStats, V2Error> {
        let config = self.weights.config();
        let mut stats = ServerSessionStats::default();
        let mut pass = 0;
        loop {
            let header = chan.recv_u64s(Lane::Control, 2)?;
            let (n, rows) = (header[0], header[1]);
            if n == 0 {
                return Ok(stats);
            }
            check_pass(shape, pass).map_err(V2Error::Protocol)?;
            let want = unit_rows(shape, Linear::Qkv(0), pass);
            if n != want as u64 {
                return Err(V2Error::Protocol(format!(
                    "pass {pass} announces {n} rows; the declared shape allows {want} rows"
                )));
            }
            let plan = ChunkPlan::new(
                want,
                usize::try_from(rows).unwrap_or(usize::MAX),
                unit_rows(shape, Linear::LmHead, pass),
            )
            .map_err(|e| V2Error::Protocol(format!("pass {pass}: {e}")))?;
            for (linear, chunk, r) in plan.order(config) {
                let (d_in, _) = linear.dims(config);
                let y = chan.recv_u64s(chunk_lane(chunk), r * d_in)?;
                let z = self.weights.multiply(linear, &y, r)?;
                chan.send_vec(chunk_lane(chunk), shardlm_transport::u64s_to_le_bytes(&z))?;
                stats.requests += 1;
            }
            stats.forward_passes += 1;
            pass += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ModelConfig {
        ModelConfig::preset("tiny").expect("the tiny preset exists")
    }

    #[test]
    fn a_plan_covers_every_row_once_and_sends_the_head_where_it_is_asked() {
        let c = config();
        let units = Linear::all(&c).len();
        for (n, rows) in [(98, 25), (98, 13), (37, 37), (1, 1), (17, 3)] {
            let plan = ChunkPlan::new(n, rows, 1).unwrap();
            let covered: usize = (0..plan.chunks()).map(|j| plan.range(j).1).sum();
            assert_eq!(covered, n, "{n}/{rows}");
            assert!((0..plan.chunks()).all(|j| plan.range(j).1 > 0));
            let order = plan.order(&c);
            // Every unit but the head once per chunk, the head once, from the last chunk.
            assert_eq!(order.len(), (units - 1) * plan.chunks() + 1);
            assert_eq!(order.last().unwrap(), &(Linear::LmHead, plan.chunks() - 1, 1));
            // Unit-major, chunk-minor: the order the server answers in.
            let layers = c.num_hidden_layers;
            let key = |r: &(Linear, usize, usize)| (r.0.weight_id(layers), r.1);
            assert!(order.windows(2).all(|w| key(&w[0]) < key(&w[1])));
            let all = ChunkPlan::new(n, rows, n).unwrap();
            let heads: usize = all.order(&c).iter().filter(|r| r.0 == Linear::LmHead).map(|r| r.2).sum();
            assert_eq!(heads, n, "Rows::All: every row's logits, each from its chunk");
        }
    }

    #[test]
    fn plans_outside_the_bounds_are_refused_with_the_reason() {
        assert!(ChunkPlan::new(0, 1, 1).unwrap_err().contains("1 to 0 rows"));
        assert!(ChunkPlan::new(10, 0, 1).unwrap_err().contains("1 to 10 rows"));
        assert!(ChunkPlan::new(10, 11, 1).unwrap_err().contains("1 to 10 rows"));
        assert!(ChunkPlan::new(98, 12, 1).unwrap_err().contains("at most 8"));
        assert!(ChunkPlan::new(98, 13, 2).unwrap_err().contains("LM head of 2 rows"));
        assert!(ChunkPlan::new(98, 13, 98).is_ok());
    }

    fn half_b() -> ModelConfig {
        ModelConfig::preset("qwen2.5-0.5b").expect("the 0.5B preset exists")
    }

    /// This build box's CPU server, as `RingWeights::calibrate` measured it.
    const CPU_GEMM: GemmCost = GemmCost { fixed_ps: 726, row_ps: 61 };

    fn chunks(n: usize, rate: u64, rtt_ms: u64, gemm: Option<GemmCost>) -> usize {
        let link = LinkModel { rtt: Duration::from_millis(rtt_ms), rate_bps: Some(rate), gemm };
        ChunkPlan::choose(n, 1, &half_b(), &link).unwrap().chunks()
    }

    #[test]
    fn the_model_cuts_prefills_by_link_and_server_and_never_decode_steps() {
        // Decode steps and short prompts: one chunk, exactly v2.
        assert_eq!(chunks(1, 200_000_000, 2, Some(CPU_GEMM)), 1);
        assert_eq!(chunks(2 * MIN_MODEL_CHUNK_ROWS - 1, 200_000_000, 2, Some(CPU_GEMM)), 1);
        // A slow link and a free server GEMM (a GPU): about as many chunks as allowed (the
        // last one gains under the 2% a further chunk must bring).
        assert!(chunks(98, 200_000_000, 2, Some(GemmCost::default())) >= MAX_CHUNKS - 1);
        // A CPU server on a fast link: its per-call weight pass makes chunks cost more
        // than they hide, so fewer than on the slow link.
        let (slow, fast) =
            (chunks(98, 200_000_000, 2, Some(CPU_GEMM)), chunks(98, 10_000_000_000, 2, Some(CPU_GEMM)));
        assert!(fast < slow, "fast link {fast} chunks, slow link {slow}");
        assert!(slow > 1);
    }

    #[test]
    fn the_pipeline_formula_is_the_sum_for_one_chunk_and_the_bottleneck_for_many() {
        let stages = [3.0, 5.0, 9.0];
        assert_eq!(pipelined_seconds(stages, 1, 100.0, 0.01), 1.0 + 17.0);
        assert_eq!(pipelined_seconds(stages, 4, 100.0, 0.01), 9.0 + 8.0 / 4.0);
        // A long RTT: the latency of a chunk's chain bounds it.
        assert_eq!(pipelined_seconds(stages, 4, 100.0, 0.1), 10.0 + 17.0 / 4.0);
    }
}
