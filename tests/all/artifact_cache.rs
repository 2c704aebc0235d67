//! The compiled-artifact cache (issue #12 item 4): a loaded artifact runs as
//! native code, so nothing in the cache directory is trusted on its own. A
//! tampered, swapped or symlinked artifact is refused and recompiled, never
//! loaded; the directory is private; only validated modules are cached; and
//! artifacts nobody uses are evicted.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use weir_runtime::{Engine, EngineConfig};
use weir_tests::{plugins, sha256};

fn cached_engine(dir: &Path) -> Engine {
    Engine::new(EngineConfig { cache_dir: Some(dir.to_owned()), ..EngineConfig::default() }).unwrap()
}

/// The one artifact file of the module at `plugin` in `dir`.
fn artifact(dir: &Path, plugin: &str) -> PathBuf {
    let sha = sha256(&std::fs::read(plugin).unwrap());
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(&sha))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found.into_iter().next().unwrap()
}

/// Load `plugin` with a fresh engine on the cache in `dir`: whether it came
/// from the cache.
fn from_cache(dir: &Path, plugin: &str) -> bool {
    cached_engine(dir).load_file(plugin.as_ref()).unwrap().info().from_cache
}

#[test]
fn the_cache_is_used_and_the_directory_is_private() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("artifacts");
    assert!(!from_cache(&dir, plugins::FILTER));
    assert!(from_cache(&dir, plugins::FILTER));
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
    let key = root.path().join("artifacts.key");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600, "the key lives beside the cache");
    let file = artifact(&dir, plugins::FILTER);
    assert_eq!(std::fs::metadata(file).unwrap().permissions().mode() & 0o777, 0o600);
}

#[test]
fn a_tampered_artifact_is_refused_and_recompiled() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("artifacts");
    assert!(!from_cache(&dir, plugins::FILTER));
    let path = artifact(&dir, plugins::FILTER);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    assert!(!from_cache(&dir, plugins::FILTER), "a tampered artifact was loaded");
    assert_ne!(std::fs::read(&path).unwrap(), bytes, "it was replaced by a fresh compile");
    assert!(from_cache(&dir, plugins::FILTER));
}

#[test]
fn another_modules_artifact_under_this_name_is_refused() {
    // A valid artifact of another module, renamed: wasmtime alone would load
    // it and run the wrong code.
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("artifacts");
    assert!(!from_cache(&dir, plugins::FILTER));
    assert!(!from_cache(&dir, plugins::AUDIT_LOGGER));
    let filter = artifact(&dir, plugins::FILTER);
    std::fs::copy(artifact(&dir, plugins::AUDIT_LOGGER), &filter).unwrap();
    let plugin = cached_engine(&dir).load_file(plugins::FILTER.as_ref()).unwrap();
    assert!(!plugin.info().from_cache, "the audit logger's code was loaded as the filter");
    assert_eq!(plugin.info().name(), "filter");
}

#[test]
fn a_symlinked_artifact_is_refused_never_followed() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("artifacts");
    assert!(!from_cache(&dir, plugins::FILTER));
    let path = artifact(&dir, plugins::FILTER);
    // The link points at a genuine artifact: only the link is wrong.
    let elsewhere = root.path().join("planted.cwasm");
    std::fs::rename(&path, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
    assert!(!from_cache(&dir, plugins::FILTER), "the symlink was followed");
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_file(), "the link was replaced by a regular file");
    assert!(elsewhere.is_file(), "the link's target is left alone");
    assert!(from_cache(&dir, plugins::FILTER));
}

#[test]
fn a_cache_directory_others_may_write_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("artifacts");
    assert!(!from_cache(&dir, plugins::FILTER));
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = Engine::new(EngineConfig { cache_dir: Some(dir.clone()), ..EngineConfig::default() }).unwrap_err();
    assert_eq!(err.code(), "cache_dir_insecure", "{err}");
    // A key others may read is refused too.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(root.path().join("artifacts.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = Engine::new(EngineConfig { cache_dir: Some(dir), ..EngineConfig::default() }).unwrap_err();
    assert_eq!(err.code(), "cache_dir_insecure", "{err}");
}

#[test]
fn only_validated_modules_are_cached() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("artifacts");
    let engine = cached_engine(&dir);
    assert_eq!(engine.load_file(plugins::WASI_IMPORT.as_ref()).unwrap_err().code(), "forbidden_import");
    assert_eq!(engine.load_file(plugins::WRONG_ABI.as_ref()).unwrap_err().code(), "abi_mismatch");
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(files.is_empty(), "refused modules were cached: {files:?}");
}

#[test]
fn artifacts_nobody_uses_are_evicted() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("artifacts");
    let engine = cached_engine(&dir);
    let filter = engine.load_file(plugins::FILTER.as_ref()).unwrap();
    engine.load_file(plugins::AUDIT_LOGGER.as_ref()).unwrap();
    // An artifact of another engine configuration, and a crash's leftover.
    std::fs::write(dir.join(format!("{}-0000000000000000.cwasm", filter.info().sha256)), b"old").unwrap();
    assert_eq!(engine.evict_artifacts([filter.info().sha256.as_str()]).unwrap(), 2);
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(left, vec![artifact(&dir, plugins::FILTER)]);
    assert_eq!(engine.evict_artifacts_unused_for(std::time::Duration::from_secs(3600)).unwrap(), 0);
    assert_eq!(engine.evict_artifacts_unused_for(std::time::Duration::ZERO).unwrap(), 1);
    assert!(std::fs::read_dir(&dir).unwrap().next().is_none());
}

#[test]
fn the_cli_warns_and_runs_without_an_insecure_cache() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("artifacts");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = weir_tests::weir(&["inspect", plugins::FILTER], &dir);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("continuing without the artifact cache"), "{stderr}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "nothing is written to a directory others may write");
}

#[test]
fn the_runtime_evicts_artifacts_of_modules_no_handler_uses_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let artifacts = dir.path().join("data").join("artifacts");
    let both = "[[pipelines]]\nname = \"p\"\ntopics = [\"orders.order.created\"]\n[[pipelines.handlers]]\nname = \"f\"\nplugin = \"{FILTER}\"\n[[pipelines.handlers]]\nname = \"a\"\nplugin = \"{AUDIT_LOGGER}\"\n";
    let rt = weir_runtime::Runtime::start(&weir_tests::config(dir.path(), both)).unwrap();
    rt.shutdown().unwrap();
    assert!(artifact(&artifacts, plugins::FILTER).is_file());
    assert!(artifact(&artifacts, plugins::AUDIT_LOGGER).is_file());

    // The audit handler leaves the configuration: its artifact goes at the
    // next start, the filter's stays.
    let one = "[[pipelines]]\nname = \"p\"\ntopics = [\"orders.order.created\"]\n[[pipelines.handlers]]\nname = \"f\"\nplugin = \"{FILTER}\"\n";
    let rt = weir_runtime::Runtime::start(&weir_tests::config(dir.path(), one)).unwrap();
    rt.shutdown().unwrap();
    assert!(artifact(&artifacts, plugins::FILTER).is_file());
    let audit = sha256(&std::fs::read(plugins::AUDIT_LOGGER).unwrap());
    let left: Vec<String> =
        std::fs::read_dir(&artifacts).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(!left[0].starts_with(&audit), "an artifact no handler uses is evicted: {left:?}");
}
