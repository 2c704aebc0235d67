//! `weir stream`: read an entity stream of a running server, append to one
//! at an expected revision, print an entity's state now or at a revision or
//! time (docs/event-sourcing.md).

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use weir_runtime::models::{
    EntityStateResponse, ExpectedRevisionText, STREAM_PAGE_MAX, StreamAppendRequest, StreamAppendResponse,
    StreamConflictResponse, StreamEvent, StreamReadResponse,
};

use super::client::{Client, ServerArgs, encode};

#[derive(Debug, Args)]
pub(crate) struct StreamArgs {
    #[command(subcommand)]
    command: StreamCommand,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Subcommand)]
enum StreamCommand {
    /// Print the events of one entity's stream with their revisions, from
    /// revision 0 (or `--from`) on, or from the last one down with
    /// `--backward`.
    Read {
        /// The stream: `<domain>.<entity>/<key>` (`accounts.account/42`).
        stream: String,
        /// The first revision to print.
        #[arg(long)]
        from: Option<u64>,
        /// From the last revision (or `--from`) down to 0.
        #[arg(long)]
        backward: bool,
        /// At most this many events [default: all].
        #[arg(long)]
        limit: Option<usize>,
        /// Print each event as a JSON line (`{"revision":…,"seq":…,"event":{…}}`).
        #[arg(long)]
        json: bool,
    },
    /// Append events to one entity's stream, all or none, if its current
    /// revision is the expected one; a mismatch exits 1 naming the actual
    /// revision and stores nothing.
    Append {
        /// The stream: `<domain>.<entity>/<key>` (`accounts.account/42`).
        stream: String,
        /// `any`, `no_stream` (the stream must be empty), `exists` (it must
        /// not be) or the revision of its last event.
        #[arg(long, value_name = "REVISION")]
        expected_revision: String,
        /// A JSON file holding an array of events in the ingest envelope
        /// (docs/events.md), each topic `<domain>.<entity>.<event>`, the key
        /// left out; `-` for standard input.
        events: PathBuf,
    },
    /// Print an entity's state as its aggregate folds the stream, now or at
    /// `--at` (docs/event-sourcing.md, time travel).
    State {
        /// The stream: `<domain>.<entity>/<key>`.
        stream: String,
        /// A revision, or an RFC 3339 time [default: now].
        #[arg(long)]
        at: Option<String>,
    },
}

pub(crate) fn run(args: &StreamArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.server);
    match &args.command {
        StreamCommand::Read { stream, from, backward, limit, json } => {
            read(&client, stream, *from, *backward, *limit, *json)
        }
        StreamCommand::Append { stream, expected_revision, events } => {
            append(&client, stream, expected_revision, events)
        }
        StreamCommand::State { stream, at } => {
            let query = at.as_deref().map(|a| format!("?at={}", encode(a))).unwrap_or_default();
            let state: EntityStateResponse = client.get(&format!("{}/state{query}", path(stream)?))?;
            println!("{}", serde_json::to_string_pretty(&state.state)?);
            match state.revision {
                Some(r) => {
                    eprintln!("stream {stream}: state after revision {r} (current {:?})", state.current_revision)
                }
                None => eprintln!("stream {stream}: no event folded"),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `/v1/streams/<type>/<key>` of `<type>/<key>`.
fn path(stream: &str) -> anyhow::Result<String> {
    match stream.split_once('/') {
        Some((ty, key)) if !ty.is_empty() && !key.is_empty() => {
            Ok(format!("/v1/streams/{}/{}", encode(ty), encode(key)))
        }
        _ => bail!("{stream:?} is not a stream: give <domain>.<entity>/<key>, e.g. accounts.account/42"),
    }
}

fn print(event: &StreamEvent, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(event)?)?;
    } else {
        let e = &event.event;
        writeln!(
            out,
            "{:>6}  seq={:<8} {}  {:<32} id={}",
            event.revision,
            event.seq,
            e.time.as_deref().unwrap_or("-"),
            e.topic,
            e.id.as_deref().unwrap_or("-"),
        )?;
    }
    out.flush()?;
    Ok(())
}

fn read(
    client: &Client,
    stream: &str,
    mut from: Option<u64>,
    backward: bool,
    limit: Option<usize>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let base = path(stream)?;
    let mut printed = 0usize;
    let mut revision = None;
    loop {
        let want = limit.map_or(STREAM_PAGE_MAX, |l| l.saturating_sub(printed).min(STREAM_PAGE_MAX));
        if want == 0 {
            break;
        }
        let mut query = vec![format!("limit={want}")];
        if let Some(from) = from {
            query.push(format!("from={from}"));
        }
        if backward {
            query.push("direction=backward".into());
        }
        let page: StreamReadResponse = client.get(&format!("{base}?{}", query.join("&")))?;
        revision = page.revision;
        for event in &page.events {
            print(event, json)?;
        }
        printed += page.events.len();
        match page.next {
            Some(next) if !page.events.is_empty() => from = Some(next),
            _ => break,
        }
    }
    if !json {
        match revision {
            Some(r) => eprintln!("stream {stream}: revision {r}"),
            None => eprintln!("stream {stream}: no events yet"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn append(client: &Client, stream: &str, expected: &str, file: &PathBuf) -> anyhow::Result<ExitCode> {
    let path = path(stream)?;
    let expected_revision = ExpectedRevisionText::parse(expected).map_err(|e| anyhow::anyhow!("--{e}"))?;
    let text = if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("reading the events from standard input")?;
        text
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    let events = match serde_json::from_str::<serde_json::Value>(&text)
        .with_context(|| format!("{} is not JSON", file.display()))?
    {
        serde_json::Value::Array(events) => events,
        one @ serde_json::Value::Object(_) => vec![one],
        _ => bail!("{} holds neither an event nor an array of events", file.display()),
    };
    let body = serde_json::to_vec(&StreamAppendRequest { expected_revision, events })?;
    let answer = client.post_raw(&path, "application/json", &body)?;
    if answer.status() == 409
        && let Some(conflict) = answer.parse::<StreamConflictResponse>()
    {
        let actual = conflict.actual_revision.map_or_else(|| "none (no events)".to_owned(), |r| r.to_string());
        eprintln!("error: [{}] {}", conflict.error.code, conflict.error.message);
        eprintln!("actual revision: {actual}");
        return Ok(ExitCode::from(1));
    }
    let appended: StreamAppendResponse = answer.into_ok()?;
    println!("{}", serde_json::to_string_pretty(&appended)?);
    Ok(ExitCode::SUCCESS)
}
