//! Durable consumers: the log delivered over HTTP to services written in
//! anything, with ack tokens, redelivery after an ack wait, and the DLQ
//! after the last delivery. A consumer is a cursor plus its pending
//! deliveries (seq → attempts, state), all in the store
//! (`store/consumer.rs`); [`state`] is the state machine the store's
//! commands run, and [`Consumers`] is the service the HTTP API and the
//! runtime call: argument checks, long polls, counters, status.
//!
//! A long poll waits on the store's commit watchers (a new event) and on
//! this service's own wake-ups (an ack that makes room, a redrive, a
//! reset), and on the next pending entry's due time; it never polls.

mod request;
pub(crate) mod state;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, watch};

use crate::config::ConsumersConfig;
use crate::envelope::{JsonEvent, format_time};
use crate::http::models::{
    ACKS_MAX, AckItem, AckKind, AckResultInfo, ConsumerInfo, ConsumerRequest, DeliveryInfo, FETCH_MAX,
    FETCH_MAX_WAIT_SECS,
};
use crate::store::consumer::{AckDone, ConsumerView, FetchAnswer, StartAt};
use crate::store::{Reply, Store, StoreError, now_ms};
pub(crate) use request::*;
use state::{AckAction, ConsumerSpec, Stale, Token};

/// The DLQ's subscription names of consumers start with this:
/// `consumers/<name>`.
pub(crate) const DLQ_PREFIX: &str = "consumers/";

/// Default ack wait.
pub(crate) const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);
/// Default deliveries before the DLQ.
pub(crate) const DEFAULT_MAX_DELIVERIES: u32 = 5;
/// Default (and most) pending deliveries per consumer.
pub(crate) const DEFAULT_MAX_IN_FLIGHT: u32 = 1000;
/// The largest `max_in_flight` a consumer may ask for.
pub(crate) const MAX_IN_FLIGHT_LIMIT: u32 = 10_000;
/// Longest ack wait, nak delay or backoff step.
pub(crate) const MAX_ACK_WAIT: Duration = Duration::from_secs(24 * 3600);
/// Most backoff steps.
pub(crate) const MAX_BACKOFF_STEPS: usize = 32;
/// Most bytes of a term's reason kept.
pub(crate) const MAX_TERM_REASON_BYTES: usize = 1024;

/// Why a consumer operation failed. Codes are stable.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumerError {
    /// No consumer of that name.
    #[error("no consumer {0:?}")]
    NotFound(String),
    /// The server holds as many consumers as it may.
    #[error("this server already has {limit} consumers, its maximum (consumers.max_consumers); delete one first")]
    TooMany {
        /// `consumers.max_consumers`.
        limit: usize,
    },
    /// A setting or argument that does not fit.
    #[error("{0}")]
    Invalid(String),
    /// A single ack that was refused: nothing changed.
    #[error("ack refused: {0}")]
    Stale(String),
    /// Too many fetches wait already.
    #[error("{limit} fetches are waiting already (consumers.max_waiting_fetches); retry, or fetch without `wait`")]
    Busy {
        /// `consumers.max_waiting_fetches`.
        limit: usize,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ConsumerError {
    /// Stable machine code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "consumer_not_found",
            Self::TooMany { .. } => "too_many_consumers",
            Self::Invalid(_) => "invalid_consumer",
            Self::Stale(_) => "stale_ack",
            Self::Busy { .. } => "overloaded",
            Self::Store(e) => e.code(),
        }
    }
}

/// What one consumer did since the server started.
#[derive(Debug, Default)]
struct Counters {
    delivered: AtomicU64,
    redelivered: AtomicU64,
    acked: AtomicU64,
    naked: AtomicU64,
    dead_lettered: AtomicU64,
    stale_acks: AtomicU64,
}

/// A metric: its name, its help, and its value for one consumer.
type Metric<T> = (&'static str, &'static str, fn(&T) -> u64);

/// The durable consumers of a runtime.
pub(crate) struct Consumers {
    store: Store,
    limits: ConsumersConfig,
    /// Bumped after every commit that appended to the log, and by acks,
    /// redrives and resets: what a long poll waits on.
    wake: Arc<watch::Sender<u64>>,
    waiting: Arc<Semaphore>,
    counters: Mutex<HashMap<String, Arc<Counters>>>,
    /// Each consumer's low-water mark, registered with the log's retention
    /// as reader `consumers/<name>`, so retention never removes an event a
    /// consumer has not had acked.
    marks: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

impl std::fmt::Debug for Consumers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumers").field("limits", &self.limits).finish_non_exhaustive()
    }
}

