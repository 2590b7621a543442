//! Rollout: the plan. Every setting but `canary` has a default from the
//! optional `[rollout]` config table (itself defaulted here); a POST body
//! overrides them field by field. Errors name the field.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Why a plan (or the `[rollout]` table) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct PlanError {
    pub field: String,
    pub reason: String,
}

fn invalid(field: &str, reason: impl Into<String>) -> PlanError {
    PlanError {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// What happens after the last step passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnSuccess {
    /// The canary takes all the traffic and becomes the stable version.
    Promote,
    /// The last step's weights stay.
    Hold,
}

/// The finest share a step can name, in percent (one in a million).
pub const SHARE_RESOLUTION: f64 = 0.0001;
/// At most this many steps.
pub const MAX_STEPS: usize = 100;
/// The longest interval, in seconds (a day).
pub const MAX_INTERVAL_S: f64 = 86_400.0;

/// Everything a rollout needs but the canary's name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// The canary's share at each step, in percent, strictly increasing, in (0, 100].
    pub steps: Vec<f64>,
    /// Seconds between steps (each step's analysis window).
    pub interval_s: f64,
    /// Fewer canary requests in a window hold the step.
    pub min_requests: u64,
    pub max_error_rate: f64,
    pub max_p99_ms: f64,
    pub max_p99_ratio: f64,
    /// Of the one-sided error-rate test (abort when p < 1 - confidence).
    pub confidence: f64,
    pub on_success: OnSuccess,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            steps: vec![1.0, 5.0, 10.0, 25.0, 50.0, 100.0],
            interval_s: 60.0,
            min_requests: 200,
            max_error_rate: 0.01,
            max_p99_ms: 500.0,
            max_p99_ratio: 1.5,
            confidence: 0.99,
            on_success: OnSuccess::Promote,
            webhook: None,
            gate: None,
        }
    }
}

/// Validated settings hold no NaN, so equality is reflexive.
impl Eq for Settings {}

/// The fields of [`Settings`], as written.
const FIELDS: [&str; 10] = [
    "steps",
    "interval_s",
    "min_requests",
    "max_error_rate",
    "max_p99_ms",
    "max_p99_ratio",
    "confidence",
    "on_success",
    "webhook",
    "gate",
];

impl Settings {
    /// `self` with the fields of `map` applied and checked; a key not in
    /// `FIELDS` or `extra` is an error.
    pub fn merge(&self, map: &Map<String, Value>, extra: &[&str]) -> Result<Settings, PlanError> {
        if let Some(unknown) = map
            .keys()
            .find(|k| !FIELDS.contains(&k.as_str()) && !extra.contains(&k.as_str()))
        {
            return Err(invalid(
                unknown,
                format!("unknown field; expected one of {}", FIELDS.join(", ")),
            ));
        }
        let mut s = self.clone();
        for (key, value) in map {
            match key.as_str() {
                "steps" => s.steps = steps(value)?,
                "interval_s" => {
                    s.interval_s = number(key, value)?;
                    if s.interval_s < 1.0 || s.interval_s > MAX_INTERVAL_S {
                        return Err(invalid(
                            key,
                            format!(
                                "must be between 1 and {MAX_INTERVAL_S} seconds, got {}",
                                s.interval_s
                            ),
                        ));
                    }
                }
                "min_requests" => {
                    s.min_requests = match (value.as_u64(), value.as_f64()) {
                        // A window in which the canary served nothing is
                        // no evidence: it would pass, and promote a canary
                        // that never served a request.
                        (Some(0), _) => {
                            return Err(invalid(
                                key,
                                "must be at least 1: a window with no canary request is no evidence to pass",
                            ));
                        }
                        (Some(n), _) => n,
                        (None, Some(f)) if f >= u64::MAX as f64 => {
                            return Err(invalid(
                                key,
                                format!("{value} is too large: at most {}", u64::MAX),
                            ));
                        }
                        _ => {
                            return Err(invalid(
                                key,
                                format!(
                                    "must be a whole number of at least 1 (no decimal point or exponent), got {value}"
                                ),
                            ));
                        }
                    };
                }
                "max_error_rate" => s.max_error_rate = within(key, value, 0.0, 1.0)?,
                "max_p99_ms" => {
                    s.max_p99_ms = number(key, value)?;
                    if s.max_p99_ms <= 0.0 {
                        return Err(invalid(key, "must be above 0"));
                    }
                }
                "max_p99_ratio" => {
                    s.max_p99_ratio = number(key, value)?;
                    if s.max_p99_ratio < 1.0 {
                        return Err(invalid(key, "must be at least 1"));
                    }
                }
                "confidence" => {
                    s.confidence = within(key, value, 0.5, 1.0)?;
                    if s.confidence >= 1.0 {
                        return Err(invalid(key, "must be below 1 (1 would never abort)"));
                    }
                }
                "on_success" => {
                    s.on_success = match value.as_str() {
                        Some("promote") => OnSuccess::Promote,
                        Some("hold") => OnSuccess::Hold,
                        _ => {
                            return Err(invalid(
                                key,
                                format!("must be \"promote\" or \"hold\", got {value}"),
                            ));
                        }
                    }
                }
                "webhook" => s.webhook = url(key, value)?,
                "gate" => s.gate = url(key, value)?,
                _ => {}
            }
        }
        Ok(s)
    }

