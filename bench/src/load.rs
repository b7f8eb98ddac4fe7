//! The load generator: targets, connections and the closed- and open-loop
//! runners.
//!
//! A *target* is one operation, or a YCSB-style mix of reads and updates, on
//! one system (`geokv get lease`, `etcd put`, `etcd ycsb-b linearizable`).
//! A *cell* runs one target at one client count for a warm-up plus a
//! measured window. Closed loop: `clients` workers each loop `send; wait for
//! the answer; record`, sharing `ceil(clients / CLIENTS_PER_CONNECTION)`
//! connections. Open loop (`CellSpec::rate`): operations arrive at a fixed
//! rate whatever the system does, latency counts from each one's intended
//! send time, and at most `clients` are in flight ([`run_open_loop`]).
//! Only operations that *start* inside the measured window are recorded, in
//! HDR histograms (1 µs .. 60 s, 3 significant digits); failed operations are
//! counted apart and never enter the histogram. Keys are drawn uniformly
//! from `keys` keys by a per-worker RNG seeded from the run's seed, so a
//! rerun with the same seed sends the same sequence.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use geokv_client::{Client, ClientConfig, Consistency};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::cluster::{System, etcd_lazy_channel};
use crate::etcdpb;

/// Every benchmark key starts with this (one geokv shard, `[g, n)`).
pub const KEY_PREFIX: &str = "k";
/// Keys of the eventual targets start with this: they live in
/// [`EVENTUAL_RANGE`], which the bench's geokv clusters make eventual.
pub const EVENTUAL_KEY_PREFIX: &str = "ev/";
/// The eventual range every bench geokv cluster is started with
/// (`--eventual-ranges`): carved from the first Raft shard (`[, g)`), so the
/// Raft targets' keys (`k...`, shard `[g, n)`) are unaffected.
pub const EVENTUAL_RANGE: &str = "ev/..ev0";
/// Workers sharing one connection (gRPC multiplexes them over HTTP/2).
pub const CLIENTS_PER_CONNECTION: usize = 8;
/// Most concurrent clients a cell may run.
pub const MAX_CLIENTS: usize = 1024;
/// Longest latency the histograms hold, in µs (slower operations are clamped).
const MAX_LATENCY_US: u64 = 60_000_000;
/// Time one RPC may take before it counts as failed (both systems; the
/// `failover` scenario uses [`FAILOVER_RPC_TIMEOUT`]).
pub const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// Per-RPC timeout in `failover`: a request parked at a member that lost
/// its leader is abandoned and retried after this long, which bounds the
/// resolution of the measured window.
pub const FAILOVER_RPC_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause before an etcd client retries on another member (clientv3's default
/// backoff is 25 ms).
pub const ETCD_RETRY_BACKOFF: Duration = Duration::from_millis(25);

/// The key with index `i`.
pub fn key(i: u64) -> String {
    format!("{KEY_PREFIX}{i:08}")
}

/// The eventual targets' key with index `i`.
pub fn eventual_key(i: u64) -> String {
    format!("{EVENTUAL_KEY_PREFIX}{i:08}")
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadLevel {
    /// geokv ReadIndex; etcd's default (linearizable) Range.
    Linearizable,
    /// geokv leader lease (etcd has none).
    Lease,
    /// Served from one member's local state with no freshness check:
    /// geokv `Stale`, etcd `serializable` Range.
    Local,
    /// geokv follower read: one round trip to the leader for its read
    /// index, then served by the client's own region's replica.
    Follower,
    /// geokv bounded-staleness read, served by the client's own region's
    /// replica when it can prove it is at most this stale (else follower).
    Bounded { max_staleness_ms: u64 },
    /// geokv eventual shard: served by the client's own region's replica
    /// from its local state, whatever level is asked (keys under
    /// [`EVENTUAL_KEY_PREFIX`]).
    Eventual,
}

/// The staleness bound of the `bounded` rows.
pub const BOUNDED_STALENESS_MS: u64 = 250;

/// What one operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// A write through Raft (geokv) or etcd's `Put`.
    Put,
    /// geokv eventual write: acknowledged by the client's own region's
    /// replica after its local fsync, replicated asynchronously (keys under
    /// [`EVENTUAL_KEY_PREFIX`]).
    PutEventual,
    Get(ReadLevel),
    /// A YCSB-style mix: each operation is a get at `level` with
    /// probability `read_percent`%, else an update (put) of an existing key.
    Mix {
        read_percent: u8,
        level: ReadLevel,
    },
}

impl Op {
    /// The concrete operation to send next (a mix draws from `rng`).
    pub fn pick(self, rng: &mut impl Rng) -> Op {
        match self {
            Op::Mix { read_percent, level } => {
                if rng.random_range(0..100u8) < read_percent {
                    Op::Get(level)
                } else if level == ReadLevel::Eventual {
                    Op::PutEventual
                } else {
                    Op::Put
                }
            }
            op => op,
        }
    }

    /// True for operations on geokv's eventual range.
    pub fn is_eventual(self) -> bool {
        matches!(self, Op::PutEventual | Op::Get(ReadLevel::Eventual) | Op::Mix { level: ReadLevel::Eventual, .. })
    }

    /// The key with index `i` for this operation: eventual operations use
    /// the eventual range, the others the Raft shard's keys.
    pub fn key(self, i: u64) -> String {
        if self.is_eventual() { eventual_key(i) } else { key(i) }
    }
}

/// Name of a read level as `system` calls it.
fn level_name(system: System, level: ReadLevel) -> String {
    match (system, level) {
        (_, ReadLevel::Linearizable) => "linearizable".into(),
        (_, ReadLevel::Lease) => "lease".into(),
        (System::Geokv | System::GeokvTls, ReadLevel::Local) => "stale".into(),
        (System::Etcd, ReadLevel::Local) => "serializable".into(),
        (_, ReadLevel::Follower) => "follower".into(),
        (_, ReadLevel::Bounded { max_staleness_ms }) => format!("bounded:{max_staleness_ms}ms"),
        (_, ReadLevel::Eventual) => "eventual".into(),
    }
}

/// `ycsb-a`, `ycsb-b`, `ycsb-c` for the standard read shares, else `mix-<r>r`.
fn mix_name(read_percent: u8) -> String {
    match read_percent {
        50 => "ycsb-a".into(),
        95 => "ycsb-b".into(),
        100 => "ycsb-c".into(),
        r => format!("mix-{r}r"),
    }
}

/// One operation on one system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Target {
    pub system: System,
    pub op: Op,
}

