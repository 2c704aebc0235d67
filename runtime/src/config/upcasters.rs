//! `[[upcasters]]`: the upcaster plugins applied at delivery (docs/schemas.md,
//! "Upcasters"). Each one turns the events of the topics its pattern
//! matches from schema version `from` into version `to`.

use super::*;

/// Most outputs one upcaster call may answer, whatever `max_outputs` says.
pub const MAX_UPCAST_OUTPUTS: usize = 256;
/// Default of an upcaster's `max_outputs`.
pub const DEFAULT_UPCAST_OUTPUTS: usize = 16;
/// Pipelines may not be called this: the upcasters' versions are kept in
/// the plugin registry as `upcasters/<name>`.
pub const UPCASTER_PIPELINE: &str = "upcasters";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpcaster {
    name: String,
    topic: String,
    from: u32,
    to: u32,
    plugin: PathBuf,
    max_outputs: Option<usize>,
    #[serde(default)]
    limits: RawLimits,
}

/// One upcaster: a plugin exporting `weir_upcast`, applied to events of
/// `topic` at version `from`, answering events at version `to`.
#[derive(Debug, Clone)]
pub struct UpcasterConfig {
    /// Its name, unique among upcasters: its versions are kept in the
    /// registry as `upcasters/<name>`.
    pub name: String,
    /// The topics it applies to.
    pub topic: Pattern,
    /// The version it reads.
    pub from: u32,
    /// The version it answers; more than `from`.
    pub to: u32,
    /// The module's initial version (absolute).
    pub plugin: PathBuf,
    /// Most events one call may answer (default 16, at most 256).
    pub max_outputs: usize,
    /// Sandbox limits, as a handler's.
    pub limits: Limits,
}

impl UpcasterConfig {
    /// The registry name of its versions: `upcasters/<name>`.
    #[must_use]
    pub fn registry_name(&self) -> String {
        format!("{UPCASTER_PIPELINE}/{}", self.name)
    }
}

pub(super) fn upcasters(
    raw: Vec<RawUpcaster>,
    resolve: &dyn Fn(&Path) -> PathBuf,
    fuel: bool,
) -> Result<Vec<UpcasterConfig>, (String, String)> {
    let mut out: Vec<UpcasterConfig> = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let key = format!("upcasters[{i}]");
        let e = |field: &str, reason: String| (format!("{key}.{field}"), reason);
        check_name(&r.name).map_err(|reason| e("name", reason))?;
        if out.iter().any(|u| u.name == r.name) {
            return Err(e("name", format!("upcaster {:?} is defined twice", r.name)));
        }
        let topic = Pattern::parse(&r.topic).map_err(|err| e("topic", err.to_string()))?;
        if r.from == 0 {
            return Err(e("from", "schema versions start at 1".into()));
        }
        if r.to <= r.from {
            return Err(e("to", format!("{} must be more than from ({}): upcasters only go forward", r.to, r.from)));
        }
        if let Some(other) = out.iter().find(|u| u.from == r.from && u.topic.to_string() == r.topic) {
            return Err(e(
                "from",
                format!(
                    "upcaster {:?} already reads version {} of {}: one upcaster per topic and version",
                    other.name, r.from, r.topic
                ),
            ));
        }
        let plugin = resolve(&r.plugin);
        check_plugin_file(&plugin).map_err(|reason| e("plugin", reason))?;
        let max_outputs = r.max_outputs.unwrap_or(DEFAULT_UPCAST_OUTPUTS);
        if max_outputs == 0 || max_outputs > MAX_UPCAST_OUTPUTS {
            return Err(e("max_outputs", format!("{max_outputs} is outside 1..={MAX_UPCAST_OUTPUTS}")));
        }
        let (limits, _) = limits(&r.limits, fuel).map_err(|(field, reason)| e(&format!("limits.{field}"), reason))?;
        out.push(UpcasterConfig { name: r.name, topic, from: r.from, to: r.to, plugin, max_outputs, limits });
    }
    Ok(out)
}
