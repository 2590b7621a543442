//! Data path: noticing that the client of a request the own server
//! forwards went away while the upstream is still thinking (the request
//! was sent whole, or its body went up whole, and the response head has not
//! come).
//!
//! As nginx with `proxy_ignore_client_abort off`: the client's socket
//! becoming readable is looked at with a one-byte peek; the end of the
//! stream (a FIN: the client closed, or only shut its sending side) or an
//! error (a reset) ends the request there. It is then never answered: the
//! upstream exchange is dropped (its connection closed, never pooled
//! mid-request) and the request counted as abandoned
//! ([`crate::proxy::body::Completion`]'s drop: no status class,
//! `canary_client_errors_total{kind="aborted"}`, status 499 in the access
//! log), as a reset HTTP/2 stream or a closed connection on hyper's
//! HTTP/1 server is.
//!
//! Bytes that arrive instead (a pipelined request) are not a close: they
//! stay in the socket for the next request's read, and the watch stops for
//! this request (the socket stays readable: watching on would spin).
//!
//! The watch costs no system call while the client stays quiet: the socket
//! is looked at only once tokio's readiness says it is readable (the peek
//! that finds nothing clears that readiness). Over TLS the TCP socket
//! underneath is watched: a FIN or a reset is seen as on plain TCP, but a
//! TLS record that comes first (a `close_notify` alert in a segment of its
//! own, before the FIN) reads as bytes, and the watch stops.

use std::future::poll_fn;
use std::mem::MaybeUninit;
use std::os::fd::BorrowedFd;

use tokio::io::{Interest, ReadBuf};
use tokio::net::TcpStream;

/// Resolves once the client closed or reset its connection, `socket`
/// (never when `socket` is `None`: a client connection the own server
/// cannot watch, or when bytes came first; see the module's doc).
pub async fn client_gone(socket: Option<&TcpStream>) {
    if let Some(socket) = socket {
        let mut byte = [MaybeUninit::<u8>::uninit(); 1];
        let mut byte = ReadBuf::uninit(&mut byte);
        match poll_fn(|cx| socket.poll_peek(cx, &mut byte)).await {
            Ok(0) | Err(_) => return,
            // The start of the next request, left where it is.
            Ok(_) => {}
        }
    }
    std::future::pending().await
}

/// Resolves once the client closed or reset its connection, whose TCP
/// socket is `socket`, also while bytes it sent wait unread in the socket
/// (an upload's body, which [`client_gone`]'s peek would read as a next
/// request); never when `socket` is `None`. For a request whose upstream
/// connection is still being made: a rare path, which this costs a few
/// system calls (a duplicate of the socket's descriptor, registered with
/// the runtime on its own, so that its readiness can be consumed here
/// without taking the readiness the connection's reader waits for).
///
/// The end of the client's stream is the kernel's `EPOLLRDHUP` (a FIN: the
/// client closed, or shut its sending side only, as [`client_gone`] reads
/// it) or `EPOLLHUP`/`EPOLLERR` (a reset), which tokio reports as
/// read-closed; bytes alone are waited past. A descriptor that cannot be
/// duplicated or registered (out of descriptors) is not watched.
pub async fn client_closed(socket: Option<BorrowedFd<'_>>) {
    if let Some(watch) = socket.and_then(|fd| own_registration(fd).ok()) {
        while let Ok(ready) = watch.ready(Interest::READABLE).await {
            if ready.is_read_closed() || ready.is_error() {
                return;
            }
            // Bytes only: this registration's readiness is consumed (the
            // connection's reader keeps its own), to wait for the next
            // change of the socket's state.
            let _ = watch.try_io(Interest::READABLE, || {
                Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
            });
        }
    }
    std::future::pending().await
}

/// A duplicate of `fd`, a TCP socket (non-blocking already: the flag is
/// the socket's, shared by its descriptors), registered with the runtime.
fn own_registration(fd: BorrowedFd<'_>) -> std::io::Result<TcpStream> {
    let duplicate = std::net::TcpStream::from(fd.try_clone_to_owned()?);
    TcpStream::from_std(duplicate)
}
