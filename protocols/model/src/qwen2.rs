//! The Qwen2 decoder forward pass, written once against [`ModelOps`].
//!
//! `x = embed(tokens)`; per layer: `x += o(attn(rope(qkv(norm(x)))))`,
//! `x += down(swiglu(gate_up(norm(x))))`; then `lm_head(norm(x))` on the requested rows.
//! A step is a prefill (all prompt tokens, `start_pos = 0`) or a decode step (one token
//! at `start_pos` = tokens seen so far); the KV cache lives in the implementation.

use super::ops::{Linear, Logits, ModelOps, Norm, Rows};
use shardlm_configs::ModelConfig;

/// Runs one forward step over `tokens` at positions `start_pos..`, returning the logits
/// of `rows` where this implementation may see them: [`decoder`], then [`head`].
pub fn forward<O: ModelOps>(
    ops: &mut O,
    config: &ModelConfig,
    tokens: &[u32],
    start_pos: usize,
    rows: Rows,
) -> Result<Option<Logits>, O::Error> {
    let x = decoder(ops, config, tokens, start_pos)?;
    head(ops, &x, rows)
}

/// The decoder layers of a step: the hidden state of `tokens` at positions
/// `start_pos..` after the last layer, with their keys and values appended to the
/// implementation's KV cache. A step that only fills the cache (v3's chunked prefill,
/// every chunk but the last) stops here.
pub fn decoder<O: ModelOps>(
    ops: &mut O,
    config: &ModelConfig,
    tokens: &[u32],
    start_pos: usize,
) -> Result<O::Act, O::Error> {
    let mut x = ops.embed(tokens)?;
    for layer in 0..config.num_hidden_layers {
        let h = ops.rms_norm(&x, Norm::Input(layer))?;
        let mut qkv = ops.linear(&h, Linear::Qkv(layer))?;
        ops.rope(&mut qkv, start_pos)?;
        let attn = ops.attention(&qkv, layer, start_pos)?;
        let o = ops.linear(&attn, Linear::O(layer))?;
        x = ops.add(&x, &o)?;

        let h = ops.rms_norm(&x, Norm::PostAttention(layer))?;
        let gate_up = ops.linear(&h, Linear::GateUp(layer))?;
        let act = ops.swiglu(&gate_up)?;
        let down = ops.linear(&act, Linear::Down(layer))?;
        x = ops.add(&x, &down)?;
    }
    Ok(x)
}

/// The final norm and the LM head on `rows` of the decoder's output `x`.
pub fn head<O: ModelOps>(ops: &mut O, x: &O::Act, rows: Rows) -> Result<Option<Logits>, O::Error> {
    let h = ops.rms_norm(x, Norm::Final)?;
    let h = ops.select_rows(&h, rows)?;
    let logits = ops.linear(&h, Linear::LmHead)?;
    ops.reveal_logits(&logits)
}
