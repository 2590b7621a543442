//! Data path: header names of upstream responses, remembered per thread.
//!
//! A response bound for hyper's servers (HTTP/2 streams, hyper's HTTP/1.1
//! connections) is handed over as a header map, whose names are
//! [`HeaderName`]s. A name the `http` crate does not know (`x-request-id`,
//! a service's own headers) is a new allocation each time it is parsed,
//! and an upstream sends the same few of them in every response. Here the
//! names parsed last are kept in a small direct-mapped table per thread; a
//! name found there is a clone (a reference count, no allocation), a name
//! not found is parsed and takes its slot.

use std::cell::RefCell;

use http::header::{HeaderName, InvalidHeaderName};

/// Slots in each thread's table (a power of two).
const SLOTS: usize = 64;

thread_local! {
    static NAMES: RefCell<[Option<HeaderName>; SLOTS]> =
        const { RefCell::new([const { None }; SLOTS]) };
}

/// The slot a name's bytes map to: its length and first and last bytes,
/// case-folded, so that `Content-Type` and `content-type` share a slot.
fn slot(raw: &[u8]) -> usize {
    let (first, last) = match (raw.first(), raw.last()) {
        (Some(f), Some(l)) => (f.to_ascii_lowercase(), l.to_ascii_lowercase()),
        _ => (0, 0),
    };
    (raw.len() * 31 + usize::from(first) * 7 + usize::from(last)) % SLOTS
}

/// `raw` as a header name (lowercased), as [`HeaderName::from_bytes`]
/// parses it, without an allocation when this thread parsed it last.
pub fn header_name(raw: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
    let i = slot(raw);
    NAMES.with(|names| {
        let mut names = names.borrow_mut();
        // A kept name is a valid, lowercase token: bytes equal to it up to
        // ASCII case are the same token.
        if let Some(name) = &names[i]
            && name.as_str().as_bytes().eq_ignore_ascii_case(raw)
        {
            return Ok(name.clone());
        }
        let name = HeaderName::from_bytes(raw)?;
        names[i] = Some(name.clone());
        Ok(name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_parsed_as_http_parses_them() {
        for raw in [
            &b"Content-Type"[..],
            b"x-request-id",
            b"X-Request-Id",
            b"X-REQUEST-ID",
            b"set-cookie",
            b"x-service-version",
            b"a",
        ] {
            let expected = HeaderName::from_bytes(raw).unwrap();
            // Twice: parsed, then from the table.
            assert_eq!(header_name(raw).unwrap(), expected);
            assert_eq!(header_name(raw).unwrap(), expected);
        }
    }

    #[test]
    fn a_name_parsed_again_is_the_kept_one_not_a_new_allocation() {
        let first = header_name(b"X-Service-Shard").unwrap();
        let again = header_name(b"x-service-shard").unwrap();
        assert_eq!(first, again);
        assert_eq!(first.as_str().as_ptr(), again.as_str().as_ptr());
        // `http` itself makes a new one each time.
        let parsed = HeaderName::from_bytes(b"x-service-shard").unwrap();
        assert_ne!(parsed.as_str().as_ptr(), again.as_str().as_ptr());
    }

    #[test]
    fn invalid_names_are_refused_even_after_a_valid_one_in_their_slot() {
        for raw in [&b""[..], b"x request", b"x-request:", b"\xff\xfe", b"x\r\n"] {
            assert!(header_name(raw).is_err(), "{raw:?}");
        }
        // Same length and ends as a kept name, one byte different.
        header_name(b"x-abc-z").unwrap();
        assert!(header_name(b"x-a c-z").is_err());
        assert_eq!(header_name(b"x-abd-z").unwrap().as_str(), "x-abd-z");
    }

    #[test]
    fn colliding_names_each_get_their_own_name() {
        // Same length, first and last byte: the same slot.
        for _ in 0..3 {
            assert_eq!(header_name(b"x-one-z").unwrap().as_str(), "x-one-z");
            assert_eq!(header_name(b"x-two-z").unwrap().as_str(), "x-two-z");
        }
    }
}
