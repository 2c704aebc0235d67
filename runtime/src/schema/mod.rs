//! Versioned payload schemas per topic pattern (`[[schemas]]` in
//! weir.toml): which `schema_version`s a topic's events may carry, the JSON
//! Schema each version's payload must satisfy, the largest payload, and the
//! compatibility each new version keeps with the earlier ones.
//!
//! One check, [`Schemas::check`], serves every way an event reaches the log:
//! HTTP ingest (single, batch, CloudEvents), `weir publish`, the JetStream
//! source, handler emits, aggregate events and stream appends.
//!
//! The JSON Schema support is a documented subset, implemented here rather
//! than by a dependency so that every bound is ours: `compile.rs` refuses
//! what is outside it, `validate.rs` checks payloads, `compat.rs` compares
//! versions. docs/schemas.md is the reference.

use std::sync::Arc;

use crate::metrics::ByteHistogram;
use crate::topic::Pattern;

mod compat;
mod compile;
mod validate;

pub use compat::{Compatibility, MAX_COMPAT_DEPTH, MAX_COMPAT_STEPS};
pub use compile::{CompileError, MAX_SCHEMA_BYTES, MAX_SCHEMA_DEPTH, MAX_SCHEMA_NODES, Schema};
pub use validate::{MAX_VALIDATION_DEPTH, MAX_VALIDATION_STEPS, Violation};

/// The `pattern` label of payloads on topics no `[[schemas]]` entry matches
/// (not a valid pattern, so it names no entry).
pub const OTHER_PATTERN_LABEL: &str = "other";

/// One declared version of a topic pattern.
#[derive(Debug, Clone)]
pub struct SchemaVersion {
    /// The `schema_version` events carry.
    pub version: u32,
    /// Where its schema came from: a path, or `inline`; `None` when the
    /// version has no schema (any payload).
    pub origin: Option<String>,
    /// The schema text as given.
    pub text: Option<String>,
    /// The checked schema.
    pub schema: Option<Arc<Schema>>,
}

/// One `[[schemas]]` entry.
#[derive(Debug)]
pub struct TopicSchemas {
    /// The topics it covers.
    pub pattern: Pattern,
    /// What each new version keeps.
    pub compatibility: Compatibility,
    /// Largest payload of its topics, when set.
    pub max_payload_bytes: Option<usize>,
    /// Its versions, ascending.
    pub versions: Vec<SchemaVersion>,
    sizes: ByteHistogram,
}

impl TopicSchemas {
    /// An entry; `versions` ascending (the configuration checks that).
    #[must_use]
    pub fn new(
        pattern: Pattern,
        compatibility: Compatibility,
        max_payload_bytes: Option<usize>,
        versions: Vec<SchemaVersion>,
    ) -> Self {
        Self { pattern, compatibility, max_payload_bytes, versions, sizes: ByteHistogram::default() }
    }

    /// The declared version `version`.
    #[must_use]
    pub fn version(&self, version: u32) -> Option<&SchemaVersion> {
        self.versions.iter().find(|v| v.version == version)
    }

    /// The newest declared version.
    #[must_use]
    pub fn latest(&self) -> Option<u32> {
        self.versions.last().map(|v| v.version)
    }
}

/// Every `[[schemas]]` entry; cheap to clone (shared). Patterns never
/// overlap (the configuration refuses that), so a topic has at most one
/// entry.
#[derive(Debug, Clone, Default)]
pub struct Schemas {
    entries: Arc<[TopicSchemas]>,
    other: Arc<ByteHistogram>,
}

/// Why a payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// Over the `max_payload_bytes` of the topic's `[[schemas]]` entry.
    #[error(
        "payload of {size} bytes exceeds the maximum of {max} bytes for topics {pattern} (schemas max_payload_bytes)"
    )]
    TooLarge {
        /// The entry's pattern.
        pattern: String,
        /// The payload's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The topic has schemas, and none for this version.
    #[error("topic {topic}: schema_version {version} is not declared (declared: {declared})")]
    UnknownVersion {
        /// The topic.
        topic: String,
        /// The event's version.
        version: u32,
        /// The declared versions, comma-separated.
        declared: String,
    },
    /// The payload is not JSON, and the version has a schema.
    #[error("topic {topic} version {version}: the payload is not JSON ({reason}); this version has a JSON schema")]
    NotJson {
        /// The topic.
        topic: String,
        /// The version.
        version: u32,
        /// The parser's reason.
        reason: String,
    },
    /// The payload does not satisfy its version's schema.
    #[error("topic {topic} version {version}: {violation}")]
    Violation {
        /// The topic.
        topic: String,
        /// The version.
        version: u32,
        /// Where and why.
        violation: Violation,
    },
}

