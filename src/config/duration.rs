//! Durations in the config: `"250ms"`, `"1s"`, `"2m"`, `"1h"`, or a number of seconds.

use std::time::Duration;

/// Parses a duration written in TOML.
pub fn from_toml(value: &toml::Value) -> Result<Duration, String> {
    match value {
        toml::Value::Integer(i) if *i >= 0 => Ok(Duration::from_secs(*i as u64)),
        toml::Value::Float(f) if f.is_finite() && *f >= 0.0 && *f < 1e9 => {
            Ok(Duration::from_secs_f64(*f))
        }
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
    if !secs.is_finite() || secs > 1e9 {
        return Err(bad());
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
}
