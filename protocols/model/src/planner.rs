//! The planner: a [`ModelOps`] implementation that computes nothing and records every
//! operation a forward pass performs, with its shape. The dealer asks the planner what a
//! session consumes and maps each recorded operation to the material of a variant, so
//! material counts and the online forward pass can never disagree (DESIGN.md section 4).

use super::ops::{Linear, Logits, ModelOps, Norm, Rows};
use super::qwen2::forward;
use shardlm_configs::ModelConfig;
use std::convert::Infallible;

/// An activation's shape: positions x features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Positions.
    pub rows: usize,
    /// Features.
    pub cols: usize,
}

/// One operation of a forward pass, with everything that sizes its material.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PlannedOp {
    /// Embedding lookup of `rows` tokens.
    Embed {
        /// Positions.
        rows: usize,
    },
    /// RMSNorm of `rows x cols`.
    RmsNorm {
        /// Which gain.
        norm: Norm,
        /// Positions.
        rows: usize,
        /// Features.
        cols: usize,
    },
    /// A linear unit on `rows` positions.
    Linear {
        /// Which unit.
        linear: Linear,
        /// Positions.
        rows: usize,
        /// Input features.
        d_in: usize,
        /// Output features.
        d_out: usize,
    },
    /// RoPE on a qkv activation.
    Rope {
        /// Positions.
        rows: usize,
        /// First position.
        start_pos: usize,
    },
    /// Causal attention of `rows` new positions over `start_pos + rows` keys.
    Attention {
        /// Layer.
        layer: usize,
        /// New positions.
        rows: usize,
        /// Positions already cached.
        start_pos: usize,
    },
    /// SwiGLU on `rows x cols` outputs.
    Swiglu {
        /// Positions.
        rows: usize,
        /// Output features (intermediate size).
        cols: usize,
    },
    /// Residual add.
    Add {
        /// Positions.
        rows: usize,
        /// Features.
        cols: usize,
    },
    /// Row selection before the head.
    SelectRows {
        /// Rows kept.
        rows: usize,
    },
    /// Logits revealed to the client.
    RevealLogits {
        /// Rows.
        rows: usize,
        /// Vocabulary.
        vocab: usize,
    },
}

/// Records the operations of forward passes.
pub struct Planner {
    config: ModelConfig,
    /// What was recorded, in order.
    pub ops: Vec<PlannedOp>,
}

impl Planner {
    /// A planner for a model shape.
    pub fn new(config: &ModelConfig) -> Self {
        Self { config: config.clone(), ops: Vec::new() }
    }

    /// The operations of a whole generation session: a prefill over `prompt_tokens`,
    /// then `max_new_tokens - 1` single-token decode steps (the last sampled token is
    /// never fed back), with logits for `rows` in the prefill.
    pub fn session(
        config: &ModelConfig,
        prompt_tokens: usize,
        max_new_tokens: usize,
        rows: Rows,
    ) -> Vec<PlannedOp> {
        let mut p = Planner::new(config);
        let prompt = vec![0u32; prompt_tokens];
        let Ok(_) = forward(&mut p, config, &prompt, 0, rows);
        for i in 1..max_new_tokens {
            let Ok(_) = forward(&mut p, config, &[0], prompt_tokens + i - 1, Rows::Last);
        }
        p.ops
    }
}

impl ModelOps for Planner {
    type Act = Shape;
    type Error = Infallible;

    fn embed(&mut self, tokens: &[u32]) -> Result<Shape, Infallible> {
        self.ops.push(PlannedOp::Embed { rows: tokens.len() });
        Ok(Shape { rows: tokens.len(), cols: self.config.hidden_size })
    }
    fn rms_norm(&mut self, x: &Shape, norm: Norm) -> Result<Shape, Infallible> {
        self.ops.push(PlannedOp::RmsNorm { norm, rows: x.rows, cols: x.cols });
        Ok(*x)
    }
    fn linear(&mut self, x: &Shape, linear: Linear) -> Result<Shape, Infallible> {
        let (d_in, d_out) = linear.dims(&self.config);
        self.ops.push(PlannedOp::Linear { linear, rows: x.rows, d_in, d_out });
        Ok(Shape { rows: x.rows, cols: d_out })
    }
    fn rope(&mut self, qkv: &mut Shape, start_pos: usize) -> Result<(), Infallible> {
        self.ops.push(PlannedOp::Rope { rows: qkv.rows, start_pos });
        Ok(())
    }
    fn attention(&mut self, qkv: &Shape, layer: usize, start_pos: usize) -> Result<Shape, Infallible> {
        self.ops.push(PlannedOp::Attention { layer, rows: qkv.rows, start_pos });
        Ok(Shape { rows: qkv.rows, cols: self.config.q_dim() })
    }
    fn swiglu(&mut self, gate_up: &Shape) -> Result<Shape, Infallible> {
        let cols = gate_up.cols / 2;
        self.ops.push(PlannedOp::Swiglu { rows: gate_up.rows, cols });
        Ok(Shape { rows: gate_up.rows, cols })
    }
    fn add(&mut self, a: &Shape, _b: &Shape) -> Result<Shape, Infallible> {
        self.ops.push(PlannedOp::Add { rows: a.rows, cols: a.cols });
        Ok(*a)
    }
    fn select_rows(&mut self, x: &Shape, rows: Rows) -> Result<Shape, Infallible> {
        let r = match rows {
            Rows::All => x.rows,
            Rows::Last => 1,
        };
        self.ops.push(PlannedOp::SelectRows { rows: r });
        Ok(Shape { rows: r, cols: x.cols })
    }
    fn reveal_logits(&mut self, logits: &Shape) -> Result<Option<Logits>, Infallible> {
        self.ops.push(PlannedOp::RevealLogits { rows: logits.rows, vocab: logits.cols });
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_plan_counts_linear_requests() {
        let c = ModelConfig::preset("tiny").unwrap();
        let ops = Planner::session(&c, 10, 4, Rows::Last);
        let linears: Vec<_> = ops.iter().filter(|o| matches!(o, PlannedOp::Linear { .. })).collect();
        // 4 forward passes (prefill + 3 decode steps) x (4 per layer x 2 layers + head).
        assert_eq!(linears.len(), 4 * (4 * 2 + 1));
        assert_eq!(
            linears[0],
            &PlannedOp::Linear { linear: Linear::Qkv(0), rows: 10, d_in: 64, d_out: 64 + 2 * 32 }
        );
        assert!(matches!(linears[8], PlannedOp::Linear { linear: Linear::LmHead, rows: 1, .. }));
        assert!(matches!(linears[9], PlannedOp::Linear { linear: Linear::Qkv(0), rows: 1, .. }));
        let last_attn = ops.iter().rev().find(|o| matches!(o, PlannedOp::Attention { .. })).unwrap();
        assert_eq!(last_attn, &PlannedOp::Attention { layer: 1, rows: 1, start_pos: 12 });
    }
}