impl Target {
    /// `geokv put`, `etcd get serializable`, `geokv get stale`.
    pub fn name(&self) -> String {
        let op = match self.op {
            Op::Put => "put".to_string(),
            Op::PutEventual => "put eventual".to_string(),
            Op::Get(level) => format!("get {}", level_name(self.system, level)),
            Op::Mix { read_percent, level } => {
                format!("{} {}", mix_name(read_percent), level_name(self.system, level))
            }
        };
        format!("{} {op}", self.system.as_str())
    }
}

/// A workload compared across systems: which operation, and on which
/// systems it exists. Adding a consistency level or a replication mode is a
/// new row here (and an arm in [`Conn::send`]).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Workload {
    pub name: &'static str,
    pub op: Op,
    pub systems: &'static [System],
}

/// Every workload the `local` scenario runs, in order.
pub const WORKLOADS: &[Workload] = &[
    Workload { name: "put", op: Op::Put, systems: &[System::Geokv, System::GeokvTls, System::Etcd] },
    Workload { name: "put eventual", op: Op::PutEventual, systems: &[System::Geokv] },
    Workload {
        name: "get linearizable",
        op: Op::Get(ReadLevel::Linearizable),
        systems: &[System::Geokv, System::GeokvTls, System::Etcd],
    },
    Workload {
        name: "get local (geokv stale / etcd serializable)",
        op: Op::Get(ReadLevel::Local),
        systems: &[System::Geokv, System::Etcd],
    },
    Workload { name: "get lease", op: Op::Get(ReadLevel::Lease), systems: &[System::Geokv] },
    Workload { name: "get follower", op: Op::Get(ReadLevel::Follower), systems: &[System::Geokv] },
    Workload {
        name: "get bounded:250ms",
        op: Op::Get(ReadLevel::Bounded { max_staleness_ms: BOUNDED_STALENESS_MS }),
        systems: &[System::Geokv],
    },
    Workload {
        name: "ycsb-a (50% get linearizable, 50% update)",
        op: Op::Mix { read_percent: 50, level: ReadLevel::Linearizable },
        systems: &[System::Geokv, System::Etcd],
    },
    Workload {
        name: "ycsb-b (95% get linearizable, 5% update)",
        op: Op::Mix { read_percent: 95, level: ReadLevel::Linearizable },
        systems: &[System::Geokv, System::Etcd],
    },
    Workload {
        name: "ycsb-c (100% get linearizable)",
        op: Op::Mix { read_percent: 100, level: ReadLevel::Linearizable },
        systems: &[System::Geokv, System::Etcd],
    },
];

