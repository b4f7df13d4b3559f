//! Dealer material: where each party's correlated randomness comes from.
//!
//! A party consumes material through [`MaterialSource<R>`]: material is *taken*,
//! sequentially per kind, never copied (STYLE.md 3), and typed by the party that holds
//! it. Both parties run the same deterministic forward pass, so they take the same
//! sequence of [`MaterialRequest`]s. Every kind of correlation is one module of
//! [`kinds`] (its type, layout, dealing and assembly, [`kind`] has the traits); the
//! registry of kinds is in [`kinds`] too. Three sources implement [`MaterialSource`]:
//!
//! * [`IdealDealer`]: both parties' material from one seed, in memory (tests).
//! * dealer bundle files ([`BundleWriter`], [`Material::open`]): a directory per party
//!   ([`bundle`] module doc has the format).
//! * [`Recorder`]: records the requests a forward pass makes (the planner's view),
//!   handing out zeros of the right shapes.
//!
//! # Seed compression
//!
//! Every kind is a list of *components* (streams of ring elements). For each party a
//! component is either derived from that party's seed (`Prg` of
//! `party_seed.derive(component, 0)`, seeked to the component's cursor), stored raw in
//! the party's shard, or absent. P1's material is all seed (plus public shape records):
//! the server's shard is a few hundred bytes. The raw parts are the ones that depend on
//! both parties' seeds, which is why they cannot be seeds. Security: P1's components
//! come from P1's seed only, which P0 never sees, so P0's `c0 = ab - c1` is uniform to
//! P0 (masked by `c1`), and P1 never sees anything of P0's. This holds only when the
//! dealer is neither party, or when the party that deals is trusted with the other's
//! part (DESIGN.md section 1): P0 dealing for itself can derive P1's every share.

pub mod bundle;
mod ideal;
pub mod kind;
pub mod kinds;
mod recorder;

pub use bundle::{
    BundleWriter, Dealer, DealerRole, DealtShape, KindCount, Ledger, Manifest, OpenOptions, Reserve,
    ShardInfo, FORMAT_VERSION,
};
pub use ideal::{IdealDealer, SharedWeights};
pub use kind::{Component, Kind, OnDemand, OnDemandReader, Request, Src};
pub use kinds::*;
pub use recorder::Recorder;

use crate::prg::Seed;
use crate::share::Role;
use kind::{seeded, Seeded, SHAPE};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::path::PathBuf;

/// What the dealer flag message says when material runs out.
pub const RAISE_FLAGS: &str = "`--max-new-tokens`, `--prompt-tokens` or `--sessions`";

