//! `eval`: runs a variant over a cases file in the format of
//! `testdata/*/reference.json` (transformers' answers) and writes, per case, the last-position top-20
//! ids and logits, greedy tokens, and the run's traffic and time. When the cases file
//! holds reference answers, a comparison is printed and returned.

use super::PartyArgs;
use crate::client::{Client, LocalModel};
use anyhow::{bail, Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};
use shardlm_configs::Variant;
use shardlm_model::generate::StopPolicy;
use shardlm_model::sampling::argmax;
use shardlm_model::sampling::top_k;
use shardlm_model::{Logits, Rows};
use shardlm_variants::plan::SessionShape;
use shardlm_variants::session::ClientSession;
use std::path::Path;
use std::path::PathBuf;
use std::time::Instant;

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

/// Runs one case on a session: a step over all input tokens (`rows` decides which
/// positions get logits), then `greedy_n` greedy tokens through the KV cache. An end
/// token ends the greedy tokens; with [`StopPolicy::FullBudget`] the session still runs
/// its `greedy_n` forward passes (dummy steps), so the server cannot tell where it ended.
/// Returns the step's logits and the greedy tokens.
pub fn run_case(
    session: &mut dyn ClientSession,
    config: &shardlm_configs::ModelConfig,
    input_ids: &[u32],
    greedy_n: usize,
    rows: Rows,
    stop: StopPolicy,
) -> Result<(Logits, Vec<u32>)> {
    let logits = session.forward(input_ids, 0, rows)?;
    let mut greedy = Vec::with_capacity(greedy_n);
    let mut pos = input_ids.len();
    let mut next = argmax(logits.last());
    let mut passes = 1;
    while greedy.len() < greedy_n {
        greedy.push(next);
        if config.eos_token_ids.contains(&next) || greedy.len() == greedy_n {
            break;
        }
        let l = session.forward(&[next], pos, Rows::Last)?;
        passes += 1;
        pos += 1;
        next = argmax(l.last());
    }
    if stop == StopPolicy::FullBudget {
        while passes < greedy_n {
            session.forward(&[next], pos, Rows::Last)?;
            passes += 1;
            pos += 1;
        }
    }
    Ok((logits, greedy))
}

/// Flags of `eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Which variant computes: `local` is the plaintext engine.
    #[arg(long, default_value = "local")]
    pub variant: Variant,
    /// Hugging Face model directory.
    #[arg(long, env = "SHARDLM_MODEL_DIR")]
    pub model_dir: PathBuf,
    #[command(flatten)]
    pub(crate) party: PartyArgs,
    /// Cases file (`{"cases": [{"input_ids": [...]}, ...]}`).
    #[arg(long)]
    pub cases: PathBuf,
    /// Where to write the results JSON.
    #[arg(long)]
    pub out: PathBuf,
    /// Greedy tokens per case.
    #[arg(long, default_value_t = 16)]
    pub greedy: usize,
    /// Compute logits at every position (for all-position argmax agreement).
    #[arg(long)]
    pub all_positions: bool,
    /// Stop a private case's greedy tokens at the end token without running the rest of
    /// its budget (reveals the answer's length to the server party).
    #[arg(long)]
    pub stop_at_eos: bool,
}

/// Prints one case's agreement with its reference.
fn print_comparison(i: usize, c: &Comparison) {
    let verdict = |ok: bool| if ok { "equal" } else { "DIFFERS" };
    eprintln!(
        "case {i}: max |logit diff| {:.2e}, top-1 {}, greedy {}{}",
        c.max_abs_logit_diff,
        verdict(c.top1_equal),
        c.greedy_equal.map_or("n/a", verdict),
        c.argmax_agree.map(|(a, n)| format!(", argmax {a}/{n} positions")).unwrap_or_default()
    );
}

/// Runs `eval`.
pub fn run(a: EvalArgs) -> Result<()> {
    let model = LocalModel::load(&a.model_dir)?;
    let config = model.dir.config.clone();
    let cases = read_cases(&a.cases, config.vocab_size)?;
    let variant = a.party.variant(a.variant);
    let mut client = Client::new(variant, &a.party.options()?, &model)?;
    let stop =
        if variant == Variant::Local || a.stop_at_eos { StopPolicy::AtEos } else { StopPolicy::FullBudget };
    let rows = if a.all_positions { Rows::All } else { Rows::Last };
    let mut results = Vec::with_capacity(cases.len());
    let t_all = Instant::now();
    let mut notes = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        // `seconds` is the online run only: material is dealt (or opened) before it.
        let shape = SessionShape::new(case.input_ids.len(), a.greedy.max(1), rows);
        let mut session = client.open(&model, shape).with_context(|| format!("case {i}"))?;
        if i == 0 {
            notes = session.notes();
            for note in &notes {
                eprintln!("{variant}: {note}");
            }
        }
        let t = Instant::now();
        let (logits, greedy) = run_case(session.as_mut(), &config, &case.input_ids, a.greedy, rows, stop)
            .with_context(|| format!("case {i}"))?;
        let seconds = t.elapsed().as_secs_f64();
        let traffic = client.finish(session)?;
        let argmax_all =
            a.all_positions.then(|| (0..logits.rows()).map(|r| argmax(logits.row(r))).collect::<Vec<_>>());
        let (top20_ids, top20_logits) = top20(logits.last());
        let vs_reference = compare(case, logits.last(), argmax_all.as_deref(), &greedy);
        if let Some(c) = &vs_reference {
            print_comparison(i, c);
        }
        results.push(CaseResult {
            prompt: case.prompt.clone(),
            input_tokens: case.input_ids.len(),
            top20_ids,
            top20_logits,
            argmax_all_positions: argmax_all,
            greedy,
            bytes_sent: traffic.bytes_sent(),
            bytes_received: traffic.bytes_received(),
            rounds: traffic.rounds,
            seconds,
            vs_reference,
        });
    }
    let out = serde_json::json!({
        "model": config.name,
        "variant": variant.to_string(),
        "mode": client.describe(),
        "greedy_tokens": a.greedy,
        "attestation": notes,
        "seconds": t_all.elapsed().as_secs_f64(),
        "cases": results,
    });
    std::fs::write(&a.out, serde_json::to_string_pretty(&out)?)
        .with_context(|| format!("{}: cannot write results", a.out.display()))?;
    eprintln!("wrote {} cases to {}", results.len(), a.out.display());
    Ok(())
}
