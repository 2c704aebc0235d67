//! `weir exec` and `weir inspect` tell the truth (issue #19 item 4): emits
//! print as returned, refusals carry the same code and stage everywhere,
//! and no reason is stated twice.

use weir_tests::{plugins, weir_bin};

fn exec(plugin: &str, input: &str, extra: &[&str]) -> std::process::Output {
    use std::io::Write as _;
    let cache = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(weir_bin())
        .args(["exec", "--plugin", plugin, "--no-cache"])
        .args(extra)
        .env("WEIR_CACHE_DIR", cache.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn inspect_json(plugin: &str, extra: &[&str]) -> (Option<i32>, serde_json::Value) {
    let cache = tempfile::tempdir().unwrap();
    let mut args = vec!["inspect", plugin, "--json"];
    args.extend_from_slice(extra);
    let out = weir_tests::weir(&args, &cache.path().join("c"));
    (out.status.code(), serde_json::from_slice(&out.stdout).unwrap())
}

#[test]
fn emits_print_their_headers_in_order_with_repeats() {
    let out = exec(plugins::HEADER_BOMB, "{\"topic\":\"a.b.c\",\"key\":\"ordered\",\"payload\":{}}\n", &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let headers = &line["emits"][0]["headers"];
    assert_eq!(
        headers,
        &serde_json::json!([{ "name": "h", "value": "1" }, { "name": "h", "value": "2" }, { "name": "a", "value": "3" }])
    );
}

#[test]
fn an_init_refusal_has_one_code_and_stage_and_states_its_reason_once() {
    let config = ["--config", "{\"loop_in_init\":true}", "--deadline-ms", "200"];
    let event = "{\"topic\":\"a.b.c\",\"payload\":{}}\n";

    let mut args = config.to_vec();
    args.push("--json");
    let out = exec(plugins::LOOPER, event, &args);
    assert_eq!(out.status.code(), Some(1));
    let refusal: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(refusal["outcome"], "refused");
    assert_eq!(refusal["code"], "timeout");
    assert_eq!(refusal["stage"], "weir_init");
    let message = refusal["message"].as_str().unwrap();
    assert_eq!(message.matches("deadline").count(), 1, "{message}");

    let out = exec(plugins::LOOPER, event, &config);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("[timeout]"), "{stderr}");
    assert_eq!(stderr.matches("deadline").count(), 1, "{stderr}");

    // weir inspect --config runs weir_init too, and says the same.
    let (code, report) = inspect_json(plugins::LOOPER, &["--config", "{\"loop_in_init\":true}"]);
    assert_eq!(code, Some(1));
    assert_eq!(report["accepted"], false);
    assert_eq!(report["init_config"], "refused");
    assert_eq!(report["code"], "timeout");
    assert_eq!(report["stage"], "weir_init");
    // …and a configuration it accepts passes.
    let (code, report) = inspect_json(plugins::LOOPER, &["--config", "{}"]);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["init_config"], "accepted");
}

#[test]
fn a_load_refusal_has_the_same_code_and_stage_in_exec_and_inspect() {
    let out = exec(plugins::WASI_IMPORT, "", &["--json"]);
    assert_eq!(out.status.code(), Some(1));
    let refusal: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (code, report) = inspect_json(plugins::WASI_IMPORT, &[]);
    assert_eq!(code, Some(1));
    assert_eq!(refusal["code"], "forbidden_import");
    assert_eq!(refusal["stage"], "validate");
    assert_eq!(report["code"], refusal["code"]);
    assert_eq!(report["stage"], refusal["stage"]);
    assert_eq!(report["reason"], refusal["message"]);
}

#[test]
fn a_refused_deploy_answers_the_same_code_and_stage() {
    let dir = tempfile::tempdir().unwrap();
    let server = weir_tests::Server::start(dir.path(), weir_tests::ORDERS);
    let module = std::fs::read(plugins::WASI_IMPORT).unwrap();
    let (status, answer) =
        server.put_with("/v1/plugins/orders/validator", &[("content-type", "application/wasm")], &module);
    assert_eq!(status, 422, "{answer}");
    let (_, report) = inspect_json(plugins::WASI_IMPORT, &[]);
    assert_eq!(answer["error"]["code"], report["code"]);
    assert_eq!(answer["error"]["stage"], report["stage"]);
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.ends_with(report["reason"].as_str().unwrap()), "{message} vs {report}");
    assert_eq!(message.matches("wasi_snapshot_preview1").count(), 1, "the reason is stated once: {message}");
}
