//! The boxed future that the project's object-safe async traits return
//! (`Discover`, `Store`, `RouteSync`, `Reload`).

use std::future::Future;
use std::pin::Pin;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
