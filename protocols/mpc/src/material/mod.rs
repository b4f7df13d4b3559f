//! Dealer material: where each party's correlated randomness comes from.
//!
//! A party consumes material through [`MaterialSource<R>`] (and, for P0's client-assisted
//! linear layers, [`MaskedLinearSource`]): material is *taken*, sequentially per kind,
//! never copied (STYLE.md 3). Both parties run the same deterministic forward pass, so
//! they take the same sequence of [`MaterialRequest`]s. Two implementations of the same
//! [`Material<R>`] type:
//!
//! * [`IdealDealer`]: both parties' material from one seed, in memory (tests).
//! * dealer bundle files ([`BundleWriter`], [`Material::open`]): a directory with
//!   `manifest.json`, `p0.shard`, `p1.shard`, a journal and a lock per party
//!   ([`mod@file`] module doc has the format).
//!
//! The dealer's generation of every kind is in one place (`deal.rs`), used by both.
//! [`Recorder`] implements the same traits and records the requests a forward pass
//! makes, for the planner.
//!
//! # Seed compression
//!
//! Every kind is a list of *components* (streams of ring elements). For each party a
//! component is either derived from that party's seed (`Prg` of
//! `party_seed.derive(component, 0)`, seeked to the component's cursor), stored raw in
//! the party's shard, or absent. The scheme, per kind (P0 / P1):
//!
//! | kind | components (P0 / P1) | P0 raw words | P1 raw words |
//! |---|---|---|---|
//! | triples | `a` seed/seed, `b` seed/seed, `c` raw: `c0 = (a0+a1)(b0+b1) - c1` / seed | n | 0 |
//! | square pairs | `a` seed/seed, `aa` raw / seed | n | 0 |
//! | matrix triples | `shape` raw/raw (3), `A`, `B` seed/seed, `C` raw / seed | mn + 3 | 3 |
//! | AND triples | like triples, XOR and AND | words | 0 |
//! | daBits | `b` (low bit) seed/seed, `r` raw: `r0 = (b0 ^ b1) - r1` / seed | n | 0 |
//! | random OTs, 1-of-N | `idx` seed/-, `strings` -/seed (N per OT), `chosen` raw/- | count x bits/64 (packed) | 0 |
//! | truncation OTs | random OTs with N = 2, strings of F bits | n F/64 (2 bytes each for F = 16) | 0 |
//! | masked linear (v2) | `shape` raw/- (4), `R` seed/-, `S = R enc(W)^T` raw/- | n d_out + 4 | 0 |
//!
//! P1's material is all seed: the server's shard is a few hundred bytes. The raw parts
//! are the ones that depend on both parties' seeds, which is why they cannot be seeds.
//! Security: P1's components come from P1's seed only, which P0 never sees, so P0's
//! `c0 = ab - c1` is uniform to P0 (masked by `c1`), and vice versa P1 never sees
//! anything of P0's.

mod deal;
pub mod file;
mod ideal;
mod recorder;

pub use file::{BundleWriter, KindCount, Manifest, ShardInfo, DEFAULT_RESERVE_WORDS, FORMAT_VERSION};
pub use ideal::{IdealDealer, SharedWeights};
pub use recorder::Recorder;

use crate::prg::{Prg, Seed};
use crate::share::{BitShares, Role, Shares, P0};
use crate::{
    AndTriples, BitTriples, CarryTables, DaBits, MaskedLinear, MatrixTriple, NormTriples, PowerTuples,
    RandomOts, RowTriples, SquarePairs, Triples,
};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::path::PathBuf;

pub(crate) use deal::{deal, p1_raw_parts};

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

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> MaterialError {
    let path = path.into();
    move |source| MaterialError::Io { path, source }
}

