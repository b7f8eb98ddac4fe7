//! The `geokv` command line: run one node, or a local development cluster.

use std::path::PathBuf;

use crate::config::{Config, Member};
use crate::{Node, serve};
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "geokv",
    version,
    about = "geokv: a strongly consistent, geo-replicated key-value store",
    long_about = "Runs one geokv node. Settings come from built-in defaults, then the TOML file \
                  given with --config, then GEOKV_* environment variables, then flags.\n\n\
                  A node speaks TLS (--tls-ca, --tls-cert, --tls-key, or [tls] in the file) unless it is \
                  started with --plaintext (no encryption, no authentication); with neither it refuses to \
                  start. `geokv certs` makes a development CA and certificates (docs/security.md).\n\n\
                  `geokv dev` instead starts a three-node cluster on this machine.",
    after_help = "EXAMPLES:\n  \
        geokv dev                                   # three local nodes on 127.0.0.1:7001-7003 (plaintext)\n  \
        geokv certs dev --dir certs && geokv dev --tls-dir certs    # the same with TLS and authentication\n  \
        geokv --config config/geokv.toml            # one node from a config file ([tls] in it)\n  \
        geokv --node-id 2 --listen 10.0.0.2:7002 --data-dir /var/lib/geokv \\\n        \
        --initial-cluster 1=10.0.0.1:7001@us-east,2=10.0.0.2:7002@us-west,3=10.0.0.3:7003@eu-west \\\n        \
        --tls-ca certs/ca.pem --tls-cert certs/node2.pem --tls-key certs/node2-key.pem\n  \
        geokv --join 10.0.0.1:7001,10.0.0.2:7002 --region ap-northeast \\\n        \
        --listen 10.0.0.4:7004 --data-dir /var/lib/geokv --tls-ca certs/ca.pem \\\n        \
        --tls-cert certs/node4.pem --tls-key certs/node4-key.pem   # a new member; the cluster gives it an id"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    node: NodeArgs,
    /// Log lines as text for people, or as one JSON object per line for a
    /// log collector (fields: timestamp, level, target, fields.message and
    /// the event's own fields). The level filter comes from RUST_LOG
    /// (default: info, openraft=warn).
    #[arg(long, env = "GEOKV_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Start a local three-node cluster (regions us-east, us-west, eu-west) on
    /// 127.0.0.1:7001-7003; Ctrl-C stops it. `kvctl` talks to it by default.
    Dev {
        /// Where the three nodes keep their data (one subdirectory each).
        #[arg(long, default_value = "geokv-dev-data")]
        data_dir: PathBuf,
        /// First gRPC port; the nodes use PORT, PORT+1, PORT+2.
        #[arg(long, default_value_t = 7001)]
        port: u16,
        /// First Prometheus metrics port (0: no metrics endpoint).
        #[arg(long, default_value_t = 9101)]
        metrics_port: u16,
        /// Serve TLS with authentication, from DIR/ca.pem, DIR/node.pem and
        /// DIR/node-key.pem (`geokv certs dev --dir DIR` makes them); without
        /// it the dev cluster is plaintext and says so.
        #[arg(long)]
        tls_dir: Option<PathBuf>,
    },
    /// Make a development CA and certificates for a TLS cluster (rcgen;
    /// ECDSA P-256). Node certificates have common name `node`; client
    /// certificates the user's name (`root` is the built-in administrator).
    #[command(after_help = "EXAMPLES:\n  \
        geokv certs dev --dir certs                     # CA, a node certificate for 127.0.0.1/localhost, root's\n  \
        geokv certs ca --dir certs\n  \
        geokv certs node --dir certs --san 10.0.0.1,node1.example.com --name node1\n  \
        geokv certs client --dir certs --user alice     # certs/client.alice.pem and -key.pem")]
    Certs {
        #[command(subcommand)]
        what: CertsCommand,
    },
    /// Load a backup (`kvctl backup DIR`) into a new, empty cluster.
    #[command(after_help = "\
Checks every file of the backup against its SHA-256 in DIR/manifest.json, refuses
a cluster that holds any key, recreates the backup's shard boundaries (splits;
eventual ranges carved out as eventual shards), sets preferred leader regions the
target has nodes in, then writes every key through ordinary batched writes. The
target may have any number of nodes and any regions. Values come back as they
were at the backup; versions are the new cluster's, and exactly-once sessions
are not carried over (clients of the new cluster start new ones).

