//! Weir's benchmark suite: named scenarios side by side with native handlers
//! and NATS JetStream, written as JSON and a markdown table with the machine,
//! the versions and the exact command. docs/benchmarks.md explains each
//! scenario and holds the latest table.
//!
//! Run: `cargo bench -p weir-tests --bench suite` (every scenario, ~5 min),
//! or with options after `--`; `--help` lists them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod cluster;
mod event_sourcing;
mod jetstream;
mod procs;
mod read_side;
mod sagas;
mod schemas;
mod weir;

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Value, json};

use weir::{Setup, Shape};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const HELP: &str = "\
Weir benchmark suite

USAGE: cargo bench -p weir-tests --bench suite -- [OPTIONS]

OPTIONS:
  --scenarios LIST  comma-separated, from: s1 s2 s3 s4 s5 s6 latency rss memory swap
                    metrics read sse consumer webhook commands appends views sagas schemas
                    ingest cluster
                    [default: all of them]
  --events N        events per throughput run [default: 200000]
  --rate LIST       offered rates of the latency runs, events/s, comma-separated;
                    JetStream and the sagas use the first [default: 10000,50000]
  --seconds N       length of the latency runs, after 1 s of warm-up (rss: 3x)
                    [default: 10]
  --repeat N        rounds of the throughput scenarios; the median is shown [default: 3]
  --plugins N       plugins loaded for the memory and restart figures [default: 100]
  --out DIR         where the JSON and markdown go [default: target/bench-results]
  --quick           a smoke run: 2000 events, 1 s at 2000/s, 5 plugins, 1 round
  --require-nats    fail (rather than skip s6) when nats-server is missing
  -h, --help        this text

SCENARIOS:
  s1       one handler, one subscription (filter plugin)
  s2       2-way fan-out, idempotency on: the headline
  s3       3 pipelines chained: each stage's output is the next stage's input
  s4       s2 with a fresh instance per event (pooling allocator)
  s5       s2 with the handler compiled natively into the host (no Wasm)
  s6       the same fan-out on NATS JetStream (nats-server from Debian, on 127.0.0.1)
  latency  publish->handled p50/p99/p99.9 at each --rate for s2, at the first for s6
  rss      RSS of the process under sustained s2 load (the first --rate, 3x --seconds),
           sampled every second: after warm-up, at the end, the highest
  memory   RSS with 1 and with --plugins plugins loaded; restart time with them
  swap     s2-shaped fan-out with a hot swap of both handlers every second
  metrics  s2 with the latency histograms off, against on
  read     GET /v1/log over HTTP, one client, pages of 1,000, over a log of --events
  sse      GET /v1/log/stream to 1 and to 50 clients: the backlog, then live
  consumer durable consumer fetch + ack round trips (batches of 100 and 1,000),
           beside a JetStream pull consumer doing the same (skipped without
           nats-server unless --require-nats)
  webhook  a webhook sink on every event to a local receiver answering 204
           (a tenth of --events)
  commands POST /v1/commands from 64 clients over 10,000 accounts (bank-account
           aggregate): the opens, then --events / 2 deposits and withdrawals
  appends  POST /v1/streams with an expected revision, 64 clients, 10,000
           streams, --events / 2 appends; beside JetStream with
           Nats-Expected-Last-Subject-Sequence (skipped without nats-server)
  views    a balances projection over --events account events: view queries
           by key from 4 clients, then a replay that rebuilds it
  sagas    3-step sagas on the saga-service Wasm plugin: --events / 20 sagas
           all completing, then with 10% compensating; p99 duration (start
           appended -> completed) at --rate / 50 sagas/s for --seconds
  schemas  s2 as is, with a JSON Schema checked at ingest, with v2-only
           handlers fed v2, and fed v1 through one upcaster step
  ingest   `weir run`, counter plugin, a JetStream sink: fed by a JetStream
           source, against fed over HTTP (--events / 4 events; needs
           nats-server and target/<profile>/weir, built beforehand)
  cluster  1, 2 and 3 `weir run` nodes of a [cluster] on one nats-server, fed
           over HTTP, the same handler and sink: events/s, CPU per event
";

const ALL: [&str; 22] = [
    "s1", "s2", "s3", "s4", "s5", "s6", "latency", "rss", "memory", "swap", "metrics", "read", "sse", "consumer",
    "webhook", "commands", "appends", "views", "sagas", "schemas", "ingest", "cluster",
];

