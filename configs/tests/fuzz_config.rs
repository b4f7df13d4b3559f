//! Fuzz/property campaign over `config.json` parsing (issue 14): random JSON objects,
//! mutated real configs (the vendored tiny-bytes and Qwen2.5-Coder-0.5B ones), extreme
//! numbers, and text-level damage. The default suite runs a short seeded campaign;
//! `SHARDLM_LONG_TESTS=1` runs 10^6 cases:
//!
//! ```text
//! SHARDLM_LONG_TESTS=1 cargo test --release -p shardlm-configs --test fuzz_config -- --nocapture
//! ```
//!
//! Every case ends in a config within the loading bounds or a typed [`ConfigError`].

#[path = "../../testdata/testkit/src/campaign.rs"]
mod campaign;

use campaign::{CaseResult, Outcome, PeakAlloc};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Map, Value};
use shardlm_configs::{
    ConfigError, ModelConfig, MAX_LAYERS, MAX_PARAMETERS, MAX_POSITIONS, MAX_VOCAB, MAX_WIDTH,
};

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

const REAL_CONFIGS: [&str; 2] = [
    include_str!("../../testdata/tiny-bytes/config.json"),
    include_str!("../../testdata/qwen2.5-coder-0.5b-instruct/config.json"),
];

const FIELDS: &[&str] = &[
    "architectures",
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "tie_word_embeddings",
    "rope_theta",
    "rope_parameters",
    "rope_scaling",
    "rms_norm_eps",
    "max_position_embeddings",
    "hidden_act",
    "use_sliding_window",
    "eos_token_id",
];

fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    if n == 0 {
        0
    } else {
        rng.next_u64() % n
    }
}

fn extreme_number(rng: &mut ChaCha8Rng) -> Value {
    match below(rng, 16) {
        0 => json!(0),
        1 => json!(1),
        2 => json!(2),
        3 => json!(1u64 << 31),
        4 => json!(1u64 << 32),
        5 => json!(1u64 << 40),
        6 => json!(1u64 << 63),
        7 => json!(u64::MAX),
        8 => json!(-1),
        9 => json!(i64::MIN),
        10 => json!(1.5),
        11 => json!(1e300),
        12 => json!(-0.0),
        13 => json!(f64::MIN_POSITIVE),
        14 => json!(1u64 << below(rng, 64)),
        _ => json!(below(rng, 5000)),
    }
}

fn random_value(rng: &mut ChaCha8Rng, depth: u32) -> Value {
    match below(rng, if depth > 2 { 6 } else { 9 }) {
        0..=2 => extreme_number(rng),
        3 => Value::Null,
        4 => json!(below(rng, 2) == 0),
        5 => json!(
            ["Qwen2ForCausalLM", "qwen2", "silu", "default", "LlamaForCausalLM", "", "64"]
                [below(rng, 7) as usize]
        ),
        6 => Value::Array((0..below(rng, 4)).map(|_| random_value(rng, depth + 1)).collect()),
        7 => {
            let mut m = Map::new();
            for _ in 0..below(rng, 4) {
                let k = ["rope_theta", "rope_type", "factor", "x"][below(rng, 4) as usize];
                m.insert(k.into(), random_value(rng, depth + 1));
            }
            Value::Object(m)
        }
        _ => json!(FIELDS[below(rng, FIELDS.len() as u64) as usize]),
    }
}

/// A config that should load: shapes drawn within the bounds.
fn plausible(rng: &mut ChaCha8Rng) -> Value {
    let head_dim = 2 * (1 + below(rng, 64));
    let kv = 1 + below(rng, 4);
    let heads = kv * (1 + below(rng, 8));
    json!({
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_act": "silu",
        "hidden_size": heads * head_dim,
        "intermediate_size": 1 + below(rng, 5000),
        "num_hidden_layers": 1 + below(rng, 64),
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "vocab_size": 1 + below(rng, 200_000),
        "tie_word_embeddings": below(rng, 2) == 0,
        "rope_theta": 10_000.0,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 1 + below(rng, 1 << 17),
        "eos_token_id": [below(rng, 1000), below(rng, 1000)],
    })
}

