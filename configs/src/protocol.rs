//! Protocol and network settings shared by both parties.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The protocol variants of DESIGN.md section 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Variant {
    /// The plaintext engine, no second party.
    Local,
    /// Client-assisted linear layers, sequential.
    V2,
    /// v2, pipelined.
    V3,
    /// Confidential computing.
    V3Cc,
    /// Full two-party computation with Beaver triples.
    V3Mpc,
    /// Full two-party computation with OT-based comparisons and tables.
    V3Ot,
}

impl Variant {
    /// The command-line and wire name.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Local => "local",
            Variant::V2 => "v2",
            Variant::V3 => "v3",
            Variant::V3Cc => "v3-cc",
            Variant::V3Mpc => "v3-mpc",
            Variant::V3Ot => "v3-ot",
        }
    }

    /// All variants, in order.
    pub const ALL: [Variant; 6] =
        [Variant::Local, Variant::V2, Variant::V3, Variant::V3Cc, Variant::V3Mpc, Variant::V3Ot];
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Variant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Variant::ALL.iter().copied().find(|v| v.name() == s).ok_or_else(|| {
            let names: Vec<_> = Variant::ALL.iter().map(|v| v.name()).collect();
            format!("unknown variant {s:?}; expected one of {}", names.join(", "))
        })
    }
}

/// Fixed-point encoding parameters: `enc(x) = round(x * 2^frac_bits) mod 2^64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixedPoint {
    /// Fractional bits of activations (`F`).
    pub frac_bits: u32,
    /// Fractional bits of weights (`F_w`).
    pub weight_frac_bits: u32,
}

impl Default for FixedPoint {
    fn default() -> Self {
        FixedPoint { frac_bits: 16, weight_frac_bits: 16 }
    }
}

/// Network deadlines. Every receive is bounded: a vanished peer is an error, not a hang.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    /// Establishing the connection.
    pub connect: Duration,
    /// The application handshake after the connection is up.
    pub handshake: Duration,
    /// Connection idle timeout (no packets at all; the transport sends keep-alives at a
    /// quarter of it, so a live but busy peer never trips it, and a dead one is reported
    /// within this time).
    pub idle: Duration,
    /// Waiting for any single frame.
    pub recv: Duration,
}

impl Timeouts {
    /// The longest deadline accepted: a day. Longer ones are almost certainly a typo
    /// (and `Duration` arithmetic must not overflow).
    pub const MAX_SECONDS: f64 = 86_400.0;

    /// A deadline given in seconds on the command line as `--{flag}`: positive, finite
    /// and at most [`Timeouts::MAX_SECONDS`], or an error that names the flag.
    pub fn seconds(flag: &str, value: f64) -> Result<Duration, String> {
        if value.is_finite() && value > 0.0 && value <= Self::MAX_SECONDS {
            Duration::try_from_secs_f64(value).map_err(|e| format!("--{flag} {value}: {e}"))
        } else {
            Err(format!(
                "--{flag} must be a positive number of seconds up to {} (a day), got {value}",
                Self::MAX_SECONDS
            ))
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            handshake: Duration::from_secs(10),
            idle: Duration::from_secs(8),
            recv: Duration::from_secs(120),
        }
    }
}
