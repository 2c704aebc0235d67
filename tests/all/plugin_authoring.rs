//! The road of a plugin author, with the real `weir` binary: `weir new`
//! makes a crate outside this workspace whose native tests pass, `weir
//! build` turns it into an accepted module, `weir exec` runs it on the
//! crate's own sample events.

use std::path::{Path, PathBuf};
use std::process::Command;

use weir_tests::weir_bin;

/// The generated crates build into one target directory beside the
/// workspace's, so a second run of this test compiles only the crate.
fn plugin_target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> → target/new-plugin
    exe.ancestors().nth(3).unwrap().join("new-plugin")
}

fn weir_in(dir: &Path, args: &[&str], cache: &Path) -> std::process::Output {
    Command::new(weir_bin())
        .args(args)
        .current_dir(dir)
        .env("WEIR_CACHE_DIR", cache)
        .env("CARGO_TARGET_DIR", plugin_target_dir())
        .output()
        .unwrap()
}

fn ok(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn new_crate_tests_builds_and_runs_its_samples() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let out = weir_in(dir.path(), &["new", "first-handler"], &cache);
    assert!(ok(&out).contains("weir build"), "the next commands are printed");
    let krate = dir.path().join("first-handler");
    for file in ["Cargo.toml", "src/lib.rs", "samples.jsonl", "README.md", ".gitignore"] {
        assert!(krate.join(file).is_file(), "{file} is scaffolded");
    }

    // Its native tests pass, outside this workspace.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let test = Command::new(&cargo)
        .args(["test", "--quiet"])
        .current_dir(&krate)
        .env("CARGO_TARGET_DIR", plugin_target_dir())
        .output()
        .unwrap();
    let stdout = ok(&test);
    assert!(stdout.contains("2 passed"), "the scaffolded tests ran: {stdout}");

    // `weir build` makes the module and inspects it: accepted.
    let out = weir_in(&krate, &["build"], &cache);
    let stdout = ok(&out);
    assert!(stdout.contains("accepted:     yes"), "{stdout}");
    assert!(stdout.contains("orders.order.created"), "the declared topic is shown: {stdout}");
    let wasm = plugin_target_dir().join("wasm32-unknown-unknown/plugin/first_handler.wasm");
    assert!(wasm.is_file());

    // `weir exec` on the samples: two accepted, one rejected with its reason.
    let out = weir_in(&krate, &["exec", "--plugin", wasm.to_str().unwrap(), "--input", "samples.jsonl"], &cache);
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["emits"][0]["topic"], "orders.order.accepted");
    assert_eq!(lines[0]["emits"][0]["payload"]["total_cents"], 900);
    assert_eq!(lines[1]["emits"][0]["payload"]["total_cents"], 1650);
    assert_eq!(lines[2]["code"], "handler_reject");
    assert_eq!(lines[2]["reason"], "order o-3 has no items");
}

#[test]
fn new_refuses_a_bad_name_and_an_existing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let out = weir_in(dir.path(), &["new", "Bad Name"], &cache);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a plugin name"));

    std::fs::create_dir(dir.path().join("taken")).unwrap();
    std::fs::write(dir.path().join("taken/keep.txt"), "mine").unwrap();
    let out = weir_in(dir.path(), &["new", "taken"], &cache);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    assert_eq!(std::fs::read_to_string(dir.path().join("taken/keep.txt")).unwrap(), "mine", "nothing overwritten");
}

#[test]
fn build_outside_a_crate_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = weir_in(dir.path(), &["build"], &dir.path().join("cache"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("run `weir build` in a plugin crate"));
}
