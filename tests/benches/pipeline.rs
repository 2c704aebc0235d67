//! End-to-end durable throughput and latency of a 2-way fan-out with
//! idempotency on, Wasm handlers against the same handler code compiled
//! natively into the host. Prints a markdown table for docs/benchmarks.md.
//!
//! Run: `cargo bench -p weir-tests --bench pipeline` (options after `--`:
//! `--events N` (default 200000), `--rate N` and `--seconds N` for the latency
//! run (default 10000/s for 10 s, after 1 s of warm-up), `--quick` for a smoke run).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use weir_abi::{DeliveryRef, Event};
use weir_runtime::config::Config;
use weir_runtime::{IdGenerator, Invocation, Invoke, InvokeError, Runtime};
use weir_sdk::{Context, HandlerError};
use weir_tests::plugins;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The filter plugin's handler, called directly: same code, no Wasm, no
/// encoding.
struct Native;

impl Invoke for Native {
    fn invoke(&mut self, delivery: DeliveryRef<'_>) -> Invocation {
        let mut ctx = Context::new(delivery.subscription, delivery.attempt);
        let result = match filter::handle(delivery.event, &mut ctx) {
            Ok(emits) => Ok(emits.into_iter().map(weir_sdk::Emit::into_abi).collect()),
            Err(HandlerError::Retry(reason)) => Err(InvokeError::HandlerRetry { reason }),
            Err(HandlerError::Reject(reason)) => Err(InvokeError::HandlerReject { reason }),
        };
        Invocation { result, logs: Vec::new(), logs_dropped: 0, fuel_used: None, memory_bytes: None }
    }

    fn name(&self) -> String {
        "filter (native)".into()
    }

    fn version(&self) -> String {
        "native".into()
    }
}

