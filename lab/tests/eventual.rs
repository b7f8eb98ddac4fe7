//! Eventual mode across the emulated 3-region WAN: every region writes
//! through its own replica, which acknowledges after a local fsync, and the
//! writes reach the other replicas about one one-way delay later.
//!
//! Asserted (correctness, not speed): every put is acknowledged as eventual
//! by the replica in the writer's region, and after the writes every
//! replica holds the same keys, values and timestamps. Printed (run with
//! `--no-capture`; docs/lab.md quotes them): ack latency per region, and
//! the replication delay each receiver measured per origin
//! (`geokv_ec_replication_delay_seconds`) next to the link's one-way delay.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use geokv_lab::{Lab, LabConfig, NodeProgram};
use geokv_proto::kv::kv_client::KvClient;
use geokv_proto::kv::{self as pb};
use tonic::transport::Channel;

const DEADLINE: Duration = Duration::from_secs(60);
const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// Puts per region.
const PUTS: usize = 200;
/// Every this many puts, a region also writes the one key all regions share.
const SHARED_EVERY: usize = 10;
const RANGE: (&str, &str) = ("ev/", "ev0");
const SHARED_KEY: &str = "ev/shared";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn header() -> Option<pb::RequestHeader> {
    Some(pb::RequestHeader { shard_id: 0, epoch: 0 })
}

fn channel(addr: &str, source: Option<std::net::IpAddr>) -> KvClient<Channel> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(RPC_TIMEOUT)
        .timeout(RPC_TIMEOUT)
        .local_address(source)
        .tcp_nodelay(true);
    KvClient::new(endpoint.connect_lazy())
}

async fn put(node: &KvClient<Channel>, key: &str, value: &str) -> Result<pb::WriteResponse, tonic::Status> {
    let request = pb::PutRequest { header: header(), key: key.into(), value: value.into(), ..Default::default() };
    Ok(node.clone().put(request).await?.into_inner())
}

/// `key -> value@hlc` as one replica serves `RANGE` locally.
async fn local_state(node: &KvClient<Channel>) -> Result<BTreeMap<String, String>, tonic::Status> {
    let mut state = BTreeMap::new();
    let mut from = RANGE.0.as_bytes().to_vec();
    loop {
        let request = pb::ScanRequest {
            header: header(),
            start: from.clone(),
            end: RANGE.1.into(),
            consistency: pb::Consistency::Stale as i32,
            ..Default::default()
        };
        let page = node.clone().scan(request).await?.into_inner();
        for kv in page.kvs {
            let hlc = kv.hlc.map_or("-".to_string(), |h| format!("{}.{}.{}", h.physical_ms, h.logical, h.node_id));
            state.insert(String::from_utf8_lossy(&kv.key).into_owned(), format!("{:?}@{hlc}", kv.value));
        }
        if !page.more || page.resume_key.is_empty() || page.resume_key.as_slice() >= RANGE.1.as_bytes() {
            return Ok(state);
        }
        assert!(page.resume_key > from, "a scan page did not move forward");
        from = page.resume_key;
    }
}

/// One histogram series: cumulative bucket counts by upper bound, and its count and sum.
#[derive(Default, Debug)]
struct Histogram {
    buckets: BTreeMap<u64, (f64, u64)>,
    count: u64,
    sum: f64,
}

impl Histogram {
    fn add_bucket(&mut self, le: f64, cumulative: u64) {
        let entry = self.buckets.entry(le.to_bits()).or_insert((le, 0));
        entry.1 += cumulative;
    }

    /// As Prometheus' `histogram_quantile`: linear within the bucket.
    fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let mut bounds: Vec<(f64, u64)> = self.buckets.values().copied().collect();
        bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
        let target = q * self.count as f64;
        let (mut lower, mut below) = (0.0, 0u64);
        for (le, cumulative) in bounds {
            if cumulative as f64 >= target {
                if le.is_infinite() {
                    return Some(lower);
                }
                let in_bucket = (cumulative - below) as f64;
                let fraction = if in_bucket > 0.0 { (target - below as f64) / in_bucket } else { 1.0 };
                return Some(lower + (le - lower) * fraction);
            }
            (lower, below) = (le, cumulative);
        }
        None
    }
}