EXAMPLES:
  geokv restore /backups/2026-12-06 --endpoints 10.0.0.1:7001
  geokv restore ./backup --endpoints https://127.0.0.1:7001 --cacert certs/ca.pem \\
      --cert certs/client.root.pem --key certs/client.root-key.pem")]
    Restore {
        /// The backup directory.
        dir: PathBuf,
        /// Any node(s) of the target cluster, HOST:PORT (https:// for TLS).
        #[arg(long, env = "GEOKV_ENDPOINTS", value_delimiter = ',', default_value = "127.0.0.1:7001")]
        endpoints: Vec<String>,
        /// CA certificate (PEM) of a TLS cluster.
        #[arg(long, env = "GEOKV_CACERT")]
        cacert: Option<PathBuf>,
        /// Client certificate (PEM) and its key, to act as its user (root).
        #[arg(long, env = "GEOKV_CERT", requires = "key")]
        cert: Option<PathBuf>,
        /// The client certificate's key (PEM).
        #[arg(long, env = "GEOKV_KEY", requires = "cert")]
        key: Option<PathBuf>,
        /// Batches written at once.
        #[arg(long, default_value_t = 8)]
        parallel: usize,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// A new CA: DIR/ca.pem and DIR/ca-key.pem (refuses to overwrite one).
    Ca {
        #[command(flatten)]
        common: CertArgs,
    },
    /// A node certificate signed by DIR's CA: DIR/NAME.pem, DIR/NAME-key.pem.
    Node {
        #[command(flatten)]
        common: CertArgs,
        /// Every IP address and DNS name peers and clients dial the node on,
        /// comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        san: Vec<String>,
        /// File name stem of the certificate and key.
        #[arg(long, default_value = "node")]
        name: String,
    },
    /// A client certificate for USER signed by DIR's CA:
    /// DIR/client.USER.pem and DIR/client.USER-key.pem.
    Client {
        #[command(flatten)]
        common: CertArgs,
        /// The user it authenticates as (`root`: the built-in administrator;
        /// others must be added with `kvctl user add USER`).
        #[arg(long)]
        user: String,
    },
    /// All a local cluster needs: a CA (unless DIR has one), a node
    /// certificate for 127.0.0.1, ::1 and localhost (plus --san), and root's
    /// client certificate.
    Dev {
        #[command(flatten)]
        common: CertArgs,
        /// More addresses the node certificate must name, comma-separated.
        #[arg(long, value_delimiter = ',')]
        san: Vec<String>,
    },
}

#[derive(Args)]
struct CertArgs {
    /// Directory the CA is in and the files are written to.
    #[arg(long, default_value = "certs")]
    dir: PathBuf,
    /// How long the certificate is valid, in days.
    #[arg(long, default_value_t = crate::certs::DEFAULT_VALID_DAYS)]
    days: u32,
}

