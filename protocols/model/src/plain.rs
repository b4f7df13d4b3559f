//! The plaintext reference engine: [`ModelOps`] on `f32` tensors with a KV cache.
//! Every private variant is measured against it; it is measured against transformers.

use super::kernels::{self, LayerCache, Rope, Tensor};
use super::ops::{Linear, ModelOps, Norm, Rows};
use super::weights::Weights;
use shardlm_configs::ModelConfig;
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

/// Everything of a forward pass that is computed in the clear, except the linear layers:
/// embeddings, RMSNorm, RoPE, attention with the KV cache, SwiGLU, residuals. Shared by
/// the reference engine and by the v2/v3 client (which differs only in how it gets
/// `x W^T`).
pub struct ClearState {
    weights: Arc<Weights>,
    rope: Rope,
    cache: Vec<LayerCache>,
}

impl ClearState {
    /// Fresh state for one sequence.
    pub fn new(weights: Arc<Weights>) -> Self {
        let rope = Rope::new(&weights.config);
        let cache = vec![LayerCache::default(); weights.config.num_hidden_layers];
        Self { weights, rope, cache }
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

    /// Embedding rows of `tokens`.
    pub fn embed(&self, tokens: &[u32]) -> Result<Tensor, EngineError> {
        self.check_tokens(tokens)?;
        let h = self.weights.config.hidden_size;
        let mut data = Vec::with_capacity(tokens.len() * h);
        for &t in tokens {
            data.extend_from_slice(&self.weights.embed[t as usize * h..(t as usize + 1) * h]);
        }
        Ok(Tensor::new(tokens.len(), h, data))
    }

    /// RMSNorm with a gain of the model.
    pub fn rms_norm(&self, x: &Tensor, norm: Norm) -> Tensor {
        let w = &self.weights;
        kernels::rms_norm(x, w.norm_gain(norm), w.config.rms_norm_eps)
    }

    /// Adds a unit's bias (if it has one) to `x W^T`.
    pub fn add_bias(&self, out: &mut Tensor, linear: Linear) {
        if let Some(b) = self.weights.linear(linear).bias {
            for row in out.data.chunks_mut(out.cols) {
                row.iter_mut().zip(b).for_each(|(o, b)| *o += b);
            }
        }
    }

    /// RoPE on the q and k parts of a qkv activation.
    pub fn rope(&self, qkv: &mut Tensor, start_pos: usize) {
        let c = &self.weights.config;
        self.rope.apply(qkv, 0, c.num_attention_heads, start_pos);
        self.rope.apply(qkv, c.q_dim(), c.num_key_value_heads, start_pos);
    }

    /// Causal attention of a layer through the KV cache.
    pub fn attention(&mut self, qkv: &Tensor, layer: usize, start_pos: usize) -> Result<Tensor, EngineError> {
        attend(&self.weights.config, qkv, &mut self.cache[layer], start_pos)
    }

    /// The rows that get logits.
    pub fn select_rows(&self, x: &Tensor, rows: Rows) -> Tensor {
        match rows {
            Rows::All => x.clone(),
            Rows::Last => Tensor::new(1, x.cols, x.row(x.rows.saturating_sub(1)).to_vec()),
        }
    }
}

/// Causal attention through one layer's cache, which must hold exactly `start_pos`
/// positions, within the model's context length: the checks of
/// [`ClearState::attention`], for callers that keep their own caches (v3's chunks).
pub fn attend(
    config: &ModelConfig,
    qkv: &Tensor,
    cache: &mut LayerCache,
    start_pos: usize,
) -> Result<Tensor, EngineError> {
    let cached = cache.k.len() / config.kv_dim().max(1);
    if cached != start_pos {
        return Err(EngineError::CacheMismatch { cached, start_pos });
    }
    if start_pos + qkv.rows > config.max_position_embeddings {
        return Err(EngineError::TooLong { len: start_pos + qkv.rows, max: config.max_position_embeddings });
    }
    Ok(kernels::attention(config, qkv, cache, start_pos))
}

/// The plaintext engine for one sequence.
pub struct PlainEngine {
    clear: ClearState,
    backend: Arc<dyn Backend>,
}

impl PlainEngine {
    /// An engine over loaded weights.
    pub fn new(weights: Arc<Weights>, backend: Arc<dyn Backend>) -> Self {
        Self { clear: ClearState::new(weights), backend }
    }

