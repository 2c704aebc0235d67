//! Adversarial: rejects every event with a 4 MiB reason (just under the
//! output cap) made of lines that look like the host's own log lines.

use weir_sdk::prelude::*;

/// Bytes of the reason.
pub const REASON_BYTES: usize = (4 << 20) - 64;

/// The reason: forged log lines, repeated.
#[must_use]
pub fn reason() -> String {
    let line = "\n2026-01-01T00:00:00Z  INFO weir: all good, nothing to see";
    let mut text = String::with_capacity(REASON_BYTES);
    while text.len() + line.len() <= REASON_BYTES {
        text.push_str(line);
    }
    text
}

/// Reject, at length. The name (from `weir_describe`) is long and has a
/// newline too: it ends up in labels, logs and `weir status`.
#[weir_sdk::handler(
    name = "huge-reason\nFORGED-LINE xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
)]
pub fn handle(_event: &Event, _ctx: &mut Context) -> Result<Vec<Emit>, HandlerError> {
    Err(HandlerError::reject(reason()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_is_about_four_mib() {
        let text = reason();
        assert!(text.len() <= REASON_BYTES && text.len() > REASON_BYTES - 100);
    }
}
