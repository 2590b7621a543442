//! TLS termination on the traffic listener. The certificate pair sits behind
//! an `ArcSwap` that rustls' resolver reads for each new handshake: a reload
//! swaps it whole and open connections keep the session they negotiated. A
//! pair that fails to load is rejected: the old one keeps serving, and the
//! error shows in `/status` (`tls.last_error`) and in metrics.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::pair::{self, PairFiles};
use super::{Stream, TlsError};
use crate::config::ListenerTlsConfig;
use crate::metrics as names;
use crate::store::unix_ms;

/// Hands every handshake the pair in force.
#[derive(Debug)]
struct Resolver(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// `tls` in `GET /status`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TlsStatus {
    pub cert: String,
    pub key: String,
    /// When the pair in force was loaded (ms since the Unix epoch).
    pub loaded_at_ms: u64,
    /// The last reload's error; `None` once a reload succeeded.
    pub last_error: Option<String>,
    pub last_error_at_ms: Option<u64>,
    /// The serving certificate's `notBefore` and `notAfter` (ms since the
    /// Unix epoch), when they could be read.
    pub not_before_ms: Option<u64>,
    pub not_after_ms: Option<u64>,
}

impl TlsStatus {
    /// Notes the serving certificate's validity (`/status`, the expiry
    /// gauge) and warns when it is outside it. It serves all the same: a
    /// client that does not check it (an ALB towards its targets) keeps
    /// working, and a restart must not fail over it.
    fn note_validity(&mut self, certified: &CertifiedKey) {
        let validity = certified.cert.first().and_then(pair::validity);
        let ms = |s: i64| u64::try_from(s).ok().map(|s| s.saturating_mul(1000));
        self.not_before_ms = validity.and_then(|(from, _)| ms(from));
        self.not_after_ms = validity.and_then(|(_, until)| ms(until));
        if let Some((_, until)) = validity {
            metrics::gauge!(names::TLS_CERT_EXPIRY).set(until as f64);
        }
        if let Some(problem) = self.validity_problem(unix_ms()) {
            tracing::warn!(cert = %self.cert, "{problem}");
        }
    }

    /// Why the serving certificate is not valid at `now_ms`, if it is not.
    pub fn validity_problem(&self, now_ms: u64) -> Option<String> {
        let date =
            |ms: u64| httpdate::fmt_http_date(std::time::UNIX_EPOCH + Duration::from_millis(ms));
        match (self.not_before_ms, self.not_after_ms) {
            (_, Some(until)) if now_ms > until => Some(format!(
                "the TLS certificate in {} expired on {}: clients that check it refuse the connection; replace the pair (it is reloaded without a restart)",
                self.cert,
                date(until)
            )),
            (Some(from), _) if now_ms < from => Some(format!(
                "the TLS certificate in {} is not valid before {}: clients that check it refuse the connection",
                self.cert,
                date(from)
            )),
            _ => None,
        }
    }
}

/// When a certificate whose `notAfter` is `until` (Unix seconds) expired,
/// as an HTTP date, if it has by `now_ms`.
fn expired_on(until: i64, now_ms: u64) -> Option<String> {
    let until_ms = u64::try_from(until).unwrap_or(0).saturating_mul(1000);
    (now_ms > until_ms)
        .then(|| httpdate::fmt_http_date(std::time::UNIX_EPOCH + Duration::from_millis(until_ms)))
}

#[derive(Debug)]
struct State {
    /// The files' fingerprint of the pair in force.
    loaded: u64,
    /// The files as last looked at (a bad or unreadable pair is not tried
    /// again until this changes).
    seen: Seen,
    status: TlsStatus,
}

/// What the two files looked like: their contents' fingerprint, or why they
/// could not be read (a missing file, a permission refused).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Files(u64),
    Unreadable(String),
}

impl Seen {
    fn of(read: &Result<PairFiles, TlsError>) -> Seen {
        match read {
            Ok(files) => Seen::Files(files.fingerprint()),
            Err(e) => Seen::Unreadable(e.to_string()),
        }
    }
}

/// The listener's TLS: the acceptor and the pair it serves.
pub struct ListenerTls {
    cert: PathBuf,
    key: PathBuf,
    resolver: Arc<Resolver>,
    acceptor: TlsAcceptor,
    state: Mutex<State>,
    /// Held for a whole reload: two at once (the watcher and a SIGHUP) could
    /// otherwise leave the older pair in force and the newer one as seen.
    reloading: Mutex<()>,
}

/// Protocols offered by ALPN, preferred first.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

