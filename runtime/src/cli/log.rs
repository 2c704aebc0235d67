//! `weir log`: read the log of a running server, follow it, show an event
//! and its lineage.

use std::io::Write as _;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use weir_runtime::models::{LOG_PAGE_MAX, LineageResponse, LogEvent, LogReadResponse, StatusResponse};

use super::client::{Client, ServerArgs, encode};

#[derive(Debug, Args)]
pub(crate) struct LogArgs {
    #[command(subcommand)]
    command: LogCommand,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Clone, Args)]
struct Filter {
    /// Only these topics: patterns, comma-separated (`orders.*.created,payments.>`).
    #[arg(long, short = 't')]
    topics: Option<String>,
    /// Only events with this key.
    #[arg(long, short = 'k')]
    key: Option<String>,
    /// Print each event as a JSON line (`{"seq":…,"event":{…}}`).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum LogCommand {
    /// Print the events of the log (from the start, or after a position)
    /// up to its head, or the first `--limit`.
    Read {
        #[command(flatten)]
        filter: Filter,
        /// Start after this position.
        #[arg(long)]
        after: Option<u64>,
        /// At most this many events [default: all up to the head].
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Follow the log, like `tail -f`: print events as they are appended,
    /// from now on (or after `--after`), until interrupted.
    Tail {
        #[command(flatten)]
        filter: Filter,
        /// Start after this position instead of at the head.
        #[arg(long)]
        after: Option<u64>,
    },
    /// Show one event by id, with `--lineage` what caused it and what it
    /// caused in each subscription.
    Show {
        /// The event's id (a ULID).
        id: String,
        /// Show its lineage.
        #[arg(long)]
        lineage: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn run(args: &LogArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.server);
    match &args.command {
        LogCommand::Read { filter, after, limit } => read(&client, filter, *after, *limit),
        LogCommand::Tail { filter, after } => {
            let after = match after {
                Some(after) => Some(*after),
                None => {
                    let status: StatusResponse = client.get("/v1/status")?;
                    status.head.checked_sub(1)
                }
            };
            tail(&client, filter, after)
        }
        LogCommand::Show { id, lineage, json } => show(&client, id, *lineage, *json),
    }
}

fn query(filter: &Filter, after: Option<u64>, limit: usize, wait: Option<&str>) -> String {
    let mut query = vec![format!("limit={limit}")];
    if let Some(after) = after {
        query.push(format!("after={after}"));
    }
    if let Some(topics) = &filter.topics {
        query.push(format!("topics={}", encode(topics)));
    }
    if let Some(key) = &filter.key {
        query.push(format!("key={}", encode(key)));
    }
    if let Some(wait) = wait {
        query.push(format!("wait={wait}"));
    }
    format!("/v1/log?{}", query.join("&"))
}

fn print(event: &LogEvent, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(event)?)?;
    } else {
        let e = &event.event;
        writeln!(
            out,
            "{:>8}  {}  {:<32} key={:<12} id={}",
            event.seq,
            e.time.as_deref().unwrap_or("-"),
            e.topic,
            e.key.as_deref().unwrap_or("-"),
            e.id.as_deref().unwrap_or("-"),
        )?;
    }
    out.flush()?;
    Ok(())
}

fn read(client: &Client, filter: &Filter, mut after: Option<u64>, limit: Option<usize>) -> anyhow::Result<ExitCode> {
    let mut printed = 0usize;
    loop {
        let want = limit.map_or(LOG_PAGE_MAX, |l| l.saturating_sub(printed).min(LOG_PAGE_MAX));
        if want == 0 {
            break;
        }
        let page: LogReadResponse = client.get(&query(filter, after, want, None))?;
        for event in &page.events {
            print(event, filter.json)?;
        }
        printed += page.events.len();
        after = page.next.or(after);
        if page.caught_up {
            break;
        }
    }
    if printed == 0 && !filter.json {
        eprintln!("no events");
    }
    Ok(ExitCode::SUCCESS)
}

fn tail(client: &Client, filter: &Filter, mut after: Option<u64>) -> anyhow::Result<ExitCode> {
    loop {
        // A long-poll: the server answers as soon as an event matches, or
        // after the wait with the position it read to.
        let page: LogReadResponse = client.get(&query(filter, after, LOG_PAGE_MAX, Some("25s")))?;
        for event in &page.events {
            print(event, filter.json)?;
        }
        after = page.next.or(after);
    }
}

fn show(client: &Client, id: &str, lineage: bool, json: bool) -> anyhow::Result<ExitCode> {
    if !lineage {
        let event: LogEvent = client.get(&format!("/v1/events/{}", encode(id)))?;
        println!("{}", serde_json::to_string_pretty(&event)?);
        return Ok(ExitCode::SUCCESS);
    }
    let lineage: LineageResponse = client.get(&format!("/v1/events/{}/lineage", encode(id)))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&lineage)?);
        return Ok(ExitCode::SUCCESS);
    }
    let line = |e: &LogEvent| {
        format!(
            "#{} {} key={} id={}",
            e.seq,
            e.event.topic,
            e.event.key.as_deref().unwrap_or("-"),
            e.event.id.as_deref().unwrap_or("-")
        )
    };
    println!("event   {}", line(&lineage.event));
    for cause in &lineage.causes {
        println!("  caused by {}", line(cause));
    }
    if let Some(missing) = &lineage.missing_cause {
        println!("  caused by {missing} (not in the log)");
    }
    if lineage.causes_truncated {
        println!("  … and more causes: show the lineage of the last one to follow the chain");
    }
    if lineage.subscriptions.is_empty() {
        println!("no subscription takes this topic");
    }
    for sub in &lineage.subscriptions {
        let version =
            sub.plugin_version.as_deref().map(|v| format!(" by plugin {}", v.chars().take(12).collect::<String>()));
        println!("{:<28} {}{}", sub.subscription, sub.state, version.unwrap_or_default());
        if let Some(retry) = &sub.retry {
            println!(
                "    {} failed attempt(s); next at {}; last: {} {}",
                retry.attempts,
                retry.next_attempt,
                retry.last_code.as_deref().unwrap_or("-"),
                retry.last_message.as_deref().unwrap_or("")
            );
        }
        if let Some(dlq) = &sub.dlq {
            println!("    in the DLQ: [{}] after {} attempt(s): {}", dlq.code, dlq.attempts, dlq.message);
        }
        for emitted in &sub.emitted {
            println!("    emitted {}", line(emitted));
        }
    }
    if lineage.emitted_truncated {
        println!("… it caused more events than listed here (the first 1000 by position, at most 8 MiB)");
    }
    Ok(ExitCode::SUCCESS)
}
