//! The Qwen2 model: checkpoint loading, the operations trait, the forward pass written
//! once, and the plaintext reference engine.

pub mod fingerprint;
