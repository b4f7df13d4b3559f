//! Loading a Hugging Face Qwen2 checkpoint directory.
//!
//! A directory holds `config.json` (`Qwen2ForCausalLM`), the weights as one
//! `model.safetensors` or as shards listed in `model.safetensors.index.json`, and
//! `tokenizer.json`. Weight files are memory-mapped; `bf16`, `f16` and `f32` tensors are
//! converted to `f32` once at load, and q/k/v and gate/up are fused into one matrix each
//! (the request units of every variant). Every error names the file and what to do.

use super::weights::{LayerWeights, Weights};
use configs::ModelConfig;
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};
use shardlm_configs as configs;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Why a model directory could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A hub id (`org/name`) given for a model directory is not in the local hub cache.
    #[error("{id}: not in the local Hugging Face hub cache ({cache}); {detail}")]
    NotInHubCache {
        /// The id.
        id: String,
        /// The cache directory searched.
        cache: PathBuf,
        /// What went wrong and what to do.
        detail: String,
    },
    /// The directory or a required file is missing.
    #[error("{path}: {what} not found; {hint}")]
    Missing {
        /// The missing path.
        path: PathBuf,
        /// What it should have held.
        what: &'static str,
        /// What to do.
        hint: &'static str,
    },
    /// `config.json` is invalid or describes an unsupported model.
    #[error("{path}: {source}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// The problem.
        source: configs::ConfigError,
    },
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A safetensors file is malformed or truncated.
    #[error("{path}: not a valid safetensors file ({detail}); re-download or re-convert the checkpoint")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        detail: String,
    },
    /// The shard index is malformed.
    #[error("{path}: invalid shard index ({detail})")]
    Index {
        /// The index file.
        path: PathBuf,
        /// The problem.
        detail: String,
    },
    /// A tensor the architecture needs is absent.
    #[error("{path}: tensor `{name}` is missing; is this a Qwen2 checkpoint?")]
    MissingTensor {
        /// Where it was looked for.
        path: PathBuf,
        /// The tensor name.
        name: String,
    },
    /// A tensor has the wrong shape for the config.
    #[error("{path}: tensor `{name}` has shape {found:?}, config.json implies {expected:?}")]
    Shape {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// Shape from the config.
        expected: Vec<usize>,
        /// Shape in the file.
        found: Vec<usize>,
    },
    /// A tensor belongs to a decoder layer that `config.json` does not have.
    #[error("{path}: tensor `{name}` belongs to a layer beyond the {layers} of config.json; the config and the weights disagree")]
    ExtraLayer {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// `num_hidden_layers` of the config.
        layers: usize,
    },
    /// A tensor is stored in a dtype the engine does not read.
    #[error("{path}: tensor `{name}` has dtype {dtype}; supported are BF16, F16 and F32")]
    Dtype {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// The dtype found.
        dtype: String,
    },
}

/// An opened model directory: config plus the paths of its files.
#[derive(Clone, Debug)]
pub struct ModelDir {
    /// The directory.
    pub dir: PathBuf,
    /// The parsed and validated config.
    pub config: ModelConfig,
    /// `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// The weight files, in a fixed order.
    pub weight_files: Vec<PathBuf>,
    /// Which file holds each tensor.
    weight_map: BTreeMap<String, PathBuf>,
}

impl ModelDir {
    /// Opens the snapshot of hub id `id` (`org/name`) from the local Hugging Face hub
    /// cache ([`crate::hub_cache`]); never downloads.
    pub fn open_hub_id(id: &str) -> Result<Self, LoadError> {
        let cache = crate::hub_cache::cache_dir();
        let not_there =
            |detail: String| LoadError::NotInHubCache { id: id.into(), cache: cache.clone(), detail };
        match crate::hub_cache::resolve_in(&cache, id, None) {
            Ok(Some(dir)) => Self::open(&dir),
            Ok(None) => Err(not_there(format!(
                "fetch it with `shardlm-client fetch-model {id}`, or pass the model's directory"
            ))),
            Err(e) => Err(not_there(e.to_string())),
        }
    }