#[derive(Args)]
struct NodeArgs {
    /// TOML config file (see config/geokv.toml).
    #[arg(long, env = "GEOKV_CONFIG")]
    config: Option<PathBuf>,
    /// This node's id (non-zero, listed in --initial-cluster).
    #[arg(long, env = "GEOKV_NODE_ID")]
    node_id: Option<u64>,
    /// IP:PORT to serve gRPC on.
    #[arg(long, env = "GEOKV_LISTEN")]
    listen: Option<String>,
    /// IP:PORT for the Prometheus /metrics endpoint.
    #[arg(long, env = "GEOKV_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Local IP to connect to peers from (the lab uses one per node).
    #[arg(long, env = "GEOKV_OUTGOING_IP")]
    outgoing_ip: Option<String>,
    /// Directory of this node's RocksDB (Raft logs, data, sessions); created
    /// if missing (default: geokv-data).
    #[arg(long, env = "GEOKV_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Every initial member as ID=HOST:PORT@REGION[/ZONE], comma-separated;
    /// identical on every node.
    #[arg(long, env = "GEOKV_INITIAL_CLUSTER", value_delimiter = ',')]
    initial_cluster: Vec<String>,
    /// Join a running cluster instead of starting a new one: HOST:PORT of
    /// one or more members, comma-separated, asked in turn. The cluster
    /// assigns the node its id (no --node-id or --initial-cluster); it is
    /// stored in --data-dir, so later starts are the same member.
    #[arg(long, env = "GEOKV_JOIN", value_delimiter = ',')]
    join: Vec<String>,
    /// With --join: the address peers and clients dial this node on, when
    /// not --listen (behind a proxy or NAT).
    #[arg(long, env = "GEOKV_ADVERTISE_ADDR")]
    advertise_addr: Option<String>,
    /// With --join: this node's region (required) ...
    #[arg(long, env = "GEOKV_REGION")]
    region: Option<String>,
    /// ... and zone (optional).
    #[arg(long, env = "GEOKV_ZONE")]
    zone: Option<String>,
    /// A member unreachable for this long in ms is marked down and its
    /// replicas are re-created on other nodes, keeping regions distinct
    /// (applies on the meta shard's leader; default: 300000).
    #[arg(long, env = "GEOKV_NODE_DEAD_AFTER_MS")]
    node_dead_after_ms: Option<u64>,
    /// Whether the meta shard's leader moves replicas to even out the nodes'
    /// replica counts and spread shards over regions (true|false;
    /// default: true).
    #[arg(long, env = "GEOKV_REBALANCE")]
    rebalance: Option<bool>,
    /// Replica moves (drains, dead-node replacement, rebalancing) under way
    /// in the cluster at once, at most, 1 to 64; each ships a whole shard
    /// (default: 2).
    #[arg(long, env = "GEOKV_MAX_MOVES_IN_FLIGHT")]
    max_moves_in_flight: Option<usize>,
    /// Split a Raft shard at its middle key once its data passes this many
    /// bytes on disk (0: never; default: 536870912, 512 MiB).
    #[arg(long, env = "GEOKV_SPLIT_SIZE_BYTES")]
    split_size_bytes: Option<u64>,
    /// Split a Raft shard that applies more than this many entries per
    /// second over 10 s (0: never; default: 0).
    #[arg(long, env = "GEOKV_SPLIT_LOAD_ENTRIES_PER_S")]
    split_load_entries_per_s: Option<u64>,
    /// Merge two neighbouring shards an automatic split made once together
    /// they hold fewer bytes than this and are cold (0: never; default:
    /// 134217728, 128 MiB).
    #[arg(long, env = "GEOKV_MERGE_SIZE_BYTES")]
    merge_size_bytes: Option<u64>,
    /// Keys at which data shards are pre-split, comma-separated, increasing.
    #[arg(long, env = "GEOKV_SPLIT_POINTS", value_delimiter = ',')]
    split_points: Option<Vec<String>>,
    /// Key ranges served by eventual (multi-master) shards: START..END,...
    #[arg(long, env = "GEOKV_EVENTUAL_RANGES", value_delimiter = ',')]
    eventual_ranges: Option<Vec<String>>,
    /// Writes an eventual shard keeps per shard for peers that have not
    /// acknowledged them; a peer further behind gets a full resync
    /// (default: 1000000).
    #[arg(long, env = "GEOKV_EVENTUAL_OUTBOX_MAX_ENTRIES")]
    eventual_outbox_max_entries: Option<u64>,
    /// Discarded eventual writes this node remembers for `kvctl conflicts`,
    /// oldest dropped first (default: 10000).
    #[arg(long, env = "GEOKV_EVENTUAL_CONFLICT_LOG_ENTRIES")]
    eventual_conflict_log_entries: Option<u64>,
    /// Most writes in one eventual replication message (default: 256).
    #[arg(long, env = "GEOKV_EVENTUAL_SHIP_BATCH_ENTRIES")]
    eventual_ship_batch_entries: Option<usize>,
    /// Most key and value bytes in one eventual replication message; a
    /// single larger write still goes alone (default: 1048576).
    #[arg(long, env = "GEOKV_EVENTUAL_SHIP_BATCH_BYTES")]
    eventual_ship_batch_bytes: Option<usize>,
    /// Eventual replication messages in flight per peer and shard before
    /// waiting for acknowledgements (default: 32).
    #[arg(long, env = "GEOKV_EVENTUAL_SHIP_WINDOW")]
    eventual_ship_window: Option<usize>,
    /// With nothing to ship, how often in ms an eventual replica tells each
    /// peer how far its clock has got (default: 200).
    #[arg(long, env = "GEOKV_EVENTUAL_HEARTBEAT_INTERVAL_MS")]
    eventual_heartbeat_interval_ms: Option<u64>,
    /// How often in ms acknowledged outbox entries and tombstones every
    /// replica has seen are collected (default: 1000).
    #[arg(long, env = "GEOKV_EVENTUAL_GC_INTERVAL_MS")]
    eventual_gc_interval_ms: Option<u64>,
    /// Replicas per data shard, spread across regions, capped at the number
    /// of nodes (new clusters; default: 3).
    #[arg(long, env = "GEOKV_REPLICATION_FACTOR")]
    replication_factor: Option<usize>,
    /// Region every shard keeps its leader in when it can (new clusters).
    #[arg(long, env = "GEOKV_PREFERRED_LEADER_REGION")]
    preferred_leader_region: Option<String>,
    /// Leader heartbeat period in ms; also the timeout of one append RPC, so
    /// above the largest RTT between replicas (default: 300).
    #[arg(long, env = "GEOKV_HEARTBEAT_INTERVAL_MS")]
    heartbeat_interval_ms: Option<u64>,
    /// Shortest election timeout in ms, above the heartbeat (default: 500).
    #[arg(long, env = "GEOKV_ELECTION_TIMEOUT_MIN_MS")]
    election_timeout_min_ms: Option<u64>,
    /// Longest election timeout in ms, above the minimum; also the leader
    /// lease and how long a restarted node refuses votes (default: 1000).
    #[arg(long, env = "GEOKV_ELECTION_TIMEOUT_MAX_MS")]
    election_timeout_max_ms: Option<u64>,
    /// The most two nodes' wall clocks may differ, in ms: leases are shortened
    /// by it, bounded reads add it, and a peer seen further off makes this
    /// node refuse lease and bounded reads for a while (default: 50).
    #[arg(long, env = "GEOKV_MAX_CLOCK_OFFSET_MS")]
    max_clock_offset_ms: Option<u64>,
    /// UNSAFE, for the test harness's negative control only: believe every
    /// peer's clock however far off it is, so skew beyond
    /// --max-clock-offset-ms goes undetected and lease and bounded reads can
    /// return stale data without saying so. Never in production.
    #[arg(long, env = "GEOKV_UNSAFE_TRUST_CLOCKS")]
    unsafe_trust_clocks: bool,
    /// UNSAFE, for the test harness's negative control only: no vote
    /// quarantine after a start, so a restarted node may vote and campaign
    /// while the leader it promised a lease to still serves lease reads
    /// (which can then be stale). Never in production.
    #[arg(long, env = "GEOKV_UNSAFE_NO_VOTE_QUARANTINE")]
    unsafe_no_vote_quarantine: bool,
    /// FAULT INJECTION, for tests only: once this file exists, every WAL
    /// fsync fails (as on a dying disk). The node must then stop
    /// acknowledging writes and report itself not ready.
    #[arg(long, env = "GEOKV_FAULT_FAIL_FSYNC_WHEN_EXISTS", value_name = "PATH")]
    fault_fail_fsync_when_exists: Option<PathBuf>,
    /// Build a shard snapshot after this many log entries since the last one
    /// (default: 10000).
    #[arg(long, env = "GEOKV_SNAPSHOT_EVERY_ENTRIES")]
    snapshot_every_entries: Option<u64>,
    /// Log entries kept behind a snapshot, so a slightly lagging follower
    /// catches up from the log rather than a whole snapshot (default: 1000).
    #[arg(long, env = "GEOKV_LOGS_KEPT_AFTER_SNAPSHOT")]
    logs_kept_after_snapshot: Option<u64>,
    /// How long in ms a request may wait for Raft (commit, ReadIndex) before
    /// the node answers unavailable (reads) or indeterminate (writes)
    /// (default: 10000).
    #[arg(long, env = "GEOKV_REQUEST_TIMEOUT_MS")]
    request_timeout_ms: Option<u64>,
    /// A client idle this long in ms loses its exactly-once session
    /// (default: 3600000, one hour).
    #[arg(long, env = "GEOKV_SESSION_TTL_MS")]
    session_ttl_ms: Option<u64>,
    /// Largest key accepted, in bytes; longer ones are refused before Raft
    /// (default: 4096).
    #[arg(long, env = "GEOKV_MAX_KEY_BYTES")]
    max_key_bytes: Option<usize>,
    /// Largest value accepted, in bytes; larger ones are refused before
    /// Raft (default: 1048576).
    #[arg(long, env = "GEOKV_MAX_VALUE_BYTES")]
    max_value_bytes: Option<usize>,
    /// Requests served at once on one client connection; more wait in
    /// HTTP/2 flow control (default: 1024).
    #[arg(long, env = "GEOKV_MAX_CONCURRENT_REQUESTS")]
    max_concurrent_requests: Option<usize>,
    /// Most operations in one batch request (default: 128).
    #[arg(long, env = "GEOKV_MAX_BATCH_OPS")]
    max_batch_ops: Option<usize>,
    /// Most key and value bytes in one batch request (default: 4194304).
    #[arg(long, env = "GEOKV_MAX_BATCH_BYTES")]
    max_batch_bytes: Option<usize>,
    /// Pairs in a scan page when the request names no limit (default: 1000).
    #[arg(long, env = "GEOKV_DEFAULT_SCAN_LIMIT")]
    default_scan_limit: Option<u32>,
    /// The largest scan page a request may ask for (default: 10000).
    #[arg(long, env = "GEOKV_MAX_SCAN_LIMIT")]
    max_scan_limit: Option<u32>,
    /// The most Raft log entries one append message carries (default: 512).
    #[arg(long, env = "GEOKV_MAX_APPEND_ENTRIES")]
    max_append_entries: Option<u64>,
    /// A snapshot transfer making no progress for this many ms is abandoned
    /// and resumed where the receiver got to (default: 60000).
    #[arg(long, env = "GEOKV_SNAPSHOT_SEND_TIMEOUT_MS")]
    snapshot_send_timeout_ms: Option<u64>,
    /// How often in ms a leader confirms its leadership and pushes a safe
    /// time to its followers, for bounded-staleness reads; only for shards
    /// whose followers read in the last 60 s (default: 50).
    #[arg(long, env = "GEOKV_SAFE_TIME_INTERVAL_MS")]
    safe_time_interval_ms: Option<u64>,
    /// Client requests this node serves at once over all connections; one
    /// more waits up to 1 s for a slot (at most 2 waiting per connection),
    /// else is refused with RESOURCE_EXHAUSTED and a retry hint, nothing
    /// done, and clients back off (default: 4096).
    #[arg(long, env = "GEOKV_MAX_INFLIGHT_REQUESTS")]
    max_inflight_requests: Option<usize>,
    /// Bytes of read results this node holds for clients at once, from
    /// the read until the client took the response (HTTP/2 flow control);
    /// a connection may hold a quarter. A read finding no room waits up to
    /// 1 s, one over its connection's share is refused at once, both with
    /// RESOURCE_EXHAUSTED and a retry hint: slow readers cost bounded memory
    /// (at least 16 MiB = 16777216; 256 MiB by default; default: 268435456).
    #[arg(long, env = "GEOKV_MAX_RESPONSE_BYTES")]
    max_response_bytes: Option<usize>,
    /// PEM file of the cluster CA ([tls] ca_file). With --tls-cert and
    /// --tls-key every connection is TLS and peers need a node certificate
    /// from this CA.
    #[arg(long, env = "GEOKV_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// PEM file of this node's certificate, common name `node`, naming every
    /// address it is dialled on ([tls] cert_file; `geokv certs node`).
    #[arg(long, env = "GEOKV_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM file of the certificate's private key ([tls] key_file).
    #[arg(long, env = "GEOKV_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Serve and dial without TLS or authentication: anyone who reaches the
    /// port may call anything. Only for development and tests.
    #[arg(long, env = "GEOKV_PLAINTEXT")]
    plaintext: bool,
    /// With TLS, whether clients must authenticate and are held to their
    /// roles (true|false; default: true). Peers-only RPCs stay closed to
    /// clients either way.
    #[arg(long, env = "GEOKV_AUTH")]
    auth: Option<bool>,
}

