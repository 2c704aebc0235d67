//! Several `weir run` nodes sharing the pipelines' work by partition, on
//! NATS JetStream (`[cluster]`, docs/scale-out.md).
//!
//! - Ingest on any node publishes each event to the shared input stream,
//!   subject `<prefix>.<partition>` (the partition is a hash of the key),
//!   `Nats-Msg-Id` = its idempotency key; the HTTP answer follows the PubAck
//!   (`ingest.rs`).
//! - Each partition is owned by one node at a time, through a lease in the
//!   key-value bucket `weir_leases` (`coordinator.rs`). The owner reads the
//!   partition's subject in stream order into its local log, with each
//!   message's stream sequence, from where its local copy stopped
//!   (`feed.rs`): the local pipelines then run exactly as on one node.
//! - A partition's handler state and idempotency records follow it without
//!   a changelog: handlers are deterministic, so a new owner rebuilds them
//!   by reading the partition's input from where its own copy stopped. What
//!   the previous owner already published must not leave again: the owner
//!   records how far its outputs are all acknowledged (the *published floor*,
//!   bucket `weir_progress`, `progress.rs`): what inputs up to that floor
//!   cause stays local.
//! - Every input carries its partition and stream sequence in a host header,
//!   and so does everything it causes. Outputs leave through sinks gated by
//!   the floors ([`Gate`]): an event caused by an input at or below a
//!   published floor of its partition is not sent. JetStream sinks publish with
//!   `Nats-Msg-Id` = the output's idempotency key, the same on every node.

mod coordinator;
mod feed;
mod ingest;
mod progress;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use weir_abi::{DeliveryRef, Event, Header};

use crate::config::ClusterConfig;
use crate::delivery::{Attempt, Invoke, SubscriptionCounters};
use crate::ids::IdGenerator;
use crate::store::Store;

/// The host header of an event read from a partition, and of every event
/// it causes: `<partition>:<stream sequence of the input>`. Never seen by a
/// handler.
pub(crate) const PARTITION_HEADER: &str = "weir-partition";

/// What a sink does with an event, by the [`Gate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Send it: it came from no partition, or no published floor known
    /// covers its input.
    Send,
    /// Do not send it: its input is at or below a published floor, so the
    /// node that recorded the floor sent it (or an earlier one did).
    Drop,
    /// Not yet known: the node has not read the floors since it started.
    Wait,
}

/// How far each partition's outputs are known to be sent. Sinks ask it
/// before sending.
///
/// Whether this node owns the partition does not matter: an event whose
/// input no floor covers is sent by whichever node has it. After a
/// partition moves, the old owner may still send what its backlog causes
/// while the new owner, reading from the floor, sends it too: the same
/// `Nats-Msg-Id` within seconds, dropped by JetStream's duplicate window.
/// Holding such events back instead would lose them when no later floor
/// covers them (the old owner taking the partition back), and waiting for
/// the other owner's floor deadlocks two nodes each waiting for the other.
#[derive(Debug)]
pub(crate) struct Gate {
    /// Per partition: the highest published floor known (this node's own,
    /// another owner's from its heartbeat, or the bucket's).
    known: Vec<AtomicU64>,
    /// The floors were read from the bucket once since start: before that,
    /// a restarted node's backlog could be sent although long published.
    ready: AtomicBool,
    /// Events not sent because a floor covers them, since start.
    held: AtomicU64,
    /// The runtime is stopping: a waiting sink gives up.
    stopping: Arc<AtomicBool>,
}

impl Gate {
    fn new(partitions: u32, stopping: Arc<AtomicBool>) -> Self {
        Self {
            known: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            ready: AtomicBool::new(false),
            held: AtomicU64::new(0),
            stopping,
        }
    }

    /// A published floor of `p` seen (floors only grow).
    fn floor(&self, p: u32, floor: u64) {
        if let Some(slot) = self.known.get(p as usize) {
            slot.fetch_max(floor, Ordering::SeqCst);
        }
    }

