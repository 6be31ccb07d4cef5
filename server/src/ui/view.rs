//! What every console page shares: the [`Layout`] (navigation, who is signed
//! in, the CSRF token for the sign-out form), [`Ts`] (an instant rendered as
//! UTC `<time datetime>` that `console.js` shows in the viewer's zone), the
//! [`Viewer`] extractor (a page needs a session, or it redirects to sign-in)
//! and [`UiError`] (an HTML error page with a fitting status).

use super::csrf::CsrfError;
use super::session::{self, Session};
use crate::api::error::ApiError;
use crate::api::AppState;
use crate::ha::RoleCell;
use crate::store::StoreError;
use askama::Template;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};

/// Shared page furniture.
pub struct Layout {
    /// Which nav entry is current: `overview`, `jobs`, `nodes`, `keys`, or empty.
    pub nav: &'static str,
    pub signed_in: bool,
    pub key_id: String,
    pub admin: bool,
    pub csrf: String,
    /// This server's HA role.
    pub role: &'static str,
    /// Asset version (cache busting).
    pub v: &'static str,
}

impl Layout {
    pub fn new(ha: &RoleCell, s: &Session, nav: &'static str) -> Layout {
        Layout {
            nav,
            signed_in: true,
            key_id: s.key_id.clone(),
            admin: s.is_admin(),
            csrf: s.csrf.clone(),
            role: ha.role().as_str(),
            v: super::assets::VERSION,
        }
    }

    pub fn anonymous(ha: &RoleCell) -> Layout {
        Layout {
            nav: "",
            signed_in: false,
            key_id: String::new(),
            admin: false,
            csrf: String::new(),
            role: ha.role().as_str(),
            v: super::assets::VERSION,
        }
    }
}

/// An instant for display: `iso` goes in `datetime`, `text` is the UTC text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ts {
    pub iso: String,
    pub text: String,
}

impl Ts {
    pub fn new(ms: i64) -> Ts {
        let iso = sundial_proto::time::format_ms(ms);
        let text = DateTime::<Utc>::from_timestamp_millis(ms)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_else(|| iso.clone());
        Ts { iso, text }
    }

    pub fn opt(ms: Option<i64>) -> Option<Ts> {
        ms.map(Ts::new)
    }
}

/// A duration in ms as `850 ms`, `12.3 s`, `4m 05s`, `2h 03m`.
pub fn human_ms(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        // Tenths cut, not rounded: 59,964 ms is "59.9 s", not "60.0 s".
        format!("{}.{} s", ms / 1000, (ms % 1000) / 100)
    } else if ms < 3_600_000 {
        format!("{}m {:02}s", ms / 60_000, (ms % 60_000) / 1000)
    } else {
        format!("{}h {:02}m", ms / 3_600_000, (ms % 3_600_000) / 60_000)
    }
}

/// Renders a template as an HTML response.
pub fn render<T: Template>(t: &T) -> Result<Response, UiError> {
    Ok(Html(t.render()?).into_response())
}

/// A console failure, shown as an HTML page.
#[derive(Debug)]
pub struct UiError {
    pub status: StatusCode,
    pub message: String,
}

impl UiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> UiError {
        UiError {
            status,
            message: message.into(),
        }
    }

    pub fn forbidden() -> UiError {
        UiError::new(
            StatusCode::FORBIDDEN,
            "Your API key has the read scope; this action needs an admin key.",
        )
    }

    pub fn not_found(what: impl Into<String>) -> UiError {
        UiError::new(StatusCode::NOT_FOUND, what)
    }
}

impl From<ApiError> for UiError {
    fn from(e: ApiError) -> Self {
        UiError::new(e.status, e.message)
    }
}

impl From<StoreError> for UiError {
    fn from(e: StoreError) -> Self {
        ApiError::from(e).into()
    }
}

impl From<CsrfError> for UiError {
    fn from(e: CsrfError) -> Self {
        UiError::new(StatusCode::FORBIDDEN, e.to_string())
    }
}

impl From<askama::Error> for UiError {
    fn from(e: askama::Error) -> Self {
        tracing::error!(error = %e, "rendering a console page");
        UiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error while rendering the page; see the server log",
        )
    }
}

#[derive(Template)]
#[template(path = "ui/error.html")]
struct ErrorPage<'a> {
    status: u16,
    reason: &'a str,
    message: &'a str,
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let page = ErrorPage {
            status: self.status.as_u16(),
            reason: self.status.canonical_reason().unwrap_or("Error"),
            message: &self.message,
        };
        let body = page
            .render()
            .unwrap_or_else(|_| "error rendering the error page".to_string());
        (self.status, Html(body)).into_response()
    }
}

pub type UiResult = Result<Response, UiError>;

/// A signed-in viewer; pages without a session redirect to the sign-in page.
pub struct Viewer(pub Session);

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Response> {
        match session::current(&app.store, &parts.headers).await {
            Ok(Some(s)) => Ok(Viewer(s)),
            // An htmx poll (e.g. a run page left open past expiry) cannot
            // follow a 303 usefully: tell htmx to load the sign-in page.
            Ok(None) if parts.headers.contains_key("hx-request") => Err((
                StatusCode::UNAUTHORIZED,
                [("hx-redirect", "/ui/login")],
                "signed out",
            )
                .into_response()),
            Ok(None) => Err(Redirect::to("/ui/login").into_response()),
            Err(e) => Err(UiError::from(e).into_response()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(human_ms(850), "850 ms");
        assert_eq!(human_ms(12_340), "12.3 s");
        assert_eq!(
            human_ms(59_964),
            "59.9 s",
            "cut, not rounded into the next unit"
        );
        assert_eq!(human_ms(60_000), "1m 00s");
        assert_eq!(human_ms(245_000), "4m 05s");
        assert_eq!(human_ms(7_380_000), "2h 03m");
    }

    #[test]
    fn timestamps_are_utc() {
        let t = Ts::new(0);
        assert_eq!(t.iso, "1970-01-01T00:00:00.000Z");
        assert_eq!(t.text, "1970-01-01 00:00:00 UTC");
    }

    #[test]
    fn error_page_escapes_its_message() {
        let resp = UiError::new(StatusCode::BAD_REQUEST, "<script>alert(1)</script>");
        let page = ErrorPage {
            status: 400,
            reason: "Bad Request",
            message: &resp.message,
        };
        let html = page.render().unwrap();
        assert!(!html.contains("<script>alert(1)"));
        assert!(
            html.contains("&#60;script&#62;alert(1)&#60;/script&#62;")
                || html.contains("&lt;script&gt;")
        );
    }
}
