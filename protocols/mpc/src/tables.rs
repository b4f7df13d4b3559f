//! v3-ot's nonlinear functions: one-time table lookups ([`crate::lut`]) on truncated,
//! clipped, bit-width-reduced inputs, batched with the products and truncations of the
//! same step into as few rounds as the data dependencies allow ([`Round`]).
//!
//! Which way to read a table (DESIGN.md section 3) is chosen per function by its cost
//! at the Qwen2.5-1.5B shape: **one-time truth tables** everywhere. They cost one round
//! and `k` bits each way online, and `2^bits x out` bits of P0 material per function
//! read (P1's part is a seed). A 1-of-N random OT would move the same `2^bits x out`
//! bits online instead (SiLU alone: ~0.4 KB per gate element, 10 GB per prefill, over
//! the 2 GiB budget); an FSS/DPF lookup needs correction words that P1 cannot derive
//! from a seed and `2^bits` PRG calls per lookup on the CPU. Tables are kept small by
//! reducing first: 7- and 8-bit indices for the 25 M gate elements of a 1.5B prefill, 10-12
//! bits only for the few thousand softmax rows and norm rows.
//!
//! | function | method | rounds | input range assumed | max error measured (tests in `ot_v3.rs`) |
//! |---|---|---|---|---|
//! | [`silu_times`] `silu(g) u` | the tangent line at the table point `x` next to `g`, `silu(g) ~ slope(x) g - intercept(x)`: `p = [g >= 7]`, `inr = [abs(g) < 7.5]` from an 8-bit table of `g` at step 1/2; slope (7 bits) and intercept (9 bits) as XOR bits from one 7-bit table of `g` at step 1/8 ([`SiluLine`], biased to be nonnegative), ANDed with `inr` (beyond the table: slope 1 where `p`, else 0, intercept 0, XORed in locally); the slope's bits times `g u` and the intercept's times `u` by one bit-vector product triple (`g`, `u` opened once, the biases public constants) | 3 (with the truncations of `g` and `u`; the output is left untruncated, [`SILU_OUT_FRAC`] bits, for the down projection's truncation) | `abs(g) < 64` | 0.006 per unit of `max(abs(u), 1)`, `g` in [-40, 40] (`u`'s rounding times large `g`); 5e-4 rms per unit of `abs(u)` for `abs(g) < 7` |
//! | [`max_rows`] | tournament on the 10-bit reduced scores (step 1): `max(a, b) = b + relu(a - b)`, `relu` read from a table modulo `2^10` | `ceil(log2 n)` | `abs(score) < 256` | within 1 (the softmax is invariant to it) |
//! | [`softmax_exp`] | `exp(x - c) = [z >= -16] exp(z) exp(e1) (1 + e2)`: `z = v - c` (integers, exact in the reduced ring), `e1` the residual at step 1/32, `e2` below it; the clipping bit times the three factors by one bit-weighted product triple | 3 | row spread of `abs` scores below 512 | 2.0e-5 after normalizing, scores in [-60, 40] |
//! | [`inverse`] (reciprocal, rsqrt) | levels: the input reduced at several scales, each level's table answering for its top bits; a second lookup on the count of coarser levels that answered selects the right one, by bit products | 3 | the plan's levels (8+ significant bits) | reciprocal 3.7e-3 relative on [0.37, 300]; rsqrt of the mean square 1.6e-3 on [2^-20, 2^17] |

use super::material::{Read, SiluLine, TableFn};
use super::session::{Done, Round, Session};
use super::{beaver, lut, shape, MpcError};
use crate::material::MaterialSource;
use crate::ring::{arith_shr, low_mask, pack_bits, packed_words};
use crate::share::{Role, Shares};
use shardlm_transport::Channel;

