//! The ring `Z_2^64` (plain `u64` with wrapping arithmetic) and fixed-point encoding.
//!
//! `enc(x) = round(x * 2^F) mod 2^64`, two's complement (DESIGN.md section 2). Decoding
//! reads the ring element as a signed `i64` and divides by `2^F`. A product of two
//! encodings carries `F + F_w` fractional bits and must be truncated
//! ([`crate::trunc`]).
//!
//! Also here: exact wrapping ring GEMM (used by the dealer for `S = R * enc(W)^T` and by
//! the share-local steps of matrix Beaver products) and a fixed-width bit packer for
//! the messages that carry fewer than 64 bits per element.

use rayon::prelude::*;

/// Encodes a real number with `frac_bits` fractional bits: round to nearest (ties away
/// from zero), two's complement. Values beyond the `i64` range saturate and NaN encodes
/// as 0: encoding never panics.
pub fn encode(x: f64, frac_bits: u32) -> u64 {
    let scaled = (x * (frac_bits as f64).exp2()).round();
    // `as` from f64 to i64 saturates and maps NaN to 0.
    (scaled as i64) as u64
}

/// [`encode`] for `f32`.
pub fn encode_f32(x: f32, frac_bits: u32) -> u64 {
    encode(x as f64, frac_bits)
}

/// Decodes a ring element as a signed fixed-point number with `frac_bits` fractional bits.
pub fn decode(v: u64, frac_bits: u32) -> f64 {
    (v as i64) as f64 / (frac_bits as f64).exp2()
}

/// Encodes a vector of `f32`.
pub fn encode_vec(xs: &[f32], frac_bits: u32) -> Vec<u64> {
    xs.iter().map(|&x| encode_f32(x, frac_bits)).collect()
}

/// Encodes a vector of `f64`.
pub fn encode_vec_f64(xs: &[f64], frac_bits: u32) -> Vec<u64> {
    xs.iter().map(|&x| encode(x, frac_bits)).collect()
}

/// Decodes a vector.
pub fn decode_vec(vs: &[u64], frac_bits: u32) -> Vec<f64> {
    vs.iter().map(|&v| decode(v, frac_bits)).collect()
}

/// Decodes a vector to `f32`.
pub fn decode_vec_f32(vs: &[u64], frac_bits: u32) -> Vec<f32> {
    vs.iter().map(|&v| decode(v, frac_bits) as f32).collect()
}

/// The most significant bit (the sign bit of the signed reading), as 0 or 1.
#[inline]
pub fn msb(v: u64) -> u64 {
    v >> 63
}

/// Arithmetic (sign-extending) right shift of the signed reading: the plaintext
/// reference for truncation.
#[inline]
pub fn arith_shr(v: u64, shift: u32) -> u64 {
    ((v as i64) >> shift) as u64
}

/// A mask of the low `bits` bits (`bits` in `0..=64`).
#[inline]
pub fn low_mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

/// Elementwise `a += b` (wrapping). Lengths must match (checked by callers).
pub fn add_assign(a: &mut [u64], b: &[u64]) {
    a.iter_mut().zip(b).for_each(|(x, y)| *x = x.wrapping_add(*y));
}

/// Elementwise `a -= b` (wrapping).
pub fn sub_assign(a: &mut [u64], b: &[u64]) {
    a.iter_mut().zip(b).for_each(|(x, y)| *x = x.wrapping_sub(*y));
}

/// Elementwise `a - b` (wrapping).
pub fn sub(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.iter().zip(b).map(|(x, y)| x.wrapping_sub(*y)).collect()
}

/// Elementwise `a + b` (wrapping).
pub fn add(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.iter().zip(b).map(|(x, y)| x.wrapping_add(*y)).collect()
}

/// Elementwise `a * b` (wrapping).
pub fn mul(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.iter().zip(b).map(|(x, y)| x.wrapping_mul(*y)).collect()
}

/// Rows of `C` computed per rayon task in the GEMMs.
const GEMM_ROW_BLOCK: usize = 4;

