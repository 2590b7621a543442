//! Control path: parsing and checking admin request bodies. Anything odd is a
//! precise 4xx, never a panic and never a partial change.

use std::collections::BTreeMap;

use http::StatusCode;
use http_body::Body;
use http_body_util::{BodyExt, Limited};

use crate::config::MAX_TOTAL_WEIGHT;

/// Largest admin request body.
pub const MAX_BODY: usize = 64 * 1024;

/// A rejected admin request: status and message.
#[derive(Debug, PartialEq, Eq)]
pub struct Rejection {
    pub status: StatusCode,
    pub message: String,
}

impl Rejection {
    pub fn bad(message: impl Into<String>) -> Rejection {
        Rejection {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

/// Reads a whole body of at most [`MAX_BODY`] bytes.
pub async fn read_body<B>(body: B) -> Result<bytes::Bytes, Rejection>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Rejection {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("the request body is larger than {MAX_BODY} bytes"),
        }),
        Err(e) => Err(Rejection::bad(format!("cannot read the request body: {e}"))),
    }
}

/// Parses a JSON object body.
fn json_object(body: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, Rejection> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(Rejection::bad(
            "the request body is empty; a JSON object is expected",
        ));
    }
    match super::json::parse(body) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(Rejection::bad("the request body must be a JSON object")),
        Err(e) => Err(Rejection::bad(e.to_string())),
    }
}

fn deny_other_keys(
    map: &serde_json::Map<String, serde_json::Value>,
    allowed: &[&str],
) -> Result<(), Rejection> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) if allowed.is_empty() => Err(Rejection::bad(format!(
            "unknown field `{k}`: this endpoint takes no fields (send no body, or `{{}}`)"
        ))),
        Some(k) => Err(Rejection::bad(format!(
            "unknown field `{k}`; expected {}",
            allowed
                .iter()
                .map(|a| format!("`{a}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        None => Ok(()),
    }
}

/// `PUT /weights`: `{"weights": {"v2": 5, "v1": 95}}`.
pub fn weights(body: &[u8]) -> Result<BTreeMap<String, u32>, Rejection> {
    let map = json_object(body)?;
    deny_other_keys(&map, &["weights"])?;
    let weights = match map.get("weights") {
        Some(serde_json::Value::Object(w)) => w,
        Some(_) => {
            return Err(Rejection::bad(
                "`weights` must be an object of version name to weight",
            ));
        }
        None => return Err(Rejection::bad("missing field `weights`")),
    };
    if weights.is_empty() {
        return Err(Rejection::bad("`weights` names no version"));
    }
    let mut out = BTreeMap::new();
    for (name, value) in weights {
        let weight = match value {
            serde_json::Value::Number(n) => match (n.as_u64(), n.as_i64()) {
                (Some(w), _) if w <= MAX_TOTAL_WEIGHT => w as u32,
                (Some(w), _) => {
                    return Err(Rejection::bad(format!(
                        "weight of `{name}` is {w}, above the maximum total of {MAX_TOTAL_WEIGHT}"
                    )));
                }
                (None, Some(negative)) => {
                    return Err(Rejection::bad(format!(
                        "weight of `{name}` must not be negative, got {negative}"
                    )));
                }
                // Beyond the 64-bit integers (JSON writes them as it likes):
                // too large or too negative, not "not an integer".
                _ => match n.as_f64() {
                    Some(f) if f > MAX_TOTAL_WEIGHT as f64 => {
                        return Err(Rejection::bad(format!(
                            "weight of `{name}` is {n}, too large: above the maximum total of {MAX_TOTAL_WEIGHT}"
                        )));
                    }
                    Some(f) if f < 0.0 => {
                        return Err(Rejection::bad(format!(
                            "weight of `{name}` must not be negative, got {n}"
                        )));
                    }
                    _ => {
                        return Err(Rejection::bad(format!(
                            "weight of `{name}` must be an integer (no decimal point or exponent), got {n}"
                        )));
                    }
                },
            },
            other => {
                return Err(Rejection::bad(format!(
                    "weight of `{name}` must be a non-negative integer, got {other}"
                )));
            }
        };
        out.insert(name.clone(), weight);
    }
    Ok(out)
}

/// `POST /promote`: `{"version": "v2"}`.
pub fn promote(body: &[u8]) -> Result<String, Rejection> {
    let map = json_object(body)?;
    deny_other_keys(&map, &["version"])?;
    match map.get("version") {
        Some(serde_json::Value::String(v)) if !v.is_empty() => Ok(v.clone()),
        Some(_) => Err(Rejection::bad("`version` must be a version name")),
        None => Err(Rejection::bad("missing field `version`")),
    }
}

/// `POST /rollback`, `POST /reload`, `POST /rollout/pause|resume|abort|promote`: an empty
/// body or `{}` (a field is refused, never ignored: `{"canary": "v3"}` to
/// `/rollout/promote` is no promote of the running canary).
pub fn no_fields(body: &[u8]) -> Result<(), Rejection> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(());
    }
    let map = json_object(body)?;
    deny_other_keys(&map, &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_checked() {
        assert_eq!(
            weights(br#"{"weights":{"v2":5,"v1":95}}"#)
                .unwrap()
                .get("v2"),
            Some(&5)
        );
        for (body, needle) in [
            (r#"{"weights":{"v2":-1}}"#, "negative"),
            (
                r#"{"weights":{"v2":2.5}}"#,
                "must be an integer (no decimal point",
            ),
            (
                r#"{"weights":{"v2":1E2}}"#,
                "an integer (no decimal point or exponent), got 100.0",
            ),
            (
                r#"{"weights":{"v2":-0}}"#,
                "an integer (no decimal point or exponent), got -0.0",
            ),
            (r#"{"weights":{"v2":"5"}}"#, "non-negative integer"),
            (r#"{"weights":{"v2":2000000}}"#, "maximum"),
            (
                r#"{"weights":{"v2":18446744073709551616}}"#,
                "`v2` is 1.8446744073709552e+19, too large",
            ),
            (r#"{"weights":{"v2":1e300}}"#, "`v2` is 1e+300, too large"),
            (r#"{"weights":{"v2":2.5e6}}"#, "too large"),
            (r#"{"weights":{"v2":-1e300}}"#, "negative"),
            (r#"{"weights":{"v2":-9223372036854775809}}"#, "negative"),
            (r#"{"weights":{}}"#, "names no version"),
            (r#"{"weight":{"v2":1}}"#, "unknown field"),
            (r#"{"weights":"#, "malformed JSON"),
            ("", "empty"),
            ("[1]", "JSON object"),
            (
                r#"{"weights":{"v2":5,"v2":95}}"#,
                "duplicate key `weights.v2`",
            ),
            (
                r#"{"weights":{"v2":5},"weights":{"v2":6}}"#,
                "duplicate key `weights`",
            ),
        ] {
            let err = weights(body.as_bytes()).unwrap_err();
            assert!(err.message.contains(needle), "{body}: {}", err.message);
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn a_key_given_twice_is_refused_in_every_body() {
        let err = promote(br#"{"version":"v2","version":"v3"}"#).unwrap_err();
        assert!(err.message.contains("duplicate key `version`"), "{err:?}");
        let err = no_fields(br#"{"a":1,"a":1}"#).unwrap_err();
        assert!(err.message.contains("duplicate key `a`"), "{err:?}");
    }
}
