//! A [`MaterialSource`] that records what a forward pass takes instead of handing out
//! real material: run the pass against it and the recorded [`MaterialRequest`]s are
//! exactly what the dealer must deal, in order (the planner's view; DESIGN.md section 4).
//! The material it returns has the right shapes and is all zeros: never compute with it.

use super::{MaskedLinearSource, MaterialError, MaterialRequest, MaterialSource};
use crate::share::{BitShares, Role, Shares, P0};
use crate::{
    AndTriples, BitTriples, CarryTables, DaBits, MaskedLinear, MatrixTriple, NormTriples, PowerTuples,
    RandomOts, RowTriples, SquarePairs, Triples,
};
use std::marker::PhantomData;

/// Records requests; returns zero material of the requested shapes.
#[derive(Debug, Default)]
pub struct Recorder<R: Role> {
    requests: Vec<MaterialRequest>,
    _role: PhantomData<R>,
}

impl<R: Role> Recorder<R> {
    /// An empty recording.
    pub fn new() -> Self {
        Recorder { requests: Vec::new(), _role: PhantomData }
    }
    /// The requests so far, in order.
    pub fn requests(&self) -> &[MaterialRequest] {
        &self.requests
    }
    /// Takes the recording.
    pub fn into_requests(self) -> Vec<MaterialRequest> {
        self.requests
    }
    fn record(&mut self, req: MaterialRequest) -> Result<(), MaterialError> {
        super::layout(&req)?; // same validation as real material
        self.requests.push(req);
        Ok(())
    }
}

fn zeros<R: Role>(n: usize) -> Shares<R> {
    Shares::from_raw(vec![0; n])
}

fn zero_ots<R: Role>(n_choices: usize, bits: u32, count: usize) -> RandomOts<R> {
    let (index, strings) =
        if R::ID == 0 { (vec![0; count], vec![0; count]) } else { (vec![], vec![0; count * n_choices]) };
    RandomOts { n_choices, bits, count, index, strings, _role: PhantomData }
}

impl<R: Role> MaterialSource<R> for Recorder<R> {
    fn take_triples(&mut self, n: usize) -> Result<Triples<R>, MaterialError> {
        self.record(MaterialRequest::Triples(n))?;
        Ok(Triples { a: zeros(n), b: zeros(n), c: zeros(n) })
    }
    fn take_square_pairs(&mut self, n: usize) -> Result<SquarePairs<R>, MaterialError> {
        self.record(MaterialRequest::SquarePairs(n))?;
        Ok(SquarePairs { a: zeros(n), aa: zeros(n) })
    }
    fn take_matrix_triple(&mut self, m: usize, k: usize, n: usize) -> Result<MatrixTriple<R>, MaterialError> {
        self.record(MaterialRequest::MatrixTriple { m, k, n })?;
        Ok(MatrixTriple { m, k, n, causal: None, a: zeros(m * k), b: zeros(k * n), c: zeros(m * n) })
    }
    fn take_causal_matrix_triple(
        &mut self,
        m: usize,
        k: usize,
        n: usize,
        start: usize,
    ) -> Result<MatrixTriple<R>, MaterialError> {
        self.record(MaterialRequest::CausalMatrixTriple { m, k, n, start })?;
        Ok(MatrixTriple { m, k, n, causal: Some(start), a: zeros(m * k), b: zeros(k * n), c: zeros(m * n) })
    }
    fn take_trunc_ots(&mut self, n: usize, bits: u32) -> Result<RandomOts<R>, MaterialError> {
        self.record(MaterialRequest::TruncOts { n, bits })?;
        Ok(zero_ots(2, bits, n))
    }
    fn take_and_triples(&mut self, words: usize) -> Result<AndTriples<R>, MaterialError> {
        self.record(MaterialRequest::AndTriples(words))?;
        let z = || BitShares::from_raw(vec![0; words]);
        Ok(AndTriples { a: z(), b: z(), c: z() })
    }
    fn take_dabits(&mut self, n: usize) -> Result<DaBits<R>, MaterialError> {
        self.record(MaterialRequest::DaBits(n))?;
        Ok(DaBits { bits: vec![0; n], arith: zeros(n) })
    }
    fn take_bit_triples(&mut self, n: usize) -> Result<BitTriples<R>, MaterialError> {
        self.record(MaterialRequest::BitTriples(n))?;
        Ok(BitTriples { bits: vec![0; n], r: zeros(n), a: zeros(n), c: zeros(n) })
    }
    fn take_norm_triples(&mut self, rows: usize, cols: usize) -> Result<NormTriples<R>, MaterialError> {
        self.record(MaterialRequest::NormTriples { rows, cols })?;
        let n = rows * cols;
        Ok(NormTriples { rows, cols, a: zeros(n), aa: zeros(n), r: zeros(rows), c: zeros(n) })
    }
    fn take_row_triples(&mut self, rows: usize, cols: usize) -> Result<RowTriples<R>, MaterialError> {
        self.record(MaterialRequest::RowTriples { rows, cols })?;
        Ok(RowTriples { rows, cols, a: zeros(rows), b: zeros(rows * cols), c: zeros(rows * cols) })
    }
    fn take_carry_tables(&mut self, count: usize, chunk: u32) -> Result<CarryTables<R>, MaterialError> {
        self.record(MaterialRequest::CarryTables { count, chunk })?;
        let words = CarryTables::<R>::table_words(chunk);
        Ok(CarryTables { chunk, mask: vec![0; count], tables: vec![0; count * words], _role: PhantomData })
    }
    fn take_power_tuples(&mut self, n: usize, degree: u32) -> Result<PowerTuples<R>, MaterialError> {
        self.record(MaterialRequest::PowerTuples { n, degree })?;
        Ok(PowerTuples { degree, a: zeros(n), powers: zeros(n * (degree as usize).saturating_sub(1)) })
    }
    fn take_random_ots(
        &mut self,
        n_choices: usize,
        bits: u32,
        count: usize,
    ) -> Result<RandomOts<R>, MaterialError> {
        self.record(MaterialRequest::RandomOts { n_choices, bits, count })?;
        Ok(zero_ots(n_choices, bits, count))
    }
}

impl MaskedLinearSource for Recorder<P0> {
    fn take_masked_linear(
        &mut self,
        n: usize,
        d_in: usize,
        d_out: usize,
        weight: u32,
    ) -> Result<MaskedLinear, MaterialError> {
        self.record(MaterialRequest::MaskedLinear { n, d_in, d_out, weight })?;
        Ok(MaskedLinear { n, d_in, d_out, weight, r: vec![0; n * d_in], s: vec![0; n * d_out] })
    }
}
