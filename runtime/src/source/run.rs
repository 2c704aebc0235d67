//! One JetStream source's task: connect, bind the durable pull consumer,
//! then take messages in batches, append each batch with its positions in
//! one store transaction, and ack. Any failure (connection, stream,
//! consumer, a store outage) drops everything and starts over after a
//! backoff (100 ms doubling to 5 s): nothing is acked that is not
//! committed, so starting over never loses a message.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};
use futures_util::{FutureExt as _, StreamExt as _};

use super::SourceState;
use super::map::{Delivered, Rejection, map_message};
use crate::config::SourceConfig;
use crate::ids::IdGenerator;
use crate::store::{Store, StoreError};

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long an idle consumer waits for a message before it reports no lag.
const IDLE: Duration = Duration::from_secs(1);
/// How long a batch waits when the store's admission bound is full.
const OVERLOADED_WAIT: Duration = Duration::from_millis(20);

pub(super) struct Task {
    pub(super) config: SourceConfig,
    pub(super) state: Arc<SourceState>,
    pub(super) store: Store,
    pub(super) ids: Arc<IdGenerator>,
    pub(super) max_payload_bytes: usize,
    /// `[[schemas]]`: checked after the message is mapped, as at every ingest.
    pub(super) schemas: crate::schema::Schemas,
}

/// Why a round of consuming ended.
enum Stop {
    /// The store is closed: the runtime is stopping.
    Closed,
    /// Something failed: start over after a backoff.
    Failed(String),
}

impl From<String> for Stop {
    fn from(why: String) -> Self {
        Self::Failed(why)
    }
}

