//! Correlated randomness consumed by the primitives, typed by the party that holds it.
//! A value of these types is taken from a [`crate::material::MaterialSource`] once and
//! consumed by value: material is never copied into two uses.

use crate::share::{BitShares, Role, Shares, P0, P1};

/// Elementwise Beaver triples: shares of `a`, `b`, `c = a b`.
#[derive(Debug)]
pub struct Triples<R: Role> {
    /// Shares of `a`.
    pub a: Shares<R>,
    /// Shares of `b`.
    pub b: Shares<R>,
    /// Shares of `c = a * b`.
    pub c: Shares<R>,
}

/// Square pairs: shares of `a` and `a^2`.
#[derive(Debug)]
pub struct SquarePairs<R: Role> {
    /// Shares of `a`.
    pub a: Shares<R>,
    /// Shares of `a^2`.
    pub aa: Shares<R>,
}

/// A matrix triple: `A` (`m x k`), `B` (`k x n`), `C = A B` (`m x n`), row-major.
#[derive(Debug)]
pub struct MatrixTriple<R: Role> {
    /// Rows of `A`.
    pub m: usize,
    /// Inner dimension.
    pub k: usize,
    /// Columns of `B`.
    pub n: usize,
    /// `Some(start)`: `A` (and the `X` it masks) is zero beyond column `start + r` of row
    /// `r`, so only the visible entries of `X - A` are exchanged.
    pub causal: Option<usize>,
    /// Shares of `A`.
    pub a: Shares<R>,
    /// Shares of `B`.
    pub b: Shares<R>,
    /// Shares of `C = A B`.
    pub c: Shares<R>,
}

/// Boolean AND triples on bit-packed words: XOR shares of `a`, `b`, `c = a & b`.
#[derive(Debug)]
pub struct AndTriples<R: Role> {
    /// Shares of `a`.
    pub a: BitShares<R>,
    /// Shares of `b`.
    pub b: BitShares<R>,
    /// Shares of `c = a & b`.
    pub c: BitShares<R>,
}

/// daBits: a random bit `r` shared both ways, XOR (`bits`, one bit per element in the
/// low bit of a word) and additively (`arith`).
#[derive(Debug)]
pub struct DaBits<R: Role> {
    /// XOR shares of `r`, one per element (0 or 1).
    pub bits: Vec<u64>,
    /// Additive shares of `r`.
    pub arith: Shares<R>,
}

/// Bit triples: a random bit `r` shared both ways (as a daBit) and a Beaver pair
/// `(a, c = r a)` on it. One opening of `b XOR r` (a bit) and `x - a` (a word) gives
/// shares of `b x` for a XOR-shared bit `b` ([`super::beaver::bit_mul_start`]).
#[derive(Debug)]
pub struct BitTriples<R: Role> {
    /// XOR shares of `r`, one per element (0 or 1).
    pub bits: Vec<u64>,
    /// Additive shares of `r`.
    pub r: Shares<R>,
    /// Additive shares of `a` (uniform).
    pub a: Shares<R>,
    /// Additive shares of `c = r a`.
    pub c: Shares<R>,
}

/// A norm triple: a square pair `(a, a^2)` per element and a row-scaling triple
/// `(r_row, a, c = r_row a)` on the same `a` ([`super::beaver::norm_square_start`]).
#[derive(Debug)]
pub struct NormTriples<R: Role> {
    /// Rows.
    pub rows: usize,
    /// Elements per row.
    pub cols: usize,
    /// Shares of `a` (`rows x cols`).
    pub a: Shares<R>,
    /// Shares of `a^2`.
    pub aa: Shares<R>,
    /// Shares of `r` (`rows`).
    pub r: Shares<R>,
    /// Shares of `c = r_row a`.
    pub c: Shares<R>,
}

/// A row-scaling triple: `a_r` per row, `b_rj` per element, `c_rj = a_r b_rj`
/// ([`super::beaver::row_mul_start`]).
#[derive(Debug)]
pub struct RowTriples<R: Role> {
    /// Rows.
    pub rows: usize,
    /// Elements per row.
    pub cols: usize,
    /// Shares of `a` (`rows`).
    pub a: Shares<R>,
    /// Shares of `b` (`rows x cols`, row-major).
    pub b: Shares<R>,
    /// Shares of `c` (`rows x cols`).
    pub c: Shares<R>,
}

