//! Client-assisted linear layer (v2, v3; DESIGN.md section 3).
//!
//! For a public weight `W` (`d_out x d_in`, ring-encoded with `F_w` fractional bits) and
//! dealer material for P0 only (mask `R`, `n x d_in`, and `S = R enc(W)^T`,
//! [`MaskedLinear`]):
//! 1. P0 (client) sends `Y = enc(X) + R` on a [`Lane::Masked`] lane: uniform, since `R`
//!    is a fresh one-time mask.
//! 2. P1 (server) returns `Z = Y enc(W)^T mod 2^64` (its GPU or [`crate::ring::gemm_abt`]).
//! 3. P0 computes `Z - S = enc(X) enc(W)^T` exactly (`F + F_w` fractional bits); it
//!    decodes and adds the bias itself.
//!
//! Cost: exactly `8 n (d_in + d_out)` bytes (P0 sends `8 n d_in`, P1 `8 n d_out`), one
//! round. A mask is used once: two uses would leak `X1 - X2`, which is why
//! [`MaskedLinear`] is consumed by value.

use super::{check_len, shape, MaskedLinear, MpcError};
use crate::ring;
use shardlm_transport::{Channel, Lane};

/// P0's state between its request and the server's answer.
#[derive(Debug)]
pub struct ClientState {
    material: MaskedLinear,
}

/// Core, P0: masks `x` (`n x d_in`, ring-encoded); returns the state and `Y = x + R`.
pub fn client_request(x: &[u64], material: MaskedLinear) -> Result<(ClientState, Vec<u64>), MpcError> {
    check_len("masked linear", "input (n x d_in)", x.len(), material.n * material.d_in)?;
    check_len("masked linear", "mask R", material.r.len(), material.n * material.d_in)?;
    check_len("masked linear", "S", material.s.len(), material.n * material.d_out)?;
    let y = ring::add(x, &material.r);
    Ok((ClientState { material }, y))
}

/// Core, P1: `Z = Y W^T` for `W` (`d_out x d_in`, ring-encoded, row-major).
pub fn server_answer(
    y: &[u64],
    w: &[u64],
    n: usize,
    d_in: usize,
    d_out: usize,
) -> Result<Vec<u64>, MpcError> {
    check_len("masked linear", "masked input (n x d_in)", y.len(), n * d_in)?;
    check_len("masked linear", "weight (d_out x d_in)", w.len(), d_out * d_in)?;
    Ok(ring::gemm_abt(y, w, n, d_in, d_out))
}

/// Core, P0: `enc(X) enc(W)^T = Z - S` (`n x d_out`, `F + F_w` fractional bits).
pub fn client_finish(st: ClientState, z: &[u64]) -> Result<Vec<u64>, MpcError> {
    check_len("masked linear", "server answer (n x d_out)", z.len(), st.material.n * st.material.d_out)?;
    Ok(ring::sub(z, &st.material.s))
}

/// Driver, P0: `enc(X) enc(W)^T` for the weight the material was dealt for.
pub fn client<C: Channel + ?Sized>(
    ch: &mut C,
    lane: Lane,
    x: &[u64],
    material: MaskedLinear,
) -> Result<Vec<u64>, MpcError> {
    let out_len = material.n * material.d_out;
    let (st, y) = client_request(x, material)?;
    ch.send_u64s(lane, &y)?;
    let z = ch.recv_u64s(lane, out_len)?;
    client_finish(st, &z)
}

/// Driver, P1: answers one request for weight `w` (`d_out x d_in`) on `n` rows.
pub fn server<C: Channel + ?Sized>(
    ch: &mut C,
    lane: Lane,
    w: &[u64],
    n: usize,
    d_in: usize,
    d_out: usize,
) -> Result<(), MpcError> {
    if !matches!(lane, Lane::Masked(_)) {
        return Err(shape("masked linear", format!("runs on a Masked lane, not {lane:?}")));
    }
    let y = ch.recv_u64s(lane, n * d_in)?;
    let z = server_answer(&y, w, n, d_in, d_out)?;
    ch.send_u64s(lane, &z)?;
    Ok(())
}
