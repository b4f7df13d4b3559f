//! The data layout of v3-mpc's attention: where each head's queries, keys, values,
//! visible scores and outputs sit in the flat share vectors. Pure index arithmetic,
//! separate from the protocol in the parent module, so each can be read alone.

use shardlm_configs::ModelConfig;
use shardlm_mpc::session::MatMul;
use shardlm_mpc::share::{Role, Shares};

/// Where attention's share vectors live: the data layout of one layer's attention for
/// `n` new rows after `start_pos` cached ones (GQA: `group` query heads per KV head).
/// Pure index arithmetic, no protocol.
pub(super) struct AttentionLayout {
    pub(super) n: usize,
    pub(super) cols: usize,
    pub(super) start_pos: usize,
    pub(super) total: usize,
    pub(super) hd: usize,
    pub(super) nh: usize,
    pub(super) nkv: usize,
    pub(super) group: usize,
    pub(super) qd: usize,
    pub(super) kvd: usize,
}

impl AttentionLayout {
    pub(super) fn new(c: &ModelConfig, n: usize, cols: usize, start_pos: usize) -> Self {
        AttentionLayout {
            n,
            cols,
            start_pos,
            total: start_pos + n,
            hd: c.head_dim,
            nh: c.num_attention_heads,
            nkv: c.num_key_value_heads,
            group: c.num_attention_heads / c.num_key_value_heads,
            qd: c.q_dim(),
            kvd: c.kv_dim(),
        }
    }

    /// Per KV head, K^T (`hd x total`) from the cache's rows.
    pub(super) fn keys_transposed<R: Role>(&self, k: &[u64]) -> Vec<Shares<R>> {
        (0..self.nkv)
            .map(|g| {
                let mut m = vec![0u64; self.hd * self.total];
                for t in 0..self.total {
                    for j in 0..self.hd {
                        m[j * self.total + t] = k[t * self.kvd + g * self.hd + j];
                    }
                }
                Shares::from_raw(m)
            })
            .collect()
    }

    /// Per KV head, V (`total x hd`) from the cache's rows.
    pub(super) fn values<R: Role>(&self, v: &[u64]) -> Vec<Shares<R>> {
        (0..self.nkv)
            .map(|g| {
                let mut m = vec![0u64; self.total * self.hd];
                for t in 0..self.total {
                    let at = t * self.kvd + g * self.hd;
                    m[t * self.hd..(t + 1) * self.hd].copy_from_slice(&v[at..at + self.hd]);
                }
                Shares::from_raw(m)
            })
            .collect()
    }

    /// Per KV head, its query heads' rows stacked (`group * n x hd`), from the QKV rows.
    pub(super) fn stacked_queries<R: Role>(&self, qkv: &[u64]) -> Vec<Shares<R>> {
        (0..self.nkv)
            .map(|g| {
                let mut m = Vec::with_capacity(self.group * self.n * self.hd);
                for h in g * self.group..(g + 1) * self.group {
                    for r in 0..self.n {
                        let at = r * self.cols + h * self.hd;
                        m.extend_from_slice(&qkv[at..at + self.hd]);
                    }
                }
                Shares::from_raw(m)
            })
            .collect()
    }

    /// The causally visible scores, head-major then row-major, and each row's length
    /// (a segment of the softmax).
    pub(super) fn visible(&self, scores: &[u64]) -> (Vec<u64>, Vec<usize>) {
        let mut visible = Vec::new();
        let mut segs = Vec::with_capacity(self.nh * self.n);
        for h in 0..self.nh {
            for r in 0..self.n {
                let len = self.start_pos + r + 1;
                let base = (h * self.n + r) * self.total;
                visible.extend_from_slice(&scores[base..base + len]);
                segs.push(len);
            }
        }
        (visible, segs)
    }

    /// Each segment's sum, and per head the `n x total` matrix of the segments with
    /// zeros at the masked positions.
    pub(super) fn row_sums_and_padded<R: Role>(
        &self,
        e: &[u64],
        segs: &[usize],
    ) -> (Vec<u64>, Vec<Shares<R>>) {
        let mut sums = Vec::with_capacity(segs.len());
        let mut mats = Vec::with_capacity(self.nh);
        let mut at = 0;
        for h in 0..self.nh {
            let mut m = vec![0u64; self.n * self.total];
            for r in 0..self.n {
                let len = segs[h * self.n + r];
                let row = &e[at..at + len];
                sums.push(row.iter().fold(0u64, |a, &b| a.wrapping_add(b)));
                m[r * self.total..r * self.total + len].copy_from_slice(row);
                at += len;
            }
            mats.push(Shares::from_raw(m));
        }
        (sums, mats)
    }

    /// The `E V` products, one per query head: its padded exponentials (causal from
    /// `start_pos`) times its KV head's values.
    pub(super) fn value_products<'a, R: Role>(
        &self,
        emats: &'a [Shares<R>],
        vs: &'a [Shares<R>],
        start_pos: usize,
    ) -> Vec<MatMul<'a, R>> {
        (0..self.nh)
            .map(|h| MatMul {
                x: &emats[h],
                y: &vs[h / self.group],
                m: self.n,
                k: self.total,
                n: self.hd,
                causal: Some(start_pos),
            })
            .collect()
    }

    /// `(head, row, j)` to `(row, head * hd + j)`.
    pub(super) fn heads_to_rows(&self, out: &[u64]) -> Vec<u64> {
        let mut data = vec![0u64; self.n * self.qd];
        for h in 0..self.nh {
            for r in 0..self.n {
                let from = (h * self.n + r) * self.hd;
                data[r * self.qd + h * self.hd..r * self.qd + (h + 1) * self.hd]
                    .copy_from_slice(&out[from..from + self.hd]);
            }
        }
        data
    }
}
