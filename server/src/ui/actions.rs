//! Console writes: sign-in and sign-out, and the job and node actions. Each
//! action checks the session's CSRF token and scope (a read-scope session gets
//! `403`), then calls the same API handler the JSON API uses, so the console
//! and the API cannot drift apart. Every mutating action has a confirmation
//! page (works without JavaScript, keyboard-first).

use super::csrf::{self, LOGIN_COOKIE};
use super::input::UiForm;
use super::session::{self, Session, COOKIE_NAME, SESSION_TTL_MS};
use super::view::{render, Layout, UiError, UiResult, Viewer};
use crate::api;
use crate::api::extract::Admin;
use crate::api::origin::Origin;
use crate::api::state::{Console, Gate, Queue};
use crate::registry::Registry;
use crate::scheduler::Scheduler;
use crate::store::Store;
use askama::Template;
use axum::extract::{Path, State};
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect};
use serde::Deserialize;
use std::sync::Arc;

/// The hidden field every console form carries.
#[derive(Debug, Default, Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

/// Checks a POST: not cross-site, the session's CSRF token, and (when
/// `admin`) the admin scope.
pub fn check_post(
    s: &Session,
    headers: &HeaderMap,
    csrf_field: &str,
    admin: bool,
) -> Result<(), UiError> {
    csrf::same_site(headers)?;
    csrf::verify(&s.csrf, Some(csrf_field))?;
    if admin && !s.is_admin() {
        return Err(UiError::forbidden());
    }
    Ok(())
}

fn secure(console: &Console) -> bool {
    console.settings.tls.is_some()
}

#[derive(Template)]
#[template(path = "ui/login.html")]
pub struct LoginPage {
    pub layout: Layout,
    pub csrf: String,
    pub error: String,
}

/// Renders the sign-in form with a fresh double-submit token.
fn login_page(console: &Console, status: StatusCode, error: &str) -> UiResult {
    let token = session::random_token();
    let mut resp = render(&LoginPage {
        layout: Layout::anonymous(&console.ha),
        csrf: token.clone(),
        error: error.to_string(),
    })?;
    *resp.status_mut() = status;
    let cookie = session::set_cookie(LOGIN_COOKIE, &token, 3600, secure(console));
    resp.headers_mut().insert(
        SET_COOKIE,
        cookie
            .parse()
            .map_err(|_| UiError::new(StatusCode::INTERNAL_SERVER_ERROR, "bad cookie"))?,
    );
    Ok(resp)
}

pub async fn login_form(State(console): State<Console>, headers: HeaderMap) -> UiResult {
    if session::current(&console.store, &headers).await?.is_some() {
        return Ok(Redirect::to("/ui/").into_response());
    }
    login_page(&console, StatusCode::OK, "")
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    key: String,
    #[serde(default)]
    csrf: String,
}

/// The sign-in page answering 429 with `Retry-After` (too many failed sign-ins).
fn limited_page(console: &Console, limited: api::error::ApiError) -> UiResult {
    let secs = limited.retry_after.unwrap_or(1);
    let mut resp = login_page(
        console,
        StatusCode::TOO_MANY_REQUESTS,
        &format!("Too many failed sign-ins from this address. Try again in {secs} s."),
    )?;
    if let Ok(v) = axum::http::HeaderValue::from_str(&secs.to_string()) {
        resp.headers_mut()
            .insert(axum::http::header::RETRY_AFTER, v);
    }
    Ok(resp)
}

