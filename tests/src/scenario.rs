//! What the elastic-topology scenario tests share (tests/tests/scenario.rs
//! on local processes, lab/tests/scenario.rs across the lab's WAN): the
//! clients' load, each step's client statistics, and the replica layout.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use geokv_client::{Client, ShardMap};
use tokio::sync::Mutex;

use crate::Outcomes;

/// Every client loop stops when told to, or after this long.
pub const CLIENT_TIME_LIMIT: Duration = Duration::from_secs(900);
const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
/// A paced load: about 15 puts a second per client.
const PACE: Duration = Duration::from_millis(60);

/// One client operation: when it started, how long it took, whether it
/// succeeded.
pub type Ops = Arc<Mutex<Vec<(Instant, Duration, bool)>>>;

/// Puts keys spread over the whole key space (two letters, then the
/// writer and a counter), reading back every fourth acknowledged one
/// (linearizable), until told to stop.
pub async fn write_and_read(client: Client, writer: usize, outcomes: Outcomes, ops: Ops, stop: Arc<AtomicBool>) {
    let started = Instant::now();
    let mut acked: Vec<String> = Vec::new();
    for i in 0usize.. {
        if stop.load(Ordering::Relaxed) || started.elapsed() > CLIENT_TIME_LIMIT {
            break;
        }
        let key = format!(
            "{}{}{writer}-{i:05}",
            LETTERS[(i * 7 + writer) % 26] as char,
            LETTERS[(i / 26 + writer * 3) % 26] as char
        );
        let value = format!("v{writer}-{i}");
        let at = Instant::now();
        let put = client.put(&key, &value).await;
        ops.lock().await.push((at, at.elapsed(), put.is_ok()));
        let outcome = match put {
            Ok(_) => {
                acked.push(key.clone());
                Some(value)
            }
            Err(e) if e.is_indeterminate() || e.is_retryable() => None,
            Err(e) => panic!("put {key}: {e}"),
        };
        outcomes.lock().await.insert(key, outcome);
        tokio::time::sleep(PACE).await;
        if i % 4 == 3
            && let Some(key) = acked.get(i % acked.len().max(1))
        {
            let at = Instant::now();
            let got = client.get(key).await;
            ops.lock().await.push((at, at.elapsed(), got.is_ok()));
            if let Ok(found) = got {
                assert!(found.is_some(), "an acknowledged write of {key} read back as absent");
            }
        }
    }
}

/// Operations, error rate and p99 latency (of successful operations)
/// started in `[since, since + took)`.
pub async fn step_stats(ops: &Ops, since: Instant, took: Duration) -> (usize, f64, Duration) {
    let ops = ops.lock().await;
    let window: Vec<_> = ops.iter().filter(|(at, ..)| *at >= since && *at < since + took).collect();
    let failed = window.iter().filter(|(.., ok)| !ok).count();
    let mut ok: Vec<Duration> = window.iter().filter(|(.., ok)| *ok).map(|(_, d, _)| *d).collect();
    ok.sort_unstable();
    let p99 = ok.get((ok.len() * 99 / 100).min(ok.len().saturating_sub(1))).copied().unwrap_or_default();
    let rate = if window.is_empty() { 0.0 } else { failed as f64 / window.len() as f64 };
    (window.len(), rate, p99)
}

/// Replicas per node, and whether every shard has 3 replicas in 3 regions
/// with no change under way.
pub fn layout(map: &ShardMap) -> (BTreeMap<u64, usize>, bool) {
    let mut load = BTreeMap::new();
    let mut settled = true;
    for s in &map.shards {
        let mut regions: Vec<&str> = s.replicas.iter().map(|r| r.region.as_str()).collect();
        regions.sort_unstable();
        regions.dedup();
        settled &= s.replicas.len() == 3 && regions.len() == 3 && !s.is_changing() && s.merging_with.is_none();
        for r in &s.replicas {
            *load.entry(r.node_id).or_default() += 1;
        }
    }
    (load, settled)
}