    /// The `[rollout]` config table (`None`: the built-in defaults).
    pub fn from_toml(table: Option<&toml::Table>) -> Result<Settings, PlanError> {
        let Some(table) = table else {
            return Ok(Settings::default());
        };
        // JSON has no NaN or infinity (serde_json makes them null): named
        // here, as written, before the table becomes JSON.
        for (key, value) in table {
            if let Some((field, f)) = non_finite(key.clone(), value) {
                return Err(invalid(&field, format!("must be a finite number, got {f}")));
            }
        }
        let value = serde_json::to_value(table).map_err(|e| invalid("rollout", e.to_string()))?;
        let map = value.as_object().cloned().unwrap_or_default();
        Settings::default().merge(&map, &[])
    }

    /// The interval, within the bounds a plan is checked against: a plan
    /// read back from the shared store was not checked by this gateway, and
    /// an out-of-range `interval_s` there must not overflow the clock
    /// arithmetic (`Duration::from_secs_f64` panics above `u64::MAX` s).
    pub fn interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.interval_ms())
    }

    /// [`Settings::interval`] in milliseconds.
    pub fn interval_ms(&self) -> u64 {
        let secs = if self.interval_s.is_nan() {
            1.0
        } else {
            self.interval_s.clamp(1.0, MAX_INTERVAL_S)
        };
        (secs * 1000.0) as u64
    }
}

/// A rollout's plan: the canary against the stable version of its start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub canary: String,
    pub stable: String,
    #[serde(flatten)]
    pub settings: Settings,
}

impl Plan {
    /// A `POST /rollout` body, over `defaults`, against the stable version in
    /// force. Whether the canary is a version of the config is checked by the
    /// caller.
    pub fn from_body(body: &[u8], defaults: &Settings, stable: &str) -> Result<Plan, PlanError> {
        let value = crate::admin::json::parse(body).map_err(|e| match e {
            crate::admin::json::BodyError::DuplicateKey(path) => invalid(
                &path,
                "is given more than once (duplicate key); give each key once",
            ),
            crate::admin::json::BodyError::Malformed(e) => {
                invalid("body", format!("not valid JSON: {e}"))
            }
        })?;
        let Value::Object(map) = value else {
            return Err(invalid("body", "must be a JSON object"));
        };
        let canary = match map.get("canary") {
            Some(Value::String(c)) if !c.is_empty() => c.clone(),
            Some(other) => {
                return Err(invalid(
                    "canary",
                    format!("must be a version name, got {other}"),
                ));
            }
            None => return Err(invalid("canary", "is required")),
        };
        if canary == stable {
            return Err(invalid(
                "canary",
                format!("`{canary}` is the stable version; name the version to roll out"),
            ));
        }
        let settings = defaults.merge(&map, &["canary"])?;
        Ok(Plan {
            canary,
            stable: stable.to_string(),
            settings,
        })
    }
}

/// The first NaN or infinite float in `value` (the TOML value of `field`),
/// with its field (`steps[1]`).
fn non_finite(field: String, value: &toml::Value) -> Option<(String, f64)> {
    match value {
        toml::Value::Float(f) if !f.is_finite() => Some((field, *f)),
        toml::Value::Array(list) => list
            .iter()
            .enumerate()
            .find_map(|(i, v)| non_finite(format!("{field}[{i}]"), v)),
        toml::Value::Table(table) => table
            .iter()
            .find_map(|(k, v)| non_finite(format!("{field}.{k}"), v)),
        _ => None,
    }
}

