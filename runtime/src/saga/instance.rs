//! A saga instance as the coordinator keeps it in its state, and as
//! `GET /v1/sagas/{id}` shows it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Timeline entries kept per instance; older ones are dropped (counted in
/// [`Instance::timeline_dropped`]) so an instance that retries for a long
/// time stays small.
pub const MAX_TIMELINE: usize = 64;
/// Largest reply payload kept in [`Instance::data`], in bytes; a larger one
/// is noted by its size.
pub const MAX_REPLY_DATA_BYTES: usize = 4096;
/// Longest saga id (the key of every command and reply).
pub const MAX_SAGA_ID_BYTES: usize = 200;

/// Where a saga stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaStatus {
    /// Steps go forward.
    Running,
    /// The completed steps are compensated, last first.
    Compensating,
    /// Every step succeeded.
    Completed,
    /// A step failed or timed out, and every completed step was compensated.
    Compensated,
    /// Cancelled by an operator, and every completed step was compensated
    /// (or the operator gave up on a failed compensation).
    Cancelled,
    /// A compensation used up its retries: an operator resumes, skips or
    /// cancels.
    CompensationFailed,
    /// A step past the pivot used up its retries: an operator resumes or
    /// skips (the saga cannot go back).
    ForwardFailed,
}

impl SagaStatus {
    /// Every status, in the order metrics list them.
    pub const ALL: [Self; 7] = [
        Self::Running,
        Self::Compensating,
        Self::Completed,
        Self::Compensated,
        Self::Cancelled,
        Self::CompensationFailed,
        Self::ForwardFailed,
    ];

    /// The name used in the API, the CLI and metrics.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Compensating => "compensating",
            Self::Completed => "completed",
            Self::Compensated => "compensated",
            Self::Cancelled => "cancelled",
            Self::CompensationFailed => "compensation_failed",
            Self::ForwardFailed => "forward_failed",
        }
    }

    /// Parse [`as_str`](Self::as_str).
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Whether nothing more happens without an operator.
    #[must_use]
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Compensated | Self::Cancelled)
    }
}

/// What the instance waits for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Waiting {
    /// The reply to the command in flight (or its timeout).
    Reply,
    /// The backoff before the next attempt.
    Backoff,
    /// Nothing: final, or an operator's decision.
    Nothing,
}

/// One thing that happened to an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// When, milliseconds since the epoch.
    pub at_ms: u64,
    /// What: `started`, `command`, `reply`, `timeout`, `late_reply`,
    /// `compensate`, `compensated`, `compensation_failed`, `deadline`,
    /// `cancel`, `resume`, `skip`, `completed`, `refused`, …
    pub kind: String,
    /// The step concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// The attempt concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// The topic of the command sent or the reply received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// The id of the event received, when one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// More words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One saga instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    /// The saga's name.
    pub saga: String,
    /// The instance id: the key of its commands and replies.
    pub id: String,
    /// Where it stands.
    pub status: SagaStatus,
    /// The step in flight (running), or being compensated.
    pub step: usize,
    /// Its name.
    pub step_name: String,
    /// The attempt of that step (or compensation) in flight, from 1.
    pub attempt: u32,
    /// Attempts of the current step (or compensation) since its retry
    /// budget began (an operator's resume starts a new one).
    #[serde(default)]
    pub tries: u32,
    /// What it waits for.
    pub waiting: Waiting,
    /// The steps that succeeded, in order.
    pub completed: Vec<String>,
    /// The compensations done (or skipped by an operator), in order.
    pub compensated: Vec<String>,
    /// Whether the pivot step succeeded: from then on, forward only.
    pub past_pivot: bool,
    /// Why it compensates, when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// The start event's payload, when it is JSON.
    pub input: serde_json::Value,
    /// Each completed step's reply payload (JSON, when small enough).
    pub data: BTreeMap<String, serde_json::Value>,
    /// What happened, oldest first; at most [`MAX_TIMELINE`] entries.
    pub timeline: Vec<TimelineEntry>,
    /// Entries dropped from the front of the timeline.
    pub timeline_dropped: u64,
    /// When it started, ms since the epoch.
    pub started_ms: u64,
    /// When it last changed.
    pub updated_ms: u64,
    /// When the step (or compensation) in flight was first sent.
    pub step_started_ms: u64,
    /// When the overall timeout falls.
    pub deadline_ms: u64,
    /// A random number the instance's timer events carry: an event on the
    /// timer topic without it is not this instance's timer. Never shown.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub nonce: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Instance {
    /// Add a timeline entry, dropping the oldest past [`MAX_TIMELINE`].
    pub(crate) fn note(&mut self, entry: TimelineEntry) {
        self.updated_ms = self.updated_ms.max(entry.at_ms);
        if self.timeline.len() >= MAX_TIMELINE {
            self.timeline.remove(0);
            self.timeline_dropped += 1;
        }
        self.timeline.push(entry);
    }

    /// The instance as shown outside: without its timer nonce.
    #[must_use]
    pub fn public(mut self) -> Self {
        self.nonce = 0;
        self
    }
}

/// An operator's action on an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminOp {
    /// Stop going forward and compensate; or give up a failed compensation.
    Cancel,
    /// Try the failed compensation (or forward step) again.
    Resume,
    /// Take the failed compensation (or forward step) as done and go on.
    Skip,
}

impl AdminOp {
    /// Its name in the API.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cancel => "cancel",
            Self::Resume => "resume",
            Self::Skip => "skip",
        }
    }

    /// Parse [`as_str`](Self::as_str).
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Cancel, Self::Resume, Self::Skip].into_iter().find(|o| o.as_str() == text)
    }

    /// Whether the action applies to an instance in `status` (and past the
    /// pivot or not); `Err` says why not.
    ///
    /// # Errors
    ///
    /// The reason the action does not apply.
    pub fn applies(self, status: SagaStatus, past_pivot: bool) -> Result<(), String> {
        let ok = match self {
            Self::Cancel => (status == SagaStatus::Running && !past_pivot) || status == SagaStatus::CompensationFailed,
            Self::Resume | Self::Skip => {
                matches!(status, SagaStatus::CompensationFailed | SagaStatus::ForwardFailed)
            }
        };
        if ok {
            return Ok(());
        }
        Err(match (self, status) {
            (Self::Cancel, SagaStatus::Running) => "the saga is past its pivot: it only goes forward".to_owned(),
            (Self::Cancel, _) => format!(
                "a saga {} cannot be cancelled (only a running one before its pivot, or compensation_failed)",
                status.as_str()
            ),
            _ => format!(
                "{} applies to a saga compensation_failed or forward_failed, not {}",
                self.as_str(),
                status.as_str()
            ),
        })
    }
}
