//! Control path: the dashboard on the admin listener.
//!
//! `GET /ui` serves one hand-written page (HTML, CSS, JS with inline SVG
//! charts) embedded in the binary: no CDN, no build step, works offline. The
//! page and its assets load without a token; every data and action call the
//! page makes carries the bearer token the operator typed (kept in the tab's
//! sessionStorage). Its own data: `GET /ui/series` (the per-version time
//! series, `?since=<unix s>` for the newer samples only) and `GET /ui/audit`
//! (the recent changes); everything else goes through the admin API itself.

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};

use super::{Admin, AdminResponse, error, json, method_not_allowed, text};
use crate::telemetry::{audit, series};

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const APP_CSS: &str = include_str!("ui/app.css");

/// Only the page's own files, no inline script or style, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// Answers `/ui` and `/ui/...`.
pub(super) fn handle<B>(admin: &Admin, req: &Request<B>) -> AdminResponse {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return method_not_allowed("GET");
    }
    match req.uri().path() {
        "/ui" | "/ui/" => asset(INDEX_HTML, "text/html; charset=utf-8"),
        "/ui/app.js" => asset(APP_JS, "text/javascript; charset=utf-8"),
        "/ui/app.css" => asset(APP_CSS, "text/css; charset=utf-8"),
        path @ ("/ui/series" | "/ui/audit") => {
            if let Some(refused) = admin.refuse_unauthorized(req.headers()) {
                return refused;
            }
            let mut resp = if path == "/ui/series" {
                match since(req.uri().query()) {
                    Ok(since) => json(StatusCode::OK, &series::global().view(since)),
                    Err(message) => error(StatusCode::BAD_REQUEST, message),
                }
            } else {
                json(
                    StatusCode::OK,
                    &serde_json::json!({ "entries": audit::global().entries() }),
                )
            };
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        path => error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
    }
}

/// An embedded file with the page's security headers.
fn asset(body: &'static str, content_type: &'static str) -> AdminResponse {
    let mut resp = text(
        StatusCode::OK,
        Bytes::from_static(body.as_bytes()),
        content_type,
    );
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// The `since` query parameter: unix seconds, 0 when absent.
fn since(query: Option<&str>) -> Result<u32, String> {
    let Some(query) = query else { return Ok(0) };
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "since" => {
                return value.parse().map_err(|_| {
                    format!("`since` must be unix seconds (a whole number), got `{value}`")
                });
            }
            "" => {}
            other => {
                return Err(format!(
                    "unknown query parameter `{other}`; expected `since`"
                ));
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_checked() {
        assert_eq!(since(None), Ok(0));
        assert_eq!(since(Some("since=17")), Ok(17));
        assert!(
            since(Some("since=-1"))
                .unwrap_err()
                .contains("whole number")
        );
        assert!(since(Some("until=3")).unwrap_err().contains("unknown"));
    }

    #[test]
    fn the_page_stays_small_and_self_contained() {
        let total = INDEX_HTML.len() + APP_JS.len() + APP_CSS.len();
        assert!(total < 150 * 1024, "the dashboard is {total} bytes");
        // Nothing loads from elsewhere (works offline): the only URL is the
        // SVG namespace name.
        for file in [INDEX_HTML, APP_JS, APP_CSS] {
            let urls = file.matches("://").count();
            let svg_ns = file.matches("\"http://www.w3.org/2000/svg\"").count();
            assert_eq!(urls, svg_ns);
        }
        // No inline script or style: the CSP forbids them.
        assert!(!INDEX_HTML.contains("<script>") && !INDEX_HTML.contains("style="));
        assert!(!INDEX_HTML.contains("<style"));
    }
}
