//! The model fingerprint both parties compare in the handshake: blake3 over the
//! canonical config and every weight file's bytes, in a fixed order. Hashing a
//! multi-gigabyte checkpoint takes seconds, so the result is cached next to the model
//! (`.shardlm-fingerprint.json`, keyed by file sizes and modification times) when the
//! directory is writable, and recomputed whenever a file changed.

use super::load::ModelDir;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Name of the cache file written next to the model.
pub const CACHE_FILE: &str = ".shardlm-fingerprint.json";

/// Errors computing a fingerprint.
#[derive(Debug, thiserror::Error)]
#[error("{path}: cannot fingerprint the model: {source}")]
pub struct FingerprintError {
    path: PathBuf,
    source: std::io::Error,
}

#[derive(Serialize, Deserialize, PartialEq)]
struct Cache {
    weights_digest: String,
    files: Vec<(String, u64, u128)>,
}

fn file_keys(paths: &[PathBuf]) -> Result<Vec<(String, u64, u128)>, FingerprintError> {
    paths
        .iter()
        .map(|p| {
            let meta = std::fs::metadata(p).map_err(|source| FingerprintError { path: p.clone(), source })?;
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            Ok((name, meta.len(), mtime))
        })
        .collect()
}

/// `blake3:<hex>` of the model: the config as the engine understood it, then each weight
/// file (sorted by name) with its name and length. Uses the cache when it is current.
pub fn fingerprint(model: &ModelDir) -> Result<String, FingerprintError> {
    let keys = file_keys(&model.weight_files)?;
    let cache_path = model.dir.join(CACHE_FILE);
    let config_json = model.config.to_hf_json();
    let weights_digest = cached_weights_digest(&cache_path, &keys, &model.weight_files)?;
    Ok(compute_tagged(&config_json, &weights_digest))
}

fn compute_tagged(config_json: &str, weights_digest: &str) -> String {
    let mut h = blake3::Hasher::new_derive_key("shardlm model fingerprint v1");
    h.update(&(config_json.len() as u64).to_le_bytes());
    h.update(config_json.as_bytes());
    h.update(weights_digest.as_bytes());
    format!("blake3:{}", h.finalize().to_hex())
}

/// The digest of the weight files, from the cache when sizes and mtimes match.
fn cached_weights_digest(
    cache_path: &Path,
    keys: &[(String, u64, u128)],
    files: &[PathBuf],
) -> Result<String, FingerprintError> {
    if let Ok(text) = std::fs::read_to_string(cache_path) {
        if let Ok(c) = serde_json::from_str::<Cache>(&text) {
            if c.files == keys {
                return Ok(c.weights_digest);
            }
        }
    }
    let mut h = blake3::Hasher::new_derive_key("shardlm weight files v1");
    for (p, (name, len, _)) in files.iter().zip(keys) {
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(&len.to_le_bytes());
        let mut fh = blake3::Hasher::new();
        fh.update_mmap_rayon(p).map_err(|source| FingerprintError { path: p.clone(), source })?;
        h.update(fh.finalize().as_bytes());
    }
    let digest = h.finalize().to_hex().to_string();
    let cache = Cache { weights_digest: digest.clone(), files: keys.to_vec() };
    if let Ok(text) = serde_json::to_string(&cache) {
        // Best effort: a read-only model directory simply is not cached.
        let _ = std::fs::write(cache_path, text);
    }
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_stable_cached_and_sensitive_to_weights_and_config() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = shardlm_configs::ModelConfig::preset("tiny").unwrap();
        crate::synth::write_synthetic_model(&cfg, tmp.path(), 1).unwrap();
        let md = ModelDir::open(tmp.path()).unwrap();
        let a = fingerprint(&md).unwrap();
        assert!(tmp.path().join(CACHE_FILE).is_file());
        assert_eq!(a, fingerprint(&md).unwrap());
        assert!(a.starts_with("blake3:"));

        let other = tempfile::tempdir().unwrap();
        crate::synth::write_synthetic_model(&cfg, other.path(), 2).unwrap();
        assert_ne!(a, fingerprint(&ModelDir::open(other.path()).unwrap()).unwrap());

        let mut cfg2 = cfg.clone();
        cfg2.rms_norm_eps = 1e-5;
        std::fs::write(tmp.path().join("config.json"), cfg2.to_hf_json()).unwrap();
        assert_ne!(a, fingerprint(&ModelDir::open(tmp.path()).unwrap()).unwrap());
    }
}
