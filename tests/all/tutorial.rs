//! docs/first-handler.md, run as written: every `sh` block between its
//! `tutorial: begin` and `tutorial: end` markers, in order, in one shell,
//! with the real `weir` on PATH. Two substitutions keep it from colliding
//! with anything else on the machine: a free port instead of 7070, and the
//! shared target directory of the generated crates (so a second run does
//! not compile serde again) instead of the crate's own `target/`.

use std::path::PathBuf;
use std::process::Command;

use weir_tests::weir_bin;

fn tutorial_script() -> String {
    let doc =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/first-handler.md")).unwrap();
    let begin = doc.find("<!-- tutorial: begin -->").expect("begin marker");
    let end = doc.find("<!-- tutorial: end -->").expect("end marker");
    let mut script = String::new();
    let mut in_block = false;
    for line in doc[begin..end].lines() {
        match (in_block, line.trim_end()) {
            (false, "```sh") => in_block = true,
            (true, "```") => in_block = false,
            (true, text) => {
                script.push_str(text);
                script.push('\n');
            }
            _ => {}
        }
    }
    assert!(!in_block, "an unclosed ```sh block");
    script
}

#[test]
fn the_first_handler_tutorial_runs_as_written() {
    let script = tutorial_script();
    for step in ["weir new", "cargo test", "weir build", "weir exec", "weir run --watch", "weir dlq redrive"] {
        assert!(script.contains(step), "the tutorial runs `{step}`");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let target = std::env::current_exe().unwrap().ancestors().nth(3).unwrap().join("new-plugin");
    let script = script
        .replace("127.0.0.1:7070", &format!("127.0.0.1:{port}"))
        .replace("target/wasm32-unknown-unknown/", &format!("{}/wasm32-unknown-unknown/", target.display()));
    let dir = tempfile::tempdir().unwrap();
    let bin_dir = weir_bin().parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new("bash")
        .arg("-c")
        // The trap stops the background `weir run` however the script ends,
        // so a failing step cannot leave a server holding our pipes.
        .arg(format!("set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{script}"))
        .current_dir(dir.path())
        .env("PATH", path)
        .env("CARGO_TARGET_DIR", &target)
        .env("WEIR_SERVER", format!("http://127.0.0.1:{port}"))
        .env("WEIR_CACHE_DIR", dir.path().join("cache"))
        .env_remove("WEIR_TOKEN")
        .env_remove("WEIR_ADMIN_TOKEN")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let server_log = std::fs::read_to_string(dir.path().join("hello-orders/weir.log")).unwrap_or_default();
    assert!(out.status.success(), "{}\nstdout:\n{stdout}\nstderr:\n{stderr}\nweir.log:\n{server_log}", out.status);

    // What the tutorial says the reader sees.
    assert!(stdout.contains("accepted:     yes"), "weir build inspects the module: {stdout}");
    assert!(stdout.contains("\"reason\":\"order o-3 has no items\""), "weir exec shows the rejection: {stdout}");
    assert!(stdout.contains("order o-3 has no items"), "the DLQ names the poison order: {stdout}");
    assert!(server_log.contains("watch: orders/hello: deployed"), "--watch swapped the new build in:\n{server_log}");
    // The redrive moved the order back, and the last `weir dlq list` shows
    // an empty queue.
    let after_redrive = stdout.split("redriven: 1,").nth(1).unwrap_or_else(|| panic!("one event redriven: {stdout}"));
    assert!(after_redrive.contains("the dead-letter queue is empty"), "{after_redrive}");
    assert!(!after_redrive.contains("o-3 has no items"), "the redriven order left the DLQ: {after_redrive}");
}
