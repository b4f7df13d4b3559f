//! A party's end of a two-party computation on shares: its channel, its material, its
//! private randomness, and the ONE audited function through which every message of a
//! protocol passes ([`Session::transfer`]).
//!
//! The primitives of [`super`] are driven here through their IO-free cores, so that the
//! audit log sees every word a party sends and receives, labelled by what it is
//! ([`Opened`]). Apart from [`Opened::FinalLogits`] every label names a value that is
//! masked by fresh one-time randomness (a Beaver `d`/`e`, a daBit-masked bit, a
//! truncation OT message, the seed of P1's input shares): a test checks that nothing
//! else is ever revealed and that what is received is uniform.
//!
//! Batching: [`Session::mul_many`], [`Session::matmul_many`] and the vector-wide
//! [`Session::trunc`] and [`Session::msb`] put all elements of a step in one message per
//! direction per round.

use super::{beaver, boolean, compare, lut, trunc, MpcError};
use crate::material::MaterialSource;
use crate::material::{
    AndTriplesRequest, BitProduct3TriplesRequest, BitTriplesRequest, BitVectorTriplesRequest,
    CausalMatrixTripleRequest, LookupRequest, MatrixTripleRequest, NormTriplesRequest, PowerTuplesRequest,
    Read, RowTriplesRequest, SquarePairsRequest, TriplesRequest, TruncOtsRequest,
};
use crate::prg::{Prg, Seed};
use crate::ring::packed_words;
use crate::share::{BitShares, Role, Shares, P0, P1};
use shardlm_transport::{Channel, Counters, Lane};

/// What a transferred message is, for the audit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Opened {
    /// Masked `d = x - a`, `e = y - b` of an arithmetic Beaver product (elementwise,
    /// square or matrix).
    MaskedProduct,
    /// Masked `d`, `e` of boolean AND gates (comparison circuits).
    MaskedAnd,
    /// Chunks of a comparison's operands masked by one-time truth-table masks.
    MaskedChunk,
    /// A bit masked by a daBit (bit-to-arithmetic conversion).
    MaskedBit,
    /// A table index masked by a one-time truth table's mask ([`crate::lut`]).
    MaskedIndex,
    /// Faithful-truncation messages (P0: its MSB masked by the OT choice bit; P1: a
    /// correction string masked by the OT string P0 does not hold).
    TruncationOt,
    /// The seed of P1's uniformly random input shares, sent by P0 (the embedding).
    InputSeed,
    /// The final logits, opened to P0 only.
    FinalLogits,
    /// Public shape of the next step (positions, which rows get logits), P0 to P1, so a
    /// server party can follow a session it cannot see. Never a secret.
    PublicShape,
}

impl Opened {
    /// Why it may be revealed, in words.
    pub fn reason(self) -> &'static str {
        match self {
            Opened::MaskedProduct => "masked d/e",
            Opened::MaskedAnd => "masked boolean d/e",
            Opened::MaskedChunk => "one-time-table masked chunk",
            Opened::MaskedBit => "daBit-masked bit",
            Opened::MaskedIndex => "one-time-table masked index",
            Opened::TruncationOt => "truncation OT message",
            Opened::InputSeed => "seed of uniform input shares",
            Opened::FinalLogits => "final logits",
            Opened::PublicShape => "public step shape",
        }
    }
}

/// One audited transfer.
#[derive(Clone)]
pub struct AuditEntry {
    /// What the message is.
    pub what: Opened,
    /// Words sent.
    pub sent: usize,
    /// The words received (kept only when recording is on, else empty) and their count.
    pub received: Vec<u64>,
    /// Number of words received.
    pub received_len: usize,
}
crate::debug_lengths!(AuditEntry { received });

/// Elementwise or matrix product operands for a batch.
#[derive(Debug)]
pub struct MatMul<'a, R: Role> {
    /// `m x k`, row-major.
    pub x: &'a Shares<R>,
    /// `k x n`, row-major.
    pub y: &'a Shares<R>,
    /// Rows of `x`.
    pub m: usize,
    /// Inner dimension.
    pub k: usize,
    /// Columns of `y`.
    pub n: usize,
    /// `Some(start)`: `x` is causal (zero beyond column `start + r` of row `r`), and only
    /// its visible entries are opened.
    pub causal: Option<usize>,
}

/// `x` with `drop` low bits dropped locally ([`compare::reduce_local`]), for a comparison
/// on `bits` bits, which must fit what is left.
fn reduced<R: Role>(x: &Shares<R>, drop: u32, bits: u32) -> Result<Shares<R>, MpcError> {
    if drop + bits > 64 {
        return Err(super::shape("comparison", format!("dropping {drop} bits leaves fewer than {bits}")));
    }
    Ok(compare::reduce_local(x, drop))
}

/// A truncation between its message and the peer's.
enum TruncState {
    P0(trunc::TruncP0State),
    P1(trunc::TruncP1State),
}

/// What a background comparison produced.
#[derive(Debug)]
enum RiderResult<R: Role> {
    Arith(Shares<R>),
    Bits(Vec<u64>),
}

