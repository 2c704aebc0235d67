//! Audit logger: logs every event it sees through the host and emits an
//! `audit.event.recorded` record naming it — topic, id, key and size only,
//! never the payload (events carry only what consumers need).

use serde::{Deserialize, Serialize};
use weir_sdk::prelude::*;

/// The audit record.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Recorded {
    /// Id of the audited event.
    pub event_id: String,
    /// Its topic.
    pub topic: String,
    /// Its key, if any.
    pub key: Option<String>,
    /// Its payload size in bytes.
    pub bytes: usize,
    /// The delivery attempt that recorded it.
    pub attempt: u32,
    /// The names of its headers, in order (the values stay out, as the
    /// payload does).
    #[serde(default)]
    pub headers: Vec<String>,
}

/// Record one event.
#[weir_sdk::handler(topics = [">"])]
pub fn handle(event: &Event, ctx: &mut Context) -> Result<Vec<Emit>, HandlerError> {
    weir_sdk::info!("audit {} {} key={:?} bytes={}", event.topic, event.id, event.key, event.payload.len());
    let record = Recorded {
        event_id: event.id.to_string(),
        topic: event.topic.clone(),
        key: event.key.clone(),
        bytes: event.payload.len(),
        attempt: ctx.attempt(),
        headers: event.headers.iter().map(|h| h.name.clone()).collect(),
    };
    Ok(vec![event.emit("audit.event.recorded").idempotency_key(format!("audit:{}", event.id)).json(&record)?])
}

#[cfg(test)]
mod tests {
    use weir_sdk::testing;

    use super::*;
    use weir_sdk::LogLevel;

    #[test]
    fn logs_and_records_without_the_payload() {
        let event = testing::event("orders.order.created")
            .key("k")
            .header("trace", "secret-too")
            .bytes(b"secret".to_vec())
            .build();
        let out = handle(&event, &mut Context::new("audit/log", 2)).unwrap();
        let record: Recorded = out[0].payload_json().unwrap();
        assert_eq!(record.bytes, 6);
        assert_eq!(record.attempt, 2);
        assert_eq!(record.headers, ["trace"]);
        assert!(!String::from_utf8_lossy(out[0].payload()).contains("secret-too"));
        assert!(!String::from_utf8_lossy(out[0].payload()).contains("secret"));
        let logs = weir_sdk::log::take_captured();
        assert_eq!(logs.len(), 1);
        assert_eq!(logs[0].0, LogLevel::Info);
        assert!(logs[0].1.contains("orders.order.created"));
    }
}
