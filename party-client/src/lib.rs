//! The client party (P0) of ShardLM as a library: the session runner, text handling,
//! the command implementations behind `shardlm-client`, and the network lab.
#![deny(missing_docs)]

pub mod bench;
pub mod client;
pub mod commands;
pub mod fetch;
pub mod lab;
pub mod text;
