//! Aggregates: the write model (docs/event-sourcing.md, "Aggregates and
//! commands"). An entity type with `aggregate = "…wasm"` accepts commands;
//! each is decided by the aggregate's `weir_decide` on the entity's state,
//! and its events, the new snapshot and the command's record commit in one
//! store command (`store/aggregate.rs`).
//!
//! | file | concern |
//! |---|---|
//! | `mod.rs` | the loaded aggregates, their instance pools, the per-entity locks, errors |
//! | `execute.rs` | one command: idempotency, decide, fold, store, retry on a moved stream |
//! | `fold.rs` | an entity's state: snapshot plus the events after it; time travel |
//! | `deploy.rs` | versions in the plugin registry, as a handler's: restore at start, deploy live |
//!
//! # Concurrency
//!
//! Commands to one entity are serialized: a command holds its entity's lock
//! (one of [`LOCK_STRIPES`] mutexes, chosen by hashing type and key) from
//! reading the state to the commit, so two commands never decide on the
//! same state. The lock is a `tokio` mutex, awaited by the command's task
//! (a command waiting for its entity holds no thread); the state is read
//! and the aggregate called on a blocking thread, never on an I/O thread,
//! and the commit is awaited by the task too, so a command waiting for its
//! fsync holds no thread either. An append through `POST /v1/streams` (or
//! a handler's emit of the type) does not take the lock: a command whose
//! stream moved meanwhile meets the store's revision check, reloads and
//! decides again, up to [`MAX_ATTEMPTS`] times, then answers `409
//! command_conflict`.

mod deploy;
mod execute;
mod fold;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

pub(crate) use execute::CommandRequest;
pub(crate) use fold::At;

use crate::config::EntityConfig;
use crate::engine::{Engine, Handler, InstanceMode, Limits, Plugin};
use crate::error::{InvokeError, LoadError};
use crate::store::StoreError;

/// How many times a command is decided when its stream keeps moving.
pub(crate) const MAX_ATTEMPTS: usize = 4;
/// Mutexes commands are serialized on, by hash of (type, key).
pub(crate) const LOCK_STRIPES: usize = 1024;
/// Idle instances kept per aggregate.
const POOL_KEEP: usize = 32;

/// One entity type's aggregate: its module, and idle instances of it.
pub(crate) struct Loaded {
    plugin: Plugin,
    limits: Limits,
    config: Vec<u8>,
    pool: Mutex<Vec<Handler>>,
}

impl Loaded {
    fn new(plugin: Plugin, limits: Limits, config: Vec<u8>) -> Result<Self, LoadError> {
        if !plugin.info().is_aggregate() {
            return Err(LoadError::BadExport {
                name: weir_abi::exports::DECIDE,
                expected: "func(i32, i32) -> i64",
                problem:
                    "is missing: an entity's aggregate exports weir_decide and weir_evolve (#[weir_sdk::aggregate])"
                        .into(),
            });
        }
        // One instance now: a refused config fails here, not on a command.
        let first = plugin.handler(limits.clone(), config.clone(), InstanceMode::Reuse)?;
        Ok(Self { plugin, limits, config, pool: Mutex::new(vec![first]) })
    }

    /// The module's sha256: the version snapshots are made with.
    pub(crate) fn sha256(&self) -> &str {
        &self.plugin.info().sha256
    }

    /// The bound on the entity's state.
    pub(crate) fn max_state_bytes(&self) -> usize {
        self.limits.max_state_value_bytes()
    }

    /// An idle instance, or a new one.
    fn take(&self) -> Result<Handler, AggregateError> {
        if let Some(handler) = self.pool.lock().unwrap_or_else(PoisonError::into_inner).pop() {
            return Ok(handler);
        }
        self.plugin
            .handler(self.limits.clone(), self.config.clone(), InstanceMode::Reuse)
            .map_err(|e| AggregateError::Start(e.to_string()))
    }

    fn give(&self, handler: Handler) {
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.len() < POOL_KEEP {
            pool.push(handler);
        }
    }
}

/// The aggregates of every entity type that has one, and the per-entity
/// command locks.
pub(crate) struct Aggregates {
    /// Entity type → its aggregate (swapped whole by a deploy).
    types: HashMap<String, RwLock<Arc<Loaded>>>,
    declared: Vec<String>,
    /// Held through a deploy, so two deploys of one type do not interleave.
    deploying: Mutex<()>,
    locks: Box<[Arc<tokio::sync::Mutex<()>>]>,
}