/// Step of SiLU's fine table, `2^-SILU_STEP`: a 7-bit index covers `[-8, 8)`. The
/// tangent line's error is the curvature term, at most `silu''(0) step^2 / 2` = 0.004
/// (its mean under the index's stochastic rounding is folded into the intercept).
pub const SILU_STEP: u32 = 3;
/// Index bits of SiLU's fine table (`2^SILU_INDEX_BITS` entries at step `2^-SILU_STEP`).
pub const SILU_INDEX_BITS: u32 = 7;
/// Fractional bits of SiLU's slope. Its rounding error multiplies only `g - x`, below
/// one step: at most `2^-(SILU_SLOPE_FRAC + 1 + SILU_STEP)`.
pub const SILU_SLOPE_FRAC: u32 = 6;
/// Added to the slope (`2^-3`): `silu'` lies in `[-0.1, 1.1]`, the stored slope in
/// `[2, 78]` of [`SILU_SLOPE_BITS`] unsigned bits.
pub const SILU_SLOPE_BIAS: u32 = 1 << (SILU_SLOPE_FRAC - 3);
/// Width of SiLU's slope.
pub const SILU_SLOPE_BITS: u32 = 7;
/// Fractional bits of SiLU's intercept (its rounding, at most `2^-11`, is the line's
/// error at the table point).
pub const SILU_INTERCEPT_FRAC: u32 = 10;
/// Added to the intercept (`2^-8`): `slope x - silu(x)` with the slope rounded lies in
/// `[-2^-10, 0.43]`, the stored intercept in `[3, 440]` of [`SILU_INTERCEPT_BITS`]
/// unsigned bits.
pub const SILU_INTERCEPT_BIAS: u32 = 1 << (SILU_INTERCEPT_FRAC - 8);
/// Width of SiLU's intercept (slope and intercept fill 16 bits: four entries a word).
pub const SILU_INTERCEPT_BITS: u32 = 9;
/// SiLU's fine table read.
pub const SILU_LINE: TableFn = TableFn::SiluLine(SiluLine {
    frac_in: SILU_STEP,
    slope_frac: SILU_SLOPE_FRAC,
    slope_bias: SILU_SLOPE_BIAS,
    slope_bits: SILU_SLOPE_BITS,
    intercept_frac: SILU_INTERCEPT_FRAC,
    intercept_bias: SILU_INTERCEPT_BIAS,
    intercept_bits: SILU_INTERCEPT_BITS,
});
/// Fractional bits `g` is truncated to for SiLU's product (its rounding, `2^-12` times
/// the slope, is below the intercept's).
pub const SILU_G_FRAC: u32 = 12;
/// Fractional bits `u` is truncated to for SiLU's product (its rounding, `2^-14` times
/// `silu(g)`).
pub const SILU_U_FRAC: u32 = 14;
/// Fractional bits of [`silu_times`]'s untruncated output: `slope g u`.
pub const SILU_OUT_FRAC: u32 = SILU_G_FRAC + SILU_U_FRAC + SILU_SLOPE_FRAC;
/// Index width of the softmax's reduced scores (tournament and clipping).
pub const SCORE_K: u32 = 10;
/// Clipping of the softmax exponent: `exp(z)` is 0 for `z < -EXP_CLIP`.
pub const EXP_CLIP: i32 = 16;
/// Fractional bits of the exponentials [`softmax_exp`] returns.
pub const EXP_FRAC: u32 = 24;
/// Fractional bits of a level's table output before the products (exp's factors).
const FACTOR_FRAC: u32 = 16;
/// Step of the exponent's fine part: `2^-EXP_FINE` (a 7-bit table on `[-1, 1)`).
const EXP_FINE: u32 = 5;
/// Fractional bits of `1 + e2`, the exponent's linear remainder.
const ONE_FRAC: u32 = 24;

fn next<R: Role>(it: &mut impl Iterator<Item = Done<R>>) -> Result<Done<R>, MpcError> {
    it.next().ok_or_else(|| shape("round", "missing part"))
}

/// Bits `0..width` of every value as packed planes: plane `j` holds bit `j` of value
/// `i` at bit `i % 64` of word `i / 64` (as [`pack_bits`] with width 1 would).
fn bit_planes(values: &[u64], width: u32) -> Vec<Vec<u64>> {
    let mut planes = vec![vec![0u64; packed_words(values.len(), 1)]; width as usize];
    for (w, chunk) in values.chunks(64).enumerate() {
        for (j, plane) in planes.iter_mut().enumerate() {
            plane[w] = chunk.iter().enumerate().fold(0u64, |acc, (k, &v)| acc | ((v >> j) & 1) << k);
        }
    }
    planes
}

/// Weights `2^j scale` of an unsigned value's bits.
fn bit_weights(bits: u32, scale: u64) -> Vec<u64> {
    (0..bits).map(|j| (1u64 << j).wrapping_mul(scale)).collect()
}

