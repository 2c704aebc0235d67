//! Weir's runtime: a durable event log on an embedded redb store, fan-out
//! pipelines whose handlers are sandboxed WebAssembly plugins, and the host
//! that enforces idempotency, retries and dead-lettering around every
//! invocation. The `weir` binary (feature `cli`, on by default) is a thin
//! shell over this library.
//!
//! ```text
//!  producers ─► ingest (HTTP, CLI, Runtime::publish) ─► store writer ─► log (redb)
//!                                                                  │
//!                       one worker thread per subscription ◄───────┘ (own cursor)
//!                       dedupe → invoke (Wasm) → validate → stage
//!                       outcomes + emits + idempotency record + cursor ─► one commit
//! ```
//!
//! # Core concepts
//!
//! - [`Runtime`]: the running system (store, engine, one worker per
//!   subscription); start it from a [`Config`], publish, read
//!   status, deploy and roll back plugins, redrive the DLQ.
//! - [`Store`]: the one redb file; a single writer thread commits
//!   publishes and outcomes in groups (durable before acknowledged).
//! - [`Invoke`]: what a subscription calls per event; a Wasm [`Handler`] is
//!   one implementation, answering a neutral [`Attempt`].
//! - [`Engine`]: compiles modules (with an on-disk artifact cache), ticks the
//!   epoch clock that enforces deadlines.
//! - [`Plugin`]: a compiled module that passed validation — only host
//!   imports, the ABI v1 exports, the right ABI version.
//! - [`Handler`]: a plugin instantiated with its [`Limits`] and
//!   configuration; [`Handler::invoke`] runs one delivery and returns an
//!   [`Invocation`] whose failures carry stable codes ([`InvokeError::code`]).
//! - [`JsonEvent`]: the JSON form of events used by the CLI and HTTP API;
//!   [`models`]: the HTTP API's bodies, shared by server and CLI.
//! - [`CountersSnapshot`], [`SubscriptionStatus`]: what a subscription did.
//!
//! docs/architecture.md has the source layout and the thread model.
//!
//! # Example
//!
//! ```no_run
//! use weir_runtime::{Engine, EngineConfig, InstanceMode, Limits};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = Engine::new(EngineConfig::default())?;
//! let plugin = engine.load_file("order_validator.wasm".as_ref())?;
//! let mut handler = plugin.handler(Limits::default(), Vec::new(), InstanceMode::Reuse)?;
//! let event = weir_runtime::JsonEvent::from_json_line(r#"{"topic":"orders.order.created","payload":{}}"#)?
//!     .into_event(&weir_runtime::IdGenerator::new(), "weir:example")?;
//! let invocation = handler.invoke(weir_abi::DeliveryRef { event: &event, subscription: "demo/validator", attempt: 1 });
//! match invocation.result {
//!     Ok(emits) => println!("{} events emitted", emits.len()),
//!     Err(e) => println!("{}: {}", e.code(), e.message()),
//! }
//! # Ok(())
//! # }
//! ```

// Unsafe code is refused crate-wide; the two exceptions (loading a
// precompiled artifact, one prctl) carry a local allow and a SAFETY note.
#![deny(unsafe_code)]

mod aggregate;
mod clock;
mod cluster;
pub mod config;
mod consumer;
mod delivery;
mod engine;
mod envelope;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod hmac;
mod http;
mod ids;
mod ingest;
mod metrics;
mod names;
mod process;
mod runtime;
pub mod saga;
mod schema;
mod sink;
mod source;
mod store;
mod topic;
mod upcast;

