//! The Weir side of the suite: runtimes started in this process for each
//! scenario, fed through `Runtime::publish` (durable before acknowledgement,
//! as over HTTP), and timed until every subscription has committed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use weir_abi::{DeliveryRef, Event};
use weir_runtime::Config;
use weir_runtime::{Attempt, Failure, IdGenerator, Invoke, Runtime};
use weir_sdk::{Context, HandlerError};
use weir_tests::plugins;

/// The filter plugin's handler, called directly: same code, no Wasm, no
/// encoding. The baseline of `s5`.
struct Native;

impl Invoke for Native {
    fn invoke(&mut self, delivery: DeliveryRef<'_>) -> Attempt {
        let mut ctx = Context::new(delivery.subscription, delivery.attempt);
        let result = match filter::handle(delivery.event, &mut ctx) {
            Ok(emits) => Ok(emits.into_iter().map(weir_sdk::Emit::into_abi).collect()),
            Err(HandlerError::Retry(reason)) => Err(Failure::retry(reason)),
            Err(HandlerError::Reject(reason)) => Err(Failure::reject(reason)),
        };
        Attempt::new(result)
    }

    fn name(&self) -> String {
        "filter (native)".into()
    }

    fn version(&self) -> String {
        "native".into()
    }
}

/// What a Weir scenario runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// `s1`: one pipeline, one handler.
    Single,
    /// `s2`: one pipeline, two handlers (fan-out).
    FanOut,
    /// `s3`: three pipelines chained: each stage's output is the next
    /// stage's input.
    Chain,
}

/// A Weir scenario's settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Setup {
    pub(crate) shape: Shape,
    /// Native handler code instead of Wasm (`s5`).
    pub(crate) native: bool,
    /// A fresh instance per event (`s4`).
    pub(crate) fresh: bool,
    /// Latency histograms on (the default) or off.
    pub(crate) metrics: bool,
    /// Schemas and upcasters on the input topic (the `schemas` scenario).
    pub(crate) schemas: crate::schemas::Variant,
}

impl Setup {
    pub(crate) const fn new(shape: Shape) -> Self {
        Self { shape, native: false, fresh: false, metrics: true, schemas: crate::schemas::Variant::None }
    }

    fn subscriptions(self) -> &'static [&'static str] {
        match self.shape {
            Shape::Single => &["bench/a"],
            Shape::FanOut => &["bench/a", "bench/b"],
            Shape::Chain => &["stage1/relay", "stage2/relay", "stage3/filter"],
        }
    }

    fn config(self, dir: &std::path::Path) -> Config {
        let instance = if self.fresh { "fresh" } else { "reuse" };
        let plugin = self.schemas.handler_plugin();
        let handler = |name: &str, config: &str| {
            format!(
                "[[pipelines.handlers]]\nname = \"{name}\"\nplugin = {plugin:?}\nlimits = {{ instance = \"{instance}\" }}\n{config}"
            )
        };
        let pipeline = |name: &str, topic: &str| format!("[[pipelines]]\nname = \"{name}\"\ntopics = [\"{topic}\"]\n");
        let mut text =
            format!("data_dir = {:?}\n[metrics]\nenabled = {}\n", dir.join("data").display().to_string(), self.metrics);
        text += &self.schemas.config();
        match self.shape {
            Shape::Single => {
                text += &pipeline("bench", "orders.order.created");
                text += &handler("a", "");
            }
            Shape::FanOut => {
                text += &pipeline("bench", "orders.order.created");
                text += &handler("a", "");
                text += &handler("b", "");
            }
            Shape::Chain => {
                // Stages 1 and 2 pass every event on (threshold 0) to the
                // next stage's topic; stage 3 is the usual filter.
                let relay = |to: &str| format!("config = {{ min_total_cents = 0, output_topic = \"{to}\" }}\n");
                text += &pipeline("stage1", "orders.order.created");
                text += &handler("relay", &relay("orders.order.stage2"));
                text += &pipeline("stage2", "orders.order.stage2");
                text += &handler("relay", &relay("orders.order.stage3"));
                text += &pipeline("stage3", "orders.order.stage3");
                text += &handler("filter", "");
            }
        }
        let path = dir.join("weir.toml");
        std::fs::write(&path, &text).expect("write the bench config");
        Config::load(&path).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    fn start(self, dir: &std::path::Path) -> Runtime {
        let config = self.config(dir);
        let mut native: HashMap<String, Box<dyn Invoke>> = HashMap::new();
        if self.native {
            for name in self.subscriptions() {
                native.insert((*name).to_owned(), Box::new(Native));
            }
        }
        Runtime::start_with_native(&config, None, native).expect("start the runtime")
    }
}

