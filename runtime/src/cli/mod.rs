//! Command-line parsing and dispatch. Exit codes: 0 success, 1 failure
//! (stated on stderr), 2 usage error.

mod exec;
mod inspect;

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

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a handler plugin over JSON-lines events and print each outcome as
    /// a JSON line: the quick way to try a handler before deploying it.
    Exec(exec::ExecArgs),
    /// Show a module's ABI version, imports, exports and size, and whether
    /// the runtime would accept it (exit 0) or not (exit 1, with the reason).
    Inspect(inspect::InspectArgs),
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
    // An unusable cache directory only costs compile time: fall back to none.
    match Engine::new(config.clone()) {
        Ok(engine) => Ok(engine),
        Err(e @ weir_runtime::EngineError::CacheDir { .. }) => {
            tracing::warn!("{e}; continuing without the artifact cache");
            Ok(Engine::new(EngineConfig { cache_dir: None, ..config })?)
        }
        Err(e) => Err(e.into()),
    }
}

fn init_tracing(filter: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match filter {
        Some(f) => EnvFilter::try_new(f).unwrap_or_else(|_| EnvFilter::new("warn")),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
    };
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log.as_deref());
    let result = match cli.command {
        Command::Exec(args) => exec::run(&args),
        Command::Inspect(args) => inspect::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
