//! What every kind of material is made of, and the two traits a kind implements.
//!
//! A kind (one module under [`super::kinds`]) describes one correlation:
//!
//! * its **layout** ([`Kind::layout`]): the component streams a request takes, with
//!   their lengths and, per party, whether a component is derived from the party's seed,
//!   stored raw in its shard, or absent;
//! * how the dealer **deals** it ([`Kind::deal`]): from both parties' seeded
//!   components, the raw components of each party;
//! * how a party **assembles** its typed correlation from its components
//!   ([`Request::assemble`]).
//!
//! The ideal dealer, the bundle writer and reader, the recorder and the manifest counts
//! all go through these, so adding a kind touches its own module and the registry in
//! [`super::kinds`], nothing else.

use super::{LinearWeights, MaterialError};
use crate::prg::{Prg, PrgKind, Seed, DEFAULT_PRG};
use crate::share::Role;

/// Where a component of a kind comes from, for one party.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Src {
    /// Derived from the party's seed: costs no storage.
    Seed,
    /// Stored in the party's shard (it depends on both parties' seeds).
    Raw,
    /// Not this party's.
    Absent,
}

/// One stream of a kind: its name, the elements one request takes, its source per
/// party, and the bits per element when stored raw (packed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Component {
    /// `kind.part`, the stream's name in shards and journals.
    pub name: String,
    /// Elements one request takes from the stream.
    pub len: u64,
    /// Source for P0 and P1.
    pub src: [Src; 2],
    /// Bits per element when stored raw (64 unless packed).
    pub bits: u32,
    /// A party whose source is [`Src::Seed`] reads this stream on demand instead of
    /// expanding it: it gets the stream's key and offset ([`OnDemand`]), for streams of
    /// which it uses a few words (one table entry per lookup).
    pub on_demand: bool,
}

/// A seed-derived stream a party reads on demand ([`Component::on_demand`]): the key
/// of the stream and the word offset where this request's part of it starts. Such a
/// stream is AES-128-CTR ([`ON_DEMAND_PRG`]) whatever the bundle's bulk PRG: word `i` is
/// half of one AES block, so a batch of random-access reads is a batch of independent
/// block encryptions (AES-NI pipelines them: 3.5 ns a word on the build box, where a
/// blake3 read is one 64-byte compression per word, 73 ns; `cargo bench --bench prg`).
#[derive(Clone)]
pub struct OnDemand {
    key: Seed,
    offset: u64,
}

impl std::fmt::Debug for OnDemand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OnDemand(offset {})", self.offset)
    }
}

/// The PRG of on-demand streams, for the dealer that expands them and the party that
/// reads them (part of the bundle format, [`crate::material::bundle::FORMAT_VERSION`]).
pub const ON_DEMAND_PRG: PrgKind = PrgKind::Aes128Ctr;

/// Words an on-demand component is handed as (the key, then the offset).
pub(crate) const ON_DEMAND_WORDS: u64 = 5;

impl OnDemand {
    pub(crate) fn encode(party_seed: &Seed, name: &str, offset: u64) -> Vec<u64> {
        let key = party_seed.derive(name, 0);
        let mut w: Vec<u64> =
            key.0.chunks(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect();
        w.push(offset);
        w
    }

    /// From the words a party was handed; an error if they are not an on-demand part.
    pub fn decode(words: &[u64]) -> Result<OnDemand, MaterialError> {
        if words.len() != ON_DEMAND_WORDS as usize {
            return Err(MaterialError::Mismatch(format!(
                "an on-demand stream has {} words, expected 5",
                words.len()
            )));
        }
        let mut key = [0u8; 32];
        for (i, w) in words[..4].iter().enumerate() {
            key[8 * i..8 * i + 8].copy_from_slice(&w.to_le_bytes());
        }
        Ok(OnDemand { key: Seed(key), offset: words[4] })
    }

    /// A reader of this part of the stream.
    pub fn reader(&self) -> OnDemandReader {
        OnDemandReader { prg: Prg::with_kind(&self.key, ON_DEMAND_PRG), offset: self.offset }
    }
}

/// Reads words of an on-demand stream at any position.
pub struct OnDemandReader {
    prg: Prg,
    offset: u64,
}

impl OnDemandReader {
    /// Words `at[j]` of the request's part of the stream into `out[j]` (random access,
    /// batched); `at` is overwritten with the stream positions.
    pub fn words(&mut self, at: &mut [u64], out: &mut [u64]) {
        for p in at.iter_mut() {
            *p = p.wrapping_add(self.offset);
        }
        self.prg.words_at(at, out);
    }
}

/// Builds a kind's layout: component names are prefixed with the kind's name.
#[derive(Debug)]
pub struct Layout {
    kind: String,
    comps: Vec<Component>,
}

impl Layout {
    /// An empty layout for the kind named `kind`.
    pub fn new(kind: impl Into<String>) -> Self {
        Layout { kind: kind.into(), comps: Vec::new() }
    }

