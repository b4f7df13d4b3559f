//! `shardlm-client` as a user runs it, on synthesized and oracle models: local
//! generation and eval work, and every bad input gives a one-line error that names the
//! file and the problem, a non-zero exit, and no panic.

use shardlm_configs::ModelConfig;
use shardlm_model::synth::write_synthetic_model;
use shardlm_testkit::fixtures;
use std::path::Path;
use std::process::Command;

fn client() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shardlm-client"))
}

fn tiny_model(dir: &Path) {
    write_synthetic_model(&ModelConfig::preset("tiny").unwrap(), dir, 3).unwrap();
}

/// Runs and expects failure; returns stderr. Checks the error is one line, names
/// `must_name`, and nothing panicked.
fn fails(cmd: &mut Command, must_name: &[&str]) -> String {
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "expected failure, stderr: {err}");
    assert!(!err.contains("panicked"), "panicked: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(lines.len(), 1, "want exactly one error line, got: {err}");
    for s in must_name {
        assert!(lines[0].contains(s), "error should mention `{s}`: {err}");
    }
    err
}

fn generate(dir: &Path) -> Command {
    let mut c = client();
    c.args(["generate", "--local", "--max-tokens", "4", "-p", "hi", "--model-dir"]).arg(dir);
    c
}

#[test]
fn generate_local_streams_text_on_a_synthetic_model() {
    let tmp = tempfile::tempdir().unwrap();
    tiny_model(tmp.path());
    let out = generate(tmp.path()).args(["--timing", "--chat"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("prefill"));
    // Sampling with a seed is reproducible; different seeds are allowed to differ.
    let run = |seed: &str| {
        generate(tmp.path())
            .args(["--temperature", "1.0", "--top-p", "0.9", "--seed", seed])
            .output()
            .unwrap()
            .stdout
    };
    assert_eq!(run("5"), run("5"));
}

#[test]
fn eval_local_reproduces_the_oracle_and_writes_results() {
    eval_local_reproduces(&fixtures::tiny_bytes(), 16, 5);
}

#[test]
fn eval_local_reproduces_the_oracle_and_writes_results_on_tiny_qwen2() {
    let Some(dir) = fixtures::tiny_qwen2() else { return };
    eval_local_reproduces(&dir, 8, 4);
}

fn eval_local_reproduces(dir: &Path, greedy: usize, n_cases: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let out_file = tmp.path().join("eval.json");
    let out = client()
        .args([
            "eval",
            "--variant",
            "local",
            "--greedy",
            &greedy.to_string(),
            "--all-positions",
            "--model-dir",
        ])
        .arg(dir)
        .arg("--cases")
        .arg(dir.join("reference.json"))
        .arg("--out")
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out_file).unwrap()).unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert_eq!(cases.len(), n_cases);
    for c in cases {
        assert_eq!(c["top20_ids"].as_array().unwrap().len(), 20);
        assert_eq!(c["greedy"].as_array().unwrap().len(), greedy);
        assert_eq!(c["vs_reference"]["greedy_equal"], true);
        assert!(c["vs_reference"]["max_abs_logit_diff"].as_f64().unwrap() < 1e-3);
        assert!(c["seconds"].as_f64().is_some());
    }
}

#[test]
fn missing_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    fails(&mut generate(&tmp.path().join("nope")), &["nope", "model directory"]);
    tiny_model(tmp.path());
    std::fs::remove_file(tmp.path().join("tokenizer.json")).unwrap();
    fails(&mut generate(tmp.path()), &["tokenizer.json"]);
    tiny_model(tmp.path());
    std::fs::remove_file(tmp.path().join("model.safetensors")).unwrap();
    fails(&mut generate(tmp.path()), &["model.safetensors"]);
    tiny_model(tmp.path());
    std::fs::remove_file(tmp.path().join("config.json")).unwrap();
    fails(&mut generate(tmp.path()), &["config.json", "not found"]);
}

