//! Value parsers the apps share: sizes, times, and the addresses to dial.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

/// Parses a byte count: a number with an optional binary suffix. `K`, `M`, `G`, `T` and
/// `KiB`, `MiB`, `GiB`, `TiB` are powers of 1024 (as iperf's); `B` or none is bytes.
/// Case is ignored, and a fraction is allowed (`1.5G`).
pub fn size(s: &str) -> Result<u64, String> {
    let text = s.trim();
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(end);
    if number.is_empty() {
        return Err(format!(
            "invalid size {s:?}: expected a number of bytes with an optional unit, e.g. 64M"
        ));
    }
    let unit_bytes: u128 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown unit {other:?} in size {s:?}: use a number of bytes with K, M, G or T \
                 (or KiB, MiB, GiB, TiB; all powers of 1024), e.g. 64M"
            ));
        }
    };
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if (int.is_empty() && frac.is_empty()) || int.len() > 20 || frac.len() > 9 {
        return Err(format!(
            "invalid size {s:?}: expected a number of bytes with an optional unit, e.g. 64M"
        ));
    }
    let digits = |p: &str| -> Option<u128> {
        p.bytes().try_fold(0u128, |acc, b| {
            b.is_ascii_digit().then(|| acc * 10 + u128::from(b - b'0'))
        })
    };
    let (Some(int_v), Some(frac_v)) = (digits(int), digits(frac)) else {
        return Err(format!(
            "invalid size {s:?}: expected a number of bytes with an optional unit, e.g. 64M"
        ));
    };
    let too_large = || format!("size {s:?} is too large");
    // At most 20 + 9 digits, so the mantissa fits; the unit may not.
    let scale = 10u128.pow(frac.len() as u32);
    let bytes = (int_v * scale + frac_v)
        .checked_mul(unit_bytes)
        .ok_or_else(too_large)?
        / scale;
    u64::try_from(bytes).map_err(|_| too_large())
}

/// Parses an upstream: IP:PORT, or localhost:PORT.
pub fn target(s: &str) -> Result<SocketAddr, String> {
    if let Some(port) = s.strip_prefix("localhost:")
        && let Ok(port) = port.parse::<u16>()
    {
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    s.parse::<SocketAddr>().map_err(|_| {
        format!("{s:?} is not IP:PORT (tapnet has no name resolver), such as 10.0.0.1:80")
    })
}

/// Parses a timeout: a duration with a unit, or a bare number of seconds; not zero.
pub fn timeout(s: &str) -> Result<Duration, String> {
    let d = seconds(s)?;
    if d.is_zero() {
        return Err(format!("{s:?} must be above zero"));
    }
    Ok(d)
}

/// Parses a duration such as `1s`, `200ms` or a bare number of seconds (`0.5`).
pub fn seconds(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.ends_with(|c: char| c.is_ascii_digit() || c == '.') {
        netdev::parse_duration(&format!("{t}s"))
    } else {
        netdev::parse_duration(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units_and_refuse_nonsense() {
        let good = [
            ("0", 0),
            ("12", 12),
            ("12B", 12),
            ("1k", 1024),
            ("64M", 64 << 20),
            ("64MiB", 64 << 20),
            ("1.5G", 3 << 29),
            ("2GiB", 2 << 30),
            ("1T", 1 << 40),
        ];
        for (s, want) in good {
            assert_eq!(size(s), Ok(want), "{s}");
        }
        for s in [
            "",
            "12Q",
            "M",
            "1.2.3",
            "-5",
            "1e6",
            "99999999999999999999G",
            ".",
        ] {
            assert!(size(s).is_err(), "{s} parsed");
        }
    }

    #[test]
    fn targets_are_ip_and_port() {
        assert_eq!(target("10.0.0.1:80"), Ok("10.0.0.1:80".parse().unwrap()));
        assert_eq!(target("localhost:7"), Ok("127.0.0.1:7".parse().unwrap()));
        assert!(target("10.0.0.1").unwrap_err().contains("10.0.0.1"));
        assert!(target("example.com:80").is_err());
    }

    #[test]
    fn durations_default_to_seconds() {
        assert_eq!(seconds("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(seconds("2"), Ok(Duration::from_secs(2)));
        assert_eq!(seconds("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(seconds("1s"), Ok(Duration::from_secs(1)));
        assert!(seconds("-1").is_err());
        assert!(seconds("soon").is_err());
        assert!(timeout("0").is_err());
    }
}