/// An etcd connection: one channel per member, used in order of
/// preference; a failed RPC moves the client to the next member.
#[derive(Clone)]
pub struct EtcdConn {
    members: Arc<Vec<etcdpb::kv_client::KvClient<tonic::transport::Channel>>>,
    preferred: Arc<AtomicU64>,
    rpc_timeout: Duration,
}

impl EtcdConn {
    /// Channels to `endpoints` from `source_ip`, preferring the first.
    pub fn new(endpoints: &[String], source_ip: Option<std::net::IpAddr>, rpc_timeout: Duration) -> EtcdConn {
        let members =
            endpoints.iter().map(|e| etcdpb::kv_client::KvClient::new(etcd_lazy_channel(e, source_ip))).collect();
        EtcdConn { members: Arc::new(members), preferred: Arc::new(AtomicU64::new(0)), rpc_timeout }
    }

    fn client(&self) -> etcdpb::kv_client::KvClient<tonic::transport::Channel> {
        let index = self.preferred.load(Ordering::Relaxed) as usize % self.members.len();
        self.members[index].clone()
    }

    fn fail_over(&self) {
        self.preferred.fetch_add(1, Ordering::Relaxed);
    }
}

/// A connection to one system.
#[derive(Clone)]
pub enum Conn {
    Geokv(Client),
    Etcd(EtcdConn),
}

impl Conn {
    /// `count` connections to `system` at `endpoints` (first preferred),
    /// from `source_ip` when given (the lab's region of the client).
    pub async fn open(
        system: System,
        endpoints: &[String],
        source_ip: Option<std::net::IpAddr>,
        count: usize,
        tls: Option<geokv_client::ClientTls>,
    ) -> Result<Vec<Conn>> {
        Conn::open_with_timeout(system, endpoints, source_ip, None, count, RPC_TIMEOUT, tls).await
    }

    /// [`Conn::open`] for clients in `region`: geokv's client then serves
    /// follower, bounded and stale reads from that region's replica first.
    pub async fn open_in_region(
        system: System,
        endpoints: &[String],
        source_ip: Option<std::net::IpAddr>,
        region: &str,
        count: usize,
    ) -> Result<Vec<Conn>> {
        Conn::open_with_timeout(system, endpoints, source_ip, Some(region.to_string()), count, RPC_TIMEOUT, None).await
    }

    /// [`Conn::open`] with the client's region (geokv) and a per-RPC timeout.
    pub async fn open_with_timeout(
        system: System,
        endpoints: &[String],
        source_ip: Option<std::net::IpAddr>,
        region: Option<String>,
        count: usize,
        rpc_timeout: Duration,
        tls: Option<geokv_client::ClientTls>,
    ) -> Result<Vec<Conn>> {
        let mut conns = Vec::new();
        for _ in 0..count.max(1) {
            conns.push(match system {
                System::Geokv | System::GeokvTls => Conn::Geokv(
                    ClientConfig::new(endpoints.to_vec())
                        .tls(tls.clone())
                        .local_address(source_ip)
                        .region(region.clone())
                        .rpc_timeout(rpc_timeout)
                        .connect()
                        .await?,
                ),
                System::Etcd => Conn::Etcd(EtcdConn::new(endpoints, source_ip, rpc_timeout)),
            });
        }
        Ok(conns)
    }

