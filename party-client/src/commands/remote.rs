//! `health`, `info` and `keygen`: talking to a server party without a session, and
//! making this party's identity.

use crate::client::{parse_server, Remote};
use anyhow::{Context, Result};
use clap::Args;
use shardlm_attest::Policy;
use shardlm_configs::cli::TimeoutFlags;
use shardlm_transport::{Identity, QuicClient, QuicConfig};
use shardlm_variants::registry;
use std::path::PathBuf;

/// Flags to reach a server party.
#[derive(Args, Clone, Debug)]
pub struct ServerArgs {
    /// Server address: host:port, quic://host:port or http://host:port.
    #[arg(short = 's', long = "server")]
    pub server: String,
    /// Directory with this client's cert.pem and key.pem (`shardlm-client keygen`).
    #[arg(long)]
    pub identity: PathBuf,
    /// The server's certificate fingerprint (printed by `shardlm-server keygen`).
    #[arg(long)]
    pub server_fingerprint: String,
    #[command(flatten)]
    pub(crate) timeouts: TimeoutFlags,
}

impl ServerArgs {
    fn remote(&self) -> Result<Remote> {
        Ok(Remote {
            addr: parse_server(&self.server)?,
            identity: Identity::load(&self.identity)?,
            server_fingerprint: self.server_fingerprint.clone(),
            config: QuicConfig::with_timeouts(self.timeouts.timeouts().map_err(anyhow::Error::msg)?),
        })
    }
}

/// Flags of `info`.
#[derive(Args, Clone, Debug)]
pub struct InfoArgs {
    /// The server to ask.
    #[command(flatten)]
    pub server: ServerArgs,
    /// v3-cc: also show this attestation policy's digest and whether the server's
    /// providers cover what it requires.
    #[arg(long, value_name = "FILE")]
    pub cc_policy: Option<PathBuf>,
}

/// Flags of `keygen`.
#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Output directory for cert.pem and key.pem.
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `health`.
pub fn health(a: ServerArgs) -> Result<()> {
    let r = a.remote()?;
    let t = QuicClient::health(r.addr, &r.identity, &r.server_fingerprint, r.config)?;
    println!("ok: {} answered in {:.1} ms", r.addr, t.as_secs_f64() * 1e3);
    Ok(())
}

/// Runs `info`: the server's model and variants, with what each variant promises.
pub fn info(a: InfoArgs) -> Result<()> {
    let policy = a
        .cc_policy
        .as_ref()
        .map(|p| Policy::load(p).with_context(|| format!("--cc-policy {}", p.display())))
        .transpose()?;
    let r = a.server.remote()?;
    let info = QuicClient::info(r.addr, &r.identity, &r.server_fingerprint, r.config)?;
    println!("server:       {}", r.addr);
    println!("model:        {}", info.model);
    println!("architecture: {}", info.architecture);
    println!("fingerprint:  {}", info.fingerprint);
    println!("variants:     {}", info.variants.join(", "));
    for name in &info.variants {
        if let Some(s) = name.parse().ok().map(registry::spec) {
            println!("  {name:<8} server learns {}; client learns {}", s.server_learns, s.client_learns);
        }
    }
    if !info.attestation.is_empty() {
        let software = info.attestation.iter().any(|p| p == "software");
        println!(
            "attestation:  v3-cc by {}{}",
            info.attestation.join(", "),
            if software { " (software: no hardware protection)" } else { "" }
        );
    }
    if let Some(policy) = &policy {
        let missing: Vec<String> =
            policy.require.iter().map(|p| p.to_string()).filter(|p| !info.attestation.contains(p)).collect();
        println!(
            "cc policy:    {} {}",
            policy.digest(),
            if missing.is_empty() {
                "(the server's providers cover it; the evidence is checked at each session)".to_string()
            } else {
                format!("(the server cannot meet it: no {} provider)", missing.join(", "))
            }
        );
    }
    println!("devices:      {}", info.devices.join(", "));
    if let Some(g) = info.ring_gemm {
        println!(
            "ring GEMM:    {:.2} ns per weight per call + {:.3} ns per weight per row (measured at start; v3 plans its chunks with it)",
            g.fixed_ps as f64 / 1e3,
            g.row_ps as f64 / 1e3
        );
    }
    println!("version:      {} (protocol {})", info.version, info.protocol_version);
    Ok(())
}

/// Runs `keygen`.
pub fn keygen(a: KeygenArgs) -> Result<()> {
    let fp = shardlm_transport::keygen(&a.out, "shardlm-client")?;
    println!("{fp}");
    eprintln!(
        "wrote {}/cert.pem and key.pem; give the server this fingerprint for --allow-client",
        a.out.display()
    );
    Ok(())
}
