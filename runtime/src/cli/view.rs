//! `weir view`: query the read models (views) of a running server: one
//! key, or the keys of a view with their values.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use weir_runtime::models::{ViewListResponse, ViewResponse};

use super::client::{Client, ServerArgs, encode};

#[derive(Debug, Args)]
pub(crate) struct ViewArgs {
    #[command(subcommand)]
    command: ViewCommand,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Subcommand)]
enum ViewCommand {
    /// One key of a view: its value (the projection's state for that key)
    /// and the log position it reflects.
    Get {
        /// The view (`view = "…"` on a handler).
        view: String,
        /// The key.
        key: String,
        /// Wait until the view has passed this log position (read your
        /// writes: give the seq a publish or a command answered).
        #[arg(long, value_name = "SEQ")]
        min_position: Option<u64>,
        /// How long to wait for `--min-position` [default: 5s].
        #[arg(long, value_name = "DURATION", default_value = "5s")]
        wait: String,
    },
    /// The keys of a view with their values, in key order.
    List {
        /// The view.
        view: String,
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Start after this key (the `next` of a previous page).
        #[arg(long)]
        after: Option<String>,
        /// Keys per page (at most 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn run(args: &ViewArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.server);
    match &args.command {
        ViewCommand::Get { view, key, min_position, wait } => {
            let mut path = format!("/v1/views/{}/{}", encode(view), encode(key));
            if let Some(seq) = min_position {
                path.push_str(&format!("?min_position={seq}&wait={}", encode(wait)));
            }
            let answer: ViewResponse = client.get(&path)?;
            println!("{}", serde_json::to_string_pretty(&answer)?);
            Ok(ExitCode::SUCCESS)
        }
        ViewCommand::List { view, prefix, after, limit, json } => {
            let mut path = format!("/v1/views/{}?limit={limit}&prefix={}", encode(view), encode(prefix));
            if let Some(after) = after {
                path.push_str(&format!("&after={}", encode(after)));
            }
            let answer: ViewListResponse = client.get(&path)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("view {} at position {}", answer.view, answer.position);
            for item in &answer.items {
                let value = serde_json::to_string(&item.value)?;
                println!("{:<32} {value}{}", item.key, if item.truncated { " (truncated)" } else { "" });
            }
            if let Some(next) = &answer.next {
                println!("more: --after {next}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
