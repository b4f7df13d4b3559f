//! Dealer and material throughput: the exact ring GEMM behind masked-linear material
//! (`S = R enc(W)^T`), bundle writing, and journaled takes from a bundle.
//! Run: `cargo bench -p shardlm-protocols --bench material`.

use shardlm_mpc::material::TriplesRequest;
use shardlm_mpc::material::{BundleWriter, Material, MaterialRequest, MaterialSource, NoWeights};
use shardlm_mpc::prg::{Prg, Seed};
use shardlm_mpc::ring;
use shardlm_mpc::share::P0;
use std::time::Instant;

fn main() {
    // Qwen2.5-0.5B gate+up shape for a 32-token chunk: 32 x 896 times (2 x 4864) x 896.
    let (n, d_in, d_out) = (32usize, 896usize, 9728usize);
    let r = Prg::new(&Seed::from_u64(1)).u64s(n * d_in);
    let w = Prg::new(&Seed::from_u64(2)).u64s(d_out * d_in);
    let t = Instant::now();
    let s = ring::gemm_abt(&r, &w, n, d_in, d_out);
    let secs = t.elapsed().as_secs_f64();
    std::hint::black_box(&s);
    println!(
        "ring gemm_abt {n}x{d_in}x{d_out}: {:.3} s, {:.2} G multiply-adds/s ({} threads)",
        secs,
        (n * d_in * d_out) as f64 / secs / 1e9,
        rayon::current_num_threads()
    );

    let dir = std::env::temp_dir().join(format!("shardlm-bench-material-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let t = Instant::now();
    let mut wr = BundleWriter::create(&dir, "bench", "v3-mpc", Seed::from_u64(3)).expect("create bundle");
    let takes = 2000usize;
    for _ in 0..takes {
        wr.push(&MaterialRequest::Triples(TriplesRequest { n: 4096 }), &NoWeights).expect("push");
    }
    let m = wr.finish().expect("finish");
    let secs = t.elapsed().as_secs_f64();
    println!(
        "bundle write: {} triples, p0 shard {:.1} MB in {:.2} s ({:.0} MB/s of shard)",
        takes * 4096,
        m.shards["p0"].bytes as f64 / 1e6,
        secs,
        m.shards["p0"].bytes as f64 / 1e6 / secs
    );
    let t = Instant::now();
    let mut mat = Material::<P0>::open(&dir.join("p0"), None).expect("open");
    let open_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..takes {
        std::hint::black_box(mat.take(TriplesRequest { n: 4096 }).expect("take"));
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "bundle open (blake3 check) {:.3} s; {takes} journaled takes of 4096 triples: {:.1} us per take, {:.0} M triples/s",
        open_secs,
        secs / takes as f64 * 1e6,
        (takes * 4096) as f64 / secs / 1e6
    );
    let _ = std::fs::remove_dir_all(&dir);
}
