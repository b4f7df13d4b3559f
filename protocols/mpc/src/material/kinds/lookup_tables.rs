//! One-time truth tables of public functions (Ishai, Kushilevitz, Meldgaard, Orlandi and
//! Paskin-Cherniavsky, "On the power of correlated randomness in secure computation",
//! TCC 2013), the table lookups of v3-ot ([`crate::lut`]).
//!
//! Per lookup instance the dealer draws a mask `r` of `k` bits, additively shared mod
//! `2^k` (`r0` from P0's seed, `r1` from P1's), and for each *read* of the instance (a
//! public function `T` on the low `bits <= k` bits of the index) shares the rotated table
//! `T'[j] = T((j - r) mod 2^bits)` for every `j`: P1's share is seed-derived, P0's is
//! `T' - share1` (XOR for bit outputs, subtraction mod `2^out` for arithmetic ones),
//! stored packed at the output's width. Online both parties open `x + r mod 2^k` and
//! read entry `x + r` of every read's table: one round, `k` bits each way, and any
//! number of functions of the same input.
//!
//! Layout: `r0` seeded for P0 only, `r1` seeded for P1 only, one `t<i>` per read: raw
//! for P0 ([`Read::table_words`] words per instance), seeded for P1, which reads only
//! the word holding its entry of each instance ([`crate::material::OnDemand`]) instead of
//! expanding whole tables. This is where v3-ot's dealer bytes go: `2^bits x out` bits
//! per read per lookup for P0, nothing for P1.

use super::super::kind::{checked_len, Component, Kind, Layout, OnDemand, Request, Seeded, Src};
use super::super::{LinearWeights, MaterialError};
use crate::ring::low_mask;
use crate::share::Role;
use rayon::prelude::*;

/// How a table's output is shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Out {
    /// XOR shares of a value of this many bits (a bit vector: predicates, bits of a value
    /// that feed bit products).
    Xor(u32),
    /// Additive shares modulo `2^bits` (64: ring shares).
    Add(u32),
}

impl Out {
    /// Bits per entry.
    pub fn bits(self) -> u32 {
        match self {
            Out::Xor(b) | Out::Add(b) => b,
        }
    }

    /// P0's share of `value` given P1's (both reduced to the width).
    pub fn share0(self, value: u64, share1: u64) -> u64 {
        match self {
            Out::Xor(b) => (value ^ share1) & low_mask(b),
            Out::Add(b) => value.wrapping_sub(share1) & low_mask(b),
        }
    }

    /// The value from both shares.
    pub fn combine(self, s0: u64, s1: u64) -> u64 {
        match self {
            Out::Xor(b) => (s0 ^ s1) & low_mask(b),
            Out::Add(b) => s0.wrapping_add(s1) & low_mask(b),
        }
    }
}

/// The public functions v3-ot reads from tables. The index `v` is the read's `bits` low
/// bits of the opened value, interpreted as the function says (signed: two's complement
/// on `bits` bits). Parameters are integers so that requests hash and compare exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum TableFn {
    /// `max(v, 0)` of a signed `bits`-bit `v`, additive mod `2^bits` (the max tournament).
    Relu,
    /// `[lo <= v <= hi]` of a signed `v`, one XOR bit.
    Between {
        /// Lowest value that gives 1.
        lo: i32,
        /// Highest value that gives 1.
        hi: i32,
    },
    /// `[v >= t]` of a signed `v`, one XOR bit.
    AtLeast {
        /// Threshold.
        t: i32,
    },
    /// SiLU's tangent line at the table point: slope and intercept as XOR bits that feed
    /// bit products ([`SiluLine`]).
    SiluLine(SiluLine),
    /// `exp(v 2^-frac_in)` of a signed `v` with `frac_out` fractional bits, ring shares.
    Exp {
        /// Fractional bits of `v`.
        frac_in: u32,
        /// Fractional bits of the output.
        frac_out: u32,
    },
    /// For an unsigned `v` with `v >= min`: `x^-1` (`root` false) or `x^-1/2` (`root`
    /// true) of `x = v 2^shift / div` with `frac_out` fractional bits, ring shares; 0
    /// for `v < min` (the value belongs to a finer level, [`crate::tables`]).
    Inverse {
        /// `x = v 2^shift / div` (`shift` may be negative).
        shift: i32,
        /// Public divisor (RMSNorm's width).
        div: u32,
        /// Square root of the inverse.
        root: bool,
        /// Fractional bits of the output.
        frac_out: u32,
        /// Smallest `v` this level answers for.
        min: u32,
    },
    /// `[v >= min]` of an unsigned `v`, additive mod `2^width` (counted across levels).
    Count {
        /// Threshold.
        min: u32,
        /// Output width.
        width: u32,
    },
    /// `[v == 0]` of `v` mod `2^bits`, one XOR bit.
    IsZero,
}

