//! The web console under `/ui/`: server-rendered pages (askama templates in
//! `server/templates/ui/`), a vendored htmx for live parts, one stylesheet,
//! every asset embedded in the binary. `/` redirects to `/ui/`.
//!
//! - [`session`]: sign-in with an API key → server-side session row + cookie
//! - [`csrf`]: the CSRF token on every form
//! - [`pages`]: overview, jobs, job, run, nodes (reads)
//! - [`actions`]: sign-in/out, job and node actions (writes, via the API handlers)
//! - [`events`]: the live event feed
//! - [`admin`]: API keys and join tokens (admin scope)
//! - [`queries`]: the console's read-only queries (overview, job search)
//! - [`fires`]: next fires with DST marks, run-history chart
//! - [`assets`]: embedded static files
//! - [`view`]: the page layout, time values and the error page
//! - [`input`]: query strings and form bodies, bad ones shown on the error page
//!
//! Security headers on every `/ui` response: a strict Content-Security-Policy
//! (`default-src 'self'`, no inline script or style), `X-Frame-Options: DENY`,
//! `Referrer-Policy: no-referrer`, `X-Content-Type-Options: nosniff`, and
//! `Cache-Control: no-store` on pages. Console POSTs are forwarded to the
//! primary by [`crate::api::forward`] like API writes.

pub(crate) mod actions;
pub(crate) mod admin;
pub(crate) mod assets;
pub(crate) mod csrf;
pub(crate) mod events;
pub(crate) mod fires;
pub(crate) mod input;
pub(crate) mod pages;
pub(crate) mod queries;
pub(crate) mod session;
pub(crate) mod view;

use crate::api::AppState;
use axum::extract::Request;
use axum::http::header::{CACHE_CONTROL, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::{Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

/// The Content-Security-Policy of every console response.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    add_security_headers(&mut resp);
    resp
}

/// The console's 405 page (the router's method fallback is shared with the
/// API, so it does not pass through this router's layer).
pub fn method_not_allowed() -> Response {
    use axum::response::IntoResponse;
    let mut resp = view::UiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "This page does not answer that method.",
    )
    .into_response();
    add_security_headers(&mut resp);
    resp
}

fn add_security_headers(resp: &mut Response) {
    let h = resp.headers_mut();
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if !h.contains_key(CACHE_CONTROL) {
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

/// The console's routes, merged into the API router by [`crate::api::router`].
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(pages::overview))
        .route("/ui/login", get(actions::login_form).post(actions::login))
        .route("/ui/logout", post(actions::logout))
        .route("/ui/jobs", get(pages::jobs))
        .route("/ui/jobs/{id}", get(pages::job))
        .route("/ui/jobs/{id}/confirm/{action}", get(actions::confirm_job))
        .route("/ui/jobs/{id}/{action}", post(actions::job_action))
        .route("/ui/runs/{id}", get(pages::run))
        .route("/ui/runs/{id}/live", get(pages::run_live))
        .route("/ui/events", get(events::page))
        .route("/ui/events/live", get(events::live))
        .route("/ui/nodes", get(pages::nodes))
        .route("/ui/nodes/{id}/confirm", get(actions::confirm_revoke))
        .route("/ui/nodes/{id}/revoke", post(actions::revoke_node))
        .route("/ui/keys", get(admin::page))
        .route("/ui/keys/new", post(admin::create_key))
        .route("/ui/keys/{id}/delete", post(admin::delete_key))
        .route("/ui/tokens/new", post(admin::create_token))
        .route("/ui/tokens/{id}/delete", post(admin::delete_token))
        .route("/ui/assets/{name}", get(assets::serve))
        // Anything else under /ui is the console's 404 page (with these
        // headers), not the API's JSON.
        .route(
            "/ui/{*rest}",
            axum::routing::any(|| async {
                view::UiError::not_found("No such page in the console.")
            }),
        )
        .layer(middleware::from_fn(security_headers))
}
