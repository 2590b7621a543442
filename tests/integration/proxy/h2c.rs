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