    /// The weights.
    pub fn weights(&self) -> &Arc<Weights> {
        self.clear.weights()
    }

    /// Forgets the cached sequence.
    pub fn reset(&mut self) {
        self.clear.reset()
    }

    /// Positions currently cached.
    pub fn cached_positions(&self) -> usize {
        self.clear.cached_positions()
    }

    /// Checks that `tokens` are valid inputs for this model.
    pub fn check_tokens(&self, tokens: &[u32]) -> Result<(), EngineError> {
        self.clear.check_tokens(tokens)
    }
}

/// Delegates the clear-text operations of [`ModelOps`] to a [`ClearState`] field; the
/// implementor writes `linear` (the only operation variants do differently).
#[macro_export]
macro_rules! delegate_clear_ops {
    ($field:ident, $err:ty) => {
        $crate::delegate_stateless_clear_ops!($field, $err);
        #[allow(clippy::needless_question_mark)]
        fn attention(
            &mut self,
            qkv: &$crate::kernels::Tensor,
            layer: usize,
            start_pos: usize,
        ) -> Result<$crate::kernels::Tensor, $err> {
            Ok(self.$field.attention(qkv, layer, start_pos)?)
        }
    };
}

/// [`delegate_clear_ops`] without `attention`: for an implementor whose field is a
/// shared `&ClearState` and that keeps the KV cache itself (v3's chunks).
#[macro_export]
macro_rules! delegate_stateless_clear_ops {
    ($field:ident, $err:ty) => {
        // `?` converts the engine's error into the implementor's.
        #[allow(clippy::needless_question_mark)]
        fn embed(&mut self, tokens: &[u32]) -> Result<$crate::kernels::Tensor, $err> {
            Ok(self.$field.embed(tokens)?)
        }
        fn rms_norm(
            &mut self,
            x: &$crate::kernels::Tensor,
            norm: $crate::Norm,
        ) -> Result<$crate::kernels::Tensor, $err> {
            Ok(self.$field.rms_norm(x, norm))
        }
        fn rope(&mut self, qkv: &mut $crate::kernels::Tensor, start_pos: usize) -> Result<(), $err> {
            self.$field.rope(qkv, start_pos);
            Ok(())
        }
        fn swiglu(&mut self, gate_up: &$crate::kernels::Tensor) -> Result<$crate::kernels::Tensor, $err> {
            Ok($crate::kernels::swiglu(gate_up))
        }
        fn add(
            &mut self,
            a: &$crate::kernels::Tensor,
            b: &$crate::kernels::Tensor,
        ) -> Result<$crate::kernels::Tensor, $err> {
            Ok($crate::kernels::add(a, b))
        }
        fn select_rows(
            &mut self,
            x: &$crate::kernels::Tensor,
            rows: $crate::Rows,
        ) -> Result<$crate::kernels::Tensor, $err> {
            Ok(self.$field.select_rows(x, rows))
        }
        fn reveal_logits(
            &mut self,
            logits: &$crate::kernels::Tensor,
        ) -> Result<Option<$crate::Logits>, $err> {
            Ok(Some($crate::Logits { vocab: logits.cols, data: logits.data.clone() }))
        }
    };
}

impl ModelOps for PlainEngine {
    type Act = Tensor;
    type Error = EngineError;

    crate::delegate_clear_ops!(clear, EngineError);

    fn linear(&mut self, x: &Tensor, linear: Linear) -> Result<Tensor, EngineError> {
        let v = self.clear.weights().linear(linear);
        let mut out = Tensor::zeros(x.rows, v.d_out);
        self.backend.matmul_f32(&x.data, v.weight, x.rows, v.d_in, v.d_out, &mut out.data)?;
        self.clear.add_bias(&mut out, linear);
        Ok(out)
    }
}