    /// Adds component `part` of `len` elements with sources `p0`, `p1`.
    pub fn comp(mut self, part: &str, len: u64, p0: Src, p1: Src) -> Self {
        self.comps.push(Component {
            name: format!("{}.{part}", self.kind),
            len,
            src: [p0, p1],
            bits: 64,
            on_demand: false,
        });
        self
    }

    /// Like [`Layout::comp`], raw for P0 and seed-derived for P1, which reads it on
    /// demand ([`Component::on_demand`]).
    pub fn raw_p0_on_demand_p1(mut self, part: &str, len: u64) -> Self {
        self.comps.push(Component {
            name: format!("{}.{part}", self.kind),
            len,
            src: [Src::Raw, Src::Seed],
            bits: 64,
            on_demand: true,
        });
        self
    }

    /// Like [`Layout::comp`], stored packed at `bits` bits per element.
    pub fn packed(mut self, part: &str, len: u64, p0: Src, p1: Src, bits: u32) -> Self {
        self.comps.push(Component {
            name: format!("{}.{part}", self.kind),
            len,
            src: [p0, p1],
            bits,
            on_demand: false,
        });
        self
    }

    /// The public shape record both parties store raw at the head of the kind (checked
    /// on take, so a bundle dealt for other shapes is refused before it is used).
    pub fn shape(self, words: u64) -> Self {
        self.comp(SHAPE, words, Src::Raw, Src::Raw)
    }

    /// The components.
    pub fn build(self) -> Vec<Component> {
        self.comps
    }
}

/// Name of the shape-record component.
pub(crate) const SHAPE: &str = "shape";

/// `a * b` as a stream length, or an error naming the request.
pub fn checked_len(a: usize, b: usize, what: &dyn std::fmt::Debug) -> Result<u64, MaterialError> {
    (a as u64)
        .checked_mul(b as u64)
        .ok_or_else(|| MaterialError::InvalidRequest(format!("{what:?} is too large")))
}

/// The dealer's view of one request: both parties' seeded components at the request's
/// offsets.
pub struct Seeded<'a> {
    pub(crate) seeds: [&'a Seed; 2],
    pub(crate) comps: &'a [Component],
    pub(crate) offsets: &'a [u64],
}

impl Seeded<'_> {
    /// Party `party`'s seed-derived component `i` (layout order).
    pub fn get(&self, party: usize, i: usize) -> Vec<u64> {
        seeded(self.seeds[party], &self.comps[i], self.offsets[i])
    }
}

/// A party's seed-derived component `c`: its `len` words from word `offset` of the
/// component's stream (AES-CTR for an on-demand stream, [`ON_DEMAND_PRG`]).
pub(crate) fn seeded(party_seed: &Seed, c: &Component, offset: u64) -> Vec<u64> {
    let kind = if c.on_demand { ON_DEMAND_PRG } else { DEFAULT_PRG };
    Prg::at(&party_seed.derive(&c.name, 0), kind, offset).u64s(c.len as usize)
}

/// One kind of correlated randomness, as the dealer and the stores see it (object safe:
/// [`super::MaterialRequest::kind`] hands out `&dyn Kind`).
pub trait Kind: std::fmt::Debug {
    /// The kind's name, as counted in the manifest and named in errors (parameters
    /// that change the layout are part of it, e.g. `trunc-ots-16b`).
    fn name(&self) -> String;

    /// The components one request takes; an error for a request that makes no sense.
    fn layout(&self) -> Result<Vec<Component>, MaterialError>;

    /// Both parties' raw components (layout order, raw ones only), given their seeded
    /// components.
    fn deal(
        &self,
        seeded: &Seeded<'_>,
        weights: &dyn LinearWeights,
    ) -> Result<[Vec<Vec<u64>>; 2], MaterialError>;

    /// Elements the request counts for in the manifest (triples, OTs, rows, ...).
    fn elements(&self) -> u64;

    /// The public shape record at the head of the kind, if its layout has one.
    fn shape_record(&self) -> Option<Vec<u64>> {
        None
    }
}

/// A request of a kind that party `R` can take: what it assembles into.
pub trait Request<R: Role>: Kind + Clone + Into<super::MaterialRequest> {
    /// The party's typed correlation.
    type Output;

    /// Builds the correlation from the party's components in layout order (absent ones
    /// empty, seeded and raw ones of the layout's lengths, unpacked).
    fn assemble(&self, parts: Vec<Vec<u64>>) -> Result<Self::Output, MaterialError>;
}

/// Splits `parts` into exactly `N` components.
pub(crate) fn parts<const N: usize>(parts: Vec<Vec<u64>>) -> Result<[Vec<u64>; N], MaterialError> {
    let got = parts.len();
    parts.try_into().map_err(|_| MaterialError::Mismatch(format!("{got} components, expected {N}")))
}

/// Adds two parties' seeded components: the dealer's view of an arithmetic secret.
pub(crate) fn both(s: &Seeded<'_>, i: usize) -> Vec<u64> {
    crate::ring::add(&s.get(0, i), &s.get(1, i))
}

/// The shape words of a request, as stored.
pub(crate) fn shape_words(dims: &[usize]) -> Vec<u64> {
    dims.iter().map(|&d| d as u64).collect()
}
