//! Compiles every plugin crate to Wasm (profile `plugin`, target
//! wasm32-unknown-unknown) into `target/wasm-plugins`, and writes their paths
//! as constants for the tests — the way wasmtime's test-programs artifacts
//! are built. Tests never depend on prebuilt `.wasm` files.
//!
//! The C plugins (`plugins/c`, on `plugin-sdk/c/weir.h`) are compiled with
//! clang into `target/wasm-plugins/c` when clang can build for wasm32 (the
//! Debian packages `clang` and `lld`). Without it the build still succeeds:
//! their constants then carry the reason, and the tests that need them fail
//! with it.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// (package, constant name). Keep in step with the plugin crates.
const PLUGINS: &[(&str, &str)] = &[
    ("order-validator", "ORDER_VALIDATOR"),
    ("enricher", "ENRICHER"),
    ("filter", "FILTER"),
    ("audit-logger", "AUDIT_LOGGER"),
    ("counter", "COUNTER"),
    ("reminder", "REMINDER"),
    ("saga-service", "SAGA_SERVICE"),
    ("bank-account", "BANK_ACCOUNT"),
    ("balances", "BALANCES"),
    ("statements", "STATEMENTS"),
    ("faulty-aggregate", "FAULTY_AGGREGATE"),
    ("state-hog", "STATE_HOG"),
    ("raw-abi", "RAW_ABI"),
    ("looper", "LOOPER"),
    ("memory-hog", "MEMORY_HOG"),
    ("panicker", "PANICKER"),
    ("oversized-output", "OVERSIZED_OUTPUT"),
    ("bad-output", "BAD_OUTPUT"),
    ("wrong-abi", "WRONG_ABI"),
    ("wasi-import", "WASI_IMPORT"),
    ("flaky", "FLAKY"),
    ("duplicator", "DUPLICATOR"),
    ("versioned-v1", "VERSIONED_V1"),
    ("versioned-v2", "VERSIONED_V2"),
    ("log-flood", "LOG_FLOOD"),
    ("header-bomb", "HEADER_BOMB"),
    ("output-flood", "OUTPUT_FLOOD"),
    ("huge-reason", "HUGE_REASON"),
    ("orders-upcaster", "ORDERS_UPCASTER"),
    ("orders-v2", "ORDERS_V2"),
    ("orders-splitter", "ORDERS_SPLITTER"),
    ("orders-v3", "ORDERS_V3"),
    ("broken-upcaster", "BROKEN_UPCASTER"),
    ("orders-upcaster-broken", "ORDERS_UPCASTER_BROKEN"),
    ("bench-upcaster", "BENCH_UPCASTER"),
    ("bench-filter-v2", "BENCH_FILTER_V2"),
];

/// (source file in `plugins/c` without `.c`, constant name).
const C_PLUGINS: &[(&str, &str)] = &[("order_validator", "C_ORDER_VALIDATOR"), ("decode_probe", "C_DECODE_PROBE")];

/// The clang command line of docs/abi.md section 12, before `-I`, `-o` and
/// the source.
const CLANG_FLAGS: &[&str] = &[
    "--target=wasm32-unknown-unknown",
    "-std=c11",
    "-O2",
    "-ffreestanding",
    "-nostdlib",
    "-Wl,--no-entry",
    "-Wl,--stack-first",
    "-Wl,-z,stack-size=1048576",
];

