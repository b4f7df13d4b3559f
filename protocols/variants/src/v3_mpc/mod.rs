//! v3-mpc: the whole forward pass on additive shares (DESIGN.md sections 1 to 3). Both
//! parties run [`shardlm_model::qwen2::forward`] on an [`MpcParty`], each on its own
//! shares; only the final logits are ever reconstructed, and only by P0.
//!
//! Per operation (activations have `F` fractional bits, [`FixedPoint`]):
//!
//! * **embed**: P0 encodes its token embeddings and shares them: it keeps `x - r` and
//!   sends P1 a fresh 32-byte seed of `r` ([`Session::input_from_p0`]). P1 calls the
//!   forward pass with placeholder tokens of the right count: it never learns them.
//! * **linear**: local. Each party multiplies its share by the public `enc(W)` on its
//!   backend ([`RingWeights::multiply`]), then faithful truncation by `F_w`; P0 adds the
//!   bias. One round (truncation), no triple; the gate/up projection skips it (SwiGLU),
//!   the QKV projection leaves it to RoPE, and an untruncated input (v3-ot's attention and
//!   SwiGLU outputs) is truncated with the product.
//! * **RoPE**: linear with public `cos`/`sin` encoded with `F` bits; the query part also
//!   carries the attention scale `1 / sqrt(head_dim)` (so scores need no extra step).
//!   One truncation round, which also truncates the QKV projection.
//! * **attention**: the KV cache is kept as shares. `Q K^T` per KV head with the query
//!   heads of its group stacked, one matrix triple each (all in one round), truncation, the row max by a tournament
//!   ([`nonlinear::max_segments`]) over the causally visible positions only (the mask is
//!   public), `exp(x - max)` ([`nonlinear::exp_neg`]), the row sum (local), its
//!   reciprocal ([`nonlinear::reciprocal_start`], sum in `[1, positions]`, its comparisons
//!   riding along with `E V` with matrix triples and its truncation), and the product with
//!   the reciprocal (a row-scaling triple), truncated.
//! * **SwiGLU**: the gate/up projection stays untruncated (`2F`); [`nonlinear::silu_from`]
//!   reads the gate at `2F`, a Beaver product with `up` and one truncation by `2F`.
//! * **RMSNorm**: `sum x^2` with a norm triple (local row sums), the mean square with
//!   [`nonlinear::MS_BITS`] fractional bits (`1/d = m 2^-k`: the `2^-k` rides in the
//!   sums' truncation, `m^-1/2` joins the gain), `rsqrt` from a start found by batched
//!   comparisons and Newton ([`nonlinear::rsqrt`]), times `x` (the norm triple's second
//!   half: `x` is not opened again) and the public gain, one truncation.
//! * **logits**: P1 sends its shares of the selected rows' logits to P0
//!   ([`Session::reveal_to_p0`]); P1's `reveal_logits` returns `None`.
//!
//! Every message passes through [`Session::transfer`], which logs it ([`Opened`]).
//! [`MpcParty::costs`] meters bytes and rounds per kind of operation; [`plan_session`]
//! runs the pass on [`Recorder`] material to list the exact dealer requests.
//!
//! What it costs (bytes and rounds per operation at the Qwen2.5-1.5B shape) and how
//! accurate it is on the real model are measured in `docs/v3-mpc.md`.

mod attention_layout;
pub mod ot;

