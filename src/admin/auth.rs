//! Control path: the admin API's bearer token.

use std::path::Path;

use subtle::ConstantTimeEq;

/// The environment variable read when the config names neither `token_env`
/// nor `token_file`.
pub const DEFAULT_TOKEN_ENV: &str = "CANARY_ADMIN_TOKEN";

/// Why the token could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("admin.token_file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("admin.token_file {0} is empty")]
    Empty(String),
}

/// The admin token: from `token_file` if given (ECS secrets), else from the
/// environment variable `token_env` (default CANARY_ADMIN_TOKEN). An empty
/// variable counts as no token.
pub fn resolve(
    token_env: Option<&str>,
    token_file: Option<&Path>,
) -> Result<Option<String>, TokenError> {
    if let Some(path) = token_file {
        let text = std::fs::read_to_string(path).map_err(|e| TokenError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(TokenError::Empty(path.display().to_string()));
        }
        return Ok(Some(token.to_string()));
    }
    let var = token_env.unwrap_or(DEFAULT_TOKEN_ENV);
    Ok(std::env::var(var)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty()))
}

/// Whether an Authorization header carries `token`, compared in constant time.
pub fn authorized(header: Option<&http::HeaderValue>, token: &str) -> bool {
    let Some(value) = header else {
        return false;
    };
    let bytes = value.as_bytes();
    let Some(given) = bytes
        .strip_prefix(b"Bearer ")
        .or_else(|| bytes.strip_prefix(b"bearer "))
    else {
        return false;
    };
    given.ct_eq(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn checks_bearer_token() {
        let ok = HeaderValue::from_static("Bearer s3cret");
        assert!(authorized(Some(&ok), "s3cret"));
        assert!(!authorized(
            Some(&HeaderValue::from_static("Bearer s3cre")),
            "s3cret"
        ));
        assert!(!authorized(
            Some(&HeaderValue::from_static("Basic s3cret")),
            "s3cret"
        ));
        assert!(!authorized(None, "s3cret"));
    }

    #[test]
    fn reads_token_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "abc\n").unwrap();
        assert_eq!(resolve(None, Some(&path)).unwrap().as_deref(), Some("abc"));
        std::fs::write(&path, "\n").unwrap();
        assert!(resolve(None, Some(&path)).is_err());
        assert!(resolve(None, Some(&dir.path().join("missing"))).is_err());
    }
}