/// `silu(g) u` for gate `g` and up `u` with `fg` fractional bits (the untruncated
/// gate/up projection), returned untruncated with [`SILU_OUT_FRAC`] fractional bits: the
/// caller's next truncation (the down projection's) absorbs them, so SwiGLU ends on its
/// product round (module doc). `|g| < 64` is assumed (the coarse index wraps beyond;
/// Qwen2.5-0.5B's gates reach 36), and `|silu(g) u| < 2^(62 - SILU_OUT_FRAC)` (2^30).
///
/// The fine index `x` is within one step of `g` ([`lut::reduce`]); the table holds the
/// tangent line of SiLU at `x`, so the error is second order in `g - x` instead of first
/// (a table of the sigmoid alone would need a step of 1/128, sixteen times the entries,
/// for the same error: `docs/v3-ot.md`).
pub fn silu_times<R: Role, C: Channel, M: MaterialSource<R>>(
    sess: &mut Session<R, C, M>,
    gate: &Shares<R>,
    up: &Shares<R>,
    fg: u32,
) -> Result<Shares<R>, MpcError> {
    if fg <= SILU_U_FRAC || !(4..=48).contains(&fg) {
        return Err(shape(
            "silu",
            format!("gate with {fg} fractional bits (at least {} needed)", SILU_U_FRAC + 1),
        ));
    }
    let n = gate.len();
    let (coarse, fine) = (lut::reduce(gate, fg - 1, 8), lut::reduce(gate, fg - SILU_STEP, SILU_INDEX_BITS));
    // Round 1: both lookups and the truncations of g and u.
    let mut r = Round::default();
    sess.stage_lookup(
        &mut r,
        &coarse,
        8,
        &[
            Read { func: TableFn::AtLeast { t: 15 }, bits: 8 },
            Read { func: TableFn::Between { lo: -14, hi: 14 }, bits: 8 },
        ],
    )?;
    sess.stage_lookup(&mut r, &fine, SILU_INDEX_BITS, &[Read { func: SILU_LINE, bits: SILU_INDEX_BITS }])?;
    sess.stage_trunc(&mut r, gate.clone(), fg - SILU_G_FRAC)?;
    sess.stage_trunc(&mut r, up.clone(), fg - SILU_U_FRAC)?;
    let mut out = sess.run(r)?.into_iter();
    let mut pi = next(&mut out)?.tables()?.into_iter();
    let (p, inr) = (pi.next().unwrap_or_default(), pi.next().unwrap_or_default());
    let line = next(&mut out)?.tables()?.pop().unwrap_or_default();
    let (g, u) = (next(&mut out)?.shares()?, next(&mut out)?.shares()?);
    // Round 2: inr AND each bit of the line (slope, then intercept), as packed planes.
    let width = SILU_SLOPE_BITS + SILU_INTERCEPT_BITS;
    let words = packed_words(n, 1);
    let line_planes = bit_planes(&line, width);
    let inr_plane = pack_bits(&inr, 1);
    let pairs: Vec<(&[u64], &[u64])> = line_planes.iter().map(|b| (&inr_plane[..], &b[..])).collect();
    let mut r = Round::default();
    sess.stage_and(&mut r, &pairs)?;
    let mut c = next(&mut sess.run(r)?.into_iter())?.bits()?;
    if c.len() != width as usize || c.iter().any(|cj| cj.len() != words) {
        return Err(shape("silu", "the ANDs returned another shape"));
    }
    // Beyond the table (inr = 0, where the ANDs gave 0) the stored line is slope 0 and
    // intercept 0, or slope 1 where p = 1: their biases' bits XOR NOT inr, and the
    // bits where 1 + bias differs from bias XOR p (p = 1 implies inr = 0). All local.
    // NOT inr from its plane: P0 flips its share (the padding bits too, never read).
    let not_inr: Vec<u64> = inr_plane.iter().map(|w| if R::ID == 0 { !w } else { *w }).collect();
    let p = pack_bits(&p, 1);
    let one = (1u64 << SILU_SLOPE_FRAC) + u64::from(SILU_SLOPE_BIAS);
    let stored_outside = [
        (0, u64::from(SILU_SLOPE_BIAS), &not_inr),
        (SILU_SLOPE_BITS, u64::from(SILU_INTERCEPT_BIAS), &not_inr),
        (0, one ^ u64::from(SILU_SLOPE_BIAS), &p),
    ];
    for (at, bits, flag) in stored_outside {
        for j in (0..64).filter(|j| (bits >> j) & 1 == 1) {
            for (cj, fj) in c[(at + j) as usize].iter_mut().zip(flag.iter()) {
                *cj ^= fj;
            }
        }
    }
    let (sb, ib) = (SILU_SLOPE_BITS as usize, SILU_INTERCEPT_BITS as usize);
    // Round 3: (slope + bias - bias) g u - (intercept + bias - bias) u 2^scale: the
    // intercept (SILU_INTERCEPT_FRAC bits) times u is scaled up to the slope term's
    // fractional bits; the biases are public constants of the product.
    let scale = SILU_G_FRAC + SILU_SLOPE_FRAC - SILU_INTERCEPT_FRAC;
    let mut slope = beaver::WeightedBits {
        bits: Vec::with_capacity(n * sb),
        weights: bit_weights(SILU_SLOPE_BITS, 1),
        constant: u64::from(SILU_SLOPE_BIAS).wrapping_neg(),
    };
    let mut intercept = beaver::WeightedBits {
        bits: Vec::with_capacity(n * ib),
        weights: bit_weights(SILU_INTERCEPT_BITS, (1u64 << scale).wrapping_neg()),
        constant: u64::from(SILU_INTERCEPT_BIAS) << scale,
    };
    for i in 0..n {
        let (w, k) = (i / 64, i % 64);
        slope.bits.extend(c[..sb].iter().map(|cj| (cj[w] >> k) & 1));
        intercept.bits.extend(c[sb..].iter().map(|cj| (cj[w] >> k) & 1));
    }
    let mut r = Round::default();
    sess.stage_bit_vector_mul(&mut r, slope, intercept, &g, &u)?;
    next(&mut sess.run(r)?.into_iter())?.shares()
}

