//! Weir's integration tests: one binary, one module per area.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod abi_encoding;
mod artifact_cache;
mod c_plugin;
mod commands;
mod cli;
mod consumers;
mod correctness_cli;
mod correctness_ingest;
mod crash;
mod dashboard;
mod delivery;
mod example_plugins;
mod exec_truth;
mod faults;
mod growth;
mod hostile_plugins;
mod hot_swap;
mod http_errors;
mod http_hardening;
mod limits;
mod loading;
mod metrics;
mod plugin_authoring;
mod raw_abi;
mod read_caps;
mod read_log;
mod retention;
mod server;
mod sinks;
mod start_positions;
mod state;
mod store_damage;
mod store_format;
mod streams;
mod tutorial;
