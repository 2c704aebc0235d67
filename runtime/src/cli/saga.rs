//! `weir saga`: list and show saga instances on a running server, and the
//! operator's actions on one (cancel, resume, skip).

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::Value;
use weir_runtime::SAGA_PAGE_MAX;
use weir_runtime::saga::Instance;

use super::client::{Client, ServerArgs, encode};

#[derive(Debug, Args)]
pub(crate) struct SagaArgs {
    #[command(subcommand)]
    command: SagaCommand,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Subcommand)]
enum SagaCommand {
    /// List saga instances (every page, or the first `--limit`).
    List {
        /// Only those in this status (running, compensating, completed,
        /// compensated, cancelled, compensation_failed, forward_failed).
        #[arg(long)]
        status: Option<String>,
        /// Only this saga (its name in `[[sagas]]`).
        #[arg(long)]
        saga: Option<String>,
        /// At most this many (by default all, read page by page).
        #[arg(long)]
        limit: Option<usize>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one instance and its timeline.
    Show {
        /// The saga id.
        id: String,
        /// The saga, when two declare the same id.
        #[arg(long)]
        saga: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop a running saga (before its pivot) and compensate its completed
    /// steps; or give up a failed compensation.
    Cancel {
        /// The saga id.
        id: String,
        #[arg(long)]
        saga: Option<String>,
    },
    /// Try a failed compensation (or forward step) again.
    Resume {
        /// The saga id.
        id: String,
        #[arg(long)]
        saga: Option<String>,
    },
    /// Take a failed compensation (or forward step) as done and go on.
    Skip {
        /// The saga id.
        id: String,
        #[arg(long)]
        saga: Option<String>,
    },
}

fn time(ms: u64) -> String {
    weir_runtime::format_time(i64::try_from(ms).unwrap_or(i64::MAX).saturating_mul(1_000_000))
}

fn saga_query(saga: Option<&String>) -> String {
    saga.map(|s| format!("?saga={}", encode(s))).unwrap_or_default()
}

pub(crate) fn run(args: &SagaArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.server);
    match &args.command {
        SagaCommand::List { status, saga, limit, json } => {
            let mut query = Vec::new();
            if let Some(s) = status {
                query.push(format!("status={}", encode(s)));
            }
            if let Some(s) = saga {
                query.push(format!("saga={}", encode(s)));
            }
            let mut sagas: Vec<Value> = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let want = limit.map_or(SAGA_PAGE_MAX, |l| (l - sagas.len()).min(SAGA_PAGE_MAX));
                if want == 0 {
                    break;
                }
                let mut page_query = query.clone();
                page_query.push(format!("limit={want}"));
                if let Some(after) = &after {
                    page_query.push(format!("after={}", encode(after)));
                }
                let page: Value = client.get(&format!("/v1/sagas?{}", page_query.join("&")))?;
                sagas.extend(page["sagas"].as_array().cloned().unwrap_or_default());
                match page["next"].as_str() {
                    Some(next) => after = Some(next.to_owned()),
                    None => break,
                }
            }
            if *json {
                println!("{}", serde_json::to_string(&sagas)?);
            } else if sagas.is_empty() {
                println!("no saga instances");
            } else {
                println!("{:<12} {:<28} {:<20} {:<12} {:<24}  CAUSE", "SAGA", "ID", "STATUS", "STEP", "UPDATED");
                for s in &sagas {
                    println!(
                        "{:<12} {:<28} {:<20} {:<12} {:<24}  {}",
                        s["saga"].as_str().unwrap_or(""),
                        s["id"].as_str().unwrap_or(""),
                        s["status"].as_str().unwrap_or(""),
                        s["step"].as_str().unwrap_or(""),
                        time(s["updated_ms"].as_u64().unwrap_or(0)),
                        s["cause"].as_str().unwrap_or("")
                    );
                }
            }
        }
        SagaCommand::Show { id, saga, json } => {
            let inst: Instance = client.get(&format!("/v1/sagas/{}{}", encode(id), saga_query(saga.as_ref())))?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&inst)?);
            } else {
                print_instance(&inst);
            }
        }
        SagaCommand::Cancel { id, saga } => return act(&client, id, saga.as_ref(), "cancel"),
        SagaCommand::Resume { id, saga } => return act(&client, id, saga.as_ref(), "resume"),
        SagaCommand::Skip { id, saga } => return act(&client, id, saga.as_ref(), "skip"),
    }
    Ok(ExitCode::SUCCESS)
}

fn act(client: &Client, id: &str, saga: Option<&String>, action: &str) -> anyhow::Result<ExitCode> {
    let answer: Value =
        client.post(&format!("/v1/sagas/{}/{action}{}", encode(id), saga_query(saga)), &serde_json::json!({}))?;
    let status = answer["saga"]["status"].as_str().unwrap_or("?");
    if answer["taken"] == Value::Bool(true) {
        println!("{action}: saga {id} is now {status}");
    } else {
        println!("{action}: queued for saga {id} (still {status}); `weir saga show {id}` to follow it");
    }
    Ok(ExitCode::SUCCESS)
}

fn print_instance(i: &Instance) {
    println!("saga      {} {}", i.saga, i.id);
    println!("status    {}", i.status.as_str());
    if let Some(cause) = &i.cause {
        println!("cause     {cause}");
    }
    println!("step      {} (attempt {})", i.step_name, i.attempt);
    println!("completed {}", i.completed.join(", "));
    println!("undone    {}", i.compensated.join(", "));
    println!("started   {}", time(i.started_ms));
    println!("updated   {}", time(i.updated_ms));
    if i.timeline_dropped > 0 {
        println!("timeline  ({} older entries dropped)", i.timeline_dropped);
    } else {
        println!("timeline");
    }
    for e in &i.timeline {
        let mut line = format!("  {}  {:<20}", time(e.at_ms), e.kind);
        if let Some(step) = &e.step {
            line.push_str(&format!(" {step}"));
        }
        if let Some(a) = e.attempt {
            line.push_str(&format!(" #{a}"));
        }
        if let Some(t) = &e.topic {
            line.push_str(&format!(" {t}"));
        }
        if let Some(n) = &e.note {
            line.push_str(&format!(" ({n})"));
        }
        println!("{line}");
    }
}
