//! Plaintext `f32` kernels shared by every implementation that computes nonlinear layers
//! in the clear: the reference engine and the v2/v3 client. Written to match Hugging Face
//! transformers' Qwen2 (eager attention, f32 compute) operation for operation.

use rayon::prelude::*;
use shardlm_configs::ModelConfig;

/// A row-major `rows x cols` `f32` matrix: `rows` positions, `cols` features.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Positions.
    pub rows: usize,
    /// Features.
    pub cols: usize,
    /// Row-major values.
    pub data: Vec<f32>,
}

impl Tensor {
    /// A tensor from its parts; `data.len()` must be `rows * cols`.
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Self {
        debug_assert_eq!(data.len(), rows * cols);
        Self { rows, cols, data }
    }
    /// All zeros.
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self { rows, cols, data: vec![0.0; rows * cols] }
    }
    /// One row.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
}

/// `y = x / sqrt(mean(x^2) + eps) * gain`, per row.
pub fn rms_norm(x: &Tensor, gain: &[f32], eps: f64) -> Tensor {
    let mut out = Tensor::zeros(x.rows, x.cols);
    out.data.par_chunks_mut(x.cols).zip(x.data.par_chunks(x.cols)).for_each(|(o, r)| {
        let ms = r.iter().map(|v| v * v).sum::<f32>() / r.len() as f32;
        let inv = 1.0 / (ms + eps as f32).sqrt();
        for ((o, v), g) in o.iter_mut().zip(r).zip(gain) {
            *o = g * (v * inv);
        }
    });
    out
}

/// Precomputed rotary-embedding angles for one model: `inv_freq[i] = theta^(-2i/d)`.
#[derive(Clone, Debug)]
pub struct Rope {
    inv_freq: Vec<f64>,
    head_dim: usize,
}

impl Rope {
    /// The rotary table of a config.
    pub fn new(config: &ModelConfig) -> Self {
        let d = config.head_dim;
        let inv_freq = (0..d / 2).map(|i| 1.0 / config.rope_theta.powf(2.0 * i as f64 / d as f64)).collect();
        Self { inv_freq, head_dim: d }
    }

    /// Rotates each `head_dim` block of `v[offset..offset + heads*head_dim]` of every row
    /// (rotate-half convention), row `r` at position `start_pos + r`.
    pub fn apply(&self, t: &mut Tensor, offset: usize, heads: usize, start_pos: usize) {
        let d = self.head_dim;
        let half = d / 2;
        let cols = t.cols;
        t.data.par_chunks_mut(cols).enumerate().for_each(|(r, row)| {
            let pos = (start_pos + r) as f64;
            let (cos, sin): (Vec<f32>, Vec<f32>) = self
                .inv_freq
                .iter()
                .map(|f| {
                    let a = (pos * *f as f32 as f64) as f32;
                    (a.cos(), a.sin())
                })
                .unzip();
            for h in 0..heads {
                let x = &mut row[offset + h * d..offset + (h + 1) * d];
                for i in 0..half {
                    let (a, b) = (x[i], x[i + half]);
                    x[i] = a * cos[i] - b * sin[i];
                    x[i + half] = b * cos[i] + a * sin[i];
                }
            }
        });
    }
}

/// One layer's cached keys and values, `positions x kv_dim` each.
#[derive(Clone, Debug, Default)]
pub struct LayerCache {
    /// Keys after RoPE.
    pub k: Vec<f32>,
    /// Values.
    pub v: Vec<f32>,
}

/// Grouped-query causal attention for a step. `qkv` rows are `[q | k | v]` after RoPE;
/// `cache` holds `start_pos` earlier positions and gets this step's k and v appended.
pub fn attention(config: &ModelConfig, qkv: &Tensor, cache: &mut LayerCache, start_pos: usize) -> Tensor {
    let (hd, nh, nkv) = (config.head_dim, config.num_attention_heads, config.num_key_value_heads);
    let (qd, kvd) = (config.q_dim(), config.kv_dim());
    for r in 0..qkv.rows {
        let row = qkv.row(r);
        cache.k.extend_from_slice(&row[qd..qd + kvd]);
        cache.v.extend_from_slice(&row[qd + kvd..qd + 2 * kvd]);
    }
    let total = start_pos + qkv.rows;
    let group = nh / nkv;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = Tensor::zeros(qkv.rows, qd);
    out.data.par_chunks_mut(qd).enumerate().for_each(|(r, orow)| {
        let q = &qkv.row(r)[..qd];
        let visible = start_pos + r + 1;
        let mut scores = vec![0.0f32; visible];
        for h in 0..nh {
            let kvh = h / group;
            let qh = &q[h * hd..(h + 1) * hd];
            let mut max = f32::NEG_INFINITY;
            for (t, s) in scores.iter_mut().enumerate() {
                let k = &cache.k[t * kvd + kvh * hd..t * kvd + (kvh + 1) * hd];
                *s = qh.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale;
                max = max.max(*s);
            }
            let mut sum = 0.0f32;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            let o = &mut orow[h * hd..(h + 1) * hd];
            for (t, s) in scores.iter().enumerate() {
                let p = s / sum;
                let v = &cache.v[t * kvd + kvh * hd..t * kvd + (kvh + 1) * hd];
                for (o, v) in o.iter_mut().zip(v) {
                    *o += p * v;
                }
            }
        }
    });
    debug_assert_eq!(cache.k.len(), total * kvd);
    out
}

/// `silu(x) = x / (1 + e^-x)`.
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `silu(gate) * up` for rows laid out `[gate | up]`.
pub fn swiglu(gate_up: &Tensor) -> Tensor {
    let inter = gate_up.cols / 2;
    let mut out = Tensor::zeros(gate_up.rows, inter);
    out.data.par_chunks_mut(inter).zip(gate_up.data.par_chunks(gate_up.cols)).for_each(|(o, r)| {
        for i in 0..inter {
            o[i] = silu(r[i]) * r[inter + i];
        }
    });
    out
}

/// Elementwise sum.
pub fn add(a: &Tensor, b: &Tensor) -> Tensor {
    Tensor::new(a.rows, a.cols, a.data.iter().zip(&b.data).map(|(x, y)| x + y).collect())
}
