//! Configuration from the environment, for containers: the whole TOML in
//! `CANARY_GATEWAY_CONFIG` when no `--config` file is given, and a small set
//! of overrides for what differs per environment ([`OVERRIDES`]), applied to
//! a file config and an environment config alike.

use std::path::PathBuf;

use super::raw::RawConfig;
use super::{Config, ConfigError};

/// The variable holding the whole config when `--config` is not given.
pub const CONFIG_VAR: &str = "CANARY_GATEWAY_CONFIG";

/// The state file of a config from the environment, in the working directory.
pub const DEFAULT_STATE_FILE: &str = "gateway.state.json";

/// An environment override: the variable and the key it sets.
pub struct Override {
    pub var: &'static str,
    /// Dotted key; `versions.*.cloudmap.namespace` sets it in every version
    /// that has a `cloudmap` table.
    pub key: &'static str,
}

/// What differs per environment (account, stage), so that one config serves all.
pub const OVERRIDES: [Override; 3] = [
    Override {
        var: "CANARY_STORE_SERVICE_ID",
        key: "store.service_id",
    },
    Override {
        var: "CANARY_STORE_TABLE",
        key: "store.table",
    },
    Override {
        var: "CANARY_CLOUDMAP_NAMESPACE",
        key: "versions.*.cloudmap.namespace",
    },
];

/// The variable that overrides `key`, if one does.
pub fn variable_for(key: &str) -> Option<&'static str> {
    OVERRIDES.iter().find(|o| o.key == key).map(|o| o.var)
}

/// The overrides set in this process's environment (empty values count as unset).
pub fn overrides_from_env() -> Vec<(&'static Override, String)> {
    OVERRIDES
        .iter()
        .filter_map(|o| match std::env::var(o.var) {
            Ok(v) if !v.trim().is_empty() => Some((o, v)),
            _ => None,
        })
        .collect()
}

