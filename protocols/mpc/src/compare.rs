//! Comparison of arithmetic shares: the sign bit `msb(x)` (so `x < 0`, and `x < y` as
//! `msb(x - y)`) by a boolean parallel-prefix carry on XOR-shared bits with dealer AND
//! triples, then bit-to-arithmetic conversion with daBits (DESIGN.md section 3).
//!
//! **Bit-width reduction.** The comparison runs on the ring `Z_2^k`, `k = bits` in
//! `2..=64`: each party reduces its share mod `2^k` locally (no communication, since
//! `x mod 2^k = (x0 + x1) mod 2^k`), and the result is the sign of `x` read as a `k`-bit
//! two's-complement number. It is exact when `|x| < 2^(k-1)`; callers choose `k` from
//! the measured range of their input (a wrong `k` gives a wrong bit, never a panic).
//!
//! **Dropping low bits for free** ([`reduce_local`]). Each party shifts its share right
//! by `s` bits (logical shift of the unsigned representative). Since
//! `x0 + x1 = x + w 2^64`, `(x0 >> s) + (x1 >> s) = floor(x / 2^s) + w 2^(64-s) - c` with
//! `c` in `{0, 1}`: modulo `2^(64-s)` (and so modulo any `2^k`, `k <= 64 - s`) the wrap
//! term vanishes and the result is `floor(x / 2^s) - c`, with no failure probability
//! (unlike SecureML's truncation, which must keep the full ring). The sign is then exact
//! except for `0 <= x < 2^s`, which may read as negative: callers drop only bits whose
//! loss they tolerate (the fractional bits a threshold test does not need). A comparison
//! of a `F = 16` value that keeps 4 fractional bits and `|x| < 2^11` runs on `k = 16`.
//!
//! **Protocol.** Let `w = k - 1`, `a` = P0's share and `b` = P1's share, both mod `2^k`.
//! `msb(x) = a_w XOR b_w XOR carry_w`, where `carry_w` is the carry into bit `w` of
//! `a + b`, the group *generate* of bits `0..w`. The `w` low bits are cut into chunks of
//! [`CHUNK_BITS`] bits (the top chunk may be narrower); a chunk holds P0's private value
//! `A` and P1's private `B`.
//! 1. Round 1, one-time truth tables (Ishai, Kushilevitz, Meldgaard, Orlandi, Paskin-Cherniavsky,
//!    TCC 2013): per chunk the dealer gave P0 a mask `r_A`, P1 a mask `r_B` and both XOR
//!    shares of the table `T[u][v] = (gen, prop)` of `A = u + r_A`, `B = v + r_B`
//!    (`gen`: `A + B` carries out of the chunk; `prop`: `A + B = 2^c - 1`). P0 sends
//!    `u = A - r_A`, P1 sends `v = B - r_B` (both uniform), and each reads its share of
//!    `T[u][v]`. A narrower top chunk of `c' < c` bits is padded to `c` bits (P0's value
//!    `A 2^(c-c') + 2^(c-c') - 1`, P1's `B 2^(c-c')`), which keeps both `gen` and
//!    `prop`. This replaces the bitwise generate round and the first
//!    `log2(CHUNK_BITS)` tree levels.
//! 2. The next `ceil(log2(chunks))` rounds: a Sklansky/Brent-Kung style tree over the
//!    chunk nodes with AND triples, low node `l`, high node `h`:
//!    `G = G_h XOR (P_h AND G_l)` (the two terms are exclusive, so XOR is OR),
//!    `P = P_h AND P_l` (skipped at the last level, where no `P` is needed). Nodes are
//!    bit-sliced (one plane packs a node of all `N` elements into `ceil(N / 64)` words),
//!    all pairs of a level go in one AND batch, an odd node passes through.
//! 3. `msb` shares: P0 `a_w XOR G_0`, P1 `b_w XOR G_1`.
//! 4. Last round: daBit conversion of the bit to additive shares mod `2^64`
//!    ([`super::boolean`]). [`Compare::start_bits`] stops before it and returns the XOR
//!    shares of the bits, for a caller that only selects with them
//!    ([`super::beaver::bit_mul_start`] takes XOR-shared bits directly), saving the
//!    round and the daBits.
//!
//! Every message is a table index masked by a one-time mask, a Beaver opening over
//! `GF(2)` (masked by fresh triple bits) or the daBit-masked bit, so each is uniform to
//! its receiver.
//!
//! **Cost** per element, each direction: `CHUNK_BITS` bits per chunk, 2 bits per AND gate
//! of the tree, 1 bit for the daBit. `k = 16` (5 chunks, 7 ANDs): about 3.6 bytes, 5
//! rounds (4 as XOR bits), where the bitwise generate round took 10.3 bytes and 6 rounds;
//! `k = 64` (21 chunks, 39 ANDs): about 17.7 bytes, 7 rounds. Dealer: a 16-byte table
//! per chunk for P0 (P1's tables and both masks are seeded). Material: [`and_words`]
//! AND-triple words, [`chunks`]`(k) N` carry tables and `N` daBits.

