//! The coordinator of a cluster node, a task on the NATS runtime: connect
//! and create what is missing (the input stream, the buckets), then every
//! third of the lease TTL:
//!
//! 1. renew each owned lease (`update` at its revision: a lease whose
//!    revision moved was taken, and the partition stops at once);
//! 2. fence: a partition whose lease was not renewed for TTL − 1 s stops
//!    before the lease can expire on the server (a cut from NATS);
//! 3. heartbeat in `weir_nodes` (TTL too) with the partitions owned, their
//!    positions and lags: the live nodes, and the status any node shows;
//! 4. balance: aim at `ceil(partitions / live nodes)` leases: release the
//!    surplus, `create` free ones (fails if held), preferring the
//!    partitions that hash closest to this node (rendezvous hashing), so
//!    nodes ask for different ones and a node coming back gets its own back;
//! 5. the published floors found since the last tick go to `weir_progress`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use futures_util::{FutureExt as _, StreamExt as _};
use serde::{Deserialize, Serialize};

use super::feed::{Feed, FeedState};
use super::progress::Progress;
use super::{ClusterStatus, NodeStatus, PartitionStatus, Shared};
use crate::delivery::SubscriptionCounters;
use crate::ids::IdGenerator;
use crate::store::Store;

/// The buckets' names.
const LEASES: &str = "weir_leases";
const NODES: &str = "weir_nodes";
const PROGRESS: &str = "weir_progress";
/// JetStream's duplicate window on the input stream Weir creates.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// A lease not renewed for its TTL minus this stops its partition here.
const FENCE_MARGIN: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A heartbeat's value.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Beat {
    address: String,
    /// (partition, position, lag, published floor).
    partitions: Vec<(u32, u64, u64, u64)>,
}

struct Owned {
    revision: u64,
    renewed: Instant,
    epoch: u64,
    floor: u64,
    feed: Arc<FeedState>,
    task: tokio::task::JoinHandle<()>,
}

struct Buckets {
    leases: kv::Store,
    nodes: kv::Store,
    progress: kv::Store,
}

pub(super) struct Coordinator {
    shared: Arc<Shared>,
    store: Store,
    ids: Arc<IdGenerator>,
    counters: Vec<Arc<SubscriptionCounters>>,
    max_payload_bytes: usize,
    owned: BTreeMap<u32, Owned>,
    epochs: u64,
    progress: Progress,
    /// The heartbeats seen, by node, with when: a watch on `weir_nodes`
    /// (one consumer for the node's life, not one per tick). An entry not
    /// refreshed for the TTL is a dead node (expiry leaves no marker).
    members: BTreeMap<String, (Instant, Beat)>,
    /// In a mutex only to be `Sync` (the coordinator is borrowed across
    /// awaits); never contended.
    watch: std::sync::Mutex<Option<kv::Watch>>,
}

fn lease_key(p: u32) -> String {
    format!("p{p}")
}

impl Coordinator {
    pub(super) fn new(
        shared: Arc<Shared>,
        store: Store,
        ids: Arc<IdGenerator>,
        counters: Vec<Arc<SubscriptionCounters>>,
        max_payload_bytes: usize,
    ) -> Self {
        Self {
            shared,
            store,
            ids,
            counters,
            max_payload_bytes,
            owned: BTreeMap::new(),
            epochs: 0,
            progress: Progress::default(),
            members: BTreeMap::new(),
            watch: std::sync::Mutex::new(None),
        }
    }

