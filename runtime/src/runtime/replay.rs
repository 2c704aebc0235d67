//! `weir replay`: rebuild a stateful handler's state (a projection's view)
//! from the log in a shadow copy while the live one keeps serving, then
//! switch to it in one commit (`delivery/replay.rs` has how). One replay
//! at a time per subscription; its progress is kept for status.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;

use super::Runtime;
use super::deploy::active_module;
use crate::delivery::{Control, ReplayProgress, Shadow, ShadowSpec};
use crate::names::SubscriptionName;
use crate::store::{RetentionReader, StartPosition, StoreError, now_ms, state_namespace};

/// How close to the live cursor the shadow gets before the live worker
/// pauses for the last stretch: the pause lasts about as long as these
/// events take.
const SWITCH_WITHIN: u64 = 2048;

/// Why a replay did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// No handler of that name.
    #[error("no handler subscription {0} in the running configuration")]
    NotFound(String),
    /// A replay of it is running already.
    #[error("a replay of {0} is running already")]
    Running(String),
    /// Its plugin keeps no state: there is nothing to rebuild.
    #[error("{0}'s plugin keeps no state (it imports no weir::state_* function): there is nothing to rebuild")]
    Stateless(String),
    /// Its active plugin version could not be started.
    #[error("{0}")]
    Plugin(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ReplayError {
    /// Stable code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "subscription_not_found",
            Self::Running(_) => "replay_running",
            Self::Stateless(_) => "replay_stateless",
            Self::Plugin(_) => "replay_plugin",
            Self::Store(e) => e.code(),
        }
    }
}

/// A replay's progress as status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ReplayInfo {
    /// `<pipeline>/<handler>`.
    pub subscription: String,
    /// `running`, `switching` (the live worker paused for the last
    /// stretch), `done` or `failed`.
    pub state: String,
    /// Where it started.
    pub from: u64,
    /// The next seq the shadow reads.
    pub position: u64,
    /// The live cursor it is heading for.
    pub target: u64,
    /// Events applied to the shadow.
    pub applied: u64,
    /// Events passed over (other topics, duplicates, parked or
    /// dead-lettered in the live subscription).
    pub skipped: u64,
    /// Events every attempt failed on in the shadow (not applied).
    pub failed: u64,
    /// The state generation it builds (and the live one after the switch).
    pub generation: u64,
    /// Start, ms since the Unix epoch.
    pub started_at_ms: u64,
    /// End, once done or failed.
    pub finished_at_ms: Option<u64>,
    /// Why it failed.
    pub error: Option<String>,
}

struct Run {
    info: Mutex<ReplayInfo>,
    progress: Arc<ReplayProgress>,
}

impl Run {
    fn snapshot(&self) -> ReplayInfo {
        let mut info = self.info.lock().unwrap_or_else(PoisonError::into_inner).clone();
        info.position = self.progress.position.load(Ordering::Relaxed);
        info.target = self.progress.target.load(Ordering::Relaxed);
        info.applied = self.progress.applied.load(Ordering::Relaxed);
        info.skipped = self.progress.skipped.load(Ordering::Relaxed);
        info.failed = self.progress.failed.load(Ordering::Relaxed);
        info
    }

