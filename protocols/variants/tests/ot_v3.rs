//! v3-ot: every table function against its plaintext definition over its whole input
//! domain, the table primitives on shares, and the whole forward pass against the
//! plaintext engine; two parties on two threads over the in-memory pair, material from
//! the ideal dealer (DESIGN.md section 7).

use shardlm_model::qwen2::forward;
use shardlm_model::{ModelDir, Rows, Weights};
use shardlm_mpc::material::{IdealDealer, MaterialSource};
use shardlm_mpc::prg::Seed;
use shardlm_mpc::share::{P0, P1};
use shardlm_testkit::fixtures;
use shardlm_testkit::{chi_square_bytes, two_party};
use shardlm_variants::v3_mpc::{MpcParty, Nonlinear};
use shardlm_variants::RingWeights;
use std::path::Path;
use std::sync::Arc;

mod private_run;
mod shape_cost;

use private_run::{agreement_on, load, plaintext, ring_weights, Pass, Run};

/// One v3-ot run (all-position logits of the prompt for P0, then the greedy
/// continuation).
#[allow(clippy::too_many_arguments)]
fn run_ot<M0: MaterialSource<P0>, M1: MaterialSource<P1> + Send>(
    md: &ModelDir,
    ring: &Arc<RingWeights>,
    w: &Arc<Weights>,
    ids: &[u32],
    greedy_n: usize,
    seed: u64,
    record: bool,
    m0: M0,
    m1: M1,
) -> Run {
    let pass = Pass { nonlinear: Nonlinear::Tables, rows: Rows::All, greedy_n, seed, record };
    private_run::run(pass, md, ring, w, ids, m0, m1)
}

/// Top-1 agreement over all positions, greedy equality and the logit errors of the
/// oracle in `dir`; asserts every last position's top-1 and `min_greedy_equal` greedy_8.
fn agreement(dir: &Path, min_greedy_equal: usize) {
    let cases = fixtures::case_inputs(dir);
    let a = agreement_on(Nonlinear::Tables, Rows::All, dir, &cases, 8, true, 300);
    // Every last position is asserted in `agreement_on`; over all positions a miss is a
    // near tie of the plaintext logits (printed with its gap).
    assert!(a.agree as f64 >= 0.99 * a.total as f64, "top-1 {}/{}", a.agree, a.total);
    assert!(a.greedy_equal >= min_greedy_equal, "greedy_8 equal in {} of {}", a.greedy_equal, a.cases);
}

