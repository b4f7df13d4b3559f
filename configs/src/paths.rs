//! Where ShardLM keeps its per-user files. Nothing is ever written into a model's
//! directory: a checkpoint in the Hugging Face hub cache, on a read-only mount or in a
//! shared directory stays untouched.
//!
//! * [`cache_dir`]: things that can be recomputed (model fingerprints, downloads):
//!   `$SHARDLM_CACHE_DIR`, else the platform cache directory (`$XDG_CACHE_HOME` or
//!   `~/.cache` on Linux) + `/shardlm`.
//! * [`state_dir`]: things that must not be lost (the registry of spent one-time
//!   material): `$SHARDLM_STATE_DIR`, else the platform state directory
//!   (`$XDG_STATE_HOME` or `~/.local/state` on Linux; the data directory elsewhere) +
//!   `/shardlm`.

use std::path::PathBuf;

fn from_env(var: &str) -> Option<PathBuf> {
    std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// The per-user cache directory (may not exist yet), or `None` when the platform has
/// none and no override is set.
pub fn cache_dir() -> Option<PathBuf> {
    from_env("SHARDLM_CACHE_DIR").or_else(|| dirs::cache_dir().map(|d| d.join("shardlm")))
}

/// The per-user state directory (may not exist yet), or `None` when the platform has
/// none and no override is set.
pub fn state_dir() -> Option<PathBuf> {
    from_env("SHARDLM_STATE_DIR")
        .or_else(|| dirs::state_dir().or_else(dirs::data_local_dir).map(|d| d.join("shardlm")))
}
