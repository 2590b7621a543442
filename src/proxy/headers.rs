//! Data path: the header rewriting a faithful proxy does on the way up and
//! down: hop-by-hop headers out, forwarding headers in.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri, Version};

/// `x-request-id`, generated when the client sent none or a blank one
/// ([`ensure_request_id`]).
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

mod host;
pub(crate) use host::valid_host;

/// Whether the request asks to switch protocols (WebSocket and the like).
/// An upgrade to h2c is refused: its Upgrade and HTTP2-Settings fields are
/// stripped as hop-by-hop and the request goes on as plain HTTP/1.1 (an
/// upstream's 101 would make the connection a tunnel past the gateway).
pub fn is_upgrade_request<B>(req: &Request<B>) -> bool {
    // One pass over the names (standard names compare as enum tags) instead
    // of hashing: most requests carry neither header.
    req.version() == Version::HTTP_11
        && has_connection(req.headers())
        && req.headers().keys().any(|k| k == header::UPGRADE)
        && connection_has_token(req.headers(), "upgrade")
        && !req
            .headers()
            .get_all(header::UPGRADE)
            .iter()
            .any(|v| has_token(v.as_bytes(), b"h2c"))
}

/// Why an HTTP/1 request's head breaks RFC 9112 in a way hyper's server
/// lets pass (a 400): no Host in an HTTP/1.1 request, or more than one
/// (3.2); an authority-form target on another method than CONNECT (3.2.3),
/// which would otherwise go upstream as `/` with its authority as Host; a
/// transfer coding other than chunked; a Host value that is not
/// `uri-host [ ":" port ]` (`valid_host`, 3.2). HTTP/2 carries
/// `:authority`: only the Host the upstream would get is checked.
pub fn head_problem<B>(req: &Request<B>) -> Option<&'static str> {
    if req.version() >= Version::HTTP_2 {
        // The authority replaces Host (`prepare_request`); without one, the
        // Host field goes up as it came: one at most, as on HTTP/1.1 (two
        // would let the upstream and whatever is behind it disagree on the
        // host).
        let Some(authority) = req.uri().authority() else {
            let mut hosts = req.headers().get_all(header::HOST).iter();
            return match (hosts.next(), hosts.next()) {
                (Some(_), Some(_)) => Some(MORE_THAN_ONE_HOST),
                (Some(host), None) if !valid_host(host.as_bytes()) => Some(INVALID_HOST),
                _ => None,
            };
        };
        let valid = valid_host(authority_host(authority).as_bytes());
        return (!valid).then_some(INVALID_HOST);
    }
    if req.uri().scheme().is_none()
        && req.uri().authority().is_some()
        && req.method() != http::Method::CONNECT
    {
        return Some("authority-form target");
    }
    // A transfer coding but chunked would go upstream as a plain body
    // (hyper's server decodes the chunks, the coding would be lost).
    let codings = req.headers().get_all(header::TRANSFER_ENCODING).iter();
    let other = |v: &HeaderValue| {
        v.as_bytes()
            .split(|&b| b == b',')
            .map(<[u8]>::trim_ascii)
            .any(|c| !c.is_empty() && !c.eq_ignore_ascii_case(b"chunked"))
    };
    if codings.into_iter().any(other) {
        return Some("a transfer coding other than chunked");
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(host), None) if !valid_host(host.as_bytes()) => Some(INVALID_HOST),
        (Some(_), None) => None,
        (Some(_), Some(_)) => Some(MORE_THAN_ONE_HOST),
        (None, _) if req.version() == Version::HTTP_11 => Some("no Host field"),
        (None, _) => None,
    }
}

/// Why a request with a Host value that is not `uri-host [ ":" port ]` is
/// refused.
pub(crate) const INVALID_HOST: &str = "invalid Host field value";

/// Why a request with several Host fields is refused (RFC 9112 3.2).
const MORE_THAN_ONE_HOST: &str = "more than one Host field";

/// A target's authority as a Host value: without userinfo.
pub(crate) fn authority_host(authority: &http::uri::Authority) -> &str {
    let text = authority.as_str();
    text.rsplit_once('@').map_or(text, |(_, host)| host)
}

