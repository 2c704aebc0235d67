//! A handler's log lines into the host's log, under a per-subscription rate
//! limit, so a chatty plugin cannot flood the host's log or slow its worker.

use std::time::{Duration, Instant};

use weir_abi::{EventId, LogLevel};

use super::invoke::LogLine;

/// Who wrote the lines, for the fields of each log record.
pub(super) struct Origin<'a> {
    pub(super) subscription: &'a str,
    pub(super) plugin: &'a str,
    pub(super) version: &'a str,
    pub(super) event_id: EventId,
    pub(super) correlation_id: Option<EventId>,
}

/// The lines written and dropped by one [`PluginLogs::forward`].
pub(super) struct Forwarded {
    pub(super) written: u64,
    pub(super) dropped: u64,
}

/// Forwards plugin log lines through a token bucket: a chatty plugin is cut
/// to the configured rate, and what was dropped is reported once a second,
/// so the host's log shows that lines are missing and how many.
pub(super) struct PluginLogs {
    rate: f64,
    tokens: f64,
    refilled: Instant,
    dropped_since_report: u64,
    reported: Instant,
    per_second: u32,
}

impl PluginLogs {
    pub(super) fn new(per_second: u32) -> Self {
        let now = Instant::now();
        let rate = f64::from(per_second.max(1));
        Self { rate, tokens: rate, refilled: now, dropped_since_report: 0, reported: now, per_second }
    }

    /// Write what the rate allows of `lines` to the host's log.
    pub(super) fn forward(&mut self, lines: &[LogLine], origin: &Origin<'_>) -> Forwarded {
        let now = Instant::now();
        let Origin { subscription: sub, plugin, version, event_id: id, correlation_id } = *origin;
        let correlation_id = correlation_id.map(|c| c.to_string());
        let mut written = 0;
        for line in lines {
            if !self.admit(now) {
                continue;
            }
            written += 1;
            let msg = &line.message;
            // tracing needs the level at compile time: one arm per level.
            macro_rules! plugin_log {
                ($level:ident) => {
                    tracing::$level!(target: "weir::plugin", subscription = sub, plugin, plugin_version = version,
                        event_id = %id, correlation_id, "{msg}")
                };
            }
            match line.level {
                LogLevel::Error => plugin_log!(error),
                LogLevel::Warn => plugin_log!(warn),
                LogLevel::Info => plugin_log!(info),
                LogLevel::Debug => plugin_log!(debug),
                LogLevel::Trace => plugin_log!(trace),
            }
        }
        if let Some(n) = self.due_report(now) {
            tracing::warn!(
                target: "weir::plugin",
                subscription = sub,
                plugin,
                dropped = n,
                limit_per_second = self.per_second,
                "plugin log lines dropped by the rate limit"
            );
        }
        Forwarded { written, dropped: lines.len() as u64 - written }
    }

    /// Whether one more line may be written now.
    fn admit(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.dropped_since_report += 1;
            false
        }
    }

    /// Lines dropped since the last report, if a report is due.
    fn due_report(&mut self, now: Instant) -> Option<u64> {
        if self.dropped_since_report > 0 && now.saturating_duration_since(self.reported) >= Duration::from_secs(1) {
            self.reported = now;
            Some(std::mem::take(&mut self.dropped_since_report))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(n: usize) -> Vec<LogLine> {
        (0..n).map(|i| LogLine { level: LogLevel::Info, message: format!("line {i}") }).collect()
    }

    fn origin() -> Origin<'static> {
        Origin { subscription: "p/h", plugin: "h", version: "abc", event_id: EventId([0; 16]), correlation_id: None }
    }

    #[test]
    fn lines_over_the_rate_are_dropped_and_counted() {
        let mut logs = PluginLogs::new(3);
        let first = logs.forward(&lines(5), &origin());
        assert_eq!((first.written, first.dropped), (3, 2), "the burst is the rate");
        let second = logs.forward(&lines(1), &origin());
        assert_eq!(second.written + second.dropped, 1);
    }

    #[test]
    fn drops_are_reported_at_most_once_a_second() {
        let mut logs = PluginLogs::new(1);
        let start = Instant::now();
        assert!(logs.admit(start));
        assert!(!logs.admit(start));
        assert_eq!(logs.due_report(start), None, "not a second yet");
        let later = start + Duration::from_secs(2);
        assert_eq!(logs.due_report(later), Some(1));
        assert_eq!(logs.due_report(later), None, "reported once");
    }
}
