//! Qwen2 model shapes: presets and Hugging Face `config.json` parsing.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// Names accepted by [`ModelConfig::preset`].
pub const PRESET_NAMES: &[&str] =
    &["tiny", "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-7b", "qwen2.5-14b", "qwen2.5-72b"];

/// A configuration problem, naming the file or field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("{path}: cannot read model config: {source}")]
    Read {
        /// The file.
        path: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file is not the JSON we expect.
    #[error("{path}: not a valid Hugging Face config.json: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What serde said.
        message: String,
    },
    /// The architecture is not one we implement.
    #[error("{path}: unsupported architecture {found:?}; ShardLM runs Qwen2ForCausalLM (model_type \"qwen2\") checkpoints")]
    UnsupportedArchitecture {
        /// The file.
        path: String,
        /// What the file declares.
        found: String,
    },
    /// A field is missing or out of range.
    #[error("model config field `{field}`: {problem}")]
    Field {
        /// The offending field, by its Hugging Face name.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// No preset of that name.
    #[error("unknown model preset {0:?}; known presets: {known}", known = PRESET_NAMES.join(", "))]
    UnknownPreset(String),
}

/// The shape and constants of a Qwen2 decoder-only model.
///
/// Field names follow Hugging Face's `Qwen2Config` so that a config round-trips.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Human-readable name (preset name or directory name).
    pub name: String,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (grouped-query attention).
    pub num_key_value_heads: usize,
    /// Per-head dimension (`hidden_size / num_attention_heads` for Qwen2).
    pub head_dim: usize,
    /// Vocabulary size (rows of the embedding table).
    pub vocab_size: usize,
    /// Whether `lm_head` shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// RoPE base frequency.
    pub rope_theta: f64,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Longest context the model supports.
    pub max_position_embeddings: usize,
    /// End-of-sequence token ids (generation stops at any of them).
    pub eos_token_ids: Vec<u32>,
}

/// The subset of Hugging Face's `config.json` that we read.
#[derive(Deserialize)]
struct HfConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: Option<usize>,
    tie_word_embeddings: Option<bool>,
    rope_theta: Option<f64>,
    rope_parameters: Option<HfRopeParameters>,
    rope_scaling: Option<serde_json::Value>,
    rms_norm_eps: Option<f64>,
    max_position_embeddings: Option<usize>,
    hidden_act: Option<String>,
    use_sliding_window: Option<bool>,
    eos_token_id: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct HfRopeParameters {
    rope_theta: Option<f64>,
    rope_type: Option<String>,
}

fn required<T>(value: Option<T>, field: &'static str) -> Result<T, ConfigError> {
    value.ok_or(ConfigError::Field { field, problem: "missing".into() })
}

impl ModelConfig {
    #[allow(clippy::too_many_arguments)]
    fn qwen25(
        name: &str,
        hidden: usize,
        intermediate: usize,
        layers: usize,
        heads: usize,
        kv_heads: usize,
        vocab: usize,
        tied: bool,
        eps: f64,
    ) -> Self {
        ModelConfig {
            name: name.into(),
            hidden_size: hidden,
            intermediate_size: intermediate,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim: hidden / heads,
            vocab_size: vocab,
            tie_word_embeddings: tied,
            rope_theta: 1_000_000.0,
            rms_norm_eps: eps,
            max_position_embeddings: 32768,
            eos_token_ids: vec![151643, 151645],
        }
    }

    /// A named preset with the exact dimensions of the Hugging Face configs.
    ///
    /// The 7B, 14B and 72B checkpoints pad their vocabulary to 152064 rows (their
    /// `config.json` says so); the 0.5B and 1.5B use 151936.
    pub fn preset(name: &str) -> Result<Self, ConfigError> {
        let c = match name {
            // A model small enough to run everywhere, in tests and in `demo`: the
            // byte-level tokenizer of `synth-model` has 256 + 3 tokens.
            "tiny" => ModelConfig {
                name: "tiny".into(),
                hidden_size: 64,
                intermediate_size: 128,
                num_hidden_layers: 2,
                num_attention_heads: 4,
                num_key_value_heads: 2,
                head_dim: 16,
                vocab_size: 320,
                tie_word_embeddings: true,
                rope_theta: 10_000.0,
                rms_norm_eps: 1e-6,
                max_position_embeddings: 2048,
                eos_token_ids: vec![256, 258],
            },
            "qwen2.5-0.5b" => Self::qwen25(name, 896, 4864, 24, 14, 2, 151936, true, 1e-6),
            "qwen2.5-1.5b" => Self::qwen25(name, 1536, 8960, 28, 12, 2, 151936, true, 1e-6),
            "qwen2.5-7b" => Self::qwen25(name, 3584, 18944, 28, 28, 4, 152064, false, 1e-6),
            "qwen2.5-14b" => Self::qwen25(name, 5120, 13824, 48, 40, 8, 152064, false, 1e-5),
            "qwen2.5-72b" => Self::qwen25(name, 8192, 29568, 80, 64, 8, 152064, false, 1e-5),
            other => return Err(ConfigError::UnknownPreset(other.into())),
        };
        c.validate()?;
        Ok(c)
    }

