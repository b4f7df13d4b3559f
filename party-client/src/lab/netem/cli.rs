//! The `shardlm-client netem` command: [`NetemArgs`] are its flags (parsed by the
//! `units` parsers), [`NetemArgs::config`] turns them into the same link both ways,
//! and [`run_netem`] runs the relay until Ctrl-C or `--duration`, then prints the
//! counters (and writes them as JSON with `--stats-json`).

use super::units::{parse_addr, parse_duration, parse_probability, parse_rate, parse_size};
use super::{LinkConfig, Netem, NetemConfig, DEFAULT_MTU};
use anyhow::{Context, Result};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `shardlm-client netem`: relay UDP between the parties through an emulated link.
#[derive(clap::Args, Debug, Clone)]
pub struct NetemArgs {
    /// Address to listen on; point the client party here (`-s`). Port 0 picks one.
    #[arg(long, value_parser = parse_addr)]
    pub listen: SocketAddr,
    /// Address of the server party.
    #[arg(long, value_parser = parse_addr)]
    pub forward: SocketAddr,
    /// One-way delay added in each direction (`2ms`, `0.2ms`); the RTT adds twice this.
    #[arg(long, value_parser = parse_duration, default_value = "0ms")]
    pub delay: Duration,
    /// Uniform jitter around the delay (`0.5ms`); the link stays FIFO.
    #[arg(long, value_parser = parse_duration, default_value = "0ms")]
    pub jitter: Duration,
    /// Rate of each direction (`10gbit`, `100mbit`); unlimited when absent.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<u64>,
    /// Datagram loss probability in each direction (`1%`).
    #[arg(long, value_parser = parse_probability, default_value = "0%")]
    pub loss: f64,
    /// Probability that a datagram skips the delay line (`5%`).
    #[arg(long, value_parser = parse_probability, default_value = "0%")]
    pub reorder: f64,
    /// Bytes the rate stage may queue before tail drop (`1mb`, `256kib`).
    #[arg(long, value_parser = parse_size, default_value = "1mb")]
    pub queue: u64,
    /// Link MTU in bytes (IP packet size): larger datagrams are dropped, as on a real
    /// path (1500 Ethernet, 9000 jumbo frames).
    #[arg(long, default_value_t = DEFAULT_MTU)]
    pub mtu: u32,
    /// Seed of the loss, jitter and reorder draws.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Stop after this long (`30s`); by default run until Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Also write the final counters as JSON here.
    #[arg(long)]
    pub stats_json: Option<PathBuf>,
}

impl NetemArgs {
    /// The emulator configuration these arguments describe.
    pub fn config(&self) -> NetemConfig {
        let link = LinkConfig {
            delay: self.delay,
            jitter: self.jitter,
            rate_bps: self.rate,
            loss: self.loss,
            reorder: self.reorder,
            queue_bytes: self.queue,
            mtu: self.mtu,
        };
        NetemConfig::symmetric(self.listen, self.forward, link, self.seed)
    }
}

/// Runs the relay until Ctrl-C (or `--duration`), then prints the counters.
pub fn run_netem(args: NetemArgs) -> Result<()> {
    let config = args.config();
    let describe = config.upstream.describe();
    let netem = Netem::start(config)?;
    println!(
        "netem listening on {} forwarding to {} ({describe}, each direction)",
        netem.listen_addr(),
        args.forward
    );
    let _ = std::io::stdout().flush();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        match args.duration {
            Some(d) => {
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    });
    let stats = netem.stop();
    eprint!("{}", stats.render());
    if let Some(path) = &args.stats_json {
        std::fs::write(path, serde_json::to_string_pretty(&stats)?)
            .with_context(|| format!("{}: cannot write the counters", path.display()))?;
    }
    Ok(())
}
