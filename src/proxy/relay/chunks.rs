//! Data path: where a chunked body's framing is, so that the relay can pass
//! the body on as it came. Only framing in its plain form is passed on
//! verbatim: a chunk-size line of hex digits and CRLF, the data, CRLF, and a
//! last chunk with no trailer fields. Anything else (chunk extensions,
//! whitespace, a bare LF, trailer fields) stops the scan at the start of its
//! line, where the framed path (which re-frames every chunk) takes over; so
//! the client never gets a framing byte that a stricter or looser parser
//! could read another way.

/// The most hex digits of a chunk size passed on (a 64-bit size; the framed
/// path refuses more too).
const MAX_DIGITS: usize = 16;

/// The longest line kept for the next read: a size line of 16 digits
/// and its CRLF, or a last chunk's line and the first byte of the final
/// CRLF.
pub const MAX_CARRY: usize = MAX_DIGITS + 3;

/// Where the scan is in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChunkScan {
    /// At the start of a chunk-size line.
    #[default]
    Line,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// After a chunk's data: its CR, then its LF.
    Cr,
    Lf,
}

/// Why a scan stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Every byte up to the one given is framing in plain form; the rest
    /// (at most [`MAX_CARRY`] bytes, the start of a line) is needed again
    /// with the next bytes read.
    More,
    /// The body ended with the byte before the one given.
    End,
    /// A line the scan does not pass on starts at the byte given (the body
    /// continues on the framed path from there).
    Other,
    /// A chunk's data is not followed by CRLF: the body is broken.
    Broken,
}

impl ChunkScan {
    /// Scans `bytes` from where the last scan stopped; gives how many of
    /// them may be passed on and why it stopped.
    pub fn scan(&mut self, bytes: &[u8]) -> (usize, Stop) {
        let mut at = 0;
        loop {
            match *self {
                ChunkScan::Data(left) => {
                    let rest = (bytes.len() - at) as u64;
                    if rest < left {
                        *self = ChunkScan::Data(left - rest);
                        return (bytes.len(), Stop::More);
                    }
                    at += left as usize;
                    *self = ChunkScan::Cr;
                }
                ChunkScan::Cr | ChunkScan::Lf => {
                    let want = if *self == ChunkScan::Cr { b'\r' } else { b'\n' };
                    match bytes.get(at) {
                        None => return (at, Stop::More),
                        Some(b) if *b != want => return (at, Stop::Broken),
                        Some(_) => {}
                    }
                    at += 1;
                    *self = if *self == ChunkScan::Cr {
                        ChunkScan::Lf
                    } else {
                        ChunkScan::Line
                    };
                }
                ChunkScan::Line => match size_line(&bytes[at..]) {
                    Line::Size(used, 0) => {
                        // The last chunk: passed on only with no trailer
                        // fields after it.
                        return match bytes.get(at + used..at + used + 2) {
                            None if bytes.len() - at - used < 2
                                && bytes.get(at + used).is_none_or(|b| *b == b'\r') =>
                            {
                                (at, Stop::More)
                            }
                            Some(b"\r\n") => (at + used + 2, Stop::End),
                            _ => (at, Stop::Other),
                        };
                    }
                    Line::Size(used, size) => {
                        at += used;
                        *self = ChunkScan::Data(size);
                    }
                    Line::Partial => return (at, Stop::More),
                    Line::Other => return (at, Stop::Other),
                },
            }
        }
    }
}

enum Line {
    /// A whole line of this many bytes, and the size it gives.
    Size(usize, u64),
    /// The bytes end before the line does.
    Partial,
    /// Not a size line in plain form.
    Other,
}

