//! `[[sagas]]`: orchestrated sagas (docs/sagas.md), each a subscription
//! `sagas/<name>` whose coordinator sends the steps' commands, waits for
//! their replies and compensates the completed steps in reverse order.

use super::*;

/// The pipeline part of a saga's subscription name: `sagas/<name>`.
pub const SAGA_PIPELINE: &str = "sagas";
/// The domain of the topics the host keeps for a saga's own events
/// (`weir-saga.<name>.timer`, `.admin`, `.failed`): no declaration may use it.
pub const SAGA_TOPIC_DOMAIN: &str = "weir-saga";
/// Most steps one saga may have.
pub const MAX_SAGA_STEPS: usize = 32;
/// Most reply topics one step (or its compensation) may list per outcome.
pub const MAX_REPLY_TOPICS: usize = 8;
/// Default step timeout.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Default overall timeout of a saga.
pub const DEFAULT_SAGA_TIMEOUT: Duration = Duration::from_secs(3600);
/// Default number of instances one saga keeps (running and finished).
pub const DEFAULT_MAX_INSTANCES: usize = 1_000_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSaga {
    name: String,
    start: String,
    correlation: Option<String>,
    timeout: Option<String>,
    max_instances: Option<usize>,
    from: Option<String>,
    #[serde(default)]
    steps: Vec<RawStep>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    name: String,
    command: String,
    #[serde(default)]
    success: Vec<String>,
    #[serde(default)]
    failure: Vec<String>,
    timeout: Option<String>,
    #[serde(default)]
    retry: RawRetry,
    compensation: Option<String>,
    #[serde(default)]
    compensation_success: Vec<String>,
    #[serde(default)]
    compensation_failure: Vec<String>,
    compensation_timeout: Option<String>,
    #[serde(default)]
    compensation_retry: RawRetry,
    #[serde(default)]
    pivot: bool,
}

/// Where a saga's id comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Correlation {
    /// The start event's key (`correlation = "key"`, the default).
    Key,
    /// A string or number in the start event's JSON payload, by JSON
    /// pointer (`correlation = "/order_id"`).
    Payload(String),
}

/// One step of a saga.
#[derive(Debug, Clone)]
pub struct SagaStep {
    /// Its name, unique within the saga.
    pub name: String,
    /// The topic its command is emitted on.
    pub command: String,
    /// Reply topics that mean the step succeeded.
    pub success: Vec<String>,
    /// Reply topics that mean it failed (final: the saga compensates).
    pub failure: Vec<String>,
    /// How long the coordinator waits for a reply to one attempt.
    pub timeout: Duration,
    /// Attempts (a timeout counts as a failed attempt) and their backoff.
    pub retry: RetryPolicy,
    /// Its compensation, when it has one.
    pub compensation: Option<Compensation>,
    /// After this step the saga only goes forward.
    pub pivot: bool,
}

/// How a step is undone.
#[derive(Debug, Clone)]
pub struct Compensation {
    /// The topic the compensation command is emitted on.
    pub command: String,
    /// Reply topics that mean it is done.
    pub success: Vec<String>,
    /// Reply topics that mean this attempt failed (retried).
    pub failure: Vec<String>,
    /// How long one attempt waits for its reply.
    pub timeout: Duration,
    /// Attempts and backoff; once used up the saga is `compensation_failed`.
    pub retry: RetryPolicy,
}

/// One declared saga (`[[sagas]]`).
#[derive(Debug, Clone)]
pub struct SagaConfig {
    /// Its name: the subscription is `sagas/<name>`.
    pub name: String,
    /// The topic whose events start an instance.
    pub start: String,
    /// Where an instance's id comes from.
    pub correlation: Correlation,
    /// The overall timeout: a saga still running before its pivot then
    /// compensates.
    pub timeout: Duration,
    /// Instances kept at most; a start beyond is dead-lettered.
    pub max_instances: usize,
    /// Where the subscription starts without a cursor.
    pub from: crate::store::StartPosition,
    /// The steps, in order.
    pub steps: Vec<SagaStep>,
}

impl SagaConfig {
    /// The subscription name, `sagas/<name>`.
    #[must_use]
    pub fn subscription(&self) -> String {
        format!("{SAGA_PIPELINE}/{}", self.name)
    }

    /// The host's topic for one of the saga's own events (`timer`, `admin`,
    /// `failed`).
    #[must_use]
    pub fn own_topic(&self, what: &str) -> String {
        format!("{}{what}", self.own_topics_prefix())
    }