/// Send a store command and await its answer.
async fn ask<T: Send + 'static>(send: impl FnOnce(Reply<T>)) -> Result<T, ConsumerError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    send(Box::new(move |r| drop(tx.send(r))));
    Ok(rx.await.map_err(|_| StoreError::Closed)??)
}

/// [`ask`], waiting on this thread (the blocking pool, the runtime).
fn ask_blocking<T: Send + 'static>(send: impl FnOnce(Reply<T>)) -> Result<T, ConsumerError> {
    let (tx, rx) = std::sync::mpsc::channel();
    send(Box::new(move |r| drop(tx.send(r))));
    Ok(rx.recv().map_err(|_| StoreError::Closed)??)
}

/// One ack's outcome as the API names it.
fn outcome(result: Result<AckDone, Stale>) -> &'static str {
    match result {
        Ok(AckDone::Acked) => "acked",
        Ok(AckDone::Naked) => "naked",
        Ok(AckDone::DeadLettered) => "dead_lettered",
        Err(Stale::Expired) => "expired",
        Err(Stale::Superseded) => "superseded",
        Err(Stale::Unknown) => "unknown",
    }
}

impl Consumers {
    /// The consumers of `store`, woken by its commits, each registered
    /// with the log's retention.
    ///
    /// # Errors
    ///
    /// Storage errors reading the consumers.
    pub(crate) fn new(store: Store, limits: ConsumersConfig) -> Result<Self, StoreError> {
        let (wake, _) = watch::channel(0u64);
        let wake = Arc::new(wake);
        let weak = Arc::downgrade(&wake);
        store.watch(Box::new(move || match weak.upgrade() {
            Some(wake) => {
                wake.send_modify(|n| *n = n.wrapping_add(1));
                true
            }
            None => false,
        }));
        let waiting = Arc::new(Semaphore::new(limits.max_waiting_fetches));
        let this = Self {
            store,
            limits,
            wake,
            waiting,
            counters: Mutex::new(HashMap::new()),
            marks: Mutex::new(HashMap::new()),
        };
        for view in this.store.consumers()? {
            this.hold(&view.name, &view.record.spec.topics);
        }
        Ok(this)
    }

    /// Keep every event of `topics` from retention for consumer `name` until
    /// its next fetch says how far it has come (a new consumer, a reset or
    /// a redrive may move it back).
    fn hold(&self, name: &str, topics: &[String]) {
        let mut marks = self.marks.lock().unwrap_or_else(PoisonError::into_inner);
        let mark = Arc::clone(marks.entry(name.to_owned()).or_default());
        mark.store(0, Ordering::Release);
        let patterns = topics.iter().filter_map(|t| crate::topic::Pattern::parse(t).ok()).collect();
        self.store.register_reader(
            &format!("{DLQ_PREFIX}{name}"),
            crate::store::RetentionReader { patterns: Some(patterns), position: Some(mark) },
        );
    }

    /// After a fetch: the consumer needs nothing before `low_water`.
    fn moved(&self, name: &str, low_water: u64) {
        if let Some(mark) = self.marks.lock().unwrap_or_else(PoisonError::into_inner).get(name) {
            mark.store(low_water, Ordering::Release);
        }
    }

    fn counters(&self, name: &str) -> Arc<Counters> {
        let mut map = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(map.entry(name.to_owned()).or_default())
    }

