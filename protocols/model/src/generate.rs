//! The generation loop shared by every variant: one prefill step over the prompt, then
//! one decode step per new token through the implementation's KV cache.

use super::ops::{Logits, ModelOps, Rows};
use super::qwen2::forward;
use super::sampling::Sampler;
use shardlm_configs::ModelConfig;
use std::time::{Duration, Instant};

/// What a generation produced and how long each phase took.
#[derive(Clone, Debug, Default)]
pub struct Generation {
    /// New tokens (the stopping token included if one was hit).
    pub tokens: Vec<u32>,
    /// Logits of the last prompt position.
    pub prefill_logits: Option<Logits>,
    /// Time of the prefill step.
    pub prefill: Duration,
    /// Time of each decode step.
    pub decode: Vec<Duration>,
    /// Whether an end-of-sequence token stopped generation.
    pub stopped_at_eos: bool,
}

impl Generation {
    /// Decode throughput in tokens per second (decode steps only).
    pub fn decode_tokens_per_second(&self) -> f64 {
        let t: f64 = self.decode.iter().map(Duration::as_secs_f64).sum();
        if t > 0.0 {
            self.decode.len() as f64 / t
        } else {
            0.0
        }
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

/// Generates up to `max_new` tokens after `prompt`, calling `on_token` as each arrives
/// (for streaming). Stops early at one of `config.eos_token_ids` unless `ignore_eos`.
pub fn generate<O: ModelOps>(
    ops: &mut O,
    config: &ModelConfig,
    prompt: &[u32],
    max_new: usize,
    sampler: &mut Sampler,
    ignore_eos: bool,
    mut on_token: impl FnMut(u32),
) -> Result<Generation, GenerateError<O::Error>> {
    if prompt.is_empty() {
        return Err(GenerateError::EmptyPrompt);
    }
    let mut g = Generation::default();
    if max_new == 0 {
        return Ok(g);
    }
    let t0 = Instant::now();
    let logits = forward(ops, config, prompt, 0, Rows::Last)
        .map_err(GenerateError::Ops)?
        .ok_or(GenerateError::NoLogits)?;
    g.prefill = t0.elapsed();
    let mut next = sampler.sample(logits.last());
    g.prefill_logits = Some(logits);
    let mut pos = prompt.len();
    loop {
        g.tokens.push(next);
        on_token(next);
        if !ignore_eos && config.eos_token_ids.contains(&next) {
            g.stopped_at_eos = true;
            break;
        }
        if g.tokens.len() >= max_new {
            break;
        }
        let t = Instant::now();
        let logits = forward(ops, config, &[next], pos, Rows::Last)
            .map_err(GenerateError::Ops)?
            .ok_or(GenerateError::NoLogits)?;
        g.decode.push(t.elapsed());
        pos += 1;
        next = sampler.sample(logits.last());
    }
    Ok(g)
}
