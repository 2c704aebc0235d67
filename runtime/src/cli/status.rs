//! `weir status`: one line per subscription of a running server.

use std::process::ExitCode;

use clap::Args;

use super::client::{Client, ServerArgs};

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArgs,
}

pub(crate) fn run(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let answer = Client::new(&args.server).get("/v1/status")?;
    if args.json {
        println!("{answer}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("log head: {}", answer["head"]);
    println!(
        "{:<28} {:>8} {:>8} {:>9} {:>8} {:>6} {:<10}",
        "SUBSCRIPTION", "LAG", "PARKED", "HANDLED", "DUPS", "DLQ", "PLUGIN"
    );
    for s in answer["subscriptions"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
        println!(
            "{:<28} {:<9} {:>8} {:>8} {:>9} {:>8} {:>6} {} {}",
            s["name"].as_str().unwrap_or(""),
            s["state"].as_str().unwrap_or(""),
            n(&s["lag"]),
            n(&s["parked"]),
            n(&s["stats"]["handled"]),
            n(&s["stats"]["duplicates"]),
            n(&s["dlq"]),
            s["plugin"].as_str().unwrap_or(""),
            s["plugin_version"].as_str().unwrap_or("").chars().take(12).collect::<String>()
        );
    }
    Ok(ExitCode::SUCCESS)
}
