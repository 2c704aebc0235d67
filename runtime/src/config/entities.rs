//! `[[entities]]`: the entity types whose events form entity streams
//! (docs/event-sourcing.md), and what that means for `[retention]`: the
//! events of an entity type are kept forever.

use super::*;
use crate::store::{Keep, RetentionPolicy, RetentionRule};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEntity {
    #[serde(rename = "type")]
    ty: String,
    /// The aggregate module deciding its commands.
    aggregate: Option<PathBuf>,
    config: Option<toml::Table>,
    limits: Option<handler::RawLimits>,
}

/// One declared entity type (`[[entities]]`).
#[derive(Debug, Clone)]
pub struct EntityConfig {
    /// `<domain>.<entity>` (`accounts.account`): its streams hold the events
    /// of topics `<domain>.<entity>.<event>` with a key.
    pub entity_type: String,
    /// The aggregate that decides its commands (`aggregate = "…wasm"`):
    /// with one, the type accepts `POST /v1/commands/{type}/{key}`.
    pub aggregate: Option<AggregateConfig>,
}

/// An entity type's aggregate.
#[derive(Debug, Clone)]
pub struct AggregateConfig {
    /// The module (absolute, resolved against the config file).
    pub plugin: PathBuf,
    /// Its configuration as JSON (empty when none), for its `weir_init`.
    pub config: Vec<u8>,
    /// Its sandbox limits, as a handler's (`[entities.limits]`);
    /// `max_state_value_bytes` bounds the entity's state.
    pub limits: Limits,
}

/// Validate `[[entities]]`: each type is two topic segments, declared once;
/// an aggregate's file exists and its limits are valid.
pub(super) fn entities(
    raw: &[RawEntity],
    resolve: &dyn Fn(&Path) -> PathBuf,
    fuel: bool,
) -> Result<Vec<EntityConfig>, (String, String)> {
    let mut out: Vec<EntityConfig> = Vec::with_capacity(raw.len());
    for (i, e) in raw.iter().enumerate() {
        let key = format!("entities[{i}].type");
        check_entity_type(&e.ty).map_err(|reason| (key.clone(), reason))?;
        if out.iter().any(|x| x.entity_type == e.ty) {
            return Err((key, format!("entity type {:?} is declared twice", e.ty)));
        }
        let aggregate = match &e.aggregate {
            Some(path) => {
                let plugin = resolve(path);
                check_plugin_file(&plugin).map_err(|r| (format!("entities[{i}].aggregate"), r))?;
                let config = match &e.config {
                    Some(table) => {
                        serde_json::to_vec(table).map_err(|r| (format!("entities[{i}].config"), r.to_string()))?
                    }
                    None => Vec::new(),
                };
                let (limits, _) = handler::limits(e.limits.as_ref().unwrap_or(&handler::RawLimits::default()), fuel)
                    .map_err(|(field, reason)| (format!("entities[{i}].limits.{field}"), reason))?;
                Some(AggregateConfig { plugin, config, limits })
            }
            None if e.config.is_some() || e.limits.is_some() => {
                return Err((
                    format!("entities[{i}]"),
                    "config and limits belong to an aggregate: give aggregate = \"<module.wasm>\" too".into(),
                ));
            }
            None => None,
        };
        out.push(EntityConfig { entity_type: e.ty.clone(), aggregate });
    }
    Ok(out)
}

/// Whether `ty` is `<domain>.<entity>`: what the first two segments of a
/// topic may be.
pub(crate) fn check_entity_type(ty: &str) -> Result<(), String> {
    let rule = "an entity type is <domain>.<entity>: two segments separated by '.', each 1-64 characters of a-z, 0-9, '_' or '-' (its events' topics are <domain>.<entity>.<event>)";
    if ty.split('.').count() != 2 {
        return Err(format!("{ty:?} is not an entity type: {rule}"));
    }
    // A topic of the type must be valid: check one.
    crate::topic::validate(&format!("{ty}.x"))
        .map_err(|e| format!("{ty:?} is not an entity type: {}; {rule}", e.reason))?;
    // Its events could never be appended (ingest and aggregates refuse the
    // host's domains), and an aggregate's would be a saga coordinator's.
    if let Some(domain) = crate::ingest::reserved_topic_domain(ty) {
        return Err(format!("{ty:?} is not an entity type: the domain {domain:?} is the host's own"));
    }
    Ok(())
}

