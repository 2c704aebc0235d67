//! Starting saga coordinators: each `[[sagas]]` entry becomes a
//! subscription `sagas/<name>` with its own worker and supervisor, exactly
//! as a sink does, with a [`Coordinator`] as what it invokes.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;

use super::supervise::Native;
use super::{RuntimeError, Sub};
use crate::config::{Config, DEFAULT_LOG_LINES_PER_SECOND, RetryPolicy, SAGA_PIPELINE, SagaConfig};
use crate::delivery::{Invoke, Spec, SubscriptionCounters};
use crate::ids::IdGenerator;
use crate::saga::{Coordinator, SagaMetrics};
use crate::store::Store;
use crate::topic::Pattern;

/// Start `saga`'s coordinator: its worker on a thread of its own, under a
/// supervisor that rebuilds it from its declaration after a death.
pub(super) fn start_saga(
    saga: &SagaConfig,
    metrics: &Arc<SagaMetrics>,
    config: &Config,
    store: &Store,
    ids: &Arc<IdGenerator>,
    stopping: &Arc<AtomicBool>,
) -> Result<Sub, RuntimeError> {
    let name: Arc<str> = Arc::from(saga.subscription());
    let (tx, rx) = mpsc::channel();
    let counters = Arc::new(SubscriptionCounters::default());
    let build = {
        let saga = Arc::new(saga.clone());
        let metrics = Arc::clone(metrics);
        move || Box::new(Coordinator::new(Arc::clone(&saga), Arc::clone(&metrics))) as Box<dyn Invoke>
    };
    let invoker = build();
    let topics: Vec<Pattern> = saga
        .topics()
        .iter()
        .map(|t| Pattern::parse(t))
        .collect::<Result<_, _>>()
        .map_err(|e| RuntimeError::Worker(format!("saga {}: {e}", saga.name)))?;
    let spec = Spec {
        name: Arc::clone(&name),
        plugin_name: invoker.name(),
        patterns: topics.clone(),
        // Only the store failing fails a transition (a bad start event is
        // dead-lettered at once): retried as a handler's would be.
        retry: RetryPolicy::default(),
        retention: config.retention,
        max_payload_bytes: config.max_payload_bytes,
        schemas: config.schemas.clone(),
        log_lines_per_second: DEFAULT_LOG_LINES_PER_SECOND,
        timing: config.metrics,
        // Every instance is one key of the shared scope, and so is each
        // status count.
        max_state_keys_per_scope: saga.max_instances + crate::saga::SagaStatus::ALL.len(),
        // A transition sets or cancels at most five timers; an instance has
        // at most two pending (its deadline, and its attempt's timeout or
        // backoff).
        max_timers_per_invocation: 16,
        max_pending_timers: saga.max_instances.saturating_mul(2).saturating_add(16),
        // A saga coordinator takes events as stored.
        upcasters: None,
        // Its timers and failure alerts are on its own topics of the
        // reserved domain; no other saga's, and no plugin's, may be.
        own_reserved_topics: Some(saga.own_topics_prefix()),
    };
    let sub = Native {
        spec,
        invoker,
        build: Box::new(build),
        pipeline: SAGA_PIPELINE.to_owned(),
        handler: saga.name.clone(),
        from: saga.from,
        ready: crate::config::ReadyThresholds::default(),
        control: (tx, rx),
        counters,
    }
    .start(store, ids, stopping)?;
    tracing::info!(subscription = %name, steps = saga.steps.len(), "saga coordinator started");
    Ok(sub)
}

/// Most instances one page of `GET /v1/sagas` answers.
pub const SAGA_PAGE_MAX: usize = 500;
/// Most instances one page reads to find those of the status asked for:
/// a page with few matches ends early, with where to go on.
pub const SAGA_SCAN_MAX: usize = 10_000;
/// How long an operator's action waits for the coordinator to take it.
const ADMIN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a saga query or action failed.
#[derive(Debug, thiserror::Error)]
pub enum SagaError {
    /// No saga of that name is declared.
    #[error("no saga {0:?} is declared")]
    UnknownSaga(String),
    /// No instance with that id.
    #[error("no saga instance {0:?}")]
    NotFound(String),
    /// The action does not apply to the instance as it stands.
    #[error("{0}")]
    Conflict(String),
    /// A bad cursor or parameter.
    #[error("{0}")]
    BadRequest(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl SagaError {
    /// Stable code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownSaga(_) => "unknown_saga",
            Self::NotFound(_) => "saga_not_found",
            Self::Conflict(_) => "saga_conflict",
            Self::BadRequest(_) => "bad_request",
            Self::Store(e) => e.code(),
        }
    }
}

