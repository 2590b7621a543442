//! Control path: the admin API's bearer token.

use std::path::Path;

use subtle::ConstantTimeEq;

/// The environment variable read when the config names neither `token_env`
/// nor `token_file`.
pub const DEFAULT_TOKEN_ENV: &str = "CANARY_ADMIN_TOKEN";

/// Why the token could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("admin.token_file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("admin.token_file {0} is empty")]
    Empty(String),
    #[error("the admin token variable {0} is set but not valid UTF-8")]
    NotUnicode(String),
}

/// The admin token: from `token_file` if given (ECS secrets), else from the
/// environment variable `token_env` (default CANARY_ADMIN_TOKEN). An empty
/// or unset variable counts as no token; one that is set but not UTF-8 is an
/// error (never quietly no token).
pub fn resolve(
    token_env: Option<&str>,
    token_file: Option<&Path>,
) -> Result<Option<String>, TokenError> {
    if let Some(path) = token_file {
        let text = std::fs::read_to_string(path).map_err(|e| TokenError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(TokenError::Empty(path.display().to_string()));
        }
        return Ok(Some(token.to_string()));
    }
    let var = token_env.unwrap_or(DEFAULT_TOKEN_ENV);
    match std::env::var(var) {
        Ok(t) => Ok(Some(t.trim().to_string()).filter(|t| !t.is_empty())),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(TokenError::NotUnicode(var.to_string())),
    }
}

/// Whether an Authorization header carries `token`, compared in constant time.
pub fn authorized(header: Option<&http::HeaderValue>, token: &str) -> bool {
    let Some(value) = header else {
        return false;
    };
    // The scheme is case-insensitive (RFC 9110 11.1), then one or more
    // spaces.
    let bytes = value.as_bytes();
    let Some((scheme, rest)) = bytes.split_at_checked(6) else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return false;
    }
    let given = rest.trim_ascii_start();
    given.ct_eq(token.as_bytes()).into()
}

/// Why a request that changes state is refused as coming from a web page
/// of another site (CSRF), if it is: a browser says where a request comes
/// from (`Sec-Fetch-Site`, `Origin`); the CLI, curl and scripts send
/// neither. `host`: the request's Host (or HTTP/2 authority). Without a
/// token, [`rebound`] applies too.
pub fn cross_site(
    headers: &http::HeaderMap,
    host: Option<&str>,
    token_configured: bool,
) -> Option<String> {
    if let Some(site) = headers.get("sec-fetch-site")
        && (site.as_bytes().eq_ignore_ascii_case(b"cross-site")
            || site.as_bytes().eq_ignore_ascii_case(b"same-site"))
    {
        return Some(
            "refused: a request from another site's page (Sec-Fetch-Site) cannot change the gateway"
                .to_string(),
        );
    }
    if let Some(origin) = headers.get(http::header::ORIGIN)
        && !host.is_some_and(|host| same_origin(origin.as_bytes(), host))
    {
        return Some(format!(
            "refused: a request from another origin ({}) cannot change the gateway; use the admin API from its own origin, or without an Origin header",
            String::from_utf8_lossy(origin.as_bytes())
        ));
    }
    if token_configured {
        return None;
    }
    rebound(host)
}

/// Why a request to an endpoint the token would guard is refused when no
/// token is configured (a loopback admin address), if it is: its Host must
/// be an IP address or `localhost`. A page whose DNS name was rebound to
/// 127.0.0.1 is same-origin with itself, and could read `/status` or change
/// the weights, but its Host is its own name. Reads are refused too: what
/// the token would guard is not for another site's page to read.
pub fn rebound(host: Option<&str>) -> Option<String> {
    let host = host?;
    if ip_or_localhost(host) {
        return None;
    }
    Some(format!(
        "refused: without an admin token, only an IP address or localhost is taken as the Host, not {host:?} (DNS rebinding); configure a token to use a name"
    ))
}

/// Whether `origin` (`scheme://host[:port]`) is the admin's own: the same
/// host and port as the request's Host.
fn same_origin(origin: &[u8], host: &str) -> bool {
    use http::uri::Authority;
    let Ok(origin) = std::str::from_utf8(origin) else {
        return false;
    };
    let (rest, default_port) = if let Some(rest) = origin.strip_prefix("http://") {
        (rest, 80)
    } else if let Some(rest) = origin.strip_prefix("https://") {
        (rest, 443)
    } else {
        return false;
    };
    let (Ok(origin), Ok(host)) = (rest.parse::<Authority>(), host.parse::<Authority>()) else {
        return false;
    };
    origin.host().eq_ignore_ascii_case(host.host())
        && origin.port_u16().unwrap_or(default_port) == host.port_u16().unwrap_or(default_port)
}