/// Gives a request that has no Host (an HTTP/1.0 one, RFC 9112, 3.2) its
/// upstream endpoint's address as one: the upstream gets HTTP/1.1, which
/// must carry a Host.
pub(crate) fn insert_endpoint_host(headers: &mut HeaderMap, endpoint: SocketAddr) {
    if let Ok(host) = HeaderValue::try_from(endpoint.to_string()) {
        headers.insert(header::HOST, host);
    }
}

/// Whether `b` may stand in a token (RFC 9110, 5.6.2: `tchar`), as a
/// method or a field name is made of.
pub(crate) fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether the header name `name` is `lower` in any letter case, for a
/// `lower` of lowercase letters, digits and `-` (the names the data path
/// looks for) and a `name` of token bytes (RFC 9110, 5.6.2: what httparse
/// and `http` let through). Eight bytes at a time: OR-ing 0x20 lowercases a
/// letter and maps no other token byte onto a letter, a digit or `-`. Where
/// `eq_ignore_ascii_case` compares a byte at a time, these comparisons
/// cost about 1,850 of an ALB GET's 20,000 instructions.
#[inline]
pub(crate) fn name_is(name: &[u8], lower: &[u8]) -> bool {
    debug_assert!(
        lower
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
    );
    const CASE: u64 = 0x2020_2020_2020_2020;
    let word = |s: &[u8], at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&s[at..at + 8]);
        u64::from_ne_bytes(w)
    };
    let len = name.len();
    if len != lower.len() {
        return false;
    }
    if len < 8 {
        return name.iter().zip(lower).all(|(a, b)| a | 0x20 == *b);
    }
    let mut at = 0;
    while at + 8 < len {
        if word(name, at) | CASE != word(lower, at) {
            return false;
        }
        at += 8;
    }
    // The last eight bytes (overlapping the words before when `len` is not
    // a multiple of eight).
    word(name, len - 8) | CASE == word(lower, len - 8)
}

/// Whether a header name contains `_` (dropped unless the config keeps them).
pub(crate) fn is_underscored(name: &[u8]) -> bool {
    // `memchr` looks at a word at a time; `contains` a byte at a time
    // (every request header's name is checked: 800 of an ALB GET's 20,000
    // instructions).
    memchr::memchr(b'_', name).is_some()
}

/// Says how a request body that goes through hyper's client is framed: a
/// body without Content-Length is sent chunked. hyper's client would send
/// a body of unknown length on GET, HEAD and CONNECT as no body at all.
pub fn frame_request_body(headers: &mut HeaderMap, end_stream: bool) {
    if !end_stream && !headers.contains_key(header::CONTENT_LENGTH) {
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
}

/// Fixes an upstream response's length fields (RFC 9112, 6.3) and says
/// whether its connection may be reused: with Transfer-Encoding, a
/// Content-Length is dropped and the connection is not reused; equal
/// repeated lengths (`5, 5` or two fields) go out as one.
pub fn fix_response_length(headers: &mut HeaderMap) -> bool {
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let (Some(first), second) = (lengths.next(), lengths.next()) else {
        return true;
    };
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
        return false;
    }
    if second.is_some() || first.as_bytes().contains(&b',') {
        // Unequal values never get here: the response failed to parse.
        let one = first
            .as_bytes()
            .split(|&b| b == b',')
            .next()
            .map(<[u8]>::trim_ascii);
        if let Some(value) = one.and_then(|v| HeaderValue::from_bytes(v).ok()) {
            headers.insert(header::CONTENT_LENGTH, value);
        }
    }
    true
}

/// One Content-Length number: decimal digits only (RFC 9110, 8.6), blanks
/// around them ignored, at most 19 of them (no overflow).
pub(crate) fn content_length_number(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
    )
}

/// Whether a Connection header is present, by a scan of the names.
fn has_connection(headers: &HeaderMap) -> bool {
    headers.keys().any(|k| k == header::CONNECTION)
}