use crate::RingWeights;
use attention_layout::AttentionLayout;
use shardlm_configs::{FixedPoint, ModelConfig, Variant};
use shardlm_gpu::BackendError;
use shardlm_model::qwen2::forward;
use shardlm_model::{EngineError, Linear, Logits, ModelOps, Norm, Rows, Weights};
use shardlm_mpc::material::{MaterialError, MaterialRequest, MaterialSource, Recorder};
use shardlm_mpc::nonlinear;
use shardlm_mpc::prg::Seed;
use shardlm_mpc::ring::{decode, encode, encode_f32};
use shardlm_mpc::session::{AuditEntry, MatMul, Opened, Round, Session};
use shardlm_mpc::share::{Role, Shares, P0, P1};
use shardlm_mpc::MpcError;
use shardlm_transport::{Channel, Counters, Lane};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Errors of a v3-mpc party.
#[derive(Debug, thiserror::Error)]
pub enum MpcPartyError {
    /// A two-party primitive failed (peer gone, bad message, shapes).
    #[error(transparent)]
    Mpc(#[from] MpcError),
    /// Material is missing, exhausted or does not fit.
    #[error(transparent)]
    Material(#[from] MaterialError),
    /// The local weight multiplication failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// Token out of range, KV cache mismatch, sequence too long.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// A party's shares of an `rows x cols` activation, row-major.
#[derive(Clone, Debug)]
pub struct SharedTensor<R: Role> {
    /// Positions.
    pub rows: usize,
    /// Features.
    pub cols: usize,
    /// This party's shares.
    pub data: Shares<R>,
    /// Fractional bits above `F` still to be truncated by the next operation, saving its
    /// own round: the gate/up projection (SwiGLU truncates it), the QKV projection (RoPE),
    /// and in v3-ot the attention's and SwiGLU's outputs (the next linear layer).
    pub extra_frac: u32,
}

impl<R: Role> SharedTensor<R> {
    fn new(rows: usize, cols: usize, data: Vec<u64>) -> Self {
        SharedTensor { rows, cols, data: Shares::from_raw(data), extra_frac: 0 }
    }
}

/// One layer's KV cache as shares, `positions x kv_dim` each.
#[derive(Clone, Default)]
struct SharedCache {
    k: Vec<u64>,
    v: Vec<u64>,
}

shardlm_mpc::debug_lengths!(SharedCache { k, v });

/// A v3-mpc party: [`ModelOps`] on its shares.
pub struct MpcParty<R: Role, C: Channel, M: MaterialSource<R>> {
    weights: Arc<Weights>,
    ring: Arc<RingWeights>,
    fixed: FixedPoint,
    sess: Session<R, C, M>,
    cache: Vec<SharedCache>,
    inv_freq: Vec<f64>,
    costs: BTreeMap<&'static str, OpCost>,
    /// Whether step shapes travel P0 -> P1 ([`MpcParty::driven`]).
    driven: bool,
    /// P1 (driven): the rows the declared shape allows in the current pass.
    expected_rows: Option<Rows>,
    /// How the nonlinear layers are computed (v3-mpc or v3-ot).
    nonlinear: Nonlinear,
}

/// How a fully private party computes the nonlinear layers: the one thing v3-mpc and
/// v3-ot do differently. Both run the same forward pass, session, planner and material
/// files; only the functions behind RMSNorm, the softmax and SiLU differ.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Nonlinear {
    /// v3-mpc: comparisons by carry tables and AND trees, polynomials and Newton
    /// iterations ([`shardlm_mpc::nonlinear`]).
    #[default]
    Polynomial,
    /// v3-ot: one-time lookup tables on bit-width-reduced inputs
    /// ([`shardlm_mpc::tables`], [`ot`]).
    Tables,
}

impl Nonlinear {
    /// The method of a fully private variant; `None` for the others.
    pub fn of(variant: Variant) -> Option<Nonlinear> {
        match variant {
            Variant::V3Mpc => Some(Nonlinear::Polynomial),
            Variant::V3Ot => Some(Nonlinear::Tables),
            _ => None,
        }
    }

    /// The variant that computes this way.
    pub fn variant(self) -> Variant {
        match self {
            Nonlinear::Polynomial => Variant::V3Mpc,
            Nonlinear::Tables => Variant::V3Ot,
        }
    }
}

/// Traffic of one kind of operation, summed over calls (this party's view).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpCost {
    /// Calls.
    pub calls: u64,
    /// Elements processed (outputs; attention: scores), summed over calls.
    pub elements: u64,
    /// Payload bytes sent.
    pub bytes_sent: u64,
    /// Payload bytes received.
    pub bytes_received: u64,
    /// Rounds.
    pub rounds: u64,
}

impl<R: Role, C: Channel, M: MaterialSource<R>> MpcParty<R, C, M> {
    /// A party over public `weights` (P0 uses the embeddings; both use norm gains,
    /// biases and the ring-encoded `ring` weights), its channel and material.
    /// `rng_seed` seeds the party's private randomness and must be fresh OS entropy in
    /// deployment ([`Seed::random`]).
    ///
    /// The fixed-point encoding is `ring.fixed()`; the nonlinear functions need
    /// `F <= 24` (the default is 16), checked when they run.
    pub fn new(weights: Arc<Weights>, ring: Arc<RingWeights>, chan: C, material: M, rng_seed: Seed) -> Self {
        let c = &weights.config;
        let d = c.head_dim;
        let inv_freq = (0..d / 2).map(|i| 1.0 / c.rope_theta.powf(2.0 * i as f64 / d as f64)).collect();
        let cache = vec![SharedCache::default(); c.num_hidden_layers];
        let fixed = ring.fixed();
        MpcParty {
            weights,
            ring,
            fixed,
            sess: Session::new(chan, material, rng_seed),
            cache,
            inv_freq,
            costs: BTreeMap::new(),
            driven: false,
            expected_rows: None,
            nonlinear: Nonlinear::Polynomial,
        }
    }

    /// The same party computing the nonlinear layers by `nonlinear` (default
    /// [`Nonlinear::Polynomial`], v3-mpc). Both parties must agree.
    pub fn with_nonlinear(mut self, nonlinear: Nonlinear) -> Self {
        self.nonlinear = nonlinear;
        self
    }

    /// How this party computes the nonlinear layers.
    pub fn nonlinear(&self) -> Nonlinear {
        self.nonlinear
    }

    /// A party whose steps are driven by P0 over the wire: P0 announces each step's
    /// number of positions (at `embed`) and which rows get logits (at `select_rows`), so
    /// P1 can run as a server that follows sessions it cannot see (the shapes are public:
    /// the prompt length). P1 reads them with [`MpcParty::next_step`] and uses P0's rows
    /// choice whatever it passed. Both parties must agree on this setting.
    pub fn driven(mut self) -> Self {
        self.driven = true;
        self
    }