impl SchemaError {
    /// Stable code: `payload_too_large`, `unknown_schema_version` or
    /// `schema_violation` (a payload that is not JSON included).
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "payload_too_large",
            Self::UnknownVersion { .. } => "unknown_schema_version",
            Self::NotJson { .. } | Self::Violation { .. } => "schema_violation",
        }
    }

    /// The JSON pointer of the failing place in the payload, for a
    /// violation.
    #[must_use]
    pub fn pointer(&self) -> Option<&str> {
        match self {
            Self::Violation { violation, .. } => Some(&violation.pointer),
            _ => None,
        }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = if self.pointer.is_empty() { "the payload" } else { self.pointer.as_str() };
        write!(f, "at {at:?}: {} (keyword {})", self.reason, self.keyword)
    }
}

impl Schemas {
    /// The registry of these entries.
    #[must_use]
    pub fn new(entries: Vec<TopicSchemas>) -> Self {
        Self { entries: entries.into(), other: Arc::default() }
    }

    /// Whether no entry is declared.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every entry, in configuration order.
    #[must_use]
    pub fn entries(&self) -> &[TopicSchemas] {
        &self.entries
    }

    /// The entry covering `topic`.
    #[must_use]
    pub fn find(&self, topic: &str) -> Option<&TopicSchemas> {
        self.entries.iter().find(|e| e.pattern.matches(topic))
    }

    /// Check an event's payload before it is appended: its size against the
    /// entry's limit, its version among the declared ones, its body against
    /// the version's schema. Topics no entry covers pass.
    ///
    /// # Errors
    ///
    /// The [`SchemaError`] saying which check failed.
    pub fn check(&self, topic: &str, version: u32, payload: &[u8]) -> Result<(), SchemaError> {
        let Some(entry) = self.find(topic) else { return Ok(()) };
        if let Some(max) = entry.max_payload_bytes
            && payload.len() > max
        {
            return Err(SchemaError::TooLarge { pattern: entry.pattern.to_string(), size: payload.len(), max });
        }
        if entry.versions.is_empty() {
            return Ok(());
        }
        let Some(declared) = entry.version(version) else {
            let list: Vec<String> = entry.versions.iter().map(|v| v.version.to_string()).collect();
            return Err(SchemaError::UnknownVersion { topic: topic.to_owned(), version, declared: list.join(", ") });
        };
        if let Some(schema) = &declared.schema {
            let value: serde_json::Value = serde_json::from_slice(payload).map_err(|e| SchemaError::NotJson {
                topic: topic.to_owned(),
                version,
                reason: e.to_string(),
            })?;
            schema.validate(&value).map_err(|violation| SchemaError::Violation {
                topic: topic.to_owned(),
                version,
                violation,
            })?;
        }
        Ok(())
    }

    /// Count accepted events' payload sizes in `weir_payload_bytes`: called
    /// once every event of a request (or of an invocation's emits) passed,
    /// so a refused batch counts nothing.
    pub fn observe<'e>(&self, events: impl IntoIterator<Item = &'e weir_abi::Event>) {
        for event in events {
            self.observe_size(&event.topic, event.payload.len());
        }
    }

    /// Count one accepted payload of `topic`.
    pub(crate) fn observe_size(&self, topic: &str, bytes: usize) {
        let histogram = self.find(topic).map_or(&*self.other, |e| &e.sizes);
        histogram.observe(bytes);
    }

    /// The `weir_payload_bytes` histogram, one series per entry's pattern
    /// and one for every other topic: a bounded number of series, whatever
    /// topics producers invent.
    pub(crate) fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(out, "# HELP weir_payload_bytes Payload sizes of events accepted, by [[schemas]] pattern.");
        let _ = writeln!(out, "# TYPE weir_payload_bytes histogram");
        for entry in self.entries.iter() {
            let label = format!("pattern=\"{}\"", entry.pattern);
            entry.sizes.render(out, "weir_payload_bytes", &label);
        }
        self.other.render(out, "weir_payload_bytes", &format!("pattern=\"{OTHER_PATTERN_LABEL}\""));
    }
}

#[cfg(test)]
mod tests;
