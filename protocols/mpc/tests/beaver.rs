//! Shares and Beaver products: property tests, two parties on two threads.

use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use shardlm_mpc::material::kinds::causal_matrix_triples::zero_hidden;
use shardlm_mpc::material::{
    BitProduct3TriplesRequest, BitTriplesRequest, BitVectorTriplesRequest, CausalMatrixTripleRequest,
    MatrixTripleRequest, NormTriplesRequest, PowerTuplesRequest, RowTriplesRequest, SquarePairsRequest,
    TriplesRequest, TruncOtsRequest,
};
use shardlm_mpc::material::{IdealDealer, MaterialSource};
use shardlm_mpc::prg::Seed;
use shardlm_mpc::ring;
use shardlm_mpc::share::{reconstruct, share, Shares, P0, P1};
use shardlm_mpc::{beaver, open, trunc};
use shardlm_testkit::two_party;
use shardlm_transport::{Channel, Lane};

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// One party's `s x y w` through the core functions, checking the message length.
fn bit_product3<R: shardlm_mpc::share::Role>(
    ch: &mut impl Channel,
    s: &[u64],
    xyw: [&Shares<R>; 3],
    t: shardlm_mpc::BitProduct3Triples<R>,
) -> Shares<R> {
    let (st, msg) = beaver::bit_product3_start(s, xyw, t).unwrap();
    assert_eq!(msg.len(), beaver::bit_product3_words(s.len()));
    ch.send_u64s(Lane::Openings, &msg).unwrap();
    let peer = ch.recv_u64s(Lane::Openings, msg.len()).unwrap();
    beaver::bit_product3_finish(st, &peer).unwrap()
}