/// A party's session: channel, material, randomness, audit log.
pub struct Session<R: Role, C: Channel, M: MaterialSource<R>> {
    chan: C,
    material: M,
    rng: Prg,
    audit: Vec<AuditEntry>,
    record: bool,
    /// A comparison riding along with the Beaver rounds of other work.
    rider: Option<(compare::Compare<R>, Vec<u64>, usize)>,
    rider_result: Option<RiderResult<R>>,
    _role: std::marker::PhantomData<R>,
}

impl<R: Role, C: Channel, M: MaterialSource<R>> std::fmt::Debug for Session<R, C, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Session<{}>({} transfers)", R::NAME, self.audit.len())
    }
}

impl<R: Role, C: Channel, M: MaterialSource<R>> Session<R, C, M> {
    /// A session over `chan` with `material`. `rng_seed` seeds this party's private
    /// randomness (P0's input-share seeds): in deployment it must
    /// come from fresh OS entropy ([`Seed::random`]); tests fix it.
    pub fn new(chan: C, material: M, rng_seed: Seed) -> Self {
        Session {
            chan,
            material,
            rng: Prg::new(&rng_seed),
            audit: Vec::new(),
            record: false,
            rider: None,
            rider_result: None,
            _role: Default::default(),
        }
    }

    /// Keeps the received words of every transfer in the audit log (tests).
    pub fn record_transfers(&mut self, on: bool) {
        self.record = on;
    }

    /// The audit log.
    pub fn audit(&self) -> &[AuditEntry] {
        &self.audit
    }

    /// Channel counters.
    pub fn counters(&self) -> Counters {
        self.chan.counters()
    }

    /// The material source.
    pub fn material(&mut self) -> &mut M {
        &mut self.material
    }

    /// Returns the channel and material.
    pub fn into_parts(self) -> (C, M) {
        (self.chan, self.material)
    }

    /// THE audited transfer: sends `send` (if not empty) and then receives `recv_len`
    /// words (if not zero) on [`Lane::Openings`], logging what it is. Every message of
    /// every protocol of this session goes through here.
    ///
    /// A background comparison ([`Session::start_background_msb`]) rides along with every
    /// [`Opened::MaskedProduct`] and [`Opened::TruncationOt`] round: its message is
    /// appended to ours and its answer split off, logged as its own entry.
    pub fn transfer(&mut self, what: Opened, send: &[u64], recv_len: usize) -> Result<Vec<u64>, MpcError> {
        // Both kinds of rounds are symmetric (each party sends, then receives the
        // peer's message of a length it knows), so a background comparison's message can
        // be appended to ours and the peer's split off what we receive.
        let rider = match what {
            Opened::MaskedProduct | Opened::TruncationOt => {
                self.rider.as_ref().map(|(_, msg, round)| (msg.clone(), self.rider_label(*round)))
            }
            _ => None,
        };
        let mut out = send.to_vec();
        let rider_len = rider.as_ref().map_or(0, |(m, _)| m.len());
        if let Some((m, _)) = &rider {
            out.extend_from_slice(m);
        }
        if !out.is_empty() {
            self.chan.send_u64s(Lane::Openings, &out)?;
        }
        let total = recv_len + rider_len;
        let mut received = if total > 0 { self.chan.recv_u64s(Lane::Openings, total)? } else { Vec::new() };
        let rider_part = received.split_off(recv_len.min(received.len()));
        self.log(what, send.len(), &received);
        if let Some((_, label)) = rider {
            self.log(label, rider_len, &rider_part);
            self.step_rider(&rider_part)?;
        }
        Ok(received)
    }

    /// One audited round for several cores at once: each part is a core's state, its
    /// message and the length of the peer's message for it; the messages go as one
    /// transfer and `finish` gets each state with its slice of the peer's reply.
    fn round<S, O>(
        &mut self,
        what: Opened,
        parts: Vec<(S, Vec<u64>, usize)>,
        mut finish: impl FnMut(S, &[u64]) -> Result<O, MpcError>,
    ) -> Result<Vec<O>, MpcError> {
        let msg: Vec<u64> = parts.iter().flat_map(|(_, m, _)| m.iter().copied()).collect();
        let peer_len = parts.iter().map(|(_, _, l)| l).sum();
        let peer = self.transfer(what, &msg, peer_len)?;
        let mut at = 0;
        parts
            .into_iter()
            .map(|(st, _, len)| {
                let out = finish(st, &peer[at..at + len]);
                at += len;
                out
            })
            .collect()
    }

    fn log(&mut self, what: Opened, sent: usize, received: &[u64]) {
        self.audit.push(AuditEntry {
            what,
            sent,
            received: if self.record { received.to_vec() } else { Vec::new() },
            received_len: received.len(),
        });
    }

    fn rider_label(&self, _round: usize) -> Opened {
        match &self.rider {
            Some((core, _, _)) if core.converting() => Opened::MaskedBit,
            Some((core, _, _)) if core.table_round() => Opened::MaskedChunk,
            _ => Opened::MaskedAnd,
        }
    }

