//! Find a model in the local Hugging Face hub cache, without any network.
//!
//! The hub cache (what `huggingface_hub`, `transformers` and the `hf-hub` crate write) is
//! laid out as
//!
//! ```text
//! <cache>/models--<org>--<name>/refs/<revision>       a commit hash (one line)
//! <cache>/models--<org>--<name>/snapshots/<hash>/...  the files of that commit
//! ```
//!
//! where `<cache>` is `HF_HUB_CACHE`, else `HF_HOME/hub`, else
//! `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub` (the rules of
//! `huggingface_hub`). A snapshot counts as a model directory only if it holds
//! `config.json`, `tokenizer.json` and at least one `*.safetensors`.
//!
//! [`crate::ModelDir::open`] uses it so that both binaries accept a hub id wherever a
//! `--model-dir` is accepted; `shardlm-client fetch-model` fills the cache.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Why a hub cache lookup failed (as opposed to "not cached", which is `Ok(None)`).
#[derive(Debug)]
pub enum HubCacheError {
    /// The id is not of the form `org/name`.
    InvalidId(String),
    /// The revision is empty or would escape the cache directory.
    InvalidRevision(String),
    /// A ref file exists but does not hold a commit hash.
    BadRef {
        /// The ref file.
        path: PathBuf,
        /// What it holds (trimmed, cut to 80 characters).
        content: String,
    },
    /// A file or directory of the cache could not be read.
    Io {
        /// The path that could not be read.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

impl fmt::Display for HubCacheError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HubCacheError::InvalidId(id) => {
                write!(f, "`{id}` is not a hub model id: write it as `org/name`, e.g. `Qwen/Qwen2.5-Coder-0.5B-Instruct`")
            }
            HubCacheError::InvalidRevision(r) => {
                write!(f, "`{r}` is not a revision: give a branch, tag or commit hash")
            }
            HubCacheError::BadRef { path, content } => write!(
                f,
                "hub cache ref {} holds `{content}`, not a commit hash: delete it (the cache is damaged) or fetch the model again",
                path.display()
            ),
            HubCacheError::Io { path, source } => {
                write!(f, "cannot read the hub cache at {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for HubCacheError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HubCacheError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The hub cache directory: `HF_HUB_CACHE`, else `HF_HOME/hub`, else
/// `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub` (empty variables
/// count as unset).
pub fn cache_dir() -> PathBuf {
    cache_dir_from(&|k| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from))
}

/// [`cache_dir`] with the environment given as a function (for tests).
pub fn cache_dir_from(env: &dyn Fn(&str) -> Option<PathBuf>) -> PathBuf {
    if let Some(p) = env("HF_HUB_CACHE") {
        return p;
    }
    if let Some(p) = env("HF_HOME") {
        return p.join("hub");
    }
    if let Some(p) = env("XDG_CACHE_HOME") {
        return p.join("huggingface").join("hub");
    }
    let home = env("HOME").or_else(|| env("USERPROFILE")).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("huggingface").join("hub")
}

fn valid_part(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && !s.starts_with('-')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Whether `s` reads as a hub model id (`org/name`, each part of letters, digits, `-`,
/// `_`, `.`) and is not the path of an existing file or directory.
pub fn looks_like_hub_id(s: &str) -> bool {
    is_hub_id(s) && !Path::new(s).exists()
}

fn is_hub_id(s: &str) -> bool {
    match s.split_once('/') {
        Some((org, name)) => valid_part(org) && valid_part(name),
        None => false,
    }
}

/// The directory of a model in the cache: `models--<org>--<name>`.
pub fn repo_folder_name(id: &str) -> Result<String, HubCacheError> {
    if !is_hub_id(id) {
        return Err(HubCacheError::InvalidId(id.to_string()));
    }
    Ok(format!("models--{}", id.replace('/', "--")))
}

fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The snapshot directory of `id` at `revision` (default `main`) in the hub cache
/// ([`cache_dir`]), if it is there and complete (see the module doc). `Ok(None)` means
/// "not cached"; errors are for a bad id or revision, a damaged ref, or an unreadable cache.
pub fn resolve(id: &str, revision: Option<&str>) -> Result<Option<PathBuf>, HubCacheError> {
    resolve_in(&cache_dir(), id, revision)
}

/// [`resolve`] in a given cache directory.
pub fn resolve_in(cache: &Path, id: &str, revision: Option<&str>) -> Result<Option<PathBuf>, HubCacheError> {
    let repo = cache.join(repo_folder_name(id)?);
    let revision = revision.unwrap_or("main");
    // A ref may have slashes (`refs/pr/1`), but no part may climb out of the cache.
    if revision.is_empty() || revision.split('/').any(|p| p.is_empty() || p == "." || p == "..") {
        return Err(HubCacheError::InvalidRevision(revision.to_string()));
    }
    let ref_path = repo.join("refs").join(revision);
    let commit = match std::fs::read_to_string(&ref_path) {
        Ok(s) => {
            let s = s.trim();
            if !is_commit_hash(s) {
                let content: String = s.chars().take(80).collect();
                return Err(HubCacheError::BadRef { path: ref_path, content });
            }
            s.to_string()
        }
        // No ref: the revision may itself be a commit hash with a snapshot.
        Err(e) if e.kind() == io::ErrorKind::NotFound && is_commit_hash(revision) => revision.to_string(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(HubCacheError::Io { path: ref_path, source: e }),
    };
    let snapshot = repo.join("snapshots").join(&commit);
    if snapshot_complete(&snapshot)? {
        Ok(Some(snapshot))
    } else {
        Ok(None)
    }
}

/// Whether `dir` holds `config.json`, `tokenizer.json` and at least one `*.safetensors`
/// (a missing directory is simply not complete).
pub fn snapshot_complete(dir: &Path) -> Result<bool, HubCacheError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(HubCacheError::Io { path: dir.to_path_buf(), source: e }),
    };
    let (mut config, mut tokenizer, mut weights) = (false, false, false);
    for entry in entries {
        let entry = entry.map_err(|e| HubCacheError::Io { path: dir.to_path_buf(), source: e })?;
        // Snapshot entries are symlinks into ../../blobs: follow them, and skip dangling ones.
        if !entry.path().is_file() {
            continue;
        }
        let name = entry.file_name();
        let name = name.to_string_lossy();
        match name.as_ref() {
            "config.json" => config = true,
            "tokenizer.json" => tokenizer = true,
            n if n.ends_with(".safetensors") => weights = true,
            _ => {}
        }
    }
    Ok(config && tokenizer && weights)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "0123456789abcdef0123456789abcdef01234567";

    fn fake(cache: &Path, files: &[&str], write_ref: bool) -> PathBuf {
        let repo = cache.join("models--Org--Model");
        let snap = repo.join("snapshots").join(HASH);
        std::fs::create_dir_all(&snap).unwrap();
        for f in files {
            std::fs::write(snap.join(f), b"{}").unwrap();
        }
        if write_ref {
            std::fs::create_dir_all(repo.join("refs")).unwrap();
            std::fs::write(repo.join("refs/main"), format!("{HASH}\n")).unwrap();
        }
        snap
    }

    #[test]
    fn cache_dir_precedence() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| PathBuf::from(v))
        };
        static ALL: [(&str, &str); 4] =
            [("HF_HUB_CACHE", "/a"), ("HF_HOME", "/b"), ("XDG_CACHE_HOME", "/c"), ("HOME", "/h")];
        let all = &ALL;
        assert_eq!(cache_dir_from(&env(all)), PathBuf::from("/a"));
        assert_eq!(cache_dir_from(&env(&all[1..])), PathBuf::from("/b/hub"));
        assert_eq!(cache_dir_from(&env(&all[2..])), PathBuf::from("/c/huggingface/hub"));
        assert_eq!(cache_dir_from(&env(&all[3..])), PathBuf::from("/h/.cache/huggingface/hub"));
    }

    #[test]
    fn hub_ids() {
        assert!(looks_like_hub_id("Qwen/Qwen2.5-Coder-0.5B-Instruct"));
        assert!(looks_like_hub_id("org_1/name.v2"));
        for bad in ["", "Qwen", "a/b/c", "/abs", "org/", "/name", "../x", "a/..", "a b/c", "./x"] {
            assert!(!looks_like_hub_id(bad), "{bad}");
        }
        // An existing relative path is a path, not an id (tests run in the crate directory).
        assert!(is_hub_id("src/lib.rs") && Path::new("src/lib.rs").is_file());
        assert!(!looks_like_hub_id("src/lib.rs"));
    }

    #[test]
    fn complete_snapshot_found() {
        let dir = tempfile::tempdir().unwrap();
        let snap = fake(dir.path(), &["config.json", "tokenizer.json", "model.safetensors"], true);
        assert_eq!(resolve_in(dir.path(), "Org/Model", None).unwrap(), Some(snap.clone()));
        assert_eq!(resolve_in(dir.path(), "Org/Model", Some("main")).unwrap(), Some(snap.clone()));
        // A commit hash works without a ref.
        assert_eq!(resolve_in(dir.path(), "Org/Model", Some(HASH)).unwrap(), Some(snap));
    }

    #[test]
    fn incomplete_or_absent_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(resolve_in(dir.path(), "Org/Model", None).unwrap(), None);
        fake(dir.path(), &["config.json", "tokenizer.json"], true);
        assert_eq!(resolve_in(dir.path(), "Org/Model", None).unwrap(), None);
        let dir2 = tempfile::tempdir().unwrap();
        fake(dir2.path(), &["config.json", "tokenizer.json", "model.safetensors"], false);
        assert_eq!(resolve_in(dir2.path(), "Org/Model", None).unwrap(), None);
        assert_eq!(resolve_in(dir2.path(), "Org/Model", Some("v1.0")).unwrap(), None);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(resolve_in(dir.path(), "nope", None), Err(HubCacheError::InvalidId(_))));
        assert!(matches!(
            resolve_in(dir.path(), "Org/Model", Some("../../etc")),
            Err(HubCacheError::InvalidRevision(_))
        ));
        let refs = dir.path().join("models--Org--Model/refs");
        std::fs::create_dir_all(&refs).unwrap();
        std::fs::write(refs.join("main"), "not a hash").unwrap();
        let e = resolve_in(dir.path(), "Org/Model", None).unwrap_err();
        assert!(matches!(e, HubCacheError::BadRef { .. }));
        assert!(e.to_string().contains("not a hash"), "{e}");
    }
}
