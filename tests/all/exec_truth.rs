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

#[test]
fn exec_prints_the_timers_a_handled_event_schedules_and_cancels() {
    let input = concat!(
        "{\"topic\":\"tasks.task.created\",\"key\":\"t-1\",\"time\":\"2026-01-01T00:00:00Z\",\"payload\":{\"remind_in_ms\":1500}}\n",
        "{\"topic\":\"tasks.task.done\",\"key\":\"t-1\",\"payload\":{}}\n",
        // Schedules, then rejects: a subscription keeps none of it.
        "{\"topic\":\"tasks.task.created\",\"key\":\"reject-1\",\"payload\":{}}\n",
        "{\"topic\":\"tasks.task.other\",\"key\":\"t-2\",\"payload\":{}}\n",
    );
    let out = exec(plugins::REMINDER, input, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    let created = &lines[0];
    let timers = created["timers"].as_array().unwrap_or_else(|| panic!("{created}"));
    assert_eq!(timers.len(), 1, "{created}");
    let t = &timers[0];
    // 2026-01-01T00:00:00Z is 1767225600000 ms.
    assert_eq!(
        (t["op"].as_str(), t["key"].as_str(), t["fire_at_ms"].as_u64()),
        (Some("schedule"), Some("t-1"), Some(1_767_225_601_500))
    );
    assert!(t["fire_at"].as_str().unwrap().starts_with("2026-01-01T00:00:01.5"), "{t}");
    assert_eq!(
        (t["emit"]["topic"].as_str(), t["emit"]["key"].as_str()),
        (Some("tasks.task.reminder"), Some("t-1")),
        "{t}"
    );
    assert_eq!(t["emit"]["causation_id"], created["event_id"], "{t}");
    assert_eq!(lines[1]["timers"], serde_json::json!([{ "op": "cancel", "key": "t-1" }]));
    assert_eq!(lines[2]["outcome"], "failed");
    assert!(lines[2].get("timers").is_none(), "a failed event's timers are not kept: {}", lines[2]);
    assert!(lines[3].get("timers").is_none(), "no timer asked for: {}", lines[3]);
}
