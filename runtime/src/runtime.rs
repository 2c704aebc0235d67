//! The running system: store, engine, one worker thread per subscription.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use weir_abi::Event;

use crate::config::{Config, ReadyThresholds};
use crate::engine::PluginInfo;
use crate::engine::{Engine, EngineConfig};
use crate::error::{EngineError, InvokeError, LoadError};
use crate::ids::IdGenerator;
use crate::metrics::{Sample, WINDOW};
use crate::store::{
    DlqEntry, DlqFilter, Published, Store, StoreError, StoreOptions, SubscriptionStats, VersionRecord, now_ms,
};
use crate::subscription::{Control, Invoke, Spec, SubscriptionCounters, Worker};

/// Why the runtime could not start or an operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The engine could not be created.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A plugin was refused.
    #[error("handler {subscription}: plugin {plugin} refused: {error}")]
    Plugin {
        /// The subscription.
        subscription: String,
        /// The plugin path.
        plugin: String,
        /// Why (in the message, not a `source()`: every reason prints once).
        error: LoadError,
    },
    /// The data directory cannot be created.
    #[error("cannot create the data directory {path}: {error}")]
    DataDir {
        /// The directory.
        path: String,
        /// The I/O error (in the message, not a `source()`).
        error: std::io::Error,
    },
    /// A subscription named in a request does not exist.
    #[error("no subscription named {0:?}")]
    UnknownSubscription(String),
    /// A handler's active module in the store is missing or damaged.
    #[error(
        "handler {subscription}: its active plugin version {version} (sha256 {sha256}) in the store is damaged: {error}"
    )]
    StoredModule {
        /// The subscription.
        subscription: String,
        /// The version's number in the deploy history (`?` if unknown).
        version: String,
        /// The module's sha256.
        sha256: String,
        /// What is wrong with it (in the message, not a `source()`).
        error: Box<StoreError>,
    },
    /// A worker thread could not be started or died.
    #[error("subscription worker failed: {0}")]
    Worker(String),
}

impl RuntimeError {
    /// Stable code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::Store(e) => e.code(),
            Self::Engine(e) => e.code(),
            Self::Plugin { error, .. } => error.code(),
            Self::DataDir { .. } => "data_dir",
            Self::StoredModule { error, .. } => error.code(),
            Self::UnknownSubscription(_) => "unknown_subscription",
            Self::Worker(_) => "worker",
        }
    }
}

/// The bytes of a handler's active module, verified against its sha256. A
/// mismatch is store damage, named by handler and version, not a fault of
/// the plugin file it was once deployed from.
fn active_module(store: &Store, subscription: &str, sha256: &str) -> Result<Vec<u8>, RuntimeError> {
    let damaged = |error: StoreError| {
        let version = store
            .history(subscription)
            .ok()
            .and_then(|h| h.iter().rev().find(|(_, r)| r.sha256 == sha256).map(|(n, _)| n.to_string()))
            .unwrap_or_else(|| "?".to_owned());
        RuntimeError::StoredModule {
            subscription: subscription.to_owned(),
            version,
            sha256: sha256.to_owned(),
            error: Box::new(error),
        }
    };
    match store.module(sha256) {
        Ok(Some(bytes)) => Ok(bytes),
        Ok(None) => Err(damaged(StoreError::Decode("the module is missing from the store".into()))),
        Err(e @ StoreError::ModuleCorrupt { .. }) => Err(damaged(e)),
        Err(e) => Err(e.into()),
    }
}

/// A handler's plugin as loaded before the store opens.
enum Candidate {
    /// Native code standing in for the plugin (benchmarks).
    Native(Box<dyn Invoke>),
    /// The configured file: its bytes, the validated module, and an instance
    /// that accepted the handler's `config`.
    File { bytes: Vec<u8>, plugin: crate::engine::Plugin, instance: Box<crate::engine::Handler> },
}

struct Sub {
    name: Arc<str>,
    pipeline: String,
    handler: String,
    topics: Vec<String>,
    ready: ReadyThresholds,
    /// Recent samples of the counters, for rates and recent quantiles.
    window: Arc<Mutex<VecDeque<Sample>>>,
    plugin: Mutex<String>,
    plugin_version: Mutex<String>,
    control: Sender<Control>,
    counters: Arc<SubscriptionCounters>,
    join: Option<JoinHandle<Result<(), StoreError>>>,
    /// Held through a deploy or rollback, so two of them on one handler do
    /// not interleave (each compares with the active version first).
    switching: Mutex<()>,
    /// Why the worker stopped, if it stopped on an error.
    stopped: Arc<Mutex<Option<String>>>,
}

/// A point-in-time view of one subscription.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriptionStatus {
    /// `<pipeline>/<handler>`.
    pub name: String,
    /// The pipeline.
    pub pipeline: String,
    /// The handler within it.
    pub handler: String,
    /// The pipeline's topic patterns.
    pub topics: Vec<String>,
    /// Plugin name.
    pub plugin: String,
    /// sha256 of the active plugin module.
    pub plugin_version: String,
    /// Committed cursor.
    pub cursor: u64,
    /// Events in the log not yet read by this subscription.
    pub lag: u64,
    /// Seconds between the oldest unread event and the newest event in the
    /// log (by event time); 0 when caught up.
    pub lag_seconds: f64,
    /// Events parked (retrying or waiting behind their key).
    pub parked: u64,
    /// DLQ entries.
    pub dlq: u64,
    /// Committed counters.
    pub stats: SubscriptionStats,
    /// Invocations since start.
    pub invocations: u64,
    /// Last failure since start, `code: message`.
    pub last_failure: Option<String>,
    /// `failing` (dead letters waiting), `retrying` (events parked) or `ok`.
    pub state: &'static str,
    /// Rates and latency quantiles over the last few seconds.
    pub rate: crate::metrics::Rate,
    /// Plugin resource use.
    pub resources: Resources,
}

