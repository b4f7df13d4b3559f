//! v3-cc as a user runs it (issue 17): the plaintext engine inside attested hardware,
//! here attested by the software provider (no confidential hardware on CI; the hardware
//! verifiers are tested on vendored vectors in `shardlm-attest`). Greedy tokens equal the
//! plaintext engine's and the oracle's on `testdata/tiny-bytes`; the two binaries refuse
//! a client without a policy, software evidence without the explicit opt-in, a foreign
//! CA and a policy that wants hardware, each saying what to do.

use shardlm_testkit::bins::Binaries;
use shardlm_testkit::fixtures;
use std::path::Path;
use std::process::{Command, Output};

fn bins() -> Binaries {
    Binaries::beside_client(env!("CARGO_BIN_EXE_shardlm-client"))
}

fn eval(dir: &Path, out: &Path, variant: &str, extra: &[&str]) -> serde_json::Value {
    let o = bins()
        .client()
        .args(["eval", "--variant", variant, "--greedy", "8", "--model-dir"])
        .arg(dir)
        .arg("--cases")
        .arg(dir.join("reference.json"))
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap()
}

fn v3_cc_loopback_reproduces(dir: &Path) {
    let tmp = tempfile::tempdir().unwrap();
    let local = eval(dir, &tmp.path().join("local.json"), "local", &[]);
    let cc = eval(dir, &tmp.path().join("cc.json"), "v3-cc", &["--loopback"]);
    let notes = cc["attestation"].as_array().unwrap();
    assert!(notes[0].as_str().unwrap().contains("no hardware protection"), "{notes:?}");
    let (lc, cc) = (local["cases"].as_array().unwrap(), cc["cases"].as_array().unwrap());
    assert_eq!(lc.len(), cc.len());
    for (a, b) in lc.iter().zip(cc) {
        assert_eq!(a["greedy"], b["greedy"]);
        assert_eq!(a["top20_logits"], b["top20_logits"], "the same engine: identical logits");
        let r = &b["vs_reference"];
        assert_eq!(r["top1_equal"], true, "{r}");
        assert!(b["bytes_sent"].as_u64().unwrap() > 0);
    }
}

#[test]
fn v3_cc_loopback_reproduces_the_plaintext_engine_and_the_oracle() {
    v3_cc_loopback_reproduces(&fixtures::tiny_bytes());
}