    pub(super) async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(100);
        let (js, buckets) = loop {
            tokio::select! {
                connected = self.connect() => match connected {
                    Ok(done) => break done,
                    Err(why) => self.shared.fail(why),
                },
                _ = stop.changed() => return,
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        };
        *self.shared.context.lock().unwrap_or_else(PoisonError::into_inner) = Some(js.clone());
        // Every partition's floor, before any sink sends what a partition
        // caused (a restarted node's backlog may be long published).
        loop {
            match self.read_floors(&buckets).await {
                Ok(()) => break,
                Err(why) => self.shared.fail(format!("reading the published floors: {why}")),
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return,
            }
        }
        self.shared.gate.ready.store(true, Ordering::SeqCst);
        let mut ticker = tokio::time::interval(self.shared.config.lease_ttl / 3);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => self.tick(&js, &buckets).await,
                _ = stop.changed() => break,
            }
        }
        // Stopping: the partitions go at once, for others to take without
        // waiting for the leases to expire.
        let owned: Vec<u32> = self.owned.keys().copied().collect();
        for p in owned {
            self.release(&buckets, p).await;
        }
        let _ = buckets.nodes.delete(&self.shared.config.node).await;
    }

    async fn connect(&self) -> Result<(jetstream::Context, Buckets), String> {
        let c = &self.shared.config;
        let client = crate::source::connect(&c.connection, "cluster", Arc::clone(&self.shared.connected)).await?;
        let js = jetstream::new(client);
        let stream = jetstream::stream::Config {
            name: c.stream.clone(),
            subjects: vec![format!("{}.>", c.subject_prefix)],
            num_replicas: c.replicas,
            duplicate_window: DUPLICATE_WINDOW,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        };
        js.get_or_create_stream(stream).await.map_err(|e| format!("stream {:?}: {e}", c.stream))?;
        let bucket = |name: &'static str, max_age: Duration| {
            let js = js.clone();
            async move {
                if let Ok(store) = js.get_key_value(name).await {
                    return Ok(store);
                }
                // The bucket's stream as async-nats's `create_key_value`
                // makes it, created directly: that call first asks for the
                // account's information, whose answer from a 2.9 server
                // (Debian's) the client cannot read.
                let config = jetstream::stream::Config {
                    name: format!("KV_{name}"),
                    subjects: vec![format!("$KV.{name}.>")],
                    max_messages_per_subject: 1,
                    max_age,
                    storage: jetstream::stream::StorageType::File,
                    allow_rollup: true,
                    deny_delete: true,
                    allow_direct: true,
                    num_replicas: c.replicas,
                    discard: jetstream::stream::DiscardPolicy::New,
                    ..Default::default()
                };
                match js.create_stream(config).await {
                    Ok(_) => js.get_key_value(name).await.map_err(|e| format!("bucket {name:?}: {e}")),
                    Err(e) => js.get_key_value(name).await.map_err(|_| format!("bucket {name:?}: {e}")),
                }
            }
        };
        let buckets = Buckets {
            leases: bucket(LEASES, c.lease_ttl).await?,
            nodes: bucket(NODES, c.lease_ttl).await?,
            progress: bucket(PROGRESS, Duration::ZERO).await?,
        };
        tracing::info!(node = %c.node, stream = %c.stream, "cluster: connected");
        Ok((js, buckets))
    }

    async fn tick(&mut self, js: &jetstream::Context, b: &Buckets) {
        let ttl = self.shared.config.lease_ttl;
        let node = self.shared.config.node.clone();
        // 1. Renew.
        let keys: Vec<u32> = self.owned.keys().copied().collect();
        for p in keys {
            let Some(revision) = self.owned.get(&p).map(|o| o.revision) else { continue };
            match b.leases.update(lease_key(p), node.clone().into(), revision).await {
                Ok(revision) => {
                    if let Some(o) = self.owned.get_mut(&p) {
                        o.revision = revision;
                        o.renewed = Instant::now();
                    }
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    self.shared.fail(format!("partition {p}: the lease was taken ({e})"));
                    self.stop_partition(p);
                }
                Err(e) => self.shared.fail(format!("partition {p}: renewing the lease: {e}")),
            }
        }
        // 2. Fence.
        let stale: Vec<u32> =
            self.owned.iter().filter(|(_, o)| o.renewed.elapsed() + FENCE_MARGIN >= ttl).map(|(p, _)| *p).collect();
        for p in stale {
            self.shared.fail(format!("partition {p}: the lease could not be renewed in time; stopped (fenced)"));
            self.stop_partition(p);
        }
        // A feed that ended (NATS restarted, the store refused): again.
        let ended: Vec<u32> = self.owned.iter().filter(|(_, o)| o.task.is_finished()).map(|(p, _)| *p).collect();
        for p in ended {
            if let Some(o) = self.owned.get_mut(&p) {
                o.task =
                    spawn_feed(self.shared.clone(), p, &self.store, &self.ids, self.max_payload_bytes, &o.feed, js);
            }
        }
        // 3. Heartbeat, and who is alive.
        let beat = Beat {
            address: self.shared.config.advertise.clone(),
            partitions: self
                .owned
                .iter()
                .map(|(p, o)| {
                    (*p, o.feed.position.load(Ordering::Relaxed), o.feed.lag.load(Ordering::Relaxed), o.floor)
                })
                .collect(),
        };
        let value = serde_json::to_vec(&beat).unwrap_or_default();
        match b.nodes.put(&node, value.into()).await {
            Ok(_) => drop(self.members.insert(node.clone(), (Instant::now(), beat))),
            Err(e) => self.shared.fail(format!("heartbeat: {e}")),
        }
        self.read_heartbeats(b).await;
        let nodes: Vec<(String, Beat)> = self
            .members
            .iter()
            .filter(|(_, (seen, _))| seen.elapsed() < ttl)
            .map(|(n, (_, beat))| (n.clone(), beat.clone()))
            .collect();
        self.publish_status(&nodes);
        for (_, beat) in &nodes {
            for (p, _, _, floor) in &beat.partitions {
                self.shared.gate.floor(*p, *floor);
            }
        }
        // 4. Balance.
        let partitions = self.shared.config.partitions;
        let live = nodes.len().max(1) as u32;
        let share = partitions.div_ceil(live) as usize;
        let mut preference: Vec<u32> = (0..partitions).collect();
        preference.sort_by_key(|p| std::cmp::Reverse(rendezvous(&node, *p)));
        if self.owned.len() > share {
            let surplus: Vec<u32> = preference
                .iter()
                .rev()
                .filter(|p| self.owned.contains_key(p))
                .take(self.owned.len() - share)
                .copied()
                .collect();
            for p in surplus {
                self.release(b, p).await;
            }
        }
        let held_elsewhere: std::collections::HashSet<u32> = nodes
            .iter()
            .filter(|(n, _)| *n != node)
            .flat_map(|(_, beat)| beat.partitions.iter().map(|x| x.0))
            .collect();
        for p in preference {
            if self.owned.len() >= share {
                break;
            }
            if self.owned.contains_key(&p) || held_elsewhere.contains(&p) {
                continue;
            }
            if let Ok(revision) = b.leases.create(lease_key(p), node.clone().into()).await {
                self.acquire(js, b, p, revision).await;
            }
        }
        // 5. Floors.
        let owned: Vec<(u32, u64, u64)> =
            self.owned.iter().map(|(p, o)| (*p, o.epoch, o.feed.position.load(Ordering::Acquire))).collect();
        let head = self.store.head();
        let epochs: BTreeMap<u32, u64> = self.owned.iter().map(|(p, o)| (*p, o.epoch)).collect();
        let floors = self.progress.tick(owned, head, &self.counters, |p| epochs.get(&p).copied());
        for (p, floor) in floors {
            let Some(o) = self.owned.get_mut(&p) else { continue };
            if floor <= o.floor {
                continue;
            }
            match b.progress.put(lease_key(p), floor.to_string().into()).await {
                Ok(_) => {
                    o.floor = floor;
                    self.shared.gate.floor(p, floor);
                }
                Err(e) => self.shared.fail(format!("partition {p}: recording its published floor: {e}")),
            }
        }
    }

    /// What the heartbeat watch has delivered since the last tick.
    async fn read_heartbeats(&mut self, b: &Buckets) {
        let missing = self.watch.lock().unwrap_or_else(PoisonError::into_inner).is_none();
        if missing {
            match b.nodes.watch_all().await {
                Ok(watch) => *self.watch.lock().unwrap_or_else(PoisonError::into_inner) = Some(watch),
                Err(e) => self.shared.fail(format!("watching the nodes: {e}")),
            }
        }
        let mut entries = Vec::new();
        let mut broken = None;
        {
            let mut guard = self.watch.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(watch) = guard.as_mut() else { return };
            loop {
                match watch.next().now_or_never() {
                    None => break,
                    Some(Some(Ok(entry))) => entries.push(entry),
                    Some(Some(Err(e))) => {
                        broken = Some(e.to_string());
                        break;
                    }
                    Some(None) => {
                        broken = Some("the watch ended".to_owned());
                        break;
                    }
                }
            }
            if broken.is_some() {
                *guard = None;
            }
        }
        if let Some(why) = broken {
            self.shared.fail(format!("watching the nodes: {why}"));
        }
        for entry in entries {
            if entry.operation == kv::Operation::Put {
                let beat = serde_json::from_slice(&entry.value).unwrap_or_default();
                self.members.insert(entry.key, (Instant::now(), beat));
            } else {
                self.members.remove(&entry.key);
            }
        }
    }

    /// Every partition's published floor from the bucket, into the gate.
    async fn read_floors(&self, b: &Buckets) -> Result<(), String> {
        for p in 0..self.shared.config.partitions {
            if let Some(bytes) = b.progress.get(lease_key(p)).await.map_err(|e| e.to_string())? {
                let floor = std::str::from_utf8(&bytes).ok().and_then(|t| t.parse::<u64>().ok()).unwrap_or(0);
                self.shared.gate.floor(p, floor);
            }
        }
        Ok(())
    }

    /// Take partition `p`: read its published floor, start its feed.
    async fn acquire(&mut self, js: &jetstream::Context, b: &Buckets, p: u32, revision: u64) {
        let floor = match b.progress.get(lease_key(p)).await {
            Ok(Some(bytes)) => std::str::from_utf8(&bytes).ok().and_then(|t| t.parse::<u64>().ok()).unwrap_or(0),
            Ok(None) => 0,
            Err(e) => {
                // Without the floor the partition cannot be taken safely.
                self.shared.fail(format!("partition {p}: reading its published floor: {e}"));
                let _ = b.leases.delete_expect_revision(lease_key(p), Some(revision)).await;
                return;
            }
        };
        self.epochs += 1;
        self.shared.gate.floor(p, floor);
        let feed = Arc::new(FeedState::default());
        let task = spawn_feed(self.shared.clone(), p, &self.store, &self.ids, self.max_payload_bytes, &feed, js);
        tracing::info!(node = %self.shared.config.node, partition = p, floor, "cluster: partition taken");
        self.owned.insert(p, Owned { revision, renewed: Instant::now(), epoch: self.epochs, floor, feed, task });
    }

    /// Stop `p` here: its feed.
    fn stop_partition(&mut self, p: u32) -> Option<Owned> {
        let owned = self.owned.remove(&p)?;
        owned.task.abort();
        Some(owned)
    }

    /// Give `p` up: stop it, then delete the lease (at its revision: one
    /// taken meanwhile is not ours to delete).
    async fn release(&mut self, b: &Buckets, p: u32) {
        if let Some(owned) = self.stop_partition(p) {
            let _ = b.leases.delete_expect_revision(lease_key(p), Some(owned.revision)).await;
            tracing::info!(node = %self.shared.config.node, partition = p, "cluster: partition released");
        }
    }

    fn publish_status(&self, nodes: &[(String, Beat)]) {
        let partitions = self.shared.config.partitions;
        let mut owners: Vec<PartitionStatus> =
            (0..partitions).map(|partition| PartitionStatus { partition, ..Default::default() }).collect();
        for (node, beat) in nodes {
            for (p, position, lag, published) in &beat.partitions {
                if let Some(line) = owners.get_mut(*p as usize) {
                    *line = PartitionStatus {
                        partition: *p,
                        owner: Some(node.clone()),
                        position: *position,
                        lag: *lag,
                        published: *published,
                    };
                }
            }
        }
        let status = ClusterStatus {
            nodes: nodes
                .iter()
                .map(|(node, beat)| NodeStatus {
                    node: node.clone(),
                    address: beat.address.clone(),
                    partitions: beat.partitions.iter().map(|x| x.0).collect(),
                })
                .collect(),
            owners,
            ..Default::default()
        };
        *self.shared.status.lock().unwrap_or_else(PoisonError::into_inner) = status;
    }
}

