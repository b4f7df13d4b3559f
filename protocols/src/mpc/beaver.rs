//! Beaver products (Beaver, CRYPTO '91) with dealer triples.
//!
//! **Elementwise.** Triple `(a, b, c = ab)`. Each party sends `d_i = x_i - a_i` and
//! `e_i = y_i - b_i` in one message; both learn `d = x - a`, `e = y - b` (uniform:
//! masked by fresh `a`, `b`) and set `z_i = c_i + d b_i + e a_i`, P0 adding `d e`.
//! Cost: `16 n` bytes each direction, one round.
//!
//! **Square.** Pair `(a, a^2)`: open `d = x - a` only, `z_i = (a^2)_i + 2 d a_i`, P0
//! adding `d^2`. Cost: `8 n` bytes each direction, one round.
//!
//! **Matrix.** Triple `(A, B, C = AB)` for `X` (`m x k`) times `Y` (`k x n`): open
//! `D = X - A`, `E = Y - B` once per matrix, then `Z_i = C_i + D B_i + A_i E`, P0 adding
//! `D E`. Cost: `8 (mk + kn)` bytes each direction instead of `16 mkn` with elementwise
//! triples, one round; two local ring GEMMs (three for P0).
//!
//! **Bit times value** ([`bit_mul_start`]). For a XOR-shared bit `b` and an arithmetic
//! share `x`, a bit triple: a daBit `r` (XOR and additive shares) and `(a, c = r a)`.
//! Each party sends `e_i = b_i XOR r_i` (one bit, packed) and `d_i = x_i - a_i`; both
//! learn `e = b XOR r` (uniform: masked by `r`) and `d = x - a` (uniform). With
//! `b = e + (1 - 2e) r`: `b x = e d + (1 - 2e) (d r + c) + e a`, local. Cost: `8 n + n/8`
//! bytes each direction, one round; it replaces a bit-to-arithmetic conversion followed
//! by a Beaver product (`16 n + n/8` bytes, two rounds) wherever a comparison selects.
//!
//! **Powers** ([`powers_start`]). A power tuple `(a, a^2, ..., a^D)`: open `d = x - a`
//! once, then `x^k = sum_j C(k, j) d^(k-j) a^j` for every `k <= D`, local. Cost: `8 n`
//! bytes each direction, one round, for all `D - 1` products that repeated squaring
//! would take `ceil(log2 D)` rounds and about `12 (D - 1) n` bytes for. The powers carry
//! `k` times the fractional bits of `x`: keep `|x|^D 2^(D f) < 2^62` where it matters.
//!
//! **Row scaling** ([`row_mul_start`]). `z_rj = y_r x_rj` (a per-row value times every
//! element of its row): a triple `(a_r, b_rj, c_rj = a_r b_rj)`; open `d_r = y_r - a_r`
//! once per row and `e_rj = x_rj - b_rj`; `z_rj = c_rj + d_r b_rj + e_rj a_r`, P0 adding
//! `d_r e_rj`. Cost: `8 (rows + rows cols)` bytes each direction instead of
//! `16 rows cols` with elementwise triples of the broadcast value.
//!
//! Results carry the fractional bits of both inputs: follow with [`super::trunc`].

use super::{check_len, exchange, shape, BitTriples, MatrixTriple, MpcError, PowerTuples, RowTriples, SquarePairs, Triples};
use crate::ring;
use crate::share::{Role, Shares};
use shardlm_transport::{Channel, Lane};

/// State of an elementwise multiplication between its message and the peer's.
#[derive(Debug)]
pub struct MulState<R: Role> {
    triples: Triples<R>,
    d: Vec<u64>,
    e: Vec<u64>,
}

