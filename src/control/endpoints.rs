//! Control path: endpoint lists from discovery (Cloud Map polling).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::{Control, State, reuse_endpoints};
use crate::discovery::{DiscoveryError, EndpointSink};

impl EndpointSink for Control {
    fn endpoints_discovered(&self, version: &str, addrs: Vec<SocketAddr>) {
        let mut state = self.lock();
        let Some(current) = state.endpoints.get(version).cloned() else {
            return;
        };
        answered(&mut state, version);
        let mut sorted = addrs;
        sorted.sort();
        sorted.dedup();
        let unchanged = current.len() == sorted.len()
            && current.iter().zip(&sorted).all(|(e, a)| e.addr() == *a);
        if unchanged {
            return;
        }
        let next = reuse_endpoints(&current, &sorted);
        for e in &current {
            if !next.iter().any(|n| Arc::ptr_eq(n, e)) {
                e.clear_pool();
            }
        }
        tracing::info!(version, endpoints = ?sorted, "discovered endpoints changed");
        state.endpoints.insert(version.to_string(), next);
        if let Err(e) = self.swap(&state) {
            tracing::error!(error = %e, "could not apply discovered endpoints");
        }
    }

    fn endpoints_confirmed(&self, version: &str) {
        let mut state = self.lock();
        answered(&mut state, version);
    }

    fn discovery_failed(&self, version: &str, error: &DiscoveryError) {
        let mut state = self.lock();
        if let Some((d, _)) = state.discovery.get_mut(version) {
            d.last_error = Some(error.to_string());
            d.not_found = matches!(error, DiscoveryError::NotFound(_));
            d.consecutive_errors += 1;
            d.attempted = true;
        }
    }
}

/// Records an answer from `version`'s discovery source (a list or a
/// revision that confirms it): no error since, asked at least once.
fn answered(state: &mut State, version: &str) {
    if let Some((d, last_ok)) = state.discovery.get_mut(version) {
        d.last_error = None;
        d.not_found = false;
        d.consecutive_errors = 0;
        d.attempted = true;
        *last_ok = Some(Instant::now());
    }
}