    fn step_rider(&mut self, peer: &[u64]) -> Result<(), MpcError> {
        if let Some((mut core, _, round)) = self.rider.take() {
            match core.step(peer)? {
                compare::Step::Send(next) => self.rider = Some((core, next, round + 1)),
                compare::Step::Done(s) => self.rider_result = Some(RiderResult::Arith(s)),
                compare::Step::Bits(b) => self.rider_result = Some(RiderResult::Bits(b)),
            }
        }
        Ok(())
    }

    /// Starts a comparison like [`Session::msb_reduced`] that advances one round with each
    /// later Beaver or truncation round of this session (no extra rounds where enough follow); collect
    /// it with [`Session::finish_background_msb`]. One at a time.
    pub fn start_background_msb(&mut self, x: &Shares<R>, drop: u32, bits: u32) -> Result<(), MpcError> {
        self.start_rider(x, drop, bits, false)
    }

    /// Like [`Session::start_background_msb`], finishing at XOR-shared bits; collect
    /// with [`Session::finish_background_msb_bits`].
    pub fn start_background_msb_bits(&mut self, x: &Shares<R>, drop: u32, bits: u32) -> Result<(), MpcError> {
        self.start_rider(x, drop, bits, true)
    }

    fn start_rider(
        &mut self,
        x: &Shares<R>,
        drop: u32,
        bits: u32,
        boolean_out: bool,
    ) -> Result<(), MpcError> {
        if self.rider.is_some() || self.rider_result.is_some() {
            return Err(super::shape("comparison", "a background comparison is already running"));
        }
        let x = reduced(x, drop, bits)?;
        if x.is_empty() {
            self.rider_result = Some(if boolean_out {
                RiderResult::Bits(Vec::new())
            } else {
                RiderResult::Arith(Shares::from_raw(Vec::new()))
            });
            return Ok(());
        }
        let (core, step) = if boolean_out {
            let (t, c) = compare::take_material_bits(&mut self.material, x.len(), bits)?;
            compare::Compare::start_bits(&x, bits, t, c)?
        } else {
            let (t, c, d) = compare::take_material(&mut self.material, x.len(), bits)?;
            compare::Compare::start(&x, bits, t, c, d)?
        };
        match step {
            compare::Step::Send(msg) => self.rider = Some((core, msg, 0)),
            compare::Step::Done(s) => self.rider_result = Some(RiderResult::Arith(s)),
            compare::Step::Bits(b) => self.rider_result = Some(RiderResult::Bits(b)),
        }
        Ok(())
    }

    fn finish_rider(&mut self) -> Result<RiderResult<R>, MpcError> {
        while let Some((_, msg, round)) = &self.rider {
            let (msg, what) = (msg.clone(), self.rider_label(*round));
            let peer = self.transfer(what, &msg, msg.len())?;
            self.step_rider(&peer)?;
        }
        self.rider_result
            .take()
            .ok_or_else(|| super::shape("comparison", "no background comparison was started"))
    }

    /// Runs the background comparison's remaining rounds (if any) and returns its result.
    pub fn finish_background_msb(&mut self) -> Result<Shares<R>, MpcError> {
        match self.finish_rider()? {
            RiderResult::Arith(s) => Ok(s),
            RiderResult::Bits(_) => {
                Err(super::shape("comparison", "the background comparison was started for XOR bits"))
            }
        }
    }

    /// Runs the background comparison's remaining rounds and returns its XOR-shared bits.
    pub fn finish_background_msb_bits(&mut self) -> Result<Vec<u64>, MpcError> {
        match self.finish_rider()? {
            RiderResult::Bits(b) => Ok(b),
            RiderResult::Arith(_) => {
                Err(super::shape("comparison", "the background comparison was started for shares"))
            }
        }
    }

    /// Shares of elementwise products `x * y` for every pair, in one round.
    pub fn mul_many(&mut self, pairs: &[(&Shares<R>, &Shares<R>)]) -> Result<Vec<Shares<R>>, MpcError> {
        let mut parts = Vec::with_capacity(pairs.len());
        for (x, y) in pairs {
            let t = self.material.take(TriplesRequest { n: x.len() })?;
            let (st, m) = beaver::mul_start(x, y, t)?;
            let len = m.len();
            parts.push((st, m, len));
        }
        self.round(Opened::MaskedProduct, parts, beaver::mul_finish)
    }

    /// Shares of `x * y` (elementwise), one round.
    pub fn mul(&mut self, x: &Shares<R>, y: &Shares<R>) -> Result<Shares<R>, MpcError> {
        Ok(self.mul_many(&[(x, y)])?.remove(0))
    }

    /// Shares of `x^2` with a square pair, one round.
    pub fn square(&mut self, x: &Shares<R>) -> Result<Shares<R>, MpcError> {
        let p = self.material.take(SquarePairsRequest { n: x.len() })?;
        let (st, msg) = beaver::square_start(x, p)?;
        let peer = self.transfer(Opened::MaskedProduct, &msg, msg.len())?;
        beaver::square_finish(st, &peer)
    }