impl NodeArgs {
    fn into_config(self) -> anyhow::Result<Config> {
        let mut c = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        macro_rules! set {
            ($($field:expr => $value:expr),* $(,)?) => { $(if let Some(v) = $value { $field = v; })* };
        }
        set! {
            c.node_id => self.node_id,
            c.listen => self.listen,
            c.metrics_listen => self.metrics_listen,
            c.outgoing_ip => self.outgoing_ip,
            c.data_dir => self.data_dir,
            c.split_points => self.split_points,
            c.eventual_ranges => self.eventual_ranges,
            c.eventual.outbox_max_entries => self.eventual_outbox_max_entries,
            c.eventual.conflict_log_entries => self.eventual_conflict_log_entries,
            c.replication_factor => self.replication_factor,
            c.preferred_leader_region => self.preferred_leader_region,
            c.raft.heartbeat_interval_ms => self.heartbeat_interval_ms,
            c.raft.election_timeout_min_ms => self.election_timeout_min_ms,
            c.raft.election_timeout_max_ms => self.election_timeout_max_ms,
            c.raft.max_clock_offset_ms => self.max_clock_offset_ms,
            c.raft.snapshot_every_entries => self.snapshot_every_entries,
            c.raft.logs_kept_after_snapshot => self.logs_kept_after_snapshot,
            c.limits.request_timeout_ms => self.request_timeout_ms,
            c.limits.session_ttl_ms => self.session_ttl_ms,
            c.limits.max_key_bytes => self.max_key_bytes,
            c.limits.max_value_bytes => self.max_value_bytes,
            c.limits.max_concurrent_requests => self.max_concurrent_requests,
            c.limits.max_inflight_requests => self.max_inflight_requests,
            c.limits.max_response_bytes => self.max_response_bytes,
            c.limits.max_batch_ops => self.max_batch_ops,
            c.limits.max_batch_bytes => self.max_batch_bytes,
            c.limits.default_scan_limit => self.default_scan_limit,
            c.limits.max_scan_limit => self.max_scan_limit,
            c.raft.max_append_entries => self.max_append_entries,
            c.raft.snapshot_send_timeout_ms => self.snapshot_send_timeout_ms,
            c.raft.safe_time_interval_ms => self.safe_time_interval_ms,
            c.eventual.ship_batch_entries => self.eventual_ship_batch_entries,
            c.eventual.ship_batch_bytes => self.eventual_ship_batch_bytes,
            c.eventual.ship_window => self.eventual_ship_window,
            c.eventual.heartbeat_interval_ms => self.eventual_heartbeat_interval_ms,
            c.eventual.gc_interval_ms => self.eventual_gc_interval_ms,
        }
        set! {
            c.advertise_addr => self.advertise_addr,
            c.region => self.region,
            c.zone => self.zone,
            c.node_dead_after_ms => self.node_dead_after_ms,
            c.rebalance => self.rebalance,
            c.max_moves_in_flight => self.max_moves_in_flight,
            c.split_size_bytes => self.split_size_bytes,
            c.split_load_entries_per_s => self.split_load_entries_per_s,
            c.merge_size_bytes => self.merge_size_bytes,
        }
        if self.tls_ca.is_some() {
            c.tls.ca_file = self.tls_ca;
        }
        if self.tls_cert.is_some() {
            c.tls.cert_file = self.tls_cert;
        }
        if self.tls_key.is_some() {
            c.tls.key_file = self.tls_key;
        }
        if self.plaintext {
            c.tls.plaintext = true;
        }
        if self.unsafe_trust_clocks {
            c.raft.unsafe_trust_clocks = true;
        }
        if self.unsafe_no_vote_quarantine {
            c.raft.unsafe_no_vote_quarantine = true;
        }
        if let Some(trigger) = self.fault_fail_fsync_when_exists {
            c.fault_fail_fsync_when_exists = trigger;
        }
        if self.auth.is_some() {
            c.tls.auth = self.auth;
        }
        if !self.initial_cluster.is_empty() {
            c.initial_cluster = self.initial_cluster.iter().map(|s| Member::parse(s)).collect::<Result<_, _>>()?;
        }
        if !self.join.is_empty() {
            c.join = self.join;
        }
        if c.joins() {
            anyhow::ensure!(
                self.node_id.is_none(),
                "--node-id cannot be used with --join: the cluster assigns a joining node its id"
            );
            // Set from the data directory or by the cluster (`join`).
            c.node_id = 0;
        }
        c.validate()?;
        Ok(c)
    }
}

