//! Faults inside the host: a full disk, a worker that dies, a record that
//! cannot be decoded; and the files the runtime creates.

use weir_runtime::Runtime;
use weir_tests::config;

const ORDERS: &str = weir_tests::ORDERS;

/// The data directory and the store file are the owner's alone: they hold
/// every event and the plugin registry.
#[cfg(unix)]
#[test]
fn the_data_directory_is_created_0700_and_the_store_file_0600() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), ORDERS);
    // A parent that does not exist yet is created the same way.
    let mut cfg = cfg;
    cfg.data_dir = dir.path().join("nested").join("data");
    let rt = Runtime::start(&cfg).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&cfg.data_dir), 0o700, "data directory");
    assert_eq!(mode(&dir.path().join("nested")), 0o700, "its parent, created with it");
    assert_eq!(mode(&cfg.data_dir.join("weir.redb")), 0o600, "store file");
    rt.shutdown().unwrap();
}
