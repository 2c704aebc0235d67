//! Deploy, rollback and the plugin registry: a new version is validated
//! (compiled, checked, instantiated with the handler's config, run on sample
//! events), stored with its history entry, and swapped in between two
//! invocations.

use std::sync::PoisonError;
use std::sync::mpsc;

use serde::Serialize;

use super::samples::{TestCase, check_sample};
use super::{Runtime, RuntimeError};
use crate::delivery::Control;
use crate::engine::PluginInfo;
use crate::error::LoadError;
use crate::names::{ContentHash, SubscriptionName};
use crate::store::{Store, StoreError, VersionRecord, now_ms};

impl Runtime {
    /// Deploy `module` as the new version of `handler` (`<pipeline>/<handler>`).
    ///
    /// Before anything changes, the module is compiled and validated (ABI
    /// version, imports, exports), instantiated with the handler's
    /// configuration and limits, and run on the `tests` samples: any sandbox
    /// failure, or an outcome other than a sample expects, refuses the
    /// deploy. Then the module is stored, recorded in the history and made
    /// active, and the handler switches between two invocations: the
    /// invocation in flight finishes on the old version, the next one runs
    /// the new. The call returns after the switch.
    ///
    /// # Errors
    ///
    /// [`DeployError`]; on any error the running version keeps serving.
    pub fn deploy(
        &self,
        handler: &str,
        module: Vec<u8>,
        by: &str,
        tests: &[TestCase],
    ) -> Result<DeployReport, DeployError> {
        // An upcaster's versions are kept under `upcasters/<name>`: the same
        // registry, its own switch (upcast/).
        if self.upcasters.owns(handler) {
            return self.switch_upcaster(handler, module, by, "deploy");
        }
        self.switch(handler, module, by, "deploy", tests)
    }

    /// Deploy or roll back an upcaster: every subscription runs the new
    /// module from its next event on.
    fn switch_upcaster(
        &self,
        name: &str,
        module: Vec<u8>,
        by: &str,
        action: &str,
    ) -> Result<DeployReport, DeployError> {
        let (version, sha256, previous, changed) =
            self.upcasters.deploy(&self.engine, &self.store, name, module, by, action)?;
        Ok(DeployReport { handler: name.to_owned(), version, sha256, previous, changed })
    }

    /// Switch `handler` back to an earlier version from its history: the one
    /// whose sha256 starts with `to`, or else the latest version that differs
    /// from the active one. Naming the active version changes nothing
    /// ([`DeployReport::changed`] is false).
    ///
    /// # Errors
    ///
    /// [`DeployError`]; on any error the running version keeps serving.
    pub fn rollback(&self, handler: &str, to: Option<&str>, by: &str) -> Result<DeployReport, DeployError> {
        let sub = self.subs.iter().find(|s| &*s.name == handler);
        // Held from reading the active version to the swap: two rollbacks
        // (or a rollback and a deploy) of one handler run one after the
        // other, each from what the one before left.
        let _switching = sub.map(|sub| sub.switching.lock().unwrap_or_else(PoisonError::into_inner));
        let history = self.store.history(handler)?;
        if history.is_empty() {
            return Err(DeployError::UnknownHandler(handler.to_owned()));
        }
        let active = self.store.active_version(handler)?.unwrap_or_default();
        let target = match to {
            Some(prefix) => {
                let mut matches: Vec<&VersionRecord> =
                    history.iter().map(|(_, r)| r).filter(|r| r.sha256.starts_with(prefix)).collect();
                matches.sort_by(|a, b| a.sha256.cmp(&b.sha256));
                matches.dedup_by(|a, b| a.sha256 == b.sha256);
                match matches.as_slice() {
                    [one] => (*one).clone(),
                    [] => return Err(DeployError::NoSuchVersion(prefix.to_owned())),
                    _ => {
                        return Err(DeployError::AmbiguousVersion {
                            prefix: prefix.to_owned(),
                            matches: matches.len(),
                        });
                    }
                }
            }
            None => history
                .iter()
                .rev()
                .map(|(_, r)| r)
                .find(|r| r.sha256 != active)
                .cloned()
                .ok_or_else(|| DeployError::NothingToRollBack(handler.to_owned()))?,
        };
        let module =
            self.store.module(&target.sha256)?.ok_or_else(|| DeployError::ModulePruned(target.sha256.clone()))?;
        if self.upcasters.owns(handler) {
            return self.switch_upcaster(handler, module, by, "rollback");
        }
        self.switch_locked(handler, module, by, "rollback", &[])
    }