impl ListenerTls {
    /// Loads the pair; an error here stops the start.
    pub fn load(config: &ListenerTlsConfig) -> Result<Arc<ListenerTls>, TlsError> {
        let (cert, key) = (config.cert.clone(), config.key.clone());
        let files = PairFiles::read(&cert, &key)?;
        let certified = pair::certified_key(&files, &cert, &key)?;
        let mut status = TlsStatus {
            cert: cert.display().to_string(),
            key: key.display().to_string(),
            loaded_at_ms: unix_ms(),
            last_error: None,
            last_error_at_ms: None,
            not_before_ms: None,
            not_after_ms: None,
        };
        status.note_validity(&certified);
        let resolver = Arc::new(Resolver(ArcSwap::new(certified)));
        let mut server = ServerConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::BadCertificate {
                path: cert.display().to_string(),
                reason: e.to_string(),
            })?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        server.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        if config.session_resumption {
            // Tickets that carry the session, encrypted with a key of this
            // process rotated every 6 hours: any number of clients resume
            // and the server keeps nothing per session (as nginx's default,
            // `ssl_session_tickets on`). Without a ticketer, rustls' TLS 1.3
            // tickets are ids into its 256-session cache, two per handshake:
            // 128 clients reconnecting in turn push each other's out.
            server.ticketer = rustls::crypto::ring::Ticketer::new()
                .map_err(|e| TlsError::Ticketer(e.to_string()))?;
        } else {
            // Every connection a full handshake: no session cache to resume
            // from (TLS 1.2 ids), no TLS 1.3 tickets sent. rustls' default
            // keeps 256 sessions and sends two tickets per handshake.
            server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
            server.send_tls13_tickets = 0;
        }
        let fingerprint = files.fingerprint();
        metrics::gauge!(names::TLS_RELOAD_FAILING).set(0.0);
        Ok(Arc::new(ListenerTls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            resolver,
            state: Mutex::new(State {
                loaded: fingerprint,
                seen: Seen::Files(fingerprint),
                status,
            }),
            cert,
            key,
            reloading: Mutex::new(()),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the pair again and swaps it in when it changed and is valid.
    /// `Ok(true)`: a new pair serves; `Ok(false)`: the files are unchanged.
    /// On error the pair in force stays.
    pub fn reload(&self, trigger: &str) -> Result<bool, TlsError> {
        let _turn = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let read = PairFiles::read(&self.cert, &self.key);
        let seen = Seen::of(&read);
        let (loaded, in_force_valid) = {
            let state = self.lock();
            let valid = state.status.validity_problem(unix_ms()).is_none();
            (state.loaded, valid)
        };
        let outcome = read.and_then(|files| {
            let fingerprint = files.fingerprint();
            if fingerprint == loaded {
                return Ok(None);
            }
            let certified = pair::certified_key(&files, &self.cert, &self.key)?;
            // An expired certificate over a valid one (old files put back,
            // a backup restored) would have every client that checks it
            // refuse the connection: refused, the valid pair serves on. At
            // start, and over a pair in force that is itself expired, it
            // serves (a restart must not fail over it). A certificate not
            // valid yet is taken: a CA clock a little ahead would
            // otherwise leave the old pair in force until it expires.
            if in_force_valid
                && let Some(expired) = certified
                    .cert
                    .first()
                    .and_then(pair::validity)
                    .and_then(|(_, until)| expired_on(until, unix_ms()))
            {
                return Err(TlsError::ExpiredOverValid {
                    path: self.cert.display().to_string(),
                    expired,
                });
            }
            Ok(Some((certified, fingerprint)))
        });
        let mut state = self.lock();
        state.seen = seen;
        match outcome {
            Ok(None) => {
                // The files are back to the pair in force: no error stands.
                if state.status.last_error.take().is_some() {
                    tracing::info!(trigger, cert = %self.cert.display(), "TLS certificate pair files are back to the pair in force");
                }
                state.status.last_error_at_ms = None;
                metrics::gauge!(names::TLS_RELOAD_FAILING).set(0.0);
                Ok(false)
            }
            Ok(Some((certified, fingerprint))) => {
                state.status.note_validity(&certified);
                self.resolver.0.store(certified);
                state.loaded = fingerprint;
                state.status.loaded_at_ms = unix_ms();
                state.status.last_error = None;
                state.status.last_error_at_ms = None;
                metrics::counter!(names::TLS_RELOADS_TOTAL, "result" => "ok").increment(1);
                metrics::gauge!(names::TLS_RELOAD_FAILING).set(0.0);
                tracing::info!(trigger, cert = %self.cert.display(), "TLS certificate pair reloaded");
                Ok(true)
            }
            Err(e) => {
                state.status.last_error = Some(e.to_string());
                state.status.last_error_at_ms = Some(unix_ms());
                metrics::counter!(names::TLS_RELOADS_TOTAL, "result" => "error").increment(1);
                metrics::gauge!(names::TLS_RELOAD_FAILING).set(1.0);
                tracing::error!(trigger, error = %e, "TLS certificate pair rejected; the previous pair keeps serving");
                Err(e)
            }
        }
    }

    pub fn status(&self) -> TlsStatus {
        self.lock().status.clone()
    }

    /// Polls the two files and reloads when what they look like changes:
    /// their contents, or whether (and why) they cannot be read. A file gone
    /// or unreadable is a failed reload (`tls.last_error`,
    /// `canary_tls_reload_failing`), logged once; its return clears it. A pair
    /// that failed is tried again once either file changes again.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            let now = Seen::of(&PairFiles::read(&self.cert, &self.key));
            if now != self.lock().seen {
                let _ = self.reload("file-change");
            }
        }
    }