impl Task {
    pub(super) async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut backoff = MIN_BACKOFF;
        loop {
            if *stop.borrow() {
                return;
            }
            let round = tokio::select! {
                stopped = self.consume(&mut backoff) => stopped,
                _ = stop.changed() => return,
            };
            self.state.consuming.store(false, Ordering::Relaxed);
            match round {
                Stop::Closed => return,
                Stop::Failed(why) => {
                    tracing::warn!(source = %self.config.name, error = %why, retry_in = ?backoff, "JetStream source: starting over");
                    self.state.fail(why);
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Connect, bind, consume until something fails.
    async fn consume(&self, backoff: &mut Duration) -> Stop {
        let c = &self.config;
        let client = match super::connect(&c.connection, &c.name, self.state.new_round()).await {
            Ok(client) => client,
            Err(why) => return Stop::Failed(why),
        };
        let js = jetstream::new(client);
        let mut stream = match js.get_stream(&c.stream).await {
            Ok(stream) => stream,
            Err(e) => return Stop::Failed(format!("stream {:?}: {e}", c.stream)),
        };
        let created = match stream.info().await {
            Ok(info) => i64::try_from(info.created.unix_timestamp_nanos()).unwrap_or(0),
            Err(e) => return Stop::Failed(format!("stream {:?}: {e}", c.stream)),
        };
        let (filter_subject, filter_subjects) = match c.subjects.as_slice() {
            [] => (String::new(), Vec::new()),
            [one] => (one.clone(), Vec::new()),
            many => (String::new(), many.to_vec()),
        };
        let wanted = consumer::pull::Config {
            durable_name: Some(c.durable.clone()),
            filter_subject,
            filter_subjects,
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: c.ack_wait,
            deliver_policy: consumer::DeliverPolicy::All,
            max_ack_pending: i64::try_from(c.batch * 4).unwrap_or(i64::MAX),
            ..Default::default()
        };
        let consumer: consumer::PullConsumer = match stream.get_or_create_consumer(&c.durable, wanted).await {
            Ok(consumer) => consumer,
            Err(e) => return Stop::Failed(format!("consumer {:?} on stream {:?}: {e}", c.durable, c.stream)),
        };
        let mut messages = match consumer
            .stream()
            .max_messages_per_batch(c.batch)
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await
        {
            Ok(messages) => messages,
            Err(e) => return Stop::Failed(format!("consumer {:?}: {e}", c.durable)),
        };
        self.state.consuming.store(true, Ordering::Relaxed);
        *backoff = MIN_BACKOFF;
        tracing::info!(source = %c.name, stream = %c.stream, durable = %c.durable, "JetStream source consuming");
        loop {
            let first = match tokio::time::timeout(IDLE, messages.next()).await {
                Err(_) => {
                    self.state.lag.store(0, Ordering::Relaxed);
                    continue;
                }
                Ok(None) => return Stop::Failed("the consumer's message stream ended".into()),
                Ok(Some(Err(e))) => return Stop::Failed(format!("consumer {:?}: {e}", c.durable)),
                Ok(Some(Ok(message))) => message,
            };
            let mut batch = vec![first];
            let mut failed = None;
            // What has already arrived joins the batch: one commit for all.
            while batch.len() < c.batch {
                match messages.next().now_or_never() {
                    Some(Some(Ok(message))) => batch.push(message),
                    Some(Some(Err(e))) => {
                        failed = Some(format!("consumer {:?}: {e}", c.durable));
                        break;
                    }
                    Some(None) => {
                        failed = Some("the consumer's message stream ended".into());
                        break;
                    }
                    None => break,
                }
            }
            if let Err(stop) = self.append(&c.stream, created, batch).await {
                return stop;
            }
            if let Some(why) = failed {
                return Stop::Failed(why);
            }
        }
    }

    /// Map, commit, then ack one batch. A message that makes no event is
    /// committed with the batch as a DLQ entry (`dlq.rs`), and terminated
    /// in JetStream only after the commit.
    async fn append(&self, stream: &str, created: i64, batch: Vec<jetstream::Message>) -> Result<(), Stop> {
        let mut seqs = Vec::with_capacity(batch.len());
        let mut events = Vec::with_capacity(batch.len());
        let mut keep = Vec::with_capacity(batch.len());
        let mut rejected = Vec::new();
        let mut terminate = Vec::new();
        let now_ms = crate::store::now_ms();
        for message in batch {
            let (stream_seq, pending, published) = match message.info() {
                Ok(info) => (
                    info.stream_sequence,
                    info.pending,
                    i64::try_from(info.published.unix_timestamp_nanos()).unwrap_or(0),
                ),
                Err(e) => return Err(Stop::Failed(format!("a message without JetStream metadata: {e}"))),
            };
            self.state.lag.store(pending, Ordering::Relaxed);
            let delivered = Delivered {
                subject: message.subject.as_str(),
                headers: message.headers.as_ref(),
                payload: &message.payload,
                stream_seq,
                published,
            };
            let event = map_message(&self.config, &self.ids, self.max_payload_bytes, &delivered).and_then(|event| {
                self.schemas
                    .check(&event.topic, event.schema_version, &event.payload)
                    .map(|()| {
                        self.schemas.observe([&event]);
                        event
                    })
                    .map_err(|e| Rejection::new(e.code(), e.to_string()))
            });
            match event {
                Ok(event) => {
                    seqs.push(stream_seq);
                    events.push(event);
                    keep.push(message);
                }
                Err(why) => {
                    let text = format!(
                        "stream seq {stream_seq} (subject {:?}): {}: {}",
                        message.subject.as_str(),
                        why.code,
                        why.message
                    );
                    tracing::warn!(source = %self.config.name, reason = %text, "JetStream source: message rejected, dead-lettered and terminated");
                    self.state.rejected.fetch_add(1, Ordering::Relaxed);
                    *self.state.last_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(text);
                    let position = crate::store::source_position_key(&self.config.name, stream, created, stream_seq);
                    rejected.push(super::dlq::entry(
                        &self.config,
                        &self.ids,
                        &delivered,
                        position,
                        &why,
                        self.max_payload_bytes,
                        now_ms,
                    ));
                    terminate.push(message);
                }
            }
        }
        let highest = seqs.iter().copied().max().unwrap_or(0);
        let outcome = loop {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let reply = Box::new(move |result| drop(tx.send(result)));
            match self.store.source_commit(&self.config.name, stream, created, seqs, events, rejected, reply) {
                Ok(()) => {}
                Err(refused) => {
                    let (error, s, e, r) = *refused;
                    if !matches!(error, StoreError::Overloaded { .. }) {
                        return Err(Stop::Failed(format!("the store refused a batch: {error}")));
                    }
                    // Backpressure: the messages wait in JetStream's hands
                    // (unacked) until the store takes them.
                    (seqs, events, rejected) = (s, e, r);
                    tokio::time::sleep(OVERLOADED_WAIT).await;
                    continue;
                }
            }
            match rx.await {
                Ok(Ok(outcome)) => break outcome,
                Ok(Err(StoreError::Closed)) | Err(_) => return Err(Stop::Closed),
                Ok(Err(e)) => return Err(Stop::Failed(format!("the store failed a batch: {e}"))),
            }
        };
        let published = &outcome.published;
        let duplicates = published.iter().filter(|p| p.duplicate).count() as u64;
        self.state.duplicates.fetch_add(duplicates + outcome.rejected_duplicates, Ordering::Relaxed);
        self.state.appended.fetch_add(published.len() as u64 - duplicates, Ordering::Relaxed);
        self.state.dead_lettered.fetch_add(outcome.dead_lettered, Ordering::Relaxed);
        self.state.last_seq.fetch_max(highest, Ordering::Relaxed);
        // Committed (in the log or the DLQ), not yet acked or terminated: a
        // crash here gets them delivered again, and they are recognised.
        for message in terminate {
            if let Err(e) = message.ack_with(AckKind::Term).await {
                return Err(Stop::Failed(format!("terminating a rejected message: {e}")));
            }
        }
        for message in keep {
            if let Err(e) = message.ack().await {
                // Committed, not acked: it comes again and is recognised.
                return Err(Stop::Failed(format!("ack: {e}")));
            }
        }
        Ok(())
    }
}
