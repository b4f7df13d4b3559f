//! Dealer bundles on disk (DESIGN.md section 5).
//!
//! A bundle is a directory:
//!
//! * `manifest.json` ([`Manifest`]): format version, bundle id (blake3 of the two shard
//!   hashes), model fingerprint, variant, PRG, created-at, per-shard blake3 and size, and
//!   counts per material kind per party.
//! * `p0.shard`, `p1.shard`: one per party. Layout: a 64-byte preamble (`SHLMSHRD`,
//!   format version `u32`, party `u32`, trailer offset `u64`, trailer length `u64`, all
//!   little-endian), then every raw component stream of that party as a raw
//!   little-endian `u64` array starting at a 64-byte aligned offset (streams of narrow
//!   values, the OT strings, bit-packed at their width), then a JSON trailer
//!   (the party's seed, each stream's offset and length, the words available in every
//!   component stream, seeded ones included). Memory-mapped on open; the whole file's
//!   blake3 is checked against the manifest before anything is used.
//! * `p0.journal`, `p1.journal`: the consumed words per component stream, written
//!   (temporary file, fsync, rename, fsync of the directory) **before** the material is
//!   handed out. On open the cursors resume from the journal, so material is never used
//!   twice across restarts; a crash between journal and use wastes material, never
//!   reuses it. To keep fsyncs off the hot path the journal reserves ahead
//!   ([`DEFAULT_RESERVE_WORDS`] per stream): a take inside the reservation does no IO; a
//!   clean drop journals the exact cursors, a crash leaves the reservation consumed.
//! * `p0.lock`, `p1.lock`: an exclusive `flock` held while a process uses that party's
//!   material, so two processes cannot consume the same shard.
//!
//! Give `p0.shard` only to the client and `p1.shard` only to the server: each shard holds
//! that party's seed.

use super::ideal::party_seeds;
use super::{deal, io_err, LinearWeights, Material, MaterialError, MaterialRequest, MaterialStore, Src};
use crate::prg::{PrgKind, Seed, DEFAULT_PRG};
use crate::share::Role;
use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Version of the bundle format this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;

const MAGIC: &[u8; 8] = b"SHLMSHRD";
const PREAMBLE: u64 = 64;
const ALIGN: u64 = 64;
const PARTIES: [&str; 2] = ["p0", "p1"];

/// How much of one kind a party's shard holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindCount {
    /// Requests (forward-pass steps) dealt.
    pub requests: u64,
    /// Elements: triples, pairs, matrices, OTs, words of AND triples, daBits, or rows of
    /// masked-linear material.
    pub elements: u64,
}

/// One shard as the manifest records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// File name inside the bundle directory.
    pub file: String,
    /// blake3 of the whole file, hex.
    pub blake3: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// `manifest.json` of a bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// blake3 of the two shard hashes, hex.
    pub bundle_id: String,
    /// Fingerprint of the model the bundle was dealt for.
    pub model_fingerprint: String,
    /// Protocol variant.
    pub variant: String,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    /// PRG of the seeded components.
    pub prg: PrgKind,
    /// Shards by party (`p0`, `p1`).
    pub shards: BTreeMap<String, ShardInfo>,
    /// Counts per party, then per kind.
    pub counts: BTreeMap<String, BTreeMap<String, KindCount>>,
    /// Where each dealt session starts: the stream cursors at its first request. A party
    /// that ends a session early (an end-of-sequence token) skips to the next start, so
    /// sessions never share material and never misalign.
    #[serde(default)]
    pub sessions: Vec<BTreeMap<String, u64>>,
}

impl Manifest {
    /// The first session start at or after `consumed` on every stream: where the next
    /// session must begin. `None` when no dealt session is left.
    pub fn next_session_start(&self, consumed: &BTreeMap<String, u64>) -> Option<&BTreeMap<String, u64>> {
        self.sessions
            .iter()
            .find(|start| consumed.iter().all(|(k, &v)| v <= start.get(k).copied().unwrap_or(0)))
    }
}

