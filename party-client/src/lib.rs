//! The client party (P0) of ShardLM as a library: text handling, evaluation, and the
//! command implementations behind `shardlm-client`.
#![deny(missing_docs)]

pub mod bench;
pub mod eval;
pub mod experiment;
pub mod fetch;
pub mod netem;
pub mod session;
pub mod text;
