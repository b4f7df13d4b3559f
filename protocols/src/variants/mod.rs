//! Private variants as implementations of [`crate::model::ModelOps`] (client side) and
//! their server cores.
//!
//! * [`v2`]: the client-assisted linear layer (DESIGN.md section 3): the server computes
//!   every linear layer on masked inputs, the client does the rest in plaintext.
//! * [`server`]: the server party's dispatch of sessions to variants.

pub mod server;
pub mod v2;