    /// P1 (driven): waits for the next step; `Some(positions)` to run a forward pass on
    /// that many placeholder tokens, `None` when P0 ended the session
    /// ([`MpcParty::end_steps`], then both call [`MpcParty::finish`]). The announced
    /// positions must be `expect` (the declared shape's, for this pass), checked before
    /// anything is allocated for them.
    pub fn next_step(&mut self, expect: usize) -> Result<Option<usize>, MpcPartyError> {
        let n = self.sess.transfer(Opened::PublicShape, &[], 1)?;
        Ok(match n.first().copied() {
            Some(0) | None => None,
            Some(n) if n == expect as u64 => Some(expect),
            Some(n) => {
                return Err(MpcError::Shape {
                    op: "step",
                    detail: format!("P0 announced {n} positions; the declared shape allows {expect}"),
                }
                .into())
            }
        })
    }

    /// P0 (driven): tells P1 there are no more steps.
    pub fn end_steps(&mut self) -> Result<(), MpcPartyError> {
        self.sess.transfer(Opened::PublicShape, &[0], 0)?;
        Ok(())
    }

    /// The session (audit log, counters, recording switch).
    pub fn session(&mut self) -> &mut Session<R, C, M> {
        &mut self.sess
    }

    /// The audit log of every transfer so far.
    pub fn audit(&self) -> &[AuditEntry] {
        self.sess.audit()
    }

    /// Channel counters.
    pub fn counters(&self) -> Counters {
        self.sess.counters()
    }

    /// Forgets the cached sequence (both parties must reset together).
    pub fn reset(&mut self) {
        self.cache.iter_mut().for_each(|c| *c = SharedCache::default());
    }

    /// Returns the channel and the material source.
    pub fn into_parts(self) -> (C, M) {
        self.sess.into_parts()
    }

    /// Ends the session cleanly: P0 sends an empty end frame on [`Lane::Control`], P1
    /// waits for it, so that P1 does not close the connection while its last message
    /// (its shares of the final logits) is still in flight: closing a QUIC connection
    /// discards unsent data. Returns the channel and the material source.
    pub fn finish(self) -> Result<(C, M), MpcPartyError> {
        let (mut chan, material) = self.sess.into_parts();
        if R::ID == 0 {
            chan.send_bytes(Lane::Control, &[]).map_err(MpcError::from)?;
        } else {
            let end = chan.recv_bytes(Lane::Control).map_err(MpcError::from)?;
            if !end.is_empty() {
                return Err(MpcError::Shape {
                    op: "finish",
                    detail: format!("expected the empty end frame, got {} bytes", end.len()),
                }
                .into());
            }
        }
        Ok((chan, material))
    }

    /// Traffic per kind of operation since construction (or [`MpcParty::clear_costs`]).
    pub fn costs(&self) -> &BTreeMap<&'static str, OpCost> {
        &self.costs
    }

    /// Resets [`MpcParty::costs`].
    pub fn clear_costs(&mut self) {
        self.costs.clear();
    }

    fn meter(&mut self, op: &'static str, before: Counters, elements: usize) {
        let d = self.sess.counters().since(&before);
        let e = self.costs.entry(op).or_default();
        e.calls += 1;
        e.elements += elements as u64;
        e.bytes_sent += d.bytes_sent();
        e.bytes_received += d.bytes_received();
        e.rounds += d.rounds;
    }

    fn f(&self) -> u32 {
        self.fixed.frac_bits
    }

    /// `cos`, `sin` of position `pos`, as the plaintext kernel computes them.
    fn angles(&self, pos: usize) -> (Vec<f32>, Vec<f32>) {
        self.inv_freq
            .iter()
            .map(|f| {
                let a = (pos as f64 * *f as f32 as f64) as f32;
                (a.cos(), a.sin())
            })
            .unzip()
    }
}

impl<R: Role, C: Channel, M: MaterialSource<R>> MpcParty<R, C, M> {
    fn do_embed(&mut self, tokens: &[u32]) -> Result<SharedTensor<R>, MpcPartyError> {
        let h = self.weights.config.hidden_size;
        let n = tokens.len();
        if n == 0 {
            return Err(MpcError::Shape {
                op: "embed",
                detail: "no tokens: a step needs at least one".into(),
            }
            .into());
        }
        let data = if R::ID == 0 {
            let vocab = self.weights.config.vocab_size;
            let f = self.f();
            let mut enc = Vec::with_capacity(n * h);
            for &t in tokens {
                if t as usize >= vocab {
                    return Err(EngineError::TokenOutOfRange { token: t, vocab }.into());
                }
                enc.extend(
                    self.weights.embed[t as usize * h..(t as usize + 1) * h]
                        .iter()
                        .map(|&v| encode_f32(v, f)),
                );
            }
            self.sess.input_from_p0(Some(&enc), n * h)?
        } else {
            self.sess.input_from_p0(None, n * h)?
        };
        Ok(SharedTensor { rows: n, cols: h, data, extra_frac: 0 })
    }