/// The JSON payload of order `i`: ~300 bytes with its envelope; one in ten
/// is large enough to pass the filter.
pub(crate) fn payload(i: usize) -> Vec<u8> {
    let payload = json!({
        "order_id": format!("o-{i:08}"), "customer": format!("c-{:05}", i % 10_000), "currency": "EUR",
        "total_cents": if i.is_multiple_of(10) { 25_000 } else { 1_500 }, "items": 3,
        "note": "ordered through the web shop, deliver to the back door please",
    });
    serde_json::to_vec(&payload).expect("a JSON value serializes")
}

pub(crate) fn events(ids: &IdGenerator, from: usize, n: usize) -> Vec<Event> {
    (from..from + n)
        .map(|i| Event {
            id: ids.next_id(),
            topic: "orders.order.created".into(),
            source: "weir:bench".into(),
            key: Some(format!("o-{}", i % 1_000)),
            schema_version: 1,
            time: weir_runtime::now_nanos(),
            content_type: "application/json".into(),
            headers: Vec::new(),
            idempotency_key: format!("order-{i}"),
            correlation_id: None,
            causation_id: None,
            payload: payload(i),
        })
        .collect()
}

fn min_cursor(rt: &Runtime, subs: &[&str]) -> u64 {
    subs.iter().map(|s| rt.counters(s).map_or(0, |c| c.cursor)).min().unwrap_or(0)
}

/// Publish every batch and return once all are acknowledged: up to 16
/// batches in flight, as many HTTP clients would have. The publisher blocks
/// as a client waiting on its socket would, so it takes no CPU from the
/// runtime while it waits.
pub(crate) fn publish_all(rt: &Runtime, batches: impl IntoIterator<Item = Vec<Event>>) {
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let mut in_flight = 0;
    for batch in batches {
        if in_flight >= 16 {
            done_rx.recv().expect("a publish answers");
            in_flight -= 1;
        }
        in_flight += 1;
        let done = done_tx.clone();
        rt.publish(
            batch,
            Box::new(move |r| {
                r.expect("durable publish");
                let _ = done.send(());
            }),
        );
    }
    for _ in 0..in_flight {
        done_rx.recv().expect("a publish answers");
    }
}

/// End-to-end throughput of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Throughput {
    pub(crate) events: usize,
    pub(crate) publish_secs: f64,
    pub(crate) total_secs: f64,
    pub(crate) events_per_sec: f64,
    pub(crate) group_commits: u64,
    pub(crate) commands_per_commit: f64,
}

/// Publish `n` events and wait until every subscription has committed past
/// all of them (and past what the handlers emitted).
pub(crate) fn throughput(setup: Setup, n: usize) -> Throughput {
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = Arc::new(setup.start(dir.path()));
    let ids = IdGenerator::new();
    let mut batches: Vec<Vec<Event>> = (0..n).step_by(500).map(|i| events(&ids, i, 500.min(n - i))).collect();
    setup.schemas.prepare(&mut batches);
    let subs = setup.subscriptions();
    let started = Instant::now();
    publish_all(&rt, batches.into_iter().map(|b| setup.schemas.admit(&rt, b)));
    let publish_secs = started.elapsed().as_secs_f64();
    loop {
        if min_cursor(&rt, subs) >= rt.store().head() && rt.is_idle() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let total_secs = started.elapsed().as_secs_f64();
    let (commits, commands) = rt.store().commit_stats();
    setup.schemas.verify(&rt, subs, n);
    stop(rt);
    Throughput {
        events: n,
        publish_secs,
        total_secs,
        events_per_sec: n as f64 / total_secs,
        group_commits: commits,
        commands_per_commit: commands as f64 / commits.max(1) as f64,
    }
}

pub(crate) fn stop(rt: Arc<Runtime>) {
    match Arc::try_unwrap(rt) {
        Ok(rt) => rt.shutdown().expect("clean shutdown"),
        Err(_) => panic!("the runtime is still shared"),
    }
}

/// Publish→handled latency percentiles.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Latency {
    pub(crate) rate: usize,
    pub(crate) seconds: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) samples: usize,
}

