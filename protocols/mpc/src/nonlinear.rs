//! Nonlinear functions on fixed-point shares (v3-mpc, DESIGN.md section 3): nothing is
//! ever reconstructed; comparisons ([`super::compare`]) select between pieces,
//! polynomials and Newton iterations run on Beaver products ([`super::beaver`]) with
//! faithful truncation ([`super::trunc`]).
//!
//! Inputs and outputs carry `f` fractional bits (`F = 16` by default) unless a function
//! says otherwise; internal steps use more fractional bits where precision needs them.
//! Where an intermediate may leave the truncation bound for out-of-range inputs (a
//! polynomial evaluated far outside its interval), the result is multiplied by a
//! selection bit that is exactly 0 there: Beaver products are exact in the ring, so the
//! garbage cancels exactly.
//!
//! | function | method | constants | max error (measured range) | rounds |
//! |---|---|---|---|---|
//! | [`relu`] | `x - [x < 0] x` (XOR sign bit, bit product) | comparison on `bits` | exact | cmp |
//! | [`silu`] | `relu(x) - [abs(x) < T] delta(abs(x))`, `delta(t) = t / (1 + e^t)` fitted by two degree-4 polynomials in `s = t / T` on `[0, A]` and `[A, T]` (Chebyshev interpolation); sign as XOR bits, `abs` by a bit product, range bits riding along, powers from one power tuple, pieces selected by bit products before one truncation | `T = 8`, `A = 2.5`, `s` at 15 bits, pieces at 48 bits | `2.6e-3` (just beyond `abs(x) = T`: `T/(1+e^T)`), `1.2e-3` inside | cmp + 10 |
//! | [`exp_neg`] | `x < -T` gives 0; else `(1 + y + y^2/2 + y^3/6)^(2^k)`, `y = x / 2^k`, the square and cube from one power tuple of `z = y / 6^(1/3)` (so the cube needs no coefficient); the clipping comparison rides along | `T = 16`, `k = 4`, `z` at 20 bits, 30 internal bits | `8.7e-5` absolute | 2k + 5 |
//! | [`reciprocal`] | start `k 2^(-m/16)` from `16 log2(max)` comparisons (sixteenth octaves), 1 Newton step `y (2 - x y)` | output 24 fractional bits | relative `5e-4` | cmp + 4 |
//! | [`rsqrt`] | start `k 2^(-(lo + m/16)/2)` from sixteenth-octave comparisons over `[2^-20, 2^17]`, 1 Newton step `y (3 - x y^2) / 2` | input 28, output 20 fractional bits | relative `4e-4` | cmp + 6 |
//! | [`max_segments`] | comparison tree, `max(a, b) = b + [b < a] (a - b)` (XOR bit, bit product) | | exact | `ceil(log2 len)` x cmp |
//!
//! Comparison cost (`cmp`) is in [`super::compare`]: `1 + ceil(log2(bits - 1)) + 1`
//! rounds and about `(3 bits) / 4` bytes per element each direction.

use super::session::Session;
use super::MpcError;
use crate::material::MaterialSource;
use crate::ring::encode;
use crate::share::{Role, Shares};
use shardlm_transport::Channel;

