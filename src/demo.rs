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

/// The demo's config text, for the given backend addresses.
pub fn config_text(
    listen: SocketAddr,
    admin: SocketAddr,
    v1: SocketAddr,
    v2: SocketAddr,
    token_file: &str,
    state: &str,
) -> String {
    format!(
        r#"[listener]
address = "{listen}"

[admin]
address = "{admin}"
token_file = "{token_file}"

[state]
path = "{state}"

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
