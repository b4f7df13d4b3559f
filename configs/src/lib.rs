//! Pure configuration data for ShardLM, with validation and no IO beyond reading a file.
//!
//! * [`ModelConfig`]: the shape of a Qwen2 decoder. Built from a named preset
//!   ([`ModelConfig::preset`]) or parsed from a Hugging Face `config.json`
//!   (`Qwen2ForCausalLM`, [`ModelConfig::from_hf_json`]). Validation errors name the field.
//! * [`FixedPoint`]: the ring encoding parameters (fractional bits of activations and
//!   weights), shared by every private variant.
//! * [`Timeouts`]: the network deadlines every channel enforces.
//! * [`paths`]: where ShardLM keeps per-user caches and state (never in a model's
//!   directory).
//! * `cli` (feature `cli`): the flags both binaries share for these settings.
#![deny(missing_docs)]

#[cfg(feature = "cli")]
pub mod cli;

mod model;
pub mod paths;
mod protocol;

pub use model::{
    ConfigError, ModelConfig, MAX_LAYERS, MAX_PARAMETERS, MAX_POSITIONS, MAX_VOCAB, MAX_WIDTH, PRESET_NAMES,
};
pub use protocol::{FixedPoint, Timeouts, Variant};
