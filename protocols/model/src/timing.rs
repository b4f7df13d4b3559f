//! A [`ModelOps`] adapter that times every operation of the wrapped implementation, for
//! per-phase breakdowns in benchmarks (embedding, norms, linear layers including their
//! network round trips, attention, ...). Adds two clock reads per operation.

use super::ops::{Linear, Logits, ModelOps, Norm, Rows};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Time per operation kind.
#[derive(Clone, Debug, Default)]
pub struct PhaseTimes {
    /// Accumulated durations by operation name (`embed`, `rms_norm`, `linear.qkv`, ...).
    pub by_op: BTreeMap<&'static str, Duration>,
}

impl PhaseTimes {
    /// Total time of one operation kind.
    pub fn get(&self, op: &str) -> Duration {
        self.by_op.get(op).copied().unwrap_or_default()
    }
}

/// Wraps an implementation and times it.
pub struct Timed<O> {
    /// The wrapped implementation.
    pub inner: O,
    /// What was measured so far.
    pub times: PhaseTimes,
}

impl<O> Timed<O> {
    /// Starts timing `inner`.
    pub fn new(inner: O) -> Self {
        Self { inner, times: PhaseTimes::default() }
    }

    fn record<T>(&mut self, op: &'static str, f: impl FnOnce(&mut O) -> T) -> T {
        let t = Instant::now();
        let r = f(&mut self.inner);
        *self.times.by_op.entry(op).or_default() += t.elapsed();
        r
    }
}

fn linear_name(l: Linear) -> &'static str {
    match l {
        Linear::Qkv(_) => "linear.qkv",
        Linear::O(_) => "linear.o",
        Linear::GateUp(_) => "linear.gate_up",
        Linear::Down(_) => "linear.down",
        Linear::LmHead => "linear.lm_head",
    }
}

impl<O: ModelOps> ModelOps for Timed<O> {
    type Act = O::Act;
    type Error = O::Error;

    fn embed(&mut self, tokens: &[u32]) -> Result<O::Act, O::Error> {
        self.record("embed", |o| o.embed(tokens))
    }
    fn rms_norm(&mut self, x: &O::Act, norm: Norm) -> Result<O::Act, O::Error> {
        self.record("rms_norm", |o| o.rms_norm(x, norm))
    }
    fn linear(&mut self, x: &O::Act, linear: Linear) -> Result<O::Act, O::Error> {
        self.record(linear_name(linear), |o| o.linear(x, linear))
    }
    fn rope(&mut self, qkv: &mut O::Act, start_pos: usize) -> Result<(), O::Error> {
        self.record("rope", |o| o.rope(qkv, start_pos))
    }
    fn attention(&mut self, qkv: &O::Act, layer: usize, start_pos: usize) -> Result<O::Act, O::Error> {
        self.record("attention", |o| o.attention(qkv, layer, start_pos))
    }
    fn swiglu(&mut self, gate_up: &O::Act) -> Result<O::Act, O::Error> {
        self.record("swiglu", |o| o.swiglu(gate_up))
    }
    fn add(&mut self, a: &O::Act, b: &O::Act) -> Result<O::Act, O::Error> {
        self.record("add", |o| o.add(a, b))
    }
    fn select_rows(&mut self, x: &O::Act, rows: Rows) -> Result<O::Act, O::Error> {
        self.record("select_rows", |o| o.select_rows(x, rows))
    }
    fn reveal_logits(&mut self, logits: &O::Act) -> Result<Option<Logits>, O::Error> {
        self.record("reveal_logits", |o| o.reveal_logits(logits))
    }
}
