//! Weir's runtime: the sandboxed Wasm engine that runs handler plugins, and
//! (as the runtime grows) the log, pipelines and delivery around it.
//!
//! # Core concepts
//!
//! - [`Engine`]: compiles modules (with an on-disk artifact cache), ticks the
//!   epoch clock that enforces deadlines.
//! - [`Plugin`]: a compiled module that passed validation — only host
//!   imports, the ABI v1 exports, the right ABI version.
//! - [`Handler`]: a plugin instantiated with its [`Limits`] and
//!   configuration; [`Handler::invoke`] runs one delivery and returns an
//!   [`Invocation`] whose failures carry stable codes ([`InvokeError::code`]).
//! - [`envelope`]: the JSON form of events used by the CLI and HTTP API.
//!
//! # Example
//!
//! ```no_run
//! use weir_runtime::{Engine, EngineConfig, InstanceMode, Limits};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = Engine::new(EngineConfig::default())?;
//! let plugin = engine.load_file("order_validator.wasm".as_ref())?;
//! let mut handler = plugin.handler(Limits::default(), Vec::new(), InstanceMode::Reuse)?;
//! let event = weir_runtime::envelope::JsonEvent::from_json_line(r#"{"topic":"orders.order.created","payload":{}}"#)?
//!     .into_event(&weir_runtime::IdGenerator::new(), "weir:example")?;
//! let invocation = handler.invoke(weir_abi::DeliveryRef { event: &event, subscription: "demo/validator", attempt: 1 });
//! match invocation.result {
//!     Ok(emits) => println!("{} events emitted", emits.len()),
//!     Err(e) => println!("{}: {}", e.code(), e.message()),
//! }
//! # Ok(())
//! # }
//! ```

pub mod config;
mod delivery;
mod engine;
pub mod envelope;
mod error;
pub mod http;
mod ids;
pub mod ingest;
pub mod metrics;
pub mod process;
mod runtime;
pub mod store;
pub mod topic;

// Temporary: `runtime/` still names `crate::subscription::…` until its move
// settles; switch those paths to `crate::delivery::…`, then drop this line.
pub(crate) use delivery as subscription;

pub use engine::{
    DEFAULT_DEADLINE, DEFAULT_EPOCH_TICK, DEFAULT_MAX_EMITS, DEFAULT_MAX_LOG_BYTES, DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_MAX_WASM_STACK, DEFAULT_MEMORY_BYTES, DEFAULT_POOL_INSTANCES, Engine, EngineConfig, ExportInfo, Handler,
    ImportInfo, InstanceMode, Invocation, Limits, LimitsBuilder, Plugin, PluginInfo, PluginLog,
    inspect_imports_exports,
};
pub use error::{EngineError, InvokeError, LoadError};
pub use ids::IdGenerator;
pub use runtime::{
    DeployError, DeployReport, Expect, Readiness, RedriveReport, Resources, Runtime, RuntimeError, SubscriptionStatus,
    TestCase, parse_test_cases,
};
pub use delivery::{Attempt, Failure, Invoke, LogLine, SubscriptionCounters, VERSION_HEADER};