use super::boolean;
use super::{check_len, exchange, shape, AndTriples, CarryTables, DaBits, MpcError};
use crate::material::MaterialSource;
use crate::material::{AndTriplesRequest, CarryTablesRequest, DaBitsRequest};
use crate::ring::{low_mask, pack_bits, packed_words, unpack_bits};
use crate::share::{BitShares, Role, Shares};
use shardlm_transport::{Channel, Lane};

const OP: &str = "comparison";

/// Chunk width of the carry truth tables: 3 bits (a 64-entry table of 2-bit entries,
/// 16 bytes for P0 per chunk; 4 bits would save a round per comparison for 4 times the
/// dealer bytes).
pub const CHUNK_BITS: u32 = 3;

/// Chunks of a comparison on `bits` bits.
pub fn chunks(bits: u32) -> usize {
    (bits.saturating_sub(1) as usize).div_ceil(CHUNK_BITS as usize)
}

/// The schedule of the carry tree for `w` bit planes: per level, the number of pairs
/// combined and whether that level also computes the group propagate.
fn levels(w: usize) -> Vec<(usize, bool)> {
    let mut out = Vec::new();
    let mut nodes = w;
    while nodes > 1 {
        let pairs = nodes / 2;
        let next = nodes - pairs;
        out.push((pairs, next > 1));
        nodes = next;
    }
    out
}

/// AND-triple words one comparison of `n` elements on `bits` bits consumes.
pub fn and_words(n: usize, bits: u32) -> usize {
    let per_plane = n.div_ceil(64);
    let gates: usize =
        levels(chunks(bits)).iter().map(|&(pairs, with_p)| pairs * if with_p { 2 } else { 1 }).sum();
    gates * per_plane
}

/// Rounds one comparison on `bits` bits takes (the daBit conversion included).
pub fn rounds(bits: u32) -> usize {
    2 + levels(chunks(bits)).len()
}

/// Where a comparison is between its rounds.
#[derive(Debug)]
enum Phase {
    /// Waiting for the peer's masked chunk values (the table round).
    Tables,
    /// Waiting for the answer of tree level `i`.
    Level(usize),
    /// Waiting for the daBit answer.
    Convert,
    /// Done.
    Finished,
}

/// What a comparison step asks for next.
#[derive(Debug)]
pub enum Step<R: Role> {
    /// Send this message (the peer sends one of the same length) and call
    /// [`Compare::step`] with the answer.
    Send(Vec<u64>),
    /// Additive shares of the sign bits, one per element.
    Done(Shares<R>),
    /// XOR shares of the sign bits, one per element (0 or 1) ([`Compare::start_bits`]).
    Bits(Vec<u64>),
}