/// SiLU: clipping threshold `T` (relu outside `[-T, T]`).
pub const SILU_T: f64 = 8.0;
/// SiLU: `delta(t) = t / (1 + e^t)` on `t = abs(x)` in `[0, A]` as a polynomial in
/// `s = t / T` (degree 4, Chebyshev interpolation on `[0, A/T]`; max error `7.5e-4`).
pub const SILU_INNER: [f64; 5] = [-0.0007489, 4.1202352, -19.128057, 28.3809447, -9.9552586];
/// SiLU: `delta` on `t` in `[A, T]`, polynomial in `s = t / T` (degree 4 on `[A/T, 1]`;
/// max error `1.2e-3`).
pub const SILU_OUTER: [f64; 5] = [0.6619451, -2.2664187, 2.9012987, -1.6122652, 0.317981];
/// SiLU: the split point `A` between the two polynomial pieces.
pub const SILU_A: f64 = 2.5;
/// SiLU: comparisons keep `F - SILU_DROP` = 4 fractional bits and run on
/// [`SILU_BITS`] bits: exact for `abs(x) < 2^11` (gate inputs reach 36). A sign misread
/// for `0 <= x < 2^-4` is harmless: `relu(x) - delta(abs(x))` is the same analytic
/// function on both branches.
pub const SILU_DROP: u32 = 12;
/// SiLU: comparison width after dropping [`SILU_DROP`] bits.
pub const SILU_BITS: u32 = 16;
/// SiLU: `log2 T` (`T` is a power of two, so `|x| / T` is a shift).
pub const SILU_T_LOG2: u32 = 3;
/// SiLU: fractional bits of `s = |x| / T` before its powers (`s^4` has 4 times as many,
/// 60, below the truncation bound `2^62` for `s <= 1`; `s` resolves `T 2^-15 = 2.4e-4` of
/// `|x|`, moving the polynomials by at most `1.2e-4`).
pub const SILU_S_BITS: u32 = 15;
/// Internal fractional bits of the polynomials.
pub const POLY_BITS: u32 = 24;
/// exp: clipping threshold (`e^-16 = 1.1e-7` is below `2^-16`).
pub const EXP_T: f64 = 16.0;
/// exp: squarings (`n = 2^k`): `y = x / 16` is in `[-1, 0]`, where the cubic Taylor
/// polynomial's error, raised to the 16th power, stays below `6e-5` absolute.
pub const EXP_K: u32 = 4;
/// exp: fractional bits of `z = y / 6^(1/3)` for its power tuple (`z^3` at 60 bits).
pub const EXP_Z_BITS: u32 = 20;
/// exp: internal fractional bits of the squaring chain.
pub const EXP_BITS: u32 = 30;
/// Softmax score comparisons (max tree, exp clipping) drop this many low bits (keeping
/// 4 fractional bits at `F = 16`: a max off by `2^-4` only shifts the softmax, which is
/// invariant to it, and `exp` handles the small positive arguments that result).
pub const SCORE_DROP: u32 = 12;
/// Comparison width for softmax scores and their differences after dropping
/// [`SCORE_DROP`] bits: exact for `abs < 2^11 = 2048` at `F = 16` (scaled attention
/// scores and their spread within a row must stay below that).
pub const SCORE_BITS: u32 = 16;
/// Fractional bits of [`reciprocal`]'s output.
pub const RECIP_BITS: u32 = 24;
/// Fractional bits of [`rsqrt`]'s input (the mean square).
pub const MS_BITS: u32 = 28;
/// Fractional bits of [`rsqrt`]'s output.
pub const RSQRT_BITS: u32 = 20;
/// Fractional bits of `y^2` inside [`rsqrt`]'s Newton step.
const Y2_BITS: u32 = 32;
/// [`rsqrt`]'s input range: `[2^RSQRT_LO, 2^RSQRT_HI]`.
pub const RSQRT_LO: i32 = -20;
/// See [`RSQRT_LO`].
pub const RSQRT_HI: i32 = 17;
/// Comparisons per octave for Newton starting points: the start is within
/// `2^(1/32) - 1 = 2.2%` of the answer, so one Newton step gives `5e-4` (reciprocal,
/// error squared) and `3.5e-4` (rsqrt, `0.75` error squared). These functions run on one
/// value per row (softmax sums, mean squares): comparisons are cheap there, rounds are
/// not (DESIGN.md: spend rounds here, not bytes; here we spend bytes to save rounds).
pub const STEPS_PER_OCTAVE: u32 = 16;
/// Newton iterations of [`reciprocal`] and [`rsqrt`].
pub const NEWTON_ITERS: usize = 1;

