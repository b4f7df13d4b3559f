//! Text in and out: the checkpoint's tokenizer, Qwen chat formatting (ChatML, as the
//! model's chat template renders one user turn), and streaming detokenization.

use anyhow::{anyhow, Context, Result};
use std::path::Path;

/// The system prompt Qwen2.5's chat template inserts when none is given.
pub const DEFAULT_SYSTEM_PROMPT: &str =
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";

/// Renders one user turn as the Qwen2.5 chat template does with
/// `add_generation_prompt=True`.
pub fn chat_prompt(user: &str, system: Option<&str>) -> String {
    format!(
        "<|im_start|>system\n{}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n",
        system.unwrap_or(DEFAULT_SYSTEM_PROMPT)
    )
}

/// A loaded tokenizer.
pub struct TextCodec {
    tokenizer: tokenizers::Tokenizer,
}

impl TextCodec {
    /// Loads `tokenizer.json`.
    pub fn load(path: &Path) -> Result<Self> {
        let tokenizer = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| anyhow!("{}: cannot load tokenizer: {e}", path.display()))?;
        Ok(Self { tokenizer })
    }

    /// Token ids of `text` (special tokens written in the text are recognized, no BOS is
    /// added: Qwen has none).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.tokenizer.encode(text, false).map_err(|e| anyhow!("tokenizing the prompt: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of the prompt, chat-formatted when `chat`.
    pub fn encode_prompt(&self, prompt: &str, chat: bool) -> Result<Vec<u32>> {
        if chat { self.encode(&chat_prompt(prompt, None)) } else { self.encode(prompt) }
            .context("encoding the prompt")
    }

    /// Text of `ids`, special tokens dropped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids, true).map_err(|e| anyhow!("detokenizing: {e}"))
    }
}

/// Turns a growing token sequence into text deltas that are safe to print: a delta is
/// held back while it ends inside a multi-byte character.
pub struct StreamDecoder<'a> {
    codec: &'a TextCodec,
    ids: Vec<u32>,
    printed: usize,
}

impl<'a> StreamDecoder<'a> {
    /// A decoder with nothing printed yet.
    pub fn new(codec: &'a TextCodec) -> Self {
        Self { codec, ids: Vec::new(), printed: 0 }
    }

    /// Adds a token, returns the new printable text.
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = self.codec.decode(&self.ids)?;
        if text.ends_with('\u{FFFD}') || text.len() < self.printed || !text.is_char_boundary(self.printed) {
            return Ok(String::new());
        }
        let delta = text[self.printed..].to_string();
        self.printed = text.len();
        Ok(delta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_prompt_matches_template_layout() {
        let p = chat_prompt("hi", None);
        assert!(p.starts_with("<|im_start|>system\nYou are Qwen"));
        assert!(p.ends_with("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"));
    }
}
