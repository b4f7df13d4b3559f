//! The text forms of link quantities: durations (`2ms`), rates (`100mbit`),
//! probabilities (`1%`), sizes (`1mb`) and addresses (`127.0.0.1:4433`), parsed from
//! the command line of `netem` and `experiment` and formatted back the same way for
//! descriptions, file names and tables.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// A value on the command line that does not parse.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkParseError {
    /// A duration such as `2ms`.
    #[error("`{0}` is not a duration: write a number and a unit, e.g. `2ms`, `0.2ms`, `150us`, `1s`")]
    Duration(String),
    /// A rate such as `100mbit`.
    #[error("`{0}` is not a rate: write a number and a unit, e.g. `10gbit`, `100mbit`, `512kbit` (bits/s), or `12mbps` (bytes/s, as tc writes it)")]
    Rate(String),
    /// A probability such as `1%`.
    #[error("`{0}` is not a probability: write a percentage such as `1%` or `0.5%` (or a fraction in [0, 1] such as `0.01`)")]
    Probability(String),
    /// A size such as `1mb`.
    #[error("`{0}` is not a size in bytes: write e.g. `65536`, `64kb`, `1mb`, `1mib`")]
    Size(String),
    /// An address such as `127.0.0.1:4433`.
    #[error("`{0}` is not an address: write host:port, e.g. `127.0.0.1:4433`")]
    Address(String),
}

fn split_number(text: &str) -> Option<(f64, String)> {
    let t = text.trim();
    let end = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(end);
    let v: f64 = num.parse().ok()?;
    if !v.is_finite() || v < 0.0 {
        return None;
    }
    Some((v, unit.trim().to_ascii_lowercase()))
}

/// Parses `2ms`, `0.2ms`, `150us`, `1s`, `500ns` (and `0`).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, LinkParseError> {
    let err = || LinkParseError::Duration(text.to_string());
    let (v, unit) = split_number(text).ok_or_else(err)?;
    let secs = match unit.as_str() {
        "" if v == 0.0 => 0.0,
        "s" | "sec" | "secs" => v,
        "ms" | "msec" => v * 1e-3,
        "us" | "µs" | "usec" => v * 1e-6,
        "ns" | "nsec" => v * 1e-9,
        _ => return Err(err()),
    };
    if secs > 3600.0 {
        return Err(err());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a rate in bits per second: `10gbit`, `100mbit`, `512kbit`, `9600bit` or a bare
/// number (bits/s); `bps`, `kbps`, `mbps`, `gbps` are bytes per second, as in `tc`.
pub(crate) fn parse_rate(text: &str) -> Result<u64, LinkParseError> {
    let err = || LinkParseError::Rate(text.to_string());
    let (v, unit) = split_number(text).ok_or_else(err)?;
    let bits = match unit.as_str() {
        "" | "bit" => v,
        "kbit" => v * 1e3,
        "mbit" => v * 1e6,
        "gbit" => v * 1e9,
        "tbit" => v * 1e12,
        "bps" => v * 8.0,
        "kbps" => v * 8e3,
        "mbps" => v * 8e6,
        "gbps" => v * 8e9,
        _ => return Err(err()),
    };
    if !(1.0..=1e15).contains(&bits) {
        return Err(err());
    }
    Ok(bits.round() as u64)
}

/// Parses `1%`, `0.5%` or a fraction in `[0, 1]`.
pub(super) fn parse_probability(text: &str) -> Result<f64, LinkParseError> {
    let err = || LinkParseError::Probability(text.to_string());
    let (v, unit) = split_number(text).ok_or_else(err)?;
    let p = match unit.as_str() {
        "%" => v / 100.0,
        "" => v,
        _ => return Err(err()),
    };
    if !(0.0..=1.0).contains(&p) {
        return Err(err());
    }
    Ok(p)
}

/// Parses a size in bytes: `65536`, `64kb`, `1mb` (powers of ten), `64kib`, `1mib`.
pub(crate) fn parse_size(text: &str) -> Result<u64, LinkParseError> {
    let err = || LinkParseError::Size(text.to_string());
    let (v, unit) = split_number(text).ok_or_else(err)?;
    let bytes = match unit.as_str() {
        "" | "b" => v,
        "k" | "kb" => v * 1e3,
        "m" | "mb" => v * 1e6,
        "g" | "gb" => v * 1e9,
        "kib" => v * 1024.0,
        "mib" => v * 1024.0 * 1024.0,
        "gib" => v * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(err()),
    };
    if bytes > 1e12 {
        return Err(err());
    }
    Ok(bytes.round() as u64)
}

/// Parses `host:port` (names are resolved, the first address is used).
pub(super) fn parse_addr(text: &str) -> Result<SocketAddr, LinkParseError> {
    let t = text.trim();
    let t = t.strip_prefix("quic://").or_else(|| t.strip_prefix("udp://")).unwrap_or(t);
    t.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| LinkParseError::Address(text.to_string()))
}

/// Formats a rate the way it is written on the command line (`100mbit`).
pub(crate) fn format_rate(bits: u64) -> String {
    for (unit, f) in [("tbit", 1e12), ("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)] {
        let v = bits as f64 / f;
        if v >= 1.0 {
            return format!("{}{unit}", trim_float(v));
        }
    }
    format!("{bits}bit")
}

/// Formats a duration as milliseconds (`0.2ms`).
pub(crate) fn format_ms(d: Duration) -> String {
    format!("{}ms", trim_float(d.as_secs_f64() * 1e3))
}

pub(super) fn trim_float(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_of_the_command_line() {
        assert_eq!(parse_duration("2ms").unwrap(), Duration::from_millis(2));
        assert_eq!(parse_duration("0.2ms").unwrap(), Duration::from_micros(200));
        assert_eq!(parse_duration("150us").unwrap(), Duration::from_micros(150));
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        for bad in ["2", "ms", "-1ms", "2 parsecs", "", "1e3ms", "nanms"] {
            let e = parse_duration(bad).unwrap_err().to_string();
            assert!(e.contains("2ms"), "{bad}: {e}");
        }
        assert_eq!(parse_rate("10gbit").unwrap(), 10_000_000_000);
        assert_eq!(parse_rate("100mbit").unwrap(), 100_000_000);
        assert_eq!(parse_rate("1.5mbit").unwrap(), 1_500_000);
        assert_eq!(parse_rate("1mbps").unwrap(), 8_000_000);
        assert!(parse_rate("fast").unwrap_err().to_string().contains("100mbit"));
        assert!(parse_rate("0mbit").is_err());
        assert_eq!(parse_probability("1%").unwrap(), 0.01);
        assert_eq!(parse_probability("0.5%").unwrap(), 0.005);
        assert_eq!(parse_probability("0.25").unwrap(), 0.25);
        assert!(parse_probability("5").unwrap_err().to_string().contains('%'));
        assert!(parse_probability("101%").is_err());
        assert_eq!(parse_size("1mb").unwrap(), 1_000_000);
        assert_eq!(parse_size("64kib").unwrap(), 65_536);
        assert!(parse_size("lots").is_err());
        assert_eq!(format_rate(100_000_000), "100mbit");
        assert_eq!(format_rate(10_000_000_000), "10gbit");
        assert_eq!(format_ms(Duration::from_micros(200)), "0.2ms");
    }
}