/// The real Qwen2.5-Coder-0.5B-Instruct when `SHARDLM_REAL_MODEL_DIR` is set: top-1
/// agreement with the plaintext engine over all positions of the nine reference prompts
/// (issue 16: at least 99.5%), greedy_16 equal for at least 8 of 9, the logit error
/// distribution. About 9 minutes on 2 cores. `SHARDLM_OT_CASES` shrinks the run;
/// `SHARDLM_OT_MATERIAL_SEED` (default 300) draws other material (case `i` from seed
/// `SEED + i`): SiLU's index is read within one step according to the masks' carries,
/// so the agreement varies with the draw (docs/v3-ot.md).
#[test]
fn real_model_agreement_over_all_positions() {
    let Some(dir) = fixtures::real_model_dir() else { return };
    let n: usize = std::env::var("SHARDLM_OT_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(9);
    let cases: Vec<Vec<u32>> =
        fixtures::case_inputs(&fixtures::real_reference()).into_iter().take(n).collect();
    let seed: u64 =
        std::env::var("SHARDLM_OT_MATERIAL_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let a = agreement_on(Nonlinear::Tables, Rows::All, Path::new(&dir), &cases, 16, false, seed);
    assert!(a.agree as f64 >= 0.995 * a.total as f64, "top-1 agreement {}/{} below 99.5%", a.agree, a.total);
    assert!(9 * a.greedy_equal >= 8 * a.cases, "greedy_16 equal in {} of {}", a.greedy_equal, a.cases);
}

/// Audit: every value P1 receives (and P0, but for the final logits) is a masked
/// opening whose bytes are uniform (chi-square over all of them), and the only thing
/// ever opened unmasked is the final logits, to P0 only.
#[test]
fn audit_every_received_value_is_masked_and_p0_opens_only_the_logits() {
    use shardlm_mpc::session::Opened;
    let (md, w) = load(&fixtures::tiny_bytes());
    let ring = ring_weights(&w);
    for (k, prompt) in [b"Hello!".map(u32::from).to_vec(), vec![0u32; 6]].iter().enumerate() {
        let (m0, m1) = IdealDealer::new(Seed::from_u64(500 + k as u64)).split();
        let run = run_ot(&md, &ring, &w, prompt, 2, 500 + k as u64, true, m0, m1);
        for (party, log) in [(0, &run.audit0), (1, &run.audit1)] {
            let finals: Vec<usize> = log
                .iter()
                .enumerate()
                .filter(|(_, e)| e.what == Opened::FinalLogits)
                .map(|(i, _)| i)
                .collect();
            assert_eq!(finals.len(), 2, "p{party}: one final-logits transfer per forward pass");
            for &i in &finals {
                if party == 0 {
                    assert_eq!(log[i].sent, 0, "P0 sends nothing for the logits");
                } else {
                    assert_eq!(log[i].received_len, 0, "P1 never receives logits");
                }
            }
            let mut bytes = Vec::new();
            for e in log.iter().filter(|e| e.what != Opened::FinalLogits) {
                assert!(
                    shardlm_variants::v3_mpc::is_masked(e.what),
                    "p{party}: {:?} is not a masked opening",
                    e.what
                );
                // Bit-packed messages end in a partial word padded with zeros: skip it.
                let keep = e.received.len().saturating_sub(1);
                bytes.extend(e.received[..keep].iter().flat_map(|w| w.to_le_bytes()));
            }
            let chi = chi_square_bytes(&bytes);
            eprintln!(
                "prompt {k} p{party}: {} transfers, {} bytes received, chi2 {chi:.1}",
                log.len(),
                bytes.len()
            );
            // 255 degrees of freedom: mean 255, sd 22.6; 400 is p < 1e-6.
            assert!(chi < 400.0, "prompt {k} p{party}: received bytes not uniform, chi2 {chi:.1}");
        }
    }
}

#[test]
fn tiny_bytes_matches_the_plaintext_engine() {
    agreement(&fixtures::tiny_bytes(), 5);
}

#[test]
fn tiny_qwen2_matches_the_plaintext_engine() {
    let Some(dir) = fixtures::tiny_qwen2() else { return };
    agreement(&dir, 3);
}

mod functions {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use shardlm_mpc::material::{IdealDealer, Material};
    use shardlm_mpc::prg::Seed;
    use shardlm_mpc::ring::{decode, encode};
    use shardlm_mpc::session::Session;
    use shardlm_mpc::share::{reconstruct, share, Role, Shares, P0, P1};
    use shardlm_mpc::tables::{self, LevelPlan};
    use shardlm_testkit::two_party;
    use shardlm_transport::memory::MemoryChannel;

    type Sess<'a, R> = Session<R, &'a mut MemoryChannel, Material<R>>;

    /// Runs `f` on both parties with shares of each input vector; opens the result.
    fn on_shares(
        inputs: &[Vec<u64>],
        seed: u64,
        f: impl Fn(&mut Sess<'_, P0>, Vec<Shares<P0>>) -> Shares<P0>,
        g: impl Fn(&mut Sess<'_, P1>, Vec<Shares<P1>>) -> Shares<P1> + Send + Sync,
    ) -> Vec<u64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for x in inputs {
            let (x0, x1) = share(x, &mut rng);
            a.push(x0);
            b.push(x1);
        }
        let (m0, m1) = IdealDealer::new(Seed::from_u64(seed)).split();
        let (r0, r1) = two_party(
            |c| f(&mut Session::new(c, m0, Seed::from_u64(seed + 1)), a),
            |c| g(&mut Session::new(c, m1, Seed::from_u64(seed + 2)), b),
        );
        reconstruct(&r0, &r1).unwrap()
    }

    fn silu(x: f64) -> f64 {
        x / (1.0 + (-x).exp())
    }

    fn silu_on<R: Role>(s: &mut Sess<'_, R>, x: Vec<Shares<R>>) -> Shares<R> {
        let p = tables::silu_times(s, &x[0], &x[1], 32).unwrap();
        s.trunc(p, tables::SILU_OUT_FRAC - 16).unwrap()
    }

    #[test]
    fn silu_times_within_its_bound() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let g: Vec<f64> = (0..4000)
            .map(|i| if i < 2000 { -40.0 + 80.0 * i as f64 / 2000.0 } else { rng.gen_range(-9.0..9.0) })
            .collect();
        let u: Vec<f64> = (0..4000).map(|_| rng.gen_range(-3.0..3.0)).collect();
        let out = on_shares(
            &[g.iter().map(|&v| encode(v, 32)).collect(), u.iter().map(|&v| encode(v, 32)).collect()],
            11,
            silu_on,
            silu_on,
        );
        let errors: Vec<(f64, f64, f64)> = out
            .iter()
            .zip(g.iter().zip(&u))
            .map(|(&o, (&g, &u))| (decode(o, 16) - silu(g) * u, g, u))
            .collect();
        let worst = errors.iter().map(|(e, _, u)| e.abs() / u.abs().max(1.0)).fold(0.0, f64::max);
        // Where the tangent line is read (|g| < 7), per unit of u (|u| > 1/2, away from
        // the output's own rounding): the line's error alone.
        let inner: Vec<f64> =
            errors.iter().filter(|(_, g, u)| g.abs() < 7.0 && u.abs() > 0.5).map(|(e, _, u)| e / u).collect();
        let rms = (inner.iter().map(|e| e * e).sum::<f64>() / inner.len() as f64).sqrt();
        let inner_max = inner.iter().map(|e| e.abs()).fold(0.0, f64::max);
        eprintln!(
            "silu(g) u: max error per unit of max(|u|, 1) {worst:.5}; |g| < 7: per unit of |u| rms {rms:.6}, max {inner_max:.5} ({} points)",
            inner.len()
        );
        assert!(worst < 0.01, "silu error {worst}");
        assert!(rms < 1e-3 && inner_max < 5e-3, "silu line error rms {rms}, max {inner_max}");
    }

    fn exp_on<R: Role>(s: &mut Sess<'_, R>, x: Vec<Shares<R>>) -> Shares<R> {
        let n = x[0].len();
        tables::softmax_exp(s, &x[0], &[n / 4, n / 4, n / 2], 32).unwrap()
    }

    #[test]
    fn softmax_exp_shifts_by_the_row_max() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let x: Vec<f64> = (0..400).map(|_| rng.gen_range(-60.0..40.0)).collect();
        let out = on_shares(&[x.iter().map(|&v| encode(v, 32)).collect()], 12, exp_on, exp_on);
        let segs = [100usize, 100, 200];
        let mut at = 0;
        let mut worst = 0.0f64;
        for &l in &segs {
            let row = &x[at..at + l];
            let got: Vec<f64> = out[at..at + l].iter().map(|&o| decode(o, tables::EXP_FRAC)).collect();
            // Softmax is invariant to the shift: compare normalized rows.
            let want: Vec<f64> = {
                let m = row.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = row.iter().map(|v| (v - m).exp()).collect();
                let s: f64 = e.iter().sum();
                e.iter().map(|v| v / s).collect()
            };
            let s: f64 = got.iter().sum();
            for (g, w) in got.iter().zip(&want) {
                worst = worst.max((g / s - w).abs());
            }
            at += l;
        }
        eprintln!("softmax (normalized): max error {worst:.2e}");
        assert!(worst < 2e-3, "softmax error {worst}");
    }

    fn recip_on<R: Role>(s: &mut Sess<'_, R>, x: Vec<Shares<R>>) -> Shares<R> {
        let plan = LevelPlan {
            k: 10,
            shifts: LevelPlan::covering(10, 14, 2, 300.0 * 2f64.powi(24)),
            spacing: 2,
            frac_in: 24,
            div: 1,
            root: false,
            frac_out: 24,
        };
        tables::inverse(s, &x[0], &plan).unwrap()
    }

    #[test]
    fn reciprocal_levels_within_their_bound() {
        let x: Vec<f64> = (0..2000).map(|i| 0.37 * (300.0f64 / 0.37).powf(i as f64 / 1999.0)).collect();
        let out = on_shares(&[x.iter().map(|&v| encode(v, 24)).collect()], 13, recip_on, recip_on);
        let worst = out.iter().zip(&x).map(|(&o, &v)| (decode(o, 24) * v - 1.0).abs()).fold(0.0, f64::max);
        eprintln!("reciprocal on [0.37, 300]: max relative error {worst:.2e}");
        assert!(worst < 5e-3, "reciprocal error {worst}");
    }

    fn rsqrt_on<R: Role>(s: &mut Sess<'_, R>, x: Vec<Shares<R>>) -> Shares<R> {
        let units = |e: i32| 896.0 * 2f64.powi(e + 32);
        let plan = LevelPlan {
            k: 11,
            shifts: LevelPlan::covering(11, (units(-20).log2().floor() as u32) - 8, 3, units(17)),
            spacing: 3,
            frac_in: 32,
            div: 896,
            root: true,
            frac_out: 20,
        };
        tables::inverse(s, &x[0], &plan).unwrap()
    }

    #[test]
    fn rsqrt_levels_over_the_mean_square_range() {
        // Sums of squares of 896 features whose mean square spans [2^-20, 2^17].
        let ms: Vec<f64> = (0..2000).map(|i| 2f64.powf(-20.0 + 37.0 * i as f64 / 1999.0)).collect();
        let out = on_shares(&[ms.iter().map(|&m| encode(m * 896.0, 32)).collect()], 15, rsqrt_on, rsqrt_on);
        let worst =
            out.iter().zip(&ms).map(|(&o, &m)| (decode(o, 20) * m.sqrt() - 1.0).abs()).fold(0.0, f64::max);
        eprintln!("rsqrt of the mean square on [2^-20, 2^17]: max relative error {worst:.2e}");
        assert!(worst < 5e-3, "rsqrt error {worst}");
    }

    fn max_on<R: Role>(s: &mut Sess<'_, R>, x: Vec<Shares<R>>) -> Shares<R> {
        let v = shardlm_mpc::lut::reduce(&x[0], 32, 10);
        let c = tables::max_rows(s, &v, &[1, 7, 64, 128], 10).unwrap();
        Shares::from_raw(c)
    }

    #[test]
    fn table_tournament_finds_the_row_max() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let x: Vec<f64> = (0..200).map(|_| rng.gen_range(-200.0..200.0)).collect();
        let out = on_shares(&[x.iter().map(|&v| encode(v, 32)).collect()], 14, max_on, max_on);
        let mut at = 0;
        for (i, &l) in [1usize, 7, 64, 128].iter().enumerate() {
            let want = x[at..at + l].iter().cloned().fold(f64::MIN, f64::max);
            let got = shardlm_mpc::material::kinds::lookup_tables::signed(out[i], 10) as f64;
            assert!((got - want).abs() <= 1.0, "row {i}: max {got} vs {want}");
            at += l;
        }
    }
}