/// One step's worth of material, as a forward pass asks for it. The planner records the
/// sequence of these; the dealer replays it into a bundle.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum MaterialRequest {
    /// Elementwise Beaver triples.
    Triples(usize),
    /// Square pairs.
    SquarePairs(usize),
    /// One matrix triple for `(m x k) * (k x n)`.
    MatrixTriple {
        /// Rows of the left matrix.
        m: usize,
        /// Inner dimension.
        k: usize,
        /// Columns of the right matrix.
        n: usize,
    },
    /// A matrix triple whose left factor is causal: `A[r][j] = 0` for `j > start + r`
    /// (attention's `E V`), so only the visible entries of `X - A` are opened.
    CausalMatrixTriple {
        /// Rows of the left matrix.
        m: usize,
        /// Inner dimension.
        k: usize,
        /// Columns of the right matrix.
        n: usize,
        /// Row `r` sees columns `0 ..= start + r`.
        start: usize,
    },
    /// 1-of-2 OTs on `bits`-bit strings for faithful truncation by `bits`.
    TruncOts {
        /// Elements.
        n: usize,
        /// The shift `F`.
        bits: u32,
    },
    /// Boolean AND triples, in 64-bit words.
    AndTriples(usize),
    /// daBits.
    DaBits(usize),
    /// Bit triples: a daBit `r` and a Beaver pair `(a, c = r a)`, for a XOR-shared bit
    /// times an arithmetic share in one opening.
    BitTriples(usize),
    /// One-time truth tables of the carry (generate, propagate) of a `chunk`-bit
    /// addition of P0's and P1's private chunks, for comparisons ([`crate::compare`]).
    CarryTables {
        /// Chunk instances (elements times chunks).
        count: usize,
        /// Chunk width in bits (1..=4).
        chunk: u32,
    },
    /// Norm triples: a square pair `(a, a^2)` per element and a row-scaling triple
    /// `(r_row, a, r_row a)` on the same `a`, so that `x` opened for its square is not
    /// opened again when its row is scaled (RMSNorm).
    NormTriples {
        /// Rows.
        rows: usize,
        /// Elements per row.
        cols: usize,
    },
    /// Row-scaling triples: `a` per row, `b` per element, `c = a_r b_rj`, for every
    /// element of a row times the row's value with one opening per row.
    RowTriples {
        /// Rows.
        rows: usize,
        /// Elements per row.
        cols: usize,
    },
    /// Power tuples: shares of `a, a^2, ..., a^degree`, for every power of `x` up to
    /// `degree` from one opening of `x - a`.
    PowerTuples {
        /// Elements.
        n: usize,
        /// Highest power (2..=8).
        degree: u32,
    },
    /// 1-of-`n_choices` random OTs on `bits`-bit strings.
    RandomOts {
        /// Choices per OT (power of two).
        n_choices: usize,
        /// String width.
        bits: u32,
        /// Number of OTs.
        count: usize,
    },
    /// Client-assisted linear layer mask and its image under weight `weight`.
    MaskedLinear {
        /// Rows.
        n: usize,
        /// Input width.
        d_in: usize,
        /// Output width.
        d_out: usize,
        /// Weight id (see [`LinearWeights`]).
        weight: u32,
    },
}

impl MaterialRequest {
    /// Raw bytes this request stores in `party`'s shard (0 for P0, 1 for P1), packed
    /// widths included; the rest of its material is seed-derived. Errors on an invalid
    /// request.
    pub fn raw_bytes(&self, party: u8) -> Result<f64, MaterialError> {
        let p = usize::from(party.min(1));
        Ok(layout(self)?
            .iter()
            .filter(|c| c.src[p] == Src::Raw)
            .map(|c| c.len as f64 * f64::from(c.bits) / 8.0)
            .sum())
    }