/// Exact ring GEMM `C = A * B^T mod 2^64`, `A` is `m x k`, `B` is `n x k` (both
/// row-major), `C` is `m x n`. This is the shape of a linear layer with weights stored
/// `d_out x d_in`: both operands are read along contiguous rows. Multi-threaded (rayon).
///
/// # Panics
/// If a slice length does not match its shape: callers check shapes at the boundary.
pub fn gemm_abt(a: &[u64], b: &[u64], m: usize, k: usize, n: usize) -> Vec<u64> {
    assert_eq!(a.len(), m * k, "gemm_abt: A is not m x k");
    assert_eq!(b.len(), n * k, "gemm_abt: B is not n x k");
    let mut c = vec![0u64; m * n];
    if n == 0 {
        return c;
    }
    c.par_chunks_mut(n * GEMM_ROW_BLOCK).enumerate().for_each(|(blk, c_rows)| {
        let row0 = blk * GEMM_ROW_BLOCK;
        let rows = c_rows.len() / n;
        for j in 0..n {
            let bj = &b[j * k..(j + 1) * k];
            for r in 0..rows {
                let ai = &a[(row0 + r) * k..(row0 + r + 1) * k];
                c_rows[r * n + j] = dot(ai, bj);
            }
        }
    });
    c
}

/// Exact ring GEMM `C = A * B mod 2^64`, `A` is `m x k`, `B` is `k x n` (row-major).
///
/// # Panics
/// If a slice length does not match its shape.
pub fn gemm(a: &[u64], b: &[u64], m: usize, k: usize, n: usize) -> Vec<u64> {
    assert_eq!(a.len(), m * k, "gemm: A is not m x k");
    assert_eq!(b.len(), k * n, "gemm: B is not k x n");
    let bt = transpose(b, k, n);
    gemm_abt(a, &bt, m, k, n)
}

/// Transposes a row-major `rows x cols` matrix.
pub fn transpose(a: &[u64], rows: usize, cols: usize) -> Vec<u64> {
    let mut t = vec![0u64; a.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = a[r * cols + c];
        }
    }
    t
}

#[inline]
fn dot(a: &[u64], b: &[u64]) -> u64 {
    // Four independent accumulators let the compiler overlap the multiplies.
    let mut acc = [0u64; 4];
    let chunks = a.len() / 4;
    for i in 0..chunks {
        for l in 0..4 {
            acc[l] = acc[l].wrapping_add(a[4 * i + l].wrapping_mul(b[4 * i + l]));
        }
    }
    let mut s = acc[0].wrapping_add(acc[1]).wrapping_add(acc[2]).wrapping_add(acc[3]);
    for i in chunks * 4..a.len() {
        s = s.wrapping_add(a[i].wrapping_mul(b[i]));
    }
    s
}

/// Packs the low `width` bits of each value into consecutive bits of `u64` words
/// (little-endian bit order). `width` in `1..=64`.
pub fn pack_bits(values: &[u64], width: u32) -> Vec<u64> {
    let width = width.clamp(1, 64) as usize;
    let total = values.len() * width;
    let mask = low_mask(width as u32);
    if 64 % width == 0 {
        // No value straddles two words (1-bit planes, 8- and 16-bit indices): one word
        // per `64 / width` values, built in a register.
        let per = 64 / width;
        return values
            .chunks(per)
            .map(|c| c.iter().enumerate().fold(0u64, |w, (k, &v)| w | (v & mask) << (k * width)))
            .collect();
    }
    let mut out = vec![0u64; total.div_ceil(64)];
    for (i, &v) in values.iter().enumerate() {
        let v = v & mask;
        let bit = i * width;
        let (w, off) = (bit / 64, bit % 64);
        out[w] |= v << off;
        if off + width > 64 {
            out[w + 1] |= v >> (64 - off);
        }
    }
    out
}

/// Inverse of [`pack_bits`]: `count` values of `width` bits. Returns `None` if `words`
/// is too short.
pub fn unpack_bits(words: &[u64], width: u32, count: usize) -> Option<Vec<u64>> {
    unpack_bits_at(words, 0, width, count)
}

/// `count` values of `width` bits starting at bit `bit_offset` of `words` (packed as by
/// [`pack_bits`]). Returns `None` if `words` is too short.
pub fn unpack_bits_at(words: &[u64], bit_offset: usize, width: u32, count: usize) -> Option<Vec<u64>> {
    let width = width.clamp(1, 64) as usize;
    let end = count.checked_mul(width)?.checked_add(bit_offset)?;
    if words.len() < end.div_ceil(64) {
        return None;
    }
    let mask = low_mask(width as u32);
    let mut out = Vec::with_capacity(count);
    if 64 % width == 0 && bit_offset.is_multiple_of(width) {
        // No value straddles two words: whole words, `64 / width` values each.
        let per = 64 / width;
        let (first, skip) = (bit_offset / 64, (bit_offset % 64) / width);
        let mut left = count;
        for (n, &w) in words[first..].iter().enumerate() {
            if left == 0 {
                break;
            }
            let from = if n == 0 { skip } else { 0 };
            let take = (per - from).min(left);
            out.extend((from..from + take).map(|k| (w >> (k * width)) & mask));
            left -= take;
        }
        return Some(out);
    }
    for i in 0..count {
        let bit = bit_offset + i * width;
        let (w, off) = (bit / 64, bit % 64);
        let mut v = words[w] >> off;
        if off + width > 64 {
            v |= words[w + 1] << (64 - off);
        }
        out.push(v & mask);
    }
    Some(out)
}

