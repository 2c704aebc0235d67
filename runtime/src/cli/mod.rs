//! Command-line parsing and dispatch. Exit codes: 0 success, 1 failure
//! (stated on stderr), 2 usage error.

mod build;
mod client;
mod cluster;
mod command;
mod consumer;
mod demo;
mod dlq;
mod exec;
mod inspect;
mod log;
mod new;
mod plugin;
mod publish;
mod replay;
mod run;
mod saga;
mod schema;
mod status;
mod stream;
mod subscription;
mod view;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use weir_runtime::{Engine, EngineConfig};

/// Weir: a WebAssembly-plugin stream processing runtime.
///
/// Handlers are Wasm plugins built with the weir-sdk crate (or any language
/// that follows docs/abi.md). The host runs them in a sandbox — deadline,
/// memory cap, optional fuel — and enforces idempotency, retries and
/// dead-lettering around every call.
#[derive(Debug, Parser)]
#[command(name = "weir", version, propagate_version = true, max_term_width = 100)]
struct Cli {
    /// Log filter for the host's own logs (overrides RUST_LOG), e.g. `debug`
    /// or `weir_runtime=trace`.
    #[arg(long, global = true, value_name = "FILTER")]
    log: Option<String>,

    /// Log format: human-readable `text`, or `json` (one object per line,
    /// with the span fields: subscription, event id, plugin version…).
    #[arg(long, global = true, value_enum, env = "WEIR_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Scaffold a handler crate: Cargo.toml, a handler with unit tests,
    /// sample events and a README with the next commands.
    New(new::NewArgs),
    /// Build the plugin crate here to Wasm (plugin profile; adds the
    /// wasm32-unknown-unknown target if missing) and inspect the result.
    Build(build::BuildArgs),
    /// Run a handler plugin over JSON-lines events and print each outcome as
    /// a JSON line: the quick way to try a handler before deploying it.
    Exec(exec::ExecArgs),
    /// Show a module's ABI version, imports, exports and size, and whether
    /// the runtime would accept it (exit 0) or not (exit 1, with the reason).
    Inspect(inspect::InspectArgs),
    /// Run the runtime: the pipelines of a config file and the HTTP API.
    /// Stops cleanly on SIGTERM or Ctrl-C.
    Run(run::RunArgs),
    /// Publish events to a running server (arguments, or a JSON-lines file).
    Publish(publish::PublishArgs),
    /// Inspect, redrive and purge the dead-letter queue of a running server.
    Dlq(dlq::DlqArgs),
    /// Saga instances of a running server: list, show (with the timeline),
    /// cancel, resume, skip.
    Saga(saga::SagaArgs),
    /// A cluster of nodes (`[cluster]`): nodes, partition owners, lag.
    Cluster(cluster::ClusterArgs),
    /// Read the log of a running server, follow it (`tail`), show an event
    /// and its lineage.
    Log(log::LogArgs),
    /// Durable consumers of a running server: create, list, fetch, ack,
    /// info, reset, delete.
    Consumer(consumer::ConsumerArgs),
    /// Subscriptions of a running server, configured and orphaned (data a
    /// removed handler left in the store): list, delete an orphan's data.
    Subscription(subscription::SubscriptionArgs),
    /// Entity streams of a running server: read one with its revisions,
    /// append to one at an expected revision.
    Stream(stream::StreamArgs),
    /// Send a command to an entity of a running server (its aggregate
    /// decides it), or list the commands an entity was sent.
    #[command(name = "command")]
    Commands(command::CommandArgs),
    /// Query the views (read models) of a running server: one key with the
    /// log position it reflects, or the keys of a view.
    View(view::ViewArgs),
    /// Rebuild a stateful handler's state (a projection's view) from the
    /// log into a shadow copy while the live one serves, then switch.
    Replay(replay::ReplayArgs),
    /// One table of the pipelines and subscriptions of a running server: state,
    /// depth, events/s, p50/p99 latency, DLQ size and plugin version.
    Status(status::StatusArgs),
    /// Deploy, list, inspect the history of and roll back handler plugins on a
    /// running server, live.
    Plugin(plugin::PluginArgs),
    /// Payload schemas per topic (`[[schemas]]`): list, show and check a
    /// config's offline (compatibility included); `stats` sizes and fields
    /// per topic and version from the log of a running server.
    Schema(schema::SchemaArgs),
    /// The demo: a fan-out pipeline over sample orders on the embedded
    /// store, and what each subscription and the DLQ hold afterwards;
    /// `weir demo accounts`: the bank-account event-sourcing example.
    Demo(demo::DemoArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Where compiled artifacts are cached.
#[derive(Debug, Clone, Args)]
struct CacheArgs {
    /// Directory for compiled artifacts [default: $WEIR_CACHE_DIR, else
    /// $XDG_CACHE_HOME/weir, else ~/.cache/weir].
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Do not read or write compiled artifacts.
    #[arg(long, conflicts_with = "cache_dir")]
    no_cache: bool,
}

impl CacheArgs {
    fn resolve(&self) -> Option<PathBuf> {
        if self.no_cache {
            return None;
        }
        if let Some(dir) = &self.cache_dir {
            return Some(dir.clone());
        }
        if let Some(dir) = std::env::var_os("WEIR_CACHE_DIR").filter(|d| !d.is_empty()) {
            return Some(PathBuf::from(dir));
        }
        if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
            return Some(PathBuf::from(dir).join("weir"));
        }
        std::env::var_os("HOME").filter(|d| !d.is_empty()).map(|home| PathBuf::from(home).join(".cache").join("weir"))
    }
}

fn engine(cache: &CacheArgs, configure: impl FnOnce(&mut EngineConfig)) -> anyhow::Result<Engine> {
    let mut config = EngineConfig { cache_dir: cache.resolve(), ..EngineConfig::default() };
    configure(&mut config);
    // An unusable cache directory only costs compile time: fall back to
    // none. An insecure one (others may write it) is never read: same.
    match Engine::new(config.clone()) {
        Ok(engine) => Ok(engine),
        Err(e @ (weir_runtime::EngineError::CacheDir { .. } | weir_runtime::EngineError::CacheDirInsecure { .. })) => {
            tracing::warn!("{e}; continuing without the artifact cache");
            Ok(Engine::new(EngineConfig { cache_dir: None, ..config })?)
        }
        Err(e) => Err(e.into()),
    }
}

/// A plugin's configuration from `--config <JSON>` or `--config-file
/// <FILE>`, checked as JSON and re-encoded compactly as `weir_init` gets it;
/// `None` when neither is given.
fn plugin_config(text: Option<&str>, file: Option<&std::path::Path>) -> anyhow::Result<Option<Vec<u8>>> {
    use anyhow::Context as _;
    let text = match (text, file) {
        (Some(text), _) => text.to_owned(),
        (None, Some(path)) => {
            std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?
        }
        (None, None) => return Ok(None),
    };
    let value: serde_json::Value = serde_json::from_str(&text).context("--config is not valid JSON")?;
    Ok(Some(serde_json::to_vec(&value)?))
}

/// Logs go to stderr, filtered by `--log`, else `RUST_LOG`, else `default`.
fn init_tracing(filter: Option<&str>, format: LogFormat, default: &str) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let filter = match filter {
        Some(f) => EnvFilter::try_new(f).map_err(|e| format!("--log {f:?} is not a log filter: {e}"))?,
        None => match std::env::var("RUST_LOG") {
            Ok(f) if !f.is_empty() => {
                EnvFilter::try_new(&f).map_err(|e| format!("RUST_LOG={f:?} is not a log filter: {e}"))?
            }
            _ => EnvFilter::new(default),
        },
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        // Colours only on a terminal: a log file should not fill with escapes.
        LogFormat::Text => {
            use std::io::IsTerminal;
            let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            builder.with_ansi(ansi).try_init()
        }
        // Flattened so a line's fields sit at the top level next to the
        // span list: what log shippers index without configuration.
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init(),
    };
    Ok(())
}

pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own report; host warnings would only interleave.
    let default_filter = if matches!(cli.command, Command::Demo(_)) { "error" } else { "warn" };
    if let Err(e) = init_tracing(cli.log.as_deref(), cli.log_format, default_filter) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Command::New(args) => new::run(&args),
        Command::Build(args) => build::run(&args),
        Command::Exec(args) => exec::run(&args),
        Command::Inspect(args) => inspect::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Publish(args) => publish::run(&args),
        Command::Dlq(args) => dlq::run(&args),
        Command::Saga(args) => saga::run(&args),
        Command::Cluster(args) => cluster::run(&args),
        Command::Log(args) => log::run(&args),
        Command::Consumer(args) => consumer::run(&args),
        Command::Stream(args) => stream::run(&args),
        Command::Commands(args) => command::run(&args),
        Command::View(args) => view::run(&args),
        Command::Replay(args) => replay::run(&args),
        Command::Subscription(args) => subscription::run(&args),
        Command::Status(args) => status::run(&args),
        Command::Plugin(args) => plugin::run(&args),
        Command::Schema(args) => schema::run(&args),
        Command::Demo(args) => demo::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
