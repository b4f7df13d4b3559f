//! The planner (DESIGN.md section 4): what a session of any variant consumes, asked by
//! the dealer, the client's per-session dealing and the cost tests alike, so that dealt
//! material and online consumption can never disagree.
//!
//! A session is a prefill of `prompt_tokens` (logits for [`Rows`]) and
//! `max_new_tokens - 1` single-token decode steps: every private session runs its full
//! budget (dummy steps after an end-of-sequence token, DESIGN.md section 1), so the
//! plan does not depend on the output.
//!
//! * v2 / v3: the forward pass runs on [`Planner`] (which computes nothing and records
//!   every operation with its shape); each linear unit call needs one masked-linear
//!   request.
//! * v3-mpc / v3-ot: both parties run the real forward pass on
//!   [`shardlm_mpc::material::Recorder`] material over an in-memory pair
//!   ([`crate::v3_mpc::plan_session_with`], with the variant's [`Nonlinear`]): the
//!   protocol's flow depends only on public shapes, so the recorded requests are exactly
//!   those a real session takes.

use crate::registry::{spec, MaterialNeed};
use crate::v3_mpc::{plan_session_with, MpcPartyError, Nonlinear, OpCost};
use crate::RingWeights;
use shardlm_configs::{ModelConfig, Variant};
use shardlm_model::planner::{PlannedOp, Planner};
use shardlm_model::{Rows, Weights};
use shardlm_mpc::material::{BundleWriter, DealtShape, MaskedLinearRequest, MaterialError, MaterialRequest};
use shardlm_transport::Counters;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The public shape of a session: all a plan depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionShape {
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// New tokens (forward passes) of the session.
    pub max_new_tokens: usize,
    /// Which prefill positions get logits.
    pub rows: Rows,
}

