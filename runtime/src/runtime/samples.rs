//! Sample events a deploy runs before it goes ahead (`--test-events`).

use serde::Serialize;
use weir_abi::Event;

use super::DeployError;
use crate::error::InvokeError;
use crate::ids::IdGenerator;

/// What a sample event must produce for a deploy to go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    /// `Ok`, with any number of emits.
    Ok,
    /// The handler asks for a retry.
    Retry,
    /// The handler rejects it.
    Reject,
}

/// A sample event for a deploy, with what it must produce. Without an
/// expectation the sample only must not fail in the sandbox.
#[derive(Debug, Clone)]
pub struct TestCase {
    /// The event.
    pub event: Event,
    /// The expected outcome.
    pub expect: Option<Expect>,
    /// The expected number of emitted events (with `Ok`).
    pub emits: Option<usize>,
}

pub(super) fn check_sample(
    index: usize,
    test: &TestCase,
    result: &Result<Vec<weir_abi::Emit>, InvokeError>,
) -> Result<(), DeployError> {
    let got = match result {
        Ok(_) => Expect::Ok,
        Err(InvokeError::HandlerRetry { .. }) => Expect::Retry,
        Err(InvokeError::HandlerReject { .. }) => Expect::Reject,
        Err(e) => return Err(DeployError::SampleFailed { index, reason: format!("[{}] {e}", e.code()) }),
    };
    if let Some(expect) = test.expect
        && expect != got
    {
        let detail = match result {
            Err(e) => e.message(),
            Ok(emits) => format!("{} emitted events", emits.len()),
        };
        return Err(DeployError::SampleFailed { index, reason: format!("expected {expect:?}, got {got:?}: {detail}") });
    }
    if let (Some(n), Ok(emits)) = (test.emits, result)
        && emits.len() != n
    {
        return Err(DeployError::SampleFailed {
            index,
            reason: format!("expected {n} emitted events, got {}", emits.len()),
        });
    }
    Ok(())
}

/// Parse sample events for a deploy: each is either a plain event in the
/// JSON form, or `{ "event": {…}, "expect": "ok" | "retry" | "reject",
/// "emits": N }`.
///
/// # Errors
///
/// A message naming the sample and the problem.
pub fn parse_test_cases(ids: &IdGenerator, samples: &[serde_json::Value]) -> Result<Vec<TestCase>, String> {
    samples
        .iter()
        .enumerate()
        .map(|(i, sample)| {
            let (event, expect, emits) = match sample.get("event") {
                Some(event) => (
                    event.clone(),
                    sample.get("expect").map(|e| serde_json::from_value::<Expect>(e.clone())).transpose(),
                    sample.get("emits").and_then(serde_json::Value::as_u64),
                ),
                None => (sample.clone(), Ok(None), None),
            };
            let expect =
                expect.map_err(|e| format!("sample {i}: `expect` must be \"ok\", \"retry\" or \"reject\": {e}"))?;
            let json: crate::envelope::JsonEvent =
                serde_json::from_value(event).map_err(|e| format!("sample {i}: not an event: {e}"))?;
            let event = json.into_event(ids, "weir:deploy-test").map_err(|e| format!("sample {i}: {e}"))?;
            Ok(TestCase { event, expect, emits: emits.map(|n| n as usize) })
        })
        .collect()
}