/// Per-segment maxima of `k`-bit index shares `v` (segments of `segs` consecutive
/// elements), by a tournament of table ReLUs modulo `2^k`: `ceil(log2 max(segs))` rounds.
/// Differences must stay below `2^(k-1)` in magnitude.
pub fn max_rows<R: Role, C: Channel, M: MaterialSource<R>>(
    sess: &mut Session<R, C, M>,
    v: &[u64],
    segs: &[usize],
    k: u32,
) -> Result<Vec<u64>, MpcError> {
    let m = low_mask(k);
    let mut rows: Vec<Vec<u64>> = Vec::with_capacity(segs.len());
    let mut at = 0;
    for &l in segs {
        let seg = v.get(at..at + l).ok_or_else(|| shape("max", "segments exceed the input"))?;
        if l == 0 {
            return Err(shape("max", "an empty segment has no maximum"));
        }
        rows.push(seg.to_vec());
        at += l;
    }
    while rows.iter().any(|r| r.len() > 1) {
        // Pair neighbours in every row; an odd last element passes through.
        let mut d = Vec::new();
        let mut b = Vec::new();
        for r in &rows {
            for pair in r.chunks_exact(2) {
                d.push(pair[0].wrapping_sub(pair[1]) & m);
                b.push(pair[1]);
            }
        }
        let mut round = Round::default();
        sess.stage_lookup(&mut round, &d, k, &[Read { func: TableFn::Relu, bits: k }])?;
        let relu = next(&mut sess.run(round)?.into_iter())?.tables()?.pop().unwrap_or_default();
        let mut i = 0;
        for r in rows.iter_mut() {
            let mut next_row = Vec::with_capacity(r.len().div_ceil(2));
            for pair in r.chunks(2) {
                if pair.len() == 2 {
                    next_row.push(b[i].wrapping_add(relu[i]) & m);
                    i += 1;
                } else {
                    next_row.push(pair[0]);
                }
            }
            *r = next_row;
        }
    }
    Ok(rows.into_iter().map(|r| r[0]).collect())
}

