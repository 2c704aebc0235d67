//! Upcasters: plugins that turn an event of one schema version of its
//! topic into the next, applied at delivery (docs/schemas.md, "Upcasters").
//! The log is never rewritten: a subscription whose handler accepts newer
//! versions sees each event upcast on its way in, through the chain
//! `from → to → …` of the upcasters configured (`[[upcasters]]`), and
//! nothing of it is stored but the handler's outcome.
//!
//! The upcasters' versions live in the plugin registry like handlers', as
//! `upcasters/<name>`: the configured file is the initial version, a deploy
//! (`weir plugin deploy upcasters/<name> …`) switches every subscription to
//! the new one before its next event, a restart runs the active version.
//!
//! | file | concern |
//! |---|---|
//! | `mod.rs` | the shared registry: the current module of each upcaster, deploys |
//! | `plan.rs` | which upcasters an event goes through; the reach check of load and deploy |
//! | `apply.rs` | a worker's own instances, and running the chain on one event |

mod apply;
mod plan;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};

pub(crate) use apply::{Delivered, Local, UNSUPPORTED_VERSION};
pub(crate) use plan::{Edge, check_reach, list};

use crate::config::{Config, UpcasterConfig};
use crate::engine::{Engine, InstanceMode, Plugin};
use crate::error::LoadError;
use crate::runtime::RuntimeError;
use crate::store::{Store, StoreError, VersionRecord};

/// Why an upcaster module was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpcasterError {
    /// Not a valid plugin, or refused at instantiation.
    #[error("upcaster {name}: {error}")]
    Load {
        /// The upcaster.
        name: String,
        /// Why.
        error: LoadError,
    },
    /// A valid plugin, but not this upcaster: no `weir_upcast`, or its
    /// description names other versions.
    #[error("upcaster {name}: {reason}")]
    Mismatch {
        /// The upcaster.
        name: String,
        /// Why.
        reason: String,
    },
    /// No upcaster of that name is configured.
    #[error("no upcaster named {0:?} in [[upcasters]]")]
    Unknown(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl UpcasterError {
    /// Stable code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::Load { error, .. } => error.code(),
            Self::Mismatch { .. } => "not_an_upcaster",
            Self::Unknown(_) => "unknown_handler",
            Self::Store(e) => e.code(),
        }
    }
}

/// One configured upcaster and the module it runs now.
struct Entry {
    config: UpcasterConfig,
    plugin: RwLock<Plugin>,
}

/// Every configured upcaster, shared by the workers. A deploy replaces one
/// module and bumps the generation; each worker sees the new generation
/// before its next event and starts instances of the new module.
pub(crate) struct Upcasters {
    entries: Vec<Entry>,
    edges: Vec<Edge>,
    /// The versions `[[schemas]]` declares, per pattern: they can arrive too.
    declared: Vec<(crate::topic::Pattern, Vec<u32>)>,
    generation: AtomicU64,
    /// Held through a deploy: two deploys run one after the other.
    deploying: Mutex<()>,
}

impl std::fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upcasters").field("edges", &self.edges).finish_non_exhaustive()
    }
}

/// Load `bytes` as the module of `config`: an upcaster (it exports
/// `weir_upcast`) whose description, when it gives one, names the
/// configured versions, and that starts under the configured limits.
fn load_checked(engine: &Engine, config: &UpcasterConfig, bytes: &[u8]) -> Result<Plugin, UpcasterError> {
    let load = |error| UpcasterError::Load { name: config.name.clone(), error };
    let plugin = engine.load(bytes).map_err(load)?;
    let info = plugin.info();
    let mismatch = |reason: String| UpcasterError::Mismatch { name: config.name.clone(), reason };
    if !info.is_upcaster() {
        return Err(mismatch("the module exports no `weir_upcast`: it is not an upcaster".into()));
    }
    // The SDK describes an upcaster with its versions as [from, to]: a
    // module built for other versions is refused rather than run.
    if let Some(d) = &info.description
        && !d.schema_versions.is_empty()
        && d.schema_versions != [config.from, config.to]
    {
        return Err(mismatch(format!(
            "the module upcasts versions {} but [[upcasters]] {:?} declares {} → {}",
            list(&d.schema_versions),
            config.name,
            config.from,
            config.to
        )));
    }
    // An instance now: a module that cannot start fails here, not on an event.
    plugin.handler(config.limits.clone(), Vec::new(), InstanceMode::Reuse).map_err(load)?;
    Ok(plugin)
}

