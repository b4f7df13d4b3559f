//! Token sampling: greedy, or temperature with nucleus (top-p) filtering from a seeded
//! ChaCha stream, so a run is reproducible from its seed.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// Sampling settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingConfig {
    /// 0 means greedy.
    pub temperature: f32,
    /// Nucleus mass in (0, 1]; 1 keeps every token.
    pub top_p: f32,
    /// Seed of the sampling stream.
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self { temperature: 0.0, top_p: 1.0, seed: 0 }
    }
}

/// A seeded sampler.
pub struct Sampler {
    cfg: SamplingConfig,
    rng: ChaCha20Rng,
}

/// The index of the largest value; the first one on ties (as `torch.argmax`). NaN never wins.
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] || v[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

/// Indices of the `k` largest values, largest first (ties: lower index first).
pub fn top_k(v: &[f32], k: usize) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..v.len() as u32).collect();
    let k = k.min(v.len());
    let cmp = |a: &u32, b: &u32| v[*b as usize].total_cmp(&v[*a as usize]).then(a.cmp(b));
    if k < idx.len() && k > 0 {
        idx.select_nth_unstable_by(k - 1, cmp);
    }
    idx.truncate(k);
    idx.sort_by(cmp);
    idx
}

impl Sampler {
    /// A sampler; the settings are checked by the caller's argument parsing.
    pub fn new(cfg: SamplingConfig) -> Self {
        Self { cfg, rng: ChaCha20Rng::seed_from_u64(cfg.seed) }
    }

    /// Picks the next token from one row of logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.cfg.temperature <= 0.0 {
            return argmax(logits);
        }
        let t = self.cfg.temperature;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut probs: Vec<(u32, f32)> =
            logits.iter().enumerate().map(|(i, l)| (i as u32, ((l - max) / t).exp())).collect();
        let total: f32 = probs.iter().map(|p| p.1).sum();
        probs.iter_mut().for_each(|p| p.1 /= total);
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut kept = 0;
        let mut mass = 0.0;
        for p in &probs {
            kept += 1;
            mass += p.1;
            if mass >= self.cfg.top_p {
                break;
            }
        }
        let probs = &probs[..kept.max(1)];
        let u = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * mass as f64;
        let mut acc = 0.0f64;
        for p in probs {
            acc += p.1 as f64;
            if u < acc {
                return p.0;
            }
        }
        probs[probs.len() - 1].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_first_max() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
        assert_eq!(Sampler::new(SamplingConfig::default()).sample(&[0.0, 2.0, 1.0]), 1);
    }

    #[test]
    fn top_k_orders_largest_first() {
        assert_eq!(top_k(&[0.5, 3.0, -1.0, 3.0, 2.0], 3), vec![1, 3, 4]);
    }

    #[test]
    fn top_p_restricts_to_nucleus_and_seed_reproduces() {
        let logits = [10.0, 9.5, 0.0, -5.0];
        let cfg = SamplingConfig { temperature: 1.0, top_p: 0.5, seed: 7 };
        let mut s = Sampler::new(cfg);
        let draws: Vec<u32> = (0..200).map(|_| s.sample(&logits)).collect();
        assert!(draws.iter().all(|&t| t == 0), "top_p=0.5 keeps only the top token here");
        let cfg = SamplingConfig { temperature: 1.0, top_p: 1.0, seed: 7 };
        let a: Vec<u32> = {
            let mut s = Sampler::new(cfg);
            (0..100).map(|_| s.sample(&logits)).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(cfg);
            (0..100).map(|_| s.sample(&logits)).collect()
        };
        assert_eq!(a, b);
        assert!(a.contains(&0) && a.contains(&1), "both likely tokens are drawn");
    }
}
