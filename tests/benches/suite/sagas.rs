//! Sagas (issue 15): orchestrated sagas of three steps — payment,
//! inventory, shipping — each service the plugins/saga-service Wasm module
//! configured as a handler, the coordinator in the host (docs/sagas.md).
//!
//! Driven in process: the start events are appended with
//! `Runtime::publish_blocking` (durable before it returns), and completion
//! is read from the saga store (`Runtime::saga_counts`, the exact counts
//! the coordinator writes in each transition; `saga_list` for the
//! instances' times). Every saga is 7 log events (start, 3 commands, 3
//! replies; 5 more when it compensates) and 7 committed transitions.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail, ensure};
use serde_json::json;
use weir_runtime::saga::SagaStatus;
use weir_runtime::{Config, IdGenerator, JsonEvent, Runtime};
use weir_tests::plugins;

use crate::read_side::process_cpu;

/// The three services and the saga `order` over them (as tests/all/sagas.rs).
fn toml(data: &std::path::Path) -> String {
    let plugin = plugins::SAGA_SERVICE;
    let mut text = format!("data_dir = {:?}\n", data.display().to_string());
    for (name, topics, cfg) in [
        (
            "payment",
            r#"["payments.payment.charge", "payments.payment.refund"]"#,
            r#"done = "payments.payment.charged", failed = "payments.payment.declined", undone = "payments.payment.refunded""#,
        ),
        (
            "inventory",
            r#"["stock.item.reserve", "stock.item.release"]"#,
            r#"done = "stock.item.reserved", failed = "stock.item.out-of-stock", undone = "stock.item.released""#,
        ),
        (
            "shipping",
            r#"["ship.parcel.schedule"]"#,
            r#"done = "ship.parcel.scheduled", failed = "ship.parcel.no-courier""#,
        ),
    ] {
        text += &format!(
            "[[pipelines]]\nname = \"{name}\"\ntopics = {topics}\n[[pipelines.handlers]]\nname = \"service\"\n\
             plugin = {plugin:?}\nconfig = {{ service = \"{name}\", {cfg} }}\n"
        );
    }
    text += r#"
[[sagas]]
name = "order"
start = "orders.order.placed"
correlation = "/order_id"
timeout = "10m"
max_instances = 10000000
[[sagas.steps]]
name = "payment"
command = "payments.payment.charge"
success = ["payments.payment.charged"]
failure = ["payments.payment.declined"]
compensation = "payments.payment.refund"
compensation_success = ["payments.payment.refunded"]
[[sagas.steps]]
name = "inventory"
command = "stock.item.reserve"
success = ["stock.item.reserved"]
failure = ["stock.item.out-of-stock"]
compensation = "stock.item.release"
compensation_success = ["stock.item.released"]
[[sagas.steps]]
name = "shipping"
command = "ship.parcel.schedule"
success = ["ship.parcel.scheduled"]
failure = ["ship.parcel.no-courier"]
"#;
    text
}

struct Started {
    rt: Runtime,
    ids: IdGenerator,
    _dir: tempfile::TempDir,
}

fn start() -> anyhow::Result<Started> {
    let dir = tempfile::tempdir()?;
    let text = toml(&dir.path().join("data"));
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, &text)?;
    let config = Config::load(&path).map_err(|e| anyhow::anyhow!("{e}\n{text}"))?;
    let rt = Runtime::start(&config)?;
    Ok(Started { rt, ids: IdGenerator::new(), _dir: dir })
}

/// Order `i`: every `fail_every`-th one finds no courier (shipping fails,
/// inventory and payment are compensated).
fn publish(s: &Started, from: usize, n: usize, fail_every: Option<usize>) -> anyhow::Result<()> {
    let mut batch = Vec::with_capacity(n);
    for i in from..from + n {
        let fails = fail_every.is_some_and(|k| i % k == k - 1);
        let payload = if fails {
            json!({"order_id": format!("o-{i}"), "address": "nowhere"})
        } else {
            json!({"order_id": format!("o-{i}"), "item": "teapot"})
        };
        let line = json!({"topic": "orders.order.placed", "key": format!("o-{i}"), "payload": payload}).to_string();
        batch.push(JsonEvent::from_json_line(&line).and_then(|e| e.into_event(&s.ids, "bench"))?);
    }
    s.rt.publish_blocking(batch)?;
    Ok(())
}

fn count(s: &Started, status: SagaStatus) -> anyhow::Result<u64> {
    Ok(s.rt.saga_counts("order")?.into_iter().find(|(st, _)| *st == status).map_or(0, |(_, n)| n))
}

/// One throughput run.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Throughput {
    pub(crate) sagas: usize,
    pub(crate) compensating_percent: usize,
    pub(crate) secs: f64,
    pub(crate) sagas_per_sec: f64,
    pub(crate) completed: u64,
    pub(crate) compensated: u64,
    /// CPU seconds of the whole process in the run.
    pub(crate) process_cpu_secs: f64,
}