/// One page of saga instances, in (saga, id) order.
#[derive(Debug, Clone)]
pub struct SagaPage {
    /// The instances found (without their timelines' nonce).
    pub sagas: Vec<crate::saga::Instance>,
    /// Where the next page starts (`<saga>/<id>`), when there may be more.
    pub next: Option<String>,
}

/// What an operator's action did.
#[derive(Debug, Clone)]
pub struct SagaActionReport {
    /// The instance once the coordinator took the action, or as it was
    /// when the wait ran out (`taken` false).
    pub instance: crate::saga::Instance,
    /// Whether the coordinator took it within the wait.
    pub taken: bool,
}

impl super::Runtime {
    /// The declared sagas' names.
    #[must_use]
    pub fn saga_names(&self) -> Vec<String> {
        self.config.sagas.iter().map(|s| s.name.clone()).collect()
    }

    fn saga_config(&self, name: &str) -> Result<&SagaConfig, SagaError> {
        self.config.sagas.iter().find(|s| s.name == name).ok_or_else(|| SagaError::UnknownSaga(name.to_owned()))
    }

    /// How many instances of `saga` are in each status now (committed).
    ///
    /// # Errors
    ///
    /// An unknown saga, or the store's error.
    pub fn saga_counts(&self, saga: &str) -> Result<Vec<(crate::saga::SagaStatus, u64)>, SagaError> {
        let cfg = self.saga_config(saga)?;
        let scope = crate::store::ScopeId { kind: crate::store::KIND_SHARED, name: String::new() };
        let mut out = Vec::with_capacity(crate::saga::SagaStatus::ALL.len());
        for status in crate::saga::SagaStatus::ALL {
            let value = self.store.state_get(cfg.subscription().as_str(), &scope, &crate::saga::count_key(status))?;
            out.push((status, value.map_or(0, |v| crate::saga::count_value(&v))));
        }
        Ok(out)
    }

    /// Append the sagas' lines to `/metrics`.
    pub(super) fn render_saga_metrics(&self, out: &mut String) -> Result<(), crate::store::StoreError> {
        use std::fmt::Write as _;
        if self.sagas.is_empty() {
            return Ok(());
        }
        crate::metrics::header(out, "weir_sagas", "gauge", "Saga instances by saga and status (committed).");
        for (name, _) in &self.sagas {
            let counts = self.saga_counts(name).map_err(|e| match e {
                SagaError::Store(e) => e,
                other => crate::store::StoreError::Storage(other.to_string()),
            })?;
            for (status, n) in counts {
                let _ = writeln!(
                    out,
                    "weir_sagas{{saga=\"{}\",status=\"{}\"}} {n}",
                    crate::metrics::label(name),
                    status.as_str()
                );
            }
        }
        crate::saga::SagaMetrics::render(out, &self.sagas);
        Ok(())
    }

    fn saga_read(&self, saga: &SagaConfig, id: &str) -> Result<Option<crate::saga::Instance>, SagaError> {
        let scope = crate::store::ScopeId { kind: crate::store::KIND_SHARED, name: String::new() };
        let Some(bytes) = self.store.state_get(saga.subscription().as_str(), &scope, id.as_bytes())? else {
            return Ok(None);
        };
        Ok(serde_json::from_slice::<crate::saga::Instance>(&bytes).ok().map(crate::saga::Instance::public))
    }

