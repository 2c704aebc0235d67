//! Correctness of `weir run` and `weir plugin` at the process boundary
//! (issue #10): what start refuses and what it leaves behind, deploys and
//! rollbacks that change nothing or have nothing to go back to, who a
//! rollback records, and error messages that state each reason once.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weir_tests::{Server, plugins, weir, weir_bin};

const SWAP: &str = r#"
[[pipelines]]
name = "swap"
topics = ["jobs.job.created"]
[[pipelines.handlers]]
name = "a"
plugin = "{VERSIONED_V1}"
"#;

fn stderr(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!text.contains("panicked"), "weir panicked: {text}");
    text
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `weir run` on `toml` (written to `dir/weir.toml`), expected to fail at
/// start: its stderr.
fn run_refused(dir: &Path, toml: &str) -> String {
    let config = dir.join("weir.toml");
    std::fs::write(&config, toml).unwrap();
    let stderr_path = dir.join("refused.stderr");
    let mut child = Command::new(weir_bin())
        .args(["run", "--config"])
        .arg(&config)
        .env("WEIR_CACHE_DIR", dir.join("cache"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    // A start that is not refused serves until stopped: do not wait for it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(!err.contains("panicked"), "weir panicked: {err}");
    let status = status.unwrap_or_else(|| panic!("weir run started instead of refusing: {err}"));
    assert_eq!(status.code(), Some(1), "weir run should have refused to start: {err}");
    err
}

/// The head of a config: its data directory and a free loopback port.
fn head(data: &Path) -> String {
    format!("data_dir = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n", data.display().to_string())
}

fn one_handler(data: &Path, plugin: &str, extra: &str) -> String {
    format!(
        "{}[[pipelines]]\nname = \"orders\"\ntopics = [\"orders.order.created\"]\n[[pipelines.handlers]]\nname = \"validator\"\nplugin = {plugin:?}\n{extra}",
        head(data)
    )
}

/// How often `needle` occurs in `haystack`.
fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn a_retention_of_zero_is_refused_at_start_naming_the_key_and_the_minimum() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for retention in ["0s", "500ms"] {
        let toml =
            format!("{}[idempotency]\nretention = \"{retention}\"\n", one_handler(&data, plugins::ORDER_VALIDATOR, ""));
        let err = run_refused(dir.path(), &toml);
        assert!(err.contains("idempotency.retention"), "{err}");
        assert!(err.contains("minimum of 1s"), "{err}");
        assert!(!data.join("weir.redb").exists(), "a refused configuration created a store");
    }
}

#[test]
fn a_refused_plugin_stops_weir_run_before_the_store_file_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let a_directory = dir.path().join("plugins.d");
    std::fs::create_dir_all(&a_directory).unwrap();
    let a_directory = a_directory.display().to_string();
    // (plugin, extra handler keys, what stderr must say once)
    let cases: [(&str, &str, &str); 5] = [
        (plugins::WRONG_ABI, "", "the module speaks version 2"),
        (plugins::WASI_IMPORT, "", "wasi_snapshot_preview1::fd_write"),
        (plugins::ORDER_VALIDATOR, "config = { currencies = [] }", "at least one currency"),
        ("/no/such/plugin.wasm", "", "no such file: /no/such/plugin.wasm"),
        (&a_directory, "", "is a directory"),
    ];
    for (plugin, extra, reason) in cases {
        let err = run_refused(dir.path(), &one_handler(&data, plugin, extra));
        assert_eq!(count(&err, reason), 1, "the reason {reason:?} once in: {err}");
        assert!(err.contains(plugin), "the plugin named in: {err}");
        assert!(
            err.contains("orders/validator") || err.contains("pipelines[0].handlers[0].plugin"),
            "the handler named in: {err}"
        );
        assert!(!data.join("weir.redb").exists(), "{plugin}: a refused plugin left a store file behind: {err}");
    }
}

#[test]
fn a_refused_plugin_stops_a_restart_without_opening_the_existing_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), SWAP);
    assert!(server.terminate().success());
    let store = dir.path().join("data/weir.redb");
    let before = std::fs::read(&store).unwrap();

    // The store's active version is v1, but the configured file is now refused.
    let text = std::fs::read_to_string(&server.config).unwrap().replace(plugins::VERSIONED_V1, plugins::WRONG_ABI);
    let err = run_refused(dir.path(), &text);
    assert!(err.contains("swap/a") && err.contains(plugins::WRONG_ABI), "{err}");
    assert_eq!(count(&err, "ABI version mismatch"), 1, "{err}");
    assert!(
        std::fs::read(&store).unwrap() == before,
        "the store was opened (and written) before the plugin was refused"
    );
}

#[test]
fn a_data_dir_that_cannot_be_created_prints_its_reason_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::write(&data, "a file where the data directory should be").unwrap();
    let err = run_refused(dir.path(), &one_handler(&data, plugins::ORDER_VALIDATOR, ""));
    assert!(err.contains("cannot create the data directory"), "{err}");
    assert_eq!(count(&err, "os error"), 1, "the I/O reason once in: {err}");
}

