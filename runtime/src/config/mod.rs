//! `weir.toml`: the runtime's configuration, loaded, defaulted and validated
//! into typed settings. Every default is stated in docs/configuration.md.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::engine::{InstanceMode, Limits};
use crate::topic::Pattern;

mod http;
pub use http::{
    ApiToken, DEFAULT_BODY_TIMEOUT, DEFAULT_HEADER_TIMEOUT, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CONCURRENT_PUBLISHES,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_INFLIGHT_PUBLISH_BYTES, HttpConfig, Scope,
};
use http::{RawHttp, http_config};
mod cluster;
mod entities;
mod handler;
mod read_side;
mod sagas;
mod schemas;
mod sinks;
mod sources;
mod upcasters;
pub use cluster::{ClusterConfig, DEFAULT_LEASE_TTL, DEFAULT_PARTITIONS, MAX_PARTITIONS, partition_of};
pub use entities::{AggregateConfig, EntityConfig};
pub use handler::RetryPolicy;
use handler::{RawLimits, RawRetry, limits, retry};
pub use read_side::{ConsumersConfig, DEFAULT_RETENTION_INTERVAL};
use read_side::{RawConsumers, RawRetention, log_retention};
pub use sagas::{
    Compensation, Correlation, DEFAULT_MAX_INSTANCES, DEFAULT_SAGA_TIMEOUT, DEFAULT_STEP_TIMEOUT, MAX_REPLY_TOPICS,
    MAX_SAGA_STEPS, SAGA_PIPELINE, SAGA_TOPIC_DOMAIN, SagaConfig, SagaStep,
};
pub use schemas::{MAX_SCHEMA_ENTRIES, MAX_SCHEMA_VERSIONS};
pub use sinks::{DEFAULT_JETSTREAM_SINK_TIMEOUT, JetStreamSinkConfig};
pub use sinks::{
    DEFAULT_SINK_TIMEOUT, MAX_SINK_SECRETS, MAX_SINK_TIMEOUT, SINK_PIPELINE, SinkConfig, SinkFormat, SinkSecret,
    SinkUrl,
};
use sinks::{RawJetStreamSink, RawSink};
use sources::RawSource;
pub use sources::{
    DEFAULT_SOURCE_ACK_WAIT, DEFAULT_SOURCE_BATCH, MAX_SOURCE_BATCH, NatsAuth, NatsConnection, SOURCE_PREFIX,
    SourceConfig, TemplatePart, TopicTemplate,
};
pub use upcasters::{DEFAULT_UPCAST_OUTPUTS, MAX_UPCAST_OUTPUTS, UPCASTER_PIPELINE, UpcasterConfig};

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
    retention: RawRetention,
    #[serde(default)]
    pipelines: Vec<RawPipeline>,
    #[serde(default)]
    sinks: Vec<RawSink>,
    #[serde(default)]
    jetstream_sinks: Vec<RawJetStreamSink>,
    #[serde(default)]
    sources: Vec<RawSource>,
    cluster: Option<cluster::RawCluster>,
    #[serde(default)]
    consumers: RawConsumers,
    #[serde(default)]
    entities: Vec<entities::RawEntity>,
    #[serde(default)]
    schemas: Vec<schemas::RawSchemas>,
    #[serde(default)]
    sagas: Vec<sagas::RawSaga>,
    #[serde(default)]
    upcasters: Vec<upcasters::RawUpcaster>,
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
    from: Option<String>,
    view: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReady {
    max_dlq: Option<u64>,
    max_lag: Option<String>,
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
    /// Where the subscription starts when it has no cursor yet (`from`).
    /// By default the beginning of the log.
    pub from: crate::store::StartPosition,
    /// The view its state serves as (`view`): a projection, queryable at
    /// `GET /v1/views/<view>/<key>`. Unique across handlers.
    pub view: Option<String>,
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
    /// The log's retention (`[retention]`). By default everything is kept
    /// forever.
    pub log_retention: crate::store::RetentionPolicy,
    /// How often the retention pass runs (`[retention] interval`). By
    /// default [`DEFAULT_RETENTION_INTERVAL`].
    pub retention_interval: Duration,
    /// The pipelines.
    pub pipelines: Vec<PipelineConfig>,
    /// The webhook sinks (`[[sinks]]`), each a subscription `sinks/<name>`.
    pub sinks: Vec<SinkConfig>,
    /// The JetStream sinks (`[[jetstream_sinks]]`), each a subscription
    /// `sinks/<name>` too.
    pub jetstream_sinks: Vec<JetStreamSinkConfig>,
    /// The sources (`[[sources]]`): JetStream streams consumed into the log.
    pub sources: Vec<SourceConfig>,
    /// The durable consumers' bounds (`[consumers]`).
    pub consumers: ConsumersConfig,
    /// The declared entity types (`[[entities]]`), whose events form entity
    /// streams and are kept forever.
    pub entities: Vec<EntityConfig>,
    /// The payload schemas per topic pattern (`[[schemas]]`): declared
    /// versions, JSON Schemas, payload limits. Empty by default.
    pub schemas: crate::schema::Schemas,
    /// The orchestrated sagas (`[[sagas]]`), each a subscription
    /// `sagas/<name>` (docs/sagas.md).
    pub sagas: Vec<SagaConfig>,
    /// The upcasters (`[[upcasters]]`), applied at delivery.
    pub upcasters: Vec<UpcasterConfig>,
    /// `[cluster]`: several nodes sharing the pipelines' work by partition
    /// on NATS JetStream (docs/scale-out.md). `None`: one node, the default.
    pub cluster: Option<ClusterConfig>,
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
            // Durable consumers' DLQ entries are the subscriptions
            // `consumers/<name>`: a pipeline of that name would share them.
            if rp.name == "consumers" || rp.name == SAGA_PIPELINE {
                return Err(err(
                    &format!("{key}.name"),
                    format!(
                        "{:?} is reserved: durable consumers' dead letters are listed as consumers/<name>, sagas' subscriptions are sagas/<name>",
                        rp.name
                    ),
                ));
            }
            if rp.name == "sources" {
                return Err(err(
                    &format!("{key}.name"),
                    "\"sources\" is reserved: the sources' dead letters are listed as sources/<name>".into(),
                ));
            }
            if rp.name == UPCASTER_PIPELINE {
                return Err(err(
                    &format!("{key}.name"),
                    "\"upcasters\" is reserved: the upcasters' versions are kept as upcasters/<name>".into(),
                ));
            }
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
                let from = match &rh.from {
                    Some(text) => {
                        crate::store::StartPosition::parse(text).map_err(|e| err(&format!("{key}.from"), e))?
                    }
                    None => crate::store::StartPosition::Beginning,
                };
                if let Some(view) = &rh.view {
                    check_name(view).map_err(|e| err(&format!("{key}.view"), e))?;
                    let taken = pipelines
                        .iter()
                        .flat_map(|p| &p.handlers)
                        .chain(&handlers)
                        .any(|x| x.view.as_ref() == Some(view));
                    if taken {
                        return Err(err(
                            &format!("{key}.view"),
                            format!("view {view:?} is served by another handler already"),
                        ));
                    }
                }
                handlers.push(HandlerConfig {
                    view: rh.view,
                    from,
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

        let sinks = sinks::sinks(raw.sinks, &|name| std::env::var(name).ok()).map_err(|(key, e)| err(&key, e))?;
        let mut jetstream_sinks = sinks::jetstream_sinks(raw.jetstream_sinks, &sinks, &|name| std::env::var(name).ok())
            .map_err(|(key, e)| err(&key, e))?;
        let sources = sources::sources(raw.sources, retention, &|name| std::env::var(name).ok())
            .map_err(|(key, e)| err(&key, e))?;
        // A sink's subscription is `sinks/<name>`: a pipeline of that name
        // must not have a handler of the same name.
        if let Some(clash) = pipelines
            .iter()
            .filter(|p| p.name == SINK_PIPELINE)
            .flat_map(|p| &p.handlers)
            .find(|h| sinks.iter().any(|s| s.name == h.name) || jetstream_sinks.iter().any(|s| s.name == h.name))
        {
            return Err(err(
                "sinks",
                format!("sink {:?} and handler sinks/{0} would share the subscription name sinks/{0}", clash.name),
            ));
        }

        let sagas = {
            let consumed = |t: &str| {
                pipelines.iter().flat_map(|p| &p.topics).any(|p| p.matches(t))
                    || sinks.iter().flat_map(|s| &s.topics).any(|p| p.matches(t))
                    || jetstream_sinks.iter().flat_map(|s| &s.topics).any(|p| p.matches(t))
            };
            sagas::sagas(raw.sagas, &consumed).map_err(|(key, e)| err(&key, e))?
        };
        let keep_versions = raw.plugins.keep_versions.unwrap_or(DEFAULT_KEEP_VERSIONS);
        if keep_versions == 0 {
            return Err(err(
                "plugins.keep_versions",
                "must be at least 1: the active version's module is always kept".to_owned(),
            ));
        }
        let entities = entities::entities(&raw.entities, &resolve, raw.engine.fuel.unwrap_or(false))
            .map_err(|(k, e)| err(&k, e))?;
        let upcasters = upcasters::upcasters(raw.upcasters, &resolve, raw.engine.fuel.unwrap_or(false))
            .map_err(|(k, e)| err(&k, e))?;
        let (mut log_retention, retention_interval) = log_retention(&raw.retention).map_err(|(k, e)| err(&k, e))?;
        entities::protect(&mut log_retention, &entities).map_err(|(k, e)| err(&k, e))?;
        let schemas = schemas::schemas(raw.schemas, &resolve).map_err(|(k, e)| err(&k, e))?;
        let cluster =
            cluster::cluster(raw.cluster, listen, &|name| std::env::var(name).ok()).map_err(|(k, e)| err(&k, e))?;
        if cluster.is_some() {
            // What a cluster does not run yet: each of these keeps state or
            // takes input outside the partitions (docs/scale-out.md).
            let refused = [
                (
                    "sources",
                    !sources.is_empty(),
                    "the partitions are the cluster's input: publish to a node over HTTP, or to the cluster's stream",
                ),
                ("entities", !entities.is_empty(), "commands need routing to the owner of the entity's partition"),
                ("sagas", !sagas.is_empty(), "saga coordinators keep timers that do not follow a partition yet"),
            ];
            if let Some((key, _, why)) = refused.iter().find(|(_, present, _)| *present) {
                return Err(err(key, format!("not supported with [cluster] yet: {why}")));
            }
            for sink in &mut jetstream_sinks {
                sink.message_id_is_key = true;
            }
        }
        Ok(Self {
            cluster,
            schemas,
            sagas,
            upcasters,
            entities,
            log_retention,
            retention_interval,
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
            sinks,
            jetstream_sinks,
            sources,
            consumers: ConsumersConfig {
                max_consumers: raw.consumers.max_consumers.unwrap_or(ConsumersConfig::default().max_consumers),
                max_waiting_fetches: raw
                    .consumers
                    .max_waiting_fetches
                    .unwrap_or(ConsumersConfig::default().max_waiting_fetches),
            },
        })
    }
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

#[cfg(test)]
mod tests;
