//! Data path: whether a Host field value (or a target's authority used as
//! one) is valid: RFC 9112, 3.2 has a server answer 400 to any other.

/// Whether `value` is `uri-host [ ":" port ]` (RFC 3986, 3.2.2 and 3.2.3):
/// a reg-name (unreserved, sub-delims and `%XX` escapes; an IPv4 address is
/// one too) or an IP-literal in brackets, then optionally `:` and digits.
/// Empty is valid (RFC 9110, 7.2: a target without an authority). One pass
/// over the bytes through a table, no allocation.
pub(crate) fn valid_host(value: &[u8]) -> bool {
    let (host, port) = match value.first() {
        Some(b'[') => {
            let Some(end) = memchr::memchr(b']', value) else {
                return false;
            };
            let literal = &value[1..end];
            // IPv6 (hex digits, `:` and `.` for an embedded IPv4) or
            // IPvFuture (`v`, hex, `.`, then unreserved, sub-delims, `:`).
            if literal.is_empty()
                || !literal
                    .iter()
                    .all(|&b| b == b':' || REG_NAME[usize::from(b)])
            {
                return false;
            }
            match &value[end + 1..] {
                [] => return true,
                [b':', port @ ..] => (&[][..], port),
                _ => return false,
            }
        }
        _ => match memchr::memchr(b':', value) {
            Some(colon) => (&value[..colon], &value[colon + 1..]),
            None => (value, &[][..]),
        },
    };
    reg_name(host) && port.iter().all(u8::is_ascii_digit)
}

/// `*( unreserved / pct-encoded / sub-delims )`.
fn reg_name(host: &[u8]) -> bool {
    let mut at = 0;
    while at < host.len() {
        let b = host[at];
        if b == b'%' {
            match host.get(at + 1..at + 3) {
                Some([h, l]) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => at += 3,
                _ => return false,
            }
        } else if REG_NAME[usize::from(b)] {
            at += 1;
        } else {
            return false;
        }
    }
    true
}

/// unreserved (`ALPHA DIGIT - . _ ~`) and sub-delims (`! $ & ' ( ) * + , ; =`):
/// a table, one load per byte.
static REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        b += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_reg_names_or_ip_literals_with_an_optional_port() {
        for ok in [
            &b""[..],
            b"a",
            b"example.com",
            b"example.com:443",
            b"example.com:",
            b"10.0.0.1:8080",
            b"[::1]",
            b"[::1]:80",
            b"[2001:db8::7]:8443",
            b"[::ffff:10.0.0.1]",
            b"[v1.fe80::a+en1]",
            b"my_host-1.svc~x",
            b"a%20b",
            b"!$&'()*+,;=",
        ] {
            assert!(valid_host(ok), "{}", String::from_utf8_lossy(ok));
        }
        for bad in [
            &b"a b"[..],
            b"a/b@c",
            b"user@host",
            b"a/b",
            b"a?b",
            b"a#b",
            b"a:b",
            b"a:80:90",
            b"a:80x",
            b"[::1",
            b"[]",
            b"[::1]x",
            b"[::1]:8x",
            b"[::1/64]",
            b"::1",
            b"a%2",
            b"a%zz",
            b"a\tb",
            b"a\"b",
            b"a<b>",
            b"a\\b",
            b"\x80",
        ] {
            assert!(!valid_host(bad), "{}", String::from_utf8_lossy(bad));
        }
    }
}
