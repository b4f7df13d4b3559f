//! A party's part of a bundle, opened: the shard memory-mapped and checked, the lock
//! held, consumption resumed from the journal and the ledger ([`super::journal`]), and
//! the [`MaterialStore`] that hands out raw components and records consumption.

use super::journal::{Ledger, Records};
use super::{party_dir, Manifest, ShardInfo, PARTIES};
use crate::material::{io_err, Material, MaterialError, MaterialRequest, MaterialStore, Src};
use crate::prg::{PrgKind, Seed, DEFAULT_PRG};
use crate::share::Role;
use memmap2::Mmap;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions as FsOpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

pub(crate) const MAGIC: &[u8; 8] = b"SHLMSHRD";
pub(crate) const PREAMBLE: u64 = 64;
pub(crate) const ALIGN: u64 = 64;

/// Bytes per integrity chunk: the shard's data (from the end of the preamble to the
/// trailer: every stream and the padding between them) is hashed in chunks of this size
/// (the last one shorter), so a session checks only the chunks it reads.
pub(crate) const CHUNK_BYTES: u64 = 1 << 20;

/// A stream's place in a shard: `elements` values of `bits` bits packed into `words`
/// little-endian `u64` words from byte `offset`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(crate) struct Section {
    pub offset: u64,
    pub words: u64,
    pub elements: u64,
    pub bits: u32,
}

impl Section {
    /// Words `w0..w1` holding elements `off..off + len`, or `None` if out of range.
    fn words_of(&self, off: u64, len: u64) -> Option<(u64, u64)> {
        let end = off.checked_add(len)?;
        if end > self.elements {
            return None;
        }
        let bits = u64::from(self.bits);
        Some((off * bits / 64, (end * bits).div_ceil(64)))
    }

    /// Elements `off..off + len`, or `None` if out of range or the map is too short.
    fn read(&self, map: &[u8], off: u64, len: u64) -> Option<Vec<u64>> {
        let (w0, w1) = self.words_of(off, len)?;
        let start = usize::try_from(self.offset + w0 * 8).ok()?;
        let end = usize::try_from(self.offset + w1 * 8).ok()?;
        let words = le_words(map.get(start..end)?);
        if self.bits == 64 {
            return Some(words);
        }
        let first_bit = off * u64::from(self.bits);
        crate::ring::unpack_bits_at(&words, (first_bit % 64) as usize, self.bits, len as usize)
    }
}

fn le_words(bytes: &[u8]) -> Vec<u64> {
    bytes.chunks_exact(8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))).collect()
}

/// The data chunks' hashes and which chunks have been checked in this process.
struct Checks {
    hashes: Vec<blake3::Hash>,
    verified: Vec<AtomicBool>,
    /// End of the data (the trailer's offset).
    end: u64,
}

impl Checks {
    /// Parses the trailer's chunk list for data ending at `end`; `None` unless it holds
    /// exactly one hash per chunk.
    fn parse(hex: &str, end: u64) -> Option<Checks> {
        let n = usize::try_from(end.checked_sub(PREAMBLE)?.div_ceil(CHUNK_BYTES)).ok()?;
        if hex.len() != n.checked_mul(64)? {
            return None;
        }
        let hashes = hex
            .as_bytes()
            .chunks_exact(64)
            .map(|h| blake3::Hash::from_hex(h).ok())
            .collect::<Option<Vec<_>>>()?;
        Some(Checks { verified: (0..n).map(|_| AtomicBool::new(false)).collect(), hashes, end })
    }

    /// Bytes of chunk `c`.
    fn bytes(&self, c: usize) -> (u64, u64) {
        let start = PREAMBLE + c as u64 * CHUNK_BYTES;
        (start, (start + CHUNK_BYTES).min(self.end))
    }

    /// Chunks holding bytes `from..to` of the file.
    fn covering(&self, from: u64, to: u64) -> std::ops::Range<usize> {
        let first = (from.saturating_sub(PREAMBLE) / CHUNK_BYTES) as usize;
        let last = (to.min(self.end).saturating_sub(PREAMBLE)).div_ceil(CHUNK_BYTES) as usize;
        first..last.min(self.hashes.len()).max(first)
    }
}

