//! `[consumers]` and `[retention]`: the read side's settings.

use super::*;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConsumers {
    pub(super) max_consumers: Option<usize>,
    pub(super) max_waiting_fetches: Option<usize>,
}

/// Bounds of the durable consumers (`[consumers]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumersConfig {
    /// Most consumers this server holds. Default 64.
    pub max_consumers: usize,
    /// Most fetches waiting (long-polling) at once, over all consumers;
    /// more are answered `503 overloaded`. Default 256.
    pub max_waiting_fetches: usize,
}

impl Default for ConsumersConfig {
    fn default() -> Self {
        Self { max_consumers: 64, max_waiting_fetches: 256 }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetention {
    default: Option<String>,
    interval: Option<String>,
    #[serde(default)]
    topics: Vec<RawRetentionTopic>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetentionTopic {
    pattern: String,
    retention: Option<String>,
    #[serde(default)]
    compact: bool,
}

/// Default of `[retention] interval`.
pub const DEFAULT_RETENTION_INTERVAL: Duration = Duration::from_secs(60);

/// `[retention]`: the default, the interval and the per-pattern rules.
pub(super) fn log_retention(raw: &RawRetention) -> Result<(crate::store::RetentionPolicy, Duration), (String, String)> {
    use crate::store::{Keep, RetentionPolicy, RetentionRule};
    let default = match &raw.default {
        Some(text) => Keep::parse(text).map_err(|e| ("retention.default".to_owned(), e))?,
        None => Keep::Forever,
    };
    let interval = match &raw.interval {
        Some(text) => {
            let d = duration(text).map_err(|e| ("retention.interval".to_owned(), e))?;
            if d < Duration::from_millis(10) {
                return Err(("retention.interval".to_owned(), format!("{text:?} is shorter than 10ms")));
            }
            d
        }
        None => DEFAULT_RETENTION_INTERVAL,
    };
    let mut rules = Vec::with_capacity(raw.topics.len());
    for (i, t) in raw.topics.iter().enumerate() {
        let key = format!("retention.topics[{i}]");
        let pattern = Pattern::parse(&t.pattern).map_err(|e| (format!("{key}.pattern"), e.to_string()))?;
        let keep = match &t.retention {
            Some(text) => Keep::parse(text).map_err(|e| (format!("{key}.retention"), e))?,
            None => Keep::Forever,
        };
        rules.push(RetentionRule { pattern, keep, compact: t.compact });
    }
    Ok((RetentionPolicy { rules, default }, interval))
}
