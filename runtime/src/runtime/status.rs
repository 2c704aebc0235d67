//! What the runtime reports about itself: a status line per subscription
//! (`weir status`, `GET /v1/status`, the dashboard), readiness (`GET
//! /ready`), and the sampler thread that feeds the rates and recent
//! quantiles.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;

use super::{Runtime, RuntimeError, Sub};
use crate::metrics::WINDOW;
use crate::store::{StoreError, SubscriptionStats};

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
    /// `disabled` (it turned itself off: a webhook sink whose receiver
    /// answered 410 Gone; `stopped` says why), `stopped` (the worker died
    /// and waits for its restart), `failing`
    /// (dead letters waiting), `retrying` (events parked) or `ok`.
    pub state: &'static str,
    /// Why the worker is stopped, while it is.
    pub stopped: Option<String>,
    /// The view its state serves (`view` in the configuration): a
    /// projection, queryable at `GET /v1/views/<view>/…`.
    pub view: Option<String>,
    /// Times the worker was restarted after dying, since start.
    pub restarts: u64,
    /// Rates and latency quantiles over the last few seconds.
    pub rate: crate::metrics::Rate,
    /// Plugin resource use.
    pub resources: Resources,
    /// Events the log's retention would have removed but this subscription
    /// still needs (not read yet, parked or dead-lettered), in the last
    /// complete retention pass; 0 when it holds nothing back.
    pub retention_held: u64,
    /// Durable timers the subscription's handler scheduled that have not
    /// fired (nor been cancelled) yet.
    pub timers_pending: u64,
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

impl Runtime {
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
        let retention_held = self.store.retention_held();
        let timers_pending = self.store.timer_counts()?;
        self.subs
            .iter()
            .map(|s| {
                let cursor = s.counters.cursor.load(Ordering::Relaxed);
                let parked = s.counters.parked.load(Ordering::Relaxed);
                let dlq = dlq_counts.get(&*s.name as &str).copied().unwrap_or(0);
                let disabled = s.counters.disabled.lock().unwrap_or_else(PoisonError::into_inner).clone();
                let stopped = s.counters.stopped.lock().unwrap_or_else(PoisonError::into_inner).clone();
                let state = if disabled.is_some() {
                    "disabled"
                } else if stopped.is_some() {
                    "stopped"
                } else if dlq > 0 {
                    "failing"
                } else if parked > 0 {
                    "retrying"
                } else {
                    "ok"
                };
                let lag_seconds = match head_time {
                    // A damaged event at the cursor (the worker stopped on it,
                    // or is about to quarantine it) leaves the lag in seconds
                    // unknown (0), as for the newest event above.
                    Some(newest) if cursor < head => match self.store.event(cursor) {
                        Ok(oldest) => {
                            oldest.map_or(0.0, |oldest| newest.saturating_sub(oldest.time).max(0) as f64 / 1e9)
                        }
                        Err(StoreError::RecordCorrupt { .. }) => 0.0,
                        Err(e) => return Err(e),
                    },
                    _ => 0.0,
                };
                let c = &s.counters;
                // One lock, taken and released here: a second lock() in the
                // struct literal below would wait on the first guard, which
                // lives to the end of the statement.
                let (plugin, plugin_version) = c.active.lock().unwrap_or_else(PoisonError::into_inner).clone();
                let view = self
                    .config
                    .pipelines
                    .iter()
                    .filter(|p| p.name == s.pipeline)
                    .flat_map(|p| &p.handlers)
                    .find(|h| h.name == s.handler)
                    .and_then(|h| h.view.clone());
                Ok(SubscriptionStatus {
                    view,
                    state,
                    // A disabled subscription's worker has stopped, for the
                    // reason it gave.
                    stopped: stopped.or(disabled),
                    restarts: c.restarts.load(Ordering::Relaxed),
                    name: s.name.to_string(),
                    pipeline: s.pipeline.clone(),
                    handler: s.handler.clone(),
                    topics: s.topics.clone(),
                    lag_seconds,
                    rate: crate::metrics::Rate::of(
                        &s.window.lock().unwrap_or_else(PoisonError::into_inner),
                        &c.sample(),
                    ),
                    resources: Resources {
                        fuel_consumed: c.fuel_consumed.load(Ordering::Relaxed),
                        memory_high_water_bytes: c.memory_high_water_bytes.load(Ordering::Relaxed),
                        plugin_log_lines: c.plugin_log_lines.load(Ordering::Relaxed),
                        plugin_log_lines_dropped: c.plugin_log_lines_dropped.load(Ordering::Relaxed),
                    },
                    plugin,
                    plugin_version,
                    cursor,
                    lag: head.saturating_sub(cursor),
                    parked,
                    dlq,
                    stats: self.store.stats(&s.name)?,
                    invocations: s.counters.invocations.load(Ordering::Relaxed),
                    last_failure: s.counters.last_failure.lock().unwrap_or_else(PoisonError::into_inner).clone(),
                    retention_held: retention_held.get(&*s.name as &str).map_or(0, |h| h.events),
                    timers_pending: timers_pending.get(&*s.name as &str).copied().unwrap_or(0),
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
        let mut disabled = Vec::new();
        for sub in &self.subs {
            // Turned off on purpose (a sink whose receiver is gone): the rest
            // serves on, so degraded, not not-ready.
            if let Some(why) = sub.counters.disabled.lock().unwrap_or_else(PoisonError::into_inner).clone() {
                disabled.push(format!("subscription {} is disabled: {why}", sub.name));
                continue;
            }
            let stopped = sub.counters.stopped.lock().unwrap_or_else(PoisonError::into_inner).clone();
            if let Some(why) = stopped {
                reasons.push(format!("subscription {} has stopped (restarting): {why}", sub.name));
            } else if sub.join.as_ref().is_none_or(JoinHandle::is_finished) {
                reasons.push(format!("subscription {} has stopped", sub.name));
            }
        }
        if !reasons.is_empty() {
            return Readiness { status: "not_ready", reasons };
        }
        let status = match self.status() {
            Ok(status) => status,
            Err(e) => return Readiness { status: "not_ready", reasons: vec![format!("reading status: {e}")] },
        };
        reasons.extend(disabled);
        reasons.extend(self.source_reasons());
        reasons.extend(self.cluster.as_ref().and_then(crate::cluster::Cluster::not_ready));
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
}

/// Sample every subscription's counters once a second into its window: the
/// source of events/s and recent p50/p99 in status and the dashboard.
pub(super) fn spawn_sampler(subs: &[Sub]) -> Result<(Sender<()>, JoinHandle<()>), RuntimeError> {
    let targets: Vec<_> = subs.iter().map(|s| (Arc::clone(&s.counters), Arc::clone(&s.window))).collect();
    let (stop, stopped) = mpsc::channel::<()>();
    let sample_all = move || {
        for (counters, window) in &targets {
            let mut window = window.lock().unwrap_or_else(PoisonError::into_inner);
            window.push_back(counters.sample());
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
