//! A deploy's dry run (`weir plugin deploy … --replay-from <seq>`): a
//! candidate module runs over the log from a position, on an instance of its
//! own with state kept in memory, and what it emits for each event is
//! compared with what the running handler recorded for it (the events whose
//! cause is that event and whose source is the subscription). Nothing is
//! written: no event, no state, no record, no history entry.

use std::sync::Mutex;

use serde::Serialize;
use weir_abi::{DeliveryRef, Emit, Event};

use super::Runtime;
use super::deploy::DeployError;
use crate::delivery::{HOST_KEY_HEADER, VERSION_HEADER};
use crate::engine::MemoryState;
use crate::names::SubscriptionName;
use crate::store::{StartPosition, StoreError};

/// Events a dry run reads when the request names no limit.
pub const DRY_RUN_DEFAULT_EVENTS: usize = 10_000;
/// Most events one dry run reads.
pub const DRY_RUN_MAX_EVENTS: usize = 100_000;
/// Differences listed in full; the rest are only counted.
const DRY_RUN_MAX_LISTED: usize = 20;
/// Bytes of a payload shown in a listed difference.
const SHOWN_PAYLOAD_BYTES: usize = 512;
/// Recorded emits read per event (more are counted as a difference).
const MAX_RECORDED: usize = 1_000;
/// Events read from the log per page.
const PAGE: usize = 512;

/// One dry run at a time per process: each holds an instance and reads the
/// log, and nothing is gained by running several at once.
pub(super) struct DryRuns(Mutex<()>);

impl DryRuns {
    pub(super) fn new() -> Self {
        Self(Mutex::new(()))
    }
}

/// What a dry run found.
#[derive(Debug, Clone, Serialize)]
pub struct DryRunReport {
    /// `<pipeline>/<handler>`.
    pub handler: String,
    /// The candidate's sha256.
    pub sha256: String,
    /// The running version's sha256, when there is one.
    pub active: Option<String>,
    /// The first position read.
    pub from: u64,
    /// The last position read (`None`: nothing read).
    pub to: Option<u64>,
    /// Events of the handler's topics read.
    pub events: u64,
    /// Events the running handler had handled, compared.
    pub compared: u64,
    /// Of those, the ones the candidate emitted the same for.
    pub same: u64,
    /// Of those, the ones it emitted something else for (or failed on).
    pub different: u64,
    /// Events the candidate failed on (a trap, a timeout, a reject …),
    /// whether the running handler had handled them or not.
    pub candidate_failed: u64,
    /// Events the running handler had not handled (not reached yet, parked,
    /// dead-lettered, or its record expired): run, but not compared.
    pub not_compared: u64,
    /// Whether the log went on past `to` (the limit stopped the run).
    pub truncated: bool,
    /// How state was treated: a stateful candidate starts from empty state
    /// at `from`, so a run from the beginning of the log compares best.
    pub state: &'static str,
    /// The first differences, in log order.
    pub differences: Vec<DryRunDifference>,
}

/// One event whose outputs differ.
#[derive(Debug, Clone, Serialize)]
pub struct DryRunDifference {
    pub seq: u64,
    pub event_id: String,
    pub topic: String,
    pub key: Option<String>,
    /// What the running handler emitted for it.
    pub recorded: Vec<OutputSummary>,
    /// What the candidate emitted (empty when it failed).
    pub candidate: Vec<OutputSummary>,
    /// Why the candidate failed: its code and message.
    pub candidate_error: Option<String>,
}

/// An emitted event, as compared: topic, key, schema version, content type
/// and payload (headers other than the host's are compared too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutputSummary {
    pub topic: String,
    pub key: Option<String>,
    pub schema_version: u32,
    pub content_type: String,
    /// The payload as text (lossy), cut at 512 bytes.
    pub payload: String,
    pub payload_bytes: usize,
    #[serde(skip)]
    full: Vec<u8>,
    #[serde(skip)]
    headers: Vec<(String, String)>,
}

