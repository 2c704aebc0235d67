//! Sources: events that come from outside besides HTTP. One kind so far, a
//! NATS JetStream stream read through a durable pull consumer (`run.rs`),
//! its messages mapped to events (`map.rs`).
//!
//! Each batch of messages is appended to the log together with the stream
//! sequence each came from, in one store transaction
//! ([`Store::source_append`](crate::store::Store)), and only then acked.
//! A crash between the commit and the acks gets the messages delivered
//! again after the consumer's ack wait; the store recognises them by
//! position (or by `Nats-Msg-Id` / CloudEvent id) and appends nothing:
//! nothing is lost, nothing is appended twice.
//!
//! The NATS clients (the sources' and the JetStream sinks') run on a small
//! tokio runtime of their own ([`Nats`]), owned by the Weir runtime: the
//! library's runtime starts without one (tests, `weir demo`), and the sink
//! workers, which publish from their own threads, must outlive the HTTP
//! server's runtime during shutdown.

mod dlq;
mod map;
pub(crate) use map::{Delivered, to_event};
mod run;

pub(crate) use dlq::{remap, stored_message};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{Config, NatsAuth, NatsConnection, SourceConfig};
use crate::ids::IdGenerator;
use crate::store::Store;

/// What one source is doing, for status and metrics. Counters are since
/// start; `last_seq` is the committed position.
#[derive(Debug, Default)]
pub(crate) struct SourceState {
    /// The current round's connection flag: each round connects anew, and
    /// an old client that closes late must not speak for the new one.
    pub(crate) connected: Mutex<Arc<AtomicBool>>,
    /// The consumer is bound and messages flow.
    pub(crate) consuming: AtomicBool,
    pub(crate) appended: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) rejected: AtomicU64,
    /// Rejected messages stored in the DLQ (a redelivery of one already
    /// there is not counted again).
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) last_seq: AtomicU64,
    /// Messages JetStream still holds for the consumer, as the last
    /// delivered message said (0 once a pull comes back empty).
    pub(crate) lag: AtomicU64,
    pub(crate) last_error: Mutex<Option<String>>,
}

impl SourceState {
    fn is_connected(&self) -> bool {
        self.connected.lock().unwrap_or_else(PoisonError::into_inner).load(Ordering::Relaxed)
    }

    /// A fresh connection flag for a new round.
    fn new_round(&self) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        *self.connected.lock().unwrap_or_else(PoisonError::into_inner) = Arc::clone(&flag);
        flag
    }

    fn fail(&self, why: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(PoisonError::into_inner) = Some(why);
    }
}

/// A source's status line (`GET /v1/status`, `weir_source_*` metrics).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceStatus {
    /// `sources/<name>`.
    pub name: String,
    /// `jetstream`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The NATS URLs.
    pub url: String,
    /// The stream read.
    pub stream: String,
    /// The durable consumer.
    pub durable: String,
    /// `consuming`, `connecting` (no connection, or the stream or consumer
    /// is not there yet: `last_error` says) or `reconnecting`.
    pub state: String,
    /// Whether the NATS connection is up.
    pub connected: bool,
    /// The highest stream sequence appended (committed).
    pub last_seq: u64,
    /// Messages JetStream holds for the consumer not delivered yet.
    pub lag: u64,
    /// Messages appended since start.
    pub appended: u64,
    /// Messages recognised as already appended since start.
    pub duplicates: u64,
    /// Messages with no usable event (no topic, too large …), dead-lettered
    /// as `sources/<name>` and terminated in JetStream, since start.
    pub rejected: u64,
    /// Of them, those stored in the DLQ since start (not a redelivery of
    /// one already there).
    #[serde(default)]
    pub dead_lettered: u64,
    /// The source's DLQ entries now.
    #[serde(default)]
    pub dlq: u64,
    /// Connection, stream, consumer or store failures since start.
    pub errors: u64,
    /// The last of them or the last rejection.
    pub last_error: Option<String>,
}

/// The NATS side of the runtime: its tokio runtime and the sources on it.
pub(crate) struct Nats {
    runtime: Option<tokio::runtime::Runtime>,
    sources: Vec<(SourceConfig, Arc<SourceState>)>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Nats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nats").field("sources", &self.sources.len()).finish_non_exhaustive()
    }
}

impl Nats {
    /// The NATS runtime, when the configuration has sources or JetStream
    /// sinks (else nothing runs).
    ///
    /// # Errors
    ///
    /// The tokio runtime cannot start.
    pub(crate) fn new(config: &Config) -> std::io::Result<Self> {
        let runtime = if config.sources.is_empty() && config.jetstream_sinks.is_empty() && config.cluster.is_none() {
            None
        } else {
            Some(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("weir-nats")
                    .enable_all()
                    .build()?,
            )
        };
        Ok(Self { runtime, sources: Vec::new(), stop: tokio::sync::watch::channel(false).0 })
    }

