//! What a session's declared shape allows a peer to send (DESIGN.md section 1: a peer
//! is untrusted input). The client declares the shape in the handshake
//! ([`SessionParams`]); the server admits it only if it fits the model, and both
//! parties then bound what they hold unread ([`recv_budget`]) and check every size the
//! peer announces against the shape before allocating (the v2 server's request rows,
//! v3's chunk headers, v3-mpc's step announcements).

use crate::plan::SessionShape;
use shardlm_configs::{ModelConfig, Variant};
use shardlm_model::{Linear, Rows};
use shardlm_transport::handshake::SessionParams;

/// The shape a client declares on the wire.
pub fn params_of(shape: SessionShape) -> SessionParams {
    SessionParams {
        prompt_tokens: u32::try_from(shape.prompt_tokens).unwrap_or(u32::MAX),
        max_new_tokens: u32::try_from(shape.max_new_tokens).unwrap_or(u32::MAX),
        all_rows: shape.rows == Rows::All,
    }
}

/// The shape a client declared, checked against the model: the error says which bound
/// it breaks.
pub fn shape_of(params: &SessionParams, config: &ModelConfig) -> Result<SessionShape, String> {
    let rows = if params.all_rows { Rows::All } else { Rows::Last };
    let shape = SessionShape::new(params.prompt_tokens as usize, params.max_new_tokens as usize, rows);
    shape.validate(config).map_err(|e| e.to_string())?;
    Ok(shape)
}

/// Rows of a linear unit's request in pass `pass` (0 is the prefill) of a session.
pub fn unit_rows(shape: SessionShape, linear: Linear, pass: usize) -> usize {
    match (pass, linear) {
        (0, Linear::LmHead) if shape.rows == Rows::All => shape.prompt_tokens,
        (_, Linear::LmHead) => 1,
        (0, _) => shape.prompt_tokens,
        _ => 1,
    }
}

/// Whether a session of `shape` allows forward pass `pass` (0 is the prefill); the error
/// names the declared budget.
pub fn check_pass(shape: SessionShape, pass: usize) -> Result<(), String> {
    match pass < shape.max_new_tokens {
        true => Ok(()),
        false => Err(format!(
            "a forward pass beyond the declared {} (the session's token budget)",
            shape.max_new_tokens
        )),
    }
}

/// Slack on top of the largest legitimate message: control and header messages.
const SLACK: usize = 1 << 20;

/// Payload bytes a party of `variant` may hold unread from its peer in a session of
/// `shape`: room for the largest message the protocol sends it, twice over (so the
/// next one can arrive while this one is being processed), plus slack. `server`: the
/// server party's side (what the client sends it).
pub fn recv_budget(variant: Variant, config: &ModelConfig, shape: SessionShape, server: bool) -> usize {
    let n = shape.prompt_tokens.max(1);
    let largest = match variant {
        Variant::V2 | Variant::V3 => Linear::all(config)
            .into_iter()
            .map(|l| {
                let (d_in, d_out) = l.dims(config);
                8 * unit_rows(shape, l, 0) * if server { d_in } else { d_out }
            })
            .max()
            .unwrap_or(0),
        // v3-cc: the client sends sealed token ids, the server answers sealed f32 logits
        // (after evidence of a few kilobytes, within the slack).
        Variant::V3Cc if server => 4 * n + 256,
        Variant::V3Cc => {
            let rows = if shape.rows == Rows::All { n } else { 1 };
            4 * rows * config.vocab_size + 64
        }
        // v3-mpc: an opening batches several components of one step's widest tensor
        // (SwiGLU's 2 x intermediate, qkv, the vocabulary for all-row logits, the
        // attention scores of all heads), never more than 8 words per element.
        _ => {
            let positions = shape.prompt_tokens + shape.max_new_tokens;
            let logits =
                if shape.rows == Rows::All { config.vocab_size } else { config.vocab_size.div_ceil(n) };
            let widest = [
                2 * config.intermediate_size,
                config.q_dim() + 2 * config.kv_dim(),
                logits,
                config.num_attention_heads * positions,
            ]
            .into_iter()
            .max()
            .unwrap_or(0);
            8 * 8 * n * widest
        }
    };
    largest.saturating_mul(2).saturating_add(SLACK)
}