/// A subscription's plugin resource numbers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Resources {
    /// Fuel consumed since start (0 unless `engine.fuel` is on).
    pub fuel_consumed: u64,
    /// Largest linear memory of the active version's instances, bytes.
    pub memory_high_water_bytes: u64,
    /// Plugin log lines written.
    pub plugin_log_lines: u64,
    /// Plugin log lines dropped by the rate limit or the byte cap.
    pub plugin_log_lines_dropped: u64,
}

/// What `GET /ready` answers.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    /// `ready`, `degraded` (serving, with reasons) or `not_ready`.
    pub status: &'static str,
    /// Why it is not plainly ready.
    pub reasons: Vec<String>,
}

/// What a redrive did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RedriveReport {
    /// Entries moved back to their subscription.
    pub redriven: usize,
    /// Entries that matched but were gone by the time (already redriven or
    /// purged).
    pub missing: usize,
}

/// The runtime: open store, loaded plugins, running subscriptions.
pub struct Runtime {
    store: Store,
    ids: Arc<IdGenerator>,
    subs: Vec<Sub>,
    /// Dropping it stops the sampler thread.
    sampler: Option<(Sender<()>, JoinHandle<()>)>,
    config: Config,
    engine: Engine,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("store", &self.store)
            .field("subscriptions", &self.subs.len())
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Open the store in `config.data_dir`, load every handler's plugin and
    /// start one worker thread per subscription.
    ///
    /// # Errors
    ///
    /// A [`RuntimeError`] naming what failed; nothing keeps running.
    pub fn start(config: &Config) -> Result<Self, RuntimeError> {
        Self::start_inner(config, None, HashMap::new())
    }

    /// [`Runtime::start`] on an already open store (crash tests open one on
    /// a simulated disk).
    ///
    /// # Errors
    ///
    /// As [`Runtime::start`].
    pub fn start_with_store(config: &Config, store: Store) -> Result<Self, RuntimeError> {
        Self::start_inner(config, Some(store), HashMap::new())
    }

    /// [`Runtime::start`] with some subscriptions served by native code
    /// instead of their Wasm plugin (keyed by `<pipeline>/<handler>`): the
    /// benchmarks' baseline for the cost of Wasm.
    ///
    /// # Errors
    ///
    /// As [`Runtime::start`].
    pub fn start_with_native(
        config: &Config,
        store: Option<Store>,
        native: HashMap<String, Box<dyn Invoke>>,
    ) -> Result<Self, RuntimeError> {
        Self::start_inner(config, store, native)
    }

