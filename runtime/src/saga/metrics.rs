//! What `/metrics` shows of the sagas. Counted when a transition is made;
//! a transition redone after a crash (its commit was lost) counts again,
//! so these are rates to watch, not an audit: the audit is the state.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::instance::SagaStatus;
use super::machine::Observed;
use crate::metrics::{Histogram, header, label};

/// Compensation outcomes counted.
const OUTCOMES: [&str; 4] = ["succeeded", "retried", "exhausted", "skipped"];

/// One saga's counters.
#[derive(Debug, Default)]
pub(crate) struct SagaMetrics {
    /// Entries into each status, by [`SagaStatus::ALL`] index.
    entered: [AtomicU64; SagaStatus::ALL.len()],
    /// Compensations by [`OUTCOMES`] index.
    compensations: [AtomicU64; OUTCOMES.len()],
    /// First command sent to success reply, per step.
    pub(crate) step_latency: Histogram,
}

impl SagaMetrics {
    pub(crate) fn observe(&self, what: &Observed) {
        match what {
            Observed::Status(s) => {
                if let Some(i) = SagaStatus::ALL.iter().position(|x| x == s) {
                    self.entered[i].fetch_add(1, Ordering::Relaxed);
                }
            }
            Observed::StepLatency(ms) => self.step_latency.observe(Duration::from_millis(*ms)),
            Observed::Compensation(outcome) => {
                if let Some(i) = OUTCOMES.iter().position(|x| x == outcome) {
                    self.compensations[i].fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Instances that entered `status` since the start.
    pub(crate) fn entered(&self, status: SagaStatus) -> u64 {
        SagaStatus::ALL.iter().position(|x| *x == status).map_or(0, |i| self.entered[i].load(Ordering::Relaxed))
    }

    /// Append every saga's lines.
    pub(crate) fn render(out: &mut String, sagas: &[(String, std::sync::Arc<SagaMetrics>)]) {
        if sagas.is_empty() {
            return;
        }
        header(
            out,
            "weir_saga_transitions_total",
            "counter",
            "Saga instances that entered a status, by saga and status.",
        );
        for (name, m) in sagas {
            for s in SagaStatus::ALL {
                let _ = writeln!(
                    out,
                    "weir_saga_transitions_total{{saga=\"{}\",status=\"{}\"}} {}",
                    label(name),
                    s.as_str(),
                    m.entered(s)
                );
            }
        }
        header(
            out,
            "weir_saga_compensations_total",
            "counter",
            "Saga compensations by outcome (retried: one attempt failed; exhausted: the saga is compensation_failed).",
        );
        for (name, m) in sagas {
            for (i, o) in OUTCOMES.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "weir_saga_compensations_total{{saga=\"{}\",outcome=\"{o}\"}} {}",
                    label(name),
                    m.compensations[i].load(Ordering::Relaxed)
                );
            }
        }
        header(
            out,
            "weir_saga_compensation_failed_total",
            "counter",
            "Alert: compensations that used up their retries (the saga waits for an operator).",
        );
        for (name, m) in sagas {
            let _ = writeln!(
                out,
                "weir_saga_compensation_failed_total{{saga=\"{}\"}} {}",
                label(name),
                m.entered(SagaStatus::CompensationFailed)
            );
        }
        header(out, "weir_saga_step_latency_seconds", "histogram", "From a step's first command to its success reply.");
        for (name, m) in sagas {
            m.step_latency.render(out, "weir_saga_step_latency_seconds", &format!("saga=\"{}\"", label(name)));
        }
    }
}