impl OutputSummary {
    fn new(
        topic: &str,
        key: Option<&str>,
        schema_version: u32,
        content_type: &str,
        payload: &[u8],
        headers: Vec<(String, String)>,
    ) -> Self {
        let shown = &payload[..payload.len().min(SHOWN_PAYLOAD_BYTES)];
        Self {
            topic: topic.to_owned(),
            key: key.map(str::to_owned),
            schema_version,
            content_type: content_type.to_owned(),
            payload: String::from_utf8_lossy(shown).into_owned(),
            payload_bytes: payload.len(),
            full: payload.to_vec(),
            headers,
        }
    }

    fn of_emit(emit: &Emit) -> Self {
        let headers = emit.headers.iter().map(|h| (h.name.clone(), h.value.clone())).collect();
        Self::new(&emit.topic, emit.key.as_deref(), emit.schema_version, &emit.content_type, &emit.payload, headers)
    }

    /// A recorded emit, without the headers the host added to it.
    fn of_event(event: &Event) -> Self {
        let headers = event
            .headers
            .iter()
            .filter(|h| h.name != VERSION_HEADER && h.name != HOST_KEY_HEADER)
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect();
        Self::new(
            &event.topic,
            event.key.as_deref(),
            event.schema_version,
            &event.content_type,
            &event.payload,
            headers,
        )
    }

    fn same_as(&self, other: &Self) -> bool {
        self.topic == other.topic
            && self.key == other.key
            && self.schema_version == other.schema_version
            && self.content_type == other.content_type
            && self.full == other.full
            && self.headers == other.headers
    }
}

/// Why a dry run could not run.
#[derive(Debug, thiserror::Error)]
pub enum DryRunError {
    /// The handler, the module or the store: as a deploy would say.
    #[error(transparent)]
    Deploy(#[from] DeployError),
    /// Another dry run is running.
    #[error("another dry run is running in this process: try again when it ends")]
    Busy,
    /// A limit out of range.
    #[error("limit {0} is out of range: give 1 to {DRY_RUN_MAX_EVENTS} events")]
    Limit(usize),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl DryRunError {
    /// Stable code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::Deploy(e) => e.code(),
            Self::Busy => "dry_run_busy",
            Self::Limit(_) => "invalid_limit",
            Self::Store(e) => e.code(),
        }
    }
}