/// IO-free core of a batched sign-bit computation (module doc has the protocol).
pub struct Compare<R: Role> {
    n: usize,
    words: usize,
    /// XOR shares of bit `w` (the top bit) of our reduced share, bit-sliced.
    top: Vec<u64>,
    /// Current nodes: (G, P) planes of `words` words each, low to high.
    nodes: Vec<(Vec<u64>, Vec<u64>)>,
    triples: AndTriples<R>,
    used: usize,
    tables: CarryTables<R>,
    /// Our masked chunk values (chunk-major: chunk `c` of element `i` at `c n + i`).
    masked: Vec<u64>,
    dabits: Option<DaBits<R>>,
    /// Stop at XOR shares of the bits (no daBit conversion).
    boolean_out: bool,
    pending: Option<boolean::AndState<R>>,
    convert: Option<boolean::B2aState<R>>,
    levels: Vec<(usize, bool)>,
    phase: Phase,
}
crate::debug_lengths!(Compare<R> { top, nodes, masked, levels });

fn plane(values: &[u64], bit: u32, words: usize) -> Vec<u64> {
    let mut out = vec![0u64; words];
    for (i, v) in values.iter().enumerate() {
        out[i / 64] |= ((v >> bit) & 1) << (i % 64);
    }
    out
}

impl<R: Role> Compare<R> {
    /// Starts the sign bits of `x` read as `bits`-bit numbers, with exactly
    /// [`and_words`]`(n, bits)` AND-triple words, [`chunks`]`(bits) n` carry tables and `n`
    /// daBits. Returns the core and the first message.
    pub fn start(
        x: &Shares<R>,
        bits: u32,
        triples: AndTriples<R>,
        tables: CarryTables<R>,
        dabits: DaBits<R>,
    ) -> Result<(Self, Step<R>), MpcError> {
        check_len(OP, "daBits", dabits.bits.len(), x.len())?;
        Self::begin(x, bits, triples, tables, Some(dabits))
    }

    /// Like [`Compare::start`], but finishes with XOR shares of the bits
    /// ([`Step::Bits`]) one round earlier and takes no daBits.
    pub fn start_bits(
        x: &Shares<R>,
        bits: u32,
        triples: AndTriples<R>,
        tables: CarryTables<R>,
    ) -> Result<(Self, Step<R>), MpcError> {
        Self::begin(x, bits, triples, tables, None)
    }

    fn begin(
        x: &Shares<R>,
        bits: u32,
        triples: AndTriples<R>,
        tables: CarryTables<R>,
        dabits: Option<DaBits<R>>,
    ) -> Result<(Self, Step<R>), MpcError> {
        if !(2..=64).contains(&bits) {
            return Err(shape(OP, format!("bit width {bits} is outside 2..=64")));
        }
        let n = x.len();
        check_len(OP, "AND-triple words", triples.a.len(), and_words(n, bits))?;
        check_len(OP, "AND-triple words (b)", triples.b.len(), and_words(n, bits))?;
        check_len(OP, "AND-triple words (c)", triples.c.len(), and_words(n, bits))?;
        let q = chunks(bits);
        if tables.chunk != CHUNK_BITS {
            return Err(shape(
                OP,
                format!("carry tables on {}-bit chunks, expected {CHUNK_BITS}", tables.chunk),
            ));
        }
        check_len(OP, "carry-table masks", tables.mask.len(), q * n)?;
        check_len(
            OP,
            "carry-table words",
            tables.tables.len(),
            q * n * CarryTables::<R>::table_words(CHUNK_BITS),
        )?;
        let w = bits - 1;
        let words = n.div_ceil(64);
        let v: Vec<u64> = x.as_slice().iter().map(|s| s & low_mask(bits)).collect();
        let top = plane(&v, w, words);
        // Chunk c covers bits c*CHUNK_BITS .. min(+CHUNK_BITS, w), padded to CHUNK_BITS.
        let cm = low_mask(CHUNK_BITS);
        let mut masked = Vec::with_capacity(q * n);
        for c in 0..q {
            let lo = c as u32 * CHUNK_BITS;
            let width = CHUNK_BITS.min(w - lo);
            let pad = CHUNK_BITS - width;
            for (i, &vi) in v.iter().enumerate() {
                let part = (vi >> lo) & low_mask(width);
                let padded = if R::ID == 0 { (part << pad) | low_mask(pad) } else { part << pad };
                masked.push(padded.wrapping_sub(tables.mask[c * n + i]) & cm);
            }
        }
        let msg = pack_bits(&masked, CHUNK_BITS);
        let core = Compare {
            n,
            words,
            top,
            nodes: Vec::new(),
            triples,
            used: 0,
            tables,
            masked,
            boolean_out: dabits.is_none(),
            dabits,
            pending: None,
            convert: None,
            levels: levels(q),
            phase: Phase::Tables,
        };
        Ok((core, Step::Send(msg)))
    }