    /// The kind's name, as counted in the manifest and named in errors.
    pub fn kind(&self) -> String {
        match self {
            MaterialRequest::Triples(_) => "triples".into(),
            MaterialRequest::SquarePairs(_) => "square-pairs".into(),
            MaterialRequest::MatrixTriple { .. } => "matrix-triples".into(),
            MaterialRequest::CausalMatrixTriple { .. } => "causal-matrix-triples".into(),
            MaterialRequest::TruncOts { bits, .. } => format!("trunc-ots-{bits}b"),
            MaterialRequest::AndTriples(_) => "and-triples".into(),
            MaterialRequest::DaBits(_) => "dabits".into(),
            MaterialRequest::BitTriples(_) => "bit-triples".into(),
            MaterialRequest::RowTriples { .. } => "row-triples".into(),
            MaterialRequest::NormTriples { .. } => "norm-triples".into(),
            MaterialRequest::CarryTables { chunk, .. } => format!("carry-tables-{chunk}b"),
            MaterialRequest::PowerTuples { degree, .. } => format!("power-tuples-{degree}"),
            MaterialRequest::RandomOts { n_choices, bits, .. } => {
                format!("random-ots-1of{n_choices}-{bits}b")
            }
            MaterialRequest::MaskedLinear { .. } => "masked-linear".into(),
        }
    }
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
    /// `n` elementwise Beaver triples.
    fn take_triples(&mut self, n: usize) -> Result<Triples<R>, MaterialError>;
    /// `n` square pairs.
    fn take_square_pairs(&mut self, n: usize) -> Result<SquarePairs<R>, MaterialError>;
    /// One matrix triple for `(m x k) * (k x n)`.
    fn take_matrix_triple(&mut self, m: usize, k: usize, n: usize) -> Result<MatrixTriple<R>, MaterialError>;
    /// One causal matrix triple ([`MaterialRequest::CausalMatrixTriple`]).
    fn take_causal_matrix_triple(
        &mut self,
        m: usize,
        k: usize,
        n: usize,
        start: usize,
    ) -> Result<MatrixTriple<R>, MaterialError>;
    /// `n` 1-of-2 random OTs on `bits`-bit strings, for faithful truncation by `bits`.
    fn take_trunc_ots(&mut self, n: usize, bits: u32) -> Result<RandomOts<R>, MaterialError>;
    /// AND triples for `words` 64-bit words.
    fn take_and_triples(&mut self, words: usize) -> Result<AndTriples<R>, MaterialError>;
    /// `n` daBits.
    fn take_dabits(&mut self, n: usize) -> Result<DaBits<R>, MaterialError>;
    /// `n` bit triples (a daBit and a Beaver pair on it).
    fn take_bit_triples(&mut self, n: usize) -> Result<BitTriples<R>, MaterialError>;
    /// A norm triple for `rows x cols`.
    fn take_norm_triples(&mut self, rows: usize, cols: usize) -> Result<NormTriples<R>, MaterialError>;
    /// A row-scaling triple for `rows x cols`.
    fn take_row_triples(&mut self, rows: usize, cols: usize) -> Result<RowTriples<R>, MaterialError>;
    /// Carry truth tables for `count` chunk instances of `chunk` bits.
    fn take_carry_tables(&mut self, count: usize, chunk: u32) -> Result<CarryTables<R>, MaterialError>;
    /// `n` power tuples up to `degree`.
    fn take_power_tuples(&mut self, n: usize, degree: u32) -> Result<PowerTuples<R>, MaterialError>;
    /// `count` 1-of-`n_choices` random OTs on `bits`-bit strings.
    fn take_random_ots(
        &mut self,
        n_choices: usize,
        bits: u32,
        count: usize,
    ) -> Result<RandomOts<R>, MaterialError>;
}

/// P0's client-assisted linear-layer material (v2, v3). P1 gets nothing for these.
pub trait MaskedLinearSource {
    /// The mask `R` (`n x d_in`) and `S = R enc(W)^T` (`n x d_out`) for weight `weight`.
    fn take_masked_linear(
        &mut self,
        n: usize,
        d_in: usize,
        d_out: usize,
        weight: u32,
    ) -> Result<MaskedLinear, MaterialError>;
}

/// Where a component of a kind comes from, for one party.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Src {
    Seed,
    Raw,
    Absent,
}

/// One stream of a kind: its name, the elements one request takes, its source per
/// party, and the bits per element when stored raw (packed).
#[derive(Clone, Debug)]
pub(crate) struct Component {
    pub name: String,
    pub len: u64,
    pub src: [Src; 2],
    pub bits: u32,
}

