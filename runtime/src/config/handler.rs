//! A handler's sandbox limits and retry policy, checked.

use super::*;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    deadline: Option<String>,
    fuel: Option<u64>,
    memory_mib: Option<usize>,
    max_output_bytes: Option<usize>,
    max_emits: Option<usize>,
    max_log_lines: Option<usize>,
    max_headers_per_emit: Option<usize>,
    max_header_bytes_per_emit: Option<usize>,
    max_state_value_bytes: Option<usize>,
    max_state_keys_per_scope: Option<usize>,
    max_state_write_bytes: Option<usize>,
    max_timers_per_invocation: Option<usize>,
    max_pending_timers: Option<usize>,
    instance: Option<String>,
    pub(super) log_lines_per_second: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetry {
    max_attempts: Option<u32>,
    initial_backoff: Option<String>,
    multiplier: Option<f64>,
    max_backoff: Option<String>,
    jitter: Option<f64>,
}

/// When and how often a failing event is retried.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included. Default 5.
    pub max_attempts: u32,
    /// Wait before the second attempt. Default 100 ms.
    pub initial_backoff: Duration,
    /// Factor between consecutive waits. Default 2.
    pub multiplier: f64,
    /// Longest wait. Default 30 s.
    pub max_backoff: Duration,
    /// Random spread, as a fraction of the wait (0.2 = ±20%). Default 0.2.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            multiplier: 2.0,
            max_backoff: Duration::from_secs(30),
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempt` (1-based), before
    /// jitter: `initial × multiplier^(attempt-1)`, capped.
    #[must_use]
    pub fn base_backoff(&self, attempt: u32) -> Duration {
        let exp = self.multiplier.powi(attempt.saturating_sub(1).min(64) as i32);
        let secs = (self.initial_backoff.as_secs_f64() * exp).min(self.max_backoff.as_secs_f64());
        Duration::from_secs_f64(secs.max(0.0))
    }

    /// [`base_backoff`](Self::base_backoff) with jitter applied, never over
    /// `max_backoff`.
    #[must_use]
    pub fn backoff(&self, attempt: u32) -> Duration {
        let base = self.base_backoff(attempt).as_secs_f64();
        let spread = 1.0 + self.jitter * (2.0 * rand::random::<f64>() - 1.0);
        Duration::from_secs_f64((base * spread).clamp(0.0, self.max_backoff.as_secs_f64()))
    }
}

pub(super) fn limits(raw: &RawLimits, fuel_enabled: bool) -> Result<(Limits, InstanceMode), (&'static str, String)> {
    let mut b = Limits::builder();
    if let Some(d) = &raw.deadline {
        let d = duration(d).map_err(|e| ("deadline", e))?;
        if d.is_zero() {
            return Err(("deadline", "must be more than 0".into()));
        }
        b = b.deadline(d);
    }
    if let Some(f) = raw.fuel {
        if !fuel_enabled {
            return Err(("fuel", "set `engine.fuel = true` to meter fuel".into()));
        }
        b = b.fuel(Some(f));
    }
    if let Some(m) = raw.memory_mib {
        if m == 0 || m > 4096 {
            return Err(("memory_mib", format!("{m} is outside 1..=4096")));
        }
        b = b.memory_bytes(m << 20);
    }
    if let Some(o) = raw.max_output_bytes {
        if o == 0 {
            return Err(("max_output_bytes", "must be at least 1".into()));
        }
        b = b.max_output_bytes(o);
    }
    if let Some(e) = raw.max_emits {
        b = b.max_emits(e);
    }
    if let Some(n) = raw.max_log_lines {
        b = b.max_log_lines(n);
    }
    if let Some(n) = raw.max_headers_per_emit {
        b = b.max_headers_per_emit(n);
    }
    if let Some(n) = raw.max_header_bytes_per_emit {
        b = b.max_header_bytes_per_emit(n);
    }
    // State bounds: at least 1 (a zero would refuse every write, which is
    // what not importing the state functions does), at most 16 MiB a value.
    if let Some(n) = raw.max_state_value_bytes {
        if n == 0 || n > 16 << 20 {
            return Err(("max_state_value_bytes", format!("{n} is outside 1..=16777216")));
        }
        b = b.max_state_value_bytes(n);
    }
    if let Some(n) = raw.max_state_keys_per_scope {
        if n == 0 {
            return Err(("max_state_keys_per_scope", "must be at least 1".into()));
        }
        b = b.max_state_keys_per_scope(n);
    }
    if let Some(n) = raw.max_state_write_bytes {
        if n == 0 || n > 64 << 20 {
            return Err(("max_state_write_bytes", format!("{n} is outside 1..=67108864")));
        }
        b = b.max_state_write_bytes(n);
    }
    // Timer bounds: 0 refuses every timer, which is allowed.
    if let Some(n) = raw.max_timers_per_invocation {
        if n > 10_000 {
            return Err(("max_timers_per_invocation", format!("{n} is outside 0..=10000")));
        }
        b = b.max_timers_per_invocation(n);
    }
    if let Some(n) = raw.max_pending_timers {
        b = b.max_pending_timers(n);
    }
    let mode = match raw.instance.as_deref() {
        None | Some("reuse") => InstanceMode::Reuse,
        Some("fresh") => InstanceMode::FreshPerEvent,
        Some(other) => return Err(("instance", format!("{other:?} is not \"reuse\" or \"fresh\""))),
    };
    Ok((b.build(), mode))
}

pub(super) fn retry(raw: &RawRetry) -> Result<RetryPolicy, (&'static str, String)> {
    let mut policy = RetryPolicy::default();
    if let Some(n) = raw.max_attempts {
        if n == 0 {
            return Err(("max_attempts", "must be at least 1 (the first attempt counts)".into()));
        }
        policy.max_attempts = n;
    }
    if let Some(d) = &raw.initial_backoff {
        policy.initial_backoff = duration(d).map_err(|e| ("initial_backoff", e))?;
    }
    if let Some(m) = raw.multiplier {
        if !(1.0..=100.0).contains(&m) {
            return Err(("multiplier", format!("{m} is outside 1.0..=100.0")));
        }
        policy.multiplier = m;
    }
    if let Some(d) = &raw.max_backoff {
        policy.max_backoff = duration(d).map_err(|e| ("max_backoff", e))?;
    }
    if let Some(j) = raw.jitter {
        if !(0.0..=1.0).contains(&j) {
            return Err(("jitter", format!("{j} is outside 0.0..=1.0")));
        }
        policy.jitter = j;
    }
    if policy.max_backoff < policy.initial_backoff {
        return Err((
            "max_backoff",
            format!("{:?} is shorter than initial_backoff {:?}", policy.max_backoff, policy.initial_backoff),
        ));
    }
    Ok(policy)
}
