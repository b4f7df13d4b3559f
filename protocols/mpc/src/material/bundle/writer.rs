//! Writing a bundle: the dealer feeds the requests of the sessions to serve, in the
//! order the forward pass makes them; raw streams go to temporary files in each party's
//! directory as requests arrive (memory stays at one request's worth), and are laid out
//! into the shards at the end. Each party's part goes to its own 0700 directory.

use super::journal::{create_private_dir, create_private_file, sync_dir, write_durably};
use super::store::{index_blake3, Section, Trailer, ALIGN, CHUNK_BYTES, MAGIC, PREAMBLE};
use super::{Dealer, DealerRole, DealtShape, KindCount, Manifest, ShardInfo, FORMAT_VERSION, PARTIES};
use crate::material::ideal::party_seeds;
use crate::material::{deal, io_err, LinearWeights, MaterialError, MaterialRequest, Src};
use crate::prg::{Seed, DEFAULT_PRG};
use rayon::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

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

/// Streams a bundle to disk: [`BundleWriter::start_session`], then
/// [`BundleWriter::push`] every request of the session in order, for each session; then
/// [`BundleWriter::finish`].
pub struct BundleWriter {
    dir: PathBuf,
    model_fingerprint: String,
    variant: String,
    dealer: Dealer,
    bound_clients: Vec<String>,
    seeds: [Seed; 2],
    cursors: BTreeMap<String, u64>,
    present: [BTreeSet<String>; 2],
    tmp: [BTreeMap<String, StreamWriter>; 2],
    counts: [BTreeMap<String, KindCount>; 2],
    sessions: Vec<BTreeMap<String, u64>>,
    session_shape: Option<DealtShape>,
}

impl std::fmt::Debug for BundleWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BundleWriter({})", self.dir.display())
    }
}

impl BundleWriter {
    /// Starts a bundle in `dir` (created 0700 if missing; refused if it already holds a
    /// bundle). `seed` is the dealer's secret seed: draw it from the OS. The dealer's
    /// role defaults to [`DealerRole::Client`]; say otherwise with
    /// [`BundleWriter::dealt_by`].
    pub fn create(
        dir: &Path,
        model_fingerprint: &str,
        variant: &str,
        seed: Seed,
    ) -> Result<BundleWriter, MaterialError> {
        create_private_dir(dir)?;
        for f in ["manifest.json", "p0", "p1", "p0.shard", "p1.shard"] {
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
            dealer: Dealer { role: DealerRole::Client, host: host_name() },
            bound_clients: Vec::new(),
            seeds: party_seeds(&seed),
            cursors: BTreeMap::new(),
            present: Default::default(),
            tmp: Default::default(),
            counts: Default::default(),
            sessions: Vec::new(),
            session_shape: None,
        })
    }

    /// Records the shape every session is dealt for (the manifest's
    /// [`Manifest::session_shape`]), checked by both parties before a session starts.
    pub fn session_shape(&mut self, shape: DealtShape) {
        self.session_shape = Some(shape);
    }

    /// Records who deals this bundle (and so which promise holds).
    pub fn dealt_by(mut self, role: DealerRole) -> Self {
        self.dealer.role = role;
        self
    }

    /// Binds the server's part to these client certificate fingerprints: the server
    /// serves its sessions to them only.
    pub fn bind_clients(mut self, fingerprints: Vec<String>) -> Self {
        self.bound_clients = fingerprints;
        self
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
                    self.present[p].insert(c.name.clone());
                }
                if c.src[p] != Src::Raw {
                    continue;
                }
                let words = raw
                    .next()
                    .ok_or_else(|| MaterialError::Mismatch(format!("dealer produced no {}", c.name)))?;
                self.stream(p, &c.name, c.bits)?.push(&words)?;
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

    /// Party `p`'s temporary stream `name`, created on first use in its directory.
    fn stream(&mut self, p: usize, name: &str, bits: u32) -> Result<&mut StreamWriter, MaterialError> {
        if !self.tmp[p].contains_key(name) {
            let dir = self.dir.join(PARTIES[p]);
            create_private_dir(&dir)?;
            let path = dir.join(format!(".{name}.tmp"));
            let f = create_private_file(&path)?;
            let w = StreamWriter {
                path,
                out: BufWriter::with_capacity(1 << 20, f),
                bits,
                acc: 0,
                nbits: 0,
                elements: 0,
            };
            self.tmp[p].insert(name.to_string(), w);
        }
        self.tmp[p].get_mut(name).ok_or_else(|| MaterialError::Mismatch(format!("stream {name} vanished")))
    }

    /// Lays out the shards of the parties that hold material, writes the manifest (at
    /// the top and in each party's directory) and returns it.
    pub fn finish(self) -> Result<Manifest, MaterialError> {
        let BundleWriter {
            dir,
            model_fingerprint,
            variant,
            dealer,
            bound_clients,
            seeds,
            cursors,
            present,
            tmp,
            counts,
            sessions,
            session_shape,
        } = self;
        let mut shards = BTreeMap::new();
        for (p, tmps) in tmp.into_iter().enumerate() {
            if present[p].is_empty() {
                continue;
            }
            let totals: BTreeMap<String, u64> =
                present[p].iter().map(|k| (k.clone(), cursors.get(k).copied().unwrap_or(0))).collect();
            let part = dir.join(PARTIES[p]);
            create_private_dir(&part)?;
            let info = write_shard(&part, p, &seeds[p], tmps, totals)?;
            shards.insert(PARTIES[p].to_string(), info);
        }
        let mut nonce = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
        let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
        let created_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let [c0, c1] = counts;
        let mut manifest = Manifest {
            format_version: FORMAT_VERSION,
            bundle_id: String::new(),
            nonce,
            model_fingerprint,
            variant,
            created_at,
            prg: DEFAULT_PRG,
            dealer,
            bound_clients,
            shards,
            counts: [("p0".to_string(), c0), ("p1".to_string(), c1)].into_iter().collect(),
            session_shape,
            sessions,
        };
        manifest.seal();
        let json = serde_json::to_string_pretty(&manifest)
            .map_err(|e| MaterialError::Format { path: dir.join("manifest.json"), detail: e.to_string() })?;
        for p in manifest.shards.keys() {
            write_durably(&dir.join(p).join("manifest.json"), json.as_bytes())?;
        }
        write_durably(&dir.join("manifest.json"), json.as_bytes())?;
        Ok(manifest)
    }
}

