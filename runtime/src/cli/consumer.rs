//! `weir consumer`: durable consumers of a running server.

use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, Subcommand};
use weir_runtime::models::{
    AckItem, AckKind, AckRequest, AckResponse, ConsumerInfo, ConsumerListResponse, ConsumerPutResponse,
    ConsumerRequest, FetchRequest, FetchResponse, ResetRequest,
};

use super::client::{Client, ServerArgs};

#[derive(Debug, Args)]
pub(crate) struct ConsumerArgs {
    #[command(subcommand)]
    command: ConsumerCommand,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Subcommand)]
enum ConsumerCommand {
    /// Create a consumer (or change an existing one's settings).
    Create {
        /// Its name: 1-64 characters of a-z, 0-9, '_' or '-'.
        name: String,
        /// A topic pattern (repeat for more).
        #[arg(long = "topic", short = 't', required = true)]
        topics: Vec<String>,
        /// Where a new consumer starts: beginning, end, a sequence number or
        /// an RFC 3339 time [default: beginning].
        #[arg(long)]
        from: Option<String>,
        /// How long a delivery waits for its ack [default: 30s].
        #[arg(long)]
        ack_wait: Option<String>,
        /// Deliveries in all before the DLQ [default: 5].
        #[arg(long)]
        max_deliveries: Option<u32>,
        /// A wait before a redelivery, by delivery number (repeat; the last
        /// repeats).
        #[arg(long)]
        backoff: Vec<String>,
        /// Deliver events with the same key in parallel, in no order.
        #[arg(long)]
        no_key_ordering: bool,
        /// Most pending deliveries [default: 1000].
        #[arg(long)]
        max_in_flight: Option<u32>,
    },
    /// One line per consumer: lag, in flight, DLQ.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A consumer's settings and numbers, as JSON.
    Info {
        /// The consumer.
        name: String,
    },
    /// Fetch deliveries; one JSON line each (token, seq, attempt, event).
    Fetch {
        /// The consumer.
        name: String,
        /// Most deliveries.
        #[arg(long, default_value_t = 1)]
        max: usize,
        /// Wait this long (up to 30s) for a first delivery.
        #[arg(long)]
        wait: Option<String>,
        /// Ack every delivery once printed.
        #[arg(long)]
        ack: bool,
    },
    /// Ack deliveries by token (or nak, or term them).
    Ack {
        /// The consumer.
        name: String,
        /// Tokens, as fetch printed them.
        #[arg(required = true)]
        tokens: Vec<String>,
        /// Deliver them again instead (after --delay, else the backoff).
        #[arg(long, conflicts_with = "term")]
        nak: bool,
        /// With --nak: wait this long first.
        #[arg(long, requires = "nak")]
        delay: Option<String>,
        /// Never deliver them again: to the DLQ.
        #[arg(long)]
        term: bool,
        /// With --term: why.
        #[arg(long, requires = "term")]
        reason: Option<String>,
    },
    /// Move a consumer to a start position, dropping its pending deliveries.
    Reset {
        /// The consumer.
        name: String,
        /// beginning, end, a sequence number or an RFC 3339 time.
        #[arg(long)]
        from: String,
    },
    /// Delete a consumer, its pending deliveries and its DLQ entries.
    Delete {
        /// The consumer.
        name: String,
    },
}

fn path(name: &str) -> String {
    format!("/v1/consumers/{name}")
}

pub(crate) fn run(args: &ConsumerArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.server);
    match &args.command {
        ConsumerCommand::Create {
            name,
            topics,
            from,
            ack_wait,
            max_deliveries,
            backoff,
            no_key_ordering,
            max_in_flight,
        } => {
            let request = ConsumerRequest {
                topics: topics.clone(),
                from: from.clone(),
                ack_wait: ack_wait.clone(),
                max_deliveries: *max_deliveries,
                backoff: (!backoff.is_empty()).then(|| backoff.clone()),
                per_key_ordering: Some(!no_key_ordering),
                max_in_flight: *max_in_flight,
            };
            let answer: ConsumerPutResponse = client.put_raw(&path(name), &request)?.into_ok()?;
            let verb = if answer.created { "created" } else { "updated" };
            println!("consumer {} {verb} at position {}", answer.consumer.name, answer.consumer.cursor);
        }
        ConsumerCommand::List { json } => {
            let list: ConsumerListResponse = client.get("/v1/consumers")?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!("{:<24} {:>10} {:>8} {:>10} {:>6}  TOPICS", "CONSUMER", "CURSOR", "LAG", "IN FLIGHT", "DLQ");
                for c in &list.consumers {
                    println!(
                        "{:<24} {:>10} {:>8} {:>10} {:>6}  {}",
                        c.name,
                        c.cursor,
                        c.lag,
                        c.in_flight,
                        c.dlq,
                        c.topics.join(",")
                    );
                }
            }
        }
        ConsumerCommand::Info { name } => {
            let info: ConsumerInfo = client.get(&path(name))?;
            println!("{}", serde_json::to_string_pretty(&info)?);
        }
        ConsumerCommand::Fetch { name, max, wait, ack } => {
            let request = FetchRequest { max: Some(*max), wait: wait.clone() };
            let answer: FetchResponse = client.post(&format!("{}/fetch", path(name)), &request)?;
            for d in &answer.deliveries {
                println!("{}", serde_json::to_string(d)?);
            }
            if *ack && !answer.deliveries.is_empty() {
                let acks = answer
                    .deliveries
                    .iter()
                    .map(|d| AckItem { token: d.token.clone(), ..AckItem::default() })
                    .collect();
                let results: AckResponse =
                    client.post(&format!("{}/ack", path(name)), &AckRequest { acks, ..AckRequest::default() })?;
                let refused: Vec<_> = results.results.iter().filter(|r| r.outcome != "acked").collect();
                if !refused.is_empty() {
                    for r in &refused {
                        eprintln!("not acked: {} ({})", r.token, r.outcome);
                    }
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        ConsumerCommand::Ack { name, tokens, nak, delay, term, reason } => {
            let action = if *nak {
                AckKind::Nak
            } else if *term {
                AckKind::Term
            } else {
                AckKind::Ack
            };
            let acks = tokens
                .iter()
                .map(|t| AckItem { token: t.clone(), action, delay: delay.clone(), reason: reason.clone() })
                .collect();
            let results: AckResponse =
                client.post(&format!("{}/ack", path(name)), &AckRequest { acks, ..AckRequest::default() })?;
            let mut failed = false;
            for r in &results.results {
                println!("{} {}", r.token, r.outcome);
                failed |= !matches!(r.outcome.as_str(), "acked" | "naked" | "dead_lettered");
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
        ConsumerCommand::Reset { name, from } => {
            let info: ConsumerInfo =
                client.post(&format!("{}/reset", path(name)), &ResetRequest { from: from.clone() })?;
            println!("consumer {} reset to position {}", info.name, info.cursor);
        }
        ConsumerCommand::Delete { name } => {
            let answer = client.delete_raw(&path(name))?;
            if !answer.is_success() {
                let status = answer.status();
                match answer.error() {
                    Some(e) => bail!("server answered {status} [{}]: {}", e.code, e.message),
                    None => bail!("server answered {status}"),
                }
            }
            println!("consumer {name} deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}