/// Resolves when Ctrl-C or SIGTERM arrives.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn run_node(mut config: Config, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (is another node running there?)", config.listen))?;
    crate::join::resolve_node_id(&mut config).await?;
    let node = Node::open(config)?;
    let mut stop = stop;
    serve(node, listener, async move {
        let _ = stop.wait_for(|s| *s).await;
    })
    .await
}

fn dev_configs(data_dir: PathBuf, port: u16, metrics_port: u16, tls_dir: Option<&std::path::Path>) -> Vec<Config> {
    let regions = ["us-east", "us-west", "eu-west"];
    let members: Vec<Member> = (0..3u16)
        .map(|i| Member {
            id: u64::from(i) + 1,
            addr: format!("127.0.0.1:{}", port + i),
            region: regions[usize::from(i)].into(),
            zone: format!("{}-a", regions[usize::from(i)]),
        })
        .collect();
    members
        .iter()
        .map(|m| {
            let mut c = Config {
                node_id: m.id,
                listen: m.addr.clone(),
                data_dir: data_dir.join(format!("node-{}", m.id)),
                initial_cluster: members.clone(),
                ..Config::default()
            };
            if metrics_port != 0 {
                c.metrics_listen = format!("127.0.0.1:{}", metrics_port + (m.id as u16) - 1);
            }
            match tls_dir {
                Some(dir) => {
                    c.tls.ca_file = Some(dir.join("ca.pem"));
                    c.tls.cert_file = Some(dir.join("node.pem"));
                    c.tls.key_file = Some(dir.join("node-key.pem"));
                }
                None => c.tls.plaintext = true,
            }
            // No WAN on loopback: react faster than the WAN-tuned defaults.
            c.raft.heartbeat_interval_ms = 150;
            c.raft.election_timeout_min_ms = 1000;
            c.raft.election_timeout_max_ms = 2000;
            c
        })
        .collect()
}