/// This host's name as it calls itself (informational, for the manifest).
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_string()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

fn pad_to(f: &mut impl Write, path: &Path, pos: &mut u64) -> Result<(), MaterialError> {
    let pad = (ALIGN - *pos % ALIGN) % ALIGN;
    f.write_all(&vec![0u8; pad as usize]).map_err(io_err(path))?;
    *pos += pad;
    Ok(())
}

/// Writes party `p`'s shard into its directory `part` from its temporary streams.
fn write_shard(
    part: &Path,
    p: usize,
    seed: &Seed,
    tmps: BTreeMap<String, StreamWriter>,
    totals: BTreeMap<String, u64>,
) -> Result<ShardInfo, MaterialError> {
    let name = format!("{}.shard", PARTIES[p]);
    let path = part.join(&name);
    let partial = part.join(format!(".{name}.partial"));
    let mut f = create_private_file(&partial)?;
    f.write_all(&[0u8; PREAMBLE as usize]).map_err(io_err(&partial))?;
    let mut data = ChunkHasher { out: f, buf: Vec::with_capacity(ChunkHasher::BATCH), hex: String::new() };
    let mut pos = PREAMBLE;
    let mut sections = BTreeMap::new();
    for (stream, w) in tmps {
        let (tmp_path, elements, bits) = w.finish()?;
        pad_to(&mut data, &partial, &mut pos)?;
        let mut src = File::open(&tmp_path).map_err(io_err(&tmp_path))?;
        let n = std::io::copy(&mut src, &mut data).map_err(io_err(&partial))?;
        sections.insert(stream, Section { offset: pos, words: n / 8, elements, bits });
        pos += n;
        fs::remove_file(&tmp_path).map_err(io_err(&tmp_path))?;
    }
    pad_to(&mut data, &partial, &mut pos)?;
    let (mut f, chunks) = data.finish().map_err(io_err(&partial))?;
    let trailer =
        Trailer { party: PARTIES[p].into(), seed: seed.to_hex(), prg: DEFAULT_PRG, sections, totals, chunks };
    let json = serde_json::to_vec(&trailer)
        .map_err(|e| MaterialError::Format { path: partial.clone(), detail: e.to_string() })?;
    f.write_all(&json).map_err(io_err(&partial))?;
    let mut pre = [0u8; PREAMBLE as usize];
    pre[..8].copy_from_slice(MAGIC);
    pre[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    pre[12..16].copy_from_slice(&(p as u32).to_le_bytes());
    pre[16..24].copy_from_slice(&pos.to_le_bytes());
    pre[24..32].copy_from_slice(&(json.len() as u64).to_le_bytes());
    f.seek(SeekFrom::Start(0)).map_err(io_err(&partial))?;
    f.write_all(&pre).map_err(io_err(&partial))?;
    f.sync_all().map_err(io_err(&partial))?;
    drop(f);
    fs::rename(&partial, &path).map_err(io_err(&path))?;
    sync_dir(part)?;
    Ok(ShardInfo { file: name, index_blake3: index_blake3(&pre, &json), bytes: pos + json.len() as u64 })
}

/// Writes the shard's data through to `out`, hashing it in [`CHUNK_BYTES`] chunks (a
/// batch of chunks at a time, in parallel) into `hex`.
struct ChunkHasher {
    out: File,
    buf: Vec<u8>,
    hex: String,
}

impl ChunkHasher {
    /// Bytes buffered before a batch is written and hashed: a multiple of the chunk.
    const BATCH: usize = 32 * CHUNK_BYTES as usize;

    fn flush_batch(&mut self) -> std::io::Result<()> {
        self.out.write_all(&self.buf)?;
        let hashes: Vec<blake3::Hash> = self.buf.par_chunks(CHUNK_BYTES as usize).map(blake3::hash).collect();
        self.hex.extend(hashes.iter().map(|h| h.to_hex().to_string()));
        self.buf.clear();
        Ok(())
    }

    /// Writes and hashes what is left (the last chunk may be short).
    fn finish(mut self) -> std::io::Result<(File, String)> {
        self.flush_batch()?;
        Ok((self.out, self.hex))
    }
}

impl Write for ChunkHasher {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let n = bytes.len().min(Self::BATCH - self.buf.len());
        self.buf.extend_from_slice(&bytes[..n]);
        if self.buf.len() == Self::BATCH {
            self.flush_batch()?;
        }
        Ok(n)
    }

    /// Nothing: a batch is written whole (so that chunks stay aligned), the last one by
    /// [`ChunkHasher::finish`].
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