    fn poke(&self) {
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn info(&self, view: &ConsumerView, head: u64, dlq: u64) -> ConsumerInfo {
        let c = self.counters(&view.name);
        let spec = &view.record.spec;
        ConsumerInfo {
            name: view.name.clone(),
            topics: spec.topics.clone(),
            from: view.record.from.clone(),
            ack_wait_ms: spec.ack_wait_ms,
            max_deliveries: spec.max_deliveries,
            backoff_ms: spec.backoff_ms.clone(),
            per_key_ordering: spec.per_key_ordering,
            max_in_flight: spec.max_in_flight,
            cursor: view.record.cursor,
            lag: head.saturating_sub(view.record.cursor),
            in_flight: view.pending,
            dlq,
            delivered: c.delivered.load(Ordering::Relaxed),
            redelivered: c.redelivered.load(Ordering::Relaxed),
            acked: c.acked.load(Ordering::Relaxed),
            stale_acks: c.stale_acks.load(Ordering::Relaxed),
            created: format_time(
                i64::try_from(view.record.created_at_ms).unwrap_or(i64::MAX).saturating_mul(1_000_000),
            ),
        }
    }

    /// Every consumer with its lag, pending deliveries, DLQ entries and
    /// counters (status, `/metrics`, `GET /v1/consumers`).
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub(crate) fn list(&self) -> Result<Vec<ConsumerInfo>, StoreError> {
        let head = self.store.head();
        let views = self.store.consumers()?;
        if views.is_empty() {
            return Ok(Vec::new());
        }
        let dlq = self.store.dlq_counts()?;
        Ok(views
            .iter()
            .map(|v| {
                let count = dlq.get(&format!("{DLQ_PREFIX}{}", v.name)).copied().unwrap_or(0);
                self.info(v, head, count)
            })
            .collect())
    }

    /// One consumer.
    ///
    /// # Errors
    ///
    /// [`ConsumerError::NotFound`], storage errors.
    pub(crate) fn get(&self, name: &str) -> Result<ConsumerInfo, ConsumerError> {
        self.list()?.into_iter().find(|c| c.name == name).ok_or_else(|| ConsumerError::NotFound(name.to_owned()))
    }

    /// Create a consumer or change its settings; answers whether it was
    /// created.
    ///
    /// # Errors
    ///
    /// [`ConsumerError::Invalid`], [`ConsumerError::TooMany`], storage
    /// errors.
    pub(crate) async fn put(
        &self,
        name: &str,
        request: &ConsumerRequest,
    ) -> Result<(bool, ConsumerInfo), ConsumerError> {
        check_name(name)?;
        let spec = spec(request)?;
        let from = start_at(request.from.as_deref().unwrap_or("beginning"))?;
        // Held from before the commit: retention must not remove what the
        // new consumer starts from.
        self.hold(name, &spec.topics);
        let (store, owned, max) = (self.store.clone(), name.to_owned(), self.limits.max_consumers);
        let (created, _) = ask(move |reply| store.consumer_put(owned, spec, from, max, reply)).await??;
        self.poke();
        let store = self.store.clone();
        let owned = name.to_owned();
        let (view, dlq) = tokio::task::spawn_blocking(move || {
            let view = store.consumers()?.into_iter().find(|v| v.name == owned);
            let dlq = store.dlq_counts()?.get(&format!("{DLQ_PREFIX}{owned}")).copied().unwrap_or(0);
            Ok::<_, StoreError>((view, dlq))
        })
        .await
        .map_err(|e| StoreError::Storage(e.to_string()))??;
        let view = view.ok_or_else(|| ConsumerError::NotFound(name.to_owned()))?;
        Ok((created, self.info(&view, self.store.head(), dlq)))
    }

    /// Delete a consumer, its pending deliveries and its DLQ entries.
    ///
    /// # Errors
    ///
    /// [`ConsumerError::NotFound`], storage errors.
    pub(crate) async fn delete(&self, name: &str) -> Result<(), ConsumerError> {
        let (store, owned) = (self.store.clone(), name.to_owned());
        if !ask(move |reply| store.consumer_delete(owned, reply)).await? {
            return Err(ConsumerError::NotFound(name.to_owned()));
        }
        self.counters.lock().unwrap_or_else(PoisonError::into_inner).remove(name);
        self.marks.lock().unwrap_or_else(PoisonError::into_inner).remove(name);
        self.store.unregister_reader(&format!("{DLQ_PREFIX}{name}"));
        Ok(())
    }

    /// Move a consumer to a start position, forgetting its pending
    /// deliveries.
    ///
    /// # Errors
    ///
    /// [`ConsumerError::NotFound`], [`ConsumerError::Invalid`], storage
    /// errors.
    pub(crate) async fn reset(&self, name: &str, from: &str) -> Result<(), ConsumerError> {
        let from = start_at(from)?;
        self.moved(name, 0);
        let (store, owned) = (self.store.clone(), name.to_owned());
        ask(move |reply| store.consumer_reset(owned, from, reply)).await??;
        self.poke();
        Ok(())
    }

    /// Up to `max` deliveries, waiting up to `wait` for a first one (or
    /// until `stop` says the server stops).
    ///
    /// # Errors
    ///
    /// [`ConsumerError::Invalid`] for `max` or `wait` out of bounds,
    /// [`ConsumerError::Busy`] when too many fetches wait already,
    /// [`ConsumerError::NotFound`], storage errors.
    pub(crate) async fn fetch(
        &self,
        name: &str,
        max: Option<usize>,
        wait: Option<&str>,
        mut stop: Option<watch::Receiver<bool>>,
    ) -> Result<Vec<DeliveryInfo>, ConsumerError> {
        let max = max.unwrap_or(1);
        if max == 0 || max > FETCH_MAX {
            return Err(ConsumerError::Invalid(format!("`max` is 1 to {FETCH_MAX}, not {max}")));
        }
        let wait = match wait {
            Some(text) => duration("wait", text, Duration::from_secs(FETCH_MAX_WAIT_SECS))?,
            None => Duration::ZERO,
        };
        let _permit = if wait.is_zero() {
            None
        } else {
            let limit = self.limits.max_waiting_fetches;
            Some(Arc::clone(&self.waiting).try_acquire_owned().map_err(|_| ConsumerError::Busy { limit })?)
        };
        let until = Instant::now() + wait;
        let mut woken = self.wake.subscribe();
        let counters = self.counters(name);
        loop {
            woken.borrow_and_update();
            let (store, owned) = (self.store.clone(), name.to_owned());
            let answer: FetchAnswer = ask(move |reply| store.consumer_fetch(owned, max, reply)).await??;
            counters.dead_lettered.fetch_add(answer.dead_lettered as u64, Ordering::Relaxed);
            self.moved(name, answer.low_water);
            if !answer.deliveries.is_empty() || Instant::now() >= until {
                counters.delivered.fetch_add(answer.deliveries.len() as u64, Ordering::Relaxed);
                let again = answer.deliveries.iter().filter(|d| d.token.attempt > 1).count();
                counters.redelivered.fetch_add(again as u64, Ordering::Relaxed);
                return Ok(answer
                    .deliveries
                    .iter()
                    .map(|d| DeliveryInfo {
                        token: d.token.to_string(),
                        seq: d.token.seq,
                        attempt: d.token.attempt,
                        event: JsonEvent::from_event(&d.event),
                    })
                    .collect());
            }
            let mut wake_at = until;
            if let Some(due) = answer.next_due_ms {
                let now = now_ms();
                wake_at = wake_at.min(Instant::now() + Duration::from_millis(due.saturating_sub(now)));
            }
            let stopped = async {
                match stop.as_mut() {
                    // The server stops (or its sender is gone): end the wait.
                    Some(stop) => drop(stop.wait_for(|stopping| *stopping).await),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = woken.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep_until(wake_at.into()).await;
                    }
                }
                () = tokio::time::sleep_until(wake_at.into()) => {}
                // The last fetch delivered nothing: answer that, so the
                // server's drain does not wait for the long poll.
                () = stopped => return Ok(Vec::new()),
            }
        }
    }

