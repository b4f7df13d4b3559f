//! The planned cost of a fully private variant at the Qwen2.5-1.5B shape, shared by the
//! v3-mpc and v3-ot cost tests: random weights of the real shape, planned runs (both
//! parties, recorder material) with 1 and 2 layers, their difference scaled to 28.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shardlm_configs::FixedPoint;
use shardlm_model::{Rows, Weights};
use shardlm_variants::v3_mpc::{plan_session_with, Nonlinear};
use shardlm_variants::RingWeights;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A prefill's cost scaled to the model's layers.
pub struct Scaled {
    /// Rounds of one layer.
    pub rounds_per_layer: u64,
    /// Online bytes (both directions) of the prefill, GiB.
    pub online_gib: f64,
    /// P0's dealer material, GiB.
    pub dealer_p0_gib: f64,
    /// P1's stored material (shape records), bytes.
    pub dealer_p1_bytes: f64,
}

/// Plans `tokens`-token prefills with 1 and 2 layers of the 1.5B shape, prints the
/// per-operation table of one layer and where one layer's P0 material goes (by kind),
/// and returns the cost scaled to 28 layers.
pub fn at_qwen2_5_1_5b(nonlinear: Nonlinear, tokens: usize) -> Scaled {
    let layers = 28u64;
    let base = shardlm_configs::ModelConfig::preset("qwen2.5-1.5b").unwrap();
    let (h, inter, qd, kvd) = (base.hidden_size, base.intermediate_size, base.q_dim(), base.kv_dim());
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut rv = |n: usize, s: f32| -> Vec<f32> { (0..n).map(|_| rng.gen_range(-s..s)).collect() };
    let embed = rv(base.vocab_size * h, 0.5);
    let layer_ws: Vec<_> = (0..2)
        .map(|_| shardlm_model::weights::LayerWeights {
            input_norm: vec![1.0; h],
            qkv_w: rv((qd + 2 * kvd) * h, 0.03),
            qkv_b: rv(qd + 2 * kvd, 0.1),
            o_w: rv(h * qd, 0.03),
            post_norm: vec![1.0; h],
            gate_up_w: rv(2 * inter * h, 0.03),
            down_w: rv(h * inter, 0.03),
        })
        .collect();
    let gib = |b: f64| b / (1u64 << 30) as f64;
    let mut m = Vec::new();
    let mut by_kind: [BTreeMap<String, f64>; 2] = Default::default();
    for nl in [1usize, 2] {
        let mut cfg = base.clone();
        cfg.num_hidden_layers = nl;
        let w =
            Arc::new(Weights::new(cfg, embed.clone(), layer_ws[..nl].to_vec(), vec![1.0; h], None).unwrap());
        let backend: Arc<dyn shardlm_gpu::Backend> = Arc::new(shardlm_gpu::CpuBackend::new());
        let ring = Arc::new(RingWeights::encode(&w, FixedPoint::default(), backend).unwrap());
        let t = std::time::Instant::now();
        let plan = plan_session_with(nonlinear, &w, &ring, tokens, 1, Rows::Last).unwrap();
        let dealer: [f64; 2] =
            [0u8, 1].map(|p| plan.requests.iter().map(|r| r.raw_bytes(p).unwrap()).sum::<f64>());
        let online = (plan.counters.bytes_sent() + plan.counters.bytes_received()) as f64;
        eprintln!(
            "{nl} layer(s), {tokens} tokens, planned run {:.1} s: online {:.3} GiB, dealer P0 {:.3} GiB P1 {:.6} GiB, {} rounds",
            t.elapsed().as_secs_f64(),
            gib(online),
            gib(dealer[0]),
            gib(dealer[1]),
            plan.counters.rounds
        );
        if nl == 1 {
            eprintln!(
                "| op (1 layer) | calls | elements | bytes sent/elem | bytes recv/elem | rounds/call |"
            );
            for (op, c) in &plan.costs {
                let e = c.elements.max(1) as f64;
                eprintln!(
                    "| {op} | {} | {} | {:.1} | {:.1} | {:.1} |",
                    c.calls,
                    c.elements,
                    c.bytes_sent as f64 / e,
                    c.bytes_received as f64 / e,
                    c.rounds as f64 / c.calls as f64
                );
            }
        }
        for r in &plan.requests {
            *by_kind[nl - 1].entry(r.kind().name()).or_default() += r.raw_bytes(0).unwrap();
        }
        m.push((online, dealer, plan.counters.rounds));
    }
    let ((o1, d1, r1), (o2, d2, r2)) = (m[0], m[1]);
    let (lo, lr) = (o2 - o1, r2 - r1);
    let scaled = Scaled {
        rounds_per_layer: lr,
        online_gib: gib(o1 + (layers - 1) as f64 * lo),
        dealer_p0_gib: gib(d1[0] + (layers - 1) as f64 * (d2[0] - d1[0])),
        dealer_p1_bytes: d1[1] + (layers - 1) as f64 * (d2[1] - d1[1]),
    };
    eprintln!("per layer: online {:.3} GiB, dealer P0 {:.3} GiB, {lr} rounds", gib(lo), gib(d2[0] - d1[0]));
    eprintln!("| P0 material kind (1 layer) | GiB |");
    for (kind, b2) in &by_kind[1] {
        let layer = b2 - by_kind[0].get(kind).copied().unwrap_or(0.0);
        if layer > 0.0 {
            eprintln!("| {kind} | {:.4} |", gib(layer));
        }
    }
    eprintln!(
        "scaled to {layers} layers: online {:.3} GiB, dealer P0 {:.3} GiB, P1 {:.0} bytes, rounds {}",
        scaled.online_gib,
        scaled.dealer_p0_gib,
        scaled.dealer_p1_bytes,
        r1 + (layers - 1) * lr
    );
    scaled
}

/// The prompt length of a cost run: `var` if set, else 98.
pub fn tokens(var: &str) -> usize {
    std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(98)
}