    /// Nothing: what a stopped runtime holds.
    pub(crate) fn none() -> Self {
        Self { runtime: None, sources: Vec::new(), stop: tokio::sync::watch::channel(false).0 }
    }

    /// A handle on the runtime, for the JetStream sinks.
    pub(crate) fn handle(&self) -> Option<tokio::runtime::Handle> {
        self.runtime.as_ref().map(|r| r.handle().clone())
    }

    /// Start every configured source.
    pub(crate) fn start_sources(&mut self, config: &Config, store: &Store, ids: &Arc<IdGenerator>) {
        let Some(runtime) = &self.runtime else { return };
        for source in &config.sources {
            let state = Arc::new(SourceState::default());
            if let Ok(Some(position)) = store.source_position(&source.name) {
                state.last_seq.store(position.last_seq, Ordering::Relaxed);
            }
            let task = run::Task {
                config: source.clone(),
                state: Arc::clone(&state),
                store: store.clone(),
                ids: Arc::clone(ids),
                max_payload_bytes: config.max_payload_bytes,
                schemas: config.schemas.clone(),
            };
            // Its DLQ entries (`sources/<name>`) belong to a running reader,
            // so they are not listed as an orphan's; their seqs are stream
            // positions, so they hold no log event back (retention skips
            // `sources/` names).
            let reader = crate::store::RetentionReader { patterns: Some(Vec::new()), position: None };
            store.register_reader(&dlq::subscription(&source.name), reader);
            runtime.spawn(task.run(self.stop.subscribe()));
            tracing::info!(source = %source.name, stream = %source.stream, url = %source.connection.url_text(), "JetStream source started");
            self.sources.push((source.clone(), state));
        }
    }

    /// Every source's status line.
    pub(crate) fn status(&self) -> Vec<SourceStatus> {
        self.sources
            .iter()
            .map(|(config, s)| {
                let connected = s.is_connected();
                let consuming = s.consuming.load(Ordering::Relaxed);
                SourceStatus {
                    name: format!("{}{}", crate::config::SOURCE_PREFIX, config.name),
                    kind: "jetstream".to_owned(),
                    url: config.connection.url_text(),
                    stream: config.stream.clone(),
                    durable: config.durable.clone(),
                    state: match (consuming, connected) {
                        (true, true) => "consuming",
                        (true, false) => "reconnecting",
                        (false, _) => "connecting",
                    }
                    .to_owned(),
                    connected,
                    last_seq: s.last_seq.load(Ordering::Relaxed),
                    lag: s.lag.load(Ordering::Relaxed),
                    appended: s.appended.load(Ordering::Relaxed),
                    duplicates: s.duplicates.load(Ordering::Relaxed),
                    rejected: s.rejected.load(Ordering::Relaxed),
                    dead_lettered: s.dead_lettered.load(Ordering::Relaxed),
                    // Filled in by the runtime, which reads the store.
                    dlq: 0,
                    errors: s.errors.load(Ordering::Relaxed),
                    last_error: s.last_error.lock().unwrap_or_else(PoisonError::into_inner).clone(),
                }
            })
            .collect()
    }

    /// Tell the sources to stop (they end at their next await). Crash-safe
    /// at any point: what was committed but not acked comes again and is
    /// recognised.
    pub(crate) fn stop_sources(&self) {
        let _ = self.stop.send(true);
    }

    /// Stop the sources and the runtime (after the JetStream sinks'
    /// workers, which publish on it).
    pub(crate) fn stop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// Connect to NATS with `connection`'s URLs and credentials. The client
/// reconnects by itself after that (backoff up to 5 s, forever); `connected`
/// follows its connection.
///
/// # Errors
///
/// No server answered within 5 s, or one refused the credentials.
pub(crate) async fn connect(
    connection: &NatsConnection,
    name: &str,
    connected: Arc<AtomicBool>,
) -> Result<async_nats::Client, String> {
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("weir {name}"))
        .connection_timeout(Duration::from_secs(5))
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis(100u64.saturating_mul(1 << attempts.min(6))).min(Duration::from_secs(5))
        });
    match &connection.auth {
        NatsAuth::None => {}
        NatsAuth::Token(token) => options = options.token(token.clone()),
        NatsAuth::UserPassword(user, password) => options = options.user_and_password(user.clone(), password.clone()),
    }
    let flag = Arc::clone(&connected);
    options = options.event_callback(move |event| {
        let flag = Arc::clone(&flag);
        async move {
            match event {
                async_nats::Event::Connected => flag.store(true, Ordering::Relaxed),
                async_nats::Event::Disconnected | async_nats::Event::Closed => flag.store(false, Ordering::Relaxed),
                _ => {}
            }
        }
    });
    let client = options
        .connect(connection.urls.clone())
        .await
        .map_err(|e| format!("cannot connect to NATS at {}: {e}", connection.url_text()))?;
    connected.store(true, Ordering::Relaxed);
    Ok(client)
}