/// Why a session cannot be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The shape does not fit the model or makes no sense.
    #[error("{0}")]
    Shape(String),
    /// The variant has no material to plan or is not in this build.
    #[error("{0}")]
    Variant(String),
    /// Running the v3-mpc or v3-ot pass on recorded material failed.
    #[error(transparent)]
    Mpc(#[from] MpcPartyError),
    /// A request was invalid or a bundle could not be written.
    #[error(transparent)]
    Material(#[from] MaterialError),
}

impl SessionShape {
    /// A session of `prompt_tokens` + `max_new_tokens` with logits for `rows`.
    pub fn new(prompt_tokens: usize, max_new_tokens: usize, rows: Rows) -> Self {
        SessionShape { prompt_tokens, max_new_tokens, rows }
    }

    /// The shape as a bundle's manifest records it.
    pub fn dealt(&self) -> DealtShape {
        DealtShape {
            prompt_tokens: self.prompt_tokens as u64,
            max_new_tokens: self.max_new_tokens as u64,
            all_positions: self.rows == Rows::All,
        }
    }

    /// Checks that a session of this shape may use a bundle dealt for `dealt` (`None`:
    /// the bundle does not say): the message says what to do otherwise.
    pub fn check_dealt(&self, dealt: Option<&DealtShape>) -> Result<(), String> {
        match dealt {
            Some(d) if *d != self.dealt() => Err(format!(
                "the bundle's sessions were dealt for {d}, this session is {}: deal a bundle for this shape (`shardlm-client dealer --prompt-tokens {} --max-new-tokens {}{}`) or make the session match the bundle",
                self.dealt(),
                self.prompt_tokens,
                self.max_new_tokens,
                if self.rows == Rows::All { " --all-positions" } else { "" }
            )),
            _ => Ok(()),
        }
    }

    /// Checks the shape against the model before anything is planned, dealt or sent:
    /// a non-empty prompt, at least one new token, and every position within the
    /// model's `max_position_embeddings`.
    pub fn validate(&self, config: &ModelConfig) -> Result<(), PlanError> {
        if self.prompt_tokens == 0 {
            return Err(PlanError::Shape("the prompt is empty: give at least one token".into()));
        }
        if self.max_new_tokens == 0 {
            return Err(PlanError::Shape(
                "the session must generate at least one token (--max-tokens)".into(),
            ));
        }
        let positions = self.prompt_tokens.checked_add(self.max_new_tokens);
        if positions.is_none_or(|p| p > config.max_position_embeddings) {
            return Err(PlanError::Shape(format!(
                "prompt ({} tokens) + new tokens ({}) exceed the model's {} positions; shorten the prompt or lower --max-tokens",
                self.prompt_tokens, self.max_new_tokens, config.max_position_embeddings
            )));
        }
        Ok(())
    }
}

/// What one planned session consumes and moves.
#[derive(Clone, Debug)]
pub struct SessionPlan {
    /// The variant.
    pub variant: Variant,
    /// The shape.
    pub shape: SessionShape,
    /// The material requests, in the order both parties take them.
    pub requests: Vec<MaterialRequest>,
    /// P0's traffic per kind of operation (v3-mpc, v3-ot, which run the pass; empty for
    /// v2/v3, whose traffic is `8 n (d_in + d_out)` per linear unit by construction).
    pub costs: BTreeMap<&'static str, OpCost>,
    /// P0's channel counters over the planned session (v3-mpc, v3-ot).
    pub counters: Option<Counters>,
}

impl SessionPlan {
    /// Raw material bytes of one session in each party's shard (`[p0, p1]`), packed
    /// widths included, before headers and alignment.
    pub fn raw_bytes(&self) -> Result<[f64; 2], MaterialError> {
        let mut out = [0f64; 2];
        for req in &self.requests {
            for (p, o) in out.iter_mut().enumerate() {
                *o += req.raw_bytes(p as u8)?;
            }
        }
        Ok(out)
    }
}

/// Plans one session of `variant` on the model of `weights` (`ring`: the same weights
/// in ring encoding). The shape is validated first.
pub fn plan_session(
    variant: Variant,
    weights: &Arc<Weights>,
    ring: &Arc<RingWeights>,
    shape: SessionShape,
) -> Result<SessionPlan, PlanError> {
    let config = &weights.config;
    shape.validate(config)?;
    let s = spec(variant);
    if !s.implemented {
        return Err(PlanError::Variant(format!("variant `{variant}` is not available in this build")));
    }
    let (requests, costs, counters) = match s.material {
        MaterialNeed::None => {
            return Err(PlanError::Variant(format!("variant `{variant}` consumes no dealer material")))
        }
        MaterialNeed::ClientOnly => (masked_linear_requests(config, shape), BTreeMap::new(), None),
        MaterialNeed::BothParties => match Nonlinear::of(variant) {
            Some(nonlinear) => {
                let p = plan_session_with(
                    nonlinear,
                    weights,
                    ring,
                    shape.prompt_tokens,
                    shape.max_new_tokens,
                    shape.rows,
                )?;
                (p.requests, p.costs, Some(p.counters))
            }
            None => return Err(PlanError::Variant(format!("no planner for `{variant}` in this build"))),
        },
    };
    Ok(SessionPlan { variant, shape, requests, costs, counters })
}

/// v2/v3's material: one masked-linear request per linear unit call of the session.
fn masked_linear_requests(config: &ModelConfig, shape: SessionShape) -> Vec<MaterialRequest> {
    Planner::session(config, shape.prompt_tokens, shape.max_new_tokens, shape.rows)
        .iter()
        .filter_map(|op| match op {
            PlannedOp::Linear { linear, rows, d_in, d_out } => Some(
                MaskedLinearRequest {
                    n: *rows,
                    d_in: *d_in,
                    d_out: *d_out,
                    weight: linear.weight_id(config.num_hidden_layers),
                }
                .into(),
            ),
            _ => None,
        })
        .collect()
}

/// Deals `sessions` sessions of `plan` into `writer`, each marked as a session start.
/// `on_request` sees progress (done, total).
pub fn deal_sessions(
    writer: &mut BundleWriter,
    plan: &SessionPlan,
    ring: &RingWeights,
    sessions: usize,
    mut on_request: impl FnMut(usize, usize),
) -> Result<(), MaterialError> {
    let total = plan.requests.len() * sessions;
    writer.session_shape(plan.shape.dealt());
    for s in 0..sessions {
        writer.start_session();
        for (i, req) in plan.requests.iter().enumerate() {
            writer.push(req, ring)?;
            on_request(s * plan.requests.len() + i + 1, total);
        }
    }
    Ok(())
}
