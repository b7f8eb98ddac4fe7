//! Prometheus metrics: what an operator pages on.
//!
//! Built on prometheus-client and served in the Prometheus text format
//! (0.0.4) on `GET /metrics` when `metrics_listen` is set: every family has
//! `# HELP` and `# TYPE`, counters end in `_total`, durations are seconds,
//! sizes bytes, gRPC codes are their names (`OK`, `UNAVAILABLE`, ...).
//! `promtool check metrics` passes on it (a test runs it on a live node).
//! Counters and histograms are recorded on the request path; Raft gauges
//! (term, leadership, commit/apply progress, replication lag per peer),
//! RocksDB sizes and process figures are read at scrape time, so they cost
//! nothing between scrapes. docs/operations.md lists every family; the
//! Grafana dashboard and alert rules in `docs/` are built on them.
//!
//! | metric | labels | meaning |
//! |---|---|---|
//! | `geokv_requests_total` | method, code | client requests by outcome |
//! | `geokv_request_duration_seconds` | method, consistency | latency histogram |
//! | `geokv_read_fallbacks_total` | requested, served | reads served at another level than asked (lease → linearizable, bounded → follower) |
//! | `geokv_forwarded_requests_total` | method | requests forwarded to the leader for clients without a router |
//! | `geokv_leader_changes_total`, `geokv_elections_total` | shard | leader changes seen, terms begun |
//! | `geokv_raft_term`, `geokv_raft_is_leader` | shard | |
//! | `geokv_raft_last_log_index`, `_committed_index`, `_applied_index` | shard | |
//! | `geokv_apply_lag_entries` | shard | committed − applied on this node |
//! | `geokv_replication_lag_entries` | shard, peer | leader only: last log − matched |
//! | `geokv_snapshot_index`, `geokv_purged_index` | shard | |
//! | `geokv_leader_outside_preferred_region` | shard | leader only: 1 while away from its preferred region |
//! | `geokv_wal_fsyncs_total`, `geokv_wal_fsync_waiters_total` | | group commit effect |
//! | `geokv_read_index_rounds_total`, `geokv_read_index_reads_total` | | ReadIndex batching effect |
//! | `geokv_rocksdb_sst_bytes`, `geokv_rocksdb_memtable_bytes` | cf | RocksDB sizes per column family |
//! | `geokv_connections`, `geokv_connections_accepted_total` | | gRPC connections open, accepted |
//! | `geokv_inflight_requests` | | client requests being served (the admission limit's use) |
//! | `geokv_response_reserved_bytes` | | room reserved for read results not yet taken by clients (against `limits.max_response_bytes`) |
//! | `geokv_ec_replication_delay_seconds` | shard, origin | eventual: receive time − the write's timestamp |
//! | `geokv_ec_replication_lag_entries`, `geokv_ec_replication_lag_seconds` | shard, peer | eventual: writes the peer has not acknowledged, and the age of the oldest |
//! | `geokv_ec_outbox_depth` | shard | eventual: entries kept for some peer |
//! | `geokv_ec_conflicts_total` | shard | eventual: writes this node discarded under last-writer-wins |
//! | `geokv_ec_catchup_seconds` | shard | eventual: from a peer link's recovery to the peer holding everything (convergence after heal) |
//! | `geokv_ec_resyncs_total` | shard, peer | eventual: full-range resyncs (peer behind the outbox bound) |
//! | `geokv_ec_tombstones`, `geokv_ec_tombstones_collected_total` | shard / - | eventual: tombstones held and collected |
//! | `geokv_topology_decisions_total` | kind | meta leader only: decisions its member loop carried out (`drain_move`, `rebalance_move`, `leader_transfer`, `split`, `merge`, `merge_align`, `merge_given_up`, `node_down`, `node_up`); each is also logged |
//! | `geokv_raft_groups_stopped` | | groups stopped by a storage error (`kvctl status` says which) |
//! | `geokv_ready` | | 1 while the node should get traffic (`/readyz`) |
//! | `geokv_build_info` | version, node, region | 1 |
//! | `process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`, `process_start_time_seconds` | | the standard process metrics (Linux `/proc`) |

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::RaftMetrics;
use openraft::async_runtime::WatchReceiver;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::node::Node;
use crate::raft::TypeConfig;