/// What can go wrong with material. Every message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum MaterialError {
    /// The bundle has less of a kind left than a step needs.
    #[error("material exhausted: {kind} needs {needed} more words but only {left} are left in this bundle; deal a larger bundle: raise {RAISE_FLAGS} of `shardlm-client dealer`")]
    Exhausted {
        /// The kind (and component) that ran out.
        kind: String,
        /// Words needed by this step.
        needed: u64,
        /// Words left.
        left: u64,
    },
    /// The request sequence does not match what the bundle was dealt for.
    #[error("material does not match this forward pass: {0}; deal a new bundle for this model, variant and settings with `shardlm-client dealer`")]
    Mismatch(String),
    /// A request that makes no sense (zero-sized choices, bad widths, overflow).
    #[error("invalid material request: {0}")]
    InvalidRequest(String),
    /// A shard's contents do not match the manifest.
    #[error("material corrupted: {path} {detail}; regenerate with `shardlm-client dealer ...`")]
    Corrupted {
        /// The file.
        path: PathBuf,
        /// What is wrong ("blake3 mismatch", "truncated", ...).
        detail: String,
    },
    /// The directory given to a party also holds the other party's part.
    #[error("{dir} holds the other party's material ({found}): {detail}")]
    OtherPartyPart {
        /// The directory given.
        dir: PathBuf,
        /// What of the other party's was found.
        found: PathBuf,
        /// Why that voids the variant's promise and what to do.
        detail: String,
    },
    /// A session of a bundle that is already spent (used, reserved by a crashed run, or
    /// recorded as spent in the ledger of this host) was asked for.
    #[error("session {session} of bundle {bundle} is already spent ({}); material is never used twice: deal a new bundle with `shardlm-client dealer`", spent_detail(*next, *sessions))]
    Spent {
        /// The bundle id.
        bundle: String,
        /// The session asked for.
        session: usize,
        /// The next unspent session, if any.
        next: Option<usize>,
        /// Sessions dealt.
        sessions: usize,
    },
    /// Another process holds this party's material.
    #[error("material {shard} is in use by another process (lock {lock} is held); stop the other session or use another bundle")]
    Locked {
        /// The shard.
        shard: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// The shard belongs to the other party.
    #[error("{path} is {found}'s material but this is {expected}; give each party its own shard")]
    WrongParty {
        /// The file.
        path: PathBuf,
        /// The party the shard is for.
        found: String,
        /// The party opening it.
        expected: String,
    },
    /// The bundle was dealt for another model.
    #[error("bundle {dir} was dealt for model {found} but this model is {expected}; deal a bundle for this model with `shardlm-client dealer --model-dir ...`")]
    WrongModel {
        /// The bundle directory.
        dir: PathBuf,
        /// Fingerprint in the manifest.
        found: String,
        /// Fingerprint of the loaded model.
        expected: String,
    },
    /// The bundle directory or its files are not a bundle this version reads.
    #[error("{path}: {detail}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        detail: String,
    },
    /// The dealer could not get a linear weight.
    #[error("dealer cannot read linear weight {id}: {detail}")]
    Weights {
        /// The weight id.
        id: u32,
        /// Why.
        detail: String,
    },
    /// File IO.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn spent_detail(next: Option<usize>, sessions: usize) -> String {
    match next {
        Some(n) => format!("the next unspent session is {n} of {sessions}"),
        None => format!("all {sessions} sessions are spent"),
    }
}

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> MaterialError {
    let path = path.into();
    move |source| MaterialError::Io { path, source }
}

/// The public linear weights the dealer needs for masked-linear material: weight `id`
/// as `d_out x d_in` ring-encoded (`enc_{F_w}(W)`), row-major.
pub trait LinearWeights {
    /// Weight `id`; an error string if there is no such weight.
    fn linear_weight(&self, id: u32) -> Result<Cow<'_, [u64]>, String>;

    /// `S = R enc(W_id)^T` (`n x d_out`) for a mask `R` (`n x d_in`). The default
    /// multiplies with [`crate::ring::gemm_abt`]; holders of prepared weights override it
    /// with a faster exact backend GEMM.
    fn mask_image(
        &self,
        id: u32,
        r: &[u64],
        n: usize,
        d_in: usize,
        d_out: usize,
    ) -> Result<Vec<u64>, String> {
        let w = self.linear_weight(id)?;
        if w.len() as u64 != (d_out as u64) * (d_in as u64) {
            return Err(format!("has {} elements, expected d_out x d_in = {d_out} x {d_in}", w.len()));
        }
        Ok(crate::ring::gemm_abt(r, &w, n, d_in, d_out))
    }
}

/// No weights: any masked-linear request fails with [`MaterialError::Weights`].
#[derive(Clone, Copy, Debug, Default)]
pub struct NoWeights;

impl LinearWeights for NoWeights {
    fn linear_weight(&self, id: u32) -> Result<Cow<'_, [u64]>, String> {
        Err(format!("no weights were given to the dealer (weight {id})"))
    }
}

impl<F> LinearWeights for F
where
    F: Fn(u32) -> Result<Vec<u64>, String>,
{
    fn linear_weight(&self, id: u32) -> Result<Cow<'_, [u64]>, String> {
        self(id).map(Cow::Owned)
    }
}

/// A party's stock of correlated randomness (STYLE.md 3: taken, never copied; running
/// out is [`MaterialError::Exhausted`]).
pub trait MaterialSource<R: Role> {
    /// Takes the material of one request of any kind this party can hold, e.g.
    /// `m.take(TriplesRequest { n })` gives [`Triples<R>`].
    fn take<Q: Request<R>>(&mut self, request: Q) -> Result<Q::Output, MaterialError>;
}