    /// The TLS handshake on an accepted connection, within `timeout`. Returns
    /// the stream and whether it speaks HTTP/1 (anything but ALPN `h2`);
    /// `None` when the handshake failed (counted) or timed out.
    pub async fn accept(&self, tcp: TcpStream, timeout: Duration) -> Option<(Stream, bool)> {
        match tokio::time::timeout(timeout, self.acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => {
                let http1 = tls.get_ref().1.alpn_protocol() != Some(b"h2");
                Some((Stream::Server(Box::new(tls)), http1))
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                metrics::counter!(names::TLS_HANDSHAKE_ERRORS_TOTAL).increment(1);
                None
            }
            Err(_) => {
                metrics::counter!(names::TLS_HANDSHAKE_ERRORS_TOTAL).increment(1);
                None
            }
        }
    }

    pub fn cert_path(&self) -> &Path {
        &self.cert
    }
}

/// A config reload's status with the TLS pair's reload folded in: a rejected
/// pair makes the whole reload answer as failed (the old pair serves).
pub fn reload_into(
    tls: Option<&ListenerTls>,
    trigger: &str,
    mut status: crate::control::status::ReloadStatus,
) -> crate::control::status::ReloadStatus {
    if let Some(tls) = tls {
        match tls.reload(trigger) {
            Ok(true) => status.message.push_str("; TLS certificate pair reloaded"),
            Ok(false) => {}
            Err(e) => {
                status.ok = false;
                status.message.push_str(&format!(
                    "; TLS certificate pair rejected, the previous pair keeps serving: {e}"
                ));
            }
        }
    }
    status
}

/// `GET /status` with a `tls` member when the listener terminates TLS,
/// and a warning while the pair on disk is rejected: `last_reload` tells of
/// the config, which a rejected pair does not stop from applying, so
/// without it nothing an operator reads first would say that the files on
/// disk are not what serves.
pub fn with_status<T: Serialize>(status: T, tls: Option<&ListenerTls>) -> serde_json::Value {
    let mut value = serde_json::to_value(status).unwrap_or_default();
    if let (Some(tls), Some(map)) = (tls, value.as_object_mut()) {
        let tls = tls.status();
        if let Some(serde_json::Value::Array(warnings)) = map.get_mut("warnings") {
            if let Some(e) = &tls.last_error {
                warnings.push(
                    format!(
                        "the TLS certificate pair on disk ({}, {}) was rejected: {e}; the previous pair keeps serving until a reload takes a valid one",
                        tls.cert, tls.key
                    )
                    .into(),
                );
            }
            if let Some(problem) = tls.validity_problem(unix_ms()) {
                warnings.push(problem.into());
            }
        }
        map.insert("tls".into(), serde_json::to_value(tls).unwrap_or_default());
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed pair written to `dir`; its config.
    fn pair_in(dir: &Path) -> ListenerTlsConfig {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let config = ListenerTlsConfig {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            session_resumption: true,
        };
        std::fs::write(&config.cert, cert.pem()).unwrap();
        std::fs::write(&config.key, signing_key.serialize_pem()).unwrap();
        config
    }

    /// A key file the watcher cannot read is a failed reload, reported in
    /// `last_error` (and the gauge, set alongside); the file back clears both
    /// `last_error` and `last_error_at_ms`.
    #[tokio::test(start_paused = true)]
    async fn the_watcher_reports_a_file_it_cannot_read_and_its_return() {
        let dir = tempfile::tempdir().unwrap();
        let config = pair_in(dir.path());
        let tls = ListenerTls::load(&config).unwrap();
        let watcher = tokio::spawn(tls.clone().watch(Duration::from_secs(1)));
        let key = std::fs::read(&config.key).unwrap();

        std::fs::remove_file(&config.key).unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let status = tls.status();
        let error = status.last_error.unwrap_or_default();
        assert!(error.contains("cannot read"), "{error:?}");
        assert!(status.last_error_at_ms.is_some());

        std::fs::write(&config.key, &key).unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let status = tls.status();
        assert_eq!(status.last_error, None);
        assert_eq!(status.last_error_at_ms, None);
        watcher.abort();
    }

    /// A reload (SIGHUP, POST /reload) that found a file missing: once the
    /// same files are back, the watcher clears the error.
    #[tokio::test(start_paused = true)]
    async fn an_error_of_a_reload_clears_when_the_same_files_return() {
        let dir = tempfile::tempdir().unwrap();
        let config = pair_in(dir.path());
        let tls = ListenerTls::load(&config).unwrap();
        let key = std::fs::read(&config.key).unwrap();
        std::fs::remove_file(&config.key).unwrap();
        assert!(tls.reload("sighup").is_err());
        assert!(tls.status().last_error.is_some());

        let watcher = tokio::spawn(tls.clone().watch(Duration::from_secs(1)));
        std::fs::write(&config.key, &key).unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let status = tls.status();
        assert_eq!(status.last_error, None, "the error stays");
        assert_eq!(status.last_error_at_ms, None);
        watcher.abort();
    }
}
