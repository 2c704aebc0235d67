//! The running system: store, engine, one worker thread per subscription.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use weir_abi::Event;

use crate::config::Config;
use crate::engine::{Engine, EngineConfig};
use crate::error::{EngineError, LoadError};
use crate::ids::IdGenerator;
use crate::store::{DlqEntry, DlqFilter, Published, Store, StoreError, StoreOptions, SubscriptionStats};
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
    #[error("handler {subscription}: plugin {plugin} refused")]
    Plugin {
        /// The subscription.
        subscription: String,
        /// The plugin path.
        plugin: String,
        /// Why.
        source: LoadError,
    },
    /// The data directory cannot be created.
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A subscription named in a request does not exist.
    #[error("no subscription named {0:?}")]
    UnknownSubscription(String),
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
            Self::Plugin { source, .. } => source.code(),
            Self::DataDir { .. } => "data_dir",
            Self::UnknownSubscription(_) => "unknown_subscription",
            Self::Worker(_) => "worker",
        }
    }
}

struct Sub {
    name: Arc<str>,
    plugin: String,
    plugin_version: String,
    control: Sender<Control>,
    counters: Arc<SubscriptionCounters>,
    join: Option<JoinHandle<Result<(), StoreError>>>,
}

/// A point-in-time view of one subscription.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriptionStatus {
    /// `<pipeline>/<handler>`.
    pub name: String,
    /// Plugin name.
    pub plugin: String,
    /// sha256 of the active plugin module.
    pub plugin_version: String,
    /// Committed cursor.
    pub cursor: u64,
    /// Events in the log not yet read by this subscription.
    pub lag: u64,
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
    config: Config,
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
            .map_err(|source| RuntimeError::DataDir { path: config.data_dir.display().to_string(), source })?;
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
        // Load every plugin before opening the store: a bad plugin must not
        // leave a half-started runtime behind.
        let mut prepared = Vec::new();
        for pipeline in &config.pipelines {
            for handler in &pipeline.handlers {
                let name = format!("{}/{}", pipeline.name, handler.name);
                if let Some(invoker) = native.remove(&name) {
                    prepared.push((name, pipeline.topics.clone(), handler.retry.clone(), invoker));
                    continue;
                }
                let fail = |source| RuntimeError::Plugin {
                    subscription: name.clone(),
                    plugin: handler.plugin.display().to_string(),
                    source,
                };
                let plugin = engine.load_file(&handler.plugin).map_err(fail)?;
                let instance =
                    plugin.handler(handler.limits.clone(), handler.config.clone(), handler.mode).map_err(fail)?;
                prepared.push((
                    name,
                    pipeline.topics.clone(),
                    handler.retry.clone(),
                    Box::new(instance) as Box<dyn Invoke>,
                ));
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
        let ids = Arc::new(IdGenerator::new());
        let mut subs = Vec::new();
        for (name, patterns, retry, invoker) in prepared {
            let name: Arc<str> = Arc::from(name);
            let (tx, rx) = mpsc::channel();
            let counters = Arc::new(SubscriptionCounters::default());
            let plugin_name = invoker.name();
            let plugin_version = invoker.version();
            let spec = Spec {
                name: Arc::clone(&name),
                plugin_name: plugin_name.clone(),
                patterns,
                retry,
                retention: config.retention,
                max_payload_bytes: config.max_payload_bytes,
            };
            let worker = Worker::new(spec, store.clone(), invoker, Arc::clone(&ids), Arc::clone(&counters), rx)?;
            let wake = tx.clone();
            store.watch(Box::new(move || wake.send(Control::Wake).is_ok()));
            let join = std::thread::Builder::new()
                .name(format!("weir-sub-{name}"))
                .spawn(move || {
                    let result = worker.run();
                    if let Err(e) = &result {
                        tracing::error!(error = %e, "subscription worker stopped");
                    }
                    result
                })
                .map_err(|e| RuntimeError::Worker(e.to_string()))?;
            subs.push(Sub { name, plugin: plugin_name, plugin_version, control: tx, counters, join: Some(join) });
        }
        tracing::info!(subscriptions = subs.len(), data_dir = %config.data_dir.display(), "runtime started");
        Ok(Self { store, ids, subs, config: config.clone() })
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
        let dlq = self.store.dlq(&DlqFilter::default())?;
        let mut dlq_counts: BTreeMap<&str, u64> = BTreeMap::new();
        for entry in &dlq {
            *dlq_counts.entry(entry.subscription.as_str()).or_default() += 1;
        }
        self.subs
            .iter()
            .map(|s| {
                let cursor = s.counters.cursor.load(Ordering::Relaxed);
                Ok(SubscriptionStatus {
                    name: s.name.to_string(),
                    plugin: s.plugin.clone(),
                    plugin_version: s.plugin_version.clone(),
                    cursor,
                    lag: head.saturating_sub(cursor),
                    parked: s.counters.parked.load(Ordering::Relaxed),
                    dlq: dlq_counts.get(&*s.name).copied().unwrap_or(0),
                    stats: self.store.stats(&s.name)?,
                    invocations: s.counters.invocations.load(Ordering::Relaxed),
                    last_failure: s.counters.last_failure.lock().unwrap_or_else(PoisonError::into_inner).clone(),
                })
            })
            .collect()
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

    /// Stop: every worker finishes its current invocation and commits, then
    /// the store commits and closes.
    ///
    /// # Errors
    ///
    /// The first worker or store error met while stopping.
    pub fn shutdown(mut self) -> Result<(), RuntimeError> {
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

impl From<std::sync::mpsc::RecvError> for RuntimeError {
    fn from(_: std::sync::mpsc::RecvError) -> Self {
        Self::Worker("a worker stopped".into())
    }
}