/// Shares of a public constant vector (P0 holds it).
pub fn public<R: Role>(values: Vec<u64>) -> Shares<R> {
    if R::ID == 0 {
        Shares::from_raw(values)
    } else {
        Shares::from_raw(vec![0; values.len()])
    }
}

/// Local: `1 - b` for shares of bits.
pub fn not<R: Role>(b: &Shares<R>) -> Shares<R> {
    b.neg().add_public(&vec![1; b.len()])
}

/// Local: adds a public scalar (P0 only).
pub fn add_scalar<R: Role>(x: &Shares<R>, c: u64) -> Shares<R> {
    x.add_public(&vec![c; x.len()])
}

/// Repeats each element of `x` `times` times (broadcast a per-row value over a row).
pub fn broadcast<R: Role>(x: &Shares<R>, times: usize) -> Shares<R> {
    Shares::from_raw(x.as_slice().iter().flat_map(|&v| std::iter::repeat_n(v, times)).collect())
}

/// ReLU: `x - [x < 0] x` (the sign as XOR bits into a bit product), exact; `bits` is the comparison width (`abs(x) < 2^(bits-1)`
/// in ring units).
pub fn relu<R: Role, C: Channel, M: MaterialSource<R>>(
    sess: &mut Session<R, C, M>,
    x: &Shares<R>,
    bits: u32,
) -> Result<Shares<R>, MpcError> {
    let neg = sess.msb_bits(x, bits)?;
    let z = sess.bit_mul_many(&[(&neg, x)])?.remove(0);
    Ok(x.sub(&z))
}

/// SiLU `x / (1 + e^-x)` at `f` fractional bits (module doc: method, constants, error).
///
/// Steps (rounds): the sign of `x` as XOR bits (4); `z = [x < 0] x` by a bit product
/// (1), so `|x| = x - 2z` and `relu(x) = x - z`; the range comparisons `[|x| < T]`,
/// `[|x| < A]` on `|x|` start and ride along with the next three rounds:
/// `s = |x| / T` at [`SILU_S_BITS`] (1), `s .. s^4` from one power-tuple opening (1),
/// `s^3`, `s^4` truncated to `2 SILU_S_BITS` together (1); the comparisons finish (1);
/// both pieces at `2 POLY_BITS` bits, selected by two bit products in one round (1) and
/// truncated once, together with `relu`, back to `f` (1): 11 rounds.
pub fn silu<R: Role, C: Channel, M: MaterialSource<R>>(
    sess: &mut Session<R, C, M>,
    x: &Shares<R>,
    f: u32,
) -> Result<Shares<R>, MpcError> {
    silu_from(sess, x, f, f)
}