struct Options {
    scenarios: Vec<String>,
    events: usize,
    /// The first of `rates`.
    rate: usize,
    rates: Vec<usize>,
    seconds: u64,
    plugins: usize,
    out: std::path::PathBuf,
    quick: bool,
    require_nats: bool,
    repeat: usize,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let quick = args.iter().any(|a| a == "--quick");
    let mut o = Options {
        scenarios: ALL.iter().map(|s| (*s).to_owned()).collect(),
        events: if quick { 2_000 } else { 200_000 },
        rate: if quick { 2_000 } else { 10_000 },
        rates: if quick { vec![2_000] } else { vec![10_000, 50_000] },
        seconds: if quick { 1 } else { 10 },
        plugins: if quick { 5 } else { 100 },
        out: std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results"),
        quick,
        require_nats: args.iter().any(|a| a == "--require-nats"),
        repeat: if quick { 1 } else { 3 },
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or_else(|| format!("{name} needs a value"));
        let number = |name: &str, v: String| v.parse::<usize>().map_err(|_| format!("{name}: {v:?} is not a number"));
        match arg.as_str() {
            "--quick" | "--require-nats" => {}
            // `cargo bench` passes `--bench` to harness-less benches.
            "--bench" => {}
            "--scenarios" => {
                let list = value(arg)?;
                o.scenarios = list.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
                if let Some(bad) = o.scenarios.iter().find(|s| !ALL.contains(&s.as_str())) {
                    return Err(format!("unknown scenario {bad:?} (known: {})", ALL.join(" ")));
                }
            }
            "--events" => o.events = number(arg, value(arg)?)?.max(1),
            "--rate" => {
                let list = value(arg)?;
                o.rates = list
                    .split(',')
                    .map(|v| number(arg, v.trim().to_owned()).map(|n| n.max(1)))
                    .collect::<Result<_, _>>()?;
                o.rate = *o.rates.first().ok_or("--rate needs at least one rate")?;
            }
            "--seconds" => o.seconds = number(arg, value(arg)?)?.max(1) as u64,
            "--repeat" => o.repeat = number(arg, value(arg)?)?.max(1),
            "--plugins" => o.plugins = number(arg, value(arg)?)?.max(2),
            "--out" => o.out = value(arg)?.into(),
            other => return Err(format!("unknown option {other:?}; see --help")),
        }
    }
    Ok(o)
}

/// The machine, the versions and the command: what a figure means depends
/// on all of them.
fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu =
        cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).map(|v| v.trim_start_matches([' ', '\t', ':']));
    let mem_kib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    let run = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let lock = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock"))
        .unwrap_or_default();
    let locked = |name: &str| {
        let marker = format!("name = \"{name}\"\nversion = \"");
        lock.find(&marker).and_then(|i| lock[i + marker.len()..].split('"').next().map(str::to_owned))
    };
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "memory_gib": mem_kib.map(|k| (k as f64 / (1u64 << 20) as f64 * 10.0).round() / 10.0),
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "rustc": run("rustc", &["--version"]),
        "git": run("git", &["-C", env!("CARGO_MANIFEST_DIR"), "describe", "--always", "--dirty"]),
        "weir": env!("CARGO_PKG_VERSION"),
        "wasmtime": locked("wasmtime"),
        "redb": locked("redb"),
        "nats_server": jetstream::server_version().map(|(a, b, c)| format!(
            "nats-server {a}.{b}.{c} ({})",
            jetstream::server_binary().map(|p| p.display().to_string()).unwrap_or_default()
        )),
        "profile": if cfg!(debug_assertions) { "debug (smoke only: numbers mean nothing)" } else { "release" },
    })
}

struct Report {
    json: Value,
    md: String,
    failures: Vec<String>,
    require_nats: bool,
}

impl Report {
    /// A scenario that could not run: shown in the table, and the run ends
    /// with exit code 1.
    fn fail(&mut self, scenario: &str, e: &anyhow::Error) {
        eprintln!("{scenario}: FAILED: {e:#}");
        let _ = writeln!(self.md, "\n**{scenario} failed:** {e:#}");
        self.failures.push(format!("{scenario}: {e:#}"));
    }

    /// A scenario left out for a missing tool: said in the table; a failure
    /// only with `--require-nats` (CI sets it, so the peer cannot rot).
    fn skip(&mut self, scenario: &str, why: &str) {
        eprintln!("{scenario}: skipped: {why}");
        let _ = writeln!(self.md, "\n**{scenario} skipped:** {why}");
        if self.require_nats {
            self.failures.push(format!("{scenario}: {why}"));
        }
    }

    fn section(&mut self, title: &str, header: &str) {
        let cols = header.matches('|').count().saturating_sub(1);
        let _ = write!(self.md, "\n### {title}\n\n{header}\n|{}\n", "---|".repeat(cols));
    }

    /// A row of the latency table: p99 in bold, the figure the target names.
    fn latency_row(&mut self, scenario: &str, rate: usize, acknowledgement: &str, l: &weir::Latency) {
        self.row(&[
            scenario.to_owned(),
            thousands(rate as f64),
            acknowledgement.to_owned(),
            format!("{:.2} ms", l.p50_ms),
            format!("**{:.2} ms**", l.p99_ms),
            format!("{:.2} ms", l.p999_ms),
            l.samples.to_string(),
        ]);
    }

    fn row(&mut self, cells: &[String]) {
        let _ = writeln!(self.md, "| {} |", cells.join(" | "));
    }
}