#[test]
fn unsupported_architecture_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    tiny_model(tmp.path());
    let p = tmp.path().join("config.json");
    let text = std::fs::read_to_string(&p).unwrap().replace("Qwen2ForCausalLM", "LlamaForCausalLM");
    std::fs::write(&p, text).unwrap();
    fails(&mut generate(tmp.path()), &["config.json", "LlamaForCausalLM"]);
}

/// Rewrites the synthetic checkpoint with one tensor replaced.
fn rewrite_tensor(dir: &Path, name: &str, dtype: safetensors::Dtype, shape: Vec<usize>, bytes: Vec<u8>) {
    let path = dir.join("model.safetensors");
    let data = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&data).unwrap();
    let mut views = Vec::new();
    for (n, v) in st.tensors() {
        if n == name {
            continue;
        }
        views.push((
            n,
            safetensors::tensor::TensorView::new(v.dtype(), v.shape().to_vec(), v.data()).unwrap(),
        ));
    }
    views.push((name.to_string(), safetensors::tensor::TensorView::new(dtype, shape, &bytes).unwrap()));
    let out = safetensors::serialize(views, &None).unwrap();
    std::fs::write(&path, out).unwrap();
}

#[test]
fn unsupported_dtype_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    tiny_model(tmp.path());
    rewrite_tensor(tmp.path(), "model.norm.weight", safetensors::Dtype::F64, vec![64], vec![0u8; 64 * 8]);
    fails(&mut generate(tmp.path()), &["model.safetensors", "model.norm.weight", "F64"]);
}

#[test]
fn wrong_shape_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    tiny_model(tmp.path());
    rewrite_tensor(tmp.path(), "model.norm.weight", safetensors::Dtype::BF16, vec![65], vec![0u8; 65 * 2]);
    fails(&mut generate(tmp.path()), &["model.safetensors", "model.norm.weight", "[65]", "[64]"]);
}

#[test]
fn truncated_weights_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    tiny_model(tmp.path());
    let p = tmp.path().join("model.safetensors");
    let data = std::fs::read(&p).unwrap();
    std::fs::write(&p, &data[..data.len() / 2]).unwrap();
    fails(&mut generate(tmp.path()), &["model.safetensors", "not a valid safetensors file"]);
}

#[test]
fn cases_with_out_of_range_tokens_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    tiny_model(tmp.path());
    let cases = tmp.path().join("cases.json");
    std::fs::write(&cases, r#"{"cases": [{"input_ids": [1, 2, 3]}, {"input_ids": [9707, 11]}]}"#).unwrap();
    let mut c = client();
    c.args(["eval", "--variant", "local", "--model-dir"])
        .arg(tmp.path())
        .arg("--cases")
        .arg(&cases)
        .arg("--out")
        .arg(tmp.path().join("out.json"));
    fails(&mut c, &["cases.json", "case 1", "9707", "out of range"]);
}

#[test]
fn tiny_bytes_tokenizer_reproduces_the_reference_input_ids() {
    // transformers' tokenizer made these ids from the prompts (the last one has chat
    // special tokens written in its text).
    let dir = fixtures::tiny_bytes();
    let codec = shardlm_client::text::TextCodec::load(&dir.join("tokenizer.json")).unwrap();
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    for case in reference["cases"].as_array().unwrap() {
        let want: Vec<u32> =
            case["input_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let got = codec.encode_prompt(case["prompt"].as_str().unwrap(), false).unwrap();
        assert_eq!(got, want, "prompt {:?}", case["prompt"]);
    }
}

#[test]
fn chat_formatting_reproduces_the_reference_input_ids() {
    // The reference's input_ids were made by transformers' apply_chat_template with the
    // real Qwen tokenizer (11 MB, not vendored): from ../shared or a real model directory.
    let tokenizer = fixtures::optional_shared("models/qwen2.5-coder-0.5b-instruct/tokenizer.json")
        .or_else(|| fixtures::real_model_dir().map(|d| d.join("tokenizer.json")));
    let Some(tokenizer) = tokenizer else { return };
    let codec = shardlm_client::text::TextCodec::load(&tokenizer).unwrap();
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures::real_reference()).unwrap()).unwrap();
    for case in reference["cases"].as_array().unwrap() {
        let want: Vec<u32> =
            case["input_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let got = codec.encode_prompt(case["prompt"].as_str().unwrap(), true).unwrap();
        assert_eq!(got, want, "prompt {:?}", case["prompt"]);
    }
}