    /// Shares of `b * x` for XOR-shared bits `b` (0 or 1 per element) and arithmetic
    /// shares `x`, every pair in one round ([`beaver::bit_mul_start`]).
    pub fn bit_mul_many(&mut self, pairs: &[(&[u64], &Shares<R>)]) -> Result<Vec<Shares<R>>, MpcError> {
        let mut parts = Vec::with_capacity(pairs.len());
        for (b, x) in pairs {
            let t = self.material.take(BitTriplesRequest { n: x.len() })?;
            let (st, m) = beaver::bit_mul_start(b, x, t)?;
            let len = m.len();
            parts.push((st, m, len));
        }
        self.round(Opened::MaskedProduct, parts, beaver::bit_mul_finish)
    }

    /// ANDs of XOR-shared bits (0 or 1 per element, each pair of equal length), every
    /// pair in one round: the bits are packed 64 to a word for the AND triples.
    pub fn and_bits_many(&mut self, pairs: &[(&[u64], &[u64])]) -> Result<Vec<Vec<u64>>, MpcError> {
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        for (x, y) in pairs {
            super::check_len("and", "right operand", y.len(), x.len())?;
            xs.extend_from_slice(x);
            ys.extend_from_slice(y);
        }
        let n = xs.len();
        if n == 0 {
            return Ok(pairs.iter().map(|_| Vec::new()).collect());
        }
        let (xw, yw) = (crate::ring::pack_bits(&xs, 1), crate::ring::pack_bits(&ys, 1));
        let t = self.material.take(AndTriplesRequest { words: xw.len() })?;
        let (st, msg) = super::boolean::and_start(&BitShares::from_raw(xw), &BitShares::from_raw(yw), t)?;
        let peer = self.transfer(Opened::MaskedAnd, &msg, msg.len())?;
        let z = super::boolean::and_finish(st, &peer)?.into_raw();
        let bits = crate::ring::unpack_bits(&z, 1, n).ok_or_else(|| super::shape("and", "short result"))?;
        let mut out = Vec::with_capacity(pairs.len());
        let mut at = 0;
        for (x, _) in pairs {
            out.push(bits[at..at + x.len()].to_vec());
            at += x.len();
        }
        Ok(out)
    }

    /// Shares of `x^2` (`rows x cols`) with a norm triple, one round; the returned
    /// pending half scales the same `x` by a per-row value later with
    /// [`Session::scale_rows`], opening only the row values.
    pub fn square_for_rows(
        &mut self,
        x: &Shares<R>,
        rows: usize,
    ) -> Result<(Shares<R>, beaver::NormPending<R>), MpcError> {
        if rows == 0 || !x.len().is_multiple_of(rows) {
            return Err(super::shape(
                "norm square",
                format!("{} elements do not split into {rows} rows", x.len()),
            ));
        }
        let t = self.material.take(NormTriplesRequest { rows, cols: x.len() / rows })?;
        let (st, msg) = beaver::norm_square_start(x, t)?;
        let peer = self.transfer(Opened::MaskedProduct, &msg, msg.len())?;
        beaver::norm_square_finish(st, &peer)
    }

    /// Shares of `y_r * x_rj` for the `x` of a [`Session::square_for_rows`], one round.
    pub fn scale_rows(
        &mut self,
        pending: beaver::NormPending<R>,
        y: &Shares<R>,
    ) -> Result<Shares<R>, MpcError> {
        let (st, msg) = beaver::norm_scale_start(pending, y)?;
        let peer = self.transfer(Opened::MaskedProduct, &msg, msg.len())?;
        beaver::norm_scale_finish(st, &peer)
    }

    /// Shares of `y_r * x_rj` for `x` (`rows x cols`, row-major) and a per-row `y`, one
    /// round, one opening per row for `y` ([`beaver::row_mul_start`]).
    pub fn mul_rows(&mut self, x: &Shares<R>, y: &Shares<R>) -> Result<Shares<R>, MpcError> {
        let rows = y.len();
        if rows == 0 || !x.len().is_multiple_of(rows) {
            return Err(super::shape(
                "row mul",
                format!("{} elements do not split into {rows} rows", x.len()),
            ));
        }
        let t = self.material.take(RowTriplesRequest { rows, cols: x.len() / rows })?;
        let (st, msg) = beaver::row_mul_start(x, y, t)?;
        let peer = self.transfer(Opened::MaskedProduct, &msg, msg.len())?;
        beaver::row_mul_finish(st, &peer)
    }

    /// Shares of `x^1 ..= x^degree` from one opening ([`beaver::powers_start`]).
    pub fn powers(&mut self, x: &Shares<R>, degree: u32) -> Result<Vec<Shares<R>>, MpcError> {
        let t = self.material.take(PowerTuplesRequest { n: x.len(), degree })?;
        let (st, msg) = beaver::powers_start(x, t)?;
        let peer = self.transfer(Opened::MaskedProduct, &msg, msg.len())?;
        beaver::powers_finish(st, &peer)
    }