fn connection_has_token(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Whether a comma-separated header value lists `token` (ASCII case
/// insensitive, blanks around items ignored).
pub(crate) fn has_token(list: &[u8], token: &[u8]) -> bool {
    list.split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Whether the Connection header names headers to remove (anything but the
/// `keep-alive` and `close` options).
pub(crate) fn connection_names_headers(headers: &HeaderMap) -> bool {
    has_connection(headers)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| names_headers(v.as_bytes()))
}

/// Whether a Connection header value names headers (anything but the
/// `keep-alive` and `close` options).
pub(crate) fn names_headers(value: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .map(|t| t.trim_ascii())
        .any(|t| {
            !(t.is_empty()
                || t.eq_ignore_ascii_case(b"keep-alive")
                || t.eq_ignore_ascii_case(b"close"))
        })
}

/// Removes hop-by-hop headers: every header the Connection header names
/// (but Content-Length, the message's framing, and Host, see
/// `never_named_away`), Connection, Keep-Alive, TE, Trailer,
/// Transfer-Encoding, Upgrade (unless `upgrading`) and every Proxy-* header.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrading: bool) {
    // Fast path, one scan: most requests carry none of these (standard header
    // names compare as enum tags, without hashing).
    if !headers.keys().any(is_hop_by_hop) {
        if upgrading {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        // Only the named headers that are present are collected: usually
        // none (the tokens are `keep-alive` or `close`), and then nothing is
        // allocated (a name looked up as `&str` is not).
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !(upgrading && t.eq_ignore_ascii_case("upgrade")))
            .filter(|t| !never_named_away(t))
            .filter(|t| headers.contains_key(*t))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(&name);
        }
        headers.remove(header::CONNECTION);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(header::TE);
    headers.remove(header::TRAILER);
    headers.remove(header::TRANSFER_ENCODING);
    if !upgrading {
        headers.remove(header::UPGRADE);
    }
    headers.remove(&PROXY_CONNECTION);
    headers.remove(&HTTP2_SETTINGS);
    if headers.keys().any(|k| k.as_str().starts_with("proxy-")) {
        let proxy: Vec<HeaderName> = headers
            .keys()
            .filter(|k| k.as_str().starts_with("proxy-"))
            .cloned()
            .collect();
        for name in proxy {
            headers.remove(&name);
        }
    }
    if upgrading {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Fields a Connection header never removes. Content-Length frames the
/// message: without it, a response on a kept-alive connection would reach
/// its client unframed (Transfer-Encoding goes anyway: the gateway re-frames
/// every body). Host names the resource (RFC 9112, 3.2): a client's
/// `Connection: host` must not send its request upstream without one (the
/// own server's direct path, which never takes such a request, keeps Host
/// too).
fn never_named_away(token: &str) -> bool {
    token.eq_ignore_ascii_case("content-length") || token.eq_ignore_ascii_case("host")
}

/// A header that is hop-by-hop by its name alone (Connection also names others).
pub(crate) fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == KEEP_ALIVE
        || name == HTTP2_SETTINGS
        || name.as_str().as_bytes().starts_with(b"proxy-")
}

/// [`is_hop_by_hop`] for a name as received (any letter case).
pub(crate) fn is_hop_by_hop_bytes(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 7] = [
        b"connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"keep-alive",
        b"http2-settings",
    ];
    NAMES.iter().any(|n| name_is(name, n)) || name.get(..6).is_some_and(|p| name_is(p, b"proxy-"))
}

/// Whether a Transfer-Encoding value is `chunked` alone, the one transfer
/// coding the gateway passes on (it re-frames every body; see
/// [`transfer_coded`]).
pub fn chunked_only(value: &[u8]) -> bool {
    let mut codings = value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty());
    codings
        .next()
        .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"))
        && codings.next().is_none()
}

/// Whether a response's body is under a transfer coding other than
/// `chunked` (`gzip, chunked`): the field is hop-by-hop and goes, so the
/// client would take the coded bytes for the content; such a response is
/// the upstream's error.
pub fn transfer_coded(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::TRANSFER_ENCODING).iter();
    match (values.next(), values.next()) {
        (None, _) => false,
        (Some(value), None) => !chunked_only(value.as_bytes()),
        (Some(_), Some(_)) => true,
    }
}

