//! The operator's dashboard at `GET /`, driven end to end in headless
//! Chromium through chromedriver (W3C WebDriver over HTTP, spoken with ureq):
//! the page renders every subscription, its numbers follow events as they
//! flow, and the DLQ browser inspects, redrives (refused without the admin
//! token, then accepted with it) and purges entries, which the server's own
//! API confirms.
//!
//! Needs `chromium` and `chromedriver` (Debian: `chromium`, `chromium-driver`),
//! so it is ignored by default; `cargo test -- --include-ignored` runs it
//! (`.ci/run` installs both and does), and it fails without them. It writes
//! a screenshot to
//! `target/dashboard.png`, and to `docs/dashboard.png` when
//! `WEIR_UPDATE_SCREENSHOT=1`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
"#;

/// `admin_token` first (it continues the `[http]` table that
/// `Server::start` writes before this text), then the demo's pipelines, then
/// a flaky charger and a worker that rejects keys starting with `bad`.
fn config() -> String {
    format!("admin_token = \"{TOKEN}\"\n{}{MORE}", weir_tests::ORDERS_ENRICHED)
}

const SUBSCRIPTIONS: [&str; 5] =
    ["orders/validator", "orders/audit", "enrich/enricher", "payments/charger", "jobs/worker"];

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
    let server = Server::start(dir.path(), &config());

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
        browser.wait_text(&cell(sub, "name"), "a row per subscription", |t| t == sub);
    }
    let rows = browser.script("return document.querySelectorAll('#subs-body tr[data-sub]').length", &[]);
    assert_eq!(rows, json!(SUBSCRIPTIONS.len()));
    browser.wait_text(&cell("jobs/worker", "dlq"), "the worker's DLQ count", |t| t == "1");
    browser.wait_text(&cell("jobs/worker", "state"), "the worker failing", |t| t == "failing");
    browser.wait_text(&cell("orders/validator", "dlq"), "the validator's DLQ count", |t| t == "2");
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
