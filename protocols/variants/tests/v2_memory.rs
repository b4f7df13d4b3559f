//! v2 between two parties in one process over the in-memory channel, against the
//! plaintext engine on `testdata/tiny-bytes` (and `../shared/oracle/tiny-qwen2` when present): identical greedy tokens, logits
//! within 1e-2, exact traffic per linear unit, `4 * layers + 1` rounds per forward pass,
//! a server view that does not depend on the prompt, nor (under the full budget) on
//! where the answer ends.

use shardlm_configs::{FixedPoint, ModelConfig};
use shardlm_model::generate::{generate, steps_of, Generation, StopPolicy};
use shardlm_model::qwen2::forward;
use shardlm_model::sampling::{argmax, Sampler, SamplingConfig};
use shardlm_model::{Linear, ModelDir, PlainEngine, Rows, Weights};
use shardlm_mpc::material::IdealDealer;
use shardlm_mpc::prg::Seed;
use shardlm_testkit::{chi_square_bytes, fixtures};
use shardlm_transport::{memory, Channel, Counters, Lane, Result as TResult};
use shardlm_variants::plan::SessionShape;
use shardlm_variants::v2::{V2Client, V2Server, V2_LANE};
use shardlm_variants::RingWeights;
use std::path::Path;
use std::sync::{Arc, Mutex};

fn load(dir: &Path) -> (ModelDir, Arc<Weights>) {
    let md = ModelDir::open(dir).unwrap();
    let w = Arc::new(md.load_weights().unwrap());
    (md, w)
}

