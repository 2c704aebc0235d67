//! `weir command`: send a command to an entity of a running server, read
//! an entity's recorded commands (docs/event-sourcing.md, "Aggregates and
//! commands").

use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use weir_runtime::models::{COMMAND_PAGE_MAX, CommandAccepted, CommandListResponse, CommandRequestBody};

use super::client::{Client, ServerArgs, encode};

#[derive(Debug, Args)]
pub(crate) struct CommandArgs {
    #[command(subcommand)]
    command: CommandCommand,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Subcommand)]
enum CommandCommand {
    /// Send a command to an entity; its aggregate decides it. Prints the
    /// events it appended (exit 0) or the rejection's reason (exit 1).
    Send {
        /// The entity: `<domain>.<entity>/<key>` (`accounts.account/42`).
        entity: String,
        /// The command's name (`deposit`).
        command: String,
        /// Its payload, JSON (`'{"amount": 50}'`) [default: null].
        #[arg(long)]
        payload: Option<String>,
        /// The idempotency key: send the command again with the same key
        /// to get its first answer [default: a fresh id, printed on stderr].
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Print an entity's recorded commands, oldest first, or one by its
    /// idempotency key, as JSON lines.
    List {
        /// The entity: `<domain>.<entity>/<key>`.
        entity: String,
        /// Only the command with this idempotency key.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// At most this many commands [default: all].
        #[arg(long)]
        limit: Option<usize>,
    },
}

pub(crate) fn run(args: &CommandArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.server);
    match &args.command {
        CommandCommand::Send { entity, command, payload, idempotency_key } => {
            send(&client, entity, command, payload.as_deref(), idempotency_key.clone())
        }
        CommandCommand::List { entity, idempotency_key, limit } => {
            list(&client, entity, idempotency_key.as_deref(), *limit)
        }
    }
}

/// `/v1/commands/<type>/<key>` of `<type>/<key>`.
fn path(entity: &str) -> anyhow::Result<String> {
    match entity.split_once('/') {
        Some((ty, key)) if !ty.is_empty() && !key.is_empty() => {
            Ok(format!("/v1/commands/{}/{}", encode(ty), encode(key)))
        }
        _ => bail!("{entity:?} is not an entity: give <domain>.<entity>/<key>, e.g. accounts.account/42"),
    }
}

fn send(
    client: &Client,
    entity: &str,
    command: &str,
    payload: Option<&str>,
    idempotency_key: Option<String>,
) -> anyhow::Result<ExitCode> {
    let path = path(entity)?;
    let payload = match payload {
        Some(text) => Some(serde_json::from_str(text).context("--payload is not JSON")?),
        None => None,
    };
    let idempotency_key = idempotency_key.unwrap_or_else(|| {
        let key = weir_runtime::IdGenerator::new().next_id().to_string();
        eprintln!("idempotency key: {key}");
        key
    });
    let body = serde_json::to_vec(&CommandRequestBody { command: command.to_owned(), payload, idempotency_key })?;
    let answer = client.post_raw(&path, "application/json", &body)?;
    if answer.status() == 422
        && let Some(error) = answer.error()
        && error.code == "command_rejected"
    {
        eprintln!("rejected: {}", error.message);
        return Ok(ExitCode::from(1));
    }
    let accepted: CommandAccepted = answer.into_ok()?;
    println!("{}", serde_json::to_string_pretty(&accepted)?);
    Ok(ExitCode::SUCCESS)
}

fn list(
    client: &Client,
    entity: &str,
    idempotency_key: Option<&str>,
    limit: Option<usize>,
) -> anyhow::Result<ExitCode> {
    let base = path(entity)?;
    if let Some(key) = idempotency_key {
        let page: CommandListResponse = client.get(&format!("{base}?idempotency_key={}", encode(key)))?;
        for command in &page.commands {
            println!("{}", serde_json::to_string(command)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut from = 0;
    let mut printed = 0usize;
    loop {
        let want = limit.map_or(COMMAND_PAGE_MAX, |l| l.saturating_sub(printed).min(COMMAND_PAGE_MAX));
        if want == 0 {
            break;
        }
        let page: CommandListResponse = client.get(&format!("{base}?from={from}&limit={want}"))?;
        for command in &page.commands {
            println!("{}", serde_json::to_string(command)?);
        }
        printed += page.commands.len();
        match page.next {
            Some(next) if !page.commands.is_empty() => from = next,
            _ => break,
        }
    }
    Ok(ExitCode::SUCCESS)
}
