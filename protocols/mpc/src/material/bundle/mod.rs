//! Dealer bundles on disk (DESIGN.md section 5).
//!
//! `shardlm-client dealer --out DIR` writes one directory per party, each to be handed
//! to that party only:
//!
//! ```text
//! DIR/manifest.json          public: what was dealt (both parts hold a copy)
//! DIR/p0/manifest.json       the client's part
//! DIR/p0/p0.shard
//! DIR/p1/manifest.json       the server's part (only for variants where it has one)
//! DIR/p1/p1.shard
//! ```
//!
//! Directories are created 0700 and files 0600. A party opens its own part (`DIR/p0`
//! or `DIR/p1`, or `DIR` when it holds only that party's part) and **refuses a
//! directory that also holds the other party's part**: a server that can read
//! `p0.shard` learns `x0 - a0` and with it the prompt from the first opening; a client
//! that can read `p1.shard` can recover every intermediate activation.
//!
//! * [`Manifest`]: format version, bundle id, a random nonce, model fingerprint,
//!   variant, PRG, created-at, who dealt ([`Dealer`]), the client fingerprints allowed
//!   to consume the server's part, per-shard index blake3 and size, counts per
//!   material kind per party, the shape every session was dealt for ([`DealtShape`])
//!   and where each session starts. The bundle id is the blake3 of the rest
//!   of the manifest ([`Manifest::sealed_id`]; the nonce makes two bundles never share
//!   an id), checked on every read: an edited or corrupted manifest (a moved session
//!   start would start a party at the wrong place of its streams, silently) is refused.
//! * `pX.shard`: a 64-byte preamble (`SHLMSHRD`, format version `u32`, party `u32`,
//!   trailer offset `u64`, trailer length `u64`, little-endian), then every raw
//!   component stream of that party as a raw little-endian `u64` array at a 64-byte
//!   aligned offset (narrow values, the OT strings, bit-packed at their width), then a
//!   JSON trailer (the party's seed, each stream's offset and length, the words
//!   available in every component stream, and the blake3 of every 1 MiB chunk of the
//!   data: the streams and the padding between them).
//!   Memory-mapped on open. The manifest holds the blake3 of the shard's index
//!   (preamble and trailer), checked on open; each chunk is checked when the session
//!   that uses it starts (or at its first read outside sessions), before anything is
//!   recorded or handed out ([`store`]). A bundle of K sessions is not re-hashed whole
//!   at each of its K opens, and a corrupted chunk refuses only the sessions that use
//!   it, without spending them.
//! * One-time use ([`journal`]): consumption is recorded durably **before** material
//!   is handed out, in two places: `pX.journal` beside the shard and a ledger in the
//!   user's state directory keyed by bundle id, which survives a deleted journal or a
//!   restored copy of the bundle. A session reserves its whole range with one write
//!   when it starts; a crash wastes at most the session in progress.
//! * `pX.lock`: an exclusive `flock` while a process uses that party's material.

mod journal;
mod store;
mod writer;

pub use journal::Ledger;
pub use store::{OpenOptions, Reserve};
pub use writer::BundleWriter;

use super::MaterialError;
use crate::prg::PrgKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Version of the bundle format this code writes and reads (4: on-demand streams are
/// AES-128-CTR, [`crate::material::kind::ON_DEMAND_PRG`]; 5: the data is hashed in 1 MiB
/// chunks listed in the trailer, the manifest holds the hash of the shard's index; 6:
/// v3-ot's SiLU reads a tangent line, its bit-vector triples carry bits times `y` alone).
pub const FORMAT_VERSION: u32 = 6;

pub(crate) const PARTIES: [&str; 2] = ["p0", "p1"];

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
    /// File name inside the party's directory.
    pub file: String,
    /// blake3 (hex) of the shard's index: its 64-byte preamble and its trailer, which
    /// holds the blake3 of every 1 MiB chunk of the data. Opening checks the index; a
    /// session checks the chunks it will read when it starts.
    pub index_blake3: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// Who dealt a bundle, and so which promise holds (DESIGN.md section 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DealerRole {
    /// The client party dealt for itself. Fine for variants where only the client holds
    /// material (v2, v3). For fully private variants the prompt stays private from the
    /// server, but the client could recover every intermediate activation.
    Client,
    /// A host independent of both parties (a third machine, an HSM or enclave): each
    /// party sees only its own part, and every promise of the variant holds.
    Independent,
}

impl DealerRole {
    /// One line on what this dealer means for a variant whose server holds material
    /// (`both_parties`) or not.
    pub fn promise(self, both_parties: bool) -> &'static str {
        match (self, both_parties) {
            (_, false) => "the server holds no material: the client may deal for itself",
            (DealerRole::Independent, true) => {
                "dealt by a host independent of both parties: each party sees only its own part"
            }
            (DealerRole::Client, true) => {
                "dealt by the client itself: the prompt stays private from the server, but this client could recover every intermediate activation (deal on an independent host for the full promise)"
            }
        }
    }
}

/// The dealer of a bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dealer {
    /// Its role.
    pub role: DealerRole,
    /// The host it ran on, as it named itself.
    pub host: String,
}

/// The public shape every session of a bundle was dealt for. A session of another
/// shape would take other material at the first step whose shape differs, after both
/// parties reserved the session: the client checks it before connecting and the server
/// before admitting, so a mismatch is refused without spending anything.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DealtShape {
    /// Prompt tokens per session.
    pub prompt_tokens: u64,
    /// New tokens (forward passes) per session.
    pub max_new_tokens: u64,
    /// Logits for every prefill position (`eval --all-positions`), not only the last.
    pub all_positions: bool,
}

