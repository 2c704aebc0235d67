//! Per-handler sandbox limits.

use std::time::Duration;

/// Default wall-clock deadline per invocation.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(1);
/// Default cap on a plugin's linear memory.
pub const DEFAULT_MEMORY_BYTES: usize = 64 << 20;
/// Default cap on the encoded outcome of one invocation.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 4 << 20;
/// Default cap on the number of events one invocation may emit.
pub const DEFAULT_MAX_EMITS: usize = 1_000;
/// Default cap on log bytes one invocation may write; more is dropped and
/// counted.
pub const DEFAULT_MAX_LOG_BYTES: usize = 64 << 10;
/// Default cap on log lines one invocation may write; more are dropped and
/// counted.
pub const DEFAULT_MAX_LOG_LINES: usize = 256;
/// What each log line costs against [`Limits::max_log_bytes`] on top of its
/// text: an empty line is not free, so a loop of zero-length `log` calls
/// cannot grow the host's memory.
pub const LOG_LINE_OVERHEAD: usize = 64;
/// Default cap on the headers of one emitted event.
pub const DEFAULT_MAX_HEADERS_PER_EMIT: usize = 64;
/// Default cap on the bytes (names and values) of the headers of one
/// emitted event.
pub const DEFAULT_MAX_HEADER_BYTES_PER_EMIT: usize = 16 << 10;
/// Default cap on one state value.
pub const DEFAULT_MAX_STATE_VALUE_BYTES: usize = 64 << 10;
/// Default cap on the keys of one state scope.
pub const DEFAULT_MAX_STATE_KEYS_PER_SCOPE: usize = 10_000;
/// Default cap on the state bytes (keys and values) one invocation writes.
pub const DEFAULT_MAX_STATE_WRITE_BYTES: usize = 1 << 20;

/// Default cap on the timer operations one invocation asks for.
pub const DEFAULT_MAX_TIMERS_PER_INVOCATION: usize = 64;
/// Default cap on the timers one subscription has pending.
pub const DEFAULT_MAX_PENDING_TIMERS: usize = 100_000;

/// The limits a handler runs under. Build with [`Limits::builder`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use weir_runtime::Limits;
/// let limits = Limits::builder().deadline(Duration::from_millis(200)).memory_bytes(16 << 20).build();
/// assert_eq!(limits.memory_bytes(), 16 << 20);
/// assert_eq!(limits.fuel(), None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    deadline: Duration,
    fuel: Option<u64>,
    memory_bytes: usize,
    max_output_bytes: usize,
    max_emits: usize,
    max_log_bytes: usize,
    max_log_lines: usize,
    max_headers_per_emit: usize,
    max_header_bytes_per_emit: usize,
    max_state_value_bytes: usize,
    max_state_keys_per_scope: usize,
    max_state_write_bytes: usize,
    max_timers_per_invocation: usize,
    max_pending_timers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            deadline: DEFAULT_DEADLINE,
            fuel: None,
            memory_bytes: DEFAULT_MEMORY_BYTES,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            max_emits: DEFAULT_MAX_EMITS,
            max_log_bytes: DEFAULT_MAX_LOG_BYTES,
            max_log_lines: DEFAULT_MAX_LOG_LINES,
            max_headers_per_emit: DEFAULT_MAX_HEADERS_PER_EMIT,
            max_header_bytes_per_emit: DEFAULT_MAX_HEADER_BYTES_PER_EMIT,
            max_state_value_bytes: DEFAULT_MAX_STATE_VALUE_BYTES,
            max_state_keys_per_scope: DEFAULT_MAX_STATE_KEYS_PER_SCOPE,
            max_state_write_bytes: DEFAULT_MAX_STATE_WRITE_BYTES,
            max_timers_per_invocation: DEFAULT_MAX_TIMERS_PER_INVOCATION,
            max_pending_timers: DEFAULT_MAX_PENDING_TIMERS,
        }
    }
}

