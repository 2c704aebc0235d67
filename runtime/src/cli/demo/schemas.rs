//! `weir demo schemas`: versioned events end to end (docs/schemas.md). Orders
//! v1 carry `amount` as a number, v2 as `{value, currency}`; a v1 producer
//! and a v2 producer publish side by side, every event checked against its
//! version's schema as `POST /v1/events` checks it; the handler accepts v2
//! only and is given only v2, v1 events upcast at delivery. The upcaster
//! first deployed is a buggy build: the events it fails are dead-lettered
//! as stored (v1), the real upcaster is deployed live, and a redrive
//! handles each of them, once. The log is never rewritten.
//!
//! Everything runs in this process on the embedded store. Each step prints
//! the `weir` command that does the same against a server, and the demo
//! fails (exit 1) when what it shows did not happen.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use weir_runtime::{Config, DlqFilter, Ingest, Runtime};

/// The plugins it runs, by file name.
const PLUGINS: [&str; 3] = ["orders_v2", "orders_upcaster_broken", "orders_upcaster"];

const TOPIC: &str = "orders.order.created";
const HANDLER: &str = "orders/v2";
const UPCASTER: &str = "upcasters/orders-v2";
const IDLE: Duration = Duration::from_secs(30);

/// The orders: (id, producer, version, amount as that version writes it).
fn orders() -> Vec<(&'static str, &'static str, u32, Value)> {
    vec![
        ("o-1", "shop-v1", 1, json!(20)),
        ("o-2", "shop-v2", 2, json!({"value": 35.0, "currency": "USD"})),
        ("o-3", "shop-v1", 1, json!(12.5)),
        ("o-4", "shop-v2", 2, json!({"value": 18.2, "currency": "EUR"})),
        ("o-5", "shop-v1", 1, json!(7.99)),
        ("o-6", "shop-v2", 2, json!({"value": 5, "currency": "GBP"})),
    ]
}

/// The v1 orders the buggy upcaster fails: those with cents.
const FAILED: [&str; 2] = ["o-3", "o-5"];

pub(crate) fn run(plugins: &Path, data_dir: Option<&Path>) -> anyhow::Result<ExitCode> {
    for plugin in PLUGINS {
        let path = plugins.join(format!("{plugin}.wasm"));
        if !path.is_file() {
            bail!(
                "{} is missing: build the example plugins first (scripts/demo.sh does), or point --plugins at them",
                path.display()
            );
        }
    }
    let temp;
    let data_dir = match data_dir {
        Some(dir) => dir.to_owned(),
        None => {
            temp = tempfile::tempdir().context("cannot create a temporary directory")?;
            temp.path().to_owned()
        }
    };
    let plugins = std::fs::canonicalize(plugins)?;
    let toml = format!(
        r#"
data_dir = {data:?}

# Two versions of one topic. The shapes differ, so no compatibility holds
# between them: an upcaster bridges v1 to v2.
[[schemas]]
topic = "orders.order.created"
compatibility = "none"

[[schemas.versions]]
version = 1                           # amount: a number of euros
schema = '''{{"type": "object", "required": ["id", "amount"],
  "properties": {{"id": {{"type": "string", "minLength": 1, "maxLength": 64}},
                 "amount": {{"type": "number", "minimum": 0}}}}}}'''

[[schemas.versions]]
version = 2                           # amount: {{value, currency}}
schema = '''{{"type": "object", "required": ["id", "amount"],
  "properties": {{"id": {{"type": "string", "minLength": 1, "maxLength": 64}},
                 "amount": {{"type": "object", "required": ["value", "currency"], "additionalProperties": false,
                            "properties": {{"value": {{"type": "number", "minimum": 0}},
                                           "currency": {{"enum": ["EUR", "USD", "GBP"]}}}}}}}}}}'''

# The upcaster v1 -> v2, applied at delivery. This first build is buggy.
[[upcasters]]
name = "orders-v2"
topic = "orders.order.created"
from = 1
to = 2
plugin = {broken:?}

# A handler written for v2 only: it declares schema_versions = [2].
[[pipelines]]
name = "orders"
topics = ["orders.order.created"]

[[pipelines.handlers]]
name = "v2"
plugin = {handler:?}
"#,
        data = data_dir.join("data").display().to_string(),
        broken = plugins.join("orders_upcaster_broken.wasm").display().to_string(),
        handler = plugins.join("orders_v2.wasm").display().to_string(),
    );
    let config_path = data_dir.join("weir.toml");
    std::fs::create_dir_all(&data_dir)?;
    std::fs::write(&config_path, &toml)?;
    println!("== configuration ({})", config_path.display());
    println!("{}", toml.trim());
    let config = Config::load(&config_path)?;
    let runtime = Runtime::start(&config)?;
    let result = tour(&runtime, &plugins.join("orders_upcaster.wasm"));
    runtime.shutdown()?;
    result?;
    Ok(ExitCode::SUCCESS)
}