fn spawn_feed(
    shared: Arc<Shared>,
    p: u32,
    store: &Store,
    ids: &Arc<IdGenerator>,
    max_payload_bytes: usize,
    state: &Arc<FeedState>,
    js: &jetstream::Context,
) -> tokio::task::JoinHandle<()> {
    let feed = Feed {
        config: shared.config.clone(),
        partition: p,
        store: store.clone(),
        ids: Arc::clone(ids),
        max_payload_bytes,
        state: Arc::clone(state),
    };
    let js = js.clone();
    tokio::spawn(async move {
        if let Err(why) = feed.run(js).await {
            shared.fail(why);
            // Not at once again: the coordinator restarts it next tick.
        }
    })
}

/// Rendezvous hashing: node `n`'s weight for partition `p`.
fn rendezvous(node: &str, p: u32) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in node.as_bytes().iter().chain(&p.to_le_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // FNV's low bits mix poorly for short inputs: a final avalanche.
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^ (hash >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_prefer_different_partitions() {
        let first = |node: &str| (0..16).max_by_key(|p| rendezvous(node, *p)).unwrap();
        let firsts: std::collections::HashSet<u32> = ["a", "b", "c", "d"].iter().map(|n| first(n)).collect();
        assert!(firsts.len() >= 3, "{firsts:?}");
    }
}