impl Latency {
    pub(crate) fn from_samples(rate: usize, seconds: u64, mut samples: Vec<Duration>) -> Self {
        samples.sort();
        let pct = |p: f64| {
            samples
                .get(((samples.len() as f64 * p) as usize).min(samples.len().saturating_sub(1)))
                .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
        };
        Self { rate, seconds, p50_ms: pct(0.50), p99_ms: pct(0.99), p999_ms: pct(0.999), samples: samples.len() }
    }
}

/// Publish `rate` events/s for `seconds` in 1 ms ticks, after one second of
/// warm-up that is not measured, and time each event from the publish call
/// to every subscription having committed its outcome.
pub(crate) fn latency(setup: Setup, rate: usize, seconds: u64) -> Latency {
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = Arc::new(setup.start(dir.path()));
    let ids = IdGenerator::new();
    let subs = setup.subscriptions();
    let per_tick = (rate / 1_000).max(1);
    let starts: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
    let warmup = rate;
    let total = (rate as u64 * seconds) as usize + warmup;
    let monitor = {
        let (rt, starts) = (Arc::clone(&rt), Arc::clone(&starts));
        std::thread::spawn(move || {
            let mut samples = Vec::with_capacity(total);
            let mut next = 0usize;
            while samples.len() < total {
                let cursor = min_cursor(&rt, subs);
                let now = Instant::now();
                let starts = starts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
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
    let (mut sent, mut tick) = (0usize, 0u64);
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
                let published = r.expect("durable publish");
                let mut starts = starts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                for p in published {
                    starts.push((p.seq, at));
                }
                starts.sort_by_key(|s| s.0);
            }),
        );
        sent += len;
        tick += 1;
    }
    let samples = monitor.join().expect("monitor thread").split_off(warmup);
    stop(rt);
    Latency::from_samples(rate, seconds, samples)
}

/// RSS of this process (the runtime runs in it) under a steady load.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Rss {
    pub(crate) rate: usize,
    pub(crate) seconds: u64,
    /// One sample per second, MiB.
    pub(crate) samples_mib: Vec<f64>,
    /// The data directory's size at each sample, MiB: redb caches the
    /// store's pages (up to its cache size), so RSS follows the file until
    /// the cache is full.
    pub(crate) store_mib: Vec<f64>,
    pub(crate) store_end_mib: f64,
    pub(crate) first_mib: f64,
    /// At the end of the first third of the run.
    pub(crate) warm_mib: f64,
    pub(crate) end_mib: f64,
    pub(crate) max_mib: f64,
    /// How far the subscriptions were behind the log at the end.
    pub(crate) lag_at_end: u64,
    /// Publishes refused as overloaded (0 unless the rate is too high).
    pub(crate) refused_publishes: u64,
}

/// `VmRSS` of this process, MiB.
pub(crate) fn vm_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// The size of the files in `dir` (not recursive), MiB.
fn dir_mib(dir: &std::path::Path) -> f64 {
    let bytes: u64 = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok()?.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum())
        .unwrap_or(0);
    bytes as f64 / (1u64 << 20) as f64
}

