//! axum's extractors with [`ApiError`] rejections, so a request that does
//! not fit is answered in the API's JSON error shape, not axum's plain text.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::ApiError;

/// The query string as `T` (axum's `Query`); `400 invalid_query`.
#[derive(Debug)]
pub(super) struct Query<T>(pub(super) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Query(value) = axum::extract::Query::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

/// The path parameters as `T` (axum's `Path`); `400 invalid_path`.
#[derive(Debug)]
pub(super) struct Path<T>(pub(super) T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(value) = axum::extract::Path::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

/// The whole body, up to the body limit (`413 body_too_large`), within
/// `http.body_timeout` (`408 body_timeout`).
#[derive(Debug)]
pub(super) struct Body(pub(super) Bytes);

impl FromRequest<AppState> for Body {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let timeout = state.runtime.config().http.body_timeout;
        match tokio::time::timeout(timeout, Bytes::from_request(request, state)).await {
            Ok(bytes) => {
                Ok(Self(bytes.map_err(|e| ApiError::from_body(&e, state.runtime.config().http.max_body_bytes))?))
            }
            Err(_) => Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {} (http.body_timeout)",
                    humantime::format_duration(timeout)
                ),
            )),
        }
    }
}

/// The body as JSON `T` (the guard has checked the content type);
/// `400 invalid_json`.
#[derive(Debug)]
pub(super) struct JsonBody<T>(pub(super) T);

impl<T: DeserializeOwned + Send + 'static> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let Body(bytes) = Body::from_request(request, state).await?;
        parse(bytes).await.map(Self)
    }
}

/// [`JsonBody`], where an empty body means `T::default()`.
#[derive(Debug)]
pub(super) struct OptionalJsonBody<T>(pub(super) T);

impl<T: DeserializeOwned + Default + Send + 'static> FromRequest<AppState> for OptionalJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let Body(bytes) = Body::from_request(request, state).await?;
        if bytes.is_empty() { Ok(Self(T::default())) } else { parse(bytes).await.map(Self) }
    }
}

/// Parse on the blocking pool: a deploy's body is up to 64 MiB of base64.
async fn parse<T: DeserializeOwned + Send + 'static>(bytes: Bytes) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(move || {
        serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))
    })
    .await?
}