    /// What to do with `event`.
    pub(crate) fn decide(&self, event: &Event) -> Decision {
        let Some(mark) = event.headers.iter().find(|h| h.name == PARTITION_HEADER) else { return Decision::Send };
        if !self.ready.load(Ordering::SeqCst) {
            return Decision::Wait;
        }
        let Some((p, seq)) = parse_mark(&mark.value) else { return Decision::Drop };
        match self.known.get(p as usize) {
            Some(known) if seq > known.load(Ordering::SeqCst) => Decision::Send,
            _ => Decision::Drop,
        }
    }
}

fn parse_mark(value: &str) -> Option<(u32, u64)> {
    let (p, seq) = value.split_once(':')?;
    Some((p.parse().ok()?, seq.parse().ok()?))
}

/// A sink behind the [`Gate`]: what a floor covers is answered as delivered
/// without being sent; until the floors are read, the sink's worker waits
/// (as it would on a slow receiver).
pub(crate) struct Gated {
    pub(crate) inner: Box<dyn Invoke>,
    pub(crate) gate: Arc<Gate>,
}

impl Invoke for Gated {
    fn invoke(&mut self, delivery: DeliveryRef<'_>) -> Attempt {
        loop {
            match self.gate.decide(delivery.event) {
                Decision::Send => return self.inner.invoke(delivery),
                Decision::Drop => {
                    self.gate.held.fetch_add(1, Ordering::Relaxed);
                    return Attempt::new(Ok(Vec::new()));
                }
                Decision::Wait if self.gate.stopping.load(Ordering::Relaxed) => {
                    return Attempt::new(Err(crate::delivery::Failure::new(
                        "cluster_starting",
                        "the cluster's published floors are not read yet".to_owned(),
                        true,
                    )));
                }
                Decision::Wait => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        }
    }

    fn name(&self) -> String {
        self.inner.name()
    }

    fn version(&self) -> String {
        self.inner.version()
    }
}

/// `sink` behind `gate`, when there is one.
pub(crate) fn gated(sink: Box<dyn Invoke>, gate: Option<&Arc<Gate>>) -> Box<dyn Invoke> {
    match gate {
        Some(gate) => Box::new(Gated { inner: sink, gate: Arc::clone(gate) }),
        None => sink,
    }
}

/// Whether `name` is one of the cluster's host headers (never given to a
/// handler: `engine/handler.rs`).
pub(crate) fn is_mark(name: &str) -> bool {
    name == PARTITION_HEADER
}

/// The marks of `input` carried to an event it caused.
pub(crate) fn carry_marks(input: &Event, headers: &mut Vec<Header>) {
    for h in &input.headers {
        if is_mark(&h.name) {
            headers.push(h.clone());
        }
    }
}

/// One partition's line in the cluster's status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionStatus {
    /// The partition.
    pub partition: u32,
    /// The node holding its lease, if any.
    pub owner: Option<String>,
    /// The owner's local position: the highest stream sequence it read.
    pub position: u64,
    /// Messages of the partition the owner has not read yet.
    pub lag: u64,
    /// The published floor: the stream sequence up to which every output
    /// is acknowledged.
    pub published: u64,
}

/// One node's line in the cluster's status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Its id.
    pub node: String,
    /// Its HTTP address.
    pub address: String,
    /// The partitions it owns.
    pub partitions: Vec<u32>,
}

/// `GET /v1/cluster`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// This node.
    pub node: String,
    /// Whether this node is connected to NATS and has its buckets.
    pub connected: bool,
    /// Partitions in all.
    pub partitions: u32,
    /// The input stream and its subject prefix.
    pub stream: String,
    /// The live nodes (those whose heartbeat has not expired).
    pub nodes: Vec<NodeStatus>,
    /// Every partition.
    pub owners: Vec<PartitionStatus>,
    /// Events this node's sinks did not send because another node owns
    /// their partition, or because they were read again, since start.
    pub held: u64,
    /// The last error, if any.
    pub last_error: Option<String>,
}

/// What the coordinator shares with the runtime.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: ClusterConfig,
    pub(crate) gate: Arc<Gate>,
    pub(crate) connected: Arc<AtomicBool>,
    /// The last status the coordinator assembled (refreshed every tick).
    pub(crate) status: Mutex<ClusterStatus>,
    pub(crate) last_error: Mutex<Option<String>>,
    /// The JetStream context, once connected: ingest publishes through it.
    pub(crate) context: Mutex<Option<async_nats::jetstream::Context>>,
}

