//! Shared helpers of Weir's integration tests: the plugins compiled to Wasm
//! by the build script, the real `weir` binary, and small event builders.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, missing_debug_implementations)]

use std::path::PathBuf;
use std::process::{Command, Output};

use weir_abi::{DeliveryRef, Event};
use weir_runtime::JsonEvent;
use weir_runtime::{Engine, EngineConfig, Handler, IdGenerator, InstanceMode, Invocation, Limits, Plugin};

/// Paths of the plugins compiled by `build.rs`.
pub mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

/// The text of [`ORDERS`], as a literal so [`ORDERS_ENRICHED`] can extend it.
macro_rules! orders_toml {
    () => {
        r#"
[[pipelines]]
name = "orders"
topics = ["orders.order.created"]
[[pipelines.handlers]]
name = "validator"
plugin = "{ORDER_VALIDATOR}"
[[pipelines.handlers]]
name = "audit"
plugin = "{AUDIT_LOGGER}"
"#
    };
}

/// The orders pipeline many tests run: `orders.order.created` fanned out to
/// an order validator and an audit logger.
pub const ORDERS: &str = orders_toml!();

/// [`ORDERS`] plus the pipeline its validator feeds: an enricher on
/// `orders.order.validated` (the demo's shape).
pub const ORDERS_ENRICHED: &str = concat!(
    orders_toml!(),
    r#"
[[pipelines]]
name = "enrich"
topics = ["orders.order.validated"]
[[pipelines.handlers]]
name = "enricher"
plugin = "{ENRICHER}"
"#
);

/// The `weir` binary next to the test executable (`target/<profile>/weir`).
/// `cargo test --workspace` builds it, because `weir-runtime` has an
/// integration test of its own.
pub fn weir_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps/<test>");
    let bin = profile_dir.join(format!("weir{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} is missing: run the tests with `cargo test --workspace` (or `cargo build -p weir-runtime` first)",
        bin.display()
    );
    bin
}

/// Run `weir` with `args`, with its artifact cache in `cache_dir`.
pub fn weir(args: &[&str], cache_dir: &std::path::Path) -> Output {
    Command::new(weir_bin()).args(args).env("WEIR_CACHE_DIR", cache_dir).output().expect("run weir")
}

