//! The model fingerprint both parties compare in the handshake: blake3 over the
//! canonical config and every weight file's bytes, in a fixed order. Hashing a
//! multi-gigabyte checkpoint takes seconds, so the weight digest is cached in the
//! user's cache directory ([`shardlm_configs::paths::cache_dir`], `fingerprints/`),
//! one file per model directory keyed by its canonical path, and used only while every
//! weight file's name, size and modification time are unchanged. The model's own
//! directory is never written (it may be the Hugging Face hub cache, a read-only mount
//! or a shared directory).

use super::load::ModelDir;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Errors computing a fingerprint.
#[derive(Debug, thiserror::Error)]
#[error("{path}: cannot fingerprint the model: {source}")]
pub struct FingerprintError {
    path: PathBuf,
    source: std::io::Error,
}

#[derive(Serialize, Deserialize, PartialEq)]
struct Cache {
    model_dir: PathBuf,
    weights_digest: String,
    files: Vec<(String, u64, u128)>,
}

/// The cache file for the model directory `dir` under `cache_root`.
fn cache_file(cache_root: &Path, dir: &Path) -> PathBuf {
    let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let key = blake3::hash(canonical.as_os_str().as_encoded_bytes()).to_hex();
    cache_root.join("fingerprints").join(format!("{}.json", &key[..32]))
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
    fingerprint_cached_in(model, shardlm_configs::paths::cache_dir().as_deref())
}

/// Like [`fingerprint`], caching under `cache_root` (`None`: no cache).
pub fn fingerprint_cached_in(
    model: &ModelDir,
    cache_root: Option<&Path>,
) -> Result<String, FingerprintError> {
    let keys = file_keys(&model.weight_files)?;
    let cache_path = cache_root.map(|root| cache_file(root, &model.dir));
    let config_json = model.config.to_hf_json();
    let weights_digest =
        cached_weights_digest(&model.dir, cache_path.as_deref(), &keys, &model.weight_files)?;
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
    model_dir: &Path,
    cache_path: Option<&Path>,
    keys: &[(String, u64, u128)],
    files: &[PathBuf],
) -> Result<String, FingerprintError> {
    if let Some(text) = cache_path.and_then(|p| std::fs::read_to_string(p).ok()) {
        if let Ok(c) = serde_json::from_str::<Cache>(&text) {
            if c.files == keys && c.model_dir == model_dir {
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
    if let Some(path) = cache_path {
        let cache = Cache {
            model_dir: model_dir.to_path_buf(),
            weights_digest: digest.clone(),
            files: keys.to_vec(),
        };
        // Best effort: without a writable cache directory the digest is recomputed next
        // time. Written to a temporary name and renamed, so a reader never sees half.
        if let (Ok(text), Some(parent)) = (serde_json::to_string(&cache), path.parent()) {
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            if std::fs::create_dir_all(parent).is_ok() && std::fs::write(&tmp, text).is_ok() {
                let _ = std::fs::rename(&tmp, path);
            }
        }
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
        let cache = tempfile::tempdir().unwrap();
        let before: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        let a = fingerprint_cached_in(&md, Some(cache.path())).unwrap();
        // Cached in the cache directory, never in the model's.
        assert!(cache_file(cache.path(), tmp.path()).is_file());
        let after: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(before, after, "the model directory was written");
        assert_eq!(a, fingerprint_cached_in(&md, Some(cache.path())).unwrap());
        assert_eq!(a, fingerprint_cached_in(&md, None).unwrap());
        assert!(a.starts_with("blake3:"));

        let other = tempfile::tempdir().unwrap();
        crate::synth::write_synthetic_model(&cfg, other.path(), 2).unwrap();
        assert_ne!(
            a,
            fingerprint_cached_in(&ModelDir::open(other.path()).unwrap(), Some(cache.path())).unwrap()
        );

        let mut cfg2 = cfg.clone();
        cfg2.rms_norm_eps = 1e-5;
        std::fs::write(tmp.path().join("config.json"), cfg2.to_hf_json()).unwrap();
        assert_ne!(
            a,
            fingerprint_cached_in(&ModelDir::open(tmp.path()).unwrap(), Some(cache.path())).unwrap()
        );
    }
}