/// Run clang with [`CLANG_FLAGS`] on `source`, into `output`. Warnings
/// (`-Wall -Wextra`) become cargo warnings: not errors, so that another
/// clang's new warning cannot break the build.
fn clang(clang: &str, root: &Path, source: &Path, output: &Path) -> Result<(), String> {
    let out = Command::new(clang)
        .args(CLANG_FLAGS)
        .args(["-Wall", "-Wextra"])
        .arg("-I")
        .arg(root.join("plugin-sdk/c"))
        .arg("-o")
        .arg(output)
        .arg(source)
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!("`{clang}` was not found"),
            _ => format!("cannot run `{clang}`: {e}"),
        })?;
    if out.status.success() {
        for line in String::from_utf8_lossy(&out.stderr).lines().filter(|l| l.contains("warning")) {
            println!("cargo:warning={line}");
        }
        Ok(())
    } else {
        Err(format!("`{clang}` failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Compile the C plugins, or say why not; appends their constants to `out`.
fn build_c_plugins(root: &Path, target_dir: &Path, out: &mut String) {
    println!("cargo:rerun-if-changed={}", root.join("plugin-sdk/c").display());
    println!("cargo:rerun-if-changed={}", root.join("plugins/c").display());
    println!("cargo:rerun-if-env-changed=CLANG");
    let compiler = env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let dir = target_dir.join("c");
    std::fs::create_dir_all(&dir).expect("cannot create target/wasm-plugins/c");

    // First a trivial plugin: clang missing, or without its wasm32 target or
    // wasm-ld, means no C plugins (and failing tests), not a failed build.
    let probe = dir.join("toolchain_probe.c");
    std::fs::write(&probe, "__attribute__((export_name(\"probe\"))) int probe(void) { return 1; }\n")
        .expect("cannot write the toolchain probe");
    let toolchain = clang(&compiler, root, &probe, &dir.join("toolchain_probe.wasm"));
    if let Err(why) = &toolchain {
        println!("cargo:warning=the C plugins were not built, their tests (c_plugin::*) will fail: {why}");
    }

    for (name, constant) in C_PLUGINS {
        let built: Result<String, String> = match &toolchain {
            Ok(()) => {
                let wasm = dir.join(format!("{name}.wasm"));
                let source = root.join("plugins/c").join(format!("{name}.c"));
                // The toolchain works, so a failure here is a bug in the C code:
                // fail the build loudly.
                if let Err(why) = clang(&compiler, root, &source, &wasm) {
                    panic!("compiling {} failed: {why}", source.display());
                }
                Ok(wasm.display().to_string())
            }
            Err(why) => Err(format!(
                "{why} when tests/build.rs ran. Install clang and lld (Debian packages clang, lld), \
                 then `touch tests/build.rs` so that it runs again"
            )),
        };
        writeln!(
            out,
            "/// `plugins/c/{name}.c` compiled to Wasm with clang, or why it was not.\npub const {constant}: Result<&str, &str> = {:?};",
            built.as_ref().map(String::as_str).map_err(String::as_str)
        )
        .expect("writing to a String");
    }
}

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest_dir.parent().expect("tests/ sits in the workspace root").to_path_buf();
    let target_dir = match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
    .join("wasm-plugins");

    for dir in ["plugins", "plugin-sdk", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-changed=build.rs");

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--profile", "plugin", "--target", "wasm32-unknown-unknown", "--target-dir"])
        .arg(&target_dir);
    for (package, _) in PLUGINS {
        cmd.args(["-p", package]);
    }
    // The outer build's flags and wrappers (clippy, coverage) are for the
    // host; the plugins get a plain build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("cannot run cargo to build the plugins");
    assert!(
        status.success(),
        "building the plugins to Wasm failed ({status}); is the target installed? `rustup target add wasm32-unknown-unknown`"
    );

    let wasm_dir = target_dir.join("wasm32-unknown-unknown").join("plugin");
    let mut out = String::from("// Generated by tests/build.rs: paths of the plugins compiled to Wasm.\n");
    for (package, constant) in PLUGINS {
        let path = wasm_dir.join(format!("{}.wasm", package.replace('-', "_")));
        assert!(path.is_file(), "expected {} after building the plugins", path.display());
        writeln!(
            out,
            "/// `plugins/…/{package}` compiled to Wasm.\npub const {constant}: &str = {:?};",
            path.display().to_string()
        )
        .expect("writing to a String");
    }
    out.push_str("/// Every plugin, by constant name.\npub const ALL: &[(&str, &str)] = &[\n");
    for (_, constant) in PLUGINS {
        writeln!(out, "    ({constant:?}, {constant}),").expect("writing to a String");
    }
    out.push_str("];\n");
    build_c_plugins(&root, &target_dir, &mut out);
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out_dir.join("plugins.rs"), out).expect("cannot write plugins.rs");
}
