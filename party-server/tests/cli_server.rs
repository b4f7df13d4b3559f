//! `shardlm-server` as a user runs it: `synth-model` writes a checkpoint the engine
//! loads, `keygen` writes a 0600 key and prints the fingerprint, and `serve` refuses bad
//! configuration with one clear line. (This test also makes `cargo test --workspace`
//! build the server binary that the client's end-to-end tests start.)

use std::process::Command;

fn server() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shardlm-server"))
}

#[test]
fn synth_model_writes_a_loadable_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let out = server()
        .args(["synth-model", "--preset", "tiny", "--seed", "9", "--out"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let md = shardlm_model::ModelDir::open(tmp.path()).unwrap();
    let w = md.load_weights().unwrap();
    assert_eq!(w.config.hidden_size, 64);
    let tok = std::fs::read_to_string(tmp.path().join("tokenizer.json")).unwrap();
    assert!(tok.contains("<|im_start|>"));
    let bad = server()
        .args(["synth-model", "--preset", "qwen9", "--out"])
        .arg(tmp.path().join("x"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("qwen9"));
}

#[test]
fn keygen_and_serve_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = server().args(["keygen", "--out"]).arg(tmp.path().join("id")).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).trim().starts_with("blake3:"));
    // A second keygen into the same directory refuses to overwrite the key.
    let again = server().args(["keygen", "--out"]).arg(tmp.path().join("id")).output().unwrap();
    assert!(!again.status.success());

    // serve without an identity: one error line that says how to make one.
    let out = server()
        .args(["serve", "--bind", "127.0.0.1", "--port", "0", "--allow-client", "blake3:00", "--model-dir"])
        .arg(tmp.path())
        .arg("--identity")
        .arg(tmp.path().join("missing"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("keygen"), "{err}");
    assert!(!err.contains("panicked"));

    // serve with a model of the wrong architecture preset.
    let model = tmp.path().join("tiny");
    shardlm_model::synth::write_synthetic_model(
        &shardlm_configs::ModelConfig::preset("tiny").unwrap(),
        &model,
        1,
    )
    .unwrap();
    let out = server()
        .args(["serve", "--bind", "127.0.0.1", "--port", "0", "--allow-client", "blake3:00", "--model-dir"])
        .arg(&model)
        .arg("--identity")
        .arg(tmp.path().join("id"))
        .env("SHARDLM_MODEL_ARCH", "qwen2.5-0.5b")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("qwen2.5-0.5b") && err.contains("hidden_size"), "{err}");
}
