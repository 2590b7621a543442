//! Data path: request heads as the own HTTP/1.1 server reads them, and the
//! rule for which requests it serves itself.

use std::mem::MaybeUninit;

use http::{HeaderName, Method};

/// Most header lines the own server parses; a request with more goes to
/// hyper's server (which allows up to 100, then answers 431).
pub const MAX_HEADERS: usize = 64;

/// Header slots for [`parse`].
pub type Slots<'b> = [MaybeUninit<httparse::Header<'b>>; MAX_HEADERS];

/// An empty set of header slots.
pub fn slots<'b>() -> Slots<'b> {
    [const { MaybeUninit::uninit() }; MAX_HEADERS]
}

/// An HTTP/1.1 request without a body, with a Content-Length one or a
/// chunked one, no upgrade, no expectation but `100-continue`, in origin
/// form: what the own server serves (a chunked body: see
/// [`crate::proxy::h1`] for the few it still leaves to hyper's server).
pub struct SimpleRequest<'b> {
    pub method: Method,
    pub target: &'b [u8],
    pub fields: &'b [httparse::Header<'b>],
    /// The client asked to close the connection after the response.
    pub close: bool,
    /// A field name contains `_` (see `headers::is_underscored`).
    pub underscored: bool,
    /// The head's length in bytes.
    pub len: usize,
    /// The body's length (its one Content-Length; 0 without; for a chunked
    /// body, set when its end is found).
    pub body: u64,
    /// `Transfer-Encoding: chunked` (and no Content-Length).
    pub chunked: bool,
    /// A chunked body that is decoded as it goes up (`body`: the part of
    /// it in the buffer), set by the server.
    pub streamed: bool,
    /// `Expect: 100-continue`: the client may wait for a `100 Continue`
    /// before it sends the body. The gateway answers it itself (see
    /// [`crate::proxy::upstream_client::upload`]) and the field does not go
    /// up, as Envoy does by default.
    pub expect_continue: bool,
}

impl<'b> SimpleRequest<'b> {
    /// The first value of header `name`.
    pub fn header(&self, name: &HeaderName) -> Option<&'b [u8]> {
        let name = name.as_str().as_bytes();
        self.fields
            .iter()
            .find(|f| f.name.as_bytes().eq_ignore_ascii_case(name))
            .map(|f| f.value)
    }

    /// The values of the header fields named `name`, in their order.
    pub fn headers<'n>(
        &self,
        name: &'n HeaderName,
    ) -> impl Iterator<Item = &'b [u8]> + use<'b, 'n> {
        let name = name.as_str().as_bytes();
        self.fields
            .iter()
            .filter(move |f| f.name.as_bytes().eq_ignore_ascii_case(name))
            .map(|f| f.value)
    }

    /// The header fields as name and value bytes.
    pub fn field_bytes(&self) -> impl Iterator<Item = (&'b [u8], &'b [u8])> + use<'b> {
        self.fields.iter().map(|f| (f.name.as_bytes(), f.value))
    }
}

/// What the bytes at the start of a connection's buffer hold.
pub enum Parsed<'b> {
    Simple(SimpleRequest<'b>),
    /// Not a whole head yet.
    Partial,
    /// A request the own server leaves to hyper's: a transfer coding other
    /// than `chunked` alone, or with a Content-Length, an upgrade, an
    /// expectation other than `100-continue`, HTTP/1.0, a target or a header
    /// the own server does not vouch for, or not a valid head at all (hyper
    /// answers 400/431).
    Other,
    /// A head that breaks RFC 9112 in a way hyper's server lets pass (a
    /// missing or repeated Host, an invalid Host value): the client gets a
    /// 400.
    Invalid(&'static str),
}

/// Parses the request head at the start of `buf`.
pub fn parse<'b>(buf: &'b [u8], slots: &'b mut Slots<'b>) -> Parsed<'b> {
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    let (Some(method_str), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::Other;
    };
    let Ok(method) = Method::from_bytes(method_str.as_bytes()) else {
        return Parsed::Other;
    };
    if method == Method::CONNECT || !origin_form(target.as_bytes()) {
        return Parsed::Other;
    }
    let (mut close, mut underscored) = (false, false);
    let (mut hosts, mut lengths, mut body) = (0, 0, 0);
    let mut host_ok = true;
    let (mut expectations, mut codings, mut chunked) = (0, 0, false);
    for field in req.headers.iter() {
        let name = field.name.as_bytes();
        let value = field.value;
        underscored |= crate::proxy::headers::is_underscored(name);
        let simple = if crate::proxy::headers::name_is(name, b"host") {
            hosts += 1;
            host_ok &= crate::proxy::headers::valid_host(value);
            true
        } else if crate::proxy::headers::name_is(name, b"content-length") {
            lengths += 1;
            // A list or a sign goes to hyper's server, which folds or rejects it.
            match crate::proxy::headers::content_length_number(value) {
                Some(length) => {
                    body = length;
                    true
                }
                None => false,
            }
        } else if crate::proxy::headers::name_is(name, b"connection") {
            close |= crate::proxy::headers::has_token(value, b"close");
            !crate::proxy::headers::names_headers(value)
        } else if crate::proxy::headers::name_is(name, b"transfer-encoding") {
            // Only `chunked` alone (RFC 9112, 6.1); other codings, lists and
            // repeats go to hyper's server.
            codings += 1;
            chunked = value.trim_ascii().eq_ignore_ascii_case(b"chunked");
            chunked
        } else if crate::proxy::headers::name_is(name, b"expect") {
            // RFC 9110, 10.1.1: 100-continue is the only expectation
            // defined; any other (or a list) goes to hyper's server.
            expectations += 1;
            value.trim_ascii().eq_ignore_ascii_case(b"100-continue")
        } else {
            !(crate::proxy::headers::name_is(name, b"upgrade")
                || crate::proxy::headers::name_is(name, b"te"))
        };
        if !simple {
            return Parsed::Other;
        }
    }
    // Both framings at once (RFC 9112, 6.3: a smuggling attempt, or a
    // proxy's mistake) go to hyper's server too.
    if lengths > 1 || expectations > 1 || codings > 1 || (chunked && lengths > 0) {
        return Parsed::Other;
    }
    // RFC 9112, 3.2: exactly one Host in an HTTP/1.1 request.
    match hosts {
        0 => return Parsed::Invalid("no Host field"),
        1 if !host_ok => return Parsed::Invalid(crate::proxy::headers::INVALID_HOST),
        1 => {}
        _ => return Parsed::Invalid("more than one Host field"),
    }
    Parsed::Simple(SimpleRequest {
        method,
        target: target.as_bytes(),
        fields: req.headers,
        close,
        underscored,
        len,
        body,
        chunked,
        streamed: false,
        expect_continue: expectations == 1,
    })
}

