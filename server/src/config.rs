//! Node configuration: defaults → TOML file → `GEOKV_*` environment → flags,
//! then validated into a [`Config`] the rest of the node can trust.
//!
//! Every limit is a named field with its unit in the name; `validate()`
//! refuses nonsense (a zero limit, an election timeout not above the heartbeat,
//! a node that is not among the initial members, unsorted split points) with a
//! message that names the field. `config/geokv.toml` is the commented template.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::shards::{KeyRange, NodeDesc};

/// One member of the initial cluster (shared, identical, by every node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub id: u64,
    /// host:port the member serves gRPC on, as other nodes and clients reach it.
    pub addr: String,
    pub region: String,
    #[serde(default)]
    pub zone: String,
}

impl Member {
    pub fn desc(&self) -> NodeDesc {
        NodeDesc {
            id: self.id,
            addr: self.addr.clone(),
            region: self.region.clone(),
            zone: self.zone.clone(),
            state: crate::shards::NodeState::Up,
        }
    }

    /// Parses `ID=HOST:PORT@REGION[/ZONE]`.
    pub fn parse(s: &str) -> Result<Member, ConfigError> {
        let bad = || ConfigError::Invalid {
            field: "initial_cluster",
            reason: format!("{s:?} is not ID=HOST:PORT@REGION[/ZONE]"),
        };
        let (id, rest) = s.split_once('=').ok_or_else(bad)?;
        let (addr, place) = rest.split_once('@').ok_or_else(bad)?;
        let (region, zone) = place.split_once('/').unwrap_or((place, ""));
        Ok(Member {
            id: id.trim().parse().map_err(|_| bad())?,
            addr: addr.trim().to_string(),
            region: region.trim().to_string(),
            zone: zone.trim().to_string(),
        })
    }
}

/// Raft timing and log compaction, per Raft group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    /// Leader heartbeat period; also openraft's timeout for one append RPC,
    /// so it must exceed the largest RTT between replicas.
    pub heartbeat_interval_ms: u64,
    /// Election timeout range. The minimum is also the vote RPC timeout; the
    /// maximum is the leader lease: a follower refuses to vote for that long
    /// after hearing from its leader, and a restarted node for that long
    /// after it starts. A follower campaigns once the lease and then one more
    /// election timeout have passed without a heartbeat (openraft), so a new
    /// leader comes `max + [min, max)` after the last heartbeat.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_every_entries: u64,
    /// Log entries kept behind a snapshot (lets slightly lagging followers
    /// catch up from the log instead of a whole snapshot).
    pub logs_kept_after_snapshot: u64,
    /// The most entries one append message carries.
    pub max_append_entries: u64,
    /// A snapshot transfer to a peer that makes no progress (no chunk taken,
    /// no answer) for this long is abandoned, then resumed where the peer got
    /// to (a few times). A whole transfer may take longer.
    pub snapshot_send_timeout_ms: u64,
    /// The most two nodes' wall clocks may differ. Lease reads are served
    /// only within `election_timeout_max_ms - max_clock_offset_ms` of the last
    /// quorum acknowledgement; bounded-staleness reads add this to their
    /// staleness; a node that sees a peer's clock further off refuses both.
    pub max_clock_offset_ms: u64,
    /// How often a leader confirms its leadership and pushes a safe time
    /// (commit index as of a leader clock reading) to its followers, for
    /// shards whose followers asked it for a read index in the last 60 s.
    pub safe_time_interval_ms: u64,
    /// UNSAFE, for the test harness's negative control only: believe every
    /// peer's clock however far off it is (no refusal of lease and bounded
    /// reads on skew beyond `max_clock_offset_ms`). Lease and bounded reads
    /// can then return stale data without saying so.
    pub unsafe_trust_clocks: bool,
    /// UNSAFE, for the test harness's negative control only: no vote
    /// quarantine after a start (see [`Config::vote_quarantine`]). A
    /// restarted node then forgets the lease it promised its old leader and
    /// may vote, or campaign, while that leader still serves lease reads.
    pub unsafe_no_vote_quarantine: bool,
}

impl Default for RaftConfig {
    fn default() -> Self {
        // Tuned for a WAN with RTTs up to ~150 ms (see docs/operations.md).
        Self {
            heartbeat_interval_ms: 300,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            snapshot_every_entries: 10_000,
            logs_kept_after_snapshot: 1_000,
            max_append_entries: 512,
            snapshot_send_timeout_ms: 60_000,
            max_clock_offset_ms: 50,
            safe_time_interval_ms: 50,
            unsafe_trust_clocks: false,
            unsafe_no_vote_quarantine: false,
        }
    }
}

