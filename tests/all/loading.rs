//! Module validation at load, and the compiled-artifact cache.

use weir_runtime::{Engine, EngineConfig, InstanceMode, Limits, LoadError};
use weir_tests::{engine, load, plugins};

#[test]
fn a_wasi_import_is_refused_with_the_import_named() {
    let err = engine().load_file(plugins::WASI_IMPORT.as_ref()).unwrap_err();
    assert_eq!(err.code(), "forbidden_import");
    assert!(err.to_string().contains("wasi_snapshot_preview1::fd_write"), "{err}");
}

#[test]
fn a_wrong_abi_version_is_refused() {
    let err = engine().load_file(plugins::WRONG_ABI.as_ref()).unwrap_err();
    assert!(matches!(err, LoadError::AbiMismatch { found: 2, expected: 1 }), "{err}");
}

#[test]
fn bytes_that_are_not_wasm_are_refused() {
    let engine = engine();
    assert_eq!(engine.load(b"").unwrap_err().code(), "not_wasm");
    assert_eq!(engine.load(b"#!/bin/sh\necho hi\n").unwrap_err().code(), "not_wasm");
    // A component (layer 1) is not a plugin.
    assert_eq!(engine.load(b"\0asm\x0d\0\x01\0").unwrap_err().code(), "not_wasm");
    // Right magic, broken body.
    assert_eq!(engine.load(b"\0asm\x01\0\0\0\x01\xff").unwrap_err().code(), "invalid_module");
    let truncated = std::fs::read(plugins::ORDER_VALIDATOR).unwrap();
    assert_eq!(engine.load(&truncated[..truncated.len() / 2]).unwrap_err().code(), "invalid_module");
}

/// Build a tiny module by hand: `imports`, then the given exports.
fn module(imports: &[u8], body: &[u8]) -> Vec<u8> {
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    m.extend_from_slice(imports);
    m.extend_from_slice(body);
    m
}

#[test]
fn a_module_without_the_required_exports_is_refused_by_name() {
    // Empty module: no memory.
    let err = engine().load(&module(&[], &[])).unwrap_err();
    assert_eq!(err.code(), "bad_export");
    assert!(err.to_string().contains("`memory`"), "{err}");
    // The adversarial bad-output module has them all; the panicker too.
    assert!(engine().load_file(plugins::BAD_OUTPUT.as_ref()).is_ok());
}

#[test]
fn descriptions_are_read_at_load() {
    let engine = engine();
    let plugin = load(&engine, plugins::ORDER_VALIDATOR);
    let info = plugin.info();
    let description = info.description.as_ref().expect("the SDK generates weir_describe");
    assert_eq!(description.name, "order-validator");
    assert_eq!(description.topics, vec!["orders.order.created"]);
    assert_eq!(description.schema_versions, vec![1]);
    assert!(info.has_init);
    assert_eq!(info.abi_version, 1);
    assert_eq!(info.sha256.len(), 64);
    assert!(info.imports.iter().all(|i| i.module == "weir"));
}

#[test]
fn a_bad_plugin_config_fails_at_load_with_the_plugins_reason() {
    let engine = engine();
    let plugin = load(&engine, plugins::ORDER_VALIDATOR);
    let err = plugin.handler(Limits::default(), br#"{"currencies": []}"#.to_vec(), InstanceMode::Reuse).unwrap_err();
    assert_eq!(err.code(), "init_failed");
    assert!(err.to_string().contains("at least one currency"), "{err}");
    let err = plugin.handler(Limits::default(), b"not json".to_vec(), InstanceMode::Reuse).unwrap_err();
    assert!(err.to_string().contains("invalid plugin config"), "{err}");
}

#[test]
fn compiled_artifacts_are_cached_across_engines_and_a_corrupt_one_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig { cache_dir: Some(dir.path().to_owned()), ..EngineConfig::default() };

    let first = Engine::new(config.clone()).unwrap();
    assert!(!load(&first, plugins::ENRICHER).info().from_cache);
    drop(first);

    // A new engine (as after a restart) finds the artifact.
    let second = Engine::new(config.clone()).unwrap();
    let plugin = load(&second, plugins::ENRICHER);
    assert!(plugin.info().from_cache);
    let artifacts: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(artifacts.len(), 1);
    assert!(artifacts[0].to_string_lossy().contains(&plugin.info().sha256));

    // Corrupt it: the next load recompiles and still works.
    std::fs::write(&artifacts[0], b"garbage").unwrap();
    let third = Engine::new(config).unwrap();
    let plugin = load(&third, plugins::ENRICHER);
    assert!(!plugin.info().from_cache);
    assert!(plugin.handler(Limits::default(), Vec::new(), InstanceMode::Reuse).is_ok());
    assert!(std::fs::metadata(&artifacts[0]).unwrap().len() > 1_000, "the artifact was rewritten");
}