    fn start_inner(
        config: &Config,
        store: Option<Store>,
        mut native: HashMap<String, Box<dyn Invoke>>,
    ) -> Result<Self, RuntimeError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|error| RuntimeError::DataDir { path: config.data_dir.display().to_string(), error })?;
        let engine = Engine::new(EngineConfig {
            cache_dir: config.artifact_cache.then(|| config.data_dir.join("artifacts")),
            consume_fuel: config.fuel,
            pooling: config
                .pipelines
                .iter()
                .flat_map(|p| &p.handlers)
                .any(|h| h.mode == crate::InstanceMode::FreshPerEvent),
            // A pooled slot must hold the largest memory any handler may use.
            pool_max_memory_bytes: config
                .pipelines
                .iter()
                .flat_map(|p| &p.handlers)
                .map(|h| h.limits.memory_bytes())
                .max()
                .unwrap_or(crate::DEFAULT_MEMORY_BYTES),
            ..EngineConfig::default()
        })?;
        // Load every configured plugin file before the store is opened (or
        // created): compile, validate (imports, exports, ABI version) and
        // instantiate it with its `config`, so its `weir_init` has accepted
        // it. A missing or refused plugin stops the start here, with nothing
        // running and no store file written.
        let mut loaded = Vec::new();
        for pipeline in &config.pipelines {
            for handler in &pipeline.handlers {
                let name = format!("{}/{}", pipeline.name, handler.name);
                let candidate = match native.remove(&name) {
                    Some(invoker) => Candidate::Native(invoker),
                    None => {
                        let fail = |error| RuntimeError::Plugin {
                            subscription: name.clone(),
                            plugin: handler.plugin.display().to_string(),
                            error,
                        };
                        let bytes = std::fs::read(&handler.plugin)
                            .map_err(|error| fail(LoadError::Io { path: handler.plugin.clone(), error }))?;
                        let plugin = engine.load(&bytes).map_err(fail)?;
                        let instance = plugin
                            .handler(handler.limits.clone(), handler.config.clone(), handler.mode)
                            .map_err(fail)?;
                        Candidate::File { bytes, plugin, instance: Box::new(instance) }
                    }
                };
                loaded.push((name, pipeline, handler, candidate));
            }
        }
        let store = match store {
            Some(store) => store,
            None => Store::open(
                &config.data_dir.join("weir.redb"),
                StoreOptions {
                    retention: config.retention,
                    // Collect at least twice per retention window.
                    gc_interval: (config.retention / 2).clamp(Duration::from_millis(10), Duration::from_secs(60)),
                },
            )?,
        };
        // A handler runs its active version from the registry; the configured
        // file is only its initial version. Every module is loaded before any
        // worker starts: a bad one stops the start with nothing running.
        let mut prepared = Vec::new();
        for (name, pipeline, handler, candidate) in loaded {
            let (bytes, configured_plugin, configured) = match candidate {
                Candidate::Native(invoker) => {
                    prepared.push((name, pipeline, handler, invoker));
                    continue;
                }
                Candidate::File { bytes, plugin, instance } => (bytes, plugin, instance),
            };
            let fail = |error| RuntimeError::Plugin {
                subscription: name.clone(),
                plugin: handler.plugin.display().to_string(),
                error,
            };
            let instance = match store.active_version(&name)? {
                // The configured file is the active version: loaded above. The
                // stored copy is still verified, so store damage is noticed.
                Some(sha) if sha == configured_plugin.info().sha256 => {
                    active_module(&store, &name, &sha)?;
                    *configured
                }
                Some(sha) => {
                    let bytes = active_module(&store, &name, &sha)?;
                    let plugin = engine.load(&bytes).map_err(fail)?;
                    plugin.handler(handler.limits.clone(), handler.config.clone(), handler.mode).map_err(fail)?
                }
                None => {
                    store.deploy_blocking(
                        &name,
                        version_record(configured_plugin.info(), "config", "config"),
                        bytes,
                    )?;
                    *configured
                }
            };
            prepared.push((name, pipeline, handler, Box::new(instance) as Box<dyn Invoke>));
        }
        let ids = Arc::new(IdGenerator::new());
        let mut subs = Vec::new();
        for (name, pipeline, handler, invoker) in prepared {
            let name: Arc<str> = Arc::from(name);
            let (tx, rx) = mpsc::channel();
            let counters = Arc::new(SubscriptionCounters::default());
            let plugin_name = invoker.name();
            let plugin_version = invoker.version();
            let spec = Spec {
                name: Arc::clone(&name),
                plugin_name: plugin_name.clone(),
                patterns: pipeline.topics.clone(),
                retry: handler.retry.clone(),
                retention: config.retention,
                max_payload_bytes: config.max_payload_bytes,
                log_lines_per_second: handler.log_lines_per_second,
                timing: config.metrics,
            };
            let worker = Worker::new(spec, store.clone(), invoker, Arc::clone(&ids), Arc::clone(&counters), rx)?;
            let wake = tx.clone();
            store.watch(Box::new(move || wake.send(Control::Wake).is_ok()));
            let stopped = Arc::new(Mutex::new(None));
            let stopped_by = Arc::clone(&stopped);
            let worker_name = Arc::clone(&name);
            let join = std::thread::Builder::new()
                .name(format!("weir-sub-{name}"))
                .spawn(move || {
                    let result = worker.run();
                    if let Err(e) = &result {
                        tracing::error!(subscription = %worker_name, error = %e, "subscription worker stopped");
                        *stopped_by.lock().unwrap_or_else(PoisonError::into_inner) = Some(e.to_string());
                    }
                    result
                })
                .map_err(|e| RuntimeError::Worker(e.to_string()))?;
            subs.push(Sub {
                name,
                pipeline: pipeline.name.clone(),
                handler: handler.name.clone(),
                topics: pipeline.topics.iter().map(ToString::to_string).collect(),
                ready: handler.ready.clone(),
                window: Arc::new(Mutex::new(VecDeque::with_capacity(WINDOW + 1))),
                plugin: Mutex::new(plugin_name),
                plugin_version: Mutex::new(plugin_version),
                control: tx,
                counters,
                join: Some(join),
                switching: Mutex::new(()),
                stopped,
            });
        }
        let sampler = Some(spawn_sampler(&subs)?);
        tracing::info!(subscriptions = subs.len(), data_dir = %config.data_dir.display(), "runtime started");
        Ok(Self { store, ids, subs, sampler, config: config.clone(), engine })
    }

    /// The configuration it runs.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The store.
    #[must_use]
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The id generator used for new events.
    #[must_use]
    pub fn ids(&self) -> &IdGenerator {
        &self.ids
    }

    /// Subscription names.
    #[must_use]
    pub fn subscriptions(&self) -> Vec<String> {
        self.subs.iter().map(|s| s.name.to_string()).collect()
    }

    /// Live counters of a subscription.
    #[must_use]
    pub fn counters(&self, subscription: &str) -> Option<Arc<SubscriptionCounters>> {
        self.subs.iter().find(|s| &*s.name == subscription).map(|s| Arc::clone(&s.counters))
    }

    /// Publish durably; blocks until committed.
    ///
    /// # Errors
    ///
    /// The store's error; nothing was acknowledged.
    pub fn publish_blocking(&self, events: Vec<Event>) -> Result<Vec<Published>, StoreError> {
        self.store.publish_blocking(events)
    }

    /// Publish durably; `reply` runs after the commit.
    pub fn publish(&self, events: Vec<Event>, reply: crate::store::Reply<Vec<Published>>) {
        self.store.publish(events, reply);
    }

    /// A status line per subscription.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn status(&self) -> Result<Vec<SubscriptionStatus>, StoreError> {
        let head = self.store.head();
        let head_time = match head.checked_sub(1) {
            // A damaged newest event leaves the lag in seconds unknown (0)
            // rather than taking the whole status down with it: status is
            // where an operator looks to find the damage.
            Some(newest) => match self.store.event(newest) {
                Ok(event) => event.map(|e| e.time),
                Err(e @ StoreError::RecordCorrupt { .. }) => {
                    tracing::warn!(error = %e, "status: lag in seconds unknown");
                    None
                }
                Err(e) => return Err(e),
            },
            None => None,
        };
        let dlq_counts = self.store.dlq_counts()?;
        self.subs
            .iter()
            .map(|s| {
                let cursor = s.counters.cursor.load(Ordering::Relaxed);
                let parked = s.counters.parked.load(Ordering::Relaxed);
                let dlq = dlq_counts.get(&*s.name as &str).copied().unwrap_or(0);
                let state = if dlq > 0 {
                    "failing"
                } else if parked > 0 {
                    "retrying"
                } else {
                    "ok"
                };
                let lag_seconds = match head_time {
                    Some(newest) if cursor < head => self
                        .store
                        .event(cursor)?
                        .map_or(0.0, |oldest| newest.saturating_sub(oldest.time).max(0) as f64 / 1e9),
                    _ => 0.0,
                };
                let c = &s.counters;
                Ok(SubscriptionStatus {
                    state,
                    name: s.name.to_string(),
                    pipeline: s.pipeline.clone(),
                    handler: s.handler.clone(),
                    topics: s.topics.clone(),
                    lag_seconds,
                    rate: crate::metrics::Rate::of(
                        &s.window.lock().unwrap_or_else(PoisonError::into_inner),
                        &Sample::take(c),
                    ),
                    resources: Resources {
                        fuel_consumed: c.fuel_consumed.load(Ordering::Relaxed),
                        memory_high_water_bytes: c.memory_high_water_bytes.load(Ordering::Relaxed),
                        plugin_log_lines: c.plugin_log_lines.load(Ordering::Relaxed),
                        plugin_log_lines_dropped: c.plugin_log_lines_dropped.load(Ordering::Relaxed),
                    },
                    plugin: s.plugin.lock().unwrap_or_else(PoisonError::into_inner).clone(),
                    plugin_version: s.plugin_version.lock().unwrap_or_else(PoisonError::into_inner).clone(),
                    cursor,
                    lag: head.saturating_sub(cursor),
                    parked,
                    dlq,
                    stats: self.store.stats(&s.name)?,
                    invocations: s.counters.invocations.load(Ordering::Relaxed),
                    last_failure: s.counters.last_failure.lock().unwrap_or_else(PoisonError::into_inner).clone(),
                })
            })
            .collect()
    }

    /// Readiness for `GET /ready`: `not_ready` when the store cannot take
    /// writes or a worker has stopped; `degraded` (still serving) when a
    /// subscription's DLQ or lag is past its `ready` thresholds. A storage
    /// error while reading is `not_ready` with the error as the reason.
    #[must_use]
    pub fn readiness(&self) -> Readiness {
        let mut reasons = Vec::new();
        if let Some(failure) = self.store.failure() {
            reasons.push(failure);
        }
        for sub in &self.subs {
            if sub.join.as_ref().is_none_or(JoinHandle::is_finished) {
                match sub.stopped.lock().unwrap_or_else(PoisonError::into_inner).as_deref() {
                    Some(why) => reasons.push(format!("subscription {} has stopped: {why}", sub.name)),
                    None => reasons.push(format!("subscription {} has stopped", sub.name)),
                }
            }
        }
        if !reasons.is_empty() {
            return Readiness { status: "not_ready", reasons };
        }
        let status = match self.status() {
            Ok(status) => status,
            Err(e) => return Readiness { status: "not_ready", reasons: vec![format!("reading status: {e}")] },
        };
        for (s, sub) in status.iter().zip(&self.subs) {
            if s.dlq > sub.ready.max_dlq {
                reasons.push(format!("{}: {} DLQ entries, over the threshold of {}", s.name, s.dlq, sub.ready.max_dlq));
            }
            let max_lag = sub.ready.max_lag.as_secs_f64();
            if s.lag_seconds > max_lag {
                reasons.push(format!(
                    "{}: {:.1} s behind the newest event, over the threshold of {max_lag} s",
                    s.name, s.lag_seconds
                ));
            }
        }
        Readiness { status: if reasons.is_empty() { "ready" } else { "degraded" }, reasons }
    }

    /// The Prometheus text exposition of every subscription's and the
    /// store's numbers (`GET /metrics`).
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn metrics(&self) -> Result<String, StoreError> {
        use crate::metrics::{header, label};
        use std::fmt::Write as _;
        let status = self.status()?;
        let mut out = String::with_capacity(8192);
        let per_sub =
            |out: &mut String, name: &str, kind: &str, help: &str, value: &dyn Fn(&SubscriptionStatus) -> u64| {
                header(out, name, kind, help);
                for s in &status {
                    let _ = writeln!(out, "{name}{{subscription=\"{}\"}} {}", label(&s.name), value(s));
                }
            };
        per_sub(
            &mut out,
            "weir_subscription_queue_depth",
            "gauge",
            "Events in the log the subscription has not read yet.",
            &|s| s.lag,
        );
        per_sub(
            &mut out,
            "weir_subscription_parked",
            "gauge",
            "Events waiting for a retry or behind an earlier event with their key.",
            &|s| s.parked,
        );
        header(
            &mut out,
            "weir_subscription_lag_seconds",
            "gauge",
            "Event-time distance from the oldest unread event to the newest event in the log.",
        );
        for s in &status {
            let _ =
                writeln!(out, "weir_subscription_lag_seconds{{subscription=\"{}\"}} {}", label(&s.name), s.lag_seconds);
        }
        per_sub(&mut out, "weir_subscription_dlq_depth", "gauge", "Events in the dead-letter queue.", &|s| s.dlq);
        per_sub(&mut out, "weir_subscription_invocations_total", "counter", "Handler invocations since start.", &|s| {
            s.invocations
        });
        header(&mut out, "weir_subscription_events_total", "counter", "Committed outcomes by kind.");
        for s in &status {
            for (kind, value) in [
                ("handled", s.stats.handled),
                ("duplicate", s.stats.duplicates),
                ("retry", s.stats.retries),
                ("dead_lettered", s.stats.dead_lettered),
            ] {
                let _ = writeln!(
                    out,
                    "weir_subscription_events_total{{subscription=\"{}\",outcome=\"{kind}\"}} {value}",
                    label(&s.name)
                );
            }
        }
        header(
            &mut out,
            "weir_subscription_failures_total",
            "counter",
            "Failed invocations by failure code since start.",
        );
        for sub in &self.subs {
            let failures = sub.counters.failures.lock().unwrap_or_else(PoisonError::into_inner).clone();
            for (code, n) in failures {
                let _ = writeln!(
                    out,
                    "weir_subscription_failures_total{{subscription=\"{}\",code=\"{code}\"}} {n}",
                    label(&sub.name)
                );
            }
        }
        per_sub(
            &mut out,
            "weir_subscription_emitted_total",
            "counter",
            "Events emitted by the handler and committed.",
            &|s| s.stats.emitted,
        );
        header(
            &mut out,
            "weir_plugin_swaps_total",
            "counter",
            "Plugin versions switched in by deploy or rollback since start.",
        );
        for sub in &self.subs {
            let _ = writeln!(
                out,
                "weir_plugin_swaps_total{{subscription=\"{}\"}} {}",
                label(&sub.name),
                sub.counters.swaps.load(Ordering::Relaxed)
            );
        }
        header(&mut out, "weir_plugin_info", "gauge", "The active plugin of each subscription (value 1).");
        for s in &status {
            let _ = writeln!(
                out,
                "weir_plugin_info{{subscription=\"{}\",plugin=\"{}\",version=\"{}\"}} 1",
                label(&s.name),
                label(&s.plugin),
                label(&s.plugin_version)
            );
        }
        per_sub(
            &mut out,
            "weir_plugin_fuel_consumed_total",
            "counter",
            "Fuel consumed by invocations (only with engine.fuel = true).",
            &|s| s.resources.fuel_consumed,
        );
        per_sub(
            &mut out,
            "weir_plugin_memory_high_water_bytes",
            "gauge",
            "Largest linear memory of the active plugin version's instances.",
            &|s| s.resources.memory_high_water_bytes,
        );
        header(&mut out, "weir_plugin_log_lines_total", "counter", "Plugin log lines, written or dropped.");
        for s in &status {
            for (outcome, value) in
                [("written", s.resources.plugin_log_lines), ("dropped", s.resources.plugin_log_lines_dropped)]
            {
                let _ = writeln!(
                    out,
                    "weir_plugin_log_lines_total{{subscription=\"{}\",outcome=\"{outcome}\"}} {value}",
                    label(&s.name)
                );
            }
        }
        header(&mut out, "weir_processing_seconds", "histogram", "Time per handler invocation.");
        for sub in &self.subs {
            sub.counters.processing.render(
                &mut out,
                "weir_processing_seconds",
                &format!("subscription=\"{}\"", label(&sub.name)),
            );
        }
        header(&mut out, "weir_end_to_end_seconds", "histogram", "Event time to handled, for handled events.");
        for sub in &self.subs {
            sub.counters.end_to_end.render(
                &mut out,
                "weir_end_to_end_seconds",
                &format!("subscription=\"{}\"", label(&sub.name)),
            );
        }
        let (published, duplicates) = self.store.publish_stats();
        header(&mut out, "weir_ingest_events_total", "counter", "Published events stored since start.");
        let _ = writeln!(out, "weir_ingest_events_total {published}");
        header(
            &mut out,
            "weir_ingest_duplicates_total",
            "counter",
            "Published events refused as duplicates of a known idempotency key since start.",
        );
        let _ = writeln!(out, "weir_ingest_duplicates_total {duplicates}");
        header(&mut out, "weir_store_commit_seconds", "histogram", "Time per durable group commit (apply and fsync).");
        self.store.render_commit_latency(&mut out, "weir_store_commit_seconds");
        header(
            &mut out,
            "weir_store_commit_commands",
            "histogram",
            "Commands per durable group commit (its batch size).",
        );
        self.store.render_commit_size(&mut out, "weir_store_commit_commands");
        let (commits, commands) = self.store.commit_stats();
        header(&mut out, "weir_log_head", "gauge", "Sequence number the next appended event gets.");
        let _ = writeln!(out, "weir_log_head {}", self.store.head());
        header(&mut out, "weir_store_commits_total", "counter", "Durable group commits since start.");
        let _ = writeln!(out, "weir_store_commits_total {commits}");
        header(
            &mut out,
            "weir_store_commands_total",
            "counter",
            "Commands (publishes, outcome batches, admin) committed since start.",
        );
        let _ = writeln!(out, "weir_store_commands_total {commands}");
        Ok(out)
    }

    /// Whether every subscription has read the whole log and committed, with
    /// nothing parked.
    #[must_use]
    pub fn is_idle(&self) -> bool {
        let head = self.store.head();
        self.subs.iter().all(|s| {
            s.counters.cursor.load(Ordering::Relaxed) >= head && s.counters.parked.load(Ordering::Relaxed) == 0
        })
    }

    /// Wait until [`is_idle`](Self::is_idle) holds twice in a row (so events
    /// emitted by the last commit are seen), or `timeout` passes.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut streak = 0;
        while Instant::now() < deadline {
            if self.is_idle() {
                streak += 1;
                if streak >= 3 {
                    return true;
                }
            } else {
                streak = 0;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// DLQ entries passing `filter`.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn dlq(&self, filter: &DlqFilter) -> Result<Vec<DlqEntry>, StoreError> {
        self.store.dlq(filter)
    }

    /// Send the DLQ entries passing `filter` back through their
    /// subscription's current handler.
    ///
    /// # Idempotency
    ///
    /// An entry is moved out of the DLQ and into the subscription's parked
    /// events in one transaction: redriving twice moves it once. The
    /// subscription's idempotency check still applies when it runs.
    ///
    /// # Errors
    ///
    /// Storage errors, or an unknown subscription in the filter.
    pub fn redrive(&self, filter: &DlqFilter) -> Result<RedriveReport, RuntimeError> {
        if let Some(name) = &filter.subscription
            && !self.subs.iter().any(|s| &*s.name == name)
        {
            return Err(RuntimeError::UnknownSubscription(name.clone()));
        }
        let mut by_sub: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for entry in self.store.dlq(filter)? {
            by_sub.entry(entry.subscription).or_default().push(entry.seq);
        }
        let mut report = RedriveReport::default();
        for (name, seqs) in by_sub {
            let Some(sub) = self.subs.iter().find(|s| *s.name == name) else {
                // A subscription removed from the config: nothing can run it.
                report.missing += seqs.len();
                continue;
            };
            let (tx, rx) = mpsc::channel();
            let total = seqs.len();
            sub.control
                .send(Control::Redrive { seqs, reply: tx })
                .map_err(|_| RuntimeError::Worker(format!("{name} is not running")))?;
            let moved = rx.recv().map_err(|_| RuntimeError::Worker(format!("{name} stopped")))??;
            report.redriven += moved;
            report.missing += total - moved;
        }
        Ok(report)
    }

    /// Delete the DLQ entries passing `filter`.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn purge(&self, filter: DlqFilter) -> Result<usize, StoreError> {
        self.store.purge_blocking(filter)
    }

    /// Deploy `module` as the new version of `handler` (`<pipeline>/<handler>`).
    ///
    /// Before anything changes, the module is compiled and validated (ABI
    /// version, imports, exports), instantiated with the handler's
    /// configuration and limits, and run on the `tests` samples: any sandbox
    /// failure, or an outcome other than a sample expects, refuses the
    /// deploy. Then the module is stored, recorded in the history and made
    /// active, and the handler switches between two invocations: the
    /// invocation in flight finishes on the old version, the next one runs
    /// the new. The call returns after the switch.
    ///
    /// # Errors
    ///
    /// [`DeployError`]; on any error the running version keeps serving.
    pub fn deploy(
        &self,
        handler: &str,
        module: Vec<u8>,
        by: &str,
        tests: &[TestCase],
    ) -> Result<DeployReport, DeployError> {
        self.switch(handler, module, by, "deploy", tests)
    }

    /// Switch `handler` back to an earlier version from its history: the one
    /// whose sha256 starts with `to`, or else the latest version that differs
    /// from the active one. Naming the active version changes nothing
    /// ([`DeployReport::changed`] is false).
    ///
    /// # Errors
    ///
    /// [`DeployError`]; on any error the running version keeps serving.
    pub fn rollback(&self, handler: &str, to: Option<&str>, by: &str) -> Result<DeployReport, DeployError> {
        let history = self.store.history(handler)?;
        if history.is_empty() {
            return Err(DeployError::UnknownHandler(handler.to_owned()));
        }
        let active = self.store.active_version(handler)?.unwrap_or_default();
        let target = match to {
            Some(prefix) => {
                let mut matches: Vec<&VersionRecord> =
                    history.iter().map(|(_, r)| r).filter(|r| r.sha256.starts_with(prefix)).collect();
                matches.sort_by(|a, b| a.sha256.cmp(&b.sha256));
                matches.dedup_by(|a, b| a.sha256 == b.sha256);
                match matches.as_slice() {
                    [one] => (*one).clone(),
                    [] => return Err(DeployError::NoSuchVersion(prefix.to_owned())),
                    _ => {
                        return Err(DeployError::AmbiguousVersion {
                            prefix: prefix.to_owned(),
                            matches: matches.len(),
                        });
                    }
                }
            }
            None => history
                .iter()
                .rev()
                .map(|(_, r)| r)
                .find(|r| r.sha256 != active)
                .cloned()
                .ok_or_else(|| DeployError::NothingToRollBack(handler.to_owned()))?,
        };
        let module =
            self.store.module(&target.sha256)?.ok_or_else(|| DeployError::NoSuchVersion(target.sha256.clone()))?;
        self.switch(handler, module, by, "rollback", &[])
    }

    /// Each handler with its active version and history length.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn plugins(&self) -> Result<Vec<(String, Option<VersionRecord>, usize)>, StoreError> {
        self.subs
            .iter()
            .map(|s| {
                let history = self.store.history(&s.name)?;
                let active = self.store.active_version(&s.name)?;
                let record =
                    active.and_then(|sha| history.iter().rev().map(|(_, r)| r).find(|r| r.sha256 == sha).cloned());
                Ok((s.name.to_string(), record, history.len()))
            })
            .collect()
    }

    /// A handler's history, oldest first.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn history(&self, handler: &str) -> Result<Vec<(u64, VersionRecord)>, StoreError> {
        self.store.history(handler)
    }

    fn switch(
        &self,
        handler: &str,
        module: Vec<u8>,
        by: &str,
        action: &str,
        tests: &[TestCase],
    ) -> Result<DeployReport, DeployError> {
        let sub = self
            .subs
            .iter()
            .find(|s| &*s.name == handler)
            .ok_or_else(|| DeployError::UnknownHandler(handler.to_owned()))?;
        let settings = self
            .config
            .pipelines
            .iter()
            .flat_map(|p| p.handlers.iter().map(move |h| (format!("{}/{}", p.name, h.name), h)))
            .find(|(name, _)| name == handler)
            .map(|(_, h)| h.clone())
            .ok_or_else(|| DeployError::UnknownHandler(handler.to_owned()))?;
        let _switching = sub.switching.lock().unwrap_or_else(PoisonError::into_inner);
        // The version that is already active: nothing to validate, record or
        // swap, and no history entry.
        let sha256 = {
            use sha2::Digest as _;
            sha2::Sha256::digest(&module).iter().map(|b| format!("{b:02x}")).collect::<String>()
        };
        let previous = self.store.active_version(handler)?;
        if previous.as_deref() == Some(sha256.as_str()) {
            let version =
                self.store.history(handler)?.iter().rev().find(|(_, r)| r.sha256 == sha256).map_or(0, |(n, _)| *n);
            tracing::info!(handler, version, sha256 = %sha256, action, "plugin already active; nothing changed");
            return Ok(DeployReport { handler: handler.to_owned(), version, sha256, previous, changed: false });
        }
        let plugin = self.engine.load(&module).map_err(DeployError::Invalid)?;
        let instance = plugin
            .handler(settings.limits.clone(), settings.config.clone(), settings.mode)
            .map_err(DeployError::Invalid)?;
        // Samples run on a separate instance, so the one that goes live has
        // seen no event yet.
        if !tests.is_empty() {
            let mut probe = plugin
                .handler(settings.limits.clone(), settings.config.clone(), settings.mode)
                .map_err(DeployError::Invalid)?;
            for (i, test) in tests.iter().enumerate() {
                let outcome =
                    probe.invoke(weir_abi::DeliveryRef { event: &test.event, subscription: handler, attempt: 1 });
                check_sample(i, test, &outcome.result)?;
            }
        }
        let number = self.store.deploy_blocking(handler, version_record(plugin.info(), by, action), module)?;
        let (tx, rx) = mpsc::channel();
        sub.control
            .send(Control::Swap { invoker: Box::new(instance), reply: tx })
            .map_err(|_| DeployError::Runtime(format!("{handler} is not running")))?;
        rx.recv().map_err(|_| DeployError::Runtime(format!("{handler} stopped")))?;
        *sub.plugin.lock().unwrap_or_else(PoisonError::into_inner) = plugin.info().name();
        *sub.plugin_version.lock().unwrap_or_else(PoisonError::into_inner) = plugin.info().sha256.clone();
        tracing::info!(handler, version = number, sha256 = %plugin.info().sha256, action, "plugin switched");
        Ok(DeployReport {
            handler: handler.to_owned(),
            version: number,
            sha256: plugin.info().sha256.clone(),
            previous,
            changed: true,
        })
    }

    /// Stop: every worker finishes its current invocation and commits, then
    /// the store commits and closes.
    ///
    /// # Errors
    ///
    /// The first worker or store error met while stopping.
    pub fn shutdown(mut self) -> Result<(), RuntimeError> {
        if let Some((stop, join)) = self.sampler.take() {
            drop(stop);
            let _ = join.join();
        }
        for sub in &self.subs {
            let _ = sub.control.send(Control::Stop);
        }
        let mut first_error = None;
        for sub in &mut self.subs {
            if let Some(join) = sub.join.take() {
                match join.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        first_error.get_or_insert(RuntimeError::Store(e));
                    }
                    Err(_) => {
                        first_error.get_or_insert(RuntimeError::Worker(format!("{} panicked", sub.name)));
                    }
                }
            }
        }
        if let Err(e) = self.store.close() {
            first_error.get_or_insert(RuntimeError::Store(e));
        }
        tracing::info!("runtime stopped");
        first_error.map_or(Ok(()), Err)
    }
}

