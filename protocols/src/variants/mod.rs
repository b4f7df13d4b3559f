//! Private variants as implementations of [`crate::model::ModelOps`] (client side) and
//! their server cores.
//!
//! * [`v2`]: the client-assisted linear layer (DESIGN.md section 3): the server computes
//!   every linear layer on masked inputs, the client does the rest in plaintext.
//! * [`mpc`]: v3-mpc, the whole forward pass on additive shares; only the final
//!   logits are opened, to the client.
//! * [`server`]: the server party's dispatch of sessions to variants.

pub mod mpc;
pub mod server;
pub mod v2;
