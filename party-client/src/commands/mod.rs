//! The commands behind `shardlm-client`: each module owns its flags (a clap `Args`
//! struct) and its `run`. The flags every private command shares are here.

pub mod benchmark;
pub mod bundle;
pub mod dealer;
pub mod demo;
pub mod eval;
pub mod generate;
pub mod remote;

use crate::client::ClientOptions;
use anyhow::{bail, Result};
use clap::Args;
use shardlm_configs::cli::TimeoutFlags;
use shardlm_configs::Variant;
use shardlm_model::generate::StopPolicy;
use shardlm_model::sampling::SamplingConfig;
use std::io::IsTerminal;
use std::path::PathBuf;

/// How a private variant reaches its server party.
#[derive(Args, Clone, Debug)]
pub struct PartyArgs {
    /// Server address: host:port, quic://host:port or http://host:port.
    #[arg(short = 's', long = "server", conflicts_with_all = ["loopback", "local"])]
    pub server: Option<String>,
    /// Run the server party in this process over QUIC on 127.0.0.1, with ephemeral
    /// identities and material dealt on the fly.
    #[arg(long, conflicts_with = "local")]
    pub loopback: bool,
    /// Run the plaintext engine in this process (no server, no privacy).
    #[arg(long)]
    pub local: bool,
    /// This client's identity directory (with `-s`).
    #[arg(long)]
    pub identity: Option<PathBuf>,
    /// The server's certificate fingerprint (with `-s`).
    #[arg(long)]
    pub server_fingerprint: Option<String>,
    /// Dealer bundle for this client's sessions (`shardlm-client dealer`); without it a
    /// v2/v3 client deals each session itself just before it starts.
    #[arg(long)]
    pub material: Option<PathBuf>,
    /// v3: rows per chunk of a multi-row pass (default: the client's model chooses from
    /// the link rate, the RTT and the server's measured GEMM cost).
    #[arg(long)]
    pub chunk_rows: Option<usize>,
    /// v3: the link's rate each way (`200mbit`, `1gbit`, `12mbps`), for the model that
    /// chooses the chunks (default: 1gbit assumed).
    #[arg(long, value_parser = crate::lab::netem::parse_rate)]
    pub link_rate: Option<u64>,
    /// QUIC initial congestion window, bytes (lower it on links shared with other traffic).
    #[arg(long, default_value_t = 1 << 20)]
    pub initial_window: u64,
    /// v3-cc: the attestation policy the server must meet (JSON; docs/design.md, v3-cc).
    #[arg(long, value_name = "FILE")]
    pub cc_policy: Option<PathBuf>,
    /// v3-cc: trust the software attestation provider signed by this CA (PEM). Gives no
    /// hardware protection; needs `--insecure-software-attestation`.
    #[arg(long, value_name = "FILE")]
    pub cc_software_ca: Option<PathBuf>,
    /// v3-cc: accept software attestation (testing and CI only).
    #[arg(long)]
    pub insecure_software_attestation: bool,
    #[command(flatten)]
    pub(crate) timeouts: TimeoutFlags,
}

impl PartyArgs {
    /// Flags for an in-process loopback server with default settings (the demo).
    pub fn loopback() -> Self {
        PartyArgs {
            server: None,
            loopback: true,
            local: false,
            identity: None,
            server_fingerprint: None,
            material: None,
            chunk_rows: None,
            link_rate: None,
            initial_window: 1 << 20,
            cc_policy: None,
            cc_software_ca: None,
            insecure_software_attestation: false,
            timeouts: TimeoutFlags::default(),
        }
    }

    /// The variant these flags run: `--local` means the plaintext engine whatever
    /// `--variant` says.
    pub fn variant(&self, asked: Variant) -> Variant {
        if self.local {
            Variant::Local
        } else {
            asked
        }
    }

    /// The client's options.
    pub fn options(&self) -> Result<ClientOptions> {
        Ok(ClientOptions {
            server: self.server.clone(),
            loopback: self.loopback,
            identity: self.identity.clone(),
            server_fingerprint: self.server_fingerprint.clone(),
            material: self.material.clone(),
            chunk_rows: self.chunk_rows,
            link_rate: self.link_rate,
            initial_window: self.initial_window,
            cc_policy: self.cc_policy.clone(),
            cc_software_ca: self.cc_software_ca.clone(),
            insecure_software_attestation: self.insecure_software_attestation,
            timeouts: self.timeouts.timeouts().map_err(anyhow::Error::msg)?,
        })
    }
}

/// Sampling flags.
#[derive(Args, Clone, Debug)]
pub struct SamplingArgs {
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling mass, in (0, 1].
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Seed of the sampling stream.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop private generation at the end-of-sequence token. This reveals the output
    /// length to the server party; by default a private session runs its whole
    /// `--max-tokens` budget (dummy steps after the end token) so that it does not.
    #[arg(long)]
    pub stop_at_eos: bool,
}

impl SamplingArgs {
    /// The sampler's settings.
    pub fn config(&self) -> Result<SamplingConfig> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            bail!("--temperature must be a finite number >= 0 (0 is greedy), got {}", self.temperature);
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("--top-p must be in (0, 1], got {}", self.top_p);
        }
        Ok(SamplingConfig { temperature: self.temperature, top_p: self.top_p, seed: self.seed })
    }

    /// What an end token does for `variant`: the plaintext engine has no server to hide
    /// the length from; private variants run their budget unless `--stop-at-eos`.
    pub fn stop_policy(&self, variant: Variant) -> StopPolicy {
        if variant == Variant::Local || self.stop_at_eos {
            StopPolicy::AtEos
        } else {
            StopPolicy::FullBudget
        }
    }
}

/// A progress bar on a terminal, hidden otherwise (CI, pipes).
pub(crate) fn progress_bar(len: u64, template: &str) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(len);
    b.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b
}