/// Sample every subscription's counters once a second into its window: the
/// source of events/s and recent p50/p99 in status and the dashboard.
fn spawn_sampler(subs: &[Sub]) -> Result<(Sender<()>, JoinHandle<()>), RuntimeError> {
    let targets: Vec<_> = subs.iter().map(|s| (Arc::clone(&s.counters), Arc::clone(&s.window))).collect();
    let (stop, stopped) = mpsc::channel::<()>();
    let sample_all = move || {
        for (counters, window) in &targets {
            let mut window = window.lock().unwrap_or_else(PoisonError::into_inner);
            window.push_back(Sample::take(counters));
            while window.len() > WINDOW + 1 {
                window.pop_front();
            }
        }
    };
    sample_all();
    let join = std::thread::Builder::new()
        .name("weir-sampler".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(Duration::from_secs(1)) {
                sample_all();
            }
        })
        .map_err(|e| RuntimeError::Worker(e.to_string()))?;
    Ok((stop, join))
}

impl From<std::sync::mpsc::RecvError> for RuntimeError {
    fn from(_: std::sync::mpsc::RecvError) -> Self {
        Self::Worker("a worker stopped".into())
    }
}

fn version_record(info: &PluginInfo, by: &str, action: &str) -> VersionRecord {
    VersionRecord {
        sha256: info.sha256.clone(),
        size: info.size as u64,
        abi_version: info.abi_version,
        description: info.description.clone(),
        deployed_at_ms: now_ms(),
        deployed_by: by.to_owned(),
        action: action.to_owned(),
    }
}