/// The words a request takes from each party's streams (P0, P1).
pub(crate) fn layout(req: &MaterialRequest) -> Result<Vec<Component>, MaterialError> {
    use Src::*;
    let kind = req.kind();
    let c = |part: &str, len: u64, p0: Src, p1: Src| Component {
        name: format!("{kind}.{part}"),
        len,
        src: [p0, p1],
        bits: 64,
    };
    // P0's chosen OT strings are stored packed at their width (2 bytes, not 8, for F = 16).
    let packed = |mut comp: Component, bits: u32| {
        comp.bits = bits;
        comp
    };
    let mul = |a: usize, b: usize| -> Result<u64, MaterialError> {
        (a as u64)
            .checked_mul(b as u64)
            .ok_or_else(|| MaterialError::InvalidRequest(format!("{req:?} is too large")))
    };
    Ok(match *req {
        MaterialRequest::Triples(n) | MaterialRequest::AndTriples(n) => {
            let n = n as u64;
            vec![c("a", n, Seed, Seed), c("b", n, Seed, Seed), c("c", n, Raw, Seed)]
        }
        MaterialRequest::SquarePairs(n) => vec![c("a", n as u64, Seed, Seed), c("aa", n as u64, Raw, Seed)],
        MaterialRequest::CausalMatrixTriple { m, k, n, .. } => vec![
            c("shape", 4, Raw, Raw),
            c("a", mul(m, k)?, Seed, Seed),
            c("b", mul(k, n)?, Seed, Seed),
            c("c", mul(m, n)?, Raw, Seed),
        ],
        MaterialRequest::MatrixTriple { m, k, n } => vec![
            c("shape", 3, Raw, Raw),
            c("a", mul(m, k)?, Seed, Seed),
            c("b", mul(k, n)?, Seed, Seed),
            c("c", mul(m, n)?, Raw, Seed),
        ],
        MaterialRequest::DaBits(n) => vec![c("b", n as u64, Seed, Seed), c("r", n as u64, Raw, Seed)],
        MaterialRequest::BitTriples(n) => {
            let n = n as u64;
            vec![c("b", n, Seed, Seed), c("r", n, Raw, Seed), c("a", n, Seed, Seed), c("c", n, Raw, Seed)]
        }
        MaterialRequest::NormTriples { rows, cols } => vec![
            c("shape", 2, Raw, Raw),
            c("a", mul(rows, cols)?, Seed, Seed),
            c("aa", mul(rows, cols)?, Raw, Seed),
            c("r", rows as u64, Seed, Seed),
            c("c", mul(rows, cols)?, Raw, Seed),
        ],
        MaterialRequest::RowTriples { rows, cols } => vec![
            c("shape", 2, Raw, Raw),
            c("a", rows as u64, Seed, Seed),
            c("b", mul(rows, cols)?, Seed, Seed),
            c("c", mul(rows, cols)?, Raw, Seed),
        ],
        MaterialRequest::CarryTables { count, chunk } => {
            if !(1..=4).contains(&chunk) {
                return Err(MaterialError::InvalidRequest(format!(
                    "carry tables on {chunk}-bit chunks: 1..=4 are supported"
                )));
            }
            let words = crate::CarryTables::<crate::share::P0>::table_words(chunk);
            vec![
                c("ra", count as u64, Seed, Absent),
                c("rb", count as u64, Absent, Seed),
                c("t", mul(count, words)?, Raw, Seed),
            ]
        }
        MaterialRequest::PowerTuples { n, degree } => {
            if !(2..=8).contains(&degree) {
                return Err(MaterialError::InvalidRequest(format!(
                    "power tuples of degree {degree}: 2..=8 are supported"
                )));
            }
            vec![c("a", n as u64, Seed, Seed), c("pow", mul(n, degree as usize - 1)?, Raw, Seed)]
        }
        MaterialRequest::TruncOts { n, bits } => {
            if !(1..=62).contains(&bits) {
                return Err(MaterialError::InvalidRequest(format!(
                    "truncation shift {bits} is outside 1..=62"
                )));
            }
            vec![
                c("idx", n as u64, Seed, Absent),
                c("strings", mul(n, 2)?, Absent, Seed),
                packed(c("chosen", n as u64, Raw, Absent), bits),
            ]
        }
        MaterialRequest::RandomOts { n_choices, bits, count } => {
            if n_choices < 2 || !n_choices.is_power_of_two() || n_choices > 1 << 16 {
                return Err(MaterialError::InvalidRequest(format!(
                    "random OTs need a power-of-two number of choices in 2..=65536, got {n_choices}"
                )));
            }
            if !(1..=64).contains(&bits) {
                return Err(MaterialError::InvalidRequest(format!(
                    "OT string width {bits} is outside 1..=64"
                )));
            }
            vec![
                c("idx", count as u64, Seed, Absent),
                c("strings", mul(count, n_choices)?, Absent, Seed),
                packed(c("chosen", count as u64, Raw, Absent), bits),
            ]
        }
        MaterialRequest::MaskedLinear { n, d_in, d_out, .. } => vec![
            c("shape", 4, Raw, Absent),
            c("r", mul(n, d_in)?, Seed, Absent),
            c("s", mul(n, d_out)?, Raw, Absent),
        ],
    })
}

