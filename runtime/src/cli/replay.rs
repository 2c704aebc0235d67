//! `weir replay`: rebuild a stateful handler's state (a projection's view)
//! from the log on a running server, while the live one keeps serving, and
//! follow its progress until it switches.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde_json::json;
use weir_runtime::ReplayInfo;

use super::client::{Client, ServerArgs};

#[derive(Debug, Args)]
#[command(after_help = "\
The handler runs over the log from --from into a shadow copy of its state, emitting nothing; the
live state keeps serving reads (views, the state API) until the shadow has caught up, then one
commit switches to it. Exit status: 0 when the replay switched, 1 when it failed (the live state
is unchanged), 2 on a usage error.")]
pub(crate) struct ReplayArgs {
    /// The subscription, `<pipeline>/<handler>`.
    name: String,
    /// Where to start: `beginning`, a sequence number, or an RFC 3339 time.
    #[arg(long, default_value = "beginning")]
    from: String,
    /// Start the replay and return without following it.
    #[arg(long)]
    no_wait: bool,
    #[command(flatten)]
    server: ServerArgs,
}

pub(crate) fn run(args: &ReplayArgs) -> anyhow::Result<ExitCode> {
    let Some((pipeline, handler)) = args.name.split_once('/') else {
        anyhow::bail!("name the subscription as <pipeline>/<handler>, not {:?}", args.name);
    };
    let client = Client::new(&args.server);
    let path = format!("/v1/subscriptions/{pipeline}/{handler}/replay");
    let started: ReplayInfo = client.post(&path, &json!({ "from": args.from }))?;
    eprintln!(
        "replaying {} from seq {} into state generation {}",
        started.subscription, started.from, started.generation
    );
    if args.no_wait {
        println!("{}", serde_json::to_string_pretty(&started)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut last = String::new();
    loop {
        let info: ReplayInfo = client.get(&path)?;
        let line = format!(
            "{}: seq {} of {}, {} applied, {} skipped, {} failed",
            info.state, info.position, info.target, info.applied, info.skipped, info.failed
        );
        if line != last {
            eprintln!("{line}");
            last = line;
        }
        match info.state.as_str() {
            "done" => {
                println!("{}", serde_json::to_string_pretty(&info)?);
                return Ok(ExitCode::SUCCESS);
            }
            "failed" => {
                eprintln!("error: the replay failed: {}", info.error.as_deref().unwrap_or("unknown"));
                return Ok(ExitCode::FAILURE);
            }
            _ => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}
