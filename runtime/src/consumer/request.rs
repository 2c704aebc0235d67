//! Checking a consumer's request: its name, durations, start position and
//! settings, each against its bound.

use super::*;

/// A consumer's name: 1-64 characters of `a-z`, `0-9`, `_`, `-`.
///
/// # Errors
///
/// [`ConsumerError::Invalid`].
pub(crate) fn check_name(name: &str) -> Result<(), ConsumerError> {
    let ok =
        !name.is_empty() && name.len() <= 64 && name.chars().all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ConsumerError::Invalid(format!("consumer name {name:?} must be 1-64 characters of a-z, 0-9, '_' or '-'")))
    }
}

pub(super) fn duration(field: &str, text: &str, max: Duration) -> Result<Duration, ConsumerError> {
    let d = humantime::parse_duration(text).map_err(|e| {
        ConsumerError::Invalid(format!("`{field}`: {text:?} is not a duration like \"500ms\" or \"30s\" ({e})"))
    })?;
    if d > max {
        return Err(ConsumerError::Invalid(format!(
            "`{field}`: {text:?} is longer than the maximum of {}",
            humantime::format_duration(max)
        )));
    }
    Ok(d)
}

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Parse a start position: `beginning`, `end`, a sequence number, or an
/// RFC 3339 time.
///
/// # Errors
///
/// [`ConsumerError::Invalid`].
pub(crate) fn start_at(text: &str) -> Result<(String, StartAt), ConsumerError> {
    let start = match text {
        "beginning" => StartAt::Beginning,
        "end" => StartAt::End,
        _ => match text.parse::<u64>() {
            Ok(seq) => StartAt::Seq(seq),
            Err(_) => {
                let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).map_err(
                    |_| {
                        ConsumerError::Invalid(format!(
                            "`from`: {text:?} is not `beginning`, `end`, a sequence number or an RFC 3339 time"
                        ))
                    },
                )?;
                StartAt::Time(u64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0))
            }
        },
    };
    Ok((text.to_owned(), start))
}

/// Check a consumer's settings, with the defaults filled in.
///
/// # Errors
///
/// [`ConsumerError::Invalid`] naming the field.
pub(crate) fn spec(request: &ConsumerRequest) -> Result<ConsumerSpec, ConsumerError> {
    if request.topics.is_empty() || request.topics.len() > 64 {
        return Err(ConsumerError::Invalid("`topics`: give 1 to 64 topic patterns".into()));
    }
    for topic in &request.topics {
        crate::topic::Pattern::parse(topic).map_err(|e| ConsumerError::Invalid(format!("`topics`: {e}")))?;
    }
    let ack_wait = match &request.ack_wait {
        Some(text) => duration("ack_wait", text, MAX_ACK_WAIT)?,
        None => DEFAULT_ACK_WAIT,
    };
    if ack_wait < Duration::from_millis(1) {
        return Err(ConsumerError::Invalid("`ack_wait` must be at least 1ms".into()));
    }
    let max_deliveries = request.max_deliveries.unwrap_or(DEFAULT_MAX_DELIVERIES);
    if max_deliveries == 0 {
        return Err(ConsumerError::Invalid("`max_deliveries` must be at least 1 (the first delivery counts)".into()));
    }
    let backoff = request.backoff.clone().unwrap_or_default();
    if backoff.len() > MAX_BACKOFF_STEPS {
        return Err(ConsumerError::Invalid(format!("`backoff`: at most {MAX_BACKOFF_STEPS} steps")));
    }
    let backoff_ms =
        backoff.iter().map(|t| duration("backoff", t, MAX_ACK_WAIT).map(millis)).collect::<Result<Vec<_>, _>>()?;
    let max_in_flight = request.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT);
    if max_in_flight == 0 || max_in_flight > MAX_IN_FLIGHT_LIMIT {
        return Err(ConsumerError::Invalid(format!("`max_in_flight` is 1 to {MAX_IN_FLIGHT_LIMIT}")));
    }
    Ok(ConsumerSpec {
        topics: request.topics.clone(),
        ack_wait_ms: millis(ack_wait),
        max_deliveries,
        backoff_ms,
        per_key_ordering: request.per_key_ordering.unwrap_or(true),
        max_in_flight,
    })
}