    /// Faithful truncations of several vectors by their own shifts, in one round.
    pub fn trunc_many(&mut self, items: Vec<(Shares<R>, u32)>) -> Result<Vec<Shares<R>>, MpcError> {
        if items.iter().all(|(x, _)| x.is_empty()) {
            return Ok(items.into_iter().map(|(x, _)| x).collect());
        }
        let mut ots = Vec::with_capacity(items.len());
        for (x, shift) in &items {
            ots.push(if x.is_empty() {
                None
            } else {
                Some(self.material.take(TruncOtsRequest { n: x.len(), bits: *shift })?)
            });
        }
        // Both parties send first (the messages are independent), then finish.
        let mut parts = Vec::with_capacity(items.len());
        for ((x, shift), ot) in items.into_iter().zip(ots) {
            let Some(ot) = ot else {
                parts.push((None, Vec::new(), 0));
                continue;
            };
            let n = x.len();
            parts.push(if R::ID == 0 {
                let ot = super::RandomOts::<P0>::receiver(ot.n_choices, ot.bits, ot.index, ot.strings);
                let (st, m) = trunc::p0_start(&Shares::<P0>::from_raw(x.into_raw()), shift, ot)?;
                (Some(TruncState::P0(st)), m, packed_words(n, shift))
            } else {
                let ot = super::RandomOts::<P1>::sender(ot.n_choices, ot.bits, ot.strings);
                let (st, m) = trunc::p1_start(&Shares::<P1>::from_raw(x.into_raw()), shift, &ot)?;
                (Some(TruncState::P1(st)), m, packed_words(n, 1))
            });
        }
        self.round(Opened::TruncationOt, parts, |st, peer| match st {
            None => Ok(Shares::from_raw(Vec::new())),
            Some(TruncState::P0(st)) => Ok(Shares::from_raw(trunc::p0_finish(st, peer)?.into_raw())),
            Some(TruncState::P1(st)) => Ok(Shares::from_raw(trunc::p1_finish(st, peer)?.into_raw())),
        })
    }

    /// Matrix products with one matrix triple each, all in one round.
    pub fn matmul_many(&mut self, ops: &[MatMul<'_, R>]) -> Result<Vec<Shares<R>>, MpcError> {
        let mut parts = Vec::with_capacity(ops.len());
        for op in ops {
            let t = match op.causal {
                Some(start) => {
                    self.material.take(CausalMatrixTripleRequest { m: op.m, k: op.k, n: op.n, start })?
                }
                None => self.material.take(MatrixTripleRequest { m: op.m, k: op.k, n: op.n })?,
            };
            let (st, m) = beaver::matmul_start(op.x, op.y, t)?;
            let len = m.len();
            parts.push((st, m, len));
        }
        self.round(Opened::MaskedProduct, parts, beaver::matmul_finish)
    }

    /// Faithful truncation by `shift` ([`trunc`]), one round (both send, neither waits).
    pub fn trunc(&mut self, x: Shares<R>, shift: u32) -> Result<Shares<R>, MpcError> {
        Ok(self.trunc_many(vec![(x, shift)])?.remove(0))
    }

    /// Additive shares of `msb(x mod 2^bits)` ([`compare`]): `1 + ceil(log2(bits-1)) + 1`
    /// rounds.
    pub fn msb(&mut self, x: &Shares<R>, bits: u32) -> Result<Shares<R>, MpcError> {
        if x.is_empty() {
            return Ok(Shares::from_raw(Vec::new()));
        }
        let (t, c, d) = compare::take_material(&mut self.material, x.len(), bits)?;
        let (core, step) = compare::Compare::start(x, bits, t, c, d)?;
        match self.drive_compare(core, step)? {
            RiderResult::Arith(s) => Ok(s),
            RiderResult::Bits(_) => {
                Err(super::shape("comparison", "a converting comparison returned XOR bits"))
            }
        }
    }

    /// XOR shares (0 or 1 per element) of `msb(x mod 2^bits)`: one round fewer than
    /// [`Session::msb`] and no daBits, for a bit that only selects
    /// ([`Session::bit_mul_many`]).
    pub fn msb_bits(&mut self, x: &Shares<R>, bits: u32) -> Result<Vec<u64>, MpcError> {
        if x.is_empty() {
            return Ok(Vec::new());
        }
        let (t, c) = compare::take_material_bits(&mut self.material, x.len(), bits)?;
        let (core, step) = compare::Compare::start_bits(x, bits, t, c)?;
        match self.drive_compare(core, step)? {
            RiderResult::Bits(b) => Ok(b),
            RiderResult::Arith(_) => Err(super::shape("comparison", "a boolean comparison returned shares")),
        }
    }

    /// [`Session::msb_bits`] after dropping `drop` low bits locally (as
    /// [`Session::msb_reduced`]).
    pub fn msb_bits_reduced(&mut self, x: &Shares<R>, drop: u32, bits: u32) -> Result<Vec<u64>, MpcError> {
        self.msb_bits(&reduced(x, drop, bits)?, bits)
    }

    fn drive_compare(
        &mut self,
        mut core: compare::Compare<R>,
        mut step: compare::Step<R>,
    ) -> Result<RiderResult<R>, MpcError> {
        loop {
            match step {
                compare::Step::Send(msg) => {
                    let what = if core.converting() {
                        Opened::MaskedBit
                    } else if core.table_round() {
                        Opened::MaskedChunk
                    } else {
                        Opened::MaskedAnd
                    };
                    let peer = self.transfer(what, &msg, msg.len())?;
                    step = core.step(&peer)?;
                }
                compare::Step::Done(s) => return Ok(RiderResult::Arith(s)),
                compare::Step::Bits(b) => return Ok(RiderResult::Bits(b)),
            }
        }
    }

    /// Additive shares of the sign of `floor(x / 2^drop)` read on `bits` bits: the low
    /// `drop` bits are dropped locally first ([`compare::reduce_local`]), so `bits` must
    /// be at most `64 - drop`. Exact when `2^drop <= |x| < 2^(drop + bits - 1)` or `x < 0`.
    pub fn msb_reduced(&mut self, x: &Shares<R>, drop: u32, bits: u32) -> Result<Shares<R>, MpcError> {
        self.msb(&reduced(x, drop, bits)?, bits)
    }

    /// P0 shares a private vector: it keeps `x - r` and sends P1 a fresh 32-byte seed of
    /// `r`. P1 calls this with `x = None` and `n` its length. 32 bytes, no round.
    pub fn input_from_p0(&mut self, x: Option<&[u64]>, n: usize) -> Result<Shares<R>, MpcError> {
        if R::ID == 0 {
            let x = x.ok_or_else(|| super::shape("input", "P0 must provide its input"))?;
            super::check_len("input", "P0's input", x.len(), n)?;
            let seed = Seed::random(&mut self.rng);
            let words: Vec<u64> =
                seed.0.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect();
            self.transfer(Opened::InputSeed, &words, 0)?;
            let r = Prg::new(&seed).u64s(n);
            Ok(Shares::from_raw(crate::ring::sub(x, &r)))
        } else {
            let words = self.transfer(Opened::InputSeed, &[], 4)?;
            let mut bytes = [0u8; 32];
            for (i, w) in words.iter().enumerate() {
                bytes[8 * i..8 * i + 8].copy_from_slice(&w.to_le_bytes());
            }
            Ok(Shares::from_raw(Prg::new(&Seed(bytes)).u64s(n)))
        }
    }

    /// Opens `x` to P0 only: P1 sends its shares, P0 returns the values; P1 gets `None`.
    pub fn reveal_to_p0(&mut self, x: &Shares<R>) -> Result<Option<Vec<u64>>, MpcError> {
        if R::ID == 0 {
            let peer = self.transfer(Opened::FinalLogits, &[], x.len())?;
            Ok(Some(crate::ring::add(x.as_slice(), &peer)))
        } else {
            self.transfer(Opened::FinalLogits, x.as_slice(), 0)?;
            Ok(None)
        }
    }
}

/// Work of several primitives staged for ONE round ([`Session::run`]): each part's core
/// state, its label for the audit log, our message and the length of the peer's. v3-ot
/// batches a step's table lookups, truncations and products this way.
pub struct Round<R: Role> {
    parts: Vec<(Staged<R>, Opened, Vec<u64>, usize)>,
}

impl<R: Role> Round<R> {
    /// Parts staged so far.
    pub fn len(&self) -> usize {
        self.parts.len()
    }
    /// Whether nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }
}

impl<R: Role> Default for Round<R> {
    fn default() -> Self {
        Round { parts: Vec::new() }
    }
}

impl<R: Role> std::fmt::Debug for Round<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Round({} parts)", self.parts.len())
    }
}

