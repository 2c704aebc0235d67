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
mod state;
mod text;
mod timer;
mod upcast;

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use handler::{AggregateCall, Handler, InstanceMode, Invocation};
pub use host::PluginLog;
pub use limits::{
    DEFAULT_DEADLINE, DEFAULT_MAX_EMITS, DEFAULT_MAX_HEADER_BYTES_PER_EMIT, DEFAULT_MAX_HEADERS_PER_EMIT,
    DEFAULT_MAX_LOG_BYTES, DEFAULT_MAX_LOG_LINES, DEFAULT_MAX_OUTPUT_BYTES, DEFAULT_MAX_STATE_KEYS_PER_SCOPE,
    DEFAULT_MAX_STATE_VALUE_BYTES, DEFAULT_MAX_STATE_WRITE_BYTES, DEFAULT_MEMORY_BYTES, LOG_LINE_OVERHEAD, Limits,
    LimitsBuilder,
};
pub use limits::{DEFAULT_MAX_PENDING_TIMERS, DEFAULT_MAX_TIMERS_PER_INVOCATION};
pub(crate) use plugin::hex;
pub use plugin::{ExportInfo, ImportInfo, Plugin, PluginInfo, inspect_imports_exports};
pub use state::{MAX_STATE_KEY_BYTES, MemoryState, MemoryWrite, StateAccess, StateEntry, StateError, StateScope};
pub(crate) use text::bounded as bounded_text;
pub use text::{MAX_DESCRIPTION_BYTES, MAX_NAME_BYTES, MAX_REASON_BYTES};
pub use timer::{MAX_TIMER_KEY_BYTES, TimerCall};

use crate::error::EngineError;

/// Default epoch tick: the granularity of deadlines.
pub const DEFAULT_EPOCH_TICK: Duration = Duration::from_millis(10);
/// Default bound on the Wasm stack of a guest.
pub const DEFAULT_MAX_WASM_STACK: usize = 512 << 10;
/// Default number of instance slots of the pooling allocator.
pub const DEFAULT_POOL_INSTANCES: u32 = 128;
/// Bytes of a pooled slot's linear memory reset in place (dirty pages
/// rewritten) rather than given back to the kernel when its instance ends.
const POOL_KEEP_RESIDENT_BYTES: usize = 2 << 20;
/// The same for a pooled slot's table.
const POOL_TABLE_KEEP_RESIDENT_BYTES: usize = 64 << 10;
/// Default largest module the engine compiles: 16 MiB.
pub const DEFAULT_MAX_MODULE_BYTES: usize = 16 << 20;
/// Default largest function body the engine compiles: 256 KiB. Cranelift
/// takes about 1.3 KB of host memory per byte of one function's body (a
/// 1.8 MB function took 2.26 GB and 23 s), so this bounds a compile to a few
/// hundred MB; the largest function of the example plugins is far smaller.
pub const DEFAULT_MAX_FUNCTION_BYTES: usize = 256 << 10;
/// Pool slots kept for each subscription by
/// [`EngineConfig::pool_instances_for`]: its running instance, and a
/// replacement or a deploy candidate started beside it.
pub const POOL_INSTANCES_PER_SUBSCRIPTION: u32 = 2;
/// Pool slots on top of those: load probes, `weir exec`, several deploys at
/// once.
pub const POOL_HEADROOM: u32 = 16;

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
    /// Largest module accepted, checked before compiling
    /// ([`LoadError::ModuleTooLarge`](crate::LoadError::ModuleTooLarge)).
    /// By default 16 MiB ([`DEFAULT_MAX_MODULE_BYTES`]).
    pub max_module_bytes: usize,
    /// Largest function body accepted, checked before compiling
    /// ([`LoadError::FunctionTooLarge`](crate::LoadError::FunctionTooLarge)).
    /// By default 256 KiB ([`DEFAULT_MAX_FUNCTION_BYTES`]).
    pub max_function_bytes: usize,
}

