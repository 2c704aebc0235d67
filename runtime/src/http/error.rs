//! [`ApiError`]: every error the API answers, in one JSON shape,
//! `{"error":{"code","message"}}` (plus `index` where ingest names the
//! event to blame). That includes axum's own rejections (a body over the
//! limit, a bad query string or path), unknown routes and wrong methods,
//! which axum would otherwise answer in plain text.

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::models::{ErrorInfo, ErrorResponse};
use crate::ingest::IngestError;
use crate::runtime::{DeployError, RuntimeError};
use crate::store::StoreError;

/// An error answer: a status and a stable code.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    index: Option<usize>,
    /// The loading step of a refused module.
    stage: Option<&'static str>,
    /// Seconds for a `Retry-After` header.
    retry_after: Option<u32>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), index: None, stage: None, retry_after: None }
    }

    /// `503 overloaded`, to retry after `seconds`.
    pub(crate) fn overloaded(message: impl Into<String>, seconds: u32) -> Self {
        Self { retry_after: Some(seconds), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message) }
    }

    /// `413 body_too_large`.
    pub(crate) fn body_too_large(max: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body exceeds the maximum of {max} bytes (http.max_body_bytes)"),
        )
    }

    /// A body that could not be read: over `max` (413), or broken off.
    pub(crate) fn from_body(e: &BytesRejection, max: usize) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::body_too_large(max)
        } else {
            Self::new(e.status(), "invalid_body", e.body_text())
        }
    }

    pub(crate) fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    #[cfg(test)]
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorResponse {
            error: ErrorInfo {
                code: self.code.into(),
                message: self.message,
                index: self.index,
                stage: self.stage.map(str::to_owned),
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

/// Damage is a 500 (retrying will not help); anything else (poisoned,
/// closed, I/O) a 503.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if let StoreError::Overloaded { .. } = e {
            return Self::overloaded(e.to_string(), 1);
        }
        let status = match e {
            StoreError::RecordCorrupt { .. } | StoreError::ModuleCorrupt { .. } | StoreError::Corrupt { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self::new(status, e.code(), e.to_string())
    }
}

/// A blocking task that panicked or was cancelled.
impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    }
}

/// A refused ingest request: 413 for a payload, a field or a request over
/// its limit, else 400, naming the event to blame when there is one.
impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        let status = match e {
            IngestError::TooLarge { .. }
            | IngestError::TooManyEvents { .. }
            | IngestError::FieldTooLarge { .. }
            | IngestError::TooManyHeaders { .. }
            | IngestError::Schema { source: crate::schema::SchemaError::TooLarge { .. }, .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            IngestError::Schema { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::BAD_REQUEST,
        };
        Self { index: e.index(), ..Self::new(status, e.code(), e.to_string()) }
    }
}

/// A redrive's failure: 404 for an unknown subscription, 422 for source
/// entries that still make no event, else 503.
impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> Self {
        let status = match e {
            RuntimeError::UnknownSubscription(_) => StatusCode::NOT_FOUND,
            RuntimeError::SourceRedrive { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self::new(status, e.code(), e.to_string())
    }
}

/// A refused deploy or rollback: 404 for an unknown handler or version, 422
/// for a refused module, else 503. Each message states its reason once.
impl From<DeployError> for ApiError {
    fn from(e: DeployError) -> Self {
        let status = match e {
            DeployError::UnknownHandler(_)
            | DeployError::NoSuchVersion(_)
            | DeployError::AmbiguousVersion { .. }
            | DeployError::NothingToRollBack(_)
            | DeployError::ModulePruned(_) => StatusCode::NOT_FOUND,
            DeployError::Invalid(_) | DeployError::SampleFailed { .. } | DeployError::Unreachable(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            DeployError::Upcaster(crate::UpcasterError::Unknown(_)) => StatusCode::NOT_FOUND,
            DeployError::Upcaster(crate::UpcasterError::Store(_)) => StatusCode::SERVICE_UNAVAILABLE,
            DeployError::Upcaster(_) => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        let stage = match &e {
            DeployError::Invalid(load) => Some(load.stage()),
            _ => None,
        };
        Self { stage, ..Self::new(status, e.code(), e.to_string()) }
    }
}

/// A query string that does not fit (an unknown parameter, a bad number).
impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        Self::new(e.status(), "invalid_query", e.body_text())
    }
}

/// A path segment that does not fit (`/v1/dlq/a/b/not-a-number`).
impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        Self::new(e.status(), "invalid_path", e.body_text())
    }
}

/// The fallback for a path no route matches.
pub(super) async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no endpoint {method} {}", uri.path()))
}

/// The fallback for a path some route matches, with another method. axum
/// adds the `Allow` header.
pub(super) async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} does not take {method} (the Allow header lists what it takes)", uri.path()),
    )
}