enum Staged<R: Role> {
    Trunc(Option<TruncState>),
    Mul(beaver::MulState<R>),
    Powers(beaver::PowersState<R>),
    BitMul(beaver::BitMulState<R>),
    BitVec(beaver::BitVecMulState<R>, [(Vec<u64>, u64); 2]),
    BitProduct3(beaver::BitProduct3State<R>),
    And(boolean::AndState<R>, Vec<usize>),
    Lookup(lut::LutState<R>),
    MatMul(beaver::MatMulState<R>),
}

/// What a staged part produced.
#[derive(Debug)]
pub enum Done<R: Role> {
    /// Arithmetic shares (truncation, products, matrix product).
    Shares(Shares<R>),
    /// Powers `x^1 ..= x^D`.
    Powers(Vec<Shares<R>>),
    /// XOR-shared bits, one packed plane per staged pair (ANDs).
    Bits(Vec<Vec<u64>>),
    /// Table outputs, one vector per function read (lookups).
    Tables(Vec<Vec<u64>>),
}

impl<R: Role> Done<R> {
    /// The shares, or a shape error if the part produced something else.
    pub fn shares(self) -> Result<Shares<R>, MpcError> {
        match self {
            Done::Shares(s) => Ok(s),
            _ => Err(super::shape("round", "expected shares from this part")),
        }
    }
    /// The powers.
    pub fn powers(self) -> Result<Vec<Shares<R>>, MpcError> {
        match self {
            Done::Powers(p) => Ok(p),
            _ => Err(super::shape("round", "expected powers from this part")),
        }
    }
    /// The AND results (packed planes).
    pub fn bits(self) -> Result<Vec<Vec<u64>>, MpcError> {
        match self {
            Done::Bits(b) => Ok(b),
            _ => Err(super::shape("round", "expected bits from this part")),
        }
    }
    /// The table outputs.
    pub fn tables(self) -> Result<Vec<Vec<u64>>, MpcError> {
        match self {
            Done::Tables(t) => Ok(t),
            _ => Err(super::shape("round", "expected table outputs from this part")),
        }
    }
}

