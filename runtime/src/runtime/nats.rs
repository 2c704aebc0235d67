//! The NATS JetStream side of the runtime: JetStream sinks, each a
//! subscription `sinks/<name>` exactly as a webhook sink is, and the
//! sources' status (`runtime/src/source/` runs them).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;

use super::supervise::Native;
use super::{Runtime, RuntimeError, Sub};
use crate::config::{Config, DEFAULT_LOG_LINES_PER_SECOND, JetStreamSinkConfig, SINK_PIPELINE};
use crate::delivery::{Invoke, Spec, SubscriptionCounters};
use crate::ids::IdGenerator;
use crate::sink::JetStreamSink;
use crate::source::SourceStatus;
use crate::store::Store;

/// Start `sink`'s subscription: its worker on a thread of its own, under a
/// supervisor that rebuilds the sink from its configuration after a death.
/// `nats` is the runtime its publishes run on.
pub(super) fn start_jetstream_sink(
    sink: &JetStreamSinkConfig,
    nats: tokio::runtime::Handle,
    config: &Config,
    store: &Store,
    ids: &Arc<IdGenerator>,
    stopping: &Arc<AtomicBool>,
    gate: Option<Arc<crate::cluster::Gate>>,
) -> Result<Sub, RuntimeError> {
    let name: Arc<str> = Arc::from(format!("{SINK_PIPELINE}/{}", sink.name));
    let (tx, rx) = mpsc::channel();
    let counters = Arc::new(SubscriptionCounters::default());
    let build = {
        let sink = sink.clone();
        move || {
            let sink = Box::new(JetStreamSink::new(sink.clone(), nats.clone())) as Box<dyn Invoke>;
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
    tracing::info!(subscription = %name, url = %sink.connection.url_text(), subject = %sink.subject, "JetStream sink started");
    Ok(sub)
}

/// A metric: name, kind, help, and its value for a source.
type Series = (&'static str, &'static str, &'static str, fn(&SourceStatus) -> u64);

impl Runtime {
    /// The cluster as this node last saw it, under `[cluster]`.
    #[must_use]
    pub fn cluster_status(&self) -> Option<crate::cluster::ClusterStatus> {
        self.cluster.as_ref().map(crate::cluster::Cluster::status)
    }

    /// A status line per source (`[[sources]]`).
    #[must_use]
    pub fn sources(&self) -> Vec<SourceStatus> {
        let mut sources = self.nats.status();
        // Counted from the keys of the source's own range: nothing decoded.
        for s in &mut sources {
            s.dlq = self.store.dlq_count(&s.name).unwrap_or(0);
        }
        sources
    }

    /// Why sources make the runtime degraded: one not consuming (no
    /// connection, no stream, no consumer), with its last error.
    pub(super) fn source_reasons(&self) -> Vec<String> {
        self.sources()
            .into_iter()
            .filter(|s| s.state != "consuming")
            .map(|s| {
                format!(
                    "source {} is {} to {} (stream {}){}",
                    s.name,
                    s.state,
                    s.url,
                    s.stream,
                    s.last_error.map(|e| format!(": {e}")).unwrap_or_default()
                )
            })
            .collect()
    }

    /// The `weir_source_*` metrics, one series per source.
    pub(super) fn render_source_metrics(&self, out: &mut String) {
        use crate::metrics::{header, label};
        use std::fmt::Write as _;
        let sources = self.sources();
        if sources.is_empty() {
            return;
        }
        let series: [Series; 9] = [
            ("weir_source_connected", "gauge", "1 while the source's NATS connection is up.", |s| {
                u64::from(s.connected)
            }),
            ("weir_source_last_seq", "gauge", "The highest stream sequence the source appended (committed).", |s| {
                s.last_seq
            }),
            (
                "weir_source_lag",
                "gauge",
                "Messages JetStream holds for the source's consumer, not delivered yet.",
                |s| s.lag,
            ),
            ("weir_source_appended_total", "counter", "Messages appended to the log since start.", |s| s.appended),
            ("weir_source_duplicates_total", "counter", "Messages recognised as already appended since start.", |s| {
                s.duplicates
            }),
            ("weir_source_rejected_total", "counter", "Messages with no usable event, terminated, since start.", |s| {
                s.rejected
            }),
            (
                "weir_source_dead_lettered_total",
                "counter",
                "Rejected messages stored in the DLQ (sources/<name>) since start.",
                |s| s.dead_lettered,
            ),
            ("weir_source_dlq_depth", "gauge", "The source's DLQ entries (sources/<name>).", |s| s.dlq),
            (
                "weir_source_errors_total",
                "counter",
                "Connection, stream, consumer or store failures since start.",
                |s| s.errors,
            ),
        ];
        for (name, kind, help, value) in series {
            header(out, name, kind, help);
            for s in &sources {
                let _ = writeln!(out, "{name}{{source=\"{}\"}} {}", label(&s.name), value(s));
            }
        }
    }
}