/// Publish one JSON envelope as `POST /v1/events` does: parsed and checked
/// against the `[[schemas]]`, then appended. The error's code and text when
/// refused.
fn publish(rt: &Runtime, envelope: &Value) -> anyhow::Result<Result<u64, (String, String)>> {
    let ingest = Ingest {
        ids: rt.ids(),
        source: "weir:demo",
        max_payload_bytes: rt.config().max_payload_bytes,
        schemas: Some(&rt.config().schemas),
    };
    let events = match ingest.json(envelope.to_string().as_bytes()) {
        Ok(events) => events,
        Err(e) => return Ok(Err((e.code().to_owned(), e.to_string()))),
    };
    rt.config().schemas.observe(&events);
    let published = rt.publish_blocking(events)?;
    Ok(Ok(published.first().map_or(0, |p| p.seq)))
}

/// Each time the handler was given an order: (version, value, currency).
type Given = (u64, f64, String);

/// What the handler saw, from its `orders.order.seen` events: per order id,
/// each time it was given the order.
fn seen(rt: &Runtime) -> anyhow::Result<BTreeMap<String, Vec<Given>>> {
    let mut seen: BTreeMap<String, Vec<Given>> = BTreeMap::new();
    for (_, event) in rt.store().read_log(0, usize::MAX)? {
        if event.topic != "orders.order.seen" {
            continue;
        }
        let s: Value = serde_json::from_slice(&event.payload).context("an orders.order.seen payload")?;
        let id = s["id"].as_str().context("orders.order.seen without an id")?.to_owned();
        let version = s["version"].as_u64().context("orders.order.seen without a version")?;
        let value = s["value"].as_f64().context("orders.order.seen without a value")?;
        let currency = s["currency"].as_str().unwrap_or("?").to_owned();
        seen.entry(id).or_default().push((version, value, currency));
    }
    Ok(seen)
}

fn show_seen(seen: &BTreeMap<String, Vec<Given>>, versions: &BTreeMap<&str, u32>) {
    println!("  {:<6} {:<14} {:<12} {:>8} {:<8}", "ORDER", "PUBLISHED AS", "GIVEN AS", "VALUE", "CURRENCY");
    for (id, times) in seen {
        for (version, value, currency) in times {
            let published = versions.get(id.as_str()).map_or_else(|| "?".to_owned(), |v| format!("v{v}"));
            println!("  {id:<6} {published:<14} {:<12} {value:>8.2} {currency:<8}", format!("v{version}"));
        }
    }
}