/// Core: starts `x * y` with `triples`; returns the state and our message `d_i || e_i`.
pub fn mul_start<R: Role>(
    x: &Shares<R>,
    y: &Shares<R>,
    triples: Triples<R>,
) -> Result<(MulState<R>, Vec<u64>), MpcError> {
    let n = x.len();
    check_len("beaver mul", "y", y.len(), n)?;
    check_len("beaver mul", "triples", triples.a.len(), n)?;
    check_len("beaver mul", "triples.b", triples.b.len(), n)?;
    check_len("beaver mul", "triples.c", triples.c.len(), n)?;
    let d = ring::sub(x.as_slice(), triples.a.as_slice());
    let e = ring::sub(y.as_slice(), triples.b.as_slice());
    let mut msg = Vec::with_capacity(2 * n);
    msg.extend_from_slice(&d);
    msg.extend_from_slice(&e);
    Ok((MulState { triples, d, e }, msg))
}

/// Core: finishes with the peer's `d || e`; returns shares of `x * y`.
pub fn mul_finish<R: Role>(st: MulState<R>, peer: &[u64]) -> Result<Shares<R>, MpcError> {
    let n = st.d.len();
    check_len("beaver mul", "peer message", peer.len(), 2 * n)?;
    let (a, b, c) = (st.triples.a.as_slice(), st.triples.b.as_slice(), st.triples.c.as_slice());
    let z = (0..n)
        .map(|i| {
            let d = st.d[i].wrapping_add(peer[i]);
            let e = st.e[i].wrapping_add(peer[n + i]);
            let mut z = c[i].wrapping_add(d.wrapping_mul(b[i])).wrapping_add(e.wrapping_mul(a[i]));
            if R::ID == 0 {
                z = z.wrapping_add(d.wrapping_mul(e));
            }
            z
        })
        .collect();
    Ok(Shares::from_raw(z))
}

/// State of a bit-times-value product between its message and the peer's.
#[derive(Debug)]
pub struct BitMulState<R: Role> {
    triples: BitTriples<R>,
    e: Vec<u64>,
    d: Vec<u64>,
}

/// Core: starts `b * x` for XOR-shared bits `bits` (one per element, 0 or 1) and
/// arithmetic shares `x`; our message is `d_i` (`n` words) then the packed `e_i`.
pub fn bit_mul_start<R: Role>(
    bits: &[u64],
    x: &Shares<R>,
    triples: BitTriples<R>,
) -> Result<(BitMulState<R>, Vec<u64>), MpcError> {
    let n = x.len();
    check_len("bit mul", "bits", bits.len(), n)?;
    check_len("bit mul", "triples", triples.bits.len(), n)?;
    check_len("bit mul", "triples.r", triples.r.len(), n)?;
    check_len("bit mul", "triples.a", triples.a.len(), n)?;
    check_len("bit mul", "triples.c", triples.c.len(), n)?;
    let e: Vec<u64> = bits.iter().zip(&triples.bits).map(|(b, r)| (b ^ r) & 1).collect();
    let d = ring::sub(x.as_slice(), triples.a.as_slice());
    let mut msg = d.clone();
    msg.extend(ring::pack_bits(&e, 1));
    Ok((BitMulState { triples, e, d }, msg))
}

/// Words of one party's bit-mul message for `n` elements.
pub fn bit_mul_words(n: usize) -> usize {
    n + ring::packed_words(n, 1)
}

/// Core: finishes with the peer's message; returns shares of `b * x`.
pub fn bit_mul_finish<R: Role>(st: BitMulState<R>, peer: &[u64]) -> Result<Shares<R>, MpcError> {
    let n = st.d.len();
    check_len("bit mul", "peer message", peer.len(), bit_mul_words(n))?;
    let pe = ring::unpack_bits(&peer[n..], 1, n).ok_or_else(|| shape("bit mul", "short message"))?;
    let (r, a, c) = (st.triples.r.as_slice(), st.triples.a.as_slice(), st.triples.c.as_slice());
    let z = (0..n)
        .map(|i| {
            let e = (st.e[i] ^ pe[i]) & 1;
            let d = st.d[i].wrapping_add(peer[i]);
            // (1 - 2e) (d r_i + c_i) + e a_i, P0 adding e d.
            let mut z = d.wrapping_mul(r[i]).wrapping_add(c[i]);
            if e == 1 {
                z = z.wrapping_neg().wrapping_add(a[i]);
                if R::ID == 0 {
                    z = z.wrapping_add(d);
                }
            }
            z
        })
        .collect();
    Ok(Shares::from_raw(z))
}