    /// Sends one operation and waits for its answer.
    pub async fn send(&self, op: Op, key: &str, value: &[u8]) -> Result<(), String> {
        match (self, op) {
            (_, Op::Mix { .. }) => Err("a mix is not one operation (Op::pick it first)".into()),
            (Conn::Geokv(c), Op::Put | Op::PutEventual) => {
                let written = c.put(key, value).await.map_err(|e| e.to_string())?;
                // A target measures the path its name says, or fails.
                let eventual = op == Op::PutEventual;
                if written.eventual != eventual {
                    return Err(format!(
                        "put {key}: acknowledged with eventual = {}, expected {eventual}",
                        written.eventual
                    ));
                }
                Ok(())
            }
            (Conn::Geokv(c), Op::Get(level)) => {
                let consistency = match level {
                    ReadLevel::Linearizable => Consistency::Linearizable,
                    ReadLevel::Lease => Consistency::Lease,
                    // An eventual shard serves every level locally; asking
                    // for stale says so (no `weaker_than_requested`).
                    ReadLevel::Local | ReadLevel::Eventual => Consistency::Stale,
                    ReadLevel::Follower => Consistency::Follower,
                    ReadLevel::Bounded { max_staleness_ms } => Consistency::Bounded { max_staleness_ms },
                };
                let read = c.get_with(key, consistency).await.map_err(|e| e.to_string())?;
                let eventual = level == ReadLevel::Eventual;
                if read.info.served.is_eventual() != eventual {
                    return Err(format!("get {key}: served {:?}, expected eventual = {eventual}", read.info.served));
                }
                Ok(())
            }
            (Conn::Etcd(c), op) => {
                let mut kv = c.client();
                let result = match op {
                    Op::Put => {
                        let mut request = tonic::Request::new(etcdpb::PutRequest {
                            key: key.as_bytes().to_vec(),
                            value: value.to_vec(),
                            ..Default::default()
                        });
                        request.set_timeout(c.rpc_timeout);
                        kv.put(request).await.map(drop)
                    }
                    Op::Mix { .. } => unreachable!("matched above"),
                    Op::PutEventual => return Err("etcd has no eventual writes".into()),
                    Op::Get(level) => {
                        if !matches!(level, ReadLevel::Linearizable | ReadLevel::Local) {
                            return Err(format!("etcd has no {level:?} reads"));
                        }
                        let mut request = tonic::Request::new(etcdpb::RangeRequest {
                            key: key.as_bytes().to_vec(),
                            serializable: level == ReadLevel::Local,
                            ..Default::default()
                        });
                        request.set_timeout(c.rpc_timeout);
                        kv.range(request).await.map(drop)
                    }
                };
                result.map_err(|status| {
                    c.fail_over();
                    format!("{:?}: {}", status.code(), status.message())
                })
            }
        }
    }
}

/// Connections needed for `clients` workers.
pub fn connections_for(clients: usize) -> usize {
    clients.div_ceil(CLIENTS_PER_CONNECTION)
}

/// What one cell should do.
#[derive(Debug, Clone)]
pub struct CellSpec {
    pub op: Op,
    pub clients: usize,
    pub warmup: Duration,
    pub measure: Duration,
    pub keys: u64,
    pub seed: u64,
    /// Open loop: arrivals at this many operations per second (all
    /// clients together), with at most `clients` in flight. `None`: closed
    /// loop.
    pub rate: Option<f64>,
}

/// What one cell measured.
pub struct CellOutcome {
    /// Latency of successful operations started in the measured window, µs.
    pub histogram: Histogram<u64>,
    pub errors: u64,
    pub first_error: Option<String>,
    pub measured: Duration,
    /// Open loop: arrivals in the measured window that found `clients`
    /// operations already in flight and were dropped (not sent, not in the
    /// histogram). Always 0 in closed loop.
    pub overflow: u64,
}

impl CellOutcome {
    pub fn throughput(&self) -> f64 {
        self.histogram.len() as f64 / self.measured.as_secs_f64()
    }
}

/// Latency histogram of the bench's range.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// A value of `bytes` bytes, the same for a seed.
pub fn value(bytes: usize, seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..bytes).map(|_| rng.random_range(b'a'..=b'z')).collect()
}

