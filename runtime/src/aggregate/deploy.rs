//! An aggregate's versions, kept in the plugin registry like a handler's,
//! under the name `entities/<type>`: the configured module is the initial
//! version; `POST /v1/entities/{type}/aggregate` deploys another, live;
//! a restart runs the active version. Each entity's snapshot names the
//! version that made it, so a new version rebuilds it on the entity's next
//! command, and nothing is migrated in advance.

use super::{AggregateError, Aggregates, Loaded};
use crate::config::EntityConfig;
use crate::engine::Engine;
use crate::error::LoadError;
use crate::runtime::RuntimeError;
use crate::store::{Store, VersionRecord};

/// The registry name of the aggregate of `ty`.
pub(crate) fn registry_name(ty: &str) -> String {
    format!("entities/{ty}")
}

fn record(loaded: &Loaded, by: &str, action: &str) -> VersionRecord {
    let info = loaded.plugin.info();
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

impl Aggregates {
    /// The registry names of the aggregates: subscription-like names that
    /// hold versions, not orphans.
    pub(crate) fn registry_names(&self) -> impl Iterator<Item = String> + '_ {
        self.types.keys().map(|ty| registry_name(ty))
    }

    /// At start, once the store is open: run each aggregate's active
    /// version from the registry, or record the configured module as the
    /// initial version.
    ///
    /// # Errors
    ///
    /// A stored module that is damaged or no longer loads; store errors.
    pub(crate) fn restore(
        &self,
        engine: &Engine,
        store: &Store,
        entities: &[EntityConfig],
    ) -> Result<(), RuntimeError> {
        for entity in entities {
            let Some(config) = &entity.aggregate else { continue };
            let ty = &entity.entity_type;
            let name = registry_name(ty);
            let current = self.get(ty).map_err(|e| RuntimeError::Worker(e.to_string()))?;
            let fail = |error| RuntimeError::Plugin {
                subscription: name.clone(),
                plugin: config.plugin.display().to_string(),
                error,
            };
            match store.active_version(&name)? {
                Some(sha) if sha == current.sha256() => {}
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
                        .ok_or_else(|| stored(crate::store::StoreError::Storage("the module is missing".into())))?;
                    let plugin = engine.load(&bytes).map_err(fail)?;
                    let loaded = Loaded::new(plugin, current.limits.clone(), current.config.clone()).map_err(fail)?;
                    tracing::info!(entity_type = %ty, sha256 = %sha, "aggregate: running the deployed version");
                    self.install(ty, loaded).map_err(|e| RuntimeError::Worker(e.to_string()))?;
                }
                None => {
                    let bytes = std::fs::read(&config.plugin)
                        .map_err(|error| fail(LoadError::Io { path: config.plugin.clone(), error }))?;
                    store.deploy_blocking(&name, record(&current, "config", "config"), bytes)?;
                }
            }
        }
        Ok(())
    }

    /// Deploy `module` as the aggregate of `ty`, live: loaded and checked
    /// (an aggregate whose `weir_init` accepts the type's config), recorded
    /// in the registry, then used by every command decided from now on.
    /// Answers the new and the previous sha256.
    ///
    /// # Errors
    ///
    /// An unknown type or one without aggregate, a refused module, a store
    /// error.
    pub(crate) fn deploy(
        &self,
        engine: &Engine,
        store: &Store,
        ty: &str,
        module: Vec<u8>,
        by: &str,
    ) -> Result<(String, String), AggregateError> {
        let _deploying = self.deploying.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = self.get(ty)?;
        let refused = |e: LoadError| AggregateError::Refused(e.code(), e.to_string());
        let plugin = engine.load(&module).map_err(refused)?;
        let loaded = Loaded::new(plugin, current.limits.clone(), current.config.clone()).map_err(refused)?;
        let sha = loaded.sha256().to_owned();
        if sha != current.sha256() {
            store.deploy_blocking(&registry_name(ty), record(&loaded, by, "deploy"), module)?;
            self.install(ty, loaded)?;
        }
        Ok((sha, current.sha256().to_owned()))
    }
}
