//! Prometheus text exposition (format 0.0.4) of the runtime's counters, for
//! `GET /metrics`. Hand-written rather than a metrics crate: every value
//! already lives in an atomic the workers update, so rendering is a read.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Bucket upper bounds in seconds, from 50 µs to 10 s.
pub(crate) const BUCKETS: [f64; 14] =
    [0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 10.0];

/// A lock-free histogram of durations.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Record one observation.
    pub fn observe(&self, value: Duration) {
        let secs = value.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(u64::try_from(value.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Number of observations.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Per-bucket counts (not cumulative), the last one for values over the
    /// largest bound.
    #[must_use]
    pub fn snapshot(&self) -> Buckets {
        let mut out = [0; BUCKETS.len() + 1];
        let mut within = 0;
        for (slot, bucket) in out.iter_mut().zip(&self.buckets) {
            *slot = bucket.load(Ordering::Relaxed);
            within += *slot;
        }
        out[BUCKETS.len()] = self.count().saturating_sub(within);
        out
    }

    /// Append this histogram's sample lines for metric `name` with `labels`.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let counts = self.buckets.iter().map(|b| b.load(Ordering::Relaxed));
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        render_buckets(out, name, labels, &BUCKETS, counts, self.count(), sum);
    }
}

/// Bucket upper bounds of the group-commit size histogram, in commands.
pub(crate) const SIZE_BUCKETS: [f64; 11] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

/// A lock-free histogram of counts (group-commit sizes).
#[derive(Debug, Default)]
pub(crate) struct SizeHistogram {
    buckets: [AtomicU64; SIZE_BUCKETS.len()],
    count: AtomicU64,
    sum: AtomicU64,
}

impl SizeHistogram {
    /// Record one observation.
    pub(crate) fn observe(&self, value: u64) {
        if let Some(i) = SIZE_BUCKETS.iter().position(|b| value as f64 <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// Append this histogram's sample lines for metric `name` with `labels`.
    pub(crate) fn render(&self, out: &mut String, name: &str, labels: &str) {
        let counts = self.buckets.iter().map(|b| b.load(Ordering::Relaxed));
        let count = self.count.load(Ordering::Relaxed);
        render_buckets(out, name, labels, &SIZE_BUCKETS, counts, count, self.sum.load(Ordering::Relaxed) as f64);
    }
}

/// Bucket upper bounds of the payload-size histogram, in bytes: 64 B to 16 MiB.
pub(crate) const BYTE_BUCKETS: [f64; 10] =
    [64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262_144.0, 1_048_576.0, 4_194_304.0, 16_777_216.0];

/// A lock-free histogram of sizes in bytes (`weir_payload_bytes`).
#[derive(Debug, Default)]
pub(crate) struct ByteHistogram {
    buckets: [AtomicU64; BYTE_BUCKETS.len()],
    count: AtomicU64,
    sum: AtomicU64,
}

impl ByteHistogram {
    /// Record one size.
    pub(crate) fn observe(&self, bytes: usize) {
        if let Some(i) = BYTE_BUCKETS.iter().position(|b| bytes as f64 <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Append this histogram's sample lines for metric `name` with `labels`.
    pub(crate) fn render(&self, out: &mut String, name: &str, labels: &str) {
        let counts = self.buckets.iter().map(|b| b.load(Ordering::Relaxed));
        let count = self.count.load(Ordering::Relaxed);
        render_buckets(out, name, labels, &BYTE_BUCKETS, counts, count, self.sum.load(Ordering::Relaxed) as f64);
    }
}

/// The `_bucket`, `_sum` and `_count` lines of a histogram; `counts` are
/// per bucket (not cumulative), `labels` may be empty.
fn render_buckets(
    out: &mut String,
    name: &str,
    labels: &str,
    bounds: &[f64],
    counts: impl Iterator<Item = u64>,
    count: u64,
    sum: f64,
) {
    let sep = if labels.is_empty() { "" } else { "," };
    let mut cumulative = 0;
    for (bound, n) in bounds.iter().zip(counts) {
        cumulative += n;
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
    if labels.is_empty() {
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    } else {
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Per-bucket counts of a [`Histogram`], overflow last.
pub(crate) type Buckets = [u64; BUCKETS.len() + 1];

/// Samples kept per subscription, one a second: rates and quantiles cover
/// the last `WINDOW` seconds.
pub(crate) const WINDOW: usize = 10;

/// A subscription's counters at one instant.
#[derive(Debug, Clone)]
pub struct Sample {
    at: Instant,
    handled: u64,
    processing: Buckets,
    end_to_end: Buckets,
}

impl Sample {
    /// A sample taken now of a subscription's handled count and its two
    /// histograms. (The subscription's counters take it:
    /// `SubscriptionCounters::sample`; this module knows no subscription.)
    #[must_use]
    pub fn now(handled: u64, processing: &Histogram, end_to_end: &Histogram) -> Self {
        Self { at: Instant::now(), handled, processing: processing.snapshot(), end_to_end: end_to_end.snapshot() }
    }
}

/// Recent throughput and latency of a subscription, from its sample window.
/// Quantiles are `None` when nothing was timed in the window.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Rate {
    /// Seconds the window covers (0 until two samples exist).
    pub window_seconds: f64,
    /// Events handled per second over the window.
    pub events_per_second: f64,
    /// Median time per invocation, ms.
    pub processing_p50_ms: Option<f64>,
    /// 99th percentile time per invocation, ms.
    pub processing_p99_ms: Option<f64>,
    /// Median event time → handled, ms.
    pub end_to_end_p50_ms: Option<f64>,
    /// 99th percentile event time → handled, ms.
    pub end_to_end_p99_ms: Option<f64>,
}

impl Rate {
    /// From the oldest sample of `window` to `now` (a sample just taken, so
    /// events of the last second count too).
    #[must_use]
    pub fn of(window: &std::collections::VecDeque<Sample>, now: &Sample) -> Self {
        let (Some(first), last) = (window.front(), now) else { return Self::default() };
        let secs = last.at.saturating_duration_since(first.at).as_secs_f64();
        if secs <= 0.0 {
            return Self::default();
        }
        let delta = |a: &Buckets, b: &Buckets| -> Buckets {
            let mut d = [0; BUCKETS.len() + 1];
            for (i, slot) in d.iter_mut().enumerate() {
                *slot = b[i].saturating_sub(a[i]);
            }
            d
        };
        let processing = delta(&first.processing, &last.processing);
        let end_to_end = delta(&first.end_to_end, &last.end_to_end);
        let ms = |q: Option<f64>| q.map(|s| (s * 1e6).round() / 1e3);
        Self {
            window_seconds: (secs * 10.0).round() / 10.0,
            events_per_second: (last.handled.saturating_sub(first.handled) as f64 / secs * 10.0).round() / 10.0,
            processing_p50_ms: ms(quantile(&processing, 0.5)),
            processing_p99_ms: ms(quantile(&processing, 0.99)),
            end_to_end_p50_ms: ms(quantile(&end_to_end, 0.5)),
            end_to_end_p99_ms: ms(quantile(&end_to_end, 0.99)),
        }
    }
}

/// The `q` quantile in seconds of bucket counts, interpolated linearly
/// within its bucket as Prometheus' `histogram_quantile` does; values past
/// the largest bound report that bound.
#[must_use]
pub(crate) fn quantile(buckets: &Buckets, q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut seen = 0u64;
    for (i, &n) in buckets.iter().enumerate() {
        if n > 0 && (seen + n) as f64 >= rank {
            let Some(&upper) = BUCKETS.get(i) else { return BUCKETS.last().copied() };
            let lower = if i == 0 { 0.0 } else { BUCKETS[i - 1] };
            let within = ((rank - seen as f64) / n as f64).clamp(0.0, 1.0);
            return Some(lower + (upper - lower) * within);
        }
        seen += n;
    }
    BUCKETS.last().copied()
}

/// Escape a label value.
#[must_use]
pub(crate) fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Append `# HELP` and `# TYPE` lines.
pub(crate) fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(10));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "s=\"a\"");
        assert!(out.contains("x_seconds_bucket{s=\"a\",le=\"0.00005\"} 1\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{s=\"a\",le=\"0.005\"} 2\n"));
        assert!(out.contains("x_seconds_bucket{s=\"a\",le=\"10\"} 2\n"));
        assert!(out.contains("x_seconds_bucket{s=\"a\",le=\"+Inf\"} 3\n"));
        assert!(out.contains("x_seconds_count{s=\"a\"} 3\n"));
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let h = Histogram::default();
        assert_eq!(quantile(&h.snapshot(), 0.5), None);
        // 100 observations in (1 ms, 2.5 ms]: the median lies halfway.
        for _ in 0..100 {
            h.observe(Duration::from_micros(2000));
        }
        let p50 = quantile(&h.snapshot(), 0.5).unwrap();
        assert!((p50 - 0.001_75).abs() < 1e-9, "{p50}");
        // One slow outlier past every bound: p99 stays in the bucket, p100 is the last bound.
        h.observe(Duration::from_secs(60));
        assert!(quantile(&h.snapshot(), 0.99).unwrap() <= 0.002_5);
        assert_eq!(quantile(&h.snapshot(), 1.0), Some(10.0));
    }
}