    /// Apply acks, naks and terms in order, in one commit; each one's
    /// outcome. Durable before this returns.
    ///
    /// # Errors
    ///
    /// [`ConsumerError::Invalid`] (too many, a bad delay),
    /// [`ConsumerError::NotFound`], storage errors. A refused ack is an
    /// outcome, not an error.
    pub(crate) async fn ack(&self, name: &str, items: Vec<AckItem>) -> Result<Vec<AckResultInfo>, ConsumerError> {
        if items.is_empty() || items.len() > ACKS_MAX {
            return Err(ConsumerError::Invalid(format!("give 1 to {ACKS_MAX} acks")));
        }
        let mut parsed = Vec::with_capacity(items.len());
        // Index into `items` of each parsed one; the others are invalid.
        let mut valid = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let Some(token) = Token::parse(&item.token) else { continue };
            let action = match item.action {
                AckKind::Ack => AckAction::Ack,
                AckKind::Nak => AckAction::Nak {
                    delay_ms: item
                        .delay
                        .as_deref()
                        .map(|d| duration("delay", d, MAX_ACK_WAIT).map(millis))
                        .transpose()?,
                },
                AckKind::Term => {
                    let mut reason = item.reason.clone().unwrap_or_default();
                    if reason.len() > MAX_TERM_REASON_BYTES {
                        let mut cut = MAX_TERM_REASON_BYTES;
                        while !reason.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        reason.truncate(cut);
                    }
                    AckAction::Term { reason }
                }
            };
            parsed.push((token, action));
            valid.push(i);
        }
        let results = if parsed.is_empty() {
            Vec::new()
        } else {
            let (store, owned) = (self.store.clone(), name.to_owned());
            ask(move |reply| store.consumer_ack(owned, parsed, reply)).await??
        };
        let counters = self.counters(name);
        let mut out: Vec<AckResultInfo> =
            items.iter().map(|i| AckResultInfo { token: i.token.clone(), outcome: "invalid_token".into() }).collect();
        let mut applied = false;
        for (i, result) in valid.into_iter().zip(results) {
            match result {
                Ok(AckDone::Acked) => counters.acked.fetch_add(1, Ordering::Relaxed),
                Ok(AckDone::Naked) => counters.naked.fetch_add(1, Ordering::Relaxed),
                Ok(AckDone::DeadLettered) => counters.dead_lettered.fetch_add(1, Ordering::Relaxed),
                Err(_) => counters.stale_acks.fetch_add(1, Ordering::Relaxed),
            };
            applied |= result.is_ok();
            out[i].outcome = outcome(result).into();
        }
        if applied {
            // Room for more under max_in_flight, or a nak to redeliver.
            self.poke();
        }
        Ok(out)
    }

    /// Move DLQ entries of consumer `name` back to its pending deliveries;
    /// answers how many were there.
    ///
    /// # Errors
    ///
    /// [`ConsumerError::NotFound`], storage errors.
    pub(crate) fn redrive_blocking(&self, name: &str, seqs: Vec<u64>) -> Result<usize, ConsumerError> {
        self.moved(name, 0);
        let (store, owned) = (self.store.clone(), name.to_owned());
        let moved = ask_blocking(move |reply| store.consumer_redrive(owned, seqs, reply))??;
        self.poke();
        Ok(moved)
    }

    /// Counters for `/metrics`: per consumer, (name, lag, in flight, dlq,
    /// delivered, redelivered, acked, naked, dead-lettered, stale acks).
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub(crate) fn render_metrics(&self, out: &mut String) -> Result<(), StoreError> {
        use std::fmt::Write as _;
        let list = self.list()?;
        if list.is_empty() {
            return Ok(());
        }
        let gauges: [Metric<ConsumerInfo>; 3] = [
            ("weir_consumer_lag", "Log entries past a consumer's cursor.", |c| c.lag),
            ("weir_consumer_in_flight", "A consumer's pending deliveries.", |c| c.in_flight),
            ("weir_consumer_dlq", "A consumer's DLQ entries.", |c| c.dlq),
        ];
        for (metric, help, value) in gauges {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} gauge");
            for c in &list {
                let _ = writeln!(out, "{metric}{{consumer=\"{}\"}} {}", c.name, value(c));
            }
        }
        let map = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        let counters: [Metric<Counters>; 6] = [
            ("weir_consumer_delivered_total", "Deliveries made, redeliveries included.", |c| {
                c.delivered.load(Ordering::Relaxed)
            }),
            ("weir_consumer_redelivered_total", "Redeliveries made.", |c| c.redelivered.load(Ordering::Relaxed)),
            ("weir_consumer_acked_total", "Acks taken.", |c| c.acked.load(Ordering::Relaxed)),
            ("weir_consumer_naked_total", "Naks taken.", |c| c.naked.load(Ordering::Relaxed)),
            ("weir_consumer_dead_lettered_total", "Deliveries moved to the DLQ.", |c| {
                c.dead_lettered.load(Ordering::Relaxed)
            }),
            ("weir_consumer_stale_acks_total", "Acks refused as stale.", |c| c.stale_acks.load(Ordering::Relaxed)),
        ];
        for (metric, help, value) in counters {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} counter");
            for c in &list {
                let n = map.get(&c.name).map_or(0, |k| value(k));
                let _ = writeln!(out, "{metric}{{consumer=\"{}\"}} {n}", c.name);
            }
        }
        Ok(())
    }
}
