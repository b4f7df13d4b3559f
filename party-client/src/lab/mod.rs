//! The lab: network experiments across variants. [`netem`] is a user-space link
//! emulator (delay, jitter, rate, loss, reordering, MTU) between the two parties;
//! [`experiment`] sweeps variants x round-trip times x rates through it with real
//! party processes and writes results, tables, plots and a cost model. The subcommands
//! `shardlm-client netem` and `shardlm-client experiment` are their front ends.

pub mod experiment;
pub mod netem;