impl Shared {
    fn fail(&self, why: String) {
        tracing::warn!(error = %why, "cluster");
        *self.last_error.lock().unwrap_or_else(PoisonError::into_inner) = Some(why);
    }
}

/// How long a stopping node waits for its leases to be released.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// The cluster side of a node: its coordinator task on the NATS runtime.
pub(crate) struct Cluster {
    shared: Arc<Shared>,
    handle: tokio::runtime::Handle,
    stop: tokio::sync::watch::Sender<bool>,
    /// Closed when the coordinator has released its partitions and ended.
    done: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("node", &self.shared.config.node).finish_non_exhaustive()
    }
}

impl Cluster {
    /// The gate the sinks are built with, before the cluster starts.
    pub(crate) fn gate(config: &ClusterConfig, stopping: &Arc<AtomicBool>) -> Arc<Gate> {
        Arc::new(Gate::new(config.partitions, Arc::clone(stopping)))
    }

    /// Start the coordinator: connect, join, take a share of the partitions.
    pub(crate) fn start(
        config: &ClusterConfig,
        gate: Arc<Gate>,
        handle: tokio::runtime::Handle,
        store: &Store,
        ids: &Arc<IdGenerator>,
        counters: Vec<Arc<SubscriptionCounters>>,
        max_payload_bytes: usize,
    ) -> Self {
        let shared = Arc::new(Shared {
            config: config.clone(),
            gate,
            connected: Arc::new(AtomicBool::new(false)),
            status: Mutex::new(ClusterStatus::default()),
            last_error: Mutex::new(None),
            context: Mutex::new(None),
        });
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let coordinator = coordinator::Coordinator::new(
            Arc::clone(&shared),
            store.clone(),
            Arc::clone(ids),
            counters,
            max_payload_bytes,
        );
        let (finished, done) = std::sync::mpsc::channel();
        handle.spawn(async move {
            coordinator.run(stopped).await;
            drop(finished);
        });
        tracing::info!(node = %config.node, partitions = config.partitions, url = %config.connection.url_text(), "cluster node started");
        Self { shared, handle, stop, done: std::sync::Mutex::new(done) }
    }

    /// The cluster's status as this node last saw it.
    pub(crate) fn status(&self) -> ClusterStatus {
        let mut status = self.shared.status.lock().unwrap_or_else(PoisonError::into_inner).clone();
        status.node.clone_from(&self.shared.config.node);
        status.connected = self.shared.connected.load(Ordering::Relaxed);
        status.partitions = self.shared.config.partitions;
        status.stream.clone_from(&self.shared.config.stream);
        status.held = self.shared.gate.held.load(Ordering::Relaxed);
        status.last_error.clone_from(&self.shared.last_error.lock().unwrap_or_else(PoisonError::into_inner));
        status
    }

    /// Why the node is not ready, if it is not.
    pub(crate) fn not_ready(&self) -> Option<String> {
        if self.shared.connected.load(Ordering::Relaxed) {
            return None;
        }
        let error = self.shared.last_error.lock().unwrap_or_else(PoisonError::into_inner).clone();
        Some(format!(
            "cluster: not connected to NATS at {}{}",
            self.shared.config.connection.url_text(),
            error.map(|e| format!(": {e}")).unwrap_or_default()
        ))
    }

    /// Publish `events` to the input stream; `reply` after every PubAck.
    pub(crate) fn publish(&self, events: Vec<Event>, reply: crate::store::Reply<Vec<crate::store::Published>>) {
        let shared = Arc::clone(&self.shared);
        self.handle.spawn(async move {
            let result = ingest::publish(&shared, events).await;
            reply(result);
        });
    }

    /// Stop: the feeds stop at once and the leases are released, so other
    /// nodes take the partitions without waiting for them to expire.
    /// Waits up to [`RELEASE_WAIT`] for the releases (the NATS runtime is
    /// shut down after this, which would cancel them half-way).
    pub(crate) fn stop(&self) {
        let _ = self.stop.send(true);
        let done = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = done.recv_timeout(RELEASE_WAIT);
    }
}