/// Number of `u64` words [`pack_bits`] produces.
pub fn packed_words(count: usize, width: u32) -> usize {
    (count * width.clamp(1, 64) as usize).div_ceil(64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_rounds_and_decodes() {
        assert_eq!(encode(1.0, 16), 1 << 16);
        assert_eq!(encode(-1.0, 16), (-(1i64 << 16)) as u64);
        assert_eq!(encode(1.5 / 65536.0, 16), 2);
        assert_eq!(encode(f64::NAN, 16), 0);
        assert_eq!(encode(1e300, 16), i64::MAX as u64);
        assert_eq!(decode(encode(-3.25, 16), 16), -3.25);
        assert_eq!(decode_vec(&encode_vec(&[0.5, -0.25], 8), 8), vec![0.5, -0.25]);
    }

    #[test]
    fn gemm_matches_naive() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<u64> = (0..m * k).map(|i| (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)).collect();
        let b: Vec<u64> = (0..k * n).map(|i| (i as u64 + 3).wrapping_mul(0xc2b2_ae3d_27d4_eb4f)).collect();
        let c = gemm(&a, &b, m, k, n);
        for i in 0..m {
            for j in 0..n {
                let mut s = 0u64;
                for l in 0..k {
                    s = s.wrapping_add(a[i * k + l].wrapping_mul(b[l * n + j]));
                }
                assert_eq!(c[i * n + j], s);
            }
        }
    }

    #[test]
    fn gemm_abt_odd_shapes_match_naive() {
        for (m, k, n) in [(1, 1, 1), (3, 5, 1), (1, 4, 33), (5, 3, 70), (2, 0, 3), (0, 3, 2)] {
            let a: Vec<u64> =
                (0..m * k).map(|i| (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)).collect();
            let b: Vec<u64> =
                (0..n * k).map(|i| (i as u64 + 7).wrapping_mul(0xc2b2_ae3d_27d4_eb4f)).collect();
            let c = gemm_abt(&a, &b, m, k, n);
            assert_eq!(c.len(), m * n);
            for i in 0..m {
                for j in 0..n {
                    assert_eq!(c[i * n + j], dot(&a[i * k..(i + 1) * k], &b[j * k..(j + 1) * k]));
                }
            }
        }
    }

    #[test]
    fn pack_round_trip() {
        for width in [1u32, 3, 16, 17, 63, 64] {
            let vals: Vec<u64> =
                (0..100u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) & low_mask(width)).collect();
            let p = pack_bits(&vals, width);
            assert_eq!(p.len(), packed_words(100, width));
            assert_eq!(unpack_bits(&p, width, 100).unwrap(), vals);
        }
        assert!(unpack_bits(&[0], 16, 5).is_none());
        // Widths dividing 64 take the whole-word path: against a bit-by-bit reference,
        // with high garbage bits dropped and reads starting mid-word.
        for width in [1u32, 2, 4, 8, 16, 32] {
            let vals: Vec<u64> =
                (0..203u64).map(|i| i.wrapping_mul(0xd134_2543_de82_ef95) ^ (i << 40)).collect();
            let p = pack_bits(&vals, width);
            let mut reference = vec![0u64; packed_words(vals.len(), width)];
            for (i, v) in vals.iter().enumerate() {
                for b in 0..width as usize {
                    let at = i * width as usize + b;
                    reference[at / 64] |= ((v >> b) & 1) << (at % 64);
                }
            }
            assert_eq!(p, reference, "width {width}");
            let low: Vec<u64> = vals.iter().map(|v| v & low_mask(width)).collect();
            for start in [0usize, 1, 7, 64, 65, 200] {
                let got = unpack_bits_at(&p, start * width as usize, width, vals.len() - start).unwrap();
                assert_eq!(got, low[start..], "width {width}, from element {start}");
            }
            assert!(unpack_bits(&p, width, vals.len() + 64).is_none());
        }
        let vals: Vec<u64> = (0..50u64).map(|i| i * 977 % 8192).collect();
        let p = pack_bits(&vals, 13);
        for start in [0usize, 1, 4, 5, 31] {
            assert_eq!(unpack_bits_at(&p, start * 13, 13, 50 - start).unwrap(), vals[start..]);
        }
    }
}
