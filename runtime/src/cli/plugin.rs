//! `weir plugin`: deploy, list, history and rollback on a running server.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use clap::{Args, Subcommand};
use serde_json::Value;
use weir_runtime::models::{
    DeployRequest, DeployResponse, DryRunRequest, HistoryResponse, PluginsResponse, RollbackRequest,
};

use super::client::{Client, ServerArgs};

#[derive(Debug, Args)]
pub(crate) struct PluginArgs {
    #[command(subcommand)]
    command: PluginCommand,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Validate a module and make it the handler's active version, live: the
    /// invocation in flight finishes on the old version, the next runs the new.
    #[command(after_help = "\
A test-events file holds one sample per line: a plain event (it must not fail in the sandbox),
or {\"event\": {…}, \"expect\": \"ok\" | \"retry\" | \"reject\", \"emits\": N}. Any sample that traps,
times out, or does not produce what it expects refuses the deploy; the running version stays.

With --replay-from, nothing is deployed: the module runs over the log from that position (its
handler's topics, up to --limit events) on an instance of its own, state kept in memory and
starting empty, and what it emits for each event is compared with what the running handler
recorded. Exit status 0 when every compared event's outputs are the same, 1 when any differ.")]
    Deploy {
        /// `<pipeline>/<handler>`.
        handler: String,
        /// The module (.wasm).
        file: PathBuf,
        /// Sample events the candidate must pass first (JSON lines).
        #[arg(long, value_name = "FILE")]
        test_events: Option<PathBuf>,
        /// Who deploys, recorded in the history [default: $USER].
        #[arg(long)]
        by: Option<String>,
        /// Dry run from this position (`beginning`, a seq, or an RFC 3339
        /// time): compare outputs with the recorded ones, deploy nothing.
        #[arg(long, value_name = "POSITION")]
        replay_from: Option<String>,
        /// Most events of the handler's topics the dry run reads.
        #[arg(long, value_name = "N", default_value_t = weir_runtime::DRY_RUN_DEFAULT_EVENTS, requires = "replay_from")]
        limit: usize,
    },
    /// Each handler with its active version.
    List,
    /// A handler's deploy history.
    History {
        /// `<pipeline>/<handler>`.
        handler: String,
    },
    /// Wait until a handler runs the given module (after `weir run --watch`
    /// picked up a build, or a deploy from elsewhere); exit 1 on timeout.
    Wait {
        /// `<pipeline>/<handler>`.
        handler: String,
        /// The module (.wasm) the handler should be running.
        file: PathBuf,
        /// Give up after this long.
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Switch back to an earlier version (the previous one by default).
    Rollback {
        /// `<pipeline>/<handler>`.
        handler: String,
        /// sha256 (or a unique prefix) of the version to run.
        #[arg(long)]
        to: Option<String>,
        /// Who rolls back, recorded in the history [default: $USER].
        #[arg(long)]
        by: Option<String>,
    },
}

/// `--by`, else `$USER`, else `cli`: who is recorded in the history.
fn actor(by: Option<&String>) -> String {
    by.cloned().or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty())).unwrap_or_else(|| "cli".into())
}

/// A deploy's or rollback's answer when the version was already active.
fn unchanged(handler: &str, answer: &DeployResponse) -> Option<String> {
    (!answer.changed).then(|| {
        format!(
            "{handler}: version {} ({}) is already active; nothing changed",
            answer.version,
            short(Some(&answer.sha256))
        )
    })
}

fn split(handler: &str) -> anyhow::Result<(&str, &str)> {
    let name = weir_runtime::SubscriptionName::parse(handler)?;
    // The parts of the parsed name, borrowed from the argument.
    let cut = name.pipeline().len();
    Ok((&handler[..cut], &handler[cut + 1..]))
}

pub(crate) fn run(args: &PluginArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.server);
    match &args.command {
        PluginCommand::Deploy { handler, file, test_events, by, replay_from, limit } => {
            let (pipeline, name) = split(handler)?;
            let module = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            if let Some(from) = replay_from {
                if test_events.is_some() {
                    bail!("--test-events and --replay-from do not go together: a dry run deploys nothing");
                }
                return dry_run(&client, handler, (pipeline, name), &module, from, *limit);
            }
            let mut samples = Vec::new();
            if let Some(path) = test_events {
                let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
                for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                    let value: Value = serde_json::from_str(line)
                        .with_context(|| format!("{}:{}: not valid JSON", path.display(), i + 1))?;
                    samples.push(value);
                }
            }
            let by = actor(by.as_ref());
            let body = DeployRequest {
                module_base64: base64::engine::general_purpose::STANDARD.encode(&module),
                by: Some(by),
                test_events: samples,
            };
            let answer: DeployResponse = client.post(&format!("/v1/plugins/{pipeline}/{name}/deploy"), &body)?;
            match unchanged(handler, &answer) {
                Some(line) => println!("{line}"),
                None => println!(
                    "{handler}: version {} active ({}), replacing {}",
                    answer.version,
                    short(Some(&answer.sha256)),
                    short(answer.previous.as_deref())
                ),
            }
        }
        PluginCommand::List => {
            let answer: PluginsResponse = client.get("/v1/plugins")?;
            println!("{:<28} {:<14} {:<18} {:>8}  DEPLOYED BY", "HANDLER", "ACTIVE", "PLUGIN", "VERSIONS");
            for h in &answer.handlers {
                let active = h.active.as_ref();
                println!(
                    "{:<28} {:<14} {:<18} {:>8}  {}",
                    h.handler,
                    short(active.map(|a| a.sha256.as_str())),
                    active.and_then(|a| a.description.as_ref()).map_or("-", |d| d.name.as_str()),
                    h.versions,
                    active.map_or("-", |a| a.deployed_by.as_str())
                );
            }
        }
        PluginCommand::History { handler } => {
            let (pipeline, name) = split(handler)?;
            let HistoryResponse { history } = client.get(&format!("/v1/plugins/{pipeline}/{name}"))?;
            if history.is_empty() {
                bail!("no history for {handler}: is it a handler of the running configuration?");
            }
            println!("{:>4}  {:<14} {:<10} {:<24} {:>9}  BY", "#", "SHA256", "ACTION", "DEPLOYED", "BYTES");
            for entry in &history {
                let r = &entry.record;
                let at = i64::try_from(r.deployed_at_ms).unwrap_or(0).saturating_mul(1_000_000);
                println!(
                    "{:>4}  {:<14} {:<10} {:<24} {:>9}  {}",
                    entry.version,
                    short(Some(&r.sha256)),
                    r.action,
                    weir_runtime::format_time(at),
                    r.size,
                    r.deployed_by
                );
            }
        }
        PluginCommand::Wait { handler, file, timeout } => {
            let module = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            let want = weir_runtime::ContentHash::of(&module).to_string();
            let give_up = std::time::Instant::now() + *timeout;
            loop {
                let answer: PluginsResponse = client.get("/v1/plugins")?;
                let Some(info) = answer.handlers.iter().find(|h| h.handler == *handler) else {
                    bail!("no handler named {handler} in the running configuration");
                };
                let active = info.active.as_ref().map(|a| a.sha256.as_str());
                if active == Some(want.as_str()) {
                    println!("{handler}: running {} ({})", short(Some(&want)), file.display());
                    break;
                }
                if std::time::Instant::now() >= give_up {
                    eprintln!(
                        "error: {handler} still runs {} after {timeout:?}, not {} ({})",
                        short(active),
                        short(Some(&want)),
                        file.display()
                    );
                    return Ok(ExitCode::FAILURE);
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        PluginCommand::Rollback { handler, to, by } => {
            let (pipeline, name) = split(handler)?;
            let body = RollbackRequest { to: to.clone(), by: Some(actor(by.as_ref())) };
            let answer: DeployResponse = client.post(&format!("/v1/plugins/{pipeline}/{name}/rollback"), &body)?;
            match unchanged(handler, &answer) {
                Some(line) => println!("{line}"),
                None => {
                    println!("{handler}: rolled back to {} (version {})", short(Some(&answer.sha256)), answer.version);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `deploy --replay-from`: ask the server for a dry run and print its report.
fn dry_run(
    client: &Client,
    handler: &str,
    (pipeline, name): (&str, &str),
    module: &[u8],
    from: &str,
    limit: usize,
) -> anyhow::Result<ExitCode> {
    let body = DryRunRequest {
        module_base64: base64::engine::general_purpose::STANDARD.encode(module),
        from: Some(from.to_owned()),
        limit: Some(limit),
    };
    let report: Value = client.post(&format!("/v1/plugins/{pipeline}/{name}/dry-run"), &body)?;
    let n = |k: &str| report[k].as_u64().unwrap_or(0);
    println!(
        "dry run of {} as {handler} (running: {}), nothing deployed or written",
        short(report["sha256"].as_str()),
        short(report["active"].as_str())
    );
    let to = report["to"].as_u64().map_or_else(|| "-".to_owned(), |t| t.to_string());
    println!(
        "  read {} events of its topics, seq {} to {to}{}",
        n("events"),
        n("from"),
        if report["truncated"].as_bool() == Some(true) { " (stopped at --limit; the log goes on)" } else { "" }
    );
    println!(
        "  compared {}: {} same, {} different; the candidate failed on {}; {} not handled by the running version (not compared)",
        n("compared"),
        n("same"),
        n("different"),
        n("candidate_failed"),
        n("not_compared")
    );
    println!("  state: {}", report["state"].as_str().unwrap_or("-"));
    let empty = Vec::new();
    for d in report["differences"].as_array().unwrap_or(&empty) {
        println!(
            "\n  seq {} ({}, key {}):",
            d["seq"],
            d["topic"].as_str().unwrap_or("?"),
            d["key"].as_str().unwrap_or("-")
        );
        let outputs = |v: &Value| {
            v.as_array()
                .unwrap_or(&empty)
                .iter()
                .map(|o| format!("{} {}", o["topic"].as_str().unwrap_or("?"), o["payload"].as_str().unwrap_or("")))
                .collect::<Vec<_>>()
        };
        println!("    recorded:  {}", outputs(&d["recorded"]).join(" | "));
        match d["candidate_error"].as_str() {
            Some(error) => println!("    candidate: failed: {error}"),
            None => println!("    candidate: {}", outputs(&d["candidate"]).join(" | ")),
        }
    }
    let listed = report["differences"].as_array().map_or(0, Vec::len) as u64;
    if n("different") > listed {
        println!("\n  … and {} more", n("different") - listed);
    }
    Ok(if n("different") == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// A sha256's first 12 characters, or `-`.
fn short(sha256: Option<&str>) -> String {
    sha256.map_or_else(|| "-".into(), |s| s.chars().take(12).collect())
}
