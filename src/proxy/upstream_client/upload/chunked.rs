//! Data path: a chunked request body decoded as it streams up and framed
//! again for the upstream: each chunk goes up with a plain size line (its
//! extensions dropped), the trailer section is dropped (hyper's client
//! drops undeclared trailers too; a request that declares some goes to
//! hyper's server). The framing is read strictly, as hyper's server reads
//! it: 1 to 16 hex digits, blanks only before an extension, CRLF line ends,
//! no CR or LF inside a line; chunk sizes up to 2^63 - 1 (nginx's limit:
//! an upstream reading sizes as signed 64-bit integers must not see more).
//! [`Decoder::decode`] uses nothing past the body's end: what follows is
//! the client's next request.

/// The longest chunk-size line (with extensions) or trailer section line.
const MAX_LINE: usize = 4096;
/// Most trailer bytes in all.
const MAX_TRAILERS: usize = 16 * 1024;
/// The largest chunk size taken.
const MAX_SIZE: u64 = i64::MAX as u64;

/// Where the decoder is in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At (or in, with bytes left in the input) a chunk-size line.
    Size,
    /// In a chunk's data, this many bytes left.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines and the final CRLF; the bytes
    /// of trailer lines seen so far.
    Trailers(usize),
    /// The body has ended.
    Done,
}

/// Where a decoded body goes.
pub trait Sink {
    /// Body bytes, or framing written by the decoder.
    fn put(&mut self, bytes: &[u8]);
    /// A chunk-size line for a chunk of `size` bytes.
    fn size_line(&mut self, size: u64);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }

    fn size_line(&mut self, size: u64) {
        crate::proxy::h1::response::chunk_size(self, size);
    }
}

/// A sink that keeps nothing: to find where a body ends.
pub struct Discard;

impl Sink for Discard {
    fn put(&mut self, _: &[u8]) {}

    fn size_line(&mut self, _: u64) {}
}

/// The framing of a chunked body is broken (a client error: 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid chunked framing: {0}")]
pub struct BadChunk(pub &'static str);

/// Decodes a chunked body and writes it framed again.
#[derive(Debug)]
pub struct Decoder {
    state: State,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder { state: State::Size }
    }
}

impl Decoder {
    /// Whether the body has ended.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from the start of `input`, appending the body framed again
    /// to `out`; gives how many bytes of `input` were used. The rest (a
    /// line not whole yet, at most 4 KiB) is to be given
    /// again with the bytes that follow it. After the end, nothing more is
    /// used.
    pub fn decode(&mut self, input: &[u8], out: &mut impl Sink) -> Result<usize, BadChunk> {
        let mut at = 0;
        loop {
            let rest = &input[at..];
            match self.state {
                State::Done => return Ok(at),
                State::Size => match size_line(rest)? {
                    None => return Ok(at),
                    Some((used, 0)) => {
                        at += used;
                        self.state = State::Trailers(0);
                    }
                    Some((used, size)) => {
                        at += used;
                        out.size_line(size);
                        self.state = State::Data(size);
                    }
                },
                State::Data(left) => {
                    if rest.is_empty() {
                        return Ok(at);
                    }
                    let n = usize::try_from(left).map_or(rest.len(), |l| l.min(rest.len()));
                    out.put(&rest[..n]);
                    at += n;
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                }
                State::DataEnd => match rest {
                    [b'\r', b'\n', ..] => {
                        at += 2;
                        out.put(b"\r\n");
                        self.state = State::Size;
                    }
                    [] | [b'\r'] => return Ok(at),
                    _ => return Err(BadChunk("chunk data not followed by CRLF")),
                },
                State::Trailers(seen) => {
                    let Some(end) = rest.iter().position(|&b| b == b'\n') else {
                        if seen + rest.len() > MAX_TRAILERS || rest.len() > MAX_LINE {
                            return Err(BadChunk("trailer section too long"));
                        }
                        return Ok(at);
                    };
                    let line = &rest[..=end];
                    if line == b"\r\n" {
                        at += 2;
                        out.put(b"0\r\n\r\n");
                        self.state = State::Done;
                        continue;
                    }
                    let seen = seen + line.len();
                    if seen > MAX_TRAILERS || line.len() > MAX_LINE {
                        return Err(BadChunk("trailer section too long"));
                    }
                    trailer_line(line)?;
                    at += line.len();
                    self.state = State::Trailers(seen);
                }
            }
        }
    }
}

/// A whole chunk-size line at the start of `bytes`: how many bytes it
/// takes and the size; `None`: not whole yet.
fn size_line(bytes: &[u8]) -> Result<Option<(usize, u64)>, BadChunk> {
    let Some(lf) = bytes.iter().take(MAX_LINE).position(|&b| b == b'\n') else {
        if bytes.len() >= MAX_LINE {
            return Err(BadChunk("chunk-size line too long"));
        }
        // A CR that is not the line's last byte is an error already.
        if bytes.iter().rev().skip(1).any(|&b| b == b'\r') {
            return Err(BadChunk("CR inside a chunk-size line"));
        }
        return Ok(None);
    };
    let line = match bytes[..lf].strip_suffix(b"\r") {
        Some(line) => line,
        None => return Err(BadChunk("chunk-size line not ended by CRLF")),
    };
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(BadChunk("no chunk size"));
    }
    if digits > 16 {
        return Err(BadChunk("chunk size too large"));
    }
    let mut size: u64 = 0;
    for &b in &line[..digits] {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => b - b'A' + 10,
        };
        size = size << 4 | u64::from(digit);
    }
    if size > MAX_SIZE {
        return Err(BadChunk("chunk size too large"));
    }
    // Blanks, then an extension (`;` and anything but CR and LF), or nothing.
    let rest = &line[digits..];
    let blanks = rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    match rest.get(blanks) {
        None if blanks == 0 => {}
        Some(b';') if !rest.contains(&b'\r') => {}
        _ => return Err(BadChunk("invalid chunk-size line")),
    }
    Ok(Some((lf + 1, size)))
}