    /// Each handler with its active version and history length.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn plugins(&self) -> Result<Vec<(String, Option<VersionRecord>, usize)>, StoreError> {
        // Webhook sinks run no plugin: they have no versions to list.
        let is_sink = |name: &str| {
            self.config.sinks.iter().any(|k| name == format!("{}/{}", crate::config::SINK_PIPELINE, k.name))
        };
        self.subs
            .iter()
            .filter(|s| !is_sink(&s.name))
            .map(|s| {
                let history = self.store.history(&s.name)?;
                let active = self.store.active_version(&s.name)?;
                let record =
                    active.and_then(|sha| history.iter().rev().map(|(_, r)| r).find(|r| r.sha256 == sha).cloned());
                Ok((s.name.to_string(), record, history.len()))
            })
            .collect()
    }

    /// A handler's history, oldest first.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn history(&self, handler: &str) -> Result<Vec<(u64, VersionRecord)>, StoreError> {
        self.store.history(handler)
    }

    fn switch(
        &self,
        handler: &str,
        module: Vec<u8>,
        by: &str,
        action: &str,
        tests: &[TestCase],
    ) -> Result<DeployReport, DeployError> {
        let sub = self
            .subs
            .iter()
            .find(|s| &*s.name == handler)
            .ok_or_else(|| DeployError::UnknownHandler(handler.to_owned()))?;
        let _switching = sub.switching.lock().unwrap_or_else(PoisonError::into_inner);
        self.switch_locked(handler, module, by, action, tests)
    }

    /// [`Runtime::switch`] with the handler's `switching` lock held by the
    /// caller.
    fn switch_locked(
        &self,
        handler: &str,
        module: Vec<u8>,
        by: &str,
        action: &str,
        tests: &[TestCase],
    ) -> Result<DeployReport, DeployError> {
        let sub = self
            .subs
            .iter()
            .find(|s| &*s.name == handler)
            .ok_or_else(|| DeployError::UnknownHandler(handler.to_owned()))?;
        let settings = self
            .config
            .pipelines
            .iter()
            .flat_map(|p| p.handlers.iter().map(move |h| (SubscriptionName::new(&p.name, &h.name), h)))
            .find(|(name, _)| name.as_str() == handler)
            .map(|(_, h)| h.clone())
            .ok_or_else(|| DeployError::UnknownHandler(handler.to_owned()))?;
        // The version that is already active: nothing to validate, record or
        // swap, and no history entry.
        let sha256 = String::from(ContentHash::of(&module));
        let previous = self.store.active_version(handler)?;
        if previous.as_deref() == Some(sha256.as_str()) {
            let version =
                self.store.history(handler)?.iter().rev().find(|(_, r)| r.sha256 == sha256).map_or(0, |(n, _)| *n);
            tracing::info!(handler, version, sha256 = %sha256, action, "plugin already active; nothing changed");
            return Ok(DeployReport { handler: handler.to_owned(), version, sha256, previous, changed: false });
        }
        let plugin = self.engine.load(&module).map_err(DeployError::Invalid)?;
        // The versions the new module accepts must be reachable from every
        // version that can arrive on the handler's topics (upcast/).
        let accepts = plugin.info().description.as_ref().map(|d| d.schema_versions.clone()).unwrap_or_default();
        let patterns = self.config.pipelines.iter().find(|p| p.name == sub.pipeline).map(|p| p.topics.clone());
        self.upcasters.check_handler(&patterns.unwrap_or_default(), &accepts).map_err(DeployError::Unreachable)?;
        let instance = plugin
            .handler(settings.limits.clone(), settings.config.clone(), settings.mode)
            .map_err(DeployError::Invalid)?;
        // Samples run on a separate instance, so the one that goes live has
        // seen no event yet.
        if !tests.is_empty() {
            let mut probe = plugin
                .handler(settings.limits.clone(), settings.config.clone(), settings.mode)
                .map_err(DeployError::Invalid)?;
            for (i, test) in tests.iter().enumerate() {
                let outcome =
                    probe.invoke(weir_abi::DeliveryRef { event: &test.event, subscription: handler, attempt: 1 });
                check_sample(i, test, &outcome.result)?;
            }
        }
        let number = self.store.deploy_blocking(handler, version_record(plugin.info(), by, action), module)?;
        let (tx, rx) = mpsc::channel();
        sub.control
            .send(Control::Swap { invoker: Box::new(instance), reply: tx })
            .map_err(|_| DeployError::Runtime(format!("{handler} is not running")))?;
        rx.recv().map_err(|_| DeployError::Runtime(format!("{handler} stopped")))?;
        tracing::info!(handler, version = number, sha256 = %plugin.info().sha256, action, "plugin switched");
        Ok(DeployReport {
            handler: handler.to_owned(),
            version: number,
            sha256: plugin.info().sha256.clone(),
            previous,
            changed: true,
        })
    }
}