    /// Norms, residual additions and the embedding take only truncated (`extra_frac == 0`) tensors.
    fn at_f(x: &SharedTensor<R>, op: &'static str) -> Result<(), MpcPartyError> {
        if x.extra_frac != 0 {
            return Err(MpcError::Shape {
                op,
                detail: format!("input carries {} fractional bits above F", x.extra_frac),
            }
            .into());
        }
        Ok(())
    }

    fn do_rms_norm(&mut self, x: &SharedTensor<R>, norm: Norm) -> Result<SharedTensor<R>, MpcPartyError> {
        Self::at_f(x, "rms norm")?;
        if self.nonlinear == Nonlinear::Tables {
            return self.ot_rms_norm(x, norm);
        }
        let f = self.f();
        let (n, d) = (x.rows, x.cols);
        let (gain, eps) = (self.weights.norm_gain(norm), self.weights.config.rms_norm_eps);
        // 1/d = m 2^-k with m = 2^k/d in (1/2, 1]: the 2^-k joins the sums' truncation
        // and m^-1/2 the public gain (rsqrt(ms + eps) = m^-1/2 rsqrt(ms/m + eps/m)), so the
        // mean square takes no truncation round of its own; ms/m < 2 ms stays inside
        // rsqrt's range.
        let k = (d.max(1) as f64).log2().ceil() as u32;
        let m = (1u64 << k) as f64 / d.max(1) as f64;
        let scale = m.powf(-0.5);
        // x^2 with a norm triple: x is opened once, for the square and the final scaling.
        let (x2, pending) = self.sess.square_for_rows(&x.data, n)?;
        let sums: Vec<u64> =
            x2.as_slice().chunks(d).map(|r| r.iter().fold(0u64, |a, &b| a.wrapping_add(b))).collect();
        // The sums 2F -> MS_BITS, times 2^-k: one truncation round.
        let shift = (2 * f + k).checked_sub(nonlinear::MS_BITS).filter(|&s| s > 0).ok_or_else(|| {
            MpcError::Shape {
                op: "rms norm",
                detail: format!(
                    "2 F + log2(d) = {} must exceed the mean square's {} fractional bits",
                    2 * f + k,
                    nonlinear::MS_BITS
                ),
            }
        })?;
        let ms = self.sess.trunc(Shares::from_raw(sums), shift)?;
        let ms = nonlinear::add_scalar(&ms, encode(eps / m, nonlinear::MS_BITS).max(1));
        let y = nonlinear::rsqrt(&mut self.sess, &ms)?;
        // y x (F + RSQRT_BITS), times the public gain m^-1/2 g at GAIN_BITS, one truncation:
        // |out| < 2^(62 - F - RSQRT_BITS - GAIN_BITS) = 2^12 keeps it within the bound.
        const GAIN_BITS: u32 = 14;
        let g: Vec<u64> = (0..n * d).map(|i| encode(f64::from(gain[i % d]) * scale, GAIN_BITS)).collect();
        let yx = self.sess.scale_rows(pending, &y)?;
        let out = self.sess.trunc(yx.mul_public(&g), nonlinear::RSQRT_BITS + GAIN_BITS)?;
        Ok(SharedTensor { rows: n, cols: d, data: out, extra_frac: 0 })
    }

    fn do_linear(&mut self, x: &SharedTensor<R>, linear: Linear) -> Result<SharedTensor<R>, MpcPartyError> {
        let (d_in, d_out) = linear.dims(&self.weights.config);
        if x.cols != d_in {
            return Err(MpcError::Shape {
                op: "linear",
                detail: format!("{linear:?} takes {d_in} features, got {}", x.cols),
            }
            .into());
        }
        let z = self.ring.multiply(linear, x.data.as_slice(), x.rows)?;
        let bias = self.weights.linear(linear).bias;
        let wf = self.fixed.weight_frac_bits;
        // The bias broadcast over the rows, encoded with `bits` fractional bits.
        let bias_at = |b: &[f32], bits: u32| -> Vec<u64> {
            (0..x.rows * d_out).map(|i| encode_f32(b[i % d_out], bits)).collect()
        };
        // The gate/up projection goes to SwiGLU untruncated (no bias in Qwen2's MLP).
        if matches!(linear, Linear::GateUp(_)) && bias.is_none() {
            if x.extra_frac != 0 {
                return Err(MpcError::Shape {
                    op: "linear",
                    detail: format!("{linear:?} input is {} bits wide of F", x.extra_frac),
                }
                .into());
            }
            return Ok(SharedTensor { rows: x.rows, cols: d_out, data: Shares::from_raw(z), extra_frac: wf });
        }
        // The QKV projection goes to RoPE untruncated, its bias at `F + wf` bits: RoPE
        // truncates once for both (|q|, |k| < 2^(62 - F - 2 wf) = 2^14; Qwen2.5-0.5B: 218).
        if matches!(linear, Linear::Qkv(_)) && x.extra_frac == 0 {
            let mut z = Shares::from_raw(z);
            if let Some(b) = bias {
                z = z.add_public(&bias_at(b, self.f() + wf));
            }
            return Ok(SharedTensor { rows: x.rows, cols: d_out, data: z, extra_frac: wf });
        }
        // An untruncated input (v3-ot's SwiGLU and attention outputs) is truncated here,
        // with the product, in one round: the output must stay below
        // 2^(62 - F - wf - extra_frac) (2^14 for the down projection after SwiGLU, whose
        // outputs reach 1.6e3 on Qwen2.5-0.5B; 2^10 for the output projection, 14).
        let mut z = self.sess.trunc(Shares::from_raw(z), wf + x.extra_frac)?;
        if let Some(b) = bias {
            z = z.add_public(&bias_at(b, self.f()));
        }
        Ok(SharedTensor { rows: x.rows, cols: d_out, data: z, extra_frac: 0 })
    }

