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
//! **Square, then scale the rows** ([`norm_square_start`], RMSNorm). A norm triple
//! `(a, a^2)` + `(r_row, a, r_row a)`: open `d = x - a` for `x^2 = a^2 + 2 d a + d^2`, and
//! later only `d_r = y_r - r_r` for `y_r x_rj` (the `x` side was opened already):
//! `8 rows cols + 8 rows` bytes each direction for both products instead of
//! `16 rows cols + 8 rows`.
//!
//! **Bit times three values** ([`bit_product3_start`]). For a XOR-shared bit `s` and
//! arithmetic `x`, `y`, `w`: masks `a`, `b`, `c`, a daBit `r` and all their products
//! ([`crate::material::kinds::bit_product3_triples`]). Open `d = x - a`, `e = y - b`,
//! `f = w - c` and `eps = s XOR r`; then `x y w = def + de c + df b + ef a + d bc + e ac
//! + f ab + abc`, the same with every mask term times `r` gives `r x y w`, and
//! `s x y w = eps (x y w - r x y w) + (1 - eps) r x y w`, local. Cost: `24 n + n/8`
//! bytes each direction, one round, where a bit product and two Beaver products take
//! `40 n + n/8` and two rounds.
//!
//! Results carry the fractional bits of both inputs: follow with [`super::trunc`].

use super::{
    check_len, exchange, shape, BitProduct3Triples, BitTriples, BitVectorTriples, MatrixTriple, MpcError,
    NormTriples, PowerTuples, RowTriples, SquarePairs, Triples,
};
use crate::material::kinds::causal_matrix_triples::visible;
use crate::ring;
use crate::share::{Role, Shares};
use shardlm_transport::{Channel, Lane};

/// State of an elementwise multiplication between its message and the peer's.
pub struct MulState<R: Role> {
    triples: Triples<R>,
    d: Vec<u64>,
    e: Vec<u64>,
}
crate::debug_lengths!(MulState<R> { d, e });

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
pub struct BitMulState<R: Role> {
    triples: BitTriples<R>,
    e: Vec<u64>,
    d: Vec<u64>,
}
crate::debug_lengths!(BitMulState<R> { e, d });

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
pub struct RowMulState<R: Role> {
    triple: RowTriples<R>,
    d: Vec<u64>,
    e: Vec<u64>,
}
crate::debug_lengths!(RowMulState<R> { d, e });