/// A chunk-size line in plain form at the start of `bytes`.
fn size_line(bytes: &[u8]) -> Line {
    let mut size: u64 = 0;
    for (i, b) in bytes.iter().enumerate() {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            b'\r' if i > 0 => {
                return match bytes.get(i + 1) {
                    None => Line::Partial,
                    Some(b'\n') => Line::Size(i + 2, size),
                    Some(_) => Line::Other,
                };
            }
            _ => return Line::Other,
        };
        if i == MAX_DIGITS {
            return Line::Other;
        }
        size = size << 4 | u64::from(digit);
    }
    Line::Partial
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scans `body` cut into pieces at `cuts`, carrying the unscanned rest
    /// as the relay does; gives the bytes passed on and how it stopped.
    fn scan_in_pieces(body: &[u8], cuts: &[usize]) -> (Vec<u8>, Stop, usize) {
        let mut scan = ChunkScan::default();
        let mut passed = Vec::new();
        let mut pending = Vec::new();
        let mut from = 0;
        for &cut in cuts.iter().chain([&body.len()]) {
            pending.extend_from_slice(&body[from..cut]);
            from = cut;
            let (used, stop) = scan.scan(&pending);
            passed.extend_from_slice(&pending[..used]);
            pending.drain(..used);
            if stop != Stop::More {
                return (passed, stop, pending.len());
            }
            assert!(pending.len() <= MAX_CARRY, "carry {}", pending.len());
        }
        (passed, Stop::More, pending.len())
    }

    const PLAIN: &[u8] = b"5\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n";

    #[test]
    fn plain_framing_passes_whole_wherever_the_reads_end() {
        for cut in 0..=PLAIN.len() {
            for cut2 in cut..=PLAIN.len() {
                let (passed, stop, rest) = scan_in_pieces(PLAIN, &[cut, cut2]);
                assert_eq!((passed.as_slice(), stop, rest), (PLAIN, Stop::End, 0));
            }
        }
        // What follows the body is not part of it.
        let mut more = PLAIN.to_vec();
        more.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        let (used, stop) = ChunkScan::default().scan(&more);
        assert_eq!((used, stop), (PLAIN.len(), Stop::End));
    }

    #[test]
    fn other_lines_stop_at_their_start() {
        for (body, at) in [
            (&b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\n\r\n"[..], 10),
            (b"5 \r\nhello\r\n0\r\n\r\n", 0),
            (b"5\nhello\r\n0\r\n\r\n", 0),
            (b"5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n", 10),
            (b"5\r\nhello\r\n\r\n", 10),
            (b"-5\r\nhello\r\n", 0),
            (b"5\rXhello", 0),
            // 17 digits: more than a 64-bit size.
            (b"00000000000000005\r\nhello", 0),
        ] {
            for cut in 0..=body.len() {
                let (passed, stop, _) = scan_in_pieces(body, &[cut]);
                assert_eq!(
                    (passed.len(), stop),
                    (at, Stop::Other),
                    "{:?} cut at {cut}",
                    String::from_utf8_lossy(body)
                );
            }
        }
        // 16 digits pass.
        let (used, stop) = ChunkScan::default().scan(b"0000000000000005\r\nhel");
        assert_eq!((used, stop), (21, Stop::More));
    }

    #[test]
    fn data_without_its_crlf_is_broken() {
        // Everything before the wrong byte may go.
        for (body, good) in [
            (&b"5\r\nhelloX\r\n0\r\n\r\n"[..], 8),
            (b"5\r\nhello\rX0\r\n\r\n", 9),
        ] {
            let (passed, stop, _) = scan_in_pieces(body, &[4]);
            assert_eq!((passed.as_slice(), stop), (&body[..good], Stop::Broken));
        }
    }

    #[test]
    fn a_large_chunk_is_passed_as_it_arrives() {
        let mut scan = ChunkScan::default();
        assert_eq!(scan.scan(b"100000\r\nabc"), (11, Stop::More));
        assert_eq!(scan, ChunkScan::Data(0x10_0000 - 3));
        assert_eq!(scan.scan(&[b'x'; 4096]), (4096, Stop::More));
        assert_eq!(scan, ChunkScan::Data(0x10_0000 - 3 - 4096));
    }
}
