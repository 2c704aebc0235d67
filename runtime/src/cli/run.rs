//! `weir run`: the server.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::Args;
use weir_runtime::Config;
use weir_runtime::Runtime;

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The configuration file.
    #[arg(long, short = 'c', value_name = "FILE", default_value = "weir.toml")]
    config: PathBuf,
    /// Listen address, overriding `http.listen`.
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// Dev mode: redeploy a handler when its configured .wasm file changes
    /// (debounced, validated first; a broken build is refused and the running
    /// version stays).
    #[arg(long)]
    watch: bool,
}

pub(crate) fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let mut config = Config::load(&args.config)?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    // Off loopback every route but /health and /ready needs a token.
    if !weir_runtime::is_loopback(&config.listen) && config.http.tokens.is_empty() {
        bail!(
            "refusing to listen on {} without an admin token: set `http.admin_token` or WEIR_ADMIN_TOKEN (or `[[http.tokens]]` / WEIR_TOKENS), or listen on 127.0.0.1",
            config.listen
        );
    }
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("weir-io")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Bind before starting the runtime, so a busy port fails fast.
    let listener = tokio
        .block_on(tokio::net::TcpListener::bind(config.listen))
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let runtime = Arc::new(Runtime::start(&config)?);
    let addr = listener.local_addr().unwrap_or(config.listen);
    eprintln!(
        "weir: listening on http://{addr} with {} subscription(s); data in {}",
        runtime.subscriptions().len(),
        config.data_dir.display()
    );
    let stop_watch = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = if args.watch {
        let (rt, stop) = (Arc::clone(&runtime), Arc::clone(&stop_watch));
        let files: Vec<(String, PathBuf)> = config
            .pipelines
            .iter()
            .flat_map(|p| p.handlers.iter().map(move |h| (format!("{}/{}", p.name, h.name), h.plugin.clone())))
            .collect();
        eprintln!("weir: watching {} plugin file(s) for changes", files.len());
        Some(std::thread::Builder::new().name("weir-watch".into()).spawn(move || watch(&rt, &files, &stop))?)
    } else {
        None
    };
    let app = weir_runtime::router(Arc::clone(&runtime));
    // weir_runtime::serve: axum's router with header/idle and body timeouts
    // and a connection cap (`[http]` in the configuration).
    let http = config.http.clone();
    // The handlers go in before the first request can be answered: a
    // signal future registers its handler only when first polled, and a
    // SIGTERM that came before that (a supervisor stopping a server it
    // has just seen healthy) killed the process instead of stopping it.
    let signals = {
        let _context = tokio.enter();
        Signals::install().context("installing the SIGINT and SIGTERM handlers")?
    };
    tokio.block_on(async move {
        weir_runtime::serve(listener, app, &http, shutdown_signal(signals)).await.context("HTTP server failed")
    })?;
    drop(tokio);
    stop_watch.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(handle) = watcher {
        let _ = handle.join();
    }
    eprintln!("weir: stopping: finishing in-flight invocations and committing");
    let runtime = Arc::try_unwrap(runtime).map_err(|_| anyhow::anyhow!("the runtime is still in use at shutdown"))?;
    runtime.shutdown()?;
    eprintln!("weir: stopped cleanly");
    Ok(ExitCode::SUCCESS)
}

/// The first SIGINT or SIGTERM: stop cleanly (the HTTP server drains, the
/// workers commit, within the runtime's shutdown deadline). From then on a
/// second one exits at once.
async fn shutdown_signal(mut signals: Signals) {
    signals.recv().await;
    eprintln!("weir: stopping; a second Ctrl-C (or SIGTERM) exits at once");
    exit_on_second_signal();
}

/// Exit at once on the next SIGINT or SIGTERM, from a thread of its own
/// (the server's async runtime is gone by then). Crash-safe: what is not
/// committed yet is redone at the next start, as after a crash.
fn exit_on_second_signal() {
    let _ = std::thread::Builder::new().name("weir-signal".into()).spawn(|| {
        let Ok(tokio) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        tokio.block_on(signal());
        eprintln!("weir: second signal: exiting now; uncommitted work is redone at the next start");
        std::process::exit(130);
    });
}

/// SIGINT and SIGTERM, their handlers installed from the start.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    /// Install the handlers (in a tokio runtime's context).
    fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self { interrupt: signal(SignalKind::interrupt())?, terminate: signal(SignalKind::terminate())? })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// The first of them to come.
    async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {},
            _ = self.terminate.recv() => {},
        }
        #[cfg(not(unix))]
        signal().await;
    }
}

/// SIGINT (Ctrl-C) or SIGTERM.
async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// What identifies a file's content cheaply: modification time and length.
fn stamp(path: &std::path::Path) -> Option<(std::time::SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Poll the plugin files; when one has changed and then stayed the same for
/// a moment (a build finished writing it), deploy it to its handlers.
fn watch(runtime: &Runtime, files: &[(String, PathBuf)], stop: &std::sync::atomic::AtomicBool) {
    use std::collections::HashMap;
    use std::time::{Duration, Instant};
    const POLL: Duration = Duration::from_millis(200);
    const SETTLE: Duration = Duration::from_millis(400);
    let mut seen: HashMap<PathBuf, Option<(std::time::SystemTime, u64)>> =
        files.iter().map(|(_, p)| (p.clone(), stamp(p))).collect();
    let mut changed: HashMap<PathBuf, Instant> = HashMap::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(POLL);
        for (path, last) in &mut seen {
            let now = stamp(path);
            if now != *last {
                *last = now;
                changed.insert(path.clone(), Instant::now());
            }
        }
        let ready: Vec<PathBuf> =
            changed.iter().filter(|(_, at)| at.elapsed() >= SETTLE).map(|(p, _)| p.clone()).collect();
        for path in ready {
            changed.remove(&path);
            let Ok(bytes) = std::fs::read(&path) else {
                eprintln!("weir: watch: cannot read {}; the running versions stay", path.display());
                continue;
            };
            for (handler, _) in files.iter().filter(|(_, p)| *p == path) {
                match runtime.deploy(handler, bytes.clone(), "watch", &[]) {
                    // Rewritten with the active content (a no-op rebuild): nothing changed.
                    Ok(report) if !report.changed => {}
                    Ok(report) => {
                        eprintln!("weir: watch: {handler}: deployed {} from {}", &report.sha256[..12], path.display())
                    }
                    Err(e) => eprintln!(
                        "weir: watch: {handler}: {} was refused, the running version stays: {e}",
                        path.display()
                    ),
                }
            }
        }
    }
}