// The public API, curated: what an embedding program, the `weir` binary and
// the tests may name. Everything else is an implementation detail that can
// move between modules without breaking anyone. `config` stays a module: it
// is the schema of `weir.toml`, one type per section.
pub use cluster::{ClusterStatus, NodeStatus, PartitionStatus};
pub use config::Config;
pub use consumer::ConsumerError;
pub use delivery::{Attempt, CountersSnapshot, Failure, HOST_KEY_HEADER, Invoke, LogLine, TimerOp, VERSION_HEADER};
pub use engine::AggregateCall;
pub use engine::{
    DEFAULT_DEADLINE, DEFAULT_EPOCH_TICK, DEFAULT_MAX_EMITS, DEFAULT_MAX_LOG_BYTES, DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_MAX_WASM_STACK, DEFAULT_MEMORY_BYTES, DEFAULT_POOL_INSTANCES, Engine, EngineConfig, ExportInfo, Handler,
    ImportInfo, InstanceMode, Invocation, Limits, LimitsBuilder, Plugin, PluginInfo, PluginLog,
    inspect_imports_exports,
};
pub use engine::{
    DEFAULT_MAX_FUNCTION_BYTES, DEFAULT_MAX_HEADER_BYTES_PER_EMIT, DEFAULT_MAX_HEADERS_PER_EMIT, DEFAULT_MAX_LOG_LINES,
    DEFAULT_MAX_MODULE_BYTES, LOG_LINE_OVERHEAD, MAX_DESCRIPTION_BYTES, MAX_NAME_BYTES, MAX_REASON_BYTES,
    POOL_HEADROOM, POOL_INSTANCES_PER_SUBSCRIPTION,
};
pub use engine::{DEFAULT_MAX_PENDING_TIMERS, DEFAULT_MAX_TIMERS_PER_INVOCATION};
pub use engine::{
    DEFAULT_MAX_STATE_KEYS_PER_SCOPE, DEFAULT_MAX_STATE_VALUE_BYTES, DEFAULT_MAX_STATE_WRITE_BYTES,
    MAX_STATE_KEY_BYTES, MemoryState, MemoryWrite, StateAccess, StateEntry, StateError, StateScope,
};
pub use engine::{MAX_TIMER_KEY_BYTES, TimerCall};
pub use envelope::{EnvelopeError, JsonEvent, format_time, now_nanos};
pub use error::{EngineError, InvokeError, LoadError};
/// The HTTP API's request and response bodies, shared by the server and the
/// CLI client.
pub use http::models;
pub use http::{is_loopback, router, serve};
pub use ids::IdGenerator;
pub use ingest::{
    Ingest, IngestError, MAX_CONTENT_TYPE_BYTES, MAX_EVENTS_PER_REQUEST, MAX_HEADER_NAME_BYTES, MAX_HEADER_VALUE_BYTES,
    MAX_HEADERS, MAX_HEADERS_BYTES, MAX_IDEMPOTENCY_KEY_BYTES, MAX_KEY_BYTES, MAX_SOURCE_BYTES, RESERVED_HEADER_PREFIX,
    RESERVED_TOPIC_DOMAINS, cloudevent_key,
};
pub use names::{BadSubscriptionName, ContentHash, SubscriptionName};
pub use process::tune as tune_process;
pub use runtime::TIMERS_PAGE_MAX;
pub use runtime::{
    DRY_RUN_DEFAULT_EVENTS, DRY_RUN_MAX_EVENTS, DryRunDifference, DryRunError, DryRunReport, OutputSummary,
};
pub use runtime::{
    DeployError, DeployReport, Expect, Readiness, RedriveReport, Resources, Runtime, RuntimeError, SubscriptionStatus,
    TestCase, parse_test_cases,
};
pub use runtime::{HeldBackInfo, STATE_PAGE_MAX, ScopePage, StatePage, SubscriptionEntry, SubscriptionError};
pub use runtime::{
    LINEAGE_MAX_CAUSED, LINEAGE_MAX_DEPTH, LOG_MAX_ANSWER_BYTES, LOG_MAX_SCANNED, LOG_MAX_SCANNED_BYTES,
    LOG_MAX_TOPIC_PATTERNS, Lineage, LogFilter, LogPage, SubscriptionLineage,
};
pub use runtime::{ReplayError, ReplayInfo};
pub use runtime::{SAGA_PAGE_MAX, SAGA_SCAN_MAX, SagaActionReport, SagaError, SagaPage};
pub use runtime::{VIEW_MAX_BYTES, VIEW_MAX_ENTRIES, VIEW_PAGE_MAX, ViewAnswer, ViewEntry, ViewError};
pub use schema::{
    Compatibility, CompileError as SchemaCompileError, MAX_COMPAT_DEPTH, MAX_COMPAT_STEPS, MAX_SCHEMA_BYTES,
    MAX_SCHEMA_DEPTH, MAX_SCHEMA_NODES, MAX_VALIDATION_DEPTH, MAX_VALIDATION_STEPS, OTHER_PATTERN_LABEL, Schema,
    SchemaError, SchemaVersion, Schemas, TopicSchemas, Violation as SchemaViolation,
};
pub use source::SourceStatus;
pub use store::PendingTimer;
pub use store::SourcePosition;
pub use store::{AppendOutcome, ExpectedRevision, StreamPublished};
pub use store::{
    DlqEntry, DlqFilter, DlqPage, FORMAT_VERSION as STORE_FORMAT_VERSION, PUBLISH_OVERHEAD, ParkedEntry, Published,
    Store, StoreError, StoreOptions, VersionRecord,
};
pub use store::{
    HOLDINGS_COUNT_CAP, HeldBack, Holdings, Keep, RetentionPolicy, RetentionReader, RetentionRule, StartPosition,
};
pub use topic::{Pattern as TopicPattern, TopicError, validate as validate_topic};
pub use upcast::{UpcasterError, check_accepts};