#[test]
fn v3_cc_loopback_reproduces_on_tiny_qwen2() {
    let Some(dir) = fixtures::tiny_qwen2() else { return };
    v3_cc_loopback_reproduces(&dir);
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn v3_cc_between_binaries_attests_and_refuses_what_it_must() {
    let b = bins();
    let tmp = tempfile::tempdir().unwrap();
    let (sid, cid, ca) = (tmp.path().join("server-id"), tmp.path().join("client-id"), tmp.path().join("ca"));
    let server_fp = Binaries::keygen(b.server(), &sid);
    let client_fp = Binaries::keygen(b.client(), &cid);
    let o = b.server().args(["cc-software-ca", "--out"]).arg(&ca).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // Making it again would replace a CA clients trust: refused.
    let again = b.server().args(["cc-software-ca", "--out"]).arg(&ca).output().unwrap();
    assert!(!again.status.success() && stderr(&again).contains("refusing to replace"), "{}", stderr(&again));
    let model = fixtures::tiny_bytes();

    // A software provider without its CA is refused at start, saying what to do.
    let o = b
        .server()
        .args(["serve", "--bind", "127.0.0.1", "--port", "0", "--model-dir"])
        .arg(&model)
        .arg("--identity")
        .arg(&sid)
        .args(["--allow-client", &client_fp, "--cc-provider", "software"])
        .output()
        .unwrap();
    assert!(!o.status.success() && stderr(&o).contains("cc-software-ca --out DIR"), "{}", stderr(&o));
    // A hardware provider whose platform is absent (CI has no SEV-SNP guest) stops the
    // server at start, naming what is missing, rather than failing its first session.
    let o = b
        .server()
        .args(["serve", "--bind", "127.0.0.1", "--port", "0", "--model-dir"])
        .arg(&model)
        .arg("--identity")
        .arg(&sid)
        .args(["--allow-client", &client_fp, "--cc-provider", "sev-snp"])
        .output()
        .unwrap();
    if !Path::new("/dev/sev-guest").exists() {
        assert!(!o.status.success() && stderr(&o).contains("/dev/sev-guest"), "{}", stderr(&o));
    }

    let server = b.start_server(
        &model,
        &sid,
        &client_fp,
        &["--cc-provider".as_ref(), "software".as_ref(), "--cc-software-ca".as_ref(), ca.as_os_str()],
    );
    let remote = |cmd: &str| {
        let mut c = b.client();
        c.arg(cmd).args(["-s", &server.addr, "--server-fingerprint", &server_fp, "--identity"]).arg(&cid);
        c
    };
    let o = remote("info").output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && text.contains("v3-cc by software (software: no hardware protection)"),
        "{text}"
    );

    let generate = |extra: &[&std::ffi::OsStr]| -> Output {
        let mut c: Command = remote("generate");
        c.args(["--variant", "v3-cc", "-p", "hello", "--max-tokens", "6", "--model-dir"]).arg(&model);
        c.args(extra).output().unwrap()
    };
    let local = b
        .client()
        .args(["generate", "--local", "-p", "hello", "--max-tokens", "6", "--model-dir"])
        .arg(&model)
        .output()
        .unwrap();
    let ca_pem = ca.join("ca.pem");
    let ok = generate(&[
        "--insecure-software-attestation".as_ref(),
        "--cc-software-ca".as_ref(),
        ca_pem.as_os_str(),
    ]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert_eq!(ok.stdout, local.stdout);
    assert!(stderr(&ok).contains("v3-cc: software attestation: no hardware protection"), "{}", stderr(&ok));

    // No policy at all.
    let e = stderr(&generate(&[]));
    assert!(e.contains("v3-cc needs an attestation policy") && e.contains("--cc-policy"), "{e}");
    // The software CA without the explicit opt-in.
    let e = stderr(&generate(&["--cc-software-ca".as_ref(), ca_pem.as_os_str()]));
    assert!(e.contains("--insecure-software-attestation"), "{e}");
    // A CA the server's provider was not made by.
    let foreign = tmp.path().join("foreign");
    let o = b.server().args(["cc-software-ca", "--out"]).arg(&foreign).output().unwrap();
    assert!(o.status.success());
    let e = stderr(&generate(&[
        "--insecure-software-attestation".as_ref(),
        "--cc-software-ca".as_ref(),
        foreign.join("ca.pem").as_os_str(),
    ]));
    assert!(e.contains("attestation check"), "{e}");
    // A policy that wants confidential hardware.
    let policy = tmp.path().join("policy.json");
    std::fs::write(&policy, r#"{"require": ["sev-snp"], "sev_snp": {"measurements": []}}"#).unwrap();
    let e = stderr(&generate(&["--cc-policy".as_ref(), policy.as_os_str()]));
    assert!(e.contains("requires sev-snp") && e.contains("software"), "{e}");
    let o = remote("info").arg("--cc-policy").arg(&policy).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && text.contains("cannot meet it: no sev-snp provider"), "{text}");
    // A policy pinning another server binary.
    let pinned = tmp.path().join("pinned.json");
    std::fs::write(
        &pinned,
        format!(r#"{{"require": ["software"], "software": {{"measurements": ["{}"]}}}}"#, "00".repeat(32)),
    )
    .unwrap();
    let e = stderr(&generate(&[
        "--cc-policy".as_ref(),
        pinned.as_os_str(),
        "--insecure-software-attestation".as_ref(),
        "--cc-software-ca".as_ref(),
        ca_pem.as_os_str(),
    ]));
    assert!(e.contains("attestation check") && e.contains("measurement"), "{e}");
    drop(server);
}

#[test]
fn a_server_without_cc_refuses_v3_cc_saying_how_to_enable_it() {
    let b = bins();
    let tmp = tempfile::tempdir().unwrap();
    let (sid, cid) = (tmp.path().join("server-id"), tmp.path().join("client-id"));
    let server_fp = Binaries::keygen(b.server(), &sid);
    let client_fp = Binaries::keygen(b.client(), &cid);
    let model = fixtures::tiny_bytes();
    let server = b.start_server(&model, &sid, &client_fp, &[]);
    let ca = tmp.path().join("ca");
    assert!(b.server().args(["cc-software-ca", "--out"]).arg(&ca).status().unwrap().success());
    let o = b
        .client()
        .args(["generate", "--variant", "v3-cc", "-p", "x", "--max-tokens", "2", "--model-dir"])
        .arg(&model)
        .args(["-s", &server.addr, "--server-fingerprint", &server_fp, "--identity"])
        .arg(&cid)
        .args(["--insecure-software-attestation", "--cc-software-ca"])
        .arg(ca.join("ca.pem"))
        .output()
        .unwrap();
    let e = stderr(&o);
    assert!(!o.status.success() && e.contains("--cc-provider"), "{e}");
    assert!(!e.contains("panicked"), "{e}");
}

/// With `SHARDLM_REAL_MODEL_DIR` (Qwen2.5-Coder-0.5B-Instruct): v3-cc over QUIC loopback
/// gives transformers' greedy_16 on all nine reference prompts, and the plaintext
/// engine's logits exactly.
#[test]
fn real_model_v3_cc_greedy_16_equals_the_reference() {
    let Some(model) = fixtures::real_model_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let run = |variant: &str, extra: &[&str]| -> serde_json::Value {
        let out_file = tmp.path().join(format!("{variant}.json"));
        let o = bins()
            .client()
            .args(["eval", "--variant", variant, "--greedy", "16", "--model-dir"])
            .arg(&model)
            .arg("--cases")
            .arg(fixtures::real_reference())
            .arg("--out")
            .arg(&out_file)
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_str(&std::fs::read_to_string(&out_file).unwrap()).unwrap()
    };
    let local = run("local", &[]);
    let cc = run("v3-cc", &["--loopback"]);
    let (lc, cc) = (local["cases"].as_array().unwrap(), cc["cases"].as_array().unwrap());
    assert_eq!(cc.len(), 9);
    for (i, (a, b)) in lc.iter().zip(cc).enumerate() {
        assert_eq!(b["vs_reference"]["greedy_equal"], true, "case {i} against transformers");
        assert_eq!(a["top20_logits"], b["top20_logits"], "case {i}: the same engine");
    }
}