/// Request latency bucket upper bounds, in seconds.
const LATENCY_BUCKETS_S: [f64; 15] =
    [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0];

/// Replication delay bucket upper bounds, in seconds (WAN one-way delays
/// are tens of ms: the buckets are fine there).
const DELAY_BUCKETS_S: [f64; 24] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1, 0.125, 0.15, 0.2, 0.3, 0.5, 1.0,
    2.0, 5.0, 10.0, 30.0, 60.0,
];

/// The largest HTTP request head the metrics endpoint reads, in bytes.
const MAX_HTTP_REQUEST_BYTES: usize = 8 * 1024;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodCode {
    method: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLevel {
    method: &'static str,
    consistency: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Method {
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Fallback {
    requested: &'static str,
    served: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabel {
    shard: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardPeer {
    shard: u64,
    peer: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardOrigin {
    shard: u64,
    origin: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Cf {
    cf: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Build {
    version: &'static str,
    node: u64,
    region: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS_S)
}

fn delay_histogram() -> Histogram {
    Histogram::new(DELAY_BUCKETS_S)
}

/// A gRPC code as its canonical name (`OK`, `NOT_FOUND`, ...).
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The node's counters and histograms (recorded as things happen); the
/// gauges are read at scrape time by [`Metrics::render`].
#[derive(Debug)]
pub struct Metrics {
    /// ReadIndex rounds run, and the linearizable reads they served.
    pub read_index_rounds: Counter,
    pub read_index_reads: Counter,
    /// gRPC connections open now (peers and clients), and accepted so far.
    pub connections: Gauge,
    pub connections_accepted: Counter,
    leader_changes: Family<ShardLabel, Counter>,
    elections: Family<ShardLabel, Counter>,
    requests: Family<MethodCode, Counter>,
    latency: HistogramFamily<MethodLevel>,
    fallbacks: Family<Fallback, Counter>,
    forwards: Family<Method, Counter>,
    decisions: Family<Kind, Counter>,
    /// The same decisions, for `kvctl status`.
    decision_counts: Mutex<BTreeMap<&'static str, u64>>,
    ec_conflicts: Family<ShardLabel, Counter>,
    ec_delay: HistogramFamily<ShardOrigin>,
    ec_catchup: HistogramFamily<ShardLabel>,
    ec_resyncs: Family<ShardPeer, Counter>,
    ec_tombstones_collected: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            read_index_rounds: Counter::default(),
            read_index_reads: Counter::default(),
            connections: Gauge::default(),
            connections_accepted: Counter::default(),
            leader_changes: Family::default(),
            elections: Family::default(),
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            fallbacks: Family::default(),
            forwards: Family::default(),
            decisions: Family::default(),
            decision_counts: Mutex::default(),
            ec_conflicts: Family::default(),
            ec_delay: Family::new_with_constructor(delay_histogram),
            ec_catchup: Family::new_with_constructor(latency_histogram),
            ec_resyncs: Family::default(),
            ec_tombstones_collected: Counter::default(),
        }
    }
}

impl Metrics {
    /// Records one finished client request.
    pub fn observe(&self, method: &'static str, consistency: &'static str, code: tonic::Code, elapsed: Duration) {
        self.requests.get_or_create(&MethodCode { method, code: code_name(code) }).inc();
        self.latency.get_or_create(&MethodLevel { method, consistency }).observe(elapsed.as_secs_f64());
    }

    /// Counts a read served at `served` when `requested` was asked for.
    pub fn read_fallback(&self, requested: &'static str, served: &'static str) {
        self.fallbacks.get_or_create(&Fallback { requested, served }).inc();
    }

    /// Counts a client request forwarded to the node that can serve it.
    pub fn forwarded(&self, method: &'static str) {
        self.forwards.get_or_create(&Method { method }).inc();
    }

    /// Counts one decision of the meta leader's member loop (see the
    /// module's table for the kinds).
    pub fn topology_decision(&self, kind: &'static str) {
        self.decisions.get_or_create(&Kind { kind }).inc();
        *self.decision_counts.lock().expect("metrics lock").entry(kind).or_default() += 1;
    }

    /// The decisions counted so far, by kind.
    pub fn topology_decisions(&self) -> Vec<(&'static str, u64)> {
        self.decision_counts.lock().expect("metrics lock").iter().map(|(k, n)| (*k, *n)).collect()
    }

    pub fn ec_conflict(&self, shard: u64) {
        self.ec_conflicts.get_or_create(&ShardLabel { shard }).inc();
    }

    pub fn ec_replication_delay(&self, shard: u64, origin: u64, delay_ms: u64) {
        self.ec_delay.get_or_create(&ShardOrigin { shard, origin }).observe(delay_ms as f64 / 1000.0);
    }

    pub fn ec_catchup(&self, shard: u64, took: Duration) {
        self.ec_catchup.get_or_create(&ShardLabel { shard }).observe(took.as_secs_f64());
    }

    pub fn ec_resync(&self, shard: u64, peer: u64) {
        self.ec_resyncs.get_or_create(&ShardPeer { shard, peer }).inc();
    }

    pub fn ec_tombstones_collected(&self, n: u64) {
        self.ec_tombstones_collected.inc_by(n);
    }

    /// Counts leader changes and new terms of one group until it shuts down.
    pub async fn watch_group(
        self: Arc<Self>,
        shard: u64,
        mut rx: openraft::type_config::alias::WatchReceiverOf<TypeConfig, RaftMetrics<TypeConfig>>,
    ) {
        let mut last: Option<u64> = None;
        let mut term = rx.borrow_watched().current_term;
        loop {
            let (leader, now_term) = {
                let m = rx.borrow_and_update();
                (m.current_leader, m.current_term)
            };
            if now_term > term {
                self.elections.get_or_create(&ShardLabel { shard }).inc_by(now_term - term);
                term = now_term;
            }
            if leader.is_some() && leader != last {
                self.leader_changes.get_or_create(&ShardLabel { shard }).inc();
                tracing::info!(shard, leader = ?leader, previous = ?last, "leader changed");
            }
            if leader.is_some() {
                last = leader;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// The Prometheus text exposition of everything this node knows.
    pub async fn render(&self, node: &Node) -> String {
        let mut reg = Registry::with_prefix("geokv");
        self.register_recorded(&mut reg);
        register_scraped(&mut reg, node).await;
        let mut process = Registry::default();
        register_process(&mut process);
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &reg).expect("writing to a String");
        prometheus_client::encoding::prometheus_text::encode(&mut out, &process).expect("writing to a String");
        out
    }

    /// Registers what is recorded as it happens (clones share the values).
    fn register_recorded(&self, reg: &mut Registry) {
        add_plain(reg, "requests", "Client requests by gRPC method and outcome.", self.requests.clone());
        add(
            reg,
            "request_duration",
            "Client request latency by method and the consistency asked for.",
            Some(Unit::Seconds),
            self.latency.clone(),
        );
        add_plain(
            reg,
            "read_fallbacks",
            "Reads served at another level than requested (lease to linearizable, bounded to follower).",
            self.fallbacks.clone(),
        );
        add_plain(
            reg,
            "forwarded_requests",
            "Client requests this node forwarded to the shard's leader (generic clients without a router).",
            self.forwards.clone(),
        );
        add_plain(reg, "leader_changes", "Leader changes this node saw, per shard.", self.leader_changes.clone());
        add_plain(
            reg,
            "elections",
            "Raft terms begun (elections), per shard, as this node saw them.",
            self.elections.clone(),
        );
        add_plain(
            reg,
            "topology_decisions",
            "Decisions the meta leader's member loop carried out here, by kind.",
            self.decisions.clone(),
        );
        add_plain(reg, "read_index_rounds", "ReadIndex quorum rounds run.", self.read_index_rounds.clone());
        add_plain(
            reg,
            "read_index_reads",
            "Linearizable reads served by ReadIndex rounds.",
            self.read_index_reads.clone(),
        );
        add_plain(reg, "connections", "gRPC connections open (peers and clients).", self.connections.clone());
        add_plain(reg, "connections_accepted", "gRPC connections accepted.", self.connections_accepted.clone());
        add_plain(
            reg,
            "ec_conflicts",
            "Eventual shards: writes this node discarded under last-writer-wins.",
            self.ec_conflicts.clone(),
        );
        add(
            reg,
            "ec_replication_delay",
            "Eventual shards: receive time minus the write's timestamp, by origin node.",
            Some(Unit::Seconds),
            self.ec_delay.clone(),
        );
        add(
            reg,
            "ec_catchup",
            "Eventual shards: from a peer link's recovery to the peer holding everything.",
            Some(Unit::Seconds),
            self.ec_catchup.clone(),
        );
        add_plain(reg, "ec_resyncs", "Eventual shards: full-range resyncs of a peer.", self.ec_resyncs.clone());
        add_plain(
            reg,
            "ec_tombstones_collected",
            "Eventual shards: tombstones collected once every replica had them.",
            self.ec_tombstones_collected.clone(),
        );
    }
}

/// A gauge family filled now, registered under `name`.
fn gauges<L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static>(
    reg: &mut Registry,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    values: impl IntoIterator<Item = (L, i64)>,
) {
    let family: Family<L, Gauge> = Family::default();
    for (labels, v) in values {
        family.get_or_create(&labels).set(v);
    }
    add(reg, name, help, unit, family);
}

/// A counter read now (kept elsewhere), registered under `name`.
fn const_counter(reg: &mut Registry, name: &str, help: &str, value: u64) {
    let counter: Counter = Counter::default();
    counter.inc_by(value);
    add_plain(reg, name, help, counter);
}

fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// What is read at scrape time: every group's Raft state, the eventual
/// shards' positions, storage and build facts.
async fn register_scraped(reg: &mut Registry, node: &Node) {
    let map = node.shard_map();
    let mut raft: BTreeMap<&'static str, Vec<(ShardLabel, i64)>> = BTreeMap::new();
    let mut away = Vec::new();
    let mut lag = Vec::new();
    for (shard, group) in node.groups().await {
        let m = group.metrics().borrow_watched().clone();
        let last_log = m.last_log_index.unwrap_or(0);
        let committed = crate::raft::index_of(&m.local_committed);
        let applied = crate::raft::index_of(&m.last_applied);
        let is_leader = m.state == openraft::ServerState::Leader;
        for (name, v) in [
            ("raft_term", m.current_term),
            ("raft_is_leader", u64::from(is_leader)),
            ("raft_last_log_index", last_log),
            ("raft_committed_index", committed),
            ("raft_applied_index", applied),
            ("apply_lag_entries", committed.saturating_sub(applied)),
            ("snapshot_index", crate::raft::index_of(&m.snapshot)),
            ("purged_index", crate::raft::index_of(&m.purged)),
        ] {
            raft.entry(name).or_default().push((ShardLabel { shard }, as_i64(v)));
        }
        if is_leader && shard != crate::shards::META_SHARD_ID {
            let preferred = map.shard(shard).and_then(|d| d.preferred_leader_region.as_deref());
            let outside = preferred.is_some_and(|r| r != node.me.region);
            away.push((ShardLabel { shard }, i64::from(outside)));
        }
        for (peer, matched) in m.replication.iter().flatten() {
            let behind = last_log.saturating_sub(crate::raft::index_of(matched));
            lag.push((ShardPeer { shard, peer: *peer }, as_i64(behind)));
        }
    }
    let help = |name: &str| match name {
        "raft_term" => "The shard's current Raft term on this node.",
        "raft_is_leader" => "1 while this node leads the shard.",
        "raft_last_log_index" => "The last log index this node holds for the shard.",
        "raft_committed_index" => "The last log index this node knows committed.",
        "raft_applied_index" => "The last log index this node applied.",
        "apply_lag_entries" => "Committed but not yet applied entries on this node.",
        "snapshot_index" => "The log index of the shard's last snapshot here.",
        _ => "The last log index purged from this node's log.",
    };
    for (name, values) in raft {
        gauges(reg, name, help(name), None, values);
    }
    gauges(
        reg,
        "leader_outside_preferred_region",
        "Leader only: 1 while the shard's leader is away from its preferred region.",
        None,
        away,
    );
    gauges(reg, "replication_lag_entries", "Leader only: entries a peer lacks of the shard's log.", None, lag);

    let mut outbox = Vec::new();
    let mut tombstones = Vec::new();
    let (mut ec_lag, mut ec_lag_ms) = (Vec::new(), Vec::new());
    for shard in node.eventual_shards() {
        let id = shard.id();
        outbox.push((ShardLabel { shard: id }, as_i64(shard.outbox_depth())));
        tombstones.push((ShardLabel { shard: id }, as_i64(shard.tombstones())));
        for l in shard.peer_lags() {
            ec_lag.push((ShardPeer { shard: id, peer: l.peer }, as_i64(l.entries)));
            ec_lag_ms.push((ShardPeer { shard: id, peer: l.peer }, l.ms as f64 / 1000.0));
        }
    }
    gauges(reg, "ec_outbox_depth", "Eventual shards: outbox entries kept for some peer.", None, outbox);
    gauges(reg, "ec_tombstones", "Eventual shards: tombstones held.", None, tombstones);
    gauges(reg, "ec_replication_lag_entries", "Eventual shards: writes a peer has not acknowledged.", None, ec_lag);
    let family: Family<ShardPeer, Gauge<f64, std::sync::atomic::AtomicU64>> = Family::default();
    for (labels, v) in ec_lag_ms {
        family.get_or_create(&labels).set(v);
    }
    add(
        reg,
        "ec_replication_lag",
        "Eventual shards: age of the oldest write a peer has not acknowledged.",
        Some(Unit::Seconds),
        family,
    );

    let (syncs, waiters) = node.storage.sync_stats();
    const_counter(reg, "wal_fsyncs", "WAL fsyncs issued (group commit).", syncs);
    const_counter(reg, "wal_fsync_waiters", "Writes whose durability WAL fsyncs served.", waiters);
    let sizes = node.storage.sizes();
    gauges(
        reg,
        "rocksdb_sst",
        "RocksDB: bytes of SST files per column family.",
        Some(Unit::Bytes),
        sizes.iter().map(|s| (Cf { cf: s.cf }, as_i64(s.sst_bytes))),
    );
    gauges(
        reg,
        "rocksdb_memtable",
        "RocksDB: bytes of memtables per column family.",
        Some(Unit::Bytes),
        sizes.iter().map(|s| (Cf { cf: s.cf }, as_i64(s.memtable_bytes))),
    );
    let inflight = node.admission.in_use();
    let gauge: Gauge = Gauge::default();
    gauge.set(as_i64(inflight as u64));
    add_plain(reg, "inflight_requests", "Client requests being served now (admission limit in use).", gauge);
    let reserved: Gauge = Gauge::default();
    reserved.set(as_i64(node.responses.in_use_bytes()));
    add(
        reg,
        "response_reserved",
        "Bytes reserved for read results not yet taken by their clients (against limits.max_response_bytes).",
        Some(Unit::Bytes),
        reserved,
    );
    let stopped: Gauge = Gauge::default();
    stopped.set(node.failed_groups().len() as i64);
    add_plain(reg, "raft_groups_stopped", "Raft groups stopped on this node by a storage error.", stopped);
    let ready: Gauge = Gauge::default();
    ready.set(i64::from(node.readiness().await.is_ok()));
    add_plain(reg, "ready", "1 while the node should get traffic (as /readyz and the gRPC health service).", ready);
    let build = Build { version: env!("CARGO_PKG_VERSION"), node: node.me.id, region: node.me.region.clone() };
    add_plain(reg, "build", "geokv's version, this node's id and region.", Info::new(build));
}

/// The standard process metrics (as Prometheus' Go and Java clients name
/// them), read from Linux's `/proc/self`; one that cannot be read is left
/// out. CPU times are in USER_HZ ticks, 100 per second on Linux.
fn register_process(reg: &mut Registry) {
    const TICKS_PER_S: f64 = 100.0;
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces), from field 3.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
    if let (Some(utime), Some(stime)) = (field(14), field(15)) {
        let cpu: Counter<f64, std::sync::atomic::AtomicU64> = Counter::default();
        cpu.inc_by((utime + stime) / TICKS_PER_S);
        add(reg, "process_cpu", "Total user and system CPU time spent.", Some(Unit::Seconds), cpu);
    }
    let boot_s = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<f64>().ok())));
    if let (Some(boot), Some(start)) = (boot_s, field(22)) {
        float_gauge(
            reg,
            "process_start_time",
            "Start time of the process since the Unix epoch.",
            Some(Unit::Seconds),
            boot + start / TICKS_PER_S,
        );
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
    };
    if let Some(rss) = kib("VmRSS:") {
        float_gauge(reg, "process_resident_memory", "Resident memory size.", Some(Unit::Bytes), rss * 1024.0);
    }
    if let Some(vsz) = kib("VmSize:") {
        float_gauge(reg, "process_virtual_memory", "Virtual memory size.", Some(Unit::Bytes), vsz * 1024.0);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        let open: Gauge = Gauge::default();
        open.set(fds.count() as i64);
        add_plain(reg, "process_open_fds", "Number of open file descriptors.", open);
    }
    let max = std::fs::read_to_string("/proc/self/limits").ok().and_then(|l| {
        l.lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3)?.parse::<i64>().ok())
    });
    if let Some(max) = max {
        let g: Gauge = Gauge::default();
        g.set(max);
        add_plain(reg, "process_max_fds", "Maximum number of open file descriptors.", g);
    }
}

fn float_gauge(reg: &mut Registry, name: &str, help: &str, unit: Option<Unit>, value: f64) {
    let g: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
    g.set(value);
    add(reg, name, help, unit, g);
}

/// Registers `metric` so that its `# HELP` and `# TYPE` are written even
/// before its first sample (prometheus-client leaves empty families out):
/// every node then describes every family, and rules and dashboards find
/// them all. `help` is written as given.
fn add<M: EncodeMetric + std::fmt::Debug + Send + Sync + 'static>(
    reg: &mut Registry,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    metric: M,
) {
    reg.register_collector(Box::new(Described { name: name.to_string(), help: help.to_string(), unit, metric }));
}

