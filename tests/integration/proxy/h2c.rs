//! HTTP/2 cleartext (prior knowledge) from clients.

use std::collections::BTreeMap;
use std::time::Duration;

use http::Request;
use http_body_util::{BodyExt, Empty};

use super::{count, header_lines, header_of};
use crate::support::*;

#[tokio::test]
async fn h2c_prior_knowledge_is_proxied() {
    let split = "override_header = \"x-canary-version\"\nresponse_header = \"x-canary-version\"";
    let (_v1, _v2, gw) = two_versions(split, 50, 50).await;
    let sender = h2c_client(gw.addr).await;

    let send = |path: &str, over: Option<&str>| {
        let mut sender = sender.clone();
        let mut req = Request::get(format!("http://{}{path}", gw.addr));
        if let Some(v) = over {
            req = req.header("x-canary-version", v);
        }
        let req = req.body(Empty::new()).unwrap();
        async move {
            let resp = sender.send_request(req).await.unwrap();
            assert_eq!(resp.version(), http::Version::HTTP_2);
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            (parts, String::from_utf8(body.to_vec()).unwrap())
        }
    };
    // Many streams at once on one connection, split about 50/50.
    let replies = futures_join_all((0..200).map(|_| send("/", None))).await;
    let mut counts = BTreeMap::new();
    for (parts, text) in &replies {
        assert_eq!(parts.status, 200);
        assert_eq!(
            parts.headers.get("x-canary-version").unwrap(),
            text.as_str()
        );
        *counts.entry(text.clone()).or_insert(0usize) += 1;
    }
    assert!((80..=120).contains(&count(&counts, "v2")), "{counts:?}");
    for _ in 0..10 {
        let (_, text) = send("/", Some("v2")).await;
        assert_eq!(text, "v2");
    }
    // The upstream got an HTTP/1.1 request with a Host header.
    let (_, text) = send("/headers?q=1", None).await;
    let lines = header_lines(&text);
    assert_eq!(header_of(&lines, "uri"), ["/headers?q=1"], "{text}");
    assert_eq!(
        header_of(&lines, "host"),
        [gw.addr.to_string().as_str()],
        "{text}"
    );
    gw.shutdown().await;
}

/// Runs futures concurrently on this task and collects their outputs.
async fn futures_join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let set: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    let mut set: Vec<Option<_>> = set.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, out) in set.iter_mut().zip(outputs.iter_mut()) {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        *out = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(Option::unwrap).collect()
}

#[tokio::test]
async fn h2c_connection_may_wait_before_its_first_request() {
    let v1 = Upstream::start("v1").await;
    let extra = "[timeouts]\nrequest_header = \"200ms\"";
    let gw = Gateway::start(&config(extra, &[("v1", 1, v1.addr)])).await;
    let mut sender = h2c_client(gw.addr).await;
    // A pre-opened connection, idle for longer than the request-head timeout
    // (but far less than the idle timeout), is still good.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let req = Request::get(format!("http://{}/", gw.addr))
        .body(Empty::new())
        .unwrap();
    let resp = sender
        .send_request(req)
        .await
        .expect("the h2c connection was closed");
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "v1");
    gw.shutdown().await;
}

