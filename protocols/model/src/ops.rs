//! The operations trait the forward pass is written against (DESIGN.md section 4).
//!
//! [`crate::qwen2::forward`] walks the layers and calls these operations; each
//! variant implements them over its own activation type ([`ModelOps::Act`]): plaintext
//! `f32` tensors for the reference engine, locally held plaintext plus masked requests
//! for the v2/v3 client, shares for v3-mpc/v3-ot, bare shapes for the planner that
//! counts dealer material. Nothing about a variant leaks into the forward pass.

use shardlm_configs::ModelConfig;

/// One request unit of a linear layer. Grouped projections are one unit because every
/// private variant sends them as one request (DESIGN.md section 3): q/k/v together,
/// gate/up together. Outputs of a group are concatenated along features.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Linear {
    /// `[q | k | v] = x [Wq; Wk; Wv]^T + [bq; bk; bv]` of a layer.
    Qkv(usize),
    /// Attention output projection of a layer.
    O(usize),
    /// `[gate | up] = x [Wg; Wu]^T` of a layer.
    GateUp(usize),
    /// MLP down projection of a layer.
    Down(usize),
    /// The output head (tied to the embeddings or not).
    LmHead,
}

impl Linear {
    /// Every linear unit of a model, in forward order.
    pub fn all(config: &ModelConfig) -> Vec<Linear> {
        let mut v = Vec::with_capacity(4 * config.num_hidden_layers + 1);
        for l in 0..config.num_hidden_layers {
            v.extend([Linear::Qkv(l), Linear::O(l), Linear::GateUp(l), Linear::Down(l)]);
        }
        v.push(Linear::LmHead);
        v
    }

    /// The unit's weight id in dealer material: its index in [`Linear::all`] order.
    pub fn weight_id(self, layers: usize) -> u32 {
        (match self {
            Linear::Qkv(l) => 4 * l,
            Linear::O(l) => 4 * l + 1,
            Linear::GateUp(l) => 4 * l + 2,
            Linear::Down(l) => 4 * l + 3,
            Linear::LmHead => 4 * layers,
        }) as u32
    }

    /// `(d_in, d_out)` of this unit.
    pub fn dims(self, c: &ModelConfig) -> (usize, usize) {
        match self {
            Linear::Qkv(_) => (c.hidden_size, c.q_dim() + 2 * c.kv_dim()),
            Linear::O(_) => (c.q_dim(), c.hidden_size),
            Linear::GateUp(_) => (c.hidden_size, 2 * c.intermediate_size),
            Linear::Down(_) => (c.intermediate_size, c.hidden_size),
            Linear::LmHead => (c.hidden_size, c.vocab_size),
        }
    }
}

/// Which RMSNorm gain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Norm {
    /// Before attention in a layer.
    Input(usize),
    /// Before the MLP in a layer.
    PostAttention(usize),
    /// After the last layer.
    Final,
}

/// Which positions get logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Rows {
    /// Only the last position (generation).
    Last,
    /// Every position of the step (evaluation of all-position agreement).
    All,
}

/// Logits revealed to the party that may see them, `rows x vocab`, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Logits {
    /// Vocabulary size.
    pub vocab: usize,
    /// Row-major values.
    pub data: Vec<f32>,
}

impl Logits {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.data.len() / self.vocab.max(1)
    }
    /// One row.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.vocab..(i + 1) * self.vocab]
    }
    /// The last row.
    pub fn last(&self) -> &[f32] {
        self.row(self.rows().saturating_sub(1))
    }
}

/// The operations of a Qwen2 forward pass. `Act` is an `n x d` activation (n positions of
/// the current step) in the implementation's representation.
pub trait ModelOps {
    /// Activation representation.
    type Act;
    /// Error type.
    type Error;

    /// Token embeddings of the step's tokens, `n x hidden`.
    fn embed(&mut self, tokens: &[u32]) -> Result<Self::Act, Self::Error>;
    /// RMSNorm with the given gain.
    fn rms_norm(&mut self, x: &Self::Act, norm: Norm) -> Result<Self::Act, Self::Error>;
    /// A linear unit including its bias: `x W^T + b`.
    fn linear(&mut self, x: &Self::Act, linear: Linear) -> Result<Self::Act, Self::Error>;
    /// Rotary embedding (rotate-half) of the q and k parts of a `Qkv` output, in place,
    /// for positions `start_pos..start_pos + n`.
    fn rope(&mut self, qkv: &mut Self::Act, start_pos: usize) -> Result<(), Self::Error>;
    /// Grouped-query causal attention of a layer: appends this step's k and v to the
    /// layer's cache (which must hold exactly `start_pos` positions) and returns the
    /// per-head outputs concatenated, `n x q_dim`.
    fn attention(
        &mut self,
        qkv: &Self::Act,
        layer: usize,
        start_pos: usize,
    ) -> Result<Self::Act, Self::Error>;
    /// `silu(gate) * up` of a `GateUp` output, `n x intermediate`.
    fn swiglu(&mut self, gate_up: &Self::Act) -> Result<Self::Act, Self::Error>;
    /// Elementwise sum (the residual connection).
    fn add(&mut self, a: &Self::Act, b: &Self::Act) -> Result<Self::Act, Self::Error>;
    /// The rows that get logits.
    fn select_rows(&mut self, x: &Self::Act, rows: Rows) -> Result<Self::Act, Self::Error>;
    /// Reveals logits to the party allowed to see them; `None` for a party that may not
    /// (the server in every private variant) and for the planner.
    fn reveal_logits(&mut self, logits: &Self::Act) -> Result<Option<Logits>, Self::Error>;
}
