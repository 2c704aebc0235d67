//! `[[schemas]]`: per topic pattern, the declared `schema_version`s with
//! their JSON Schemas, the compatibility each new version keeps, and the
//! largest payload (docs/schemas.md).
//!
//! ```toml
//! [[schemas]]
//! topic = "orders.order.*"
//! compatibility = "backward"          # default; forward, full, none
//! max_payload_bytes = 16384           # optional
//! [[schemas.versions]]
//! version = 1
//! schema = "schemas/orders-v1.json"   # relative to this file, or inline JSON
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::schema::{Compatibility, Schema, SchemaVersion, Schemas, TopicSchemas};
use crate::topic::Pattern;

/// Most `[[schemas]]` entries: each is a `weir_payload_bytes` series, so
/// the count bounds the metric's cardinality too.
pub const MAX_SCHEMA_ENTRIES: usize = 256;
/// Most versions per entry.
pub const MAX_SCHEMA_VERSIONS: usize = 64;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSchemas {
    topic: String,
    compatibility: Option<String>,
    max_payload_bytes: Option<usize>,
    #[serde(default)]
    versions: Vec<RawVersion>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVersion {
    version: u32,
    schema: Option<String>,
}

/// The checked entries, or the key and reason of the first problem.
/// `resolve` makes a schema path absolute against the config file.
pub(super) fn schemas(raw: Vec<RawSchemas>, resolve: &dyn Fn(&Path) -> PathBuf) -> Result<Schemas, (String, String)> {
    if raw.len() > MAX_SCHEMA_ENTRIES {
        return Err(("schemas".into(), format!("more than {MAX_SCHEMA_ENTRIES} entries")));
    }
    let mut entries: Vec<TopicSchemas> = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let key = format!("schemas[{i}]");
        let pattern = Pattern::parse(&r.topic).map_err(|e| (format!("{key}.topic"), e.to_string()))?;
        if let Some(other) = entries.iter().find(|e| overlap(&e.pattern, &pattern)) {
            return Err((
                format!("{key}.topic"),
                format!(
                    "{pattern} overlaps {} of another [[schemas]] entry: a topic could match both; give each topic one entry",
                    other.pattern
                ),
            ));
        }
        let compatibility = match &r.compatibility {
            Some(text) => Compatibility::parse(text).map_err(|e| (format!("{key}.compatibility"), e))?,
            None => Compatibility::default(),
        };
        if r.max_payload_bytes == Some(0) {
            return Err((format!("{key}.max_payload_bytes"), "must be at least 1".into()));
        }
        if r.versions.len() > MAX_SCHEMA_VERSIONS {
            return Err((format!("{key}.versions"), format!("more than {MAX_SCHEMA_VERSIONS} versions")));
        }
        let mut versions: Vec<SchemaVersion> = Vec::with_capacity(r.versions.len());
        for (j, v) in r.versions.into_iter().enumerate() {
            let vkey = format!("{key}.versions[{j}]");
            if v.version == 0 {
                return Err((format!("{vkey}.version"), "versions start at 1".into()));
            }
            if let Some(last) = versions.last()
                && v.version <= last.version
            {
                return Err((
                    format!("{vkey}.version"),
                    format!("{} does not follow {}: list versions once each, ascending", v.version, last.version),
                ));
            }
            let (origin, text) = match &v.schema {
                None => (None, None),
                Some(given)
                    if given.trim_start().starts_with(['{', '[']) || matches!(given.trim(), "true" | "false") =>
                {
                    (Some("inline".to_owned()), Some(given.clone()))
                }
                Some(given) => {
                    let path = resolve(Path::new(given));
                    let text = read_schema(&path).map_err(|e| (format!("{vkey}.schema"), e))?;
                    (Some(path.display().to_string()), Some(text))
                }
            };
            let schema = match &text {
                None => None,
                Some(text) => Some(Arc::new(
                    Schema::parse(text).map_err(|e| (format!("{vkey}.schema"), format!("invalid schema: {e}")))?,
                )),
            };
            let candidate = SchemaVersion { version: v.version, origin, text, schema };
            for earlier in &versions {
                check_pair(compatibility, earlier, &candidate).map_err(|why| (format!("{vkey}.schema"), why))?;
            }
            versions.push(candidate);
        }
        entries.push(TopicSchemas::new(pattern, compatibility, r.max_payload_bytes, versions));
    }
    Ok(Schemas::new(entries))
}

