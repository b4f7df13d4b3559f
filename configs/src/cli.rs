//! The command-line flags both binaries share for these settings, so that
//! `shardlm-client` and `shardlm-server` spell them the same.

use crate::Timeouts;

/// Network deadlines, in seconds (`--connect-timeout`, `--handshake-timeout`,
/// `--idle-timeout`, `--recv-timeout`).
#[derive(clap::Args, Clone, Debug)]
pub struct TimeoutFlags {
    /// Seconds to wait for the QUIC connection (client).
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Seconds to wait for the peer's application handshake.
    #[arg(long, default_value_t = 10.0)]
    pub handshake_timeout: f64,
    /// Seconds without any packet before the peer is declared gone (keep-alives go out
    /// at a quarter of it; raise it on slow or lossy links).
    #[arg(long, default_value_t = 8.0)]
    pub idle_timeout: f64,
    /// Seconds to wait for each message of a session.
    #[arg(long, default_value_t = 120.0)]
    pub recv_timeout: f64,
}

impl Default for TimeoutFlags {
    fn default() -> Self {
        let d = Timeouts::default();
        TimeoutFlags {
            connect_timeout: d.connect.as_secs_f64(),
            handshake_timeout: d.handshake.as_secs_f64(),
            idle_timeout: d.idle.as_secs_f64(),
            recv_timeout: d.recv.as_secs_f64(),
        }
    }
}

impl TimeoutFlags {
    /// The deadlines, or an error naming the flag that is out of range.
    pub fn timeouts(&self) -> Result<Timeouts, String> {
        Ok(Timeouts {
            connect: Timeouts::seconds("connect-timeout", self.connect_timeout)?,
            handshake: Timeouts::seconds("handshake-timeout", self.handshake_timeout)?,
            idle: Timeouts::seconds("idle-timeout", self.idle_timeout)?,
            recv: Timeouts::seconds("recv-timeout", self.recv_timeout)?,
        })
    }
}
