//! Durations in the config: `"250ms"`, `"1s"`, `"2m"`, `"1h"`, or a number of seconds.

use std::time::Duration;

/// The longest duration, in seconds (about 31 years), whatever its form: a
/// longer one would overflow the clock arithmetic it reaches
/// (`Instant + duration`), and no timeout or interval needs more.
pub const MAX_SECS: u64 = 1_000_000_000;

fn too_long(written: impl std::fmt::Display) -> String {
    format!("{written} is too long: at most {MAX_SECS} seconds")
}

/// Parses a duration written in TOML.
pub fn from_toml(value: &toml::Value) -> Result<Duration, String> {
    match value {
        toml::Value::Integer(i) if *i >= 0 && *i as u64 <= MAX_SECS => {
            Ok(Duration::from_secs(*i as u64))
        }
        toml::Value::Integer(i) if *i > 0 => Err(too_long(i)),
        toml::Value::Float(f) if f.is_finite() && *f >= 0.0 && *f <= MAX_SECS as f64 => {
            Ok(Duration::from_secs_f64(*f))
        }
        toml::Value::Float(f) if *f > MAX_SECS as f64 => Err(too_long(f)),
        toml::Value::String(s) => parse(s),
        other => Err(format!(
            "expected a duration such as \"1s\" or \"250ms\", got {}",
            describe(other)
        )),
    }
}

fn describe(value: &toml::Value) -> String {
    match value {
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        other => other.type_str().to_string(),
    }
}

/// Parses `"<number><unit>"` with unit ms, s, m or h.
///
/// ```
/// use std::time::Duration;
/// use canary_gateway::config::duration::parse;
/// assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
/// assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
/// assert!(parse("soon").is_err());
/// ```
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let bad = || format!("`{text}` is not a duration (use e.g. \"250ms\", \"1s\", \"2m\")");
    let n: f64 = number.parse().map_err(|_| bad())?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad()),
    };
    if !secs.is_finite() {
        return Err(bad());
    }
    if secs > MAX_SECS as f64 {
        return Err(too_long(format!("`{text}`")));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse("soon").is_err());
        assert!(parse("5 fortnights").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn every_form_is_bounded_alike() {
        let max = Duration::from_secs(MAX_SECS);
        assert_eq!(from_toml(&toml::Value::Integer(MAX_SECS as i64)), Ok(max));
        assert_eq!(from_toml(&toml::Value::Float(MAX_SECS as f64)), Ok(max));
        assert_eq!(parse("1000000000s"), Ok(max));
        for too_long in [
            toml::Value::Integer(MAX_SECS as i64 + 1),
            toml::Value::Integer(i64::MAX),
            toml::Value::Float(1e10),
            toml::Value::Float(f64::INFINITY),
            toml::Value::String("1000000001s".into()),
            toml::Value::String("300000h".into()),
        ] {
            let err = from_toml(&too_long).unwrap_err();
            assert!(err.contains("too long"), "{too_long}: {err}");
        }
    }
}
