//! Seeded pseudorandom generators: a 32-byte [`Seed`] expands into a stream of ring
//! elements. Whatever a party's material can be derived from a PRG is stored as a seed
//! (DESIGN.md section 5), so the stream must be fast and seekable.
//!
//! Two constructions, both seekable to any word offset:
//!
//! * [`PrgKind::Aes128Ctr`]: AES-128 in CTR mode (128-bit big-endian counter), key =
//!   seed bytes 0..16, initial counter block = seed bytes 16..32; the keystream of
//!   RustCrypto's `ctr::Ctr128BE<Aes128>` (checked in the tests), written straight into the
//!   output, 32 blocks per batch, AES-NI through the `aes` crate's runtime detection.
//! * [`PrgKind::Blake3Xof`]: the blake3 extendable output of the keyed hash of the empty
//!   input, key = the seed (SIMD over 16 output blocks with AVX-512).
//!
//! **Which is the default: blake3 XOF, by about 1.1x.** `cargo bench -p
//! shardlm-protocols --bench prg` on the development machine (AMD EPYC, 2 vCPU, AES-NI,
//! AVX-512, no VAES use by `aes` 0.8; one thread, timed by thread CPU time, medians of 7
//! runs of at least 0.25 s each):
//!
//! | shape | AES-128-CTR | blake3 XOF | winner |
//! |---|---|---|---|
//! | `fill_u64s`, 16 MiB calls | 5.93 GB/s | 6.59 GB/s | blake3 1.11x |
//! | `fill` bytes, 16 MiB calls | 5.99 GB/s | 6.66 GB/s | blake3 1.11x |
//! | fresh generator + seek + 4096 words (a material take) | 5.73 GB/s | 6.55 GB/s | blake3 1.14x |
//! | 8192 words at random positions ([`Prg::words_at`], P1's table reads) | 2.28 GB/s | 0.11 GB/s | AES 21x |
//!
//! [`DEFAULT_PRG`] is therefore [`PrgKind::Blake3Xof`] for streams read in order, and
//! streams read at random positions (v3-ot's on-demand table words,
//! [`crate::material::kind::ON_DEMAND_PRG`]) are AES-128-CTR: a word there is half an AES
//! block, and 32 independent blocks pipeline through AES-NI (3.5 ns a word), where a
//! blake3 word is a whole 64-byte compression (73 ns; last row measured 2026-11-30 with
//! `PRG_BENCH_RUNS=3`). (Before AES was written straight
//! into the output, `ctr`'s XOR-into-zeroed-buffer path gave 3.7 GB/s.) On a CPU without
//! AVX-512 blake3 loses its 16-way XOF and AES-NI may win: rerun the bench when
//! deploying elsewhere. The default is recorded in every bundle, and a bundle dealt with
//! another PRG is refused on open.
//!
//! **Domain separation.** Sub-seeds are derived by label and index ([`Seed::derive`]):
//! `blake3::keyed_hash(seed, "shardlm.seed.derive" || len(label) || label || index)`, so
//! every material stream of every party has its own independent generator.

use aes::cipher::{generic_array::GenericArray, BlockEncrypt, KeyInit};
use aes::Aes128;
use rand_core::RngCore;
use std::fmt;

/// The PRG construction the library uses unless told otherwise (the faster one
/// measured, see the module doc).
pub const DEFAULT_PRG: PrgKind = PrgKind::Blake3Xof;

/// A 32-byte PRG seed. Its `Debug` does not print the bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Seed(pub [u8; 32]);

impl fmt::Debug for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Seed(..)")
    }
}

impl Seed {
    /// A fresh seed from a random source.
    pub fn random(rng: &mut impl RngCore) -> Seed {
        let mut s = [0u8; 32];
        rng.fill_bytes(&mut s);
        Seed(s)
    }

    /// A seed from a small integer (tests and examples only: not secret).
    pub fn from_u64(v: u64) -> Seed {
        Seed(*blake3::hash(&v.to_le_bytes()).as_bytes())
    }

    /// An independent sub-seed for `label` and `index` (domain separation).
    pub fn derive(&self, label: &str, index: u64) -> Seed {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(b"shardlm.seed.derive");
        h.update(&(label.len() as u64).to_le_bytes());
        h.update(label.as_bytes());
        h.update(&index.to_le_bytes());
        Seed(*h.finalize().as_bytes())
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Seed> {
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Seed(out))
    }
}

