//! Orchestrated sagas (docs/sagas.md): a coordinator per `[[sagas]]`
//! declaration, one more kind of subscription (`sagas/<name>`).
//!
//! Each instance lives in the subscription's state (the shared scope, keyed
//! by saga id), so a transition — the instance written, the commands it
//! sends, the timers it sets or cancels — commits in the transaction that
//! moves the coordinator's cursor past the event that caused it. A crash
//! before that commit redoes the event; after it, the event is done. Nothing
//! is sent twice and nothing is lost.
//!
//! | file | concern |
//! |---|---|
//! | `instance.rs` | the instance, its statuses and timeline |
//! | `machine.rs` | the transitions: pure, unit-tested |
//! | `coordinator.rs` | the [`Invoke`](crate::Invoke) reading events into transitions |
//! | `metrics.rs` | sagas by status, step latency, compensations by outcome |

mod coordinator;
mod instance;
mod machine;
mod metrics;

pub(crate) use coordinator::{ADMIN_HEADER, Coordinator, count_key, count_value};
pub use instance::{
    AdminOp, Instance, MAX_REPLY_DATA_BYTES, MAX_SAGA_ID_BYTES, MAX_TIMELINE, SagaStatus, TimelineEntry, Waiting,
};
pub use machine::{HEADER_ATTEMPT, HEADER_ID, HEADER_IDEMPOTENCY, HEADER_NAME, HEADER_PHASE, HEADER_STEP};
pub(crate) use metrics::SagaMetrics;

pub(crate) use crate::delivery::TimerOp;

/// `attempt` with `timers` to commit with its outcome.
pub(crate) fn with_timers(mut attempt: crate::delivery::Attempt, timers: Vec<TimerOp>) -> crate::delivery::Attempt {
    attempt.timers = timers;
    attempt
}
