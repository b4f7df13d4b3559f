//! The plaintext reference engine: [`ModelOps`] on `f32` tensors with a KV cache.
//! Every private variant is measured against it; it is measured against transformers.

use super::kernels::{self, LayerCache, Rope, Tensor};
use super::ops::{Linear, Logits, ModelOps, Norm, Rows};
use super::weights::Weights;
use shardlm_gpu::Backend;
use std::sync::Arc;

/// Errors of the plaintext engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A token id is outside the vocabulary.
    #[error("token id {token} is out of range: the model's vocabulary has {vocab} entries")]
    TokenOutOfRange {
        /// The token.
        token: u32,
        /// The vocabulary size.
        vocab: usize,
    },
    /// The step does not continue the cached sequence.
    #[error("KV cache holds {cached} positions but the step starts at {start_pos}; call reset() for a new sequence")]
    CacheMismatch {
        /// Positions cached.
        cached: usize,
        /// Requested start.
        start_pos: usize,
    },
    /// The sequence would exceed the model's context.
    #[error("sequence of {len} positions exceeds the model's max_position_embeddings {max}")]
    TooLong {
        /// Requested length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A backend error.
    #[error(transparent)]
    Backend(#[from] shardlm_gpu::BackendError),
}

/// The plaintext engine for one sequence.
pub struct PlainEngine {
    weights: Arc<Weights>,
    backend: Arc<dyn Backend>,
    rope: Rope,
    cache: Vec<LayerCache>,
}

impl PlainEngine {
    /// An engine over loaded weights.
    pub fn new(weights: Arc<Weights>, backend: Arc<dyn Backend>) -> Self {
        let rope = Rope::new(&weights.config);
        let cache = vec![LayerCache::default(); weights.config.num_hidden_layers];
        Self { weights, backend, rope, cache }
    }

    /// The weights.
    pub fn weights(&self) -> &Arc<Weights> {
        &self.weights
    }

    /// Forgets the cached sequence.
    pub fn reset(&mut self) {
        self.cache.iter_mut().for_each(|c| *c = LayerCache::default());
    }

    /// Positions currently cached.
    pub fn cached_positions(&self) -> usize {
        self.cache.first().map_or(0, |c| c.k.len() / self.weights.config.kv_dim().max(1))
    }

    /// Checks that `tokens` are valid inputs for this model.
    pub fn check_tokens(&self, tokens: &[u32]) -> Result<(), EngineError> {
        let vocab = self.weights.config.vocab_size;
        match tokens.iter().find(|&&t| t as usize >= vocab) {
            Some(&token) => Err(EngineError::TokenOutOfRange { token, vocab }),
            None => Ok(()),
        }
    }
}

impl ModelOps for PlainEngine {
    type Act = Tensor;
    type Error = EngineError;

    fn embed(&mut self, tokens: &[u32]) -> Result<Tensor, EngineError> {
        self.check_tokens(tokens)?;
        let h = self.weights.config.hidden_size;
        let mut data = Vec::with_capacity(tokens.len() * h);
        for &t in tokens {
            data.extend_from_slice(&self.weights.embed[t as usize * h..(t as usize + 1) * h]);
        }
        Ok(Tensor::new(tokens.len(), h, data))
    }

    fn rms_norm(&mut self, x: &Tensor, norm: Norm) -> Result<Tensor, EngineError> {
        let w = &self.weights;
        let gain = match norm {
            Norm::Input(l) => &w.layers[l].input_norm,
            Norm::PostAttention(l) => &w.layers[l].post_norm,
            Norm::Final => &w.final_norm,
        };
        Ok(kernels::rms_norm(x, gain, w.config.rms_norm_eps))
    }

    fn linear(&mut self, x: &Tensor, linear: Linear) -> Result<Tensor, EngineError> {
        let v = self.weights.linear(linear);
        let mut out = Tensor::zeros(x.rows, v.d_out);
        self.backend.matmul_f32(&x.data, v.weight, x.rows, v.d_in, v.d_out, &mut out.data)?;
        if let Some(b) = v.bias {
            for row in out.data.chunks_mut(v.d_out) {
                row.iter_mut().zip(b).for_each(|(o, b)| *o += b);
            }
        }
        Ok(out)
    }

    fn rope(&mut self, qkv: &mut Tensor, start_pos: usize) -> Result<(), EngineError> {
        let c = &self.weights.config;
        self.rope.apply(qkv, 0, c.num_attention_heads, start_pos);
        self.rope.apply(qkv, c.q_dim(), c.num_key_value_heads, start_pos);
        Ok(())
    }

    fn attention(&mut self, qkv: &Tensor, layer: usize, start_pos: usize) -> Result<Tensor, EngineError> {
        let c = &self.weights.config;
        let cached = self.cache[layer].k.len() / c.kv_dim();
        if cached != start_pos {
            return Err(EngineError::CacheMismatch { cached, start_pos });
        }
        if start_pos + qkv.rows > c.max_position_embeddings {
            return Err(EngineError::TooLong { len: start_pos + qkv.rows, max: c.max_position_embeddings });
        }
        Ok(kernels::attention(c, qkv, &mut self.cache[layer], start_pos))
    }

    fn swiglu(&mut self, gate_up: &Tensor) -> Result<Tensor, EngineError> {
        Ok(kernels::swiglu(gate_up))
    }

    fn add(&mut self, a: &Tensor, b: &Tensor) -> Result<Tensor, EngineError> {
        Ok(kernels::add(a, b))
    }

    fn select_rows(&mut self, x: &Tensor, rows: Rows) -> Result<Tensor, EngineError> {
        Ok(match rows {
            Rows::All => x.clone(),
            Rows::Last => Tensor::new(1, x.cols, x.row(x.rows - 1).to_vec()),
        })
    }

    fn reveal_logits(&mut self, logits: &Tensor) -> Result<Option<Logits>, EngineError> {
        Ok(Some(Logits { vocab: logits.cols, data: logits.data.clone() }))
    }
}