/// Every table function against its plaintext definition over its whole input domain,
/// looked up on shares: each index in `0..2^k` shared mod `2^k`, opened masked, read
/// from both parties' tables and recombined.
#[test]
fn every_table_function_over_its_whole_domain() {
    use rand::{Rng, SeedableRng};
    use shardlm_mpc::material::{IdealDealer, Read, TableFn};
    use shardlm_mpc::prg::Seed;
    use shardlm_mpc::ring::low_mask;
    use shardlm_mpc::session::{Round, Session};
    use shardlm_mpc::tables::{EXP_CLIP, SILU_INDEX_BITS, SILU_LINE};
    let cases: Vec<(u32, Vec<Read>)> = vec![
        (10, vec![Read { func: TableFn::Relu, bits: 10 }]),
        (
            8,
            vec![
                Read { func: TableFn::AtLeast { t: 15 }, bits: 8 },
                Read { func: TableFn::Between { lo: -14, hi: 14 }, bits: 8 },
            ],
        ),
        (SILU_INDEX_BITS, vec![Read { func: SILU_LINE, bits: SILU_INDEX_BITS }]),
        (
            10,
            vec![
                Read { func: TableFn::AtLeast { t: -EXP_CLIP }, bits: 10 },
                Read { func: TableFn::Exp { frac_in: 0, frac_out: 16 }, bits: 5 },
            ],
        ),
        (7, vec![Read { func: TableFn::Exp { frac_in: 5, frac_out: 16 }, bits: 7 }]),
        (
            10,
            vec![Read {
                func: TableFn::Inverse { shift: -10, div: 1, root: false, frac_out: 24, min: 1 },
                bits: 10,
            }],
        ),
        (
            11,
            vec![
                Read {
                    func: TableFn::Inverse { shift: -6, div: 896, root: true, frac_out: 20, min: 256 },
                    bits: 11,
                },
                Read { func: TableFn::Count { min: 256, width: 4 }, bits: 11 },
            ],
        ),
        (4, vec![Read { func: TableFn::IsZero, bits: 4 }]),
    ];
    for (case, (k, reads)) in cases.into_iter().enumerate() {
        let n = 1usize << k;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(case as u64);
        let v0: Vec<u64> = (0..n).map(|_| rng.gen::<u64>() & low_mask(k)).collect();
        let v1: Vec<u64> = (0..n).map(|i| (i as u64).wrapping_sub(v0[i]) & low_mask(k)).collect();
        let (m0, m1) = IdealDealer::new(Seed::from_u64(40 + case as u64)).split();
        let (r1, r2) = (reads.clone(), reads.clone());
        let (o0, o1) = two_party(
            |c| {
                let mut s = Session::new(c, m0, Seed::from_u64(1));
                let mut r = Round::default();
                s.stage_lookup(&mut r, &v0, k, &r1).unwrap();
                s.run(r).unwrap().pop().unwrap().tables().unwrap()
            },
            |c| {
                let mut s = Session::new(c, m1, Seed::from_u64(2));
                let mut r = Round::default();
                s.stage_lookup(&mut r, &v1, k, &r2).unwrap();
                s.run(r).unwrap().pop().unwrap().tables().unwrap()
            },
        );
        for (j, read) in reads.iter().enumerate() {
            let out = read.func.out(read.bits);
            for v in 0..n {
                let got = out.combine(o0[j][v], o1[j][v]);
                let want = read.func.eval(v as u64 & low_mask(read.bits), read.bits);
                assert_eq!(got, want, "{read:?} at index {v} (case {case})");
            }
        }
        eprintln!("{k}-bit lookups {reads:?}: all {n} indices equal the plaintext tables");
    }
}

