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

/// The largest HTTP request head the metrics endpoint reads, in bytes.
const MAX_HTTP_REQUEST_BYTES: usize = 8 * 1024;

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; LATENCY_BUCKETS_S.len()],
    count: u64,
    sum_s: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (i, bound) in LATENCY_BUCKETS_S.iter().enumerate() {
            if seconds <= *bound {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum_s += seconds;
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    /// ReadIndex rounds run, and the linearizable reads they served.
    pub read_index_rounds: std::sync::atomic::AtomicU64,
    pub read_index_reads: std::sync::atomic::AtomicU64,
    leader_changes: Mutex<BTreeMap<u64, u64>>,
    requests: Mutex<BTreeMap<(&'static str, String), u64>>,
    latency: Mutex<BTreeMap<(&'static str, &'static str), Histogram>>,
}

impl Metrics {
    /// Records one finished request.
    pub fn observe(&self, op: &'static str, consistency: &'static str, code: tonic::Code, elapsed: Duration) {
        *self.requests.lock().expect("metrics lock").entry((op, format!("{code:?}"))).or_default() += 1;
        self.latency.lock().expect("metrics lock").entry((op, consistency)).or_default().observe(elapsed.as_secs_f64());
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
            for (bound, count) in LATENCY_BUCKETS_S.iter().zip(h.counts) {
                let _ = writeln!(out, "geokv_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {count}");
            }
            let _ = writeln!(out, "geokv_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "geokv_request_duration_seconds_sum{{{labels}}} {}", h.sum_s);
            let _ = writeln!(out, "geokv_request_duration_seconds_count{{{labels}}} {}", h.count);
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
                let away = preferred.is_some_and(|r| r != node.config.me().region);
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
        let (syncs, waiters) = node.storage.sync_stats();
        let _ = writeln!(out, "geokv_wal_fsyncs_total {syncs}\ngeokv_wal_fsync_waiters_total {waiters}");
        out
    }
}

/// A deliberately tiny HTTP/1.0 server: `GET /metrics` only, one request per
/// connection, bounded request size.
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
            let (status, body) = if head.starts_with("GET /metrics") {
                ("200 OK", node.metrics.render(&node).await)
            } else {
                ("404 Not Found", "only GET /metrics is served here\n".to_string())
            };
            let response = format!(
                "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(response.as_bytes()).await;
        });
    }
}
