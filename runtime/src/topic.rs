//! Topic names and subscription patterns.
//!
//! A topic is `<domain>.<entity>.<event>` (`orders.order.created`): exactly
//! three segments, each 1–64 characters of `a-z`, `0-9`, `_` or `-`. A
//! pattern has the same shape, where a segment may be `*` (any one segment),
//! and the last segment may be `>` (one or more remaining segments).

use std::fmt;

/// The rule, as error messages state it.
pub(crate) const RULE: &str = "a topic is <domain>.<entity>.<event>: three segments separated by '.', each 1-64 characters of a-z, 0-9, '_' or '-'";

/// Why a topic or pattern is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid topic {topic:?}: {reason}; {RULE}")]
pub struct TopicError {
    /// The offending text.
    pub topic: String,
    /// What is wrong with it.
    pub reason: String,
}

impl TopicError {
    /// Stable code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        "invalid_topic"
    }
}

fn segment_ok(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("a segment is empty".into());
    }
    if s.len() > 64 {
        return Err(format!("segment {s:?} is longer than 64 characters"));
    }
    if let Some(c) = s.chars().find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '_' | '-')) {
        return Err(format!("segment {s:?} contains {c:?}"));
    }
    Ok(())
}

/// Check a concrete topic.
///
/// # Errors
///
/// [`TopicError`] stating the rule.
///
/// # Examples
///
/// ```
/// assert!(weir_runtime::validate_topic("orders.order.created").is_ok());
/// assert!(weir_runtime::validate_topic("Orders.created").is_err());
/// ```
pub fn validate(topic: &str) -> Result<(), TopicError> {
    let err = |reason: String| TopicError { topic: topic.to_owned(), reason };
    let segments: Vec<&str> = topic.split('.').collect();
    if segments.len() != 3 {
        return Err(err(format!("it has {} segment(s)", segments.len())));
    }
    segments.iter().try_for_each(|s| segment_ok(s)).map_err(err)
}

/// A subscription pattern such as `orders.*.created` or `payments.>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    segments: Vec<Seg>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Literal(String),
    One,
    Rest,
}

impl Pattern {
    /// Parse a pattern.
    ///
    /// # Errors
    ///
    /// [`TopicError`] when a segment is invalid, `>` is not last, or the
    /// pattern could never match a three-segment topic.
    pub fn parse(text: &str) -> Result<Self, TopicError> {
        let err = |reason: String| TopicError { topic: text.to_owned(), reason };
        let parts: Vec<&str> = text.split('.').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            segments.push(match *part {
                "*" => Seg::One,
                ">" if i + 1 == parts.len() => Seg::Rest,
                ">" => return Err(err("'>' may only be the last segment".into())),
                literal => {
                    segment_ok(literal).map_err(err)?;
                    Seg::Literal(literal.to_owned())
                }
            });
        }
        let fixed = segments.iter().filter(|s| !matches!(s, Seg::Rest)).count();
        let has_rest = matches!(segments.last(), Some(Seg::Rest));
        if fixed > 3 || (!has_rest && fixed != 3) || (has_rest && fixed >= 3) {
            return Err(err("the pattern can never match a three-segment topic".into()));
        }
        Ok(Self { text: text.to_owned(), segments })
    }

    /// Whether `topic` matches.
    #[must_use]
    pub fn matches(&self, topic: &str) -> bool {
        let mut parts = topic.split('.');
        for seg in &self.segments {
            match seg {
                Seg::Rest => return parts.next().is_some(),
                Seg::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Seg::Literal(l) => {
                    if parts.next() != Some(l.as_str()) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_follow_the_rule() {
        assert!(validate("orders.order.created").is_ok());
        assert!(validate("a-b.c_d.e9").is_ok());
        for bad in [
            "orders.order",
            "orders.order.created.v2",
            "Orders.order.created",
            "orders..created",
            "orders.order.cre ated",
            "",
        ] {
            let e = validate(bad).unwrap_err();
            assert!(e.to_string().contains("<domain>.<entity>.<event>"), "{bad}: {e}");
        }
    }

    #[test]
    fn patterns_match_as_documented() {
        let p = Pattern::parse("orders.*.created").unwrap();
        assert!(p.matches("orders.order.created"));
        assert!(!p.matches("orders.order.paid"));
        let rest = Pattern::parse("payments.>").unwrap();
        assert!(rest.matches("payments.card.charged"));
        assert!(!rest.matches("orders.card.charged"));
        assert!(Pattern::parse(">").unwrap().matches("a.b.c"));
        assert!(Pattern::parse("a.b.c.d").is_err());
        assert!(Pattern::parse("a.>.c").is_err());
        assert!(Pattern::parse("a.b.c.>").is_err());
        assert!(Pattern::parse("a.b").is_err());
    }
}
