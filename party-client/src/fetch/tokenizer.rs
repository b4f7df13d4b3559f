//! Build a Hugging Face `tokenizer.json` for a Qwen2 byte-level BPE from a GGUF's
//! tokenizer metadata.
//!
//! The GGUF holds the vocabulary (`tokenizer.ggml.tokens`, already byte-level encoded,
//! id = index), the merges (`tokenizer.ggml.merges`, `"a b"` strings, by rank) and the token
//! types (`tokenizer.ggml.token_type`: 1 normal, 3 control, 4 user-defined, 5 unused). The
//! output has the structure of Qwen2's `tokenizer.json` as the `tokenizers` library writes
//! it (fields in its order, pretty-printed with two spaces, no trailing newline):
//!
//! - no normalizer;
//! - pre-tokenizer: `Split` on Qwen2's regex (`Isolated`), then `ByteLevel` without
//!   prefix space and without its own regex;
//! - post-processor: `TemplateProcessing` that adds nothing (`A`, or `A` `B`);
//! - decoder: `ByteLevel`;
//! - model: `BPE` without unk/dropout/prefixes, every GGUF token in the vocab in id
//!   order, the merges as `[a, b]` pairs;
//! - added tokens: the control tokens (`special: true`) and the user-defined ones
//!   (`<tool_call>`, `</tool_call>`: `special: false`), none normalized.

use super::gguf::{Gguf, Value};
use anyhow::{bail, ensure, Context, Result};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};

/// Qwen2's pre-tokenizer regex (`tokenizer.ggml.pre = qwen2`).
pub const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token type of a normal token.
pub const TOKEN_NORMAL: i64 = 1;
/// GGUF token type of a control (special) token.
pub const TOKEN_CONTROL: i64 = 3;
/// GGUF token type of a user-defined added token.
pub const TOKEN_USER_DEFINED: i64 = 4;

/// The tokenizer data of a GGUF.
#[derive(Debug, Clone)]
pub struct GgufTokenizer {
    /// The tokens, by id.
    pub tokens: Vec<String>,
    /// The token types, by id.
    pub token_types: Vec<i64>,
    /// The merges, by rank.
    pub merges: Vec<(String, String)>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_id: Option<u64>,
    /// `tokenizer.ggml.padding_token_id`.
    pub pad_id: Option<u64>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_id: Option<u64>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

fn strings<'a>(g: &'a Gguf, key: &str) -> Result<Vec<&'a str>> {
    let arr = g.get(key).with_context(|| format!("the GGUF has no `{key}`"))?;
    let arr = arr.as_array().with_context(|| format!("GGUF `{key}` is not an array"))?;
    arr.iter()
        .enumerate()
        .map(|(i, v)| v.as_str().with_context(|| format!("GGUF `{key}`[{i}] is not a string")))
        .collect()
}

