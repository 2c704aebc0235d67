//! `weir.toml`: the runtime's configuration, loaded, defaulted and validated
//! into typed settings. Every default is stated in docs/configuration.md.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::engine::{InstanceMode, Limits};
use crate::topic::Pattern;

/// Default HTTP listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
/// Default largest payload accepted at ingest.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1 << 20;
/// Shortest `idempotency.retention` accepted. A shorter window de-duplicates
/// nothing in practice: a record can expire before its own commit is durable,
/// and before any producer's resend or a redelivery can arrive
/// (docs/configuration.md explains the choice).
pub const MIN_RETENTION: Duration = Duration::from_secs(1);
/// Longest `idempotency.retention` accepted: 100 years (36500 days). Expiry
/// times are milliseconds since the epoch in a `u64`; a bound keeps every
/// one of them far from overflow whatever the text says.
pub const MAX_RETENTION: Duration = Duration::from_secs(36_500 * 86_400);

/// A configuration problem: the file, the key and the reason.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {}{reason}", .file.display(), if .key.is_empty() { String::new() } else { format!("{}: ", .key) })]
pub struct ConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// The key path, e.g. `pipelines[0].handlers[1].plugin`; empty when the
    /// file as a whole is at fault.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

impl ConfigError {
    /// Stable code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        "config"
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    data_dir: Option<PathBuf>,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    idempotency: RawIdempotency,
    #[serde(default)]
    ingest: RawIngest,
    #[serde(default)]
    engine: RawEngine,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    plugins: RawPlugins,
    #[serde(default)]
    pipelines: Vec<RawPipeline>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlugins {
    keep_versions: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    enabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Option<String>,
    admin_token: Option<String>,
    #[serde(default)]
    tokens: Vec<RawToken>,
    allowed_hosts: Option<Vec<String>>,
    max_body_bytes: Option<usize>,
    max_concurrent_publishes: Option<usize>,
    max_inflight_publish_bytes: Option<usize>,
    max_connections: Option<usize>,
    header_timeout: Option<String>,
    body_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    token: String,
    scopes: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdempotency {
    retention: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIngest {
    max_payload_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEngine {
    artifact_cache: Option<bool>,
    fuel: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    name: String,
    topics: Vec<String>,
    #[serde(default)]
    handlers: Vec<RawHandler>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHandler {
    name: String,
    plugin: PathBuf,
    config: Option<toml::Table>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    retry: RawRetry,
    #[serde(default)]
    ready: RawReady,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReady {
    max_dlq: Option<u64>,
    max_lag: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    deadline: Option<String>,
    fuel: Option<u64>,
    memory_mib: Option<usize>,
    max_output_bytes: Option<usize>,
    max_emits: Option<usize>,
    max_log_lines: Option<usize>,
    max_headers_per_emit: Option<usize>,
    max_header_bytes_per_emit: Option<usize>,
    instance: Option<String>,
    log_lines_per_second: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    max_attempts: Option<u32>,
    initial_backoff: Option<String>,
    multiplier: Option<f64>,
    max_backoff: Option<String>,
    jitter: Option<f64>,
}

/// When and how often a failing event is retried.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included. Default 5.
    pub max_attempts: u32,
    /// Wait before the second attempt. Default 100 ms.
    pub initial_backoff: Duration,
    /// Factor between consecutive waits. Default 2.
    pub multiplier: f64,
    /// Longest wait. Default 30 s.
    pub max_backoff: Duration,
    /// Random spread, as a fraction of the wait (0.2 = ±20%). Default 0.2.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            multiplier: 2.0,
            max_backoff: Duration::from_secs(30),
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempt` (1-based), before
    /// jitter: `initial × multiplier^(attempt-1)`, capped.
    #[must_use]
    pub fn base_backoff(&self, attempt: u32) -> Duration {
        let exp = self.multiplier.powi(attempt.saturating_sub(1).min(64) as i32);
        let secs = (self.initial_backoff.as_secs_f64() * exp).min(self.max_backoff.as_secs_f64());
        Duration::from_secs_f64(secs.max(0.0))
    }

    /// [`base_backoff`](Self::base_backoff) with jitter applied, never over
    /// `max_backoff`.
    #[must_use]
    pub fn backoff(&self, attempt: u32) -> Duration {
        let base = self.base_backoff(attempt).as_secs_f64();
        let spread = 1.0 + self.jitter * (2.0 * rand::random::<f64>() - 1.0);
        Duration::from_secs_f64((base * spread).clamp(0.0, self.max_backoff.as_secs_f64()))
    }
}

/// One handler of a pipeline: one subscription.
#[derive(Debug, Clone)]
pub struct HandlerConfig {
    /// Handler name, unique within its pipeline.
    pub name: String,
    /// The plugin module (absolute, resolved against the config file).
    pub plugin: PathBuf,
    /// The plugin configuration as JSON (empty when none).
    pub config: Vec<u8>,
    /// Sandbox limits.
    pub limits: Limits,
    /// Instance reuse.
    pub mode: InstanceMode,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Plugin log lines let through per second (and the burst allowed);
    /// the rest are counted and dropped. Default 100.
    pub log_lines_per_second: u32,
    /// When `GET /ready` calls this subscription degraded.
    pub ready: ReadyThresholds,
}

/// Default plugin log lines per second per subscription.
pub const DEFAULT_LOG_LINES_PER_SECOND: u32 = 100;

/// Thresholds past which `GET /ready` reports a subscription as degraded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyThresholds {
    /// More DLQ entries than this is degraded. Default 1000.
    pub max_dlq: u64,
    /// Further behind the newest event than this is degraded. Default 5 min.
    pub max_lag: Duration,
}

impl Default for ReadyThresholds {
    fn default() -> Self {
        Self { max_dlq: 1000, max_lag: Duration::from_secs(300) }
    }
}

/// A pipeline: topic patterns and the handlers that each receive every
/// matching event (fan-out).
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Pipeline name.
    pub name: String,
    /// Topic patterns.
    pub topics: Vec<Pattern>,
    /// Its handlers.
    pub handlers: Vec<HandlerConfig>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the file came from (for messages).
    pub source: PathBuf,
    /// Data directory: the store and the artifact cache.
    pub data_dir: PathBuf,
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// Bearer token for admin endpoints, from the file or `WEIR_ADMIN_TOKEN`.
    /// It is also the first of [`HttpConfig::tokens`], with every scope.
    pub admin_token: Option<String>,
    /// The HTTP server's tokens, host names and limits (`[http]`).
    pub http: HttpConfig,
    /// Idempotency and ingest de-duplication window.
    pub retention: Duration,
    /// Largest payload accepted at ingest.
    pub max_payload_bytes: usize,
    /// Cache compiled artifacts in the data directory.
    pub artifact_cache: bool,
    /// Meter fuel (needed for fuel limits).
    pub fuel: bool,
    /// Time invocations and commits for the latency histograms (`[metrics]
    /// enabled`, default on). Counters are kept either way: status needs them.
    pub metrics: bool,
    /// How many of each handler's latest deploy-history entries keep their
    /// module in the registry (`[plugins] keep_versions`); older modules no
    /// kept entry (and no active version) uses are deleted at the next
    /// deploy.
    pub keep_versions: usize,
    /// The pipelines.
    pub pipelines: Vec<PipelineConfig>,
}

/// Default of `[plugins] keep_versions`.
pub const DEFAULT_KEEP_VERSIONS: usize = 10;

impl Config {
    /// Read and validate `path`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the file, the key and the reason.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            key: String::new(),
            reason: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, path)
    }

    /// Validate configuration text; relative paths resolve against the
    /// directory of `path`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the file, the key and the reason.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let err = |key: &str, reason: String| ConfigError { file: path.to_owned(), key: key.to_owned(), reason };
        let raw: RawConfig = toml::from_str(text).map_err(|e| err("", e.to_string().trim_end().to_owned()))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let resolve = |p: &Path| if p.is_absolute() { p.to_owned() } else { base.join(p) };

        let listen_text = raw.http.listen.clone().unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen: SocketAddr = listen_text
            .parse()
            .map_err(|e| err("http.listen", format!("{listen_text:?} is not an address:port ({e})")))?;
        let admin_token =
            raw.http.admin_token.clone().or_else(|| std::env::var("WEIR_ADMIN_TOKEN").ok()).filter(|t| !t.is_empty());
        let retention = match raw.idempotency.retention {
            Some(text) => {
                let retention = duration(&text).map_err(|e| err("idempotency.retention", e))?;
                if retention < MIN_RETENTION {
                    return Err(err(
                        "idempotency.retention",
                        format!(
                            "{text:?} is shorter than the minimum of {}: de-duplication cannot be turned off, and a shorter window would catch (almost) no resend",
                            humantime::format_duration(MIN_RETENTION)
                        ),
                    ));
                }
                if retention > MAX_RETENTION {
                    return Err(err(
                        "idempotency.retention",
                        format!("{text:?} is longer than the maximum of 36500days (100 years)"),
                    ));
                }
                retention
            }
            None => crate::store::DEFAULT_RETENTION,
        };
        let http = http_config(&raw.http, admin_token.as_deref()).map_err(|(key, reason)| err(&key, reason))?;
        let max_payload_bytes = raw.ingest.max_payload_bytes.unwrap_or(DEFAULT_MAX_PAYLOAD_BYTES);
        if max_payload_bytes == 0 {
            return Err(err("ingest.max_payload_bytes", "must be at least 1".into()));
        }

        let mut pipelines = Vec::with_capacity(raw.pipelines.len());
        for (p, rp) in raw.pipelines.into_iter().enumerate() {
            let key = format!("pipelines[{p}]");
            check_name(&rp.name).map_err(|e| err(&format!("{key}.name"), e))?;
            if pipelines.iter().any(|x: &PipelineConfig| x.name == rp.name) {
                return Err(err(&format!("{key}.name"), format!("pipeline {:?} is defined twice", rp.name)));
            }
            if rp.topics.is_empty() {
                return Err(err(&format!("{key}.topics"), "give at least one topic pattern".into()));
            }
            let topics = rp
                .topics
                .iter()
                .enumerate()
                .map(|(i, t)| Pattern::parse(t).map_err(|e| err(&format!("{key}.topics[{i}]"), e.to_string())))
                .collect::<Result<Vec<_>, _>>()?;
            let mut handlers: Vec<HandlerConfig> = Vec::with_capacity(rp.handlers.len());
            for (h, rh) in rp.handlers.into_iter().enumerate() {
                let key = format!("{key}.handlers[{h}]");
                check_name(&rh.name).map_err(|e| err(&format!("{key}.name"), e))?;
                if handlers.iter().any(|x| x.name == rh.name) {
                    return Err(err(
                        &format!("{key}.name"),
                        format!("handler {:?} is defined twice in this pipeline", rh.name),
                    ));
                }
                let plugin = resolve(&rh.plugin);
                check_plugin_file(&plugin).map_err(|e| err(&format!("{key}.plugin"), e))?;
                let config = match rh.config {
                    Some(table) => {
                        serde_json::to_vec(&table).map_err(|e| err(&format!("{key}.config"), e.to_string()))?
                    }
                    None => Vec::new(),
                };
                let (limits, mode) = limits(&rh.limits, raw.engine.fuel.unwrap_or(false))
                    .map_err(|(field, reason)| err(&format!("{key}.limits.{field}"), reason))?;
                let retry = retry(&rh.retry).map_err(|(field, reason)| err(&format!("{key}.retry.{field}"), reason))?;
                let log_lines_per_second = rh.limits.log_lines_per_second.unwrap_or(DEFAULT_LOG_LINES_PER_SECOND);
                if log_lines_per_second == 0 {
                    return Err(err(&format!("{key}.limits.log_lines_per_second"), "must be at least 1".into()));
                }
                let mut ready = ReadyThresholds::default();
                if let Some(n) = rh.ready.max_dlq {
                    ready.max_dlq = n;
                }
                if let Some(text) = &rh.ready.max_lag {
                    ready.max_lag = duration(text).map_err(|e| err(&format!("{key}.ready.max_lag"), e))?;
                }
                handlers.push(HandlerConfig {
                    name: rh.name,
                    plugin,
                    config,
                    limits,
                    mode,
                    retry,
                    log_lines_per_second,
                    ready,
                });
            }
            if handlers.is_empty() {
                return Err(err(&format!("{key}.handlers"), "a pipeline needs at least one handler".into()));
            }
            pipelines.push(PipelineConfig { name: rp.name, topics, handlers });
        }

        let keep_versions = raw.plugins.keep_versions.unwrap_or(DEFAULT_KEEP_VERSIONS);
        if keep_versions == 0 {
            return Err(err(
                "plugins.keep_versions",
                "must be at least 1: the active version's module is always kept".to_owned(),
            ));
        }
        Ok(Self {
            source: path.to_owned(),
            data_dir: resolve(&raw.data_dir.unwrap_or_else(|| PathBuf::from("weir-data"))),
            listen,
            admin_token,
            http,
            retention,
            max_payload_bytes,
            artifact_cache: raw.engine.artifact_cache.unwrap_or(true),
            fuel: raw.engine.fuel.unwrap_or(false),
            metrics: raw.metrics.enabled.unwrap_or(true),
            keep_versions,
            pipelines,
        })
    }
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
        }
    }
}