/// A party's seed-derived component: `len` words of stream `name` from word `offset`.
pub(crate) fn seeded(party_seed: &Seed, name: &str, offset: u64, len: u64) -> Vec<u64> {
    Prg::at(&party_seed.derive(name, 0), offset).u64s(len as usize)
}

/// Where a [`Material`] gets its raw components and records consumption.
pub(crate) trait Backend: Send {
    /// Durably records the new cursors (before any material is handed out).
    fn commit(&mut self, cursors: &BTreeMap<String, u64>) -> Result<(), MaterialError>;
    /// This party's raw components of `req` (layout order, raw ones only) at `offsets`
    /// (one per component of the layout).
    fn raw_parts(&mut self, req: &MaterialRequest, offsets: &[u64]) -> Result<Vec<Vec<u64>>, MaterialError>;
    /// Words available in a component stream (`None`: unlimited).
    fn total(&self, component: &str) -> Option<u64>;
    /// Reads raw words without consuming them (`None`: not stored, e.g. the ideal dealer
    /// or past the end).
    fn peek(&self, _component: &str, _offset: u64, _len: u64) -> Option<Vec<u64>> {
        None
    }
}

/// The shape record a request expects at the head of its `shape` component, if any.
fn expected_shape(req: &MaterialRequest) -> Option<Vec<u64>> {
    match *req {
        MaterialRequest::MatrixTriple { m, k, n } => Some(vec![m as u64, k as u64, n as u64]),
        MaterialRequest::CausalMatrixTriple { m, k, n, start } => {
            Some(vec![m as u64, k as u64, n as u64, start as u64])
        }
        MaterialRequest::RowTriples { rows, cols } | MaterialRequest::NormTriples { rows, cols } => {
            Some(vec![rows as u64, cols as u64])
        }
        MaterialRequest::MaskedLinear { n, d_in, d_out, weight } => {
            Some(vec![n as u64, d_in as u64, d_out as u64, weight as u64])
        }
        _ => None,
    }
}

/// A party's material, from an [`IdealDealer`] or a dealer bundle.
pub struct Material<R: Role> {
    seed: Seed,
    cursors: BTreeMap<String, u64>,
    backend: Box<dyn Backend>,
    _role: PhantomData<R>,
}

impl<R: Role> std::fmt::Debug for Material<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Material<{}>({} streams in use)", R::NAME, self.cursors.len())
    }
}

impl<R: Role> Material<R> {
    pub(crate) fn from_backend(
        seed: Seed,
        cursors: BTreeMap<String, u64>,
        backend: Box<dyn Backend>,
    ) -> Self {
        Material { seed, cursors, backend, _role: PhantomData }
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
        self.backend.commit(&next)?;
        self.cursors = next;
        Ok(())
    }