impl GgufTokenizer {
    /// Reads and checks the tokenizer metadata: a `gpt2` (byte-level BPE) model with the
    /// `qwen2` pre-tokenizer, one type per token, no duplicate tokens, and merges of two
    /// tokens each.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let model = g.get_str("tokenizer.ggml.model")?;
        ensure!(
            model == "gpt2",
            "tokenizer.ggml.model is `{model}`: only byte-level BPE (`gpt2`) is supported"
        );
        let pre = g.get_str("tokenizer.ggml.pre")?;
        ensure!(
            pre == "qwen2",
            "tokenizer.ggml.pre is `{pre}`: only the Qwen2 pre-tokenizer (`qwen2`) is supported"
        );
        let tokens: Vec<String> =
            strings(g, "tokenizer.ggml.tokens")?.into_iter().map(String::from).collect();
        ensure!(!tokens.is_empty(), "the GGUF's vocabulary is empty");
        let mut seen = HashSet::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            ensure!(seen.insert(t.as_str()), "GGUF token `{t}` (id {i}) appears twice in the vocabulary");
        }
        let types = g
            .get("tokenizer.ggml.token_type")
            .and_then(Value::as_array)
            .context("the GGUF has no `tokenizer.ggml.token_type` array")?;
        ensure!(
            types.len() == tokens.len(),
            "the GGUF has {} token types for {} tokens",
            types.len(),
            tokens.len()
        );
        let token_types = types
            .iter()
            .enumerate()
            .map(|(i, v)| v.as_i64().with_context(|| format!("token type #{i} is not an integer")))
            .collect::<Result<Vec<_>>>()?;
        let merges = strings(g, "tokenizer.ggml.merges")?
            .into_iter()
            .enumerate()
            .map(|(i, m)| match m.split(' ').collect::<Vec<_>>()[..] {
                [a, b] if !a.is_empty() && !b.is_empty() => Ok((a.to_string(), b.to_string())),
                _ => bail!("GGUF merge #{i} `{m}` is not two tokens separated by one space"),
            })
            .collect::<Result<Vec<_>>>()?;
        let id = |key: &str| -> Result<Option<u64>> {
            match g.get(key) {
                None => Ok(None),
                Some(v) => {
                    let id = v.as_u64().with_context(|| format!("GGUF `{key}` is not a token id"))?;
                    ensure!((id as usize) < tokens.len(), "GGUF `{key}` is {id}, past the vocabulary");
                    Ok(Some(id))
                }
            }
        };
        let chat_template = match g.get("tokenizer.chat_template") {
            None => None,
            Some(v) => {
                Some(v.as_str().context("GGUF `tokenizer.chat_template` is not a string")?.to_string())
            }
        };
        Ok(GgufTokenizer {
            eos_id: id("tokenizer.ggml.eos_token_id")?,
            pad_id: id("tokenizer.ggml.padding_token_id")?,
            bos_id: id("tokenizer.ggml.bos_token_id")?,
            tokens,
            token_types,
            merges,
            chat_template,
        })
    }

    /// The token of `id`, if any.
    pub fn token(&self, id: Option<u64>) -> Option<&str> {
        id.and_then(|i| self.tokens.get(usize::try_from(i).ok()?)).map(String::as_str)
    }

    /// `tokenizer.json`, pretty-printed as the `tokenizers` library writes it.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        let added_tokens = self
            .tokens
            .iter()
            .zip(&self.token_types)
            .enumerate()
            .filter(|(_, (_, &ty))| ty == TOKEN_CONTROL || ty == TOKEN_USER_DEFINED)
            .map(|(id, (content, &ty))| AddedToken {
                id,
                content,
                single_word: false,
                lstrip: false,
                rstrip: false,
                normalized: false,
                special: ty == TOKEN_CONTROL,
            })
            .collect();
        let seq = |id: &'static str, type_id: u32| Piece { sequence: SeqPiece { id, type_id } };
        let json = TokenizerJson {
            version: "1.0",
            truncation: None,
            padding: None,
            added_tokens,
            normalizer: None,
            pre_tokenizer: PreTokenizer {
                r#type: "Sequence",
                pretokenizers: (
                    Split {
                        r#type: "Split",
                        pattern: Pattern { regex: QWEN2_REGEX },
                        behavior: "Isolated",
                        invert: false,
                    },
                    ByteLevel {
                        r#type: "ByteLevel",
                        add_prefix_space: false,
                        trim_offsets: true,
                        use_regex: false,
                    },
                ),
            },
            post_processor: PostProcessor {
                r#type: "TemplateProcessing",
                single: vec![seq("A", 0)],
                pair: vec![seq("A", 0), seq("B", 1)],
                special_tokens: BTreeMap::new(),
            },
            decoder: ByteLevel {
                r#type: "ByteLevel",
                add_prefix_space: true,
                trim_offsets: true,
                use_regex: true,
            },
            model: Bpe {
                r#type: "BPE",
                dropout: None,
                unk_token: None,
                continuing_subword_prefix: "",
                end_of_word_suffix: "",
                fuse_unk: false,
                byte_fallback: false,
                ignore_merges: false,
                vocab: Vocab(&self.tokens),
                merges: self.merges.iter().map(|(a, b)| [a.as_str(), b.as_str()]).collect(),
            },
        };
        let mut out = Vec::with_capacity(16 << 20);
        serde_json::to_writer_pretty(&mut out, &json).context("writing tokenizer.json")?;
        Ok(out)
    }
}

#[derive(Serialize)]
struct TokenizerJson<'a> {
    version: &'static str,
    truncation: Option<()>,
    padding: Option<()>,
    added_tokens: Vec<AddedToken<'a>>,
    normalizer: Option<()>,
    pre_tokenizer: PreTokenizer,
    post_processor: PostProcessor,
    decoder: ByteLevel,
    model: Bpe<'a>,
}

#[derive(Serialize)]
struct AddedToken<'a> {
    id: usize,
    content: &'a str,
    single_word: bool,
    lstrip: bool,
    rstrip: bool,
    normalized: bool,
    special: bool,
}

#[derive(Serialize)]
struct PreTokenizer {
    r#type: &'static str,
    pretokenizers: (Split, ByteLevel),
}

#[derive(Serialize)]
struct Split {
    r#type: &'static str,
    pattern: Pattern,
    behavior: &'static str,
    invert: bool,
}

#[derive(Serialize)]
struct Pattern {
    #[serde(rename = "Regex")]
    regex: &'static str,
}

#[derive(Serialize)]
struct ByteLevel {
    r#type: &'static str,
    add_prefix_space: bool,
    trim_offsets: bool,
    use_regex: bool,
}

#[derive(Serialize)]
struct PostProcessor {
    r#type: &'static str,
    single: Vec<Piece>,
    pair: Vec<Piece>,
    special_tokens: BTreeMap<String, ()>,
}

#[derive(Serialize)]
struct Piece {
    #[serde(rename = "Sequence")]
    sequence: SeqPiece,
}

#[derive(Serialize)]
struct SeqPiece {
    id: &'static str,
    type_id: u32,
}

#[derive(Serialize)]
struct Bpe<'a> {
    r#type: &'static str,
    dropout: Option<f32>,
    unk_token: Option<String>,
    continuing_subword_prefix: &'static str,
    end_of_word_suffix: &'static str,
    fuse_unk: bool,
    byte_fallback: bool,
    ignore_merges: bool,
    vocab: Vocab<'a>,
    merges: Vec<[&'a str; 2]>,
}

/// The vocab as a JSON object in id order (what `tokenizers` writes).
struct Vocab<'a>(&'a [String]);

impl Serialize for Vocab<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (id, t) in self.0.iter().enumerate() {
            m.serialize_entry(t, &id)?;
        }
        m.end()
    }
}
