//! `weir demo`: the main job. Starts a fan-out pipeline on the embedded
//! store, publishes sample orders (a poison one among them), and shows what
//! each subscription did and what sits in the dead-letter queue, and why.
//! `weir demo accounts` is the event-sourcing demo (`demo/accounts.rs`),
//! `weir demo sagas` the orchestrated-saga demo (`demo/sagas.rs`),
//! `weir demo schemas` the versioned-events demo (`demo/schemas.rs`).

mod accounts;
mod sagas;
mod schemas;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use weir_runtime::Config;
use weir_runtime::DlqFilter;
use weir_runtime::JsonEvent;
use weir_runtime::{IdGenerator, Runtime};

const SAMPLES: &str = include_str!("../../../samples/orders.jsonl");

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    #[command(subcommand)]
    which: Option<Which>,
    /// Directory holding the example plugins built to Wasm.
    #[arg(long, global = true, value_name = "DIR", default_value = "target/wasm32-unknown-unknown/plugin")]
    plugins: PathBuf,
    /// Data directory [default: a fresh temporary directory, removed after].
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

/// Another demo than the default one.
#[derive(Debug, Subcommand)]
enum Which {
    /// Event sourcing: bank accounts decided by an aggregate, two
    /// projections read as views (read-your-writes), a replay, time travel.
    Accounts,
    /// Orchestrated sagas: orders through payment, inventory and shipping;
    /// one completes, others are compensated in reverse order (a failure,
    /// a timeout), with their timelines.
    Sagas,
    /// Versioned events: v1 and v2 producers side by side, a v2-only
    /// handler, a broken upcaster fixed live and its dead letters redriven.
    Schemas,
}

pub(crate) fn run(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    match args.which {
        Some(Which::Accounts) => return accounts::run(&args.plugins, args.data_dir.as_deref()),
        Some(Which::Sagas) => return sagas::run(&args.plugins, args.data_dir.as_deref()),
        Some(Which::Schemas) => return schemas::run(&args.plugins, args.data_dir.as_deref()),
        None => {}
    }
    for plugin in ["order_validator", "audit_logger", "enricher"] {
        let path = args.plugins.join(format!("{plugin}.wasm"));
        if !path.is_file() {
            bail!(
                "{} is missing: build the example plugins first (scripts/demo.sh does), or point --plugins at them",
                path.display()
            );
        }
    }
    let temp;
    let data_dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::tempdir().context("cannot create a temporary directory")?;
            temp.path().to_owned()
        }
    };
    let plugins = std::fs::canonicalize(&args.plugins)?;
    let toml = format!(
        r#"
data_dir = {data:?}

# orders.order.created fans out to two subscriptions: the validator and the
# audit logger. The validator's output feeds a second pipeline: the enricher.
[[pipelines]]
name = "orders"
topics = ["orders.order.created"]

[[pipelines.handlers]]
name = "validator"
plugin = {validator:?}
retry = {{ max_attempts = 3, initial_backoff = "20ms" }}

[[pipelines.handlers]]
name = "audit"
plugin = {audit:?}

[[pipelines]]
name = "enrich"
topics = ["orders.order.validated"]

[[pipelines.handlers]]
name = "enricher"
plugin = {enricher:?}
config = {{ vat_percent = 20 }}
"#,
        data = data_dir.join("data").display().to_string(),
        validator = plugins.join("order_validator.wasm").display().to_string(),
        audit = plugins.join("audit_logger.wasm").display().to_string(),
        enricher = plugins.join("enricher.wasm").display().to_string(),
    );
    let config_path = data_dir.join("weir.toml");
    std::fs::create_dir_all(&data_dir)?;
    std::fs::write(&config_path, &toml)?;
    println!("== configuration ({})", config_path.display());
    println!("{}", toml.trim());
    let config = Config::load(&config_path)?;
    let runtime = Runtime::start(&config)?;

    let ids = IdGenerator::new();
    let mut events = Vec::new();
    for (i, line) in SAMPLES.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let event = JsonEvent::from_json_line(line)
            .and_then(|e| e.into_event(&ids, "weir:demo"))
            .with_context(|| format!("samples/orders.jsonl:{}", i + 1))?;
        events.push(event);
    }
    println!("\n== publishing {} orders (durable before acknowledged)", events.len());
    let started = Instant::now();
    for (event, published) in events.iter().zip(runtime.publish_blocking(events.clone())?) {
        println!("  seq {:>3}  {}  key={}", published.seq, published.id, event.key.as_deref().unwrap_or("-"));
    }
    if !runtime.wait_idle(Duration::from_secs(30)) {
        bail!("the pipeline did not settle within 30 s");
    }
    println!("  all subscriptions caught up in {:.0} ms", started.elapsed().as_secs_f64() * 1e3);

    println!("\n== subscriptions");
    println!("  {:<18} {:>8} {:>8} {:>8} {:>5}", "SUBSCRIPTION", "HANDLED", "EMITTED", "RETRIES", "DLQ");
    for s in runtime.status()? {
        println!(
            "  {:<18} {:>8} {:>8} {:>8} {:>5}",
            s.name, s.stats.handled, s.stats.emitted, s.stats.retries, s.stats.dead_lettered
        );
    }

    println!("\n== the log");
    for (seq, event) in runtime.store().read_log(0, usize::MAX)? {
        let cause = event.causation_id.map(|c| format!("  caused by {c}")).unwrap_or_default();
        println!(
            "  {seq:>3}  {:<24} key={:<7} from {}{cause}",
            event.topic,
            event.key.as_deref().unwrap_or("-"),
            event.source
        );
    }

    println!("\n== dead-letter queue");
    let dlq = runtime.dlq(&DlqFilter::default())?;
    if dlq.is_empty() {
        println!("  (empty)");
    }
    for entry in &dlq {
        println!(
            "  {} seq {} key={} [{}] after {} attempt(s): {}",
            entry.subscription,
            entry.seq,
            entry.event.key.as_deref().unwrap_or("-"),
            entry.code,
            entry.attempts,
            entry.message
        );
    }
    println!(
        "\nEvery order reached both subscriptions of `orders`; valid ones went on to `enrich`.\n\
         Invalid ones wait in the DLQ with their reason: fix the handler or its config, then\n\
         `weir dlq redrive` sends them through again (see docs/operations.md)."
    );
    runtime.shutdown()?;
    Ok(ExitCode::SUCCESS)
}
