//! The generation loop shared by every variant: one prefill step over the prompt, then
//! one decode step per new token through the implementation's KV cache.
//!
//! **Fixed-length generation.** The number of decode steps a private session runs is
//! visible to the server party (each is a round of messages), and where generation ends
//! is the length of the answer. So by default a session runs its whole budget: after an
//! end-of-sequence token it keeps running dummy decode steps, feeding the end token
//! again and discarding the logits, until `max_new` forward passes are done
//! ([`StopPolicy::FullBudget`]); the dealer planned for exactly that many. Only the
//! client sees which steps were dummies. [`StopPolicy::AtEos`] stops at the end token
//! and reveals the answer's length to the server.

use super::ops::{Logits, ModelOps, Rows};
use super::qwen2::forward;
use super::sampling::Sampler;
use shardlm_configs::ModelConfig;
use std::time::{Duration, Instant};

/// What to do when an end-of-sequence token is sampled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopPolicy {
    /// Keep running dummy decode steps until the budget is spent, so that traffic does
    /// not reveal the output length (the default for private variants).
    FullBudget,
    /// Stop at the end token (the plaintext engine; private variants with
    /// `--stop-at-eos`, which reveals the output length to the server).
    AtEos,
    /// Ignore end tokens: generate exactly the budget as real tokens (benchmarks).
    Never,
}

/// What a generation produced and how long each phase took.
#[derive(Clone, Debug, Default)]
pub struct Generation {
    /// New tokens (the stopping token included if one was hit; never the dummy steps').
    pub tokens: Vec<u32>,
    /// Logits of the last prompt position.
    pub prefill_logits: Option<Logits>,
    /// Time of the prefill step.
    pub prefill: Duration,
    /// Time of each real decode step.
    pub decode: Vec<Duration>,
    /// Time of each dummy decode step after the end token ([`StopPolicy::FullBudget`]).
    pub dummy: Vec<Duration>,
    /// Whether an end-of-sequence token ended the answer.
    pub stopped_at_eos: bool,
}

impl Generation {
    /// Decode throughput in tokens per second (real decode steps only).
    pub fn decode_tokens_per_second(&self) -> f64 {
        let t: f64 = self.decode.iter().map(Duration::as_secs_f64).sum();
        if t > 0.0 {
            self.decode.len() as f64 / t
        } else {
            0.0
        }
    }

    /// Forward passes run: the prefill, real and dummy decode steps.
    pub fn forward_passes(&self) -> usize {
        usize::from(self.prefill_logits.is_some()) + self.decode.len() + self.dummy.len()
    }
}

/// Errors of a generation: the implementation's, or logits missing on a party that
/// should have them.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError<E> {
    /// The implementation failed.
    #[error(transparent)]
    Ops(E),
    /// The implementation revealed no logits.
    #[error("this party does not receive logits, so it cannot sample")]
    NoLogits,
    /// Empty prompt.
    #[error("the prompt is empty: give at least one token")]
    EmptyPrompt,
}

/// Generates up to `max_new` tokens after `prompt` with `step` (one forward pass:
/// tokens, start position, rows; see [`steps_of`] for a [`ModelOps`]), calling
/// `on_token` as each real token arrives (for streaming). `stop` says what an end token
/// of `config.eos_token_ids` does.
pub fn generate<E>(
    mut step: impl FnMut(&[u32], usize, Rows) -> Result<Option<Logits>, E>,
    config: &ModelConfig,
    prompt: &[u32],
    max_new: usize,
    sampler: &mut Sampler,
    stop: StopPolicy,
    mut on_token: impl FnMut(u32),
) -> Result<Generation, GenerateError<E>> {
    if prompt.is_empty() {
        return Err(GenerateError::EmptyPrompt);
    }
    let mut g = Generation::default();
    if max_new == 0 {
        return Ok(g);
    }
    let mut pass = |tokens: &[u32], pos: usize| -> Result<(Logits, Duration), GenerateError<E>> {
        let t = Instant::now();
        let logits =
            step(tokens, pos, Rows::Last).map_err(GenerateError::Ops)?.ok_or(GenerateError::NoLogits)?;
        Ok((logits, t.elapsed()))
    };
    let (logits, took) = pass(prompt, 0)?;
    g.prefill = took;
    let mut next = sampler.sample(logits.last());
    g.prefill_logits = Some(logits);
    let mut pos = prompt.len();
    loop {
        g.tokens.push(next);
        on_token(next);
        let eos = config.eos_token_ids.contains(&next);
        if eos && stop != StopPolicy::Never {
            g.stopped_at_eos = true;
            if stop == StopPolicy::FullBudget {
                // Dummy steps: same shapes and messages as real ones; logits discarded.
                while g.forward_passes() < max_new {
                    let (_, took) = pass(&[next], pos)?;
                    g.dummy.push(took);
                    pos += 1;
                }
            }
            break;
        }
        if g.tokens.len() >= max_new {
            break;
        }
        let (logits, took) = pass(&[next], pos)?;
        g.decode.push(took);
        pos += 1;
        next = sampler.sample(logits.last());
    }
    Ok(g)
}

/// One forward step of `ops` as [`generate`] wants it.
pub fn steps_of<'a, O: ModelOps>(
    ops: &'a mut O,
    config: &'a ModelConfig,
) -> impl FnMut(&[u32], usize, Rows) -> Result<Option<Logits>, O::Error> + 'a {
    move |tokens, start, rows| forward(ops, config, tokens, start, rows)
}