/// Planned cost at the Qwen2.5-1.5B shape with a 98-token prefill and random weights
/// ([`shape_cost`]), asserting issue 16's targets: at most 40 rounds per layer, 2 GiB
/// online, 24 GiB of P0 material, seeds only for P1. Run with `SHARDLM_OT_COST=1`
/// (about a minute and 12 GiB in --release; `SHARDLM_OT_COST_TOKENS` changes the prompt).
#[test]
fn cost_at_the_qwen2_5_1_5b_shape() {
    if std::env::var_os("SHARDLM_OT_COST").is_none() {
        eprintln!("skipped: set SHARDLM_OT_COST=1 to measure the 1.5B-shape cost");
        return;
    }
    let c = shape_cost::at_qwen2_5_1_5b(Nonlinear::Tables, shape_cost::tokens("SHARDLM_OT_COST_TOKENS"));
    assert!(c.rounds_per_layer <= 40, "{} rounds per layer over the 40 target", c.rounds_per_layer);
    assert!(c.online_gib <= 2.0, "online {:.3} GiB over the 2 GiB target", c.online_gib);
    assert!(c.dealer_p0_gib <= 24.0, "dealer {:.3} GiB over the 24 GiB target", c.dealer_p0_gib);
    // P1's raw words are the public shape records of matrix triples (a few words per
    // attention call), everything else of its part is derived from its seed.
    assert!(c.dealer_p1_bytes < 65536.0, "P1 stores {} bytes: its part must be seeds", c.dealer_p1_bytes);
}