/// A borrowed source is a source: a session can run on material that outlives it.
impl<R: Role, M: MaterialSource<R> + ?Sized> MaterialSource<R> for &mut M {
    fn take<Q: Request<R>>(&mut self, request: Q) -> Result<Q::Output, MaterialError> {
        (**self).take(request)
    }
}

impl MaterialRequest {
    /// Raw bytes this request stores in `party`'s shard (0 for P0, 1 for P1), packed
    /// widths included; the rest of its material is seed-derived. Errors on an invalid
    /// request.
    pub fn raw_bytes(&self, party: u8) -> Result<f64, MaterialError> {
        let p = usize::from(party.min(1));
        Ok(self
            .kind()
            .layout()?
            .iter()
            .filter(|c| c.src[p] == Src::Raw)
            .map(|c| c.len as f64 * f64::from(c.bits) / 8.0)
            .sum())
    }
}

/// Raw components of both parties for `req` at `offsets` (one per component of the
/// layout): `[p0 parts, p1 parts]`. The one dealing entry point, used by the ideal
/// dealer (on demand) and the bundle writer (to disk), so the two can never disagree.
pub(crate) fn deal(
    req: &MaterialRequest,
    seeds: [&Seed; 2],
    offsets: &[u64],
    weights: &dyn LinearWeights,
) -> Result<[Vec<Vec<u64>>; 2], MaterialError> {
    let kind = req.kind();
    let comps = kind.layout()?;
    if offsets.len() != comps.len() {
        return Err(MaterialError::Mismatch(format!(
            "{} offsets for {} components",
            offsets.len(),
            comps.len()
        )));
    }
    kind.deal(&Seeded { seeds, comps: &comps, offsets }, weights)
}

/// P1's raw components without dealing the rest: P1's only raw parts are public shape
/// records (the ideal dealer's P1 needs no seeds of P0's for them).
pub(crate) fn p1_raw_parts(req: &MaterialRequest) -> Result<Vec<Vec<u64>>, MaterialError> {
    let kind = req.kind();
    let mut out = Vec::new();
    for c in kind.layout()?.iter().filter(|c| c.src[1] == Src::Raw) {
        if !c.name.ends_with(SHAPE) {
            return Err(MaterialError::Mismatch(format!(
                "P1 has raw material {} that is not a shape record",
                c.name
            )));
        }
        out.push(kind.shape_record().unwrap_or_default());
    }
    Ok(out)
}

/// Where a [`Material`] gets its raw components and records consumption: the ideal
/// dealer in memory, or a party's shard and journal on disk.
pub(crate) trait MaterialStore: Send {
    /// Durably records the new cursors (before any material is handed out).
    fn commit(&mut self, cursors: &BTreeMap<String, u64>) -> Result<(), MaterialError>;
    /// This party's raw components of `req` (layout order, raw ones only) at `offsets`
    /// (one per component of the layout).
    fn raw_parts(&mut self, req: &MaterialRequest, offsets: &[u64]) -> Result<Vec<Vec<u64>>, MaterialError>;
    /// Durably records consumption up to `cursors` ahead of use (a session's whole
    /// range), so that takes inside it need no IO. The ideal dealer records nothing.
    fn reserve_to(&mut self, _cursors: &BTreeMap<String, u64>) -> Result<(), MaterialError> {
        Ok(())
    }
    /// Checks the integrity of this party's stored material from cursors `from` to `to`
    /// (a session's range, or one step's) before any of it is recorded or handed out.
    /// The ideal dealer stores nothing to check.
    fn verify_range(
        &self,
        _from: &BTreeMap<String, u64>,
        _to: &BTreeMap<String, u64>,
    ) -> Result<(), MaterialError> {
        Ok(())
    }
    /// Words available in a component stream (`None`: unlimited).
    fn total(&self, component: &str) -> Option<u64>;
    /// Words available in every stream this party holds (empty: unlimited).
    fn totals(&self) -> BTreeMap<String, u64> {
        BTreeMap::new()
    }
    /// Reads raw words without consuming them (`None`: not stored, e.g. the ideal dealer
    /// or past the end).
    fn peek(&self, _component: &str, _offset: u64, _len: u64) -> Option<Vec<u64>> {
        None
    }
}

/// Stream cursors: words per component stream.
type Cursors = BTreeMap<String, u64>;

