//! Download a model from the Hugging Face hub into the standard hub cache, with the
//! `hf-hub` crate (sync API, ureq backend), so [`super::hub_cache`] finds it next time.

use anyhow::{bail, Context, Result};
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};
use serde::Deserialize;
use shardlm_model::hub_cache;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the first request (the repo listing) may take before the hub counts as
/// unreachable.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Files of a model repo worth having besides the weights.
const WANTED: [&str; 6] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "model.safetensors.index.json",
];

#[derive(Deserialize)]
struct RepoInfo {
    siblings: Vec<Sibling>,
}

#[derive(Deserialize)]
struct Sibling {
    rfilename: String,
}

fn env_set(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Downloads the files of `id` at `revision` that make a model directory (config,
/// tokenizer files, `*.safetensors`) into the hub cache `cache`, and returns the snapshot
/// directory. Honours `HF_ENDPOINT`, `HF_TOKEN` (else the cache's token file) and
/// `HF_HUB_OFFLINE`. The repo listing is asked first with a [`PROBE_TIMEOUT`], so an
/// unreachable hub fails fast.
pub fn download(id: &str, revision: &str, cache: &Path, progress: bool) -> Result<PathBuf> {
    if env_set("HF_HUB_OFFLINE").is_some_and(|v| v != "0" && !v.eq_ignore_ascii_case("false")) {
        bail!("HF_HUB_OFFLINE is set");
    }
    let mut builder =
        ApiBuilder::from_cache(Cache::new(cache.to_path_buf())).with_progress(progress).with_retries(3);
    if let Some(endpoint) = env_set("HF_ENDPOINT") {
        builder = builder.with_endpoint(endpoint.trim_end_matches('/').to_string());
    }
    if let Some(token) = env_set("HF_TOKEN") {
        builder = builder.with_token(Some(token));
    }
    let api = builder.build().context("setting up the hub client")?;
    let repo = api.repo(Repo::with_revision(id.to_string(), RepoType::Model, revision.to_string()));
    let resp = repo.info_request().timeout(PROBE_TIMEOUT).call().map_err(|e| match e {
        ureq::Error::Status(404 | 401, _) => {
            anyhow::anyhow!("{id} (revision {revision}) is not on the hub, or is gated (set HF_TOKEN)")
        }
        ureq::Error::Status(code, r) => anyhow::anyhow!("the hub answered {code} for {}", r.get_url()),
        ureq::Error::Transport(t) => {
            let host = t.url().and_then(|u| u.host_str()).unwrap_or("the hub").to_string();
            match t.message() {
                Some(m) => anyhow::anyhow!("cannot reach {host}: {} ({m})", t.kind()),
                None => anyhow::anyhow!("cannot reach {host}: {}", t.kind()),
            }
        }
    })?;
    let info: RepoInfo =
        serde_json::from_reader(resp.into_reader()).context("reading the hub's repo listing")?;
    let files: Vec<&str> = info
        .siblings
        .iter()
        .map(|s| s.rfilename.as_str())
        .filter(|f| WANTED.contains(f) || (f.ends_with(".safetensors") && !f.contains('/')))
        .collect();
    for need in ["config.json", "tokenizer.json"] {
        if !files.contains(&need) {
            bail!("{id} has no {need} on the hub: it is not a transformers model repo");
        }
    }
    if !files.iter().any(|f| f.ends_with(".safetensors")) {
        bail!("{id} has no *.safetensors weights on the hub");
    }
    let mut snapshot = None;
    for f in &files {
        let path = repo.get(f).with_context(|| format!("downloading {f} of {id}"))?;
        if *f == "config.json" {
            snapshot = path.parent().map(Path::to_path_buf);
        }
    }
    let snapshot = snapshot.context("the hub client returned no directory for config.json")?;
    match hub_cache::resolve_in(cache, id, Some(revision))? {
        Some(dir) => Ok(dir),
        // A revision the hub resolved but the cache keeps under another ref name.
        None if hub_cache::snapshot_complete(&snapshot)? => Ok(snapshot),
        None => bail!("downloaded {id}, but {} is not a complete model directory", snapshot.display()),
    }
}