/// An HTTP/2 client's cookie split into several fields (RFC 9113, 8.2.3)
/// reaches the HTTP/1.1 upstream as one `cookie` line, the values joined
/// with `; `: through the own client (no body, the head echoed as it came)
/// and through hyper's (a body).
#[tokio::test]
async fn h2c_cookie_fields_go_upstream_as_one_line() {
    let echo = EchoHeadUpstream::start("").await;
    let gw = Gateway::start(&config("", &[("v1", 1, echo.addr)])).await;
    let mut sender = h2c_client(gw.addr).await;
    let req = Request::get(format!("http://{}/", gw.addr))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(Empty::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let head = resp.into_body().collect().await.unwrap().to_bytes();
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let cookies: Vec<&str> = head
        .split("\r\n")
        .filter(|l| l.starts_with("cookie:"))
        .collect();
    assert_eq!(cookies, ["cookie: a=1; b=2"], "{head}");
    gw.shutdown().await;

    let up = Upstream::start("v1").await;
    let gw = Gateway::start(&config("", &[("v1", 1, up.addr)])).await;
    let mut sender = h2c_client_for(gw.addr).await;
    let req = Request::post(format!("http://{}/headers", gw.addr))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(http_body_util::Full::new(bytes::Bytes::from("a body")))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&text);
    assert_eq!(
        header_of(&header_lines(&text), "cookie"),
        ["a=1; b=2"],
        "{text}"
    );
    gw.shutdown().await;
}

/// An HTTP/2 connection without requests for `idle` is closed, GOAWAY
/// first, although PINGs keep its socket busy (the gateway's keep-alive
/// PINGs once kept idle HTTP/2 connections open forever); a client that
/// never answers the shutdown's PING is dropped one idle period later.
#[tokio::test]
async fn h2c_idle_connections_get_goaway_despite_pings() {
    let v1 = Upstream::start("v1").await;
    let extra = "[timeouts]\nidle = \"1s\"";
    let gw = Gateway::start(&config(extra, &[("v1", 1, v1.addr)])).await;
    let connect = || tokio::net::TcpStream::connect(gw.addr);
    let (polite, deaf) = (connect().await.unwrap(), connect().await.unwrap());
    let every = Duration::from_millis(200);
    let limit = Duration::from_secs(5);
    let (polite, deaf) = tokio::join!(
        idle_h2(polite, every, true, limit),
        idle_h2(deaf, every, false, limit),
    );
    for seen in [&polite, &deaf] {
        let (at, code) = seen.goaway.unwrap_or_else(|| panic!("no GOAWAY: {seen:?}"));
        assert_eq!(code, 0, "GOAWAY with NO_ERROR: {seen:?}");
        assert!(
            at >= Duration::from_millis(750),
            "before the idle timeout: {seen:?}"
        );
        assert!(seen.pongs >= 3, "PINGs were answered: {seen:?}");
        let closed = seen
            .closed
            .unwrap_or_else(|| panic!("not closed: {seen:?}"));
        assert!(closed >= at, "{seen:?}");
    }
    // The client that took part in the shutdown is let go at once.
    let polite_closed = polite.closed.unwrap_or_default();
    assert!(polite_closed < Duration::from_millis(1800), "{polite:?}");
    gw.shutdown().await;
}

/// The idle rule of HTTP/2 counts requests: a connection whose one request
/// takes longer than `idle` is not cut or told to go away, nor is one whose
/// short requests come closer together than `idle` (each begun and ended
/// between two of the watchdog's checks).
#[tokio::test]
async fn h2c_connections_in_use_outlive_the_idle_timeout() {
    let v1 = Upstream::start("v1").await;
    let extra = "[timeouts]\nidle = \"1s\"";
    let gw = Gateway::start(&config(extra, &[("v1", 1, v1.addr)])).await;
    let get = |mut sender: hyper::client::conn::http2::SendRequest<Empty<bytes::Bytes>>,
               path: &'static str| async move {
        let req = Request::get(format!("http://{}{path}", gw.addr))
            .body(Empty::new())
            .unwrap();
        let resp = sender
            .send_request(req)
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(resp.status(), 200, "{path}");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "v1", "{path}");
    };
    let slow = h2c_client(gw.addr).await;
    let busy = h2c_client(gw.addr).await;
    let long = async {
        get(slow.clone(), "/sleep?ms=2500").await;
        // Not told to go away meanwhile: a next request is served.
        get(slow.clone(), "/").await;
    };
    let frequent = async {
        for _ in 0..8 {
            get(busy.clone(), "/").await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    tokio::join!(long, frequent);
    gw.shutdown().await;
}