/// Records every payload the server receives.
struct Tap<C> {
    inner: C,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl<C: Channel> Channel for Tap<C> {
    fn send_bytes(&mut self, lane: Lane, payload: &[u8]) -> TResult<()> {
        self.inner.send_bytes(lane, payload)
    }
    fn recv_bytes(&mut self, lane: Lane) -> TResult<Vec<u8>> {
        let b = self.inner.recv_bytes(lane)?;
        self.seen.lock().unwrap().push(b.clone());
        Ok(b)
    }
    fn counters(&self) -> Counters {
        self.inner.counters()
    }
    fn peer(&self) -> String {
        self.inner.peer()
    }
}

struct Run {
    logits: Vec<f32>,
    greedy: Vec<u32>,
    client: Counters,
    per_pass: Vec<Counters>,
    server_saw: Vec<Vec<u8>>,
}

fn run_v2(md: &ModelDir, w: &Arc<Weights>, ids: &[u32], greedy_n: usize, seed: u8) -> Run {
    let fixed = FixedPoint::default();
    let backend: Arc<dyn shardlm_gpu::Backend> = Arc::new(shardlm_gpu::CpuBackend::new());
    let ring = Arc::new(RingWeights::encode(w, fixed, backend).unwrap());
    let (c_chan, s_chan) = memory::pair();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let server = V2Server::new(ring.clone());
    let mut tap = Tap { inner: s_chan, seen: seen.clone() };
    let shape = SessionShape::new(ids.len(), greedy_n, Rows::Last);
    let server_thread = std::thread::spawn(move || server.serve_session(&mut tap, shape).map(|s| (s, tap)));

    let (masks, _) = IdealDealer::new(Seed([seed; 32])).with_weights(ring).split();
    let mut client = V2Client::new(w.clone(), fixed, c_chan, masks);
    let mut per_pass = Vec::new();
    let before = client.channel().counters();
    let l = forward(&mut client, &md.config, ids, 0, Rows::Last).unwrap().unwrap();
    per_pass.push(client.channel().counters().since(&before));
    let mut greedy = vec![argmax(l.last())];
    let mut pos = ids.len();
    while greedy.len() < greedy_n {
        let before = client.channel().counters();
        let step =
            forward(&mut client, &md.config, &[*greedy.last().unwrap()], pos, Rows::Last).unwrap().unwrap();
        per_pass.push(client.channel().counters().since(&before));
        greedy.push(argmax(step.last()));
        pos += 1;
    }
    let chan = client.finish().unwrap();
    let (stats, _) = server_thread.join().unwrap().unwrap();
    assert_eq!(stats.forward_passes as usize, greedy_n);
    let server_saw = seen.lock().unwrap().clone();
    Run { logits: l.last().to_vec(), greedy, client: chan.counters(), per_pass, server_saw }
}

#[test]
fn v2_reproduces_the_plaintext_engine_with_exact_traffic() {
    reproduces_the_plaintext_engine_with_exact_traffic(&fixtures::tiny_bytes());
}

#[test]
fn v2_reproduces_the_plaintext_engine_with_exact_traffic_on_tiny_qwen2() {
    let Some(dir) = fixtures::tiny_qwen2() else { return };
    reproduces_the_plaintext_engine_with_exact_traffic(&dir);
}

fn reproduces_the_plaintext_engine_with_exact_traffic(dir: &Path) {
    let (md, w) = load(dir);
    let c = &md.config;
    let mut plain = PlainEngine::new(w.clone(), Arc::new(shardlm_gpu::CpuBackend::new()));
    for (i, ids) in fixtures::case_inputs(dir).iter().enumerate() {
        plain.reset();
        let pl = forward(&mut plain, c, ids, 0, Rows::Last).unwrap().unwrap();
        let mut want = vec![argmax(pl.last())];
        let mut pos = ids.len();
        while want.len() < 8 {
            let s = forward(&mut plain, c, &[*want.last().unwrap()], pos, Rows::Last).unwrap().unwrap();
            want.push(argmax(s.last()));
            pos += 1;
        }
        let run = run_v2(&md, &w, ids, 8, i as u8);
        assert_eq!(run.greedy, want, "case {i}: greedy tokens");
        let max_diff = run.logits.iter().zip(pl.last()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(max_diff < 1e-2, "case {i}: max |logit diff| {max_diff}");

        // Traffic: every unit moves exactly 8 n (d_in + d_out) payload bytes, one round each.
        for (p, counters) in run.per_pass.iter().enumerate() {
            let n = if p == 0 { ids.len() } else { 1 };
            let mut want_bytes = 0u64;
            for lin in Linear::all(c) {
                let (d_in, d_out) = lin.dims(c);
                let rows = if lin == Linear::LmHead { 1 } else { n };
                want_bytes += 8 * rows as u64 * (d_in + d_out) as u64;
            }
            let lane = counters.lane(V2_LANE);
            assert_eq!(lane.bytes_sent + lane.bytes_received, want_bytes, "case {i} pass {p}");
            assert_eq!(
                counters.bytes_sent() + counters.bytes_received(),
                want_bytes,
                "no other lane carries data"
            );
            assert_eq!(counters.rounds, 4 * c.num_hidden_layers as u64 + 1, "case {i} pass {p}: rounds");
            assert!(counters.framing_bytes_sent * 100 <= counters.bytes_sent(), "framing within 1%");
        }
        assert!(run.client.bytes_sent() > 0);
    }
}

#[test]
fn server_view_does_not_depend_on_the_prompt() {
    let (md, w) = load(&fixtures::tiny_bytes());
    // Two different prompts of the same length; one of them maximally structured.
    let a = run_v2(&md, &w, &b"Hello!".map(u32::from), 2, 1);
    let b = run_v2(&md, &w, &[0, 0, 0, 0, 0, 0], 2, 2);
    assert_eq!(a.server_saw.len(), b.server_saw.len());
    for (x, y) in a.server_saw.iter().zip(&b.server_saw) {
        assert_eq!(x.len(), y.len(), "request sizes depend only on public shapes");
    }
    let all_a: Vec<u8> = a.server_saw.concat();
    let all_b: Vec<u8> = b.server_saw.concat();
    // Uniform bytes: chi-square with 255 dof has mean 255, sd ~22.6; 400 is p < 1e-6.
    let (ca, cb) = (chi_square_bytes(&all_a), chi_square_bytes(&all_b));
    assert!(ca < 400.0 && cb < 400.0, "server view not uniform: chi2 {ca:.1}, {cb:.1}");
    // Two-sample test on the top byte of each ring element, where encodings of small
    // activations would show their sign structure if masks leaked.
    let top = |v: &[u8]| -> Vec<u8> { v.chunks_exact(8).map(|c| c[7]).collect() };
    let (ta, tb) = (top(&all_a), top(&all_b));
    let mut ha = [0f64; 16];
    let mut hb = [0f64; 16];
    ta.iter().for_each(|&x| ha[(x >> 4) as usize] += 1.0);
    tb.iter().for_each(|&x| hb[(x >> 4) as usize] += 1.0);
    let (na, nb) = (ta.len() as f64, tb.len() as f64);
    let chi: f64 = (0..16)
        .map(|k| {
            let tot = ha[k] + hb[k];
            let ea = tot * na / (na + nb);
            let eb = tot * nb / (na + nb);
            (ha[k] - ea).powi(2) / ea + (hb[k] - eb).powi(2) / eb
        })
        .sum();
    // 15 dof: p < 1e-6 at about 60.
    assert!(chi < 60.0, "two-sample chi-square {chi:.1}: the two views are distinguishable");
    // Sanity of the test itself: unmasked encodings would fail it badly.
    let raw: Vec<u8> = (0..all_a.len() / 8)
        .flat_map(|i| shardlm_mpc::ring::encode_f32((i % 7) as f32 * 0.1, 16).to_le_bytes())
        .collect();
    assert!(chi_square_bytes(&raw) > 1000.0);
}

/// Records the size and lane of every message the server receives and sends.
struct Sizes<C> {
    inner: C,
    seen: Arc<Mutex<Vec<(char, Lane, usize)>>>,
}

impl<C: Channel> Channel for Sizes<C> {
    fn send_bytes(&mut self, lane: Lane, payload: &[u8]) -> TResult<()> {
        self.seen.lock().unwrap().push(('>', lane, payload.len()));
        self.inner.send_bytes(lane, payload)
    }
    fn send_vec(&mut self, lane: Lane, payload: Vec<u8>) -> TResult<()> {
        self.seen.lock().unwrap().push(('>', lane, payload.len()));
        self.inner.send_vec(lane, payload)
    }
    fn recv_bytes(&mut self, lane: Lane) -> TResult<Vec<u8>> {
        let b = self.inner.recv_bytes(lane)?;
        self.seen.lock().unwrap().push(('<', lane, b.len()));
        Ok(b)
    }
    fn counters(&self) -> Counters {
        self.inner.counters()
    }
    fn peer(&self) -> String {
        self.inner.peer()
    }
}

/// Greedy generation of `prompt` with budget `budget` through v2 under `stop`, with the
/// end tokens of `config`: what the client got, and every message the server received
/// and sent, in order.
fn private_generation(
    config: &ModelConfig,
    w: &Arc<Weights>,
    prompt: &[u32],
    budget: usize,
    stop: StopPolicy,
) -> (Generation, Vec<(char, Lane, usize)>) {
    let fixed = FixedPoint::default();
    let backend: Arc<dyn shardlm_gpu::Backend> = Arc::new(shardlm_gpu::CpuBackend::new());
    let ring = Arc::new(RingWeights::encode(w, fixed, backend).unwrap());
    let (c_chan, s_chan) = memory::pair();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let server = V2Server::new(ring.clone());
    let mut tap = Sizes { inner: s_chan, seen: seen.clone() };
    let shape = SessionShape::new(prompt.len(), budget, Rows::Last);
    let server_thread = std::thread::spawn(move || server.serve_session(&mut tap, shape));
    let (masks, _) = IdealDealer::new(Seed([9; 32])).with_weights(ring).split();
    let mut client = V2Client::new(w.clone(), fixed, c_chan, masks);
    let mut sampler = Sampler::new(SamplingConfig::default());
    let g =
        generate(steps_of(&mut client, config), config, prompt, budget, &mut sampler, stop, |_| {}).unwrap();
    client.finish().unwrap();
    server_thread.join().unwrap().unwrap();
    let seen = seen.lock().unwrap().clone();
    (g, seen)
}

/// Issue 14: two prompts of the same length whose answers end at the end-of-sequence
/// token after 1 and after 15 tokens give the server identical message counts and sizes
/// in fixed-length private generation (the default: dummy steps after the end token);
/// stopping at the end token (`--stop-at-eos`) shows the server the difference.
#[test]
fn answer_length_is_hidden_from_the_server_under_the_full_budget() {
    let (md, w) = load(&fixtures::tiny_bytes());
    let budget = 16;
    // The plaintext engine's greedy answers (end tokens ignored) pick the end tokens:
    // A's first token, and B's fifteenth, which neither occurs earlier in B's answer.
    let greedy = |prompt: &[u32]| {
        let mut plain = PlainEngine::new(w.clone(), Arc::new(shardlm_gpu::CpuBackend::new()));
        let mut sampler = Sampler::new(SamplingConfig::default());
        let c = &md.config;
        generate(steps_of(&mut plain, c), c, prompt, budget, &mut sampler, StopPolicy::Never, |_| {})
            .unwrap()
            .tokens
    };
    let (a, b) = (b"Hello!".map(u32::from), b"pizza!".map(u32::from));
    let (ta, tb) = (greedy(&a), greedy(&b));
    let eos = vec![ta[0], tb[14]];
    assert!(
        !tb[..14].iter().any(|t| eos.contains(t)),
        "B's answer {tb:?} meets an end token {eos:?} before its fifteenth token"
    );
    let mut config = md.config.clone();
    config.eos_token_ids = eos;

    let (ga, sa) = private_generation(&config, &w, &a, budget, StopPolicy::FullBudget);
    let (gb, sb) = private_generation(&config, &w, &b, budget, StopPolicy::FullBudget);
    assert!(ga.stopped_at_eos && gb.stopped_at_eos);
    assert_eq!((ga.tokens.len(), gb.tokens.len()), (1, 15));
    assert_eq!(
        (&ga.tokens[..], &gb.tokens[..]),
        (&ta[..1], &tb[..15]),
        "private answers equal the plaintext engine's"
    );
    assert_eq!((ga.dummy.len(), gb.dummy.len()), (15, 1), "dummy steps fill the budget");
    assert_eq!(sa.len(), sb.len(), "message counts differ");
    assert_eq!(sa, sb, "message sizes differ");
    let bytes = |s: &[(char, Lane, usize)]| s.iter().map(|m| m.2).sum::<usize>();
    eprintln!(
        "full budget: the server saw {} messages, {} bytes, for answers of 1 and of 15 tokens alike",
        sa.len(),
        bytes(&sa)
    );

    // Stopping at the end token: the server sees how long each answer was.
    let (ga, sa) = private_generation(&config, &w, &a, budget, StopPolicy::AtEos);
    let (gb, sb) = private_generation(&config, &w, &b, budget, StopPolicy::AtEos);
    assert_eq!((ga.tokens.len(), gb.tokens.len()), (1, 15));
    let units = Linear::all(&config).len();
    // One request and one answer per unit per pass, plus the end frame.
    assert_eq!((sa.len(), sb.len()), (2 * units + 1, 2 * units * 15 + 1));
    eprintln!(
        "--stop-at-eos: the server saw {} messages ({} bytes) for 1 token, {} ({} bytes) for 15",
        sa.len(),
        bytes(&sa),
        sb.len(),
        bytes(&sb)
    );
}