impl Manifest {
    /// Reads and checks `DIR/manifest.json`.
    pub fn read(dir: &Path) -> Result<Manifest, MaterialError> {
        let path = dir.join("manifest.json");
        let text = fs::read_to_string(&path).map_err(|e| MaterialError::Format {
            path: path.clone(),
            detail: format!(
                "cannot read the bundle manifest ({e}); is this a bundle written by `shardlm-client dealer`?"
            ),
        })?;
        let m: Manifest = serde_json::from_str(&text).map_err(|e| MaterialError::Format {
            path: path.clone(),
            detail: format!("not a valid bundle manifest ({e}); regenerate with `shardlm-client dealer ...`"),
        })?;
        if m.format_version != FORMAT_VERSION {
            return Err(MaterialError::Format {
                path,
                detail: format!(
                    "bundle format version {} but this build reads version {FORMAT_VERSION}; regenerate with this build's `shardlm-client dealer`",
                    m.format_version
                ),
            });
        }
        Ok(m)
    }
}

/// A stream's place in a shard: `elements` values of `bits` bits packed into `words`
/// little-endian `u64` words from byte `offset`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct Section {
    offset: u64,
    words: u64,
    elements: u64,
    bits: u32,
}

impl Section {
    /// Elements `off..off + len`, or `None` if out of range or the map is too short.
    fn read(&self, map: &[u8], off: u64, len: u64) -> Option<Vec<u64>> {
        if off.checked_add(len)? > self.elements {
            return None;
        }
        let bits = u64::from(self.bits);
        let first_bit = off * bits;
        let (w0, w1) = (first_bit / 64, ((off + len) * bits).div_ceil(64));
        let start = usize::try_from(self.offset + w0 * 8).ok()?;
        let end = usize::try_from(self.offset + w1 * 8).ok()?;
        let words = le_words(map.get(start..end)?);
        if self.bits == 64 {
            return Some(words);
        }
        crate::ring::unpack_bits_at(&words, (first_bit % 64) as usize, self.bits, len as usize)
    }
}

/// A raw stream being written: values packed at `bits` bits into a temporary file.
struct StreamWriter {
    path: PathBuf,
    out: BufWriter<File>,
    bits: u32,
    acc: u64,
    nbits: u32,
    elements: u64,
}

impl StreamWriter {
    fn push(&mut self, values: &[u64]) -> Result<(), MaterialError> {
        let w = self.bits;
        let mask = crate::ring::low_mask(w);
        let mut bytes = Vec::with_capacity(values.len() * w as usize / 8 + 8);
        for &v in values {
            let v = v & mask;
            self.acc = if self.nbits == 0 { v } else { self.acc | (v << self.nbits) };
            let total = self.nbits + w;
            if total >= 64 {
                bytes.extend_from_slice(&self.acc.to_le_bytes());
                let used = 64 - self.nbits;
                self.acc = if used >= 64 { 0 } else { v >> used };
                self.nbits = total - 64;
            } else {
                self.nbits = total;
            }
        }
        self.elements += values.len() as u64;
        self.out.write_all(&bytes).map_err(io_err(&self.path))
    }

    /// Flushes the last partial word and closes the file.
    fn finish(mut self) -> Result<(PathBuf, u64, u32), MaterialError> {
        if self.nbits > 0 {
            self.out.write_all(&self.acc.to_le_bytes()).map_err(io_err(&self.path))?;
        }
        self.out.flush().map_err(io_err(&self.path))?;
        Ok((self.path, self.elements, self.bits))
    }
}

/// The JSON trailer of a shard.
#[derive(Debug, Serialize, Deserialize)]
struct Trailer {
    party: String,
    seed: String,
    prg: PrgKind,
    sections: BTreeMap<String, Section>,
    totals: BTreeMap<String, u64>,
}

/// Streams a bundle to disk: feed it the requests of the sessions to serve, in the order
/// the forward pass makes them, then [`BundleWriter::finish`].
///
/// Raw streams go to temporary files in the bundle directory as requests arrive (memory
/// stays at one request's worth), and are laid out into the two shards at the end.
pub struct BundleWriter {
    dir: PathBuf,
    model_fingerprint: String,
    variant: String,
    seeds: [Seed; 2],
    cursors: BTreeMap<String, u64>,
    present: [BTreeMap<String, ()>; 2],
    tmp: [BTreeMap<String, StreamWriter>; 2],
    counts: [BTreeMap<String, KindCount>; 2],
    sessions: Vec<BTreeMap<String, u64>>,
}

impl std::fmt::Debug for BundleWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BundleWriter({})", self.dir.display())
    }
}