impl<R: Role, C: Channel, M: MaterialSource<R>> Session<R, C, M> {
    fn stage(round: &mut Round<R>, st: Staged<R>, what: Opened, msg: Vec<u64>, peer_len: usize) -> usize {
        round.parts.push((st, what, msg, peer_len));
        round.parts.len() - 1
    }

    /// Stages a faithful truncation of `x` by `shift`.
    pub fn stage_trunc(&mut self, round: &mut Round<R>, x: Shares<R>, shift: u32) -> Result<usize, MpcError> {
        if x.is_empty() {
            return Ok(Self::stage(round, Staged::Trunc(None), Opened::TruncationOt, Vec::new(), 0));
        }
        let n = x.len();
        let ot = self.material.take(TruncOtsRequest { n, bits: shift })?;
        let (st, m, len) = if R::ID == 0 {
            let ot = super::RandomOts::<P0>::receiver(ot.n_choices, ot.bits, ot.index, ot.strings);
            let (st, m) = trunc::p0_start(&Shares::<P0>::from_raw(x.into_raw()), shift, ot)?;
            (TruncState::P0(st), m, packed_words(n, shift))
        } else {
            let ot = super::RandomOts::<P1>::sender(ot.n_choices, ot.bits, ot.strings);
            let (st, m) = trunc::p1_start(&Shares::<P1>::from_raw(x.into_raw()), shift, &ot)?;
            (TruncState::P1(st), m, packed_words(n, 1))
        };
        Ok(Self::stage(round, Staged::Trunc(Some(st)), Opened::TruncationOt, m, len))
    }

    /// Stages an elementwise Beaver product.
    pub fn stage_mul(
        &mut self,
        round: &mut Round<R>,
        x: &Shares<R>,
        y: &Shares<R>,
    ) -> Result<usize, MpcError> {
        let t = self.material.take(TriplesRequest { n: x.len() })?;
        let (st, m) = beaver::mul_start(x, y, t)?;
        let len = m.len();
        Ok(Self::stage(round, Staged::Mul(st), Opened::MaskedProduct, m, len))
    }

    /// Stages the powers `x^1 ..= x^degree` from one power tuple.
    pub fn stage_powers(
        &mut self,
        round: &mut Round<R>,
        x: &Shares<R>,
        degree: u32,
    ) -> Result<usize, MpcError> {
        let t = self.material.take(PowerTuplesRequest { n: x.len(), degree })?;
        let (st, m) = beaver::powers_start(x, t)?;
        let len = m.len();
        Ok(Self::stage(round, Staged::Powers(st), Opened::MaskedProduct, m, len))
    }

    /// Stages `b x` for XOR-shared bits `b` (one per element).
    pub fn stage_bit_mul(
        &mut self,
        round: &mut Round<R>,
        b: &[u64],
        x: &Shares<R>,
    ) -> Result<usize, MpcError> {
        let t = self.material.take(BitTriplesRequest { n: x.len() })?;
        let (st, m) = beaver::bit_mul_start(b, x, t)?;
        let len = m.len();
        Ok(Self::stage(round, Staged::BitMul(st), Opened::MaskedProduct, m, len))
    }

    /// Stages `(c + sum_j w_j s_ij) x_i y_i + (c' + sum_j w'_j t_ij) y_i` for XOR-shared
    /// bits `s` (`xy`) and `t` (`y_only`): `x` and `y` opened once
    /// ([`beaver::bit_vector_mul_start`]).
    pub fn stage_bit_vector_mul(
        &mut self,
        round: &mut Round<R>,
        xy: beaver::WeightedBits,
        y_only: beaver::WeightedBits,
        x: &Shares<R>,
        y: &Shares<R>,
    ) -> Result<usize, MpcError> {
        let (bits, y_bits) = (xy.weights.len() as u32, y_only.weights.len() as u32);
        let t = self.material.take(BitVectorTriplesRequest { n: x.len(), bits, y_bits })?;
        let (st, m) = beaver::bit_vector_mul_start(&xy, &y_only, x, y, t)?;
        let len = m.len();
        let weights = [(xy.weights, xy.constant), (y_only.weights, y_only.constant)];
        Ok(Self::stage(round, Staged::BitVec(st, weights), Opened::MaskedProduct, m, len))
    }

    /// Stages `s_i x_i y_i w_i` for XOR-shared bits `s` (one per element), `x`, `y`, `w`
    /// opened once ([`beaver::bit_product3_start`]).
    pub fn stage_bit_product3(
        &mut self,
        round: &mut Round<R>,
        s: &[u64],
        xyw: [&Shares<R>; 3],
    ) -> Result<usize, MpcError> {
        let t = self.material.take(BitProduct3TriplesRequest { n: s.len() })?;
        let (st, m) = beaver::bit_product3_start(s, xyw, t)?;
        let len = m.len();
        Ok(Self::stage(round, Staged::BitProduct3(st), Opened::MaskedProduct, m, len))
    }