/// `exp(x - c)` with [`EXP_FRAC`] fractional bits for scores `x` (`fs` fractional bits)
/// in segments `segs` (rows), `c` a row maximum of the scores reduced to integers
/// ([`max_rows`]), so every argument is below 1 and each row's largest above -1.
/// `|x| < 256` is assumed (module doc).
pub fn softmax_exp<R: Role, C: Channel, M: MaterialSource<R>>(
    sess: &mut Session<R, C, M>,
    x: &Shares<R>,
    segs: &[usize],
    fs: u32,
) -> Result<Shares<R>, MpcError> {
    if !(ONE_FRAC..=40).contains(&fs) {
        return Err(shape("softmax", format!("scores with {fs} fractional bits")));
    }
    let k = SCORE_K;
    let m = low_mask(k);
    let v = lut::reduce(x, fs, k);
    let c = max_rows(sess, &v, segs, k)?;
    let z: Vec<u64> = segs
        .iter()
        .zip(&c)
        .flat_map(|(&l, &c)| std::iter::repeat_n(c, l))
        .zip(&v)
        .map(|(c, v)| v.wrapping_sub(c) & m)
        .collect();
    // x - c = z + e1 2^-EXP_FINE + e2, e1 on 7 bits, e2 in [-2^-EXP_FINE, 2^-EXP_FINE).
    let e = lut::residual(x, fs);
    let fine_shift = fs - EXP_FINE;
    let e1 = lut::reduce(&e, fine_shift, 7);
    // e2 (fs fractional bits, shares below 2^fine_shift in magnitude: no wrap) at
    // ONE_FRAC bits by an exact local shift of each share (within one unit).
    let e2 = lut::residual(&e, fine_shift);
    let e2 = Shares::<R>::from_raw(e2.as_slice().iter().map(|&v| arith_shr(v, fs - ONE_FRAC)).collect());
    let one_e2 = e2.add_public(&vec![1u64 << ONE_FRAC; e2.len()]);
    // Round 1: the clipping bit and exp(z) from z, exp(e1) from e1.
    let mut r = Round::default();
    sess.stage_lookup(
        &mut r,
        &z,
        k,
        &[
            Read { func: TableFn::AtLeast { t: -EXP_CLIP }, bits: k },
            Read { func: TableFn::Exp { frac_in: 0, frac_out: FACTOR_FRAC }, bits: 5 },
        ],
    )?;
    sess.stage_lookup(
        &mut r,
        &e1,
        7,
        &[Read { func: TableFn::Exp { frac_in: EXP_FINE, frac_out: FACTOR_FRAC }, bits: 7 }],
    )?;
    let mut out = sess.run(r)?.into_iter();
    let mut zt = next(&mut out)?.tables()?.into_iter();
    let (clip, ez) = (zt.next().unwrap_or_default(), zt.next().unwrap_or_default());
    let ee = next(&mut out)?.tables()?.pop().unwrap_or_default();
    // Round 2: [z >= -16] exp(z) exp(e1) (1 + e2), the three values opened once
    // (FACTOR_FRAC + FACTOR_FRAC + ONE_FRAC bits, below 2^62 for values below 4); round
    // 3: down to EXP_FRAC bits.
    let (ez, ee) = (Shares::from_raw(ez), Shares::from_raw(ee));
    let mut r = Round::default();
    sess.stage_bit_product3(&mut r, &clip, [&ez, &ee, &one_e2])?;
    let p = next(&mut sess.run(r)?.into_iter())?.shares()?;
    let total = 2 * FACTOR_FRAC + ONE_FRAC;
    if total <= EXP_FRAC {
        return Err(shape("softmax", format!("{total} fractional bits cannot be truncated to {EXP_FRAC}")));
    }
    sess.trunc(p, total - EXP_FRAC)
}

/// Which inverse a level plan computes, and on what.
#[derive(Clone, Debug)]
pub struct LevelPlan {
    /// Index bits of every level.
    pub k: u32,
    /// Right shift of each level, finest first; consecutive levels differ by `spacing`.
    pub shifts: Vec<u32>,
    /// Levels other than the finest answer for indices `>= 2^(k - spacing)`.
    pub spacing: u32,
    /// Fractional bits of the input.
    pub frac_in: u32,
    /// Public divisor of the input (`x / div` is inverted).
    pub div: u32,
    /// `x^-1/2` instead of `x^-1`.
    pub root: bool,
    /// Fractional bits of the output.
    pub frac_out: u32,
}

impl LevelPlan {
    /// Levels from a finest shift up to one whose range holds `max_units` (input units).
    pub fn covering(k: u32, finest: u32, spacing: u32, max_units: f64) -> Vec<u32> {
        let mut shifts = vec![finest];
        while 2f64.powi((k + shifts[shifts.len() - 1]) as i32) <= max_units && shifts.len() < 15 {
            shifts.push(shifts[shifts.len() - 1] + spacing);
        }
        shifts
    }

    fn reads(&self, level: usize) -> Vec<Read> {
        let min = if level == 0 { 1 } else { 1u32 << (self.k - self.spacing) };
        let mut reads = vec![Read {
            func: TableFn::Inverse {
                shift: self.shifts[level] as i32 - self.frac_in as i32,
                div: self.div,
                root: self.root,
                frac_out: self.frac_out,
                min,
            },
            bits: self.k,
        }];
        if level > 0 {
            reads.push(Read { func: TableFn::Count { min, width: 4 }, bits: self.k });
        }
        reads
    }
}