    /// Reads and validates `config.json` from a Hugging Face model directory.
    pub fn from_hf_file(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
        let name = path
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        Self::from_hf_json(&text, &name).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse { path: shown.clone(), message },
            ConfigError::UnsupportedArchitecture { found, .. } => {
                ConfigError::UnsupportedArchitecture { path: shown.clone(), found }
            }
            other => other,
        })
    }

    /// Parses a Hugging Face `Qwen2ForCausalLM` `config.json` text.
    pub fn from_hf_json(text: &str, name: &str) -> Result<Self, ConfigError> {
        let hf: HfConfig = serde_json::from_str(text)
            .map_err(|e| ConfigError::Parse { path: "config.json".into(), message: e.to_string() })?;
        // Declared architectures decide; without them, the model type must be qwen2.
        let arch_ok = match &hf.architectures {
            Some(a) if !a.is_empty() => a.iter().any(|s| s == "Qwen2ForCausalLM"),
            _ => hf.model_type.as_deref() == Some("qwen2"),
        };
        if !arch_ok {
            let found = hf
                .architectures
                .as_ref()
                .map(|a| a.join(","))
                .or(hf.model_type.clone())
                .unwrap_or_else(|| "<none declared>".into());
            return Err(ConfigError::UnsupportedArchitecture { path: "config.json".into(), found });
        }
        if let Some(act) = &hf.hidden_act {
            if act != "silu" {
                return Err(ConfigError::Field {
                    field: "hidden_act",
                    problem: format!("{act:?} is not supported; Qwen2 uses \"silu\""),
                });
            }
        }
        if hf.use_sliding_window == Some(true) {
            return Err(ConfigError::Field {
                field: "use_sliding_window",
                problem: "sliding-window attention is not supported".into(),
            });
        }
        if let Some(p) = &hf.rope_parameters {
            if let Some(t) = &p.rope_type {
                if t != "default" {
                    return Err(ConfigError::Field {
                        field: "rope_parameters.rope_type",
                        problem: format!("{t:?} is not supported; only \"default\" RoPE"),
                    });
                }
            }
        }
        if let Some(s) = &hf.rope_scaling {
            if !s.is_null() {
                return Err(ConfigError::Field {
                    field: "rope_scaling",
                    problem: "RoPE scaling (YaRN and others) is not supported".into(),
                });
            }
        }
        let hidden_size = required(hf.hidden_size, "hidden_size")?;
        let num_attention_heads = required(hf.num_attention_heads, "num_attention_heads")?;
        let rope_theta =
            hf.rope_parameters.as_ref().and_then(|p| p.rope_theta).or(hf.rope_theta).unwrap_or(10_000.0);
        let eos_token_ids = match hf.eos_token_id {
            Some(serde_json::Value::Number(n)) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
            Some(serde_json::Value::Array(a)) => {
                a.iter().filter_map(|v| v.as_u64()).map(|v| v as u32).collect()
            }
            _ => Vec::new(),
        };
        let c = ModelConfig {
            name: name.into(),
            hidden_size,
            intermediate_size: required(hf.intermediate_size, "intermediate_size")?,
            num_hidden_layers: required(hf.num_hidden_layers, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: hf.num_key_value_heads.unwrap_or(num_attention_heads),
            head_dim: hf.head_dim.unwrap_or(hidden_size / num_attention_heads.max(1)),
            vocab_size: required(hf.vocab_size, "vocab_size")?,
            tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(false),
            rope_theta,
            rms_norm_eps: hf.rms_norm_eps.unwrap_or(1e-6),
            max_position_embeddings: hf.max_position_embeddings.unwrap_or(32768),
            eos_token_ids,
        };
        c.validate()?;
        Ok(c)
    }

    /// Serializes to a Hugging Face `config.json` that [`ModelConfig::from_hf_json`] and
    /// transformers both read.
    pub fn to_hf_json(&self) -> String {
        let v = serde_json::json!({
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "tie_word_embeddings": self.tie_word_embeddings,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "eos_token_id": self.eos_token_ids,
            "use_sliding_window": false,
            "torch_dtype": "bfloat16",
        });
        serde_json::to_string_pretty(&v).expect("a JSON value always serializes")
    }

    /// Checks internal consistency; errors name the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive: [(&'static str, usize); 7] = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(ConfigError::Field { field, problem: "must be positive".into() });
            }
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return Err(ConfigError::Field {
                field: "num_key_value_heads",
                problem: format!(
                    "{} does not divide num_attention_heads = {}",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            });
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(ConfigError::Field {
                field: "head_dim",
                problem: format!("{} is odd; rotary embeddings need an even head_dim", self.head_dim),
            });
        }
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            return Err(ConfigError::Field { field: "rope_theta", problem: "must be positive".into() });
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps < 1.0) {
            return Err(ConfigError::Field { field: "rms_norm_eps", problem: "must be in (0, 1)".into() });
        }
        if self.vocab_size > u32::MAX as usize {
            return Err(ConfigError::Field { field: "vocab_size", problem: "exceeds u32".into() });
        }
        Ok(())
    }

    /// Width of the query projection output.
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    /// Width of each of the key and value projection outputs.
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    /// Number of parameters (embedding, layers, final norm, untied head).
    pub fn parameter_count(&self) -> usize {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let attn =
            h * self.q_dim() + self.q_dim() + 2 * (h * self.kv_dim() + self.kv_dim()) + self.q_dim() * h;
        let layer = attn + 3 * h * i + 2 * h;
        let head = if self.tie_word_embeddings { 0 } else { self.vocab_size * h };
        self.vocab_size * h + self.num_hidden_layers * layer + h + head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate_and_have_hf_shapes() {
        for name in PRESET_NAMES {
            let c = ModelConfig::preset(name).unwrap();
            assert_eq!(c.num_attention_heads * c.head_dim, c.hidden_size, "{name}");
        }
        let c = ModelConfig::preset("qwen2.5-0.5b").unwrap();
        // 494M parameters as published.
        assert_eq!(c.parameter_count(), 494_032_768);
        let c = ModelConfig::preset("qwen2.5-1.5b").unwrap();
        assert_eq!(c.parameter_count(), 1_543_714_304);
        assert!(matches!(ModelConfig::preset("gpt2"), Err(ConfigError::UnknownPreset(_))));
    }

    #[test]
    fn hf_json_round_trips() {
        for name in PRESET_NAMES {
            let c = ModelConfig::preset(name).unwrap();
            let back = ModelConfig::from_hf_json(&c.to_hf_json(), name).unwrap();
            assert_eq!(c, back);
        }
    }

    #[test]
    fn parses_the_oracle_config() {
        let text = r#"{"architectures":["Qwen2ForCausalLM"],"vocab_size":151936,"hidden_size":64,
            "intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,
            "hidden_act":"silu","rms_norm_eps":1e-06,"tie_word_embeddings":true,
            "rope_parameters":{"rope_theta":1000000.0,"rope_type":"default"},"use_sliding_window":false,
            "eos_token_id":null,"model_type":"qwen2"}"#;
        let c = ModelConfig::from_hf_json(text, "tiny-qwen2").unwrap();
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.rope_theta, 1e6);
        assert!(c.tie_word_embeddings);
    }

    #[test]
    fn errors_name_the_field() {
        let e = ModelConfig::from_hf_json(r#"{"architectures":["LlamaForCausalLM"]}"#, "x").unwrap_err();
        assert!(e.to_string().contains("LlamaForCausalLM"), "{e}");
        let e = ModelConfig::from_hf_json(r#"{"model_type":"qwen2","hidden_size":64}"#, "x").unwrap_err();
        assert!(e.to_string().contains("num_attention_heads"), "{e}");
        let e = ModelConfig::from_hf_json(
            r#"{"model_type":"qwen2","hidden_size":64,"num_attention_heads":4,"num_key_value_heads":3,
               "intermediate_size":8,"num_hidden_layers":1,"vocab_size":10}"#,
            "x",
        )
        .unwrap_err();
        assert!(e.to_string().contains("num_key_value_heads"), "{e}");
    }
}