/// State of a row-scaling product between its message and the peer's.
#[derive(Debug)]
pub struct RowMulState<R: Role> {
    triple: RowTriples<R>,
    d: Vec<u64>,
    e: Vec<u64>,
}

/// Core: starts `y_r * x_rj` for `x` (`rows x cols`, row-major) and `y` (`rows`); our
/// message is `d_r` (`rows` words) then `e_rj`.
pub fn row_mul_start<R: Role>(x: &Shares<R>, y: &Shares<R>, triple: RowTriples<R>) -> Result<(RowMulState<R>, Vec<u64>), MpcError> {
    let (rows, cols) = (triple.rows, triple.cols);
    check_len("row mul", "x", x.len(), rows * cols)?;
    check_len("row mul", "y", y.len(), rows)?;
    check_len("row mul", "triple.a", triple.a.len(), rows)?;
    check_len("row mul", "triple.b", triple.b.len(), rows * cols)?;
    check_len("row mul", "triple.c", triple.c.len(), rows * cols)?;
    let d = ring::sub(y.as_slice(), triple.a.as_slice());
    let e = ring::sub(x.as_slice(), triple.b.as_slice());
    let mut msg = d.clone();
    msg.extend_from_slice(&e);
    Ok((RowMulState { triple, d, e }, msg))
}

/// Core: finishes with the peer's message; returns shares of `y_r * x_rj`.
pub fn row_mul_finish<R: Role>(st: RowMulState<R>, peer: &[u64]) -> Result<Shares<R>, MpcError> {
    let (rows, cols) = (st.triple.rows, st.triple.cols);
    check_len("row mul", "peer message", peer.len(), rows + rows * cols)?;
    let (a, b, c) = (st.triple.a.as_slice(), st.triple.b.as_slice(), st.triple.c.as_slice());
    let z = (0..rows * cols)
        .map(|i| {
            let r = i / cols.max(1);
            let d = st.d[r].wrapping_add(peer[r]);
            let e = st.e[i].wrapping_add(peer[rows + i]);
            let mut z = c[i].wrapping_add(d.wrapping_mul(b[i])).wrapping_add(e.wrapping_mul(a[r]));
            if R::ID == 0 {
                z = z.wrapping_add(d.wrapping_mul(e));
            }
            z
        })
        .collect();
    Ok(Shares::from_raw(z))
}

/// State of a powers computation between its message and the peer's.
#[derive(Debug)]
pub struct PowersState<R: Role> {
    tuples: PowerTuples<R>,
    d: Vec<u64>,
}

/// Core: starts `x^1 ..= x^D` with power tuples of degree `D`; our message is `d_i`.
pub fn powers_start<R: Role>(x: &Shares<R>, tuples: PowerTuples<R>) -> Result<(PowersState<R>, Vec<u64>), MpcError> {
    let n = x.len();
    check_len("powers", "tuples", tuples.a.len(), n)?;
    if tuples.degree < 2 {
        return Err(shape("powers", format!("degree {} is below 2", tuples.degree)));
    }
    check_len("powers", "tuples.powers", tuples.powers.len(), n * (tuples.degree as usize - 1))?;
    let d = ring::sub(x.as_slice(), tuples.a.as_slice());
    Ok((PowersState { tuples, d: d.clone() }, d))
}