fn number(key: &str, value: &Value) -> Result<f64, PlanError> {
    value
        .as_f64()
        .filter(|f| f.is_finite())
        .ok_or_else(|| invalid(key, format!("must be a number, got {value}")))
}

fn within(key: &str, value: &Value, lo: f64, hi: f64) -> Result<f64, PlanError> {
    let f = number(key, value)?;
    if f < lo || f > hi {
        return Err(invalid(
            key,
            format!("must be between {lo} and {hi}, got {f}"),
        ));
    }
    Ok(f)
}

fn steps(value: &Value) -> Result<Vec<f64>, PlanError> {
    let key = "steps";
    let list = value
        .as_array()
        .ok_or_else(|| invalid(key, format!("must be a list of percentages, got {value}")))?;
    if list.is_empty() || list.len() > MAX_STEPS {
        return Err(invalid(key, format!("must have 1 to {MAX_STEPS} steps")));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        let field = format!("steps[{i}]");
        let s = number(&field, v)?;
        if s <= 0.0 || s > 100.0 {
            return Err(invalid(&field, format!("{s} is outside (0, 100]")));
        }
        let units = s / SHARE_RESOLUTION;
        if (units - units.round()).abs() > 1e-6 {
            return Err(invalid(
                &field,
                format!("{s} is finer than the weights' resolution of {SHARE_RESOLUTION}%"),
            ));
        }
        if let Some(&last) = out.last()
            && s <= last
        {
            return Err(invalid(
                &field,
                format!("steps must be strictly increasing: {s} follows {last}"),
            ));
        }
        out.push(s);
    }
    Ok(out)
}