/// Two's complement value of the `bits` low bits of `v`.
pub fn signed(v: u64, bits: u32) -> i64 {
    let v = v & low_mask(bits);
    if bits < 64 && v >> (bits - 1) == 1 {
        v as i64 - (1i64 << bits)
    } else {
        v as i64
    }
}

/// SiLU's tangent line at `x = v 2^-frac_in` for a signed `v` ([`TableFn::SiluLine`]):
/// the slope `silu'(x)` with `slope_frac` fractional bits plus `slope_bias`
/// (`slope_bits` unsigned bits, the low ones), and above it the intercept
/// `k = slope x - silu(x) - silu''(x) 2^(-2 frac_in) / 12` with `intercept_frac`
/// fractional bits plus `intercept_bias` (`intercept_bits` unsigned bits). Then
/// `silu(g) ~ slope g - k` for `g` within one step of `x`
/// ([`crate::tables::silu_times`], which subtracts the biases publicly). The intercept
/// holds the *rounded* slope, so the line is exact at `x` whatever the slope's rounding,
/// and its last term is the mean of the curvature term `silu''(x) (g - x)^2 / 2` under
/// the index's stochastic rounding ([`crate::lut::reduce`]: `E (g - x)^2 = step^2 / 6`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct SiluLine {
    /// Fractional bits of `v`.
    pub frac_in: u32,
    /// Fractional bits of the slope.
    pub slope_frac: u32,
    /// Added to the slope (in its units) so that it is nonnegative.
    pub slope_bias: u32,
    /// Width of the slope.
    pub slope_bits: u32,
    /// Fractional bits of the intercept.
    pub intercept_frac: u32,
    /// Added to the intercept (in its units) so that it is nonnegative.
    pub intercept_bias: u32,
    /// Width of the intercept.
    pub intercept_bits: u32,
}

impl SiluLine {
    /// The rounded slope and intercept at index `v`, unbiased and unclamped.
    pub fn at(&self, v: i64) -> (i64, i64) {
        let x = v as f64 / (1u64 << self.frac_in) as f64;
        let sig = 1.0 / (1.0 + (-x).exp());
        let d1 = sig * (1.0 + x * (1.0 - sig));
        let d2 = sig * (1.0 - sig) * (2.0 + x * (1.0 - 2.0 * sig));
        let slope = (d1 * (1u64 << self.slope_frac) as f64).round() as i64;
        let step = 1.0 / (1u64 << self.frac_in) as f64;
        let k = slope as f64 / (1u64 << self.slope_frac) as f64 * x - x * sig - d2 * step * step / 12.0;
        (slope, (k * (1u64 << self.intercept_frac) as f64).round() as i64)
    }

    /// Bits of a table entry.
    pub fn bits(&self) -> u32 {
        self.slope_bits + self.intercept_bits
    }

    /// The table entry at index `v`: both biased, clamped to their widths, packed.
    fn entry(&self, v: i64) -> u64 {
        let (slope, intercept) = self.at(v);
        let biased = |value: i64, bias: u32, bits: u32| {
            (value + i64::from(bias)).clamp(0, low_mask(bits) as i64) as u64
        };
        biased(slope, self.slope_bias, self.slope_bits)
            | biased(intercept, self.intercept_bias, self.intercept_bits) << self.slope_bits
    }
}