/// [`silu`] of `x` at `f_in >= f` fractional bits (an untruncated product, e.g. the
/// gate projection at `2 F`), result at `f`: the input's truncation is saved, since
/// comparisons drop low bits anyway and `|x| / T` is truncated once either way.
pub fn silu_from<R: Role, C: Channel, M: MaterialSource<R>>(
    sess: &mut Session<R, C, M>,
    x: &Shares<R>,
    f_in: u32,
    f: u32,
) -> Result<Shares<R>, MpcError> {
    let n = x.len();
    if n == 0 {
        return Ok(x.clone());
    }
    let drop = f_in.saturating_sub(f - SILU_DROP);
    if f > POLY_BITS
        || f <= SILU_DROP
        || f_in < f
        || f_in > 2 * POLY_BITS - SILU_T_LOG2
        || f_in + SILU_T_LOG2 < SILU_S_BITS
    {
        return Err(super::shape(
            "silu",
            format!(
                "needs {SILU_DROP} < F <= {POLY_BITS} and F <= input bits <= {}, got {f} and {f_in}",
                2 * POLY_BITS - SILU_T_LOG2
            ),
        ));
    }
    let sign = sess.msb_bits_reduced(x, drop, SILU_BITS)?;
    let z = sess.bit_mul_many(&[(&sign, x)])?.remove(0);
    let (abs, relu) = (x.sub(&z.scale(2)), x.sub(&z));
    // [|x| < T] and [|x| < A] (XOR bits), riding along with the next Beaver rounds.
    let (t_enc, a_enc) = (encode(SILU_T, f_in), encode(SILU_A, f_in));
    let mut range = add_scalar(&abs, t_enc.wrapping_neg()).into_raw();
    range.extend(add_scalar(&abs, a_enc.wrapping_neg()).into_raw());
    sess.start_background_msb_bits(&Shares::from_raw(range), drop, SILU_BITS)?;
    // s = |x| / T at SILU_S_BITS: T is 2^SILU_T_LOG2, so a shift.
    let s = sess.trunc(abs, f_in + SILU_T_LOG2 - SILU_S_BITS)?;
    let pw = sess.powers(&s, 4)?;
    // Powers at 2k fractional bits: s scaled up, s^2 as it is, s^3 and s^4 truncated
    // together (15 + 30 bits of truncation instead of 6 + 21 + 36 at POLY_BITS).
    let (k, pk) = (SILU_S_BITS, 2 * SILU_S_BITS);
    let mut pw_iter = pw.into_iter();
    let (Some(s1), Some(s2)) = (pw_iter.next(), pw_iter.next()) else {
        return Err(super::shape("silu", "powers missing"));
    };
    let high: Vec<(Shares<R>, u32)> =
        pw_iter.enumerate().map(|(i, p)| (p, (i as u32 + 3) * k - pk)).collect();
    let mut p: Vec<Shares<R>> = vec![s1.scale(1u64 << (pk - k)), s2];
    p.extend(sess.trunc_many(high)?);
    let lt = sess.finish_background_msb_bits()?;
    let (lt_t, lt_a) = lt.split_at(n);
    // Both pieces at 2 POLY_BITS fractional bits (coefficients at 2 POLY_BITS - 2k = 18:
    // at most 4 * 2^-19 of error), not truncated yet.
    let piece = |c: &[f64]| {
        let mut acc = public::<R>(vec![encode(c[0], 2 * POLY_BITS); n]);
        for (j, cj) in c.iter().enumerate().skip(1) {
            acc = acc.add(&p[j - 1].scale(encode(*cj, 2 * POLY_BITS - pk)));
        }
        acc
    };
    let (inner, outer) = (piece(&SILU_INNER), piece(&SILU_OUTER));
    // between = [A <= |x| < T] = lt_t XOR lt_a ([|x| < A] implies [|x| < T]).
    let between: Vec<u64> = lt_t.iter().zip(lt_a).map(|(t, a)| t ^ a).collect();
    let diff = outer.sub(&inner);
    let sel = sess.bit_mul_many(&[(lt_t, &inner), (&between, &diff)])?;
    // silu = relu - [|x| < T] inner - [A <= |x| < T] (outer - inner), one truncation.
    let wide = relu.scale(1u64 << (2 * POLY_BITS - f_in)).sub(&sel[0]).sub(&sel[1]);
    sess.trunc(wide, 2 * POLY_BITS - f)
}