/// Runs `geokv certs ...`, printing what it wrote.
fn certs(what: CertsCommand) -> anyhow::Result<()> {
    use crate::certs::{Validity, create_ca, create_client, create_node};
    let show = |w: crate::certs::Written| println!("wrote {} and {}", w.cert.display(), w.key.display());
    match what {
        CertsCommand::Ca { common } => show(create_ca(&common.dir, Validity::days(common.days))?),
        CertsCommand::Node { common, san, name } => {
            show(create_node(&common.dir, &name, &san, Validity::days(common.days))?)
        }
        CertsCommand::Client { common, user } => show(create_client(&common.dir, &user, Validity::days(common.days))?),
        CertsCommand::Dev { common, san } => {
            let validity = Validity::days(common.days);
            if crate::certs::ca_files(&common.dir).cert.exists() {
                println!("using the CA in {}", common.dir.display());
            } else {
                show(create_ca(&common.dir, validity)?);
            }
            let mut hosts: Vec<String> = ["127.0.0.1", "::1", "localhost"].map(String::from).to_vec();
            hosts.extend(san);
            show(create_node(&common.dir, "node", &hosts, validity)?);
            show(create_client(&common.dir, crate::auth::ROOT_USER, validity)?);
        }
    }
    Ok(())
}

/// Entry point of the `geokv` binary.
pub fn main() -> anyhow::Result<()> {
    main_from(std::env::args_os())
}