    /// A page of instances of `saga` (every saga when `None`) in `status`
    /// (any when `None`), after the cursor `after` (`<saga>/<id>`).
    ///
    /// # Errors
    ///
    /// An unknown saga, a bad cursor, or the store's error.
    pub fn saga_list(
        &self,
        saga: Option<&str>,
        status: Option<crate::saga::SagaStatus>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<SagaPage, SagaError> {
        let limit = limit.clamp(1, SAGA_PAGE_MAX);
        if let Some(name) = saga {
            self.saga_config(name)?;
        }
        let after = match after {
            Some(text) => {
                let (s, id) = text
                    .split_once('/')
                    .ok_or_else(|| SagaError::BadRequest(format!("cursor {text:?} is not <saga>/<id>")))?;
                Some((s.to_owned(), id.to_owned()))
            }
            None => None,
        };
        let scope = crate::store::ScopeId { kind: crate::store::KIND_SHARED, name: String::new() };
        let mut out = Vec::new();
        let mut scanned = 0;
        let mut names: Vec<&SagaConfig> =
            self.config.sagas.iter().filter(|s| saga.is_none_or(|n| n == s.name)).collect();
        names.sort_by(|a, b| a.name.cmp(&b.name));
        for cfg in names {
            let mut from: Option<Vec<u8>> = match &after {
                Some((s, _)) if *s > cfg.name => continue,
                Some((s, id)) if *s == cfg.name => Some(id.as_bytes().to_vec()),
                _ => None,
            };
            loop {
                let chunk = self.store.state_scan(cfg.subscription().as_str(), &scope, &[], from.as_deref(), 256)?;
                let Some((last, _)) = chunk.last() else { break };
                from = Some(last.clone());
                for (key, value) in &chunk {
                    scanned += 1;
                    // The status counts, not instances.
                    if key.first() == Some(&0) {
                        continue;
                    }
                    let Ok(inst) = serde_json::from_slice::<crate::saga::Instance>(value) else { continue };
                    if status.is_none_or(|s| s == inst.status) {
                        out.push(inst.public());
                    }
                    if out.len() >= limit || scanned >= SAGA_SCAN_MAX {
                        let next = format!("{}/{}", cfg.name, String::from_utf8_lossy(key));
                        return Ok(SagaPage { sagas: out, next: Some(next) });
                    }
                }
            }
        }
        Ok(SagaPage { sagas: out, next: None })
    }

    /// The instance `id` of `saga` (the first saga that has one when
    /// `None`).
    ///
    /// # Errors
    ///
    /// An unknown saga or instance, or the store's error.
    pub fn saga_get(&self, saga: Option<&str>, id: &str) -> Result<crate::saga::Instance, SagaError> {
        for cfg in self.config.sagas.iter().filter(|s| saga.is_none_or(|n| n == s.name)) {
            if let Some(inst) = self.saga_read(cfg, id)? {
                return Ok(inst);
            }
        }
        match saga {
            Some(name) => self.saga_config(name).and(Err(SagaError::NotFound(id.to_owned()))),
            None => Err(SagaError::NotFound(id.to_owned())),
        }
    }

    /// Cancel, resume or skip the instance `id`: the action is appended to
    /// the log for its coordinator, which takes it between two events, in
    /// order with the instance's replies and timers (so it cannot race a
    /// transition). Waits a few seconds for it to be taken.
    ///
    /// # Errors
    ///
    /// An unknown saga or instance, an action that does not apply
    /// ([`SagaError::Conflict`]), or the store's error.
    pub fn saga_action(
        &self,
        saga: Option<&str>,
        id: &str,
        op: crate::saga::AdminOp,
    ) -> Result<SagaActionReport, SagaError> {
        let before = self.saga_get(saga, id)?;
        op.applies(before.status, before.past_pivot).map_err(SagaError::Conflict)?;
        let cfg = self.saga_config(&before.saga)?;
        let event_id = self.ids.next_id();
        let event = weir_abi::Event {
            id: event_id,
            topic: cfg.own_topic("admin"),
            source: "weir://admin".into(),
            key: Some(id.to_owned()),
            schema_version: 1,
            time: crate::clock::now_nanos(),
            content_type: "application/json".into(),
            headers: vec![weir_abi::Header::new(crate::saga::ADMIN_HEADER, op.as_str())],
            idempotency_key: event_id.to_string(),
            correlation_id: None,
            causation_id: None,
            payload: serde_json::to_vec(&serde_json::json!({ "op": op.as_str() })).unwrap_or_default(),
        };
        self.store.publish_blocking(vec![event])?;
        let until = std::time::Instant::now() + ADMIN_WAIT;
        loop {
            let now = self.saga_get(Some(&before.saga), id)?;
            // Only entries written after `before` count.
            let seen = (before.timeline_dropped + before.timeline.len() as u64).saturating_sub(now.timeline_dropped);
            let taken = now
                .timeline
                .iter()
                .skip(usize::try_from(seen).unwrap_or(usize::MAX))
                .any(|e| e.kind == op.as_str() || e.kind == "refused");
            if taken || std::time::Instant::now() >= until {
                return Ok(SagaActionReport { instance: now, taken });
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