/// `e^x` for `x <= 0` at `f` fractional bits; 0 for `x < -T` (module doc).
pub fn exp_neg<R: Role, C: Channel, M: MaterialSource<R>>(
    sess: &mut Session<R, C, M>,
    x: &Shares<R>,
    f: u32,
) -> Result<Shares<R>, MpcError> {
    let n = x.len();
    if n == 0 {
        return Ok(x.clone());
    }
    // y = x / 2^k carries f + k fractional bits with the same ring value as x.
    let fy = f + EXP_K;
    if f > EXP_BITS || fy > 3 * EXP_Z_BITS {
        return Err(super::shape("exp", format!("fractional bits {f} do not fit the exp chain")));
    }
    // The clipping comparison rides along with the next rounds.
    sess.start_background_msb_bits(&add_scalar(x, encode(EXP_T, f)), SCORE_DROP, SCORE_BITS)?;
    // z = y 6^(-1/3) at EXP_Z_BITS: z^3 = y^3 / 6 and y^2 / 2 = z^2 6^(2/3) / 2.
    const CB: u32 = 24;
    let z = sess.trunc(x.scale(encode(6f64.powf(-1.0 / 3.0), CB)), fy + CB - EXP_Z_BITS)?;
    let pw = sess.powers(&z, 3)?;
    let wide = 3 * EXP_Z_BITS;
    let b = add_scalar(&x.scale(1u64 << (wide - fy)), 1u64 << wide)
        .add(&pw[1].scale(encode(6f64.powf(2.0 / 3.0) / 2.0, wide - 2 * EXP_Z_BITS)))
        .add(&pw[2]);
    let mut b = sess.trunc(b, wide - EXP_BITS)?;
    for _ in 0..EXP_K {
        let sq = sess.square(&b)?;
        b = sess.trunc(sq, EXP_BITS)?;
    }
    let below = sess.finish_background_msb_bits()?;
    // Keep where not below: XOR with 1 on P0's share flips the shared bit.
    let keep: Vec<u64> = below.iter().map(|&v| if R::ID == 0 { v ^ 1 } else { v }).collect();
    let kept = sess.bit_mul_many(&[(&keep, &b)])?.remove(0);
    sess.trunc(kept, EXP_BITS - f)
}

/// Comparison bits `[x >= 2^(lo + i / S)]` for `i = 1 ..= S (hi - lo)`, `x` at `fx` bits,
/// all in one batch; returns them element-major (`n x count`).
fn octave_diffs<R: Role>(x: &Shares<R>, fx: u32, lo: i32, hi: i32) -> (Shares<R>, usize) {
    let count = (STEPS_PER_OCTAVE as i32 * (hi - lo)).max(0) as usize;
    let thresholds: Vec<u64> =
        (1..=count).map(|i| encode((lo as f64 + i as f64 / STEPS_PER_OCTAVE as f64).exp2(), fx)).collect();
    let mut diffs = Vec::with_capacity(x.len() * count);
    for &v in x.as_slice() {
        for &t in &thresholds {
            diffs.push(if R::ID == 0 { v.wrapping_sub(t) } else { v });
        }
    }
    (Shares::from_raw(diffs), count)
}

fn octave_bits<R: Role, C: Channel, M: MaterialSource<R>>(
    sess: &mut Session<R, C, M>,
    x: &Shares<R>,
    fx: u32,
    lo: i32,
    hi: i32,
    drop: u32,
    bits: u32,
) -> Result<(Vec<u64>, usize), MpcError> {
    let (diffs, count) = octave_diffs(x, fx, lo, hi);
    let below = sess.msb_reduced(&diffs, drop, bits)?;
    Ok((not(&below).into_raw(), count))
}

/// `1 / x` for `x` in `[1, max]` at `f` bits; the result has [`RECIP_BITS`] bits.
pub fn reciprocal<R: Role, C: Channel, M: MaterialSource<R>>(
    sess: &mut Session<R, C, M>,
    x: &Shares<R>,
    f: u32,
    max: f64,
) -> Result<Shares<R>, MpcError> {
    let pending = reciprocal_start(sess, x, f, max)?;
    reciprocal_finish(sess, x, pending)
}

/// A [`reciprocal`] whose starting-point comparisons run in the background.
#[derive(Debug)]
#[must_use = "finish it with reciprocal_finish"]
pub struct PendingReciprocal {
    f: u32,
    count: usize,
}