/// Core: finishes with the peer's `d_i`; returns shares of `x^1, ..., x^D` (one
/// vector per power).
pub fn powers_finish<R: Role>(st: PowersState<R>, peer: &[u64]) -> Result<Vec<Shares<R>>, MpcError> {
    let n = st.d.len();
    check_len("powers", "peer message", peer.len(), n)?;
    let deg = st.tuples.degree as usize;
    // Binomial coefficients C(k, j) for k <= deg.
    let mut binom = vec![vec![1u64; deg + 1]; deg + 1];
    for k in 1..=deg {
        for j in 1..k {
            binom[k][j] = binom[k - 1][j - 1].wrapping_add(binom[k - 1][j]);
        }
    }
    let (a, pw) = (st.tuples.a.as_slice(), st.tuples.powers.as_slice());
    let mut out: Vec<Vec<u64>> = vec![Vec::with_capacity(n); deg];
    let mut apow = vec![0u64; deg + 1];
    let mut dpow = vec![1u64; deg + 1];
    for i in 0..n {
        let d = st.d[i].wrapping_add(peer[i]);
        // Our shares of a^j (a^0 = 1 is public: P0 holds it).
        apow[0] = u64::from(R::ID == 0);
        apow[1] = a[i];
        apow[2..=deg].copy_from_slice(&pw[i * (deg - 1)..(i + 1) * (deg - 1)]);
        for j in 1..=deg {
            dpow[j] = dpow[j - 1].wrapping_mul(d);
        }
        for (k, o) in out.iter_mut().enumerate().map(|(k, o)| (k + 1, o)) {
            let mut z = 0u64;
            for j in 0..=k {
                z = z.wrapping_add(binom[k][j].wrapping_mul(dpow[k - j]).wrapping_mul(apow[j]));
            }
            o.push(z);
        }
    }
    Ok(out.into_iter().map(Shares::from_raw).collect())
}

/// Driver: shares of `b * x` for XOR-shared bits `bits` (0 or 1 per element).
pub fn bit_mul<R: Role, C: Channel + ?Sized>(
    ch: &mut C,
    bits: &[u64],
    x: &Shares<R>,
    triples: BitTriples<R>,
) -> Result<Shares<R>, MpcError> {
    let (st, msg) = bit_mul_start(bits, x, triples)?;
    let peer = exchange(ch, Lane::Openings, &msg, msg.len())?;
    bit_mul_finish(st, &peer)
}

/// Driver: shares of `y_r * x_rj` (row scaling).
pub fn row_mul<R: Role, C: Channel + ?Sized>(
    ch: &mut C,
    x: &Shares<R>,
    y: &Shares<R>,
    triple: RowTriples<R>,
) -> Result<Shares<R>, MpcError> {
    let (st, msg) = row_mul_start(x, y, triple)?;
    let peer = exchange(ch, Lane::Openings, &msg, msg.len())?;
    row_mul_finish(st, &peer)
}

/// Driver: shares of `x^1, ..., x^D` from power tuples of degree `D`.
pub fn powers<R: Role, C: Channel + ?Sized>(
    ch: &mut C,
    x: &Shares<R>,
    tuples: PowerTuples<R>,
) -> Result<Vec<Shares<R>>, MpcError> {
    let (st, msg) = powers_start(x, tuples)?;
    let peer = exchange(ch, Lane::Openings, &msg, msg.len())?;
    powers_finish(st, &peer)
}

/// Driver: shares of `x * y` (elementwise, mod `2^64`).
pub fn mul<R: Role, C: Channel + ?Sized>(
    ch: &mut C,
    x: &Shares<R>,
    y: &Shares<R>,
    triples: Triples<R>,
) -> Result<Shares<R>, MpcError> {
    let (st, msg) = mul_start(x, y, triples)?;
    let peer = exchange(ch, Lane::Openings, &msg, msg.len())?;
    mul_finish(st, &peer)
}

/// State of a squaring.
#[derive(Debug)]
pub struct SquareState<R: Role> {
    pairs: SquarePairs<R>,
    d: Vec<u64>,
}

/// Core: starts `x^2`; our message is `d_i = x_i - a_i`.
pub fn square_start<R: Role>(
    x: &Shares<R>,
    pairs: SquarePairs<R>,
) -> Result<(SquareState<R>, Vec<u64>), MpcError> {
    check_len("beaver square", "pairs", pairs.a.len(), x.len())?;
    check_len("beaver square", "pairs.aa", pairs.aa.len(), x.len())?;
    let d = ring::sub(x.as_slice(), pairs.a.as_slice());
    Ok((SquareState { pairs, d: d.clone() }, d))
}

