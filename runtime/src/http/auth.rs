//! Who may call what: one route layer, [`guard`], on every route but
//! `/health` and `/ready`. In order, before the handler reads anything (so a
//! refused client never makes the server buffer its body):
//!
//! 1. **Host.** `Host` must name the listen address, `localhost`, an IP
//!    literal the server listens on, or one of `http.allowed_hosts`: a page
//!    that rebinds its own DNS name to 127.0.0.1 reaches the server, but
//!    under its own name, and is refused (`421 misdirected_host`).
//! 2. **Browser origin** (state-changing methods only). `Sec-Fetch-Site`
//!    must be `same-origin` or `none`, and an `Origin` must be the server's
//!    own (`403 cross_origin`). A page elsewhere cannot make a browser send a
//!    request that passes this.
//! 3. **Token.** Off loopback, every guarded route needs
//!    `Authorization: Bearer <token>` with the route's [`Scope`]; on
//!    loopback only the admin routes do, and only when a token is
//!    configured. Missing or unknown: `401 unauthorized`; known without the
//!    scope: `403 forbidden`. The scheme is matched without regard to case.
//! 4. **Body** (state-changing methods only). A `Content-Length` over the
//!    limit is refused at once (`413 body_too_large`), then the content type
//!    must be one the route reads (`415 unsupported_media_type`): JSON, or
//!    the module's type for a deploy. A browser sends `text/plain`, form and
//!    empty bodies without a CORS preflight; it never sends `application/json`
//!    cross-origin without one, and the server answers no preflight.

use std::net::{IpAddr, SocketAddr};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;

use super::AppState;
use super::error::ApiError;
use crate::config::{ApiToken, Scope};

/// What a route group reads as its body, when its method changes state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Accept {
    /// Nothing to check here (a read, or ingest, which checks its own types).
    Any,
    /// `application/json`, also when the body is empty.
    Json,
    /// A Wasm module: `application/wasm` or `application/octet-stream`.
    Module,
}

/// What a group of routes needs: the token scope of its reads (`GET`,
/// `HEAD`) and of its other methods (`None`: no token ever), and what the
/// body of a state-changing request must be.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rule {
    pub(super) read: Option<Scope>,
    pub(super) write: Option<Scope>,
    pub(super) body: Accept,
}

/// `routes`, each behind [`check`] with `rule`.
pub(super) fn guard(routes: Router<AppState>, state: &AppState, rule: Rule) -> Router<AppState> {
    routes.route_layer(middleware::from_fn_with_state((state.clone(), rule), layer))
}

/// `routes`, admin actions with a JSON body (the DLQ's redrive and purge).
pub(super) fn admin(routes: Router<AppState>, state: &AppState) -> Router<AppState> {
    guard(routes, state, Rule { read: Some(Scope::Admin), write: Some(Scope::Admin), body: Accept::Json })
}

async fn layer(
    State((state, rule)): State<(AppState, Rule)>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    check(&state, rule, request.method(), request.headers())?;
    Ok(next.run(request).await)
}

/// The checks of the module documentation, in order.
pub(super) fn check(state: &AppState, rule: Rule, method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
    let config = state.runtime.config();
    let host = host_allowed(headers, &state.listen, &config.http.allowed_hosts)?;
    let changes_state = !matches!(*method, Method::GET | Method::HEAD);
    if changes_state {
        same_origin(headers, host, &config.http.allowed_hosts)?;
    }
    if let Some(scope) = if changes_state { rule.write } else { rule.read } {
        let needed =
            !crate::http::is_loopback(&state.listen) || (scope == Scope::Admin && !config.http.tokens.is_empty());
        if needed {
            authorize(&config.http.tokens, scope, headers)?;
        }
    }
    if changes_state {
        if let Some(length) = content_length(headers)
            && length > config.http.max_body_bytes
        {
            return Err(ApiError::body_too_large(config.http.max_body_bytes));
        }
        content_type(rule.body, headers)?;
    }
    Ok(())
}

fn content_length(headers: &HeaderMap) -> Option<usize> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// The media type of `headers`, lower-cased, without parameters.
pub(super) fn media_type(headers: &HeaderMap) -> Option<Result<String, ()>> {
    let value = headers.get(header::CONTENT_TYPE)?;
    Some(value.to_str().map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase()).map_err(|_| ()))
}