/// Request limits. Requests beyond them are refused before reaching Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    /// Ops (writes plus conditions) in one `Batch`.
    pub max_batch_ops: usize,
    /// Sum of key and value bytes in one `Batch`.
    pub max_batch_bytes: usize,
    /// Page size of a scan that asks for none.
    pub default_scan_limit: u32,
    /// The largest page a scan may ask for.
    pub max_scan_limit: u32,
    /// How long a request may wait for Raft (commit, ReadIndex) before the
    /// node answers: unavailable for reads, indeterminate for writes.
    pub request_timeout_ms: u64,
    /// A client idle this long loses its exactly-once session.
    pub session_ttl_ms: u64,
    /// Requests served concurrently on one connection; more wait in the
    /// gRPC layer (HTTP/2 backpressure) instead of piling up memory.
    pub max_concurrent_requests: usize,
    /// Client requests (the Kv service) one node serves at once, over all
    /// connections. One more waits for a slot, first come first served, up
    /// to 1 s while its connection has fewer than 2 waiting; otherwise, and
    /// after the wait, it is refused with `RESOURCE_EXHAUSTED` and a retry
    /// hint (nothing done), so an overload costs the node a bounded amount
    /// of memory and clients back off ([`crate::admission`]). Raft and admin
    /// traffic is not counted.
    pub max_inflight_requests: usize,
    /// Bytes of read results (gets, scan pages, failed conditions' current
    /// values) one node holds for clients at once, from before the read
    /// until HTTP/2 flow control let the client take the response; one
    /// connection may hold a quarter of it. A read that finds no room waits
    /// up to 1 s, one over its connection's share is refused at once; both
    /// with `RESOURCE_EXHAUSTED` and a retry hint, nothing done. So clients
    /// that ask for much and read slowly cost the node at most this much
    /// memory ([`crate::admission::ResponseBudget`]). At least 16 MiB.
    pub max_response_bytes: usize,
}

/// The shortest `limits.session_ttl_ms` accepted. A client retries a write
/// until its deadline (geokv-client and kvctl: 10 s by default); the session
/// that deduplicates those retries must outlive that by a wide margin, also
/// when leaders' clocks differ. A retry that still comes later is refused
/// (the collected session leaves a marker), never applied twice.
pub const MIN_SESSION_TTL_MS: u64 = 60_000;

/// The smallest `limits.max_response_bytes` accepted.
pub const MIN_RESPONSE_BYTES: usize = 16 << 20;

/// The largest `max_moves_in_flight` accepted: each move ships a whole
/// shard, and more at once only make every one of them slower.
pub const MAX_MOVES_IN_FLIGHT_CEILING: usize = 64;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_key_bytes: 4 * 1024,
            max_value_bytes: 1024 * 1024,
            max_batch_ops: 128,
            max_batch_bytes: 4 * 1024 * 1024,
            default_scan_limit: 1_000,
            max_scan_limit: 10_000,
            request_timeout_ms: 10_000,
            session_ttl_ms: 60 * 60 * 1000,
            max_concurrent_requests: 1_024,
            max_inflight_requests: 4_096,
            max_response_bytes: 256 << 20,
        }
    }
}

/// Eventual-mode (multi-master) replication settings, per node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventualConfig {
    /// Most entries one shard's outbox keeps for peers that have not
    /// acknowledged them. A peer further behind (down or partitioned for
    /// long) is sent the shard's whole range instead (full resync), and the
    /// oldest entries are dropped: the outbox's disk use stays bounded.
    pub outbox_max_entries: u64,
    /// Most writes in one replication message, and most key+value bytes
    /// (a single larger write still goes alone).
    pub ship_batch_entries: usize,
    pub ship_batch_bytes: usize,
    /// Replication messages in flight per (peer, shard) before waiting for
    /// acknowledgements: enough to keep a long link busy (a message leaves
    /// about every fsync), bounded at `ship_window × ship_batch_bytes` of
    /// memory per peer and shard.
    pub ship_window: usize,
    /// With nothing to ship, a replica tells each peer how far its clock has
    /// got this often (lets peers collect tombstones).
    pub heartbeat_interval_ms: u64,
    /// How often acknowledged outbox entries and tombstones every replica has
    /// seen are collected.
    pub gc_interval_ms: u64,
    /// Discarded writes this node remembers (oldest dropped first).
    pub conflict_log_entries: u64,
}

