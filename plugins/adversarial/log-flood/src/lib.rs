//! Adversarial: logs zero-length lines in a loop that never ends. Each call
//! is free of text, so only a per-line cost and a line cap keep the host's
//! memory bounded; the deadline ends the invocation (`timeout`).
//!
//! On key `forge` it instead logs one line that tries to forge a line of the
//! host's log (a newline, a timestamp, an ANSI escape) and returns.

use weir_sdk::prelude::*;

/// Log empty lines until the host stops the invocation.
#[weir_sdk::handler]
pub fn handle(event: &Event, _ctx: &mut Context) -> Result<Vec<Emit>, HandlerError> {
    if event.key.as_deref() == Some("forge") {
        weir_sdk::log::write(weir_sdk::LogLevel::Info, FORGED);
        return Ok(Vec::new());
    }
    flood(u64::MAX);
    Ok(Vec::new())
}

/// The line logged on `forge`.
pub const FORGED: &str = "ok\n2026-01-01T00:00:00Z ERROR weir: store corrupted\u{1b}[2K";

/// `lines` empty log lines (native tests pass a small number).
pub fn flood(lines: u64) {
    let mut n = 0;
    while n < lines {
        weir_sdk::log::write(weir_sdk::LogLevel::Info, "");
        n = std::hint::black_box(n + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_call_is_an_empty_line() {
        flood(3);
        let lines = weir_sdk::log::take_captured();
        assert_eq!(lines.len(), 3);
        assert!(lines.iter().all(|(_, text)| text.is_empty()));
    }
}
