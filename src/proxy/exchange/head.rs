//! Data path: request heads as the own client writes them.
//!
//! [`encode_forwarded`] writes the head the upstream gets straight from the
//! client's request: the same rewriting as [`headers::prepare_request`]
//! (origin-form target, hop-by-hop headers out, X-Forwarded-* and
//! x-request-id in), without inserting into or removing from the request's
//! header map: no hashing, no allocation.

use http::header;
use http::{Method, request};

use crate::proxy::headers::{
    self, Forwarding, X_FORWARDED_FOR, X_FORWARDED_PORT, X_FORWARDED_PROTO, X_REQUEST_ID,
};

/// Writes `METHOD target HTTP/1.1`, the request's headers as they are and
/// the blank line (the request was rewritten already).
pub fn encode(out: &mut Vec<u8>, req: &request::Parts) {
    start(out, req);
    for (name, value) in &req.headers {
        line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    finish(out, req);
}

/// Writes the request head for the upstream, rewritten as
/// [`headers::prepare_request`] would rewrite the request. Only for requests
/// whose Connection header names no other headers to remove
/// ([`headers::connection_names_headers`]): those need the general rewrite.
pub fn encode_forwarded(out: &mut Vec<u8>, req: &request::Parts, fwd: &Forwarding<'_>) {
    start(out, req);
    let (mut host, mut request_id, mut trailers) = (false, false, false);
    let (mut forwarded_for, mut proto, mut port) = (false, false, false);
    for (name, value) in &req.headers {
        if headers::is_hop_by_hop(name) {
            trailers |= *name == header::TE && headers::has_token(value.as_bytes(), b"trailers");
            continue;
        }
        if *name == X_FORWARDED_FOR {
            forwarded_for = true;
            continue;
        }
        if *name == X_FORWARDED_PROTO {
            proto = true;
            if !fwd.trust_forwarded_headers {
                continue;
            }
        } else if *name == X_FORWARDED_PORT {
            port = true;
            if !fwd.trust_forwarded_headers {
                continue;
            }
        } else if *name == header::HOST {
            host = true;
        } else if *name == X_REQUEST_ID {
            request_id = true;
        }
        line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    // HTTP/2 requests carry the authority in the URI instead of a Host header.
    if !host && let Some(authority) = req.uri.authority() {
        line(out, b"host", authority.as_str().as_bytes());
    }
    if trailers {
        line(out, b"te", b"trailers");
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if forwarded_for {
        // Earlier proxies' list, folded into one line, then the client.
        for value in req.headers.get_all(&X_FORWARDED_FOR) {
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b", ");
        }
    }
    out.extend_from_slice(fwd.peer_ip.as_bytes());
    out.extend_from_slice(b"\r\n");
    if !(fwd.trust_forwarded_headers && proto) {
        line(out, b"x-forwarded-proto", b"http");
    }
    if !(fwd.trust_forwarded_headers && port) {
        line(out, b"x-forwarded-port", fwd.port.as_bytes());
    }
    if !request_id {
        line(out, b"x-request-id", &headers::request_id_bytes());
    }
    finish(out, req);
}

/// The request line, in origin form.
fn start(out: &mut Vec<u8>, req: &request::Parts) {
    out.clear();
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    let target = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(if target.is_empty() {
        b"/"
    } else {
        target.as_bytes()
    });
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The request has no body: a method that defines a meaning for content
/// says so with a zero length. Then the blank line.
fn finish(out: &mut Vec<u8>, req: &request::Parts) {
    if matches!(req.method, Method::POST | Method::PUT | Method::PATCH)
        && !req.headers.contains_key(header::CONTENT_LENGTH)
    {
        line(out, b"content-length", b"0");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, Request};

    fn parts(req: Request<()>) -> request::Parts {
        req.into_parts().0
    }

    #[test]
    fn plain_heads_are_encoded_in_origin_form() {
        let mut req = parts(
            Request::post("/a/b?c=d")
                .header("host", "example")
                .header("x-two", "1")
                .header("x-two", "2")
                .body(())
                .unwrap(),
        );
        let mut out = Vec::new();
        encode(&mut out, &req);
        assert_eq!(
            out,
            b"POST /a/b?c=d HTTP/1.1\r\nhost: example\r\nx-two: 1\r\nx-two: 2\r\ncontent-length: 0\r\n\r\n"
        );
        req.method = Method::GET;
        req.uri = http::Uri::from_static("/");
        req.headers.clear();
        encode(&mut out, &req);
        assert_eq!(out, b"GET / HTTP/1.1\r\n\r\n");
    }

    /// The direct encoding must send what the general rewrite sends.
    #[test]
    fn forwarded_heads_match_the_general_rewrite() {
        let peer_ip = headers::peer_ip("[::ffff:10.1.2.3]:999".parse().unwrap());
        let port = HeaderValue::from_static("8080");
        let requests = [
            Request::get("http://h2.example/p?q=1").body(()).unwrap(),
            Request::get("/x")
                .header("host", "a")
                .header("connection", "keep-alive")
                .header("keep-alive", "timeout=5")
                .header("te", "gzip, trailers")
                .header("proxy-authorization", "x")
                .header("x-forwarded-for", "1.1.1.1")
                .header("x-forwarded-for", "2.2.2.2")
                .header("x-forwarded-proto", "https")
                .header("x-forwarded-port", "443")
                .header("x-request-id", "given")
                .header("x-kept", "yes")
                .body(())
                .unwrap(),
            Request::delete("/y").header("host", "b").body(()).unwrap(),
        ];
        for trust in [false, true] {
            let fwd = Forwarding {
                peer_ip: &peer_ip,
                port: &port,
                trust_forwarded_headers: trust,
            };
            for req in &requests {
                let copy = || {
                    let mut r = Request::new(());
                    *r.method_mut() = req.method().clone();
                    *r.uri_mut() = req.uri().clone();
                    *r.headers_mut() = req.headers().clone();
                    r
                };
                let mut direct = Vec::new();
                encode_forwarded(&mut direct, &parts(copy()), &fwd);
                let mut general = copy();
                headers::prepare_request(&mut general, false, &fwd);
                let mut expected = Vec::new();
                encode(&mut expected, &parts(general));
                assert_eq!(
                    normalized(&direct),
                    normalized(&expected),
                    "trust {trust}: {}",
                    String::from_utf8_lossy(&direct)
                );
            }
        }
    }

    /// The request line, then the header lines sorted, with the random
    /// request id blanked.
    fn normalized(head: &[u8]) -> (String, Vec<String>) {
        let text = String::from_utf8(head.to_vec()).unwrap();
        let mut lines = text.split("\r\n").filter(|l| !l.is_empty());
        let first = lines.next().unwrap().to_string();
        let mut rest: Vec<String> = lines
            .map(|l| match l.strip_prefix("x-request-id: ") {
                Some(id) if id.len() == 36 => "x-request-id: <generated>".to_string(),
                _ => l.to_string(),
            })
            .collect();
        rest.sort();
        (first, rest)
    }
}