/// What a sample event must produce for a deploy to go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    /// `Ok`, with any number of emits.
    Ok,
    /// The handler asks for a retry.
    Retry,
    /// The handler rejects it.
    Reject,
}

/// A sample event for a deploy, with what it must produce. Without an
/// expectation the sample only must not fail in the sandbox.
#[derive(Debug, Clone)]
pub struct TestCase {
    /// The event.
    pub event: Event,
    /// The expected outcome.
    pub expect: Option<Expect>,
    /// The expected number of emitted events (with `Ok`).
    pub emits: Option<usize>,
}

fn check_sample(
    index: usize,
    test: &TestCase,
    result: &Result<Vec<weir_abi::Emit>, InvokeError>,
) -> Result<(), DeployError> {
    let got = match result {
        Ok(_) => Expect::Ok,
        Err(InvokeError::HandlerRetry { .. }) => Expect::Retry,
        Err(InvokeError::HandlerReject { .. }) => Expect::Reject,
        Err(e) => return Err(DeployError::SampleFailed { index, reason: format!("[{}] {e}", e.code()) }),
    };
    if let Some(expect) = test.expect
        && expect != got
    {
        let detail = match result {
            Err(e) => e.message(),
            Ok(emits) => format!("{} emitted events", emits.len()),
        };
        return Err(DeployError::SampleFailed { index, reason: format!("expected {expect:?}, got {got:?}: {detail}") });
    }
    if let (Some(n), Ok(emits)) = (test.emits, result)
        && emits.len() != n
    {
        return Err(DeployError::SampleFailed {
            index,
            reason: format!("expected {n} emitted events, got {}", emits.len()),
        });
    }
    Ok(())
}

