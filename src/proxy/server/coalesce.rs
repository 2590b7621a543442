//! Data path: an HTTP/2 connection's writes, gathered into one until the
//! other tasks ready to run have run, so that one TLS record and one
//! system call carry the frames of every stream answered meanwhile.
//!
//! Each HTTP/2 stream's response is made by a task of its own (its
//! upstream exchange), and hyper's connection task writes what is queued as
//! soon as it is woken, a frame or two per write; under TLS each write
//! became a record of its own and a system call (ten streams answered in
//! the same turn of the runtime: ten `writev`s of one 1 KiB record each).
//! Here writes are gathered in a buffer, and the first flush of a batch
//! yields first ([`tokio::task::yield_now`]: the connection's task runs
//! again after the tasks already woken), so the streams whose upstream
//! answered in that turn queue their frames too; the next flush hands the
//! whole batch to TLS in one write, as nginx and HAProxy write at the end
//! of an event-loop turn. The buffer is let go after each flush: an idle
//! connection holds none.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::AsyncWrite;

/// Largest batch: a full TLS record's plaintext. A write that does not fit
/// sends the batch first.
const BATCH: usize = 16 * 1024;
/// A batch's first allocation (it grows up to [`BATCH`] if need be).
const FIRST_ROOM: usize = 4 * 1024;

/// `inner`, with writes gathered until a flush that waited one turn.
pub struct Coalesced<T> {
    inner: T,
    /// The batch; `sent` bytes of it are already written.
    buf: Vec<u8>,
    sent: usize,
    /// The turn being waited for.
    turn: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// This batch has waited its turn: the next flush sends it.
    waited: bool,
}

impl<T> Coalesced<T> {
    pub fn new(inner: T) -> Coalesced<T> {
        Coalesced {
            inner,
            buf: Vec::new(),
            sent: 0,
            turn: None,
            waited: false,
        }
    }

    /// Room for `len` more bytes. A batch starts with room for a few
    /// responses, not with what its first frame needs: growing from a frame
    /// header's 9 bytes took four or five reallocations per batch.
    fn reserve(&mut self, len: usize) {
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(len.max(FIRST_ROOM));
        }
    }

    /// Ready once this batch has waited its turn.
    fn poll_turn(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.waited {
            let turn = self
                .turn
                .get_or_insert_with(|| Box::pin(tokio::task::yield_now()));
            ready!(turn.as_mut().poll(cx));
            self.turn = None;
            self.waited = true;
        }
        Poll::Ready(())
    }
}

impl<T: AsyncWrite + Unpin> Coalesced<T> {
    /// Writes the batch out; ready when all of it has gone.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            match ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.sent..])) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.sent += n,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        self.buf.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Makes room for `len` more bytes: sends the batch if they would not
    /// fit. `false`: they are too many for any batch (write them directly).
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<bool>> {
        if self.buf.len() + len > BATCH {
            ready!(self.poll_send(cx))?;
        }
        Poll::Ready(Ok(len <= BATCH))
    }
}

reads_through!(Coalesced);

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesced<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if !ready!(self.poll_room(cx, data.len()))? {
            return Pin::new(&mut self.inner).poll_write(cx, data);
        }
        self.reserve(data.len());
        self.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if !ready!(self.poll_room(cx, len))? {
            return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        }
        self.reserve(len);
        for b in bufs {
            self.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.buf.is_empty() {
            ready!(self.poll_turn(cx));
            ready!(self.poll_send(cx))?;
        }
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        self.waited = false;
        self.buf = Vec::new();
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

    /// Each write: its bytes, and whether `ran` was set by then.
    type Seen = Vec<(Vec<u8>, bool)>;

    /// Records each write it is given.
    #[derive(Clone, Default)]
    struct Writes {
        seen: Arc<Mutex<Seen>>,
        ran: Arc<AtomicBool>,
    }

    impl Writes {
        fn seen(&self) -> Seen {
            self.seen.lock().unwrap().clone()
        }
    }

    impl AsyncWrite for Writes {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let ran = self.ran.load(Ordering::SeqCst);
            self.seen.lock().unwrap().push((data.to_vec(), ran));
            Poll::Ready(Ok(data.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncRead for Writes {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Writes before a flush reach the socket as one, after the tasks that
    /// were ready when the flush began have run (there, other streams'
    /// responses join the batch); a write larger than a batch goes straight
    /// through, after what was gathered before it; a flushed connection
    /// holds no buffer.
    #[tokio::test(flavor = "current_thread")]
    async fn a_flush_waits_a_turn_and_sends_the_batch_in_one_write() {
        let socket = Writes::default();
        let mut conn = Coalesced::new(socket.clone());
        conn.write_all(b"stream 1;").await.unwrap();
        conn.write_all(b"stream 3;").await.unwrap();
        assert!(socket.seen().is_empty());
        let ran = socket.ran.clone();
        let other = tokio::spawn(async move { ran.store(true, Ordering::SeqCst) });
        conn.flush().await.unwrap();
        assert_eq!(socket.seen(), [(b"stream 1;stream 3;".to_vec(), true)]);
        other.await.unwrap();
        assert_eq!(conn.buf.capacity(), 0);
        let big = vec![b'x'; BATCH + 1];
        conn.write_all(b"small;").await.unwrap();
        conn.write_all(&big).await.unwrap();
        let seen = socket.seen();
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[1].0, b"small;");
        assert_eq!(seen[2].0.len(), BATCH + 1);
    }
}