/// Keep the events of every entity type forever: a `[[retention.topics]]`
/// rule that names an entity type's domain and can match its topics must
/// keep them `forever` without compaction (else the configuration is
/// refused), and a rule `forever` per type goes first, so neither the
/// default nor a wildcard rule (`>`, `*.account.*`) applies to them.
pub(super) fn protect(policy: &mut RetentionPolicy, entities: &[EntityConfig]) -> Result<(), (String, String)> {
    for (i, rule) in policy.rules.iter().enumerate() {
        if rule.keep == Keep::Forever && !rule.compact {
            continue;
        }
        let text = rule.pattern.to_string();
        let domain = text.split('.').next().unwrap_or_default();
        for e in entities {
            let (ty_domain, _) = e.entity_type.split_once('.').unwrap_or((&e.entity_type, ""));
            if domain == ty_domain && overlaps(&text, &e.entity_type) {
                return Err((
                    format!("retention.topics[{i}]"),
                    format!(
                        "pattern {text:?} would remove events of the entity type {:?} ([[entities]]), whose streams must stay complete: give it retention = \"forever\" without compact, or a pattern that leaves {}.* out",
                        e.entity_type, e.entity_type
                    ),
                ));
            }
        }
    }
    let mut rules: Vec<RetentionRule> = Vec::with_capacity(entities.len() + policy.rules.len());
    for e in entities {
        let pattern = Pattern::parse(&format!("{}.*", e.entity_type))
            .map_err(|err| (String::from("entities"), err.to_string()))?;
        rules.push(RetentionRule { pattern, keep: Keep::Forever, compact: false });
    }
    rules.append(&mut policy.rules);
    policy.rules = rules;
    Ok(())
}

/// Whether the pattern `text` can match a topic `<ty>.<event>`.
fn overlaps(text: &str, ty: &str) -> bool {
    let mut want = ty.split('.');
    let segments: Vec<&str> = text.split('.').collect();
    for (i, seg) in segments.iter().enumerate() {
        match (*seg, want.next()) {
            (">", _) => return true,
            ("*", _) => {}
            (literal, Some(t)) if literal == t => {}
            (_, Some(_)) => return false,
            // The third segment (the event): any literal matches some topic.
            (_, None) => return i == 2 && segments.len() == 3,
        }
    }
    segments.len() == 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_of_patterns_and_entity_types() {
        assert!(overlaps("accounts.account.opened", "accounts.account"));
        assert!(overlaps("accounts.>", "accounts.account"));
        assert!(overlaps("accounts.*.*", "accounts.account"));
        assert!(overlaps("accounts.account.>", "accounts.account"));
        assert!(overlaps(">", "accounts.account"));
        assert!(!overlaps("accounts.ledger.*", "accounts.account"));
        assert!(!overlaps("orders.>", "accounts.account"));
        assert!(!overlaps("accounts.*", "accounts.account"));
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/tmp/weir.toml"))
    }

    #[test]
    fn entity_types_are_checked_and_their_events_kept_forever() {
        let config = parse("[[entities]]\ntype = \"accounts.account\"\n[retention]\ndefault = \"7d\"\n").unwrap();
        assert_eq!(config.entities.iter().map(|e| e.entity_type.as_str()).collect::<Vec<_>>(), ["accounts.account"]);
        // A forever rule of its own goes first, so the default skips it.
        let rule = &config.log_retention.rules[0];
        assert_eq!(
            (rule.pattern.to_string(), rule.keep, rule.compact),
            ("accounts.account.*".into(), Keep::Forever, false)
        );
        for bad in ["accounts", "accounts.account.opened", "Accounts.account", "accounts.", ""] {
            let err = parse(&format!("[[entities]]\ntype = {bad:?}\n")).unwrap_err();
            assert_eq!(err.key, "entities[0].type", "{bad}: {err}");
        }
        // The saga coordinators' domain: its events are the host's alone.
        let reserved = parse("[[entities]]\ntype = \"weir-saga.order\"\n").unwrap_err();
        assert_eq!(reserved.key, "entities[0].type");
        assert!(reserved.reason.contains("\"weir-saga\" is the host's own"), "{reserved}");
        let twice = parse("[[entities]]\ntype = \"a.b\"\n[[entities]]\ntype = \"a.b\"\n").unwrap_err();
        assert!(twice.reason.contains("declared twice"), "{twice}");
        // A rule naming the domain that would remove or compact its events
        // is refused; forever, another entity or a wildcard domain passes.
        for rule in ["pattern = \"accounts.>\"\nretention = \"7d\"", "pattern = \"accounts.account.*\"\ncompact = true"]
        {
            let text = format!("[[entities]]\ntype = \"accounts.account\"\n[[retention.topics]]\n{rule}\n");
            let err = parse(&text).unwrap_err();
            assert_eq!(err.key, "retention.topics[0]", "{err}");
            assert!(err.reason.contains("accounts.account"), "{err}");
        }
        for rule in [
            "pattern = \"accounts.>\"\nretention = \"forever\"",
            "pattern = \"accounts.ledger.*\"\nretention = \"1d\"",
            "pattern = \">\"\nretention = \"1d\"",
        ] {
            let text = format!("[[entities]]\ntype = \"accounts.account\"\n[[retention.topics]]\n{rule}\n");
            assert!(parse(&text).is_ok(), "{rule}");
        }
    }
}