#[test]
fn exec_prints_a_missing_plugin_file_reason_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = weir(&["exec", "--plugin", "/no/such/plugin.wasm", "--input", "-"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(count(&err, "os error"), 1, "the I/O reason once in: {err}");
}

/// `weir plugin <args>` against `server`.
fn plugin_cli(server: &Server, cache: &Path, args: &[&str], user: &str) -> Output {
    Command::new(weir_bin())
        .args(["plugin", "--server", server.url.as_str()])
        .args(args)
        .env("WEIR_CACHE_DIR", cache)
        .env("USER", user)
        .output()
        .unwrap()
}

fn history(server: &Server, handler: &str) -> Vec<Value> {
    let (status, answer) = server.get(&format!("/v1/plugins/{handler}"));
    assert_eq!(status, 200, "{answer}");
    answer["history"].as_array().unwrap().clone()
}

fn swaps(server: &Server, handler: &str) -> String {
    let (_, metrics) = server.get("/metrics");
    let text = metrics.as_str().unwrap().to_owned();
    let prefix = format!("weir_plugin_swaps_total{{subscription=\"{handler}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap_or_else(|| panic!("no {prefix} in {text}")).to_owned()
}

#[test]
fn deploying_the_active_version_answers_that_nothing_changed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), SWAP);
    let cache = dir.path().join("cache");
    let v1 = std::fs::read(plugins::VERSIONED_V1).unwrap();

    // Over HTTP: 200, `changed: false`, the active version's number.
    let (status, answer) = server.put_with("/v1/plugins/swap/a", &[("content-type", "application/wasm")], &v1);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["changed"], false, "{answer}");
    assert_eq!(answer["version"], 1, "{answer}");
    assert_eq!(answer["sha256"], weir_tests::sha256(&v1), "{answer}");

    // With the CLI: a plain answer, exit 0.
    let out = plugin_cli(&server, &cache, &["deploy", "swap/a", plugins::VERSIONED_V1], "alice");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("swap/a: version 1") && text.contains("is already active; nothing changed"), "{text}");

    assert_eq!(history(&server, "swap/a").len(), 1, "no history entry for a deploy that changed nothing");
    assert_eq!(swaps(&server, "swap/a"), "0", "no swap counted");

    // A real deploy still changes, and answers so.
    let out = plugin_cli(&server, &cache, &["deploy", "swap/a", plugins::VERSIONED_V2], "alice");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("version 2 active"), "{}", stdout(&out));
    assert_eq!(swaps(&server, "swap/a"), "1");
    // A rollback to the version that is active changes nothing either.
    let v2 = weir_tests::sha256(&std::fs::read(plugins::VERSIONED_V2).unwrap());
    let (status, answer) = server.post("/v1/plugins/swap/a/rollback", &json!({ "to": &v2[..12] }));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["changed"], false, "{answer}");
    let (_, answer) = server.post("/v1/plugins/swap/a/rollback", &json!({}));
    assert_eq!(answer["changed"], true, "{answer}");
    assert_eq!(history(&server, "swap/a").len(), 3, "config, deploy, rollback");
    assert_eq!(swaps(&server, "swap/a"), "2");
}

#[test]
fn rollback_records_who_rolled_back_like_deploy() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), SWAP);
    let cache = dir.path().join("cache");
    let deploy = |user: &str| {
        let out = plugin_cli(&server, &cache, &["deploy", "swap/a", plugins::VERSIONED_V2], user);
        assert!(out.status.success(), "{}", stderr(&out));
    };
    let last = || history(&server, "swap/a").last().unwrap()["record"].clone();

    deploy("alice");
    let out = plugin_cli(&server, &cache, &["rollback", "swap/a", "--by", "bob"], "alice");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!((last()["action"].clone(), last()["deployed_by"].clone()), (json!("rollback"), json!("bob")));

    // Without --by: $USER, as for deploy.
    deploy("alice");
    let out = plugin_cli(&server, &cache, &["rollback", "swap/a"], "carol");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!((last()["action"].clone(), last()["deployed_by"].clone()), (json!("rollback"), json!("carol")));
}

#[test]
fn a_rollback_with_one_version_says_there_is_nothing_to_roll_back_to() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), SWAP);
    let out = plugin_cli(&server, &dir.path().join("cache"), &["rollback", "swap/a"], "alice");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("swap/a has only one version in its history; there is nothing to roll back to"), "{err}");
    assert!(!err.contains("no version an earlier version"), "{err}");
    assert_eq!(history(&server, "swap/a").len(), 1);
}

#[test]
fn a_refused_deploy_prints_its_reason_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), SWAP);
    let cache = dir.path().join("cache");
    for (plugin, reason) in [
        (plugins::WASI_IMPORT, "wasi_snapshot_preview1::fd_write"),
        (plugins::WRONG_ABI, "the module speaks version 2"),
    ] {
        let out = plugin_cli(&server, &cache, &["deploy", "swap/a", plugin], "alice");
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert!(err.contains("422") && err.contains("the module was refused"), "{err}");
        assert_eq!(count(&err, reason), 1, "the reason {reason:?} once in: {err}");
    }
    // The HTTP answer's message, too.
    let (status, answer) = server.put_with(
        "/v1/plugins/swap/a",
        &[("content-type", "application/wasm")],
        &std::fs::read(plugins::WASI_IMPORT).unwrap(),
    );
    assert_eq!(status, 422);
    let message = answer["error"]["message"].as_str().unwrap();
    assert_eq!(count(message, "wasi_snapshot_preview1::fd_write"), 1, "{message}");
    assert_eq!(history(&server, "swap/a").len(), 1);
}
