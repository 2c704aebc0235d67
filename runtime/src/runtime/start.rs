//! Starting and stopping: the supervisor. Start loads and validates every
//! configured plugin before the store is opened, opens the store, picks
//! each handler's active version from the registry, and starts one worker
//! thread per subscription plus the sampler. Stop lets every worker finish
//! its invocation and commit, then closes the store.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::deploy::{active_module, version_record};
use super::status::spawn_sampler;
use super::supervise::{Rebuild, Supervised};
use super::{Candidate, Runtime, RuntimeError, Sub};
use crate::config::Config;
use crate::delivery::{Control, Invoke, Spec, SubscriptionCounters, Worker};
use crate::engine::{Engine, EngineConfig};
use crate::error::LoadError;
use crate::ids::IdGenerator;
use crate::metrics::WINDOW;
use crate::names::SubscriptionName;
use crate::store::{Store, StoreOptions};

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
        create_data_dir(&config.data_dir)
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
            // Pool slots from the number of subscriptions, with headroom for
            // deploy probes and swaps, instead of a fixed count.
            // Each subscription may also hold an instance of every upcaster.
            pool_instances: EngineConfig::pool_instances_for(
                config.pipelines.iter().map(|p| p.handlers.len()).sum::<usize>() * (1 + config.upcasters.len()),
            ),
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
                let name = SubscriptionName::new(&pipeline.name, &handler.name).to_string();
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
        // The upcasters too, and every handler that declares the versions
        // it accepts is checked against them: each version that can arrive
        // on its topics must reach one it accepts.
        let upcasters = Arc::new(crate::upcast::Upcasters::load(&engine, config)?);
        for (name, pipeline, _, candidate) in &loaded {
            let accepts = match candidate {
                Candidate::Native(invoker) => invoker.schema_versions(),
                Candidate::File { instance, .. } => instance.schema_versions(),
            };
            upcasters
                .check_handler(&pipeline.topics, &accepts)
                .map_err(|reason| RuntimeError::Unreachable { subscription: name.clone(), reason })?;
        }
        let aggregates =
            crate::aggregate::Aggregates::load(&engine, &config.entities).map_err(|(ty, plugin, error)| {
                RuntimeError::Plugin { subscription: format!("entities/{ty}"), plugin, error }
            })?;
        let store = match store {
            Some(store) => store,
            None => Store::open(
                &config.data_dir.join("weir.redb"),
                StoreOptions {
                    retention: config.retention,
                    // Collect at least twice per retention window.
                    // The log's retention pass runs with it.
                    gc_interval: (config.retention / 2)
                        .clamp(Duration::from_millis(10), Duration::from_secs(60))
                        .min(config.retention_interval),
                    keep_versions: config.keep_versions,
                    entity_types: config.entities.iter().map(|e| e.entity_type.clone()).collect(),
                    ..StoreOptions::default()
                },
            )?,
        };
        aggregates.restore(&engine, &store, &config.entities)?;
        upcasters.restore(&engine, &store)?;
        // A handler runs its active version from the registry; the configured
        // file is only its initial version. Every module is loaded before any
        // worker starts: a bad one stops the start with nothing running.
        let mut prepared = Vec::new();
        for (name, pipeline, handler, candidate) in loaded {
            let (bytes, configured_plugin, configured) = match candidate {
                Candidate::Native(invoker) => {
                    prepared.push((name, pipeline, handler, invoker, false));
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
                    let instance =
                        plugin.handler(handler.limits.clone(), handler.config.clone(), handler.mode).map_err(fail)?;
                    // A deployed version is held to the same check as the file.
                    upcasters
                        .check_handler(&pipeline.topics, &instance.schema_versions())
                        .map_err(|reason| RuntimeError::Unreachable { subscription: name.clone(), reason })?;
                    instance
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
            prepared.push((name, pipeline, handler, Box::new(instance) as Box<dyn Invoke>, true));
        }
        // Compiled artifacts of modules no handler's history holds any more
        // are removed: the cache does not grow with every deploy ever made.
        let mut keep: Vec<String> = Vec::new();
        for (name, ..) in &prepared {
            keep.extend(store.history(name)?.into_iter().map(|(_, record)| record.sha256));
        }
        for name in upcasters.registry_names() {
            keep.extend(store.history(&name)?.into_iter().map(|(_, record)| record.sha256));
        }
        match engine.evict_artifacts(keep.iter().map(String::as_str)) {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "evicted compiled artifacts no handler uses"),
            Err(e) => tracing::warn!(error = %e, "could not evict unused compiled artifacts"),
        }
        let ids = Arc::new(IdGenerator::new());
        let stopping = Arc::new(AtomicBool::new(false));
        let mut subs = Vec::new();
        for (name, pipeline, handler, invoker, rebuildable) in prepared {
            let name: Arc<str> = Arc::from(name);
            let (tx, rx) = mpsc::channel();
            let counters = Arc::new(SubscriptionCounters::default());
            let plugin_name = invoker.name();
            let spec = Spec {
                name: Arc::clone(&name),
                plugin_name,
                patterns: pipeline.topics.clone(),
                retry: handler.retry.clone(),
                retention: config.retention,
                max_payload_bytes: config.max_payload_bytes,
                schemas: config.schemas.clone(),
                log_lines_per_second: handler.log_lines_per_second,
                timing: config.metrics,
                max_state_keys_per_scope: handler.limits.max_state_keys_per_scope(),
                max_timers_per_invocation: handler.limits.max_timers_per_invocation(),
                max_pending_timers: handler.limits.max_pending_timers(),
                upcasters: Some(Arc::clone(&upcasters)),
                // A plugin: nothing of the host's domains.
                own_reserved_topics: None,
            };
            let rx = Arc::new(Mutex::new(rx));
            super::subscriptions::prepare(&store, &name, &pipeline.topics, handler.from)?;
            let worker = Worker::new(
                spec.clone(),
                store.clone(),
                invoker,
                Arc::clone(&ids),
                Arc::clone(&counters),
                Arc::clone(&rx),
            )?;
            let wake = tx.clone();
            store.watch(Box::new(move || wake.send(Control::Wake).is_ok()));
            let supervised = Supervised {
                spec,
                store: store.clone(),
                ids: Arc::clone(&ids),
                counters: Arc::clone(&counters),
                rx,
                rebuild: if rebuildable {
                    Rebuild::Registry { engine: engine.clone(), settings: Box::new(handler.clone()) }
                } else {
                    Rebuild::Never
                },
                stopping: Arc::clone(&stopping),
            };
            let join = std::thread::Builder::new()
                .name(format!("weir-sub-{name}"))
                .spawn(move || supervised.run(worker))
                .map_err(|e| RuntimeError::Worker(e.to_string()))?;
            subs.push(Sub {
                name,
                pipeline: pipeline.name.clone(),
                handler: handler.name.clone(),
                topics: pipeline.topics.iter().map(ToString::to_string).collect(),
                ready: handler.ready.clone(),
                window: Arc::new(Mutex::new(VecDeque::with_capacity(WINDOW + 1))),
                control: tx,
                counters,
                join: Some(join),
                switching: Mutex::new(()),
            });
        }
        // In a cluster, sinks send only what the partitions this node owns
        // cause (cluster/mod.rs).
        let gate = config.cluster.as_ref().map(|c| crate::cluster::Cluster::gate(c, &stopping));
        // Webhook sinks: subscriptions `sinks/<name>` like any handler's.
        for sink in &config.sinks {
            subs.push(super::sinks::start_sink(sink, config, &store, &ids, &stopping, gate.clone())?);
        }
        // JetStream sinks too, publishing on the NATS runtime.
        let mut nats = crate::source::Nats::new(config).map_err(|e| RuntimeError::Worker(e.to_string()))?;
        for (sink, handle) in config.jetstream_sinks.iter().filter_map(|s| Some((s, nats.handle()?))) {
            subs.push(super::nats::start_jetstream_sink(sink, handle, config, &store, &ids, &stopping, gate.clone())?);
        }
        // Saga coordinators: subscriptions `sagas/<name>`.
        let mut sagas = Vec::with_capacity(config.sagas.len());
        for saga in &config.sagas {
            let metrics = Arc::new(crate::saga::SagaMetrics::default());
            subs.push(super::sagas::start_saga(saga, &metrics, config, &store, &ids, &stopping)?);
            sagas.push((saga.name.clone(), metrics));
        }
        let sampler = Some(spawn_sampler(&subs)?);
        tracing::info!(subscriptions = subs.len(), data_dir = %config.data_dir.display(), "runtime started");
        let consumers = crate::consumer::Consumers::new(store.clone(), config.consumers.clone())?;
        // Last: the durable consumers have registered as readers too.
        super::subscriptions::apply_retention(&store, &subs, config);
        nats.start_sources(config, &store, &ids);
        let cluster = match (&config.cluster, gate, nats.handle()) {
            (Some(cluster), Some(gate), Some(handle)) => Some(crate::cluster::Cluster::start(
                cluster,
                gate,
                handle,
                &store,
                &ids,
                subs.iter().map(|s| Arc::clone(&s.counters)).collect(),
                config.max_payload_bytes,
            )),
            _ => None,
        };
        let timers = super::timers::Firing::start(&store).map_err(|e| RuntimeError::Worker(e.to_string()))?;
        Ok(Self {
            store,
            ids,
            subs,
            sampler,
            config: config.clone(),
            engine,
            stopping,
            consumers,
            aggregates,
            upcasters,
            nats,
            replays: Default::default(),
            timers: Some(timers),
            dry_runs: super::dry_run::DryRuns::new(),
            sagas,
            cluster,
        })
    }

    /// Stop: every worker finishes its current invocation and commits, then
    /// the store commits and closes; within 30 seconds
    /// ([`Runtime::shutdown_within`] for another deadline).
    ///
    /// # Errors
    ///
    /// The first worker or store error met while stopping.
    pub fn shutdown(self) -> Result<(), RuntimeError> {
        self.shutdown_within(SHUTDOWN_DEADLINE)
    }

    /// [`Runtime::shutdown`], giving up after `deadline`: a worker stuck in
    /// an invocation, or a store whose last commit does not return, is left
    /// behind with the error [`RuntimeError::ShutdownTimeout`]. That is
    /// crash-safe: what was not committed is redone at the next start.
    ///
    /// # Errors
    ///
    /// The first worker or store error met while stopping, or the timeout.
    pub fn shutdown_within(mut self, deadline: Duration) -> Result<(), RuntimeError> {
        let until = Instant::now() + deadline;
        if let Some((stop, join)) = self.sampler.take() {
            drop(stop);
            let _ = join.join();
        }
        self.stopping.store(true, Ordering::Release);
        // No more timers fire; those due now fire at the next start.
        if let Some(timers) = self.timers.take() {
            timers.stop();
        }
        for sub in &self.subs {
            let _ = sub.control.send(Control::Stop);
        }
        let mut first_error = None;
        let mut left_behind = Vec::new();
        // The sources first: no more appends from them. The cluster's
        // partitions go too, released for other nodes to take at once.
        let mut nats = std::mem::replace(&mut self.nats, crate::source::Nats::none());
        nats.stop_sources();
        if let Some(cluster) = &self.cluster {
            cluster.stop();
        }
        for sub in &mut self.subs {
            let Some(join) = sub.join.take() else { continue };
            while !join.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
            if !join.is_finished() {
                left_behind.push(sub.name.to_string());
                continue;
            }
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
        // The JetStream sinks' workers have stopped: their runtime can go.
        nats.stop();
        // The last commit, on a thread of its own so a disk that does not
        // answer cannot hold the process past the deadline.
        let (tx, rx) = mpsc::channel();
        let store = self.store.clone();
        let closing = std::thread::Builder::new().name("weir-close".into()).spawn(move || {
            let closed = store.close();
            // This handle goes before the answer: the runtime's own is then
            // the last, and dropping it joins the writer and closes the file
            // before shutdown returns (a restart can open it at once).
            drop(store);
            let _ = tx.send(closed);
        });
        match closing {
            Ok(_) => match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_error.get_or_insert(RuntimeError::Store(e));
                }
                Err(_) => left_behind.push("the store's last commit".to_owned()),
            },
            Err(e) => {
                first_error.get_or_insert(RuntimeError::Worker(e.to_string()));
            }
        }
        if !left_behind.is_empty() {
            tracing::error!(?deadline, pending = ?left_behind, "shutdown deadline passed; stopping without them");
            return Err(RuntimeError::ShutdownTimeout { deadline, pending: left_behind });
        }
        tracing::info!("runtime stopped");
        first_error.map_or(Ok(()), Err)
    }
}

/// How long [`Runtime::shutdown`] waits for the workers and the last
/// commit.
pub(crate) const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(30);

/// Create the data directory (and any missing parent) readable by its owner
/// only (0700): it holds every event and the plugin registry. A directory
/// that exists is left as it is, with a warning when others may read it.
pub(crate) fn create_data_dir(dir: &std::path::Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                data_dir = %dir.display(),
                mode = format_args!("{:o}", mode & 0o777),
                "the data directory is accessible to other users; `chmod 700` it"
            );
        }
        Ok(())
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)
}
