//! Shape probe: one request of the scenario's shape through each target,
//! checking what the client gets back (status, body length, the service's
//! headers) and, against the bench's own upstream, what the upstream
//! received (the recorded head and the body bytes read). It proves that the
//! measured runs carry the realistic heads and bodies, not only that they
//! were answered 2xx.

use std::net::SocketAddr;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use hyper::header::{HeaderName, SET_COOKIE};
use hyper::{Method, StatusCode};

use crate::client::{Conn, get_once};
use crate::scenarios::{
    ALB_PATH, ResponseShape, Scenario, UpstreamKind, alb_headers, json_body, request_head,
};
use crate::targets::Target;
use crate::upstream::{PROBE_HEADER, RECORDED_PATH};

/// A request of a scenario's shape, for the bench's own client.
pub struct ProbeRequest {
    pub path: &'static str,
    pub method: Method,
    pub headers: Vec<(HeaderName, String)>,
    pub body: Bytes,
}

/// The probe request of `scenario` (it asks the upstream to record it).
pub fn probe_request(scenario: Scenario) -> Result<ProbeRequest> {
    let mut headers = vec![(HeaderName::from_static(PROBE_HEADER), "1".to_owned())];
    let Some(shape) = scenario.request() else {
        return Ok(ProbeRequest {
            path: "/",
            method: Method::GET,
            headers,
            body: Bytes::new(),
        });
    };
    for (k, v) in alb_headers(&shape) {
        if k.eq_ignore_ascii_case("connection") {
            continue; // the probe keeps its connection
        }
        headers.push((HeaderName::from_bytes(k.as_bytes())?, v));
    }
    let method = Method::from_bytes(shape.method.as_bytes())?;
    let body = if shape.body_len == 0 {
        Bytes::new()
    } else {
        Bytes::from(json_body("client", shape.body_len))
    };
    Ok(ProbeRequest {
        path: ALB_PATH,
        method,
        headers,
        body,
    })
}

pub async fn probe(
    t: &Target,
    scenario: Scenario,
    kind: UpstreamKind,
    upstream_ports: &[u16],
) -> Result<()> {
    let req = probe_request(scenario)?;
    let sent_body = req.body.len();
    let mut conn = Conn::open(t.addr).await?;
    let r = conn
        .send(req.method, req.path, &req.headers, req.body)
        .await?;
    let want = scenario.response();
    ensure!(r.status() == StatusCode::OK, "status {}", r.status());
    ensure!(
        r.body().len() == want.body_len(),
        "response body {} bytes, expected {}",
        r.body().len(),
        want.body_len()
    );
    let cookie = r.headers().contains_key(SET_COOKIE);
    if matches!(want, ResponseShape::Service(_)) {
        ensure!(cookie, "the service's Set-Cookie did not arrive");
    }
    let mut line = format!(
        "  shape {:<8} response: {} header lines, body {} B, set-cookie {}",
        t.kind.name(),
        r.headers().len(),
        r.body().len(),
        if cookie { "yes" } else { "no" }
    );
    if let Some(shape) = scenario.request() {
        line.push_str(&format!(
            "; request head {} B as wrk sends it",
            request_head(&shape, &t.addr.to_string()).len()
        ));
    }
    if kind == UpstreamKind::Service {
        let (head, body_len) = recorded(upstream_ports)
            .await
            .context("reading what the upstream received")?;
        ensure!(
            body_len == sent_body,
            "the upstream read {body_len} body bytes of {sent_body}"
        );
        let lower = head.to_ascii_lowercase();
        if scenario.request().is_some() {
            for name in [
                "x-amzn-trace-id:",
                "cookie:",
                "user-agent:",
                "x-forwarded-proto:",
            ] {
                ensure!(
                    lower.contains(name),
                    "the upstream got no {name} header:\n{head}"
                );
            }
        }
        line.push_str(&format!(
            "; upstream got a {} B head ({} lines), body {body_len} B",
            head.len(),
            head.lines().filter(|l| !l.is_empty()).count()
        ));
    }
    println!("{line}");
    Ok(())
}

/// The last recorded probe request of whichever upstream got it.
async fn recorded(ports: &[u16]) -> Result<(String, usize)> {
    for port in ports {
        let addr: SocketAddr = ([127, 0, 0, 1], *port).into();
        let r = get_once(addr, RECORDED_PATH).await?;
        if r.status() != StatusCode::OK {
            continue;
        }
        let text = String::from_utf8_lossy(r.body()).into_owned();
        let (first, head) = text.split_once('\n').unwrap_or((&text, ""));
        let body_len = first
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(usize::MAX);
        return Ok((head.to_owned(), body_len));
    }
    bail!("no upstream recorded the probe request")
}
