//! The sandboxed Wasm engine: the only module that names `wasmtime`.
//!
//! An [`Engine`] compiles and validates modules into [`Plugin`]s; a plugin
//! instantiated with its limits and configuration is a [`Handler`], which
//! invokes the guest once per delivery. Handlers are synchronous and `Send`:
//! they run on worker threads, never on async I/O threads.

mod cache;
mod guest;
mod handler;
mod host;
mod limits;
mod plugin;

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use handler::{Handler, InstanceMode, Invocation};
pub use host::PluginLog;
pub use limits::{
    DEFAULT_DEADLINE, DEFAULT_MAX_EMITS, DEFAULT_MAX_LOG_BYTES, DEFAULT_MAX_OUTPUT_BYTES, DEFAULT_MEMORY_BYTES, Limits,
    LimitsBuilder,
};
pub(crate) use plugin::hex;
pub use plugin::{ExportInfo, ImportInfo, Plugin, PluginInfo, inspect_imports_exports};

use crate::error::EngineError;

/// Default epoch tick: the granularity of deadlines.
pub const DEFAULT_EPOCH_TICK: Duration = Duration::from_millis(10);
/// Default bound on the Wasm stack of a guest.
pub const DEFAULT_MAX_WASM_STACK: usize = 512 << 10;
/// Default number of instance slots of the pooling allocator.
pub const DEFAULT_POOL_INSTANCES: u32 = 128;

/// How the engine is set up. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where compiled artifacts are cached. By default none (always compile).
    pub cache_dir: Option<PathBuf>,
    /// Meter fuel, so that [`Limits`] fuel budgets apply. By default off: it
    /// costs some speed on every instruction.
    pub consume_fuel: bool,
    /// Epoch tick. By default 10 ms ([`DEFAULT_EPOCH_TICK`]).
    pub epoch_tick: Duration,
    /// Wasm stack bound. By default 512 KiB ([`DEFAULT_MAX_WASM_STACK`]).
    pub max_wasm_stack: usize,
    /// Use the pooling instance allocator (preallocated slots: cheap fresh
    /// instances, for [`InstanceMode::FreshPerEvent`]). By default off.
    pub pooling: bool,
    /// Instance slots when pooling. By default 128.
    pub pool_instances: u32,
    /// Largest linear memory a pooled slot holds. By default 64 MiB.
    pub pool_max_memory_bytes: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            consume_fuel: false,
            epoch_tick: DEFAULT_EPOCH_TICK,
            max_wasm_stack: DEFAULT_MAX_WASM_STACK,
            pooling: false,
            pool_instances: DEFAULT_POOL_INSTANCES,
            pool_max_memory_bytes: DEFAULT_MEMORY_BYTES,
        }
    }
}

/// The Wasm engine: compiler, artifact cache and epoch ticker. Cheap to
/// clone; the ticker thread stops when the last clone is dropped.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    wasmtime: wasmtime::Engine,
    config: EngineConfig,
    cache: Option<cache::ArtifactCache>,
    stop_ticker: Arc<AtomicBool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

impl Engine {
    /// Create an engine and start its epoch ticker.
    ///
    /// # Errors
    ///
    /// [`EngineError`] if wasmtime refuses the configuration, the cache
    /// directory cannot be created or the ticker thread cannot start.
    pub fn new(config: EngineConfig) -> Result<Self, EngineError> {
        let mut wt = wasmtime::Config::new();
        wt.epoch_interruption(true)
            .consume_fuel(config.consume_fuel)
            .max_wasm_stack(config.max_wasm_stack)
            // Plugins are plain core modules with one 32-bit memory: refuse
            // proposals that would break that at load, not at run.
            .wasm_memory64(false)
            .wasm_multi_memory(false);
        if config.pooling {
            let mut pool = wasmtime::PoolingAllocationConfig::default();
            pool.total_core_instances(config.pool_instances)
                .total_memories(config.pool_instances)
                .total_tables(config.pool_instances)
                .max_memory_size(config.pool_max_memory_bytes);
            wt.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        }
        let wasmtime = wasmtime::Engine::new(&wt).map_err(|e| EngineError::Config { reason: format!("{e:#}") })?;

        let cache = match &config.cache_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|error| EngineError::CacheDir { path: dir.clone(), error })?;
                Some(cache::ArtifactCache::new(dir.clone(), fingerprint(&wasmtime)))
            }
            None => None,
        };

        let stop_ticker = Arc::new(AtomicBool::new(false));
        let ticker_engine = wasmtime.clone();
        let stop = Arc::clone(&stop_ticker);
        let tick = config.epoch_tick;
        std::thread::Builder::new()
            .name("weir-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    ticker_engine.increment_epoch();
                }
            })
            .map_err(EngineError::Ticker)?;

        Ok(Self { inner: Arc::new(Inner { wasmtime, config, cache, stop_ticker }) })
    }

    /// The configuration the engine was built with.
    #[must_use]
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    pub(crate) fn wasmtime(&self) -> &wasmtime::Engine {
        &self.inner.wasmtime
    }

    pub(crate) fn cache(&self) -> Option<&cache::ArtifactCache> {
        self.inner.cache.as_ref()
    }

    /// Ticks of the epoch clock that cover `deadline`: never early, at most
    /// two ticks late (rounded up to whole ticks, plus one for the partial
    /// tick already under way).
    pub(crate) fn deadline_ticks(&self, deadline: Duration) -> u64 {
        let tick = self.inner.config.epoch_tick.as_nanos().max(1);
        let ticks = deadline.as_nanos().div_ceil(tick);
        u64::try_from(ticks).unwrap_or(u64::MAX).saturating_add(1)
    }
}

/// A short, stable name for the engine's compilation settings and wasmtime
/// version: part of each cached artifact's file name.
fn fingerprint(engine: &wasmtime::Engine) -> String {
    // DefaultHasher::new() uses fixed keys: stable across runs of one build.
    let mut hasher = std::hash::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    env!("CARGO_PKG_VERSION").hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}