fn url(key: &str, value: &Value) -> Result<Option<String>, PlanError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => {
            super::notify::Target::parse(s).map_err(|reason| invalid(key, reason))?;
            Ok(Some(s.clone()))
        }
        other => Err(invalid(
            key,
            format!("must be an http:// or https:// URL, got {other}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> Result<Plan, PlanError> {
        Plan::from_body(json.as_bytes(), &Settings::default(), "v1")
    }

    #[test]
    fn the_issue_example_parses_and_defaults_fill_the_rest() {
        let p = body(r#"{"canary": "v2", "steps": [1, 5, 10, 25, 50, 100], "interval_s": 60, "min_requests": 200, "max_error_rate": 0.01, "max_p99_ms": 500, "max_p99_ratio": 1.5, "confidence": 0.99, "on_success": "promote", "webhook": "https://hooks.example/canary", "gate": "https://ci.example/approve"}"#).unwrap();
        assert_eq!(p.canary, "v2");
        assert_eq!(
            p.settings.gate.as_deref(),
            Some("https://ci.example/approve")
        );
        let p = body(r#"{"canary": "v2", "steps": [0.1, 2.5]}"#).unwrap();
        assert_eq!(p.settings.steps, vec![0.1, 2.5]);
        assert_eq!(p.settings.interval_s, 60.0);
        assert_eq!(p.settings.on_success, OnSuccess::Promote);
    }

    /// TOML has NaN and infinities, JSON does not: the `[rollout]` table's
    /// error says what was written, not "got null".
    #[test]
    fn a_non_finite_number_in_the_rollout_table_is_named_as_written() {
        let error = |text: &str| {
            let table: toml::Table = toml::from_str(text).unwrap();
            let e = Settings::from_toml(Some(&table)).unwrap_err();
            (e.field, e.reason)
        };
        let (field, reason) = error("max_error_rate = nan");
        assert_eq!(field, "max_error_rate");
        assert!(reason.contains("got NaN"), "{reason}");
        let (field, reason) = error("steps = [1, -inf]");
        assert_eq!(field, "steps[1]");
        assert!(reason.contains("got -inf"), "{reason}");
        let (field, reason) = error("max_p99_ms = inf");
        assert_eq!(field, "max_p99_ms");
        assert!(
            reason.contains("finite") && !reason.contains("null"),
            "{reason}"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let field = |json: &str| body(json).unwrap_err().field;
        assert_eq!(field(r#"{"steps": [1]}"#), "canary");
        assert_eq!(field(r#"{"canary": "v1"}"#), "canary");
        assert_eq!(field(r#"{"canary": "v2", "steps": [5, 5]}"#), "steps[1]");
        assert_eq!(field(r#"{"canary": "v2", "steps": [0, 5]}"#), "steps[0]");
        assert_eq!(field(r#"{"canary": "v2", "steps": [5, 101]}"#), "steps[1]");
        assert_eq!(field(r#"{"canary": "v2", "steps": []}"#), "steps");
        assert_eq!(field(r#"{"canary": "v2", "steps": [0.00001]}"#), "steps[0]");
        assert_eq!(
            field(r#"{"canary": "v2", "interval_s": 0.5}"#),
            "interval_s"
        );
        assert_eq!(field(r#"{"canary": "v2", "confidence": 1}"#), "confidence");
        assert_eq!(
            field(r#"{"canary": "v2", "on_success": "stay"}"#),
            "on_success"
        );
        assert_eq!(field(r#"{"canary": "v2", "gate": "ftp://x"}"#), "gate");
        // Credentials in the URL would go out in the Host header: refused,
        // and not repeated in the message.
        let err =
            body(r#"{"canary": "v2", "webhook": "https://u:s3cret@hooks.example/x"}"#).unwrap_err();
        assert_eq!(err.field, "webhook");
        assert!(
            err.reason.contains("credentials") && !err.reason.contains("s3cret"),
            "{err}"
        );
        assert_eq!(
            field(r#"{"canary": "v2", "min_requests": -1}"#),
            "min_requests"
        );
        assert_eq!(
            field(r#"{"canary": "v2", "intervall_s": 5}"#),
            "intervall_s"
        );
        assert_eq!(field("[1]"), "body");
        assert_eq!(field(r#"{"canary": "v2", "canary": "v3"}"#), "canary");
        assert_eq!(
            field(r#"{"canary": "v2", "steps": [1], "steps": [5]}"#),
            "steps"
        );
        assert!(
            body(r#"{"canary": "v2", "canary": "v3"}"#)
                .unwrap_err()
                .reason
                .contains("duplicate key")
        );
    }

    #[test]
    fn a_huge_interval_is_refused_and_a_stored_one_cannot_overflow() {
        for huge in ["86401", "9223372036854775807", "1e300"] {
            let json = format!(r#"{{"canary": "v2", "interval_s": {huge}}}"#);
            let err = body(&json).unwrap_err();
            assert_eq!(err.field, "interval_s", "{huge}");
            assert!(err.reason.contains("86400"), "{huge}: {err}");
        }
        // A plan from the store is not checked again: its interval is bounded
        // where it is used.
        for stored in [1e300, f64::MAX, f64::NAN, -5.0] {
            let s = Settings {
                interval_s: stored,
                ..Settings::default()
            };
            assert!(s.interval() <= std::time::Duration::from_secs(86_400));
            assert!(s.interval_ms() >= 1000 && s.interval_ms() <= 86_400_000);
        }
    }

    #[test]
    fn a_count_beyond_64_bits_is_too_large_not_fractional() {
        let err = body(r#"{"canary": "v2", "min_requests": 18446744073709551616}"#).unwrap_err();
        assert_eq!(err.field, "min_requests");
        assert!(err.reason.contains("too large"), "{err}");
    }

    #[test]
    fn a_count_written_with_a_decimal_point_asks_for_an_integer() {
        let err = body(r#"{"canary": "v2", "min_requests": 5.0}"#).unwrap_err();
        assert_eq!(err.field, "min_requests");
        assert!(
            err.reason.contains("must be a whole number of at least 1"),
            "{err}"
        );
    }

    /// A window with no canary request is no evidence: `min_requests: 0`
    /// would let it pass (and promote a canary that served nothing).
    #[test]
    fn min_requests_is_at_least_one() {
        let err = body(r#"{"canary": "v2", "min_requests": 0}"#).unwrap_err();
        assert_eq!(err.field, "min_requests");
        assert!(err.reason.contains("at least 1"), "{err}");
        assert_eq!(
            body(r#"{"canary": "v2", "min_requests": 1}"#)
                .unwrap()
                .settings
                .min_requests,
            1
        );
    }

    #[test]
    fn the_config_table_sets_defaults() {
        let table: toml::Table =
            toml::from_str("interval_s = 5\nsteps = [10, 100]\non_success = \"hold\"").unwrap();
        let s = Settings::from_toml(Some(&table)).unwrap();
        assert_eq!((s.interval_s, s.on_success), (5.0, OnSuccess::Hold));
        let p = Plan::from_body(br#"{"canary": "v2"}"#, &s, "v1").unwrap();
        assert_eq!(p.settings.steps, vec![10.0, 100.0]);
        let table: toml::Table = toml::from_str("max_p99_ms = 0").unwrap();
        assert_eq!(
            Settings::from_toml(Some(&table)).unwrap_err().field,
            "max_p99_ms"
        );
    }
}
