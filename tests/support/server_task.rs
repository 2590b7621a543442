//! Background test servers: an accept loop on a task of its own, aborted when
//! its owner is dropped.

use std::future::Future;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A server's task; dropping it aborts the task.
pub struct ServerTask(JoinHandle<()>);

impl Drop for ServerTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl ServerTask {
    /// Runs `work` on a task of its own.
    pub fn spawn(work: impl Future<Output = ()> + Send + 'static) -> ServerTask {
        ServerTask(tokio::spawn(work))
    }
}

/// Accepts connections on `listener` while the task lives and hands each to
/// `serve`, on a task of its own.
pub fn serve_connections<F, Fut>(listener: TcpListener, serve: F) -> ServerTask
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    ServerTask::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(serve(stream));
        }
    })
}
