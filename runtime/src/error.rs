//! Error types of the runtime, one per boundary, each with stable codes.
//!
//! Each error's `Display` is self-contained: it states the reason, including
//! the underlying I/O or sandbox error, and that error is therefore not also
//! returned by `source()`. Printing the chain (anyhow's `{:#}`) thus shows
//! every reason once.

use std::path::PathBuf;
use std::time::Duration;

/// Why a module was not accepted as a plugin. Every variant has a stable
/// [`code`](LoadError::code).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error (in the message, not a `source()`).
        error: std::io::Error,
    },
    /// The bytes are not a WebAssembly module at all.
    #[error("not a WebAssembly module: {reason}")]
    NotWasm {
        /// What is wrong.
        reason: String,
    },
    /// The module is larger than the engine accepts
    /// (`EngineConfig::max_module_bytes`); checked before compiling.
    #[error("the module is {size} bytes, over the limit of {limit} bytes")]
    ModuleTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A function body is larger than the engine compiles
    /// (`EngineConfig::max_function_bytes`); checked before compiling,
    /// because compiling costs about 1.3 KB of host memory per byte of body.
    #[error("function #{index} has a body of {size} bytes, over the limit of {limit} bytes")]
    FunctionTooLarge {
        /// Index of the function among the module's defined functions.
        index: usize,
        /// Its body's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The bytes are WebAssembly but do not validate or compile.
    #[error("invalid WebAssembly module: {reason}")]
    InvalidModule {
        /// The compiler's message.
        reason: String,
    },
    /// The module imports something the host does not provide.
    #[error(
        "forbidden import{}: {}; a plugin may import only `weir::log(i32, i32, i32)` — no WASI, no ambient capabilities",
        if .imports.len() > 1 { "s" } else { "" },
        .imports.join(", ")
    )]
    ForbiddenImport {
        /// Each offending import as `module::name (type)`.
        imports: Vec<String>,
    },
    /// A required export is missing or has the wrong type.
    #[error("export `{name}` {problem}; ABI v1 requires `{name}: {expected}`")]
    BadExport {
        /// The export's name.
        name: &'static str,
        /// Its required type.
        expected: &'static str,
        /// `is missing` or `has type …`.
        problem: String,
    },
    /// The module speaks another ABI version.
    #[error("ABI version mismatch: the module speaks version {found}, this runtime speaks version {expected}")]
    AbiMismatch {
        /// What `weir_abi_version` returned.
        found: i32,
        /// What the host speaks.
        expected: u32,
    },
    /// The plugin refused its configuration (`weir_init` answered `Failed`).
    #[error("plugin init failed: {reason}")]
    InitFailed {
        /// The plugin's reason.
        reason: String,
    },
    /// Instantiation, `weir_abi_version`, `weir_init` or `weir_describe`
    /// failed in the sandbox.
    #[error("plugin failed while loading ({stage}): {error}")]
    Sandbox {
        /// Which step.
        stage: &'static str,
        /// The classified failure (in the message, not a `source()`).
        error: InvokeError,
    },
    /// The limits asked for fuel but the engine does not meter it.
    #[error("a fuel budget was set but the engine was created without fuel metering (EngineConfig::consume_fuel)")]
    FuelNotEnabled,
}

impl LoadError {
    /// A stable machine code for the error.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::Io { .. } => "io",
            Self::NotWasm { .. } => "not_wasm",
            Self::InvalidModule { .. } => "invalid_module",
            Self::ModuleTooLarge { .. } => "module_too_large",
            Self::FunctionTooLarge { .. } => "function_too_large",
            Self::ForbiddenImport { .. } => "forbidden_import",
            Self::BadExport { .. } => "bad_export",
            Self::AbiMismatch { .. } => "abi_mismatch",
            Self::InitFailed { .. } => "init_failed",
            Self::Sandbox { error, .. } => error.code(),
            Self::FuelNotEnabled => "config",
        }
    }

    /// Which step of loading refused the module: `read`, `validate` (before
    /// any plugin code runs), `instantiate`, `weir_abi_version`,
    /// `weir_init`, `weir_describe`, or `config` (the host's own settings).
    /// With [`code`](Self::code), what `weir exec`, `weir inspect` and a
    /// deploy's `422` report.
    #[must_use]
    pub fn stage(&self) -> &'static str {
        match self {
            Self::Io { .. } => "read",
            Self::NotWasm { .. }
            | Self::InvalidModule { .. }
            | Self::ModuleTooLarge { .. }
            | Self::FunctionTooLarge { .. }
            | Self::ForbiddenImport { .. }
            | Self::BadExport { .. }
            | Self::AbiMismatch { .. } => "validate",
            Self::InitFailed { .. } => "weir_init",
            Self::Sandbox { stage, .. } => stage,
            Self::FuelNotEnabled => "config",
        }
    }
}