/// One party's bit-vector product through the core functions, checking the message
/// length.
fn bit_vector_mul<R: shardlm_mpc::share::Role>(
    ch: &mut impl Channel,
    xy: &beaver::WeightedBits,
    y_only: &beaver::WeightedBits,
    x: &Shares<R>,
    y: &Shares<R>,
    t: shardlm_mpc::material::BitVectorTriples<R>,
) -> Shares<R> {
    let (st, msg) = beaver::bit_vector_mul_start(xy, y_only, x, y, t).unwrap();
    assert_eq!(msg.len(), beaver::bit_vector_mul_words(x.len(), xy.weights.len(), y_only.weights.len()));
    ch.send_u64s(Lane::Openings, &msg).unwrap();
    let peer = ch.recv_u64s(Lane::Openings, msg.len()).unwrap();
    beaver::bit_vector_mul_finish(st, &peer, (&xy.weights, xy.constant), (&y_only.weights, y_only.constant))
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn bit_vectors_times_a_product_and_a_value_are_exact(
        n in 1usize..60,
        bits in 1u32..9,
        y_bits in 0u32..11,
        seed in any::<u64>(),
    ) {
        let mut r = rng(seed);
        let draw = |r: &mut ChaCha8Rng, k: usize| -> Vec<u64> { (0..k).map(|_| r.next_u64()).collect() };
        let (x, y) = (draw(&mut r, n), draw(&mut r, n));
        let (wxy, wy) = (draw(&mut r, bits as usize), draw(&mut r, y_bits as usize));
        let (cxy, cy) = (r.next_u64(), r.next_u64());
        // Bits and their XOR shares.
        let mut split = |k: usize| {
            let b: Vec<u64> = (0..k).map(|_| r.next_u64() & 1).collect();
            let b0: Vec<u64> = (0..k).map(|_| r.next_u64() & 1).collect();
            let b1: Vec<u64> = b.iter().zip(&b0).map(|(b, m)| b ^ m).collect();
            (b, b0, b1)
        };
        let (s, s0, s1) = split(n * bits as usize);
        let (t, t0, t1) = split(n * y_bits as usize);
        let ((x0, x1), (y0, y1)) = (share(&x, &mut r), share(&y, &mut r));
        let weighted = |b: Vec<u64>, w: &[u64], c: u64| beaver::WeightedBits { bits: b, weights: w.to_vec(), constant: c };
        let (xy0, xy1) = (weighted(s0, &wxy, cxy), weighted(s1, &wxy, cxy));
        let (yo0, yo1) = (weighted(t0, &wy, cy), weighted(t1, &wy, cy));
        let req = BitVectorTriplesRequest { n, bits, y_bits };
        let (mut m0, mut m1) = IdealDealer::new(Seed::from_u64(seed)).split();
        let (z0, z1) = two_party(
            |ch| bit_vector_mul(ch, &xy0, &yo0, &x0, &y0, m0.take(req).unwrap()),
            |ch| bit_vector_mul(ch, &xy1, &yo1, &x1, &y1, m1.take(req).unwrap()),
        );
        let (bb, yb) = (bits as usize, y_bits as usize);
        let want: Vec<u64> = (0..n)
            .map(|i| {
                let sw = (0..bb).fold(cxy, |a, j| a.wrapping_add(wxy[j].wrapping_mul(s[i * bb + j])));
                let tw = (0..yb).fold(cy, |a, j| a.wrapping_add(wy[j].wrapping_mul(t[i * yb + j])));
                sw.wrapping_mul(x[i]).wrapping_mul(y[i]).wrapping_add(tw.wrapping_mul(y[i]))
            })
            .collect();
        prop_assert_eq!(reconstruct(&z0, &z1).unwrap(), want);
    }

    #[test]
    fn reconstruct_of_share_is_identity(x in proptest::collection::vec(any::<u64>(), 0..200), seed in any::<u64>()) {
        let (a, b) = share(&x, &mut rng(seed));
        prop_assert_eq!(reconstruct(&a, &b).unwrap(), x);
    }

    #[test]
    fn beaver_elementwise_products_are_exact(
        x in proptest::collection::vec(any::<u64>(), 1..100),
        seed in any::<u64>(),
    ) {
        let mut r = rng(seed);
        let y: Vec<u64> = x.iter().map(|v| v.rotate_left(17) ^ seed).collect();
        let (x0, x1) = share(&x, &mut r);
        let (y0, y1) = share(&y, &mut r);
        let (sq0_in, sq1_in) = (x0.clone(), x1.clone());
        let (mut m0, mut m1) = IdealDealer::new(Seed::from_u64(seed)).split();
        let n = x.len();
        let ((z0, s0), (z1, s1)) = two_party(
            |ch| {
                let z = beaver::mul(ch, &x0, &y0, m0.take(TriplesRequest { n }).unwrap()).unwrap();
                let s = beaver::square(ch, &sq0_in, m0.take(SquarePairsRequest { n }).unwrap()).unwrap();
                (z, s)
            },
            |ch| {
                let z = beaver::mul(ch, &x1, &y1, m1.take(TriplesRequest { n }).unwrap()).unwrap();
                let s = beaver::square(ch, &sq1_in, m1.take(SquarePairsRequest { n }).unwrap()).unwrap();
                (z, s)
            },
        );
        prop_assert_eq!(reconstruct(&z0, &z1).unwrap(), ring::mul(&x, &y));
        prop_assert_eq!(reconstruct(&s0, &s1).unwrap(), ring::mul(&x, &x));
    }

    #[test]
    fn bit_times_three_values_is_exact(
        x in proptest::collection::vec(any::<u64>(), 1..100),
        seed in any::<u64>(),
    ) {
        let mut r = rng(seed);
        let n = x.len();
        let y: Vec<u64> = (0..n).map(|_| r.next_u64()).collect();
        let w: Vec<u64> = (0..n).map(|_| r.next_u64()).collect();
        let b: Vec<u64> = (0..n).map(|_| r.next_u64() & 1).collect();
        let b0: Vec<u64> = (0..n).map(|_| r.next_u64() & 1).collect();
        let b1: Vec<u64> = b.iter().zip(&b0).map(|(b, m)| b ^ m).collect();
        let ((x0, x1), (y0, y1), (w0, w1)) = (share(&x, &mut r), share(&y, &mut r), share(&w, &mut r));
        let (mut m0, mut m1) = IdealDealer::new(Seed::from_u64(seed)).split();
        let (z0, z1) = two_party(
            |ch| bit_product3(ch, &b0, [&x0, &y0, &w0], m0.take(BitProduct3TriplesRequest { n }).unwrap()),
            |ch| bit_product3(ch, &b1, [&x1, &y1, &w1], m1.take(BitProduct3TriplesRequest { n }).unwrap()),
        );
        let want: Vec<u64> =
            (0..n).map(|i| x[i].wrapping_mul(y[i]).wrapping_mul(w[i]).wrapping_mul(b[i])).collect();
        prop_assert_eq!(reconstruct(&z0, &z1).unwrap(), want);
    }

    #[test]
    fn bit_times_value_and_powers_are_exact(
        x in proptest::collection::vec(any::<u64>(), 1..100),
        degree in 2u32..=8,
        seed in any::<u64>(),
    ) {
        let mut r = rng(seed);
        let n = x.len();
        let b: Vec<u64> = (0..n).map(|_| r.next_u64() & 1).collect();
        let b0: Vec<u64> = (0..n).map(|_| r.next_u64() & 1).collect();
        let b1: Vec<u64> = b.iter().zip(&b0).map(|(b, m)| b ^ m).collect();
        let (x0, x1) = share(&x, &mut r);
        let (mut m0, mut m1) = IdealDealer::new(Seed::from_u64(seed)).split();
        let ((z0, p0), (z1, p1)) = two_party(
            |ch| {
                let z = beaver::bit_mul(ch, &b0, &x0, m0.take(BitTriplesRequest { n }).unwrap()).unwrap();
                let p = beaver::powers(ch, &x0, m0.take(PowerTuplesRequest { n, degree }).unwrap()).unwrap();
                (z, p)
            },
            |ch| {
                let z = beaver::bit_mul(ch, &b1, &x1, m1.take(BitTriplesRequest { n }).unwrap()).unwrap();
                let p = beaver::powers(ch, &x1, m1.take(PowerTuplesRequest { n, degree }).unwrap()).unwrap();
                (z, p)
            },
        );
        let want: Vec<u64> = x.iter().zip(&b).map(|(x, b)| x.wrapping_mul(*b)).collect();
        prop_assert_eq!(reconstruct(&z0, &z1).unwrap(), want);
        // Row scaling: x as rows of `cols`, one value per row.
        let cols = 1 + (seed % 5) as usize;
        let rows = n / cols;
        if rows > 0 {
            let xr = x[..rows * cols].to_vec();
            let y: Vec<u64> = (0..rows).map(|_| r.next_u64()).collect();
            let (xr0, xr1) = share(&xr, &mut r);
            let (y0, y1) = share(&y, &mut r);
            let (r0, r1) = two_party(
                |ch| beaver::row_mul(ch, &xr0, &y0, m0.take(RowTriplesRequest { rows, cols }).unwrap()).unwrap(),
                |ch| beaver::row_mul(ch, &xr1, &y1, m1.take(RowTriplesRequest { rows, cols }).unwrap()).unwrap(),
            );
            let want: Vec<u64> = xr.iter().enumerate().map(|(i, v)| v.wrapping_mul(y[i / cols])).collect();
            prop_assert_eq!(reconstruct(&r0, &r1).unwrap(), want.clone());
            // The same through a norm triple: square first, then scale without reopening x.
            let ((sq0, n0), (sq1, n1)) = two_party(
                |ch| {
                    let t = m0.take(NormTriplesRequest { rows, cols }).unwrap();
                    let (st, msg) = beaver::norm_square_start(&xr0, t).unwrap();
                    ch.send_u64s(Lane::Openings, &msg).unwrap();
                    let peer = ch.recv_u64s(Lane::Openings, msg.len()).unwrap();
                    let (sq, pending) = beaver::norm_square_finish(st, &peer).unwrap();
                    let (st, msg) = beaver::norm_scale_start(pending, &y0).unwrap();
                    ch.send_u64s(Lane::Openings, &msg).unwrap();
                    let peer = ch.recv_u64s(Lane::Openings, msg.len()).unwrap();
                    (sq, beaver::norm_scale_finish(st, &peer).unwrap())
                },
                |ch| {
                    let t = m1.take(NormTriplesRequest { rows, cols }).unwrap();
                    let (st, msg) = beaver::norm_square_start(&xr1, t).unwrap();
                    ch.send_u64s(Lane::Openings, &msg).unwrap();
                    let peer = ch.recv_u64s(Lane::Openings, msg.len()).unwrap();
                    let (sq, pending) = beaver::norm_square_finish(st, &peer).unwrap();
                    let (st, msg) = beaver::norm_scale_start(pending, &y1).unwrap();
                    ch.send_u64s(Lane::Openings, &msg).unwrap();
                    let peer = ch.recv_u64s(Lane::Openings, msg.len()).unwrap();
                    (sq, beaver::norm_scale_finish(st, &peer).unwrap())
                },
            );
            prop_assert_eq!(reconstruct(&sq0, &sq1).unwrap(), ring::mul(&xr, &xr));
            prop_assert_eq!(reconstruct(&n0, &n1).unwrap(), want);
        }
        prop_assert_eq!(p0.len(), degree as usize);
        let mut pw = x.clone();
        for (k, (s0, s1)) in p0.iter().zip(&p1).enumerate() {
            prop_assert_eq!(&reconstruct(s0, s1).unwrap(), &pw, "power {}", k + 1);
            pw = ring::mul(&pw, &x);
        }
    }

    #[test]
    fn beaver_matrix_products_are_exact(m in 1usize..7, k in 1usize..9, n in 1usize..7, seed in any::<u64>()) {
        let mut r = rng(seed);
        let x: Vec<u64> = (0..m * k).map(|_| r.next_u64()).collect();
        let y: Vec<u64> = (0..k * n).map(|_| r.next_u64()).collect();
        let (x0, x1) = share(&x, &mut r);
        let (y0, y1) = share(&y, &mut r);
        let (mut m0, mut m1) = IdealDealer::new(Seed::from_u64(seed)).split();
        let (z0, z1) = two_party(
            |ch| beaver::matmul(ch, &x0, &y0, m0.take(MatrixTripleRequest { m, k, n }).unwrap()).unwrap(),
            |ch| beaver::matmul(ch, &x1, &y1, m1.take(MatrixTripleRequest { m, k, n }).unwrap()).unwrap(),
        );
        prop_assert_eq!(reconstruct(&z0, &z1).unwrap(), ring::gemm(&x, &y, m, k, n));
        // Causal: X zero beyond column start + r (both shares), only visible entries sent.
        let start = (seed % 3) as usize;
        let mut xc = x.clone();
        zero_hidden(&mut xc, m, k, start);
        let (mut c0, mut c1) = share(&xc, &mut r);
        zero_hidden(c0.as_mut_slice(), m, k, start);
        zero_hidden(c1.as_mut_slice(), m, k, start);
        let ((z0, sent), (z1, _)) = two_party(
            |ch| {
                let z = beaver::matmul(ch, &c0, &y0, m0.take(CausalMatrixTripleRequest { m, k, n, start }).unwrap()).unwrap();
                (z, ch.counters().bytes_sent())
            },
            |ch| {
                let z = beaver::matmul(ch, &c1, &y1, m1.take(CausalMatrixTripleRequest { m, k, n, start }).unwrap()).unwrap();
                (z, ch.counters().bytes_sent())
            },
        );
        prop_assert_eq!(reconstruct(&z0, &z1).unwrap(), ring::gemm(&xc, &y, m, k, n));
        let visible: usize = (0..m).map(|row| (start + row + 1).min(k)).sum();
        prop_assert_eq!(sent, 8 * (visible + k * n) as u64);
    }

    /// Fixed-point products: Beaver then faithful truncation lands within one unit in the
    /// last place of the exact product (floor), never further.
    #[test]
    fn fixed_point_products_within_one_ulp(
        xs in proptest::collection::vec(-1000.0f64..1000.0, 1..64),
        seed in any::<u64>(),
    ) {
        const F: u32 = 16;
        let mut r = rng(seed);
        let ys: Vec<f64> = xs.iter().map(|v| (v * 0.37).sin() * 900.0).collect();
        let (xe, ye) = (ring::encode_vec_f64(&xs, F), ring::encode_vec_f64(&ys, F));
        let (x0, x1) = share(&xe, &mut r);
        let (y0, y1) = share(&ye, &mut r);
        let n = xs.len();
        let (mut m0, mut m1) = IdealDealer::new(Seed::from_u64(seed)).split();
        let (t0, t1) = two_party(
            |ch| {
                let z = beaver::mul(ch, &x0, &y0, m0.take(TriplesRequest { n }).unwrap()).unwrap();
                trunc::truncate(ch, z, F, m0.take(TruncOtsRequest { n, bits: F }).unwrap()).unwrap()
            },
            |ch| {
                let z = beaver::mul(ch, &x1, &y1, m1.take(TriplesRequest { n }).unwrap()).unwrap();
                trunc::truncate(ch, z, F, m1.take(TruncOtsRequest { n, bits: F }).unwrap()).unwrap()
            },
        );
        let t = reconstruct(&t0, &t1).unwrap();
        for i in 0..n {
            let exact = ((xe[i] as i64 as i128) * (ye[i] as i64 as i128)) >> F;
            let diff = exact - (t[i] as i64 as i128);
            prop_assert!(diff == 0 || diff == 1, "element {i}: exact {exact}, got {}", t[i] as i64);
        }
    }
}