fn record(plugin: &Plugin, by: &str, action: &str) -> VersionRecord {
    let info = plugin.info();
    VersionRecord {
        sha256: info.sha256.clone(),
        size: info.size as u64,
        abi_version: info.abi_version,
        description: info.description.clone(),
        deployed_at_ms: crate::store::now_ms(),
        deployed_by: by.to_owned(),
        action: action.to_owned(),
    }
}

impl Upcasters {
    /// Load every configured upcaster's file (before the store opens).
    ///
    /// # Errors
    ///
    /// The first refused module, as the runtime's start error.
    pub(crate) fn load(engine: &Engine, config: &Config) -> Result<Self, RuntimeError> {
        let mut entries = Vec::with_capacity(config.upcasters.len());
        for u in &config.upcasters {
            let fail = |error| RuntimeError::Plugin {
                subscription: u.registry_name(),
                plugin: u.plugin.display().to_string(),
                error,
            };
            let bytes =
                std::fs::read(&u.plugin).map_err(|error| fail(LoadError::Io { path: u.plugin.clone(), error }))?;
            let plugin = load_checked(engine, u, &bytes).map_err(|e| match e {
                UpcasterError::Load { error, .. } => fail(error),
                other => RuntimeError::Upcaster(other.to_string()),
            })?;
            entries.push(Entry { config: u.clone(), plugin: RwLock::new(plugin) });
        }
        let edges = entries
            .iter()
            .enumerate()
            .map(|(index, e)| Edge { index, topic: e.config.topic.clone(), from: e.config.from, to: e.config.to })
            .collect();
        Ok(Self {
            entries,
            edges,
            declared: declared(config),
            generation: AtomicU64::new(0),
            deploying: Mutex::new(()),
        })
    }

    /// Whether any upcaster is configured.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The declared edges, in configuration order.
    pub(crate) fn edges(&self) -> &[Edge] {
        &self.edges
    }

    /// Bumped by every deploy.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The configuration and current module of upcaster `index`.
    pub(crate) fn current(&self, index: usize) -> Option<(&UpcasterConfig, Plugin)> {
        let entry = self.entries.get(index)?;
        Some((&entry.config, entry.plugin.read().unwrap_or_else(PoisonError::into_inner).clone()))
    }

