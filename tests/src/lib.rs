//! Shared helpers of Weir's integration tests: the plugins compiled to Wasm
//! by the build script, the real `weir` binary, and small event builders.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;
use std::process::{Command, Output};

use weir_abi::{DeliveryRef, Event};
use weir_runtime::envelope::JsonEvent;
use weir_runtime::{Engine, EngineConfig, Handler, IdGenerator, InstanceMode, Invocation, Limits, Plugin};

/// Paths of the plugins compiled by `build.rs`.
pub mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

/// The `weir` binary next to the test executable (`target/<profile>/weir`).
/// `cargo test --workspace` builds it, because `weir-runtime` has an
/// integration test of its own.
pub fn weir_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps/<test>");
    let bin = profile_dir.join(format!("weir{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} is missing: run the tests with `cargo test --workspace` (or `cargo build -p weir-runtime` first)",
        bin.display()
    );
    bin
}

/// Run `weir` with `args`, with its artifact cache in `cache_dir`.
pub fn weir(args: &[&str], cache_dir: &std::path::Path) -> Output {
    Command::new(weir_bin()).args(args).env("WEIR_CACHE_DIR", cache_dir).output().expect("run weir")
}

/// A runtime configuration from TOML text in which `{NAME}` stands for the
/// path of plugin `NAME` (e.g. `{ORDER_VALIDATOR}`), with its data directory
/// in `dir`.
pub fn config(dir: &std::path::Path, toml: &str) -> weir_runtime::config::Config {
    let mut text = format!("data_dir = {:?}\n", dir.join("data").display().to_string());
    text.push_str(toml);
    for (name, path) in plugins::ALL {
        text = text.replace(&format!("{{{name}}}"), path);
    }
    let file = dir.join("weir.toml");
    std::fs::write(&file, &text).unwrap();
    weir_runtime::config::Config::load(&file).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// A default engine (no artifact cache).
pub fn engine() -> Engine {
    Engine::new(EngineConfig::default()).unwrap()
}

/// Load a plugin by path.
pub fn load(engine: &Engine, path: &str) -> Plugin {
    engine.load_file(path.as_ref()).unwrap_or_else(|e| panic!("loading {path}: {e}"))
}

/// A reusing handler with `limits` and no configuration.
pub fn handler(engine: &Engine, path: &str, limits: Limits) -> Handler {
    load(engine, path).handler(limits, Vec::new(), InstanceMode::Reuse).unwrap()
}

/// An event from its JSON form.
pub fn event(json: &str) -> Event {
    JsonEvent::from_json_line(json).unwrap().into_event(&IdGenerator::new(), "weir:test").unwrap()
}

/// An event with this topic and key and an empty JSON object payload.
pub fn keyed(topic: &str, key: &str) -> Event {
    event(&format!(r#"{{"topic":"{topic}","key":"{key}","payload":{{}}}}"#))
}

/// Invoke `handler` on `event` as attempt 1 of subscription `test/sub`.
pub fn invoke(handler: &mut Handler, event: &Event) -> Invocation {
    handler.invoke(DeliveryRef { event, subscription: "test/sub", attempt: 1 })
}

/// The failure code of an invocation, or `ok`.
pub fn code(invocation: &Invocation) -> &'static str {
    match &invocation.result {
        Ok(_) => "ok",
        Err(e) => e.code(),
    }
}