use rand_core::RngCore;

#[test]
fn open_reveals_to_both_and_costs_one_round() {
    let x: Vec<u64> = (0..1000).map(|i| i * 7).collect();
    let (x0, x1) = share(&x, &mut rng(5));
    let ((a, c0), (b, c1)) = two_party(
        |ch| (open::open(ch, &x0).unwrap(), ch.counters()),
        |ch| (open::open(ch, &x1).unwrap(), ch.counters()),
    );
    assert_eq!(a, x);
    assert_eq!(b, x);
    for c in [c0, c1] {
        assert_eq!(c.lane(Lane::Openings).bytes_sent, 8000);
        assert_eq!(c.lane(Lane::Openings).messages_sent, 1);
        assert_eq!(c.rounds, 1);
    }
}

#[test]
fn matmul_traffic_is_one_message_per_matrix() {
    let (m, k, n) = (8, 16, 4);
    let x = vec![3u64; m * k];
    let y = vec![5u64; k * n];
    let (x0, x1) = share(&x, &mut rng(1));
    let (y0, y1) = share(&y, &mut rng(2));
    let (mut m0, mut m1) = IdealDealer::new(Seed::from_u64(9)).split();
    let (c0, _) = two_party(
        |ch| {
            beaver::matmul(ch, &x0, &y0, m0.take(MatrixTripleRequest { m, k, n }).unwrap()).unwrap();
            ch.counters()
        },
        |ch| beaver::matmul(ch, &x1, &y1, m1.take(MatrixTripleRequest { m, k, n }).unwrap()).unwrap(),
    );
    assert_eq!(c0.lane(Lane::Openings).bytes_sent, 8 * (m * k + k * n) as u64);
    assert_eq!(c0.lane(Lane::Openings).messages_sent, 1);
    assert_eq!(c0.rounds, 1);
}