/// Starts [`reciprocal`]: its sixteenth-octave comparisons ride along with the caller's
/// next Beaver and truncation rounds ([`Session::start_background_msb`]) until
/// [`reciprocal_finish`].
pub fn reciprocal_start<R: Role, C: Channel, M: MaterialSource<R>>(
    sess: &mut Session<R, C, M>,
    x: &Shares<R>,
    f: u32,
    max: f64,
) -> Result<PendingReciprocal, MpcError> {
    if f > RECIP_BITS || !max.is_finite() || max > 1e9 {
        return Err(super::shape(
            "reciprocal",
            format!("needs F <= {RECIP_BITS} and a finite bound, got F = {f}, max = {max}"),
        ));
    }
    let hi = max.max(2.0).log2().ceil() as i32;
    // Keep 10 fractional bits: thresholds are 2^(1/16) - 1 = 0.044 apart at least, and a
    // start off by one bucket would double the Newton step's error.
    let drop = f.saturating_sub(10);
    let bits = ((f - drop) as i32 + hi + 3).clamp(8, 64 - drop as i32) as u32;
    let (diffs, count) = octave_diffs(x, f, 0, hi);
    sess.start_background_msb(&diffs, drop, bits)?;
    Ok(PendingReciprocal { f, count })
}

/// Finishes [`reciprocal_start`] for the same `x`: the start value from the comparison
/// bits, then Newton.
pub fn reciprocal_finish<R: Role, C: Channel, M: MaterialSource<R>>(
    sess: &mut Session<R, C, M>,
    x: &Shares<R>,
    pending: PendingReciprocal,
) -> Result<Shares<R>, MpcError> {
    let (f, count, n) = (pending.f, pending.count, x.len());
    let c = not(&sess.finish_background_msb()?).into_raw();
    if n == 0 {
        return Ok(x.clone());
    }
    // y0 = k 2^(-m/S), m = number of thresholds passed, as a linear function of the bits.
    let s = STEPS_PER_OCTAVE as f64;
    let k = 2.0 / (1.0 + (1.0 / s).exp2());
    let steps: Vec<u64> = (1..=count)
        .map(|i| encode(k * ((-(i as f64 - 1.0) / s).exp2() - (-(i as f64) / s).exp2()), RECIP_BITS))
        .collect();
    let mut y0 = vec![0u64; n];
    for (r, y) in y0.iter_mut().enumerate() {
        let mut acc = if R::ID == 0 { encode(k, RECIP_BITS) } else { 0 };
        for i in 0..count {
            acc = acc.wrapping_sub(c[r * count + i].wrapping_mul(steps[i]));
        }
        *y = acc;
    }
    let mut y = Shares::<R>::from_raw(y0);
    let two = encode(2.0, RECIP_BITS);
    for _ in 0..NEWTON_ITERS {
        let xy = sess.mul(x, &y)?;
        let xy = sess.trunc(xy, f)?;
        let u = add_scalar(&xy.neg(), two);
        let yu = sess.mul(&y, &u)?;
        y = sess.trunc(yu, RECIP_BITS)?;
    }
    Ok(y)
}