fn round_to(x: f64, frac: u32) -> u64 {
    (x * (1u64 << frac) as f64).round() as i64 as u64
}

impl TableFn {
    /// The output sharing of the function on a `bits`-bit index.
    pub fn out(&self, bits: u32) -> Out {
        match *self {
            TableFn::Relu => Out::Add(bits),
            TableFn::Between { .. } | TableFn::AtLeast { .. } | TableFn::IsZero => Out::Xor(1),
            TableFn::SiluLine(line) => Out::Xor(line.bits()),
            TableFn::Exp { .. } | TableFn::Inverse { .. } => Out::Add(64),
            TableFn::Count { width, .. } => Out::Add(width),
        }
    }

    /// The function at index `v` (the read's `bits` low bits), encoded for its output.
    pub fn eval(&self, v: u64, bits: u32) -> u64 {
        let s = signed(v, bits);
        let u = v & low_mask(bits);
        let value = match *self {
            TableFn::Relu => s.max(0) as u64,
            TableFn::Between { lo, hi } => u64::from(s >= i64::from(lo) && s <= i64::from(hi)),
            TableFn::AtLeast { t } => u64::from(s >= i64::from(t)),
            TableFn::SiluLine(line) => line.entry(s),
            TableFn::Exp { frac_in, frac_out } => {
                round_to((s as f64 / (1u64 << frac_in) as f64).exp(), frac_out)
            }
            TableFn::Inverse { shift, div, root, frac_out, min } => {
                if u < u64::from(min) || u == 0 {
                    0
                } else {
                    let x = u as f64 * 2f64.powi(shift) / f64::from(div.max(1));
                    round_to(if root { x.sqrt().recip() } else { x.recip() }, frac_out)
                }
            }
            TableFn::Count { min, .. } => u64::from(u >= u64::from(min)),
            TableFn::IsZero => u64::from(u == 0),
        };
        value & low_mask(self.out(bits).bits())
    }

    /// Short name for the kind's name (stream names and manifest counts).
    fn tag(&self) -> String {
        match *self {
            TableFn::Relu => "relu".into(),
            TableFn::Between { lo, hi } => format!("in{lo}:{hi}"),
            TableFn::AtLeast { t } => format!("ge{t}"),
            TableFn::SiluLine(l) => format!(
                "siluline{}:{}+{}:{}:{}+{}:{}",
                l.frac_in,
                l.slope_frac,
                l.slope_bias,
                l.slope_bits,
                l.intercept_frac,
                l.intercept_bias,
                l.intercept_bits
            ),
            TableFn::Exp { frac_in, frac_out } => format!("exp{frac_in}:{frac_out}"),
            TableFn::Inverse { shift, div, root, frac_out, min } => {
                format!("{}{shift}:{div}:{frac_out}:{min}", if root { "rsqrt" } else { "recip" })
            }
            TableFn::Count { min, width } => format!("cnt{min}:{width}"),
            TableFn::IsZero => "zero".into(),
        }
    }
}

/// One function read from a lookup's opened index: `func` on the low `bits` bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Read {
    /// The function.
    pub func: TableFn,
    /// Index bits it reads (at most the lookup's `k`).
    pub bits: u32,
}

impl Read {
    /// Entries packed in one 64-bit word.
    pub fn per_word(&self) -> usize {
        (64 / self.func.out(self.bits).bits().max(1)) as usize
    }

    /// Words of one instance's table.
    pub fn table_words(&self) -> usize {
        (1usize << self.bits).div_ceil(self.per_word())
    }

    /// Entry `j` of a packed table.
    pub fn entry(&self, table: &[u64], j: usize) -> u64 {
        let (pw, w) = (self.per_word(), self.func.out(self.bits).bits());
        (table[j / pw] >> ((j % pw) as u32 * w)) & low_mask(w)
    }

