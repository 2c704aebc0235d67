//! `weir subscription`: list configured and orphaned subscriptions with
//! what the store holds for each, and delete an orphan's data.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use weir_runtime::models::{SubscriptionDeleteResponse, SubscriptionListResponse};

use super::client::{Client, ServerArgs};

#[derive(Debug, Args)]
pub(crate) struct SubscriptionArgs {
    #[command(subcommand)]
    command: SubscriptionCommand,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Subcommand)]
enum SubscriptionCommand {
    /// Every subscription the running configuration names or the store
    /// holds data for (orphans), with that data and whether it holds the
    /// log's retention back.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete everything the store holds for a subscription that is no
    /// longer configured: cursor, parked events, DLQ, idempotency records,
    /// counters and plugin history. Refused for a configured one.
    Delete {
        /// `<pipeline>/<handler>`.
        name: String,
    },
}

pub(crate) fn run(args: &SubscriptionArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.server);
    match &args.command {
        SubscriptionCommand::List { json } => {
            let list: SubscriptionListResponse = client.get("/v1/subscriptions")?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<32} {:<10} {:>10} {:>8} {:>8} {:>12} {:>8}  RETENTION",
                "SUBSCRIPTION", "STATE", "CURSOR", "PARKED", "DLQ", "IDEMPOTENCY", "VERSIONS"
            );
            for s in &list.subscriptions {
                let held = match (s.retention_held, s.retention_held_since) {
                    (Some(n), Some(since)) => format!("holds {n} event(s) from seq {since}"),
                    _ => "-".to_owned(),
                };
                println!(
                    "{:<32} {:<10} {:>10} {:>8} {:>8} {:>12} {:>8}  {held}",
                    s.name,
                    if s.configured { "configured" } else { "orphan" },
                    s.cursor.map_or_else(|| "-".to_owned(), |c| c.to_string()),
                    s.parked,
                    s.dlq,
                    format!("{}{}", s.idempotency, if s.idempotency_capped { "+" } else { "" }),
                    s.versions,
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        SubscriptionCommand::Delete { name } => {
            let Some((pipeline, handler)) = name.split_once('/') else {
                anyhow::bail!("name the subscription as <pipeline>/<handler>, not {name:?}");
            };
            let answer: SubscriptionDeleteResponse =
                client.delete_raw(&format!("/v1/subscriptions/{pipeline}/{handler}"))?.into_ok()?;
            let d = &answer.deleted;
            println!(
                "deleted {}: cursor {}, {} parked, {} DLQ, {}{} idempotency records, {} versions, {} timers",
                d.name,
                d.cursor.map_or_else(|| "-".to_owned(), |c| c.to_string()),
                d.parked,
                d.dlq,
                d.idempotency,
                if d.idempotency_capped { "+" } else { "" },
                d.versions,
                d.timers
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