/// Runs one closed-loop cell over `conns`; `progress` counts completed
/// operations (for the progress line).
pub async fn run_cell(conns: &[Conn], spec: &CellSpec, value: Arc<Vec<u8>>, progress: Arc<AtomicU64>) -> CellOutcome {
    if let Some(rate) = spec.rate {
        return run_open_loop(conns, spec, rate, value, progress).await;
    }
    assert!(spec.clients >= 1 && spec.clients <= MAX_CLIENTS, "clients {} out of 1..={MAX_CLIENTS}", spec.clients);
    assert!(spec.keys >= 1, "no keys");
    let start = Instant::now();
    let measure_from = start + spec.warmup;
    let end = measure_from + spec.measure;
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..spec.clients {
        let conn = conns[worker % conns.len()].clone();
        let value = value.clone();
        let progress = progress.clone();
        let spec = spec.clone();
        workers.spawn(async move {
            let mut rng = StdRng::seed_from_u64(spec.seed.wrapping_mul(1_000_003).wrapping_add(worker as u64));
            let mut histogram = new_histogram();
            let mut errors = 0u64;
            let mut first_error = None;
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let op = spec.op.pick(&mut rng);
                let k = op.key(rng.random_range(0..spec.keys));
                let result = conn.send(op, &k, &value).await;
                let latency_us = (sent.elapsed().as_micros() as u64).clamp(1, MAX_LATENCY_US);
                progress.fetch_add(1, Ordering::Relaxed);
                if sent < measure_from {
                    continue;
                }
                match result {
                    Ok(()) => histogram.record(latency_us).expect("clamped into range"),
                    Err(err) => {
                        errors += 1;
                        first_error.get_or_insert(err);
                    }
                }
            }
            (histogram, errors, first_error)
        });
    }
    let mut outcome =
        CellOutcome { histogram: new_histogram(), errors: 0, first_error: None, measured: spec.measure, overflow: 0 };
    while let Some(joined) = workers.join_next().await {
        let (histogram, errors, first_error) = joined.expect("bench worker panicked");
        outcome.histogram.add(&histogram).expect("same bounds");
        outcome.errors += errors;
        if outcome.first_error.is_none() {
            outcome.first_error = first_error;
        }
    }
    // Workers stop sending at `end`; the window is the planned one, so an
    // operation in flight at the end counts but does not stretch it.
    outcome
}

/// What the open-loop operations of a cell share.
struct OpenLoopTally {
    histogram: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

/// Runs one open-loop cell: operation *i* is due at `start + i / rate`
/// whatever happened to the ones before it, and its latency is measured
/// from that *intended* time, so a stalled server shows up in the latency
/// instead of silently lowering the offered load (no coordinated omission).
/// At most `spec.clients` operations are in flight; an arrival that finds
/// them all busy is dropped and counted as overflow, so memory stays bounded
/// however far the system falls behind.
async fn run_open_loop(
    conns: &[Conn],
    spec: &CellSpec,
    rate: f64,
    value: Arc<Vec<u8>>,
    progress: Arc<AtomicU64>,
) -> CellOutcome {
    assert!(rate > 0.0 && rate.is_finite(), "rate {rate} must be positive");
    assert!(spec.clients >= 1 && spec.clients <= MAX_CLIENTS, "clients {} out of 1..={MAX_CLIENTS}", spec.clients);
    assert!(spec.keys >= 1, "no keys");
    let start = tokio::time::Instant::now();
    let measure_from = start + spec.warmup;
    let end = measure_from + spec.measure;
    let in_flight = Arc::new(tokio::sync::Semaphore::new(spec.clients));
    let tally =
        Arc::new(std::sync::Mutex::new(OpenLoopTally { histogram: new_histogram(), errors: 0, first_error: None }));
    let mut rng = StdRng::seed_from_u64(spec.seed.wrapping_mul(1_000_003));
    let mut overflow = 0u64;
    for i in 0u64.. {
        let intended = start + Duration::from_secs_f64(i as f64 / rate);
        if intended >= end {
            break;
        }
        if intended > tokio::time::Instant::now() {
            tokio::time::sleep_until(intended).await;
        }
        let measured = intended >= measure_from;
        let op = spec.op.pick(&mut rng);
        let k = op.key(rng.random_range(0..spec.keys));
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            overflow += u64::from(measured);
            continue;
        };
        let conn = conns[i as usize % conns.len()].clone();
        let (value, progress, tally) = (value.clone(), progress.clone(), tally.clone());
        tokio::spawn(async move {
            let result = conn.send(op, &k, &value).await;
            let latency_us = (intended.elapsed().as_micros() as u64).clamp(1, MAX_LATENCY_US);
            progress.fetch_add(1, Ordering::Relaxed);
            if measured {
                let mut tally = tally.lock().expect("tally lock");
                match result {
                    Ok(()) => tally.histogram.record(latency_us).expect("clamped into range"),
                    Err(err) => {
                        tally.errors += 1;
                        tally.first_error.get_or_insert(err);
                    }
                }
            }
            drop(permit);
        });
    }
    // Wait for the operations still in flight (each is bounded by its RPC timeout).
    let _all = in_flight.acquire_many(spec.clients as u32).await.expect("semaphore never closed");
    let tally = tally.lock().expect("tally lock");
    CellOutcome {
        histogram: tally.histogram.clone(),
        errors: tally.errors,
        first_error: tally.first_error.clone(),
        measured: spec.measure,
        overflow,
    }
}

