//! The API's plugins bodies.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `GET /v1/plugins`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginsResponse {
    /// One per handler of the running configuration.
    pub handlers: Vec<HandlerInfo>,
}

/// One handler of a [`PluginsResponse`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandlerInfo {
    /// `<pipeline>/<handler>`.
    pub handler: String,
    /// Its active version.
    pub active: Option<VersionInfo>,
    /// Versions in its history.
    pub versions: usize,
}

/// One version of a handler's plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// sha256 of the module: the version's identity.
    pub sha256: String,
    /// Module size in bytes.
    pub size: u64,
    /// ABI version it speaks.
    pub abi_version: u32,
    /// What the plugin says about itself.
    pub description: Option<weir_abi::PluginDescription>,
    /// When it became active (ms since the Unix epoch).
    pub deployed_at_ms: u64,
    /// Who or what deployed it.
    pub deployed_by: String,
    /// `config`, `deploy`, `rollback` or `watch`.
    pub action: String,
}

/// `GET /v1/plugins/{pipeline}/{handler}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryResponse {
    /// Oldest first.
    pub history: Vec<HistoryEntry>,
}

/// One entry of a [`HistoryResponse`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Its number in the history.
    pub version: u64,
    /// The version.
    pub record: VersionInfo,
}

/// The query of `PUT /v1/plugins/{pipeline}/{handler}` (the body is the
/// module). Unknown parameters are ignored, as they always were here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutModuleQuery {
    /// Who deploys, recorded in the history [default: `http`].
    pub by: Option<String>,
}

/// The body of `POST /v1/plugins/{pipeline}/{handler}/deploy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// The module, base64 (standard alphabet, padded).
    pub module_base64: String,
    /// Who deploys [default: `http`].
    pub by: Option<String>,
    /// Samples the candidate must pass first (see `weir plugin deploy`).
    #[serde(default)]
    pub test_events: Vec<Value>,
}

/// The body of `POST /v1/plugins/{pipeline}/{handler}/rollback` (optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// sha256 (or a unique prefix) of the version to run [default: the
    /// previous one].
    pub to: Option<String>,
    /// Who rolls back [default: `http`].
    pub by: Option<String>,
}

/// What a deploy or rollback did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployResponse {
    /// The handler.
    pub handler: String,
    /// Its new version number; when nothing changed, the active one's.
    pub version: u64,
    /// sha256 of the now active module.
    pub sha256: String,
    /// sha256 of the module active before the call.
    pub previous: Option<String>,
    /// False when the module was already the active version.
    pub changed: bool,
}

/// The body of `POST /v1/plugins/{pipeline}/{handler}/dry-run`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DryRunRequest {
    /// The candidate module, base64 (standard alphabet, padded).
    pub module_base64: String,
    /// Where to start: `beginning` (the default), a seq, or an RFC 3339 time.
    pub from: Option<String>,
    /// Most events of the handler's topics to run [default: 10,000; at most 100,000].
    pub limit: Option<usize>,
}
