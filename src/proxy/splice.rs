//! Data path: a response body moved from the upstream's socket to the
//! client's through a pipe, in the kernel (`splice(2)`): the gateway never
//! reads the bytes, so a large body costs neither a buffer nor two copies.
//!
//! Used by the own HTTP/1.1 server for a body with a length, between two
//! plain TCP sockets (not TLS), when more than [`MIN_LEN`] of it is still
//! to come. Pipes are kept per thread between bodies (a few; an empty pipe
//! holds no pages), so a body costs no `pipe2` and `close` calls.

use std::io;

#[cfg(not(target_os = "linux"))]
use tokio::net::TcpStream;

#[cfg(not(target_os = "linux"))]
use crate::proxy::h1::response::SendError;

/// Bodies with less than this still to read are copied as usual: one read
/// and one write move them.
pub const MIN_LEN: u64 = 32 * 1024;

/// What became of a body given to [`Pipe::copy`].
#[derive(Debug, PartialEq, Eq)]
pub enum Spliced {
    /// All of it went to the client.
    Moved,
    /// The kernel refused the first splice (a sandbox that filters the
    /// call, a socket type without splice): nothing moved, the body is to
    /// be copied, and no later body tries again.
    Refused,
}

/// Whether an error from a first `splice` means the call is not available
/// (rather than a socket failing).
fn unavailable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported | io::ErrorKind::PermissionDenied
    )
}

#[cfg(target_os = "linux")]
pub use linux::Pipe;

#[cfg(target_os = "linux")]
mod linux {
    use std::cell::RefCell;
    use std::io;
    use std::os::fd::OwnedFd;
    use std::sync::atomic::{AtomicBool, Ordering};

    use rustix::pipe::{PipeFlags, SpliceFlags, pipe_with, splice};
    use tokio::io::Interest;
    use tokio::net::TcpStream;

    use super::{Spliced, unavailable};
    use crate::proxy::h1::response::SendError;
    use crate::proxy::upstream_client::ExchangeError;

    /// Pipes kept per thread for the next bodies.
    const KEEP: usize = 8;
    /// Most bytes asked of one `splice` (the default pipe holds 64 KiB).
    const STEP: usize = 64 * 1024;

    /// Set when the kernel refused a splice: bodies are copied from then on.
    static REFUSED: AtomicBool = AtomicBool::new(false);

    thread_local! {
        static KEPT: RefCell<Vec<(OwnedFd, OwnedFd)>> = const { RefCell::new(Vec::new()) };
    }

    /// A pipe for one body: its read and write ends, and how many bytes it
    /// holds. Goes back to its thread's pool when dropped empty.
    pub struct Pipe {
        ends: Option<(OwnedFd, OwnedFd)>,
        held: usize,
    }

    impl Pipe {
        /// A kept pipe or a new one; `None` when no pipe can be made (out
        /// of descriptors): the body is then copied.
        pub fn get() -> Option<Pipe> {
            if REFUSED.load(Ordering::Relaxed) {
                return None;
            }
            // `try_`: no panic while the thread's locals are torn down.
            let kept = KEPT
                .try_with(|kept| kept.try_borrow_mut().ok()?.pop())
                .ok()
                .flatten();
            let ends = match kept {
                Some(ends) => ends,
                None => pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC).ok()?,
            };
            Some(Pipe {
                ends: Some(ends),
                held: 0,
            })
        }

        /// Moves `len` bytes from `from` to `to`, calling `wrote(true)` after
        /// each step that reached the client, `wrote(false)` when its socket
        /// took nothing. Fails as the copying path does: the
        /// upstream's read or early close, or the client's write.
        pub async fn copy(
            &mut self,
            from: &TcpStream,
            to: &TcpStream,
            mut len: u64,
            mut wrote: impl FnMut(bool),
        ) -> Result<Spliced, SendError> {
            let Some((read_end, write_end)) = self.ends.as_ref() else {
                return Ok(Spliced::Refused);
            };
            let read_failed = |e| SendError::Upstream(ExchangeError::Read(e));
            let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
            let mut first = true;
            while len > 0 || self.held > 0 {
                // Filled only when empty: then EAGAIN means the socket has
                // nothing to read, never that the pipe is full.
                if self.held == 0 {
                    let want = usize::try_from(len).map_or(STEP, |l| l.min(STEP));
                    let n = loop {
                        from.readable().await.map_err(read_failed)?;
                        match from.try_io(Interest::READABLE, || {
                            splice(from, None, write_end, None, want, flags)
                                .map_err(io::Error::from)
                        }) {
                            Ok(n) => break n,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                            Err(e) if first && unavailable(&e) => {
                                if !REFUSED.swap(true, Ordering::Relaxed) {
                                    tracing::warn!(error = %e, "splice refused: response bodies are copied");
                                }
                                return Ok(Spliced::Refused);
                            }
                            Err(e) => return Err(read_failed(e)),
                        }
                    };
                    if n == 0 {
                        return Err(ExchangeError::ClosedInBody.into());
                    }
                    len -= n as u64;
                    self.held = n;
                    first = false;
                }
                // A client gone gives EPIPE (Rust's runtime ignores SIGPIPE).
                to.writable().await?;
                match to.try_io(Interest::WRITABLE, || {
                    splice(read_end, None, to, None, self.held, flags).map_err(io::Error::from)
                }) {
                    Ok(0) => return Err(SendError::Client(io::ErrorKind::WriteZero.into())),
                    Ok(n) => {
                        self.held -= n;
                        wrote(true);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => wrote(false),
                    Err(e) => return Err(SendError::Client(e)),
                }
            }
            Ok(Spliced::Moved)
        }
    }

