//! Prometheus metrics: what an operator pages on.
//!
//! Counters and histograms are recorded on the request path; Raft gauges
//! (term, leadership, commit/apply progress, replication lag per peer) are
//! read from openraft's metrics at scrape time, so they cost nothing between
//! scrapes. Served as Prometheus text on `GET /metrics` when `metrics_listen`
//! is set.
//!
//! | metric | labels | meaning |
//! |---|---|---|
//! | `geokv_requests_total` | op, code | requests by outcome (gRPC code name) |
//! | `geokv_request_duration_seconds` | op, consistency | latency histogram |
//! | `geokv_leader_changes_total` | shard | leader changes seen by this node |
//! | `geokv_raft_term`, `geokv_raft_is_leader` | shard | |
//! | `geokv_raft_last_log_index`, `_committed_index`, `_applied_index` | shard | |
//! | `geokv_apply_lag_entries` | shard | committed − applied on this node |
//! | `geokv_replication_lag_entries` | shard, peer | leader only: last log − matched |
//! | `geokv_snapshot_index`, `geokv_purged_index` | shard | |
//! | `geokv_leader_outside_preferred_region` | shard | leader only: 1 while away from its preferred region |
//! | `geokv_wal_fsyncs_total`, `geokv_wal_fsync_waiters_total` | | group commit effect |
//! | `geokv_read_index_rounds_total`, `geokv_read_index_reads_total` | | ReadIndex batching effect |
//! | `geokv_ec_replication_delay_ms` | shard, origin | eventual: receive time − the write's timestamp (histogram, ms) |
//! | `geokv_ec_replication_lag_entries`, `geokv_ec_replication_lag_ms` | shard, peer | eventual: writes the peer has not acknowledged, and the age of the oldest |
//! | `geokv_ec_outbox_depth` | shard | eventual: entries kept for some peer |
//! | `geokv_ec_conflicts_total` | shard | eventual: writes this node discarded under last-writer-wins |
//! | `geokv_ec_catchup_seconds` | shard | eventual: from a peer link's recovery to the peer holding everything (convergence after heal) |
//! | `geokv_ec_resyncs_total` | shard, peer | eventual: full-range resyncs (peer behind the outbox bound) |
//! | `geokv_ec_tombstones`, `geokv_ec_tombstones_collected_total` | shard / - | eventual: tombstones held and collected |
//! | `geokv_topology_decisions_total` | kind | meta leader only: decisions its member loop carried out (`drain_move`, `rebalance_move`, `leader_transfer`, `split`, `merge`, `merge_align`, `merge_given_up`, `node_down`, `node_up`); each is also logged |

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::RaftMetrics;
use openraft::async_runtime::WatchReceiver;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::node::Node;
use crate::raft::TypeConfig;

/// Histogram bucket upper bounds, in seconds.
const LATENCY_BUCKETS_S: [f64; 15] =
    [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0];

/// Replication delay bucket upper bounds, in ms (WAN one-way delays are
/// tens of ms: the buckets are fine there).
const DELAY_BUCKETS_MS: [f64; 24] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0, 125.0, 150.0, 200.0, 300.0, 500.0,
    1000.0, 2000.0, 5000.0, 10000.0, 30000.0, 60000.0,
];

/// The largest HTTP request head the metrics endpoint reads, in bytes.
const MAX_HTTP_REQUEST_BYTES: usize = 8 * 1024;

/// A cumulative Prometheus histogram over the bucket bounds `B`.
#[derive(Debug, Clone)]
struct Histogram<const N: usize> {
    bounds: &'static [f64; N],
    counts: [u64; N],
    count: u64,
    sum: f64,
}

impl<const N: usize> Histogram<N> {
    fn new(bounds: &'static [f64; N]) -> Self {
        Histogram { bounds, counts: [0; N], count: 0, sum: 0.0 }
    }

