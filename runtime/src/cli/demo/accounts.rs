//! `weir demo accounts`: the event-sourcing demo. Three bank accounts on
//! the embedded store: commands decided by the `bank-account` aggregate
//! (one refused), two projections read as views once they reflect the
//! commands (read-your-writes), one of them rebuilt from the log (replay),
//! and an account's balance as it was (time travel).
//!
//! The runtime's HTTP API is served in this process on a free loopback
//! port and every step is the request a client of `weir run` would send,
//! printed as it goes, so the output doubles as a tour of the API.

use std::net::TcpListener;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use weir_runtime::models::{
    CommandAccepted, EntityStateResponse, ErrorResponse, StreamReadResponse, ViewListResponse, ViewResponse,
};
use weir_runtime::{Config, ReplayInfo, Runtime};

/// The plugins it runs, by file name.
const PLUGINS: [&str; 3] = ["bank_account", "balances", "statements"];

/// The commands: (account, command, payload). Amounts are in cents.
fn commands() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        ("alice", "open", json!({"owner": "Alice"})),
        ("bob", "open", json!({"owner": "Bob"})),
        ("carol", "open", json!({"owner": "Carol"})),
        ("alice", "deposit", json!({"amount": 10_000})),
        ("bob", "deposit", json!({"amount": 5_000})),
        ("carol", "deposit", json!({"amount": 2_500})),
        ("alice", "withdraw", json!({"amount": 3_000})),
        // Over bob's balance of 50.00: the aggregate refuses it.
        ("bob", "withdraw", json!({"amount": 7_500})),
        ("carol", "deposit", json!({"amount": 1_000})),
        ("bob", "deposit", json!({"amount": 2_500})),
        ("carol", "withdraw", json!({"amount": 500})),
    ]
}

const ACCOUNTS: [&str; 3] = ["alice", "bob", "carol"];
const STREAMS: &str = "/v1/streams/accounts.account";

/// Cents as `123.45`.
fn money(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// A blocking client of the API served in this process.
struct Api {
    agent: ureq::Agent,
    base: String,
}

impl Api {
    /// The status and the body, whatever the status.
    fn send(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<(u16, String)> {
        let url = format!("{}{path}", self.base);
        let response = match body {
            Some(body) => self.agent.post(&url).header("content-type", "application/json").send(body.to_string()),
            None if method == "POST" => self.agent.post(&url).send_empty(),
            None => self.agent.get(&url).call(),
        };
        let mut response = response.with_context(|| format!("{method} {path}"))?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().with_context(|| format!("{method} {path}: the answer"))?;
        Ok((status, text))
    }

    /// A 2xx answer as `T`; any other is an error naming the request.
    fn ok<T: DeserializeOwned>(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<T> {
        let (status, text) = self.send(method, path, body)?;
        if !(200..300).contains(&status) {
            bail!("{method} {path} answered {status}: {}", text.trim());
        }
        serde_json::from_str(&text).with_context(|| format!("{method} {path}: unexpected answer {text}"))
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.ok("GET", path, None)
    }
}

/// A number field of a view's value or an aggregate's state.
fn number(value: Option<&Value>, what: &str) -> anyhow::Result<u64> {
    value.and_then(Value::as_u64).with_context(|| format!("{what} is not a number: {value:?}"))
}

pub(crate) fn run(plugins: &Path, data_dir: Option<&Path>) -> anyhow::Result<ExitCode> {
    for plugin in PLUGINS {
        let path = plugins.join(format!("{plugin}.wasm"));
        if !path.is_file() {
            bail!(
                "{} is missing: build the example plugins first (scripts/demo.sh does), or point --plugins at them",
                path.display()
            );
        }
    }
    let temp;
    let data_dir = match data_dir {
        Some(dir) => dir.to_owned(),
        None => {
            temp = tempfile::tempdir().context("cannot create a temporary directory")?;
            temp.path().to_owned()
        }
    };
    let plugins = std::fs::canonicalize(plugins)?;
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot listen on a loopback port")?;
    let addr = listener.local_addr()?;
    let toml = format!(
        r#"
data_dir = {data:?}

[http]
listen = "{addr}"

# The entity type: its events form one stream per account, and its
# aggregate decides the commands sent to an account.
[[entities]]
type = "accounts.account"
aggregate = {aggregate:?}

# Two projections of the accounts' events, each served as a view.
[[pipelines]]
name = "accounts"
topics = ["accounts.account.*"]

[[pipelines.handlers]]
name = "balances"
plugin = {balances:?}
view = "balances"

[[pipelines.handlers]]
name = "statements"
plugin = {statements:?}
view = "statements"
"#,
        data = data_dir.join("data").display().to_string(),
        aggregate = plugins.join("bank_account.wasm").display().to_string(),
        balances = plugins.join("balances.wasm").display().to_string(),
        statements = plugins.join("statements.wasm").display().to_string(),
    );
    let config_path = data_dir.join("weir.toml");
    std::fs::create_dir_all(&data_dir)?;
    std::fs::write(&config_path, &toml)?;
    println!("== configuration ({})", config_path.display());
    println!("{}", toml.trim());
    let config = Config::load(&config_path)?;
    let runtime = Arc::new(Runtime::start(&config)?);

    // The API as `weir run` serves it, on two I/O threads.
    let io = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    listener.set_nonblocking(true)?;
    let listener = {
        let _guard = io.enter();
        tokio::net::TcpListener::from_std(listener)?
    };
    let app = weir_runtime::router(Arc::clone(&runtime));
    let http = config.http.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = io.spawn(async move {
        weir_runtime::serve(listener, app, &http, async move {
            let _ = stopped.await;
        })
        .await
    });
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(60))).build(),
    );
    let api = Api { agent, base: format!("http://{addr}") };

    let result = tour(&api);

    let _ = stop.send(());
    let served = io.block_on(server);
    drop(io);
    result?;
    served.context("the HTTP server task")?.context("the HTTP server")?;
    match Arc::try_unwrap(runtime) {
        Ok(runtime) => runtime.shutdown()?,
        Err(_) => bail!("the runtime is still in use after the server stopped"),
    }
    Ok(ExitCode::SUCCESS)
}