    /// What every one of the saga's own topics begins with:
    /// `weir-saga.<name>.`.
    #[must_use]
    pub fn own_topics_prefix(&self) -> String {
        format!("{SAGA_TOPIC_DOMAIN}.{}.", self.name)
    }

    /// Every topic the coordinator reads: the start, the replies and its
    /// own events.
    #[must_use]
    pub fn topics(&self) -> Vec<String> {
        let mut out = vec![self.start.clone()];
        for s in &self.steps {
            out.extend(s.success.iter().chain(&s.failure).cloned());
            if let Some(c) = &s.compensation {
                out.extend(c.success.iter().chain(&c.failure).cloned());
            }
        }
        out.extend(["timer", "admin", "failed"].map(|w| self.own_topic(w)));
        out
    }
}

/// Validate `[[sagas]]`. `consumed` answers whether some pipeline or sink
/// reads a topic: a command nobody reads would wait for its timeout.
pub(super) fn sagas(raw: Vec<RawSaga>, consumed: &dyn Fn(&str) -> bool) -> Result<Vec<SagaConfig>, (String, String)> {
    let mut out: Vec<SagaConfig> = Vec::with_capacity(raw.len());
    for (i, rs) in raw.into_iter().enumerate() {
        let key = format!("sagas[{i}]");
        check_name(&rs.name).map_err(|e| (format!("{key}.name"), e))?;
        if out.iter().any(|s| s.name == rs.name) {
            return Err((format!("{key}.name"), format!("saga {:?} is declared twice", rs.name)));
        }
        topic(&rs.start).map_err(|e| (format!("{key}.start"), e))?;
        let correlation = match rs.correlation.as_deref() {
            None | Some("key") => Correlation::Key,
            Some(p) if p.starts_with('/') && p.len() <= 256 => Correlation::Payload(p.to_owned()),
            Some(other) => {
                return Err((
                    format!("{key}.correlation"),
                    format!("{other:?} is neither \"key\" nor a JSON pointer like \"/order_id\" (at most 256 bytes)"),
                ));
            }
        };
        let timeout =
            opt_duration(rs.timeout.as_deref(), DEFAULT_SAGA_TIMEOUT).map_err(|e| (format!("{key}.timeout"), e))?;
        let max_instances = rs.max_instances.unwrap_or(DEFAULT_MAX_INSTANCES);
        if max_instances == 0 {
            return Err((format!("{key}.max_instances"), "must be at least 1".into()));
        }
        let from = match &rs.from {
            Some(text) => crate::store::StartPosition::parse(text).map_err(|e| (format!("{key}.from"), e))?,
            None => crate::store::StartPosition::Beginning,
        };
        if rs.steps.is_empty() {
            return Err((format!("{key}.steps"), "a saga needs at least one step".into()));
        }
        if rs.steps.len() > MAX_SAGA_STEPS {
            return Err((format!("{key}.steps"), format!("{} steps; at most {MAX_SAGA_STEPS}", rs.steps.len())));
        }
        let mut steps: Vec<SagaStep> = Vec::with_capacity(rs.steps.len());
        // Every topic the coordinator reads, with where it was declared: one
        // reply topic means one thing.
        let mut seen: Vec<(String, String)> = vec![(rs.start.clone(), format!("{key}.start"))];
        let mut pivot_at: Option<usize> = None;
        for (j, st) in rs.steps.into_iter().enumerate() {
            let key = format!("{key}.steps[{j}]");
            check_name(&st.name).map_err(|e| (format!("{key}.name"), e))?;
            if steps.iter().any(|s| s.name == st.name) {
                return Err((format!("{key}.name"), format!("step {:?} is declared twice in this saga", st.name)));
            }
            command(&st.command, consumed).map_err(|e| (format!("{key}.command"), e))?;
            replies(&st.success, &st.failure, &format!("{key}."), "", &mut seen)?;
            let step_timeout =
                opt_duration(st.timeout.as_deref(), DEFAULT_STEP_TIMEOUT).map_err(|e| (format!("{key}.timeout"), e))?;
            let step_retry = retry(&st.retry).map_err(|(f, e)| (format!("{key}.retry.{f}"), e))?;
            let compensation = match &st.compensation {
                Some(c) => {
                    if let Some(p) = pivot_at {
                        return Err((
                            format!("{key}.compensation"),
                            format!(
                                "step {:?} comes after the pivot (steps[{p}]): past the pivot a saga only goes forward, so its steps cannot be compensated",
                                st.name
                            ),
                        ));
                    }
                    command(c, consumed).map_err(|e| (format!("{key}.compensation"), e))?;
                    replies(
                        &st.compensation_success,
                        &st.compensation_failure,
                        &format!("{key}."),
                        "compensation_",
                        &mut seen,
                    )?;
                    Some(Compensation {
                        command: c.clone(),
                        success: st.compensation_success.clone(),
                        failure: st.compensation_failure.clone(),
                        timeout: opt_duration(st.compensation_timeout.as_deref(), DEFAULT_STEP_TIMEOUT)
                            .map_err(|e| (format!("{key}.compensation_timeout"), e))?,
                        retry: retry(&st.compensation_retry)
                            .map_err(|(f, e)| (format!("{key}.compensation_retry.{f}"), e))?,
                    })
                }
                None => {
                    let stray = [
                        ("compensation_success", !st.compensation_success.is_empty()),
                        ("compensation_failure", !st.compensation_failure.is_empty()),
                        ("compensation_timeout", st.compensation_timeout.is_some()),
                    ];
                    if let Some((field, _)) = stray.iter().find(|(_, set)| *set) {
                        return Err((
                            format!("{key}.{field}"),
                            "belongs to a compensation: give compensation = \"<topic>\" too".into(),
                        ));
                    }
                    None
                }
            };
            if st.pivot {
                if let Some(p) = pivot_at {
                    return Err((
                        format!("{key}.pivot"),
                        format!("steps[{p}] is the pivot already; a saga has at most one"),
                    ));
                }
                pivot_at = Some(j);
            }
            steps.push(SagaStep {
                name: st.name,
                command: st.command,
                success: st.success,
                failure: st.failure,
                timeout: step_timeout,
                retry: step_retry,
                compensation,
                pivot: st.pivot,
            });
        }
        // Command topics the coordinator reads would be taken for replies.
        for (j, s) in steps.iter().enumerate() {
            let commands = std::iter::once((&s.command, "command"))
                .chain(s.compensation.iter().map(|c| (&c.command, "compensation")));
            for (t, field) in commands {
                if let Some((_, at)) = seen.iter().find(|(x, _)| x == t) {
                    return Err((
                        format!("{key}.steps[{j}].{field}"),
                        format!(
                            "{t:?} is also read by the coordinator ({at}): a command topic must differ from the start and reply topics"
                        ),
                    ));
                }
            }
        }
        out.push(SagaConfig { name: rs.name, start: rs.start, correlation, timeout, max_instances, from, steps });
    }
    Ok(out)
}

