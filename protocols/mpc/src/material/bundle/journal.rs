//! One-time use, recorded twice (DESIGN.md section 5).
//!
//! Before any material is handed out, the stream cursors it will reach are written
//! durably (temporary file, fsync, rename, fsync of the directory; any of them failing
//! is an error, never ignored) to:
//!
//! * the **journal** `pX.journal` beside the party's shard, and
//! * the **ledger**: `<state dir>/spent/<bundle id>.pX.json` in the user's state
//!   directory ([`shardlm_configs::paths::state_dir`]), outside the bundle.
//!
//! On open a party resumes from the furthest of the two. Deleting the journal, or
//! restoring an earlier copy of the bundle (same bundle id), therefore cannot make
//! material usable again on this host: the ledger still records it as spent. Cursors
//! only ever move forward.

use super::super::{io_err, MaterialError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Consumed words per component stream of one party of one bundle, as recorded.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Record {
    pub bundle_id: String,
    pub party: String,
    pub seq: u64,
    pub cursors: BTreeMap<String, u64>,
}

/// Where the ledger of spent material lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ledger {
    /// `<state dir>/spent` ([`shardlm_configs::paths::state_dir`]).
    StateDir,
    /// A given directory (tests, or a deployment that keeps state elsewhere).
    In(PathBuf),
}

impl Ledger {
    /// The ledger directory, or an error saying how to provide one.
    pub(crate) fn dir(&self) -> Result<PathBuf, MaterialError> {
        match self {
            Ledger::In(d) => Ok(d.clone()),
            Ledger::StateDir => shardlm_configs::paths::state_dir().map(|d| d.join("spent")).ok_or_else(|| {
                MaterialError::Format {
                    path: PathBuf::from("<state dir>"),
                    detail: "no per-user state directory on this platform for the spent-material ledger; set SHARDLM_STATE_DIR".into(),
                }
            }),
        }
    }
}

/// Reads a record; `Ok(None)` when the file does not exist. `totals` are the words of
/// every stream the party holds: a record naming another stream, or more words than
/// dealt, is corrupted (cursors are only ever the party's own, within its streams).
pub(crate) fn read(
    path: &Path,
    bundle_id: &str,
    party: &str,
    totals: &BTreeMap<String, u64>,
) -> Result<Option<Record>, MaterialError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(MaterialError::Io { path: path.into(), source: e }),
    };
    let r: Record = serde_json::from_slice(&bytes).map_err(|e| MaterialError::Format {
        path: path.into(),
        detail: format!(
            "unreadable consumption record ({e}); refusing to guess what was consumed: deal a new bundle"
        ),
    })?;
    if r.bundle_id != bundle_id || r.party != party {
        return Err(MaterialError::Format {
            path: path.into(),
            detail: "consumption record of another bundle or party; refusing to guess what was consumed: deal a new bundle".into(),
        });
    }
    for (stream, &consumed) in &r.cursors {
        let Some(&total) = totals.get(stream) else {
            return Err(MaterialError::Format {
                path: path.into(),
                detail: format!("corrupted consumption record: it names stream {stream:?}, which this part of the bundle does not hold; refusing to guess what was consumed: deal a new bundle"),
            });
        };
        if consumed > total {
            return Err(MaterialError::Format {
                path: path.into(),
                detail: format!("corrupted consumption record: {consumed} words of {stream} consumed but only {total} were dealt; refusing to guess what was consumed: deal a new bundle"),
            });
        }
    }
    Ok(Some(r))
}

/// The elementwise maximum of cursor maps.
pub(crate) fn furthest<'a>(
    maps: impl IntoIterator<Item = &'a BTreeMap<String, u64>>,
) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for m in maps {
        for (k, &v) in m {
            let e = out.entry(k.clone()).or_insert(0);
            *e = (*e).max(v);
        }
    }
    out
}

/// Writes `path` atomically and durably: temporary file, fsync, rename, fsync of the
/// directory. Creates the directory (0700) if needed.
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), MaterialError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    if !dir.exists() {
        create_private_dir(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = create_private_file(&tmp)?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io_err(path))?;
    sync_dir(dir)
}

/// Makes a rename in `dir` durable. Windows has no directory handles to fsync; NTFS
/// journals the rename itself.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), MaterialError> {
    #[cfg(unix)]
    {
        File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))?;
    }
    let _ = dir;
    Ok(())
}

/// Creates a file readable and writable by its owner only (0600 on Unix).
pub(crate) fn create_private_file(path: &Path) -> Result<File, MaterialError> {
    let mut o = fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(path).map_err(io_err(path))
}

/// Creates a directory (and its parents) accessible by its owner only (0700 on Unix).
pub(crate) fn create_private_dir(path: &Path) -> Result<(), MaterialError> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(path).map_err(io_err(path))
}

/// The journal and the ledger of one party of one bundle.
pub(crate) struct Records {
    pub bundle_id: String,
    pub party: String,
    pub journal: PathBuf,
    pub ledger: PathBuf,
    pub seq: u64,
}

impl Records {
    /// Opens both records and returns where consumption stands (the furthest of the
    /// two; empty for a fresh bundle). `totals`: the words of every stream the party
    /// holds, which a record must stay within.
    pub fn open(
        part_dir: &Path,
        ledger: &Ledger,
        bundle_id: &str,
        party: &str,
        totals: &BTreeMap<String, u64>,
    ) -> Result<(Records, BTreeMap<String, u64>), MaterialError> {
        let journal = part_dir.join(format!("{party}.journal"));
        let ledger = ledger.dir()?.join(format!("{bundle_id}.{party}.json"));
        let j = read(&journal, bundle_id, party, totals)?;
        let l = read(&ledger, bundle_id, party, totals)?;
        let seq = j.as_ref().map_or(0, |r| r.seq).max(l.as_ref().map_or(0, |r| r.seq));
        let cursors = furthest(j.iter().chain(l.iter()).map(|r| &r.cursors));
        Ok((Records { bundle_id: bundle_id.into(), party: party.into(), journal, ledger, seq }, cursors))
    }

    /// Records `cursors` in the ledger, then the journal, before anything is handed out.
    pub fn write(&mut self, cursors: &BTreeMap<String, u64>) -> Result<(), MaterialError> {
        self.seq += 1;
        let r = Record {
            bundle_id: self.bundle_id.clone(),
            party: self.party.clone(),
            seq: self.seq,
            cursors: cursors.clone(),
        };
        let bytes = serde_json::to_vec(&r)
            .map_err(|e| MaterialError::Format { path: self.journal.clone(), detail: e.to_string() })?;
        write_durably(&self.ledger, &bytes)?;
        write_durably(&self.journal, &bytes)
    }
}
