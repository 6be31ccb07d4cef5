//! The console's query strings and form bodies: axum's `Query` and `Form`,
//! whose rejections (a page number that is not one, a form missing a
//! field) become the console's error page — HTML, with the security
//! headers — instead of axum's plain text.

use super::view::UiError;
use axum::extract::{Form, FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

/// A query string read into `T`; a bad one is a `400` page saying which
/// parameter is wrong.
pub struct UiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for UiQuery<T> {
    type Rejection = UiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, UiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(q)) => Ok(UiQuery(q)),
            Err(e) => Err(UiError::new(
                StatusCode::BAD_REQUEST,
                format!("This address has a bad parameter: {}.", e.body_text()),
            )),
        }
    }
}

/// A form body read into `T`; a bad one is a `400` page.
pub struct UiForm<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for UiForm<T> {
    type Rejection = UiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, UiError> {
        match Form::<T>::from_request(req, state).await {
            Ok(Form(f)) => Ok(UiForm(f)),
            Err(e) => Err(UiError::new(
                StatusCode::BAD_REQUEST,
                format!("The form could not be read: {}.", e.body_text()),
            )),
        }
    }
}
