//! PRG throughput: AES-128-CTR vs blake3 XOF, one thread, as the material code consumes
//! them. Prints GB/s. Run: `cargo bench -p shardlm-protocols --bench prg`
//! (`PRG_BENCH_RUNS=N` for more runs).
//!
//! The two constructions are measured alternately, and each run is timed by the time the
//! thread actually spent on a CPU (`/proc/thread-self/schedstat` where available, wall
//! time otherwise), so other processes on a busy machine do not decide the winner. Four
//! shapes: large `fill_u64s` calls (16 MiB), raw bytes (`fill`), the material pattern
//! (a fresh generator from a derived seed, seeked, then 4096 words), and P1's table reads
//! (8192 words at random positions, `Prg::words_at`; GB/s counts the 8 bytes used).

use shardlm_mpc::prg::{Prg, PrgKind, Seed};
use std::time::Instant;

/// Nanoseconds this thread has run on a CPU, if the kernel tells.
fn cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Repeats `f` (which produces `bytes` bytes) for at least 0.25 s of this thread's CPU
/// time (wall time where unavailable; the kernel's counter lags by up to a scheduler
/// tick, hence the long runs) and returns GB/s.
fn rate(bytes: usize, mut f: impl FnMut()) -> f64 {
    let (c0, t0) = (cpu_ns(), Instant::now());
    let mut n = 0usize;
    loop {
        f();
        n += 1;
        if !n.is_multiple_of(64) && bytes < 1 << 20 {
            continue; // read the clock rarely for small calls
        }
        let secs = match (c0, cpu_ns()) {
            (Some(a), Some(b)) => b.saturating_sub(a) as f64 / 1e9,
            _ => t0.elapsed().as_secs_f64(),
        };
        if secs >= 0.25 {
            return (n * bytes) as f64 / secs / 1e9;
        }
    }
}

fn summary(name: &str, r: &mut [f64]) -> f64 {
    r.sort_by(|a, b| a.total_cmp(b));
    let median = r[r.len() / 2];
    println!(
        "{name}: median {median:.2} GB/s (best {:.2}, worst {:.2}, {} runs)",
        r[r.len() - 1],
        r[0],
        r.len()
    );
    median
}

fn main() {
    const WORDS: usize = 2 << 20; // 16 MiB per call
    const SMALL: usize = 4096;
    let runs: usize = std::env::var("PRG_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(7);
    println!("time base: {}", if cpu_ns().is_some() { "thread CPU time" } else { "wall time" });
    let kinds = [PrgKind::Aes128Ctr, PrgKind::Blake3Xof];
    let mut words = vec![0u64; WORDS];
    let mut bytes = vec![0u8; WORDS * 8];
    let mut small = vec![0u64; SMALL];
    const READS: usize = 8192;
    let positions: Vec<u64> =
        (0..READS as u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40).collect();
    let mut read = vec![0u64; READS];
    let mut rates: [[Vec<f64>; 4]; 2] = Default::default();
    for run in 0..=runs {
        for (k, kind) in kinds.iter().enumerate() {
            let seed = Seed::from_u64(run as u64);
            let s = rate(WORDS * 8, || {
                Prg::with_kind(&seed, *kind).fill_u64s(&mut words);
                std::hint::black_box(&words);
            });
            let b = rate(WORDS * 8, || {
                Prg::with_kind(&seed, *kind).fill(&mut bytes);
                std::hint::black_box(&bytes);
            });
            let mut i = 0u64;
            let m = rate(SMALL * 8, || {
                let mut p = Prg::with_kind(&seed.derive("triples.a", 0), *kind);
                p.seek_words(i * SMALL as u64);
                p.fill_u64s(&mut small);
                std::hint::black_box(&small);
                i += 1;
            });
            let mut p = Prg::with_kind(&seed, *kind);
            let r = rate(READS * 8, || {
                p.words_at(&positions, &mut read);
                std::hint::black_box(&read);
            });
            if run > 0 {
                for (i, v) in [s, b, m, r].into_iter().enumerate() {
                    rates[k][i].push(v);
                }
            }
        }
    }
    let shapes =
        ["fill_u64s 16 MiB", "fill bytes 16 MiB", "fresh+seek+4096 words", "8192 random-access words"];
    let mut med = [[0.0; 4]; 2];
    for (k, kind) in kinds.iter().enumerate() {
        for (i, shape) in shapes.iter().enumerate() {
            med[k][i] = summary(&format!("prg {kind:?} {shape}"), &mut rates[k][i]);
        }
    }
    for (i, shape) in shapes.iter().enumerate() {
        let (a, b) = (med[0][i], med[1][i]);
        let (w, ratio) = if a >= b { ("Aes128Ctr", a / b) } else { ("Blake3Xof", b / a) };
        println!("winner {shape}: {w}, {ratio:.2}x by median");
    }
}
