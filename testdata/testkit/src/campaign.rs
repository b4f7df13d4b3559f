//! Seeded fuzz/property campaigns over a parser (issue 14): a short run in the default
//! suite, the long one with `SHARDLM_LONG_TESTS=1`.
//!
//! A campaign runs `case(i)` for `i` in `0..n` on every core (each case derives its
//! inputs from its index alone, so a failing case replays from its number), catches
//! panics with [`std::panic::catch_unwind`] so that all of them are counted rather than
//! the first, groups rejections by kind, and prints one summary line. It fails (panics)
//! at the end if any case panicked or broke the test's oracle.
//!
//! [`PeakAlloc`] is a global allocator that records the largest single allocation each
//! thread asked for since [`reset_peak`]: a test that installs it can check that no
//! allocation is sized by an untrusted length beyond a stated bound.
//!
//! This file depends on `std` only, so that crates below `shardlm-testkit` in the
//! dependency graph (configs, transport) can include it with `#[path]`.
#![allow(dead_code)]
#![allow(unsafe_code)] // the GlobalAlloc impl only forwards to `System`

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, Once};
use std::time::Instant;

/// Whether the long campaigns are asked for (`SHARDLM_LONG_TESTS=1`).
pub fn long() -> bool {
    std::env::var("SHARDLM_LONG_TESTS").is_ok_and(|v| v == "1")
}

/// `short` in the default suite, `long` with `SHARDLM_LONG_TESTS=1`.
pub fn cases(short: u64, long_count: u64) -> u64 {
    if long() {
        long_count
    } else {
        short
    }
}

/// How one case ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The parser accepted the input (and the oracle agreed with what it returned).
    Accepted,
    /// The parser refused the input with a typed error of this kind.
    Rejected(String),
}

/// A case's result: `Err` is an oracle violation (a wrong answer, an untyped error, an
/// allocation beyond the bound), reported with the case number.
pub type CaseResult = Result<Outcome, String>;

/// A rejection kind from an error message: digit runs become `N` and the text is cut,
/// so that messages differing only in numbers group together.
pub fn kind(message: &str) -> String {
    let mut out = String::new();
    let mut in_digits = false;
    for ch in message.chars() {
        if ch.is_ascii_digit() {
            if !in_digits {
                out.push('N');
            }
            in_digits = true;
        } else {
            in_digits = false;
            out.push(ch);
        }
        if out.len() >= 72 {
            out.push_str("...");
            break;
        }
    }
    out
}

#[derive(Default)]
struct Tally {
    cases: u64,
    accepted: u64,
    rejected: BTreeMap<String, u64>,
    panics: u64,
    violations: u64,
    first_failures: Vec<String>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.cases += other.cases;
        self.accepted += other.accepted;
        for (k, n) in other.rejected {
            *self.rejected.entry(k).or_default() += n;
        }
        self.panics += other.panics;
        self.violations += other.violations;
        self.first_failures.extend(other.first_failures);
        self.first_failures.truncate(10);
    }
}

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<String> = const { RefCell::new(String::new()) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

/// Installs (once) a panic hook that, on a campaign thread, records the message
/// instead of printing it; other threads keep the default report.
fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(|q| q.get()) {
                let msg = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "<non-string panic>".into());
                let at = info.location().map(|l| format!(" at {l}")).unwrap_or_default();
                LAST_PANIC.with(|p| *p.borrow_mut() = format!("{msg}{at}"));
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs campaign `name` over `n` cases on all cores, prints its summary line, and
/// panics if any case panicked or returned a violation.
pub fn run(name: &str, n: u64, case: impl Fn(u64) -> CaseResult + Sync) {
    install_hook();
    let threads = std::thread::available_parallelism().map(|t| t.get()).unwrap_or(1) as u64;
    let start = Instant::now();
    let total = Mutex::new(Tally::default());
    std::thread::scope(|s| {
        for t in 0..threads {
            let case = &case;
            let total = &total;
            s.spawn(move || {
                QUIET.with(|q| q.set(true));
                let mut tally = Tally::default();
                let mut i = t;
                while i < n {
                    tally.cases += 1;
                    match catch_unwind(AssertUnwindSafe(|| case(i))) {
                        Ok(Ok(Outcome::Accepted)) => tally.accepted += 1,
                        Ok(Ok(Outcome::Rejected(k))) => *tally.rejected.entry(k).or_default() += 1,
                        Ok(Err(v)) => {
                            tally.violations += 1;
                            if tally.first_failures.len() < 10 {
                                tally.first_failures.push(format!("case {i}: violation: {v}"));
                            }
                        }
                        Err(_) => {
                            tally.panics += 1;
                            if tally.first_failures.len() < 10 {
                                let msg = LAST_PANIC.with(|p| p.borrow().clone());
                                tally.first_failures.push(format!("case {i}: panic: {msg}"));
                            }
                        }
                    }
                    i += threads;
                }
                QUIET.with(|q| q.set(false));
                total.lock().expect("tally lock").merge(tally);
            });
        }
    });
    let t = total.into_inner().expect("tally lock");
    let rejected: u64 = t.rejected.values().sum();
    let kinds: Vec<String> = t.rejected.iter().map(|(k, n)| format!("{n}x {k:?}")).collect();
    println!(
        "campaign {name}: cases={} accepted={} rejected={} panics={} violations={} threads={threads} time={:.1}s long={} kinds=[{}]",
        t.cases,
        t.accepted,
        rejected,
        t.panics,
        t.violations,
        start.elapsed().as_secs_f64(),
        long(),
        kinds.join("; ")
    );
    assert!(
        t.panics == 0 && t.violations == 0,
        "campaign {name}: {} panics, {} violations; first:\n{}",
        t.panics,
        t.violations,
        t.first_failures.join("\n")
    );
}

/// A global allocator that forwards to [`System`] and records, per thread, the largest
/// single allocation requested since [`reset_peak`]. Install it in a test binary with
/// `#[global_allocator] static A: PeakAlloc = PeakAlloc;`.
pub struct PeakAlloc;

fn note(size: usize) {
    let _ = PEAK.try_with(|p| {
        if size > p.get() {
            p.set(size)
        }
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged;
// the bookkeeping touches only a const-initialized thread-local `Cell` (no allocation,
// no destructor), so it cannot recurse into the allocator.
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded contract.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: forwarded contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Starts a new measurement of this thread's largest allocation.
pub fn reset_peak() {
    let _ = PEAK.try_with(|p| p.set(0));
}

/// The largest single allocation this thread requested since [`reset_peak`] (0 when
/// [`PeakAlloc`] is not the global allocator).
pub fn peak() -> usize {
    PEAK.try_with(|p| p.get()).unwrap_or(0)
}