/// A planned v3-ot bundle runs its session; a further pass finds the material spent on
/// both sides and says which flag to raise.
#[test]
fn planned_bundle_runs_the_session_and_then_names_the_flag_to_raise() {
    use shardlm_mpc::material::{BundleWriter, Material, NoWeights};
    use shardlm_variants::v3_mpc::plan_session_with;
    let (md, w) = load(&fixtures::tiny_bytes());
    let c = &md.config;
    let ring = ring_weights(&w);
    let ids = fixtures::case_inputs(&fixtures::tiny_bytes())[2].clone();
    let plan = plan_session_with(Nonlinear::Tables, &w, &ring, ids.len(), 3, Rows::All).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut bw = BundleWriter::create(dir.path(), "tiny", "v3-ot", Seed::from_u64(78)).unwrap();
    bw.start_session();
    for r in &plan.requests {
        bw.push(r, &NoWeights).unwrap();
    }
    bw.finish().unwrap();
    let p1_bytes = std::fs::metadata(dir.path().join("p1/p1.shard")).unwrap().len();
    assert!(p1_bytes < 64 * 1024, "the server's shard is seeds and shape records: {p1_bytes} bytes");
    let open = || {
        (
            Material::<P0>::open(&dir.path().join("p0"), None).unwrap(),
            Material::<P1>::open(&dir.path().join("p1"), None).unwrap(),
        )
    };
    let (m0, m1) = open();
    let run = run_ot(&md, &ring, &w, &ids, 3, 5, false, m0, m1);
    let (_, want) = plaintext(&w, &md, &ids, 1);
    assert_eq!(run.greedy[0], want[0]);
    let (m0, m1) = open();
    let (e0, e1) = two_party(
        |ch| {
            let mut p = MpcParty::new(w.clone(), ring.clone(), ch, m0, Seed::from_u64(1))
                .with_nonlinear(Nonlinear::Tables);
            forward(&mut p, c, &[1], 0, Rows::Last).map(|_| ())
        },
        |ch| {
            let mut p = MpcParty::new(w.clone(), ring.clone(), ch, m1, Seed::from_u64(2))
                .with_nonlinear(Nonlinear::Tables);
            forward(&mut p, c, &[0], 0, Rows::Last).map(|_| ())
        },
    );
    for (party, e) in [(0, e0), (1, e1)] {
        let msg = e.expect_err("spent material must fail").to_string();
        eprintln!("p{party}: {msg}");
        assert!(msg.contains("material") && msg.contains("--max-new-tokens"), "p{party}: {msg}");
    }
}