impl std::fmt::Display for DealtShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} prompt tokens + {} new", self.prompt_tokens, self.max_new_tokens)?;
        if self.all_positions {
            write!(f, ", logits at every position")?;
        }
        Ok(())
    }
}

/// `manifest.json` of a bundle (also in each party's directory).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// [`Manifest::sealed_id`]: blake3 of every other field (shard hashes and nonce
    /// included), hex.
    pub bundle_id: String,
    /// Random 16 bytes, hex: two bundles dealt from the same seed still differ.
    pub nonce: String,
    /// Fingerprint of the model the bundle was dealt for.
    pub model_fingerprint: String,
    /// Protocol variant.
    pub variant: String,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    /// PRG of the seeded components.
    pub prg: PrgKind,
    /// Who dealt it.
    pub dealer: Dealer,
    /// Client certificate fingerprints allowed to consume the server's part (empty:
    /// any client the server allows).
    pub bound_clients: Vec<String>,
    /// Shards by party (`p0`, `p1`); a party without material has none.
    pub shards: BTreeMap<String, ShardInfo>,
    /// Counts per party, then per kind.
    pub counts: BTreeMap<String, BTreeMap<String, KindCount>>,
    /// The shape every session was dealt for (`None`: not recorded, as for bundles
    /// written request by request without a plan).
    pub session_shape: Option<DealtShape>,
    /// Where each dealt session starts: the stream cursors at its first request. A
    /// session reserves everything up to the next start; a party that ends a session
    /// early skips to the next start, so sessions never share material and never
    /// misalign.
    pub sessions: Vec<BTreeMap<String, u64>>,
}

impl Manifest {
    /// Reads and checks `DIR/manifest.json`.
    pub fn read(dir: &Path) -> Result<Manifest, MaterialError> {
        let path = dir.join("manifest.json");
        let text = fs::read_to_string(&path).map_err(|e| MaterialError::Format {
            path: path.clone(),
            detail: format!(
                "cannot read the bundle manifest ({e}); is this a party's part of a bundle written by `shardlm-client dealer`?"
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
        if m.bundle_id != m.sealed_id() {
            return Err(MaterialError::Format {
                path,
                detail: "does not match its bundle id: the manifest was edited or corrupted after dealing (a changed session start, shard hash or model would hand out the wrong material); restore it from the dealer's output or regenerate with `shardlm-client dealer ...`".into(),
            });
        }
        Ok(m)
    }

    /// The bundle id this manifest's contents give: blake3 (hex) of the manifest's JSON
    /// with an empty `bundle_id`, so that it covers every other field (the shard
    /// hashes, the nonce, the model, the variant, where each session starts). The
    /// dealer writes it ([`Manifest::seal`]); [`Manifest::read`] refuses a manifest
    /// whose id does not match.
    pub fn sealed_id(&self) -> String {
        let unsealed = Manifest { bundle_id: String::new(), ..self.clone() };
        // Serializing this struct cannot fail: every map has string keys.
        let json = serde_json::to_vec(&unsealed).unwrap_or_default();
        blake3::hash(&json).to_hex().to_string()
    }

    /// Sets the bundle id to [`Manifest::sealed_id`] (the dealer, after filling in
    /// every other field).
    pub fn seal(&mut self) {
        self.bundle_id = self.sealed_id();
    }

    /// Index of the first session starting at or after `consumed` on every stream:
    /// where the next session must begin. `None` when no dealt session is left.
    pub fn next_session(&self, consumed: &BTreeMap<String, u64>) -> Option<usize> {
        self.sessions
            .iter()
            .position(|start| consumed.iter().all(|(k, &v)| v <= start.get(k).copied().unwrap_or(0)))
    }

    /// Whether a party holding `consumed` is exactly at the start of session `index`.
    pub fn at_session_start(&self, consumed: &BTreeMap<String, u64>, index: usize) -> bool {
        self.sessions
            .get(index)
            .is_some_and(|start| consumed.iter().all(|(k, &v)| v == start.get(k).copied().unwrap_or(0)))
    }
}

/// Where party `me`'s part of a bundle is, given the directory a user pointed at:
/// `DIR/pX` when it exists, else `DIR` itself. Refuses a directory that holds the other
/// party's part, naming what to do.
pub(crate) fn party_dir(dir: &Path, me: usize) -> Result<PathBuf, MaterialError> {
    let (mine, other) = (PARTIES[me], PARTIES[1 - me]);
    let part = if dir.join(mine).is_dir() { dir.join(mine) } else { dir.to_path_buf() };
    for found in [dir.join(other), part.join(other), part.join(format!("{other}.shard"))] {
        if found.exists() {
            let who = if me == 0 { "client" } else { "server" };
            let risk = if me == 0 {
                "a client that can read the server's part can recover every intermediate activation"
            } else {
                "a server that can read the client's part learns the prompt from the first opening"
            };
            return Err(MaterialError::OtherPartyPart {
                dir: dir.to_path_buf(),
                found,
                detail: format!(
                    "the {who} ({mine}) must be given only its own part ({risk}): pass the {mine} directory of the bundle, and keep {other}'s part off this host"
                ),
            });
        }
    }
    Ok(part)
}
