//! v3-ot: the v3-mpc forward pass with its nonlinear layers read from one-time lookup
//! tables ([`shardlm_mpc::tables`], DESIGN.md section 3). Everything else is v3-mpc's:
//! the forward pass ([`shardlm_model::qwen2::forward`] on an [`MpcParty`] built
//! `with_nonlinear(Nonlinear::Tables)`), linear layers, RoPE, `Q K^T` and `E V` with
//! matrix triples, the session, the planner, the material files and the audit log. Only
//! the final logits are opened, to P0.
//!
//! Per operation (rounds at the Qwen2.5-1.5B shape, 98-token prefill):
//!
//! * **RMSNorm** (6): `sum x^2` with a norm triple; `rsqrt(sum / d + eps)` by
//!   [`tables::inverse`] on thirteen levels of 11-bit tables (spacing 3 bits: every
//!   mean square in `[2^-20, 2^17]` is read with 8 or more significant bits); times `x` (the
//!   norm triple's second half) and the public gain; one truncation.
//! * **attention** (15): `Q K^T` per KV head (matrix triples), the scores kept at `2F`
//!   bits; [`tables::softmax_exp`] (the row max by a 7-level table tournament on the
//!   scores reduced to integers, then `exp` from three tables and one bit-weighted
//!   three-factor product); the row sums' reciprocal by [`tables::inverse`] (six 10-bit
//!   levels), `E V` (causal matrix triples) and its truncation riding along with its
//!   first two rounds;
//!   the row scaling, left untruncated for the output projection's truncation.
//! * **SwiGLU** (3): [`tables::silu_times`] on the untruncated gate/up projection, its
//!   output left untruncated for the down projection's truncation.
//!
//! Two fully private variants, one party: a bundle is dealt for one of them (its
//! material kinds differ after the first norm), and the server serves the variant its
//! bundle names.
//!
//! Accuracy and cost are measured in `docs/v3-ot.md`.

use super::{AttentionLayout, MpcParty, MpcPartyError, SharedTensor};
use shardlm_model::Norm;
use shardlm_mpc::material::MaterialSource;
use shardlm_mpc::nonlinear::RSQRT_BITS;
use shardlm_mpc::ring::encode;
use shardlm_mpc::session::Round;
use shardlm_mpc::share::{Role, Shares};
use shardlm_mpc::tables::{self, LevelPlan, EXP_FRAC};
use shardlm_transport::Channel;

/// RMSNorm's mean-square range (`[2^MS_LO, 2^MS_HI]`): beyond it the coarsest level
/// wraps (Qwen2.5-0.5B measures 1.8e-4 to 2e3).
pub const MS_LO: i32 = -20;
/// See [`MS_LO`].
pub const MS_HI: i32 = 17;
/// Fractional bits of the softmax rows' reciprocal, which v3-ot's attention output keeps
/// (untruncated, `F + ATTN_RECIP_FRAC` bits) for the output projection's truncation: that
/// projection's outputs must stay below `2^(62 - 2 F - 20)` = 2^10 (Qwen2.5-0.5B: 14).
pub const ATTN_RECIP_FRAC: u32 = 20;
/// Fractional bits of the norm's public gain.
const GAIN_BITS: u32 = 14;

impl<R: Role, C: Channel, M: MaterialSource<R>> MpcParty<R, C, M> {
    pub(super) fn ot_rms_norm(
        &mut self,
        x: &SharedTensor<R>,
        norm: Norm,
    ) -> Result<SharedTensor<R>, MpcPartyError> {
        let f = self.f();
        let (n, d) = (x.rows, x.cols);
        let (gain, eps) = (self.weights.norm_gain(norm), self.weights.config.rms_norm_eps);
        let (x2, pending) = self.sess.square_for_rows(&x.data, n)?;
        let sums: Vec<u64> =
            x2.as_slice().chunks(d).map(|r| r.iter().fold(0u64, |a, &b| a.wrapping_add(b))).collect();
        // sum + d eps, both with 2F bits: rsqrt((sum + d eps) / d) = rsqrt(ms + eps).
        let sums = tables_add_public(&Shares::from_raw(sums), encode(d as f64 * eps, 2 * f).max(1));
        let units = |e: i32| d as f64 * 2f64.powi(e + 2 * f as i32);
        let finest = (units(MS_LO).log2().floor() as i64 - 8).max(0) as u32;
        let plan = LevelPlan {
            k: 11,
            shifts: LevelPlan::covering(11, finest, 3, units(MS_HI)),
            spacing: 3,
            frac_in: 2 * f,
            div: d as u32,
            root: true,
            frac_out: RSQRT_BITS,
        };
        let y = tables::inverse(&mut self.sess, &sums, &plan)?;
        let g: Vec<u64> = (0..n * d).map(|i| encode(f64::from(gain[i % d]), GAIN_BITS)).collect();
        let yx = self.sess.scale_rows(pending, &y)?;
        let out = self.sess.trunc(yx.mul_public(&g), RSQRT_BITS + GAIN_BITS)?;
        Ok(SharedTensor { rows: n, cols: d, data: out, extra_frac: 0 })
    }

