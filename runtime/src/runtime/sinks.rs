//! Starting webhook sinks: each `[[sinks]]` entry becomes a subscription
//! `sinks/<name>` with its own worker and supervisor, exactly as a handler
//! does, with a [`WebhookSink`] as what it invokes.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;

use super::supervise::Native;
use super::{RuntimeError, Sub};
use crate::config::{Config, DEFAULT_LOG_LINES_PER_SECOND, SINK_PIPELINE, SinkConfig};
use crate::delivery::{Disabler, Invoke, Spec, SubscriptionCounters};
use crate::ids::IdGenerator;
use crate::sink::WebhookSink;
use crate::store::Store;

/// Start `sink`'s subscription: its worker on a thread of its own, under a
/// supervisor that rebuilds the sink from its configuration after a death.
pub(super) fn start_sink(
    sink: &SinkConfig,
    config: &Config,
    store: &Store,
    ids: &Arc<IdGenerator>,
    stopping: &Arc<AtomicBool>,
    gate: Option<Arc<crate::cluster::Gate>>,
) -> Result<Sub, RuntimeError> {
    let name: Arc<str> = Arc::from(format!("{SINK_PIPELINE}/{}", sink.name));
    let (tx, rx) = mpsc::channel();
    let counters = Arc::new(SubscriptionCounters::default());
    let disabler = Disabler { control: tx.clone(), counters: Arc::clone(&counters) };
    let build = {
        let sink = sink.clone();
        move || {
            let sink = Box::new(WebhookSink::new(sink.clone(), Some(disabler.clone()))) as Box<dyn Invoke>;
            crate::cluster::gated(sink, gate.as_ref())
        }
    };
    let invoker = build();
    let spec = Spec {
        name: Arc::clone(&name),
        plugin_name: invoker.name(),
        patterns: sink.topics.clone(),
        retry: sink.retry.clone(),
        retention: config.retention,
        max_payload_bytes: config.max_payload_bytes,
        schemas: config.schemas.clone(),
        log_lines_per_second: DEFAULT_LOG_LINES_PER_SECOND,
        timing: config.metrics,
        // A sink keeps no state.
        max_state_keys_per_scope: 0,
        // Nor timers.
        max_timers_per_invocation: 0,
        max_pending_timers: 0,
        upcasters: None,
        own_reserved_topics: None,
    };
    let sub = Native {
        spec,
        invoker,
        build: Box::new(build),
        pipeline: SINK_PIPELINE.to_owned(),
        handler: sink.name.clone(),
        from: sink.from,
        ready: sink.ready.clone(),
        control: (tx, rx),
        counters,
    }
    .start(store, ids, stopping)?;
    tracing::info!(subscription = %name, url = %sink.url.text, "webhook sink started");
    Ok(sub)
}