/// Publish `rate` events/s for `seconds` in 1 ms ticks (nothing kept per
/// event on the bench's side), and sample the process's RSS every second:
/// flat after warm-up means nothing on the per-event path accumulates.
pub(crate) fn rss_under_load(setup: Setup, rate: usize, seconds: u64) -> Rss {
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = Arc::new(setup.start(dir.path()));
    let ids = IdGenerator::new();
    let subs = setup.subscriptions();
    let per_tick = (rate / 1_000).max(1);
    let total = rate as u64 * seconds;
    let (mut sent, mut tick) = (0u64, 0u64);
    let (mut samples, mut store_mib) = (Vec::new(), Vec::new());
    // Publishes refused (overloaded): the rate is more than the runtime takes.
    let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let began = Instant::now();
    while sent < total {
        let due = began + Duration::from_millis(tick);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if tick.is_multiple_of(1_000) && tick > 0 {
            samples.push(vm_rss_mib());
            store_mib.push(dir_mib(&dir.path().join("data")));
        }
        let batch = events(&ids, sent as usize, per_tick.min((total - sent) as usize));
        sent += batch.len() as u64;
        let refused = Arc::clone(&refused);
        rt.publish(
            batch,
            Box::new(move |r| {
                if r.is_err() {
                    refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }),
        );
        tick += 1;
    }
    samples.push(vm_rss_mib());
    store_mib.push(dir_mib(&dir.path().join("data")));
    let lag_at_end = rt.store().head().saturating_sub(min_cursor(&rt, subs));
    stop(rt);
    let at = |i: usize| samples.get(i.min(samples.len().saturating_sub(1))).copied().unwrap_or(f64::NAN);
    Rss {
        rate,
        seconds,
        first_mib: at(0),
        warm_mib: at(samples.len() / 3),
        end_mib: at(samples.len()),
        max_mib: samples.iter().copied().fold(f64::NAN, f64::max),
        samples_mib: samples,
        store_end_mib: store_mib.last().copied().unwrap_or(f64::NAN),
        store_mib,
        lag_at_end,
        refused_publishes: refused.load(std::sync::atomic::Ordering::Relaxed),
    }
}

/// Hot-swap cost: throughput of the fan-out with the `versioned` plugin,
/// with both handlers swapped v1 ↔ v2 every `every` (or never), and per
/// swap the time from `deploy` returning to the new version's first
/// handled event.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Swaps {
    pub(crate) events_per_sec: f64,
    pub(crate) swaps: usize,
    pub(crate) deploy_call_median_ms: Option<f64>,
    pub(crate) first_handled_median_ms: Option<f64>,
    pub(crate) first_committed_median_ms: Option<f64>,
}

pub(crate) fn swaps(n: usize, every: Option<Duration>) -> Swaps {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = format!(
        "data_dir = {:?}\n[[pipelines]]\nname = \"bench\"\ntopics = [\"orders.order.created\"]\n\
         [[pipelines.handlers]]\nname = \"a\"\nplugin = {v1:?}\n[[pipelines.handlers]]\nname = \"b\"\nplugin = {v1:?}\n",
        dir.path().join("data").display().to_string(),
        v1 = plugins::VERSIONED_V1,
    );
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, text).expect("write the bench config");
    let rt = Arc::new(Runtime::start(&Config::load(&path).expect("config")).expect("start"));
    let modules = [
        std::fs::read(plugins::VERSIONED_V1).expect("versioned v1"),
        std::fs::read(plugins::VERSIONED_V2).expect("versioned v2"),
    ];
    let subs = ["bench/a", "bench/b"];
    let publisher = {
        let rt = Arc::clone(&rt);
        std::thread::spawn(move || {
            let ids = IdGenerator::new();
            publish_all(&rt, (0..n).step_by(500).map(|i| events(&ids, i, 500.min(n - i))));
        })
    };
    let started = Instant::now();
    let (mut first, mut invoked, mut call) = (Vec::new(), Vec::new(), Vec::new());
    let a = || rt.counters("bench/a").expect("bench/a");
    let mut next = 1;
    loop {
        if publisher.is_finished() && min_cursor(&rt, &subs) >= rt.store().head() && rt.is_idle() {
            break;
        }
        let Some(every) = every else {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        std::thread::sleep(every);
        // Swap only while both subscriptions still have inputs, so the
        // switch happens mid-flow.
        if subs.iter().any(|s| rt.counters(s).map_or(0, |c| c.handled) as usize + n / 10 >= n) {
            continue;
        }
        let t = Instant::now();
        for handler in subs {
            rt.deploy(handler, modules[next].clone(), "bench", &[]).expect("deploy");
        }
        next = 1 - next;
        let returned = Instant::now();
        call.push(returned - t);
        let handled = a().handled;
        let give_up = returned + Duration::from_secs(10);
        // Poll gently: a spinning thread would take a core from the workers.
        while a().handled == handled && Instant::now() < give_up {
            std::thread::sleep(Duration::from_micros(50));
        }
        invoked.push(returned.elapsed());
        let cursor = a().cursor;
        while a().cursor == cursor && Instant::now() < give_up {
            std::thread::sleep(Duration::from_micros(50));
        }
        first.push(returned.elapsed());
    }
    let secs = started.elapsed().as_secs_f64();
    publisher.join().expect("publisher thread");
    stop(rt);
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v.get(v.len() / 2).map(|d| d.as_secs_f64() * 1e3)
    };
    Swaps {
        events_per_sec: n as f64 / secs,
        swaps: call.len(),
        deploy_call_median_ms: median(call),
        first_handled_median_ms: median(invoked),
        first_committed_median_ms: median(first),
    }
}