/// An origin-form target (`/path?query`) of bytes that `http::Uri` takes
/// as they are: anything else goes to hyper's server, which rewrites or
/// rejects it.
fn origin_form(target: &[u8]) -> bool {
    target.first() == Some(&b'/') && target.iter().all(|&b| TARGET_BYTE[usize::from(b)])
}

/// The bytes [`origin_form`] takes: visible ASCII but those `http::Uri`
/// refuses or rewrites. A table: one load per byte of the target.
static TARGET_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0x21;
    while b <= 0x7e {
        table[b] = !matches!(
            b as u8,
            b'#' | b'<' | b'>' | b'`' | b'"' | b'{' | b'}' | b'\\' | b'^' | b'|'
        );
        b += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(raw: &[u8]) -> &'static str {
        let mut slots = slots();
        match parse(raw, &mut slots) {
            Parsed::Simple(_) => "simple",
            Parsed::Partial => "partial",
            Parsed::Other => "other",
            Parsed::Invalid(_) => "invalid",
        }
    }

    #[test]
    fn only_plain_bodiless_requests_are_simple() {
        let simple = [
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"GET /a/b?c=d&e=%20 HTTP/1.1\r\nhost: a\r\nconnection: keep-alive\r\n\r\n",
            b"DELETE /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX_Under: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
            b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length:  16384 \r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nexpect:  100-Continue \r\nContent-Length: 3\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding:  Chunked \r\n\r\n",
        ];
        for raw in simple {
            assert_eq!(kind(raw), "simple", "{}", String::from_utf8_lossy(raw));
        }
        let other = [
            &b"GET / HTTP/1.0\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue, x\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\nExpect: 100-continue\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 200-ok\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nConnection: x-secret\r\n\r\n",
            // Left to hyper's server, whose rewrite keeps the Host
            // (`headers::strip_hop_by_hop`).
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: host\r\n\r\n",
            b"GET / HTTP/1.1\r\nTE: trailers\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\n\r\n",
            b"GET /{\"a\"} HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
            b"GARBAGE\r\n\r\n",
        ];
        for raw in other {
            assert_eq!(kind(raw), "other", "{}", String::from_utf8_lossy(raw));
        }
        assert_eq!(kind(b"GET / HTTP/1.1\r\nHost: a\r\n"), "partial");
        for invalid in [
            &b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nX-Host: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a/b@c\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a:80x\r\n\r\n",
        ] {
            assert_eq!(
                kind(invalid),
                "invalid",
                "{}",
                String::from_utf8_lossy(invalid)
            );
        }
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("x-{i}: 1\r\n"))
            .collect();
        assert_eq!(
            kind(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()),
            "other"
        );
    }

    #[test]
    fn the_target_table_takes_visible_ascii_but_what_uri_refuses() {
        for b in 0..=u8::MAX {
            let expected = (0x21..=0x7e).contains(&b) && !br#"#<>`"{}\^|"#.contains(&b);
            assert_eq!(TARGET_BYTE[usize::from(b)], expected, "byte {b:#04x}");
            assert_eq!(origin_form(&[b'/', b]), expected, "byte {b:#04x}");
        }
        assert!(!origin_form(b""));
        assert!(!origin_form(b"a/"));
    }

    #[test]
    fn fields_are_found_in_any_case_and_close_is_noted() {
        let raw = b"GET /p HTTP/1.1\r\nHost: h\r\nX-Canary: v2\r\nConnection: Keep-Alive, Close\r\n\r\nnext";
        let mut slots = slots();
        let Parsed::Simple(req) = parse(raw, &mut slots) else {
            panic!("not simple");
        };
        assert_eq!(
            req.header(&HeaderName::from_static("x-canary")),
            Some(&b"v2"[..])
        );
        assert!(req.close);
        assert!(!req.expect_continue);
        assert_eq!(req.len, raw.len() - 4);
        assert_eq!(req.target, b"/p");
        let raw =
            b"PUT /p HTTP/1.1\r\nHost: h\r\nEXPECT: 100-CONTINUE\r\nContent-Length: 9\r\n\r\n";
        let mut slots2 = super::slots();
        let Parsed::Simple(req) = parse(raw, &mut slots2) else {
            panic!("not simple");
        };
        assert!(req.expect_continue);
        assert_eq!(req.body, 9);
    }
}
