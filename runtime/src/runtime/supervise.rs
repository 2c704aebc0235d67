//! The supervisor of one subscription: its thread runs the worker, and when
//! the worker dies (a panic, or an error such as a failed commit) it says
//! so in status and metrics (`stopped`, with the reason), waits, and starts
//! a new worker from what is committed: the cursor, the parked events, and
//! the handler's active version in the registry. The wait doubles with each
//! death in a row, from [`FIRST_BACKOFF`] to [`MAX_BACKOFF`]; a worker that
//! ran for [`HEALTHY_AFTER`] starts the count again.
//!
//! While no worker runs, the supervisor answers the control messages
//! itself: a stop ends the thread, a swap is answered at once (the restart
//! loads the registry's active version, which the deploy already
//! recorded), and a redrive is refused with the reason.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::deploy::active_module;
use super::{RuntimeError, Sub};
use crate::config::{HandlerConfig, ReadyThresholds};
use crate::delivery::{Control, Invoke, Spec, SubscriptionCounters, Worker};
use crate::engine::Engine;
use crate::ids::IdGenerator;
use crate::metrics::WINDOW;
use crate::store::{StartPosition, Store, StoreError};

/// First wait before a restart.
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between two restarts.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A worker that ran this long before dying restarts after [`FIRST_BACKOFF`]
/// again.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);
/// Least wait after a worker died of a log record that does not decode:
/// the restarted worker reads it again and quarantines it if it is still
/// damaged, so the death stays visible for a while first.
pub(crate) const DAMAGED_RECORD_WAIT: Duration = Duration::from_secs(1);

/// How to build the handler again for a restart.
pub(super) enum Rebuild {
    /// From the handler's active version in the registry.
    Registry { engine: Engine, settings: Box<HandlerConfig> },
    /// Native code cannot be rebuilt: a dead worker stays stopped.
    Never,
    /// Native code that can be built again (a webhook sink from its
    /// configuration).
    Native(Box<dyn Fn() -> Box<dyn Invoke> + Send>),
}

/// A subscription whose invoker is native code (a webhook sink, a
/// JetStream sink, a saga coordinator), ready to start with the same
/// cursor, worker, supervisor and thread as a handler's.
pub(super) struct Native {
    pub(super) spec: Spec,
    /// The first invoker; `build` makes the next after a death.
    pub(super) invoker: Box<dyn Invoke>,
    pub(super) build: Box<dyn Fn() -> Box<dyn Invoke> + Send>,
    pub(super) pipeline: String,
    pub(super) handler: String,
    /// Where its cursor starts the first time.
    pub(super) from: StartPosition,
    pub(super) ready: ReadyThresholds,
    /// Its control channel (made by the caller: a sink's disabler holds
    /// the sender).
    pub(super) control: (Sender<Control>, Receiver<Control>),
    pub(super) counters: Arc<SubscriptionCounters>,
}

impl Native {
    /// Its first cursor from `from` and its place among retention's
    /// readers, exactly as for a handler; then its worker on a thread of
    /// its own, woken by every commit, under a supervisor that rebuilds it
    /// with `build` after a death.
    pub(super) fn start(
        self,
        store: &Store,
        ids: &Arc<IdGenerator>,
        stopping: &Arc<AtomicBool>,
    ) -> Result<Sub, RuntimeError> {
        let Self { spec, invoker, build, pipeline, handler, from, ready, control: (tx, rx), counters } = self;
        let name = Arc::clone(&spec.name);
        let rx = Arc::new(Mutex::new(rx));
        super::subscriptions::prepare(store, &name, &spec.patterns, from)?;
        let worker =
            Worker::new(spec.clone(), store.clone(), invoker, Arc::clone(ids), Arc::clone(&counters), Arc::clone(&rx))?;
        let wake = tx.clone();
        store.watch(Box::new(move || wake.send(Control::Wake).is_ok()));
        let topics = spec.patterns.iter().map(ToString::to_string).collect();
        let supervised = Supervised {
            spec,
            store: store.clone(),
            ids: Arc::clone(ids),
            counters: Arc::clone(&counters),
            rx,
            rebuild: Rebuild::Native(build),
            stopping: Arc::clone(stopping),
        };
        let join = std::thread::Builder::new()
            .name(format!("weir-sub-{name}"))
            .spawn(move || supervised.run(worker))
            .map_err(|e| RuntimeError::Worker(e.to_string()))?;
        Ok(Sub {
            name,
            pipeline,
            handler,
            topics,
            ready,
            window: Arc::new(Mutex::new(VecDeque::with_capacity(WINDOW + 1))),
            control: tx,
            counters,
            join: Some(join),
            switching: Mutex::new(()),
        })
    }
}

