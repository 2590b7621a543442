//! Scenarios (issue #15): what the client sends, what the upstream answers
//! and how the connections are used, one set of definitions shared by the
//! wrk Lua script, the shape probe and the upstreams.
//!
//! 1. small bodiless GET against the raw upstream (the first round's scenario);
//! 2. ALB-shaped GET, 1 KB JSON response;
//! 3. ALB-shaped POST of 16 KiB, 1 KB JSON response;
//! 4. ALB-shaped GET of a 256 KiB response;
//! 5. HTTPS keep-alive (scenario 2 over TLS);
//! 6. new TLS connections per second (`Connection: close`, a handshake per request);
//! 7. HTTP/2 over TLS from the client (h2load);
//! 8. 1,000 idle keep-alive connections plus the load of scenario 2.

use std::fmt::Write as _;

use anyhow::{Result, bail};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Scenario {
    Small,
    AlbGet,
    AlbPost,
    BigGet,
    Https,
    TlsHandshakes,
    Http2,
    IdlePlusLoad,
}

/// Where the proxies send the requests of a scenario.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum UpstreamKind {
    /// The bench's own raw server answering like a service (or, in
    /// scenario 1, with the first round's four-header answer).
    Service,
    /// A real nginx answering `return 200` (a static file for 256 KiB).
    Nginx,
}

impl UpstreamKind {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "service" | "raw" => UpstreamKind::Service,
            "nginx" => UpstreamKind::Nginx,
            other => bail!("LOAD_UPSTREAMS: unknown upstream kind {other:?} (service,nginx)"),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            UpstreamKind::Service => "service",
            UpstreamKind::Nginx => "nginx",
        }
    }
}

/// The upstream's answer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ResponseShape {
    /// The first round's answer: four header lines, a 100-byte text body.
    Small,
    /// A service's answer: eleven header lines with Set-Cookie, a JSON body
    /// of this many bytes.
    Service(usize),
    /// The same body chunked, in chunks of `chunk` bytes (no scenario's: for
    /// hand-run comparisons, `--response chunked:<bytes>:<chunk>`).
    Chunked { len: usize, chunk: usize },
}

impl ResponseShape {
    pub fn body_len(self) -> usize {
        match self {
            ResponseShape::Small => crate::UPSTREAM_BODY_LEN,
            ResponseShape::Service(n) | ResponseShape::Chunked { len: n, .. } => n,
        }
    }

    /// `small`, `service:<bytes>` or `chunked:<bytes>:<chunk>`: the
    /// upstream process's argument.
    pub fn arg(self) -> String {
        match self {
            ResponseShape::Small => "small".into(),
            ResponseShape::Service(n) => format!("service:{n}"),
            ResponseShape::Chunked { len, chunk } => format!("chunked:{len}:{chunk}"),
        }
    }

    pub fn parse_arg(s: &str) -> Result<Self> {
        if s == "small" {
            return Ok(ResponseShape::Small);
        }
        if let Some((len, chunk)) = s.strip_prefix("chunked:").and_then(|s| s.split_once(':'))
            && let (Ok(len), Ok(chunk @ 1..)) = (len.parse(), chunk.parse())
        {
            return Ok(ResponseShape::Chunked { len, chunk });
        }
        match s.strip_prefix("service:").and_then(|n| n.parse().ok()) {
            Some(n) => Ok(ResponseShape::Service(n)),
            None => {
                bail!("bad response shape {s:?} (small, service:<bytes>, chunked:<bytes>:<chunk>)")
            }
        }
    }
}

pub const KIB: usize = 1024;
/// The JSON body of scenarios 2, 3 and 8.
pub const JSON_BODY_LEN: usize = KIB;
/// The upload of scenario 3.
pub const POST_BODY_LEN: usize = 16 * KIB;
/// The download of scenario 4.
pub const BIG_BODY_LEN: usize = 256 * KIB;
/// The request path of the ALB-shaped scenarios.
pub const ALB_PATH: &str = "/api/v1/orders/12345?include=items&currency=EUR";

impl Scenario {
    pub const ALL: [Scenario; 8] = [
        Scenario::Small,
        Scenario::AlbGet,
        Scenario::AlbPost,
        Scenario::BigGet,
        Scenario::Https,
        Scenario::TlsHandshakes,
        Scenario::Http2,
        Scenario::IdlePlusLoad,
    ];

    pub fn number(self) -> usize {
        Scenario::ALL.iter().position(|s| *s == self).unwrap_or(0) + 1
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s.trim().parse::<usize>() {
            Ok(n) if (1..=Scenario::ALL.len()).contains(&n) => Ok(Scenario::ALL[n - 1]),
            _ => bail!("LOAD_SCENARIOS: unknown scenario {s:?} (1-8)"),
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Scenario::Small => "small bodiless GET (first round)",
            Scenario::AlbGet => "ALB-shaped GET, 1 KB JSON response",
            Scenario::AlbPost => "ALB-shaped POST of 16 KiB, 1 KB JSON response",
            Scenario::BigGet => "ALB-shaped GET of a 256 KiB response",
            Scenario::Https => "HTTPS keep-alive, ALB-shaped GET, 1 KB response",
            Scenario::TlsHandshakes => "new TLS connection per request (ECDSA P-256)",
            Scenario::Http2 => "HTTP/2 over TLS from the client (h2load)",
            Scenario::IdlePlusLoad => "idle keep-alive connections plus ALB-shaped GET load",
        }
    }

    /// Scenario 1 keeps the first round's raw upstream; the others run
    /// against every wanted upstream kind.
    pub fn upstream_kinds(self, wanted: &[UpstreamKind]) -> Vec<UpstreamKind> {
        match self {
            Scenario::Small => vec![UpstreamKind::Service],
            _ => wanted.to_vec(),
        }
    }