impl Default for EventualConfig {
    fn default() -> Self {
        Self {
            outbox_max_entries: 1_000_000,
            ship_batch_entries: 256,
            ship_batch_bytes: 1024 * 1024,
            ship_window: 32,
            heartbeat_interval_ms: 200,
            gc_interval_ms: 1_000,
            conflict_log_entries: 10_000,
        }
    }
}

/// A node's whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This node's id: non-zero, unique, and listed in `initial_cluster`.
    /// With `join`, 0 (the meta shard assigns one at the first start, which
    /// the node stores in its data directory).
    pub node_id: u64,
    /// Address to bind for gRPC (client API, Raft, admin).
    pub listen: String,
    /// Address to bind the Prometheus `/metrics` HTTP endpoint; empty: off.
    pub metrics_listen: String,
    /// Local IP that connections to peers are made from; empty: the OS
    /// chooses. The lab gives each node its own loopback IP so that its
    /// WAN emulator can tell which node a connection comes from.
    pub outgoing_ip: String,
    pub data_dir: PathBuf,
    /// A fault injector for tests: once this file exists, every WAL fsync
    /// fails (as on a dying disk), so the node must stop acknowledging
    /// writes. Empty: off (always, outside tests).
    pub fault_fail_fsync_when_exists: PathBuf,
    /// Every member of the initial cluster. Identical on every node: the
    /// initial shard map is computed from it.
    pub initial_cluster: Vec<Member>,
    /// Instead of `initial_cluster`: addresses (HOST:PORT) of members of a
    /// running cluster, asked in turn to admit this node. The meta shard
    /// gives it an id, which the node keeps in `data_dir` (a restart does
    /// not join again).
    pub join: Vec<String>,
    /// Where peers and clients dial a joining node (HOST:PORT), when not
    /// `listen` (behind a proxy or NAT); empty: `listen`.
    pub advertise_addr: String,
    /// This node's region and zone when it joins (an initial member's come
    /// from `initial_cluster`).
    pub region: String,
    pub zone: String,
    /// A member that answers no probe of the meta shard's leader for this
    /// long (ms) is marked down and its replicas are re-created elsewhere
    /// (CockroachDB's default: 5 minutes).
    pub node_dead_after_ms: u64,
    /// Whether the meta shard's leader moves replicas to even out the
    /// replica counts of the nodes and to spread each shard over more
    /// regions (joined nodes fill up this way). Drains and dead-node
    /// replacement run either way.
    pub rebalance: bool,
    /// Replica changes (moves for drains, dead-node replacement and
    /// rebalancing) the meta shard's leader keeps under way at once, at
    /// most: each ships a whole shard as a snapshot, so this bounds the
    /// bandwidth and disk topology changes take from serving.
    pub max_moves_in_flight: usize,
    /// A Raft shard whose data passes this many bytes on disk (RocksDB's
    /// estimate, compressed, at its leader) is split in two at its middle
    /// key by the meta shard's leader; 0: never (CockroachDB's default
    /// range size limit is 512 MiB).
    pub split_size_bytes: u64,
    /// A Raft shard that applies more than this many log entries per second
    /// over 10 s is split likewise (load); 0: never (the default: a split
    /// moves the new half's leadership, which benchmarks placing leaders
    /// do not expect).
    pub split_load_entries_per_s: u64,
    /// Two neighbouring Raft shards whose boundary an automatic split made
    /// are merged again by the meta shard's leader once together they hold
    /// less than this many bytes on disk and are cold (together under half
    /// of `split_load_entries_per_s`, when load splitting is on); 0: never.
    /// Initial split points and operators' splits are never merged away on
    /// their own (CockroachDB's sticky splits).
    pub merge_size_bytes: u64,
    /// Keys at which data shards are pre-split, in increasing order.
    pub split_points: Vec<String>,
    /// Replicas per data shard (capped at the number of nodes).
    pub replication_factor: usize,
    /// The region every shard of a new cluster keeps its leader in when it
    /// can ("" = anywhere); change per shard with `kvctl shard
    /// set-leader-region`. Must be identical on every initial member.
    pub preferred_leader_region: String,
    /// Key ranges served by eventual (multi-master, last-writer-wins) shards
    /// instead of Raft, as `START..END` (empty END: to the end of the key
    /// space). The key space is also split at every range boundary. Must be
    /// identical on every initial member.
    pub eventual_ranges: Vec<String>,
    pub raft: RaftConfig,
    pub limits: Limits,
    pub eventual: EventualConfig,
    pub tls: TlsConfig,
}

