//! Test support for the ShardLM workspace, used only as a dev-dependency.
//!
//! * [`fixtures`]: the oracles vendored in `testdata/` (always there) and the optional
//!   ones beside the checkout (`../shared`) or named by `SHARDLM_REAL_MODEL_DIR`, which
//!   tests use only when present and otherwise skip with a printed reason.
//! * [`two_party`]: both parties in one process over the in-memory channel pair;
//!   [`chi_square_bytes`] for the uniformity of what a party receives.
//! * [`bins`]: the two binaries as a user runs them (keygen, a server on 127.0.0.1).
//! * [`campaign`]: seeded fuzz/property campaigns, short by default and long with
//!   `SHARDLM_LONG_TESTS=1` (std only; configs and transport include the file by path).
#![deny(missing_docs)]

pub mod bins;
pub mod campaign;
pub mod fixtures;

use shardlm_transport::memory::{pair, MemoryChannel};

/// Chi-square statistic of the byte histogram of `data` against uniform bytes (255
/// degrees of freedom: mean 255, sd 22.6; 400 is p < 1e-6), for the tests that what a
/// party receives does not depend on the secret.
pub fn chi_square_bytes(data: &[u8]) -> f64 {
    let mut hist = [0u64; 256];
    data.iter().for_each(|&b| hist[b as usize] += 1);
    let e = data.len() as f64 / 256.0;
    hist.iter().map(|&o| (o as f64 - e).powi(2) / e).sum()
}

/// Runs `f0` as P0 on this thread and `f1` as P1 on another, connected in memory.
pub fn two_party<A, B>(
    f0: impl FnOnce(&mut MemoryChannel) -> A,
    f1: impl FnOnce(&mut MemoryChannel) -> B + Send,
) -> (A, B)
where
    B: Send,
{
    let (mut c0, mut c1) = pair();
    std::thread::scope(|s| {
        let h = s.spawn(move || f1(&mut c1));
        let a = f0(&mut c0);
        (a, h.join().expect("P1 thread panicked"))
    })
}