/// Why one invocation did not produce an `Ok` outcome. The
/// [`code`](InvokeError::code) is what the DLQ, metrics and `weir exec`
/// report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvokeError {
    /// The guest trapped (panic, `unreachable`, out-of-bounds access, stack
    /// overflow, …).
    #[error("plugin trapped: {message}")]
    Trap {
        /// The trap and, when the plugin logged one, its panic message.
        message: String,
    },
    /// The invocation ran past its wall-clock deadline.
    #[error("plugin exceeded its deadline of {deadline:?}")]
    Timeout {
        /// The deadline.
        deadline: Duration,
    },
    /// The invocation used up its fuel budget.
    #[error("plugin ran out of fuel (budget {budget})")]
    OutOfFuel {
        /// The budget.
        budget: u64,
    },
    /// The guest tried to grow its memory past the cap.
    #[error("plugin hit the memory limit of {limit} bytes")]
    MemoryLimit {
        /// The cap in bytes.
        limit: usize,
    },
    /// The guest's output is unusable: pointer or length out of bounds,
    /// undecodable bytes, or over the output caps.
    #[error("bad output from plugin: {reason}")]
    BadOutput {
        /// What was wrong.
        reason: String,
    },
    /// The handler asked for a retry.
    #[error("handler asked to retry: {reason}")]
    HandlerRetry {
        /// The handler's reason.
        reason: String,
    },
    /// The handler rejected the event.
    #[error("handler rejected the event: {reason}")]
    HandlerReject {
        /// The handler's reason.
        reason: String,
    },
    /// A fresh instance could not be initialised (its `weir_init` failed).
    #[error("plugin init failed: {reason}")]
    InitFailed {
        /// The reason.
        reason: String,
    },
    /// The handler went over a bound of its state (key or value size, keys
    /// per scope, bytes written per invocation). Final: the same event would
    /// go over it again.
    #[error("handler state limit: {reason}")]
    StateLimit {
        /// Which bound, and by how much.
        reason: String,
    },
    /// The handler asked for more timers than it may (operations per
    /// invocation, or the bytes of their events). Final, as `state_limit`.
    #[error("timer limit: {reason}")]
    TimerLimit {
        /// Which bound, and by how much.
        reason: String,
    },
    /// The host could not read the handler's state from the store; the
    /// event is tried again later.
    #[error("handler state unavailable: {reason}")]
    StateUnavailable {
        /// The store's error.
        reason: String,
    },
}

impl InvokeError {
    /// A stable machine code: `trap`, `timeout`, `out_of_fuel`,
    /// `memory_limit`, `bad_output`, `handler_retry`, `handler_reject`,
    /// `init_failed`, `state_limit`, `state_unavailable` or `timer_limit`. (`abi_mismatch`
    /// is refused at load:
    /// [`LoadError::code`].)
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::Trap { .. } => "trap",
            Self::Timeout { .. } => "timeout",
            Self::OutOfFuel { .. } => "out_of_fuel",
            Self::MemoryLimit { .. } => "memory_limit",
            Self::BadOutput { .. } => "bad_output",
            Self::HandlerRetry { .. } => "handler_retry",
            Self::HandlerReject { .. } => "handler_reject",
            Self::InitFailed { .. } => "init_failed",
            Self::StateLimit { .. } => "state_limit",
            Self::StateUnavailable { .. } => "state_unavailable",
            Self::TimerLimit { .. } => "timer_limit",
        }
    }

    /// Whether the failure came from the handler's own decision (retry or
    /// reject) rather than from the sandbox. Only sandbox failures discard the
    /// instance.
    #[must_use]
    pub fn is_handler_decision(&self) -> bool {
        matches!(self, Self::HandlerRetry { .. } | Self::HandlerReject { .. })
    }

    /// The human-readable part without the code.
    #[must_use]
    pub fn message(&self) -> String {
        match self {
            Self::HandlerRetry { reason } | Self::HandlerReject { reason } => reason.clone(),
            other => other.to_string(),
        }
    }
}

/// Why the engine could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// wasmtime refused the configuration.
    #[error("cannot configure the Wasm engine: {reason}")]
    Config {
        /// wasmtime's message.
        reason: String,
    },
    /// The artifact cache directory cannot be created.
    #[error("cannot create the artifact cache directory {path}: {error}")]
    CacheDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error (in the message, not a `source()`).
        error: std::io::Error,
    },
    /// The artifact cache directory (or its key) is not this user's own, or
    /// others may write it: artifacts in it run as native code, so it is
    /// refused.
    #[error("refusing the artifact cache {path}: {reason}")]
    CacheDirInsecure {
        /// The directory or key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The epoch ticker thread could not be started.
    #[error("cannot start the epoch ticker thread: {0}")]
    Ticker(std::io::Error),
}

impl EngineError {
    /// A stable machine code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::Config { .. } => "engine_config",
            Self::CacheDir { .. } => "cache_dir",
            Self::CacheDirInsecure { .. } => "cache_dir_insecure",
            Self::Ticker(_) => "ticker",
        }
    }
}