    /// Reads our shares of every chunk's (gen, prop) from the tables at `(u, v)`.
    fn read_tables(&mut self, peer: &[u64]) -> Result<(), MpcError> {
        let (n, q) = (self.n, self.masked.len() / self.n.max(1));
        check_len(OP, "peer's chunk message (words)", peer.len(), packed_words(q * n, CHUNK_BITS))?;
        let theirs = unpack_bits(peer, CHUNK_BITS, q * n).ok_or_else(|| shape(OP, "short chunk message"))?;
        let tw = CarryTables::<R>::table_words(CHUNK_BITS);
        let size = 1usize << CHUNK_BITS;
        let mut nodes = Vec::with_capacity(q);
        for c in 0..q {
            let (mut g, mut p) = (vec![0u64; self.words], vec![0u64; self.words]);
            for i in 0..n {
                let k = c * n + i;
                let (u, v) =
                    if R::ID == 0 { (self.masked[k], theirs[k]) } else { (theirs[k], self.masked[k]) };
                let at = 2 * (u as usize * size + v as usize);
                let e = self.tables.tables[k * tw + at / 64] >> (at % 64);
                g[i / 64] |= (e & 1) << (i % 64);
                p[i / 64] |= ((e >> 1) & 1) << (i % 64);
            }
            nodes.push((g, p));
        }
        self.nodes = nodes;
        Ok(())
    }

    fn and_round(&mut self, xs: Vec<u64>, ys: Vec<u64>) -> Result<Vec<u64>, MpcError> {
        let k = xs.len();
        let take = |v: &BitShares<R>, at: usize| BitShares::from_raw(v.as_slice()[at..at + k].to_vec());
        let (a, b, c) = (&self.triples.a, &self.triples.b, &self.triples.c);
        if self.used + k > a.len() {
            return Err(shape(OP, "AND triples ran out inside the comparison"));
        }
        let t = AndTriples { a: take(a, self.used), b: take(b, self.used), c: take(c, self.used) };
        self.used += k;
        let (st, msg) = boolean::and_start(&BitShares::from_raw(xs), &BitShares::from_raw(ys), t)?;
        self.pending = Some(st);
        Ok(msg)
    }

    fn finish_ands(&mut self, peer: &[u64]) -> Result<Vec<u64>, MpcError> {
        let st = self.pending.take().ok_or_else(|| shape(OP, "no AND batch in flight"))?;
        Ok(boolean::and_finish(st, peer)?.into_raw())
    }

    /// Starts tree level `i` from the current nodes.
    fn level_message(&mut self, i: usize) -> Result<Vec<u64>, MpcError> {
        let (pairs, with_p) = self.levels[i];
        let wd = self.words;
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        for q in 0..pairs {
            let (lo, hi) = (&self.nodes[2 * q], &self.nodes[2 * q + 1]);
            xs.extend_from_slice(&hi.1);
            ys.extend_from_slice(&lo.0);
            if with_p {
                xs.extend_from_slice(&hi.1);
                ys.extend_from_slice(&lo.1);
            }
        }
        debug_assert_eq!(xs.len(), pairs * wd * if with_p { 2 } else { 1 });
        self.and_round(xs, ys)
    }