impl Limits {
    /// A builder starting from the defaults.
    #[must_use]
    pub fn builder() -> LimitsBuilder {
        LimitsBuilder(Self::default())
    }

    /// Wall-clock deadline per invocation.
    #[must_use]
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Fuel budget per invocation, if metered.
    #[must_use]
    pub fn fuel(&self) -> Option<u64> {
        self.fuel
    }

    /// Linear memory cap in bytes.
    #[must_use]
    pub fn memory_bytes(&self) -> usize {
        self.memory_bytes
    }

    /// Cap on the encoded outcome.
    #[must_use]
    pub fn max_output_bytes(&self) -> usize {
        self.max_output_bytes
    }

    /// Cap on emitted events per invocation.
    #[must_use]
    pub fn max_emits(&self) -> usize {
        self.max_emits
    }

    /// Cap on log bytes per invocation.
    #[must_use]
    pub fn max_log_bytes(&self) -> usize {
        self.max_log_bytes
    }

    /// Cap on log lines per invocation.
    #[must_use]
    pub fn max_log_lines(&self) -> usize {
        self.max_log_lines
    }

    /// Cap on the headers of one emitted event.
    #[must_use]
    pub fn max_headers_per_emit(&self) -> usize {
        self.max_headers_per_emit
    }

    /// Cap on the header bytes (names and values) of one emitted event.
    #[must_use]
    pub fn max_header_bytes_per_emit(&self) -> usize {
        self.max_header_bytes_per_emit
    }

    /// Cap on one state value, in bytes.
    #[must_use]
    pub fn max_state_value_bytes(&self) -> usize {
        self.max_state_value_bytes
    }

    /// Cap on the keys one state scope holds.
    #[must_use]
    pub fn max_state_keys_per_scope(&self) -> usize {
        self.max_state_keys_per_scope
    }

    /// Cap on the state bytes (keys and values, deletes counting their key)
    /// one invocation writes.
    #[must_use]
    pub fn max_state_write_bytes(&self) -> usize {
        self.max_state_write_bytes
    }

    /// Cap on the timer operations (schedules and cancels) one invocation
    /// asks for.
    #[must_use]
    pub fn max_timers_per_invocation(&self) -> usize {
        self.max_timers_per_invocation
    }

    /// Cap on the timers the handler's subscription has pending.
    #[must_use]
    pub fn max_pending_timers(&self) -> usize {
        self.max_pending_timers
    }

    pub(crate) fn state_call_limits(&self) -> super::state::StateCallLimits {
        super::state::StateCallLimits {
            max_value_bytes: self.max_state_value_bytes,
            max_write_bytes: self.max_state_write_bytes,
        }
    }
}

/// Builder for [`Limits`]; every setter documents its default.
#[derive(Debug, Clone)]
pub struct LimitsBuilder(Limits);