    /// The registry names, `upcasters/<name>`: they hold versions, they are
    /// not orphaned subscriptions.
    pub(crate) fn registry_names(&self) -> impl Iterator<Item = String> + '_ {
        self.entries.iter().map(|e| e.config.registry_name())
    }

    /// Whether `name` is an upcaster's registry name.
    pub(crate) fn owns(&self, name: &str) -> bool {
        self.entries.iter().any(|e| e.config.registry_name() == name)
    }

    /// At start, once the store is open: run each upcaster's active version
    /// from the registry, or record the configured file as the initial one.
    ///
    /// # Errors
    ///
    /// A stored module that is damaged or no longer loads; store errors.
    pub(crate) fn restore(&self, engine: &Engine, store: &Store) -> Result<(), RuntimeError> {
        for entry in &self.entries {
            let name = entry.config.registry_name();
            let current = entry.plugin.read().unwrap_or_else(PoisonError::into_inner).clone();
            match store.active_version(&name)? {
                Some(sha) if sha == current.info().sha256 => {}
                Some(sha) => {
                    let stored = |error| RuntimeError::StoredModule {
                        subscription: name.clone(),
                        version: "active".into(),
                        sha256: sha.clone(),
                        error: Box::new(error),
                    };
                    let bytes = store
                        .module(&sha)
                        .map_err(stored)?
                        .ok_or_else(|| stored(StoreError::Storage("the module is missing from the store".into())))?;
                    let plugin = load_checked(engine, &entry.config, &bytes)
                        .map_err(|e| RuntimeError::Upcaster(e.to_string()))?;
                    tracing::info!(upcaster = %entry.config.name, sha256 = %sha, "upcaster: running the deployed version");
                    *entry.plugin.write().unwrap_or_else(PoisonError::into_inner) = plugin;
                }
                None => {
                    let bytes = std::fs::read(&entry.config.plugin).map_err(|error| RuntimeError::Plugin {
                        subscription: name.clone(),
                        plugin: entry.config.plugin.display().to_string(),
                        error: LoadError::Io { path: entry.config.plugin.clone(), error },
                    })?;
                    store.deploy_blocking(&name, record(&current, "config", "config"), bytes)?;
                }
            }
        }
        Ok(())
    }

    /// Deploy `module` as the upcaster of registry name `upcasters/<name>`,
    /// live: loaded and checked, recorded in the registry, then used by
    /// every subscription from its next event on. Answers the history
    /// number, the new and the previous sha256, and whether it changed.
    ///
    /// # Errors
    ///
    /// An unknown upcaster, a refused module, a store error.
    pub(crate) fn deploy(
        &self,
        engine: &Engine,
        store: &Store,
        registry_name: &str,
        module: Vec<u8>,
        by: &str,
        action: &str,
    ) -> Result<(u64, String, Option<String>, bool), UpcasterError> {
        let _deploying = self.deploying.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = self
            .entries
            .iter()
            .find(|e| e.config.registry_name() == registry_name)
            .ok_or_else(|| UpcasterError::Unknown(registry_name.to_owned()))?;
        let previous = store.active_version(registry_name)?;
        let sha = String::from(crate::names::ContentHash::of(&module));
        if previous.as_deref() == Some(sha.as_str()) {
            let number =
                store.history(registry_name)?.iter().rev().find(|(_, r)| r.sha256 == sha).map_or(0, |(n, _)| *n);
            return Ok((number, sha, previous, false));
        }
        let plugin = load_checked(engine, &entry.config, &module)?;
        let number = store.deploy_blocking(registry_name, record(&plugin, by, action), module)?;
        *entry.plugin.write().unwrap_or_else(PoisonError::into_inner) = plugin;
        self.generation.fetch_add(1, Ordering::AcqRel);
        tracing::info!(upcaster = %entry.config.name, sha256 = %sha, action, "upcaster switched");
        Ok((number, sha, previous, true))
    }

    /// Check a handler accepting `accepts` against every topic pattern it
    /// subscribes to (docs/schemas.md): answers the first reason it is
    /// refused.
    pub(crate) fn check_handler(&self, patterns: &[crate::topic::Pattern], accepts: &[u32]) -> Result<(), String> {
        for pattern in patterns {
            check_reach(&self.edges, pattern, accepts, &extra(&self.declared, pattern))?;
        }
        Ok(())
    }
}

/// Whether every version that can arrive on `pattern` reaches one of
/// `accepts` through the upcasters `config` declares (`weir inspect
/// --config weir.toml`): the check a start and a deploy make. Answers why
/// not.
///
/// # Errors
///
/// The version that reaches no accepted one, with its chain.
pub fn check_accepts(config: &Config, pattern: &crate::topic::Pattern, accepts: &[u32]) -> Result<(), String> {
    let edges: Vec<Edge> = config
        .upcasters
        .iter()
        .enumerate()
        .map(|(index, u)| Edge { index, topic: u.topic.clone(), from: u.from, to: u.to })
        .collect();
    check_reach(&edges, pattern, accepts, &extra(&declared(config), pattern))
}

/// The versions each `[[schemas]]` entry declares.
fn declared(config: &Config) -> Vec<(crate::topic::Pattern, Vec<u32>)> {
    config
        .schemas
        .entries()
        .iter()
        .map(|e| (e.pattern.clone(), e.versions.iter().map(|v| v.version).collect()))
        .filter(|(_, versions): &(_, Vec<u32>)| !versions.is_empty())
        .collect()
}

/// The declared versions of the entries whose pattern overlaps `pattern`.
fn extra(declared: &[(crate::topic::Pattern, Vec<u32>)], pattern: &crate::topic::Pattern) -> Vec<u32> {
    declared.iter().filter(|(p, _)| plan::overlaps(p, pattern)).flat_map(|(_, v)| v.iter().copied()).collect()
}