/// What a deploy or rollback did.
#[derive(Debug, Clone, Serialize)]
pub struct DeployReport {
    /// The handler.
    pub handler: String,
    /// Its new version number in the history; when nothing changed, the
    /// number of the active version.
    pub version: u64,
    /// sha256 of the now active module.
    pub sha256: String,
    /// sha256 of the module that was active before the call (the same as
    /// `sha256` when nothing changed).
    pub previous: Option<String>,
    /// False when the module was already the active version: then nothing
    /// was validated, recorded or swapped.
    pub changed: bool,
}

/// Why a deploy or rollback was refused. The running version keeps serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeployError {
    /// No such handler.
    #[error("no handler named {0:?} (handlers are <pipeline>/<handler>)")]
    UnknownHandler(String),
    /// The module is not a valid plugin, or refused its configuration.
    #[error("the module was refused: {0}")]
    Invalid(LoadError),
    /// A sample event failed or did not produce what it expects.
    #[error("sample event {index} failed: {reason}")]
    SampleFailed {
        /// Which sample (0-based).
        index: usize,
        /// What happened.
        reason: String,
    },
    /// No version matches.
    #[error("no version {0} in the history")]
    NoSuchVersion(String),
    /// More than one version starts with the given sha256 prefix.
    #[error("{matches} versions in the history start with {prefix:?}; give more characters of the sha256")]
    AmbiguousVersion {
        /// The prefix given.
        prefix: String,
        /// How many versions start with it.
        matches: usize,
    },
    /// A rollback without a target, and every version in the history is the
    /// active one.
    #[error("{0} has only one version in its history; there is nothing to roll back to")]
    NothingToRollBack(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The handler's worker is gone.
    #[error("{0}")]
    Runtime(String),
}

