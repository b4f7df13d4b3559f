//! Plaintext model weights in the layout every variant uses: row-major `f32`, one row
//! per output feature, q/k/v fused into one matrix and gate/up into another, so that a
//! [`Linear`] names exactly one request of the client-assisted protocol.

use super::ops::{Linear, Norm};
use shardlm_configs::ModelConfig;

/// One decoder layer's weights.
#[derive(Clone, Debug)]
pub struct LayerWeights {
    /// RMSNorm gain before attention, `hidden`.
    pub input_norm: Vec<f32>,
    /// `[q; k; v]` projections, `(q_dim + 2 kv_dim) x hidden`.
    pub qkv_w: Vec<f32>,
    /// `[q; k; v]` biases.
    pub qkv_b: Vec<f32>,
    /// Output projection, `hidden x q_dim`.
    pub o_w: Vec<f32>,
    /// RMSNorm gain before the MLP, `hidden`.
    pub post_norm: Vec<f32>,
    /// `[gate; up]`, `2 intermediate x hidden`.
    pub gate_up_w: Vec<f32>,
    /// Down projection, `hidden x intermediate`.
    pub down_w: Vec<f32>,
}

/// A whole Qwen2 model's weights.
#[derive(Clone, Debug)]
pub struct Weights {
    /// The shape.
    pub config: ModelConfig,
    /// Token embeddings, `vocab x hidden`.
    pub embed: Vec<f32>,
    /// Decoder layers.
    pub layers: Vec<LayerWeights>,
    /// Final RMSNorm gain.
    pub final_norm: Vec<f32>,
    /// Untied output head, `vocab x hidden`; `None` when tied to the embeddings.
    pub lm_head: Option<Vec<f32>>,
}

/// A linear layer's operands: weight (`d_out x d_in`), optional bias, and dimensions.
#[derive(Clone, Copy, Debug)]
pub struct LinearView<'a> {
    /// Row-major `d_out x d_in`.
    pub weight: &'a [f32],
    /// `d_out` biases, if the layer has them.
    pub bias: Option<&'a [f32]>,
    /// Input features.
    pub d_in: usize,
    /// Output features.
    pub d_out: usize,
}

impl Weights {
    /// Assembles and checks sizes against the config.
    pub fn new(
        config: ModelConfig,
        embed: Vec<f32>,
        layers: Vec<LayerWeights>,
        final_norm: Vec<f32>,
        lm_head: Option<Vec<f32>>,
    ) -> Result<Self, String> {
        let w = Self { config, embed, layers, final_norm, lm_head };
        for lin in Linear::all(&w.config) {
            let v = w.linear(lin);
            if v.weight.len() != v.d_in * v.d_out {
                return Err(format!(
                    "{lin:?} has {} weights, expected {}x{}",
                    v.weight.len(),
                    v.d_out,
                    v.d_in
                ));
            }
        }
        if w.layers.len() != w.config.num_hidden_layers {
            return Err(format!("{} layers, config says {}", w.layers.len(), w.config.num_hidden_layers));
        }
        Ok(w)
    }

    /// The gain of one RMSNorm.
    pub fn norm_gain(&self, norm: Norm) -> &[f32] {
        match norm {
            Norm::Input(l) => &self.layers[l].input_norm,
            Norm::PostAttention(l) => &self.layers[l].post_norm,
            Norm::Final => &self.final_norm,
        }
    }

    /// The operands of one linear layer.
    pub fn linear(&self, lin: Linear) -> LinearView<'_> {
        let c = &self.config;
        let h = c.hidden_size;
        match lin {
            Linear::Qkv(l) => LinearView {
                weight: &self.layers[l].qkv_w,
                bias: Some(&self.layers[l].qkv_b),
                d_in: h,
                d_out: c.q_dim() + 2 * c.kv_dim(),
            },
            Linear::O(l) => LinearView { weight: &self.layers[l].o_w, bias: None, d_in: c.q_dim(), d_out: h },
            Linear::GateUp(l) => LinearView {
                weight: &self.layers[l].gate_up_w,
                bias: None,
                d_in: h,
                d_out: 2 * c.intermediate_size,
            },
            Linear::Down(l) => {
                LinearView { weight: &self.layers[l].down_w, bias: None, d_in: c.intermediate_size, d_out: h }
            }
            Linear::LmHead => LinearView {
                weight: self.lm_head.as_deref().unwrap_or(&self.embed),
                bias: None,
                d_in: h,
                d_out: c.vocab_size,
            },
        }
    }
}
