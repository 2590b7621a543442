use super::*;

use super::test_text::TWO_VERSIONS as BASE;

fn err(text: &str) -> String {
    Config::parse(text, "gw.toml").unwrap_err().to_string()
}

#[test]
fn example_config_is_valid_and_documents_defaults() {
    let text = include_str!("../../config/gateway.example.toml");
    let c = Config::parse(text, "example").unwrap();
    assert_eq!(c.versions.len(), 2);
    assert_eq!(c.timeouts, Timeouts::default());
    assert_eq!(c.upstream, UpstreamConfig::default());
    assert_eq!(
        c.split.sticky_header.as_ref().map(|h| h.as_str()),
        Some("x-user-id")
    );
}

#[test]
fn defaults() {
    let c = Config::parse(BASE, "gw.toml").unwrap();
    assert_eq!(c.admin.address, "127.0.0.1:9901".parse().unwrap());
    assert_eq!(c.timeouts.upstream_connect, Duration::from_secs(3));
    assert_eq!(c.timeouts.upstream_response, Duration::from_secs(15));
    assert_eq!(c.timeouts.idle, Duration::from_secs(75));
    assert_eq!(c.timeouts.shutdown_grace, Duration::from_secs(25));
    assert_eq!(c.store, StoreConfig::File);
}

#[test]
fn rejects_bad_configs_naming_key_and_reason() {
    let cases: Vec<(String, &[&str])> = vec![
        (
            BASE.replace("stable = \"v1\"", "stable = \"v9\""),
            &["split.stable", "v9"],
        ),
        (
            BASE.replace("weight = 10", "weight = -1"),
            &["versions[1].weight", "negative"],
        ),
        (
            BASE.replace("weight = 10", "weight = 2.5"),
            &["versions[1].weight", "must be an integer (no decimal point"],
        ),
        (
            BASE.replace("weight = 10", "weight = 10.0"),
            &[
                "versions[1].weight",
                "an integer (no decimal point or exponent), got 10.0",
            ],
        ),
        (
            BASE.replace("weight = 10", "weight = \"ten\""),
            &["versions[1].weight"],
        ),
        (
            BASE.replace("weight = 10", "weight = 0")
                .replace("weight = 90", "weight = 0"),
            &["sum to 0"],
        ),
        (
            BASE.replace("weight = 10", "weight = 600000")
                .replace("weight = 90", "weight = 600000"),
            &["1000000"],
        ),
        (
            BASE.replace("name = \"v2\"", "name = \"v1\""),
            &["versions[1].name", "duplicate"],
        ),
        (
            BASE.replace("endpoints = [\"10.0.2.7:9000\"]", ""),
            &["versions[1].endpoints", "no endpoint source"],
        ),
        (
            BASE.replace("10.0.2.7:9000", "not-an-address"),
            &["versions[1].endpoints[0]", "not-an-address"],
        ),
        (
            BASE.replace("[split]", "[split]\ncolour = \"red\""),
            &["gw.toml:6: `split.colour`: unknown field `colour`"],
        ),
        (
            BASE.replace("0.0.0.0:9080", "0.0.0.0"),
            &["listener.address"],
        ),
        (
            format!("{BASE}\n[timeouts]\nidle = \"soon\"\n"),
            &["timeouts.idle", "soon"],
        ),
        (
            BASE.replace("[split]", "[split]\nsticky_header = \"bad header\""),
            &["split.sticky_header"],
        ),
        (
            format!("{BASE}\n[store]\nkind = \"redis\"\n"),
            &["store.kind", "redis"],
        ),
        (
            format!("{BASE}\n[store]\nkind = \"cloudmap\"\n"),
            &["store.service_id", "required"],
        ),
        (
            format!("{BASE}\n[store]\nkind = \"dynamodb\"\nkey = \"svc\"\n"),
            &["store.table", "required"],
        ),
        (
            format!("{BASE}\n[store]\nkind = \"dynamodb\"\ntable = \"t\"\nkey = \" \"\n"),
            &["store.key", "empty"],
        ),
        (
            format!("{BASE}\n[store]\nboot_timeout = \"5s\"\n"),
            &["store.boot_timeout", "cloudmap", "dynamodb"],
        ),
        (
            format!(
                "{BASE}\n[store]\nkind = \"cloudmap\"\nservice_id = \"srv-1\"\ntable = \"t\"\n"
            ),
            &["store.table", "dynamodb"],
        ),
        (
            format!("{BASE}\n[discovery]\nstale_after = \"0s\"\n"),
            &["discovery.stale_after", "greater than zero"],
        ),
        (
            format!("{BASE}\n[rollout]\ngate = \"https://ci:pw@ci.example/approve\"\n"),
            &["rollout.gate", "credentials"],
        ),
    ];
    for (text, needles) in cases {
        let e = err(&text);
        assert!(e.starts_with("gw.toml"), "error must name the file: {e}");
        for n in needles {
            assert!(e.contains(n), "`{e}` should mention `{n}`");
        }
    }
}

