//! Text a plugin chose (log lines, retry and reject reasons, its name and
//! description) on its way into the host: escaped, so it cannot forge a line
//! of the host's log or reorder a terminal's text, and cut to a documented
//! size before it is stored, logged, used as a label or shown.

/// Largest retry, reject or init-failure reason kept, in bytes (UTF-8, after
/// escaping); a longer one is cut at a character boundary and marked.
pub const MAX_REASON_BYTES: usize = 1024;
/// Largest plugin name kept from `weir_describe`, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// Largest plugin version string kept from `weir_describe`, in bytes.
pub(crate) const MAX_VERSION_BYTES: usize = 64;
/// Largest one-line description kept from `weir_describe`, in bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 1024;
/// Most topic patterns (and schema versions) kept from `weir_describe`.
pub(crate) const MAX_DESCRIBED_ITEMS: usize = 64;

/// Whether `c` must not reach a log or a terminal as it is: control
/// characters (newlines, escape, C1), the Unicode line and paragraph
/// separators, and the bidirectional overrides that reorder displayed text.
fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every character of [`needs_escape`] written as an escape
/// (`\n`, `\r`, `\t`, `\\` stays as is, others `\u{1b}`), so a plugin's text
/// stays on one line of the host's log.
pub(crate) fn escape(text: &str) -> String {
    if !text.chars().any(needs_escape) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// `text` escaped and cut to at most `max` bytes plus a short marker that
/// says how long it was.
pub(crate) fn bounded(text: &str, max: usize) -> String {
    // Escape at most what can be kept (an escape is at most 10 bytes).
    let head = &text[..floor_char_boundary(text, max.saturating_add(1))];
    let mut out = escape(head);
    if out.len() <= max && head.len() == text.len() {
        return out;
    }
    out.truncate(floor_char_boundary(&out, max));
    out.push_str(&format!("… (truncated, {} bytes)", text.len()));
    out
}

/// The largest index `<= at` that is a character boundary of `text`.
fn floor_char_boundary(text: &str, at: usize) -> usize {
    if at >= text.len() {
        return text.len();
    }
    let mut i = at;
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape("plain text"), "plain text");
        assert_eq!(
            escape("a\nb\r\tc\u{1b}[31m\u{202e}"),
            "a\\nb\\r\\tc\\u{1b}[31m\\u{202e}",
            "newlines, ANSI escapes and bidi overrides cannot reach the log"
        );
    }

    #[test]
    fn long_text_is_cut_at_a_character_boundary_and_marked() {
        assert_eq!(bounded("short", 10), "short");
        let long = "é".repeat(1000);
        let cut = bounded(&long, 101);
        assert!(cut.starts_with(&"é".repeat(50)), "{cut}");
        assert!(cut.ends_with("… (truncated, 2000 bytes)"), "{cut}");
        assert!(cut.len() <= 101 + 40);
        // Escaping counts towards the size.
        let lines = "\n".repeat(100);
        let cut = bounded(&lines, 10);
        assert!(cut.starts_with("\\n\\n\\n\\n\\n…"), "{cut}");
        assert!(!cut.contains('\n'));
    }
}
