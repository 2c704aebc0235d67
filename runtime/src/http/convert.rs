//! The [`models`](super::models) from the runtime's and the store's own
//! types: the one place that decides how those appear on the wire.

use super::models::{
    DeployResponse, DlqEntryDetail, DlqEntryInfo, DlqFilterRequest, PublishedEvent, RateInfo, ReadinessResponse,
    RedriveResponse, ResourcesInfo, StatsInfo, SubscriptionInfo, VersionInfo,
};
use crate::envelope::{JsonEvent, format_time};

impl From<crate::runtime::Readiness> for ReadinessResponse {
    fn from(r: crate::runtime::Readiness) -> Self {
        Self { status: r.status.into(), reasons: r.reasons }
    }
}

impl From<crate::runtime::SubscriptionStatus> for SubscriptionInfo {
    fn from(s: crate::runtime::SubscriptionStatus) -> Self {
        let (stats, rate, res) = (s.stats, s.rate, s.resources);
        Self {
            name: s.name,
            pipeline: s.pipeline,
            handler: s.handler,
            topics: s.topics,
            plugin: s.plugin,
            plugin_version: s.plugin_version,
            cursor: s.cursor,
            lag: s.lag,
            lag_seconds: s.lag_seconds,
            parked: s.parked,
            dlq: s.dlq,
            stats: StatsInfo {
                handled: stats.handled,
                duplicates: stats.duplicates,
                retries: stats.retries,
                dead_lettered: stats.dead_lettered,
                emitted: stats.emitted,
            },
            invocations: s.invocations,
            last_failure: s.last_failure,
            state: s.state.into(),
            stopped: s.stopped,
            view: s.view,
            rate: RateInfo {
                window_seconds: rate.window_seconds,
                events_per_second: rate.events_per_second,
                processing_p50_ms: rate.processing_p50_ms,
                processing_p99_ms: rate.processing_p99_ms,
                end_to_end_p50_ms: rate.end_to_end_p50_ms,
                end_to_end_p99_ms: rate.end_to_end_p99_ms,
            },
            resources: ResourcesInfo {
                fuel_consumed: res.fuel_consumed,
                memory_high_water_bytes: res.memory_high_water_bytes,
                plugin_log_lines: res.plugin_log_lines,
                plugin_log_lines_dropped: res.plugin_log_lines_dropped,
            },
            retention_held: s.retention_held,
            timers_pending: s.timers_pending,
        }
    }
}

impl From<&crate::store::Published> for PublishedEvent {
    fn from(p: &crate::store::Published) -> Self {
        Self { id: p.id.to_string(), seq: p.seq, duplicate: p.duplicate }
    }
}

impl From<&DlqFilterRequest> for crate::store::DlqFilter {
    fn from(f: &DlqFilterRequest) -> Self {
        Self { subscription: f.subscription.clone(), code: f.code.clone(), seq: f.seq }
    }
}

/// Milliseconds since the Unix epoch as RFC 3339.
fn rfc3339(ms: u64) -> String {
    format_time(i64::try_from(ms).unwrap_or(i64::MAX).saturating_mul(1_000_000))
}

impl From<&crate::store::DlqEntry> for DlqEntryInfo {
    fn from(e: &crate::store::DlqEntry) -> Self {
        Self {
            subscription: e.subscription.clone(),
            seq: e.seq,
            event_id: e.event.id.to_string(),
            topic: e.event.topic.clone(),
            key: e.event.key.clone(),
            code: e.code.clone(),
            message: e.message.clone(),
            attempts: e.attempts,
            plugin: e.plugin.clone(),
            plugin_version: e.plugin_version.clone(),
            first_failure: rfc3339(e.first_failure_ms),
            last_failure: rfc3339(e.last_failure_ms),
        }
    }
}

impl From<&crate::store::DlqEntry> for DlqEntryDetail {
    fn from(e: &crate::store::DlqEntry) -> Self {
        let source_message = crate::source::stored_message(e).map(|m| super::models::SourceMessageInfo {
            subject: m.subject,
            stream: m.stream,
            stream_seq: m.stream_seq,
            reason_code: m.reason_code,
            payload_bytes: m.payload_bytes,
            payload_truncated: m.payload_truncated,
            headers_truncated: m.headers_truncated,
        });
        Self { entry: e.into(), event: JsonEvent::from_event(&e.event), source_message }
    }
}

impl From<crate::runtime::RedriveReport> for RedriveResponse {
    fn from(r: crate::runtime::RedriveReport) -> Self {
        Self { redriven: r.redriven, missing: r.missing }
    }
}

impl From<crate::store::VersionRecord> for VersionInfo {
    fn from(r: crate::store::VersionRecord) -> Self {
        Self {
            sha256: r.sha256,
            size: r.size,
            abi_version: r.abi_version,
            description: r.description,
            deployed_at_ms: r.deployed_at_ms,
            deployed_by: r.deployed_by,
            action: r.action,
        }
    }
}

impl From<crate::runtime::DeployReport> for DeployResponse {
    fn from(r: crate::runtime::DeployReport) -> Self {
        Self { handler: r.handler, version: r.version, sha256: r.sha256, previous: r.previous, changed: r.changed }
    }
}