fn add_plain<M: EncodeMetric + std::fmt::Debug + Send + Sync + 'static>(
    reg: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) {
    add(reg, name, help, None, metric);
}

#[derive(Debug)]
struct Described<M> {
    name: String,
    help: String,
    unit: Option<Unit>,
    metric: M,
}

impl<M: EncodeMetric + std::fmt::Debug + Send + Sync + 'static> Collector for Described<M> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let metric =
            encoder.encode_descriptor(&self.name, &self.help, self.unit.as_ref(), self.metric.metric_type())?;
        self.metric.encode(metric)
    }
}

/// A deliberately tiny HTTP/1.0 server, one request per connection, bounded
/// request size: `GET /metrics` (Prometheus text), `GET /healthz` (200
/// while the process serves: liveness) and `GET /readyz` (200 when the node
/// should get traffic, else 503 with the reason: [`Node::readiness`], the
/// same as the gRPC health service).
pub async fn serve_http(node: Arc<Node>, listener: TcpListener) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else { continue };
        let node = node.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_HTTP_REQUEST_BYTES];
            let mut len = 0;
            while len < buf.len() {
                match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf[len..])).await {
                    Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => len += n,
                }
                if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let path = head.strip_prefix("GET ").and_then(|rest| rest.split([' ', '?']).next()).unwrap_or("");
            let (status, body) = match path {
                "/metrics" => ("200 OK", node.metrics.render(&node).await),
                "/healthz" => ("200 OK", "ok\n".to_string()),
                "/readyz" => match node.readiness().await {
                    Ok(()) => ("200 OK", "ready\n".to_string()),
                    Err(why) => ("503 Service Unavailable", format!("not ready: {why}\n")),
                },
                _ => ("404 Not Found", "served here: GET /metrics, /healthz, /readyz\n".to_string()),
            };
            let response = format!(
                "HTTP/1.0 {status}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n{body}",
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                body.len()
            );
            let _ = sock.write_all(response.as_bytes()).await;
        });
    }
}
