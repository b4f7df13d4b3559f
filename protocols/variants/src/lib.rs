//! shardlm-variants: the private variants of ShardLM, where the model
//! ([`shardlm_model`]) meets the two-party engine ([`shardlm_mpc`]). Each client-side
//! variant implements [`shardlm_model::ModelOps`]; the server party's cores answer it.
//! Only this crate knows both; it sees the network only through
//! [`shardlm_transport::Channel`].
//!
//! * [`v2`]: the client-assisted linear layer (DESIGN.md section 3): the server computes
//!   every linear layer on masked inputs, the client does the rest in plaintext; v3 is
//!   the same protocol pipelined.
//! * [`v3_cc`]: v3-cc, the plaintext engine inside attested confidential-computing
//!   hardware, requests sealed to the attested key ([`shardlm_attest`]).
//! * [`v3_mpc`]: v3-mpc, the whole forward pass on additive shares; only the final
//!   logits are opened, to the client.
//! * [`server`]: the server party's dispatch of sessions to variants.
//! * [`registry`]: the one list of variants, what each needs and promises.
//! * [`limits`]: what a session's declared shape lets a peer send.
//! * [`plan`]: the one planner: what a session of any variant consumes.
//! * [`session`]: the client's one session abstraction over every variant.
//! * [`ring_weights`]: the public weights in ring encoding, which every variant uses.
#![deny(missing_docs)]

pub mod limits;
pub mod plan;
pub mod registry;
pub mod ring_weights;
pub mod server;
pub mod session;
pub mod v2;
pub mod v3;
pub mod v3_cc;
pub mod v3_mpc;

pub use ring_weights::RingWeights;
