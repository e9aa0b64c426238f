//! Human-friendly units in the config file: durations (`"2s"`, `"500ms"`, `"15m"`) and sizes
//! (`"16 MiB"`, `"1GB"`, or a plain number of bytes).

use std::time::Duration;

/// Parses a duration: a non-negative number followed by `ms`, `s`, `m`, `h` or `d`.
/// A unit is required, because `min-interval = 2` could mean seconds or milliseconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{text:?} has no unit; write it like \"2s\", \"500ms\", \"15m\""))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like \"2s\", \"500ms\", \"15m\""))?;
    let unit_secs = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} in {text:?}; use ms, s, m, h or d"
            ))
        }
    };
    Duration::try_from_secs_f64(value * unit_secs).map_err(|_| format!("{text:?} is out of range"))
}

/// Parses a size: a number of bytes, optionally followed by `B`, `KiB`, `MiB`, `GiB` (powers of
/// 1024) or `kB`, `MB`, `GB` (powers of 1000).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size like \"16 MiB\" or \"1GB\""))?;
    let multiplier: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "kB" | "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {text:?}; use B, KiB, MiB, GiB, kB, MB or GB"
            ))
        }
    };
    let bytes = value * multiplier;
    if !(0.0..=u64::MAX as f64).contains(&bytes) {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(bytes.round() as u64)
}

/// Formats a byte count the way the config accepts it back, e.g. `16 MiB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5 s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("2").unwrap_err().contains("has no unit"));
        assert!(parse_duration("2 weeks")
            .unwrap_err()
            .contains("unknown duration unit"));
        assert!(parse_duration("-2s").is_err());
    }

    #[test]
    fn sizes_take_binary_and_decimal_units() {
        assert_eq!(parse_size("16 MiB"), Ok(16 * 1024 * 1024));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1.5 KiB"), Ok(1536));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12 parsecs")
            .unwrap_err()
            .contains("unknown size unit"));
        assert!(parse_size("MiB").is_err());
    }

    #[test]
    fn formatted_sizes_parse_back() {
        for bytes in [0, 512, 1024, 16 << 20, 3 << 30, 1536] {
            assert_eq!(parse_size(&format_size(bytes)), Ok(bytes), "{bytes}");
        }
        assert_eq!(format_size(16 << 20), "16 MiB");
    }
}
