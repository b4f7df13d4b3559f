//! Helpers shared by the integration tests: run P0 and P1 on two threads over the
//! in-memory channel pair.
#![allow(dead_code)]

use shardlm_transport::memory::{pair, MemoryChannel};

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