/// A runtime configuration from TOML text in which `{NAME}` stands for the
/// path of plugin `NAME` (e.g. `{ORDER_VALIDATOR}`), with its data directory
/// in `dir`.
pub fn config(dir: &std::path::Path, toml: &str) -> weir_runtime::Config {
    let mut text = format!("data_dir = {:?}\n", dir.join("data").display().to_string());
    text.push_str(toml);
    for (name, path) in plugins::ALL {
        text = text.replace(&format!("{{{name}}}"), path);
    }
    let file = dir.join("weir.toml");
    std::fs::write(&file, &text).unwrap();
    weir_runtime::Config::load(&file).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// Hex sha256 of `bytes` (a plugin version's identity).
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A default engine (no artifact cache).
pub fn engine() -> Engine {
    Engine::new(EngineConfig::default()).unwrap()
}

/// Load a plugin by path.
pub fn load(engine: &Engine, path: &str) -> Plugin {
    engine.load_file(path.as_ref()).unwrap_or_else(|e| panic!("loading {path}: {e}"))
}

/// A reusing handler with `limits` and no configuration.
pub fn handler(engine: &Engine, path: &str, limits: Limits) -> Handler {
    load(engine, path).handler(limits, Vec::new(), InstanceMode::Reuse).unwrap()
}

/// An event from its JSON form.
pub fn event(json: &str) -> Event {
    JsonEvent::from_json_line(json).unwrap().into_event(&IdGenerator::new(), "weir:test").unwrap()
}

/// An event with this topic and key and an empty JSON object payload.
pub fn keyed(topic: &str, key: &str) -> Event {
    event(&format!(r#"{{"topic":"{topic}","key":"{key}","payload":{{}}}}"#))
}

/// Invoke `handler` on `event` as attempt 1 of subscription `test/sub`.
pub fn invoke(handler: &mut Handler, event: &Event) -> Invocation {
    handler.invoke(DeliveryRef { event, subscription: "test/sub", attempt: 1 })
}

/// The failure code of an invocation, or `ok`.
pub fn code(invocation: &Invocation) -> &'static str {
    match &invocation.result {
        Ok(_) => "ok",
        Err(e) => e.code(),
    }
}

/// A real `weir run` process on a free loopback port.
pub struct Server {
    child: Option<std::process::Child>,
    /// Base URL.
    pub url: String,
    /// The config file.
    pub config: PathBuf,
    agent: ureq::Agent,
    stderr_path: PathBuf,
    extra_args: Vec<String>,
}

impl Server {
    /// Write a config (see [`config`] for `{NAME}` plugin placeholders) with
    /// the data directory in `dir` and a free port, and start `weir run`.
    pub fn start(dir: &std::path::Path, toml: &str) -> Self {
        Self::start_with_args(dir, toml, &[])
    }

    /// [`Server::start`] with extra `weir run` arguments.
    pub fn start_with_args(dir: &std::path::Path, toml: &str, args: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut text =
            format!("data_dir = {:?}\n[http]\nlisten = \"127.0.0.1:{port}\"\n", dir.join("data").display().to_string());
        text.push_str(toml);
        for (name, path) in plugins::ALL {
            text = text.replace(&format!("{{{name}}}"), path);
        }
        let config = dir.join("weir.toml");
        std::fs::write(&config, &text).unwrap();
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(std::time::Duration::from_secs(60)))
                // Under the server's idle keep-alive limit (header_timeout,
                // 10 s by default, 1 s in some tests): a connection kept
                // longer may be closed by the server just as it is reused,
                // and the request then fails with "Peer disconnected".
                .max_idle_age(std::time::Duration::from_millis(500))
                .build(),
        );
        let mut server = Self {
            child: None,
            url: format!("http://127.0.0.1:{port}"),
            config,
            agent,
            stderr_path: dir.join("weir-run.stderr"),
            extra_args: args.iter().map(|a| (*a).to_owned()).collect(),
        };
        server.restart();
        server
    }

    /// Start (again) on the same config and port, and wait until healthy.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(&self.stderr_path).unwrap();
        let child = Command::new(weir_bin())
            .args(["run", "--config"])
            .arg(&self.config)
            .args(&self.extra_args)
            .stderr(stderr)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("weir run exited with {status}: {}", self.stderr());
            }
            if self.agent.get(format!("{}/health", self.url)).call().is_ok_and(|r| r.status() == 200) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("weir run did not become healthy: {}", self.stderr());
    }

    /// What the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(status.success());
        child.wait().unwrap()
    }

    fn answer(
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<(u16, serde_json::Value), String> {
        let mut response = result.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().map_err(|e| e.to_string())?;
        Ok((status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))))
    }

    /// POST; `Err` when the server cannot be reached.
    pub fn try_post(&self, path: &str, content_type: &str, body: &[u8]) -> Result<(u16, serde_json::Value), String> {
        Self::answer(self.agent.post(format!("{}{path}", self.url)).header("content-type", content_type).send(body))
    }

    /// POST with extra headers.
    pub fn post_with(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, serde_json::Value) {
        let mut request = self.agent.post(format!("{}{path}", self.url));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        Self::answer(request.send(body)).unwrap()
    }

    /// PUT with extra headers.
    pub fn put_with(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, serde_json::Value) {
        let mut request = self.agent.put(format!("{}{path}", self.url));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        Self::answer(request.send(body)).unwrap()
    }

    /// POST JSON.
    pub fn post(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        self.try_post(path, "application/json", body.to_string().as_bytes()).unwrap()
    }

    /// GET.
    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        Self::answer(self.agent.get(format!("{}{path}", self.url)).call()).unwrap()
    }

    /// Wait until every subscription has caught up with nothing parked.
    pub fn wait_idle(&self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut streak = 0;
        while std::time::Instant::now() < deadline {
            let (_, status) = self.get("/v1/status");
            let idle = status["subscriptions"]
                .as_array()
                .is_some_and(|subs| subs.iter().all(|s| s["lag"] == 0 && s["parked"] == 0));
            streak = if idle { streak + 1 } else { 0 };
            if streak >= 3 {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
