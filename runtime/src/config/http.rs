//! `[http]`: the listener's limits, the API tokens and their scopes.

use super::*;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    pub(super) listen: Option<String>,
    pub(super) admin_token: Option<String>,
    #[serde(default)]
    tokens: Vec<RawToken>,
    allowed_hosts: Option<Vec<String>>,
    max_body_bytes: Option<usize>,
    max_concurrent_publishes: Option<usize>,
    max_inflight_publish_bytes: Option<usize>,
    max_connections: Option<usize>,
    header_timeout: Option<String>,
    body_timeout: Option<String>,
    stream_heartbeat: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawToken {
    token: String,
    scopes: Vec<String>,
}

/// A scope of an API token: what its bearer may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// `POST /v1/events`.
    Publish,
    /// Every `GET` but `/`, `/health` and `/ready`: status, metrics, the
    /// DLQ's contents, plugin versions.
    Read,
    /// The actions that change state: DLQ redrive and purge, deploy, rollback.
    Admin,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Self; 3] = [Self::Publish, Self::Read, Self::Admin];

    /// Its name in the configuration.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Read => "read",
            Self::Admin => "admin",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == text)
    }
}

/// An API token and what it may do.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken {
    /// The secret, sent as `Authorization: Bearer <token>`.
    pub token: String,
    /// What it allows.
    pub scopes: Vec<Scope>,
}

/// Never prints the secret.
impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiToken").field("token", &"<redacted>").field("scopes", &self.scopes).finish()
    }
}

/// Default `http.max_body_bytes`: a batch of events, or a module to deploy.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 << 20;
/// Default `http.max_concurrent_publishes`.
pub const DEFAULT_MAX_CONCURRENT_PUBLISHES: usize = 64;
/// Default `http.max_inflight_publish_bytes`.
pub const DEFAULT_MAX_INFLIGHT_PUBLISH_BYTES: usize = 256 << 20;
/// Default `http.max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default `http.header_timeout`: also how long an idle keep-alive
/// connection is kept.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `http.body_timeout`.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `http.stream_heartbeat`: well under the idle timeouts of common
/// proxies (60 s) and load balancers, so an idle stream is not cut.
const DEFAULT_STREAM_HEARTBEAT: Duration = Duration::from_secs(15);

/// The `[http]` settings beyond the listen address.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Every token: `admin_token` (with every scope) first, then
    /// `[[http.tokens]]`, then `WEIR_TOKENS`.
    pub tokens: Vec<ApiToken>,
    /// Host names a request's `Host` may name besides the listen address,
    /// `localhost` and IP literals (`"*"`: any).
    pub allowed_hosts: Vec<String>,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Publish requests served at once; more are answered 503.
    pub max_concurrent_publishes: usize,
    /// Bytes of publish bodies held at once (announced lengths); more are
    /// answered 503.
    pub max_inflight_publish_bytes: usize,
    /// Open connections at once; more wait to be accepted.
    pub max_connections: usize,
    /// Time to receive a request's head, and to keep an idle connection.
    pub header_timeout: Duration,
    /// Time to receive a request's body.
    pub body_timeout: Duration,
    /// Silence after which an event stream sends a comment, so proxies do
    /// not close it as idle and a client that left is noticed.
    pub stream_heartbeat: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            tokens: Vec::new(),
            allowed_hosts: Vec::new(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_concurrent_publishes: DEFAULT_MAX_CONCURRENT_PUBLISHES,
            max_inflight_publish_bytes: DEFAULT_MAX_INFLIGHT_PUBLISH_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            stream_heartbeat: DEFAULT_STREAM_HEARTBEAT,
        }
    }
}

/// Parse `WEIR_TOKENS`: entries `<scope>[+<scope>…]:<token>`, separated by
/// whitespace or `;`.
pub(super) fn env_tokens(text: &str) -> Result<Vec<ApiToken>, String> {
    text.split(|c: char| c == ';' || c.is_whitespace())
        .filter(|e| !e.is_empty())
        .map(|entry| {
            let (scopes, token) =
                entry.split_once(':').ok_or_else(|| "an entry is not `<scope>[+<scope>…]:<token>`".to_owned())?;
            let scopes = scopes
                .split('+')
                .map(|s| Scope::parse(s).ok_or_else(|| format!("unknown scope {s:?} (publish, read or admin)")))
                .collect::<Result<Vec<_>, _>>()?;
            if token.is_empty() {
                return Err("an entry has an empty token".to_owned());
            }
            Ok(ApiToken { token: token.to_owned(), scopes })
        })
        .collect()
}

pub(super) fn http_config(raw: &RawHttp, admin_token: Option<&str>) -> Result<HttpConfig, (String, String)> {
    let mut http = HttpConfig::default();
    if let Some(token) = admin_token {
        http.tokens.push(ApiToken { token: token.to_owned(), scopes: Scope::ALL.to_vec() });
    }
    for (i, t) in raw.tokens.iter().enumerate() {
        let key = format!("http.tokens[{i}]");
        if t.token.is_empty() {
            return Err((format!("{key}.token"), "must not be empty".into()));
        }
        if t.scopes.is_empty() {
            return Err((format!("{key}.scopes"), "give at least one of publish, read, admin".into()));
        }
        let scopes = t
            .scopes
            .iter()
            .map(|s| {
                Scope::parse(s)
                    .ok_or_else(|| (format!("{key}.scopes"), format!("unknown scope {s:?} (publish, read or admin)")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        http.tokens.push(ApiToken { token: t.token.clone(), scopes });
    }
    if let Ok(text) = std::env::var("WEIR_TOKENS") {
        http.tokens.extend(env_tokens(&text).map_err(|e| ("WEIR_TOKENS".to_owned(), e))?);
    }
    if let Some(hosts) = &raw.allowed_hosts {
        http.allowed_hosts = hosts.iter().map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase()).collect();
    }
    let positive = |key: &str, value: Option<usize>, default: usize| match value {
        Some(0) => Err((format!("http.{key}"), "must be at least 1".to_owned())),
        Some(n) => Ok(n),
        None => Ok(default),
    };
    http.max_body_bytes = positive("max_body_bytes", raw.max_body_bytes, http.max_body_bytes)?;
    http.max_concurrent_publishes =
        positive("max_concurrent_publishes", raw.max_concurrent_publishes, http.max_concurrent_publishes)?;
    http.max_inflight_publish_bytes =
        positive("max_inflight_publish_bytes", raw.max_inflight_publish_bytes, http.max_inflight_publish_bytes)?;
    http.max_connections = positive("max_connections", raw.max_connections, http.max_connections)?;
    let timeout = |key: &str, value: &Option<String>, default: Duration| match value {
        None => Ok(default),
        Some(text) => match duration(text) {
            Ok(d) if d.is_zero() => Err((format!("http.{key}"), "must be more than 0".to_owned())),
            Ok(d) => Ok(d),
            Err(e) => Err((format!("http.{key}"), e)),
        },
    };
    http.header_timeout = timeout("header_timeout", &raw.header_timeout, http.header_timeout)?;
    http.body_timeout = timeout("body_timeout", &raw.body_timeout, http.body_timeout)?;
    http.stream_heartbeat = timeout("stream_heartbeat", &raw.stream_heartbeat, http.stream_heartbeat)?;
    Ok(http)
}
