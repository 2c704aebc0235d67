//! `--help` works on every command of the real binary. (Having an integration
//! test here also makes `cargo test --workspace` build the `weir` binary that
//! the workspace's `tests/` crate drives.)

use std::process::Command;

#[test]
fn every_command_has_help() {
    for args in [&["--help"][..], &["exec", "--help"], &["inspect", "--help"], &["--version"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_weir")).args(args).output().unwrap();
        assert!(out.status.success(), "weir {args:?} failed");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("weir") || text.contains("Usage"), "weir {args:?}: {text}");
        if args.len() == 2 {
            assert!(text.contains("Usage: weir"), "weir {args:?}: {text}");
        }
    }
}