/// The JSON trailer of a shard.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Trailer {
    pub party: String,
    pub seed: String,
    pub prg: PrgKind,
    pub sections: BTreeMap<String, Section>,
    pub totals: BTreeMap<String, u64>,
    /// The hex of the blake3 of every [`CHUNK_BYTES`] chunk of the data, concatenated.
    pub chunks: String,
}

/// How far ahead of use consumption is recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reserve {
    /// Up to the next session's start, with one write when a session starts
    /// ([`Material::start_session`]); takes outside a session are recorded exactly. A
    /// crash wastes at most the session in progress.
    Session,
    /// This many words per stream ahead of each recorded take (`0`: every take is
    /// recorded exactly, with an fsync).
    Words(u64),
}

/// How to open a party's part of a bundle.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// The model fingerprint the bundle must have been dealt for.
    pub expected_model: Option<String>,
    /// Where the spent-material ledger lives.
    pub ledger: Ledger,
    /// How far ahead consumption is recorded.
    pub reserve: Reserve,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions { expected_model: None, ledger: Ledger::StateDir, reserve: Reserve::Session }
    }
}

impl OpenOptions {
    /// Options checking the model fingerprint.
    pub fn for_model(fingerprint: &str) -> Self {
        OpenOptions { expected_model: Some(fingerprint.into()), ..OpenOptions::default() }
    }

    /// The same with the ledger in `dir`.
    pub fn ledger_in(mut self, dir: &Path) -> Self {
        self.ledger = Ledger::In(dir.to_path_buf());
        self
    }

    /// The same recording `reserve` ahead.
    pub fn reserve(mut self, reserve: Reserve) -> Self {
        self.reserve = reserve;
        self
    }
}

/// A party's shard on disk as a [`MaterialStore`].
pub(crate) struct FileStore {
    me: usize,
    shard: PathBuf,
    records: Records,
    reserve: Reserve,
    /// Cursors as recorded (at or ahead of `exact`).
    reserved: BTreeMap<String, u64>,
    /// Cursors of what was handed out.
    exact: BTreeMap<String, u64>,
    map: Mmap,
    sections: BTreeMap<String, Section>,
    checks: Checks,
    totals: BTreeMap<String, u64>,
    _lock: File,
}

impl Drop for FileStore {
    fn drop(&mut self) {
        // A clean close gives back the reserved-but-unused words: record exactly what
        // was handed out. (After a crash the reservation stays consumed: safe.)
        if self.exact != self.reserved {
            let exact = self.exact.clone();
            let _ = self.records.write(&exact);
        }
    }
}

impl FileStore {
    /// Checks the chunks that hold elements `off..off + len` of stream `name` against
    /// their blake3, each chunk once per process (the unchecked ones in parallel). A
    /// range outside the stream is left to the read, which reports it.
    fn verify(&self, name: &str, off: u64, len: u64) -> Result<(), MaterialError> {
        let Some(sec) = self.sections.get(name) else {
            return Ok(());
        };
        let Some((w0, w1)) = sec.words_of(off, len).filter(|(w0, w1)| w1 > w0) else {
            return Ok(());
        };
        let checks = &self.checks;
        let todo: Vec<usize> = checks
            .covering(sec.offset + w0 * 8, sec.offset + w1 * 8)
            .filter(|&c| !checks.verified[c].load(Ordering::Relaxed))
            .collect();
        let failed: Vec<usize> = todo
            .par_iter()
            .filter_map(|&c| {
                let (start, end) = checks.bytes(c);
                let bytes = usize::try_from(start)
                    .ok()
                    .zip(usize::try_from(end).ok())
                    .and_then(|(a, b)| self.map.get(a..b));
                let ok = bytes.is_some_and(|b| blake3::hash(b) == checks.hashes[c]);
                if ok {
                    checks.verified[c].store(true, Ordering::Relaxed);
                }
                (!ok).then_some(c)
            })
            .collect();
        match failed.iter().min() {
            None => Ok(()),
            Some(&c) => {
                let (start, end) = checks.bytes(c);
                Err(MaterialError::Corrupted {
                    path: self.shard.clone(),
                    detail: format!(
                        "bytes {start}..{end} (stream {name}) fail their blake3 ({} bad chunk(s) in the range checked)",
                        failed.len()
                    ),
                })
            }
        }
    }