    fn do_rope(&mut self, qkv: &mut SharedTensor<R>, start_pos: usize) -> Result<(), MpcPartyError> {
        let c = &self.weights.config;
        let (hd, nh, nkv, qd) = (c.head_dim, c.num_attention_heads, c.num_key_value_heads, c.q_dim());
        let half = hd / 2;
        let f = self.f();
        let scale = 1.0 / (hd as f64).sqrt();
        let cols = qkv.cols;
        let width = qd + nkv * hd;
        let mut rotated = Vec::with_capacity(qkv.rows * width);
        for r in 0..qkv.rows {
            let (cos, sin) = self.angles(start_pos + r);
            let row = &qkv.data.as_slice()[r * cols..(r + 1) * cols];
            for h in 0..nh + nkv {
                let s = if h < nh { scale } else { 1.0 };
                let x = &row[h * hd..(h + 1) * hd];
                let mut out = vec![0u64; hd];
                for i in 0..half {
                    let (co, si) = (encode(cos[i] as f64 * s, f), encode(sin[i] as f64 * s, f));
                    out[i] = x[i].wrapping_mul(co).wrapping_sub(x[i + half].wrapping_mul(si));
                    out[i + half] = x[i + half].wrapping_mul(co).wrapping_add(x[i].wrapping_mul(si));
                }
                rotated.extend(out);
            }
        }
        // q and k back to F bits (the projection's wf extra bits with the angles' F), v by
        // the projection's extra bits: one round.
        let e = qkv.extra_frac;
        let mut round = Round::default();
        let at = self.sess.stage_trunc(&mut round, Shares::from_raw(rotated), f + e)?;
        if e > 0 {
            let v: Vec<u64> =
                qkv.data.as_slice().chunks(cols).flat_map(|row| row[width..].to_vec()).collect();
            self.sess.stage_trunc(&mut round, Shares::from_raw(v), e)?;
        }
        let mut done = self.sess.run(round)?;
        let t = done.remove(at).shares()?.into_raw();
        let v = if e > 0 { done.remove(at).shares()?.into_raw() } else { Vec::new() };
        let data = qkv.data.as_mut_slice();
        for r in 0..qkv.rows {
            data[r * cols..r * cols + width].copy_from_slice(&t[r * width..(r + 1) * width]);
            if e > 0 {
                data[r * cols + width..(r + 1) * cols]
                    .copy_from_slice(&v[r * (cols - width)..(r + 1) * (cols - width)]);
            }
        }
        qkv.extra_frac = 0;
        Ok(())
    }

    fn do_attention(
        &mut self,
        qkv: &SharedTensor<R>,
        layer: usize,
        start_pos: usize,
    ) -> Result<SharedTensor<R>, MpcPartyError> {
        let c = self.weights.config.clone();
        let cache = &mut self.cache[layer];
        let cached = cache.k.len() / c.kv_dim().max(1);
        if cached != start_pos {
            return Err(EngineError::CacheMismatch { cached, start_pos }.into());
        }
        if start_pos + qkv.rows > c.max_position_embeddings {
            return Err(
                EngineError::TooLong { len: start_pos + qkv.rows, max: c.max_position_embeddings }.into()
            );
        }
        let a = AttentionLayout::new(&c, qkv.rows, qkv.cols, start_pos);
        let q = qkv.data.as_slice();
        for r in 0..a.n {
            let row = &q[r * a.cols + a.qd..r * a.cols + a.qd + 2 * a.kvd];
            cache.k.extend_from_slice(&row[..a.kvd]);
            cache.v.extend_from_slice(&row[a.kvd..]);
        }
        let (kt, vs) = (a.keys_transposed(&cache.k), a.values(&cache.v));
        // One product per KV head with its query heads stacked (GQA): K^T is opened once
        // per KV head instead of once per query head. Heads of a group are consecutive, so
        // the stacked outputs are already head-major.
        let stacked = a.stacked_queries(q);
        let ops: Vec<MatMul<'_, R>> = (0..a.nkv)
            .map(|g| MatMul {
                x: &stacked[g],
                y: &kt[g],
                m: a.group * a.n,
                k: a.hd,
                n: a.total,
                causal: None,
            })
            .collect();
        let scores: Vec<u64> = self.sess.matmul_many(&ops)?.into_iter().flat_map(Shares::into_raw).collect();
        // v3-ot leaves its output untruncated for the output projection's truncation.
        let (out, extra_frac) = match self.nonlinear {
            Nonlinear::Polynomial => (self.poly_attend(&a, &scores, &vs, start_pos)?, 0),
            Nonlinear::Tables => (self.ot_attend(&a, &scores, &vs, start_pos)?, ot::ATTN_RECIP_FRAC),
        };
        Ok(SharedTensor { extra_frac, ..SharedTensor::new(a.n, a.qd, a.heads_to_rows(&out)) })
    }