/// One-time truth tables for chunk carries ([`super::compare`]): per chunk instance this
/// party's random mask (P0: `r_A`, P1: `r_B`, `chunk` bits) and its XOR share of the table
/// `T[u][v] = (gen, prop)` of `A = u + r_A`, `B = v + r_B` (mod `2^chunk`): `gen` is the
/// carry out of `A + B`, `prop` whether `A + B = 2^chunk - 1`. Two bits per entry at
/// bits `2 (u 2^chunk + v)` and the next, [`CarryTables::table_words`] words per table.
#[derive(Debug)]
pub struct CarryTables<R: Role> {
    /// Chunk width in bits.
    pub chunk: u32,
    /// This party's masks, one per instance.
    pub mask: Vec<u64>,
    /// This party's table shares, `table_words(chunk)` words per instance.
    pub tables: Vec<u64>,
    pub(crate) _role: std::marker::PhantomData<R>,
}

impl<R: Role> CarryTables<R> {
    /// Words of one table: `2^(2 chunk)` entries of 2 bits.
    pub fn table_words(chunk: u32) -> usize {
        (2usize << (2 * chunk)).div_ceil(64)
    }
}

/// Power tuples: shares of `a` (uniform) and of `a^2, ..., a^degree` (element-major,
/// `degree - 1` per element). One opening of `x - a` gives every power of `x` up to
/// `degree` ([`super::beaver::powers_start`]).
#[derive(Debug)]
pub struct PowerTuples<R: Role> {
    /// Highest power.
    pub degree: u32,
    /// Shares of `a`.
    pub a: Shares<R>,
    /// Shares of `a^2 ..= a^degree`, `degree - 1` words per element.
    pub powers: Shares<R>,
}

/// `count` 1-of-`n_choices` random-OT correlations on `bits`-bit strings.
///
/// The sender (P1) holds `n_choices` random strings per OT; the receiver (P0) holds a
/// random index per OT and the string at that index. Accessors are typed by role.
#[derive(Debug)]
pub struct RandomOts<R: Role> {
    pub(crate) n_choices: usize,
    pub(crate) bits: u32,
    pub(crate) count: usize,
    /// P0: random indices (`count`). P1: empty.
    pub(crate) index: Vec<u64>,
    /// P0: the chosen strings (`count`). P1: all strings (`count * n_choices`, OT-major).
    pub(crate) strings: Vec<u64>,
    pub(crate) _role: std::marker::PhantomData<R>,
}

impl<R: Role> RandomOts<R> {
    /// Choices per OT.
    pub fn n_choices(&self) -> usize {
        self.n_choices
    }
    /// String width in bits.
    pub fn bits(&self) -> u32 {
        self.bits
    }
    /// Number of OTs.
    pub fn count(&self) -> usize {
        self.count
    }
}

impl RandomOts<P0> {
    /// Builds the receiver's half (random indices and their strings).
    pub fn receiver(n_choices: usize, bits: u32, index: Vec<u64>, chosen: Vec<u64>) -> Self {
        RandomOts { n_choices, bits, count: index.len(), index, strings: chosen, _role: Default::default() }
    }
    /// The random indices.
    pub fn indices(&self) -> &[u64] {
        &self.index
    }
    /// The strings at the random indices.
    pub fn chosen(&self) -> &[u64] {
        &self.strings
    }
}

impl RandomOts<P1> {
    /// Builds the sender's half (`count * n_choices` strings).
    pub fn sender(n_choices: usize, bits: u32, strings: Vec<u64>) -> Self {
        let count = strings.len().checked_div(n_choices).unwrap_or(0);
        RandomOts { n_choices, bits, count, index: Vec::new(), strings, _role: Default::default() }
    }
    /// All strings, OT-major (`strings[ot * n_choices + j]`).
    pub fn strings(&self) -> &[u64] {
        &self.strings
    }
}

/// Client-assisted linear layer material (v2, v3), P0 only: a fresh mask `R`
/// (`n x d_in`) and `S = R * enc(W)^T` (`n x d_out`) for the public weight `weight`.
#[derive(Debug)]
pub struct MaskedLinear {
    /// Rows (tokens).
    pub n: usize,
    /// Input width.
    pub d_in: usize,
    /// Output width.
    pub d_out: usize,
    /// Which weight `S` was computed for.
    pub weight: u32,
    /// The mask `R`, row-major `n x d_in`.
    pub r: Vec<u64>,
    /// `S = R * enc(W)^T mod 2^64`, row-major `n x d_out`.
    pub s: Vec<u64>,
}