    /// Stages ANDs of XOR-shared bit planes, every pair at once: each operand is a plane
    /// of bits packed 64 to a word ([`crate::ring::pack_bits`] with width 1), both of a
    /// pair the same number of words. The result ([`Done::Bits`]) is one packed plane per
    /// pair; bits past an operand's last element are ANDed too (padding, ignored).
    pub fn stage_and(&mut self, round: &mut Round<R>, pairs: &[(&[u64], &[u64])]) -> Result<usize, MpcError> {
        let words: usize = pairs.iter().map(|(x, _)| x.len()).sum();
        let (mut xw, mut yw, mut lens) = (Vec::with_capacity(words), Vec::with_capacity(words), Vec::new());
        for (x, y) in pairs {
            super::check_len("and", "right operand (words)", y.len(), x.len())?;
            xw.extend_from_slice(x);
            yw.extend_from_slice(y);
            lens.push(x.len());
        }
        let t = self.material.take(AndTriplesRequest { words })?;
        let (st, m) = boolean::and_start(&BitShares::from_raw(xw), &BitShares::from_raw(yw), t)?;
        let len = m.len();
        Ok(Self::stage(round, Staged::And(st, lens), Opened::MaskedAnd, m, len))
    }

    /// Stages lookups of `k`-bit `index` shares ([`lut::reduce`]), reading `reads`.
    pub fn stage_lookup(
        &mut self,
        round: &mut Round<R>,
        index: &[u64],
        k: u32,
        reads: &[Read],
    ) -> Result<usize, MpcError> {
        let t = self.material.take(LookupRequest { count: index.len(), k, reads: reads.to_vec() })?;
        let (st, m) = lut::lut_start(index, t)?;
        let len = lut::lut_words(index.len(), k);
        Ok(Self::stage(round, Staged::Lookup(st), Opened::MaskedIndex, m, len))
    }

    /// Stages a matrix product with one (causal) matrix triple.
    pub fn stage_matmul(&mut self, round: &mut Round<R>, op: &MatMul<'_, R>) -> Result<usize, MpcError> {
        let t = match op.causal {
            Some(start) => {
                self.material.take(CausalMatrixTripleRequest { m: op.m, k: op.k, n: op.n, start })?
            }
            None => self.material.take(MatrixTripleRequest { m: op.m, k: op.k, n: op.n })?,
        };
        let (st, m) = beaver::matmul_start(op.x, op.y, t)?;
        let len = m.len();
        Ok(Self::stage(round, Staged::MatMul(st), Opened::MaskedProduct, m, len))
    }

    /// Runs a staged round: every part's message in ONE transfer each way (each part
    /// logged under its own label), then every part finished, in staging order.
    pub fn run(&mut self, round: Round<R>) -> Result<Vec<Done<R>>, MpcError> {
        if round.parts.is_empty() {
            return Ok(Vec::new());
        }
        let msg: Vec<u64> = round.parts.iter().flat_map(|(_, _, m, _)| m.iter().copied()).collect();
        let peer_len: usize = round.parts.iter().map(|(_, _, _, l)| l).sum();
        if !msg.is_empty() {
            self.chan.send_u64s(Lane::Openings, &msg)?;
        }
        let peer = if peer_len > 0 { self.chan.recv_u64s(Lane::Openings, peer_len)? } else { Vec::new() };
        let mut at = 0;
        let mut out = Vec::with_capacity(round.parts.len());
        for (st, what, m, len) in round.parts {
            let p = peer.get(at..at + len).ok_or_else(|| super::shape("round", "short peer message"))?;
            at += len;
            self.log(what, m.len(), p);
            out.push(match st {
                Staged::Trunc(None) => Done::Shares(Shares::from_raw(Vec::new())),
                Staged::Trunc(Some(TruncState::P0(st))) => {
                    Done::Shares(Shares::from_raw(trunc::p0_finish(st, p)?.into_raw()))
                }
                Staged::Trunc(Some(TruncState::P1(st))) => {
                    Done::Shares(Shares::from_raw(trunc::p1_finish(st, p)?.into_raw()))
                }
                Staged::Mul(st) => Done::Shares(beaver::mul_finish(st, p)?),
                Staged::Powers(st) => Done::Powers(beaver::powers_finish(st, p)?),
                Staged::BitMul(st) => Done::Shares(beaver::bit_mul_finish(st, p)?),
                Staged::BitVec(st, [(w, c), (wy, cy)]) => {
                    Done::Shares(beaver::bit_vector_mul_finish(st, p, (&w, c), (&wy, cy))?)
                }
                Staged::BitProduct3(st) => Done::Shares(beaver::bit_product3_finish(st, p)?),
                Staged::And(st, lens) => {
                    let z = boolean::and_finish(st, p)?.into_raw();
                    let mut at = 0;
                    let mut planes = Vec::with_capacity(lens.len());
                    for l in lens {
                        planes.push(
                            z.get(at..at + l).ok_or_else(|| super::shape("and", "short result"))?.to_vec(),
                        );
                        at += l;
                    }
                    Done::Bits(planes)
                }
                Staged::Lookup(st) => Done::Tables(lut::lut_finish(st, p)?),
                Staged::MatMul(st) => Done::Shares(beaver::matmul_finish(st, p)?),
            });
        }
        Ok(out)
    }
}