#[test]
fn at_most_ten_versions() {
    let mut text = BASE.to_string();
    for i in 3..=11 {
        text.push_str(&format!(
            "\n[[versions]]\nname = \"v{i}\"\nweight = 0\nendpoints = [\"10.0.0.{i}:80\"]\n"
        ));
    }
    assert!(err(&text).contains("at most 10"));
}

#[test]
fn syntax_errors_name_the_line() {
    let e = err("[listener]\naddress = \n");
    assert!(e.contains("gw.toml") && e.contains("line 2"), "{e}");
}

#[test]
fn missing_file_is_an_error_not_a_panic() {
    let e = Config::load(Path::new("/definitely/not/here.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/definitely/not/here.toml") && e.contains("cannot read"),
        "{e}"
    );
}

#[test]
fn state_path_defaults_beside_the_config() {
    assert_eq!(
        default_state_path(Path::new("/etc/canary/gateway.toml")),
        PathBuf::from("/etc/canary/gateway.state.json")
    );
}

#[test]
fn cloudmap_versions_parse() {
    let text = BASE.replace(
        "endpoints = [\"10.0.2.7:9000\"]",
        "cloudmap = { namespace = \"app.local\", service = \"svc1-v2\", health = \"ALL\", port = 8080, query = { stage = \"canary\" } }",
    );
    let c = Config::parse(&text, "gw.toml").unwrap();
    match &c.versions[1].source {
        EndpointSource::CloudMap(src) => {
            assert_eq!(src.service, "svc1-v2");
            assert_eq!(src.health, HealthFilter::All);
            assert_eq!(src.port, Some(8080));
            assert_eq!(src.query.get("stage").map(String::as_str), Some("canary"));
        }
        other => panic!("{other:?}"),
    }
    let bad = text.replace("\"ALL\"", "\"SOME\"");
    assert!(err(&bad).contains("versions[1].cloudmap.health"));
}

#[test]
fn fleet_store_and_discovery_keys() {
    let c = Config::parse(
        &format!(
            "{BASE}\n[store]\nkind = \"dynamodb\"\ntable = \"canary\"\nkey = \"svc1\"\n\
             poll_interval = \"5s\"\nboot_timeout = \"3s\"\n[discovery]\nstale_after = \"2m\"\n"
        ),
        "gw.toml",
    )
    .unwrap();
    assert_eq!(
        c.store,
        StoreConfig::DynamoDb {
            table: "canary".into(),
            key: "svc1".into(),
            poll_interval: Duration::from_secs(5),
            boot_timeout: Duration::from_secs(3),
        }
    );
    assert_eq!(c.store.kind(), "dynamodb");
    assert_eq!(c.discovery.stale_after, Duration::from_secs(120));
    let d = Config::parse(BASE, "gw.toml").unwrap();
    assert_eq!(d.discovery.stale_after, Duration::from_secs(300));
    assert_eq!(d.store.poll_interval(), None);
}

#[test]
fn an_aws_region_that_is_no_region_name_is_refused() {
    let with = |region: &str| format!("{BASE}\n[aws]\nregion = {}\n", toml::Value::from(region));
    for good in ["eu-west-1", "us-gov-west-1", "cn-north-1"] {
        let c = Config::parse(&with(good), "gw.toml").unwrap_or_else(|e| panic!("{good}: {e}"));
        assert_eq!(c.aws.region.as_deref(), Some(good));
    }
    for bad in [
        "",
        " eu-west-1",
        "EU-WEST-1",
        "eu-west-1.",
        "-eu",
        "eu/west",
    ] {
        let e = err(&with(bad));
        assert!(
            e.contains("aws.region") && e.contains("is not an AWS region name"),
            "{bad:?}: {e}"
        );
    }
}

