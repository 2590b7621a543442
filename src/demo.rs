//! `canary-gateway demo`: two built-in backends (v1 and v2, answering with
//! their name) behind the gateway with a 90/10 split, so a newcomer sees a
//! canary split with one command.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// Serves a tiny backend that answers every request with `hello from <name>`.
pub async fn backend(listener: TcpListener, name: &'static str) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| async move {
                let body = format!(
                    "hello from {name} ({} {})\n",
                    req.method(),
                    req.uri().path()
                );
                let mut resp = Response::new(Full::new(Bytes::from(body)));
                resp.headers_mut()
                    .insert("x-backend", http::HeaderValue::from_static(name));
                Ok::<_, Infallible>(resp)
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The demo's files (its admin token and state), in a directory of its own
/// under the temporary directory, readable by its owner only (it holds the
/// admin token), under a name no one else has taken; removed when dropped,
/// so every way out of the demo (a start that fails, an error, Ctrl-C)
/// leaves nothing behind.
pub fn create_dir() -> std::io::Result<tempfile::TempDir> {
    let mut builder = tempfile::Builder::new();
    builder.prefix("canary-gateway-demo-");
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700));
    builder.tempdir()
}

/// `text` as a TOML basic string, quoted and escaped (a path may hold `"`
/// or `\`).
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

/// The demo's config text, for the given backend addresses.
pub fn config_text(
    listen: SocketAddr,
    admin: SocketAddr,
    v1: SocketAddr,
    v2: SocketAddr,
    token_file: &str,
    state: &str,
) -> String {
    let (token_file, state) = (toml_string(token_file), toml_string(state));
    format!(
        r#"[listener]
address = "{listen}"

[admin]
address = "{admin}"
token_file = {token_file}

[state]
path = {state}

[split]
stable = "v1"
sticky_header = "x-user-id"
override_header = "x-canary-version"
response_header = "x-canary-version"

[log]
access_log = false

[[versions]]
name = "v1"
weight = 90
endpoints = ["{v1}"]

[[versions]]
name = "v2"
weight = 10
endpoints = ["{v2}"]
"#
    )
}

/// What to try, printed at start.
pub fn instructions(listen: SocketAddr, admin: SocketAddr, token: &str) -> String {
    format!(
        r#"canary-gateway demo: v1 (weight 90) and v2 (weight 10) behind http://{listen}

Try:
  curl -i http://{listen}/                                   # answered by v1 or v2 (see x-canary-version)
  for i in $(seq 100); do curl -s http://{listen}/; done | sort | uniq -c   # ~90/10
  curl -s -H 'x-user-id: alice' http://{listen}/              # sticky: alice always gets the same version
  curl -s -H 'x-canary-version: v2' http://{listen}/          # QA override: forced to v2
  curl -s -H 'Authorization: Bearer {token}' http://{admin}/weights
  curl -s -H 'Authorization: Bearer {token}' -X PUT -d '{{"weights":{{"v1":50,"v2":50}}}}' http://{admin}/weights   # 50/50 (weights are relative; unnamed versions keep theirs)
  curl -s -H 'Authorization: Bearer {token}' -X POST http://{admin}/rollback
  curl -s http://{admin}/metrics | grep canary_requests_total
  CANARY_ADMIN_TOKEN={token} canary-gateway ctl --admin http://{admin} weights set v2=25 v1=75

Admin token: {token}
Dashboard: http://{admin}/ui (sign in with the admin token)
Press Ctrl-C to stop.
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Paths with `"`, `\` and a newline are written as TOML strings that
    /// parse back to themselves.
    #[test]
    fn the_config_text_quotes_its_paths() {
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let token = "/tmp/a \"quoted\" \\ dir/admin-token";
        let state = "/tmp/it's\n\t\\\"/state.json";
        let text = config_text(addr, addr, addr, addr, token, state);
        let config = crate::config::Config::parse(&text, "demo config")
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(
            config.admin.token_file.as_deref(),
            Some(Path::new(token)),
            "{text}"
        );
        assert_eq!(
            config.state_path.as_deref(),
            Some(Path::new(state)),
            "{text}"
        );
    }
}
