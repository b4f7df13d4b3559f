//! shardlm-model: the Qwen2 model, knowing nothing of shares: checkpoint loading, the operations trait, the forward pass written
//! once against it, the plaintext reference engine, sampling and the generation loop.
//!
//! Data flow: [`load::ModelDir`] parses a Hugging Face directory into [`weights::Weights`];
//! [`qwen2::forward`] drives any [`ops::ModelOps`] implementation through one step;
//! [`generate::generate`] runs prefill and decode steps and samples with
//! [`sampling::Sampler`]. [`plain::PlainEngine`] is the `f32` reference every variant is
//! checked against.

#![deny(missing_docs)]

pub mod fingerprint;
pub mod generate;
pub mod hub_cache;
pub mod kernels;
pub mod load;
pub mod ops;
pub mod plain;
pub mod planner;
pub mod qwen2;
pub mod sampling;
pub mod synth;
pub mod timing;
pub mod weights;

pub use load::{LoadError, ModelDir};
pub use ops::{Linear, Logits, ModelOps, Norm, Rows};
pub use plain::{EngineError, PlainEngine};
pub use weights::Weights;
