//! One fully private run (both parties on two threads over the in-memory pair) and its
//! agreement with the plaintext engine, shared by the v3-mpc and v3-ot tests
//! (`mpc_v3.rs`, `ot_v3.rs`): the same harness measures both variants.

#![allow(dead_code)] // each test file uses its part

use shardlm_configs::FixedPoint;
use shardlm_model::qwen2::forward;
use shardlm_model::sampling::argmax;
use shardlm_model::{ModelDir, PlainEngine, Rows, Weights};
use shardlm_mpc::material::{IdealDealer, MaterialSource};
use shardlm_mpc::prg::Seed;
use shardlm_mpc::session::AuditEntry;
use shardlm_mpc::share::{P0, P1};
use shardlm_testkit::two_party;
use shardlm_transport::Counters;
use shardlm_variants::v3_mpc::{MpcParty, Nonlinear};
use shardlm_variants::RingWeights;
use std::path::Path;
use std::sync::Arc;

pub fn load(dir: &Path) -> (ModelDir, Arc<Weights>) {
    let md = ModelDir::open(dir).unwrap();
    let w = Arc::new(md.load_weights().unwrap());
    (md, w)
}

pub fn ring_weights(w: &Weights) -> Arc<RingWeights> {
    let backend: Arc<dyn shardlm_gpu::Backend> = Arc::new(shardlm_gpu::CpuBackend::new());
    Arc::new(RingWeights::encode(w, FixedPoint::default(), backend).unwrap())
}

/// What a run computes: the variant's nonlinear layers, which prefill rows get logits,
/// how many greedy tokens (the prefill's included), the parties' seeds and whether
/// every transfer is recorded for the audit.
#[derive(Clone, Copy, Debug)]
pub struct Pass {
    pub nonlinear: Nonlinear,
    pub rows: Rows,
    pub greedy_n: usize,
    pub seed: u64,
    pub record: bool,
}

/// A run: P0's prefill logits (one row per requested row), the greedy continuation,
/// per-pass counters and both audit logs.
pub struct Run {
    pub logits: Vec<Vec<f32>>,
    pub greedy: Vec<u32>,
    pub per_pass: Vec<Counters>,
    pub audit0: Vec<AuditEntry>,
    pub audit1: Vec<AuditEntry>,
}

impl Run {
    /// The last position's logits.
    pub fn last(&self) -> &[f32] {
        self.logits.last().map(Vec::as_slice).unwrap_or_default()
    }
}

/// Runs `ids` as `pass` says on material `m0`, `m1`; P1 runs the same steps on
/// placeholder tokens and must never get logits.
pub fn run<M0: MaterialSource<P0>, M1: MaterialSource<P1> + Send>(
    pass: Pass,
    md: &ModelDir,
    ring: &Arc<RingWeights>,
    w: &Arc<Weights>,
    ids: &[u32],
    m0: M0,
    m1: M1,
) -> Run {
    let (c, c1) = (md.config.clone(), md.config.clone());
    let n = ids.len();
    let ((logits, greedy, per_pass, audit0), audit1) = two_party(
        |ch| {
            let mut p = MpcParty::new(w.clone(), ring.clone(), ch, m0, Seed::from_u64(pass.seed ^ 0xa))
                .with_nonlinear(pass.nonlinear);
            p.session().record_transfers(pass.record);
            let mut per_pass = Vec::new();
            let before = p.counters();
            let l = forward(&mut p, &c, ids, 0, pass.rows).unwrap().expect("P0 gets logits");
            per_pass.push(p.counters().since(&before));
            let mut greedy = vec![argmax(l.last())];
            let mut pos = n;
            while greedy.len() < pass.greedy_n {
                let before = p.counters();
                let s = forward(&mut p, &c, &[*greedy.last().unwrap()], pos, Rows::Last).unwrap().unwrap();
                per_pass.push(p.counters().since(&before));
                greedy.push(argmax(s.last()));
                pos += 1;
            }
            let all = (0..l.rows()).map(|r| l.row(r).to_vec()).collect();
            (all, greedy, per_pass, p.audit().to_vec())
        },
        |ch| {
            let mut p = MpcParty::new(w.clone(), ring.clone(), ch, m1, Seed::from_u64(pass.seed ^ 0xb))
                .with_nonlinear(pass.nonlinear);
            p.session().record_transfers(pass.record);
            assert!(
                forward(&mut p, &c1, &vec![0u32; n], 0, pass.rows).unwrap().is_none(),
                "P1 never gets logits"
            );
            for step in 1..pass.greedy_n {
                assert!(forward(&mut p, &c1, &[0], n + step - 1, Rows::Last).unwrap().is_none());
            }
            p.audit().to_vec()
        },
    );
    Run { logits, greedy, per_pass, audit0, audit1 }
}