fn opt_duration(text: Option<&str>, default: Duration) -> Result<Duration, String> {
    let d = match text {
        Some(t) => duration(t)?,
        None => return Ok(default),
    };
    if d.is_zero() {
        return Err("must be more than 0".into());
    }
    // Timers are milliseconds since the epoch: far from overflow.
    if d > MAX_RETENTION {
        return Err("is longer than 36500days".into());
    }
    Ok(d)
}

/// A concrete topic outside the host's saga domain.
fn topic(t: &str) -> Result<(), String> {
    crate::topic::validate(t).map_err(|e| e.to_string())?;
    if let Some(domain) = crate::ingest::reserved_topic_domain(t) {
        return Err(format!("{t:?}: the domain {domain:?} is the host's own"));
    }
    Ok(())
}

fn command(t: &str, consumed: &dyn Fn(&str) -> bool) -> Result<(), String> {
    topic(t)?;
    if !consumed(t) {
        return Err(format!(
            "unknown topic {t:?}: no pipeline or sink reads it, so the command would only ever time out"
        ));
    }
    Ok(())
}

/// Check one outcome's reply topics and note them as read.
fn replies(
    success: &[String],
    failure: &[String],
    key: &str,
    prefix: &str,
    seen: &mut Vec<(String, String)>,
) -> Result<(), (String, String)> {
    if success.is_empty() {
        return Err((format!("{key}{prefix}success"), "give at least one reply topic that means success".into()));
    }
    for (field, list) in [("success", success), ("failure", failure)] {
        let field = format!("{key}{prefix}{field}");
        if list.len() > MAX_REPLY_TOPICS {
            return Err((field, format!("{} topics; at most {MAX_REPLY_TOPICS}", list.len())));
        }
        for (n, t) in list.iter().enumerate() {
            let at = format!("{field}[{n}]");
            topic(t).map_err(|e| (at.clone(), e))?;
            if let Some((_, first)) = seen.iter().find(|(x, _)| x == t) {
                return Err((at, format!("{t:?} is read already as {first}: each reply topic means one thing")));
            }
            seen.push((t.clone(), at));
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "sagas_tests.rs"]
mod tests;
