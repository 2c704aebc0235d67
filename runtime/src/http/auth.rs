//! Admin authentication: a route layer on the endpoints that change state
//! (DLQ redrive and purge, deploy, rollback).
//!
//! When `http.admin_token` (or `WEIR_ADMIN_TOKEN`) is set, they need
//! `Authorization: Bearer <token>`. When it is not, they are open: `weir run`
//! refuses to listen beyond loopback without a token, so only local
//! processes reach them then.
//!
//! The layer runs before the handler extracts anything, so a request without
//! the token is answered `401` before its body is read: an unauthenticated
//! client cannot make the server buffer a 64 MiB body.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;

use super::AppState;
use super::error::ApiError;

/// `routes`, each behind the admin token.
pub(super) fn admin(routes: Router<AppState>, state: &AppState) -> Router<AppState> {
    routes.route_layer(middleware::from_fn_with_state(state.clone(), require_admin))
}

async fn require_admin(State(state): State<AppState>, request: Request, next: Next) -> Result<Response, ApiError> {
    authorize(state.runtime.config().admin_token.as_deref(), request.headers())?;
    Ok(next.run(request).await)
}

/// No token configured: allowed. A token configured: the request must carry
/// exactly `Bearer <token>`.
fn authorize(token: Option<&str>, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = token else { return Ok(()) };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if same(given.as_bytes(), token.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this endpoint needs `Authorization: Bearer <admin token>`",
        ))
    }
}

/// Constant-time comparison, so response timing does not reveal how much of
/// a guessed token was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue, StatusCode, header};

    use super::{authorize, same};

    #[test]
    fn token_comparison() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
        assert!(!same(b"", b"x"));
    }

    fn with_authorization(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn without_a_configured_token_every_request_passes() {
        assert!(authorize(None, &HeaderMap::new()).is_ok());
        assert!(authorize(None, &with_authorization("Bearer anything")).is_ok());
    }

    #[test]
    fn with_a_configured_token_only_the_exact_bearer_passes() {
        let token = Some("s3cret");
        assert!(authorize(token, &with_authorization("Bearer s3cret")).is_ok());
        for refused in [HeaderMap::new(), with_authorization("Bearer wrong"), with_authorization("bearer s3cret")] {
            let error = authorize(token, &refused).unwrap_err();
            assert_eq!(error.status(), StatusCode::UNAUTHORIZED);
        }
    }
}