#[test]
fn shape_errors_are_errors_not_panics() {
    let (mut m0, _) = IdealDealer::new(Seed::from_u64(1)).split();
    let x = Shares::<P0>::from_raw(vec![1, 2, 3]);
    let y = Shares::<P0>::from_raw(vec![1, 2]);
    assert!(beaver::mul_start(&x, &y, m0.take(TriplesRequest { n: 3 }).unwrap()).is_err());
    assert!(beaver::mul_start(&x, &x, m0.take(TriplesRequest { n: 2 }).unwrap()).is_err());
    let (st, _) = beaver::mul_start(&x, &x, m0.take(TriplesRequest { n: 3 }).unwrap()).unwrap();
    assert!(beaver::mul_finish(st, &[0; 5]).is_err());
    let _ = Shares::<P1>::default();
}

/// A layer step's openings batched: a product, a square and a matrix product in one
/// message per direction, one round.
#[test]
fn batched_step_is_one_message_one_round() {
    use shardlm_mpc::exchange_batch;
    let x: Vec<u64> = (0..12).map(|i| i * 11 + 2).collect();
    let y: Vec<u64> = (0..12).map(|i| i * 5 + 9).collect();
    let (x0, x1) = share(&x, &mut rng(1));
    let (y0, y1) = share(&y, &mut rng(2));
    let (mut m0, mut m1) = IdealDealer::new(Seed::from_u64(3)).split();
    fn step<R: shardlm_mpc::share::Role>(
        ch: &mut impl Channel,
        x: &Shares<R>,
        y: &Shares<R>,
        m: &mut impl MaterialSource<R>,
    ) -> (Vec<Shares<R>>, shardlm_transport::Counters) {
        let (s1, a) = beaver::mul_start(x, y, m.take(TriplesRequest { n: 12 }).unwrap()).unwrap();
        let (s2, b) = beaver::square_start(x, m.take(SquarePairsRequest { n: 12 }).unwrap()).unwrap();
        let (s3, c) =
            beaver::matmul_start(x, y, m.take(MatrixTripleRequest { m: 3, k: 4, n: 3 }).unwrap()).unwrap();
        let peer = exchange_batch(ch, Lane::Openings, &[&a, &b, &c]).unwrap();
        let out = vec![
            beaver::mul_finish(s1, &peer[0]).unwrap(),
            beaver::square_finish(s2, &peer[1]).unwrap(),
            beaver::matmul_finish(s3, &peer[2]).unwrap(),
        ];
        (out, ch.counters())
    }
    let ((z0, c0), (z1, _)) = two_party(|ch| step(ch, &x0, &y0, &mut m0), |ch| step(ch, &x1, &y1, &mut m1));
    assert_eq!(reconstruct(&z0[0], &z1[0]).unwrap(), ring::mul(&x, &y));
    assert_eq!(reconstruct(&z0[1], &z1[1]).unwrap(), ring::mul(&x, &x));
    assert_eq!(reconstruct(&z0[2], &z1[2]).unwrap(), ring::gemm(&x, &y, 3, 4, 3));
    assert_eq!(c0.lane(Lane::Openings).messages_sent, 1);
    assert_eq!(c0.rounds, 1);
}
