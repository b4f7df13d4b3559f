//! The sweep's prompt: every variant and every point process the same prompt, of
//! exactly `--prompt-tokens` tokens of the model's own tokenizer.
//!
//! A fixed English sentence is repeated, its token ids are cut at N and decoded, and
//! the text is kept if it encodes back to N tokens (cuts near N are tried otherwise;
//! the report states the length that was used).

use crate::text::TextCodec;
use anyhow::{bail, Context, Result};
use shardlm_model::ModelDir;

/// The sweep's prompt for `model`: about `n` tokens (with a note when it is not
/// exactly `n`); returns it and its length.
pub(super) fn sweep_prompt(model: &ModelDir, n: usize) -> Result<(String, usize)> {
    let codec = TextCodec::load(&model.tokenizer)?;
    let (prompt, prompt_tokens) = prompt_of_length(&codec, n)?;
    if prompt_tokens != n {
        eprintln!("note: the closest prompt this tokenizer round-trips has {prompt_tokens} tokens, not {n}");
    }
    Ok((prompt, prompt_tokens))
}

/// A prompt of `n` tokens for `codec` (see the module docs); returns it and its length.
pub(crate) fn prompt_of_length(codec: &TextCodec, n: usize) -> Result<(String, usize)> {
    if n == 0 {
        bail!("--prompt-tokens must be at least 1");
    }
    const SENTENCE: &str =
        "The two parties compute the answer together while the server never learns the prompt. ";
    let mut text = SENTENCE.to_string();
    let ids = loop {
        let ids = codec.encode(&text)?;
        if ids.len() >= n + 8 {
            break ids;
        }
        if text.len() > 64 * (n + 8) + SENTENCE.len() {
            bail!("the tokenizer makes fewer than {n} tokens of a long text; use a smaller --prompt-tokens");
        }
        text.push_str(SENTENCE);
    };
    let mut best: Option<(String, usize)> = None;
    for delta in 0..8i64 {
        for k in [n as i64 - delta, n as i64 + delta] {
            if k < 1 || k as usize > ids.len() {
                continue;
            }
            let t = codec.decode(&ids[..k as usize])?;
            let m = codec.encode(&t)?.len();
            if m == n {
                return Ok((t, n));
            }
            let closer = match &best {
                None => true,
                Some((_, b)) => m.abs_diff(n) < b.abs_diff(n),
            };
            if closer {
                best = Some((t, m));
            }
        }
    }
    best.context("no prompt could be built")
}