/// Transport security (see docs/security.md). Either `plaintext = true`, or
/// all three files: then every connection, client or peer, is TLS (rustls),
/// peers must present a certificate from `ca_file` whose common name is
/// `node` (mTLS), and clients authenticate with a certificate from the same
/// CA (common name = user) or a bearer token when `auth` is on. The files
/// are read again when they change or on SIGHUP, so certificates rotate
/// without a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Serve and dial without TLS or authentication: anyone who can reach
    /// the port may call anything (development, the lab, tests). Never
    /// together with the files.
    pub plaintext: bool,
    /// PEM file of the cluster CA: peers' certificates and client
    /// certificates must chain to it, and peers' server certificates too.
    pub ca_file: Option<PathBuf>,
    /// PEM file of this node's certificate (chain), common name `node`, a
    /// subject alternative name for every address it is dialled on.
    pub cert_file: Option<PathBuf>,
    /// PEM file of the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// Whether clients must authenticate (client certificate or bearer
    /// token) and are held to their roles; `None`: on with TLS. Always off
    /// in plaintext.
    pub auth: Option<bool>,
}

impl TlsConfig {
    /// Whether requests are authenticated and checked against roles.
    pub fn auth_enabled(&self) -> bool {
        !self.plaintext && self.auth.unwrap_or(true)
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_id: 1,
            listen: "127.0.0.1:7001".into(),
            metrics_listen: String::new(),
            outgoing_ip: String::new(),
            data_dir: PathBuf::from("geokv-data"),
            fault_fail_fsync_when_exists: PathBuf::new(),
            initial_cluster: Vec::new(),
            join: Vec::new(),
            advertise_addr: String::new(),
            region: String::new(),
            zone: String::new(),
            node_dead_after_ms: 300_000,
            rebalance: true,
            max_moves_in_flight: crate::placement::DEFAULT_MAX_MOVES_IN_FLIGHT,
            split_size_bytes: 512 << 20,
            split_load_entries_per_s: 0,
            merge_size_bytes: 128 << 20,
            split_points: ["g", "n", "u"].iter().map(|s| s.to_string()).collect(),
            replication_factor: 3,
            preferred_leader_region: String::new(),
            eventual_ranges: Vec::new(),
            raft: RaftConfig::default(),
            limits: Limits::default(),
            eventual: EventualConfig::default(),
            tls: TlsConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {cause}")]
    Read { path: PathBuf, cause: std::io::Error },
    #[error("config file {path} is not valid: {cause}")]
    Parse { path: PathBuf, cause: String },
    #[error("config `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field, reason: reason.into() }
}

impl Config {
    /// Reads a TOML file over the defaults.
    pub fn from_file(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read { path: path.into(), cause })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), cause: e.to_string() })
    }

    /// How long after a quorum acknowledgement a leader may serve lease
    /// reads. A follower refuses to vote for `election_timeout_max_ms` after
    /// it hears from its leader (openraft's leader lease; a restarted node
    /// for that long after it starts, see `service::raft`), and it heard no
    /// earlier than the leader sent: so no other leader can exist for that
    /// long after the send time of an acknowledged heartbeat, less the
    /// clock rate allowance.
    pub fn lease(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.raft.election_timeout_max_ms - self.raft.max_clock_offset_ms)
    }

    /// How long a freshly started node refuses to vote: the leader lease it
    /// may have promised before it stopped (it does not survive a restart).
    /// None with `unsafe_no_vote_quarantine` (a negative control).
    pub fn vote_quarantine(&self) -> std::time::Duration {
        if self.raft.unsafe_no_vote_quarantine {
            return std::time::Duration::ZERO;
        }
        std::time::Duration::from_millis(self.raft.election_timeout_max_ms)
    }

    /// This node as a member: its entry in the initial cluster, or (a node
    /// that joined) its id, `listen` address, region and zone.
    pub fn me(&self) -> Member {
        self.initial_cluster.iter().find(|m| m.id == self.node_id).cloned().unwrap_or_else(|| Member {
            id: self.node_id,
            addr: if self.advertise_addr.is_empty() { self.listen.clone() } else { self.advertise_addr.clone() },
            region: self.region.clone(),
            zone: self.zone.clone(),
        })
    }

    /// Whether this node joins a running cluster (`join`) rather than being
    /// an initial member.
    pub fn joins(&self) -> bool {
        !self.join.is_empty()
    }

    pub fn split_point_bytes(&self) -> Vec<Vec<u8>> {
        self.split_points.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    /// The eventual ranges as `(start, end)` byte strings, sorted; refuses
    /// malformed, empty or overlapping ranges.
    pub fn eventual_range_bytes(&self) -> Result<Vec<KeyRange>, ConfigError> {
        let mut ranges = Vec::new();
        for r in &self.eventual_ranges {
            let (start, end) = r.split_once("..").ok_or_else(|| {
                invalid("eventual_ranges", format!("{r:?} is not START..END (END may be empty: to the end)"))
            })?;
            let end = (!end.is_empty()).then(|| end.as_bytes().to_vec());
            if end.as_deref().is_some_and(|e| e <= start.as_bytes()) {
                return Err(invalid("eventual_ranges", format!("{r:?} is empty: END must sort after START")));
            }
            ranges.push((start.as_bytes().to_vec(), end));
        }
        ranges.sort();
        for pair in ranges.windows(2) {
            if pair[0].1.as_ref().is_none_or(|end| *end > pair[1].0) {
                return Err(invalid("eventual_ranges", "ranges overlap"));
            }
        }
        Ok(ranges)
    }

    /// Checks every field; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.joins() {
            self.validate_join()?;
        } else if self.node_id == 0 {
            return Err(invalid("node_id", "must be non-zero"));
        }
        if self.node_dead_after_ms < 1_000 {
            return Err(invalid("node_dead_after_ms", "must be at least 1000: a node is not dead after a hiccup"));
        }
        if !(1..=MAX_MOVES_IN_FLIGHT_CEILING).contains(&self.max_moves_in_flight) {
            return Err(invalid(
                "max_moves_in_flight",
                format!("must be 1 to {MAX_MOVES_IN_FLIGHT_CEILING}: 0 would leave drains and dead nodes unhandled"),
            ));
        }
        self.listen
            .parse::<SocketAddr>()
            .map_err(|e| invalid("listen", format!("{:?} is not IP:PORT: {e}", self.listen)))?;
        if !self.metrics_listen.is_empty() {
            self.metrics_listen
                .parse::<SocketAddr>()
                .map_err(|e| invalid("metrics_listen", format!("{:?} is not IP:PORT: {e}", self.metrics_listen)))?;
        }
        if !self.outgoing_ip.is_empty() {
            self.outgoing_ip
                .parse::<std::net::IpAddr>()
                .map_err(|e| invalid("outgoing_ip", format!("{:?} is not an IP address: {e}", self.outgoing_ip)))?;
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must be set"));
        }
        self.validate_tls()?;
        if self.initial_cluster.is_empty() && !self.joins() {
            return Err(invalid("initial_cluster", "must list at least this node (or set join)"));
        }
        let mut ids = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for m in &self.initial_cluster {
            if m.id == 0 || !ids.insert(m.id) {
                return Err(invalid("initial_cluster", format!("node id {} is zero or listed twice", m.id)));
            }
            if !addrs.insert(m.addr.as_str()) {
                return Err(invalid("initial_cluster", format!("address {} is listed twice", m.addr)));
            }
            if m.addr.rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err()) {
                return Err(invalid(
                    "initial_cluster",
                    format!("address {:?} of node {} is not HOST:PORT", m.addr, m.id),
                ));
            }
            if m.region.is_empty() {
                return Err(invalid("initial_cluster", format!("node {} has no region", m.id)));
            }
        }
        if !self.joins() && !ids.contains(&self.node_id) {
            return Err(invalid("node_id", format!("node {} is not in initial_cluster {ids:?}", self.node_id)));
        }
        for pair in self.split_points.windows(2) {
            if pair[0] >= pair[1] {
                return Err(invalid("split_points", format!("must increase strictly: {:?} >= {:?}", pair[0], pair[1])));
            }
        }
        if self.split_points.iter().any(String::is_empty) {
            return Err(invalid("split_points", "the empty key cannot be a split point"));
        }
        if !self.preferred_leader_region.is_empty()
            && !self.joins()
            && !self.initial_cluster.iter().any(|m| m.region == self.preferred_leader_region)
        {
            return Err(invalid(
                "preferred_leader_region",
                format!("no member is in {:?}", self.preferred_leader_region),
            ));
        }
        self.eventual_range_bytes()?;
        let e = &self.eventual;
        for (field, v) in [
            ("eventual.outbox_max_entries", e.outbox_max_entries),
            ("eventual.ship_batch_entries", e.ship_batch_entries as u64),
            ("eventual.ship_batch_bytes", e.ship_batch_bytes as u64),
            ("eventual.ship_window", e.ship_window as u64),
            ("eventual.heartbeat_interval_ms", e.heartbeat_interval_ms),
            ("eventual.gc_interval_ms", e.gc_interval_ms),
            ("eventual.conflict_log_entries", e.conflict_log_entries),
        ] {
            if v == 0 {
                return Err(invalid(field, "must be positive"));
            }
        }
        if self.replication_factor == 0 {
            return Err(invalid("replication_factor", "must be at least 1"));
        }
        let r = &self.raft;
        if r.heartbeat_interval_ms == 0 {
            return Err(invalid("raft.heartbeat_interval_ms", "must be positive"));
        }
        if r.election_timeout_min_ms <= r.heartbeat_interval_ms {
            return Err(invalid(
                "raft.election_timeout_min_ms",
                format!("{} must exceed heartbeat_interval_ms {}", r.election_timeout_min_ms, r.heartbeat_interval_ms),
            ));
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return Err(invalid("raft.election_timeout_max_ms", "must exceed election_timeout_min_ms"));
        }
        if r.max_clock_offset_ms >= r.election_timeout_min_ms {
            return Err(invalid("raft.max_clock_offset_ms", "must be below election_timeout_min_ms"));
        }
        for (field, v) in [
            ("raft.safe_time_interval_ms", r.safe_time_interval_ms),
            ("raft.snapshot_every_entries", r.snapshot_every_entries),
            ("raft.max_append_entries", r.max_append_entries),
            ("raft.snapshot_send_timeout_ms", r.snapshot_send_timeout_ms),
        ] {
            if v == 0 {
                return Err(invalid(field, "must be positive"));
            }
        }
        let l = &self.limits;
        for (field, v) in [
            ("limits.max_key_bytes", l.max_key_bytes as u64),
            ("limits.max_value_bytes", l.max_value_bytes as u64),
            ("limits.max_batch_ops", l.max_batch_ops as u64),
            ("limits.max_batch_bytes", l.max_batch_bytes as u64),
            ("limits.default_scan_limit", l.default_scan_limit as u64),
            ("limits.max_scan_limit", l.max_scan_limit as u64),
            ("limits.request_timeout_ms", l.request_timeout_ms),
            ("limits.session_ttl_ms", l.session_ttl_ms),
            ("limits.max_concurrent_requests", l.max_concurrent_requests as u64),
            ("limits.max_inflight_requests", l.max_inflight_requests as u64),
            ("limits.max_response_bytes", l.max_response_bytes as u64),
        ] {
            if v == 0 {
                return Err(invalid(field, "must be positive"));
            }
        }
        if l.session_ttl_ms < MIN_SESSION_TTL_MS {
            return Err(invalid(
                "limits.session_ttl_ms",
                format!(
                    "must be at least {MIN_SESSION_TTL_MS} ms: a session must outlive every retry of its writes \
                     (clients retry for up to their deadline, 10 s by default)"
                ),
            ));
        }
        if l.max_response_bytes < MIN_RESPONSE_BYTES {
            return Err(invalid(
                "limits.max_response_bytes",
                format!(
                    "must be at least {} MiB: a scan page alone may take 4 MiB and a connection a quarter",
                    MIN_RESPONSE_BYTES >> 20
                ),
            ));
        }
        if l.default_scan_limit > l.max_scan_limit {
            return Err(invalid("limits.default_scan_limit", "must not exceed max_scan_limit"));
        }
        let ceiling = crate::storage::KEY_BYTES_CEILING;
        if l.max_key_bytes >= ceiling {
            return Err(invalid("limits.max_key_bytes", format!("must be below {ceiling}")));
        }
        let max_message = geokv_proto::MAX_GRPC_MESSAGE_BYTES;
        if l.max_value_bytes + l.max_key_bytes >= max_message || l.max_batch_bytes >= max_message {
            return Err(invalid("limits", format!("values and batches must fit a {max_message}-byte gRPC message")));
        }
        Ok(())
    }

    /// The rules of a joining node's configuration: seed addresses, a
    /// region, no initial cluster and no id of its own choosing.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let t = &self.tls;
        let files = [("tls.ca_file", &t.ca_file), ("tls.cert_file", &t.cert_file), ("tls.key_file", &t.key_file)];
        let given: Vec<&str> = files.iter().filter(|(_, f)| f.is_some()).map(|(name, _)| *name).collect();
        if t.plaintext {
            if let Some(name) = given.first() {
                return Err(invalid("tls.plaintext", format!("plaintext and {name} both set: choose one")));
            }
            if t.auth == Some(true) {
                return Err(invalid("tls.auth", "authentication needs TLS (credentials would travel in the clear)"));
            }
            return Ok(());
        }
        if given.len() < files.len() {
            let missing: Vec<&str> = files.iter().filter(|(_, f)| f.is_none()).map(|(name, _)| *name).collect();
            let field = if given.is_empty() { "tls" } else { "tls.ca_file" };
            return Err(invalid(
                field,
                format!(
                    "{} not set: give the cluster CA, this node's certificate and its key (`geokv certs` makes \
                     them; --tls-ca/--tls-cert/--tls-key), or run without TLS with --plaintext",
                    missing.join(", ")
                ),
            ));
        }
        Ok(())
    }

    fn validate_join(&self) -> Result<(), ConfigError> {
        if !self.initial_cluster.is_empty() {
            return Err(invalid(
                "join",
                "a joining node has no initial_cluster: it learns the members from the cluster",
            ));
        }
        for addr in &self.join {
            if addr.rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err()) {
                return Err(invalid("join", format!("address {addr:?} is not HOST:PORT")));
            }
        }
        if self.region.is_empty() {
            return Err(invalid("region", "a joining node must name its region"));
        }
        let me = self.me().addr;
        if me.rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err()) {
            return Err(invalid("advertise_addr", format!("{me:?} is not HOST:PORT")));
        }
        if self.join.contains(&me) {
            return Err(invalid("join", format!("{me} is this node's own address: name a running member")));
        }
        Ok(())
    }

    /// openraft's configuration for every group of this node.
    pub fn openraft(&self) -> openraft::Config {
        let r = &self.raft;
        openraft::Config {
            cluster_name: "geokv".into(),
            heartbeat_interval: r.heartbeat_interval_ms,
            election_timeout_min: r.election_timeout_min_ms,
            election_timeout_max: r.election_timeout_max_ms,
            install_snapshot_timeout: r.snapshot_send_timeout_ms,
            max_payload_entries: r.max_append_entries,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(r.snapshot_every_entries),
            max_in_snapshot_log_to_keep: r.logs_kept_after_snapshot,
            enable_pre_vote: Some(true),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three_nodes() -> Config {
        Config {
            initial_cluster: vec![
                Member::parse("1=127.0.0.1:7001@us-east").unwrap(),
                Member::parse("2=127.0.0.1:7002@us-west/b").unwrap(),
                Member::parse("3=127.0.0.1:7003@eu-west").unwrap(),
            ],
            tls: TlsConfig { plaintext: true, ..TlsConfig::default() },
            ..Config::default()
        }
    }

    #[test]
    fn tls_is_all_three_files_or_plaintext_said_out_loud() {
        let mut c = three_nodes();
        c.tls = TlsConfig::default();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("--plaintext") && err.contains("tls.ca_file"), "{err}");
        c.tls.ca_file = Some("ca.pem".into());
        assert!(c.validate().unwrap_err().to_string().contains("tls.cert_file"));
        c.tls.cert_file = Some("node.pem".into());
        c.tls.key_file = Some("node-key.pem".into());
        c.validate().unwrap();
        assert!(c.tls.auth_enabled(), "auth is on by default with TLS");
        c.tls.plaintext = true;
        assert!(c.validate().unwrap_err().to_string().contains("choose one"));
        let plain = three_nodes();
        assert!(!plain.tls.auth_enabled());
        let mut c = three_nodes();
        c.tls.auth = Some(true);
        assert!(c.validate().unwrap_err().to_string().contains("tls.auth"));
    }

    #[test]
    fn a_joining_node_names_seeds_and_a_region_and_nothing_of_an_initial_member() {
        let joining = Config {
            node_id: 0,
            listen: "127.0.0.1:7004".into(),
            join: vec!["127.0.0.1:7001".into()],
            region: "ap-northeast".into(),
            tls: TlsConfig { plaintext: true, ..TlsConfig::default() },
            ..Config::default()
        };
        joining.validate().unwrap();
        assert_eq!(joining.me().addr, "127.0.0.1:7004");
        let behind_a_proxy = Config { advertise_addr: "10.1.0.4:7004".into(), ..joining.clone() };
        assert_eq!(behind_a_proxy.me().addr, "10.1.0.4:7004");
        let cases = [
            (Config { region: String::new(), ..joining.clone() }, "region"),
            (Config { initial_cluster: three_nodes().initial_cluster, ..joining.clone() }, "join"),
            (Config { join: vec!["seed".into()], ..joining.clone() }, "join"),
            (Config { join: vec!["127.0.0.1:7004".into()], ..joining.clone() }, "join"),
            (Config { advertise_addr: "nowhere".into(), ..joining.clone() }, "advertise_addr"),
            (Config { node_dead_after_ms: 10, ..joining.clone() }, "node_dead_after_ms"),
            (Config { max_moves_in_flight: 0, ..joining.clone() }, "max_moves_in_flight"),
            (Config { max_moves_in_flight: 65, ..joining.clone() }, "max_moves_in_flight"),
        ];
        for (config, field) in cases {
            match config.validate() {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{config:?}"),
                other => panic!("expected `{field}` to be refused: {other:?}"),
            }
        }
    }

    #[test]
    fn defaults_with_members_are_valid() {
        three_nodes().validate().unwrap();
        assert_eq!(three_nodes().initial_cluster[1].zone, "b");
        three_nodes().openraft().validate().unwrap();
    }

    #[test]
    fn nonsense_is_refused_with_the_field_named() {
        let mut c = three_nodes();
        c.raft.election_timeout_min_ms = c.raft.heartbeat_interval_ms;
        assert!(c.validate().unwrap_err().to_string().contains("raft.election_timeout_min_ms"));

        let mut c = three_nodes();
        c.limits.max_value_bytes = 0;
        assert!(c.validate().unwrap_err().to_string().contains("limits.max_value_bytes"));

        let mut c = three_nodes();
        c.limits.max_key_bytes = crate::storage::KEY_BYTES_CEILING;
        assert!(c.validate().unwrap_err().to_string().contains("limits.max_key_bytes"));

        let mut c = three_nodes();
        c.node_id = 9;
        assert!(c.validate().unwrap_err().to_string().contains("node_id"));

        let mut c = three_nodes();
        c.split_points = vec!["n".into(), "g".into()];
        assert!(c.validate().unwrap_err().to_string().contains("split_points"));

        assert!(Member::parse("x=1.2.3.4:5@r").is_err());
        assert!(Member::parse("1=1.2.3.4:5").is_err());
    }

    #[test]
    fn a_session_ttl_shorter_than_client_retries_is_refused() {
        let mut c = three_nodes();
        c.limits.session_ttl_ms = MIN_SESSION_TTL_MS - 1;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("limits.session_ttl_ms") && err.contains("outlive every retry"), "{err}");
        c.limits.session_ttl_ms = MIN_SESSION_TTL_MS;
        c.validate().unwrap();
    }

    #[test]
    fn the_shipped_template_is_valid() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/geokv.toml");
        let c = Config::from_file(&path).unwrap();
        c.validate().unwrap();
        assert_eq!(c.initial_cluster.len(), 3);
        let me = c.initial_cluster.iter().find(|m| m.id == c.node_id).expect("node_id is a member");
        assert_eq!(me.addr, c.listen, "the template's node listens where initial_cluster says it is");
        assert_eq!(c.raft, RaftConfig::default());
        assert_eq!(c.limits, Limits::default());
    }

    #[test]
    fn toml_with_unknown_fields_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "node_id = 1\nlisten_addr = \"x\"\n").unwrap();
        assert!(matches!(Config::from_file(&path), Err(ConfigError::Parse { .. })));
        std::fs::write(&path, "node_id = 2\n[raft]\nheartbeat_interval_ms = 100\n").unwrap();
        let c = Config::from_file(&path).unwrap();
        assert_eq!((c.node_id, c.raft.heartbeat_interval_ms, c.raft.election_timeout_min_ms), (2, 100, 500));
    }
}
