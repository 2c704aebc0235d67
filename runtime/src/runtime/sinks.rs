//! Starting webhook sinks: each `[[sinks]]` entry becomes a subscription
//! `sinks/<name>` with its own worker and supervisor, exactly as a handler
//! does, with a [`WebhookSink`] as what it invokes.

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use super::supervise::{Rebuild, Supervised};
use super::{RuntimeError, Sub};
use crate::config::{Config, DEFAULT_LOG_LINES_PER_SECOND, SINK_PIPELINE, SinkConfig};
use crate::delivery::{Control, Disabler, Invoke, Spec, SubscriptionCounters, Worker};
use crate::ids::IdGenerator;
use crate::metrics::WINDOW;
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
) -> Result<Sub, RuntimeError> {
    let name: Arc<str> = Arc::from(format!("{SINK_PIPELINE}/{}", sink.name));
    let (tx, rx) = mpsc::channel();
    let counters = Arc::new(SubscriptionCounters::default());
    let disabler = Disabler { control: tx.clone(), counters: Arc::clone(&counters) };
    let build = {
        let sink = sink.clone();
        move || Box::new(WebhookSink::new(sink.clone(), Some(disabler.clone()))) as Box<dyn Invoke>
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
    };
    let rx = Arc::new(Mutex::new(rx));
    // Its first cursor from `from`, and its place among retention's readers,
    // exactly as for a handler.
    super::subscriptions::prepare(store, &name, &sink.topics, sink.from)?;
    let worker =
        Worker::new(spec.clone(), store.clone(), invoker, Arc::clone(ids), Arc::clone(&counters), Arc::clone(&rx))?;
    let wake = tx.clone();
    store.watch(Box::new(move || wake.send(Control::Wake).is_ok()));
    let supervised = Supervised {
        spec,
        store: store.clone(),
        ids: Arc::clone(ids),
        counters: Arc::clone(&counters),
        rx,
        rebuild: Rebuild::Native(Box::new(build)),
        stopping: Arc::clone(stopping),
    };
    let join = std::thread::Builder::new()
        .name(format!("weir-sub-{name}"))
        .spawn(move || supervised.run(worker))
        .map_err(|e| RuntimeError::Worker(e.to_string()))?;
    tracing::info!(subscription = %name, url = %sink.url.text, "webhook sink started");
    Ok(Sub {
        name,
        pipeline: SINK_PIPELINE.to_owned(),
        handler: sink.name.clone(),
        topics: sink.topics.iter().map(ToString::to_string).collect(),
        ready: sink.ready.clone(),
        window: Arc::new(Mutex::new(VecDeque::with_capacity(WINDOW + 1))),
        control: tx,
        counters,
        join: Some(join),
        switching: Mutex::new(()),
    })
}
