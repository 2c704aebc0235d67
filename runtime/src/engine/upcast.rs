//! Running an upcaster: the optional export `weir_upcast` (docs/abi.md
//! §15), called like an aggregate's exports (same limits, same instance
//! rules, same failure classification). The count and size of what comes
//! back are bounded here; what the outputs become is `upcast/`'s business.

use weir_abi::{UpcastEvent, UpcastRef, Upcasted, encoding, exports};

use super::handler::{AggregateCall, Handler};
use super::plugin::PluginInfo;
use super::text::{self, MAX_REASON_BYTES};
use crate::error::InvokeError;

impl PluginInfo {
    /// Whether the module exports `weir_upcast`: an upcaster.
    #[must_use]
    pub fn is_upcaster(&self) -> bool {
        self.exports.iter().any(|e| e.name == exports::UPCAST)
    }
}

impl Handler {
    /// Ask an upcaster to turn `input.event` (at version `input.from`) into
    /// events at version `input.to`. More than `max_outputs` outputs, or
    /// one with more headers (or header bytes) than an emit may carry, fail
    /// the call as `bad_output`; an answer `Failed(reason)` is
    /// [`InvokeError::HandlerReject`] with the reason, escaped and cut.
    pub fn upcast(&mut self, input: UpcastRef<'_>, max_outputs: usize) -> AggregateCall<Vec<UpcastEvent>> {
        if !self.plugin().info().is_upcaster() {
            let reason = "the module is not an upcaster: it exports no weir_upcast".into();
            return AggregateCall { result: Err(InvokeError::BadOutput { reason }), logs: Vec::new(), logs_dropped: 0 };
        }
        self.export_call(
            |buf| encoding::encode_into(&input, buf),
            |live, encoded| match live.call_aggregate::<Upcasted>(exports::UPCAST, encoded, "the upcast answer")? {
                Upcasted::Events(events) => {
                    check_outputs(&events, max_outputs, live.limits())?;
                    Ok(events)
                }
                Upcasted::Failed(reason) => {
                    Err(InvokeError::HandlerReject { reason: text::bounded(&reason, MAX_REASON_BYTES) })
                }
            },
        )
    }
}

fn check_outputs(events: &[UpcastEvent], max_outputs: usize, limits: &super::Limits) -> Result<(), InvokeError> {
    if events.len() > max_outputs {
        return Err(InvokeError::BadOutput {
            reason: format!("{} upcast events, over the cap of {max_outputs}", events.len()),
        });
    }
    for (i, event) in events.iter().enumerate() {
        if event.headers.len() > limits.max_headers_per_emit() {
            return Err(InvokeError::BadOutput {
                reason: format!(
                    "upcast event #{i} has {} headers, over the cap of {}",
                    event.headers.len(),
                    limits.max_headers_per_emit()
                ),
            });
        }
        let bytes: usize = event.headers.iter().map(|h| h.name.len() + h.value.len()).sum();
        if bytes > limits.max_header_bytes_per_emit() {
            return Err(InvokeError::BadOutput {
                reason: format!(
                    "upcast event #{i} has {bytes} bytes of headers, over the cap of {}",
                    limits.max_header_bytes_per_emit()
                ),
            });
        }
    }
    Ok(())
}