/// Checks one trailer field line (`name: value` CRLF): a token for a name,
/// no control bytes but tab in the value.
fn trailer_line(line: &[u8]) -> Result<(), BadChunk> {
    let bad = BadChunk("invalid trailer field");
    let line = line.strip_suffix(b"\r\n").ok_or(bad)?;
    let colon = line.iter().position(|&b| b == b':').ok_or(bad)?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if name.is_empty()
        || !name
            .iter()
            .all(|&b| crate::proxy::headers::is_token_byte(b))
    {
        return Err(bad);
    }
    if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(bad);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `body` given in pieces cut at `cuts`, the way the upload
    /// reads it: unused bytes are given again with the next piece.
    /// Gives the body framed again and how many bytes it took (`None`:
    /// not ended).
    fn decode_in_pieces(body: &[u8], cuts: &[usize]) -> Result<(Vec<u8>, Option<usize>), BadChunk> {
        let mut decoder = Decoder::default();
        let (mut out, mut input, mut from, mut taken) = (Vec::new(), Vec::new(), 0, 0);
        for &cut in cuts.iter().chain([&body.len()]) {
            input.extend_from_slice(&body[from..cut]);
            from = cut;
            let used = decoder.decode(&input, &mut out)?;
            taken += used;
            input.drain(..used);
            if decoder.done() {
                return Ok((out, Some(taken)));
            }
        }
        Ok((out, None))
    }

    #[test]
    fn bodies_are_framed_again_plainly() {
        let cases: [(&[u8], &[u8]); 5] = [
            (b"5\r\nhello\r\n0\r\n\r\n", b"5\r\nhello\r\n0\r\n\r\n"),
            (
                b"A\r\n0123456789\r\n0\r\n\r\n",
                b"a\r\n0123456789\r\n0\r\n\r\n",
            ),
            (
                b"005;n=v\r\nhello\r\n0;x\r\n\r\n",
                b"5\r\nhello\r\n0\r\n\r\n",
            ),
            (
                b"5 ;n\r\nhello\r\n0\r\nx-sig: 1\r\nb: \t2\r\n\r\n",
                b"5\r\nhello\r\n0\r\n\r\n",
            ),
            (b"0\r\n\r\n", b"0\r\n\r\n"),
        ];
        for (body, framed) in cases {
            // Every cut in two, and byte by byte.
            for cut in 0..=body.len() {
                let got = decode_in_pieces(body, &[cut]);
                assert_eq!(
                    got,
                    Ok((framed.to_vec(), Some(body.len()))),
                    "{body:?} cut at {cut}"
                );
            }
            let cuts: Vec<usize> = (1..body.len()).collect();
            assert_eq!(
                decode_in_pieces(body, &cuts),
                Ok((framed.to_vec(), Some(body.len())))
            );
        }
    }

    #[test]
    fn nothing_past_the_end_is_used() {
        let body = b"3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
        let mut decoder = Decoder::default();
        let mut out = Vec::new();
        assert_eq!(decoder.decode(body, &mut out), Ok(13));
        assert!(decoder.done());
        assert_eq!(decoder.decode(b"more", &mut out), Ok(0));
    }

    #[test]
    fn broken_framing_is_an_error() {
        for body in [
            &b"\r\n"[..],
            b";x\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloX\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"5 5\r\nhello\r\n",
            b"+5\r\nhello\r\n",
            b"5;a\rb\r\nhello\r\n",
            b"5;a\nb\r\nhello\r\n",
            b"11111111111111111\r\n",
            b"8000000000000000\r\n",
            b"ffffffffffffffff\r\n",
            b"0\r\nno colon\r\n\r\n",
            b"0\r\nx y: 1\r\n\r\n",
            b"0\r\nx: \x01\r\n\r\n",
            b"0\r\nx: 1\n\r\n",
            b"0\r\n\n",
        ] {
            let mut cuts_all = vec![];
            for cut in 0..=body.len() {
                cuts_all.push(decode_in_pieces(body, &[cut]).map(|_| ()));
            }
            assert!(
                cuts_all.iter().all(|r| r.is_err()),
                "{:?}: {cuts_all:?}",
                String::from_utf8_lossy(body)
            );
        }
        let long = [b'a'; MAX_LINE + 1];
        let mut line = b"1;".to_vec();
        line.extend_from_slice(&long);
        assert!(Decoder::default().decode(&line, &mut Vec::new()).is_err());
    }

    #[test]
    fn the_largest_chunk_size_is_taken() {
        let mut out = Vec::new();
        let mut decoder = Decoder::default();
        assert_eq!(decoder.decode(b"7fffffffffffffff\r\nab", &mut out), Ok(20));
        assert_eq!(out, b"7fffffffffffffff\r\nab");
    }
}