/// Changes 1 to 4 fields of a config object.
fn mutate_object(rng: &mut ChaCha8Rng, v: &mut Value) {
    let Value::Object(obj) = v else { return };
    for _ in 0..1 + below(rng, 4) {
        let key = if below(rng, 10) == 0 {
            let keys: Vec<String> = obj.keys().cloned().collect();
            if keys.is_empty() {
                continue;
            }
            keys[below(rng, keys.len() as u64) as usize].clone()
        } else {
            FIELDS[below(rng, FIELDS.len() as u64) as usize].to_string()
        };
        match below(rng, 8) {
            0 => {
                obj.remove(&key);
            }
            1..=3 => {
                obj.insert(key, extreme_number(rng));
            }
            4 => {
                // Scale a real number: off by one, doubled, halved.
                if let Some(n) = obj.get(&key).and_then(Value::as_u64) {
                    let m = match below(rng, 4) {
                        0 => n + 1,
                        1 => n.saturating_mul(2),
                        2 => n / 2,
                        _ => n.saturating_sub(1),
                    };
                    obj.insert(key, json!(m));
                }
            }
            _ => {
                obj.insert(key, random_value(rng, 0));
            }
        }
    }
}

/// Damages JSON text: flips, truncation, insertion.
fn mutate_text(rng: &mut ChaCha8Rng, text: &mut Vec<u8>) {
    for _ in 0..1 + below(rng, 3) {
        let at = below(rng, text.len() as u64) as usize;
        match below(rng, 4) {
            0 if !text.is_empty() => text[at] ^= 1 << below(rng, 8),
            1 => text.truncate(at),
            2 => {
                let junk = [b'{', b'}', b'[', b']', b'"', b',', b':', b'-', b'9', b'e', b'\\', 0xff]
                    [below(rng, 12) as usize];
                text.insert(at, junk);
            }
            _ => {
                let end = (at + 1 + below(rng, 16) as usize).min(text.len());
                text.drain(at.min(end)..end);
            }
        }
    }
}

/// The loading bounds, restated independently of `validate`.
fn check_bounds(c: &ModelConfig) -> Result<(), String> {
    let ok = (1..=MAX_LAYERS).contains(&c.num_hidden_layers)
        && (1..=MAX_WIDTH).contains(&c.hidden_size)
        && (1..=MAX_WIDTH).contains(&c.intermediate_size)
        && (1..=MAX_VOCAB).contains(&c.vocab_size)
        && (1..=MAX_POSITIONS).contains(&c.max_position_embeddings)
        && c.num_attention_heads >= 1
        && c.num_key_value_heads >= 1
        && c.hidden_size.is_multiple_of(c.num_attention_heads)
        && c.num_attention_heads.is_multiple_of(c.num_key_value_heads)
        && c.head_dim >= 2
        && c.head_dim.is_multiple_of(2)
        && c.num_attention_heads.checked_mul(c.head_dim).is_some_and(|w| w <= MAX_WIDTH)
        && c.num_key_value_heads.checked_mul(c.head_dim).is_some_and(|w| w <= MAX_WIDTH)
        && c.rope_theta.is_finite()
        && c.rope_theta > 0.0
        && c.rms_norm_eps > 0.0
        && c.rms_norm_eps < 1.0;
    if !ok {
        return Err(format!("accepted a config outside the bounds: {c:?}"));
    }
    // With the widths bounded, these products fit u128 trivially.
    let (h, i, v) = (c.hidden_size as u128, c.intermediate_size as u128, c.vocab_size as u128);
    let (q, kv) = (c.q_dim() as u128, c.kv_dim() as u128);
    let layer = h * q + q + 2 * (h * kv + kv) + q * h + 3 * h * i + 2 * h;
    let total = v * h * if c.tie_word_embeddings { 1 } else { 2 } + c.num_hidden_layers as u128 * layer + h;
    if total > u128::from(MAX_PARAMETERS) {
        return Err(format!("accepted {total} parameters: {c:?}"));
    }
    if c.parameter_count() as u128 != total {
        return Err(format!("parameter_count {} != {total}", c.parameter_count()));
    }
    Ok(())
}