pub async fn login(
    State(console): State<Console>,
    State(gate): State<Gate>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    UiForm(form): UiForm<LoginForm>,
) -> UiResult {
    csrf::same_site(&headers)?;
    let source = api::limit::source(&extensions);
    if let Err(e) = api::limit::guard(&gate, api::limit::Kind::ApiKey, source) {
        return limited_page(&console, e);
    }
    let Some(expected) = session::cookie_value(&headers, LOGIN_COOKIE) else {
        return login_page(
            &console,
            StatusCode::FORBIDDEN,
            "The sign-in form expired (or cookies are blocked). Please try again.",
        );
    };
    if csrf::verify(&expected, Some(&form.csrf)).is_err() {
        return login_page(
            &console,
            StatusCode::FORBIDDEN,
            "The sign-in form was not valid. Please try again.",
        );
    }
    let key = form.key.trim();
    if key.is_empty() {
        return login_page(&console, StatusCode::BAD_REQUEST, "Enter an API key.");
    }
    match session::sign_in(&console.store, key).await? {
        None => {
            let subject = format!("key:{}", api::limit::fingerprint(key));
            tracing::warn!(subject, "console sign-in refused: unknown API key");
            let refused = api::error::ApiError::unauthorized("unknown API key");
            let e = api::limit::failed(
                &gate,
                api::limit::Kind::ApiKey,
                source,
                Some(&subject),
                refused,
            );
            if e.status == StatusCode::TOO_MANY_REQUESTS {
                return limited_page(&console, e);
            }
            login_page(
                &console,
                StatusCode::UNAUTHORIZED,
                "That API key is not valid (unknown, expired or deleted). Check it and try again.",
            )
        }
        Some((token, s)) => {
            tracing::info!(key = %s.key_id, scope = s.scope.as_str(), "console sign-in");
            let cookie =
                session::set_cookie(COOKIE_NAME, &token, SESSION_TTL_MS / 1000, secure(&console));
            Ok(([(SET_COOKIE, cookie)], Redirect::to("/ui/")).into_response())
        }
    }
}

pub async fn logout(
    State(console): State<Console>,
    Viewer(s): Viewer,
    headers: HeaderMap,
    UiForm(form): UiForm<CsrfForm>,
) -> UiResult {
    check_post(&s, &headers, &form.csrf, false)?;
    session::sign_out(&console.store, &headers).await?;
    let cookie = session::set_cookie(COOKIE_NAME, "", 0, secure(&console));
    Ok(([(SET_COOKIE, cookie)], Redirect::to("/ui/login")).into_response())
}

/// A job action the console offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobAction {
    Trigger,
    Pause,
    Resume,
    Delete,
}

impl JobAction {
    pub fn parse(s: &str) -> Option<JobAction> {
        match s {
            "trigger" => Some(JobAction::Trigger),
            "pause" => Some(JobAction::Pause),
            "resume" => Some(JobAction::Resume),
            "delete" => Some(JobAction::Delete),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobAction::Trigger => "trigger",
            JobAction::Pause => "pause",
            JobAction::Resume => "resume",
            JobAction::Delete => "delete",
        }
    }

    fn question(self, id: &str) -> String {
        match self {
            JobAction::Trigger => format!("Run job {id} now (a manual run)?"),
            JobAction::Pause => format!("Pause job {id}? It stops firing until resumed."),
            JobAction::Resume => format!(
                "Resume job {id}? Fires missed while paused are not run; the next fire is computed from now."
            ),
            JobAction::Delete => format!(
                "Delete job {id} and all its run history? This cannot be undone."
            ),
        }
    }
}

fn parse_action(raw: &str) -> Result<JobAction, UiError> {
    JobAction::parse(raw).ok_or_else(|| UiError::not_found(format!("No job action {raw:?}.")))
}

#[derive(Template)]
#[template(path = "ui/confirm.html")]
pub struct ConfirmPage {
    pub layout: Layout,
    pub question: String,
    pub action_url: String,
    pub button: String,
    pub danger: bool,
    pub cancel_url: String,
}

pub async fn confirm_job(
    State(console): State<Console>,
    Viewer(s): Viewer,
    Path((id, action)): Path<(String, String)>,
) -> UiResult {
    let action = parse_action(&action)?;
    if !s.is_admin() {
        return Err(UiError::forbidden());
    }
    crate::validate::job_id(&id).map_err(|e| UiError::new(StatusCode::BAD_REQUEST, e.message))?;
    let key = id.clone();
    if console
        .store
        .read(move |c| crate::store::jobs::pk_of(c, &key))
        .await?
        .is_none()
    {
        return Err(UiError::not_found(format!("Job {id:?} not found.")));
    }
    let mut button = action.as_str().to_string();
    button[..1].make_ascii_uppercase();
    render(&ConfirmPage {
        layout: Layout::new(&console.ha, &s, "jobs"),
        question: action.question(&id),
        action_url: format!("/ui/jobs/{id}/{}", action.as_str()),
        button: format!("{button} {id}"),
        danger: action == JobAction::Delete,
        cancel_url: format!("/ui/jobs/{id}"),
    })
}

