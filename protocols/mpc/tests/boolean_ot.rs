//! Boolean AND, daBit conversion, random-OT lookups, and what the peer sees.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shardlm_mpc::material::{
    AndTriplesRequest, DaBitsRequest, RandomOtsRequest, TriplesRequest, TruncOtsRequest,
};
use shardlm_mpc::material::{IdealDealer, MaterialSource};
use shardlm_mpc::prg::Seed;
use shardlm_mpc::ring::{low_mask, pack_bits};
use shardlm_mpc::share::{reconstruct, reconstruct_bits, share, share_bits};
use shardlm_mpc::{beaver, boolean, ot, trunc};
use shardlm_testkit::two_party;
use shardlm_transport::{Channel, Lane};

#[test]
fn and_of_bit_shares() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let words = 300;
    let x: Vec<u64> = (0..words).map(|_| rng.gen()).collect();
    let y: Vec<u64> = (0..words).map(|_| rng.gen()).collect();
    let (x0, x1) = share_bits(&x, &mut rng);
    let (y0, y1) = share_bits(&y, &mut rng);
    let (mut m0, mut m1) = IdealDealer::new(Seed::from_u64(2)).split();
    let ((z0, c0), z1) = two_party(
        |ch| {
            let z = boolean::and(ch, &x0, &y0, m0.take(AndTriplesRequest { words }).unwrap()).unwrap();
            (z, ch.counters())
        },
        |ch| boolean::and(ch, &x1, &y1, m1.take(AndTriplesRequest { words }).unwrap()).unwrap(),
    );
    let z = reconstruct_bits(&z0, &z1).unwrap();
    let want: Vec<u64> = x.iter().zip(&y).map(|(a, b)| a & b).collect();
    assert_eq!(z, want);
    assert_eq!(c0.lane(Lane::Openings).bytes_sent, 16 * words as u64);
    assert_eq!(c0.rounds, 1);
}

#[test]
fn bit_to_arithmetic_with_dabits() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let n = 1000;
    let bits: Vec<u64> = (0..n).map(|_| rng.gen_range(0..2)).collect();
    let (b0, b1) = share_bits(&pack_bits(&bits, 1), &mut rng);
    let (mut m0, mut m1) = IdealDealer::new(Seed::from_u64(4)).split();
    let (a0, a1) = two_party(
        |ch| boolean::b2a(ch, &b0, n, m0.take(DaBitsRequest { n }).unwrap()).unwrap(),
        |ch| boolean::b2a(ch, &b1, n, m1.take(DaBitsRequest { n }).unwrap()).unwrap(),
    );
    assert_eq!(reconstruct(&a0, &a1).unwrap(), bits);
}

fn lookup(n_choices: usize, bits: u32, count: usize, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let choices: Vec<u64> = (0..count).map(|_| rng.gen_range(0..n_choices as u64)).collect();
    let tables: Vec<u64> = (0..count * n_choices).map(|_| rng.gen::<u64>() & low_mask(bits)).collect();
    let (mut m0, mut m1) = IdealDealer::new(Seed::from_u64(seed)).split();
    let ((got, c0), c1) = two_party(
        |ch| {
            let r = ot::receive(ch, &choices, m0.take(RandomOtsRequest { n_choices, bits, count }).unwrap())
                .unwrap();
            (r, ch.counters())
        },
        |ch| {
            ot::send(ch, &tables, &m1.take(RandomOtsRequest { n_choices, bits, count }).unwrap()).unwrap();
            ch.counters()
        },
    );
    for i in 0..count {
        assert_eq!(got[i], tables[i * n_choices + choices[i] as usize], "OT {i} of 1-of-{n_choices}");
    }
    let lg = n_choices.trailing_zeros() as usize;
    assert_eq!(c0.lane(Lane::Ot).bytes_sent, ((count * lg).div_ceil(64) * 8) as u64);
    assert_eq!(c1.lane(Lane::Ot).bytes_sent, ((count * n_choices * bits as usize).div_ceil(64) * 8) as u64);
    eprintln!(
        "1-of-{n_choices} lookup of {bits}-bit values: {:.2} bytes per lookup",
        (c0.lane(Lane::Ot).bytes_sent + c1.lane(Lane::Ot).bytes_sent) as f64 / count as f64
    );
}

#[test]
fn one_of_two_ot() {
    lookup(2, 1, 1000, 5);
    lookup(2, 64, 333, 6);
}

