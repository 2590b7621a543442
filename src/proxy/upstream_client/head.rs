//! Data path: request heads as the own client writes them.
//!
//! [`encode_forwarded`] writes the head the upstream gets straight from the
//! client's request: the same rewriting as [`headers::prepare_request`]
//! (origin-form target, hop-by-hop headers out, X-Forwarded-* and
//! x-request-id in), without inserting into or removing from the request's
//! header map: no hashing, no allocation.

use http::header;
use http::request;

use crate::proxy::headers::{self, Forwarding};

/// Writes `METHOD target HTTP/1.1`, the request's headers as they are and
/// the blank line (the request was rewritten already).
pub fn encode(out: &mut Vec<u8>, req: &request::Parts) {
    let target = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
    request_line(out, req.method.as_str().as_bytes(), target.as_bytes());
    for (name, value) in &req.headers {
        line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    let length = req.headers.contains_key(header::CONTENT_LENGTH);
    finish(out, req.method.as_str().as_bytes(), length);
}

/// Writes the request head for the upstream, rewritten as
/// [`headers::prepare_request`] would rewrite the request. Only for requests
/// whose Connection header names no other headers to remove
/// (`headers::connection_names_headers`): those need the general rewrite.
pub fn encode_forwarded(out: &mut Vec<u8>, req: &request::Parts, fwd: &Forwarding<'_>) {
    let target = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let fields = || {
        req.headers
            .iter()
            .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()))
    };
    let authority = req
        .uri
        .authority()
        .map(|a| headers::authority_host(a).as_bytes());
    encode_fields(
        out,
        req.method.as_str().as_bytes(),
        target.as_bytes(),
        authority,
        fields,
        fwd,
    );
}