/// A v3-mpc bundle's material is refused by a v3-ot party at its first take (and the
/// other way round): the kinds the two variants consume differ, and a party names what
/// it expected instead of computing with the wrong correlation.
#[test]
fn a_bundle_for_the_other_fully_private_variant_is_refused() {
    use shardlm_mpc::material::{BundleWriter, Material, NoWeights};
    use shardlm_variants::v3_mpc::plan_session_with;
    let (md, w) = load(&fixtures::tiny_bytes());
    let c = &md.config;
    let ring = ring_weights(&w);
    for (dealt, used) in
        [(Nonlinear::Polynomial, Nonlinear::Tables), (Nonlinear::Tables, Nonlinear::Polynomial)]
    {
        let plan = plan_session_with(dealt, &w, &ring, 4, 1, Rows::Last).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let name = dealt.variant().name();
        let mut bw = BundleWriter::create(dir.path(), "tiny", name, Seed::from_u64(79)).unwrap();
        bw.start_session();
        for r in &plan.requests {
            bw.push(r, &NoWeights).unwrap();
        }
        bw.finish().unwrap();
        let m0 = Material::<P0>::open(&dir.path().join("p0"), None).unwrap();
        let m1 = Material::<P1>::open(&dir.path().join("p1"), None).unwrap();
        let (e0, e1) = two_party(
            |ch| {
                let mut p =
                    MpcParty::new(w.clone(), ring.clone(), ch, m0, Seed::from_u64(1)).with_nonlinear(used);
                forward(&mut p, c, &[1, 2, 3, 4], 0, Rows::Last).map(|_| ())
            },
            |ch| {
                let mut p =
                    MpcParty::new(w.clone(), ring.clone(), ch, m1, Seed::from_u64(2)).with_nonlinear(used);
                forward(&mut p, c, &[0; 4], 0, Rows::Last).map(|_| ())
            },
        );
        let msg = e0.err().or(e1.err()).expect("the wrong variant's bundle must be refused").to_string();
        eprintln!("{name} bundle used by {}: {msg}", used.variant().name());
        assert!(msg.contains("never dealt") && msg.contains(name), "{msg}");
    }
}