/// Whether `new` may follow `old` under `mode`; a version without a schema
/// accepts any payload.
pub(crate) fn check_pair(mode: Compatibility, old: &SchemaVersion, new: &SchemaVersion) -> Result<(), String> {
    if mode == Compatibility::None {
        return Ok(());
    }
    let any = Schema::any();
    let a = old.schema.as_deref().unwrap_or(&any);
    let b = new.schema.as_deref().unwrap_or(&any);
    mode.check(a, b).map_err(|why| format!("version {} after version {}: {why}", new.version, old.version))
}

fn read_schema(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if meta.len() > crate::schema::MAX_SCHEMA_BYTES as u64 {
        return Err(format!(
            "{} is {} bytes, over the maximum of {} bytes for a schema",
            path.display(),
            meta.len(),
            crate::schema::MAX_SCHEMA_BYTES
        ));
    }
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Whether some topic (three segments) matches both patterns: segment by
/// segment, two literals must agree; `*` and `>` agree with anything.
fn overlap(a: &Pattern, b: &Pattern) -> bool {
    let expand = |p: &Pattern| -> [Option<String>; 3] {
        let text = p.to_string();
        let mut out: [Option<String>; 3] = [None, None, None];
        for (i, seg) in text.split('.').enumerate().take(3) {
            match seg {
                // `>` covers every remaining segment.
                ">" => break,
                "*" => {}
                literal => out[i] = Some(literal.to_owned()),
            }
        }
        out
    };
    let (x, y) = (expand(a), expand(b));
    x.iter().zip(&y).all(|(p, q)| match (p, q) {
        (Some(p), Some(q)) => p == q,
        _ => true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Pattern {
        Pattern::parse(text).unwrap()
    }

    fn parse(text: &str) -> Result<crate::Config, crate::config::ConfigError> {
        crate::Config::parse(text, Path::new("/nonexistent/weir.toml"))
    }

    #[test]
    fn entries_and_versions_are_bounded() {
        let entries: String =
            (0..=MAX_SCHEMA_ENTRIES).map(|i| format!("[[schemas]]\ntopic = \"a.b.c{i}\"\n")).collect();
        let e = parse(&entries).unwrap_err();
        assert_eq!(e.key, "schemas", "{e}");
        assert!(e.reason.contains("more than 256"), "{e}");
        let versions: String =
            (1..=MAX_SCHEMA_VERSIONS + 1).map(|v| format!("[[schemas.versions]]\nversion = {v}\n")).collect();
        let e = parse(&format!("[[schemas]]\ntopic = \"a.b.c\"\n{versions}")).unwrap_err();
        assert_eq!(e.key, "schemas[0].versions", "{e}");
        // Within the bounds, a version without a schema accepts anything.
        let c = parse("[[schemas]]\ntopic = \"a.b.c\"\n[[schemas.versions]]\nversion = 1\n").unwrap();
        c.schemas.check("a.b.c", 1, b"not json").unwrap();
        assert_eq!(c.schemas.check("a.b.c", 2, b"").unwrap_err().code(), "unknown_schema_version");
    }

    #[test]
    fn overlapping_patterns_are_found() {
        assert!(overlap(&p("orders.order.*"), &p("orders.order.created")));
        assert!(overlap(&p("orders.>"), &p("*.order.paid")));
        assert!(overlap(&p(">"), &p("a.b.c")));
        assert!(!overlap(&p("orders.order.*"), &p("orders.item.*")));
        assert!(!overlap(&p("orders.>"), &p("payments.>")));
    }
}