pub async fn job_action(
    State(queue): State<Queue>,
    State(scheduler): State<Arc<Scheduler>>,
    Viewer(s): Viewer,
    origin: Origin,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
    UiForm(form): UiForm<CsrfForm>,
) -> UiResult {
    let action = parse_action(&action)?;
    check_post(&s, &headers, &form.csrf, true)?;
    tracing::info!(key = %s.key_id, job = %id, action = action.as_str(), "console job action");
    let admin = Admin(origin.actor(s.key_id.clone(), None));
    let to = match action {
        JobAction::Trigger => {
            let (_, run) = api::jobs::trigger(State(queue), admin, Path(id)).await?;
            format!("/ui/runs/{}", run.0.id)
        }
        JobAction::Pause => {
            let _paused = api::jobs::pause(
                State(queue.store),
                State(scheduler),
                admin,
                Path(id.clone()),
            )
            .await?;
            format!("/ui/jobs/{id}")
        }
        JobAction::Resume => {
            let _resumed = api::jobs::resume(
                State(queue.store),
                State(scheduler),
                admin,
                Path(id.clone()),
            )
            .await?;
            format!("/ui/jobs/{id}")
        }
        JobAction::Delete => {
            api::jobs::delete(State(queue.store), admin, Path(id)).await?;
            "/ui/jobs".to_string()
        }
    };
    Ok(Redirect::to(&to).into_response())
}

pub async fn confirm_revoke(
    State(console): State<Console>,
    Viewer(s): Viewer,
    Path(id): Path<String>,
) -> UiResult {
    if !s.is_admin() {
        return Err(UiError::forbidden());
    }
    crate::validate::node_id(&id).map_err(|e| UiError::new(StatusCode::BAD_REQUEST, e.message))?;
    let key = id.clone();
    if console
        .store
        .read(move |c| crate::store::nodes::get(c, &key))
        .await?
        .is_none()
    {
        return Err(UiError::not_found(format!("Node {id:?} not found.")));
    }
    render(&ConfirmPage {
        layout: Layout::new(&console.ha, &s, "nodes"),
        question: format!(
            "Revoke node {id}? Its credential stops working at once; it must join again with a join token."
        ),
        action_url: format!("/ui/nodes/{id}/revoke"),
        button: format!("Revoke {id}"),
        danger: true,
        cancel_url: "/ui/nodes".to_string(),
    })
}

pub async fn revoke_node(
    State(store): State<Arc<Store>>,
    State(registry): State<Arc<Registry>>,
    Viewer(s): Viewer,
    origin: Origin,
    Path(id): Path<String>,
    headers: HeaderMap,
    UiForm(form): UiForm<CsrfForm>,
) -> UiResult {
    check_post(&s, &headers, &form.csrf, true)?;
    tracing::info!(key = %s.key_id, node = %id, "console node revoke");
    let admin = Admin(origin.actor(s.key_id.clone(), None));
    api::nodes::revoke(State(store), State(registry), admin, Path(id)).await?;
    Ok(Redirect::to("/ui/nodes").into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::keys::Scope;

    fn session(scope: Scope) -> Session {
        Session {
            key_id: "key_x".into(),
            scope,
            csrf: "tok".into(),
            expires_at: i64::MAX,
        }
    }

    #[test]
    fn posts_need_the_token_and_admin_scope() {
        let h = HeaderMap::new();
        assert!(check_post(&session(Scope::Admin), &h, "tok", true).is_ok());
        let e = check_post(&session(Scope::Admin), &h, "nope", true).unwrap_err();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        let e = check_post(&session(Scope::Read), &h, "tok", true).unwrap_err();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        assert!(e.message.contains("read scope"));
        // Sign-out needs the token but not admin.
        assert!(check_post(&session(Scope::Read), &h, "tok", false).is_ok());
    }

    #[test]
    fn actions_parse() {
        for a in ["trigger", "pause", "resume", "delete"] {
            assert_eq!(JobAction::parse(a).unwrap().as_str(), a);
        }
        assert!(JobAction::parse("explode").is_none());
    }
}
