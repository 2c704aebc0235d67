//! `weir cluster status`: the nodes of a cluster, which node owns each
//! partition, how far it has read and how far behind it is, as the node
//! asked last saw them (`GET /v1/cluster`).

use std::fmt::Write as _;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use weir_runtime::ClusterStatus;

use super::client::{Client, ServerArgs};

#[derive(Debug, Args)]
pub(crate) struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Nodes, partition owners, positions and lag.
    Status {
        /// Print the `/v1/cluster` answer as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub(crate) fn run(args: &ClusterArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        ClusterCommand::Status { json, server } => {
            let status: ClusterStatus = Client::new(server).get("/v1/cluster")?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", render(&status));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn render(s: &ClusterStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node {} ({}), stream {}, {} partitions",
        s.node,
        if s.connected { "connected" } else { "NOT CONNECTED" },
        s.stream,
        s.partitions
    );
    if let Some(e) = &s.last_error {
        let _ = writeln!(out, "last error: {e}");
    }
    let _ = writeln!(out, "\n{:<24} {:<24} PARTITIONS", "NODE", "ADDRESS");
    for n in &s.nodes {
        let parts: Vec<String> = n.partitions.iter().map(ToString::to_string).collect();
        let _ = writeln!(out, "{:<24} {:<24} {}", n.node, n.address, parts.join(","));
    }
    let _ = writeln!(out, "\n{:>9} {:<24} {:>12} {:>10} {:>12}", "PARTITION", "OWNER", "POSITION", "LAG", "PUBLISHED");
    for p in &s.owners {
        let _ = writeln!(
            out,
            "{:>9} {:<24} {:>12} {:>10} {:>12}",
            p.partition,
            p.owner.as_deref().unwrap_or("-"),
            p.position,
            p.lag,
            p.published
        );
    }
    let unowned = s.owners.iter().filter(|p| p.owner.is_none()).count();
    if unowned > 0 {
        let _ = writeln!(out, "\n{unowned} partition(s) have no owner");
    }
    out
}
