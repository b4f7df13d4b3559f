//! Qwen2 model shapes: presets and Hugging Face `config.json` parsing.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// Largest `num_hidden_layers` accepted (the largest Qwen2 has 80).
pub const MAX_LAYERS: usize = 1024;
/// Largest `hidden_size`, `intermediate_size`, and query or key/value width
/// (`heads x head_dim`) accepted: 2^20 (the largest Qwen2 is 8192 wide, MLP 29568).
pub const MAX_WIDTH: usize = 1 << 20;
/// Largest `vocab_size` accepted: 2^22 (Qwen2 has 152064 rows).
pub const MAX_VOCAB: usize = 1 << 22;
/// Largest `max_position_embeddings` accepted: 2^24 (Qwen2 has 32768 or 131072).
pub const MAX_POSITIONS: usize = 1 << 24;
/// Largest number of parameters a config may imply: 2^40 elements (Qwen2.5-72B has
/// 7.3 x 10^10), so that every tensor and the whole model are sized in `u64` without
/// overflow and a config alone cannot ask for an absurd allocation.
pub const MAX_PARAMETERS: u64 = 1 << 40;

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

/// One `eos_token_id` entry: a token id, which fits `u32` (it used to be truncated).
fn eos_token_id(v: &serde_json::Value) -> Result<u32, ConfigError> {
    v.as_u64().and_then(|id| u32::try_from(id).ok()).ok_or_else(|| ConfigError::Field {
        field: "eos_token_id",
        problem: format!("{v} is not a token id (an integer from 0 to {}), nor a list of them", u32::MAX),
    })
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
        let eos_token_ids = match &hf.eos_token_id {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Array(a)) => a.iter().map(eos_token_id).collect::<Result<_, _>>()?,
            Some(v) => vec![eos_token_id(v)?],
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
        self.check_sizes()?;
        if self.max_position_embeddings == 0 {
            return Err(ConfigError::Field {
                field: "max_position_embeddings",
                problem: "must be positive".into(),
            });
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(ConfigError::Field {
                field: "num_attention_heads",
                problem: format!(
                    "{} does not divide hidden_size = {}",
                    self.num_attention_heads, self.hidden_size
                ),
            });
        }
        for (field, heads) in [
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
        ] {
            if heads.checked_mul(self.head_dim).is_none_or(|width| width > MAX_WIDTH) {
                let head_dim = self.head_dim;
                return Err(ConfigError::Field {
                    field,
                    problem: format!(
                        "{heads} heads of head_dim {head_dim} are wider than the supported maximum of {MAX_WIDTH}"
                    ),
                });
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
        self.check_parameter_count()
    }

    /// Every size positive and within what this build supports, before anything is
    /// multiplied.
    fn check_sizes(&self) -> Result<(), ConfigError> {
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
        let bounded: [(&'static str, usize, usize); 5] = [
            ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
            ("hidden_size", self.hidden_size, MAX_WIDTH),
            ("intermediate_size", self.intermediate_size, MAX_WIDTH),
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("max_position_embeddings", self.max_position_embeddings, MAX_POSITIONS),
        ];
        for (field, v, max) in bounded {
            if v > max {
                return Err(ConfigError::Field {
                    field,
                    problem: format!("{v} is above the supported maximum of {max}"),
                });
            }
        }
        Ok(())
    }

    /// The parameter count within the supported maximum.
    fn check_parameter_count(&self) -> Result<(), ConfigError> {
        // Every width is now at most 2^22, so each product below fits u64; the sum is
        // checked anyway.
        match self.parameter_count_u64() {
            Some(n) if n <= MAX_PARAMETERS => {}
            n => {
                return Err(ConfigError::Field {
                    field: "num_hidden_layers",
                    problem: format!(
                        "{} layers of hidden_size {}, intermediate_size {} and vocab_size {} make {} \
                         parameters, above the supported maximum of {MAX_PARAMETERS}",
                        self.num_hidden_layers,
                        self.hidden_size,
                        self.intermediate_size,
                        self.vocab_size,
                        n.map_or("more than 2^64".to_string(), |n| n.to_string())
                    ),
                })
            }
        }
        Ok(())
    }

    /// [`ModelConfig::parameter_count`] in checked `u64` arithmetic; `None` on overflow.
    fn parameter_count_u64(&self) -> Option<u64> {
        let u = |v: usize| u64::try_from(v).ok();
        let (h, i, v) = (u(self.hidden_size)?, u(self.intermediate_size)?, u(self.vocab_size)?);
        let q = u(self.num_attention_heads)?.checked_mul(u(self.head_dim)?)?;
        let kv = u(self.num_key_value_heads)?.checked_mul(u(self.head_dim)?)?;
        let attn = h
            .checked_mul(q)?
            .checked_add(q)?
            .checked_add(h.checked_mul(kv)?.checked_add(kv)?.checked_mul(2)?)?
            .checked_add(q.checked_mul(h)?)?;
        let layer = attn.checked_add(h.checked_mul(i)?.checked_mul(3)?)?.checked_add(h.checked_mul(2)?)?;
        let embed = v.checked_mul(h)?;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed.checked_add(u(self.num_hidden_layers)?.checked_mul(layer)?)?.checked_add(h)?.checked_add(head)
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

    fn tiny_with(field: &str, value: serde_json::Value) -> Result<ModelConfig, ConfigError> {
        let mut v: serde_json::Value =
            serde_json::from_str(&ModelConfig::preset("tiny").unwrap().to_hf_json()).unwrap();
        v[field] = value;
        ModelConfig::from_hf_json(&v.to_string(), "tiny")
    }

    /// Issue 14's reproducer: `num_hidden_layers = 2^40` made serve, generate and the
    /// dealer abort on allocation; it is now a config error naming the field and bound.
    #[test]
    fn layers_of_2_pow_40_is_a_clear_error() {
        let e = tiny_with("num_hidden_layers", (1u64 << 40).into()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "model config field `num_hidden_layers`: 1099511627776 is above the supported maximum of 1024"
        );
    }

    #[test]
    fn sizes_are_bounded_and_errors_name_the_field_and_bound() {
        for (field, value, needle) in [
            ("hidden_size", 1u64 << 21, "`hidden_size`: 2097152 is above the supported maximum of 1048576"),
            (
                "intermediate_size",
                1 << 40,
                "`intermediate_size`: 1099511627776 is above the supported maximum",
            ),
            ("vocab_size", 1 << 23, "`vocab_size`: 8388608 is above the supported maximum of 4194304"),
            ("max_position_embeddings", 1 << 63, "`max_position_embeddings`: 9223372036854775808 is above"),
            ("max_position_embeddings", 0, "`max_position_embeddings`: must be positive"),
            ("num_attention_heads", 3, "`num_attention_heads`: 3 does not divide hidden_size = 64"),
            ("head_dim", 1 << 40, "`num_attention_heads`: 4 heads of head_dim 1099511627776 are wider"),
            ("head_dim", 15, "`head_dim`: 15 is odd"),
            ("eos_token_id", 1 << 32, "`eos_token_id`: 4294967296 is not a token id"),
        ] {
            let e = tiny_with(field, value.into()).unwrap_err().to_string();
            assert!(e.contains(needle), "{field}={value}: {e}");
        }
        let e = tiny_with("eos_token_id", serde_json::json!([256, -1])).unwrap_err().to_string();
        assert!(e.contains("`eos_token_id`: -1 is not a token id"), "{e}");
        assert_eq!(
            tiny_with("eos_token_id", serde_json::json!(null)).unwrap().eos_token_ids,
            Vec::<u32>::new()
        );
        // Each width within its bound, but together above 2^40 parameters.
        let mut c = ModelConfig::preset("tiny").unwrap();
        (c.hidden_size, c.intermediate_size, c.head_dim, c.num_hidden_layers) =
            (1 << 20, 1 << 20, 1 << 18, 1024);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("above the supported maximum of 1099511627776"), "{e}");
        // Every preset is within the bounds.
        for name in PRESET_NAMES {
            ModelConfig::preset(name).unwrap();
        }
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
