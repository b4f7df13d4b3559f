//! The dealer's generation of every kind, in one place: given both parties' seeds and the
//! component offsets of a request, the raw components of each party (layout order).
//! Used by the [`super::IdealDealer`] (on demand) and the [`super::BundleWriter`] (to
//! disk), so the two can never disagree.

use super::{layout, seeded, LinearWeights, MaterialError, MaterialRequest};
use crate::prg::Seed;
use crate::ring;
use rayon::prelude::*;

/// Raw components of both parties for `req` at `offsets`: `[p0 parts, p1 parts]`.
pub(crate) fn deal(
    req: &MaterialRequest,
    seeds: [&Seed; 2],
    offsets: &[u64],
    weights: &dyn LinearWeights,
) -> Result<[Vec<Vec<u64>>; 2], MaterialError> {
    let comps = layout(req)?;
    if offsets.len() != comps.len() {
        return Err(MaterialError::Mismatch(format!(
            "{} offsets for {} components",
            offsets.len(),
            comps.len()
        )));
    }
    // Party p's seeded component i.
    let g = |p: usize, i: usize| seeded(seeds[p], &comps[i].name, offsets[i], comps[i].len);
    Ok(match *req {
        MaterialRequest::Triples(_) => {
            let (a, b) = (ring::add(&g(0, 0), &g(1, 0)), ring::add(&g(0, 1), &g(1, 1)));
            let c0 = ring::sub(&ring::mul(&a, &b), &g(1, 2));
            [vec![c0], vec![]]
        }
        MaterialRequest::AndTriples(_) => {
            let a: Vec<u64> = g(0, 0).iter().zip(g(1, 0)).map(|(x, y)| x ^ y).collect();
            let b: Vec<u64> = g(0, 1).iter().zip(g(1, 1)).map(|(x, y)| x ^ y).collect();
            let c0 = a.iter().zip(&b).zip(g(1, 2)).map(|((a, b), c1)| (a & b) ^ c1).collect();
            [vec![c0], vec![]]
        }
        MaterialRequest::SquarePairs(_) => {
            let a = ring::add(&g(0, 0), &g(1, 0));
            let aa0 = a.iter().zip(g(1, 1)).map(|(a, aa1)| a.wrapping_mul(*a).wrapping_sub(aa1)).collect();
            [vec![aa0], vec![]]
        }
        MaterialRequest::CausalMatrixTriple { m, k, n, start } => {
            let (mut a0, mut a1) = (g(0, 1), g(1, 1));
            crate::beaver::zero_hidden(&mut a0, m, k, start);
            crate::beaver::zero_hidden(&mut a1, m, k, start);
            let a = ring::add(&a0, &a1);
            let b = ring::add(&g(0, 2), &g(1, 2));
            let c0 = ring::sub(&ring::gemm(&a, &b, m, k, n), &g(1, 3));
            let shape = vec![m as u64, k as u64, n as u64, start as u64];
            [vec![shape.clone(), c0], vec![shape]]
        }
        MaterialRequest::MatrixTriple { m, k, n } => {
            let a = ring::add(&g(0, 1), &g(1, 1));
            let b = ring::add(&g(0, 2), &g(1, 2));
            let c0 = ring::sub(&ring::gemm(&a, &b, m, k, n), &g(1, 3));
            let shape = vec![m as u64, k as u64, n as u64];
            [vec![shape.clone(), c0], vec![shape]]
        }
        MaterialRequest::DaBits(_) => {
            let r0 = g(0, 0)
                .iter()
                .zip(g(1, 0))
                .zip(g(1, 1))
                .map(|((b0, b1), r1)| ((b0 ^ b1) & 1).wrapping_sub(r1))
                .collect();
            [vec![r0], vec![]]
        }
        MaterialRequest::BitTriples(_) => {
            let r: Vec<u64> = g(0, 0).iter().zip(g(1, 0)).map(|(b0, b1)| (b0 ^ b1) & 1).collect();
            let a = ring::add(&g(0, 2), &g(1, 2));
            let r0 = ring::sub(&r, &g(1, 1));
            let c0 = ring::sub(&ring::mul(&r, &a), &g(1, 3));
            [vec![r0, c0], vec![]]
        }
        MaterialRequest::NormTriples { rows, cols } => {
            let a = ring::add(&g(0, 1), &g(1, 1));
            let aa0 = ring::sub(&ring::mul(&a, &a), &g(1, 2));
            let r = ring::add(&g(0, 3), &g(1, 3));
            let c1 = g(1, 4);
            let c0 =
                (0..rows * cols).map(|i| r[i / cols.max(1)].wrapping_mul(a[i]).wrapping_sub(c1[i])).collect();
            let shape = vec![rows as u64, cols as u64];
            [vec![shape.clone(), aa0, c0], vec![shape]]
        }
        MaterialRequest::RowTriples { rows, cols } => {
            let a = ring::add(&g(0, 1), &g(1, 1));
            let b = ring::add(&g(0, 2), &g(1, 2));
            let c1 = g(1, 3);
            let c0 =
                (0..rows * cols).map(|i| a[i / cols.max(1)].wrapping_mul(b[i]).wrapping_sub(c1[i])).collect();
            let shape = vec![rows as u64, cols as u64];
            [vec![shape.clone(), c0], vec![shape]]
        }
        MaterialRequest::CarryTables { count, chunk } => {
            let (ra, rb, t1) = (g(0, 0), g(1, 1), g(1, 2));
            let words = crate::CarryTables::<crate::share::P0>::table_words(chunk);
            let t0: Vec<u64> = (0..count)
                .into_par_iter()
                .flat_map_iter(|i| {
                    let table = crate::compare::carry_table(chunk, ra[i], rb[i]);
                    table
                        .into_iter()
                        .zip(t1[i * words..(i + 1) * words].to_vec())
                        .map(|(t, m)| t ^ m)
                        .collect::<Vec<_>>()
                })
                .collect();
            [vec![t0], vec![]]
        }
        MaterialRequest::PowerTuples { n, degree } => {
            let a = ring::add(&g(0, 0), &g(1, 0));
            let d = degree as usize - 1;
            let mut pow = vec![0u64; n * d];
            for (i, &ai) in a.iter().enumerate() {
                let mut p = ai;
                for slot in &mut pow[i * d..(i + 1) * d] {
                    p = p.wrapping_mul(ai);
                    *slot = p;
                }
            }
            [vec![ring::sub(&pow, &g(1, 1))], vec![]]
        }
        MaterialRequest::TruncOts { n, bits } => [vec![chosen(&g(0, 0), &g(1, 1), 2, bits, n)], vec![]],
        MaterialRequest::RandomOts { n_choices, bits, count } => {
            [vec![chosen(&g(0, 0), &g(1, 1), n_choices, bits, count)], vec![]]
        }
        MaterialRequest::MaskedLinear { n, d_in, d_out, weight } => {
            let r = g(0, 1);
            let s = weights
                .mask_image(weight, &r, n, d_in, d_out)
                .map_err(|detail| MaterialError::Weights { id: weight, detail })?;
            [vec![vec![n as u64, d_in as u64, d_out as u64, weight as u64], s], vec![]]
        }
    })
}

/// P0's chosen strings: `strings[i * N + (idx[i] mod N)]` reduced to `bits` bits.
fn chosen(idx: &[u64], strings: &[u64], n_choices: usize, bits: u32, count: usize) -> Vec<u64> {
    let mask = ring::low_mask(bits);
    let sel = n_choices as u64 - 1;
    (0..count).into_par_iter().map(|i| strings[i * n_choices + (idx[i] & sel) as usize] & mask).collect()
}

/// P1's raw components without dealing the rest: P1's only raw parts are public shapes.
pub(crate) fn p1_raw_parts(req: &MaterialRequest) -> Vec<Vec<u64>> {
    match *req {
        MaterialRequest::MatrixTriple { m, k, n } => vec![vec![m as u64, k as u64, n as u64]],
        MaterialRequest::CausalMatrixTriple { m, k, n, start } => {
            vec![vec![m as u64, k as u64, n as u64, start as u64]]
        }
        MaterialRequest::RowTriples { rows, cols } | MaterialRequest::NormTriples { rows, cols } => {
            vec![vec![rows as u64, cols as u64]]
        }
        _ => vec![],
    }
}
