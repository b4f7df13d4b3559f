//! Additive shares over `Z_2^64`, typed by owner (STYLE.md 2).
//!
//! `x = x0 + x1 mod 2^64`. A share is a uniformly random ring element, never a float.
//! [`Shares<P0>`] and [`Shares<P1>`] are different types: a party's code holds only its
//! own `Shares<Me>`, and [`reconstruct`] needs one of each. Boolean (XOR) shares of
//! bit-packed words are [`BitShares<R>`].

use rand_core::RngCore;
use std::fmt;
use std::marker::PhantomData;

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::P0 {}
    impl Sealed for super::P1 {}
}

/// A party of the two-party computation. Sealed: the only roles are [`P0`] and [`P1`].
pub trait Role: sealed::Sealed + Copy + fmt::Debug + Default + Send + Sync + 'static {
    /// 0 for the client party, 1 for the server party.
    const ID: u8;
    /// The other role.
    type Peer: Role;
    /// Short name for messages ("p0" / "p1").
    const NAME: &'static str;
}

/// The client party (owns the prompt).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct P0;
/// The server party (holds the GPU).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct P1;

impl Role for P0 {
    const ID: u8 = 0;
    type Peer = P1;
    const NAME: &'static str = "p0";
}
impl Role for P1 {
    const ID: u8 = 1;
    type Peer = P0;
    const NAME: &'static str = "p1";
}

/// One additive share of one ring element, held by `R`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Share<R: Role>(u64, PhantomData<R>);

impl<R: Role> Share<R> {
    /// Wraps a raw ring element as `R`'s share.
    pub fn from_raw(v: u64) -> Self {
        Share(v, PhantomData)
    }
    /// The raw ring element (for protocol arithmetic).
    pub fn raw(self) -> u64 {
        self.0
    }
}

impl<R: Role> fmt::Debug for Share<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Share<{}>(..)", R::NAME)
    }
}

/// A vector of additive shares held by `R`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Shares<R: Role>(Vec<u64>, PhantomData<R>);

impl<R: Role> fmt::Debug for Shares<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Shares<{}>(len {})", R::NAME, self.0.len())
    }
}

impl<R: Role> Shares<R> {
    /// Wraps raw ring elements as `R`'s shares.
    pub fn from_raw(v: Vec<u64>) -> Self {
        Shares(v, PhantomData)
    }
    /// `R`'s share of a public vector: P0 holds the values, P1 holds zeros.
    pub fn from_public(values: &[u64]) -> Self {
        if R::ID == 0 {
            Shares::from_raw(values.to_vec())
        } else {
            Shares::from_raw(vec![0; values.len()])
        }
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// The raw ring elements.
    pub fn as_slice(&self) -> &[u64] {
        &self.0
    }
    /// The raw ring elements, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u64] {
        &mut self.0
    }
    /// Unwraps into raw ring elements.
    pub fn into_raw(self) -> Vec<u64> {
        self.0
    }
    /// Element `i`.
    pub fn get(&self, i: usize) -> Option<Share<R>> {
        self.0.get(i).map(|&v| Share::from_raw(v))
    }
    /// Local: shares of `x + y`.
    pub fn add(&self, other: &Shares<R>) -> Shares<R> {
        Shares::from_raw(crate::ring::add(&self.0, &other.0))
    }
    /// Local: shares of `x - y`.
    pub fn sub(&self, other: &Shares<R>) -> Shares<R> {
        Shares::from_raw(crate::ring::sub(&self.0, &other.0))
    }
    /// Local: shares of `x + c` for a public `c` (only P0 adds).
    pub fn add_public(&self, c: &[u64]) -> Shares<R> {
        if R::ID == 0 {
            Shares::from_raw(crate::ring::add(&self.0, c))
        } else {
            self.clone()
        }
    }
    /// Local: shares of `c * x` for public `c` (elementwise).
    pub fn mul_public(&self, c: &[u64]) -> Shares<R> {
        Shares::from_raw(crate::ring::mul(&self.0, c))
    }
    /// Local: shares of `s * x` for a public scalar.
    pub fn scale(&self, s: u64) -> Shares<R> {
        Shares::from_raw(self.0.iter().map(|x| x.wrapping_mul(s)).collect())
    }
    /// Local: shares of `-x`.
    pub fn neg(&self) -> Shares<R> {
        Shares::from_raw(self.0.iter().map(|x| x.wrapping_neg()).collect())
    }
}

/// XOR shares of bit-packed words held by `R`: bit `j` of word `i` is one boolean share.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct BitShares<R: Role>(Vec<u64>, PhantomData<R>);

impl<R: Role> fmt::Debug for BitShares<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BitShares<{}>({} words)", R::NAME, self.0.len())
    }
}

impl<R: Role> BitShares<R> {
    /// Wraps raw words.
    pub fn from_raw(v: Vec<u64>) -> Self {
        BitShares(v, PhantomData)
    }
    /// The raw words.
    pub fn as_slice(&self) -> &[u64] {
        &self.0
    }
    /// Unwraps into raw words.
    pub fn into_raw(self) -> Vec<u64> {
        self.0
    }
    /// Number of words.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Local: shares of `x XOR y`.
    pub fn xor(&self, other: &BitShares<R>) -> BitShares<R> {
        BitShares::from_raw(self.0.iter().zip(&other.0).map(|(a, b)| a ^ b).collect())
    }
    /// Local: shares of `x XOR c` for public words `c` (only P0 flips).
    pub fn xor_public(&self, c: &[u64]) -> BitShares<R> {
        if R::ID == 0 {
            BitShares::from_raw(self.0.iter().zip(c).map(|(a, b)| a ^ b).collect())
        } else {
            self.clone()
        }
    }
}

/// The two shares of a pair do not fit together.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cannot reconstruct: p0 holds {p0} elements but p1 holds {p1}")]
pub struct LengthMismatch {
    /// P0's length.
    pub p0: usize,
    /// P1's length.
    pub p1: usize,
}

/// Splits public ring elements into two uniformly random additive shares.
pub fn share(x: &[u64], rng: &mut impl RngCore) -> (Shares<P0>, Shares<P1>) {
    let x1: Vec<u64> = (0..x.len()).map(|_| rng.next_u64()).collect();
    let x0 = crate::ring::sub(x, &x1);
    (Shares::from_raw(x0), Shares::from_raw(x1))
}

/// Splits public words into XOR shares.
pub fn share_bits(x: &[u64], rng: &mut impl RngCore) -> (BitShares<P0>, BitShares<P1>) {
    let x1: Vec<u64> = (0..x.len()).map(|_| rng.next_u64()).collect();
    let x0 = x.iter().zip(&x1).map(|(a, b)| a ^ b).collect();
    (BitShares::from_raw(x0), BitShares::from_raw(x1))
}

/// Reconstructs `x = x0 + x1`: only a pair of shares of both roles can.
pub fn reconstruct(p0: &Shares<P0>, p1: &Shares<P1>) -> Result<Vec<u64>, LengthMismatch> {
    if p0.len() != p1.len() {
        return Err(LengthMismatch { p0: p0.len(), p1: p1.len() });
    }
    Ok(crate::ring::add(p0.as_slice(), p1.as_slice()))
}

/// Reconstructs XOR-shared words.
pub fn reconstruct_bits(p0: &BitShares<P0>, p1: &BitShares<P1>) -> Result<Vec<u64>, LengthMismatch> {
    if p0.len() != p1.len() {
        return Err(LengthMismatch { p0: p0.len(), p1: p1.len() });
    }
    Ok(p0.as_slice().iter().zip(p1.as_slice()).map(|(a, b)| a ^ b).collect())
}