    fn observe(&mut self, value: f64) {
        for (i, bound) in self.bounds.iter().enumerate() {
            if value <= *bound {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += value;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        for (bound, count) in self.bounds.iter().zip(self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

type LatencyHistogram = Histogram<{ LATENCY_BUCKETS_S.len() }>;
type DelayHistogram = Histogram<{ DELAY_BUCKETS_MS.len() }>;

/// Eventual-mode counters, by shard (and peer or origin).
#[derive(Debug, Default)]
struct EcMetrics {
    conflicts: BTreeMap<u64, u64>,
    delay: BTreeMap<(u64, u64), DelayHistogram>,
    catchup: BTreeMap<u64, LatencyHistogram>,
    resyncs: BTreeMap<(u64, u64), u64>,
    tombstones_collected: u64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    /// ReadIndex rounds run, and the linearizable reads they served.
    pub read_index_rounds: std::sync::atomic::AtomicU64,
    pub read_index_reads: std::sync::atomic::AtomicU64,
    leader_changes: Mutex<BTreeMap<u64, u64>>,
    requests: Mutex<BTreeMap<(&'static str, String), u64>>,
    latency: Mutex<BTreeMap<(&'static str, &'static str), LatencyHistogram>>,
    ec: Mutex<EcMetrics>,
    decisions: Mutex<BTreeMap<&'static str, u64>>,
}

impl Metrics {
    /// Records one finished request.
    pub fn observe(&self, op: &'static str, consistency: &'static str, code: tonic::Code, elapsed: Duration) {
        *self.requests.lock().expect("metrics lock").entry((op, format!("{code:?}"))).or_default() += 1;
        self.latency
            .lock()
            .expect("metrics lock")
            .entry((op, consistency))
            .or_insert_with(|| Histogram::new(&LATENCY_BUCKETS_S))
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one decision of the meta leader's member loop (see the
    /// module's table for the kinds).
    pub fn topology_decision(&self, kind: &'static str) {
        *self.decisions.lock().expect("metrics lock").entry(kind).or_default() += 1;
    }

    /// The decisions counted so far, by kind.
    pub fn topology_decisions(&self) -> Vec<(&'static str, u64)> {
        self.decisions.lock().expect("metrics lock").iter().map(|(k, n)| (*k, *n)).collect()
    }

    pub fn ec_conflict(&self, shard: u64) {
        *self.ec.lock().expect("metrics lock").conflicts.entry(shard).or_default() += 1;
    }

    pub fn ec_replication_delay(&self, shard: u64, origin: u64, delay_ms: u64) {
        let mut ec = self.ec.lock().expect("metrics lock");
        ec.delay.entry((shard, origin)).or_insert_with(|| Histogram::new(&DELAY_BUCKETS_MS)).observe(delay_ms as f64);
    }

    pub fn ec_catchup(&self, shard: u64, took: Duration) {
        let mut ec = self.ec.lock().expect("metrics lock");
        ec.catchup.entry(shard).or_insert_with(|| Histogram::new(&LATENCY_BUCKETS_S)).observe(took.as_secs_f64());
    }

    pub fn ec_resync(&self, shard: u64, peer: u64) {
        *self.ec.lock().expect("metrics lock").resyncs.entry((shard, peer)).or_default() += 1;
    }

    pub fn ec_tombstones_collected(&self, n: u64) {
        self.ec.lock().expect("metrics lock").tombstones_collected += n;
    }

    /// Counts leader changes of one group until it shuts down.
    pub async fn watch_group(
        self: Arc<Self>,
        shard: u64,
        mut rx: openraft::type_config::alias::WatchReceiverOf<TypeConfig, RaftMetrics<TypeConfig>>,
    ) {
        let mut last: Option<u64> = None;
        loop {
            let leader = rx.borrow_and_update().current_leader;
            if leader.is_some() && leader != last {
                *self.leader_changes.lock().expect("metrics lock").entry(shard).or_default() += 1;
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
        let mut out = String::new();
        out.push_str("# TYPE geokv_requests_total counter\n");
        for ((op, code), n) in self.requests.lock().expect("metrics lock").iter() {
            let _ = writeln!(out, "geokv_requests_total{{op=\"{op}\",code=\"{code}\"}} {n}");
        }
        out.push_str("# TYPE geokv_request_duration_seconds histogram\n");
        for ((op, consistency), h) in self.latency.lock().expect("metrics lock").iter() {
            let labels = format!("op=\"{op}\",consistency=\"{consistency}\"");
            h.render(&mut out, "geokv_request_duration_seconds", &labels);
        }
        out.push_str("# TYPE geokv_topology_decisions_total counter\n");
        for (kind, n) in self.decisions.lock().expect("metrics lock").iter() {
            let _ = writeln!(out, "geokv_topology_decisions_total{{kind=\"{kind}\"}} {n}");
        }
        out.push_str("# TYPE geokv_leader_changes_total counter\n");
        for (shard, n) in self.leader_changes.lock().expect("metrics lock").iter() {
            let _ = writeln!(out, "geokv_leader_changes_total{{shard=\"{shard}\"}} {n}");
        }
        let map = node.shard_map();
        for (shard, raft) in node.groups().await {
            let m = raft.metrics().borrow_watched().clone();
            let last_log = m.last_log_index.unwrap_or(0);
            let committed = crate::raft::index_of(&m.local_committed);
            let applied = crate::raft::index_of(&m.last_applied);
            let is_leader = u8::from(m.state == openraft::ServerState::Leader);
            for (name, v) in [
                ("geokv_raft_term", m.current_term),
                ("geokv_raft_is_leader", u64::from(is_leader)),
                ("geokv_raft_last_log_index", last_log),
                ("geokv_raft_committed_index", committed),
                ("geokv_raft_applied_index", applied),
                ("geokv_apply_lag_entries", committed.saturating_sub(applied)),
                ("geokv_snapshot_index", crate::raft::index_of(&m.snapshot)),
                ("geokv_purged_index", crate::raft::index_of(&m.purged)),
            ] {
                let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {v}");
            }
            if m.state == openraft::ServerState::Leader && shard != crate::shards::META_SHARD_ID {
                let preferred = map.shard(shard).and_then(|d| d.preferred_leader_region.as_deref());
                let away = preferred.is_some_and(|r| r != node.me.region);
                let _ = writeln!(out, "geokv_leader_outside_preferred_region{{shard=\"{shard}\"}} {}", u8::from(away));
            }
            if let Some(replication) = &m.replication {
                for (peer, matched) in replication {
                    let lag = last_log.saturating_sub(crate::raft::index_of(matched));
                    let _ = writeln!(out, "geokv_replication_lag_entries{{shard=\"{shard}\",peer=\"{peer}\"}} {lag}");
                }
            }
        }
        let rounds = self.read_index_rounds.load(std::sync::atomic::Ordering::Relaxed);
        let reads = self.read_index_reads.load(std::sync::atomic::Ordering::Relaxed);
        let _ = writeln!(out, "geokv_read_index_rounds_total {rounds}\ngeokv_read_index_reads_total {reads}");
        self.render_eventual(&mut out, node);
        let (syncs, waiters) = node.storage.sync_stats();
        let _ = writeln!(out, "geokv_wal_fsyncs_total {syncs}\ngeokv_wal_fsync_waiters_total {waiters}");
        out
    }
}

impl Metrics {
    fn render_eventual(&self, out: &mut String, node: &Node) {
        {
            let ec = self.ec.lock().expect("metrics lock");
            out.push_str("# TYPE geokv_ec_conflicts_total counter\n");
            for (shard, n) in &ec.conflicts {
                let _ = writeln!(out, "geokv_ec_conflicts_total{{shard=\"{shard}\"}} {n}");
            }
            out.push_str("# TYPE geokv_ec_replication_delay_ms histogram\n");
            for ((shard, origin), h) in &ec.delay {
                h.render(out, "geokv_ec_replication_delay_ms", &format!("shard=\"{shard}\",origin=\"{origin}\""));
            }
            out.push_str("# TYPE geokv_ec_catchup_seconds histogram\n");
            for (shard, h) in &ec.catchup {
                h.render(out, "geokv_ec_catchup_seconds", &format!("shard=\"{shard}\""));
            }
            out.push_str("# TYPE geokv_ec_resyncs_total counter\n");
            for ((shard, peer), n) in &ec.resyncs {
                let _ = writeln!(out, "geokv_ec_resyncs_total{{shard=\"{shard}\",peer=\"{peer}\"}} {n}");
            }
            let _ = writeln!(out, "geokv_ec_tombstones_collected_total {}", ec.tombstones_collected);
        }
        for shard in node.eventual_shards() {
            let id = shard.id();
            let _ = writeln!(out, "geokv_ec_outbox_depth{{shard=\"{id}\"}} {}", shard.outbox_depth());
            let _ = writeln!(out, "geokv_ec_tombstones{{shard=\"{id}\"}} {}", shard.tombstones());
            for lag in shard.peer_lags() {
                let labels = format!("shard=\"{id}\",peer=\"{}\"", lag.peer);
                let _ = writeln!(out, "geokv_ec_replication_lag_entries{{{labels}}} {}", lag.entries);
                let _ = writeln!(out, "geokv_ec_replication_lag_ms{{{labels}}} {}", lag.ms);
            }
        }
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
                "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(response.as_bytes()).await;
        });
    }
}
