//! `weir status`: one table of a running server's pipelines and
//! subscriptions, once or refreshed in place (`--watch`).

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use weir_runtime::models::{ReadinessResponse, StatusResponse};

use super::client::{Client, ServerArgs};

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Print JSON (the `/v1/status` answer plus `ready`), one object per
    /// refresh.
    #[arg(long)]
    json: bool,
    /// Refresh until interrupted (in place on a terminal).
    #[arg(long, short)]
    watch: bool,
    /// Time between refreshes with --watch.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// With --watch, stop after this many refreshes.
    #[arg(long, value_name = "N", requires = "watch")]
    count: Option<u64>,
    /// Wait until the server answers and every subscription has caught up
    /// with the log (no lag, nothing retrying or waiting), then print the
    /// table once. For scripts: publish, then `weir status --wait-idle`.
    #[arg(long, conflicts_with = "watch")]
    wait_idle: bool,
    /// With --wait-idle, give up after this long (exit 1).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    server: ServerArgs,
}

/// What `--json` prints: the `/v1/status` answer plus `ready`.
#[derive(Debug, Serialize)]
struct Report {
    #[serde(flatten)]
    status: StatusResponse,
    /// `null` when `/ready` gave no readiness.
    ready: Option<ReadinessResponse>,
}

pub(crate) fn run(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.server);
    let in_place = args.watch && !args.json && std::io::stdout().is_terminal();
    let mut shown = 0u64;
    if args.wait_idle {
        let give_up = std::time::Instant::now() + args.timeout;
        loop {
            // A server still starting is not an error yet: wait for it too.
            let status: StatusResponse = match client.get("/v1/status") {
                Ok(status) => status,
                Err(e) if std::time::Instant::now() < give_up => {
                    tracing::debug!("waiting for the server: {e:#}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                Err(e) => return Err(e),
            };
            if status.subscriptions.iter().all(|s| s.lag == 0 && s.parked == 0) {
                break;
            }
            if std::time::Instant::now() >= give_up {
                let busy: Vec<String> = status
                    .subscriptions
                    .iter()
                    .filter(|s| s.lag > 0 || s.parked > 0)
                    .map(|s| format!("{} (lag {}, parked {})", s.name, s.lag, s.parked))
                    .collect();
                eprintln!("error: not idle after {:?}: {}", args.timeout, busy.join(", "));
                return Ok(ExitCode::FAILURE);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    loop {
        let status = client.get("/v1/status")?;
        // Readiness is an extra: a server without `/ready` still has a status.
        let ready = client.get_raw("/ready").ok().and_then(|answer| answer.parse());
        let report = Report { status, ready };
        let text = if args.json { format!("{}\n", serde_json::to_string(&report)?) } else { table(&report) };
        let mut out = std::io::stdout().lock();
        if in_place {
            // Home and clear: the table redraws where it was.
            write!(out, "\x1b[H\x1b[2J")?;
        } else if shown > 0 && !args.json {
            writeln!(out)?;
        }
        out.write_all(text.as_bytes())?;
        out.flush()?;
        shown += 1;
        if !args.watch || args.count.is_some_and(|n| shown >= n) {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(args.interval);
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |x| if x < 10.0 { format!("{x:.2}") } else { format!("{x:.0}") })
}

/// The human table: a row per subscription, in configuration order
/// (so grouped by pipeline). Every row names its pipeline: `grep` works.
fn table(report: &Report) -> String {
    let mut out = String::new();
    let _ = write!(out, "log head: {}", report.status.head);
    if let Some(ready) = &report.ready {
        let _ = write!(out, "   ready: {}", ready.status);
    }
    out.push('\n');
    for reason in report.ready.iter().flat_map(|r| &r.reasons) {
        let _ = writeln!(out, "  ! {reason}");
    }
    let _ = writeln!(
        out,
        "{:<16} {:<16} {:<9} {:>8} {:>7} {:>9} {:>8} {:>8} {:>6} {:>10} {:<24}",
        "PIPELINE",
        "HANDLER",
        "STATE",
        "DEPTH",
        "PARKED",
        "EVENTS/S",
        "P50 ms",
        "P99 ms",
        "DLQ",
        "HANDLED",
        "PLUGIN@VERSION"
    );
    for s in &report.status.subscriptions {
        // A server that predates `pipeline` and `handler` sends only the name.
        let (pipeline, handler) = if s.pipeline.is_empty() && s.handler.is_empty() {
            s.name.split_once('/').unwrap_or((&s.name, ""))
        } else {
            (s.pipeline.as_str(), s.handler.as_str())
        };
        let rate = format!("{:.0}", s.rate.events_per_second);
        let _ = writeln!(
            out,
            "{:<16} {:<16} {:<9} {:>8} {:>7} {:>9} {:>8} {:>8} {:>6} {:>10} {}@{}",
            pipeline,
            handler,
            s.state,
            s.lag,
            s.parked,
            rate,
            ms(s.rate.end_to_end_p50_ms),
            ms(s.rate.end_to_end_p99_ms),
            s.dlq,
            s.stats.handled,
            s.plugin,
            s.plugin_version.chars().take(12).collect::<String>()
        );
    }
    // Why a row is not `ok`, so the state is not left unexplained: why it
    // was turned off or stopped (a sink's receiver answered 410, a worker
    // died), else its last failure (a failing or retrying handler).
    for s in report.status.subscriptions.iter().filter(|s| s.state != "ok") {
        if let Some(why) = s.stopped.as_ref().or(s.last_failure.as_ref()) {
            let _ = writeln!(out, "  {} {}: {why}", s.name, s.state);
        }
    }
    // Who keeps the log's retention from removing what it would: a slow,
    // stopped or failing subscription (see `weir subscription list`).
    for s in report.status.subscriptions.iter().filter(|s| s.retention_held > 0) {
        let _ = writeln!(out, "  retention held back by {}: {} event(s) it still needs", s.name, s.retention_held);
    }
    // Durable timers waiting to fire (`GET …/timers` lists them).
    for s in report.status.subscriptions.iter().filter(|s| s.timers_pending > 0) {
        let _ = writeln!(out, "  timers pending in {}: {}", s.name, s.timers_pending);
    }
    consumers(&mut out, report);
    out
}

/// The durable HTTP consumers, after the subscriptions: they hold the log
/// too, and a growing lag or DLQ is as much news as a subscription's.
fn consumers(out: &mut String, report: &Report) {
    if report.status.consumers.is_empty() {
        return;
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "{:<24} {:>8} {:>9} {:>6} {:>10} {:>10}  TOPICS",
        "CONSUMER", "LAG", "IN FLIGHT", "DLQ", "DELIVERED", "ACKED"
    );
    for c in &report.status.consumers {
        let _ = writeln!(
            out,
            "{:<24} {:>8} {:>9} {:>6} {:>10} {:>10}  {}",
            c.name,
            c.lag,
            c.in_flight,
            c.dlq,
            c.delivered,
            c.acked,
            c.topics.join(",")
        );
    }
}