/// A PRG construction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum PrgKind {
    /// AES-128-CTR.
    Aes128Ctr,
    /// blake3 XOF.
    Blake3Xof,
}

enum Core {
    Aes(Box<AesCtr>),
    Blake3(Box<blake3::OutputReader>),
}

/// Blocks encrypted per batch (AES-NI pipelines 8 at a time).
const AES_BATCH: usize = 32;

/// AES-128 in CTR mode with a 128-bit big-endian counter (the same keystream as
/// RustCrypto's `ctr::Ctr128BE<Aes128>`, checked in the tests), writing keystream straight
/// into the output instead of XORing it into a zeroed buffer.
struct AesCtr {
    cipher: Aes128,
    iv: u128,
    /// Index of the next block to generate.
    next: u128,
    /// Keystream bytes of a partly used block.
    left: [u8; 16],
    /// Bytes of `left` already used (16: none left).
    left_pos: usize,
}

type AesBlock = GenericArray<u8, aes::cipher::consts::U16>;

impl AesCtr {
    fn new(key: [u8; 16], iv: [u8; 16]) -> AesCtr {
        AesCtr {
            cipher: Aes128::new(&key.into()),
            iv: u128::from_be_bytes(iv),
            next: 0,
            left: [0; 16],
            left_pos: 16,
        }
    }

    fn blocks(&mut self, out: &mut [AesBlock]) {
        for b in out.iter_mut() {
            *b = self.iv.wrapping_add(self.next).to_be_bytes().into();
            self.next = self.next.wrapping_add(1);
        }
        self.cipher.encrypt_blocks(out);
    }

    /// Words at stream positions `pos` (random access), 32 blocks per AES batch.
    fn words_at(&self, pos: &[u64], out: &mut [u64]) {
        let mut batch = [AesBlock::default(); AES_BATCH];
        for (p, o) in pos.chunks(AES_BATCH).zip(out.chunks_mut(AES_BATCH)) {
            for (b, &w) in batch.iter_mut().zip(p) {
                *b = self.iv.wrapping_add(u128::from(w / 2)).to_be_bytes().into();
            }
            self.cipher.encrypt_blocks(&mut batch[..p.len()]);
            for ((o, b), &w) in o.iter_mut().zip(&batch).zip(p) {
                let mut le = [0u8; 8];
                le.copy_from_slice(&b[(w % 2) as usize * 8..][..8]);
                *o = u64::from_le_bytes(le);
            }
        }
    }

    fn seek(&mut self, byte: u64) {
        self.next = u128::from(byte / 16);
        self.left_pos = 16;
        let r = (byte % 16) as usize;
        if r > 0 {
            let mut b = [AesBlock::default()];
            self.blocks(&mut b);
            self.left.copy_from_slice(&b[0]);
            self.left_pos = r;
        }
    }

    fn fill(&mut self, out: &mut [u8]) {
        let take = (16 - self.left_pos).min(out.len());
        out[..take].copy_from_slice(&self.left[self.left_pos..self.left_pos + take]);
        self.left_pos += take;
        let mut rest = &mut out[take..];
        let mut batch = [AesBlock::default(); AES_BATCH];
        while rest.len() >= 16 {
            let nb = (rest.len() / 16).min(AES_BATCH);
            self.blocks(&mut batch[..nb]);
            for (dst, b) in rest.chunks_exact_mut(16).zip(&batch[..nb]) {
                dst.copy_from_slice(b);
            }
            rest = &mut rest[nb * 16..];
        }
        if !rest.is_empty() {
            let mut b = [AesBlock::default()];
            self.blocks(&mut b);
            self.left.copy_from_slice(&b[0]);
            let n = rest.len();
            rest.copy_from_slice(&self.left[..n]);
            self.left_pos = n;
        }
    }

    fn fill_u64s(&mut self, out: &mut [u64]) {
        let mut i = 0;
        // Finish a partly used block word by word (only at a word boundary here).
        while self.left_pos < 16 && i < out.len() {
            let mut w = [0u8; 8];
            self.fill(&mut w);
            out[i] = u64::from_le_bytes(w);
            i += 1;
        }
        let mut batch = [AesBlock::default(); AES_BATCH];
        while i < out.len() {
            let words = (out.len() - i).min(2 * AES_BATCH);
            let nb = words.div_ceil(2);
            self.blocks(&mut batch[..nb]);
            for (j, o) in out[i..i + words].iter_mut().enumerate() {
                let b = &batch[j / 2];
                let h = (j % 2) * 8;
                *o = u64::from_le_bytes([
                    b[h],
                    b[h + 1],
                    b[h + 2],
                    b[h + 3],
                    b[h + 4],
                    b[h + 5],
                    b[h + 6],
                    b[h + 7],
                ]);
            }
            if words % 2 == 1 {
                self.left.copy_from_slice(&batch[nb - 1]);
                self.left_pos = 8;
            }
            i += words;
        }
    }
}