fn thousands(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn main() {
    // As the `weir` binary does: no transparent huge pages (see the docs of
    // `tune`); the child runtimes of the memory figures inherit it.
    weir_runtime::tune_process();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--child-runtime") {
        let config = args.get(i + 1).map(std::path::PathBuf::from).unwrap_or_default();
        if let Err(e) = procs::child(&config) {
            eprintln!("child runtime: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    if args.iter().any(|a| a == "-h" || a == "--help") {
        print!("{HELP}");
        return;
    }
    let o = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let wanted = |s: &str| o.scenarios.iter().any(|x| x == s);
    let shown: Vec<&str> = args.iter().map(String::as_str).filter(|a| *a != "--bench").collect();
    let command = format!("cargo bench -p weir-tests --bench suite -- {}", shown.join(" ")).trim_end().to_owned();
    let date = time_now();
    let machine = machine();
    let mut r = Report {
        json: json!({ "date": date, "command": command, "machine": machine, "scenarios": {} }),
        md: String::new(),
        failures: Vec::new(),
        require_nats: o.require_nats,
    };
    let _ = writeln!(r.md, "## Benchmark suite results\n");
    let _ = writeln!(r.md, "- **Command:** `{command}`");
    let _ = writeln!(r.md, "- **Date:** {date}");
    let _ = writeln!(
        r.md,
        "- **Machine:** {}, {} cores, {} GiB, Linux {}; {}",
        machine["cpu"].as_str().unwrap_or("?"),
        machine["cores"],
        machine["memory_gib"],
        machine["kernel"].as_str().unwrap_or("?"),
        machine["profile"].as_str().unwrap_or("?"),
    );
    let _ = writeln!(
        r.md,
        "- **Versions:** weir {} ({}), wasmtime {}, redb {}, {}; {}",
        machine["weir"].as_str().unwrap_or("?"),
        machine["git"].as_str().unwrap_or("?"),
        machine["wasmtime"].as_str().unwrap_or("?"),
        machine["redb"].as_str().unwrap_or("?"),
        machine["rustc"].as_str().unwrap_or("?"),
        machine["nats_server"].as_str().unwrap_or("nats-server not installed"),
    );
    let _ = writeln!(
        r.md,
        "- **Events:** JSON orders of 163 bytes (~330 bytes as a stored event with its envelope; one in ten passes \
         the filter and is emitted), published in process in batches of 500 with 16 in flight; Weir acknowledges \
         a publish after an fsync'd commit."
    );

    let throughput_rows = [
        ("s1", "one handler, one subscription", Setup::new(Shape::Single)),
        ("s2", "2-way fan-out, idempotency on", Setup::new(Shape::FanOut)),
        ("s3", "3 pipelines chained", Setup::new(Shape::Chain)),
        ("s4", "s2, fresh instance per event", Setup { fresh: true, ..Setup::new(Shape::FanOut) }),
        ("s5", "s2, native handlers (no Wasm)", Setup { native: true, ..Setup::new(Shape::FanOut) }),
    ];
    let mut results: std::collections::BTreeMap<String, f64> = std::collections::BTreeMap::new();
    if throughput_rows.iter().any(|(id, _, _)| wanted(id)) || wanted("s6") {
        r.section(
            &format!("Throughput, {} events", o.events),
            "| scenario | what | acknowledgement | events/s end to end | publish | end to end | group commits | commands per commit |",
        );
    }
    // Rounds: every scenario once per round, so drift in the machine (fsync
    // speed varies a lot on a VM) spreads over all of them; the median run
    // of each is reported with the range.
    let mut runs: std::collections::BTreeMap<&str, Vec<weir::Throughput>> = std::collections::BTreeMap::new();
    for round in 0..o.repeat {
        for (id, what, setup) in &throughput_rows {
            if !wanted(id) {
                continue;
            }
            // A fresh instance per event is ~20x slower: fewer events, same rate.
            let n = if setup.fresh { (o.events / 5).max(1) } else { o.events };
            eprintln!("running {id} (round {} of {}): {what} …", round + 1, o.repeat);
            runs.entry(id).or_default().push(weir::throughput(*setup, n));
        }
    }
    for (id, what, _) in &throughput_rows {
        let Some(mut list) = runs.remove(id) else { continue };
        list.sort_by(|a, b| a.events_per_sec.total_cmp(&b.events_per_sec));
        let (lo, hi) = (list[0].events_per_sec, list[list.len() - 1].events_per_sec);
        let t = list[list.len() / 2].clone();
        results.insert((*id).to_owned(), t.events_per_sec);
        r.row(&[
            format!("`{id}`"),
            format!("{what} ({} events)", t.events),
            "durable (fsync per group commit)".to_owned(),
            format!("**{}** ({}–{})", thousands(t.events_per_sec), thousands(lo), thousands(hi)),
            format!("{:.2} s", t.publish_secs),
            format!("{:.2} s", t.total_secs),
            t.group_commits.to_string(),
            format!("{:.1}", t.commands_per_commit),
        ]);
        r.json["scenarios"][*id] = json!({ "median": t, "runs": list });
    }
    if wanted("s6") {
        let version = jetstream::server_version();
        let modes = [jetstream::Mode { sync_always: false }, jetstream::Mode { sync_always: true }];
        match version {
            None => r.skip("s6", "nats-server is not installed (Debian package `nats-server`)"),
            Some(v) => {
                let payloads: Vec<Vec<u8>> = (0..o.events).map(weir::payload).collect();
                for mode in modes {
                    if mode.sync_always && v < (2, 10, 0) {
                        r.row(&[
                            "`s6`".into(),
                            "NATS JetStream, same fan-out".into(),
                            format!("{mode}"),
                            format!("unavailable: needs nats-server 2.10+, this is {}.{}.{}", v.0, v.1, v.2),
                            "–".into(),
                            "–".into(),
                            "–".into(),
                            "–".into(),
                        ]);
                        continue;
                    }
                    eprintln!("running s6: NATS JetStream, {mode} ({} rounds) …", o.repeat);
                    // An fsync per write runs at about a thousand events/s:
                    // a tenth of the events keeps the run short, same rate.
                    let inputs =
                        if mode.sync_always { &payloads[..(payloads.len() / 10).max(1)] } else { &payloads[..] };
                    let attempts: anyhow::Result<Vec<jetstream::Throughput>> =
                        (0..o.repeat).map(|_| jetstream::throughput(inputs, &mode)).collect();
                    match attempts {
                        Ok(mut list) => {
                            let rate_of = |t: &jetstream::Throughput| t.events as f64 / t.total_secs;
                            list.sort_by(|a, b| rate_of(a).total_cmp(&rate_of(b)));
                            let (lo, hi) = (rate_of(&list[0]), rate_of(&list[list.len() - 1]));
                            let t = list[list.len() / 2].clone();
                            let rate = rate_of(&t);
                            let key = if mode.sync_always { "s6_sync_always" } else { "s6" };
                            results.insert(key.to_owned(), rate);
                            r.row(&[
                                "`s6`".into(),
                                format!(
                                    "NATS JetStream, same fan-out (pull consumers, double-ack, pipelined; {} events)",
                                    t.events
                                ),
                                format!("{mode}"),
                                format!("**{}** ({}–{})", thousands(rate), thousands(lo), thousands(hi)),
                                format!("{:.2} s", t.publish_secs),
                                format!("{:.2} s", t.total_secs),
                                "–".into(),
                                "–".into(),
                            ]);
                            r.json["scenarios"][key] = json!({
                                "events": t.events, "publish_secs": t.publish_secs, "total_secs": t.total_secs,
                                "events_per_sec": rate, "mode": mode.to_string(),
                            });
                        }
                        Err(e) => r.fail("s6", &e),
                    }
                }
            }
        }
    }

    if wanted("latency") {
        r.section(
            &format!("publish→handled latency for {} s", o.seconds),
            "| scenario | offered rate | acknowledgement | p50 | p99 | p99.9 | samples |",
        );
        for &rate in &o.rates {
            eprintln!("running latency: s2 at {rate} events/s …");
            settle();
            let l = weir::latency(Setup::new(Shape::FanOut), rate, o.seconds);
            if rate == o.rate {
                results.insert("latency_p99_ms".into(), l.p99_ms);
                results.insert("latency_rate".into(), o.rate as f64);
                r.json["scenarios"]["latency_s2"] = json!(l);
            } else {
                results.insert(format!("latency_p99_ms_at_{rate}"), l.p99_ms);
                r.json["scenarios"][format!("latency_s2_at_{rate}")] = json!(l);
            }
            r.latency_row("`s2` Weir", rate, "durable", &l);
        }
        if let Some(v) = jetstream::server_version() {
            for mode in [jetstream::Mode { sync_always: false }, jetstream::Mode { sync_always: true }] {
                if mode.sync_always && v < (2, 10, 0) {
                    continue;
                }
                // A latency at an offered rate above what the mode sustains
                // only measures a growing queue.
                if let Some(max) = results.get(if mode.sync_always { "s6_sync_always" } else { "s6" })
                    && *max < o.rate as f64
                {
                    r.row(&[
                        "`s6` JetStream".into(),
                        thousands(o.rate as f64),
                        format!("{mode}"),
                        format!(
                            "cannot sustain {} events/s (its throughput: {})",
                            thousands(o.rate as f64),
                            thousands(*max)
                        ),
                        "–".into(),
                        "–".into(),
                        "–".into(),
                    ]);
                    continue;
                }
                eprintln!("running latency: s6, {mode} …");
                settle();
                match jetstream::latency(&weir::payload, o.rate, o.seconds, &mode) {
                    Ok(l) => {
                        r.latency_row("`s6` JetStream", o.rate, &mode.to_string(), &l);
                        let key = if mode.sync_always { "latency_s6_sync_always" } else { "latency_s6" };
                        r.json["scenarios"][key] = json!(l);
                        r.json["scenarios"][key]["mode"] = json!(mode.to_string());
                    }
                    Err(e) => r.fail("latency s6", &e),
                }
            }
        } else {
            r.skip("latency s6", "nats-server is not installed");
        }
    }

    if wanted("rss") {
        let seconds = o.seconds * 3;
        eprintln!("running rss: s2 at {} events/s for {seconds} s …", o.rate);
        settle();
        let m = weir::rss_under_load(Setup::new(Shape::FanOut), o.rate, seconds);
        r.section(
            &format!("RSS under sustained `s2` load ({} events/s for {seconds} s, sampled every second)", o.rate),
            "| after 1 s | after warm-up (a third of the run) | at the end | highest | end − warm-up | store files at the end | lag at the end | refused publishes |",
        );
        let mib = |v: f64| format!("{v:.1} MiB");
        r.row(&[
            mib(m.first_mib),
            mib(m.warm_mib),
            mib(m.end_mib),
            mib(m.max_mib),
            format!("**{:+.1} MiB**", m.end_mib - m.warm_mib),
            mib(m.store_end_mib),
            m.lag_at_end.to_string(),
            m.refused_publishes.to_string(),
        ]);
        results.insert("rss_growth_after_warmup_mib".into(), m.end_mib - m.warm_mib);
        r.json["scenarios"]["rss"] = json!(m);
    }

    if wanted("memory") {
        eprintln!("running memory: 1 and {} plugins …", o.plugins);
        match procs::memory(o.plugins) {
            Ok(m) => {
                r.section(
                    "Memory and restart",
                    "| plugins | RSS | per additional plugin | first start (compiles) | restart (artifact cache warm) |",
                );
                r.row(&["1".into(), format!("{:.1} MiB", m.rss_one_mib), "–".into(), "–".into(), "–".into()]);
                r.row(&[
                    m.plugins.to_string(),
                    format!("{:.1} MiB", m.rss_many_mib),
                    format!("**{:.2} MiB**", m.per_plugin_mib),
                    format!("{:.2} s", m.cold_start_secs),
                    format!("**{:.3} s**", m.restart_secs),
                ]);
                results.insert("per_plugin_mib".into(), m.per_plugin_mib);
                results.insert("restart_secs".into(), m.restart_secs);
                r.json["scenarios"]["memory"] = json!(m);
            }
            Err(e) => r.fail("memory", &e),
        }
    }

    if wanted("swap") {
        r.section(
            "Hot swap (versioned plugin, emits one event per input)",
            "| run | events/s end to end | swaps | deploy call (median) | deploy → first event by the new version (median) | … committed (median) |",
        );
        let ms = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.2} ms"));
        for every in [None, Some(Duration::from_secs(1))] {
            eprintln!("running swap: {} …", if every.is_some() { "a swap every second" } else { "no swaps" });
            let s = weir::swaps(o.events * 2, every);
            r.row(&[
                if every.is_some() { "a swap every second" } else { "no swaps" }.into(),
                thousands(s.events_per_sec),
                s.swaps.to_string(),
                ms(s.deploy_call_median_ms),
                ms(s.first_handled_median_ms),
                ms(s.first_committed_median_ms),
            ]);
            r.json["scenarios"][if every.is_some() { "swap_every_second" } else { "swap_none" }] = json!(s);
        }
    }

    if wanted("metrics") {
        r.section(
            &format!(
                "Metrics cost (s2 with the latency histograms on and off, alternating, median of {})",
                o.repeat + 2
            ),
            "| metrics | events/s end to end |",
        );
        let (mut ons, mut offs) = (Vec::new(), Vec::new());
        for _ in 0..o.repeat + 2 {
            for metrics in [true, false] {
                eprintln!("running metrics: {} …", if metrics { "on" } else { "off" });
                let t = weir::throughput(Setup { metrics, ..Setup::new(Shape::FanOut) }, o.events);
                if metrics { &mut ons } else { &mut offs }.push(t.events_per_sec);
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (on, off) = (median(&mut ons), median(&mut offs));
        let cost = (1.0 - on / off) * 100.0;
        r.row(&["on (default)".into(), thousands(on)]);
        r.row(&["off".into(), thousands(off)]);
        let _ = writeln!(
            r.md,
            "\nCost of the metrics: {cost:.1}% of throughput (median against median; runs vary by ±10% on this machine)."
        );
        r.json["scenarios"]["metrics"] =
            json!({ "on_events_per_sec": on, "off_events_per_sec": off, "cost_percent": cost });
    }

    read_side(&mut r, &o);
    event_sourcing::report(&mut r, &o, &mut results);
    sagas::report(&mut r, &o, &mut results);
    schemas::report(&mut r, &o, &mut results);
    cluster::report(&mut r, &o, &mut results);

    targets(&mut r, &results, o.plugins);
    std::fs::create_dir_all(&o.out).unwrap_or_else(|e| panic!("cannot create {}: {e}", o.out.display()));
    let stamp = date.replace(':', "-");
    let json_path = o.out.join(format!("suite-{stamp}.json"));
    let md_path = o.out.join(format!("suite-{stamp}.md"));
    std::fs::write(&json_path, serde_json::to_string_pretty(&r.json).unwrap_or_default()).expect("write JSON");
    std::fs::write(&md_path, &r.md).expect("write markdown");
    println!("{}", r.md);
    eprintln!("wrote {} and {}", json_path.display(), md_path.display());
    if o.quick {
        eprintln!("(--quick: a smoke run; the numbers are not measurements)");
    }
    if !r.failures.is_empty() {
        eprintln!("{} scenario(s) failed: {}", r.failures.len(), r.failures.join("; "));
        std::process::exit(1);
    }
}

/// Let the kernel write back what earlier runs left (JetStream's runs leave
/// about a gigabyte it never synced): its flushes would stall the next run's
/// fsyncs. One such run measured a p99 of 40 ms against the usual 5.
fn settle() {
    let _ = std::process::Command::new("sync").status();
    std::thread::sleep(Duration::from_secs(5));
}

/// Fetch batch sizes of the `consumer` scenario.
const CONSUMER_BATCHES: [usize; 2] = [100, 1_000];
/// Concurrent clients of the `sse` scenario.
const SSE_CLIENTS: [usize; 2] = [1, 50];

/// The median run by `key`, and the range of `key` over the runs.
fn median_by<T: Clone>(list: &mut [T], key: impl Fn(&T) -> f64) -> (T, f64, f64) {
    list.sort_by(|a, b| key(a).total_cmp(&key(b)));
    (list[list.len() / 2].clone(), key(&list[0]), key(&list[list.len() - 1]))
}

/// `median (lo–hi)`, the median in bold.
fn spread(median: f64, lo: f64, hi: f64) -> String {
    format!("**{}** ({}–{})", thousands(median), thousands(lo), thousands(hi))
}

/// The read side (issue 13): `read`, `sse`, `consumer` (beside JetStream)
/// and `webhook`, every one once per round so the machine's drift spreads
/// over all of them and Weir's and JetStream's runs interleave.
fn read_side(r: &mut Report, o: &Options) {
    let wanted = |s: &str| o.scenarios.iter().any(|x| x == s);
    if !["read", "sse", "consumer", "webhook"].iter().any(|s| wanted(s)) {
        return;
    }
    let nats = wanted("consumer") && jetstream::server_version().is_some();
    if wanted("consumer") && !nats {
        r.skip("consumer (JetStream side)", "nats-server is not installed (Debian package `nats-server`)");
    }
    let payloads: Vec<Vec<u8>> = if nats { (0..o.events).map(weir::payload).collect() } else { Vec::new() };
    let pull_acks = [jetstream::PullAck::Each, jetstream::PullAck::All];
    let mut reads = Vec::new();
    let mut sses: Vec<Vec<read_side::Sse>> = vec![Vec::new(); SSE_CLIENTS.len()];
    let mut weir_consumer: Vec<Vec<read_side::Consumed>> = vec![Vec::new(); CONSUMER_BATCHES.len()];
    let mut js_consumer: Vec<Vec<Vec<jetstream::PullRun>>> =
        vec![vec![Vec::new(); pull_acks.len()]; CONSUMER_BATCHES.len()];
    let mut hooks = Vec::new();
    let mut failed = std::collections::BTreeSet::new();
    let webhook_events = (o.events / 10).max(1);
    for round in 0..o.repeat {
        let of = format!("round {} of {}", round + 1, o.repeat);
        if wanted("read") && !failed.contains("read") {
            eprintln!("running read ({of}): GET /v1/log, {} events in pages of 1,000 …", o.events);
            match read_side::read(o.events) {
                Ok(t) => reads.push(t),
                Err(e) => {
                    r.fail("read", &e);
                    failed.insert("read");
                }
            }
        }
        if wanted("sse") && !failed.contains("sse") {
            for (i, clients) in SSE_CLIENTS.iter().enumerate() {
                eprintln!("running sse ({of}): {clients} client(s), {} events each …", o.events);
                match read_side::sse(o.events, *clients) {
                    Ok(t) => sses[i].push(t),
                    Err(e) => {
                        r.fail(&format!("sse ({clients} clients)"), &e);
                        failed.insert("sse");
                        break;
                    }
                }
            }
        }
        if wanted("consumer") && !failed.contains("consumer") {
            for (i, batch) in CONSUMER_BATCHES.iter().enumerate() {
                eprintln!("running consumer ({of}): Weir, batches of {batch} …");
                match read_side::consumer(o.events, *batch) {
                    Ok(t) => weir_consumer[i].push(t),
                    Err(e) => {
                        r.fail(&format!("consumer (Weir, batch {batch})"), &e);
                        failed.insert("consumer");
                        break;
                    }
                }
                if !nats {
                    continue;
                }
                for (j, ack) in pull_acks.iter().enumerate() {
                    eprintln!("running consumer ({of}): JetStream, batches of {batch}, {ack} …");
                    match jetstream::pull_round_trips(&payloads, *batch, *ack) {
                        Ok(run) => js_consumer[i][j].push(run),
                        Err(e) => {
                            r.fail(&format!("consumer (JetStream, batch {batch})"), &e);
                            failed.insert("consumer");
                            break;
                        }
                    }
                }
            }
        }
        if wanted("webhook") && !failed.contains("webhook") {
            eprintln!("running webhook ({of}): a sink on {webhook_events} events …");
            match read_side::webhook(webhook_events) {
                Ok(t) => hooks.push(t),
                Err(e) => {
                    r.fail("webhook", &e);
                    failed.insert("webhook");
                }
            }
        }
    }
    let rate = |t: &read_side::Rate| t.events_per_sec;
    if !reads.is_empty() || !hooks.is_empty() {
        r.section(
            &format!("Read side: reading the log and webhook sinks (median of {} rounds, range)", o.repeat),
            "| scenario | what | events/s | time | CPU: bench client (receiver) / whole process |",
        );
    }
    if !reads.is_empty() {
        let (t, lo, hi) = median_by(&mut reads, rate);
        r.row(&[
            "`read`".into(),
            format!("`GET /v1/log?after=…&limit=1000`, one client, a log of {} events", t.events),
            spread(t.events_per_sec, lo, hi),
            format!("{:.2} s", t.secs),
            format!("{:.2} s / {:.2} s", t.bench_cpu_secs, t.process_cpu_secs),
        ]);
        r.json["scenarios"]["read"] = json!({ "median": t, "runs": reads });
    }
    if !hooks.is_empty() {
        let (t, lo, hi) = median_by(&mut hooks, rate);
        r.row(&[
            "`webhook`".into(),
            format!("a sink on every event, receiver answers 204; publish → all delivered, {} events", t.events),
            spread(t.events_per_sec, lo, hi),
            format!("{:.2} s", t.secs),
            format!("{:.2} s / {:.2} s", t.bench_cpu_secs, t.process_cpu_secs),
        ]);
        r.json["scenarios"]["webhook"] = json!({ "median": t, "runs": hooks });
    }
    if sses.iter().any(|l| !l.is_empty()) {
        r.section(
            &format!("Read side: `GET /v1/log/stream` (median of {} rounds, range; the live row has its own median)", o.repeat),
            "| clients | phase | events per client | events/s per client (median; slowest) | events/s all clients | CPU: clients / whole process |",
        );
        for (i, clients) in SSE_CLIENTS.iter().enumerate() {
            if sses[i].is_empty() {
                continue;
            }
            let (t, lo, hi) = median_by(&mut sses[i], |s| s.backlog_total);
            r.row(&[
                clients.to_string(),
                "backlog (from the start of the log)".into(),
                t.backlog_events.to_string(),
                format!("{}; {}", thousands(t.backlog_per_client_median), thousands(t.backlog_per_client_slowest)),
                spread(t.backlog_total, lo, hi),
                format!(
                    "{:.1} s / {:.1} s of {:.1} s",
                    t.backlog_clients_cpu_secs, t.backlog_process_cpu_secs, t.backlog_secs
                ),
            ]);
            // Live has its own median: its rounds need not order as the
            // backlog's do.
            let (l, lo, hi) = median_by(&mut sses[i], |s| s.live_total);
            r.row(&[
                clients.to_string(),
                format!(
                    "live (published at {}/s, acknowledged)",
                    thousands(l.live_events as f64 / l.live_publish_secs.max(1e-9))
                ),
                l.live_events.to_string(),
                format!("–; {}", thousands(l.live_per_client_slowest)),
                spread(l.live_total, lo, hi),
                "–".into(),
            ]);
            r.json["scenarios"][format!("sse_{clients}")] = json!({ "median": t, "live_median": l, "runs": sses[i] });
        }
    }
    if weir_consumer.iter().any(|l| !l.is_empty()) {
        r.section(
            &format!(
                "Read side: durable consumer, fetch + ack round trips, one client, {} events (median of {} rounds, range)",
                o.events, o.repeat
            ),
            "| batch | Weir: fetch, then one ack request for the batch (fsync'd commits) | JetStream pull: explicit ack of each (not fsync'd) | JetStream pull: AckAll (not fsync'd) |",
        );
        let mut notes = Vec::new();
        for (i, batch) in CONSUMER_BATCHES.iter().enumerate() {
            if weir_consumer[i].is_empty() {
                continue;
            }
            let (t, lo, hi) = median_by(&mut weir_consumer[i], |c| c.rate.events_per_sec);
            let mut cells = vec![batch.to_string(), spread(t.rate.events_per_sec, lo, hi)];
            notes.push(format!(
                "Weir, batch {batch}: {} round trips in {:.2} s, {:.0}% of it in fetch requests; CPU: client {:.2} s, whole process {:.2} s.",
                t.round_trips,
                t.rate.secs,
                t.fetch_secs / t.rate.secs.max(1e-9) * 100.0,
                t.rate.bench_cpu_secs,
                t.rate.process_cpu_secs
            ));
            let mut js = serde_json::Map::new();
            for (j, ack) in pull_acks.iter().enumerate() {
                let list = &mut js_consumer[i][j];
                if list.is_empty() {
                    cells.push("–".into());
                    continue;
                }
                let (m, lo, hi) = median_by(list, |v| v.events_per_sec);
                cells.push(spread(m.events_per_sec, lo, hi));
                notes.push(format!(
                    "JetStream, batch {batch}, {ack}: {:.2} s; CPU: client {:.2} s, nats-server {:.2} s.",
                    m.secs, m.client_cpu_secs, m.server_cpu_secs
                ));
                js.insert(
                    format!("{ack:?}").to_lowercase(),
                    json!({ "median": m, "runs": list, "ack": ack.to_string() }),
                );
            }
            r.row(&cells);
            r.json["scenarios"][format!("consumer_{batch}")] =
                json!({ "weir": { "median": t, "runs": weir_consumer[i] }, "jetstream": js });
        }
        let _ = writeln!(r.md);
        for note in notes {
            let _ = writeln!(r.md, "- {note}");
        }
    }
}

/// The targets against this run's figures.
fn targets(r: &mut Report, results: &std::collections::BTreeMap<String, f64>, plugins: usize) {
    let mut rows = Vec::new();
    let get = |k: &str| results.get(k).copied();
    // Issue 18's targets (the earlier ones, s2 ≥ 100,000, s5/s2 ≤ 1.3 and
    // p99 ≤ 10 ms, are its starting point).
    if let Some(s2) = get("s2") {
        rows.push(("`s2` ≥ 150,000 events/s".to_owned(), thousands(s2), s2 >= 150_000.0));
    }
    if let Some(s3) = get("s3") {
        rows.push(("`s3` ≥ 60,000 events/s".to_owned(), thousands(s3), s3 >= 60_000.0));
    }
    if let Some(s4) = get("s4") {
        rows.push(("`s4` ≥ 15,000 events/s".to_owned(), thousands(s4), s4 >= 15_000.0));
    }
    if let (Some(s2), Some(s6)) = (get("s2"), get("s6")) {
        rows.push(("`s2` vs `s6` (JetStream, not fsync-durable)".to_owned(), format!("{:.1}×", s2 / s6), s2 >= s6));
    }
    if let (Some(s2), Some(s5)) = (get("s2"), get("s5")) {
        let ratio = s5 / s2;
        rows.push(("`s5`/`s2` ≤ 1.15 (Wasm ≥ 0.87 × native)".to_owned(), format!("{ratio:.2}"), ratio <= 1.15));
    }
    if let Some(p99) = get("latency_p99_ms") {
        let rate = get("latency_rate").unwrap_or(0.0);
        rows.push((
            format!("p99 ≤ 5 ms at 10,000 events/s (run at {})", thousands(rate)),
            format!("{p99:.2} ms"),
            p99 <= 5.0 && (rate - 10_000.0).abs() < 1.0,
        ));
    }
    if let Some(t) = get("restart_secs") {
        rows.push((format!("restart with 100 plugins < 1 s (run with {plugins})"), format!("{t:.3} s"), t < 1.0));
    }
    if let Some(c) = get("commands_per_sec") {
        rows.push((
            "`commands` ≥ 20,000 commands/s (64 clients, 10,000 accounts)".to_owned(),
            thousands(c),
            c >= 20_000.0,
        ));
    }
    if let Some(p99) = get("view_p99_ms") {
        rows.push(("view query p99 < 1 ms".to_owned(), format!("{p99:.2} ms"), p99 < 1.0));
    }
    if let Some(rate) = get("replay_per_sec") {
        rows.push(("replay ≥ 200,000 events/s folded".to_owned(), thousands(rate), rate >= 200_000.0));
    }
    if let Some(m) = get("per_plugin_mib") {
        rows.push(("≤ 2 MiB RSS per additional plugin".to_owned(), format!("{m:.2} MiB"), m <= 2.0));
    }
    if rows.is_empty() {
        return;
    }
    r.section("Targets", "| target | this run | met |");
    let mut json_rows = Vec::new();
    for (target, value, met) in rows {
        r.row(&[target.clone(), value.clone(), if met { "yes".into() } else { "**no**".into() }]);
        json_rows.push(json!({ "target": target, "value": value, "met": met }));
    }
    r.json["targets"] = json!(json_rows);
}

/// UTC now as `YYYY-MM-DDTHH:MM:SSZ`.
fn time_now() -> String {
    let nanos = weir_runtime::now_nanos();
    weir_runtime::format_time(nanos).split('.').next().map_or_else(String::new, |s| format!("{s}Z"))
}
