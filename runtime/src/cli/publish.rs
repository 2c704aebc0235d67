//! `weir publish`: send events to a running server.

use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Read};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context as _, bail};
use clap::Args;
use serde_json::Value;
use weir_runtime::JsonEvent;
use weir_runtime::models::PublishResponse;

use super::client::{Client, ServerArgs};

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  weir publish --topic orders.order.created --key o-1 --data '{\"order_id\":\"o-1\"}'
  weir publish --file events.jsonl          # one JSON event per line (docs/events.md)
  cat events.jsonl | weir publish --file -
Every event is durable when the command reports it published. Re-publishing an event
with the same idempotency key within the retention window stores nothing and reports a
duplicate.")]
pub(crate) struct PublishArgs {
    /// Topic of a single event given by arguments.
    #[arg(long, short = 't', conflicts_with = "file")]
    topic: Option<String>,
    /// Its key.
    #[arg(long, short = 'k', requires = "topic")]
    key: Option<String>,
    /// Its payload, as JSON.
    #[arg(long, short = 'd', requires = "topic", conflicts_with = "data_base64")]
    data: Option<String>,
    /// Its payload, as base64 bytes.
    #[arg(long, requires = "topic")]
    data_base64: Option<String>,
    /// Its idempotency key.
    #[arg(long, requires = "topic")]
    idempotency_key: Option<String>,
    /// JSON-lines file of events; `-` reads standard input.
    #[arg(long, short = 'f', value_name = "FILE")]
    file: Option<String>,
    /// Events per request when publishing a file.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    batch: u64,
    #[command(flatten)]
    server: ServerArgs,
}

pub(crate) fn run(args: &PublishArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.server);
    if let Some(topic) = &args.topic {
        let payload = match &args.data {
            Some(data) => Some(serde_json::from_str(data).context("--data is not valid JSON")?),
            None => None,
        };
        let event = JsonEvent {
            topic: topic.clone(),
            key: args.key.clone(),
            payload,
            payload_base64: args.data_base64.clone(),
            idempotency_key: args.idempotency_key.clone(),
            ..JsonEvent::default()
        };
        let answer: PublishResponse = client.post("/v1/events", &event)?;
        println!("{}", serde_json::to_string(&answer.events.first())?);
        return Ok(ExitCode::SUCCESS);
    }
    let Some(file) = &args.file else {
        bail!("give --topic (one event) or --file (JSON lines; `-` for standard input)");
    };
    publish_lines(&client, file, args.batch as usize)
}

fn publish_lines(client: &Client, file: &str, batch_size: usize) -> anyhow::Result<ExitCode> {
    let (reader, total): (Box<dyn Read>, Option<u64>) = if file == "-" {
        if io::stdin().is_terminal() {
            eprintln!("reading events from standard input, one JSON object per line; end with Ctrl-D");
        }
        (Box::new(io::stdin()), None)
    } else {
        let f = File::open(file).with_context(|| format!("cannot open {file}"))?;
        let len = f.metadata().ok().map(|m| m.len());
        (Box::new(f), len)
    };
    let bar = match total {
        Some(len) => indicatif::ProgressBar::new(len).with_style(
            indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg} ({eta})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        ),
        None => indicatif::ProgressBar::hidden(),
    };
    let started = Instant::now();
    let counts = std::cell::Cell::new((0u64, 0u64));
    let mut batch: Vec<String> = Vec::with_capacity(batch_size);
    let mut first_line = 1usize;
    let send = |batch: &mut Vec<String>, first_line: usize| -> anyhow::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let body = format!("[{}]", batch.join(","));
        let answer = client.post_raw("/v1/events", "application/json", body.as_bytes())?;
        if !answer.is_success() {
            let error = answer.error();
            let line = error.as_ref().and_then(|e| e.index).map(|i| first_line + i);
            let message = error.as_ref().map_or("refused", |e| e.message.as_str());
            match line {
                Some(line) => bail!("{file}:{line}: {message} (nothing from this batch of {} was stored)", batch.len()),
                None => bail!("{file}: batch at line {first_line}: server answered {}: {message}", answer.status()),
            }
        }
        let PublishResponse { events } = answer.into_ok()?;
        let (published, duplicates) = counts.get();
        let new_duplicates = events.iter().filter(|e| e.duplicate).count() as u64;
        counts.set((published + events.len() as u64, duplicates + new_duplicates));
        batch.clear();
        Ok(())
    };
    let mut reader = BufReader::new(reader);
    let mut line = String::new();
    let mut number = 0usize;
    loop {
        line.clear();
        let read = reader.read_line(&mut line).with_context(|| format!("cannot read {file}"))?;
        if read == 0 {
            break;
        }
        number += 1;
        bar.inc(read as u64);
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        if batch.is_empty() {
            first_line = number;
        }
        // Check the JSON here, so the error names the line.
        serde_json::from_str::<Value>(trimmed).with_context(|| format!("{file}:{number}: not valid JSON"))?;
        batch.push(trimmed.to_owned());
        if batch.len() >= batch_size {
            send(&mut batch, first_line)?;
            bar.set_message(format!("{} events", counts.get().0));
        }
    }
    send(&mut batch, first_line)?;
    bar.finish_and_clear();
    let (published, duplicates) = counts.get();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "published {published} events ({duplicates} duplicates) in {secs:.2}s ({:.0} events/s)",
        published as f64 / secs.max(1e-9)
    );
    Ok(ExitCode::SUCCESS)
}