impl LimitsBuilder {
    /// Wall-clock deadline per invocation, enforced by epoch interruption.
    /// By default 1 s ([`DEFAULT_DEADLINE`]). The guest is stopped no earlier
    /// than the deadline and at most two epoch ticks after it (the deadline is
    /// rounded up to whole ticks, plus one because the first tick may come at
    /// once): 1000–1020 ms with the defaults.
    #[must_use]
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.0.deadline = deadline;
        self
    }

    /// Fuel budget per invocation (roughly one unit per Wasm instruction),
    /// for a deterministic CPU bound. By default none; requires an engine
    /// with fuel metering.
    #[must_use]
    pub fn fuel(mut self, fuel: Option<u64>) -> Self {
        self.0.fuel = fuel;
        self
    }

    /// Cap on linear memory. By default 64 MiB ([`DEFAULT_MEMORY_BYTES`]).
    #[must_use]
    pub fn memory_bytes(mut self, bytes: usize) -> Self {
        self.0.memory_bytes = bytes;
        self
    }

    /// Cap on the encoded outcome. By default 4 MiB
    /// ([`DEFAULT_MAX_OUTPUT_BYTES`]).
    #[must_use]
    pub fn max_output_bytes(mut self, bytes: usize) -> Self {
        self.0.max_output_bytes = bytes;
        self
    }

    /// Cap on emitted events per invocation. By default 1,000
    /// ([`DEFAULT_MAX_EMITS`]).
    #[must_use]
    pub fn max_emits(mut self, emits: usize) -> Self {
        self.0.max_emits = emits;
        self
    }

    /// Cap on log bytes per invocation. By default 64 KiB
    /// ([`DEFAULT_MAX_LOG_BYTES`]). Each line costs its length plus
    /// [`LOG_LINE_OVERHEAD`].
    #[must_use]
    pub fn max_log_bytes(mut self, bytes: usize) -> Self {
        self.0.max_log_bytes = bytes;
        self
    }

    /// Cap on log lines per invocation. By default 256
    /// ([`DEFAULT_MAX_LOG_LINES`]).
    #[must_use]
    pub fn max_log_lines(mut self, lines: usize) -> Self {
        self.0.max_log_lines = lines;
        self
    }

    /// Cap on the headers of one emitted event; more fail the invocation as
    /// `bad_output`. By default 64 ([`DEFAULT_MAX_HEADERS_PER_EMIT`]).
    #[must_use]
    pub fn max_headers_per_emit(mut self, headers: usize) -> Self {
        self.0.max_headers_per_emit = headers;
        self
    }

    /// Cap on the header bytes (names plus values) of one emitted event;
    /// more fail the invocation as `bad_output`. By default 16 KiB
    /// ([`DEFAULT_MAX_HEADER_BYTES_PER_EMIT`]).
    #[must_use]
    pub fn max_header_bytes_per_emit(mut self, bytes: usize) -> Self {
        self.0.max_header_bytes_per_emit = bytes;
        self
    }

    /// Cap on one state value; a larger `state_put` fails the invocation as
    /// `state_limit`. By default 64 KiB ([`DEFAULT_MAX_STATE_VALUE_BYTES`]).
    #[must_use]
    pub fn max_state_value_bytes(mut self, bytes: usize) -> Self {
        self.0.max_state_value_bytes = bytes;
        self
    }

    /// Cap on the keys of one state scope; a `state_put` of a new key into a
    /// full scope fails the invocation as `state_limit`. By default 10,000
    /// ([`DEFAULT_MAX_STATE_KEYS_PER_SCOPE`]).
    #[must_use]
    pub fn max_state_keys_per_scope(mut self, keys: usize) -> Self {
        self.0.max_state_keys_per_scope = keys;
        self
    }

    /// Cap on the state bytes one invocation writes. By default 1 MiB
    /// ([`DEFAULT_MAX_STATE_WRITE_BYTES`]).
    #[must_use]
    pub fn max_state_write_bytes(mut self, bytes: usize) -> Self {
        self.0.max_state_write_bytes = bytes;
        self
    }

    /// Cap on the timer operations one invocation asks for; more fail the
    /// invocation as `timer_limit` (final). By default 64
    /// ([`DEFAULT_MAX_TIMERS_PER_INVOCATION`]).
    #[must_use]
    pub fn max_timers_per_invocation(mut self, ops: usize) -> Self {
        self.0.max_timers_per_invocation = ops;
        self
    }

    /// Cap on the timers a subscription has pending; an invocation that
    /// would pass it fails as `timer_limit` (final). By default 100,000
    /// ([`DEFAULT_MAX_PENDING_TIMERS`]).
    #[must_use]
    pub fn max_pending_timers(mut self, timers: usize) -> Self {
        self.0.max_pending_timers = timers;
        self
    }

    /// The limits.
    #[must_use]
    pub fn build(self) -> Limits {
        self.0
    }
}