/// A party's material, from an [`IdealDealer`] or a dealer bundle.
pub struct Material<R: Role> {
    seed: Seed,
    cursors: BTreeMap<String, u64>,
    store: Box<dyn MaterialStore>,
    /// The bundle's manifest (files only; the ideal dealer has none).
    manifest: Option<Box<Manifest>>,
    _role: PhantomData<R>,
}

impl<R: Role> std::fmt::Debug for Material<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Material<{}>({} streams in use)", R::NAME, self.cursors.len())
    }
}

impl<R: Role> Material<R> {
    pub(crate) fn from_store(
        seed: Seed,
        cursors: BTreeMap<String, u64>,
        store: Box<dyn MaterialStore>,
    ) -> Self {
        Material { seed, cursors, store, manifest: None, _role: PhantomData }
    }

    pub(crate) fn with_manifest(mut self, manifest: Manifest) -> Self {
        self.manifest = Some(Box::new(manifest));
        self
    }

    /// The bundle's manifest, for material opened from files.
    pub fn manifest(&self) -> Option<&Manifest> {
        self.manifest.as_deref()
    }

    /// The index of the next session this party can start: the first dealt session
    /// whose start is at or after everything consumed. `None` when the bundle is spent
    /// (or has no sessions: the ideal dealer).
    pub fn next_session(&self) -> Option<usize> {
        self.manifest.as_ref()?.next_session(&self.cursors)
    }

    /// Starts dealt session `index`: skips forward to its start (never back: an index
    /// before [`Material::next_session`] is refused as spent) and records the whole
    /// session as consumed before any of it is used, with one durable write. A crash
    /// then wastes at most this session. The session's stored material is checked
    /// first ([`Material::verify_session`]; chunks already checked are not read again).
    pub fn start_session(&mut self, index: usize) -> Result<(), MaterialError> {
        let [start, end] = self.session_range(index)?;
        // The session's material is checked whole before anything is recorded: a
        // corrupted chunk refuses the session without spending it.
        self.store.verify_range(&start, &end)?;
        self.advance_to(&start)?;
        self.store.reserve_to(&end)
    }

    /// Checks the integrity of dealt session `index`'s stored material (blake3 per
    /// chunk) without recording anything. A client calls it before it connects, so
    /// that reading a session's material from disk (seconds for a large model) is not
    /// spent while the server waits; [`Material::start_session`] then finds it checked.
    pub fn verify_session(&self, index: usize) -> Result<(), MaterialError> {
        let [start, end] = self.session_range(index)?;
        self.store.verify_range(&start, &end)
    }

    /// Where session `index` starts and ends (the next session's start, or the end of
    /// every stream), refused if it is spent or was never dealt.
    fn session_range(&self, index: usize) -> Result<[Cursors; 2], MaterialError> {
        let Some(m) = &self.manifest else {
            return Err(MaterialError::Mismatch(
                "material without dealt sessions (the ideal dealer) has no session index".into(),
            ));
        };
        let next = m.next_session(&self.cursors);
        let start = match (m.sessions.get(index), next) {
            (Some(start), Some(next)) if index >= next => start.clone(),
            _ => {
                return Err(MaterialError::Spent {
                    bundle: m.bundle_id.clone(),
                    session: index,
                    next,
                    sessions: m.sessions.len(),
                })
            }
        };
        let end = m.sessions.get(index + 1).cloned().unwrap_or_else(|| self.stream_totals());
        Ok([start, end])
    }

    /// Words in every stream this party holds (the end of the last session).
    fn stream_totals(&self) -> BTreeMap<String, u64> {
        self.store.totals()
    }

    /// Elements consumed so far per component stream. The two parties consume the same
    /// sequence, so a session handshake can compare these (or a digest) to check both
    /// stand at the same place of the bundle. Compare the streams both parties hold
    /// (after a reopen from files only a party's own streams are restored).
    pub fn consumed(&self) -> &BTreeMap<String, u64> {
        &self.cursors
    }

    /// Skips forward to at least `targets` per stream (never back), journaled: lets two
    /// parties realign after one of them crashed mid-session (both advance to the
    /// elementwise maximum of their [`Material::consumed`]). Skipped material is never
    /// used.
    pub fn advance_to(&mut self, targets: &BTreeMap<String, u64>) -> Result<(), MaterialError> {
        let mut next = self.cursors.clone();
        for (k, &v) in targets {
            let c = next.entry(k.clone()).or_insert(0);
            *c = (*c).max(v);
        }
        self.store.commit(&next)?;
        self.cursors = next;
        Ok(())
    }