#[test]
fn one_of_n_ot() {
    lookup(16, 4, 500, 7);
    lookup(64, 16, 257, 8);
    lookup(256, 13, 100, 9);
}

/// Several takes from one dealer stay correlated (each party's streams advance in step).
#[test]
fn repeated_takes_stay_correlated() {
    let (mut m0, mut m1) = IdealDealer::new(Seed::from_u64(12)).split();
    for count in [3usize, 1, 17, 64] {
        let (o0, o1) = (
            m0.take(TruncOtsRequest { n: count, bits: 16 }).unwrap(),
            m1.take(TruncOtsRequest { n: count, bits: 16 }).unwrap(),
        );
        let (r0, r1) = (
            m0.take(RandomOtsRequest { n_choices: 8, bits: 5, count }).unwrap(),
            m1.take(RandomOtsRequest { n_choices: 8, bits: 5, count }).unwrap(),
        );
        for i in 0..count {
            assert_eq!(o0.chosen()[i], o1.strings()[2 * i + o0.indices()[i] as usize]);
            assert_eq!(r0.chosen()[i], r1.strings()[8 * i + r0.indices()[i] as usize]);
        }
    }
}

#[test]
fn ot_rejects_bad_choices() {
    let (mut m0, _) = IdealDealer::new(Seed::from_u64(1)).split();
    let ots = m0.take(RandomOtsRequest { n_choices: 4, bits: 8, count: 2 }).unwrap();
    assert!(ot::receiver_start(&[1, 4], ots).is_err());
    assert!(m0.take(RandomOtsRequest { n_choices: 3, bits: 8, count: 2 }).is_err());
    assert!(m0.take(RandomOtsRequest { n_choices: 4, bits: 65, count: 2 }).is_err());
    assert!(m0.take(TruncOtsRequest { n: 2, bits: 63 }).is_err());
}

/// Chi-square statistic of the top 4 bits of `samples` against uniform.
fn chi_square_top4(samples: &[u64]) -> f64 {
    let mut bins = [0f64; 16];
    for s in samples {
        bins[(s >> 60) as usize] += 1.0;
    }
    let e = samples.len() as f64 / 16.0;
    bins.iter().map(|b| (b - e) * (b - e) / e).sum()
}

/// What P1 receives in the openings of a Beaver product and of a truncation is uniform
/// whatever the secret: the top bits of P0's `d`, `e` shares pass a chi-square test
/// (15 degrees of freedom, 0.1% critical value 37.7) for a zero secret and for a large
/// one, and the truncation bit `b = m0 XOR c` is balanced.
#[test]
fn what_p1_receives_is_uniform_whatever_the_secret() {
    const TRIALS: usize = 16_000;
    for (s, secret) in [0u64, 0x7fff_0000_1234_0000].into_iter().enumerate() {
        let mut rng = ChaCha8Rng::seed_from_u64(100 + s as u64);
        let mut d_seen = Vec::with_capacity(TRIALS);
        let mut e_seen = Vec::with_capacity(TRIALS);
        let mut ones = 0u64;
        for t in 0..TRIALS {
            let (x0, _x1) = share(&[secret], &mut rng);
            let (mut m0, _m1) = IdealDealer::new(Seed::from_u64((s * TRIALS + t) as u64)).split();
            // P0's message of a Beaver product of the secret with itself.
            let (_, msg) = beaver::mul_start(&x0, &x0, m0.take(TriplesRequest { n: 1 }).unwrap()).unwrap();
            d_seen.push(msg[0]);
            e_seen.push(msg[1]);
            // P0's message of a truncation of the secret.
            let (_, bmsg) =
                trunc::p0_start(&x0, 16, m0.take(TruncOtsRequest { n: 1, bits: 16 }).unwrap()).unwrap();
            ones += bmsg[0] & 1;
        }
        let (cd, ce) = (chi_square_top4(&d_seen), chi_square_top4(&e_seen));
        assert!(cd < 37.7 && ce < 37.7, "secret {secret:#x}: chi-square d {cd:.1}, e {ce:.1}");
        let dev = (ones as f64 - TRIALS as f64 / 2.0).abs() / (TRIALS as f64 / 4.0).sqrt();
        assert!(dev < 4.0, "secret {secret:#x}: truncation bit is 1 in {ones} of {TRIALS}");
    }
}