/// Runs `geokv` with the given command line (the first item is the program
/// name), e.g. from a launcher that embeds the node.
pub fn main_from<I, T>(args: I) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::parse_from(args);
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    match cli.log_format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt().json().with_env_filter(filter).init(),
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = std::sync::Arc::new(stop_tx);
    let on_signal = stop_tx.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        on_signal.send_replace(true);
    });
    match cli.command {
        None => run_node(cli.node.into_config()?, stop_rx).await,
        Some(Command::Certs { what }) => certs(what),
        Some(Command::Restore { dir, endpoints, cacert, cert, key, parallel }) => {
            let mut config = geokv_client::ClientConfig::new(endpoints);
            if let Some(ca) = &cacert {
                let identity = cert.as_deref().zip(key.as_deref());
                config.tls = Some(geokv_client::ClientTls::from_files(ca, identity)?);
            }
            let client = geokv_client::Client::with_config(config).await?;
            let done = geokv_client::backup::restore(&client, &dir, parallel).await?;
            println!(
                "restored {} shards, {} keys, {} bytes in {:.1} s ({} splits, {} eventual ranges made{})",
                done.shards,
                done.pairs,
                done.bytes,
                done.took_ms as f64 / 1000.0,
                done.splits,
                done.eventual_ranges,
                if done.regions_missing.is_empty() {
                    String::new()
                } else {
                    format!("; no node in preferred region(s) {}: left unset", done.regions_missing.join(", "))
                }
            );
            Ok(())
        }
        Some(Command::Dev { data_dir, port, metrics_port, tls_dir }) => {
            let configs = dev_configs(data_dir.clone(), port, metrics_port, tls_dir.as_deref());
            for c in &configs {
                c.validate()?;
            }
            let endpoints: Vec<_> = configs.iter().map(|c| c.listen.clone()).collect();
            let mut nodes = tokio::task::JoinSet::new();
            for c in configs {
                nodes.spawn(run_node(c, stop_rx.clone()));
            }
            let security = match &tls_dir {
                Some(dir) => format!(
                    "TLS with authentication (certificates in {d}); as root:\n      \
                     export GEOKV_ENDPOINTS=https://{e} GEOKV_CACERT={d}/ca.pem \
                     GEOKV_CERT={d}/client.root.pem GEOKV_KEY={d}/client.root-key.pem",
                    d = dir.display(),
                    e = endpoints[0]
                ),
                None => "PLAINTEXT: no encryption or authentication (--tls-dir DIR for TLS)".to_string(),
            };
            println!(
                "geokv dev: 3 nodes (us-east, us-west, eu-west) on {}; data in {}\n\
                 security: {security}\n\
                 try:  cargo run --bin kvctl -- put hello world && cargo run --bin kvctl -- get hello\n\
                 Ctrl-C stops the cluster.",
                endpoints.join(", "),
                data_dir.display()
            );
            // One node failing stops the others: a dev cluster is all or nothing.
            let mut first_error = None;
            while let Some(done) = nodes.join_next().await {
                if let Err(e) = done? {
                    tracing::error!(cause = %e, "node failed; stopping the dev cluster");
                    stop_tx.send_replace(true);
                    first_error.get_or_insert(e);
                }
            }
            first_error.map_or(Ok(()), Err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_flag_is_described() {
        let command = Cli::command();
        let dev = command.find_subcommand("dev").expect("dev subcommand");
        for arg in command.get_arguments().chain(dev.get_arguments()) {
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(help.len() > 20, "--{} has no help text", arg.get_id());
        }
    }

    /// Every field of `config/geokv.toml` can be set by a flag (and so by
    /// its `GEOKV_*` variable).
    #[test]
    fn every_field_of_the_config_template_has_a_flag() {
        // `[tls]` fields have shorter flags; an initial member is one
        // `--initial-cluster` entry.
        let renamed = [("tls.ca_file", "tls_ca"), ("tls.cert_file", "tls_cert"), ("tls.key_file", "tls_key")];
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/geokv.toml");
        let template = std::fs::read_to_string(path).unwrap();
        let command = Cli::command();
        let mut section = String::new();
        let mut missing = Vec::new();
        for line in template.lines().map(|l| l.trim().trim_start_matches("# ")) {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.trim_matches(['[', ']']).to_string();
                continue;
            }
            let Some((key, _)) = line.split_once(" = ") else { continue };
            if key.contains(' ') || key.starts_with('#') || section == "initial_cluster" {
                continue;
            }
            let field = if section.is_empty() { key.to_string() } else { format!("{section}.{key}") };
            let flag = match renamed.iter().find(|(f, _)| *f == field) {
                Some((_, flag)) => flag.to_string(),
                None if section == "eventual" => format!("eventual_{key}"),
                None => key.to_string(),
            };
            if !command.get_arguments().any(|a| a.get_id() == flag.as_str()) {
                missing.push(field);
            }
        }
        assert!(missing.is_empty(), "config fields without a flag: {missing:?}");
    }

    /// The defaults `--help` names are the ones the node uses.
    #[test]
    fn stated_defaults_are_the_real_ones() {
        let c = Config::default();
        let expected: Vec<(&str, String)> = vec![
            ("data_dir", c.data_dir.display().to_string()),
            ("eventual_outbox_max_entries", c.eventual.outbox_max_entries.to_string()),
            ("eventual_conflict_log_entries", c.eventual.conflict_log_entries.to_string()),
            ("replication_factor", c.replication_factor.to_string()),
            ("heartbeat_interval_ms", c.raft.heartbeat_interval_ms.to_string()),
            ("election_timeout_min_ms", c.raft.election_timeout_min_ms.to_string()),
            ("election_timeout_max_ms", c.raft.election_timeout_max_ms.to_string()),
            ("max_clock_offset_ms", c.raft.max_clock_offset_ms.to_string()),
            ("snapshot_every_entries", c.raft.snapshot_every_entries.to_string()),
            ("logs_kept_after_snapshot", c.raft.logs_kept_after_snapshot.to_string()),
            ("request_timeout_ms", c.limits.request_timeout_ms.to_string()),
            ("session_ttl_ms", c.limits.session_ttl_ms.to_string()),
            ("max_key_bytes", c.limits.max_key_bytes.to_string()),
            ("max_value_bytes", c.limits.max_value_bytes.to_string()),
            ("max_concurrent_requests", c.limits.max_concurrent_requests.to_string()),
            ("max_inflight_requests", c.limits.max_inflight_requests.to_string()),
            ("max_response_bytes", c.limits.max_response_bytes.to_string()),
            ("max_batch_ops", c.limits.max_batch_ops.to_string()),
            ("max_batch_bytes", c.limits.max_batch_bytes.to_string()),
            ("default_scan_limit", c.limits.default_scan_limit.to_string()),
            ("max_scan_limit", c.limits.max_scan_limit.to_string()),
            ("max_append_entries", c.raft.max_append_entries.to_string()),
            ("snapshot_send_timeout_ms", c.raft.snapshot_send_timeout_ms.to_string()),
            ("safe_time_interval_ms", c.raft.safe_time_interval_ms.to_string()),
            ("eventual_ship_batch_entries", c.eventual.ship_batch_entries.to_string()),
            ("eventual_ship_batch_bytes", c.eventual.ship_batch_bytes.to_string()),
            ("eventual_ship_window", c.eventual.ship_window.to_string()),
            ("eventual_heartbeat_interval_ms", c.eventual.heartbeat_interval_ms.to_string()),
            ("eventual_gc_interval_ms", c.eventual.gc_interval_ms.to_string()),
            ("node_dead_after_ms", c.node_dead_after_ms.to_string()),
            ("rebalance", c.rebalance.to_string()),
            ("max_moves_in_flight", c.max_moves_in_flight.to_string()),
            ("split_size_bytes", c.split_size_bytes.to_string()),
            ("split_load_entries_per_s", c.split_load_entries_per_s.to_string()),
            ("merge_size_bytes", c.merge_size_bytes.to_string()),
        ];
        let command = Cli::command();
        for (id, value) in expected {
            let arg = command.get_arguments().find(|a| a.get_id() == id).unwrap_or_else(|| panic!("no --{id}"));
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default().replace('\n', " ");
            let stated = help.split("default: ").nth(1).and_then(|rest| rest.split([')', ',']).next());
            assert_eq!(stated, Some(value.as_str()), "--{id}: {help}");
        }
    }
}