    /// P0's packed tables of `count` instances: instance `n`'s entry `j` is
    /// `T((j - r_n) mod 2^bits)` shared against P1's packed words `t1` (module doc).
    /// Every rotation is packed once when there are more instances than rotations, so an
    /// instance costs a word operation per word instead of one per entry.
    fn p0_tables(&self, masks: &[u64], t1: &[u64], count: usize) -> Vec<u64> {
        let plain = self.plain_table();
        let (words, pw, out) = (self.table_words(), self.per_word(), self.func.out(self.bits));
        let (w, bm, size) = (out.bits(), low_mask(self.bits), 1usize << self.bits);
        let entry = |r: u64, j: usize| plain[(j as u64).wrapping_sub(r) as usize & bm as usize];
        let mut t0 = vec![0u64; count * words];
        if count < size {
            t0.par_chunks_mut(words).zip(t1.par_chunks(words)).enumerate().for_each(|(n, (t, s1))| {
                let r = masks[n] & bm;
                for j in 0..size {
                    t[j / pw] |= out.share0(entry(r, j), self.entry(s1, j)) << ((j % pw) as u32 * w);
                }
            });
            return t0;
        }
        let mut rotations = vec![0u64; size * words];
        rotations.par_chunks_mut(words).enumerate().for_each(|(r, t)| {
            for j in 0..size {
                t[j / pw] |= entry(r as u64, j) << ((j % pw) as u32 * w);
            }
        });
        // Bits of each word that hold entries (the last word may be partly empty).
        let used: Vec<u64> = (0..words).map(|k| low_mask(((size - k * pw).min(pw) as u32) * w)).collect();
        t0.par_chunks_mut(words).zip(t1.par_chunks(words)).enumerate().for_each(|(n, (t, s1))| {
            let rot = &rotations[(masks[n] & bm) as usize * words..][..words];
            for k in 0..words {
                t[k] = match out {
                    Out::Xor(_) => (rot[k] ^ s1[k]) & used[k],
                    Out::Add(_) => {
                        (0..pw as u32)
                            .map(|q| out.share0(rot[k] >> (q * w), s1[k] >> (q * w)) << (q * w))
                            .fold(0, |a, b| a | b)
                            & used[k]
                    }
                };
            }
        });
        t0
    }

    /// The full (unrotated) table: `T(v)` for every index `v`.
    pub fn plain_table(&self) -> Vec<u64> {
        (0..1u64 << self.bits).map(|v| self.func.eval(v, self.bits)).collect()
    }
}

/// A party's shares of one read's tables.
#[derive(Debug)]
pub enum TableShares {
    /// Stored (P0): packed, `table_words` per instance.
    Stored(Vec<u64>),
    /// Seed-derived (P1): the stream, read one word per instance.
    OnDemand(OnDemand),
}

/// A party's lookup material for `count` instances (module doc).
pub struct Lookups<R: Role> {
    /// Index width of the opening.
    pub k: u32,
    /// The reads of every instance.
    pub reads: Vec<Read>,
    /// This party's share of each instance's mask (mod `2^k`).
    pub mask: Vec<u64>,
    /// Per read: this party's table shares.
    pub tables: Vec<TableShares>,
    pub(crate) _role: std::marker::PhantomData<R>,
}
crate::debug_lengths!(Lookups<R> { mask, tables });

impl<R: Role> Lookups<R> {
    /// Entry `y_i` of every instance's table of read `r` (`y` already reduced to the
    /// read's bits), this party's share.
    pub fn read(&self, r: usize, y: &[u64]) -> Vec<u64> {
        /// Instances per rayon task (an on-demand reader is one keyed PRG per task).
        const CHUNK: usize = 8192;
        let read = &self.reads[r];
        let (words, pw, w) = (read.table_words(), read.per_word(), read.func.out(read.bits).bits());
        let mut out = vec![0u64; y.len()];
        match &self.tables[r] {
            TableShares::Stored(t) => {
                out.par_chunks_mut(CHUNK).zip(y.par_chunks(CHUNK)).enumerate().for_each(|(c, (o, y))| {
                    for (k, (o, &j)) in o.iter_mut().zip(y).enumerate() {
                        let i = c * CHUNK + k;
                        *o = read.entry(&t[i * words..(i + 1) * words], j as usize);
                    }
                })
            }
            // One PRG word per instance: a random access into the stream (batches of
            // AES blocks), the cost of P1's lookups, spread over the cores.
            TableShares::OnDemand(stream) => {
                out.par_chunks_mut(CHUNK).zip(y.par_chunks(CHUNK)).enumerate().for_each(|(c, (o, y))| {
                    let mut at: Vec<u64> = y
                        .iter()
                        .enumerate()
                        .map(|(k, &j)| (c * CHUNK + k) as u64 * words as u64 + j / pw as u64)
                        .collect();
                    stream.reader().words(&mut at, o);
                    for (o, &j) in o.iter_mut().zip(y) {
                        *o = (*o >> ((j % pw as u64) as u32 * w)) & low_mask(w);
                    }
                })
            }
        }
        out
    }
}

