//! Upstream connections: reuse, `Connection: close`, retries of dropped pooled connections, pool idle timeout, ejected endpoints that answer again.

use std::time::Duration;

use bytes::Bytes;
use http::Request;

use crate::support::*;

#[tokio::test]
async fn upstream_connections_are_reused_including_after_bodiless_responses() {
    for response in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"[..],
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\n\r\n",
    ] {
        let upstream = FixedUpstream::start(response).await;
        let gw = Gateway::start(&config("", &[("v1", 1, upstream.addr)])).await;
        let mut client = Client::connect(gw.addr).await;
        for _ in 0..10 {
            let reply = client.get("/", &[]).await.unwrap();
            assert!(reply.status.is_success() || reply.status == 304);
        }
        let head = Request::head("/")
            .header("host", "h")
            .body(body(Bytes::new()))
            .unwrap();
        assert!(client.send(head).await.unwrap().body.is_empty());
        let connections = upstream
            .connections
            .load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            connections,
            1,
            "{} opened {connections} upstream connections for 11 sequential requests",
            String::from_utf8_lossy(&response[..response.len().min(40)])
        );
        gw.shutdown().await;
    }
}

#[tokio::test]
async fn upstream_connection_close_is_honoured_without_errors() {
    let upstream = FixedUpstream::start(
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
    )
    .await;
    let gw = Gateway::start(&config("", &[("v1", 1, upstream.addr)])).await;
    let mut client = Client::connect(gw.addr).await;
    for i in 0..20 {
        let reply = client.get("/", &[]).await.unwrap();
        assert_eq!(reply.status, 200, "request {i}: {:?}", reply.headers);
        assert_eq!(reply.text(), "ok");
        assert!(reply.header("connection").is_none(), "{:?}", reply.headers);
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_drops_is_retried_only_when_safe() {
    // Answers the first request of each connection and hangs up on the next
    // one: the keep-alive race (an upstream closing an idle connection just
    // as a request goes out on it), made certain.
    let upstream = FixedUpstream::scripted(|n| {
        (n == 0).then_some((
            &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"[..],
            false,
        ))
    })
    .await;
    let gw = Gateway::start(&config("", &[("v1", 1, upstream.addr)])).await;
    let mut client = Client::connect(gw.addr).await;
    for i in 0..5 {
        let reply = client.get("/", &[]).await.unwrap();
        assert_eq!(reply.status, 200, "GET {i}: {:?}", reply.headers);
        assert_eq!(reply.text(), "ok");
    }
    assert_eq!(
        upstream
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        5
    );
    // A POST may have been processed before the connection dropped: it is
    // never sent twice.
    let post = Request::post("/")
        .header("host", "h")
        .body(body(Bytes::new()))
        .unwrap();
    let reply = client.send(post).await.unwrap();
    assert_eq!(reply.status, 502);
    assert_eq!(reply.header("x-canary-error"), Some("upstream-reset"));
    let connections = || {
        upstream
            .connections
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    assert_eq!(connections(), 5);
    // A PUT is safe to repeat, and its body, small enough to have come with
    // its head, can be sent again: retried.
    let mut client = Client::connect(gw.addr).await;
    let put = |bytes: usize| {
        Request::put("/")
            .header("host", "h")
            .body(body(Bytes::from(vec![b'x'; bytes])))
            .unwrap()
    };
    assert_eq!(client.get("/", &[]).await.unwrap().status, 200);
    let reply = client.send(put(100)).await.unwrap();
    assert_eq!(reply.status, 200, "{:?}", reply.headers);
    assert_eq!(connections(), 7);
    // A body read from the client's socket as it went up is gone: 502.
    let mut client = Client::connect(gw.addr).await;
    assert_eq!(client.get("/", &[]).await.unwrap().status, 200);
    let reply = client.send(put(1 << 20)).await.unwrap();
    assert_eq!(reply.status, 502);
    assert_eq!(reply.header("x-canary-error"), Some("upstream-reset"));
    assert_eq!(connections(), 8);
    gw.shutdown().await;
}

#[tokio::test]
async fn idle_upstream_connections_are_closed_after_the_pool_idle_timeout() {
    let upstream = FixedUpstream::start(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    let extra = "[upstream]\npool_idle_timeout = \"300ms\"";
    let gw = Gateway::start(&config(extra, &[("v1", 1, upstream.addr)])).await;
    assert_eq!(get(gw.addr, "/", &[]).await.text(), "ok");
    // Nothing else goes to this upstream: the pool must still let go of the
    // connection once it has been idle for the timeout.
    let closed = eventually(Duration::from_secs(5), async || {
        upstream.closed.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    assert!(closed, "the idle upstream connection was never closed");
    gw.shutdown().await;
}

#[tokio::test]
async fn an_ejected_endpoint_that_answers_again_is_healthy_at_once() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let gw = Gateway::start(&config_endpoints(
        "[upstream]\neject_base = \"60s\"\neject_max = \"120s\"",
        &[("v1", 1, vec![addr])],
    ))
    .await;
    let control = gw.running.as_ref().unwrap().control.clone();
    let health = || control.status().versions[0].endpoints[0].health;
    for _ in 0..3 {
        assert_eq!(get(gw.addr, "/", &[]).await.status, 502);
    }
    assert_eq!(health(), "ejected");
    // The only endpoint is still tried while ejected; once it answers, the
    // ejection ends (no waiting out its period).
    let _up = Upstream::serve("v1", tokio::net::TcpListener::bind(addr).await.unwrap());
    assert_eq!(get(gw.addr, "/", &[]).await.text(), "v1");
    assert_eq!(health(), "healthy");
    gw.shutdown().await;
}
