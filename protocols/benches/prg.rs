//! PRG throughput: AES-128-CTR vs blake3 XOF, one thread, `u64` output as the material
//! code consumes it. Prints GB/s. Run: `cargo bench -p shardlm-protocols --bench prg`.
//!
//! The two constructions are measured alternately (so background load hits both alike)
//! and compared on their best run, the least disturbed measurement of each.

use shardlm_protocols::prg::{Prg, PrgKind, Seed};
use std::time::Instant;

fn main() {
    const WORDS: usize = 8 << 20; // 64 MiB per run
    let runs: usize = std::env::var("PRG_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(11);
    let kinds = [PrgKind::Aes128Ctr, PrgKind::Blake3Xof];
    let mut buf = vec![0u64; WORDS];
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for run in 0..=runs {
        for (k, kind) in kinds.iter().enumerate() {
            let mut p = Prg::with_kind(&Seed::from_u64(run as u64), *kind);
            let t = Instant::now();
            p.fill_u64s(&mut buf);
            let secs = t.elapsed().as_secs_f64();
            std::hint::black_box(&buf);
            if run > 0 {
                rates[k].push((WORDS * 8) as f64 / secs / 1e9);
            }
        }
    }
    let mut best = [0.0f64; 2];
    for (k, kind) in kinds.iter().enumerate() {
        let r = &mut rates[k];
        r.sort_by(|a, b| a.total_cmp(b));
        best[k] = r[r.len() - 1];
        println!(
            "prg {kind:?}: best {:.2} GB/s, median {:.2} GB/s, worst {:.2} GB/s over {runs} runs of 64 MiB",
            best[k],
            r[r.len() / 2],
            r[0]
        );
    }
    if best[0] >= best[1] {
        println!("winner: Aes128Ctr, {:.2}x the throughput of Blake3Xof", best[0] / best[1]);
    } else {
        println!("winner: Blake3Xof, {:.2}x the throughput of Aes128Ctr", best[1] / best[0]);
    }
}