impl Runtime {
    /// Run `module` as `handler` over up to `limit` events of its topics from
    /// `from`, and compare its outputs with the recorded ones. Writes
    /// nothing.
    ///
    /// # Errors
    ///
    /// See [`DryRunError`]: an unknown handler, a module that does not load
    /// or start (as a deploy refuses it), another dry run running, a store
    /// error.
    pub fn dry_run(
        &self,
        handler: &str,
        module: &[u8],
        from: StartPosition,
        limit: usize,
    ) -> Result<DryRunReport, DryRunError> {
        if limit == 0 || limit > DRY_RUN_MAX_EVENTS {
            return Err(DryRunError::Limit(limit));
        }
        let settings = self
            .config
            .pipelines
            .iter()
            .flat_map(|p| p.handlers.iter().map(move |h| (SubscriptionName::new(&p.name, &h.name), p, h)))
            .find(|(name, _, _)| name.as_str() == handler)
            .map(|(_, p, h)| (p.topics.clone(), h.clone()))
            .ok_or_else(|| DeployError::UnknownHandler(handler.to_owned()))?;
        let (topics, settings) = settings;
        let Ok(_only) = self.dry_runs.0.try_lock() else { return Err(DryRunError::Busy) };
        let plugin = self.engine.load(module).map_err(DeployError::Invalid)?;
        let mut instance = plugin
            .handler(settings.limits.clone(), settings.config.clone(), settings.mode)
            .map_err(DeployError::Invalid)?;
        let from = self.store.resolve_start(from)?;
        let mut state = plugin.info().uses_state().then(MemoryState::new);
        let mut report = DryRunReport {
            handler: handler.to_owned(),
            sha256: plugin.info().sha256.clone(),
            active: self.store.active_version(handler)?,
            from,
            to: None,
            events: 0,
            compared: 0,
            same: 0,
            different: 0,
            candidate_failed: 0,
            not_compared: 0,
            truncated: false,
            state: if state.is_some() { "in memory, empty at `from`" } else { "none (the plugin keeps no state)" },
            differences: Vec::new(),
        };
        let mut next = from;
        'pages: loop {
            let page = self.store.read_log(next, PAGE)?;
            if page.is_empty() {
                break;
            }
            for (seq, event) in page {
                next = seq + 1;
                if !topics.iter().any(|p| p.matches(&event.topic)) {
                    continue;
                }
                if report.events as usize >= limit {
                    report.truncated = true;
                    break 'pages;
                }
                report.events += 1;
                report.to = Some(seq);
                let delivery = DeliveryRef { event: &event, subscription: handler, attempt: 1 };
                let (result, lent) = match state.take() {
                    Some(mut memory) => {
                        memory.begin(event.key.as_deref());
                        let (invocation, lent) = instance.invoke_with_state(delivery, Some(Box::new(memory)));
                        let lent: Option<Box<dyn std::any::Any>> = lent.map(|l| l as Box<dyn std::any::Any>);
                        (invocation.result, lent.and_then(|l| l.downcast::<MemoryState>().ok()))
                    }
                    None => (instance.invoke(delivery).result, None),
                };
                if let Some(mut memory) = lent {
                    if result.is_ok() {
                        memory.commit();
                    } else {
                        memory.discard();
                    }
                    state = Some(*memory);
                }
                let (candidate, candidate_error) = match &result {
                    Ok(emits) => (emits.iter().map(OutputSummary::of_emit).collect::<Vec<_>>(), None),
                    Err(e) => {
                        report.candidate_failed += 1;
                        (Vec::new(), Some(format!("{}: {e}", e.code())))
                    }
                };
                let Some(recorded) = self.recorded(handler, seq, &event)? else {
                    report.not_compared += 1;
                    continue;
                };
                report.compared += 1;
                let same = candidate_error.is_none()
                    && recorded.len() == candidate.len()
                    && recorded.iter().zip(&candidate).all(|(a, b)| a.same_as(b));
                if same {
                    report.same += 1;
                    continue;
                }
                report.different += 1;
                if report.differences.len() < DRY_RUN_MAX_LISTED {
                    report.differences.push(DryRunDifference {
                        seq,
                        event_id: event.id.to_string(),
                        topic: event.topic.clone(),
                        key: event.key.clone(),
                        recorded,
                        candidate,
                        candidate_error,
                    });
                }
            }
        }
        tracing::info!(
            handler,
            sha256 = %report.sha256,
            events = report.events,
            same = report.same,
            different = report.different,
            "dry run done; nothing was written"
        );
        Ok(report)
    }

    /// What `handler` emitted for `event` (at `seq`), in emit order; `None`
    /// when it has not handled it (no idempotency record, written or
    /// derived: not reached, parked, dead-lettered, or the record expired).
    fn recorded(&self, handler: &str, seq: u64, event: &Event) -> Result<Option<Vec<OutputSummary>>, StoreError> {
        // Only events of the handler's topics are asked about.
        if self.store.outcome(handler, seq, event, &|_| true)? == crate::store::Seen::Free {
            return Ok(None);
        }
        let source = format!("weir://{handler}");
        let mut out = Vec::new();
        for seq in self.store.caused_by(event.id, MAX_RECORDED)? {
            if let Some(caused) = self.store.event(seq)?
                && caused.source == source
            {
                out.push(OutputSummary::of_event(&caused));
            }
        }
        Ok(Some(out))
    }
}