    fn set(&self, f: impl FnOnce(&mut ReplayInfo)) {
        f(&mut self.info.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

/// The replays of a runtime, by subscription: the last one of each.
#[derive(Default)]
pub(crate) struct Replays(Mutex<HashMap<String, Arc<Run>>>);

impl Runtime {
    /// The last replay of `name`, if it had one since the start.
    #[must_use]
    pub fn replay_status(&self, name: &str) -> Option<ReplayInfo> {
        self.replays.0.lock().unwrap_or_else(PoisonError::into_inner).get(name).map(|r| r.snapshot())
    }

    /// Start rebuilding `name`'s state from `from` on a thread of its own;
    /// answers its first status. The live subscription keeps serving until
    /// the switch.
    ///
    /// # Errors
    ///
    /// See [`ReplayError`].
    pub fn replay(&self, name: &str, from: StartPosition) -> Result<ReplayInfo, ReplayError> {
        let (pipeline, handler) = self
            .config()
            .pipelines
            .iter()
            .flat_map(|p| p.handlers.iter().map(move |h| (p, h)))
            .find(|(p, h)| SubscriptionName::new(&p.name, &h.name).to_string() == name)
            .ok_or_else(|| ReplayError::NotFound(name.to_owned()))?;
        let sub = self.subs.iter().find(|s| &*s.name == name).ok_or_else(|| ReplayError::NotFound(name.to_owned()))?;
        let mut replays = self.replays.0.lock().unwrap_or_else(PoisonError::into_inner);
        if replays.get(name).is_some_and(|r| r.snapshot().finished_at_ms.is_none()) {
            return Err(ReplayError::Running(name.to_owned()));
        }
        let sha256 = self
            .store
            .active_version(name)?
            .ok_or_else(|| ReplayError::Plugin(format!("no active version of {name} in the registry")))?;
        let bytes = active_module(&self.store, name, &sha256).map_err(|e| ReplayError::Plugin(e.to_string()))?;
        let plugin = self
            .engine
            .load(&bytes)
            .map_err(|e| ReplayError::Plugin(format!("its active version does not load: {e}")))?;
        if !plugin.info().uses_state() {
            return Err(ReplayError::Stateless(name.to_owned()));
        }
        let invoker = plugin
            .handler(handler.limits.clone(), handler.config.clone(), handler.mode)
            .map_err(|e| ReplayError::Plugin(format!("its active version does not start: {e}")))?;
        let from = self.store.resolve_start(from)?;
        let generation = self.store.state_generation(name)? + 1;
        let progress = Arc::new(ReplayProgress::default());
        let run = Arc::new(Run {
            info: Mutex::new(ReplayInfo {
                subscription: name.to_owned(),
                state: "running".into(),
                from,
                position: from,
                target: 0,
                applied: 0,
                skipped: 0,
                failed: 0,
                generation,
                started_at_ms: now_ms(),
                finished_at_ms: None,
                error: None,
            }),
            progress: Arc::clone(&progress),
        });
        replays.insert(name.to_owned(), Arc::clone(&run));
        drop(replays);

        let spec = ShadowSpec {
            subscription: Arc::clone(&sub.name),
            patterns: pipeline.topics.clone(),
            max_attempts: handler.retry.max_attempts,
            max_state_keys_per_scope: handler.limits.max_state_keys_per_scope(),
            namespace: Arc::from(state_namespace(name, generation)),
            generation,
        };
        let store = self.store.clone();
        let control = sub.control.clone();
        let name = name.to_owned();
        let started = Arc::clone(&run);
        std::thread::Builder::new()
            .name(format!("weir-replay-{name}"))
            .spawn(move || {
                let result = drive(&store, &name, spec, Box::new(invoker), from, &progress, &control, &run);
                let now = now_ms();
                match result {
                    Ok(()) => {
                        tracing::info!(subscription = %name, generation, "replay done: the subscription reads its rebuilt state");
                        run.set(|i| {
                            i.state = "done".into();
                            i.finished_at_ms = Some(now);
                        });
                    }
                    Err(why) => {
                        tracing::error!(subscription = %name, error = %why, "replay failed; the live state is unchanged");
                        // The shadow is of no use now.
                        if let Err(e) = store.delete_state_namespace_blocking(&state_namespace(&name, generation)) {
                            tracing::warn!(subscription = %name, error = %e, "could not delete a failed replay's state");
                        }
                        run.set(|i| {
                            i.state = "failed".into();
                            i.error = Some(why);
                            i.finished_at_ms = Some(now);
                        });
                    }
                }
            })
            .map_err(|e| ReplayError::Plugin(format!("cannot start the replay thread: {e}")))?;
        Ok(started.snapshot())
    }
}

/// The replay's thread: catch up in the background, then switch with the
/// live worker paused, then delete the old generation.
#[allow(clippy::too_many_arguments)]
fn drive(
    store: &crate::store::Store,
    name: &str,
    spec: ShadowSpec,
    invoker: Box<dyn crate::delivery::Invoke>,
    from: u64,
    progress: &Arc<ReplayProgress>,
    control: &mpsc::Sender<Control>,
    run: &Run,
) -> Result<(), String> {
    let generation = spec.generation;
    let reader = format!("{name}#replay");
    // Retention keeps what the shadow has still to read.
    store.register_reader(
        &reader,
        RetentionReader { patterns: Some(spec.patterns.clone()), position: Some(Arc::clone(&progress.position)) },
    );
    let result = (|| {
        let mut shadow =
            Shadow::new(store.clone(), spec, invoker, from, Arc::clone(progress)).map_err(|e| e.to_string())?;
        loop {
            let target = store.committed_cursor(name).map_err(|e| e.to_string())?.unwrap_or(0);
            if target.saturating_sub(shadow.position()) <= SWITCH_WITHIN {
                break;
            }
            shadow.run_to(target).map_err(|e| e.to_string())?;
        }
        run.set(|i| i.state = "switching".into());
        let (reply, answer) = mpsc::channel();
        let work = Box::new(move |cursor: u64| shadow.finish(cursor).map_err(|e| e.to_string()));
        control.send(Control::Exclusive { work, reply }).map_err(|_| "the subscription is gone".to_owned())?;
        answer.recv().map_err(|_| "the subscription's worker went away before the switch".to_owned())?
    })();
    store.unregister_reader(&reader);
    result?;
    // The old generation: nobody reads it any more.
    let old = state_namespace(name, generation - 1);
    store.delete_state_namespace_blocking(&old).map_err(|e| format!("switched, but the old state was not deleted: {e}"))
}