    /// The softmax and `E V` of one attention call, from the scores (`2F` bits) on; the
    /// output is left with [`ATTN_RECIP_FRAC`] bits above `F`.
    pub(super) fn ot_attend(
        &mut self,
        a: &AttentionLayout,
        scores: &[u64],
        vs: &[Shares<R>],
        start_pos: usize,
    ) -> Result<Vec<u64>, MpcPartyError> {
        let f = self.f();
        let (visible, segs) = a.visible(scores);
        let e = tables::softmax_exp(&mut self.sess, &Shares::from_raw(visible), &segs, 2 * f)?;
        let (sums, emats) = a.row_sums_and_padded(e.as_slice(), &segs);
        // E V (EXP_FRAC + F bits) and its truncation ride along with the reciprocal.
        let mut first = Round::default();
        for op in a.value_products(&emats, vs, start_pos) {
            self.sess.stage_matmul(&mut first, &op)?;
        }
        // Row sums lie in [1/e, total e) (every exponent is below 1, a row's largest
        // above -1): levels from 2^-10 up to one that holds total e.
        let max_units = a.total as f64 * std::f64::consts::E * 2f64.powi(EXP_FRAC as i32);
        let plan = LevelPlan {
            k: 10,
            shifts: LevelPlan::covering(10, EXP_FRAC - 10, 2, max_units),
            spacing: 2,
            frac_in: EXP_FRAC,
            div: 1,
            root: false,
            frac_out: ATTN_RECIP_FRAC,
        };
        let sums = Shares::<R>::from_raw(sums);
        let steps = tables::inverse_start(&mut self.sess, &mut first, &sums, &plan)?;
        let mut done = self.sess.run(first)?;
        let mut second = Round::default();
        let steps = tables::inverse_middle(&mut self.sess, &mut second, &mut done, steps)?;
        let ev: Vec<u64> = done
            .into_iter()
            .map(|d| d.shares().map(Shares::into_raw))
            .collect::<Result<Vec<_>, _>>()?
            .concat();
        let ev_at = second.len();
        self.sess.stage_trunc(&mut second, Shares::from_raw(ev), EXP_FRAC)?;
        let mut done = self.sess.run(second)?;
        if ev_at >= done.len() {
            return Err(shardlm_mpc::MpcError::Shape {
                op: "attention",
                detail: "E V truncation missing".into(),
            }
            .into());
        }
        let ev = done.remove(ev_at).shares()?;
        let recip = tables::inverse_finish(&mut self.sess, &mut done, steps)?;
        self.scale_by_reciprocal(&ev, &recip)
    }

    pub(super) fn ot_swiglu(&mut self, gate_up: &SharedTensor<R>) -> Result<SharedTensor<R>, MpcPartyError> {
        let (gate, up) = Self::split_gate_up(gate_up);
        let f = self.f();
        let (mut fg, mut gate, mut up) =
            (f + gate_up.extra_frac, Shares::from_raw(gate), Shares::from_raw(up));
        if gate_up.extra_frac == 0 {
            // A truncated projection (a bias): widen exactly, the tables read 2F bits.
            (gate, up, fg) = (gate.scale(1 << f), up.scale(1 << f), 2 * f);
        }
        let p = tables::silu_times(&mut self.sess, &gate, &up, fg)?;
        // Untruncated: the down projection truncates once for both.
        Ok(SharedTensor {
            rows: gate_up.rows,
            cols: gate_up.cols / 2,
            data: p,
            extra_frac: tables::SILU_OUT_FRAC - f,
        })
    }
}

fn tables_add_public<R: Role>(x: &Shares<R>, c: u64) -> Shares<R> {
    x.add_public(&vec![c; x.len()])
}