fn content_type(body: Accept, headers: &HeaderMap) -> Result<(), ApiError> {
    let accepted: &[&str] = match body {
        Accept::Any => return Ok(()),
        Accept::Json => &["application/json"],
        Accept::Module => &["application/wasm", "application/octet-stream"],
    };
    match media_type(headers) {
        Some(Ok(t)) if accepted.contains(&t.as_str()) => Ok(()),
        given => {
            let given = match given {
                None => "no content type".to_owned(),
                Some(Ok(t)) => format!("content type {t:?}"),
                Some(Err(())) => "a content type that is not printable ASCII".to_owned(),
            };
            Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("this endpoint takes `Content-Type: {}`, not {given}", accepted.join("` or `")),
            ))
        }
    }
}

/// The host name of a `Host` value (`name`, `name:port`, `[v6]:port`),
/// lower-cased, without a trailing dot.
fn host_name(value: &str) -> String {
    let value = value.trim();
    let name = if let Some(rest) = value.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        match value.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => value,
        }
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Check `Host`; answers it (`None` when the request has none: browsers
/// always send one, so its absence is no browser's request).
fn host_allowed<'h>(
    headers: &'h HeaderMap,
    listen: &SocketAddr,
    allowed: &[String],
) -> Result<Option<&'h str>, ApiError> {
    let Some(value) = headers.get(header::HOST) else { return Ok(None) };
    let refuse = |shown: &str| {
        ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "misdirected_host",
            format!(
                "Host {shown:?} is not a name of this server: use its address or localhost, or add the name to `http.allowed_hosts`"
            ),
        )
    };
    let Ok(text) = value.to_str() else { return Err(refuse(&String::from_utf8_lossy(value.as_bytes()))) };
    let name = host_name(text);
    let ok = if allowed.iter().any(|a| a == "*" || *a == name) || name == "localhost" || name.ends_with(".localhost") {
        true
    } else if let Ok(ip) = name.parse::<IpAddr>() {
        let listen_ip = listen.ip();
        listen_ip.is_unspecified() || ip == listen_ip || (ip.is_loopback() && listen_ip.is_loopback())
    } else {
        false
    };
    if ok { Ok(Some(text)) } else { Err(refuse(text)) }
}

/// A state-changing request must not come from another site's page: its
/// `Origin`, when it has one, is this server as the request names it, or a
/// name of `http.allowed_hosts` (a proxy in front may pass its own `Host`).
fn same_origin(headers: &HeaderMap, host: Option<&str>, allowed: &[String]) -> Result<(), ApiError> {
    let refuse = |why: String| ApiError::new(StatusCode::FORBIDDEN, "cross_origin", why);
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.to_str().unwrap_or("").trim().to_ascii_lowercase();
        if site != "same-origin" && site != "none" {
            return Err(refuse(format!(
                "a request from another site's page (Sec-Fetch-Site: {site}) may not change anything here"
            )));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("").trim().to_ascii_lowercase();
        let own = host.map(|h| h.trim().to_ascii_lowercase());
        let same = own.is_some_and(|h| origin == format!("http://{h}") || origin == format!("https://{h}"));
        let named = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"))
            .map(host_name)
            .is_some_and(|name| allowed.contains(&name));
        if !same && !named {
            return Err(refuse(format!(
                "a request from the page of origin {origin:?} may not change anything here; only this server's own pages may"
            )));
        }
    }
    Ok(())
}