impl BundleWriter {
    /// Starts a bundle in `dir` (created if missing; refused if it already holds a
    /// bundle). `seed` is the dealer's secret seed: draw it from the OS.
    pub fn create(
        dir: &Path,
        model_fingerprint: &str,
        variant: &str,
        seed: Seed,
    ) -> Result<BundleWriter, MaterialError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        for f in ["manifest.json", "p0.shard", "p1.shard", "p0.journal", "p1.journal"] {
            if dir.join(f).exists() {
                return Err(MaterialError::Format {
                    path: dir.join(f),
                    detail: "the output directory already holds a bundle; choose a new --out directory or delete the old bundle".into(),
                });
            }
        }
        Ok(BundleWriter {
            dir: dir.to_path_buf(),
            model_fingerprint: model_fingerprint.into(),
            variant: variant.into(),
            seeds: party_seeds(&seed),
            cursors: BTreeMap::new(),
            present: Default::default(),
            tmp: Default::default(),
            counts: Default::default(),
            sessions: Vec::new(),
        })
    }

    /// Marks the start of a session: the requests pushed from here on belong to it.
    pub fn start_session(&mut self) {
        self.sessions.push(self.cursors.clone());
    }

    /// Deals one request for both parties and appends it.
    pub fn push(&mut self, req: &MaterialRequest, weights: &dyn LinearWeights) -> Result<(), MaterialError> {
        let comps = req.kind().layout()?;
        let offsets: Vec<u64> =
            comps.iter().map(|c| self.cursors.get(&c.name).copied().unwrap_or(0)).collect();
        let parts = deal(req, [&self.seeds[0], &self.seeds[1]], &offsets, weights)?;
        for (p, raw) in parts.into_iter().enumerate() {
            let mut raw = raw.into_iter();
            for c in &comps {
                if c.src[p] != Src::Absent {
                    self.present[p].insert(c.name.clone(), ());
                }
                if c.src[p] != Src::Raw {
                    continue;
                }
                let words = raw
                    .next()
                    .ok_or_else(|| MaterialError::Mismatch(format!("dealer produced no {}", c.name)))?;
                let dir = &self.dir;
                let entry = match self.tmp[p].entry(c.name.clone()) {
                    std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::btree_map::Entry::Vacant(v) => {
                        let path = dir.join(format!(".{}.{}.tmp", PARTIES[p], c.name));
                        let f = File::create(&path).map_err(io_err(&path))?;
                        v.insert(StreamWriter {
                            path,
                            out: BufWriter::with_capacity(1 << 20, f),
                            bits: c.bits,
                            acc: 0,
                            nbits: 0,
                            elements: 0,
                        })
                    }
                };
                entry.push(&words)?;
            }
            if comps.iter().any(|c| c.src[p] != Src::Absent) {
                let k = self.counts[p].entry(req.kind().name()).or_default();
                k.requests += 1;
                k.elements += req.kind().elements();
            }
        }
        for (c, off) in comps.iter().zip(offsets) {
            self.cursors.insert(c.name.clone(), off + c.len);
        }
        Ok(())
    }

    /// Lays out the shards, writes the manifest and returns it.
    pub fn finish(self) -> Result<Manifest, MaterialError> {
        let BundleWriter { dir, model_fingerprint, variant, seeds, cursors, present, tmp, counts, sessions } =
            self;
        let mut shards = BTreeMap::new();
        let mut hashes = Vec::new();
        for (p, tmps) in tmp.into_iter().enumerate() {
            let totals: BTreeMap<String, u64> =
                present[p].keys().map(|k| (k.clone(), cursors.get(k).copied().unwrap_or(0))).collect();
            let info = write_shard(&dir, p, &seeds[p], tmps, totals)?;
            hashes.push(info.blake3.clone());
            shards.insert(PARTIES[p].to_string(), info);
        }
        let bundle_id = blake3::hash(format!("{}{}", hashes[0], hashes[1]).as_bytes()).to_hex().to_string();
        let created_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let [c0, c1] = counts;
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            bundle_id,
            model_fingerprint,
            variant,
            created_at,
            prg: DEFAULT_PRG,
            shards,
            counts: [("p0".to_string(), c0), ("p1".to_string(), c1)].into_iter().collect(),
            sessions,
        };
        let json = serde_json::to_string_pretty(&manifest)
            .map_err(|e| MaterialError::Format { path: dir.join("manifest.json"), detail: e.to_string() })?;
        write_durably(&dir.join("manifest.json"), json.as_bytes())?;
        Ok(manifest)
    }
}