/// What the request needs to know about where it came from.
pub struct Forwarding<'a> {
    /// The client's IP address as a header value ([`peer_ip`]), made once
    /// per connection.
    pub peer_ip: &'a HeaderValue,
    /// The scheme the client used (`http` or `https`), per connection.
    pub proto: &'static str,
    pub port: &'a HeaderValue,
    pub trust_forwarded_headers: bool,
    /// Drop header fields whose names contain `_` (see
    /// `is_underscored`); false when the request has none.
    pub drop_underscored: bool,
    /// Drop `Expect` (the own server's requests only, which answer
    /// `100-continue` themselves: see [`crate::proxy::h1::request`]).
    pub drop_expect: bool,
    /// The body goes up chunked, as it came (the own server's requests
    /// only): `Transfer-Encoding: chunked` is written for it.
    pub chunked: bool,
}

/// hyper's HTTP/1 side only sends the trailer fields that a message's Trailer
/// header declares: keep it on a chunked body, or trailers are lost.
fn declared_trailers(headers: &HeaderMap) -> Vec<HeaderValue> {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.get_all(header::TRAILER).iter().cloned().collect()
    } else {
        Vec::new()
    }
}

/// Whether a request asks for trailers (`TE: trailers`): only then may its
/// response declare them (hyper's HTTP/1 server sends trailer fields only
/// then; the own server never serves such a request).
pub fn asks_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
}

/// Rewrites a client request for the upstream: origin-form URI, HTTP/1.1, a
/// Host header, hop-by-hop headers out, X-Forwarded-* and x-request-id in.
pub fn prepare_request<B>(req: &mut Request<B>, upgrading: bool, fwd: &Forwarding<'_>) {
    let wants_trailers = asks_trailers(req.headers());

    // A target's authority replaces Host (RFC 9112, 3.2.2: absolute form;
    // HTTP/2 requests carry it in `:authority`).
    if let Some(authority) = req.uri().authority()
        && let Ok(host) = HeaderValue::from_str(authority_host(authority))
    {
        req.headers_mut().insert(header::HOST, host);
    }
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        let origin_form = req
            .uri()
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/");
        if let Ok(uri) = origin_form.parse::<Uri>() {
            *req.uri_mut() = uri;
        }
    }
    *req.version_mut() = Version::HTTP_11;

    let trailer = declared_trailers(req.headers());
    let headers = req.headers_mut();
    strip_hop_by_hop(headers, upgrading);
    if fwd.drop_underscored
        && headers
            .keys()
            .any(|k| is_underscored(k.as_str().as_bytes()))
    {
        let underscored: Vec<HeaderName> = headers
            .keys()
            .filter(|k| is_underscored(k.as_str().as_bytes()))
            .cloned()
            .collect();
        for name in underscored {
            headers.remove(&name);
        }
    }
    for value in trailer {
        headers.append(header::TRAILER, value);
    }
    if wants_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    append_forwarded_for(headers, fwd.peer_ip);
    if !(fwd.trust_forwarded_headers && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(fwd.proto),
        );
    }
    if !(fwd.trust_forwarded_headers && headers.contains_key(&X_FORWARDED_PORT)) {
        headers.insert(X_FORWARDED_PORT.clone(), fwd.port.clone());
    }
    ensure_request_id(headers);
}

/// The request's id: its `x-request-id` when it has one that is not blank
/// ([`is_blank`]), else a new one ([`new_request_id`]) set in the map.
/// Blank fields go: an empty id correlates nothing (and would show as
/// `request_id=""` in the access log), as a blank sticky key is no key.
/// One look-up for the usual request (one id, or none).
pub fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    let mut ids = headers.get_all(&X_REQUEST_ID).iter();
    match (ids.next(), ids.next()) {
        (None, _) => {}
        (Some(id), None) if !is_blank(id.as_bytes()) => return id.clone(),
        _ => {
            // Blank, or several: the blank ones go, the first other is the id.
            let kept: Vec<HeaderValue> = headers
                .get_all(&X_REQUEST_ID)
                .iter()
                .filter(|v| !is_blank(v.as_bytes()))
                .cloned()
                .collect();
            headers.remove(&X_REQUEST_ID);
            for value in kept {
                headers.append(X_REQUEST_ID.clone(), value);
            }
            if let Some(id) = headers.get(&X_REQUEST_ID) {
                return id.clone();
            }
        }
    }
    let id = new_request_id();
    headers.insert(X_REQUEST_ID.clone(), id.clone());
    id
}