/// The bearer token of `headers`: scheme matched without regard to case.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim_start();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The request must carry a token that has `scope`.
fn authorize(tokens: &[ApiToken], scope: Scope, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = bearer(headers).unwrap_or("");
    // Compare against every token, so timing says nothing of which matched.
    let mut found: Option<&ApiToken> = None;
    for token in tokens {
        if same(given.as_bytes(), token.token.as_bytes()) && found.is_none() && !given.is_empty() {
            found = Some(token);
        }
    }
    match found {
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            format!("this endpoint needs `Authorization: Bearer <token>` with the `{}` scope", scope.name()),
        )),
        Some(token) if !token.scopes.contains(&scope) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this token does not have the `{}` scope this endpoint needs", scope.name()),
        )),
        Some(_) => Ok(()),
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

    use super::{ApiToken, Scope, authorize, host_allowed, host_name, same, same_origin};

    #[test]
    fn token_comparison() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
        assert!(!same(b"", b"x"));
    }

    fn with(name: header::HeaderName, value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_static(value));
        headers
    }

    fn tokens() -> Vec<ApiToken> {
        vec![
            ApiToken { token: "s3cret".into(), scopes: Scope::ALL.to_vec() },
            ApiToken { token: "pub".into(), scopes: vec![Scope::Publish] },
        ]
    }

    #[test]
    fn the_bearer_scheme_is_matched_without_regard_to_case() {
        for accepted in ["Bearer s3cret", "bearer s3cret", "BEARER s3cret", "bEaReR  s3cret "] {
            assert!(authorize(&tokens(), Scope::Admin, &with(header::AUTHORIZATION, accepted)).is_ok(), "{accepted}");
        }
        for refused in [
            HeaderMap::new(),
            with(header::AUTHORIZATION, "Bearer wrong"),
            with(header::AUTHORIZATION, "Basic s3cret"),
            with(header::AUTHORIZATION, "s3cret"),
            with(header::AUTHORIZATION, "Bearer "),
        ] {
            let error = authorize(&tokens(), Scope::Admin, &refused).unwrap_err();
            assert_eq!(error.status(), StatusCode::UNAUTHORIZED);
        }
        assert!(authorize(&[], Scope::Read, &with(header::AUTHORIZATION, "Bearer ")).is_err());
    }

    #[test]
    fn a_token_without_the_scope_is_forbidden() {
        let headers = with(header::AUTHORIZATION, "Bearer pub");
        assert!(authorize(&tokens(), Scope::Publish, &headers).is_ok());
        assert_eq!(authorize(&tokens(), Scope::Admin, &headers).unwrap_err().status(), StatusCode::FORBIDDEN);
        assert_eq!(authorize(&tokens(), Scope::Read, &headers).unwrap_err().status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn host_names_are_parsed_and_checked() {
        assert_eq!(host_name("Example.COM.:8080"), "example.com");
        assert_eq!(host_name("[::1]:7070"), "::1");
        assert_eq!(host_name("127.0.0.1"), "127.0.0.1");
        let loopback = "127.0.0.1:7070".parse().unwrap();
        for ok in ["127.0.0.1:7070", "localhost:7070", "[::1]:7070", "app.localhost", "weir.internal"] {
            let headers = with(header::HOST, ok);
            assert!(host_allowed(&headers, &loopback, &["weir.internal".into()]).is_ok(), "{ok}");
        }
        for refused in ["evil.example:7070", "10.0.0.1:7070", "127.0.0.1.evil.example"] {
            let error = host_allowed(&with(header::HOST, refused), &loopback, &[]).unwrap_err();
            assert_eq!(error.status(), StatusCode::MISDIRECTED_REQUEST, "{refused}");
        }
        let any = "0.0.0.0:7070".parse().unwrap();
        assert!(host_allowed(&with(header::HOST, "10.0.0.1:7070"), &any, &[]).is_ok());
        assert!(host_allowed(&with(header::HOST, "evil.example"), &any, &[]).is_err());
        assert!(host_allowed(&with(header::HOST, "evil.example"), &any, &["*".into()]).is_ok());
    }

    #[test]
    fn foreign_origins_and_cross_site_fetches_are_refused() {
        assert!(same_origin(&HeaderMap::new(), Some("127.0.0.1:7070"), &[]).is_ok());
        assert!(same_origin(&with(header::ORIGIN, "http://127.0.0.1:7070"), Some("127.0.0.1:7070"), &[]).is_ok());
        let site = header::HeaderName::from_static("sec-fetch-site");
        assert!(same_origin(&with(site.clone(), "same-origin"), Some("h"), &[]).is_ok());
        assert!(same_origin(&with(site.clone(), "none"), Some("h"), &[]).is_ok());
        for (name, value) in [
            (header::ORIGIN, "http://evil.example"),
            (header::ORIGIN, "null"),
            (header::ORIGIN, "http://127.0.0.1:7071"),
            (site.clone(), "cross-site"),
            (site, "same-site"),
        ] {
            let error = same_origin(&with(name, value), Some("127.0.0.1:7070"), &["*".into()]).unwrap_err();
            assert_eq!(error.status(), StatusCode::FORBIDDEN, "{value}");
        }
        // Behind a proxy that passes its own Host, the public name is allowed by name.
        let public = with(header::ORIGIN, "https://weir.example.com");
        assert!(same_origin(&public, Some("127.0.0.1:7070"), &["weir.example.com".into()]).is_ok());
        assert!(same_origin(&public, Some("127.0.0.1:7070"), &["other.example.com".into()]).is_err());
    }
}
