//! Control path: admin request bodies as JSON, refusing a key given twice.
//!
//! `serde_json::Value` keeps the last of two equal keys, so
//! `{"weights":{"v2":5,"v2":95}}` would silently mean 95. An operator who
//! wrote a key twice meant one of them, and which is not ours to guess: such
//! a body is refused, naming the key (with its path), before anything changes.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Why a body is not acceptable JSON.
#[derive(Debug)]
pub enum BodyError {
    /// A key appears twice in one object; its path, e.g. `weights.v2`.
    DuplicateKey(String),
    /// Not JSON at all (or trailing characters after it).
    Malformed(serde_json::Error),
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::DuplicateKey(path) => {
                write!(f, "duplicate key `{path}`: each key may be given once")
            }
            BodyError::Malformed(e) => write!(f, "malformed JSON: {e}"),
        }
    }
}

/// Parses `body` as one JSON value in which no object repeats a key.
pub fn parse(body: &[u8]) -> Result<Value, BodyError> {
    let duplicate = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = Strict {
        path: "",
        duplicate: &duplicate,
    }
    .deserialize(&mut de)
    .and_then(|value| de.end().map(|()| value));
    parsed.map_err(|e| match duplicate.into_inner() {
        Some(path) => BodyError::DuplicateKey(path),
        None => BodyError::Malformed(e),
    })
}

/// Builds a [`Value`] as serde_json does, but a repeated key is an error
/// (recorded in `duplicate`, since the error type is the deserializer's).
/// Nesting is bounded by serde_json's recursion limit.
#[derive(Clone, Copy)]
struct Strict<'a> {
    path: &'a str,
    duplicate: &'a RefCell<Option<String>>,
}

impl Strict<'_> {
    fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, i: i64) -> Result<Value, E> {
        Ok(Value::Number(i.into()))
    }

    fn visit_u64<E>(self, u: u64) -> Result<Value, E> {
        Ok(Value::Number(u.into()))
    }

    fn visit_f64<E>(self, f: f64) -> Result<Value, E> {
        // JSON numbers are finite; `Null` as serde_json does otherwise.
        Ok(Number::from_f64(f).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_string()))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        loop {
            let path = format!("{}[{}]", self.path, out.len());
            let element = Strict {
                path: &path,
                duplicate: self.duplicate,
            };
            match seq.next_element_seed(element)? {
                Some(value) => out.push(value),
                None => return Ok(Value::Array(out)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = self.key_path(&key);
            if out.contains_key(&key) {
                let message = format!("duplicate key `{path}`");
                *self.duplicate.borrow_mut() = Some(path);
                return Err(de::Error::custom(message));
            }
            let value = map.next_value_seed(Strict {
                path: &path,
                duplicate: self.duplicate,
            })?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn duplicate(body: &str) -> Option<String> {
        match parse(body.as_bytes()) {
            Err(BodyError::DuplicateKey(path)) => Some(path),
            _ => None,
        }
    }

    #[test]
    fn parses_like_serde_json() {
        for body in [
            r#"{"weights":{"v2":5,"v1":95}}"#,
            r#"{"a":[1,-2,2.5,"x",null,true,{"b":{}}],"c":18446744073709551616}"#,
            r#"  {"a":{"a":{"a":1}}, "b":{"a":1}}  "#,
            "[1, 2]",
            "\"text\"",
        ] {
            let strict = parse(body.as_bytes()).unwrap();
            let plain: Value = serde_json::from_str(body).unwrap();
            assert_eq!(strict, plain, "{body}");
        }
    }

    #[test]
    fn a_key_given_twice_is_named_at_any_depth() {
        assert_eq!(
            duplicate(r#"{"weights":{"v2":5,"v2":95}}"#).as_deref(),
            Some("weights.v2")
        );
        assert_eq!(
            duplicate(r#"{"canary":"v2","canary":"v3"}"#).as_deref(),
            Some("canary")
        );
        assert_eq!(
            duplicate(r#"{"a":[{"b":1},{"c":{"d":1,"d":1}}]}"#).as_deref(),
            Some("a[1].c.d")
        );
        let err = parse(br#"{"x":1,"x":1}"#).unwrap_err().to_string();
        assert!(err.contains("duplicate key `x`"), "{err}");
    }

    #[test]
    fn malformed_json_is_not_a_duplicate() {
        for body in ["{oops", r#"{"a":1} {"a":1}"#, "", r#"{"a":1,"b""#] {
            assert!(
                matches!(parse(body.as_bytes()), Err(BodyError::Malformed(_))),
                "{body}"
            );
        }
        let deep = "[".repeat(10_000);
        assert!(matches!(
            parse(deep.as_bytes()),
            Err(BodyError::Malformed(_))
        ));
    }
}