/// `1 / sqrt(x)` for `x` at [`MS_BITS`] fractional bits in `[2^RSQRT_LO, 2^RSQRT_HI]`; the
/// result has [`RSQRT_BITS`] bits.
pub fn rsqrt<R: Role, C: Channel, M: MaterialSource<R>>(
    sess: &mut Session<R, C, M>,
    x: &Shares<R>,
) -> Result<Shares<R>, MpcError> {
    let n = x.len();
    if n == 0 {
        return Ok(x.clone());
    }
    let (lo, hi) = (RSQRT_LO, RSQRT_HI);
    // Keep 24 fractional bits: the lowest threshold 2^-20 is resolved to 2^-4 of itself.
    let drop = MS_BITS - 24;
    let bits = (24 + hi + 2) as u32;
    let (c, count) = octave_bits(sess, x, MS_BITS, lo, hi, drop, bits)?;
    let s = STEPS_PER_OCTAVE as f64;
    // x in [2^e, 2^(e + 1/S)), e = lo + m/S: y0 = k 2^(-e/2), k balances the start error.
    let k = (2.0 / (1.0 + (1.0 / s).exp2())).sqrt();
    let at = |i: usize| k * (-(lo as f64 + i as f64 / s) / 2.0).exp2();
    let steps: Vec<u64> = (1..=count).map(|i| encode(at(i - 1) - at(i), RSQRT_BITS)).collect();
    let mut y0 = vec![0u64; n];
    for (r, y) in y0.iter_mut().enumerate() {
        let mut acc = if R::ID == 0 { encode(at(0), RSQRT_BITS) } else { 0 };
        for i in 0..count {
            acc = acc.wrapping_sub(c[r * count + i].wrapping_mul(steps[i]));
        }
        *y = acc;
    }
    let mut y = Shares::<R>::from_raw(y0);
    let three = encode(3.0, RSQRT_BITS);
    for _ in 0..NEWTON_ITERS {
        // y^2 keeps Y2_BITS fractional bits (y^2 is as small as 2^-16): x y^2 is near 1,
        // so x (MS_BITS) times y^2 (Y2_BITS) stays below 2^62.
        let y2 = sess.square(&y)?;
        let y2 = sess.trunc(y2, 2 * RSQRT_BITS - Y2_BITS)?;
        let z = sess.mul(x, &y2)?;
        let z = sess.trunc(z, MS_BITS + Y2_BITS - RSQRT_BITS)?;
        let u = add_scalar(&z.neg(), three);
        let yu = sess.mul(&y, &u)?;
        y = sess.trunc(yu, RSQRT_BITS + 1)?;
    }
    Ok(y)
}

/// The maximum of each segment of `x` (segments of the given lengths, consecutive, each
/// at least 1) by a tournament: each level splits every segment into groups of up to
/// `g` values, compares all pairs of a group at once, ANDs each candidate's `g - 1`
/// outcomes into a one-hot winner (the first maximum) and selects it with bit products.
/// With `g` about `sqrt(longest)` two levels suffice up to 1024 values: rounds per level
/// are `cmp + ceil(log2(g - 1)) + 1`, so a row of 98 takes 20 rounds where a binary tree
/// takes 42, for about 3 times the comparison bytes (the attention's bytes are dominated
/// by exp and the products, so a few percent more in all).
///
/// Comparisons run on `floor(x / 2^drop) - c` (`c` in `{0, 1}`, [`super::compare::reduce_local`])
/// computed once per value and level, so they compare exact integers and the order is
/// transitive (exactly one winner per group, ties to the first); the result is an
/// element of the segment within `2^(drop + 1)` of its maximum. `bits` is the comparison
/// width for those integers' differences.
pub fn max_segments<R: Role, C: Channel, M: MaterialSource<R>>(
    sess: &mut Session<R, C, M>,
    x: &Shares<R>,
    segments: &[usize],
    drop: u32,
    bits: u32,
) -> Result<Shares<R>, MpcError> {
    if segments.iter().sum::<usize>() != x.len() || segments.contains(&0) {
        return Err(super::shape("max", "segments must be non-empty and cover the input"));
    }
    let mut segs: Vec<Vec<u64>> = Vec::with_capacity(segments.len());
    let mut at = 0;
    for &l in segments {
        segs.push(x.as_slice()[at..at + l].to_vec());
        at += l;
    }
    let longest = segments.iter().copied().max().unwrap_or(1);
    let g = tournament_group(longest);
    while segs.iter().any(|s| s.len() > 1) {
        let groups = tournament_level(&segs, g);
        // All pairs j < i of every group: [r_j < r_i] = msb(r_j - r_i).
        let mut diffs = Vec::new();
        for &(si, start, m) in &groups {
            let red = super::compare::reduce_local(
                &Shares::<R>::from_raw(segs[si][start..start + m].to_vec()),
                drop,
            )
            .into_raw();
            for i in 1..m {
                for j in 0..i {
                    diffs.push(red[j].wrapping_sub(red[i]));
                }
            }
        }
        let lt = sess.msb_bits(&Shares::from_raw(diffs), bits)?;
        let mut lists = winner_literals::<R>(&groups, &lt);
        and_each(sess, &mut lists)?;
        // One-hot winners (a group of one wins alone: the public bit 1) times the values.
        let winners: Vec<u64> =
            lists.iter().map(|l| l.first().copied().unwrap_or(u64::from(R::ID == 0))).collect();
        let values: Vec<u64> =
            groups.iter().flat_map(|&(si, start, m)| segs[si][start..start + m].to_vec()).collect();
        let picked = sess.bit_mul_many(&[(&winners, &Shares::from_raw(values))])?.remove(0).into_raw();
        let mut next: Vec<Vec<u64>> = vec![Vec::new(); segs.len()];
        let mut at = 0;
        for &(si, _, m) in &groups {
            next[si].push(picked[at..at + m].iter().fold(0u64, |a, v| a.wrapping_add(*v)));
            at += m;
        }
        segs = next;
    }
    Ok(Shares::from_raw(segs.into_iter().map(|s| s[0]).collect()))
}

