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
//! | [`relu`] | `x (1 - msb(x))` | comparison on `bits` | exact | cmp + 1 |
//! | [`silu`] | `relu(x) - [abs(x) <= T] delta(abs(x))`, `delta(t) = t / (1 + e^t)` fitted by two degree-4 polynomials in `t / T` on `[0, A]` and `[A, T]` (Chebyshev interpolation), selected by comparisons | `T = 8`, `A = 2.5`, 24 internal bits | `2.7e-3` (just beyond `abs(x) = T`: `T/(1+e^T)`), `1.2e-3` inside | cmp + 8 |
//! | [`exp_neg`] | `x < -T` gives 0; else `(1 + y + y^2/2)^(2^k)`, `y = x / 2^k`; the clipping comparison rides along with the squarings | `T = 16`, `k = 6`, 30 internal bits | `6e-5` absolute | 2k + 4 |
//! | [`reciprocal`] | start `k 2^(-m/16)` from `16 log2(max)` comparisons (sixteenth octaves), 1 Newton step `y (2 - x y)` | output 24 fractional bits | relative `5e-4` | cmp + 4 |
//! | [`rsqrt`] | start `k 2^(-(lo + m/16)/2)` from sixteenth-octave comparisons over `[2^-20, 2^16]`, 1 Newton step `y (3 - x y^2) / 2` | input 28, output 20 fractional bits | relative `4e-4` | cmp + 6 |
//! | [`max_segments`] | comparison tree, `max(a, b) = b + [b < a] (a - b)` | | exact | `ceil(log2 len)` x (cmp + 1) |
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
/// Internal fractional bits of the polynomials.
pub const POLY_BITS: u32 = 24;
/// exp: clipping threshold (`e^-16 = 1.1e-7` is below `2^-16`).
pub const EXP_T: f64 = 16.0;
/// exp: squarings (`n = 2^k`).
pub const EXP_K: u32 = 6;
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
pub const RSQRT_HI: i32 = 16;
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

/// `s^1 ..= s^m` (at `fi` fractional bits) by repeated doubling: two rounds per doubling.
pub fn powers<R: Role, C: Channel, M: MaterialSource<R>>(
    sess: &mut Session<R, C, M>,
    s: &Shares<R>,
    m: usize,
    fi: u32,
) -> Result<Vec<Shares<R>>, MpcError> {
    let mut p: Vec<Shares<R>> = vec![s.clone()];
    while p.len() < m {
        let have = p.len();
        let top = p[have - 1].clone();
        let want = (2 * have).min(m);
        // s^(j+1) = s^(j+1-have) s^have; the last one of a full doubling is a square.
        let full = want == 2 * have;
        let last = if full { want - 1 } else { want };
        let pairs: Vec<(&Shares<R>, &Shares<R>)> = (have..last).map(|j| (&p[j - have], &top)).collect();
        let prods = sess.mul_many_with_square(&pairs, if full { Some(&top) } else { None })?;
        let lens: Vec<usize> = prods.iter().map(Shares::len).collect();
        let all: Vec<u64> = prods.into_iter().flat_map(Shares::into_raw).collect();
        let t = sess.trunc(Shares::from_raw(all), fi)?.into_raw();
        let mut at = 0;
        for l in lens {
            p.push(Shares::from_raw(t[at..at + l].to_vec()));
            at += l;
        }
    }
    Ok(p)
}

/// `sum_j c_j s^j` for several coefficient lists from the same powers
/// (`pw[j-1] = s^j` at `fi` bits): local products with the public coefficients, then one
/// truncation (all polynomials together) to `f` bits.
fn poly_eval_many<R: Role, C: Channel, M: MaterialSource<R>>(
    sess: &mut Session<R, C, M>,
    pw: &[Shares<R>],
    polys: &[&[f64]],
    fi: u32,
    f: u32,
) -> Result<Vec<Shares<R>>, MpcError> {
    let n = pw.first().map_or(0, Shares::len);
    let mut all = Vec::with_capacity(n * polys.len());
    for coeffs in polys {
        if coeffs.len() > pw.len() + 1 {
            return Err(super::shape("polynomial", "more coefficients than powers"));
        }
        let mut acc = public::<R>(vec![encode(coeffs[0], 2 * fi); n]);
        for (j, c) in coeffs.iter().enumerate().skip(1) {
            acc = acc.add(&pw[j - 1].scale(encode(*c, fi)));
        }
        all.extend(acc.into_raw());
    }
    let t = sess.trunc(Shares::from_raw(all), 2 * fi - f)?.into_raw();
    Ok(t.chunks(n.max(1)).map(|c| Shares::from_raw(c.to_vec())).collect())
}