    fn combine_level(&mut self, i: usize, z: Vec<u64>) {
        let (pairs, with_p) = self.levels[i];
        let wd = self.words;
        let per = if with_p { 2 } else { 1 };
        let old = std::mem::take(&mut self.nodes);
        let mut next = Vec::with_capacity(old.len() - pairs);
        let mut it = old.into_iter();
        for q in 0..pairs {
            let (_lo, hi) = (it.next(), it.next());
            let hi = hi.unwrap_or_default();
            let base = q * per * wd;
            let g: Vec<u64> = hi.0.iter().zip(&z[base..base + wd]).map(|(g, t)| g ^ t).collect();
            let p = if with_p { z[base + wd..base + 2 * wd].to_vec() } else { Vec::new() };
            next.push((g, p));
        }
        next.extend(it);
        self.nodes = next;
    }

    /// XOR shares of the sign bits, bit-sliced (one bit per element, packed).
    fn sign_words(&self) -> Vec<u64> {
        let carry = match self.nodes.first() {
            Some((g, _)) if !g.is_empty() => g.clone(),
            _ => vec![0; self.words],
        };
        self.top.iter().zip(&carry).map(|(t, c)| t ^ c).collect()
    }

    /// After the carry tree: the daBit message, or the XOR-shared bits when no
    /// conversion was asked for.
    fn after_tree(&mut self) -> Result<Step<R>, MpcError> {
        if self.boolean_out {
            self.phase = Phase::Finished;
            let words = self.sign_words();
            let bits =
                crate::ring::unpack_bits(&words, 1, self.n).ok_or_else(|| shape(OP, "short bit planes"))?;
            return Ok(Step::Bits(bits));
        }
        Ok(Step::Send(self.convert_message()?))
    }

    fn convert_message(&mut self) -> Result<Vec<u64>, MpcError> {
        let bits = self.sign_words();
        let dabits = self.dabits.take().ok_or_else(|| shape(OP, "daBits already used"))?;
        let (st, msg) = boolean::b2a_start(&BitShares::from_raw(bits), self.n, dabits)?;
        self.convert = Some(st);
        self.phase = Phase::Convert;
        Ok(msg)
    }

    /// Rounds this comparison takes in all.
    pub fn rounds(&self) -> usize {
        1 + self.levels.len() + usize::from(!self.boolean_out)
    }

    /// Whether the message last returned is the table round's (masked chunk values).
    pub fn table_round(&self) -> bool {
        matches!(self.phase, Phase::Tables)
    }

    /// Whether the message last returned is the daBit conversion's (a masked bit)
    /// rather than an AND batch's.
    pub fn converting(&self) -> bool {
        matches!(self.phase, Phase::Convert)
    }

    /// Consumes the peer's answer to our last message.
    pub fn step(&mut self, peer: &[u64]) -> Result<Step<R>, MpcError> {
        match self.phase {
            Phase::Tables => {
                self.read_tables(peer)?;
                if self.levels.is_empty() {
                    return self.after_tree();
                }
                self.phase = Phase::Level(0);
                Ok(Step::Send(self.level_message(0)?))
            }
            Phase::Level(i) => {
                let z = self.finish_ands(peer)?;
                self.combine_level(i, z);
                if i + 1 < self.levels.len() {
                    self.phase = Phase::Level(i + 1);
                    Ok(Step::Send(self.level_message(i + 1)?))
                } else {
                    self.after_tree()
                }
            }
            Phase::Convert => {
                let st = self.convert.take().ok_or_else(|| shape(OP, "no conversion in flight"))?;
                self.phase = Phase::Finished;
                Ok(Step::Done(boolean::b2a_finish(st, peer)?))
            }
            Phase::Finished => Err(shape(OP, "the comparison has already finished")),
        }
    }
}