#[test]
fn an_aws_endpoint_url_that_is_no_http_url_with_a_host_is_refused() {
    let with = |url: &str| format!("{BASE}\n[aws]\nendpoint_url = {}\n", toml::Value::from(url));
    for good in [
        "http://localhost:4566",
        "https://dynamodb.eu-west-1.amazonaws.com/",
        "HTTP://127.0.0.1:5000/prefix",
        "http://[::1]:4566",
    ] {
        let c = Config::parse(&with(good), "gw.toml").unwrap_or_else(|e| panic!("{good}: {e}"));
        assert_eq!(c.aws.endpoint_url.as_deref(), Some(good));
    }
    for (bad, why) in [
        ("", "empty"),
        ("localhost:4566", "no scheme"),
        ("not a url", "invalid"),
        ("ftp://localhost:4566", "scheme `ftp`"),
        ("/just/a/path", "no scheme"),
        ("http://localhost:99999", "`99999` is not a port"),
        ("http://localhost:0", "`0` is not a port"),
        ("http://:4566", ""),
    ] {
        let e = err(&with(bad));
        assert!(e.contains("aws.endpoint_url"), "{bad}: {e}");
        assert!(
            e.contains("not an absolute http:// or https:// URL"),
            "{bad}: {e}"
        );
        assert!(e.contains(why), "{bad}: {e}");
    }
}

#[test]
fn shipped_ecs_config_is_valid() {
    let text = include_str!("../../deploy/gateway.ecs.toml");
    // The store's table comes from the environment, never from a placeholder.
    let missing = Config::parse(text, "ecs").unwrap_err().to_string();
    assert!(missing.contains("CANARY_STORE_TABLE"), "{missing}");
    let var = &super::env::OVERRIDES[1];
    assert_eq!(var.var, "CANARY_STORE_TABLE");
    let c = super::env::parse_overridden(text, "ecs", &[(var, "canary-gateway-weights".into())])
        .unwrap();
    assert!(matches!(c.store, StoreConfig::DynamoDb { .. }));
    assert!(c.listener.trust_forwarded_headers);
}

#[test]
fn body_stall_and_underscored_names_parse_and_default() {
    let c = Config::parse(BASE, "gw.toml").unwrap();
    assert_eq!(c.timeouts.body_stall, Duration::from_secs(60));
    assert!(!c.listener.allow_underscores_in_headers);
    let text = BASE.replace(
        "[listener]\n",
        "[listener]\nallow_underscores_in_headers = true\n",
    ) + "\n[timeouts]\nbody_stall = \"2s\"\n";
    let c = Config::parse(&text, "gw.toml").unwrap();
    assert_eq!(c.timeouts.body_stall, Duration::from_secs(2));
    assert!(c.listener.allow_underscores_in_headers);
    let bad = err(&(BASE.to_string() + "\n[timeouts]\nbody_stall = \"soon\"\n"));
    assert!(bad.contains("timeouts.body_stall"), "{bad}");
}

#[test]
fn a_duration_too_long_for_the_clock_is_refused_whatever_its_form() {
    for (table, key, value) in [
        ("timeouts", "upstream_response", "9223372036854775807"),
        ("timeouts", "idle", "1000000001"),
        ("timeouts", "shutdown_grace", "1e12"),
        ("upstream", "eject_max", "\"300000h\""),
        ("discovery", "stale_after", "9223372036854775807"),
    ] {
        let text = format!("{BASE}\n[{table}]\n{key} = {value}\n");
        let e = err(&text);
        assert!(e.contains(&format!("{table}.{key}")), "{e}");
        assert!(e.contains("too long"), "{e}");
    }
    for key in ["poll_interval", "boot_timeout"] {
        let text = format!(
            "{BASE}\n[store]\nkind = \"dynamodb\"\ntable = \"t\"\nkey = \"k\"\n{key} = 9223372036854775807\n"
        );
        let e = err(&text);
        assert!(e.contains(&format!("store.{key}")), "{e}");
        assert!(e.contains("too long"), "{e}");
    }
    let c = Config::parse(
        &format!("{BASE}\n[timeouts]\nupstream_response = 1000000000\n"),
        "gw.toml",
    )
    .unwrap();
    assert_eq!(
        c.timeouts.upstream_response,
        Duration::from_secs(1_000_000_000)
    );
}

