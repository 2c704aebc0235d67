//! The running system: the store, the engine, one worker thread per
//! subscription, and the operations on them. One file per concern:
//!
//! | file | concern |
//! |---|---|
//! | `start.rs` | start (plugins validated before the store opens), stop |
//! | `supervise.rs` | each subscription's supervisor: a dead worker is reported and restarted with backoff |
//! | `timers.rs` | the durable timers' firing task |
//! | `status.rs` | status lines, readiness, the sampler thread |
//! | `prometheus.rs` | the `/metrics` exposition |
//! | `deploy.rs` | deploy, rollback, the plugin registry |
//! | `samples.rs` | sample events a deploy runs first |
//! | `dlq.rs` | DLQ list, redrive, purge |
//! | `log.rs` | reading the log: filtered pages, lookups by position and id, lineage |
//! | `nats.rs` | JetStream sinks (subscriptions `sinks/<name>`), the sources' status |
//! | `subscriptions.rs` | where a new subscription starts, retention readers, orphans: list and delete |
//! | `sagas.rs` | saga coordinators (subscriptions `sagas/<name>`): start, list, show, operator actions |
//! | `error.rs` | [`RuntimeError`] |

mod deploy;
mod dlq;
mod dry_run;
mod error;
mod log;
mod nats;
mod prometheus;
mod replay;
mod sagas;
mod samples;
mod sinks;
mod start;
mod state;
mod status;
mod subscriptions;
mod supervise;
mod timers;
mod views;

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use weir_abi::Event;

pub use deploy::{DeployError, DeployReport};
pub use dlq::RedriveReport;
pub use dry_run::{
    DRY_RUN_DEFAULT_EVENTS, DRY_RUN_MAX_EVENTS, DryRunDifference, DryRunError, DryRunReport, OutputSummary,
};
pub use error::RuntimeError;
pub use log::{
    LINEAGE_MAX_CAUSED, LINEAGE_MAX_DEPTH, LOG_MAX_ANSWER_BYTES, LOG_MAX_SCANNED, LOG_MAX_SCANNED_BYTES,
    LOG_MAX_TOPIC_PATTERNS, Lineage, LogFilter, LogPage, SubscriptionLineage,
};
pub use replay::{ReplayError, ReplayInfo};
pub use sagas::{SAGA_PAGE_MAX, SAGA_SCAN_MAX, SagaActionReport, SagaError, SagaPage};
pub use samples::{Expect, TestCase, parse_test_cases};
pub use state::{STATE_PAGE_MAX, ScopePage, StatePage};
pub use status::{Readiness, Resources, SubscriptionStatus};
pub use subscriptions::{HeldBackInfo, SubscriptionEntry, SubscriptionError};
pub use timers::TIMERS_PAGE_MAX;
pub use views::{VIEW_MAX_BYTES, VIEW_MAX_ENTRIES, VIEW_PAGE_MAX, ViewAnswer, ViewEntry, ViewError};

use crate::config::{Config, ReadyThresholds};
use crate::delivery::{Control, Invoke, SubscriptionCounters};
use crate::engine::Engine;
use crate::ids::IdGenerator;
use crate::metrics::Sample;
use crate::store::{Published, Store, StoreError};

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
    control: Sender<Control>,
    counters: Arc<SubscriptionCounters>,
    join: Option<JoinHandle<Result<(), StoreError>>>,
    /// Held through a deploy or rollback, so two of them on one handler do
    /// not interleave (each compares with the active version first).
    switching: Mutex<()>,
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
    /// Set by shutdown, so the supervisors stop instead of restarting.
    stopping: Arc<std::sync::atomic::AtomicBool>,
    /// The durable consumers (`consumer/`).
    consumers: crate::consumer::Consumers,
    /// The replays started since the start (`replay.rs`).
    replays: replay::Replays,
    dry_runs: dry_run::DryRuns,
    /// The entity types' aggregates (`aggregate/`).
    aggregates: crate::aggregate::Aggregates,
    /// The upcasters (`upcast/`), shared with every worker.
    upcasters: Arc<crate::upcast::Upcasters>,
    /// The NATS runtime, the JetStream sources on it (`source/`).
    nats: crate::source::Nats,
    /// The durable timers' firing task (`timers.rs`).
    timers: Option<timers::Firing>,
    /// Each saga's metrics, by name (`saga/`).
    sagas: Vec<(String, Arc<crate::saga::SagaMetrics>)>,
    /// `[cluster]`: the coordinator of this node, when configured.
    cluster: Option<crate::cluster::Cluster>,
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

    /// The entity types' aggregates.
    pub(crate) fn aggregates(&self) -> &crate::aggregate::Aggregates {
        &self.aggregates
    }

    /// The Wasm engine.
    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The durable consumers.
    pub(crate) fn consumers(&self) -> &crate::consumer::Consumers {
        &self.consumers
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

    /// A subscription's counters now; `None` for an unknown name.
    #[must_use]
    pub fn counters(&self, subscription: &str) -> Option<crate::CountersSnapshot> {
        self.subs.iter().find(|s| &*s.name == subscription).map(|s| s.counters.snapshot())
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
        // In a cluster the input goes to the shared stream, whose owner of
        // each event's partition appends it to its log.
        if let Some(cluster) = &self.cluster {
            cluster.publish(events, reply);
            return;
        }
        self.store.publish(events, reply);
    }

    /// Fault injection for tests: make `subscription`'s worker panic
    /// between two events, as a bug in the host would. Its supervisor
    /// reports it `stopped` and restarts it. Answers whether the message was
    /// delivered.
    #[doc(hidden)]
    pub fn inject_worker_panic(&self, subscription: &str) -> bool {
        self.subs.iter().find(|s| &*s.name == subscription).is_some_and(|s| s.control.send(Control::Panic).is_ok())
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
}