impl EngineConfig {
    /// Pool slots for a runtime with `subscriptions` subscriptions:
    /// [`POOL_INSTANCES_PER_SUBSCRIPTION`] each plus [`POOL_HEADROOM`].
    #[must_use]
    pub fn pool_instances_for(subscriptions: usize) -> u32 {
        u32::try_from(subscriptions)
            .unwrap_or(u32::MAX)
            .saturating_mul(POOL_INSTANCES_PER_SUBSCRIPTION)
            .saturating_add(POOL_HEADROOM)
    }
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
            max_module_bytes: DEFAULT_MAX_MODULE_BYTES,
            max_function_bytes: DEFAULT_MAX_FUNCTION_BYTES,
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
    /// Held while Cranelift compiles: one compile at a time per engine, so
    /// concurrent deploys cannot multiply a compile's memory.
    compiling: Mutex<()>,
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
            // Relaxed SIMD is off (below); were it on, its results would
            // not depend on the machine.
            .relaxed_simd_deterministic(true);
        // Plugins are plain core modules with one 32-bit memory, single
        // threaded, deterministic: every proposal the ABI does not need is
        // off, so a module using one is refused at load (docs/abi.md §9.3).
        for proposal in DISABLED_PROPOSALS {
            wt.wasm_features(proposal, false);
        }
        if config.pooling {
            let mut pool = wasmtime::PoolingAllocationConfig::default();
            pool.total_core_instances(config.pool_instances)
                .total_memories(config.pool_instances)
                .total_tables(config.pool_instances)
                .max_memory_size(config.pool_max_memory_bytes);
            // Reset a slot's memory and table for the next instance by
            // rewriting only the pages the last one dirtied (found with
            // Linux's PAGEMAP_SCAN, 6.7+), instead of `madvise(MADV_DONTNEED)`
            // over the whole memory: that syscall flushed the TLB of every
            // core and its pages came back as page faults in the next
            // instance. It halved the cost of a fresh instance
            // (docs/benchmarks.md, "Issue 18"). The price: up to this many
            // bytes of dirtied pages stay resident per used slot. Without
            // PAGEMAP_SCAN wasmtime zeroes the lowest bytes with `memset`
            // instead, which measured about the same as the `madvise`.
            pool.linear_memory_keep_resident(POOL_KEEP_RESIDENT_BYTES.min(config.pool_max_memory_bytes))
                .table_keep_resident(POOL_TABLE_KEEP_RESIDENT_BYTES)
                .pagemap_scan(wasmtime::Enabled::Auto);
            wt.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        }
        let wasmtime = wasmtime::Engine::new(&wt).map_err(|e| EngineError::Config { reason: format!("{e:#}") })?;

        let cache = match &config.cache_dir {
            Some(dir) => Some(cache::ArtifactCache::open(dir.clone(), fingerprint(&wasmtime))?),
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

        Ok(Self { inner: Arc::new(Inner { wasmtime, config, cache, stop_ticker, compiling: Mutex::new(()) }) })
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

    /// The compile lock: see [`Inner::compiling`].
    pub(crate) fn compile_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.inner.compiling.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Remove from the artifact cache every artifact that is not for one of
    /// `keep` (module sha256s, hex), every artifact of another wasmtime or
    /// engine configuration, and temp files a crash left behind. Call it
    /// with every version a registry may still run (the active ones and the
    /// rollback history). Answers how many files were removed (0 without a
    /// cache).
    ///
    /// # Errors
    ///
    /// The I/O error of listing the cache directory.
    pub fn evict_artifacts<'a>(&self, keep: impl IntoIterator<Item = &'a str>) -> std::io::Result<usize> {
        match self.cache() {
            Some(cache) => cache.evict_except(&keep.into_iter().collect()),
            None => Ok(0),
        }
    }

    /// Remove from the artifact cache every artifact not loaded or written
    /// for `max_age` (a use refreshes its modification time), and every
    /// artifact of another wasmtime or engine configuration: for a cache
    /// shared by many `weir exec` runs, which has no registry to ask.
    /// Answers how many files were removed (0 without a cache).
    ///
    /// # Errors
    ///
    /// The I/O error of listing the cache directory.
    pub fn evict_artifacts_unused_for(&self, max_age: Duration) -> std::io::Result<usize> {
        match self.cache() {
            Some(cache) => cache.evict_unused_for(max_age),
            None => Ok(0),
        }
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

/// The Wasm proposals turned off: everything wasmtime would accept beyond
/// what plugins built for `wasm32-unknown-unknown` (Rust's and clang's
/// default features: mutable globals, sign extension, non-trapping
/// float-to-int, multi-value, bulk memory, reference types) and fixed-width
/// SIMD use.
pub(crate) const DISABLED_PROPOSALS: [wasmtime::WasmFeatures; 14] = [
    wasmtime::WasmFeatures::THREADS,
    wasmtime::WasmFeatures::SHARED_EVERYTHING_THREADS,
    wasmtime::WasmFeatures::RELAXED_SIMD,
    wasmtime::WasmFeatures::TAIL_CALL,
    wasmtime::WasmFeatures::MULTI_MEMORY,
    wasmtime::WasmFeatures::MEMORY64,
    wasmtime::WasmFeatures::EXCEPTIONS,
    wasmtime::WasmFeatures::LEGACY_EXCEPTIONS,
    wasmtime::WasmFeatures::FUNCTION_REFERENCES,
    wasmtime::WasmFeatures::GC,
    wasmtime::WasmFeatures::STACK_SWITCHING,
    wasmtime::WasmFeatures::WIDE_ARITHMETIC,
    wasmtime::WasmFeatures::CUSTOM_PAGE_SIZES,
    wasmtime::WasmFeatures::EXTENDED_CONST,
];

/// A short, stable name for the engine's compilation settings and wasmtime
/// version: part of each cached artifact's file name.
fn fingerprint(engine: &wasmtime::Engine) -> String {
    // DefaultHasher::new() uses fixed keys: stable across runs of one build.
    let mut hasher = std::hash::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    env!("CARGO_PKG_VERSION").hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}
