//! The operator's dashboard at `GET /`, driven end to end in headless
//! Chromium through chromedriver (W3C WebDriver over HTTP, spoken with ureq):
//! the page renders every subscription, its numbers follow events as they
//! flow, and the DLQ browser inspects, redrives (refused without the admin
//! token, then accepted with it) and purges entries, which the server's own
//! API confirms. The log browser filters, follows (Server-Sent Events, or
//! long-polls with a token set) and opens lineages as the API reports them,
//! and the graph shows durable consumers and webhook sinks with their lag.
//!
//! Needs `chromium` and `chromedriver` (Debian: `chromium`, `chromium-driver`),
//! so it is ignored by default; `cargo test -- --include-ignored` runs it
//! (`.ci/run` installs both and does), and it fails without them. It writes
//! a screenshot to
//! `target/dashboard.png`, and to `docs/dashboard.png` when
//! `WEIR_UPDATE_SCREENSHOT=1`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weir_tests::{Server, plugins};

const TOKEN: &str = "s3cret";

/// Pipelines after the demo's (see [`config`]).
const MORE: &str = r#"
[[pipelines]]
name = "payments"
topics = ["payments.charge.requested"]
[[pipelines.handlers]]
name = "charger"
plugin = "{FLAKY}"
config = { succeed_on_attempt = 2 }
retry = { max_attempts = 4, initial_backoff = "300ms", jitter = 0.0 }

[[pipelines]]
name = "jobs"
topics = ["jobs.*.created"]
[[pipelines.handlers]]
name = "worker"
plugin = "{VERSIONED_V1}"

[[pipelines]]
name = "tally"
topics = ["payments.charge.requested"]
[[pipelines.handlers]]
name = "counter"
plugin = "{COUNTER}"
view = "charges"
"#;

/// `admin_token` first (it continues the `[http]` table that
/// `Server::start` writes before this text), then the demo's pipelines, then
/// a flaky charger and a worker that rejects keys starting with `bad`, then
/// a webhook sink `hook` on every order event, posting to `sink_url`.
fn config(sink_url: &str) -> String {
    format!("admin_token = \"{TOKEN}\"\n{}{MORE}{}", weir_tests::ORDERS_ENRICHED, sink(sink_url))
}

/// A webhook sink `hook` on `orders.>`. The binary reads the secret from
/// the environment it inherits: `PATH`, which every process has (its bytes
/// are the key), so no test writes to the environment.
fn sink(url: &str) -> String {
    format!("\n[[sinks]]\nname = \"hook\"\ntopics = [\"orders.>\"]\nurl = \"{url}\"\nsecret_env = \"PATH\"\n")
}

const SUBSCRIPTIONS: [&str; 7] = [
    "orders/validator",
    "orders/audit",
    "enrich/enricher",
    "payments/charger",
    "jobs/worker",
    "tally/counter",
    "sinks/hook",
];

/// How long any one thing the test waits for may take.
const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// A minimal W3C WebDriver client.

/// The key of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A WebDriver error: its `error` code and message.
#[derive(Debug)]
struct WdError {
    error: String,
    message: String,
}

/// Chromium under chromedriver, with one session. Dropping it ends the
/// session (which closes Chromium) and kills chromedriver.
struct Browser {
    driver: Child,
    agent: ureq::Agent,
    /// `http://127.0.0.1:<port>`
    root: String,
    /// `<root>/session/<id>`
    session: String,
    _profile: tempfile::TempDir,
}

fn in_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).flat_map(|dir| names.iter().map(move |n| dir.join(n))).find(|p| p.is_file())
}

impl Browser {
    /// chromedriver and the Chromium binary, if both are installed.
    fn installed() -> Option<(PathBuf, PathBuf)> {
        let driver = in_path(&["chromedriver"])?;
        let chromium = [Path::new("/usr/bin/chromium").to_path_buf()]
            .into_iter()
            .find(|p| p.is_file())
            .or_else(|| in_path(&["chromium", "chromium-browser", "google-chrome"]))?;
        Some((driver, chromium))
    }

