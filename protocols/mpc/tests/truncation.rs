//! Faithful truncation (MSB trick, one dealer random OT per element) against local
//! truncation.
//!
//! `faithful_truncation_bulk` runs the share-level protocol cores directly (no channel)
//! on 10^8 random inputs in optimized builds (`--release`, about 12 s on 2 cores) and
//! with `SHARDLM_LONG_TESTS=1`, and on 10^7 in unoptimized builds, in parallel
//! with rayon, with dealer OT material generated in bulk. Every result must be within one
//! unit in the last place of `x >> F` (exactly `x >> F` or one less), none further.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use shardlm_mpc::material::TruncOtsRequest;
use shardlm_mpc::material::{IdealDealer, MaterialSource};
use shardlm_mpc::prg::Seed;
use shardlm_mpc::ring::arith_shr;
use shardlm_mpc::share::{reconstruct, share};
use shardlm_mpc::trunc::{self, TRUNC_BOUND};
use shardlm_testkit::two_party;
use shardlm_transport::Lane;

const F: u32 = 16;

/// Inputs with `|x| < 2^62`: a mix of uniform values, values next to both bounds, values
/// near zero and values next to multiples of `2^F`.
fn inputs(rng: &mut ChaCha8Rng, n: usize) -> Vec<u64> {
    let max = (TRUNC_BOUND - 1) as i64;
    (0..n)
        .map(|_| {
            let v: i64 = match rng.gen_range(0..6) {
                0 | 1 => rng.gen_range(-max..=max),
                2 => max - rng.gen_range(0..1 << 20),
                3 => -max + rng.gen_range(0..1 << 20),
                4 => rng.gen_range(-(1i64 << 24)..(1 << 24)),
                _ => (rng.gen_range(-(1i64 << 40)..(1 << 40)) << F) + rng.gen_range(-2..=2),
            };
            v as u64
        })
        .collect()
}

/// Runs a chunk through the cores; returns (off by one, exact) counts, panicking on any
/// other outcome.
fn run_chunk(chunk: u64, n: usize) -> (u64, u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(chunk);
    let x = inputs(&mut rng, n);
    let (x0, x1) = share(&x, &mut rng);
    let (mut m0, mut m1) = IdealDealer::new(Seed::from_u64(chunk ^ 0x5eed)).split();
    let (ot0, ot1) =
        (m0.take(TruncOtsRequest { n, bits: F }).unwrap(), m1.take(TruncOtsRequest { n, bits: F }).unwrap());
    let (st0, msg0) = trunc::p0_start(&x0, F, ot0).unwrap();
    let (st1, msg1) = trunc::p1_start(&x1, F, &ot1).unwrap();
    let t0 = trunc::p0_finish(st0, &msg1).unwrap();
    let t1 = trunc::p1_finish(st1, &msg0).unwrap();
    let t = reconstruct(&t0, &t1).unwrap();
    let (mut low, mut exact) = (0, 0);
    for i in 0..n {
        let want = arith_shr(x[i], F);
        match want.wrapping_sub(t[i]) {
            0 => exact += 1,
            1 => low += 1,
            d => panic!(
                "x = {} truncated to {} but x >> {F} = {} (off by {})",
                x[i] as i64, t[i] as i64, want as i64, d as i64
            ),
        }
    }
    (low, exact)
}

