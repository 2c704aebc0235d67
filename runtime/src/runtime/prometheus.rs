//! The Prometheus text exposition (`GET /metrics`). Every metric is
//! documented, with alert rules, in docs/operations.md.

use std::sync::PoisonError;
use std::sync::atomic::Ordering;

use super::{Runtime, SubscriptionStatus};
use crate::store::StoreError;

impl Runtime {
    /// The Prometheus text exposition of every subscription's and the
    /// store's numbers (`GET /metrics`).
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn metrics(&self) -> Result<String, StoreError> {
        use crate::metrics::{header, label};
        use std::fmt::Write as _;
        let status = self.status()?;
        let mut out = String::with_capacity(8192);
        let per_sub =
            |out: &mut String, name: &str, kind: &str, help: &str, value: &dyn Fn(&SubscriptionStatus) -> u64| {
                header(out, name, kind, help);
                for s in &status {
                    let _ = writeln!(out, "{name}{{subscription=\"{}\"}} {}", label(&s.name), value(s));
                }
            };
        per_sub(
            &mut out,
            "weir_subscription_queue_depth",
            "gauge",
            "Events in the log the subscription has not read yet.",
            &|s| s.lag,
        );
        per_sub(
            &mut out,
            "weir_subscription_parked",
            "gauge",
            "Events waiting for a retry or behind an earlier event with their key.",
            &|s| s.parked,
        );
        header(
            &mut out,
            "weir_subscription_lag_seconds",
            "gauge",
            "Event-time distance from the oldest unread event to the newest event in the log.",
        );
        for s in &status {
            let _ =
                writeln!(out, "weir_subscription_lag_seconds{{subscription=\"{}\"}} {}", label(&s.name), s.lag_seconds);
        }
        per_sub(&mut out, "weir_subscription_dlq_depth", "gauge", "Events in the dead-letter queue.", &|s| s.dlq);
        // The same numbers by view name, for dashboards and alerts that
        // speak of the read model rather than the handler serving it.
        let views: Vec<&SubscriptionStatus> = status.iter().filter(|s| s.view.is_some()).collect();
        if !views.is_empty() {
            let per_view = |out: &mut String, name: &str, help: &str, value: &dyn Fn(&SubscriptionStatus) -> String| {
                header(out, name, "gauge", help);
                for s in &views {
                    let view = s.view.as_deref().unwrap_or_default();
                    let _ = writeln!(
                        out,
                        "{name}{{view=\"{}\",subscription=\"{}\"}} {}",
                        label(view),
                        label(&s.name),
                        value(s)
                    );
                }
            };
            per_view(
                &mut out,
                "weir_view_lag_events",
                "Events in the log the view does not reflect yet (its projection's queue depth).",
                &|s| s.lag.to_string(),
            );
            per_view(
                &mut out,
                "weir_view_lag_seconds",
                "Event-time distance from the oldest event the view does not reflect to the newest in the log.",
                &|s| s.lag_seconds.to_string(),
            );
        }
        per_sub(
            &mut out,
            "weir_subscription_retention_held",
            "gauge",
            "Events the log's retention would have removed but the subscription still needs (last complete pass).",
            &|s| s.retention_held,
        );
        per_sub(
            &mut out,
            "weir_timers_pending",
            "gauge",
            "Durable timers the subscription's handler scheduled that have not fired nor been cancelled.",
            &|s| s.timers_pending,
        );
        header(
            &mut out,
            "weir_log_stored_bytes",
            "gauge",
            "Stored bytes of the log's records, as of the last retention pass.",
        );
        let _ = writeln!(out, "weir_log_stored_bytes {}", self.store.log_bytes());
        per_sub(
            &mut out,
            "weir_subscription_up",
            "gauge",
            "1 while the subscription's worker runs, 0 while it is stopped (waiting for its restart).",
            &|s| u64::from(s.stopped.is_none()),
        );
        per_sub(
            &mut out,
            "weir_subscription_restarts_total",
            "counter",
            "Times the subscription's worker was restarted after dying, since start.",
            &|s| s.restarts,
        );
        per_sub(&mut out, "weir_subscription_invocations_total", "counter", "Handler invocations since start.", &|s| {
            s.invocations
        });
        header(&mut out, "weir_subscription_events_total", "counter", "Committed outcomes by kind.");
        for s in &status {
            for (kind, value) in [
                ("handled", s.stats.handled),
                ("duplicate", s.stats.duplicates),
                ("retry", s.stats.retries),
                ("dead_lettered", s.stats.dead_lettered),
            ] {
                let _ = writeln!(
                    out,
                    "weir_subscription_events_total{{subscription=\"{}\",outcome=\"{kind}\"}} {value}",
                    label(&s.name)
                );
            }
        }
        header(
            &mut out,
            "weir_subscription_failures_total",
            "counter",
            "Failed invocations by failure code since start.",
        );
        for sub in &self.subs {
            let failures = sub.counters.failures.lock().unwrap_or_else(PoisonError::into_inner).clone();
            for (code, n) in failures {
                let _ = writeln!(
                    out,
                    "weir_subscription_failures_total{{subscription=\"{}\",code=\"{code}\"}} {n}",
                    label(&sub.name)
                );
            }
        }
        per_sub(
            &mut out,
            "weir_subscription_emitted_total",
            "counter",
            "Events emitted by the handler and committed.",
            &|s| s.stats.emitted,
        );
        header(
            &mut out,
            "weir_plugin_swaps_total",
            "counter",
            "Plugin versions switched in by deploy or rollback since start.",
        );
        for sub in &self.subs {
            let _ = writeln!(
                out,
                "weir_plugin_swaps_total{{subscription=\"{}\"}} {}",
                label(&sub.name),
                sub.counters.swaps.load(Ordering::Relaxed)
            );
        }
        header(&mut out, "weir_plugin_info", "gauge", "The active plugin of each subscription (value 1).");
        for s in &status {
            let _ = writeln!(
                out,
                "weir_plugin_info{{subscription=\"{}\",plugin=\"{}\",version=\"{}\"}} 1",
                label(&s.name),
                label(&s.plugin),
                label(&s.plugin_version)
            );
        }
        per_sub(
            &mut out,
            "weir_plugin_fuel_consumed_total",
            "counter",
            "Fuel consumed by invocations (only with engine.fuel = true).",
            &|s| s.resources.fuel_consumed,
        );
        per_sub(
            &mut out,
            "weir_plugin_memory_high_water_bytes",
            "gauge",
            "Largest linear memory of the active plugin version's instances.",
            &|s| s.resources.memory_high_water_bytes,
        );
        header(&mut out, "weir_plugin_log_lines_total", "counter", "Plugin log lines, written or dropped.");
        for s in &status {
            for (outcome, value) in
                [("written", s.resources.plugin_log_lines), ("dropped", s.resources.plugin_log_lines_dropped)]
            {
                let _ = writeln!(
                    out,
                    "weir_plugin_log_lines_total{{subscription=\"{}\",outcome=\"{outcome}\"}} {value}",
                    label(&s.name)
                );
            }
        }
        header(&mut out, "weir_processing_seconds", "histogram", "Time per handler invocation.");
        for sub in &self.subs {
            sub.counters.processing.render(
                &mut out,
                "weir_processing_seconds",
                &format!("subscription=\"{}\"", label(&sub.name)),
            );
        }
        header(&mut out, "weir_end_to_end_seconds", "histogram", "Event time to handled, for handled events.");
        for sub in &self.subs {
            sub.counters.end_to_end.render(
                &mut out,
                "weir_end_to_end_seconds",
                &format!("subscription=\"{}\"", label(&sub.name)),
            );
        }
        let (published, duplicates) = self.store.publish_stats();
        header(&mut out, "weir_ingest_events_total", "counter", "Published events stored since start.");
        let _ = writeln!(out, "weir_ingest_events_total {published}");
        header(
            &mut out,
            "weir_ingest_duplicates_total",
            "counter",
            "Published events refused as duplicates of a known idempotency key since start.",
        );
        let _ = writeln!(out, "weir_ingest_duplicates_total {duplicates}");
        header(&mut out, "weir_store_commit_seconds", "histogram", "Time per durable group commit (apply and fsync).");
        self.store.render_commit_latency(&mut out, "weir_store_commit_seconds");
        header(
            &mut out,
            "weir_store_commit_commands",
            "histogram",
            "Commands per durable group commit (its batch size).",
        );
        self.store.render_commit_size(&mut out, "weir_store_commit_commands");
        header(
            &mut out,
            "weir_store_table_entries",
            "gauge",
            "Entries per store table (growth: see docs/operations.md).",
        );
        for (table, entries) in self.store.table_sizes()? {
            let _ = writeln!(out, "weir_store_table_entries{{table=\"{table}\"}} {entries}");
        }
        let (commits, commands) = self.store.commit_stats();
        header(&mut out, "weir_log_head", "gauge", "Sequence number the next appended event gets.");
        let _ = writeln!(out, "weir_log_head {}", self.store.head());
        header(&mut out, "weir_store_commits_total", "counter", "Durable group commits since start.");
        let _ = writeln!(out, "weir_store_commits_total {commits}");
        header(
            &mut out,
            "weir_store_commands_total",
            "counter",
            "Commands (publishes, outcome batches, admin) committed since start.",
        );
        let _ = writeln!(out, "weir_store_commands_total {commands}");
        self.config.schemas.render_metrics(&mut out);
        self.consumers.render_metrics(&mut out)?;
        self.render_source_metrics(&mut out);
        self.render_saga_metrics(&mut out)?;
        Ok(out)
    }
}