/// One tournament level's groups, `(segment, start, size)`: each segment split into
/// consecutive groups of up to `g` values.
fn tournament_level(segs: &[Vec<u64>], g: usize) -> Vec<(usize, usize, usize)> {
    let mut groups = Vec::new();
    for (si, s) in segs.iter().enumerate() {
        let mut start = 0;
        while start < s.len() {
            let m = g.min(s.len() - start);
            groups.push((si, start, m));
            start += m;
        }
    }
    groups
}

/// Each candidate's literals, from the pairwise outcomes `lt` (`[r_j < r_i]` for all
/// `j < i` of each group, in order): it beats every earlier candidate, and no later one
/// beats it (the negation is local: P0 flips its share).
fn winner_literals<R: Role>(groups: &[(usize, usize, usize)], lt: &[u64]) -> Vec<Vec<u64>> {
    let mut lists: Vec<Vec<u64>> = Vec::new();
    let mut base = 0;
    for &(_, _, m) in groups {
        let c = |i: usize, j: usize| lt[base + i * (i - 1) / 2 + j];
        for i in 0..m {
            let mut lits = Vec::with_capacity(m - 1);
            for j in 0..m {
                if j < i {
                    lits.push(c(i, j));
                } else if j > i {
                    lits.push(if R::ID == 0 { c(j, i) ^ 1 } else { c(j, i) });
                }
            }
            lists.push(lits);
        }
        base += m * (m - 1) / 2;
    }
    lists
}

/// ANDs each list of shared bits down to one bit, all lists at once: a balanced tree,
/// `ceil(log2(longest))` rounds.
fn and_each<R: Role, C: Channel, M: MaterialSource<R>>(
    sess: &mut Session<R, C, M>,
    lists: &mut [Vec<u64>],
) -> Result<(), MpcError> {
    while lists.iter().any(|l| l.len() > 1) {
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        for l in lists.iter() {
            for p in 0..l.len() / 2 {
                xs.push(l[2 * p]);
                ys.push(l[2 * p + 1]);
            }
        }
        let z = sess.and_bits_many(&[(&xs, &ys)])?.remove(0);
        let mut it = z.into_iter();
        for l in lists.iter_mut() {
            let mut next: Vec<u64> = it.by_ref().take(l.len() / 2).collect();
            if l.len() % 2 == 1 {
                next.push(l[l.len() - 1]);
            }
            *l = next;
        }
    }
    Ok(())
}

/// Tournament group size for segments of up to `longest` values: two levels up to 1024
/// values (`ceil(sqrt)`), three beyond.
fn tournament_group(longest: usize) -> usize {
    let levels = if longest <= 1024 { 2.0 } else { 3.0 };
    ((longest as f64).powf(1.0 / levels).ceil() as usize).max(2)
}