/// ReLU: `x (1 - msb(x))`, exact; `bits` is the comparison width (`abs(x) < 2^(bits-1)`
/// in ring units).
pub fn relu<R: Role, C: Channel, M: MaterialSource<R>>(
    sess: &mut Session<R, C, M>,
    x: &Shares<R>,
    bits: u32,
) -> Result<Shares<R>, MpcError> {
    let s = sess.msb(x, bits)?;
    sess.mul(x, &not(&s))
}

/// SiLU `x / (1 + e^-x)` at `f` fractional bits (module doc: method, constants, error).
pub fn silu<R: Role, C: Channel, M: MaterialSource<R>>(
    sess: &mut Session<R, C, M>,
    x: &Shares<R>,
    f: u32,
) -> Result<Shares<R>, MpcError> {
    let n = x.len();
    if n == 0 {
        return Ok(x.clone());
    }
    if f > POLY_BITS || f <= SILU_DROP {
        return Err(super::shape("silu", format!("needs {SILU_DROP} < F <= {POLY_BITS} fractional bits, got {f}")));
    }
    let (t_enc, a_enc) = (encode(SILU_T, f), encode(SILU_A, f));
    // One batch: sign(x), [x < -T], [T < x], [x < -A], [A < x].
    let mut cmp = x.as_slice().to_vec();
    for c in [t_enc, a_enc] {
        cmp.extend_from_slice(add_scalar(x, c).as_slice());
        cmp.extend_from_slice(add_scalar(&x.neg(), c).as_slice());
    }
    let bits = sess.msb_reduced(&Shares::from_raw(cmp), SILU_DROP, SILU_BITS)?.into_raw();
    let part = |i: usize| &bits[i * n..(i + 1) * n];
    let sign = Shares::<R>::from_raw(part(0).to_vec());
    // outside: |x| > T; between: A < |x| <= T (= [|x| > A] - [|x| > T], as the first
    // implies the second).
    let outside = Shares::<R>::from_raw(crate::ring::add(part(1), part(2)));
    let beyond_a = Shares::<R>::from_raw(crate::ring::add(part(3), part(4)));
    let between = beyond_a.sub(&outside);
    // z = x sign (one product, exact); |x| = x - 2z, relu(x) = x - z.
    let z = sess.mul(x, &sign)?;
    let (abs, relu) = (&x.sub(&z.scale(2)), &x.sub(&z));
    // s = |x| / T at POLY_BITS; both pieces from the same powers, one truncation.
    let s = sess.trunc(abs.scale(encode(1.0 / SILU_T, POLY_BITS)), f)?;
    let pw = powers(sess, &s, SILU_INNER.len() - 1, POLY_BITS)?;
    let both = poly_eval_many(sess, &pw, &[&SILU_INNER, &SILU_OUTER], POLY_BITS, f)?;
    let (inner, outer) = (&both[0], &both[1]);
    // silu = relu - [|x| <= T] inner - [A < |x| <= T] (outer - inner): one round.
    let prods = sess.mul_many(&[(&not(&outside), inner), (&between, &outer.sub(inner))])?;
    Ok(relu.sub(&prods[0]).sub(&prods[1]))
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
    if f + EXP_K > EXP_BITS || 2 * f + 1 + 2 * EXP_K < EXP_BITS {
        return Err(super::shape("exp", format!("fractional bits {f} do not fit the exp chain")));
    }
    // The clipping comparison rides along with the squaring chain's rounds.
    sess.start_background_msb(&add_scalar(x, encode(EXP_T, f)), SCORE_DROP, SCORE_BITS)?;
    // y^2 / 2 at EXP_BITS from x^2 at 2f bits: y^2/2 = x^2 / 2^(2k+1).
    let x2 = sess.square(x)?;
    let half_y2 = sess.trunc(x2, 2 * f + 1 + 2 * EXP_K - EXP_BITS)?;
    let y = x.scale(1u64 << (EXP_BITS - f - EXP_K));
    let mut b = add_scalar(&y.add(&half_y2), 1u64 << EXP_BITS);
    for _ in 0..EXP_K {
        let sq = sess.square(&b)?;
        b = sess.trunc(sq, EXP_BITS)?;
    }
    let below = sess.finish_background_msb()?;
    let kept = sess.mul(&not(&below), &b)?;
    sess.trunc(kept, EXP_BITS - f)
}