/// The bytes of a handler's active module, verified against its sha256. A
/// mismatch is store damage, named by handler and version, not a fault of
/// the plugin file it was once deployed from.
pub(super) fn active_module(store: &Store, subscription: &str, sha256: &str) -> Result<Vec<u8>, RuntimeError> {
    let damaged = |error: StoreError| {
        let version = store
            .history(subscription)
            .ok()
            .and_then(|h| h.iter().rev().find(|(_, r)| r.sha256 == sha256).map(|(n, _)| n.to_string()))
            .unwrap_or_else(|| "?".to_owned());
        RuntimeError::StoredModule {
            subscription: subscription.to_owned(),
            version,
            sha256: sha256.to_owned(),
            error: Box::new(error),
        }
    };
    match store.module(sha256) {
        Ok(Some(bytes)) => Ok(bytes),
        Ok(None) => Err(damaged(StoreError::Decode("the module is missing from the store".into()))),
        Err(e @ StoreError::ModuleCorrupt { .. }) => Err(damaged(e)),
        Err(e) => Err(e.into()),
    }
}

pub(super) fn version_record(info: &PluginInfo, by: &str, action: &str) -> VersionRecord {
    VersionRecord {
        sha256: info.sha256.clone(),
        size: info.size as u64,
        abi_version: info.abi_version,
        description: info.description.clone(),
        deployed_at_ms: now_ms(),
        deployed_by: by.to_owned(),
        action: action.to_owned(),
    }
}

/// What a deploy or rollback did.
#[derive(Debug, Clone, Serialize)]
pub struct DeployReport {
    /// The handler.
    pub handler: String,
    /// Its new version number in the history; when nothing changed, the
    /// number of the active version.
    pub version: u64,
    /// sha256 of the now active module.
    pub sha256: String,
    /// sha256 of the module that was active before the call (the same as
    /// `sha256` when nothing changed).
    pub previous: Option<String>,
    /// False when the module was already the active version: then nothing
    /// was validated, recorded or swapped.
    pub changed: bool,
}

/// Why a deploy or rollback was refused. The running version keeps serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeployError {
    /// No such handler.
    #[error("no handler named {0:?} (handlers are <pipeline>/<handler>)")]
    UnknownHandler(String),
    /// The module is not a valid plugin, or refused its configuration.
    #[error("the module was refused: {0}")]
    Invalid(LoadError),
    /// A sample event failed or did not produce what it expects.
    #[error("sample event {index} failed: {reason}")]
    SampleFailed {
        /// Which sample (0-based).
        index: usize,
        /// What happened.
        reason: String,
    },
    /// No version matches.
    #[error("no version {0} in the history")]
    NoSuchVersion(String),
    /// More than one version starts with the given sha256 prefix.
    #[error("{matches} versions in the history start with {prefix:?}; give more characters of the sha256")]
    AmbiguousVersion {
        /// The prefix given.
        prefix: String,
        /// How many versions start with it.
        matches: usize,
    },
    /// A rollback without a target, and every version in the history is the
    /// active one.
    #[error("{0} has only one version in its history; there is nothing to roll back to")]
    NothingToRollBack(String),
    /// The version is in the history, but its module was pruned from the
    /// registry (`[plugins] keep_versions`).
    #[error(
        "version {0} is in the history but its module was pruned (only each handler's latest `plugins.keep_versions` versions keep theirs); deploy its file again"
    )]
    ModulePruned(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The new version accepts schema versions that a version arriving on
    /// one of the handler's topics cannot reach through the upcasters.
    #[error("the module was refused: {0}")]
    Unreachable(String),
    /// An upcaster's module was refused.
    #[error("the module was refused: {0}")]
    Upcaster(#[from] crate::upcast::UpcasterError),
    /// The handler's worker is gone.
    #[error("{0}")]
    Runtime(String),
}

impl DeployError {
    /// Stable code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownHandler(_) => "unknown_handler",
            Self::Invalid(e) => e.code(),
            Self::SampleFailed { .. } => "sample_failed",
            // One code for all three, as before they were told apart.
            Self::NoSuchVersion(_)
            | Self::AmbiguousVersion { .. }
            | Self::NothingToRollBack(_)
            | Self::ModulePruned(_) => "no_such_version",
            Self::Store(e) => e.code(),
            Self::Runtime(_) => "worker",
            Self::Unreachable(_) => "unreachable_version",
            Self::Upcaster(e) => e.code(),
        }
    }
}