/// A seeded, seekable stream of pseudorandom bytes and ring elements.
pub struct Prg {
    core: Core,
}

impl fmt::Debug for Prg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.core {
            Core::Aes(_) => PrgKind::Aes128Ctr,
            Core::Blake3(_) => PrgKind::Blake3Xof,
        };
        write!(f, "Prg({kind:?})")
    }
}

impl Prg {
    /// The default construction ([`DEFAULT_PRG`]) from `seed`.
    pub fn new(seed: &Seed) -> Prg {
        Prg::with_kind(seed, DEFAULT_PRG)
    }

    /// A chosen construction from `seed`.
    pub fn with_kind(seed: &Seed, kind: PrgKind) -> Prg {
        let core = match kind {
            PrgKind::Aes128Ctr => {
                let (key, iv) = seed.0.split_at(16);
                let mut k = [0u8; 16];
                let mut v = [0u8; 16];
                k.copy_from_slice(key);
                v.copy_from_slice(iv);
                Core::Aes(Box::new(AesCtr::new(k, v)))
            }
            PrgKind::Blake3Xof => Core::Blake3(Box::new(blake3::Hasher::new_keyed(&seed.0).finalize_xof())),
        };
        Prg { core }
    }

    /// Construction `kind` from `seed`, positioned at ring element `word_offset` of the
    /// stream.
    pub fn at(seed: &Seed, kind: PrgKind, word_offset: u64) -> Prg {
        let mut p = Prg::with_kind(seed, kind);
        p.seek_words(word_offset);
        p
    }

    /// Moves to ring element `word_offset` (byte `8 * word_offset`) of the stream.
    pub fn seek_words(&mut self, word_offset: u64) {
        let byte = word_offset.saturating_mul(8);
        match &mut self.core {
            Core::Aes(c) => c.seek(byte),
            Core::Blake3(r) => r.set_position(byte),
        }
    }

    /// Fills `out` with pseudorandom bytes.
    pub fn fill(&mut self, out: &mut [u8]) {
        match &mut self.core {
            Core::Aes(c) => c.fill(out),
            Core::Blake3(r) => r.fill(out),
        }
    }

    /// Fills `out` with pseudorandom ring elements (little-endian words of the stream).
    pub fn fill_u64s(&mut self, out: &mut [u64]) {
        if let Core::Aes(c) = &mut self.core {
            return c.fill_u64s(out);
        }
        // Keystream bytes straight into the words, then read them as little-endian (a
        // no-op on little-endian machines), so the stream is the same everywhere.
        self.fill(bytemuck::cast_slice_mut(out));
        for w in out.iter_mut() {
            *w = u64::from_le(*w);
        }
    }

    /// Ring elements at word positions `pos` of the stream, in any order (random
    /// access: AES-CTR encrypts the blocks in batches, blake3 seeks once per word). The
    /// stream position afterwards is unspecified: seek before reading on.
    pub fn words_at(&mut self, pos: &[u64], out: &mut [u64]) {
        if let Core::Aes(c) = &self.core {
            return c.words_at(pos, out);
        }
        for (o, &p) in out.iter_mut().zip(pos) {
            self.seek_words(p);
            let mut w = [0u64];
            self.fill_u64s(&mut w);
            *o = w[0];
        }
    }

    /// The next `n` ring elements.
    pub fn u64s(&mut self, n: usize) -> Vec<u64> {
        let mut v = vec![0u64; n];
        self.fill_u64s(&mut v);
        v
    }
}