/// Parse `WEIR_TOKENS`: entries `<scope>[+<scope>…]:<token>`, separated by
/// whitespace or `;`.
fn env_tokens(text: &str) -> Result<Vec<ApiToken>, String> {
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

fn http_config(raw: &RawHttp, admin_token: Option<&str>) -> Result<HttpConfig, (String, String)> {
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
    Ok(http)
}

fn check_name(name: &str) -> Result<(), String> {
    let ok =
        !name.is_empty() && name.len() <= 64 && name.chars().all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'));
    if ok { Ok(()) } else { Err(format!("{name:?} must be 1-64 characters of a-z, 0-9, '_' or '-'")) }
}

/// A handler's `plugin` must name a regular file (its content is checked when
/// the runtime loads it).
fn check_plugin_file(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(meta) if meta.is_dir() => {
            Err(format!("{} is a directory; give the path of the plugin's .wasm file", path.display()))
        }
        Ok(_) => Err(format!("{} is not a regular file", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!("no such file: {}", path.display())),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Parse `100ms`, `1s`, `24h`, `1h 30m`.
fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration like \"100ms\", \"30s\" or \"24h\" ({e})"))
}

fn limits(raw: &RawLimits, fuel_enabled: bool) -> Result<(Limits, InstanceMode), (&'static str, String)> {
    let mut b = Limits::builder();
    if let Some(d) = &raw.deadline {
        let d = duration(d).map_err(|e| ("deadline", e))?;
        if d.is_zero() {
            return Err(("deadline", "must be more than 0".into()));
        }
        b = b.deadline(d);
    }
    if let Some(f) = raw.fuel {
        if !fuel_enabled {
            return Err(("fuel", "set `engine.fuel = true` to meter fuel".into()));
        }
        b = b.fuel(Some(f));
    }
    if let Some(m) = raw.memory_mib {
        if m == 0 || m > 4096 {
            return Err(("memory_mib", format!("{m} is outside 1..=4096")));
        }
        b = b.memory_bytes(m << 20);
    }
    if let Some(o) = raw.max_output_bytes {
        if o == 0 {
            return Err(("max_output_bytes", "must be at least 1".into()));
        }
        b = b.max_output_bytes(o);
    }
    if let Some(e) = raw.max_emits {
        b = b.max_emits(e);
    }
    if let Some(n) = raw.max_log_lines {
        b = b.max_log_lines(n);
    }
    if let Some(n) = raw.max_headers_per_emit {
        b = b.max_headers_per_emit(n);
    }
    if let Some(n) = raw.max_header_bytes_per_emit {
        b = b.max_header_bytes_per_emit(n);
    }
    let mode = match raw.instance.as_deref() {
        None | Some("reuse") => InstanceMode::Reuse,
        Some("fresh") => InstanceMode::FreshPerEvent,
        Some(other) => return Err(("instance", format!("{other:?} is not \"reuse\" or \"fresh\""))),
    };
    Ok((b.build(), mode))
}