/// `name{labels} value` lines of one metric family, as (labels, suffix, value).
fn samples<'a>(text: &'a str, family: &str) -> Vec<(BTreeMap<&'a str, &'a str>, &'a str, f64)> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(family) else { continue };
        let (suffix, rest) = match rest.find(['{', ' ']) {
            Some(i) => rest.split_at(i),
            None => continue,
        };
        let (labels, value) = match rest.strip_prefix('{') {
            Some(r) => r.split_once('}').unwrap_or((r, "")),
            None => ("", rest),
        };
        let Ok(value) = value.split_whitespace().next().unwrap_or("").parse::<f64>() else { continue };
        let labels = labels
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim().trim_matches('"')))
            .collect();
        out.push((labels, suffix, value));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventual_puts_ack_locally_and_replicate_about_one_way_later() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = LabConfig::new(dir.path(), NodeProgram::Lab(env!("CARGO_BIN_EXE_geokv-lab").into()));
    config.start_timeout = DEADLINE;
    config.metrics = true;
    config.node_args.push(format!("--eventual-ranges={}..{}", RANGE.0, RANGE.1));
    let lab = Lab::start(config).await.expect("the lab starts");
    let regions: Vec<String> = lab.regions().to_vec();
    let shard = lab.shard_of(SHARED_KEY.as_bytes()).await.unwrap();
    let status = lab.status().await;
    let view = status.shards.iter().find(|s| s.shard_id == shard).expect("the shard is reported");
    assert!(view.eventual && view.leader.is_none(), "shard {shard} of {SHARED_KEY} is eventual: {view:?}");

    // One client per region, dialling its region's replica from the region's IP.
    let mut homes = Vec::new();
    for region in &regions {
        let node = lab.nodes().into_iter().find(|n| &n.region == region).unwrap();
        let home = channel(&lab.endpoint_for_region(region).unwrap(), Some(lab.client_ip_for_region(region).unwrap()));
        // Warm up (connections; the replica may still be opening its shard).
        let started = Instant::now();
        while let Err(e) = put(&home, &format!("ev/warmup/{region}"), "warm").await {
            assert!(started.elapsed() < DEADLINE, "{region}: warm-up put: {e}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        homes.push((region.clone(), node.id, home));
    }

    // PUTS eventual puts per region, the three regions at once.
    let writes = homes.iter().map(|(region, node_id, home)| async move {
        let mut latencies = Vec::with_capacity(PUTS);
        for i in 0..PUTS {
            let key = if i % SHARED_EVERY == 0 { SHARED_KEY.to_string() } else { format!("ev/{region}/{i:04}") };
            let start = Instant::now();
            let reply =
                put(home, &key, &format!("{region}-{i}")).await.unwrap_or_else(|e| panic!("{region} put {i}: {e}"));
            latencies.push(start.elapsed());
            assert!(reply.eventual, "{region} put {i}: not acknowledged as eventual: {reply:?}");
            assert_eq!(reply.origin, *node_id, "{region} put {i}: accepted by another region's replica: {reply:?}");
            assert!(reply.hlc.is_some(), "{region} put {i}: no timestamp: {reply:?}");
        }
        latencies
    });
    let written = Instant::now();
    let latencies = futures::future::join_all(writes).await;
    let write_time = written.elapsed();

    // Every replica converges: same keys, values and timestamps, read locally on each node.
    let direct: Vec<(u64, KvClient<Channel>)> =
        lab.nodes().iter().map(|n| (n.id, channel(&n.listen.to_string(), None))).collect();
    let converging = Instant::now();
    let expected_keys = regions.len() * (PUTS - PUTS.div_ceil(SHARED_EVERY)) + 1 + regions.len();
    let converged = loop {
        let mut states = Vec::new();
        for (id, node) in &direct {
            states.push((*id, local_state(node).await));
        }
        let first = states[0].1.as_ref().ok();
        let same = states.iter().all(|(_, s)| s.as_ref().ok() == first);
        if same && first.is_some_and(|s| s.len() == expected_keys) {
            break converging.elapsed();
        }
        assert!(
            converging.elapsed() < Duration::from_secs(30),
            "replicas did not converge: {:?}",
            states
                .iter()
                .map(|(id, s)| (id, s.as_ref().map(BTreeMap::len).map_err(|e| e.to_string())))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Replication delay per (receiver, origin), from every node's metrics.
    let matrix = &lab.config().regions;
    let region_of = |id: u64| lab.node(id).unwrap().region.clone();
    let mut delay: BTreeMap<(u64, u64), Histogram> = BTreeMap::new();
    let mut conflicts = BTreeMap::new();
    for node in lab.nodes() {
        let text = lab.scrape_metrics(node.id).await.expect("metrics scrape");
        for (labels, suffix, value) in samples(&text, "geokv_ec_replication_delay_seconds") {
            let Some(origin) = labels.get("origin").and_then(|o| o.parse::<u64>().ok()) else { continue };
            let h = delay.entry((node.id, origin)).or_default();
            match suffix {
                "_bucket" => {
                    // Seconds on the wire, milliseconds here.
                    let le = labels.get("le").map_or(f64::INFINITY, |le| le.parse().unwrap_or(f64::INFINITY));
                    h.add_bucket(le * 1000.0, value as u64);
                }
                "_count" => h.count += value as u64,
                "_sum" => h.sum += value * 1000.0,
                _ => {}
            }
        }
        let total: f64 = samples(&text, "geokv_ec_conflicts_total").iter().map(|(_, _, v)| v).sum();
        conflicts.insert(node.id, total);
    }

    println!(
        "eventual mode, 3 regions, {PUTS} puts per region (every {SHARED_EVERY}th to one shared key), regions writing at once; \
         all writes took {write_time:.1?}; replicas equal {converged:.1?} after the last ack"
    );
    println!("ack latency (client in the region -> its replica, local fsync):");
    for ((region, node_id, _), mut samples) in homes.iter().zip(latencies) {
        samples.sort();
        println!(
            "  {region:8} (node {node_id})  p50 {:>8.1?}  p99 {:>8.1?}  max {:>8.1?}",
            percentile(&samples, 50.0),
            percentile(&samples, 99.0),
            samples[samples.len() - 1]
        );
    }
    println!(
        "replication delay at the receiver (apply time - write's HLC physical time), geokv_ec_replication_delay_seconds:"
    );
    for ((receiver, origin), h) in &delay {
        let (a, b) = (region_of(*receiver), region_of(*origin));
        let one_way = matrix.rtt_ms(matrix.index_of(&a).unwrap(), matrix.index_of(&b).unwrap()) as f64 / 2.0;
        let q = |q: f64| h.quantile(q).map_or("-".to_string(), |v| format!("{v:.0} ms"));
        let mean = if h.count > 0 { format!("{:.0} ms", h.sum / h.count as f64) } else { "-".into() };
        println!(
            "  {origin} ({b}) -> {receiver} ({a}): one-way {one_way:>5.1} ms  p50 {:>7}  p99 {:>7}  mean {mean:>7}  ({} writes)",
            q(0.5),
            q(0.99),
            h.count
        );
    }
    println!("conflicts recorded (geokv_ec_conflicts_total) per node: {conflicts:?}");

    for receiver in lab.nodes().iter().map(|n| n.id) {
        for origin in lab.nodes().iter().map(|n| n.id).filter(|o| *o != receiver) {
            let count = delay.get(&(receiver, origin)).map_or(0, |h| h.count);
            assert!(count > 0, "node {receiver} reports no replication delay for writes from node {origin}");
        }
    }
}
