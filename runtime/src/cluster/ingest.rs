//! Ingest on a cluster node: each event goes to the shared input stream,
//! on its partition's subject, and the answer follows JetStream's PubAck
//! (on a quorum of the servers for an R3 stream): durable before
//! acknowledged, in JetStream instead of the local store.
//!
//! `Nats-Msg-Id` is the event's idempotency key, so a producer's retry
//! that reaches another node within the stream's duplicate window is
//! dropped by JetStream and answered as a duplicate. The envelope travels
//! as the headers a JetStream sink writes (`weir-*`), which the owner's
//! feed reads back.

use std::sync::PoisonError;
use std::time::Duration;

use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use weir_abi::Event;

use super::Shared;
use crate::store::{Published, StoreError};

/// How long one batch waits for its PubAcks.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) async fn publish(shared: &Shared, events: Vec<Event>) -> Result<Vec<Published>, StoreError> {
    let context = shared.context.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let Some(context) = context else {
        return Err(StoreError::Unavailable(format!(
            "the cluster is not connected to NATS at {}",
            shared.config.connection.url_text()
        )));
    };
    let config = &shared.config;
    let sent = async {
        let mut acks: Vec<(PublishAckFuture, &Event)> = Vec::with_capacity(events.len());
        for event in &events {
            let key = event.key.clone().unwrap_or_else(|| event.id.to_string());
            let subject = config.subject(config.partition_of(&key));
            let message = PublishMessage::build()
                .payload(event.payload.clone().into())
                .headers(crate::sink::jetstream_headers(event))
                .message_id(event.idempotency_key.clone());
            let ack = context
                .send_publish(subject, message)
                .await
                .map_err(|e| StoreError::Unavailable(format!("publishing to the cluster's stream: {e}")))?;
            acks.push((ack, event));
        }
        let mut published = Vec::with_capacity(acks.len());
        for (ack, event) in acks {
            let ack =
                ack.await.map_err(|e| StoreError::Unavailable(format!("no PubAck from the cluster's stream: {e}")))?;
            // A duplicate's first id is not in the PubAck: the id given here
            // is this request's.
            published.push(Published { id: event.id, seq: ack.sequence, duplicate: ack.duplicate });
        }
        Ok(published)
    };
    match tokio::time::timeout(PUBLISH_TIMEOUT, sent).await {
        Ok(result) => result,
        Err(_) => {
            Err(StoreError::Unavailable(format!("no PubAck from the cluster's stream within {PUBLISH_TIMEOUT:?}")))
        }
    }
}