    /// v3-mpc's softmax and `E V` of one attention call, from the scores (`2F` bits) on.
    fn poly_attend(
        &mut self,
        a: &AttentionLayout,
        scores: &[u64],
        vs: &[Shares<R>],
        start_pos: usize,
    ) -> Result<Vec<u64>, MpcPartyError> {
        let f = self.f();
        // Only the visible scores are truncated and go through the softmax: the masked
        // half of a prefill's scores is never touched.
        let (visible, segs) = a.visible(scores);
        let visible = self.sess.trunc(Shares::<R>::from_raw(visible), f)?;
        let max = nonlinear::max_segments(
            &mut self.sess,
            &visible,
            &segs,
            nonlinear::SCORE_DROP,
            nonlinear::SCORE_BITS,
        )?;
        let maxb: Vec<u64> =
            segs.iter().enumerate().flat_map(|(i, &l)| std::iter::repeat_n(max.as_slice()[i], l)).collect();
        let e = nonlinear::exp_neg(&mut self.sess, &visible.sub(&Shares::from_raw(maxb)), f)?;
        let (sums, emats) = a.row_sums_and_padded(e.as_slice(), &segs);
        // The reciprocal's comparisons ride along with E V and its truncation.
        let sums = Shares::<R>::from_raw(sums);
        let pending = nonlinear::reciprocal_start(&mut self.sess, &sums, f, a.total as f64)?;
        let ev = self.sess.matmul_many(&a.value_products(&emats, vs, start_pos))?;
        let ev = self.sess.trunc(Shares::from_raw(ev.into_iter().flat_map(Shares::into_raw).collect()), f)?;
        let recip = nonlinear::reciprocal_finish(&mut self.sess, &sums, pending)?;
        let out = self.scale_by_reciprocal(&ev, &recip)?;
        Ok(self.sess.trunc(Shares::from_raw(out), nonlinear::RECIP_BITS)?.into_raw())
    }

    /// Each row of `E V` (`F` bits) times its softmax row's reciprocal, untruncated (`F`
    /// plus the reciprocal's bits): the end of both variants' attention.
    fn scale_by_reciprocal(&mut self, ev: &Shares<R>, recip: &Shares<R>) -> Result<Vec<u64>, MpcPartyError> {
        Ok(self.sess.mul_rows(ev, recip)?.into_raw())
    }

    /// The gate and up halves of each row of a gate/up projection, `n x intermediate` each.
    fn split_gate_up(gate_up: &SharedTensor<R>) -> (Vec<u64>, Vec<u64>) {
        let inter = gate_up.cols / 2;
        let (mut gate, mut up) =
            (Vec::with_capacity(gate_up.rows * inter), Vec::with_capacity(gate_up.rows * inter));
        for row in gate_up.data.as_slice().chunks(gate_up.cols) {
            gate.extend_from_slice(&row[..inter]);
            up.extend_from_slice(&row[inter..]);
        }
        (gate, up)
    }

    fn do_swiglu(&mut self, gate_up: &SharedTensor<R>) -> Result<SharedTensor<R>, MpcPartyError> {
        if self.nonlinear == Nonlinear::Tables {
            return self.ot_swiglu(gate_up);
        }
        let (gate, up) = Self::split_gate_up(gate_up);
        // gate and up may carry extra_frac more fractional bits (untruncated projection):
        // SiLU reads the gate as it is and the product's truncation absorbs up's.
        let (f, e) = (self.f(), gate_up.extra_frac);
        let s = nonlinear::silu_from(&mut self.sess, &Shares::from_raw(gate), f + e, f)?;
        let p = self.sess.mul(&s, &Shares::from_raw(up))?;
        let p = self.sess.trunc(p, f + e)?;
        Ok(SharedTensor { rows: gate_up.rows, cols: gate_up.cols / 2, data: p, extra_frac: 0 })
    }