    /// How many pipes this thread keeps.
    #[cfg(test)]
    pub fn kept_pipes() -> usize {
        KEPT.with_borrow(Vec::len)
    }

    impl Drop for Pipe {
        fn drop(&mut self) {
            // A pipe with bytes left in it (a body that failed) is closed.
            if self.held == 0
                && let Some(ends) = self.ends.take()
            {
                let _ = KEPT.try_with(|kept| {
                    if let Ok(mut kept) = kept.try_borrow_mut()
                        && kept.len() < KEEP
                    {
                        kept.push(ends);
                    }
                });
            }
        }
    }
}

/// Elsewhere than Linux there is no pipe: bodies are copied.
#[cfg(not(target_os = "linux"))]
pub struct Pipe(());

#[cfg(not(target_os = "linux"))]
impl Pipe {
    pub fn get() -> Option<Pipe> {
        None
    }

    pub async fn copy(
        &mut self,
        _from: &TcpStream,
        _to: &TcpStream,
        _len: u64,
        _wrote: impl FnMut(bool),
    ) -> Result<Spliced, SendError> {
        Ok(Spliced::Refused)
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::proxy::h1::response::SendError;
    use crate::proxy::upstream_client::ExchangeError;

    /// Two connected loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (near, far) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (near.unwrap(), far.unwrap().0)
    }

    fn kept() -> usize {
        linux::kept_pipes()
    }

    #[test]
    fn only_a_refused_call_counts_as_unavailable() {
        // EINVAL, EPERM, ENOSYS, EOPNOTSUPP: the call itself is refused.
        for errno in [22, 1, 38, 95] {
            assert!(unavailable(&io::Error::from_raw_os_error(errno)), "{errno}");
        }
        // ECONNRESET, EPIPE, ENOTCONN: a socket failing.
        for errno in [104, 32, 107] {
            assert!(
                !unavailable(&io::Error::from_raw_os_error(errno)),
                "{errno}"
            );
        }
    }

    #[tokio::test]
    async fn moves_exactly_the_length_and_keeps_the_pipe() {
        let (mut upstream, from) = pair().await;
        let (to, mut client) = pair().await;
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let sent = body.clone();
        let writer = tokio::spawn(async move {
            upstream.write_all(&sent).await.unwrap();
            upstream.write_all(b"after").await.unwrap();
            upstream
        });
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 300_000];
            client.read_exact(&mut got).await.unwrap();
            got
        });
        let before = kept();
        let mut pipe = Pipe::get().unwrap();
        let mut writes = 0;
        pipe.copy(&from, &to, 300_000, |took| writes += u32::from(took))
            .await
            .unwrap();
        drop(pipe);
        assert_eq!(kept(), before.max(1), "an emptied pipe is kept");
        assert!(reader.await.unwrap() == body);
        assert!(writes > 0);
        // What followed the length is still in the upstream's socket.
        let _upstream = writer.await.unwrap();
        let mut rest = [0u8; 5];
        let mut from = from;
        from.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"after");
    }

    #[tokio::test]
    async fn an_upstream_closing_early_and_a_client_gone_are_told_apart() {
        let (mut upstream, from) = pair().await;
        let (to, _client) = pair().await;
        upstream.write_all(&[7u8; 1000]).await.unwrap();
        drop(upstream);
        let mut pipe = Pipe::get().unwrap();
        let closed = pipe.copy(&from, &to, 5000, |_| {}).await;
        assert!(
            matches!(
                closed,
                Err(SendError::Upstream(ExchangeError::ClosedInBody))
            ),
            "{closed:?}"
        );

        let (mut upstream, from) = pair().await;
        let (to, client) = pair().await;
        drop(client);
        let writer = tokio::spawn(async move {
            let _ = upstream.write_all(&vec![1u8; 4 << 20]).await;
        });
        let mut pipe = Pipe::get().unwrap();
        let gone = pipe.copy(&from, &to, 4 << 20, |_| {}).await;
        assert!(matches!(gone, Err(SendError::Client(_))), "{gone:?}");
        drop(from);
        writer.await.unwrap();
    }
}