/// Comparison bits `[x >= 2^(lo + i / S)]` for `i = 1 ..= S (hi - lo)`, `x` at `fx` bits,
/// all in one batch; returns them element-major (`n x count`).
fn octave_bits<R: Role, C: Channel, M: MaterialSource<R>>(
    sess: &mut Session<R, C, M>,
    x: &Shares<R>,
    fx: u32,
    lo: i32,
    hi: i32,
    drop: u32,
    bits: u32,
) -> Result<(Vec<u64>, usize), MpcError> {
    let count = (STEPS_PER_OCTAVE as i32 * (hi - lo)).max(0) as usize;
    let thresholds: Vec<u64> = (1..=count)
        .map(|i| encode((lo as f64 + i as f64 / STEPS_PER_OCTAVE as f64).exp2(), fx))
        .collect();
    let mut diffs = Vec::with_capacity(x.len() * count);
    for &v in x.as_slice() {
        for &t in &thresholds {
            diffs.push(if R::ID == 0 { v.wrapping_sub(t) } else { v });
        }
    }
    let below = sess.msb_reduced(&Shares::from_raw(diffs), drop, bits)?;
    Ok((not(&below).into_raw(), count))
}

/// `1 / x` for `x` in `[1, max]` at `f` bits; the result has [`RECIP_BITS`] bits.
pub fn reciprocal<R: Role, C: Channel, M: MaterialSource<R>>(
    sess: &mut Session<R, C, M>,
    x: &Shares<R>,
    f: u32,
    max: f64,
) -> Result<Shares<R>, MpcError> {
    let n = x.len();
    if n == 0 {
        return Ok(x.clone());
    }
    if f > RECIP_BITS || !max.is_finite() || max > 1e9 {
        return Err(super::shape("reciprocal", format!("needs F <= {RECIP_BITS} and a finite bound, got F = {f}, max = {max}")));
    }
    let hi = max.max(2.0).log2().ceil() as i32;
    // Keep 10 fractional bits: thresholds are 2^(1/16) - 1 = 0.044 apart at least, and a
    // start off by one bucket would double the Newton step's error.
    let drop = f.saturating_sub(10);
    let bits = ((f - drop) as i32 + hi + 3).clamp(8, 64 - drop as i32) as u32;
    let (c, count) = octave_bits(sess, x, f, 0, hi, drop, bits)?;
    // y0 = k 2^(-m/S), m = number of thresholds passed, as a linear function of the bits.
    let s = STEPS_PER_OCTAVE as f64;
    let k = 2.0 / (1.0 + (1.0 / s).exp2());
    let steps: Vec<u64> =
        (1..=count).map(|i| encode(k * ((-(i as f64 - 1.0) / s).exp2() - (-(i as f64) / s).exp2()), RECIP_BITS)).collect();
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
/// at least 1): a comparison tree, all segments' pairs of a level in one batch.
/// Comparisons drop `drop` low bits and run on `bits` bits ([`Session::msb_reduced`]):
/// the result is an element of the segment within `2^drop` of its maximum.
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
    while segs.iter().any(|s| s.len() > 1) {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for s in &segs {
            for p in 0..s.len() / 2 {
                a.push(s[2 * p]);
                b.push(s[2 * p + 1]);
            }
        }
        let (a, b) = (Shares::<R>::from_raw(a), Shares::<R>::from_raw(b));
        let diff = a.sub(&b);
        // [b < a] = msb(b - a)
        let gt = sess.msb_reduced(&diff.neg(), drop, bits)?;
        let m = b.add(&sess.mul(&gt, &diff)?).into_raw();
        let mut it = m.into_iter();
        for s in segs.iter_mut() {
            let pairs = s.len() / 2;
            let mut next: Vec<u64> = it.by_ref().take(pairs).collect();
            if s.len() % 2 == 1 {
                next.push(s[s.len() - 1]);
            }
            *s = next;
        }
    }
    Ok(Shares::from_raw(segs.into_iter().map(|s| s[0]).collect()))
}
