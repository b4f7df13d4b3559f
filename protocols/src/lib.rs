//! The computation of ShardLM: ring arithmetic and shares, the two-party primitives, the
//! Qwen2 forward pass written once against an operations trait, its variants, the dealer
//! and the one-time material files.
//!
//! * [`ring`], [`share`], [`prg`]: `Z_2^64` with fixed-point encoding, shares typed by
//!   owner, seeded pseudorandom generators.
//! * [`mpc`]: two-party primitives over [`shardlm_transport::Channel`] (openings, Beaver
//!   products, faithful truncation, boolean AND, daBits, random-OT derandomization), and
//!   the correlated randomness they consume.
//! * [`material`]: dealer bundles on disk (manifest, per-party shards, one-time journal).
//! * [`model`]: Hugging Face checkpoint loading, the operations trait, the forward pass,
//!   the plaintext reference engine, the planner, sampling.
//! * [`variants`]: the private variants as implementations of the operations trait (v2
//!   and v3 client-assisted, v3-mpc on shares) and the server party's session dispatch.
#![deny(missing_docs)]

pub mod material;
pub mod model;
pub mod mpc;
pub mod prg;
pub mod ring;
pub mod share;
pub mod variants;