    fn do_add(&mut self, a: &SharedTensor<R>, b: &SharedTensor<R>) -> Result<SharedTensor<R>, MpcPartyError> {
        Self::at_f(a, "add")?;
        Self::at_f(b, "add")?;
        if (a.rows, a.cols) != (b.rows, b.cols) {
            return Err(MpcError::Shape {
                op: "add",
                detail: format!("{}x{} + {}x{}", a.rows, a.cols, b.rows, b.cols),
            }
            .into());
        }
        Ok(SharedTensor { rows: a.rows, cols: a.cols, data: a.data.add(&b.data), extra_frac: 0 })
    }

    fn do_select_rows(&mut self, x: &SharedTensor<R>, rows: Rows) -> Result<SharedTensor<R>, MpcPartyError> {
        Ok(match rows {
            Rows::All => x.clone(),
            Rows::Last => {
                let r = x.rows.saturating_sub(1);
                SharedTensor::new(1, x.cols, x.data.as_slice()[r * x.cols..(r + 1) * x.cols].to_vec())
            }
        })
    }

    fn do_reveal_logits(&mut self, logits: &SharedTensor<R>) -> Result<Option<Logits>, MpcPartyError> {
        let f = self.f();
        Ok(self
            .sess
            .reveal_to_p0(&logits.data)?
            .map(|v| Logits { vocab: logits.cols, data: v.iter().map(|&x| decode(x, f) as f32).collect() }))
    }
}

impl<R: Role, C: Channel, M: MaterialSource<R>> ModelOps for MpcParty<R, C, M> {
    type Act = SharedTensor<R>;
    type Error = MpcPartyError;

    /// P0 passes the real tokens; P1 passes placeholders of the same count.
    fn embed(&mut self, tokens: &[u32]) -> Result<SharedTensor<R>, MpcPartyError> {
        if self.driven && R::ID == 0 {
            self.sess.transfer(Opened::PublicShape, &[tokens.len() as u64], 0)?;
        }
        let m = self.counters();
        let r = self.do_embed(tokens)?;
        self.meter("embed", m, r.data.len());
        Ok(r)
    }
    fn rms_norm(&mut self, x: &SharedTensor<R>, norm: Norm) -> Result<SharedTensor<R>, MpcPartyError> {
        let m = self.counters();
        let r = self.do_rms_norm(x, norm)?;
        self.meter("rms_norm", m, x.data.len());
        Ok(r)
    }
    fn linear(&mut self, x: &SharedTensor<R>, linear: Linear) -> Result<SharedTensor<R>, MpcPartyError> {
        let m = self.counters();
        let r = self.do_linear(x, linear)?;
        self.meter(if linear == Linear::LmHead { "lm_head" } else { "linear" }, m, r.data.len());
        Ok(r)
    }
    fn rope(&mut self, qkv: &mut SharedTensor<R>, start_pos: usize) -> Result<(), MpcPartyError> {
        let m = self.counters();
        self.do_rope(qkv, start_pos)?;
        self.meter("rope", m, qkv.data.len());
        Ok(())
    }
    fn attention(
        &mut self,
        qkv: &SharedTensor<R>,
        layer: usize,
        start_pos: usize,
    ) -> Result<SharedTensor<R>, MpcPartyError> {
        let m = self.counters();
        let r = self.do_attention(qkv, layer, start_pos)?;
        let c = &self.weights.config;
        // Elements: attention scores (heads x rows x visible positions).
        let scores: usize = (0..qkv.rows).map(|i| start_pos + i + 1).sum::<usize>() * c.num_attention_heads;
        self.meter("attention", m, scores);
        Ok(r)
    }
    fn swiglu(&mut self, gate_up: &SharedTensor<R>) -> Result<SharedTensor<R>, MpcPartyError> {
        let m = self.counters();
        let r = self.do_swiglu(gate_up)?;
        self.meter("swiglu", m, r.data.len());
        Ok(r)
    }
    fn add(&mut self, a: &SharedTensor<R>, b: &SharedTensor<R>) -> Result<SharedTensor<R>, MpcPartyError> {
        self.do_add(a, b)
    }
    fn select_rows(&mut self, x: &SharedTensor<R>, rows: Rows) -> Result<SharedTensor<R>, MpcPartyError> {
        let rows = match (self.driven, R::ID) {
            (false, _) => rows,
            (true, 0) => {
                self.sess.transfer(Opened::PublicShape, &[u64::from(rows == Rows::All)], 0)?;
                rows
            }
            (true, _) => {
                let announced = match self.sess.transfer(Opened::PublicShape, &[], 1)?.first() {
                    Some(1) => Rows::All,
                    _ => Rows::Last,
                };
                if self.expected_rows.is_some_and(|want| want != announced) {
                    return Err(MpcError::Shape {
                        op: "select_rows",
                        detail: format!(
                            "P0 asked for {announced:?} logits; the declared shape allows {:?}",
                            self.expected_rows
                        ),
                    }
                    .into());
                }
                announced
            }
        };
        self.do_select_rows(x, rows)
    }
    fn reveal_logits(&mut self, logits: &SharedTensor<R>) -> Result<Option<Logits>, MpcPartyError> {
        let m = self.counters();
        let r = self.do_reveal_logits(logits)?;
        self.meter("reveal_logits", m, logits.data.len());
        Ok(r)
    }
}

