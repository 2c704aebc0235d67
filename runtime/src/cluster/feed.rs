//! One owned partition's feed: read the partition's subject of the input
//! stream in stream order (an ordered consumer: no acks, no state in
//! JetStream), from just past the local copy's position, and append each
//! batch to the local log with the stream sequence of each message, in one
//! store transaction ([`Store::source_append`]). The position is the
//! local store's: a node that gets a partition back goes on from where its
//! copy stopped, and one that never had it starts at the beginning.
//!
//! Each event gets the host header [`PARTITION_HEADER`] =
//! `<partition>:<stream sequence>`, carried to what it causes, by which the
//! sinks' gate decides what may leave the node.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures_util::{FutureExt as _, StreamExt as _};
use weir_abi::Header;

use super::PARTITION_HEADER;
use crate::config::{ClusterConfig, SourceConfig, TopicTemplate};
use crate::ids::IdGenerator;
use crate::source::{Delivered, to_event};
use crate::store::{Store, StoreError};

/// Most messages appended per commit.
const BATCH: usize = 512;
/// How long a batch waits when the store's admission bound is full.
const OVERLOADED_WAIT: Duration = Duration::from_millis(20);

/// The store's source name of partition `p`: its position is kept under it.
pub(super) fn source_name(p: u32) -> String {
    format!("cluster-p{p}")
}

/// What a feed shows: its position and lag, read by the coordinator.
#[derive(Debug, Default)]
pub(super) struct FeedState {
    /// The highest stream sequence appended (committed).
    pub(super) position: AtomicU64,
    /// Messages of the partition not read yet, as the last one said.
    pub(super) lag: AtomicU64,
}

pub(super) struct Feed {
    pub(super) config: ClusterConfig,
    pub(super) partition: u32,
    pub(super) store: Store,
    pub(super) ids: Arc<IdGenerator>,
    pub(super) max_payload_bytes: usize,
    pub(super) state: Arc<FeedState>,
}

impl Feed {
    /// Run until `stop` or a failure (the coordinator starts it again).
    pub(super) async fn run(self, js: jetstream::Context) -> Result<(), String> {
        let c = &self.config;
        let p = self.partition;
        let source = SourceConfig {
            name: source_name(p),
            connection: c.connection.clone(),
            stream: c.stream.clone(),
            subjects: vec![c.subject(p)],
            durable: String::new(),
            topic: TopicTemplate::LastThree,
            key_token: None,
            source: format!("nats:{}", c.stream),
            content_type: "application/json".to_owned(),
            batch: BATCH,
            ack_wait: Duration::from_secs(30),
        };
        let mut stream = js.get_stream(&c.stream).await.map_err(|e| format!("stream {:?}: {e}", c.stream))?;
        let created = stream
            .info()
            .await
            .map(|info| i64::try_from(info.created.unix_timestamp_nanos()).unwrap_or(0))
            .map_err(|e| format!("stream {:?}: {e}", c.stream))?;
        let after = match self.store.source_position(&source.name) {
            Ok(Some(position)) if position.stream_created == created => position.last_seq,
            Ok(_) => 0,
            Err(e) => return Err(format!("partition {p}: reading its position: {e}")),
        };
        self.state.position.store(after, Ordering::Relaxed);
        let deliver_policy = if after == 0 {
            consumer::DeliverPolicy::All
        } else {
            consumer::DeliverPolicy::ByStartSequence { start_sequence: after + 1 }
        };
        let ordered =
            consumer::pull::OrderedConfig { filter_subject: c.subject(p), deliver_policy, ..Default::default() };
        let consumer =
            stream.create_consumer(ordered).await.map_err(|e| format!("partition {p}: ordered consumer: {e}"))?;
        let mut messages = consumer.messages().await.map_err(|e| format!("partition {p}: {e}"))?;
        tracing::info!(partition = p, after, "cluster: reading partition");
        loop {
            let first = match tokio::time::timeout(Duration::from_secs(1), messages.next()).await {
                Err(_) => {
                    self.state.lag.store(0, Ordering::Relaxed);
                    continue;
                }
                Ok(None) => return Err(format!("partition {p}: the consumer ended")),
                Ok(Some(Err(e))) => return Err(format!("partition {p}: {e}")),
                Ok(Some(Ok(message))) => message,
            };
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match messages.next().now_or_never() {
                    Some(Some(Ok(message))) => batch.push(message),
                    Some(Some(Err(e))) => return Err(format!("partition {p}: {e}")),
                    Some(None) => return Err(format!("partition {p}: the consumer ended")),
                    None => break,
                }
            }
            self.append(&source, created, batch).await?;
        }
    }

    async fn append(&self, source: &SourceConfig, created: i64, batch: Vec<jetstream::Message>) -> Result<(), String> {
        let p = self.partition;
        let mut seqs = Vec::with_capacity(batch.len());
        let mut events = Vec::with_capacity(batch.len());
        for message in &batch {
            let info = message.info().map_err(|e| format!("a message without JetStream metadata: {e}"))?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            let delivered = Delivered {
                subject: message.subject.as_str(),
                headers: message.headers.as_ref(),
                payload: &message.payload,
                stream_seq: seq,
                published: i64::try_from(info.published.unix_timestamp_nanos()).unwrap_or(0),
            };
            self.state.lag.store(pending, Ordering::Relaxed);
            match to_event(source, &self.ids, self.max_payload_bytes, &delivered) {
                Ok(mut event) => {
                    event.headers.push(Header::new(PARTITION_HEADER, format!("{p}:{seq}")));
                    seqs.push(seq);
                    events.push(event);
                }
                // Only a producer publishing to the stream directly can
                // send this: Weir's ingest checked what it published.
                Err(why) => {
                    tracing::warn!(partition = p, seq, reason = %why, "cluster: a message with no usable event, skipped")
                }
            }
        }
        let Some(highest) = seqs.iter().copied().max() else { return Ok(()) };
        loop {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let reply = Box::new(move |result| drop(tx.send(result)));
            match self.store.source_append(&source.name, &source.stream, created, seqs, events, reply) {
                Ok(()) => {}
                Err(refused) => {
                    let (error, s, e) = *refused;
                    if !matches!(error, StoreError::Overloaded { .. }) {
                        return Err(format!("partition {p}: the store refused a batch: {error}"));
                    }
                    (seqs, events) = (s, e);
                    tokio::time::sleep(OVERLOADED_WAIT).await;
                    continue;
                }
            }
            match rx.await {
                Ok(Ok(_)) => break,
                Ok(Err(e)) => return Err(format!("partition {p}: the store failed a batch: {e}")),
                Err(_) => return Err(format!("partition {p}: the store is closed")),
            }
        }
        self.state.position.fetch_max(highest, Ordering::Relaxed);
        Ok(())
    }
}