impl DeployError {
    /// Stable code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownHandler(_) => "unknown_handler",
            Self::Invalid(e) => e.code(),
            Self::SampleFailed { .. } => "sample_failed",
            // One code for all three, as before they were told apart.
            Self::NoSuchVersion(_) | Self::AmbiguousVersion { .. } | Self::NothingToRollBack(_) => "no_such_version",
            Self::Store(e) => e.code(),
            Self::Runtime(_) => "worker",
        }
    }
}

/// Parse sample events for a deploy: each is either a plain event in the
/// JSON form, or `{ "event": {…}, "expect": "ok" | "retry" | "reject",
/// "emits": N }`.
///
/// # Errors
///
/// A message naming the sample and the problem.
pub fn parse_test_cases(ids: &IdGenerator, samples: &[serde_json::Value]) -> Result<Vec<TestCase>, String> {
    samples
        .iter()
        .enumerate()
        .map(|(i, sample)| {
            let (event, expect, emits) = match sample.get("event") {
                Some(event) => (
                    event.clone(),
                    sample.get("expect").map(|e| serde_json::from_value::<Expect>(e.clone())).transpose(),
                    sample.get("emits").and_then(serde_json::Value::as_u64),
                ),
                None => (sample.clone(), Ok(None), None),
            };
            let expect =
                expect.map_err(|e| format!("sample {i}: `expect` must be \"ok\", \"retry\" or \"reject\": {e}"))?;
            let json: crate::envelope::JsonEvent =
                serde_json::from_value(event).map_err(|e| format!("sample {i}: not an event: {e}"))?;
            let event = json.into_event(ids, "weir:deploy-test").map_err(|e| format!("sample {i}: {e}"))?;
            Ok(TestCase { event, expect, emits: emits.map(|n| n as usize) })
        })
        .collect()
}