/// Whether a transfer label is a masked opening (everything but the final logits and
/// the public step shapes of a driven session).
pub fn is_masked(what: Opened) -> bool {
    !matches!(what, Opened::FinalLogits | Opened::PublicShape)
}

/// What a planned session consumes and moves.
#[derive(Clone, Debug)]
pub struct MpcPlan {
    /// The material requests, in the order both parties take them.
    pub requests: Vec<MaterialRequest>,
    /// P0's traffic per kind of operation over the whole session.
    pub costs: BTreeMap<&'static str, OpCost>,
    /// P0's channel counters over the whole session.
    pub counters: Counters,
}

/// One forward step of a planning run: tokens, start position, rows.
type StepFn<'a> = dyn FnMut(&[u32], usize, Rows) -> Result<(), MpcPartyError> + 'a;

/// Plans a v3-mpc session (a prefill of `prompt_tokens` with logits for `rows`, then
/// `max_new_tokens - 1` decode steps) by running the forward pass itself on both
/// parties with [`Recorder`] material over an in-memory pair: the material requests are
/// exactly those a real session takes, because the protocol's flow depends only on
/// public shapes. The computed values are meaningless (the recorder's material is zero).
/// Costs the same computation as a session, without the dealer.
pub fn plan_session(
    weights: &Arc<Weights>,
    ring: &Arc<RingWeights>,
    prompt_tokens: usize,
    max_new_tokens: usize,
    rows: Rows,
) -> Result<MpcPlan, MpcPartyError> {
    plan_session_with(Nonlinear::Polynomial, weights, ring, prompt_tokens, max_new_tokens, rows)
}

/// [`plan_session`] for the variant that computes the nonlinear layers by `nonlinear`.
pub fn plan_session_with(
    nonlinear: Nonlinear,
    weights: &Arc<Weights>,
    ring: &Arc<RingWeights>,
    prompt_tokens: usize,
    max_new_tokens: usize,
    rows: Rows,
) -> Result<MpcPlan, MpcPartyError> {
    let config = weights.config.clone();
    let (c0, c1) = shardlm_transport::memory::pair();
    let run = |p: &mut StepFn<'_>| -> Result<(), MpcPartyError> {
        p(&vec![0u32; prompt_tokens], 0, rows)?;
        for step in 1..max_new_tokens.max(1) {
            p(&[0], prompt_tokens + step - 1, Rows::Last)?;
        }
        Ok(())
    };
    let (r0, r1) = std::thread::scope(|s| {
        let h = s.spawn(|| {
            let mut p1 =
                MpcParty::new(weights.clone(), ring.clone(), c1, Recorder::<P1>::new(), Seed([1; 32]))
                    .with_nonlinear(nonlinear);
            let cfg = config.clone();
            run(&mut |t, pos, rows| forward(&mut p1, &cfg, t, pos, rows).map(|_| ()))
                .map(|_| p1.into_parts().1.into_requests())
        });
        let mut p0 = MpcParty::new(weights.clone(), ring.clone(), c0, Recorder::<P0>::new(), Seed([0; 32]))
            .with_nonlinear(nonlinear);
        let r0 = run(&mut |t, pos, rows| forward(&mut p0, &config, t, pos, rows).map(|_| ()));
        let costs = p0.costs().clone();
        let counters = p0.counters();
        let requests = p0.into_parts().1.into_requests();
        (r0.map(|_| (requests, costs, counters)), h.join())
    });
    let (requests, costs, counters) = r0?;
    let r1 =
        r1.map_err(|_| MpcError::Shape { op: "plan", detail: "P1's planning thread panicked".into() })??;
    if r1 != requests {
        return Err(MpcError::Shape {
            op: "plan",
            detail: "the two parties' material requests differ".into(),
        }
        .into());
    }
    Ok(MpcPlan { requests, costs, counters })
}

/// Runs the server party (P1) of a driven v3-mpc session until P0 ends it: each step on
/// placeholder tokens of the announced count. Returns the number of forward passes.
pub fn serve_driven<C: Channel, M: MaterialSource<P1>>(
    mut party: MpcParty<P1, C, M>,
    config: &ModelConfig,
    shape: crate::plan::SessionShape,
) -> Result<(u64, C, M), MpcPartyError> {
    let mut pos = 0usize;
    let mut passes = 0u64;
    loop {
        let first = passes == 0;
        let expect = if first { shape.prompt_tokens } else { 1 };
        let Some(n) = party.next_step(expect)? else { break };
        crate::limits::check_pass(shape, passes as usize)
            .map_err(|detail| MpcError::Shape { op: "step", detail })?;
        party.expected_rows = Some(if first { shape.rows } else { Rows::Last });
        shardlm_model::qwen2::forward(&mut party, config, &vec![0u32; n], pos, Rows::Last)?;
        pos += n;
        passes += 1;
    }
    let (chan, material) = party.finish()?;
    Ok((passes, chan, material))
}