/// The demo's steps, over the API.
fn tour(api: &Api) -> anyhow::Result<()> {
    println!("\n== commands: POST /v1/commands/accounts.account/<account>, decided by the aggregate");
    let mut last_seq = 0;
    let mut rejected = 0;
    for (i, (account, command, payload)) in commands().into_iter().enumerate() {
        let body = json!({"command": command, "payload": payload, "idempotency_key": format!("demo-{i}")});
        let path = format!("/v1/commands/accounts.account/{account}");
        let (status, text) = api.send("POST", &path, Some(&body))?;
        let shown = format!("  {account:<6} {command:<9} {:<20}", payload.to_string());
        match status {
            200 => {
                let accepted: CommandAccepted = serde_json::from_str(&text)?;
                let seq = accepted.events.iter().map(|e| e.seq).max().unwrap_or(0);
                last_seq = last_seq.max(seq);
                let revision = accepted.revision.map_or_else(|| "-".to_owned(), |r| r.to_string());
                println!("{shown} accepted: revision {revision}, log seq {seq}");
            }
            422 => {
                let error: ErrorResponse = serde_json::from_str(&text)?;
                if error.error.code != "command_rejected" {
                    bail!("POST {path} answered 422 {}: {}", error.error.code, error.error.message);
                }
                rejected += 1;
                println!("{shown} REJECTED: {}", error.error.message);
            }
            _ => bail!("POST {path} answered {status}: {}", text.trim()),
        }
    }
    if rejected != 1 {
        bail!("expected exactly one command to be rejected, {rejected} were");
    }
    println!(
        "  (a rejected command appends nothing; every command is recorded: GET /v1/commands/accounts.account/bob)"
    );

    // Read your writes: the views answer once they reflect the last event.
    let wait = format!("min_position={last_seq}&wait=10s");
    println!("\n== view `balances`: GET /v1/views/balances?{wait}");
    println!("   (answers once the projection has handled every event up to seq {last_seq}: read-your-writes)");
    let before: ViewListResponse = api.get(&format!("/v1/views/balances?{wait}"))?;
    println!("  {:<8} {:>10} {:>10}", "ACCOUNT", "BALANCE", "MOVEMENTS");
    for item in &before.items {
        let balance = number(item.value.get("balance"), "balance")?;
        let movements = number(item.value.get("movements"), "movements")?;
        println!("  {:<8} {:>10} {:>10}", item.key, money(balance), movements);
        let folded: EntityStateResponse = api.get(&format!("{STREAMS}/{}/state", item.key))?;
        let (b, m) =
            (number(folded.state.get("balance"), "balance")?, number(folded.state.get("movements"), "movements")?);
        if (b, m) != (balance, movements) {
            bail!(
                "the view `balances` says {} has {balance} in {movements} movements, its aggregate {b} in {m}",
                item.key
            );
        }
    }
    if before.items.len() != ACCOUNTS.len() {
        bail!("the view `balances` holds {} accounts, not {}", before.items.len(), ACCOUNTS.len());
    }
    println!("  each balance equals its account's state as the aggregate folds it ({STREAMS}/<account>/state)");

    println!("\n== view `statements`: GET /v1/views/statements/<account>?{wait}");
    for account in ACCOUNTS {
        let statement: ViewResponse = api.get(&format!("/v1/views/statements/{account}?{wait}"))?;
        println!("  {account}");
        for (key, line) in statement.value.iter().filter(|(k, _)| k.starts_with("m:")) {
            let revision = key.trim_start_matches("m:").trim_start_matches('0');
            let kind = line.get("kind").and_then(Value::as_str).unwrap_or("?");
            let amount = number(line.get("amount"), "amount")?;
            let balance = number(line.get("balance"), "balance")?;
            let sign = if kind == "deposit" { '+' } else { '-' };
            println!(
                "    #{revision:<3} {kind:<11} {:>10}   balance {:>8}",
                format!("{sign}{}", money(amount)),
                money(balance)
            );
        }
    }

    println!("\n== replay: POST /v1/subscriptions/accounts/balances/replay {{\"from\":\"beginning\"}}");
    println!("   (rebuilds the view from the log into a shadow copy while the live one serves, then switches)");
    let replay = "/v1/subscriptions/accounts/balances/replay";
    let _: ReplayInfo = api.ok("POST", replay, Some(&json!({"from": "beginning"})))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let info = loop {
        let info: ReplayInfo = api.get(replay)?;
        match info.state.as_str() {
            "done" => break info,
            "failed" => bail!("the replay failed: {}", info.error.unwrap_or_default()),
            _ if Instant::now() > deadline => bail!("the replay did not finish within 30 s: {info:?}"),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    println!(
        "  done: {} events applied, {} skipped, {} failed; the view is now state generation {}",
        info.applied, info.skipped, info.failed, info.generation
    );
    let after: ViewListResponse = api.get(&format!("/v1/views/balances?{wait}"))?;
    if after.items != before.items {
        bail!("the replayed view differs from the one before: {:?} against {:?}", after.items, before.items);
    }
    println!("  the rebuilt view equals the one before: yes ({} accounts)", after.items.len());

    println!("\n== time travel: GET {STREAMS}/alice/state?at=<revision or time>");
    let stream: StreamReadResponse = api.get(&format!("{STREAMS}/alice"))?;
    let first_deposit = stream.events.iter().find(|e| e.revision == 1).context("alice's stream has no revision 1")?;
    let time = first_deposit.event.time.clone().context("the event of revision 1 has no time")?;
    let at = |at: &str| -> anyhow::Result<(u64, Option<u64>, Option<u64>)> {
        let folded: EntityStateResponse = api.get(&format!("{STREAMS}/alice/state?at={at}"))?;
        Ok((number(folded.state.get("balance"), "balance")?, folded.revision, folded.current_revision))
    };
    let (by_revision, revision, current) = at("1")?;
    let (by_time, time_revision, _) = at(&time)?;
    let now: EntityStateResponse = api.get(&format!("{STREAMS}/alice/state"))?;
    let now_balance = number(now.state.get("balance"), "balance")?;
    let shown = |r: Option<u64>| r.map_or_else(|| "-".to_owned(), |r| r.to_string());
    let lines = [
        ("at=1".to_owned(), by_revision, format!("after revision {} of {}", shown(revision), shown(current))),
        (format!("at={time}"), by_time, format!("after revision {}: the deposit's time", shown(time_revision))),
        ("now".to_owned(), now_balance, format!("revision {}", shown(now.revision))),
    ];
    let width = lines.iter().map(|(label, ..)| label.len()).max().unwrap_or(0);
    for (label, balance, what) in lines {
        println!("  {label:<width$}  balance {:>8}  ({what})", money(balance));
    }
    if (by_revision, revision) != (by_time, time_revision) {
        bail!("alice at revision 1 ({by_revision}) and at its time {time} ({by_time}) differ");
    }

    println!(
        "\nThe events are the source of truth: the aggregate folded them to decide each command,\n\
         the views are projections of them (rebuilt from the log by a replay), and any past\n\
         state is a fold up to a revision or a time. See docs/event-sourcing.md."
    );
    Ok(())
}
