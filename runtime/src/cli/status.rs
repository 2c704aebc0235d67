//! `weir status`: one table of a running server's pipelines and
//! subscriptions, once or refreshed in place (`--watch`).

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde_json::Value;

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
    #[command(flatten)]
    server: ServerArgs,
}

pub(crate) fn run(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.server);
    let in_place = args.watch && !args.json && std::io::stdout().is_terminal();
    let mut shown = 0u64;
    loop {
        let mut answer = client.get("/v1/status")?;
        // Readiness is an extra: a server without `/ready` still has a status.
        answer["ready"] = client.get_raw("/ready").map(|(_, body)| body).unwrap_or(Value::Null);
        let text = if args.json { format!("{answer}\n") } else { table(&answer) };
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

fn ms(v: &Value) -> String {
    v.as_f64().map_or_else(|| "-".into(), |x| if x < 10.0 { format!("{x:.2}") } else { format!("{x:.0}") })
}

/// The human table: a row per subscription, in configuration order
/// (so grouped by pipeline). Every row names its pipeline: `grep` works.
fn table(answer: &Value) -> String {
    let mut out = String::new();
    let ready = &answer["ready"];
    let _ = write!(out, "log head: {}", answer["head"]);
    if let Some(status) = ready["status"].as_str() {
        let _ = write!(out, "   ready: {status}");
    }
    out.push('\n');
    for reason in ready["reasons"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let _ = writeln!(out, "  ! {}", reason.as_str().unwrap_or_default());
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
    for s in answer["subscriptions"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let n = |v: &Value| v.as_u64().unwrap_or(0);
        let name = s["name"].as_str().unwrap_or("");
        let (pipeline, handler) = match (s["pipeline"].as_str(), s["handler"].as_str()) {
            (Some(p), Some(h)) => (p, h),
            _ => name.split_once('/').unwrap_or((name, "")),
        };
        let rate = &s["rate"];
        let _ = writeln!(
            out,
            "{:<16} {:<16} {:<9} {:>8} {:>7} {:>9} {:>8} {:>8} {:>6} {:>10} {}@{}",
            pipeline,
            handler,
            s["state"].as_str().unwrap_or(""),
            n(&s["lag"]),
            n(&s["parked"]),
            rate["events_per_second"].as_f64().map_or_else(|| "-".into(), |r| format!("{r:.0}")),
            ms(&rate["end_to_end_p50_ms"]),
            ms(&rate["end_to_end_p99_ms"]),
            n(&s["dlq"]),
            n(&s["stats"]["handled"]),
            s["plugin"].as_str().unwrap_or(""),
            s["plugin_version"].as_str().unwrap_or("").chars().take(12).collect::<String>()
        );
    }
    out
}