/// `n` sagas appended as fast as they are acknowledged (batches of 500),
/// timed from the first append to the last saga's final status; one in
/// `fail_every` compensates.
pub(crate) fn throughput(n: usize, fail_every: Option<usize>) -> anyhow::Result<Throughput> {
    let s = start()?;
    let cpu0 = process_cpu();
    let started = Instant::now();
    for from in (0..n).step_by(500) {
        publish(&s, from, 500.min(n - from), fail_every)?;
    }
    let want_compensated = fail_every.map_or(0, |k| n / k) as u64;
    let want_completed = n as u64 - want_compensated;
    let deadline = Instant::now() + Duration::from_secs(600);
    let (completed, compensated) = loop {
        let (c, k) = (count(&s, SagaStatus::Completed)?, count(&s, SagaStatus::Compensated)?);
        if c + k >= n as u64 {
            break (c, k);
        }
        ensure!(Instant::now() < deadline, "{c} completed and {k} compensated of {n} after 600 s");
        std::thread::sleep(Duration::from_millis(5));
    };
    let secs = started.elapsed().as_secs_f64();
    let process_cpu_secs = process_cpu() - cpu0;
    ensure!(
        (completed, compensated) == (want_completed, want_compensated),
        "{completed} completed and {compensated} compensated, not {want_completed} and {want_compensated}"
    );
    s.rt.shutdown()?;
    Ok(Throughput {
        sagas: n,
        compensating_percent: fail_every.map_or(0, |k| 100 / k),
        secs,
        sagas_per_sec: n as f64 / secs.max(1e-9),
        completed,
        compensated,
        process_cpu_secs,
    })
}

/// Saga durations at a fixed rate.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Durations {
    pub(crate) rate: usize,
    pub(crate) sagas: usize,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// `rate` sagas a second for 1 s of warm-up and `seconds` measured, each
/// start event appended alone; a saga's duration is from its append's
/// acknowledgement to the time its coordinator recorded it `completed`
/// (`updated_ms` of the instance, a millisecond clock).
pub(crate) fn at_rate(rate: usize, seconds: u64) -> anyhow::Result<Durations> {
    let s = start()?;
    let total = rate * (seconds as usize + 1);
    let warm = rate;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let mut appended: HashMap<String, u64> = HashMap::with_capacity(total);
    let begin = Instant::now();
    for i in 0..total {
        let due = begin + interval * u32::try_from(i)?;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        publish(&s, i, 1, None)?;
        if i >= warm {
            appended.insert(format!("o-{i}"), now_us());
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while count(&s, SagaStatus::Completed)? < total as u64 {
        ensure!(Instant::now() < deadline, "not every saga completed within 120 s of the last append");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut durations = Vec::with_capacity(appended.len());
    let mut after: Option<String> = None;
    loop {
        let page = s.rt.saga_list(Some("order"), None, after.as_deref(), weir_runtime::SAGA_PAGE_MAX)?;
        for inst in &page.sagas {
            if inst.status != SagaStatus::Completed {
                bail!("saga {} is {}", inst.id, inst.status.as_str());
            }
            if let Some(at) = appended.get(&inst.id) {
                durations.push((inst.updated_ms * 1000).saturating_sub(*at) as f64 / 1e3);
            }
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    ensure!(durations.len() == appended.len(), "{} sagas measured of {}", durations.len(), appended.len());
    s.rt.shutdown().context("shutdown")?;
    durations.sort_by(f64::total_cmp);
    let pct = |p: f64| durations[((durations.len() as f64 * p) as usize).min(durations.len() - 1)];
    Ok(Durations {
        rate,
        sagas: durations.len(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: durations.last().copied().unwrap_or(0.0),
    })
}

/// The `sagas` scenario: both throughput runs once per round, then the
/// fixed-rate run once per round.
pub(crate) fn report(r: &mut crate::Report, o: &crate::Options, results: &mut std::collections::BTreeMap<String, f64>) {
    use std::fmt::Write as _;
    if !o.scenarios.iter().any(|x| x == "sagas") {
        return;
    }
    let n = if o.quick { 200 } else { (o.events / 20).max(500) };
    let rate = if o.quick { 100 } else { (o.rate / 50).max(10) };
    let (mut all, mut tenth, mut lat) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..o.repeat {
        let of = format!("round {} of {}", round + 1, o.repeat);
        eprintln!("running sagas ({of}): {n} sagas, all completing …");
        match throughput(n, None) {
            Ok(t) => all.push(t),
            Err(e) => return r.fail("sagas", &e),
        }
        eprintln!("running sagas ({of}): {n} sagas, one in ten compensating …");
        match throughput(n, Some(10)) {
            Ok(t) => tenth.push(t),
            Err(e) => return r.fail("sagas", &e),
        }
        eprintln!("running sagas ({of}): {rate} sagas/s for {} s …", o.seconds);
        match at_rate(rate, o.seconds) {
            Ok(t) => lat.push(t),
            Err(e) => return r.fail("sagas", &e),
        }
    }
    r.section(
        &format!("Sagas (3 steps, Wasm services; median of {} rounds, range)", o.repeat),
        "| run | sagas | sagas/s | completed / compensated | CPU: whole process / wall |",
    );
    for (label, runs) in [("all completing", &mut all), ("10% compensating", &mut tenth)] {
        let (m, lo, hi) = crate::median_by(runs, |t| t.sagas_per_sec);
        r.row(&[
            label.to_owned(),
            m.sagas.to_string(),
            crate::spread(m.sagas_per_sec, lo, hi),
            format!("{} / {}", m.completed, m.compensated),
            format!("{:.2}", m.process_cpu_secs / m.secs),
        ]);
        let key = if m.compensated == 0 { "sagas_per_sec" } else { "sagas_compensating_per_sec" };
        results.insert(key.to_owned(), m.sagas_per_sec);
        r.json["scenarios"][key] = serde_json::json!(m);
    }
    let (m, lo, hi) = crate::median_by(&mut lat, |t| t.p99_ms);
    let _ = writeln!(
        r.md,
        "\nAt {} sagas/s for {} s (after 1 s of warm-up), start appended → `completed`: p50 {:.1} ms, \
         p99 **{:.1} ms** ({:.1}–{:.1} over the rounds), max {:.1} ms, {} sagas.",
        m.rate, o.seconds, m.p50_ms, m.p99_ms, lo, hi, m.max_ms, m.sagas
    );
    r.json["scenarios"]["sagas_duration"] = serde_json::json!(m);
}