/// Whether a Host names an IP address (no DNS involved) or `localhost`.
fn ip_or_localhost(host: &str) -> bool {
    let Ok(authority) = host.parse::<http::uri::Authority>() else {
        return false;
    };
    let name = authority.host();
    let bare = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    bare.parse::<std::net::IpAddr>().is_ok() || bare.eq_ignore_ascii_case("localhost")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn refuses_changes_from_other_sites() {
        let with = |pairs: &[(&'static str, &'static str)]| {
            let mut headers = http::HeaderMap::new();
            for (k, v) in pairs {
                headers.insert(*k, HeaderValue::from_static(v));
            }
            headers
        };
        let none = with(&[]);
        let host = Some("127.0.0.1:9901");
        // The CLI, curl: no Origin, no Sec-Fetch-Site.
        assert_eq!(cross_site(&none, host, false), None);
        assert_eq!(cross_site(&none, None, false), None);
        // The dashboard, from its own origin.
        let own = with(&[
            ("origin", "http://127.0.0.1:9901"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert_eq!(cross_site(&own, host, false), None);
        assert_eq!(
            cross_site(
                &with(&[("origin", "http://[::1]:9901")]),
                Some("[::1]:9901"),
                false
            ),
            None
        );
        assert_eq!(
            cross_site(
                &with(&[("origin", "http://LOCALHOST")]),
                Some("localhost:80"),
                false
            ),
            None
        );
        for refused in [
            with(&[("origin", "http://evil.example")]),
            with(&[("origin", "null")]),
            with(&[("origin", "http://127.0.0.1:9902")]),
            with(&[("origin", "https://127.0.0.1:9901/")]),
            with(&[("sec-fetch-site", "cross-site")]),
            with(&[("sec-fetch-site", "Same-Site")]),
        ] {
            assert!(cross_site(&refused, host, true).is_some(), "{refused:?}");
            assert!(cross_site(&refused, host, false).is_some(), "{refused:?}");
        }
        // The refusals read as sentences: no run of spaces inside.
        let origin = cross_site(&with(&[("origin", "http://a")]), host, true).unwrap_or_default();
        assert!(
            origin.contains("cannot change the gateway; use the admin API"),
            "{origin}"
        );
        let named = cross_site(&none, Some("evil.example:9901"), false).unwrap_or_default();
        assert!(
            named.contains("only an IP address or localhost is taken as the Host"),
            "{named}"
        );
        assert!(cross_site(&with(&[("origin", "http://a")]), None, true).is_some());
        // DNS rebinding: same-origin with itself, under its own name.
        let rebound = with(&[("origin", "http://evil.example:9901")]);
        assert!(cross_site(&rebound, Some("evil.example:9901"), false).is_some());
        assert!(cross_site(&none, Some("evil.example:9901"), false).is_some());
        // With a token, a name is fine.
        assert_eq!(cross_site(&rebound, Some("evil.example:9901"), true), None);
        assert_eq!(cross_site(&none, Some("gateway.internal:9901"), true), None);
        assert_eq!(cross_site(&none, Some("localhost:9901"), false), None);
        assert_eq!(cross_site(&none, Some("10.0.0.7"), false), None);
        assert!(super::rebound(Some("evil.example:9901")).is_some());
        assert_eq!(super::rebound(Some("[::1]:9901")), None);
        assert_eq!(super::rebound(None), None);
    }

    #[test]
    fn checks_bearer_token() {
        let ok = HeaderValue::from_static("Bearer s3cret");
        assert!(authorized(Some(&ok), "s3cret"));
        assert!(!authorized(
            Some(&HeaderValue::from_static("Bearer s3cre")),
            "s3cret"
        ));
        assert!(!authorized(
            Some(&HeaderValue::from_static("Basic s3cret")),
            "s3cret"
        ));
        assert!(!authorized(None, "s3cret"));
        // The scheme in any case, then one or more spaces.
        for ok in ["bearer s3cret", "BEARER s3cret", "BeArEr  s3cret"] {
            assert!(
                authorized(Some(&HeaderValue::from_static(ok)), "s3cret"),
                "{ok}"
            );
        }
        for refused in [
            "Bearers3cret",
            "Bearer",
            "Bearer ",
            "Bearer\ts3cret",
            "Bear s3cret",
        ] {
            assert!(
                !authorized(Some(&HeaderValue::from_static(refused)), "s3cret"),
                "{refused}"
            );
        }
    }

    #[test]
    fn reads_token_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "abc\n").unwrap();
        assert_eq!(resolve(None, Some(&path)).unwrap().as_deref(), Some("abc"));
        std::fs::write(&path, "\n").unwrap();
        assert!(resolve(None, Some(&path)).is_err());
        assert!(resolve(None, Some(&dir.path().join("missing"))).is_err());
    }
}