    fn launch(driver_bin: &Path, chromium: &Path, log_dir: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = std::fs::File::create(log_dir.join("chromedriver.log")).unwrap();
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", driver_bin.display()));
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(60)))
                .build(),
        );
        let profile = tempfile::tempdir().unwrap();
        let mut browser =
            Self { driver, agent, root: format!("http://127.0.0.1:{port}"), session: String::new(), _profile: profile };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(status) = browser.request("GET", &format!("{}/status", browser.root), None)
                && status["ready"] == true
            {
                break;
            }
            if let Some(exit) = browser.driver.try_wait().unwrap() {
                panic!("chromedriver exited with {exit}: {}", read(&log_dir.join("chromedriver.log")));
            }
            assert!(Instant::now() < deadline, "chromedriver did not become ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        let options = json!({
            "binary": chromium.to_string_lossy(),
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-quic", "--window-size=1280,900",
                format!("--user-data-dir={}", browser._profile.path().display()),
            ],
        });
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "goog:chromeOptions": options,
            "goog:loggingPrefs": { "browser": "ALL" },
        } } });
        let answer = browser
            .request("POST", &format!("{}/session", browser.root), Some(&caps))
            .unwrap_or_else(|e| panic!("creating a WebDriver session: {}: {}", e.error, e.message));
        let id = answer["sessionId"].as_str().unwrap_or_else(|| panic!("no session id in {answer}"));
        browser.session = format!("{}/session/{id}", browser.root);
        browser
    }

    /// One WebDriver request; the answer's `value`.
    fn request(&self, method: &str, url: &str, body: Option<&Value>) -> Result<Value, WdError> {
        let result = match method {
            "GET" => self.agent.get(url).call(),
            "DELETE" => self.agent.delete(url).call(),
            _ => self
                .agent
                .post(url)
                .header("content-type", "application/json")
                .send(body.unwrap_or(&json!({})).to_string().as_bytes()),
        };
        let mut response =
            result.map_err(|e| WdError { error: "transport".into(), message: format!("{method} {url}: {e}") })?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .read_to_string()
            .map_err(|e| WdError { error: "transport".into(), message: e.to_string() })?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        let value = value.get("value").cloned().unwrap_or(value);
        if status >= 400 {
            return Err(WdError {
                error: value["error"].as_str().unwrap_or("unknown").to_owned(),
                message: value["message"].as_str().unwrap_or_default().chars().take(400).collect(),
            });
        }
        Ok(value)
    }

    fn cmd(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, WdError> {
        self.request(method, &format!("{}{path}", self.session), body)
    }

    fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(&json!({ "url": url }))).unwrap();
    }

    /// The element `css` now, if there is one.
    fn find(&self, css: &str) -> Result<String, WdError> {
        let v = self.cmd("POST", "/element", Some(&json!({ "using": "css selector", "value": css })))?;
        Ok(v[ELEMENT].as_str().unwrap_or_default().to_owned())
    }

    /// The rendered text of `css`, or `None` when it is absent.
    fn text(&self, css: &str) -> Option<String> {
        let id = self.find(css).ok()?;
        self.cmd("GET", &format!("/element/{id}/text"), None).ok()?.as_str().map(str::to_owned)
    }

    fn script(&self, js: &str, args: &[Value]) -> Value {
        self.cmd("POST", "/execute/sync", Some(&json!({ "script": js, "args": args }))).unwrap()
    }

    /// Wait until `css` exists and its text satisfies `ok`; its text.
    fn wait_text(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        let mut last = None;
        while Instant::now() < deadline {
            last = self.text(css);
            if let Some(text) = &last
                && ok(text)
            {
                return text.clone();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("waited {WAIT:?} for {what} ({css}); last text: {last:?}");
    }

    /// Click `css`, retrying while it is missing, stale or covered (the page
    /// re-renders parts of itself every second).
    fn click(&self, css: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let result = self.find(css).and_then(|id| self.cmd("POST", &format!("/element/{id}/click"), None));
            match result {
                Ok(_) => return,
                Err(e) if Instant::now() >= deadline => panic!("clicking {css}: {}: {}", e.error, e.message),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn clear(&self, css: &str) {
        let id = self.find(css).unwrap();
        self.cmd("POST", &format!("/element/{id}/clear"), None).unwrap();
    }

    /// Wait until `js` (a function body returning a value) returns `want`.
    fn wait_script(&self, js: &str, want: &Value, what: &str) {
        let deadline = Instant::now() + WAIT;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            last = self.script(js, &[]);
            if &last == want {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("waited {WAIT:?} for {what}; last: {last}, want: {want}");
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).unwrap();
        self.cmd("POST", &format!("/element/{id}/value"), Some(&json!({ "text": text }))).unwrap();
    }

    fn displayed(&self, css: &str) -> bool {
        self.find(css)
            .and_then(|id| self.cmd("GET", &format!("/element/{id}/displayed"), None))
            .is_ok_and(|v| v == true)
    }

    /// Wait for the in-page confirmation dialog, check its text, confirm.
    fn confirm(&self, expect: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.displayed("#confirm-modal") {
            assert!(Instant::now() < deadline, "the confirmation dialog did not open");
            std::thread::sleep(Duration::from_millis(50));
        }
        let text = self.text("#confirm-text").unwrap_or_default();
        assert!(text.contains(expect), "confirmation text {text:?} lacks {expect:?}");
        self.click("#confirm-yes");
        let deadline = Instant::now() + WAIT;
        while self.displayed("#confirm-modal") {
            assert!(Instant::now() < deadline, "the confirmation dialog did not close");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The page's JavaScript errors so far, from chromedriver's browser log
    /// (`None` when this chromedriver does not offer the log).
    fn script_errors(&self) -> Option<Vec<String>> {
        let log = self.cmd("POST", "/se/log", Some(&json!({ "type": "browser" }))).ok()?;
        Some(
            log.as_array()?
                .iter()
                .filter(|e| e["level"] == "SEVERE" && e["source"] != "network")
                .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
                .collect(),
        )
    }

    /// A PNG of the whole page: the window is made as tall as the page.
    fn screenshot_full_page(&self) -> Vec<u8> {
        let height = self.script("window.scrollTo(0, 0); return document.documentElement.scrollHeight", &[]);
        let height = height.as_u64().unwrap_or(900);
        let height = height.clamp(600, 4000);
        self.cmd("POST", "/window/rect", Some(&json!({ "width": 1280, "height": height + 100 }))).unwrap();
        // Let the charts redraw at the new size.
        std::thread::sleep(Duration::from_millis(1200));
        let png = self.cmd("GET", "/screenshot", None).unwrap();
        base64_decode(png.as_str().unwrap())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.request("DELETE", &self.session.clone(), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// A webhook receiver on its own threads that answers every request with
/// `status` and no body; its URL and how many requests it answered.
fn receiver(status: u16) -> (String, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let answered = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&answered);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let count = Arc::clone(&count);
            std::thread::spawn(move || {
                // The head, then as many body bytes as it announces.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                count.fetch_add(1, Ordering::Relaxed);
                let reason = if status == 410 { "Gone" } else { "OK" };
                let _ = write!(stream, "HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            });
        }
    });
    (url, answered)
}

/// Create durable consumer `name` (the admin scope: the server has a token).
fn create_consumer(server: &Server, name: &str, settings: &Value) {
    let bearer = format!("Bearer {TOKEN}");
    let (code, body) = server.put_with(
        &format!("/v1/consumers/{name}"),
        &[("content-type", "application/json"), ("authorization", &bearer)],
        settings.to_string().as_bytes(),
    );
    assert_eq!(code, 201, "{body}");
}

fn consumer_of(server: &Server, name: &str) -> Value {
    let (code, status) = server.get("/v1/status");
    assert_eq!(code, 200, "{status}");
    status["consumers"].as_array().unwrap().iter().find(|c| c["name"] == name).cloned().unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(text.trim()).expect("WebDriver screenshots are base64")
}

// ---------------------------------------------------------------------------

fn order(id: &str, currency: &str, items: u32) -> Value {
    let items: Vec<Value> =
        (0..items).map(|i| json!({ "sku": format!("sku-{i}"), "qty": 1 + i, "price_cents": 1299 })).collect();
    json!({ "topic": "orders.order.created", "key": id,
            "payload": { "order_id": id, "customer": "c-7", "currency": currency, "items": items } })
}

fn status_of(server: &Server, name: &str) -> Value {
    let (code, status) = server.get("/v1/status");
    assert_eq!(code, 200, "{status}");
    status["subscriptions"].as_array().unwrap().iter().find(|s| s["name"] == name).cloned().unwrap()
}

fn dlq_of(server: &Server, subscription: &str) -> Vec<Value> {
    let (code, body) = server.get(&format!("/v1/dlq?subscription={subscription}"));
    assert_eq!(code, 200, "{body}");
    body["entries"].as_array().unwrap().clone()
}

/// Poll `check` until it is true or the wait is over.
fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "waited {WAIT:?} for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A number as the page shows it (`1,234`, `12.5`).
fn number(text: &str) -> f64 {
    text.trim().replace(',', "").parse().unwrap_or_else(|_| panic!("not a number: {text:?}"))
}

fn cell(sub: &str, field: &str) -> String {
    format!("#subs-body tr[data-sub=\"{sub}\"] td[data-field=\"{field}\"]")
}

#[test]
#[ignore = "needs chromium and chromedriver (Debian: chromium, chromium-driver); run with `cargo test -- --include-ignored`"]
fn the_dashboard_shows_live_numbers_and_redrives_and_purges_dead_letters() {
    let started = Instant::now();
    let Some((driver_bin, chromium)) = Browser::installed() else {
        panic!("chromium and chromedriver are not installed (Debian: chromium, chromium-driver): this test needs them");
    };
    let dir = tempfile::tempdir().unwrap();
    let (sink_url, sink_requests) = receiver(204);
    let server = Server::start(dir.path(), &config(&sink_url));
    // A durable consumer on orders and payments, for the graph.
    create_consumer(&server, "billing-export", &json!({ "topics": ["orders.>", "payments.>"] }));

    // Before the page opens: two orders the validator rejects, a job that
    // version 1 of the worker rejects, and some that pass.
    let first = vec![
        order("o-1001", "EUR", 2),
        order("o-1002", "DOGE", 1),
        order("o-1003", "EUR", 1),
        order("o-1004", "DOGE", 3),
        json!({ "topic": "jobs.report.created", "key": "bad-1", "payload": { "report": 1 } }),
        json!({ "topic": "jobs.report.created", "key": "good-1", "payload": { "report": 2 } }),
    ];
    let (code, published) = server.post("/v1/events", &json!(first));
    assert_eq!(code, 200, "{published}");
    let bad_seq = published["events"][4]["seq"].as_u64().unwrap();
    eventually("two validator dead letters and one worker dead letter", || {
        dlq_of(&server, "orders/validator").len() == 2 && dlq_of(&server, "jobs/worker").len() == 1
    });

    // One self-contained page: nothing loaded from anywhere (the only URL
    // is the SVG namespace, which is a name, not a fetch).
    let (code, page) = server.get("/");
    assert_eq!(code, 200);
    let page = page.as_str().expect("HTML, not JSON").to_owned();
    assert!(page.starts_with("<!doctype html>"), "{}", &page[..page.len().min(200)]);
    for needle in ["src=", "url(", "@import", "//cdn", "<link rel=\"stylesheet\""] {
        assert!(!page.contains(needle), "the page refers to an outside resource: {needle}");
    }
    let urls = page.matches("http://").count() + page.matches("https://").count();
    assert_eq!(urls, page.matches("http://www.w3.org/2000/svg").count(), "only the SVG namespace is a URL");

    let browser = Browser::launch(&driver_bin, &chromium, dir.path());
    browser.goto(&format!("{}/", server.url));

    // A row per subscription, with the server's numbers.
    for sub in SUBSCRIPTIONS {
        browser.wait_text(&format!("{} .subname", cell(sub, "name")), "a row per subscription", |t| t == sub);
    }
    let rows = browser.script("return document.querySelectorAll('#subs-body tr[data-sub]').length", &[]);
    assert_eq!(rows, json!(SUBSCRIPTIONS.len()));
    browser.wait_text(&cell("jobs/worker", "dlq"), "the worker's DLQ count", |t| t == "1");
    browser.wait_text(&cell("jobs/worker", "state"), "the worker failing", |t| t == "failing");
    browser.wait_text(&cell("orders/validator", "dlq"), "the validator's DLQ count", |t| t == "2");
    // A projection's row names the view it serves.
    browser.wait_text(&format!("{} [data-view]", cell("tally/counter", "name")), "the view's name", |t| {
        t == "view charges"
    });
    let v1 = weir_tests::sha256(&std::fs::read(plugins::VERSIONED_V1).unwrap());
    browser.wait_text(&cell("jobs/worker", "plugin"), "the worker's plugin version", |t| t.contains(&v1[..12]));
    // The graph: an edge and a depth label per subscription.
    for sub in SUBSCRIPTIONS {
        browser.wait_text(&format!("#graph-svg [data-depth=\"{sub}\"]"), "a depth label", |t| t.starts_with("depth "));
    }

    // Events flow: valid orders and payments (the flaky charger retries each
    // once), until the end of the test.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let stop = Arc::clone(&stop);
        let url = server.url.clone();
        std::thread::spawn(move || {
            let agent = ureq::Agent::new_with_config(ureq::Agent::config_builder().http_status_as_error(false).build());
            let mut i: u32 = 0;
            while !stop.load(Ordering::Relaxed) {
                // A batch size that swings between 1 and 9, for a lively chart.
                let n = 5 + (4.0 * (f64::from(i) / 25.0).sin()).round() as i32;
                let mut batch: Vec<Value> =
                    (0..n.max(1)).map(|k| order(&format!("o-{i}-{k}"), "EUR", 1 + (k as u32 % 3))).collect();
                if i.is_multiple_of(4) {
                    batch.push(json!({ "topic": "payments.charge.requested", "key": format!("p-{i}"), "payload": { "cents": 100 + i } }));
                }
                let answer = agent
                    .post(format!("{url}/v1/events"))
                    .header("content-type", "application/json")
                    .send(json!(batch).to_string().as_bytes());
                assert!(answer.is_ok_and(|r| r.status() == 200), "publishing failed");
                i += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    // The page's numbers follow: handled grows and the rate is above zero.
    let handled = |b: &Browser| number(&b.text(&cell("orders/audit", "handled")).unwrap_or_default());
    let before = handled(&browser);
    browser.wait_text(&cell("orders/audit", "handled"), "the audit's handled count to grow", |t| {
        number(t) >= before + 30.0
    });
    browser.wait_text(&cell("orders/audit", "rate"), "a throughput above zero", |t| t != "–" && number(t) > 0.0);
    assert!(handled(&browser) > before);
    browser.wait_text(&cell("payments/charger", "handled"), "the charger handling payments", |t| number(t) > 0.0);
    assert!(sink_requests.load(Ordering::Relaxed) > 0, "the sink posted nothing");
    browser.wait_text("#graph-svg [data-consumer-lag=\"billing-export\"]", "the consumer's lag", |t| {
        t.starts_with("lag ") && number(&t[4..t.find(" ·").unwrap_or(t.len())]) > 0.0
    });

    // The log browser opened on the latest events: the lineage of the first
    // order, fanned out to the validator, the audit and the sink.
    let first_order = published["events"][0]["id"].as_str().unwrap().to_owned();
    browser.clear("#log-after");
    browser.type_into("#log-topics", "orders.order.created");
    browser.click("#log-load");
    browser.click(&format!("#log-body tr[data-id=\"{first_order}\"]"));
    browser.wait_script(
        "return [...document.querySelectorAll('#lineage .lin-sub')].map((e) => e.dataset.lineageSub).sort()",
        &json!(["orders/audit", "orders/validator", "sinks/hook"]),
        "the first order's lineage",
    );

    // The DLQ browser: filter to the worker, one entry, inspect it.
    browser.click("#dlq-sub option[value=\"jobs/worker\"]");
    let row = format!("#dlq-body tr[data-dlq-sub=\"jobs/worker\"][data-dlq-seq=\"{bad_seq}\"]");
    browser.wait_text(&row, "the worker's dead letter", |t| t.contains("bad-1"));
    eventually("only the worker's entry listed", || {
        browser.script("return document.querySelectorAll('#dlq-body tr').length", &[]) == json!(1)
    });
    browser.click(&row);
    browser.wait_text("#dlq-detail", "the entry's details", |t| {
        t.contains("handler_reject") && t.contains("version 1 cannot handle keys starting with `bad`")
    });
    let event = browser.text("#dlq-event").unwrap();
    assert!(event.contains("\"key\": \"bad-1\"") && event.contains("\"report\": 1"), "{event}");
    let detail = browser.text("#dlq-detail").unwrap();
    assert!(detail.contains(&v1[..12]), "the failing plugin version: {detail}");

    // The screenshot: events flowing, dead letters waiting, one inspected.
    let update = std::env::var("WEIR_UPDATE_SCREENSHOT").is_ok_and(|v| v == "1");
    if update {
        // Fill the charts with a minute of history for the docs.
        std::thread::sleep(Duration::from_secs(60));
    }
    let png = browser.screenshot_full_page();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    let target = weir_tests::weir_bin().parent().and_then(Path::parent).unwrap().to_path_buf();
    std::fs::write(target.join("dashboard.png"), &png).unwrap();
    if update {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/dashboard.png");
        std::fs::write(&docs, &png).unwrap();
        eprintln!("wrote {}", docs.display());
    }

    // Redrive without the admin token: refused, and the page says so.
    browser.click("#redrive-selected");
    browser.confirm(&format!("seq {bad_seq}"));
    browser.wait_text("#action-result", "the 401 message", |t| t.contains("401") && t.contains("admin token"));
    assert_eq!(dlq_of(&server, "jobs/worker").len(), 1, "nothing was redriven");

    // Fix the handler (deploy version 2, which accepts `bad` keys), give the
    // page the token, and redrive again: the event is handled this time.
    let v2 = std::fs::read(plugins::VERSIONED_V2).unwrap();
    let bearer = format!("Bearer {TOKEN}");
    let (code, answer) = server.put_with(
        "/v1/plugins/jobs/worker",
        &[("content-type", "application/wasm"), ("authorization", &bearer)],
        &v2,
    );
    assert_eq!(code, 200, "{answer}");
    let v2 = weir_tests::sha256(&v2);
    browser.wait_text(&cell("jobs/worker", "plugin"), "the new plugin version", |t| t.contains(&v2[..12]));
    let worker = status_of(&server, "jobs/worker");
    assert_eq!(worker["stats"]["dead_lettered"], 1);
    let handled_before = worker["stats"]["handled"].as_u64().unwrap();
    browser.type_into("#admin-token", TOKEN);
    browser.click("#redrive-selected");
    browser.confirm(&format!("seq {bad_seq}"));
    browser.wait_text("#action-result", "the redrive result", |t| t == "Redriven 1 entry");
    eventually("the redriven event handled by version 2", || {
        let w = status_of(&server, "jobs/worker");
        w["dlq"] == 0 && w["stats"]["handled"] == handled_before + 1 && w["parked"] == 0
    });
    assert!(dlq_of(&server, "jobs/worker").is_empty());
    assert_eq!(status_of(&server, "jobs/worker")["stats"]["dead_lettered"], 1, "it did not fail again");
    browser
        .wait_text("#dlq-detail", "the entry gone from the page", |t| t.contains("no longer in the dead-letter queue"));
    browser.wait_text(&cell("jobs/worker", "dlq"), "the worker's DLQ count at 0", |t| t == "0");
    browser.wait_text(&cell("jobs/worker", "state"), "the worker ok", |t| t == "ok");
    eventually("no worker entry listed", || {
        browser.script("return document.querySelectorAll('#dlq-body tr').length", &[]) == json!(0)
    });

    // Purge every validator entry with code handler_reject, through the filter.
    browser.click("#dlq-sub option[value=\"orders/validator\"]");
    browser.type_into("#dlq-code", "handler_reject");
    eventually("the validator's two entries listed", || {
        browser
            .script("return document.querySelectorAll('#dlq-body tr[data-dlq-sub=\"orders/validator\"]').length", &[])
            == json!(2)
    });
    browser.click("#purge-matching");
    browser.confirm("subscription = orders/validator, code = handler_reject");
    browser.wait_text("#action-result", "the purge result", |t| t == "Purged 2 entries");
    assert!(dlq_of(&server, "orders/validator").is_empty());
    browser.wait_text(&cell("orders/validator", "dlq"), "the validator's DLQ count at 0", |t| t == "0");
    browser.wait_text("#dlq-total", "the DLQ total at 0", |t| t == "0");

    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();

    // Everything the page fetched came from the server itself, and no
    // script failed along the way.
    let fetched = browser.script("return performance.getEntriesByType('resource').map((e) => e.name)", &[]);
    let fetched: Vec<&str> = fetched.as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(fetched.iter().any(|u| u.contains("/v1/status")), "{fetched:?}");
    assert!(fetched.iter().all(|u| u.starts_with(&server.url)), "{fetched:?}");
    match browser.script_errors() {
        Some(errors) => assert!(errors.is_empty(), "JavaScript errors: {errors:#?}"),
        None => eprintln!("this chromedriver has no browser log: script error check skipped"),
    }
    eprintln!("dashboard test took {:.1}s", started.elapsed().as_secs_f64());
}

/// The rows of the log browser: their positions, in order.
const LOG_ROWS: &str = "return [...document.querySelectorAll('#log-body tr')].map((tr) => Number(tr.dataset.seq))";

/// The positions in a `GET /v1/log` answer.
fn seqs(answer: &Value) -> Vec<u64> {
    answer["events"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

/// A lineage as `[subscription, state, emitted ids]` rows, sorted.
fn lineage_rows(lineage: &Value) -> Value {
    let mut rows: Vec<Value> = lineage["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let emitted: Vec<Value> =
                s["emitted"].as_array().unwrap().iter().map(|e| e["event"]["id"].clone()).collect();
            json!([s["subscription"], s["state"], emitted])
        })
        .collect();
    rows.sort_by_key(|r| r[0].as_str().unwrap_or_default().to_owned());
    Value::Array(rows)
}

/// The same rows as the page shows them.
const PAGE_LINEAGE: &str = "return [...document.querySelectorAll('#lineage .lin-sub')].map((c) => [c.dataset.lineageSub, \
     c.dataset.state, [...c.querySelectorAll('[data-field=emitted] a.ev')].map((a) => a.dataset.lineageId)]).sort((a, b) => a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)";

#[test]
#[ignore = "needs chromium and chromedriver (Debian: chromium, chromium-driver); run with `cargo test -- --include-ignored`"]
fn the_log_browser_filters_follows_and_opens_lineage_and_the_graph_shows_consumers_and_sinks() {
    let Some((driver_bin, chromium)) = Browser::installed() else {
        panic!("chromium and chromedriver are not installed (Debian: chromium, chromium-driver): this test needs them");
    };
    let dir = tempfile::tempdir().unwrap();
    // The sink's receiver is gone for good: its first 410 disables the sink.
    let (gone_url, gone_requests) = receiver(410);
    let toml = format!("admin_token = \"{TOKEN}\"\n{}{}", weir_tests::ORDERS_ENRICHED, sink(&gone_url));
    let mut server = Server::start(dir.path(), &toml);

    // Orders for three keys, two for `o-2`.
    let batch: Vec<Value> = ["o-1", "o-2", "o-3", "o-2"].iter().map(|k| order(k, "EUR", 1)).collect();
    let (code, published) = server.post("/v1/events", &json!(batch));
    assert_eq!(code, 200, "{published}");
    let o2 = published["events"][1]["id"].as_str().unwrap().to_owned();
    // The orders handled by both order handlers, the first `o-2` validated
    // (an event emitted because of it).
    let lineage_of = |id: &str| {
        let (code, lineage) = server.get(&format!("/v1/events/{id}/lineage"));
        assert_eq!(code, 200, "{lineage}");
        lineage
    };
    eventually("the first o-2 handled by the validator and the audit", || {
        let l = lineage_of(&o2);
        let subs = l["subscriptions"].as_array().unwrap();
        ["orders/validator", "orders/audit"]
            .iter()
            .all(|n| subs.iter().any(|s| s["subscription"] == *n && s["state"] == "handled"))
            && subs
                .iter()
                .any(|s| s["subscription"] == "orders/validator" && !s["emitted"].as_array().unwrap().is_empty())
    });
    eventually("the sink disabled by its receiver's 410", || status_of(&server, "sinks/hook")["state"] == "disabled");
    assert!(gone_requests.load(Ordering::Relaxed) >= 1);

    // A durable consumer with two deliveries in flight.
    create_consumer(&server, "exports", &json!({ "topics": ["orders.>"], "ack_wait": "5m" }));
    let (code, fetched) = server.post("/v1/consumers/exports/fetch", &json!({ "max": 2 }));
    assert_eq!(code, 200, "{fetched}");
    assert_eq!(fetched["deliveries"].as_array().map(Vec::len), Some(2), "{fetched}");

    let browser = Browser::launch(&driver_bin, &chromium, dir.path());
    browser.goto(&format!("{}/", server.url));

    // The graph: the consumer with its lag and in-flight count, and the
    // sink, disabled with the reason, with its depth, as the status says.
    // Its in-flight count holds the two deliveries and the events queued
    // behind their keys.
    let consumer = consumer_of(&server, "exports");
    assert!(consumer["in_flight"].as_u64().unwrap() >= 2, "{consumer}");
    let want = format!("lag {} · in flight {}", consumer["lag"], consumer["in_flight"]);
    browser.wait_text("#graph-svg [data-consumer-lag=\"exports\"]", "the consumer's lag", |t| t == want);
    let node =
        browser.wait_text("#graph-svg [data-consumer=\"exports\"]", "the consumer node", |t| t.contains("exports"));
    assert!(node.contains(&format!("cursor {}", consumer["cursor"])), "{node}");
    assert!(node.contains("delivered 2"), "{node}");
    let in_flight = consumer["in_flight"].to_string();
    browser.wait_text(
        "#consumers-body tr[data-consumer=\"exports\"] td[data-field=\"in_flight\"]",
        "the consumer row",
        |t| t == in_flight,
    );
    let hook = status_of(&server, "sinks/hook");
    let reason = hook["stopped"].as_str().unwrap_or_else(|| panic!("a disabled sink says why: {hook}")).to_owned();
    let depth = hook["lag"].as_u64().unwrap() + hook["parked"].as_u64().unwrap();
    assert!(depth > 0, "the disabled sink holds events: {hook}");
    browser.wait_text("#graph-svg [data-depth=\"sinks/hook\"]", "the sink's depth", |t| {
        t.starts_with(&format!("depth {depth}"))
    });
    browser.wait_script(
        "return document.querySelector('#graph-svg [data-node=\"sinks/hook\"]').dataset.state",
        &json!("disabled"),
        "the sink node disabled",
    );
    let sink_node = browser.text("#graph-svg [data-node=\"sinks/hook\"]").unwrap();
    let shown: String = reason.chars().take(20).collect();
    assert!(sink_node.contains("disabled: ") && sink_node.contains(&shown), "{sink_node} lacks {reason:?}");
    browser.wait_text(&cell("sinks/hook", "failure"), "the sink's reason in the table", |t| t.contains(&shown));

    // The log browser: filter by topic and key; the rows are the server's.
    let (code, answer) = server.get("/v1/log?topics=orders.order.created&key=o-2&limit=100");
    assert_eq!(code, 200, "{answer}");
    let expected = seqs(&answer);
    assert_eq!(expected.len(), 2, "{answer}");
    browser.clear("#log-after");
    browser.type_into("#log-topics", "orders.order.created");
    browser.type_into("#log-key", "o-2");
    browser.click("#log-load");
    browser.wait_script(LOG_ROWS, &json!(expected), "the filtered rows");
    let topics = browser.script(
        "return [...document.querySelectorAll('#log-body td[data-field=topic]')].map((t) => t.textContent)",
        &[],
    );
    assert_eq!(topics, json!(["orders.order.created", "orders.order.created"]));
    let keys = browser
        .script("return [...document.querySelectorAll('#log-body td[data-field=key]')].map((t) => t.textContent)", &[]);
    assert_eq!(keys, json!(["o-2", "o-2"]));
    // Without the key filter there are more (every order).
    let (_, all_orders) = server.get("/v1/log?topics=orders.order.created&limit=100");
    assert_eq!(seqs(&all_orders).len(), 4);

    // Follow live (Server-Sent Events): a matching event appears, one with
    // another key does not.
    browser.click("#log-follow");
    browser
        .wait_text("#log-status", "the stream caught up", |t| t.contains("following live") && t.contains("caught up"));
    let (code, more) = server.post("/v1/events", &json!([order("o-9", "EUR", 1), order("o-2", "EUR", 2)]));
    assert_eq!(code, 200, "{more}");
    let new_seq = more["events"][1]["seq"].as_u64().unwrap();
    let mut followed = expected.clone();
    followed.push(new_seq);
    browser.wait_script(LOG_ROWS, &json!(followed), "the new o-2 event, followed live");

    // The lineage of the first o-2 after its fan-out: the subscriptions,
    // states and emitted events the API reports.
    browser.click(&format!("#log-body tr[data-id=\"{o2}\"]"));
    browser.wait_script(
        "return document.querySelector('#lineage').dataset.id || null",
        &json!(o2),
        "the lineage panel",
    );
    let api = lineage_of(&o2);
    let want = lineage_rows(&api);
    assert!(want.as_array().unwrap().len() >= 3, "validator, audit and sink: {want}");
    browser.wait_script(PAGE_LINEAGE, &want, "the page's lineage matching the API's");
    // One step down the causation chain: the validated event names the
    // order as its cause.
    let emitted = api["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["subscription"] == "orders/validator")
        .and_then(|s| s["emitted"][0]["event"]["id"].as_str())
        .unwrap()
        .to_owned();
    browser.click(&format!(
        "#lineage .lin-sub[data-lineage-sub=\"orders/validator\"] a.ev[data-lineage-id=\"{emitted}\"]"
    ));
    browser.wait_script(
        "return document.querySelector('#lineage').dataset.id || null",
        &json!(emitted),
        "the emitted event's lineage",
    );
    let causes = browser.wait_text("#lineage-causes", "its causes", |t| !t.is_empty());
    assert!(causes.contains(&format!("seq {} · orders.order.created · o-2", expected[0])), "{causes}");
    browser.wait_script(PAGE_LINEAGE, &lineage_rows(&lineage_of(&emitted)), "the emitted event's subscriptions");

    // The server stops (the stream's last words: `closing`) and starts
    // again: the page reconnects from the last position it has, so an event
    // published now appears once, after the others.
    assert!(server.terminate().success(), "{}", server.stderr());
    browser.wait_text("#log-status", "the stream closed", |t| t.contains("reconnecting"));
    server.restart();
    let (code, after_restart) = server.post("/v1/events", &json!([order("o-2", "GBP", 1)]));
    assert_eq!(code, 200, "{after_restart}");
    followed.push(after_restart["events"][0]["seq"].as_u64().unwrap());
    browser.wait_script(LOG_ROWS, &json!(followed), "the event published after the restart, followed");
    browser.wait_text("#log-status", "the stream caught up again", |t| t.contains("following live"));

    // With a token set, following long-polls GET /v1/log?wait= (an
    // EventSource cannot send the Authorization header).
    browser.type_into("#admin-token", TOKEN);
    browser.wait_text("#log-status", "following by long-poll", |t| t.contains("long-poll"));
    let (code, last) = server.post("/v1/events", &json!([order("o-2", "USD", 1)]));
    assert_eq!(code, 200, "{last}");
    followed.push(last["events"][0]["seq"].as_u64().unwrap());
    browser.wait_script(LOG_ROWS, &json!(followed), "the last o-2 event, followed by long-poll");
    let fetched = browser.script("return performance.getEntriesByType('resource').map((e) => e.name)", &[]);
    let fetched: Vec<&str> = fetched.as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(fetched.iter().any(|u| u.contains("/v1/log?") && u.contains("wait=25s")), "{fetched:?}");
    assert!(fetched.iter().all(|u| u.starts_with(&server.url)), "{fetched:?}");

    // The graph follows the consumer's lag as events arrive.
    eventually("the consumer's lag on the page", || {
        let c = consumer_of(&server, "exports");
        browser.text("#graph-svg [data-consumer-lag=\"exports\"]")
            == Some(format!("lag {} · in flight {}", c["lag"], c["in_flight"]))
    });

    match browser.script_errors() {
        Some(errors) => assert!(errors.is_empty(), "JavaScript errors: {errors:#?}"),
        None => eprintln!("this chromedriver has no browser log: script error check skipped"),
    }
}

#[test]
#[ignore = "needs chromium and chromedriver (Debian: chromium, chromium-driver); run with `cargo test -- --include-ignored`"]
fn the_dashboard_lists_running_and_failed_sagas_with_their_timeline() {
    let Some((driver_bin, chromium)) = Browser::installed() else {
        panic!("chromium and chromedriver are not installed (Debian: chromium, chromium-driver): this test needs them");
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &super::sagas::config("60s", 1, 1));
    // One completes; one finds no courier and its payment's refund fails
    // for good: compensation_failed, which an operator must see.
    let orders = json!([
        { "topic": "orders.order.placed", "key": "c-1", "payload": { "order_id": "ok-1" } },
        { "topic": "orders.order.placed", "key": "c-2",
          "payload": { "order_id": "stuck-1", "address": "nowhere", "undo_fail": ["payment"] } },
    ]);
    assert_eq!(server.post("/v1/events", &orders).0, 200);
    eventually("one saga completed and one compensation_failed", || {
        let (_, ok) = server.get("/v1/sagas/ok-1");
        let (_, stuck) = server.get("/v1/sagas/stuck-1");
        ok["status"] == "completed" && stuck["status"] == "compensation_failed"
    });

    let browser = Browser::launch(&driver_bin, &chromium, dir.path());
    browser.goto(&format!("{}/", server.url));
    // The panel appears because a coordinator runs; by default it lists
    // the running and failed instances only.
    browser.wait_text("#saga-body tr[data-saga-id=\"stuck-1\"] [data-state]", "the failed saga", |t| {
        t == "compensation_failed"
    });
    assert!(browser.displayed("#saga-panel"));
    assert_eq!(
        browser.script("return document.querySelectorAll('#saga-body tr[data-saga-id=\"ok-1\"]').length", &[]),
        json!(0)
    );
    // Its timeline: the failure at shipping, then the compensation of the
    // payment that failed.
    browser.click("#saga-body tr[data-saga-id=\"stuck-1\"]");
    browser.wait_text("#saga-detail h3", "the timeline's title", |t| {
        t.contains("stuck-1") && t.contains("compensation_failed")
    });
    let kinds = browser
        .script("return Array.from(document.querySelectorAll('#saga-timeline li')).map((li) => li.dataset.kind)", &[]);
    let kinds: Vec<&str> = kinds.as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"started"), "{kinds:?}");
    assert!(kinds.contains(&"compensation_failed"), "{kinds:?}");
    // Another status shows the completed one.
    browser.script(
        "const s = document.querySelector('#saga-status'); s.value = 'completed'; s.dispatchEvent(new Event('change'));",
        &[],
    );
    browser.wait_text("#saga-body tr[data-saga-id=\"ok-1\"] [data-state]", "the completed saga", |t| t == "completed");
    if let Some(errors) = browser.script_errors() {
        assert!(errors.is_empty(), "the page logged errors: {errors:?}");
    }
}
