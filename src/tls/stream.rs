//! The byte stream of a client or upstream connection: plain TCP, or TLS
//! over it. One enum (not a trait object) so that the plain path stays a
//! direct call behind one branch.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub enum Stream {
    Plain(TcpStream),
    /// A connection accepted on a TLS listener.
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// A TLS connection to an upstream.
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

macro_rules! each {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            Stream::Plain($s) => $e,
            Stream::Server($s) => $e,
            Stream::Client($s) => $e,
        }
    };
}

impl Stream {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Server(s) => s.get_ref().0,
            Stream::Client(s) => s.get_ref().0,
        }
    }

    pub fn is_tls(&self) -> bool {
        !matches!(self, Stream::Plain(_))
    }

    /// Whether an idle connection still looks open: nothing to read (a
    /// readable idle HTTP/1.1 connection was closed by its peer, or got
    /// garbage, or a TLS alert). Peeks, so no TLS record is consumed; costs
    /// no system call unless the socket became readable. Over TLS, bytes
    /// already read from the socket may wait in rustls, decrypted (an
    /// upstream that sent more than its response, in the record that ended
    /// it) or as a `close_notify`: then it is not idle either.
    pub fn idle_and_open(&self) -> bool {
        let tls_idle = match self {
            Stream::Plain(_) => true,
            Stream::Server(s) => s.get_ref().1.wants_read(),
            Stream::Client(s) => s.get_ref().1.wants_read(),
        };
        if !tls_idle {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut probe = [0u8; 1];
        let mut buf = ReadBuf::new(&mut probe);
        matches!(self.tcp().poll_peek(&mut cx, &mut buf), Poll::Pending)
    }
}

impl From<TcpStream> for Stream {
    fn from(s: TcpStream) -> Stream {
        Stream::Plain(s)
    }
}

impl AsyncRead for Stream {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            // A write that the socket could not take whole leaves TLS records
            // in rustls' buffer, and the data path never calls flush (a plain
            // socket needs none): every read first pushes them out, so a
            // response's tail goes before the next request is awaited.
            Stream::Server(s) => {
                let _ = Pin::new(&mut **s).poll_flush(cx);
                Pin::new(s).poll_read(cx, buf)
            }
            Stream::Client(s) => {
                let _ = Pin::new(&mut **s).poll_flush(cx);
                Pin::new(s).poll_read(cx, buf)
            }
        }
    }
}

impl AsyncWrite for Stream {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self.get_mut(), s => Pin::new(s).poll_write(cx, data))
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self.get_mut(), s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        each!(self, s => s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_shutdown(cx))
    }
}
