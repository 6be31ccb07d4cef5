//! CSRF protection for console forms. Every form carries a hidden `csrf`
//! field: after sign-in it is the session's token (stored server-side with
//! the session); on the sign-in form it is a double-submit token that must
//! equal the `sundial_login` cookie set with the form. Comparison is
//! constant-time. Requests a browser marks `Sec-Fetch-Site: cross-site` are
//! refused outright; `SameSite=Strict` cookies are the third layer.

use axum::http::HeaderMap;
use subtle::ConstantTimeEq;

/// Cookie carrying the sign-in form's double-submit token.
pub const LOGIN_COOKIE: &str = "sundial_login";

/// Why a form was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CsrfError {
    #[error("the form has no CSRF token")]
    Missing,
    #[error("the form's CSRF token does not match this session; reload the page and try again")]
    Mismatch,
    #[error("cross-site requests are refused")]
    CrossSite,
}

/// Compares a submitted token with the expected one in constant time.
pub fn verify(expected: &str, submitted: Option<&str>) -> Result<(), CsrfError> {
    let submitted = submitted
        .filter(|s| !s.is_empty())
        .ok_or(CsrfError::Missing)?;
    if expected.is_empty() {
        return Err(CsrfError::Mismatch);
    }
    if bool::from(expected.as_bytes().ct_eq(submitted.as_bytes())) {
        Ok(())
    } else {
        Err(CsrfError::Mismatch)
    }
}

/// Refuses requests the browser says come from another site.
pub fn same_site(headers: &HeaderMap) -> Result<(), CsrfError> {
    match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        Some("cross-site") => Err(CsrfError::CrossSite),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn tokens_must_match_exactly() {
        assert_eq!(verify("abc", Some("abc")), Ok(()));
        assert_eq!(verify("abc", Some("abd")), Err(CsrfError::Mismatch));
        assert_eq!(verify("abc", Some("ab")), Err(CsrfError::Mismatch));
        assert_eq!(verify("abc", Some("")), Err(CsrfError::Missing));
        assert_eq!(verify("abc", None), Err(CsrfError::Missing));
        // An empty expected token never verifies (no session token, no pass).
        assert_eq!(verify("", Some("x")), Err(CsrfError::Mismatch));
    }

    #[test]
    fn cross_site_is_refused() {
        let mut h = HeaderMap::new();
        assert_eq!(same_site(&h), Ok(()));
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert_eq!(same_site(&h), Ok(()));
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert_eq!(same_site(&h), Err(CsrfError::CrossSite));
    }
}