#[test]
fn a_hub_id_is_accepted_for_model_dir_through_the_local_hub_cache() {
    // A pre-filled hub cache (the layout huggingface_hub writes): found without a download.
    let cache = tempfile::tempdir().unwrap();
    let hash = "0123456789abcdef0123456789abcdef01234567";
    let repo = cache.path().join("models--ShardLM--Tiny");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), hash).unwrap();
    tiny_model(&repo.join("snapshots").join(hash));
    let out = generate(Path::new("ShardLM/Tiny")).env("HF_HUB_CACHE", cache.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!out.stdout.is_empty());
    // An id the cache does not hold: one error line saying how to fetch it.
    let err = fails(
        generate(Path::new("ShardLM/Other")).env("HF_HUB_CACHE", cache.path()),
        &["ShardLM/Other", "hub cache", "fetch-model"],
    );
    assert!(!err.contains("huggingface.co"), "never downloads: {err}");
}

/// `bundle` reports what a dealt bundle holds and what is left of it per party, counts
/// a session once a party started it, says when a part is in use, and with `--verify`
/// finds a corrupted chunk of an unspent session.
#[test]
fn bundle_reports_sessions_left_and_verify_finds_corruption() {
    use shardlm_mpc::material::{Material, OpenOptions};
    use shardlm_mpc::share::P0;
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures::tiny_bytes();
    let out = tmp.path().join("b");
    let state = tmp.path().join("state");
    let dealt = client()
        .args(["dealer", "--variant", "v3-ot", "--role", "independent", "--prompt-tokens", "6"])
        .args(["--max-new-tokens", "2", "--sessions", "2", "--model-dir"])
        .arg(&model)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(dealt.status.success(), "{}", String::from_utf8_lossy(&dealt.stderr));
    let bundle = |args: &[&str]| {
        let o =
            client().arg("bundle").arg(&out).args(args).env("SHARDLM_STATE_DIR", &state).output().unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).to_string(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let (ok, text, err) = bundle(&["--verify"]);
    assert!(ok, "{err}");
    assert!(text.contains("v3-ot") && text.contains("2 session(s) of 6 prompt tokens + 2 new"), "{text}");
    assert!(text.contains("p0 (client") && text.contains("p1 (server"), "{text}");
    assert_eq!(text.matches("2 of 2 session(s) left").count(), 2, "{text}");
    assert_eq!(text.matches("checked against their blake3").count(), 2, "{text}");

    // P0 (in this process, with the same state directory) skips to session 1, so that
    // session 0 is spent; while it holds the part the command says the part is in use.
    // (A session started and closed without taking anything is given back.)
    let opts = OpenOptions::default().ledger_in(&state.join("spent"));
    let mut m = Material::<P0>::open_with(&out.join("p0"), &opts).unwrap();
    m.start_session(1).unwrap();
    let (ok, text, err) = bundle(&[]);
    assert!(ok, "{err}");
    assert!(text.contains("p0 (client") && text.contains("in use by a running party"), "{text}");
    drop(m);
    let (_, text, _) = bundle(&[]);
    assert!(
        text.contains("1 of 2 session(s) left (next: 1)") && text.contains("2 of 2 session(s) left"),
        "{text}"
    );

    // A flipped byte in session 1's material: `--verify` names it.
    let shard = out.join("p0/p0.shard");
    let mut bytes = std::fs::read(&shard).unwrap();
    let t_off = u64::from_le_bytes(bytes[16..24].try_into().unwrap()) as usize;
    let at = (0..t_off).rev().find(|&i| bytes[i] != 0).unwrap();
    bytes[at] ^= 1;
    std::fs::write(&shard, &bytes).unwrap();
    let (ok, _, err) = bundle(&["--verify"]);
    assert!(!ok && err.contains("p0 part") && err.contains("fail their blake3"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
