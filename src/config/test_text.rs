//! Config text the unit tests share: a valid 90/10 split of v1 and v2 with
//! static endpoints and every other setting left at its default.

/// Listener on 0.0.0.0:9080, no `[admin]` table (the default address), v1
/// (weight 90, 10.0.1.5:9000) stable, v2 (weight 10, 10.0.2.7:9000). Tests
/// derive invalid configs from it by replacing these exact lines.
pub(crate) const TWO_VERSIONS: &str = r#"
[listener]
address = "0.0.0.0:9080"

[split]
stable = "v1"

[[versions]]
name = "v1"
weight = 90
endpoints = ["10.0.1.5:9000"]

[[versions]]
name = "v2"
weight = 10
endpoints = ["10.0.2.7:9000"]
"#;