impl std::fmt::Debug for Aggregates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aggregates").field("types", &self.types.keys().collect::<Vec<_>>()).finish_non_exhaustive()
    }
}

impl Aggregates {
    /// Load the aggregate of every entity type that names one. Runs before
    /// the store opens: a bad module stops the start with nothing written.
    ///
    /// # Errors
    ///
    /// The entity type, the module's path and why it was refused.
    pub(crate) fn load(engine: &Engine, entities: &[EntityConfig]) -> Result<Self, (String, String, LoadError)> {
        let mut types = HashMap::new();
        for entity in entities {
            let Some(agg) = &entity.aggregate else { continue };
            let fail = |e| (entity.entity_type.clone(), agg.plugin.display().to_string(), e);
            let plugin = engine.load_file(&agg.plugin).map_err(fail)?;
            let loaded = Loaded::new(plugin, agg.limits.clone(), agg.config.clone()).map_err(fail)?;
            tracing::info!(entity_type = %entity.entity_type, sha256 = %loaded.sha256(), "aggregate loaded");
            types.insert(entity.entity_type.clone(), RwLock::new(Arc::new(loaded)));
        }
        Ok(Self {
            types,
            declared: entities.iter().map(|e| e.entity_type.clone()).collect(),
            deploying: Mutex::new(()),
            locks: (0..LOCK_STRIPES).map(|_| Arc::new(tokio::sync::Mutex::new(()))).collect(),
        })
    }

    /// The aggregate of `ty` now.
    ///
    /// # Errors
    ///
    /// `unknown_entity_type` when `ty` is not declared, `no_aggregate` when
    /// it has no aggregate.
    pub(crate) fn get(&self, ty: &str) -> Result<Arc<Loaded>, AggregateError> {
        match self.types.get(ty) {
            Some(slot) => Ok(Arc::clone(&slot.read().unwrap_or_else(PoisonError::into_inner))),
            None if self.declared.iter().any(|t| t == ty) => Err(AggregateError::NoAggregate(ty.to_owned())),
            None => Err(AggregateError::UnknownEntityType(ty.to_owned())),
        }
    }

    /// Make `loaded` the aggregate of `ty`: commands decided from now on
    /// use it. Answers the one it replaced.
    fn install(&self, ty: &str, loaded: Loaded) -> Result<Arc<Loaded>, AggregateError> {
        let Some(slot) = self.types.get(ty) else { return Err(AggregateError::NoAggregate(ty.to_owned())) };
        let mut current = slot.write().unwrap_or_else(PoisonError::into_inner);
        Ok(std::mem::replace(&mut *current, Arc::new(loaded)))
    }

    /// The command lock of entity `ty`/`key`, owned so it can be held
    /// across the command's awaits.
    pub(crate) async fn lock(&self, ty: &str, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (ty, key).hash(&mut hasher);
        let stripe = (hasher.finish() % LOCK_STRIPES as u64) as usize;
        Arc::clone(&self.locks[stripe]).lock_owned().await
    }
}

/// Why a command or a state read failed (not a rejection: that is a
/// recorded result).
#[derive(Debug, thiserror::Error)]
pub(crate) enum AggregateError {
    #[error("{0:?} is not a declared entity type: declare it in weir.toml ([[entities]] type = \"{0}\")")]
    UnknownEntityType(String),
    #[error(
        "the entity type {0:?} has no aggregate: give it one in weir.toml ([[entities]] aggregate = \"<module.wasm>\")"
    )]
    NoAggregate(String),
    #[error(
        "the stream moved under the command {attempts} times (appends outside commands); nothing was stored: send it again"
    )]
    Conflict { attempts: usize },
    #[error(
        "the entity's state would be {size} bytes, over the bound of {limit} (limits.max_state_value_bytes of the entity type); nothing was stored"
    )]
    StateTooLarge { size: usize, limit: usize },
    #[error("the stream has {events} events to fold, over the bound of {limit}: ask for an earlier revision or time")]
    StreamTooLong { events: u64, limit: u64 },
    #[error("the aggregate failed ({}): {error}", error.code())]
    Aggregate { error: InvokeError },
    #[error("the aggregate answered an event the host refuses: {0}")]
    BadEvent(String),
    #[error("the aggregate answered an event its topic's schema refuses: event {index}: {error}")]
    Schema { index: usize, error: crate::schema::SchemaError },
    #[error("the aggregate could not start: {0}")]
    Start(String),
    #[error("the aggregate module was refused: {1}")]
    Refused(&'static str, String),
    #[error(transparent)]
    Store(#[from] StoreError),
}
