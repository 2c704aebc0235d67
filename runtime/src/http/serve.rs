//! The server's accept loop: hyper's HTTP/1 connection with a header read
//! timeout (which also closes an idle keep-alive connection), a cap on the
//! bytes of a request head, and a cap on open connections (past it, new
//! connections wait in the listen backlog). The body timeout is the body
//! extractor's ([`super::extract::Body`]).

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::config::HttpConfig;

/// Largest request head (request line and headers) hyper buffers: past it,
/// the request is answered `431`.
const MAX_HEAD_BYTES: usize = 64 << 10;

/// How long and how much a closing connection reads and discards (see
/// [`linger`]).
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(1);
const LINGER_BYTES: usize = 256 << 10;

/// Set when the server stops: the request extension a long request (an
/// event stream, a long-poll) watches to end in time.
#[derive(Clone)]
pub(crate) struct Stopping(pub(crate) watch::Receiver<bool>);

/// Serve `app` on `listener` with the limits of `http`, until `shutdown`
/// completes; then stop accepting, let every connection finish the request
/// it is serving, and return once they are closed.
///
/// # Errors
///
/// None today: a failed accept is retried after a short pause (running out
/// of file descriptors must not stop the server).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    http: &HttpConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(http.max_connections.min(Semaphore::MAX_PERMITS)));
    let (stop_tx, stop_rx) = watch::channel(false);
    // Requests that could go on for long (a stream, a long-poll) end when
    // the server stops, or the drain below would wait for them.
    let app = app.layer(axum::Extension(Stopping(stop_rx.clone())));
    let mut connections = JoinSet::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(http.header_timeout).max_buf_size(MAX_HEAD_BYTES);
    let mut shutdown = pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let builder = builder.clone();
        let mut stop = stop_rx.clone();
        connections.spawn(async move {
            let _permit = permit;
            let mut stream = stream;
            {
                let mut conn = pin!(builder.serve_connection(TokioIo::new(&mut stream), service));
                let stopping = tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!("connection closed: {e}");
                        }
                        false
                    }
                    _ = stop.wait_for(|stop| *stop) => true,
                };
                if stopping {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            // Not while the server stops: the stop would wait for it.
            let stopped = *stop.borrow();
            if !stopped {
                linger(&mut stream).await;
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// A lingering close. A request refused before its body is read (`401`,
/// `403`, `415` …) leaves the body's bytes arriving after the answer; a
/// socket closed with unread bytes makes the kernel send a reset instead of
/// a FIN, and a reset can reach the client before it has read the answer,
/// which then sees "connection reset" rather than the refusal. So: send the
/// FIN, then read and drop what still comes until the client closes, for at
/// most [`LINGER_TIME`] and [`LINGER_BYTES`] (a client cannot hold the
/// connection's slot longer than that).
async fn linger(stream: &mut tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0_u8; 8 << 10];
    let mut left = LINGER_BYTES;
    let _ = tokio::time::timeout(LINGER_TIME, async {
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}