/// Everything a subscription's thread needs to run and restart its worker.
pub(super) struct Supervised {
    pub(super) spec: Spec,
    pub(super) store: Store,
    pub(super) ids: Arc<IdGenerator>,
    pub(super) counters: Arc<SubscriptionCounters>,
    pub(super) rx: Arc<Mutex<Receiver<Control>>>,
    pub(super) rebuild: Rebuild,
    /// Set by shutdown: a worker that returns then is not restarted.
    pub(super) stopping: Arc<AtomicBool>,
}

impl Supervised {
    /// Run `worker`, restarting it after each death, until told to stop.
    /// Answers how the last worker ended.
    pub(super) fn run(self, worker: Worker) -> Result<(), StoreError> {
        let mut worker = Some(worker);
        let mut backoff = FIRST_BACKOFF;
        loop {
            let started = Instant::now();
            let mut least = Duration::ZERO;
            let result = match worker.take() {
                Some(worker) => {
                    self.set_stopped(None);
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker.run())) {
                        Ok(Ok(())) => return Ok(()),
                        Ok(Err(e)) if self.stopping.load(Ordering::Acquire) => return Err(e),
                        Ok(Err(e @ StoreError::RecordCorrupt { .. })) => {
                            least = DAMAGED_RECORD_WAIT;
                            e.to_string()
                        }
                        Ok(Err(e)) => e.to_string(),
                        Err(panic) => format!("the worker panicked: {}", panic_message(&*panic)),
                    }
                }
                None => match self.rebuild() {
                    Ok(rebuilt) => {
                        worker = Some(rebuilt);
                        self.counters.restarts.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(subscription = %self.spec.name, "subscription worker restarted");
                        continue;
                    }
                    Err(why) => why,
                },
            };
            if self.stopping.load(Ordering::Acquire) {
                return Ok(());
            }
            if started.elapsed() >= HEALTHY_AFTER {
                backoff = FIRST_BACKOFF;
            }
            let wait = backoff.max(least);
            tracing::error!(
                subscription = %self.spec.name,
                error = %result,
                retry_in = ?wait,
                "subscription worker stopped; restarting it"
            );
            self.set_stopped(Some(result));
            if self.wait(wait) {
                return Ok(());
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn set_stopped(&self, why: Option<String>) {
        *self.counters.stopped.lock().unwrap_or_else(PoisonError::into_inner) = why;
    }

    /// A new worker from what is committed, running the registry's active
    /// version.
    fn rebuild(&self) -> Result<Worker, String> {
        let (engine, settings) = match &self.rebuild {
            Rebuild::Registry { engine, settings } => (engine, settings),
            Rebuild::Never => return Err("its native handler cannot be restarted".to_owned()),
            Rebuild::Native(build) => return self.worker(build()),
        };
        let name = &self.spec.name;
        let sha256 = self
            .store
            .active_version(name)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no active version of {name} in the registry"))?;
        let bytes = active_module(&self.store, name, &sha256).map_err(|e| e.to_string())?;
        let plugin = engine.load(&bytes).map_err(|e| format!("its active version does not load: {e}"))?;
        let handler = plugin
            .handler(settings.limits.clone(), settings.config.clone(), settings.mode)
            .map_err(|e| format!("its active version does not start: {e}"))?;
        self.worker(Box::new(handler))
    }

    /// A worker running `invoker` from what is committed.
    fn worker(&self, invoker: Box<dyn Invoke>) -> Result<Worker, String> {
        let mut spec = self.spec.clone();
        spec.plugin_name = invoker.name();
        Worker::new(
            spec,
            self.store.clone(),
            invoker,
            Arc::clone(&self.ids),
            Arc::clone(&self.counters),
            Arc::clone(&self.rx),
        )
        .map_err(|e| e.to_string())
    }

    /// Wait `backoff`, answering control messages as no worker runs.
    /// Answers whether to stop.
    fn wait(&self, backoff: Duration) -> bool {
        let deadline = Instant::now() + backoff;
        let rx = self.rx.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return self.stopping.load(Ordering::Acquire);
            }
            match rx.recv_timeout(left) {
                Ok(Control::Stop) | Err(RecvTimeoutError::Disconnected) => return true,
                Ok(Control::Swap { reply, .. }) => {
                    // The deploy recorded the version first: the restart
                    // runs it.
                    let _ = reply.send(());
                }
                Ok(Control::Exclusive { reply, .. }) => {
                    let _ =
                        reply.send(Err("the subscription's worker is not running; try again once it restarts".into()));
                }
                Ok(Control::Redrive { reply, .. }) => {
                    let why = self.counters.stopped.lock().unwrap_or_else(PoisonError::into_inner).clone();
                    let _ = reply.send(Err(StoreError::Unavailable(format!(
                        "subscription {} is restarting after a failure ({}); redrive again in a moment",
                        self.spec.name,
                        why.unwrap_or_default()
                    ))));
                }
                Ok(Control::Wake | Control::Panic) | Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }
}

/// The text a panic carries, if it carries text.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_owned())
}
