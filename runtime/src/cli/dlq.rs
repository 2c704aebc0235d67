//! `weir dlq`: inspect, redrive and purge dead letters on a running server.

use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, Subcommand};
use weir_runtime::models::{
    DLQ_PAGE_MAX, DlqEntryDetail, DlqFilterRequest, DlqListResponse, PurgeResponse, RedriveResponse,
};

use super::client::{Client, ServerArgs, encode};

#[derive(Debug, Args)]
pub(crate) struct DlqArgs {
    #[command(subcommand)]
    command: DlqCommand,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Clone, Args)]
struct Filter {
    /// Only this subscription (`<pipeline>/<handler>`, `consumers/<name>`, `sources/<name>`).
    #[arg(long, short = 's')]
    subscription: Option<String>,
    /// Only this failure code (`handler_reject`, `timeout`, `source_rejected`, …).
    #[arg(long)]
    code: Option<String>,
    /// Only this sequence number.
    #[arg(long)]
    seq: Option<u64>,
}

impl Filter {
    fn body(&self, all: bool) -> DlqFilterRequest {
        DlqFilterRequest { subscription: self.subscription.clone(), code: self.code.clone(), seq: self.seq, all }
    }

    fn is_empty(&self) -> bool {
        self.subscription.is_none() && self.code.is_none() && self.seq.is_none()
    }
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List dead-lettered events (every page, or the first `--limit`).
    List {
        #[command(flatten)]
        filter: Filter,
        /// At most this many entries (by default all, read page by page).
        #[arg(long)]
        limit: Option<usize>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one entry with its whole event and error.
    Show {
        /// `<pipeline>/<handler>`.
        subscription: String,
        /// Sequence number of the event.
        seq: u64,
    },
    /// Send entries back through their subscription's current handler.
    Redrive {
        #[command(flatten)]
        filter: Filter,
        /// Redrive every entry (required when no filter is given).
        #[arg(long)]
        all: bool,
    },
    /// Delete entries for good (explicit only).
    Purge {
        #[command(flatten)]
        filter: Filter,
        /// Purge every entry (required when no filter is given).
        #[arg(long)]
        all: bool,
        /// Confirm: purged events are gone from the DLQ (they stay in the log).
        #[arg(long)]
        yes: bool,
    },
}

pub(crate) fn run(args: &DlqArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.server);
    match &args.command {
        DlqCommand::List { filter, limit, json } => {
            let mut query = Vec::new();
            if let Some(s) = &filter.subscription {
                query.push(format!("subscription={}", encode(s)));
            }
            if let Some(c) = &filter.code {
                query.push(format!("code={}", encode(c)));
            }
            if let Some(s) = filter.seq {
                query.push(format!("seq={s}"));
            }
            // Page after page (each a bounded answer), until the server
            // says there is no more or the limit is reached.
            let mut entries = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let want = limit.map_or(DLQ_PAGE_MAX, |l| (l - entries.len()).min(DLQ_PAGE_MAX));
                if want == 0 {
                    break;
                }
                let mut page_query = query.clone();
                page_query.push(format!("limit={want}"));
                if let Some(after) = &after {
                    page_query.push(format!("after={}", encode(after)));
                }
                let page: DlqListResponse = client.get(&format!("/v1/dlq?{}", page_query.join("&")))?;
                entries.extend(page.entries);
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            if *json {
                println!("{}", serde_json::to_string(&entries)?);
            } else if entries.is_empty() {
                println!("the dead-letter queue is empty");
            } else {
                println!(
                    "{:<28} {:>8} {:<16} {:>8}  {:<24}  MESSAGE",
                    "SUBSCRIPTION", "SEQ", "CODE", "ATTEMPTS", "LAST FAILURE"
                );
                for e in &entries {
                    println!(
                        "{:<28} {:>8} {:<16} {:>8}  {:<24}  {}",
                        e.subscription, e.seq, e.code, e.attempts, e.last_failure, e.message
                    );
                }
            }
        }
        DlqCommand::Show { subscription, seq } => {
            let name = weir_runtime::SubscriptionName::parse(subscription)?;
            let entry: DlqEntryDetail =
                client.get(&format!("/v1/dlq/{}/{}/{seq}", encode(name.pipeline()), encode(name.handler())))?;
            println!("{}", serde_json::to_string_pretty(&entry)?);
        }
        DlqCommand::Redrive { filter, all } => {
            if filter.is_empty() && !all {
                bail!("give --subscription, --code and/or --seq, or --all to redrive every entry");
            }
            let answer: RedriveResponse = client.post("/v1/dlq/redrive", &filter.body(*all))?;
            println!("redriven: {}, already gone: {}", answer.redriven, answer.missing);
        }
        DlqCommand::Purge { filter, all, yes } => {
            if filter.is_empty() && !all {
                bail!("give --subscription, --code and/or --seq, or --all to purge every entry");
            }
            if !yes {
                bail!("purging deletes DLQ entries for good; add --yes to confirm");
            }
            let answer: PurgeResponse = client.post("/v1/dlq/purge", &filter.body(*all))?;
            println!("purged: {}", answer.purged);
        }
    }
    Ok(ExitCode::SUCCESS)
}
