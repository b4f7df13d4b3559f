//! `eval`: runs a variant over a cases file in the format of
//! `../shared/oracle/*/reference.json` and writes, per case, the last-position top-20
//! ids and logits, greedy tokens, and the run's traffic and time. When the cases file
//! holds reference answers, a comparison is printed and returned.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use shardlm_model::sampling::top_k;
use std::path::Path;

/// One case of a cases file; reference fields are optional.
#[derive(Clone, Debug, Deserialize)]
pub struct Case {
    /// The prompt text, informational.
    #[serde(default)]
    pub prompt: Option<String>,
    /// The token ids to run.
    pub input_ids: Vec<u32>,
    /// Reference top-20 ids of the last position.
    #[serde(default)]
    pub top20_ids: Option<Vec<u32>>,
    /// Reference top-20 logits of the last position.
    #[serde(default)]
    pub top20_logits: Option<Vec<f32>>,
    /// Reference last-position logits, full vocabulary.
    #[serde(default)]
    pub last_logits: Option<Vec<f32>>,
    /// Reference argmax at every position.
    #[serde(default)]
    pub argmax_all_positions: Option<Vec<u32>>,
    /// Reference greedy tokens (any of the `greedy_N` keys).
    #[serde(default, alias = "greedy_8", alias = "greedy_16")]
    pub greedy: Option<Vec<u32>>,
}

/// A cases file.
#[derive(Clone, Debug, Deserialize)]
pub struct CasesFile {
    /// The cases.
    pub cases: Vec<Case>,
}

/// Reads and checks a cases file against a vocabulary size.
pub fn read_cases(path: &Path, vocab: usize) -> Result<Vec<Case>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read cases file", path.display()))?;
    let file: CasesFile = serde_json::from_str(&text).with_context(|| {
        format!("{}: not a cases file (expected {{\"cases\": [{{\"input_ids\": [...]}}]}})", path.display())
    })?;
    for (i, c) in file.cases.iter().enumerate() {
        if c.input_ids.is_empty() {
            bail!("{}: case {i} has no input_ids", path.display());
        }
        if let Some(t) = c.input_ids.iter().find(|&&t| t as usize >= vocab) {
            bail!("{}: case {i} has token id {t}, out of range for this model's vocabulary of {vocab}; were the cases made for another model?", path.display());
        }
    }
    Ok(file.cases)
}

/// What one case produced.
#[derive(Clone, Debug, Serialize)]
pub struct CaseResult {
    /// The prompt text, if the case had one.
    pub prompt: Option<String>,
    /// Number of input tokens.
    pub input_tokens: usize,
    /// Top-20 ids of the last position.
    pub top20_ids: Vec<u32>,
    /// Their logits.
    pub top20_logits: Vec<f32>,
    /// Argmax at every position, when all-position logits were computed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub argmax_all_positions: Option<Vec<u32>>,
    /// Greedy continuation.
    pub greedy: Vec<u32>,
    /// Payload bytes this party sent.
    pub bytes_sent: u64,
    /// Payload bytes this party received.
    pub bytes_received: u64,
    /// Communication rounds.
    pub rounds: u64,
    /// Wall time of the case.
    pub seconds: f64,
    /// Comparison with the reference in the cases file, when it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vs_reference: Option<Comparison>,
}

/// Agreement with a reference answer.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Comparison {
    /// Largest |logit difference| over the reference's top-20 ids (or the full
    /// vocabulary when the reference has `last_logits`).
    pub max_abs_logit_diff: f32,
    /// Same top-1 at the last position.
    pub top1_equal: bool,
    /// Positions whose argmax agrees, out of how many.
    pub argmax_agree: Option<(usize, usize)>,
    /// Greedy tokens identical (over the reference's length).
    pub greedy_equal: Option<bool>,
}

/// Top-20 of a logits row.
pub fn top20(row: &[f32]) -> (Vec<u32>, Vec<f32>) {
    let ids = top_k(row, 20);
    let logits = ids.iter().map(|&i| row[i as usize]).collect();
    (ids, logits)
}

/// Compares a result with the case's reference answers.
pub fn compare(
    case: &Case,
    last_row: &[f32],
    argmax_all: Option<&[u32]>,
    greedy: &[u32],
) -> Option<Comparison> {
    let ref_ids = case.top20_ids.as_ref()?;
    let mut c = Comparison::default();
    if let Some(full) = &case.last_logits {
        c.max_abs_logit_diff = full.iter().zip(last_row).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    } else if let Some(ref_logits) = &case.top20_logits {
        c.max_abs_logit_diff = ref_ids
            .iter()
            .zip(ref_logits)
            .map(|(&i, &l)| (last_row.get(i as usize).copied().unwrap_or(f32::NAN) - l).abs())
            .fold(0.0, f32::max);
    }
    c.top1_equal = ref_ids.first().copied() == Some(shardlm_model::sampling::argmax(last_row));
    if let (Some(r), Some(a)) = (&case.argmax_all_positions, argmax_all) {
        c.argmax_agree = Some((r.iter().zip(a).filter(|(x, y)| x == y).count(), r.len()));
    }
    if let Some(r) = &case.greedy {
        c.greedy_equal = Some(greedy.len() >= r.len() && greedy[..r.len()] == r[..]);
    }
    Some(c)
}

/// Runs one case on any implementation of the operations trait: a step over all input
/// tokens (`rows` decides which positions get logits), then `greedy_n` greedy tokens
/// through the KV cache (stopping at end-of-sequence tokens as the config says).
/// Returns the step's logits and the greedy tokens.
pub fn run_case<O>(
    ops: &mut O,
    config: &shardlm_configs::ModelConfig,
    input_ids: &[u32],
    greedy_n: usize,
    rows: shardlm_model::Rows,
) -> Result<(shardlm_model::Logits, Vec<u32>)>
where
    O: shardlm_model::ModelOps,
    O::Error: std::error::Error + Send + Sync + 'static,
{
    use shardlm_model::{qwen2::forward, sampling::argmax, Rows};
    let logits = forward(ops, config, input_ids, 0, rows)?.context("this party received no logits")?;
    let mut greedy = Vec::with_capacity(greedy_n);
    let mut pos = input_ids.len();
    let mut next = argmax(logits.last());
    while greedy.len() < greedy_n {
        greedy.push(next);
        if config.eos_token_ids.contains(&next) || greedy.len() == greedy_n {
            break;
        }
        let l = forward(ops, config, &[next], pos, Rows::Last)?.context("this party received no logits")?;
        pos += 1;
        next = argmax(l.last());
    }
    Ok((logits, greedy))
}
