//! Exact ring GEMM throughput next to an `f32` GEMM of the same shape, for the linear
//! units of Qwen2.5-1.5B at 98 positions (and 0.5B with `MODEL=0.5b`).
//! `cargo bench -p shardlm-gpu --bench ring_gemm`.

use shardlm_gpu::{Backend, CpuBackend};
use std::time::Instant;

fn time<F: FnMut()>(mut f: F) -> f64 {
    f();
    let reps = 3;
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    t.elapsed().as_secs_f64() / reps as f64
}

fn main() {
    let m: usize = std::env::var("POSITIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(98);
    let shapes: Vec<(&str, usize, usize)> = if std::env::var("MODEL").as_deref() == Ok("0.5b") {
        vec![("qkv", 896, 1152), ("o", 896, 896), ("gate_up", 896, 9728), ("down", 4864, 896)]
    } else {
        vec![("qkv", 1536, 2048), ("o", 1536, 1536), ("gate_up", 1536, 17920), ("down", 8960, 1536)]
    };
    let b = CpuBackend::new();
    println!("{} positions, backend {}", m, b.name());
    println!("{:<8} {:>6} {:>6} {:>12} {:>12} {:>8}", "unit", "k", "n", "ring GMAC/s", "f32 GMAC/s", "ratio");
    for (name, k, n) in shapes {
        let x: Vec<u64> = (0..m * k).map(|i| (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)).collect();
        let w: Vec<u64> = (0..n * k).map(|i| ((i % 4001) as i64 - 2000) as u64 * 61).collect();
        let prepared = b.prepare_ring(&w, n, k).expect("prepare");
        let mut out = vec![0u64; m * n];
        let tr = time(|| b.ring_matmul_prepared(&x, &prepared, m, &mut out).expect("ring"));
        let xf: Vec<f32> = x.iter().map(|&v| (v >> 40) as f32 * 1e-6).collect();
        let wf: Vec<f32> = w.iter().map(|&v| (v as i64) as f32 * 1e-6).collect();
        let mut outf = vec![0f32; m * n];
        let tf = time(|| b.matmul_f32(&xf, &wf, m, k, n, &mut outf).expect("f32"));
        let macs = (m * k * n) as f64 / 1e9;
        println!("{:<8} {:>6} {:>6} {:>12.2} {:>12.2} {:>8.1}x", name, k, n, macs / tr, macs / tf, tr / tf);
    }
}