    /// Takes the components of `req` for this party, in layout order (absent ones empty).
    /// Records the consumption durably first.
    pub(crate) fn take_parts(&mut self, req: &MaterialRequest) -> Result<Vec<Vec<u64>>, MaterialError> {
        let kind = req.kind();
        let comps = kind.layout()?;
        let me = R::ID as usize;
        let offsets: Vec<u64> =
            comps.iter().map(|c| self.cursors.get(&c.name).copied().unwrap_or(0)).collect();
        // Records with a shape: check the next record is the one this step asks for
        // before consuming anything.
        if let (Some(want), Some(first)) = (kind.shape_record(), comps.first()) {
            if first.src[me] == Src::Raw {
                if let Some(got) = self.store.peek(&first.name, offsets[0], first.len) {
                    check_shape(&kind.name(), &got, &want)?;
                }
            }
        }
        let mut next = self.cursors.clone();
        for (c, &off) in comps.iter().zip(&offsets) {
            if c.src[me] == Src::Absent {
                // Not this party's, but its position still moves with the sequence: the
                // ideal dealer reads the other party's stream at this offset.
                next.insert(c.name.clone(), off.saturating_add(c.len));
                continue;
            }
            let total = self.store.total(&c.name);
            if total == Some(0) && off == 0 && c.len > 0 {
                // Never dealt at all: not an exhausted bundle but one for other work.
                let dealt = self.manifest().map_or("another forward pass".to_string(), |m| {
                    format!("{} (bundle {})", m.variant, m.bundle_id.get(..16).unwrap_or(&m.bundle_id))
                });
                return Err(MaterialError::Mismatch(format!(
                    "this step needs `{}` material, which the bundle was never dealt: it is a bundle for {dealt}",
                    kind.name()
                )));
            }
            let left = total.map(|t| t.saturating_sub(off));
            if let Some(left) = left {
                if c.len > left {
                    return Err(MaterialError::Exhausted { kind: c.name.clone(), needed: c.len, left });
                }
            }
            next.insert(c.name.clone(), off.saturating_add(c.len));
        }
        self.store.verify_range(&self.cursors, &next)?;
        self.store.commit(&next)?;
        self.cursors = next;
        let mut raw = self.store.raw_parts(req, &offsets)?.into_iter();
        let mut out = Vec::with_capacity(comps.len());
        for (c, &off) in comps.iter().zip(&offsets) {
            out.push(match c.src[me] {
                Src::Seed if c.on_demand => kind::OnDemand::encode(&self.seed, &c.name, off),
                Src::Seed => seeded(&self.seed, c, off),
                Src::Raw => {
                    let v = raw
                        .next()
                        .ok_or_else(|| MaterialError::Mismatch(format!("missing raw part {}", c.name)))?;
                    if v.len() as u64 != c.len {
                        return Err(MaterialError::Mismatch(format!(
                            "raw part {} has {} words, expected {}",
                            c.name,
                            v.len(),
                            c.len
                        )));
                    }
                    v
                }
                Src::Absent => Vec::new(),
            });
        }
        Ok(out)
    }
}

fn check_shape(kind: &str, got: &[u64], want: &[u64]) -> Result<(), MaterialError> {
    if got != want {
        return Err(MaterialError::Mismatch(format!(
            "next {kind} in the bundle has shape {got:?} but this step asks for {want:?}"
        )));
    }
    Ok(())
}

impl<R: Role> MaterialSource<R> for Material<R> {
    fn take<Q: Request<R>>(&mut self, request: Q) -> Result<Q::Output, MaterialError> {
        let req: MaterialRequest = request.clone().into();
        let parts = self.take_parts(&req)?;
        // The shape record travels with the material: both parties check it.
        if let (Some(want), Some(got)) = (request.shape_record(), parts.first()) {
            if !got.is_empty() {
                check_shape(&request.name(), got, &want)?;
            }
        }
        request.assemble(parts)
    }
}