/// An inverse between its rounds ([`inverse_start`], [`inverse_middle`],
/// [`inverse_finish`]): where its parts sit in the caller's rounds.
#[derive(Debug)]
pub struct InverseSteps {
    levels: usize,
    n: usize,
    at: usize,
    values: Vec<Vec<u64>>,
}

/// Round 1 of [`inverse`]: stages one lookup per level of `x` into `round` (after
/// whatever the caller staged there).
pub fn inverse_start<R: Role, C: Channel, M: MaterialSource<R>>(
    sess: &mut Session<R, C, M>,
    round: &mut Round<R>,
    x: &Shares<R>,
    plan: &LevelPlan,
) -> Result<InverseSteps, MpcError> {
    let levels = plan.shifts.len();
    if levels == 0 || levels > 15 || plan.spacing >= plan.k || plan.shifts.iter().any(|&s| s + plan.k > 64) {
        return Err(shape("inverse", format!("level plan {plan:?}")));
    }
    let at = round.len();
    for (j, &s) in plan.shifts.iter().enumerate() {
        sess.stage_lookup(round, &lut::reduce(x, s, plan.k), plan.k, &plan.reads(j))?;
    }
    Ok(InverseSteps { levels, n: x.len(), at, values: Vec::new() })
}

/// Round 2 of [`inverse`]: takes round 1's level outputs out of `done` (the caller's
/// stay) and stages, for each level but the coarsest, whether no coarser level answered.
pub fn inverse_middle<R: Role, C: Channel, M: MaterialSource<R>>(
    sess: &mut Session<R, C, M>,
    round: &mut Round<R>,
    done: &mut Vec<Done<R>>,
    mut steps: InverseSteps,
) -> Result<InverseSteps, MpcError> {
    if done.len() < steps.at + steps.levels {
        return Err(shape("inverse", "round 1 lost its level lookups"));
    }
    let mine: Vec<Done<R>> = done.drain(steps.at..steps.at + steps.levels).collect();
    let mut counts = Vec::with_capacity(steps.levels);
    for d in mine {
        let mut t = d.tables()?.into_iter();
        steps.values.push(t.next().unwrap_or_default());
        counts.push(t.next().unwrap_or_default());
    }
    steps.at = round.len();
    for j in 0..steps.levels - 1 {
        let idx: Vec<u64> = (0..steps.n)
            .map(|i| counts[j + 1..].iter().fold(0u64, |a, c| a.wrapping_add(c[i])) & low_mask(4))
            .collect();
        sess.stage_lookup(round, &idx, 4, &[Read { func: TableFn::IsZero, bits: 4 }])?;
    }
    Ok(steps)
}

/// Round 3 of [`inverse`]: takes round 2's outputs out of `done` and sums the selected
/// levels by bit products (its own round).
pub fn inverse_finish<R: Role, C: Channel, M: MaterialSource<R>>(
    sess: &mut Session<R, C, M>,
    done: &mut Vec<Done<R>>,
    steps: InverseSteps,
) -> Result<Shares<R>, MpcError> {
    let (levels, at) = (steps.levels, steps.at);
    if done.len() < at + levels - 1 {
        return Err(shape("inverse", "round 2 lost its lookups"));
    }
    let zero: Vec<Done<R>> = done.drain(at..at + levels - 1).collect();
    let mut r = Round::default();
    for (j, z) in zero.into_iter().enumerate() {
        let z = z.tables()?.pop().unwrap_or_default();
        sess.stage_bit_mul(&mut r, &z, &Shares::from_raw(steps.values[j].clone()))?;
    }
    let mut y = Shares::from_raw(steps.values[levels - 1].clone());
    for d in sess.run(r)? {
        y = y.add(&d.shares()?);
    }
    Ok(y)
}

/// `1/x` or `1/sqrt(x)` of nonnegative `x` ([`LevelPlan`]), 3 rounds.
pub fn inverse<R: Role, C: Channel, M: MaterialSource<R>>(
    sess: &mut Session<R, C, M>,
    x: &Shares<R>,
    plan: &LevelPlan,
) -> Result<Shares<R>, MpcError> {
    let mut r1 = Round::default();
    let steps = inverse_start(sess, &mut r1, x, plan)?;
    let mut done = sess.run(r1)?;
    let mut r2 = Round::default();
    let steps = inverse_middle(sess, &mut r2, &mut done, steps)?;
    let mut done = sess.run(r2)?;
    inverse_finish(sess, &mut done, steps)
}