/// Core: starts `y_r * x_rj` for `x` (`rows x cols`, row-major) and `y` (`rows`); our
/// message is `d_r` (`rows` words) then `e_rj`.
pub fn row_mul_start<R: Role>(
    x: &Shares<R>,
    y: &Shares<R>,
    triple: RowTriples<R>,
) -> Result<(RowMulState<R>, Vec<u64>), MpcError> {
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

/// State of a norm square between its message and the peer's.
pub struct NormSquareState<R: Role> {
    triple: NormTriples<R>,
    d: Vec<u64>,
}
crate::debug_lengths!(NormSquareState<R> { d });

/// What a norm square leaves for the row scaling: the opened `x - a` and the rest of
/// the triple. Consumed by [`norm_scale_start`], once.
#[must_use = "scale the rows with norm_scale_start"]
pub struct NormPending<R: Role> {
    triple: NormTriples<R>,
    /// The opened `x - a`.
    d: Vec<u64>,
}
crate::debug_lengths!(NormPending<R> { d });

/// Core: starts `x^2` (elementwise) with a norm triple; our message is `x_i - a_i`.
pub fn norm_square_start<R: Role>(
    x: &Shares<R>,
    triple: NormTriples<R>,
) -> Result<(NormSquareState<R>, Vec<u64>), MpcError> {
    let n = triple.rows * triple.cols;
    check_len("norm square", "x", x.len(), n)?;
    check_len("norm square", "triple.a", triple.a.len(), n)?;
    check_len("norm square", "triple.aa", triple.aa.len(), n)?;
    check_len("norm square", "triple.r", triple.r.len(), triple.rows)?;
    check_len("norm square", "triple.c", triple.c.len(), n)?;
    let d = ring::sub(x.as_slice(), triple.a.as_slice());
    Ok((NormSquareState { triple, d: d.clone() }, d))
}

/// Core: finishes the square; returns shares of `x^2` and what the row scaling needs.
pub fn norm_square_finish<R: Role>(
    st: NormSquareState<R>,
    peer: &[u64],
) -> Result<(Shares<R>, NormPending<R>), MpcError> {
    check_len("norm square", "peer message", peer.len(), st.d.len())?;
    let d = ring::add(&st.d, peer);
    let (a, aa) = (st.triple.a.as_slice(), st.triple.aa.as_slice());
    let z = (0..d.len())
        .map(|i| {
            let mut z = aa[i].wrapping_add(d[i].wrapping_mul(a[i]).wrapping_mul(2));
            if R::ID == 0 {
                z = z.wrapping_add(d[i].wrapping_mul(d[i]));
            }
            z
        })
        .collect();
    Ok((Shares::from_raw(z), NormPending { triple: st.triple, d }))
}

/// State of a norm row scaling between its message and the peer's.
pub struct NormScaleState<R: Role> {
    pending: NormPending<R>,
    e: Vec<u64>,
}
crate::debug_lengths!(NormScaleState<R> { e });

/// Core: starts `y_r x_rj` for the `x` squared before; our message is `y_r - r_r`.
pub fn norm_scale_start<R: Role>(
    pending: NormPending<R>,
    y: &Shares<R>,
) -> Result<(NormScaleState<R>, Vec<u64>), MpcError> {
    check_len("norm scale", "y", y.len(), pending.triple.rows)?;
    let e = ring::sub(y.as_slice(), pending.triple.r.as_slice());
    Ok((NormScaleState { pending, e: e.clone() }, e))
}

/// Core: finishes the row scaling; returns shares of `y_r x_rj`.
pub fn norm_scale_finish<R: Role>(st: NormScaleState<R>, peer: &[u64]) -> Result<Shares<R>, MpcError> {
    let t = &st.pending.triple;
    check_len("norm scale", "peer message", peer.len(), t.rows)?;
    let e: Vec<u64> = ring::add(&st.e, peer);
    let (a, r, c, d) = (t.a.as_slice(), t.r.as_slice(), t.c.as_slice(), &st.pending.d);
    let cols = t.cols.max(1);
    // y x = (e + r)(d + a) = c + e a + d r + e d (P0).
    let z = (0..t.rows * t.cols)
        .map(|i| {
            let row = i / cols;
            let mut z = c[i].wrapping_add(e[row].wrapping_mul(a[i])).wrapping_add(d[i].wrapping_mul(r[row]));
            if R::ID == 0 {
                z = z.wrapping_add(e[row].wrapping_mul(d[i]));
            }
            z
        })
        .collect();
    Ok(Shares::from_raw(z))
}

/// State of a powers computation between its message and the peer's.
pub struct PowersState<R: Role> {
    tuples: PowerTuples<R>,
    d: Vec<u64>,
}
crate::debug_lengths!(PowersState<R> { d });

/// Core: starts `x^1 ..= x^D` with power tuples of degree `D`; our message is `d_i`.
pub fn powers_start<R: Role>(
    x: &Shares<R>,
    tuples: PowerTuples<R>,
) -> Result<(PowersState<R>, Vec<u64>), MpcError> {
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
pub struct SquareState<R: Role> {
    pairs: SquarePairs<R>,
    d: Vec<u64>,
}
crate::debug_lengths!(SquareState<R> { d });

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
pub struct MatMulState<R: Role> {
    triple: MatrixTriple<R>,
    d: Vec<u64>,
    e: Vec<u64>,
}
crate::debug_lengths!(MatMulState<R> { d, e });

/// The visible entries of an `m x k` row-major matrix.
fn visible_entries(x: &[u64], m: usize, k: usize, start: usize) -> Vec<u64> {
    x.chunks(k.max(1)).take(m).enumerate().flat_map(|(r, row)| row[..visible(r, k, start)].to_vec()).collect()
}

/// Words of the visible entries of an `m x k` causal matrix.
fn visible_count(m: usize, k: usize, start: usize) -> usize {
    (0..m).map(|r| visible(r, k, start)).sum()
}

/// Core: starts `X (m x k) * Y (k x n)`; our message is `D_i || E_i` (for a causal
/// triple only the visible entries of `D`).
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
    match triple.causal {
        // X is zero where A is: only the visible entries of X - A carry anything.
        Some(start) => {
            if x.as_slice()
                .chunks(k.max(1))
                .enumerate()
                .any(|(r, row)| row[visible(r, k, start)..].iter().any(|&v| v != 0))
            {
                return Err(shape("beaver matmul", "X has nonzero shares beyond the causal mask"));
            }
            msg.extend(visible_entries(&d, m, k, start));
        }
        None => msg.extend_from_slice(&d),
    }
    msg.extend_from_slice(&e);
    Ok((MatMulState { triple, d, e }, msg))
}

/// Core: finishes with the peer's `D || E`; returns shares of `X Y` (`m x n`).
pub fn matmul_finish<R: Role>(st: MatMulState<R>, peer: &[u64]) -> Result<Shares<R>, MpcError> {
    let (m, k, n) = (st.triple.m, st.triple.k, st.triple.n);
    let dl = match st.triple.causal {
        Some(start) => visible_count(m, k, start),
        None => m * k,
    };
    check_len("beaver matmul", "peer message", peer.len(), dl + k * n)?;
    let peer_d = match st.triple.causal {
        Some(start) => {
            let mut full = vec![0u64; m * k];
            let mut at = 0;
            for (r, row) in full.chunks_mut(k.max(1)).take(m).enumerate() {
                let v = visible(r, k, start);
                row[..v].copy_from_slice(&peer[at..at + v]);
                at += v;
            }
            full
        }
        None => peer[..m * k].to_vec(),
    };
    let d = ring::add(&st.d, &peer_d);
    let e = ring::add(&st.e, &peer[dl..]);
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

/// State of a bit-vector product between its message and the peer's.
pub struct BitVecMulState<R: Role> {
    triples: BitVectorTriples<R>,
    eps: Vec<u64>,
    d: Vec<u64>,
    e: Vec<u64>,
}
crate::debug_lengths!(BitVecMulState<R> { eps, d, e });

/// XOR-shared bits (0 or 1), `weights.len()` per element (element-major), the public
/// weight of each bit position, and a public constant: the weighted sum is
/// `constant + sum_j weights[j] bit_j` (the constant costs no material: it multiplies
/// a product the triple gives anyway).
#[derive(Clone, Debug, Default)]
pub struct WeightedBits {
    /// The bits, element-major.
    pub bits: Vec<u64>,
    /// One public weight per bit position.
    pub weights: Vec<u64>,
    /// Public constant added to the weighted sum.
    pub constant: u64,
}

/// Core: starts `(c + sum_j w_j s_ij) x_i y_i + (c' + sum_j w'_j t_ij) y_i` for
/// XOR-shared bits `s` (`xy`) and `t` (`y_only`), public weights and constants, and
/// arithmetic shares `x`, `y`
/// ([`crate::material::kinds::bit_vector_triples`]). Our message is `d_i = x_i - a_i`,
/// `e_i = y_i - b_i` (`2 n` words), then the packed `s_ij XOR r_ij` and `t_ij XOR q_ij`.
pub fn bit_vector_mul_start<R: Role>(
    xy: &WeightedBits,
    y_only: &WeightedBits,
    x: &Shares<R>,
    y: &Shares<R>,
    triples: BitVectorTriples<R>,
) -> Result<(BitVecMulState<R>, Vec<u64>), MpcError> {
    const OP: &str = "bit-vector mul";
    let n = x.len();
    let (nb, ny) = (n * triples.bits, n * triples.y_bits);
    check_len(OP, "y", y.len(), n)?;
    check_len(OP, "x y weights", xy.weights.len(), triples.bits)?;
    check_len(OP, "y weights", y_only.weights.len(), triples.y_bits)?;
    check_len(OP, "x y bits", xy.bits.len(), nb)?;
    check_len(OP, "y bits", y_only.bits.len(), ny)?;
    for (what, len) in [("a", triples.a.len()), ("b", triples.b.len()), ("c", triples.c.len())] {
        check_len(OP, what, len, n)?;
    }
    for (what, len) in [
        ("s", triples.s.len()),
        ("r", triples.r.len()),
        ("ra", triples.ra.len()),
        ("rb", triples.rb.len()),
        ("rab", triples.rab.len()),
    ] {
        check_len(OP, what, len, nb)?;
    }
    for (what, len) in [("sy", triples.sy.len()), ("q", triples.q.len()), ("qb", triples.qb.len())] {
        check_len(OP, what, len, ny)?;
    }
    let eps: Vec<u64> = (xy.bits.iter().zip(&triples.s))
        .chain(y_only.bits.iter().zip(&triples.sy))
        .map(|(b, r)| (b ^ r) & 1)
        .collect();
    let d = ring::sub(x.as_slice(), triples.a.as_slice());
    let e = ring::sub(y.as_slice(), triples.b.as_slice());
    let mut msg = d.clone();
    msg.extend_from_slice(&e);
    msg.extend(ring::pack_bits(&eps, 1));
    Ok((BitVecMulState { triples, eps, d, e }, msg))
}

/// Words of one party's bit-vector message for `n` elements of `bits` bits times `x y`
/// and `y_bits` times `y`.
pub fn bit_vector_mul_words(n: usize, bits: usize, y_bits: usize) -> usize {
    2 * n + ring::packed_words(n * (bits + y_bits), 1)
}

/// `sigma_j = (1 - 2 eps_j) w_j` for the opened bit `eps_j` (low bit of `eps`), adding
/// `w_j` to `on` where `eps_j = 1` (the `sum_j w_j eps_j` term).
fn signed_weight(w: u64, eps: u64, on: &mut u64) -> u64 {
    if eps & 1 == 1 {
        *on = on.wrapping_add(w);
        w.wrapping_neg()
    } else {
        w
    }
}

/// Core: finishes with the peer's message; returns shares of
/// `(xy_constant + sum_j xy_weights[j] s_ij) x_i y_i + (y_constant + sum_j y_weights[j] t_ij) y_i`.
pub fn bit_vector_mul_finish<R: Role>(
    st: BitVecMulState<R>,
    peer: &[u64],
    (xy_weights, xy_constant): (&[u64], u64),
    (y_weights, y_constant): (&[u64], u64),
) -> Result<Shares<R>, MpcError> {
    const OP: &str = "bit-vector mul";
    let (n, bits, y_bits) = (st.d.len(), st.triples.bits, st.triples.y_bits);
    check_len(OP, "x y weights", xy_weights.len(), bits)?;
    check_len(OP, "y weights", y_weights.len(), y_bits)?;
    check_len(OP, "peer message", peer.len(), bit_vector_mul_words(n, bits, y_bits))?;
    let pe = ring::unpack_bits(&peer[2 * n..], 1, n * (bits + y_bits))
        .ok_or_else(|| shape(OP, "short message"))?;
    let (nb, t) = (n * bits, &st.triples);
    let (a, b, c) = (t.a.as_slice(), t.b.as_slice(), t.c.as_slice());
    let (r, ra, rb, rab) = (t.r.as_slice(), t.ra.as_slice(), t.rb.as_slice(), t.rab.as_slice());
    let (q, qb) = (t.q.as_slice(), t.qb.as_slice());
    let p0 = R::ID == 0;
    let z = (0..n)
        .map(|i| {
            let d = st.d[i].wrapping_add(peer[i]);
            let e = st.e[i].wrapping_add(peer[n + i]);
            let de = d.wrapping_mul(e);
            // x y = de + d b + e a + ab; r x y = de r + d rb + e ra + rab (P0 adds de).
            let mut xy = d.wrapping_mul(b[i]).wrapping_add(e.wrapping_mul(a[i])).wrapping_add(c[i]);
            if p0 {
                xy = xy.wrapping_add(de);
            }
            // s_j = eps_j + (1 - 2 eps_j) r_j, so sum_j w_j s_j x y is
            // (sum_j w_j eps_j) x y + sum_j sigma_j r_j x y with sigma_j = (1 - 2 eps_j) w_j,
            // and r_j x y = de r_j + d rb_j + e ra_j + rab_j: four sums of `bits` terms.
            let (mut on, mut sr, mut srb, mut sra, mut srab) = (0u64, 0u64, 0u64, 0u64, 0u64);
            for (j, &w) in xy_weights.iter().enumerate() {
                let at = i * bits + j;
                let sigma = signed_weight(w, st.eps[at] ^ pe[at], &mut on);
                sr = sr.wrapping_add(sigma.wrapping_mul(r[at]));
                srb = srb.wrapping_add(sigma.wrapping_mul(rb[at]));
                sra = sra.wrapping_add(sigma.wrapping_mul(ra[at]));
                srab = srab.wrapping_add(sigma.wrapping_mul(rab[at]));
            }
            let rxy = de
                .wrapping_mul(sr)
                .wrapping_add(d.wrapping_mul(srb))
                .wrapping_add(e.wrapping_mul(sra))
                .wrapping_add(srab);
            let acc = xy.wrapping_mul(xy_constant.wrapping_add(on)).wrapping_add(rxy);
            // y = e + b; t_j y = eps_j y + (1 - 2 eps_j) (e q_j + qb_j) (P0 adds e to its
            // share of y).
            let yv = if p0 { b[i].wrapping_add(e) } else { b[i] };
            let (mut on, mut sq, mut sqb) = (0u64, 0u64, 0u64);
            for (j, &w) in y_weights.iter().enumerate() {
                let at = i * y_bits + j;
                let sigma = signed_weight(w, st.eps[nb + at] ^ pe[nb + at], &mut on);
                sq = sq.wrapping_add(sigma.wrapping_mul(q[at]));
                sqb = sqb.wrapping_add(sigma.wrapping_mul(qb[at]));
            }
            acc.wrapping_add(yv.wrapping_mul(y_constant.wrapping_add(on)))
                .wrapping_add(e.wrapping_mul(sq))
                .wrapping_add(sqb)
        })
        .collect();
    Ok(Shares::from_raw(z))
}

/// State of a bit-weighted three-factor product between its message and the peer's.
pub struct BitProduct3State<R: Role> {
    triples: BitProduct3Triples<R>,
    eps: Vec<u64>,
    def: [Vec<u64>; 3],
}
crate::debug_lengths!(BitProduct3State<R> { eps });

/// Core: starts `s_i x_i y_i w_i` for XOR-shared bits `s` (0 or 1) and arithmetic
/// shares `x`, `y`, `w` ([`crate::material::kinds::bit_product3_triples`]). Our
/// message is `x - a`, `y - b`, `w - c` (`3 n` words), then the packed `s XOR r`.
pub fn bit_product3_start<R: Role>(
    s: &[u64],
    xyw: [&Shares<R>; 3],
    triples: BitProduct3Triples<R>,
) -> Result<(BitProduct3State<R>, Vec<u64>), MpcError> {
    const OP: &str = "bit-product3";
    let n = s.len();
    for (what, v) in [("x", xyw[0]), ("y", xyw[1]), ("w", xyw[2])] {
        check_len(OP, what, v.len(), n)?;
    }
    check_len(OP, "daBits", triples.s.len(), n)?;
    for m in triples.masks.iter().chain(&triples.products) {
        check_len(OP, "triples", m.len(), n)?;
    }
    let eps: Vec<u64> = s.iter().zip(&triples.s).map(|(b, r)| (b ^ r) & 1).collect();
    let def = [0, 1, 2].map(|k| ring::sub(xyw[k].as_slice(), triples.masks[k].as_slice()));
    let mut msg = Vec::with_capacity(bit_product3_words(n));
    for v in &def {
        msg.extend_from_slice(v);
    }
    msg.extend(ring::pack_bits(&eps, 1));
    Ok((BitProduct3State { triples, eps, def }, msg))
}

/// Words of one party's bit-weighted three-factor product message for `n` elements.
pub fn bit_product3_words(n: usize) -> usize {
    3 * n + ring::packed_words(n, 1)
}

/// Core: finishes with the peer's message; returns shares of `s x y w`.
pub fn bit_product3_finish<R: Role>(st: BitProduct3State<R>, peer: &[u64]) -> Result<Shares<R>, MpcError> {
    let n = st.eps.len();
    check_len("bit-product3", "peer message", peer.len(), bit_product3_words(n))?;
    let pe = ring::unpack_bits(&peer[3 * n..], 1, n).ok_or_else(|| shape("bit-product3", "short message"))?;
    let [a, b, c] = st.triples.masks.each_ref().map(|v| v.as_slice());
    let [ab, ac, bc, abc, r, ra, rb, rc, rab, rac, rbc, rabc] =
        st.triples.products.each_ref().map(|v| v.as_slice());
    let z = (0..n)
        .map(|i| {
            let [d, e, f] = [0, 1, 2].map(|k| st.def[k][i].wrapping_add(peer[k * n + i]));
            let (de, df, ef) = (d.wrapping_mul(e), d.wrapping_mul(f), e.wrapping_mul(f));
            let def = de.wrapping_mul(f);
            // The expansion of (d + a)(e + b)(f + c) over mask shares `m`.
            let expand = |m: [u64; 7]| {
                de.wrapping_mul(m[0])
                    .wrapping_add(df.wrapping_mul(m[1]))
                    .wrapping_add(ef.wrapping_mul(m[2]))
                    .wrapping_add(d.wrapping_mul(m[3]))
                    .wrapping_add(e.wrapping_mul(m[4]))
                    .wrapping_add(f.wrapping_mul(m[5]))
                    .wrapping_add(m[6])
            };
            let mut xyw = expand([c[i], b[i], a[i], bc[i], ac[i], ab[i], abc[i]]);
            if R::ID == 0 {
                xyw = xyw.wrapping_add(def);
            }
            let rxyw = def
                .wrapping_mul(r[i])
                .wrapping_add(expand([rc[i], rb[i], ra[i], rbc[i], rac[i], rab[i], rabc[i]]));
            // s = eps + (1 - 2 eps) r.
            if (st.eps[i] ^ pe[i]) & 1 == 1 {
                xyw.wrapping_sub(rxyw)
            } else {
                rxyw
            }
        })
        .collect();
    Ok(Shares::from_raw(z))
}
