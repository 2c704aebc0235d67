//! Reminder: durable timers in a handler. When a task is created
//! (`tasks.task.created`, keyed by the task) it schedules a reminder for
//! `remind_in_ms` after the event's time (60 s by default): the host
//! appends `tasks.task.reminder` then, unless the task is done first
//! (`tasks.task.done` cancels the timer by the task's key).
//!
//! The time comes from the event, never from a clock: handling the same
//! event again schedules the same timer.
//!
//! For the host's tests: `burst` schedules that many timers (keys
//! `<task>-<i>`) instead of one; a task key starting with `reject-`
//! schedules its reminder and then rejects the event, so the timer is
//! dropped with the outcome.

use serde::{Deserialize, Serialize};
use weir_sdk::prelude::*;
use weir_sdk::timer::event_time_ms;

/// The payload of `tasks.task.created` (every field optional).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Created {
    /// Remind this long after the event's time, in ms (60,000 if absent).
    pub remind_in_ms: Option<u64>,
    /// Schedule this many timers instead of one.
    pub burst: Option<u32>,
}

/// The payload of `tasks.task.reminder`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reminder {
    /// The task (timer key).
    pub task: String,
    /// When it was due (Unix ms).
    pub due_ms: u64,
}

/// Schedule or cancel the task's reminder.
#[weir_sdk::handler]
pub fn handle(event: &Event, ctx: &mut Context) -> Result<Vec<Emit>, HandlerError> {
    let Some(task) = event.key.clone() else {
        return Err(HandlerError::reject("a task event needs a key (the task id)"));
    };
    match event.topic.as_str() {
        "tasks.task.created" => {
            let created: Created = event.json()?;
            let due_ms = event_time_ms(event).saturating_add(created.remind_in_ms.unwrap_or(60_000));
            match created.burst {
                None => schedule(ctx, event, &task, due_ms)?,
                Some(n) => {
                    for i in 0..n {
                        schedule(ctx, event, &format!("{task}-{i}"), due_ms)?;
                    }
                }
            }
            if task.starts_with("reject-") {
                return Err(HandlerError::reject("rejected after scheduling its reminder"));
            }
        }
        "tasks.task.done" => ctx.cancel_timer(&task)?,
        _ => {}
    }
    Ok(vec![])
}

fn schedule(ctx: &mut Context, event: &Event, key: &str, due_ms: u64) -> Result<(), HandlerError> {
    let reminder = event.emit("tasks.task.reminder").key(key).json(&Reminder { task: key.to_owned(), due_ms })?;
    ctx.schedule(due_ms, key, reminder)
}

#[cfg(test)]
mod tests {
    use weir_sdk::testing::event;
    use weir_sdk::timer::TimerOp;

    use super::*;

    #[test]
    fn a_created_task_schedules_its_reminder_from_the_event_time() {
        let mut ctx = Context::new("tasks/reminder", 1);
        let mut created =
            event("tasks.task.created").key("t-1").json(&serde_json::json!({ "remind_in_ms": 500 })).build();
        created.time = 2_000_000_000;
        assert!(ctx.handle(handle, &created).unwrap().is_empty());
        let (at, emit) = ctx.pending_timer("t-1").unwrap();
        assert_eq!(at, 2_500);
        assert_eq!(emit.topic, "tasks.task.reminder");
        assert_eq!(emit.causation_id, Some(created.id));
        let reminder: Reminder = serde_json::from_slice(&emit.payload).unwrap();
        assert_eq!(reminder, Reminder { task: "t-1".into(), due_ms: 2_500 });
    }

    #[test]
    fn done_cancels_it_and_a_rejected_event_schedules_nothing() {
        let mut ctx = Context::new("tasks/reminder", 1);
        ctx.handle(handle, &event("tasks.task.created").key("t-1").build()).unwrap();
        ctx.handle(handle, &event("tasks.task.done").key("t-1").build()).unwrap();
        assert_eq!(ctx.pending_timer("t-1"), None);
        assert_eq!(ctx.timer_ops().last(), Some(&TimerOp::Cancel { key: "t-1".into() }));
        let ops = ctx.timer_ops().len();
        assert!(ctx.handle(handle, &event("tasks.task.created").key("reject-1").build()).is_err());
        assert_eq!(ctx.timer_ops().len(), ops, "the rejected event's timer is dropped");
        assert_eq!(ctx.pending_timer("reject-1"), None);
    }
}