    /// Only this party's streams are recorded (the other party's positions are implied
    /// by the request sequence).
    fn own(&self, cursors: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
        cursors.iter().filter(|(k, _)| self.totals.contains_key(*k)).map(|(k, v)| (k.clone(), *v)).collect()
    }
}

impl MaterialStore for FileStore {
    fn commit(&mut self, cursors: &BTreeMap<String, u64>) -> Result<(), MaterialError> {
        let cursors = self.own(cursors);
        let covered = cursors.iter().all(|(k, v)| self.reserved.get(k).copied().unwrap_or(0) >= *v);
        if !covered {
            let ahead = match self.reserve {
                Reserve::Words(w) => w,
                Reserve::Session => 0,
            };
            let mut reserved = self.reserved.clone();
            for (k, &v) in &cursors {
                let r = reserved.entry(k.clone()).or_insert(0);
                if *r < v {
                    let total = self.totals.get(k).copied().unwrap_or(0);
                    *r = v.saturating_add(ahead).min(total.max(v));
                }
            }
            // Durable before any of it is handed out.
            self.records.write(&reserved)?;
            self.reserved = reserved;
        }
        self.exact = cursors;
        Ok(())
    }

    fn reserve_to(&mut self, cursors: &BTreeMap<String, u64>) -> Result<(), MaterialError> {
        let target = super::journal::furthest([&self.reserved, &self.own(cursors)]);
        if target != self.reserved {
            self.records.write(&target)?;
            self.reserved = target;
        }
        Ok(())
    }

    fn raw_parts(&mut self, req: &MaterialRequest, offsets: &[u64]) -> Result<Vec<Vec<u64>>, MaterialError> {
        let comps = req.kind().layout()?;
        let mut out = Vec::new();
        for (c, &off) in comps.iter().zip(offsets) {
            if c.src[self.me] != Src::Raw {
                continue;
            }
            let sec = self.sections.get(&c.name).ok_or_else(|| MaterialError::Exhausted {
                kind: c.name.clone(),
                needed: c.len,
                left: 0,
            })?;
            if sec.bits != c.bits {
                return Err(MaterialError::Corrupted {
                    path: self.shard.clone(),
                    detail: format!("stores {} at {} bits, expected {}", c.name, sec.bits, c.bits),
                });
            }
            if off.checked_add(c.len).is_none_or(|end| end > sec.elements) {
                return Err(MaterialError::Exhausted {
                    kind: c.name.clone(),
                    needed: c.len,
                    left: sec.elements.saturating_sub(off),
                });
            }
            self.verify(&c.name, off, c.len)?;
            let values = sec.read(&self.map, off, c.len).ok_or_else(|| MaterialError::Corrupted {
                path: self.shard.clone(),
                detail: format!("is truncated (stream {})", c.name),
            })?;
            out.push(values);
        }
        Ok(out)
    }

    fn total(&self, component: &str) -> Option<u64> {
        Some(self.totals.get(component).copied().unwrap_or(0))
    }

    fn totals(&self) -> BTreeMap<String, u64> {
        self.totals.clone()
    }

    fn peek(&self, component: &str, offset: u64, len: u64) -> Option<Vec<u64>> {
        self.verify(component, offset, len).ok()?;
        self.sections.get(component)?.read(&self.map, offset, len)
    }