/// `count` lookups of a `k`-bit index, each reading every function of `reads`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct LookupRequest {
    /// Instances (elements looked up).
    pub count: usize,
    /// Index width opened online (1..=16).
    pub k: u32,
    /// Functions read from each opened index.
    pub reads: Vec<Read>,
}

impl LookupRequest {
    fn check(&self) -> Result<(), MaterialError> {
        let bad = |m: String| Err(MaterialError::InvalidRequest(format!("lookup tables: {m}")));
        if !(1..=16).contains(&self.k) {
            return bad(format!("{}-bit index: 1..=16 are supported", self.k));
        }
        if self.reads.is_empty() {
            return bad("no function to read".into());
        }
        for r in &self.reads {
            let w = r.func.out(r.bits).bits();
            if r.bits == 0 || r.bits > self.k || !(1..=64).contains(&w) {
                return bad(format!("{r:?} on a {}-bit index", self.k));
            }
        }
        Ok(())
    }
}

impl Kind for LookupRequest {
    fn name(&self) -> String {
        let reads: Vec<String> = self.reads.iter().map(|r| format!("{}b{}", r.bits, r.func.tag())).collect();
        format!("lut-{}-{}", self.k, reads.join("+"))
    }
    fn layout(&self) -> Result<Vec<Component>, MaterialError> {
        self.check()?;
        let count = self.count as u64;
        let mut l = Layout::new(self.name()).comp("r0", count, Src::Seed, Src::Absent).comp(
            "r1",
            count,
            Src::Absent,
            Src::Seed,
        );
        for (i, r) in self.reads.iter().enumerate() {
            l = l.raw_p0_on_demand_p1(&format!("t{i}"), checked_len(self.count, r.table_words(), self)?);
        }
        Ok(l.build())
    }
    fn deal(&self, s: &Seeded<'_>, _: &dyn LinearWeights) -> Result<[Vec<Vec<u64>>; 2], MaterialError> {
        let (r0, r1) = (s.get(0, 0), s.get(1, 1));
        let km = low_mask(self.k);
        let masks: Vec<u64> = r0.iter().zip(&r1).map(|(a, b)| a.wrapping_add(*b) & km).collect();
        let mut p0 = Vec::with_capacity(self.reads.len());
        for (i, read) in self.reads.iter().enumerate() {
            let t1 = s.get(1, 2 + i);
            p0.push(read.p0_tables(&masks, &t1, self.count));
        }
        Ok([p0, vec![]])
    }
    fn elements(&self) -> u64 {
        self.count as u64
    }
}

