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
//! Results carry the fractional bits of both inputs: follow with [`super::trunc`].

use super::{check_len, exchange, shape, MatrixTriple, MpcError, SquarePairs, Triples};
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
