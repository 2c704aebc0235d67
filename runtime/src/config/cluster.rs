//! `[cluster]`: several `weir run` nodes sharing the work of the pipelines
//! by partition, on NATS JetStream (docs/scale-out.md). Absent: one node on
//! its embedded store, the default.

use super::sources::connection;
use super::*;

/// Default number of partitions.
pub const DEFAULT_PARTITIONS: u32 = 16;
/// Most partitions: each owned partition is a consumer and a lease.
pub const MAX_PARTITIONS: u32 = 1024;
/// Default lease time to live.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    url: String,
    node: Option<String>,
    partitions: Option<u32>,
    stream: Option<String>,
    subject_prefix: Option<String>,
    replicas: Option<usize>,
    lease_ttl: Option<String>,
    advertise: Option<String>,
    token_env: Option<String>,
    user_env: Option<String>,
    password_env: Option<String>,
}

/// `[cluster]`, validated.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Where NATS is.
    pub connection: NatsConnection,
    /// This node's id: unique in the cluster, the same across restarts (its
    /// local store holds the partitions it had). Default: the host name and
    /// the listen port.
    pub node: String,
    /// How many partitions the keys hash into. Fixed for the cluster's life.
    pub partitions: u32,
    /// The shared input stream (created when missing).
    pub stream: String,
    /// Its subjects: `<subject_prefix>.<partition>`.
    pub subject_prefix: String,
    /// Replicas of the stream and the buckets Weir creates (1, or 3 on a
    /// three-server cluster).
    pub replicas: usize,
    /// How long a partition's lease lives without renewal.
    pub lease_ttl: Duration,
    /// The address other nodes and `weir cluster status` show for this
    /// node's HTTP API. Default: the listen address.
    pub advertise: String,
}

impl ClusterConfig {
    /// The subject of partition `p`.
    #[must_use]
    pub fn subject(&self, p: u32) -> String {
        format!("{}.{p}", self.subject_prefix)
    }

    /// The partition of an event with `key` (or, without one, of its id):
    /// FNV-1a 64 of the UTF-8 bytes, modulo the partition count. Fixed: every
    /// node and every version must agree on it.
    #[must_use]
    pub fn partition_of(&self, key: &str) -> u32 {
        partition_of(key, self.partitions)
    }
}

/// FNV-1a 64 of `key`, modulo `partitions` (see [`ClusterConfig::partition_of`]).
#[must_use]
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    u32::try_from(hash % u64::from(partitions.max(1))).unwrap_or(0)
}

/// Validate `[cluster]`. `listen` gives the default node id and address.
pub(super) fn cluster(
    raw: Option<RawCluster>,
    listen: SocketAddr,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<ClusterConfig>, (String, String)> {
    let Some(raw) = raw else { return Ok(None) };
    let at = |field: &str| format!("cluster.{field}");
    let connection =
        connection(&raw.url, raw.token_env.as_deref(), raw.user_env.as_deref(), raw.password_env.as_deref(), env)
            .map_err(|(field, e)| (at(field), e))?;
    let nats_token = |text: &str| {
        !text.is_empty() && text.len() <= 64 && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    let node = match raw.node {
        Some(node) => node,
        None => {
            let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
            let host: String =
                host.trim().chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(40).collect();
            format!("{}-{}", if host.is_empty() { "weir" } else { &host }, listen.port())
        }
    };
    if !nats_token(&node) {
        return Err((at("node"), format!("{node:?} must be 1-64 characters of A-Z, a-z, 0-9, '-' or '_'")));
    }
    let partitions = raw.partitions.unwrap_or(DEFAULT_PARTITIONS);
    if partitions == 0 || partitions > MAX_PARTITIONS {
        return Err((at("partitions"), format!("{partitions} is outside 1..={MAX_PARTITIONS}")));
    }
    let stream = raw.stream.unwrap_or_else(|| "WEIR_IN".to_owned());
    if !nats_token(&stream) {
        return Err((at("stream"), format!("{stream:?} is not a JetStream stream name")));
    }
    let subject_prefix = raw.subject_prefix.unwrap_or_else(|| "weir.in".to_owned());
    if subject_prefix.split('.').any(|t| !nats_token(t)) {
        return Err((at("subject_prefix"), format!("{subject_prefix:?} must be dot-separated tokens, no wildcards")));
    }
    let replicas = raw.replicas.unwrap_or(1);
    if !(1..=5).contains(&replicas) {
        return Err((at("replicas"), format!("{replicas} is outside 1..=5")));
    }
    let lease_ttl = match &raw.lease_ttl {
        Some(text) => duration(text).map_err(|e| (at("lease_ttl"), e))?,
        None => DEFAULT_LEASE_TTL,
    };
    if lease_ttl < Duration::from_secs(2) || lease_ttl > Duration::from_secs(60) {
        return Err((
            at("lease_ttl"),
            format!(
                "{lease_ttl:?} is outside 2s..=60s: a node renews every third of it and fences itself 1s before it ends"
            ),
        ));
    }
    Ok(Some(ClusterConfig {
        connection,
        node,
        partitions,
        stream,
        subject_prefix,
        replicas,
        lease_ttl,
        advertise: raw.advertise.unwrap_or_else(|| listen.to_string()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partition_hash_is_fixed() {
        // FNV-1a 64 reference values: a change would move every key.
        assert_eq!(partition_of("", u32::MAX), u32::try_from(0xcbf2_9ce4_8422_2325_u64 % u64::from(u32::MAX)).unwrap());
        assert_eq!(partition_of("a", 1 << 31), u32::try_from(0xaf63_dc4c_8601_ec8c_u64 % (1 << 31)).unwrap());
        let spread: std::collections::HashSet<u32> = (0..1000).map(|k| partition_of(&format!("key-{k}"), 16)).collect();
        assert_eq!(spread.len(), 16);
    }
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<ClusterConfig>, (String, String)> {
        #[derive(Deserialize)]
        struct Doc {
            cluster: Option<RawCluster>,
        }
        let doc: Doc = toml::from_str(text).map_err(|e| (String::new(), e.to_string()))?;
        cluster(doc.cluster, "127.0.0.1:8080".parse().unwrap(), &|_| None)
    }

    #[test]
    fn bad_cluster_settings_name_their_key() {
        assert!(parse("").unwrap().is_none());
        let c = parse("[cluster]\nurl = \"nats://127.0.0.1:4222\"\nnode = \"a\"").unwrap().unwrap();
        assert_eq!((c.partitions, c.lease_ttl, c.subject(3)), (16, DEFAULT_LEASE_TTL, "weir.in.3".to_owned()));
        for (text, key) in [
            ("url = \"http://x\"", "cluster.url"),
            ("url = \"nats://h:1\"\nnode = \"a b\"", "cluster.node"),
            ("url = \"nats://h:1\"\npartitions = 0", "cluster.partitions"),
            ("url = \"nats://h:1\"\npartitions = 5000", "cluster.partitions"),
            ("url = \"nats://h:1\"\nlease_ttl = \"1s\"", "cluster.lease_ttl"),
            ("url = \"nats://h:1\"\nreplicas = 7", "cluster.replicas"),
            ("url = \"nats://h:1\"\nsubject_prefix = \"a.*\"", "cluster.subject_prefix"),
            ("url = \"nats://h:1\"\nstream = \"a.b\"", "cluster.stream"),
        ] {
            let (k, reason) = parse(&format!("[cluster]\n{text}")).unwrap_err();
            assert_eq!(k, key, "{text}: {reason}");
            assert!(!reason.is_empty());
        }
    }
}