fn rejection(e: &ConfigError) -> Result<String, String> {
    let shown = e.to_string();
    Ok(match e {
        ConfigError::Parse { message, .. } => {
            // "invalid type: string \"x\", expected usize at line 1 column 9" groups as
            // "invalid type, expected usize"; values and positions are dropped.
            let message = message.split(" at line ").next().unwrap_or("");
            let head = message.split([':', '`', '"', '(', ',']).next().unwrap_or("").trim();
            let head = campaign::kind(head);
            let expected = message.rsplit_once(", expected ").map(|(_, e)| e).unwrap_or("");
            let expected: String = expected.chars().take(40).collect();
            format!("parse: {head}{}{expected}", if expected.is_empty() { "" } else { ", expected " })
        }
        ConfigError::UnsupportedArchitecture { .. } => "unsupported architecture".into(),
        ConfigError::Field { field, problem } => {
            if !shown.contains(field) {
                return Err(format!("error does not name its field: {shown}"));
            }
            let what = [
                ("maximum", "above maximum"),
                ("positive", "not positive"),
                ("divide", "does not divide"),
                ("missing", "missing"),
                ("not a token id", "not a token id"),
                ("not supported", "unsupported value"),
                ("is odd", "odd"),
                ("must be in", "out of range"),
            ]
            .iter()
            .find(|(needle, _)| problem.contains(needle))
            .map_or_else(|| campaign::kind(problem), |(_, what)| what.to_string());
            format!("field {field}: {what}")
        }
        other => return Err(format!("unexpected error kind: {other:?}")),
    })
}

fn config_case(i: u64) -> CaseResult {
    let mut rng = ChaCha8Rng::seed_from_u64(0xC0F1_6000 ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let text: Vec<u8> = match below(&mut rng, 10) {
        0..=3 => {
            let mut v: Value =
                serde_json::from_str(REAL_CONFIGS[below(&mut rng, 2) as usize]).expect("vendored JSON");
            mutate_object(&mut rng, &mut v);
            v.to_string().into_bytes()
        }
        4 => {
            let mut t = REAL_CONFIGS[below(&mut rng, 2) as usize].as_bytes().to_vec();
            mutate_text(&mut rng, &mut t);
            t
        }
        5 | 6 => {
            let mut v = plausible(&mut rng);
            if below(&mut rng, 2) == 0 {
                mutate_object(&mut rng, &mut v);
            }
            v.to_string().into_bytes()
        }
        7 => {
            let mut m = Map::new();
            for _ in 0..below(&mut rng, 20) {
                m.insert(
                    FIELDS[below(&mut rng, FIELDS.len() as u64) as usize].into(),
                    random_value(&mut rng, 0),
                );
            }
            Value::Object(m).to_string().into_bytes()
        }
        8 => random_value(&mut rng, 0).to_string().into_bytes(),
        _ => REAL_CONFIGS[below(&mut rng, 2) as usize].as_bytes().to_vec(),
    };
    // from_hf_json takes text; damaged UTF-8 is the caller's (a Read error) to report.
    let text = String::from_utf8_lossy(&text);
    campaign::reset_peak();
    let result = ModelConfig::from_hf_json(&text, "fuzz");
    let peak = campaign::peak();
    if peak > 4 * text.len() + (64 << 10) {
        return Err(format!("parsing {} bytes allocated {peak}", text.len()));
    }
    match result {
        Ok(c) => {
            check_bounds(&c)?;
            let mut back =
                ModelConfig::from_hf_json(&c.to_hf_json(), "fuzz").map_err(|e| format!("round trip: {e}"))?;
            // serde_json's default float parser (without `float_roundtrip`) may land one
            // ulp off the nearest double (e.g. "1e-86" reads as 9.999999999999999e-87,
            // which prints and reads back as 1e-86); allow exactly that.
            let one_ulp = |a: f64, b: f64| a.to_bits().abs_diff(b.to_bits()) <= 1;
            if one_ulp(back.rms_norm_eps, c.rms_norm_eps) && one_ulp(back.rope_theta, c.rope_theta) {
                (back.rms_norm_eps, back.rope_theta) = (c.rms_norm_eps, c.rope_theta);
            }
            if back != c {
                return Err(format!("round trip changed {c:?} into {back:?}"));
            }
            Ok(Outcome::Accepted)
        }
        Err(e) => Ok(Outcome::Rejected(rejection(&e)?)),
    }
}

/// >= 10^6 configs in the long run.
#[test]
fn config_json_campaign() {
    campaign::run("config-json", campaign::cases(20_000, 1_000_000), config_case);
}

/// The vendored configs still load.
#[test]
fn real_configs_load() {
    for text in REAL_CONFIGS {
        let c = ModelConfig::from_hf_json(text, "real").unwrap();
        check_bounds(&c).unwrap();
    }
}