    /// Takes the components of `req` for this party, in layout order (absent ones empty).
    /// Records the consumption durably first.
    pub(crate) fn take(&mut self, req: &MaterialRequest) -> Result<Vec<Vec<u64>>, MaterialError> {
        let comps = layout(req)?;
        let me = R::ID as usize;
        let offsets: Vec<u64> =
            comps.iter().map(|c| self.cursors.get(&c.name).copied().unwrap_or(0)).collect();
        // Records with a shape: check the next record is the one this step asks for
        // before consuming anything.
        if let (Some(want), Some(first)) = (expected_shape(req), comps.first()) {
            if first.src[me] == Src::Raw {
                if let Some(got) = self.backend.peek(&first.name, offsets[0], first.len) {
                    check_shape(&req.kind(), &got, &want)?;
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
            let total = self.backend.total(&c.name);
            let left = total.map(|t| t.saturating_sub(off));
            if let Some(left) = left {
                if c.len > left {
                    return Err(MaterialError::Exhausted { kind: c.name.clone(), needed: c.len, left });
                }
            }
            next.insert(c.name.clone(), off.saturating_add(c.len));
        }
        self.backend.commit(&next)?;
        self.cursors = next;
        let mut raw = self.backend.raw_parts(req, &offsets)?.into_iter();
        let mut out = Vec::with_capacity(comps.len());
        for (c, &off) in comps.iter().zip(&offsets) {
            out.push(match c.src[me] {
                Src::Seed => seeded(&self.seed, &c.name, off, c.len),
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

fn take_parts<const N: usize>(parts: Vec<Vec<u64>>) -> Result<[Vec<u64>; N], MaterialError> {
    parts.try_into().map_err(|_| MaterialError::Mismatch("wrong number of components".into()))
}

impl<R: Role> MaterialSource<R> for Material<R> {
    fn take_triples(&mut self, n: usize) -> Result<Triples<R>, MaterialError> {
        let [a, b, c] = take_parts(self.take(&MaterialRequest::Triples(n))?)?;
        Ok(Triples { a: Shares::from_raw(a), b: Shares::from_raw(b), c: Shares::from_raw(c) })
    }

    fn take_square_pairs(&mut self, n: usize) -> Result<SquarePairs<R>, MaterialError> {
        let [a, aa] = take_parts(self.take(&MaterialRequest::SquarePairs(n))?)?;
        Ok(SquarePairs { a: Shares::from_raw(a), aa: Shares::from_raw(aa) })
    }

    fn take_matrix_triple(&mut self, m: usize, k: usize, n: usize) -> Result<MatrixTriple<R>, MaterialError> {
        let [shape, a, b, c] = take_parts(self.take(&MaterialRequest::MatrixTriple { m, k, n })?)?;
        check_shape("matrix triple", &shape, &[m as u64, k as u64, n as u64])?;
        Ok(MatrixTriple {
            m,
            k,
            n,
            causal: None,
            a: Shares::from_raw(a),
            b: Shares::from_raw(b),
            c: Shares::from_raw(c),
        })
    }

    fn take_causal_matrix_triple(
        &mut self,
        m: usize,
        k: usize,
        n: usize,
        start: usize,
    ) -> Result<MatrixTriple<R>, MaterialError> {
        let [shape, mut a, b, c] =
            take_parts(self.take(&MaterialRequest::CausalMatrixTriple { m, k, n, start })?)?;
        check_shape("causal matrix triple", &shape, &[m as u64, k as u64, n as u64, start as u64])?;
        crate::beaver::zero_hidden(&mut a, m, k, start);
        Ok(MatrixTriple {
            m,
            k,
            n,
            causal: Some(start),
            a: Shares::from_raw(a),
            b: Shares::from_raw(b),
            c: Shares::from_raw(c),
        })
    }

    fn take_trunc_ots(&mut self, n: usize, bits: u32) -> Result<RandomOts<R>, MaterialError> {
        let [idx, strings, chosen] = take_parts(self.take(&MaterialRequest::TruncOts { n, bits })?)?;
        Ok(ots_from_parts::<R>(2, bits, n, idx, strings, chosen))
    }

    fn take_and_triples(&mut self, words: usize) -> Result<AndTriples<R>, MaterialError> {
        let [a, b, c] = take_parts(self.take(&MaterialRequest::AndTriples(words))?)?;
        Ok(AndTriples { a: BitShares::from_raw(a), b: BitShares::from_raw(b), c: BitShares::from_raw(c) })
    }

    fn take_dabits(&mut self, n: usize) -> Result<DaBits<R>, MaterialError> {
        let [b, r] = take_parts(self.take(&MaterialRequest::DaBits(n))?)?;
        Ok(DaBits { bits: b.into_iter().map(|w| w & 1).collect(), arith: Shares::from_raw(r) })
    }

    fn take_bit_triples(&mut self, n: usize) -> Result<BitTriples<R>, MaterialError> {
        let [b, r, a, c] = take_parts(self.take(&MaterialRequest::BitTriples(n))?)?;
        Ok(BitTriples {
            bits: b.into_iter().map(|w| w & 1).collect(),
            r: Shares::from_raw(r),
            a: Shares::from_raw(a),
            c: Shares::from_raw(c),
        })
    }

    fn take_norm_triples(&mut self, rows: usize, cols: usize) -> Result<NormTriples<R>, MaterialError> {
        let [shape, a, aa, r, c] = take_parts(self.take(&MaterialRequest::NormTriples { rows, cols })?)?;
        check_shape("norm triple", &shape, &[rows as u64, cols as u64])?;
        Ok(NormTriples {
            rows,
            cols,
            a: Shares::from_raw(a),
            aa: Shares::from_raw(aa),
            r: Shares::from_raw(r),
            c: Shares::from_raw(c),
        })
    }

    fn take_row_triples(&mut self, rows: usize, cols: usize) -> Result<RowTriples<R>, MaterialError> {
        let [shape, a, b, c] = take_parts(self.take(&MaterialRequest::RowTriples { rows, cols })?)?;
        check_shape("row triple", &shape, &[rows as u64, cols as u64])?;
        Ok(RowTriples { rows, cols, a: Shares::from_raw(a), b: Shares::from_raw(b), c: Shares::from_raw(c) })
    }

    fn take_carry_tables(&mut self, count: usize, chunk: u32) -> Result<CarryTables<R>, MaterialError> {
        let [ra, rb, t] = take_parts(self.take(&MaterialRequest::CarryTables { count, chunk })?)?;
        let lo = crate::ring::low_mask(chunk);
        let mask = if R::ID == 0 { ra } else { rb };
        Ok(CarryTables {
            chunk,
            mask: mask.into_iter().map(|r| r & lo).collect(),
            tables: t,
            _role: PhantomData,
        })
    }

    fn take_power_tuples(&mut self, n: usize, degree: u32) -> Result<PowerTuples<R>, MaterialError> {
        let [a, pow] = take_parts(self.take(&MaterialRequest::PowerTuples { n, degree })?)?;
        Ok(PowerTuples { degree, a: Shares::from_raw(a), powers: Shares::from_raw(pow) })
    }

    fn take_random_ots(
        &mut self,
        n_choices: usize,
        bits: u32,
        count: usize,
    ) -> Result<RandomOts<R>, MaterialError> {
        let [idx, strings, chosen] =
            take_parts(self.take(&MaterialRequest::RandomOts { n_choices, bits, count })?)?;
        Ok(ots_from_parts::<R>(n_choices, bits, count, idx, strings, chosen))
    }
}

/// Builds a party's random OTs from its components (seeded words reduced to their range).
fn ots_from_parts<R: Role>(
    n_choices: usize,
    bits: u32,
    count: usize,
    idx: Vec<u64>,
    strings: Vec<u64>,
    chosen: Vec<u64>,
) -> RandomOts<R> {
    let mask = crate::ring::low_mask(bits);
    let (index, strings) = if R::ID == 0 {
        (idx.into_iter().map(|v| v & (n_choices as u64 - 1)).collect(), chosen)
    } else {
        (Vec::new(), strings.into_iter().map(|v| v & mask).collect())
    };
    RandomOts { n_choices, bits, count, index, strings, _role: PhantomData }
}

impl MaskedLinearSource for Material<P0> {
    fn take_masked_linear(
        &mut self,
        n: usize,
        d_in: usize,
        d_out: usize,
        weight: u32,
    ) -> Result<MaskedLinear, MaterialError> {
        let [shape, r, s] =
            take_parts(self.take(&MaterialRequest::MaskedLinear { n, d_in, d_out, weight })?)?;
        check_shape("masked linear", &shape, &[n as u64, d_in as u64, d_out as u64, weight as u64])?;
        Ok(MaskedLinear { n, d_in, d_out, weight, r, s })
    }
}