    /// Opens `dir`: parses `config.json`, finds the weight files and the tokenizer.
    /// Reads no weights yet. A hub id (`org/name`) that is not a path opens its
    /// snapshot in the local hub cache ([`ModelDir::open_hub_id`]).
    pub fn open(dir: &Path) -> Result<Self, LoadError> {
        if !dir.exists() {
            if let Some(id) = dir.to_str().filter(|s| crate::hub_cache::looks_like_hub_id(s)) {
                return Self::open_hub_id(id);
            }
        }
        if !dir.is_dir() {
            return Err(LoadError::Missing {
                path: dir.to_path_buf(),
                what: "model directory",
                hint: "pass --model-dir with a Hugging Face Qwen2 checkpoint, or make one with `shardlm-server synth-model`",
            });
        }
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(LoadError::Missing {
                path: config_path,
                what: "config.json",
                hint: "a Hugging Face model directory needs config.json next to the weights",
            });
        }
        let name = dir.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let text = std::fs::read_to_string(&config_path)
            .map_err(|source| LoadError::Io { path: config_path.clone(), source })?;
        let config = ModelConfig::from_hf_json(&text, &name)
            .map_err(|source| LoadError::Config { path: config_path.clone(), source })?;

        let tokenizer = dir.join("tokenizer.json");
        if !tokenizer.is_file() {
            return Err(LoadError::Missing {
                path: tokenizer,
                what: "tokenizer.json",
                hint: "copy the checkpoint's tokenizer.json into the model directory",
            });
        }

        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let (weight_files, weight_map) = if single.is_file() {
            (vec![single.clone()], BTreeMap::new())
        } else if index.is_file() {
            read_index(dir, &index)?
        } else {
            return Err(LoadError::Missing {
                path: single,
                what: "weights (model.safetensors or model.safetensors.index.json)",
                hint: "a Hugging Face model directory needs its safetensors weights",
            });
        };
        Ok(Self { dir: dir.to_path_buf(), config, tokenizer, weight_files, weight_map })
    }

    /// Loads every weight the forward pass uses, as `f32`, checking each shape.
    pub fn load_weights(&self) -> Result<Weights, LoadError> {
        let maps = self
            .weight_files
            .iter()
            .map(|p| map_file(p).map(|m| (p.clone(), m)))
            .collect::<Result<Vec<_>, _>>()?;
        let parsed = maps
            .iter()
            .map(|(p, m)| {
                SafeTensors::deserialize(m)
                    .map(|st| (p.clone(), st))
                    .map_err(|e| LoadError::Safetensors { path: p.clone(), detail: e.to_string() })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let reader = Reader { dir: self, files: &parsed };
        let c = &self.config;
        // Weights of more layers than the config has: loading the first ones only would
        // silently run another model than the checkpoint's.
        for (path, st) in &parsed {
            for name in st.names() {
                let layer = name
                    .strip_prefix("model.layers.")
                    .and_then(|rest| rest.split('.').next())
                    .and_then(|l| l.parse::<usize>().ok());
                if layer.is_some_and(|l| l >= c.num_hidden_layers) {
                    return Err(LoadError::ExtraLayer {
                        path: path.clone(),
                        name: name.clone(),
                        layers: c.num_hidden_layers,
                    });
                }
            }
        }
        let (h, q, kv, inter) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);

        let embed = reader.get("model.embed_tokens.weight", &[c.vocab_size, h])?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let qw = reader.get(&format!("{p}.self_attn.q_proj.weight"), &[q, h])?;
            let kw = reader.get(&format!("{p}.self_attn.k_proj.weight"), &[kv, h])?;
            let vw = reader.get(&format!("{p}.self_attn.v_proj.weight"), &[kv, h])?;
            let qb = reader.get(&format!("{p}.self_attn.q_proj.bias"), &[q])?;
            let kb = reader.get(&format!("{p}.self_attn.k_proj.bias"), &[kv])?;
            let vb = reader.get(&format!("{p}.self_attn.v_proj.bias"), &[kv])?;
            let gw = reader.get(&format!("{p}.mlp.gate_proj.weight"), &[inter, h])?;
            let uw = reader.get(&format!("{p}.mlp.up_proj.weight"), &[inter, h])?;
            layers.push(LayerWeights {
                input_norm: reader.get(&format!("{p}.input_layernorm.weight"), &[h])?,
                qkv_w: [qw, kw, vw].concat(),
                qkv_b: [qb, kb, vb].concat(),
                o_w: reader.get(&format!("{p}.self_attn.o_proj.weight"), &[h, q])?,
                post_norm: reader.get(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                gate_up_w: [gw, uw].concat(),
                down_w: reader.get(&format!("{p}.mlp.down_proj.weight"), &[h, inter])?,
            });
        }
        let final_norm = reader.get("model.norm.weight", &[h])?;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(reader.get("lm_head.weight", &[c.vocab_size, h])?)
        };
        Weights::new(c.clone(), embed, layers, final_norm, lm_head)
            .map_err(|detail| LoadError::Index { path: self.dir.clone(), detail })
    }
}

