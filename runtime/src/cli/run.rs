//! `weir run`: the server.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::Args;
use weir_runtime::config::Config;
use weir_runtime::{Runtime, server};

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The configuration file.
    #[arg(long, short = 'c', value_name = "FILE", default_value = "weir.toml")]
    config: PathBuf,
    /// Listen address, overriding `http.listen`.
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
}

pub(crate) fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let mut config = Config::load(&args.config)?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if !server::is_loopback(&config.listen) && config.admin_token.is_none() {
        bail!(
            "refusing to listen on {} without an admin token: set `http.admin_token` or WEIR_ADMIN_TOKEN, or listen on 127.0.0.1",
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
    let app = server::router(Arc::clone(&runtime));
    tokio.block_on(async move {
        axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await.context("HTTP server failed")
    })?;
    drop(tokio);
    eprintln!("weir: stopping: finishing in-flight invocations and committing");
    let runtime = Arc::try_unwrap(runtime).map_err(|_| anyhow::anyhow!("the runtime is still in use at shutdown"))?;
    runtime.shutdown()?;
    eprintln!("weir: stopped cleanly");
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
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