#[test]
fn faithful_truncation_bulk() {
    let long = std::env::var("SHARDLM_LONG_TESTS").is_ok_and(|v| v == "1");
    // 10^8 takes about 12 s on 2 cores in --release; unoptimized builds run 10^7.
    let total: u64 = if long || !cfg!(debug_assertions) { 100_000_000 } else { 10_000_000 };
    const CHUNK: usize = 1 << 18;
    let chunks = total.div_ceil(CHUNK as u64);
    let start = std::time::Instant::now();
    let (low, exact) = (0..chunks)
        .into_par_iter()
        .map(|c| run_chunk(c, CHUNK.min((total - c * CHUNK as u64) as usize)))
        .reduce(|| (0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    assert_eq!(low + exact, total);
    eprintln!(
        "faithful truncation: {total} inputs in {:.1?}: {exact} exact, {low} one ulp low, none further",
        start.elapsed()
    );
    // The lost carry of the low bits makes about half the results one ulp low.
    assert!(low > total / 4 && exact > total / 4);
}

#[test]
fn faithful_truncation_two_parties_over_channel() {
    let n = 100_000;
    let mut rng = ChaCha8Rng::seed_from_u64(77);
    let x = inputs(&mut rng, n);
    let (x0, x1) = share(&x, &mut rng);
    let (mut m0, mut m1) = IdealDealer::new(Seed::from_u64(78)).split();
    let ((t0, c0), (t1, c1)) = two_party(
        |ch| {
            let ot = m0.take(TruncOtsRequest { n, bits: F }).unwrap();
            let t = trunc::truncate(ch, x0, F, ot).unwrap();
            (t, shardlm_transport::Channel::counters(ch))
        },
        |ch| {
            let ot = m1.take(TruncOtsRequest { n, bits: F }).unwrap();
            let t = trunc::truncate(ch, x1, F, ot).unwrap();
            (t, shardlm_transport::Channel::counters(ch))
        },
    );
    let t = reconstruct(&t0, &t1).unwrap();
    for i in 0..n {
        let d = arith_shr(x[i], F).wrapping_sub(t[i]);
        assert!(d <= 1, "x = {}: off by {}", x[i] as i64, d as i64);
    }
    // P0 sends one bit per element, P1 one F-bit word: 2.125 bytes per element for F = 16.
    let p0_bytes = c0.lane(Lane::Openings).bytes_sent;
    let p1_bytes = c1.lane(Lane::Openings).bytes_sent;
    assert_eq!(p0_bytes, (n as u64).div_ceil(64) * 8);
    assert_eq!(p1_bytes, (n as u64 * F as u64).div_ceil(64) * 8);
    assert_eq!(c0.rounds, 1);
    eprintln!(
        "faithful truncation over the channel: {:.3} bytes per element, {} round",
        (p0_bytes + p1_bytes) as f64 / n as f64,
        c0.rounds
    );
}

/// SecureML's local truncation fails with probability about `|x| / 2^64`. With
/// `|x|` around `2^58` that is about 1/64 of the elements, each off by about `2^(64-F)`:
/// why ShardLM does not use it.
#[test]
fn local_truncation_fails_at_predicted_rate() {
    let n = 1_000_000;
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let x: Vec<u64> = (0..n)
        .map(|_| {
            let mag = (1i64 << 58) + rng.gen_range(0..1i64 << 57);
            (if rng.gen::<bool>() { mag } else { -mag }) as u64
        })
        .collect();
    let predicted: f64 = x.iter().map(|&v| (v as i64).unsigned_abs() as f64).sum::<f64>() / 2f64.powi(64);
    let (x0, x1) = share(&x, &mut rng);
    let t = reconstruct(&trunc::local_truncate(&x0, F), &trunc::local_truncate(&x1, F)).unwrap();
    let failures = (0..n)
        .filter(|&i| {
            let d = arith_shr(x[i], F).wrapping_sub(t[i]) as i64;
            d.unsigned_abs() > 1
        })
        .count() as f64;
    eprintln!("local truncation: {failures} failures in {n}, predicted {predicted:.0}");
    assert!((failures - predicted).abs() < 0.1 * predicted, "failures {failures}, predicted {predicted}");
    // And near zero it is (almost) always right: that is why it looks fine in small tests.
    let small: Vec<u64> = (0..n).map(|i| (i as u64) << 10).collect();
    let (s0, s1) = share(&small, &mut rng);
    let t = reconstruct(&trunc::local_truncate(&s0, F), &trunc::local_truncate(&s1, F)).unwrap();
    let bad =
        (0..n).filter(|&i| (arith_shr(small[i], F).wrapping_sub(t[i]) as i64).unsigned_abs() > 1).count();
    assert!(bad <= 2, "{bad} failures for small inputs");
}