/// Core: finishes a squaring with the peer's `d` shares.
pub fn square_finish<R: Role>(st: SquareState<R>, peer: &[u64]) -> Result<Shares<R>, MpcError> {
    check_len("beaver square", "peer message", peer.len(), st.d.len())?;
    let (a, aa) = (st.pairs.a.as_slice(), st.pairs.aa.as_slice());
    let z = (0..st.d.len())
        .map(|i| {
            let d = st.d[i].wrapping_add(peer[i]);
            let mut z = aa[i].wrapping_add(d.wrapping_mul(a[i]).wrapping_mul(2));
            if R::ID == 0 {
                z = z.wrapping_add(d.wrapping_mul(d));
            }
            z
        })
        .collect();
    Ok(Shares::from_raw(z))
}

/// Driver: shares of `x^2`.
pub fn square<R: Role, C: Channel + ?Sized>(
    ch: &mut C,
    x: &Shares<R>,
    pairs: SquarePairs<R>,
) -> Result<Shares<R>, MpcError> {
    let (st, msg) = square_start(x, pairs)?;
    let peer = exchange(ch, Lane::Openings, &msg, msg.len())?;
    square_finish(st, &peer)
}

/// State of a matrix product.
#[derive(Debug)]
pub struct MatMulState<R: Role> {
    triple: MatrixTriple<R>,
    d: Vec<u64>,
    e: Vec<u64>,
}

/// Core: starts `X (m x k) * Y (k x n)`; our message is `D_i || E_i`.
pub fn matmul_start<R: Role>(
    x: &Shares<R>,
    y: &Shares<R>,
    triple: MatrixTriple<R>,
) -> Result<(MatMulState<R>, Vec<u64>), MpcError> {
    let (m, k, n) = (triple.m, triple.k, triple.n);
    check_len("beaver matmul", "X (m x k)", x.len(), m * k)?;
    check_len("beaver matmul", "Y (k x n)", y.len(), k * n)?;
    if triple.a.len() != m * k || triple.b.len() != k * n || triple.c.len() != m * n {
        return Err(shape("beaver matmul", format!("matrix triple does not have shape {m}x{k}x{n}")));
    }
    let d = ring::sub(x.as_slice(), triple.a.as_slice());
    let e = ring::sub(y.as_slice(), triple.b.as_slice());
    let mut msg = Vec::with_capacity(d.len() + e.len());
    msg.extend_from_slice(&d);
    msg.extend_from_slice(&e);
    Ok((MatMulState { triple, d, e }, msg))
}

/// Core: finishes with the peer's `D || E`; returns shares of `X Y` (`m x n`).
pub fn matmul_finish<R: Role>(st: MatMulState<R>, peer: &[u64]) -> Result<Shares<R>, MpcError> {
    let (m, k, n) = (st.triple.m, st.triple.k, st.triple.n);
    check_len("beaver matmul", "peer message", peer.len(), m * k + k * n)?;
    let d = ring::add(&st.d, &peer[..m * k]);
    let e = ring::add(&st.e, &peer[m * k..]);
    let mut z = st.triple.c.into_raw();
    ring::add_assign(&mut z, &ring::gemm(&d, st.triple.b.as_slice(), m, k, n));
    ring::add_assign(&mut z, &ring::gemm(st.triple.a.as_slice(), &e, m, k, n));
    if R::ID == 0 {
        ring::add_assign(&mut z, &ring::gemm(&d, &e, m, k, n));
    }
    Ok(Shares::from_raw(z))
}

/// Driver: shares of `X Y` with one matrix triple.
pub fn matmul<R: Role, C: Channel + ?Sized>(
    ch: &mut C,
    x: &Shares<R>,
    y: &Shares<R>,
    triple: MatrixTriple<R>,
) -> Result<Shares<R>, MpcError> {
    let (st, msg) = matmul_start(x, y, triple)?;
    let peer = exchange(ch, Lane::Openings, &msg, msg.len())?;
    matmul_finish(st, &peer)
}