struct Reader<'a> {
    dir: &'a ModelDir,
    files: &'a [(PathBuf, SafeTensors<'a>)],
}

impl Reader<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, LoadError> {
        let (path, st) = match self.dir.weight_map.get(name) {
            Some(file) => self
                .files
                .iter()
                .find(|(p, _)| p == file)
                .ok_or_else(|| LoadError::MissingTensor { path: file.clone(), name: name.to_string() })?,
            None if self.dir.weight_map.is_empty() => &self.files[0],
            None => {
                return Err(LoadError::MissingTensor {
                    path: self.dir.dir.join("model.safetensors.index.json"),
                    name: name.to_string(),
                })
            }
        };
        let view = st
            .tensor(name)
            .map_err(|_| LoadError::MissingTensor { path: path.clone(), name: name.to_string() })?;
        if view.shape() != shape {
            return Err(LoadError::Shape {
                path: path.clone(),
                name: name.to_string(),
                expected: shape.to_vec(),
                found: view.shape().to_vec(),
            });
        }
        let data = view.data();
        let out = match view.dtype() {
            Dtype::BF16 => convert(data, 2, |b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
            Dtype::F16 => convert(data, 2, |b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
            Dtype::F32 => convert(data, 4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            other => {
                return Err(LoadError::Dtype {
                    path: path.clone(),
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        Ok(out)
    }
}

fn convert(data: &[u8], width: usize, f: impl Fn(&[u8]) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0.0f32; data.len() / width];
    out.par_chunks_mut(1 << 16).enumerate().for_each(|(c, chunk)| {
        let base = c * (1 << 16);
        for (i, o) in chunk.iter_mut().enumerate() {
            let at = (base + i) * width;
            *o = f(&data[at..at + width]);
        }
    });
    out
}

/// Memory-maps a weight file read-only.
#[allow(unsafe_code)]
fn map_file(path: &Path) -> Result<memmap2::Mmap, LoadError> {
    let file =
        std::fs::File::open(path).map_err(|source| LoadError::Io { path: path.to_path_buf(), source })?;
    // SAFETY: the map is read-only and private to this process; checkpoints are not
    // modified while a party runs (a concurrent truncation would be a deployment error
    // that can at worst fault, never corrupt memory we write). The map lives only until
    // the tensors are converted to owned f32 vectors in `load_weights`.
    unsafe { memmap2::Mmap::map(&file) }.map_err(|source| LoadError::Io { path: path.to_path_buf(), source })
}

/// The shards and the tensor-to-shard map of a sharded checkpoint's
/// `model.safetensors.index.json`; every shard must be a plain file name in `dir`.
fn read_index(dir: &Path, index: &Path) -> Result<(Vec<PathBuf>, BTreeMap<String, PathBuf>), LoadError> {
    let text = std::fs::read_to_string(index)
        .map_err(|source| LoadError::Io { path: index.to_path_buf(), source })?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| LoadError::Index { path: index.to_path_buf(), detail: e.to_string() })?;
    let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| LoadError::Index {
        path: index.to_path_buf(),
        detail: "no `weight_map` object".into(),
    })?;
    let mut weight_map = BTreeMap::new();
    let mut files = Vec::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| LoadError::Index {
            path: index.to_path_buf(),
            detail: format!("weight_map[{tensor}] is not a file name"),
        })?;
        if file.contains('/') || file.contains("..") {
            return Err(LoadError::Index {
                path: index.to_path_buf(),
                detail: format!("shard name `{file}` is not a plain file name"),
            });
        }
        let path = dir.join(file);
        if !files.contains(&path) {
            if !path.is_file() {
                return Err(LoadError::Missing {
                    path,
                    what: "weight shard named in model.safetensors.index.json",
                    hint: "the download is incomplete; fetch every shard",
                });
            }
            files.push(path.clone());
        }
        weight_map.insert(tensor.clone(), path);
    }
    files.sort();
    Ok((files, weight_map))
}