/// The demo's steps.
fn tour(rt: &Runtime, fixed: &Path) -> anyhow::Result<()> {
    println!("\n== two producers publish side by side (checked as POST /v1/events checks them)");
    let mut versions = BTreeMap::new();
    for (id, producer, version, amount) in orders() {
        let envelope = json!({"topic": TOPIC, "key": id, "idempotency_key": id, "source": producer,
                              "schema_version": version, "payload": {"id": id, "amount": amount}});
        match publish(rt, &envelope)? {
            Ok(seq) => println!("  {producer}  v{version}  {id}  amount {amount:<36} stored at seq {seq}"),
            Err((code, message)) => bail!("{id} was refused ({code}): {message}"),
        }
        versions.insert(id, version);
    }
    // A v1 producer sending v2's shape: refused at ingest, nothing stored.
    let wrong = json!({"topic": TOPIC, "key": "o-7", "source": "shop-v1", "schema_version": 1,
                       "payload": {"id": "o-7", "amount": {"value": 3, "currency": "EUR"}}});
    let head = rt.store().head();
    match publish(rt, &wrong)? {
        Ok(seq) => bail!("a v1 order with an object amount was stored at seq {seq}, not refused"),
        Err((code, message)) => {
            println!("  shop-v1  v1  o-7  amount {{\"value\":3,...}}  REFUSED (422 {code}): {message}");
            if code != "schema_violation" || !message.contains("/amount") || rt.store().head() != head {
                bail!("o-7 should be refused as a schema_violation at /amount with nothing stored: {code}: {message}");
            }
        }
    }

    if !rt.wait_idle(IDLE) {
        bail!("the pipeline did not settle within {} s", IDLE.as_secs());
    }
    println!("\n== what the v2-only handler was given (its orders.order.seen events)");
    let first = seen(rt)?;
    show_seen(&first, &versions);
    let expected: Vec<&str> = versions.keys().copied().filter(|id| !FAILED.contains(id)).collect();
    if first.keys().map(String::as_str).collect::<Vec<_>>() != expected {
        bail!("the handler should have seen {expected:?}, it saw {:?}", first.keys().collect::<Vec<_>>());
    }
    if first.values().flatten().any(|(version, ..)| *version != 2) {
        bail!("the handler was given a version other than 2");
    }
    println!("  every order it was given was v2: the v1 ones after the upcaster; o-1's currency is v1's EUR");

    println!("\n== dead-letter queue (weir dlq list): the buggy upcaster failed the amounts with cents");
    let dlq = rt.dlq(&DlqFilter::default())?;
    for entry in &dlq {
        let payload = String::from_utf8_lossy(&entry.event.payload);
        println!("  {} seq {} [{}] {}", entry.subscription, entry.seq, entry.code, entry.message);
        println!("      kept as stored: v{} {payload}", entry.event.schema_version);
    }
    let mut failed: Vec<&str> = dlq.iter().filter_map(|e| e.event.key.as_deref()).collect();
    failed.sort_unstable();
    if failed != FAILED {
        bail!("the DLQ should hold {FAILED:?}, it holds {failed:?}");
    }
    for entry in &dlq {
        let payload: Value = serde_json::from_slice(&entry.event.payload)?;
        if entry.code != "upcast_failed" || entry.event.schema_version != 1 || !payload["amount"].is_number() {
            bail!("{} should be upcast_failed with its v1 event as stored: {entry:?}", entry.seq);
        }
    }

    println!("\n== the fix, deployed live (weir plugin deploy {UPCASTER} orders_upcaster.wasm)");
    let module = std::fs::read(fixed).with_context(|| format!("cannot read {}", fixed.display()))?;
    let report = rt.deploy(UPCASTER, module, "weir demo", &[])?;
    println!(
        "  {UPCASTER}: version {} (sha256 {}…), active now",
        report.version,
        report.sha256.get(..12).unwrap_or(&report.sha256)
    );

    println!("\n== redrive (weir dlq redrive --subscription {HANDLER} --code upcast_failed)");
    let filter =
        DlqFilter { subscription: Some(HANDLER.into()), code: Some("upcast_failed".into()), ..DlqFilter::default() };
    let redriven = rt.redrive(&filter)?;
    if !rt.wait_idle(IDLE) {
        bail!("the redrive did not settle within {} s", IDLE.as_secs());
    }
    let again = rt.redrive(&filter)?;
    if !rt.wait_idle(IDLE) {
        bail!("the second redrive did not settle within {} s", IDLE.as_secs());
    }
    println!("  redriven: {}; a second redrive found {} to redrive", redriven.redriven, again.redriven);
    if redriven.redriven != FAILED.len() || again.redriven != 0 {
        bail!("expected {} entries redriven, then none: {redriven:?}, {again:?}", FAILED.len());
    }
    let left = rt.dlq(&DlqFilter::default())?;
    if !left.is_empty() {
        bail!("the DLQ still holds {} entries after the redrive", left.len());
    }
    println!("  the DLQ is empty");

    println!("\n== what the handler was given, in all");
    let all = seen(rt)?;
    show_seen(&all, &versions);
    if all.keys().map(String::as_str).collect::<Vec<_>>() != versions.keys().copied().collect::<Vec<_>>() {
        bail!("after the redrive the handler should have seen every order, it saw {:?}", all.keys());
    }
    if let Some((id, times)) = all.iter().find(|(_, t)| t.len() != 1) {
        bail!("{id} was handled {} times, not once", times.len());
    }
    if all.values().flatten().any(|(version, ..)| *version != 2) {
        bail!("the handler was given a version other than 2");
    }
    println!("  each order once, each as v2");

    println!("\n== the log (weir log --topics {TOPIC}): the events as published, never rewritten");
    for (seq, event) in rt.store().read_log(0, usize::MAX)? {
        if event.topic != TOPIC {
            continue;
        }
        let key = event.key.as_deref().unwrap_or("-");
        println!("  {seq:>3}  {key}  v{}  {}", event.schema_version, String::from_utf8_lossy(&event.payload));
        if versions.get(key) != Some(&event.schema_version) {
            bail!("{key} is stored as v{}, published as {:?}", event.schema_version, versions.get(key));
        }
    }

    println!(
        "\nProducers of both versions publish side by side; the handler only ever sees v2. A broken\n\
         upcaster dead-letters events as they were stored, so deploying a fixed one and redriving\n\
         repairs them, each handled once. See docs/schemas.md (Upcasters)."
    );
    Ok(())
}