impl RngCore for Prg {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.fill(dest);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill(dest);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FIPS-197 appendix C.1: AES-128(000102..0f, 00112233..ff) = 69c4e0d8...c55a. In CTR
    /// mode with that plaintext as the initial counter block, it is the first keystream
    /// block.
    #[test]
    fn aes_ctr_matches_fips197_vector() {
        let mut seed = [0u8; 32];
        for i in 0..16 {
            seed[i] = i as u8;
            seed[16 + i] = (i as u8) * 0x11;
        }
        let mut p = Prg::with_kind(&Seed(seed), PrgKind::Aes128Ctr);
        let mut out = [0u8; 16];
        p.fill(&mut out);
        let expect =
            [0x69, 0xc4, 0xe0, 0xd8, 0x6a, 0x7b, 0x04, 0x30, 0xd8, 0xcd, 0xb7, 0x80, 0x70, 0xb4, 0xc5, 0x5a];
        assert_eq!(out, expect);
    }

    /// Our CTR matches RustCrypto's `ctr::Ctr128BE<Aes128>` over odd splits, seeks and
    /// a counter that wraps.
    #[test]
    fn aes_ctr_matches_rustcrypto_ctr() {
        use ctr::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
        let mut seed = Seed::from_u64(9);
        seed.0[16..].copy_from_slice(&[0xff; 16]); // counter wraps after one block
        for start in [0u64, 5, 16, 17, 1000] {
            let mut reference = ctr::Ctr128BE::<Aes128>::new(seed.0[..16].into(), seed.0[16..].into());
            reference.seek(start);
            let mut want = vec![0u8; 3000];
            reference.apply_keystream(&mut want);
            let mut p = Prg::with_kind(&seed, PrgKind::Aes128Ctr);
            match &mut p.core {
                Core::Aes(c) => c.seek(start),
                Core::Blake3(_) => unreachable!(),
            }
            let mut got = vec![0u8; 3000];
            let mut at = 0;
            for len in [1usize, 15, 16, 33, 7, 600, 2000, 328] {
                p.fill(&mut got[at..at + len]);
                at += len;
            }
            assert_eq!(got, want, "start {start}");
        }
        // Words after an odd number of words and after a byte-level read.
        let all = Prg::with_kind(&seed, PrgKind::Aes128Ctr).u64s(300);
        let mut p = Prg::with_kind(&seed, PrgKind::Aes128Ctr);
        let mut got = p.u64s(3);
        got.extend(p.u64s(1));
        got.extend(p.u64s(131));
        got.extend(p.u64s(165));
        assert_eq!(got, all);
    }

    #[test]
    fn blake3_xof_is_keyed_hash_of_empty() {
        let seed = Seed::from_u64(7);
        let mut p = Prg::with_kind(&seed, PrgKind::Blake3Xof);
        let mut out = [0u8; 32];
        p.fill(&mut out);
        assert_eq!(&out, blake3::keyed_hash(&seed.0, b"").as_bytes());
    }

    #[test]
    fn seek_matches_sequential_for_both_kinds() {
        for kind in [PrgKind::Aes128Ctr, PrgKind::Blake3Xof] {
            let seed = Seed::from_u64(1);
            let all = Prg::with_kind(&seed, kind).u64s(1000);
            for off in [0usize, 1, 3, 64, 513, 999] {
                let mut p = Prg::with_kind(&seed, kind);
                p.seek_words(off as u64);
                assert_eq!(p.u64s(1000 - off), all[off..], "{kind:?} at {off}");
            }
        }
    }

    #[test]
    fn random_access_words_match_the_stream_for_both_kinds() {
        for kind in [PrgKind::Aes128Ctr, PrgKind::Blake3Xof] {
            let seed = Seed::from_u64(5);
            let all = Prg::with_kind(&seed, kind).u64s(500);
            // More positions than one AES batch, odd and even, repeated, out of order.
            let pos: Vec<u64> = (0..100u64).map(|i| (i * 37 + 11) % 500).chain([0, 499, 1, 1, 498]).collect();
            let mut got = vec![0u64; pos.len()];
            let mut p = Prg::with_kind(&seed, kind);
            p.words_at(&pos, &mut got);
            let want: Vec<u64> = pos.iter().map(|&i| all[i as usize]).collect();
            assert_eq!(got, want, "{kind:?}");
        }
    }

    #[test]
    fn derive_separates_labels_and_indices() {
        let s = Seed::from_u64(3);
        assert_ne!(s.derive("a", 0), s.derive("a", 1));
        assert_ne!(s.derive("a", 0), s.derive("b", 0));
        assert_ne!(s.derive("ab", 0), s.derive("a", 0));
        assert_eq!(Seed::from_hex(&s.to_hex()), Some(s));
        assert_eq!(Seed::from_hex("zz"), None);
    }
}