/// Sets the overrides' keys in a parsed config.
fn apply_to_table(table: &mut toml::Table, overrides: &[(&'static Override, String)]) {
    for (o, value) in overrides {
        let value = toml::Value::String(value.clone());
        match o.key.split_once(".*.") {
            Some((list, rest)) => {
                if let Some(toml::Value::Array(items)) = table.get_mut(list) {
                    for item in items.iter_mut() {
                        if let toml::Value::Table(t) = item {
                            set_existing_parent(t, rest, value.clone());
                        }
                    }
                }
            }
            None => set(table, o.key, value),
        }
    }
}

/// Validates `text` with the environment's overrides applied (see
/// [`parse_overridden`]).
pub fn parse_with_overrides(text: &str, origin: &str) -> Result<Config, ConfigError> {
    parse_overridden(text, origin, &overrides_from_env())
}

/// Validates `text` with `overrides` applied. Errors point into `text` as
/// the operator wrote it: the overrides are set in the parsed document, never
/// in a rewritten text (whose lines, without the comments, would not be the
/// file's); an error about an overridden key names its variable.
pub fn parse_overridden(
    text: &str,
    origin: &str,
    overrides: &[(&'static Override, String)],
) -> Result<Config, ConfigError> {
    if overrides.is_empty() {
        return Config::parse(text, origin);
    }
    let located = |e: &toml::de::Error| super::parse_error(text, origin, e);
    let mut table: toml::Table = toml::from_str(text).map_err(|e| located(&e))?;
    apply_to_table(&mut table, overrides);
    let raw: RawConfig = match toml::Value::Table(table).try_into() {
        Ok(raw) => raw,
        Err(e) => {
            // The same error in the operator's text: there its line is known.
            return Err(match toml::from_str::<RawConfig>(text) {
                Err(original) if original.message() == e.message() => located(&original),
                _ => {
                    let vars: Vec<&str> = overrides.iter().map(|(o, _)| o.var).collect();
                    ConfigError::Syntax {
                        path: origin.to_string(),
                        message: format!(
                            "{} (with the overrides of {})",
                            e.message().trim(),
                            vars.join(", ")
                        ),
                    }
                }
            });
        }
    };
    super::Validator { origin }
        .config(raw)
        .map_err(|e| match e {
            ConfigError::Invalid {
                path,
                line,
                key,
                reason,
            } => match overrides.iter().find(|(o, _)| sets(o.key, &key)) {
                // Not in the file: no line.
                Some((o, _)) => ConfigError::Invalid {
                    reason: format!(
                        "{reason} (`{}` is set by the environment variable {}, not in the file)",
                        o.key, o.var
                    ),
                    path,
                    line,
                    key,
                },
                None => ConfigError::Invalid {
                    path,
                    line,
                    key,
                    reason,
                }
                .located(text),
            },
            other => other,
        })
}

/// Whether the override of `pattern` sets the key of an error, `key` (or,
/// for `versions.*.cloudmap.namespace`, its `versions[N].cloudmap` table).
fn sets(pattern: &str, key: &str) -> bool {
    let Some((list, rest)) = pattern.split_once(".*.") else {
        return key == pattern;
    };
    let Some(tail) = key.strip_prefix(list).and_then(|k| k.strip_prefix('[')) else {
        return false;
    };
    let Some((index, field)) = tail.split_once("].") else {
        return false;
    };
    !index.is_empty()
        && index.bytes().all(|b| b.is_ascii_digit())
        && (field == rest || rest.starts_with(&format!("{field}.")))
}

/// Sets a dotted key, creating the tables on the way.
fn set(table: &mut toml::Table, key: &str, value: toml::Value) {
    match key.split_once('.') {
        None => {
            table.insert(key.to_string(), value);
        }
        Some((head, rest)) => {
            let entry = table
                .entry(head.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(t) = entry {
                set(t, rest, value);
            }
        }
    }
}

/// Sets a dotted key only where its parent table exists (a version without
/// `cloudmap` keeps its static endpoints).
fn set_existing_parent(table: &mut toml::Table, key: &str, value: toml::Value) {
    match key.split_once('.') {
        None => {
            table.insert(key.to_string(), value);
        }
        Some((head, rest)) => {
            if let Some(toml::Value::Table(t)) = table.get_mut(head) {
                set_existing_parent(t, rest, value);
            }
        }
    }
}

impl Config {
    /// The config held by `CANARY_GATEWAY_CONFIG`, with the overrides. Its
    /// state file defaults to `gateway.state.json` in the working directory.
    pub fn from_env() -> Result<Config, ConfigError> {
        let text = match std::env::var(CONFIG_VAR) {
            Ok(t) if !t.trim().is_empty() => t,
            Ok(_) => return Err(missing("is empty")),
            Err(std::env::VarError::NotPresent) => return Err(missing("is not set")),
            Err(std::env::VarError::NotUnicode(_)) => return Err(missing("is not UTF-8")),
        };
        Config::from_env_text(&text)
    }

    /// [`Config::from_env`] on the text the variable held (reloads re-read
    /// the text as it was at start).
    pub fn from_env_text(text: &str) -> Result<Config, ConfigError> {
        let mut config = parse_with_overrides(text, CONFIG_VAR)?;
        config.env_text = Some(text.to_string());
        if config.state_path.is_none() {
            config.state_path = Some(PathBuf::from(DEFAULT_STATE_FILE));
        }
        Ok(config)
    }

    /// Where the config came from, for `/status`.
    pub fn source_label(&self) -> String {
        match (&self.source, &self.env_text) {
            (Some(p), _) => p.display().to_string(),
            (None, Some(_)) => format!("${CONFIG_VAR}"),
            (None, None) => "built-in".into(),
        }
    }
}

fn missing(why: &str) -> ConfigError {
    ConfigError::Read {
        path: format!("${CONFIG_VAR}"),
        reason: format!(
            "the variable {why}: give `--config FILE`, or put the whole TOML config in {CONFIG_VAR}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[listener]
address = "127.0.0.1:0"
[split]
stable = "v1"
[[versions]]
name = "v1"
weight = 1
cloudmap = { namespace = "dev.local", service = "svc-v1" }
[[versions]]
name = "v2"
weight = 0
endpoints = ["127.0.0.1:1"]
[store]
kind = "cloudmap"
"#;

    #[test]
    fn overrides_set_the_store_and_every_cloudmap_namespace() {
        let o = |var| OVERRIDES.iter().find(|o| o.var == var).unwrap();
        let config = parse_overridden(
            BASE,
            "t",
            &[
                (o("CANARY_STORE_SERVICE_ID"), "srv-0123".into()),
                (o("CANARY_CLOUDMAP_NAMESPACE"), "prod.local".into()),
            ],
        )
        .unwrap();
        match &config.versions[0].source {
            super::super::EndpointSource::CloudMap(c) => assert_eq!(c.namespace, "prod.local"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            config.versions[1].source,
            super::super::EndpointSource::Static(_)
        ));
        assert!(matches!(
            &config.store,
            super::super::StoreConfig::CloudMap { service_id, .. } if service_id == "srv-0123"
        ));
        // No overrides: the text as it is (here without its service id).
        assert_eq!(
            parse_overridden(BASE, "t", &[]).unwrap_err().to_string(),
            Config::parse(BASE, "t").unwrap_err().to_string()
        );
    }

    fn set(var: &str, value: &str) -> (&'static Override, String) {
        (
            OVERRIDES.iter().find(|o| o.var == var).unwrap(),
            value.to_string(),
        )
    }

    /// The 1-based line of the first line of `text` containing `needle`.
    fn line_of(text: &str, needle: &str) -> usize {
        text.lines().position(|l| l.contains(needle)).unwrap() + 1
    }

    /// With an override set, a type error and an unknown key in the shipped
    /// ECS config (11 comment lines first) are reported at their lines in
    /// the file, not in a rewritten text without the comments.
    #[test]
    fn errors_with_overrides_point_into_the_operators_text() {
        let ecs = include_str!("../../deploy/gateway.ecs.toml");
        let table = [set("CANARY_STORE_TABLE", "weights")];
        assert!(parse_overridden(ecs, "ecs", &table).is_ok());

        let typed = ecs.replace(
            "trust_forwarded_headers = true",
            "trust_forwarded_headers = \"yes\"",
        );
        let err = parse_overridden(&typed, "ecs", &table)
            .unwrap_err()
            .to_string();
        let line = line_of(&typed, "trust_forwarded_headers = ");
        let at = format!("ecs:{line}: `listener.trust_forwarded_headers`: ");
        assert!(err.starts_with(&at), "{err}");
        assert!(err.contains("invalid type"), "{err}");

        let unknown = ecs.replace(
            "trust_forwarded_headers = true",
            "trust_forwarded_headers = true\nforwarded_trust = true",
        );
        let err = parse_overridden(&unknown, "ecs", &table)
            .unwrap_err()
            .to_string();
        let line = line_of(&unknown, "forwarded_trust");
        let at = format!("ecs:{line}: `listener.forwarded_trust`: ");
        assert!(err.starts_with(&at), "{err}");
        assert!(err.contains("forwarded_trust"), "{err}");
    }

    /// An error about a key the environment set names the variable: the key
    /// is not in the file.
    #[test]
    fn an_error_about_an_overridden_key_names_its_variable() {
        let err = parse_overridden(
            BASE,
            "t",
            &[
                set("CANARY_STORE_SERVICE_ID", "srv-0123"),
                set("CANARY_STORE_TABLE", "weights"),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`store.table`") && err.contains("CANARY_STORE_TABLE"),
            "{err}"
        );
        // Not in the file: no line.
        assert!(err.starts_with("t: `store.table`"), "{err}");
        let err = parse_overridden(BASE, "t", &[set("CANARY_STORE_SERVICE_ID", "0123")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("CANARY_STORE_SERVICE_ID"), "{err}");
        // A key no override sets is reported as before.
        let text = BASE.replace("weight = 0", "weight = -1");
        let err = parse_overridden(&text, "t", &[set("CANARY_STORE_SERVICE_ID", "srv-1")])
            .unwrap_err()
            .to_string();
        assert!(!err.contains("environment variable"), "{err}");
        // In the file: its line there.
        let line = line_of(&text, "weight = -1");
        assert!(
            err.starts_with(&format!("t:{line}: `versions[1].weight`")),
            "{err}"
        );
        assert!(sets(
            "versions.*.cloudmap.namespace",
            "versions[3].cloudmap"
        ));
        assert!(!sets(
            "versions.*.cloudmap.namespace",
            "versions[3].cloudmap.port"
        ));
    }

    /// A namespace left to the environment is no error in the file.
    #[test]
    fn a_namespace_may_come_from_the_environment_only() {
        let text = BASE.replace("namespace = \"dev.local\", ", "");
        assert!(Config::parse(&text, "t").is_err());
        let config = parse_overridden(
            &text,
            "t",
            &[
                set("CANARY_STORE_SERVICE_ID", "srv-0123"),
                set("CANARY_CLOUDMAP_NAMESPACE", "prod.local"),
            ],
        )
        .unwrap();
        match &config.versions[0].source {
            super::super::EndpointSource::CloudMap(c) => assert_eq!(c.namespace, "prod.local"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_missing_service_id_names_its_variable() {
        let err = Config::parse(BASE, "t").unwrap_err().to_string();
        assert!(err.contains("CANARY_STORE_SERVICE_ID"), "{err}");
        assert!(missing("is not set").to_string().contains(CONFIG_VAR));
    }
}