/// Whether a field value is blank: empty or only spaces and tabs (HTTP/1.1
/// values come trimmed, HTTP/2 ones as sent).
pub fn is_blank(value: &[u8]) -> bool {
    value.iter().all(|&b| b == b' ' || b == b'\t')
}

/// Joins several Cookie fields into one, their values separated by `; `
/// (RFC 9113, 8.2.3: an HTTP/2 request may carry a cookie in several
/// fields, which must be one before it goes on as HTTP/1.1; RFC 6265, 5.4:
/// an HTTP/1.1 request has one Cookie field). One lookup when there is at
/// most one.
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut cookies = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (cookies.next(), cookies.next()) else {
        return;
    };
    let mut joined = bytes::BytesMut::with_capacity(first.len() * 2 + 2);
    for value in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_maybe_shared(joined.freeze()) {
        headers.insert(header::COOKIE, value);
    }
}

/// A client address as it appears in X-Forwarded-For (IPv4-mapped IPv6
/// addresses as IPv4).
pub fn peer_ip(peer: SocketAddr) -> HeaderValue {
    HeaderValue::from_str(&peer.ip().to_canonical().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

fn append_forwarded_for(headers: &mut HeaderMap, peer_ip: &HeaderValue) {
    let ip = peer_ip.as_bytes();
    let mut existing = headers.get_all(&X_FORWARDED_FOR).iter();
    let value = match (existing.next(), existing.next()) {
        (None, _) => Ok(peer_ip.clone()),
        (Some(first), None) => {
            let mut joined = bytes::BytesMut::with_capacity(first.len() + 2 + ip.len());
            joined.extend_from_slice(first.as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(ip);
            HeaderValue::from_maybe_shared(joined.freeze())
        }
        (Some(_), Some(_)) => {
            // Several X-Forwarded-For lines: fold them into one list.
            let mut joined = bytes::BytesMut::new();
            for v in headers.get_all(&X_FORWARDED_FOR) {
                joined.extend_from_slice(v.as_bytes());
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(ip);
            HeaderValue::from_maybe_shared(joined.freeze())
        }
    };
    if let Ok(v) = value {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
}

/// A random 128-bit id in UUID v4 form.
pub fn new_request_id() -> HeaderValue {
    HeaderValue::from_bytes(&request_id_bytes())
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// A random 128-bit id in UUID v4 form, as text.
pub(crate) fn request_id_bytes() -> [u8; 36] {
    use crate::proxy::random::fast_random;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let (hi, lo) = (fast_random(), fast_random());
    let bytes: [u8; 16] = {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&hi.to_be_bytes());
        b[8..].copy_from_slice(&lo.to_be_bytes());
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        b
    };
    let mut hex = [0u8; 32];
    for (pair, byte) in hex.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0x0f)];
    }
    // 8-4-4-4-12
    let mut out = [b'-'; 36];
    out[..8].copy_from_slice(&hex[..8]);
    out[9..13].copy_from_slice(&hex[8..12]);
    out[14..18].copy_from_slice(&hex[12..16]);
    out[19..23].copy_from_slice(&hex[16..20]);
    out[24..].copy_from_slice(&hex[20..]);
    out
}

/// Rewrites an upstream response for the client; a chunked body keeps its
/// Trailer field when the client asked for trailers (`trailers_asked`).
pub fn prepare_response<B>(
    resp: &mut Response<B>,
    response_header: Option<(&HeaderName, &HeaderValue)>,
    trailers_asked: bool,
) {
    let upgrading = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    // RFC 9110, 8.6: no Content-Length in a 204 (Transfer-Encoding, also
    // forbidden there, is hop-by-hop and goes below).
    if resp.status() == http::StatusCode::NO_CONTENT {
        resp.headers_mut().remove(header::CONTENT_LENGTH);
    }
    if upgrading || resp.headers().keys().any(is_hop_by_hop) {
        let trailer = match trailers_asked {
            true => declared_trailers(resp.headers()),
            false => Vec::new(),
        };
        strip_hop_by_hop(resp.headers_mut(), upgrading);
        for value in trailer {
            resp.headers_mut().append(header::TRAILER, value);
        }
    }
    if let Some((name, value)) = response_header {
        resp.headers_mut().insert(name.clone(), value.clone());
    }
    // hyper's client keeps an empty reason phrase (`HTTP/1.1 200 `) as
    // one; a code with a text of its own goes out with that text, as the
    // own server writes it (`h1::response::status_line`).
    if resp
        .extensions()
        .get::<hyper::ext::ReasonPhrase>()
        .is_some_and(|phrase| phrase.as_bytes().is_empty())
        && resp.status().canonical_reason().is_some()
    {
        resp.extensions_mut().remove::<hyper::ext::ReasonPhrase>();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_chunked_alone_passes_as_a_transfer_coding() {
        for ok in [
            &b"chunked"[..],
            b"Chunked",
            b" chunked ",
            b"chunked,",
            b", chunked",
        ] {
            assert!(chunked_only(ok), "{}", String::from_utf8_lossy(ok));
        }
        for coded in [
            &b"gzip, chunked"[..],
            b"chunked, chunked",
            b"gzip",
            b"",
            b",",
        ] {
            assert!(!chunked_only(coded), "{}", String::from_utf8_lossy(coded));
        }
        let mut h = HeaderMap::new();
        assert!(!transfer_coded(&h));
        h.append(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        assert!(!transfer_coded(&h));
        h.append(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        assert!(transfer_coded(&h));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("gzip, chunked"),
        );
        assert!(transfer_coded(&h));
    }

    #[test]
    fn strips_hop_by_hop_and_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert("proxy-authorization", HeaderValue::from_static("x"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn named_headers_are_found_in_any_case_and_an_upgrade_keeps_its_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Upgrade , X-Secret,,bad name, close"),
        );
        h.append(header::CONNECTION, HeaderValue::from_static("X-Other"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-other", HeaderValue::from_static("2"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h, true);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["connection", "upgrade", "x-kept"], "{h:?}");
        assert_eq!(h[header::CONNECTION], "upgrade");

        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
    }

    #[test]
    fn cookie_fields_are_joined_into_one() {
        let mut h = HeaderMap::new();
        join_cookies(&mut h);
        assert!(h.is_empty());
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        join_cookies(&mut h);
        assert_eq!(
            h.get_all(header::COOKIE).iter().collect::<Vec<_>>(),
            ["a=1"]
        );
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        h.append(header::COOKIE, HeaderValue::from_static("c=3"));
        join_cookies(&mut h);
        assert_eq!(
            h.get_all(header::COOKIE).iter().collect::<Vec<_>>(),
            ["a=1; b=2; c=3"]
        );
    }

    #[test]
    fn connection_never_removes_the_length() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Content-Length, x-secret"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h[header::CONTENT_LENGTH], "5");
    }

    #[test]
    fn name_is_agrees_with_eq_ignore_ascii_case_on_token_names() {
        let token: Vec<u8> = (0..=u8::MAX).filter(|&b| is_token_byte(b)).collect();
        let looked_for: [&[u8]; 8] = [
            b"te",
            b"host",
            b"expect",
            b"proxy-",
            b"connection",
            b"x-request-id",
            b"x-forwarded-for",
            b"transfer-encoding",
        ];
        for lower in looked_for {
            let upper = lower.to_ascii_uppercase();
            assert!(name_is(lower, lower) && name_is(&upper, lower));
            // Every token byte at every position, in names of each length
            // (shorter and longer ones must never match).
            for at in 0..lower.len() {
                for &b in &token {
                    let mut name = upper.clone();
                    name[at] = b;
                    assert_eq!(
                        name_is(&name, lower),
                        name.eq_ignore_ascii_case(lower),
                        "{:?} vs {:?}",
                        String::from_utf8_lossy(&name),
                        String::from_utf8_lossy(lower)
                    );
                }
            }
            assert!(!name_is(&lower[1..], lower));
            assert!(!name_is(&[lower, b"x"].concat(), lower));
        }
    }

    #[test]
    fn connection_never_removes_the_host() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, HOST, x-secret"),
        );
        h.insert(header::HOST, HeaderValue::from_static("example.test"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h[header::HOST], "example.test");
    }

    #[test]
    fn hop_by_hop_names_match_in_any_case() {
        for name in [
            "connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "keep-alive",
            "http2-settings",
            "proxy-authorization",
            "x-kept",
            "tea",
            "proxy",
        ] {
            let parsed = HeaderName::from_static(name);
            assert_eq!(
                is_hop_by_hop_bytes(name.to_ascii_uppercase().as_bytes()),
                is_hop_by_hop(&parsed),
                "{name}"
            );
        }
    }

    #[test]
    fn connection_options_name_no_headers() {
        let mut h = HeaderMap::new();
        assert!(!connection_names_headers(&h));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Keep-Alive , close"),
        );
        assert!(!connection_names_headers(&h));
        h.append(header::CONNECTION, HeaderValue::from_static("x-secret"));
        assert!(connection_names_headers(&h));
    }

    #[test]
    fn forwarded_for_is_appended_and_folded() {
        let ip = |addr: &str| peer_ip(addr.parse().unwrap());
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, &ip("[::ffff:10.0.0.9]:5000"));
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        append_forwarded_for(&mut h, &ip("192.0.2.1:1"));
        assert_eq!(h["x-forwarded-for"], "10.0.0.9, 192.0.2.1");
        h.append("x-forwarded-for", HeaderValue::from_static("198.51.100.7"));
        append_forwarded_for(&mut h, &ip("[2001:db8::1]:1"));
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(
            h["x-forwarded-for"],
            "10.0.0.9, 192.0.2.1, 198.51.100.7, 2001:db8::1"
        );
    }

    #[test]
    fn a_missing_or_blank_request_id_is_replaced_by_a_new_one() {
        let ids = |h: &HeaderMap| h.get_all(&X_REQUEST_ID).iter().cloned().collect::<Vec<_>>();
        let mut h = HeaderMap::new();
        let id = ensure_request_id(&mut h);
        assert_eq!((id.len(), ids(&h)), (36, vec![id.clone()]));
        h.insert(X_REQUEST_ID.clone(), HeaderValue::from_static("given"));
        assert_eq!(ensure_request_id(&mut h), "given");
        for blank in ["", " ", "\t \t"] {
            h.insert(X_REQUEST_ID.clone(), HeaderValue::from_static(blank));
            let id = ensure_request_id(&mut h);
            assert_eq!((id.len(), ids(&h)), (36, vec![id.clone()]), "{blank:?}");
        }
        // Several: the blank ones go, the first other is the id.
        h.insert(X_REQUEST_ID.clone(), HeaderValue::from_static(""));
        h.append(X_REQUEST_ID.clone(), HeaderValue::from_static("given"));
        h.append(X_REQUEST_ID.clone(), HeaderValue::from_static(" "));
        h.append(X_REQUEST_ID.clone(), HeaderValue::from_static("other"));
        assert_eq!(ensure_request_id(&mut h), "given");
        assert_eq!(ids(&h), ["given", "other"]);
    }

    #[test]
    fn request_id_has_uuid_shape() {
        let id = new_request_id();
        let s = id.to_str().unwrap();
        assert_eq!(s.len(), 36);
        assert_eq!(s.as_bytes()[14], b'4');
        assert!(b"89ab".contains(&s.as_bytes()[19]), "{s}");
        for (i, c) in s.bytes().enumerate() {
            if [8, 13, 18, 23].contains(&i) {
                assert_eq!(c, b'-', "{s}");
            } else {
                assert!(c.is_ascii_hexdigit() && !c.is_ascii_uppercase(), "{s}");
            }
        }
        assert_ne!(s, new_request_id().to_str().unwrap());
    }
}