/// The plaintext engine's logits at every prefill position and its greedy continuation.
pub fn plaintext(w: &Arc<Weights>, md: &ModelDir, ids: &[u32], greedy_n: usize) -> (Vec<Vec<f32>>, Vec<u32>) {
    let c = &md.config;
    let mut plain = PlainEngine::new(w.clone(), Arc::new(shardlm_gpu::CpuBackend::new()));
    let pl = forward(&mut plain, c, ids, 0, Rows::All).unwrap().unwrap();
    let mut want = vec![argmax(pl.last())];
    let mut pos = ids.len();
    while want.len() < greedy_n {
        let s = forward(&mut plain, c, &[*want.last().unwrap()], pos, Rows::Last).unwrap().unwrap();
        want.push(argmax(s.last()));
        pos += 1;
    }
    ((0..ids.len()).map(|r| pl.row(r).to_vec()).collect(), want)
}

/// Top-1 agreement over all prefill positions and greedy equality of a set of cases.
pub struct Agreement {
    pub agree: usize,
    pub total: usize,
    pub greedy_equal: usize,
    pub cases: usize,
}

/// Runs every case of `cases` on the model in `dir` (case `i` on ideal-dealer material
/// from seed `seed + i`) with logits for `rows` (every prefill position, or the last)
/// and compares them with the plaintext engine's; prints each miss with its plaintext
/// top-2 gap, per-case traffic and the |logit error| quantiles. `strict_last` asserts
/// every last position's top-1.
pub fn agreement_on(
    nonlinear: Nonlinear,
    rows: Rows,
    dir: &Path,
    cases: &[Vec<u32>],
    greedy_n: usize,
    strict_last: bool,
    seed: u64,
) -> Agreement {
    let (md, w) = load(dir);
    let ring = ring_weights(&w);
    let (mut agree, mut total, mut greedy_equal) = (0, 0, 0);
    let mut errs = Vec::new();
    for (i, ids) in cases.iter().enumerate() {
        let (want_logits, want) = plaintext(&w, &md, ids, greedy_n);
        let case_seed = seed + i as u64;
        let (m0, m1) = IdealDealer::new(Seed::from_u64(case_seed)).split();
        let t = std::time::Instant::now();
        let pass = Pass { nonlinear, rows, greedy_n, seed: case_seed, record: false };
        let run = run(pass, &md, &ring, &w, ids, m0, m1);
        // The run's rows are the last `run.logits.len()` prefill positions.
        let first = want_logits.len() - run.logits.len();
        for (r, (a, b)) in run.logits.iter().zip(&want_logits[first..]).enumerate() {
            let r = first + r;
            agree += usize::from(argmax(a) == argmax(b));
            total += 1;
            errs.extend(a.iter().zip(b).map(|(x, y)| (x - y).abs()));
            if argmax(a) != argmax(b) {
                let mut sorted = b.clone();
                sorted.sort_by(|x, y| y.total_cmp(x));
                eprintln!("case {i} position {r}: plaintext top-2 gap {:.4}", sorted[0] - sorted[1]);
            }
        }
        let (p, d) = (&run.per_pass[0], run.per_pass.last().unwrap());
        eprintln!(
            "case {i}: {} tokens, top-1 last {} vs {}, greedy equal {}, prefill {} rounds {:.2} MiB sent, decode {} rounds, {:.1} s",
            ids.len(),
            argmax(run.last()),
            want[0],
            run.greedy == want,
            p.rounds,
            p.bytes_sent() as f64 / 1048576.0,
            d.rounds,
            t.elapsed().as_secs_f64()
        );
        if strict_last {
            assert_eq!(argmax(run.last()), want[0], "case {i}: last-position top-1");
        }
        if run.greedy != want {
            eprintln!("case {i}: greedy {:?}\n    plaintext {want:?}", run.greedy);
        }
        greedy_equal += usize::from(run.greedy == want);
    }
    errs.sort_by(f32::total_cmp);
    let q = |p: f64| errs[((errs.len() - 1) as f64 * p) as usize];
    eprintln!(
        "top-1 {agree}/{total} = {:.2}%, greedy_{greedy_n} equal {greedy_equal}/{}; |logit err| p50 {:.4} p90 {:.4} p99 {:.4} max {:.4}",
        100.0 * agree as f64 / total as f64,
        cases.len(),
        q(0.5),
        q(0.9),
        q(0.99),
        q(1.0)
    );
    Agreement { agree, total, greedy_equal, cases: cases.len() }
}