/// [`encode_forwarded`] for a request as received: method, origin-form
/// target and header fields as bytes (names in any letter case; `fields`
/// makes an iterator over them). `authority`, the target's, replaces Host.
pub fn encode_fields<'a, I: Iterator<Item = (&'a [u8], &'a [u8])>>(
    out: &mut Vec<u8>,
    method: &[u8],
    target: &[u8],
    authority: Option<&[u8]>,
    fields: impl Fn() -> I,
    fwd: &Forwarding<'_>,
) {
    request_line(out, method, target);
    let (mut request_id, mut trailers, mut length) = (false, false, false);
    let (mut forwarded_for, mut proto, mut port) = (false, false, false);
    for (name, value) in fields() {
        if headers::is_hop_by_hop_bytes(name)
            || (fwd.drop_underscored && headers::is_underscored(name))
            || (fwd.drop_expect && headers::name_is(name, b"expect"))
        {
            trailers |= headers::name_is(name, b"te") && headers::has_token(value, b"trailers");
            continue;
        }
        if headers::name_is(name, b"x-forwarded-for") {
            forwarded_for = true;
            continue;
        }
        if headers::name_is(name, b"x-forwarded-proto") {
            proto = true;
            if !fwd.trust_forwarded_headers {
                continue;
            }
        } else if headers::name_is(name, b"x-forwarded-port") {
            port = true;
            if !fwd.trust_forwarded_headers {
                continue;
            }
        } else if authority.is_some() && headers::name_is(name, b"host") {
            continue;
        } else if headers::name_is(name, b"x-request-id") {
            // A blank id is none: one is made below (as
            // `headers::ensure_request_id` does).
            if headers::is_blank(value) {
                continue;
            }
            request_id = true;
        } else if headers::name_is(name, b"content-length") {
            length = true;
        }
        line(out, name, value);
    }
    // A target's authority replaces Host (RFC 9112, 3.2.2: absolute form;
    // HTTP/2 requests carry it in `:authority`).
    if let Some(authority) = authority {
        line(out, b"host", authority);
    }
    if trailers {
        line(out, b"te", b"trailers");
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if forwarded_for {
        // Earlier proxies' list, folded into one line, then the client.
        for (_, value) in fields().filter(|(n, _)| headers::name_is(n, b"x-forwarded-for")) {
            out.extend_from_slice(value);
            out.extend_from_slice(b", ");
        }
    }
    out.extend_from_slice(fwd.peer_ip.as_bytes());
    out.extend_from_slice(b"\r\n");
    if !(fwd.trust_forwarded_headers && proto) {
        line(out, b"x-forwarded-proto", fwd.proto.as_bytes());
    }
    if !(fwd.trust_forwarded_headers && port) {
        line(out, b"x-forwarded-port", fwd.port.as_bytes());
    }
    if !request_id {
        line(out, b"x-request-id", &headers::request_id_bytes());
    }
    if fwd.chunked {
        line(out, b"transfer-encoding", b"chunked");
    }
    finish(out, method, length || fwd.chunked);
}

/// The value of the first `x-request-id` field of an encoded request head
/// (for the log when a request fails; not on the way of a good one).
pub fn request_id(head: &[u8]) -> Option<&[u8]> {
    field_value(head, b"x-request-id").map(|at| head[at].trim_ascii_end())
}

/// Replaces the value of the first Host field of the encoded request head
/// `head` by `host`: the endpoint's address the gateway wrote for an
/// HTTP/1.0 request without Host (`headers::insert_endpoint_host`), when
/// a retry sends the head to another endpoint. A head without Host (or
/// none whole) is left as it is; bytes past the head's blank line are not
/// looked at.
pub fn replace_host(head: &mut Vec<u8>, host: &[u8]) {
    if let Some(at) = field_value(head, b"host") {
        head.splice(at, host.iter().copied());
    }
}

/// Where the value of the first field named `name` (lowercase) of the
/// encoded request head `head` is: without the blanks before it and the
/// line's end; none past the head's blank line.
fn field_value(head: &[u8], name: &[u8]) -> Option<std::ops::Range<usize>> {
    let mut at = head.iter().position(|&b| b == b'\n')? + 1;
    loop {
        let end = at + head.get(at..)?.iter().position(|&b| b == b'\n')?;
        let line = head[at..end].strip_suffix(b"\r").unwrap_or(&head[at..end]);
        if line.is_empty() {
            return None;
        }
        if let Some(colon) = line.iter().position(|&b| b == b':')
            && line[..colon].eq_ignore_ascii_case(name)
        {
            let value = &line[colon + 1..];
            let blank = value.len() - value.trim_ascii_start().len();
            return Some(at + colon + 1 + blank..at + line.len());
        }
        at = end + 1;
    }
}

/// The request line, in origin form.
fn request_line(out: &mut Vec<u8>, method: &[u8], target: &[u8]) {
    out.clear();
    out.extend_from_slice(method);
    out.push(b' ');
    out.extend_from_slice(if target.is_empty() { b"/" } else { target });
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

/// Writes a header line.
pub(crate) fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The request has no body: a method that defines a meaning for content
/// says so with a zero length (unless `length` says the request has a
/// Content-Length header). Then the blank line.
fn finish(out: &mut Vec<u8>, method: &[u8], length: bool) {
    if !length && matches!(method, b"POST" | b"PUT" | b"PATCH") {
        line(out, b"content-length", b"0");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, Method, Request};

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

    /// A blank `x-request-id` does not go up: a new id goes in its place.
    #[test]
    fn a_blank_request_id_goes_up_as_a_new_one() {
        let peer_ip = HeaderValue::from_static("10.1.2.3");
        let port = HeaderValue::from_static("8080");
        let fwd = Forwarding {
            peer_ip: &peer_ip,
            proto: "http",
            port: &port,
            trust_forwarded_headers: false,
            drop_underscored: false,
            drop_expect: false,
            chunked: false,
        };
        for blank in [&b""[..], b" ", b"\t "] {
            let fields = [(&b"host"[..], &b"a"[..]), (b"X-Request-Id", blank)];
            let mut out = Vec::new();
            encode_fields(&mut out, b"GET", b"/", None, || fields.into_iter(), &fwd);
            let text = String::from_utf8(out.clone()).unwrap();
            assert_eq!(
                text.to_ascii_lowercase().matches("x-request-id").count(),
                1,
                "{text}"
            );
            assert_eq!(request_id(&out).map(<[u8]>::len), Some(36), "{text}");
        }
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
            // A blank id is none: a new one goes up.
            Request::get("/z")
                .header("host", "c")
                .header("x-request-id", "")
                .body(())
                .unwrap(),
            Request::get("/z")
                .header("host", "c")
                .header("x-request-id", " \t ")
                .body(())
                .unwrap(),
            Request::get("/z")
                .header("host", "c")
                .header("x-request-id", "")
                .header("x-request-id", "given")
                .header("x-request-id", " ")
                .body(())
                .unwrap(),
        ];
        for trust in [false, true] {
            let fwd = Forwarding {
                peer_ip: &peer_ip,
                proto: "https",
                port: &port,
                trust_forwarded_headers: trust,
                drop_underscored: true,
                drop_expect: false,
                chunked: false,
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

    #[test]
    fn replace_host_rewrites_the_host_value_only() {
        let mut head =
            b"GET / HTTP/1.1\r\nx-host: a\r\nHost:  10.0.0.1:80\r\nx: y\r\n\r\nhost: body".to_vec();
        replace_host(&mut head, b"10.0.0.22:8080");
        assert_eq!(
            head,
            b"GET / HTTP/1.1\r\nx-host: a\r\nHost:  10.0.0.22:8080\r\nx: y\r\n\r\nhost: body"
        );
        let mut none = b"GET / HTTP/1.1\r\nx: y\r\n\r\nhost: body".to_vec();
        let before = none.clone();
        replace_host(&mut none, b"a");
        assert_eq!(none, before);
        let mut cut = b"GET / HTTP/1.1\r\nx: y".to_vec();
        replace_host(&mut cut, b"a");
        assert_eq!(cut, b"GET / HTTP/1.1\r\nx: y");
    }
}