/// Local bit-width reduction (module doc): shares of `floor(x / 2^drop) - c`, `c` in
/// `{0, 1}`, valid modulo `2^(64 - drop)`; compare the result on at most `64 - drop` bits.
pub fn reduce_local<R: Role>(x: &Shares<R>, drop: u32) -> Shares<R> {
    let drop = drop.min(63);
    Shares::from_raw(x.as_slice().iter().map(|v| v >> drop).collect())
}

/// The material of one converting comparison.
pub type CompareMaterial<R> = (AndTriples<R>, CarryTables<R>, DaBits<R>);

/// Takes the material of one comparison of `n` elements on `bits` bits.
pub fn take_material<R: Role, M: MaterialSource<R> + ?Sized>(
    m: &mut M,
    n: usize,
    bits: u32,
) -> Result<CompareMaterial<R>, MpcError> {
    let (t, c) = take_material_bits(m, n, bits)?;
    let d = m.take(DaBitsRequest { n })?;
    Ok((t, c, d))
}

/// Takes the material of one comparison that stops at XOR bits (no daBits).
pub fn take_material_bits<R: Role, M: MaterialSource<R> + ?Sized>(
    m: &mut M,
    n: usize,
    bits: u32,
) -> Result<(AndTriples<R>, CarryTables<R>), MpcError> {
    let t = m.take(AndTriplesRequest { words: and_words(n, bits) })?;
    let c = m.take(CarryTablesRequest { count: chunks(bits) * n, chunk: CHUNK_BITS })?;
    Ok((t, c))
}

/// Rounds of a comparison that stops at XOR-shared bits ([`Compare::start_bits`]).
pub fn rounds_bits(bits: u32) -> usize {
    rounds(bits) - 1
}

/// Driver: additive shares of `msb(x mod 2^bits)` (1 where `x < 0`) for every element.
pub fn msb<R: Role, C: Channel + ?Sized, M: MaterialSource<R> + ?Sized>(
    ch: &mut C,
    x: &Shares<R>,
    bits: u32,
    material: &mut M,
) -> Result<Shares<R>, MpcError> {
    if x.is_empty() {
        return Ok(Shares::from_raw(Vec::new()));
    }
    let (t, c, d) = take_material(material, x.len(), bits)?;
    let (mut core, mut step) = Compare::start(x, bits, t, c, d)?;
    loop {
        match step {
            Step::Send(msg) => {
                let peer = exchange(ch, Lane::Openings, &msg, msg.len())?;
                step = core.step(&peer)?;
            }
            Step::Done(s) => return Ok(s),
            Step::Bits(_) => return Err(shape(OP, "a converting comparison returned XOR bits")),
        }
    }
}

/// Driver: additive shares of `[x < y]` (elementwise) when `|x - y| < 2^(bits - 1)`.
pub fn less_than<R: Role, C: Channel + ?Sized, M: MaterialSource<R> + ?Sized>(
    ch: &mut C,
    x: &Shares<R>,
    y: &Shares<R>,
    bits: u32,
    material: &mut M,
) -> Result<Shares<R>, MpcError> {
    check_len(OP, "y", y.len(), x.len())?;
    msb(ch, &x.sub(y), bits, material)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_counts() {
        // 16 bits: 15 low bits in 5 chunks, tree levels 2+1 pairs with P, then 1 without.
        assert_eq!(chunks(16), 5);
        assert_eq!(rounds(16), 5);
        assert_eq!(and_words(64, 16), 2 * 2 + 2 + 1);
        // 64 bits: 21 chunks, 5 tree levels.
        assert_eq!(rounds(64), 7);
        assert_eq!(rounds(2), 2);
        assert_eq!(and_words(65, 2), 0);
    }
}