    fn verify_range(
        &self,
        from: &BTreeMap<String, u64>,
        to: &BTreeMap<String, u64>,
    ) -> Result<(), MaterialError> {
        for (name, sec) in &self.sections {
            let start = from.get(name).copied().unwrap_or(0);
            let end = to.get(name).copied().unwrap_or(start).min(sec.elements);
            if end > start {
                self.verify(name, start, end - start)?;
            }
        }
        Ok(())
    }
}

/// Maps a shard read-only.
#[allow(unsafe_code)]
fn map_read_only(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: the mapping is read-only and the file is ours: a bundle shard that no
    // process writes after the dealer renamed it into place, opened while we hold the
    // party's exclusive lock (so no other ShardLM process uses it). Its contents are
    // checked (blake3, chunk by chunk) before use and every read is bounds-checked
    // against the mapped length, so even a concurrent outside modification could give
    // wrong values but not unsoundness in our code beyond what `Mmap` documents.
    unsafe { Mmap::map(file) }
}

/// Takes the party's lock in `part`.
fn lock(part: &Path, party: &str, shard: &Path) -> Result<File, MaterialError> {
    let lock_path = part.join(format!("{party}.lock"));
    let mut o = FsOpenOptions::new();
    o.create(true).truncate(false).write(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let lock = o.open(&lock_path).map_err(io_err(&lock_path))?;
    let locked = fs4::fs_std::FileExt::try_lock_exclusive(&lock).map_err(io_err(&lock_path))?;
    if !locked {
        return Err(MaterialError::Locked { shard: shard.into(), lock: lock_path });
    }
    Ok(lock)
}

/// blake3 (hex) of a shard's index: its preamble followed by its trailer. The trailer
/// holds every stream's chunk hashes, so this one hash in the manifest covers the file.
pub(crate) fn index_blake3(preamble: &[u8], trailer: &[u8]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(preamble);
    h.update(trailer);
    h.finalize().to_hex().to_string()
}

/// A checked shard: the map, its trailer and its data's chunk hashes.
type Checked = (Mmap, Trailer, Checks);

/// Maps `shard` and checks its magic, party, index blake3 (preamble and trailer) and
/// layout. The streams' bytes are not read here: each chunk is checked against its hash
/// when a session that uses it starts, or when it is first read
/// ([`MaterialStore::verify_range`]), so opening a bundle of many sessions costs the
/// same as opening one.
fn map_and_check(shard: &Path, me: usize, info: &ShardInfo) -> Result<Checked, MaterialError> {
    let file = File::open(shard).map_err(io_err(shard))?;
    let map = map_read_only(&file).map_err(io_err(shard))?;
    let corrupted = |detail: &str| MaterialError::Corrupted { path: shard.into(), detail: detail.into() };
    if map.len() < PREAMBLE as usize || &map[..8] != MAGIC {
        return Err(corrupted("is not a shard (bad magic or truncated)"));
    }
    let found_party = u32::from_le_bytes([map[12], map[13], map[14], map[15]]);
    if found_party != me as u32 {
        return Err(MaterialError::WrongParty {
            path: shard.into(),
            found: PARTIES.get(found_party as usize).unwrap_or(&"unknown party").to_string(),
            expected: PARTIES[me].into(),
        });
    }
    let word = |at: usize| u64::from_le_bytes(map[at..at + 8].try_into().unwrap_or([0; 8]));
    let (t_off, t_len) = (word(16), word(24));
    let trailer_bytes = t_off
        .checked_add(t_len)
        .and_then(|end| map.get(usize::try_from(t_off).ok()?..usize::try_from(end).ok()?))
        .ok_or_else(|| corrupted("is truncated (trailer out of bounds)"))?;
    if t_off.checked_add(t_len) != Some(info.bytes) || map.len() as u64 != info.bytes {
        return Err(corrupted(&format!(
            "is {} bytes (its trailer ends at {}), not the {} the manifest records",
            map.len(),
            t_off.saturating_add(t_len),
            info.bytes
        )));
    }
    if index_blake3(&map[..PREAMBLE as usize], trailer_bytes) != info.index_blake3 {
        return Err(corrupted("index blake3 mismatch (its preamble or trailer was changed)"));
    }
    let trailer: Trailer =
        serde_json::from_slice(trailer_bytes).map_err(|e| corrupted(&format!("has a bad trailer ({e})")))?;
    for (name, s) in &trailer.sections {
        let end = s.words.checked_mul(8).and_then(|b| b.checked_add(s.offset));
        let fits = s.elements.checked_mul(u64::from(s.bits)).map(|b| b.div_ceil(64) <= s.words);
        if end.is_none_or(|e| e > t_off)
            || s.offset < PREAMBLE
            || s.offset % ALIGN != 0
            || !(1..=64).contains(&s.bits)
            || fits != Some(true)
        {
            return Err(corrupted(&format!("has section {name} out of bounds")));
        }
    }
    let checks = Checks::parse(&trailer.chunks, t_off)
        .ok_or_else(|| corrupted("has a bad chunk list (not one blake3 per 1 MiB of data)"))?;
    if trailer.prg != DEFAULT_PRG {
        return Err(MaterialError::Format {
            path: shard.into(),
            detail: format!(
                "dealt with PRG {:?} but this build uses {DEFAULT_PRG:?}; regenerate the bundle",
                trailer.prg
            ),
        });
    }
    Ok((map, trailer, checks))
}

impl<R: Role> Material<R> {
    /// Opens this party's part of the bundle in `dir` with default options (the ledger
    /// in the user's state directory, one reservation per session), checking the model
    /// fingerprint if `expected_model` is given. See [`Material::open_with`].
    pub fn open(dir: &Path, expected_model: Option<&str>) -> Result<Material<R>, MaterialError> {
        let opts = OpenOptions { expected_model: expected_model.map(String::from), ..OpenOptions::default() };
        Material::open_with(dir, &opts)
    }

    /// Opens this party's part of the bundle in `dir` (`DIR/pX`, or a directory holding
    /// only this party's part): refuses a directory that also holds the other party's
    /// part, takes the party's lock, checks the manifest, the model fingerprint, the
    /// shard's party and index blake3 (its streams are checked chunk by chunk as
    /// sessions start, [`Material::start_session`]), and resumes from the furthest of the journal and the
    /// ledger.
    pub fn open_with(dir: &Path, opts: &OpenOptions) -> Result<Material<R>, MaterialError> {
        let me = R::ID as usize;
        let party = PARTIES[me];
        let part = party_dir(dir, me)?;
        let manifest = Manifest::read(&part)?;
        if let Some(model) = &opts.expected_model {
            if *model != manifest.model_fingerprint {
                return Err(MaterialError::WrongModel {
                    dir: dir.into(),
                    found: manifest.model_fingerprint.clone(),
                    expected: model.clone(),
                });
            }
        }
        let shard = part.join(format!("{party}.shard"));
        let info = manifest.shards.get(party);
        let (true, Some(info)) = (shard.exists(), info) else {
            return Err(MaterialError::Format {
                path: shard,
                detail: format!(
                    "missing: this directory holds no {party} material; give the {party} party its own part of the bundle (DIR/{party} as written by `shardlm-client dealer`)"
                ),
            });
        };
        let lock = lock(&part, party, &shard)?;
        let (map, trailer, checks) = map_and_check(&shard, me, info)?;
        let seed = Seed::from_hex(&trailer.seed).ok_or_else(|| MaterialError::Corrupted {
            path: shard.clone(),
            detail: "has a bad seed".into(),
        })?;
        let (records, cursors) =
            Records::open(&part, &opts.ledger, &manifest.bundle_id, party, &trailer.totals)?;
        let store = FileStore {
            me,
            shard,
            records,
            reserve: opts.reserve,
            reserved: cursors.clone(),
            exact: cursors.clone(),
            map,
            sections: trailer.sections,
            checks,
            totals: trailer.totals,
            _lock: lock,
        };
        Ok(Material::from_store(seed, cursors, Box::new(store)).with_manifest(manifest))
    }
}
