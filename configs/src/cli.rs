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

/// An error and its causes on one line, as `{:#}` prints them (`outer: cause: cause`),
/// leaving out a cause whose text its context already ends with: errors that show their
/// source in their own message (`"{path}: {source}"`) would otherwise say it twice.
pub fn error_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::error_line;

    #[derive(Debug, thiserror::Error)]
    #[error("{path}: {source}")]
    struct Shown {
        path: String,
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("opening the model")]
    struct Context(#[source] Shown);

    #[test]
    fn a_cause_its_context_already_shows_is_said_once() {
        let io = || std::io::Error::other("no such file");
        let e = Shown { path: "m/config.json".into(), source: io() };
        assert_eq!(error_line(&e), "m/config.json: no such file");
        let e = Context(Shown { path: "m/config.json".into(), source: io() });
        assert_eq!(error_line(&e), "opening the model: m/config.json: no such file");
    }
}