fn pad_to(f: &mut File, path: &Path, pos: &mut u64) -> Result<(), MaterialError> {
    let pad = (ALIGN - *pos % ALIGN) % ALIGN;
    f.write_all(&vec![0u8; pad as usize]).map_err(io_err(path))?;
    *pos += pad;
    Ok(())
}

fn write_shard(
    dir: &Path,
    p: usize,
    seed: &Seed,
    tmps: BTreeMap<String, StreamWriter>,
    totals: BTreeMap<String, u64>,
) -> Result<ShardInfo, MaterialError> {
    let name = format!("{}.shard", PARTIES[p]);
    let path = dir.join(&name);
    let part = dir.join(format!(".{name}.partial"));
    let mut f = File::create(&part).map_err(io_err(&part))?;
    f.write_all(&[0u8; PREAMBLE as usize]).map_err(io_err(&part))?;
    let mut pos = PREAMBLE;
    let mut sections = BTreeMap::new();
    for (stream, w) in tmps {
        let (tmp_path, elements, bits) = w.finish()?;
        pad_to(&mut f, &part, &mut pos)?;
        let mut src = File::open(&tmp_path).map_err(io_err(&tmp_path))?;
        let n = std::io::copy(&mut src, &mut f).map_err(io_err(&part))?;
        sections.insert(stream, Section { offset: pos, words: n / 8, elements, bits });
        pos += n;
        fs::remove_file(&tmp_path).map_err(io_err(&tmp_path))?;
    }
    pad_to(&mut f, &part, &mut pos)?;
    let trailer =
        Trailer { party: PARTIES[p].into(), seed: seed.to_hex(), prg: DEFAULT_PRG, sections, totals };
    let json = serde_json::to_vec(&trailer)
        .map_err(|e| MaterialError::Format { path: part.clone(), detail: e.to_string() })?;
    f.write_all(&json).map_err(io_err(&part))?;
    let mut pre = [0u8; PREAMBLE as usize];
    pre[..8].copy_from_slice(MAGIC);
    pre[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    pre[12..16].copy_from_slice(&(p as u32).to_le_bytes());
    pre[16..24].copy_from_slice(&pos.to_le_bytes());
    pre[24..32].copy_from_slice(&(json.len() as u64).to_le_bytes());
    f.seek(SeekFrom::Start(0)).map_err(io_err(&part))?;
    f.write_all(&pre).map_err(io_err(&part))?;
    f.sync_all().map_err(io_err(&part))?;
    drop(f);
    let mut h = blake3::Hasher::new();
    h.update_reader(File::open(&part).map_err(io_err(&part))?).map_err(io_err(&part))?;
    fs::rename(&part, &path).map_err(io_err(&path))?;
    Ok(ShardInfo { file: name, blake3: h.finalize().to_hex().to_string(), bytes: pos + json.len() as u64 })
}

/// Writes `path` atomically and durably: temporary file, fsync, rename, fsync of the
/// directory.
fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), MaterialError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io_err(path))?;
    if let Some(dir) = path.parent() {
        // Directory fsync makes the rename durable (best effort where unsupported).
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Maps a shard read-only.
#[allow(unsafe_code)]
fn map_read_only(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: the mapping is read-only and the file is ours: a bundle shard that no
    // process writes after the dealer renamed it into place, opened while we hold the
    // party's exclusive lock (so no other ShardLM process uses it). Its contents are
    // checked (blake3) before use and every read is bounds-checked against the mapped
    // length, so even a concurrent outside modification could give wrong values but not
    // unsoundness in our code beyond what `Mmap` documents.
    unsafe { Mmap::map(file) }
}

/// The journal of a party: consumed words per component stream.
#[derive(Debug, Serialize, Deserialize)]
struct Journal {
    bundle_id: String,
    party: String,
    seq: u64,
    cursors: BTreeMap<String, u64>,
}

struct FileBackend {
    me: usize,
    shard: PathBuf,
    journal_path: PathBuf,
    bundle_id: String,
    seq: u64,
    /// Words per stream journaled ahead of use, so most takes need no fsync.
    reserve_words: u64,
    /// Cursors as journaled (at or ahead of `exact`).
    reserved: BTreeMap<String, u64>,
    /// Cursors of what was handed out.
    exact: BTreeMap<String, u64>,
    map: Mmap,
    sections: BTreeMap<String, Section>,
    totals: BTreeMap<String, u64>,
    _lock: File,
}

impl FileBackend {
    fn write_journal(&mut self, cursors: &BTreeMap<String, u64>) -> Result<(), MaterialError> {
        self.seq += 1;
        let j = Journal {
            bundle_id: self.bundle_id.clone(),
            party: PARTIES[self.me].into(),
            seq: self.seq,
            cursors: cursors.clone(),
        };
        let bytes = serde_json::to_vec(&j)
            .map_err(|e| MaterialError::Format { path: self.journal_path.clone(), detail: e.to_string() })?;
        write_durably(&self.journal_path, &bytes)
    }
}

impl Drop for FileBackend {
    fn drop(&mut self) {
        // A clean close gives back the reserved-but-unused words: journal exactly what
        // was handed out. (After a crash the reservation stays consumed: safe.)
        if self.exact != self.reserved {
            let exact = self.exact.clone();
            let _ = self.write_journal(&exact);
        }
    }
}

impl MaterialStore for FileBackend {
    fn commit(&mut self, cursors: &BTreeMap<String, u64>) -> Result<(), MaterialError> {
        // Only this party's streams are journaled (the other party's positions are
        // implied by the request sequence).
        let cursors: BTreeMap<String, u64> = cursors
            .iter()
            .filter(|(k, _)| self.totals.contains_key(*k))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let cursors = &cursors;
        let covered = cursors.iter().all(|(k, v)| self.reserved.get(k).copied().unwrap_or(0) >= *v);
        if !covered {
            let mut reserved = self.reserved.clone();
            for (k, &v) in cursors {
                let r = reserved.entry(k.clone()).or_insert(0);
                if *r < v {
                    let total = self.totals.get(k).copied().unwrap_or(0);
                    *r = v.saturating_add(self.reserve_words).min(total.max(v));
                }
            }
            // Durable before any of it is handed out.
            self.write_journal(&reserved)?;
            self.reserved = reserved;
        }
        self.exact = cursors.clone();
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

    fn peek(&self, component: &str, offset: u64, len: u64) -> Option<Vec<u64>> {
        self.sections.get(component)?.read(&self.map, offset, len)
    }
}

fn le_words(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|b| {
            let mut w = [0u8; 8];
            w.copy_from_slice(b);
            u64::from_le_bytes(w)
        })
        .collect()
}

/// Words per component stream the journal reserves ahead of use by default
/// ([`Material::open`]): one fsync'd journal write per 2^20 words (8 MiB) of a stream
/// instead of one per take. A crash loses at most this much per stream, never reuses it.
pub const DEFAULT_RESERVE_WORDS: u64 = 1 << 20;

impl<R: Role> Material<R> {
    /// Opens this party's material in bundle directory `dir`: takes the party's lock,
    /// checks the manifest, the model fingerprint (if `expected_model` is given), the
    /// shard's blake3 and party, and resumes from the journal. Reserves
    /// [`DEFAULT_RESERVE_WORDS`] ahead (see [`Material::open_with_reserve`]).
    pub fn open(dir: &Path, expected_model: Option<&str>) -> Result<Material<R>, MaterialError> {
        Material::open_with_reserve(dir, expected_model, DEFAULT_RESERVE_WORDS)
    }

    /// Like [`Material::open`], journaling `reserve_words` words per stream ahead of use.
    /// `0` journals (and fsyncs) every take exactly. Whatever was reserved when the
    /// process dies is never handed out again; a clean drop journals the exact cursors.
    pub fn open_with_reserve(
        dir: &Path,
        expected_model: Option<&str>,
        reserve_words: u64,
    ) -> Result<Material<R>, MaterialError> {
        let me = R::ID as usize;
        let party = PARTIES[me];
        let manifest = Manifest::read(dir)?;
        if let Some(model) = expected_model {
            if model != manifest.model_fingerprint {
                return Err(MaterialError::WrongModel {
                    dir: dir.into(),
                    found: manifest.model_fingerprint.clone(),
                    expected: model.into(),
                });
            }
        }
        let shard = dir.join(format!("{party}.shard"));
        if !shard.exists() {
            let other = PARTIES[1 - me];
            return Err(MaterialError::Format {
                path: shard,
                detail: format!(
                    "missing: this bundle directory has no {party} material (only {other}'s shard is given to {other}); copy {party}.shard and manifest.json here"
                ),
            });
        }
        let lock_path = dir.join(format!("{party}.lock"));
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        let locked = fs4::fs_std::FileExt::try_lock_exclusive(&lock).map_err(io_err(&lock_path))?;
        if !locked {
            return Err(MaterialError::Locked { shard, lock: lock_path });
        }
        let info = manifest.shards.get(party).ok_or_else(|| MaterialError::Format {
            path: dir.join("manifest.json"),
            detail: format!(
                "the manifest lists no {party} shard; regenerate with `shardlm-client dealer ...`"
            ),
        })?;
        let file = File::open(&shard).map_err(io_err(&shard))?;
        let map = map_read_only(&file).map_err(io_err(&shard))?;
        let corrupted =
            |detail: &str| MaterialError::Corrupted { path: shard.clone(), detail: detail.into() };
        if map.len() < PREAMBLE as usize || &map[..8] != MAGIC {
            return Err(corrupted("is not a shard (bad magic or truncated)"));
        }
        let found_party = u32::from_le_bytes([map[12], map[13], map[14], map[15]]);
        if found_party != me as u32 {
            return Err(MaterialError::WrongParty {
                path: shard,
                found: PARTIES.get(found_party as usize).unwrap_or(&"unknown party").to_string(),
                expected: party.into(),
            });
        }
        if blake3::hash(&map).to_hex().as_str() != info.blake3 {
            return Err(corrupted("blake3 mismatch"));
        }
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&map[at..at + 8]);
            u64::from_le_bytes(w)
        };
        let (t_off, t_len) = (word(16), word(24));
        let trailer_bytes = t_off
            .checked_add(t_len)
            .and_then(|end| map.get(t_off as usize..end as usize))
            .ok_or_else(|| corrupted("is truncated (trailer out of bounds)"))?;
        let trailer: Trailer = serde_json::from_slice(trailer_bytes)
            .map_err(|e| corrupted(&format!("has a bad trailer ({e})")))?;
        for (name, s) in &trailer.sections {
            let end = s.words.checked_mul(8).and_then(|b| b.checked_add(s.offset));
            let fits = s.elements.checked_mul(u64::from(s.bits)).map(|b| b.div_ceil(64) <= s.words);
            if end.is_none_or(|e| e > t_off)
                || s.offset % ALIGN != 0
                || !(1..=64).contains(&s.bits)
                || fits != Some(true)
            {
                return Err(corrupted(&format!("has section {name} out of bounds")));
            }
        }
        let seed = Seed::from_hex(&trailer.seed).ok_or_else(|| corrupted("has a bad seed"))?;
        if trailer.prg != DEFAULT_PRG {
            return Err(MaterialError::Format {
                path: shard,
                detail: format!(
                    "dealt with PRG {:?} but this build uses {DEFAULT_PRG:?}; regenerate the bundle",
                    trailer.prg
                ),
            });
        }
        let journal_path = dir.join(format!("{party}.journal"));
        let (cursors, seq) = match fs::read(&journal_path) {
            Ok(bytes) => {
                let j: Journal = serde_json::from_slice(&bytes).map_err(|e| MaterialError::Format {
                    path: journal_path.clone(),
                    detail: format!(
                        "unreadable journal ({e}); refusing to guess what was consumed: deal a new bundle"
                    ),
                })?;
                if j.bundle_id != manifest.bundle_id || j.party != party {
                    return Err(MaterialError::Format {
                        path: journal_path,
                        detail: "journal belongs to another bundle or party; refusing to guess what was consumed: deal a new bundle".into(),
                    });
                }
                (j.cursors, j.seq)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (BTreeMap::new(), 0),
            Err(e) => return Err(MaterialError::Io { path: journal_path, source: e }),
        };
        let backend = FileBackend {
            me,
            shard,
            journal_path,
            bundle_id: manifest.bundle_id.clone(),
            seq,
            reserve_words,
            reserved: cursors.clone(),
            exact: cursors.clone(),
            map,
            sections: trailer.sections,
            totals: trailer.totals,
            _lock: lock,
        };
        Ok(Material::from_store(seed, cursors, Box::new(backend)))
    }
}