impl<R: Role> Request<R> for LookupRequest {
    type Output = Lookups<R>;
    fn assemble(&self, p: Vec<Vec<u64>>) -> Result<Lookups<R>, MaterialError> {
        self.check()?;
        let n = self.reads.len();
        if p.len() != 2 + n {
            return Err(MaterialError::Mismatch(format!("{} components, expected {}", p.len(), 2 + n)));
        }
        let mut it = p.into_iter();
        let (r0, r1) = (it.next().unwrap_or_default(), it.next().unwrap_or_default());
        let km = low_mask(self.k);
        let mask = if R::ID == 0 { r0 } else { r1 };
        let tables = it
            .map(|t| {
                if R::ID == 0 {
                    Ok(TableShares::Stored(t))
                } else {
                    OnDemand::decode(&t).map(TableShares::OnDemand)
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Lookups {
            k: self.k,
            reads: self.reads.clone(),
            mask: mask.into_iter().map(|r| r & km).collect(),
            tables,
            _role: std::marker::PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_entries_round_trip_at_every_width() {
        for w in [1u32, 5, 10, 12, 64] {
            let read = Read { func: TableFn::Count { min: 0, width: w }, bits: 6 };
            let pw = read.per_word();
            let mut t = vec![0u64; read.table_words()];
            for j in 0..64usize {
                t[j / pw] |= ((j as u64 * 7) & low_mask(w)) << ((j % pw) as u32 * w);
            }
            for j in 0..64usize {
                assert_eq!(read.entry(&t, j), (j as u64 * 7) & low_mask(w), "width {w} entry {j}");
            }
        }
    }

    /// P0's tables, by the per-entry path (fewer instances than rotations) and the
    /// packed-rotation path, recombine with P1's words to the rotated table.
    #[test]
    fn p0_tables_recombine_to_the_rotated_table_on_both_paths() {
        use crate::prg::{Prg, Seed};
        let reads = [
            Read { func: crate::tables::SILU_LINE, bits: crate::tables::SILU_INDEX_BITS },
            Read { func: TableFn::Relu, bits: 8 },
            Read { func: TableFn::AtLeast { t: 3 }, bits: 6 },
        ];
        for read in reads {
            for count in [5usize, 300] {
                let mut prg = Prg::new(&Seed::from_u64(count as u64));
                let words = read.table_words();
                let masks = prg.u64s(count);
                let t1 = prg.u64s(count * words);
                let t0 = read.p0_tables(&masks, &t1, count);
                let (plain, out, bm) = (read.plain_table(), read.func.out(read.bits), low_mask(read.bits));
                for n in 0..count {
                    let (a, b) = (&t0[n * words..][..words], &t1[n * words..][..words]);
                    for j in 0..1usize << read.bits {
                        let want = plain[(j as u64).wrapping_sub(masks[n]) as usize & bm as usize];
                        assert_eq!(
                            out.combine(read.entry(a, j), read.entry(b, j)),
                            want,
                            "{read:?} n {n} j {j}"
                        );
                    }
                    let used = (1usize << read.bits) - (words - 1) * read.per_word();
                    let held = used as u32 * out.bits();
                    if held < 64 {
                        assert_eq!(a[words - 1] >> held, 0, "{read:?}: the last word's unused bits are zero");
                    }
                }
            }
        }
    }

    /// SiLU's line table: every entry fits its widths unclamped (the biases and widths
    /// of [`crate::tables`] cover the slope and intercept at every index).
    #[test]
    fn silu_line_entries_fit_their_widths() {
        use crate::tables::SILU_INDEX_BITS;
        let TableFn::SiluLine(line) = crate::tables::SILU_LINE else {
            panic!("SILU_LINE is a SiluLine");
        };
        let half = 1i64 << (SILU_INDEX_BITS - 1);
        for v in -half..half {
            let (slope, intercept) = line.at(v);
            let (s, k) = (slope + i64::from(line.slope_bias), intercept + i64::from(line.intercept_bias));
            assert!((0..1i64 << line.slope_bits).contains(&s), "slope {s} at {v}");
            assert!((0..1i64 << line.intercept_bits).contains(&k), "intercept {k} at {v}");
            let unit = |frac: u32| (1u64 << frac) as f64;
            let x = v as f64 / unit(line.frac_in);
            let fit = slope as f64 / unit(line.slope_frac) * x - intercept as f64 / unit(line.intercept_frac);
            let silu = x / (1.0 + (-x).exp());
            assert!((fit - silu).abs() < 2e-3, "line {fit} against silu {silu} at {x}");
        }
    }

    #[test]
    fn signed_reads_two_complement() {
        assert_eq!(signed(0x3ff, 10), -1);
        assert_eq!(signed(0x1ff, 10), 511);
        assert_eq!(signed(0x200, 10), -512);
        assert_eq!(signed(5, 64), 5);
    }
}