/// Writes every key once with `concurrency` writers (before reads).
pub async fn preload(conns: &[Conn], keys: u64, value: &[u8], concurrency: usize) -> Result<()> {
    preload_with(conns, Op::Put, keys, value, concurrency).await
}

/// Writes every key of `write` ([`Op::Put`] or [`Op::PutEventual`]) once
/// with `concurrency` writers.
pub async fn preload_with(conns: &[Conn], write: Op, keys: u64, value: &[u8], concurrency: usize) -> Result<()> {
    anyhow::ensure!(matches!(write, Op::Put | Op::PutEventual), "preload writes, not {write:?}");
    let next = Arc::new(AtomicU64::new(0));
    let value = Arc::new(value.to_vec());
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..concurrency.max(1) {
        let conn = conns[worker % conns.len()].clone();
        let next = next.clone();
        let value = value.clone();
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= keys {
                    return Ok::<(), String>(());
                }
                let mut attempts = 0;
                while let Err(err) = conn.send(write, &write.key(i), &value).await {
                    attempts += 1;
                    if attempts >= 5 {
                        return Err(format!("preload {}: {err}", write.key(i)));
                    }
                    tokio::time::sleep(ETCD_RETRY_BACKOFF).await;
                }
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined?.map_err(|e| anyhow::anyhow!(e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_and_stay_in_one_shard_range() {
        assert_eq!(key(7), "k00000007");
        assert!(key(0) < key(99_999_999));
        assert!(key(0).as_str() >= "g" && key(99_999_999).as_str() < "n");
        let (start, end) = EVENTUAL_RANGE.split_once("..").unwrap();
        assert!(eventual_key(0).as_str() >= start && eventual_key(99_999_999).as_str() < end);
        assert!(end <= "g", "the eventual range must stay out of the Raft keys' shard");
        assert_eq!(Op::PutEventual.key(7), "ev/00000007");
        assert_eq!(Op::Get(ReadLevel::Eventual).key(7), "ev/00000007");
        assert_eq!(Op::Put.key(7), "k00000007");
    }

    #[test]
    fn eventual_targets_are_named_and_keyed_apart() {
        assert_eq!(Target { system: System::Geokv, op: Op::PutEventual }.name(), "geokv put eventual");
        assert_eq!(Target { system: System::Geokv, op: Op::Get(ReadLevel::Eventual) }.name(), "geokv get eventual");
        let mut rng = StdRng::seed_from_u64(5);
        let mix = Op::Mix { read_percent: 50, level: ReadLevel::Eventual };
        assert!(mix.is_eventual());
        assert!((0..200).all(|_| mix.pick(&mut rng).is_eventual()), "an eventual mix writes eventually too");
        assert!(!Op::Put.is_eventual() && !Op::Get(ReadLevel::Local).is_eventual());
    }

    #[test]
    fn values_are_seeded() {
        assert_eq!(value(256, 1), value(256, 1));
        assert_ne!(value(256, 1), value(256, 2));
        assert_eq!(value(256, 1).len(), 256);
    }

    #[test]
    fn mixes_draw_their_read_share() {
        let mut rng = StdRng::seed_from_u64(3);
        let b = Op::Mix { read_percent: 95, level: ReadLevel::Linearizable };
        let reads = (0..10_000).filter(|_| b.pick(&mut rng) == Op::Get(ReadLevel::Linearizable)).count();
        assert!((9300..9700).contains(&reads), "{reads}");
        let c = Op::Mix { read_percent: 100, level: ReadLevel::Linearizable };
        assert!((0..1000).all(|_| c.pick(&mut rng) != Op::Put));
        assert_eq!(Op::Put.pick(&mut rng), Op::Put);
        assert_eq!(Target { system: System::Etcd, op: b }.name(), "etcd ycsb-b linearizable");
        let bounded = Op::Get(ReadLevel::Bounded { max_staleness_ms: 250 });
        assert_eq!(Target { system: System::Geokv, op: bounded }.name(), "geokv get bounded:250ms");
    }

    #[test]
    fn target_names_say_the_level_each_system_calls_it() {
        let local = Op::Get(ReadLevel::Local);
        assert_eq!(Target { system: System::Geokv, op: local }.name(), "geokv get stale");
        assert_eq!(Target { system: System::Etcd, op: local }.name(), "etcd get serializable");
        assert_eq!(connections_for(1), 1);
        assert_eq!(connections_for(64), 8);
    }
}