    pub fn response(self) -> ResponseShape {
        match self {
            Scenario::Small => ResponseShape::Small,
            Scenario::BigGet => ResponseShape::Service(BIG_BODY_LEN),
            _ => ResponseShape::Service(JSON_BODY_LEN),
        }
    }

    /// The request: None for the first round's bare `GET /`.
    pub fn request(self) -> Option<RequestShape> {
        match self {
            Scenario::Small => None,
            Scenario::AlbPost => Some(RequestShape {
                method: "POST",
                body_len: POST_BODY_LEN,
                close: false,
            }),
            Scenario::TlsHandshakes => Some(RequestShape {
                method: "GET",
                body_len: 0,
                close: true,
            }),
            _ => Some(RequestShape {
                method: "GET",
                body_len: 0,
                close: false,
            }),
        }
    }

    /// Needs the gateway's TLS termination (`[listener.tls] cert/key`).
    pub fn tls(self) -> bool {
        matches!(
            self,
            Scenario::Https | Scenario::TlsHandshakes | Scenario::Http2
        )
    }

    pub fn http2(self) -> bool {
        self == Scenario::Http2
    }

    pub fn idle_connections(self) -> bool {
        self == Scenario::IdlePlusLoad
    }
}

/// An ALB-shaped request.
#[derive(Clone, Copy, Debug)]
pub struct RequestShape {
    pub method: &'static str,
    pub body_len: usize,
    /// `Connection: close`: a new connection per request (scenario 6).
    pub close: bool,
}

/// The headers an ALB adds or passes on from a browser, in the order an
/// ALB sends them (after `Host`).
pub fn alb_headers(shape: &RequestShape) -> Vec<(&'static str, String)> {
    let mut h = vec![
        ("X-Forwarded-For", "203.0.113.195, 198.51.100.17".to_owned()),
        ("X-Forwarded-Proto", "https".to_owned()),
        ("X-Forwarded-Port", "443".to_owned()),
        (
            "X-Amzn-Trace-Id",
            "Root=1-674c8f1a-3f2b9c0d7e6a5b4c3d2e1f0a;Parent=53995c3f42cd8ad8;Sampled=1".to_owned(),
        ),
        (
            "User-Agent",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/131.0.0.0 Safari/537.36"
                .to_owned(),
        ),
        ("Accept", "application/json, text/plain, */*".to_owned()),
        ("Accept-Encoding", "gzip, deflate, br, zstd".to_owned()),
        ("Accept-Language", "en-GB,en;q=0.9,de;q=0.8".to_owned()),
        (
            "Cookie",
            "session=9f8e7d6c5b4a39281706f5e4d3c2b1a0; _ga=GA1.1.1234567890.1732900000; \
             _ga_ABC123XYZ=GS1.1.1733000000.4.1.1733000100.0.0.0; \
             csrftoken=Xq7pL2mN9vB4cT6yR1wE8uI3oP5aS0dF; lang=en-GB"
                .to_owned(),
        ),
        (
            "Connection",
            if shape.close { "close" } else { "keep-alive" }.to_owned(),
        ),
    ];
    if shape.body_len > 0 {
        h.push(("Content-Type", "application/json".to_owned()));
        h.push(("Content-Length", shape.body_len.to_string()));
    }
    h
}

/// The request head as bytes (what wrk sends, with `Host: <host>`).
pub fn request_head(shape: &RequestShape, host: &str) -> String {
    let mut s = format!("{} {ALB_PATH} HTTP/1.1\r\nHost: {host}\r\n", shape.method);
    for (k, v) in alb_headers(shape) {
        let _ = write!(s, "{k}: {v}\r\n");
    }
    s.push_str("\r\n");
    s
}

/// A JSON document of exactly `len` bytes (at least 40) naming `version`.
pub fn json_body(version: &str, len: usize) -> String {
    let mut s = format!("{{\"version\":\"{version}\",\"items\":[");
    let tail = "],\"pad\":\"\"}";
    let mut i = 0;
    loop {
        let item = format!(
            "{}{{\"id\":{i},\"sku\":\"SKU-{i:06}\",\"name\":\"Item number {i}\",\"price\":{}.{:02},\"qty\":{}}}",
            if i == 0 { "" } else { "," },
            10 + i % 90,
            (i * 7) % 100,
            1 + i % 5
        );
        if s.len() + item.len() + tail.len() > len {
            break;
        }
        s.push_str(&item);
        i += 1;
    }
    s.push_str("],\"pad\":\"");
    while s.len() + 2 < len {
        s.push('x');
    }
    s.push_str("\"}");
    s
}

/// The wrk Lua script of an ALB-shaped scenario (None: plain `GET /`).
/// wrk adds `Host`; every header is set here so wrk formats the request once.
pub fn wrk_script(shape: &RequestShape) -> Result<String> {
    let mut s = String::from(
        "-- Generated by benches/load/scenarios.rs: the request as an ALB sends it.\n",
    );
    let _ = writeln!(s, "wrk.method = \"{}\"", shape.method);
    let _ = writeln!(s, "wrk.path = \"{ALB_PATH}\"");
    for (k, v) in alb_headers(shape) {
        if v.contains(['"', '\\', '\n']) {
            bail!("header {k} cannot be written into a Lua string: {v:?}");
        }
        let _ = writeln!(s, "wrk.headers[\"{k}\"] = \"{v}\"");
    }
    if shape.body_len > 0 {
        let body = json_body("client", shape.body_len);
        let _ = writeln!(s, "wrk.body = [==[{body}]==]");
    }
    Ok(s)
}