/// A bad upstream `server_name` is reported under that key, also when a
/// `ca_file` is set (the error used to name `ca_file` then).
#[test]
fn a_bad_upstream_server_name_names_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = rcgen::generate_simple_self_signed(vec!["ca.test".to_string()]).unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.cert.pem()).unwrap();
    let tls = format!(
        "endpoints = [\"10.0.1.5:9000\"]\ntls = true\nca_file = \"{}\"\nserver_name = \"not a name!\"",
        ca_path.display()
    );
    let text = BASE.replacen("endpoints = [\"10.0.1.5:9000\"]", &tls, 1);
    let e = err(&text);
    assert!(e.contains("versions[0].server_name"), "{e}");
    assert!(e.contains("not a valid TLS server name"), "{e}");
    // The CA file's own errors still name `ca_file`.
    let text = text.replace(&ca_path.display().to_string(), "/no/such/ca.pem");
    let e = err(&text);
    assert!(e.contains("versions[0].ca_file"), "{e}");
}

/// `split.response_header` replaces an upstream field of its name on every
/// response: a framing, hop-by-hop or standard field would break them.
#[test]
fn a_response_header_that_would_break_responses_is_refused() {
    for name in [
        "content-length",
        "Content-Length",
        "transfer-encoding",
        "connection",
        "content-type",
        "set-cookie",
        "x-request-id",
        "proxy-foo",
    ] {
        let text = BASE.replace(
            "stable = \"v1\"",
            &format!("stable = \"v1\"\nresponse_header = \"{name}\""),
        );
        let e = err(&text);
        assert!(e.contains("split.response_header"), "{name}: {e}");
        assert!(e.contains("use a name of your own"), "{name}: {e}");
    }
    let text = BASE.replace(
        "stable = \"v1\"",
        "stable = \"v1\"\nresponse_header = \"x-canary-version\"",
    );
    assert!(Config::parse(&text, "gw.toml").is_ok());
}

/// `log.level` is checked: a word that is no level would silence every
/// line (it parses as a target's name), a broken filter would turn into
/// `info` unsaid.
#[test]
fn a_log_level_that_is_no_level_or_filter_is_refused() {
    for (level, reason) in [
        ("warning", "`warning` is not a level"),
        ("", "is empty"),
        ("info,foo", "`foo` is not a level"),
        ("info,foo=loud", "is not a log filter"),
    ] {
        let e = err(&format!("{BASE}\n[log]\nlevel = \"{level}\"\n"));
        assert!(
            e.contains("log.level") && e.contains(reason),
            "{level:?}: {e}"
        );
    }
    for level in ["warn", "DEBUG", "info,canary_gateway::proxy=debug", "off"] {
        let c = Config::parse(&format!("{BASE}\n[log]\nlevel = \"{level}\"\n"), "gw.toml");
        assert_eq!(c.map(|c| c.log.level).ok().as_deref(), Some(level));
    }
}

/// An empty `state.path` is refused (no file could be written there).
#[test]
fn an_empty_state_path_is_refused() {
    let e = err(&format!("{BASE}\n[state]\npath = \"\"\n"));
    assert!(e.contains("state.path") && e.contains("is empty"), "{e}");
}

/// The admin and the listener cannot share a port, also when one of them
/// binds every address (the second bind would fail at start).
#[test]
fn admin_and_listener_ports_that_overlap_are_refused() {
    for (listener, admin) in [
        ("0.0.0.0:9080", "127.0.0.1:9080"),
        ("127.0.0.1:9080", "0.0.0.0:9080"),
        ("[::]:9080", "127.0.0.1:9080"),
        ("127.0.0.1:9080", "127.0.0.1:9080"),
    ] {
        let text = BASE.replace(
            "address = \"0.0.0.0:9080\"",
            &format!("address = \"{listener}\""),
        ) + &format!("\n[admin]\naddress = \"{admin}\"\n");
        let e = err(&text);
        assert!(
            e.contains("admin.address") && e.contains("overlap"),
            "{listener} {admin}: {e}"
        );
    }
    let text = BASE.replace("address = \"0.0.0.0:9080\"", "address = \"127.0.0.1:9080\"")
        + "\n[admin]\naddress = \"127.0.0.2:9080\"\n";
    assert!(Config::parse(&text, "gw.toml").is_ok());
}

/// A worker thread count the start could not honour is refused up front.
#[test]
fn too_many_worker_threads_are_refused() {
    let e = err(&format!("{BASE}\n[runtime]\nworker_threads = 100000\n"));
    assert!(
        e.contains("runtime.worker_threads") && e.contains("maximum of 256"),
        "{e}"
    );
    let c = Config::parse(
        &format!("{BASE}\n[runtime]\nworker_threads = 256\n"),
        "gw.toml",
    );
    assert_eq!(c.map(|c| c.worker_threads).ok(), Some(Some(256)));
}