fn config(dir: &std::path::Path) -> Config {
    let text = format!(
        r#"data_dir = {data:?}
[[pipelines]]
name = "bench"
topics = ["orders.order.created"]
[[pipelines.handlers]]
name = "a"
plugin = {filter:?}
[[pipelines.handlers]]
name = "b"
plugin = {filter:?}
"#,
        data = dir.join("data").display().to_string(),
        filter = plugins::FILTER,
    );
    let path = dir.join("weir.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path).unwrap()
}

/// A ~300-byte order; one in ten is large enough to pass the filter.
fn events(ids: &IdGenerator, from: usize, n: usize) -> Vec<Event> {
    (from..from + n)
        .map(|i| {
            let payload = json!({
                "order_id": format!("o-{i:08}"), "customer": format!("c-{:05}", i % 10_000), "currency": "EUR",
                "total_cents": if i % 10 == 0 { 25_000 } else { 1_500 }, "items": 3,
                "note": "ordered through the web shop, deliver to the back door please",
            });
            Event {
                id: ids.next_id(),
                topic: "orders.order.created".into(),
                source: "weir:bench".into(),
                key: Some(format!("o-{}", i % 1_000)),
                schema_version: 1,
                time: weir_runtime::envelope::now_nanos(),
                content_type: "application/json".into(),
                headers: Vec::new(),
                idempotency_key: format!("order-{i}"),
                correlation_id: None,
                causation_id: None,
                payload: serde_json::to_vec(&payload).unwrap(),
            }
        })
        .collect()
}

fn start(dir: &std::path::Path, native: bool) -> Runtime {
    let config = config(dir);
    let mut map: HashMap<String, Box<dyn Invoke>> = HashMap::new();
    if native {
        map.insert("bench/a".into(), Box::new(Native));
        map.insert("bench/b".into(), Box::new(Native));
    }
    Runtime::start_with_native(&config, None, map).unwrap()
}

fn min_cursor(rt: &Runtime) -> u64 {
    ["bench/a", "bench/b"].iter().map(|s| rt.counters(s).unwrap().cursor.load(Ordering::Relaxed)).min().unwrap()
}

/// Publish every batch and return once all are acknowledged. Many producers
/// at once, as over HTTP: up to 16 batches in flight. The publisher blocks
/// (as a client waiting on its socket would) rather than spinning, so it does
/// not steal CPU from the runtime.
fn publish_all(rt: &Runtime, batches: impl IntoIterator<Item = Vec<Event>>) {
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let mut in_flight = 0;
    for batch in batches {
        if in_flight >= 16 {
            done_rx.recv().unwrap();
            in_flight -= 1;
        }
        in_flight += 1;
        let done = done_tx.clone();
        rt.publish(
            batch,
            Box::new(move |r| {
                r.unwrap();
                let _ = done.send(());
            }),
        );
    }
    for _ in 0..in_flight {
        done_rx.recv().unwrap();
    }
}

struct Throughput {
    publish_secs: f64,
    total_secs: f64,
    commits: u64,
    commands: u64,
}

fn throughput(native: bool, n: usize) -> Throughput {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(start(dir.path(), native));
    let ids = IdGenerator::new();
    let batches: Vec<Vec<Event>> = (0..n).step_by(500).map(|i| events(&ids, i, 500.min(n - i))).collect();
    let started = Instant::now();
    publish_all(&rt, batches);
    let publish_secs = started.elapsed().as_secs_f64();
    // Handled = both subscriptions committed past every event (their own
    // emits included).
    loop {
        let head = rt.store().head();
        if min_cursor(&rt) >= head && rt.is_idle() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let total_secs = started.elapsed().as_secs_f64();
    let (commits, commands) = rt.store().commit_stats();
    Arc::try_unwrap(rt).unwrap().shutdown().unwrap();
    Throughput { publish_secs, total_secs, commits, commands }
}

/// Publish `rate` events/s for `seconds`, in ticks of 1 ms, and measure for
/// each event the time from the publish call to both subscriptions having
/// committed its outcome.
fn latency(native: bool, rate: usize, seconds: u64) -> (Duration, Duration, Duration, usize) {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(start(dir.path(), native));
    let ids = IdGenerator::new();
    let per_tick = (rate / 1_000).max(1);
    let starts: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
    // One extra second first, not measured: the steady state is the point
    // (first calls fault in the instance's pages and the allocator's arenas).
    let warmup = rate;
    let total = (rate as u64 * seconds) as usize + warmup;
    let monitor = {
        let (rt, starts) = (Arc::clone(&rt), Arc::clone(&starts));
        std::thread::spawn(move || {
            let mut samples = Vec::with_capacity(total);
            let mut next = 0usize;
            while samples.len() < total {
                let cursor = min_cursor(&rt);
                let now = Instant::now();
                let starts = starts.lock().unwrap();
                while next < starts.len() && starts[next].0 < cursor {
                    samples.push(now - starts[next].1);
                    next += 1;
                }
                drop(starts);
                std::thread::sleep(Duration::from_micros(100));
            }
            samples
        })
    };
    let began = Instant::now();
    let mut sent = 0usize;
    let mut tick = 0u64;
    while sent < total {
        let due = began + Duration::from_millis(tick);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let batch = events(&ids, sent, per_tick.min(total - sent));
        let len = batch.len();
        let at = Instant::now();
        let starts = Arc::clone(&starts);
        rt.publish(
            batch,
            Box::new(move |r| {
                let published = r.unwrap();
                let mut starts = starts.lock().unwrap();
                for p in published {
                    starts.push((p.seq, at));
                }
                starts.sort_by_key(|s| s.0);
            }),
        );
        sent += len;
        tick += 1;
    }
    let mut samples = monitor.join().unwrap().split_off(warmup);
    Arc::try_unwrap(rt).unwrap().shutdown().unwrap();
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    (pct(0.50), pct(0.99), pct(0.999), samples.len())
}

/// Throughput of the 2-way fan-out with the `versioned` plugins, swapping
/// both handlers between v1 and v2 every `every` (or never), and for each
/// swap the time from `deploy` returning to the first event handled by the
/// new version being committed.
fn swaps(n: usize, every: Option<Duration>) -> (f64, Vec<Duration>, Vec<Duration>, Vec<Duration>) {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "data_dir = {:?}\n[[pipelines]]\nname = \"bench\"\ntopics = [\"orders.order.created\"]\n\
         [[pipelines.handlers]]\nname = \"a\"\nplugin = {v1:?}\n[[pipelines.handlers]]\nname = \"b\"\nplugin = {v1:?}\n",
        dir.path().join("data").display().to_string(),
        v1 = plugins::VERSIONED_V1,
    );
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, text).unwrap();
    let rt = Arc::new(Runtime::start(&Config::load(&path).unwrap()).unwrap());
    let modules = [std::fs::read(plugins::VERSIONED_V1).unwrap(), std::fs::read(plugins::VERSIONED_V2).unwrap()];
    let publisher = {
        let rt = Arc::clone(&rt);
        std::thread::spawn(move || {
            let ids = IdGenerator::new();
            publish_all(&rt, (0..n).step_by(500).map(|i| events(&ids, i, 500.min(n - i))));
        })
    };
    let started = Instant::now();
    let (mut to_first, mut to_invoked, mut call) = (Vec::new(), Vec::new(), Vec::new());
    let a = rt.counters("bench/a").unwrap();
    let mut next = 1;
    loop {
        let head = rt.store().head();
        if publisher.is_finished() && min_cursor(&rt) >= head && rt.is_idle() {
            break;
        }
        let Some(every) = every else {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        std::thread::sleep(every);
        // Swap only while both subscriptions still have inputs to handle
        // (the log also holds their outputs, which they skip), so the switch
        // happens mid-flow.
        if ["bench/a", "bench/b"]
            .iter()
            .any(|s| rt.counters(s).unwrap().handled.load(Ordering::Relaxed) as usize + 20_000 >= n)
        {
            continue;
        }
        let t = Instant::now();
        for handler in ["bench/a", "bench/b"] {
            rt.deploy(handler, modules[next].clone(), "bench", &[]).unwrap();
        }
        next = 1 - next;
        let returned = Instant::now();
        call.push(returned - t);
        // First invocation by the new version of bench/a, then its commit.
        let handled = a.handled.load(Ordering::Relaxed);
        let give_up = returned + Duration::from_secs(10);
        // Poll gently: a spinning thread would take a core from the workers.
        while a.handled.load(Ordering::Relaxed) == handled && Instant::now() < give_up {
            std::thread::sleep(Duration::from_micros(50));
        }
        to_invoked.push(returned.elapsed());
        let cursor = a.cursor.load(Ordering::Relaxed);
        while a.cursor.load(Ordering::Relaxed) == cursor && Instant::now() < give_up {
            std::thread::sleep(Duration::from_micros(50));
        }
        to_first.push(returned.elapsed());
    }
    let secs = started.elapsed().as_secs_f64();
    publisher.join().unwrap();
    Arc::try_unwrap(rt).unwrap().shutdown().unwrap();
    (n as f64 / secs, to_first, to_invoked, call)
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n = arg("--events", if quick { 5_000 } else { 200_000 });
    let rate = arg("--rate", 10_000);
    let seconds = arg("--seconds", if quick { 1 } else { 10 }) as u64;
    println!("2-way fan-out, filter handler, {n} events of ~300 bytes, published in process (durable, group commit)\n");
    println!(
        "| handlers | publish (durable) | end to end | events/s end to end | group commits | commands per commit |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for native in [false, true] {
        let t = throughput(native, n);
        println!(
            "| {} | {:.2} s | {:.2} s | **{:.0}** | {} | {:.1} |",
            if native { "native (same code, no Wasm)" } else { "Wasm" },
            t.publish_secs,
            t.total_secs,
            n as f64 / t.total_secs,
            t.commits,
            t.commands as f64 / t.commits.max(1) as f64
        );
    }
    println!("\nhot swap: the same fan-out with the `versioned` plugin, both handlers swapped v1 ↔ v2\n");
    println!(
        "| run | events/s end to end | swaps | deploy call (median) | deploy return → first event handled by the new version (median) | … and committed (median, max) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for every in [None, Some(Duration::from_secs(1))] {
        let (rate, mut first, mut invoked, mut call) = swaps(2 * n, every);
        first.sort();
        invoked.sort();
        call.sort();
        let med =
            |v: &[Duration]| v.get(v.len() / 2).map_or("-".into(), |d| format!("{:.2} ms", d.as_secs_f64() * 1e3));
        let max = first.last().map_or("-".into(), |d| format!("{:.2} ms", d.as_secs_f64() * 1e3));
        println!(
            "| {} | {rate:.0} | {} | {} | {} | {}, {max} |",
            if every.is_some() { "a swap every second" } else { "no swaps" },
            call.len(),
            med(&call),
            med(&invoked),
            med(&first)
        );
    }
    println!("\npublish→handled latency at {rate} events/s for {seconds} s (handled = both subscriptions committed)\n");
    println!("| handlers | p50 | p99 | p99.9 | samples |");
    println!("|---|---:|---:|---:|---:|");
    for native in [false, true] {
        // Let the kernel write back what the earlier runs left (they wrote
        // hundreds of MB): its flushes would otherwise stall this run's fsyncs.
        let _ = std::process::Command::new("sync").status();
        std::thread::sleep(Duration::from_secs(3));
        let (p50, p99, p999, count) = latency(native, rate, seconds);
        println!(
            "| {} | {:.2} ms | {:.2} ms | {:.2} ms | {count} |",
            if native { "native" } else { "Wasm" },
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            p999.as_secs_f64() * 1e3
        );
    }
}