fn retry(raw: &RawRetry) -> Result<RetryPolicy, (&'static str, String)> {
    let mut policy = RetryPolicy::default();
    if let Some(n) = raw.max_attempts {
        if n == 0 {
            return Err(("max_attempts", "must be at least 1 (the first attempt counts)".into()));
        }
        policy.max_attempts = n;
    }
    if let Some(d) = &raw.initial_backoff {
        policy.initial_backoff = duration(d).map_err(|e| ("initial_backoff", e))?;
    }
    if let Some(m) = raw.multiplier {
        if !(1.0..=100.0).contains(&m) {
            return Err(("multiplier", format!("{m} is outside 1.0..=100.0")));
        }
        policy.multiplier = m;
    }
    if let Some(d) = &raw.max_backoff {
        policy.max_backoff = duration(d).map_err(|e| ("max_backoff", e))?;
    }
    if let Some(j) = raw.jitter {
        if !(0.0..=1.0).contains(&j) {
            return Err(("jitter", format!("{j} is outside 0.0..=1.0")));
        }
        policy.jitter = j;
    }
    if policy.max_backoff < policy.initial_backoff {
        return Err((
            "max_backoff",
            format!("{:?} is shorter than initial_backoff {:?}", policy.max_backoff, policy.initial_backoff),
        ));
    }
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir();
        let plugin = dir.join("weir-config-test.wasm");
        std::fs::write(&plugin, b"\0asm\x01\0\0\0").unwrap();
        Config::parse(&text.replace("PLUGIN", &plugin.display().to_string()), &dir.join("weir.toml"))
    }

    #[test]
    fn defaults_are_applied() {
        let c = parse("[[pipelines]]\nname = \"orders\"\ntopics = [\"orders.>\"]\n[[pipelines.handlers]]\nname = \"v\"\nplugin = \"PLUGIN\"\n").unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.retention, Duration::from_secs(86_400));
        assert_eq!(c.max_payload_bytes, 1 << 20);
        assert_eq!(c.pipelines[0].handlers[0].retry, RetryPolicy::default());
        assert!(c.data_dir.ends_with("weir-data"));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("[http]\nlisten = \"nowhere\"", "http.listen"),
            ("[idempotency]\nretention = \"forever\"", "idempotency.retention"),
            ("[[pipelines]]\nname = \"Orders\"\ntopics = [\"a.b.c\"]", "pipelines[0].name"),
            ("[[pipelines]]\nname = \"o\"\ntopics = [\"a.b\"]", "pipelines[0].topics[0]"),
            (
                "[[pipelines]]\nname = \"o\"\ntopics = [\"a.b.c\"]\n[[pipelines.handlers]]\nname = \"v\"\nplugin = \"/no/such.wasm\"",
                "pipelines[0].handlers[0].plugin",
            ),
            (
                "[[pipelines]]\nname = \"o\"\ntopics = [\"a.b.c\"]\n[[pipelines.handlers]]\nname = \"v\"\nplugin = \"PLUGIN\"\nretry = { jitter = 3.0 }",
                "pipelines[0].handlers[0].retry.jitter",
            ),
            ("[[pipelines]]\nname = \"o\"\ntopics = [\"a.b.c\"]", "pipelines[0].handlers"),
        ];
        for (text, key) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.key, key, "{text}: {e}");
            assert!(e.to_string().contains("weir.toml"));
        }
        let e = parse("bogus = 1").unwrap_err();
        assert!(e.reason.contains("unknown field"), "{e}");
    }

    #[test]
    fn keep_versions_defaults_to_ten_and_is_at_least_one() {
        assert_eq!(parse("").unwrap().keep_versions, DEFAULT_KEEP_VERSIONS);
        assert_eq!(parse("[plugins]\nkeep_versions = 3").unwrap().keep_versions, 3);
        assert_eq!(parse("[plugins]\nkeep_versions = 0").unwrap_err().key, "plugins.keep_versions");
    }

    #[test]
    fn a_retention_under_the_minimum_is_refused() {
        for text in ["0s", "0ms", "999ms"] {
            let e = parse(&format!("[idempotency]\nretention = \"{text}\"")).unwrap_err();
            assert_eq!(e.key, "idempotency.retention", "{e}");
            assert!(e.to_string().contains("minimum of 1s"), "{e}");
        }
        for (text, secs) in [("1s", 1), ("1m", 60), ("24h", 86_400)] {
            let c = parse(&format!("[idempotency]\nretention = \"{text}\"")).unwrap();
            assert_eq!(c.retention, Duration::from_secs(secs));
        }
    }

    #[test]
    fn a_retention_that_could_overflow_expiry_times_is_refused() {
        // 584 million years of milliseconds overflow a u64; the bound stops
        // far below that.
        for text in ["36501days", "1000000years", "18446744073709551615s"] {
            let e = parse(&format!("[idempotency]\nretention = \"{text}\"")).unwrap_err();
            assert_eq!(e.key, "idempotency.retention", "{e}");
        }
        let c = parse("[idempotency]\nretention = \"36500days\"").unwrap();
        assert_eq!(c.retention, MAX_RETENTION);
    }

    #[test]
    fn a_plugin_path_that_is_a_directory_is_reported_as_one() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[[pipelines]]\nname = \"o\"\ntopics = [\"a.b.c\"]\n[[pipelines.handlers]]\nname = \"v\"\nplugin = {:?}",
            dir.path().display().to_string()
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key, "pipelines[0].handlers[0].plugin", "{e}");
        assert!(e.reason.contains("is a directory"), "{e}");
        assert!(!e.reason.contains("no such file"), "{e}");
    }

    #[test]
    fn tokens_get_their_scopes_and_the_admin_token_gets_every_scope() {
        let c = parse(
            "[http]\nadmin_token = \"adm\"\n[[http.tokens]]\ntoken = \"p\"\nscopes = [\"publish\"]\n[[http.tokens]]\ntoken = \"r\"\nscopes = [\"read\", \"admin\"]",
        )
        .unwrap();
        let tokens: Vec<(&str, &[Scope])> = c.http.tokens.iter().map(|t| (t.token.as_str(), &t.scopes[..])).collect();
        assert_eq!(
            tokens,
            [("adm", &Scope::ALL[..]), ("p", &[Scope::Publish][..]), ("r", &[Scope::Read, Scope::Admin][..])]
        );
        assert!(!format!("{:?}", c.http.tokens).contains("adm\""), "a token's Debug shows its secret");
        for (text, key) in [
            ("[[http.tokens]]\ntoken = \"t\"\nscopes = [\"write\"]", "http.tokens[0].scopes"),
            ("[[http.tokens]]\ntoken = \"t\"\nscopes = []", "http.tokens[0].scopes"),
            ("[[http.tokens]]\ntoken = \"\"\nscopes = [\"read\"]", "http.tokens[0].token"),
            ("[http]\nmax_connections = 0", "http.max_connections"),
            ("[http]\nheader_timeout = \"0s\"", "http.header_timeout"),
            ("[http]\nbody_timeout = \"soon\"", "http.body_timeout"),
        ] {
            assert_eq!(parse(text).unwrap_err().key, key, "{text}");
        }
        let d = parse("").unwrap().http;
        assert_eq!((d.max_body_bytes, d.header_timeout, d.max_connections), (64 << 20, Duration::from_secs(10), 1024));
    }

    #[test]
    fn weir_tokens_entries_name_their_scopes() {
        let tokens = env_tokens("publish:a; read+admin:b:c\n").unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!((tokens[0].token.as_str(), &tokens[0].scopes[..]), ("a", &[Scope::Publish][..]));
        assert_eq!((tokens[1].token.as_str(), &tokens[1].scopes[..]), ("b:c", &[Scope::Read, Scope::Admin][..]));
        assert!(env_tokens("nocolon").is_err());
        assert!(env_tokens("write:x").is_err());
        assert!(env_tokens("read:").is_err());
        assert!(env_tokens("").unwrap().is_empty());
    }

    #[test]
    fn backoff_grows_and_caps() {
        let p = RetryPolicy { jitter: 0.0, ..RetryPolicy::default() };
        assert_eq!(p.base_backoff(1), Duration::from_millis(100));
        assert_eq!(p.base_backoff(3), Duration::from_millis(400));
        assert_eq!(p.base_backoff(40), Duration::from_secs(30));
        let j = RetryPolicy::default();
        for _ in 0..100 {
            let b = j.backoff(2).as_secs_f64();
            assert!((0.16..=0.24).contains(&b), "{b}");
        }
    }
}
