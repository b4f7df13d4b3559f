//! Synthetic checkpoints: a Hugging Face style directory (`config.json`, bf16
//! `model.safetensors`, byte-level `tokenizer.json`) with seeded random weights of a
//! preset's exact shape, for speed and traffic work without downloads and for `demo`.
//!
//! The safetensors file is streamed tensor by tensor, so even large presets need no more
//! memory than their largest tensor. The tokenizer is a byte-level BPE without merges:
//! token `b` is byte `b` (in the GPT-2 byte-to-unicode alphabet), followed by the special
//! tokens `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` at 256, 257, 258.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use shardlm_configs::ModelConfig;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Special tokens of the synthetic tokenizer, in id order after the 256 bytes.
pub const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// Errors writing a synthetic model.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// The preset cannot hold the byte-level tokenizer.
    #[error("preset `{0}` has a vocabulary smaller than the 259 tokens of the byte-level tokenizer")]
    VocabTooSmall(String),
    /// Writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> SynthError + '_ {
    move |source| SynthError::Io { path: path.to_path_buf(), source }
}

/// The tensors of a Qwen2 checkpoint with their shapes, in file order.
pub fn tensor_shapes(c: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (h, q, kv, i) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
    let mut v = vec![("model.embed_tokens.weight".to_string(), vec![c.vocab_size, h])];
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        v.push((format!("{p}.input_layernorm.weight"), vec![h]));
        v.push((format!("{p}.self_attn.q_proj.weight"), vec![q, h]));
        v.push((format!("{p}.self_attn.q_proj.bias"), vec![q]));
        v.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
        v.push((format!("{p}.self_attn.k_proj.bias"), vec![kv]));
        v.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
        v.push((format!("{p}.self_attn.v_proj.bias"), vec![kv]));
        v.push((format!("{p}.self_attn.o_proj.weight"), vec![h, q]));
        v.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        v.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
        v.push((format!("{p}.mlp.up_proj.weight"), vec![i, h]));
        v.push((format!("{p}.mlp.down_proj.weight"), vec![h, i]));
    }
    v.push(("model.norm.weight".to_string(), vec![h]));
    if !c.tie_word_embeddings {
        v.push(("lm_head.weight".to_string(), vec![c.vocab_size, h]));
    }
    v
}

/// Writes `config.json`, `model.safetensors` and `tokenizer.json` for `config` into
/// `out` (created if needed), with weights drawn from a ChaCha stream seeded by `seed`:
/// norm gains near 1, biases and weights uniform with standard deviation 0.02 (0.5 for
/// embeddings, so that a random model's logits are not flat).
pub fn write_synthetic_model(config: &ModelConfig, out: &Path, seed: u64) -> Result<(), SynthError> {
    if config.vocab_size < 256 + SPECIAL_TOKENS.len() {
        return Err(SynthError::VocabTooSmall(config.name.clone()));
    }
    std::fs::create_dir_all(out).map_err(io(out))?;
    let cfg_path = out.join("config.json");
    std::fs::write(&cfg_path, config.to_hf_json()).map_err(io(&cfg_path))?;
    let tok_path = out.join("tokenizer.json");
    std::fs::write(&tok_path, byte_level_tokenizer_json()).map_err(io(&tok_path))?;

    let shapes = tensor_shapes(config);
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        serde_json::json!({"format": "pt", "generator": "shardlm synth-model"}),
    );
    let mut offset = 0usize;
    for (name, shape) in &shapes {
        let bytes = shape.iter().product::<usize>() * 2;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut header = serde_json::to_vec(&serde_json::Value::Object(header)).map_err(|e| SynthError::Io {
        path: out.join("model.safetensors"),
        source: std::io::Error::other(e),
    })?;
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let st_path = out.join("model.safetensors");
    let tmp_path = out.join("model.safetensors.partial");
    let file = std::fs::File::create(&tmp_path).map_err(io(&tmp_path))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    w.write_all(&(header.len() as u64).to_le_bytes()).map_err(io(&tmp_path))?;
    w.write_all(&header).map_err(io(&tmp_path))?;
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut buf = Vec::with_capacity(1 << 16);
    for (name, shape) in &shapes {
        let n: usize = shape.iter().product();
        let (center, std) = if name.ends_with("layernorm.weight") || name == "model.norm.weight" {
            (1.0f32, 0.1f32)
        } else if name.contains("embed_tokens") {
            (0.0, 0.5)
        } else {
            (0.0, 0.02)
        };
        // Uniform on [-a, a] has standard deviation a / sqrt(3).
        let a = std * 3f32.sqrt();
        let mut left = n;
        while left > 0 {
            let m = left.min(1 << 15);
            buf.clear();
            for _ in 0..m {
                let u = (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32;
                let x = center + a * (2.0 * u - 1.0);
                buf.extend_from_slice(&half::bf16::from_f32(x).to_le_bytes());
            }
            w.write_all(&buf).map_err(io(&tmp_path))?;
            left -= m;
        }
    }
    let file =
        w.into_inner().map_err(|e| SynthError::Io { path: tmp_path.clone(), source: e.into_error() })?;
    file.sync_all().map_err(io(&tmp_path))?;
    std::fs::rename(&tmp_path, &st_path).map_err(io(&st_path))?;
    Ok(())
}

/// GPT-2's reversible byte-to-unicode map, as used by byte-level BPE tokenizers.
fn byte_to_char(b: u8) -> char {
    let printable =
        |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    if printable(b) {
        return b as char;
    }
    let shift = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + shift).unwrap_or('?')
}

/// A `tokenizer.json` for a byte-level BPE with no merges plus the special tokens.
pub fn byte_level_tokenizer_json() -> String {
    let mut vocab = serde_json::Map::new();
    for b in 0..=255u8 {
        vocab.insert(byte_to_char(b).to_string(), serde_json::json!(b as u32));
    }
    let added: Vec<_> = SPECIAL_TOKENS
        .iter()
        .enumerate()
        .map(|(i, t)| {
            vocab.insert(t.to_string(), serde_json::json!(256 + i));
            serde_json::json!({"id": 256 + i, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true});
    let v = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": null,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": []},
    });
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn byte_alphabet_is_a_bijection() {
        let chars: HashSet<char> = (0..=255u8).map(byte_to_char).collect();
        assert_eq!(chars.len(), 256);
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'A'), 'A');
    }
}
