//! The scenarios: `local`, the WAN scenarios (`3-region`, `5-region`) and
//! `failover`. Each returns a JSON value for `results.json` plus the text
//! it printed.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use serde_json::json;

use crate::cluster::{LocalCluster, System};
use crate::load::{self, CellSpec, Conn, Op, ReadLevel, Target, WORKLOADS};
use crate::machine::{CpuSnapshot, CpuUse};
use crate::report::{self, CellResult, Collector, Spread};

/// Settings shared by every scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// How to run a geokv node.
    #[serde(skip)]
    pub geokv: geokv_lab::NodeProgram,
    pub etcd_bin: PathBuf,
    pub systems: Vec<System>,
    pub rounds: usize,
    pub clients: Vec<usize>,
    pub warmup: Duration,
    pub measure: Duration,
    pub keys: u64,
    pub value_bytes: usize,
    pub seed: u64,
    pub noise_cores: f64,
    /// Region matrix file for WAN scenarios.
    pub regions_file: Option<PathBuf>,
    /// Clients per region in WAN scenarios.
    pub wan_clients: usize,
    /// Leader kills per system in `failover`.
    pub kills: usize,
    /// Open loop: operations per second offered to each cell (then
    /// `clients` is the in-flight bound). `None`: closed loop.
    pub rate: Option<f64>,
}

/// A progress line on stderr: `[cell 5/42] round 2/3 etcd put c=64  1.2s  3,456 ops`.
struct Progress {
    total: usize,
    done: usize,
    ops: Arc<AtomicU64>,
    tty: bool,
}

impl Progress {
    fn new(total: usize) -> Progress {
        Progress { total, done: 0, ops: Arc::new(AtomicU64::new(0)), tty: std::io::stderr().is_terminal() }
    }

    /// Runs `fut` while showing what it is.
    async fn show<T>(&mut self, label: &str, fut: impl Future<Output = T>) -> T {
        self.done += 1;
        self.ops.store(0, Ordering::Relaxed);
        let line = format!("[cell {}/{}] {label}", self.done, self.total);
        if !self.tty {
            eprintln!("{line}");
            return fut.await;
        }
        let ops = self.ops.clone();
        let started = Instant::now();
        let ticker = tokio::spawn(async move {
            loop {
                eprint!("\r\x1b[K{line}  {:.1}s  {} ops", started.elapsed().as_secs_f64(), ops.load(Ordering::Relaxed));
                let _ = std::io::stderr().flush();
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        let out = fut.await;
        ticker.abort();
        eprint!("\r\x1b[K");
        out
    }
}

/// Runs one cell and turns it into a result, with CPU accounting.
#[allow(clippy::too_many_arguments)]
async fn measure_cell(
    progress: &mut Progress,
    settings: &Settings,
    round: usize,
    workload: &str,
    target: Target,
    clients: usize,
    region: Option<String>,
    conns: &[Conn],
    value: &Arc<Vec<u8>>,
    target_pids: &[u32],
    idle_pids: &[u32],
) -> (CellResult, hdrhistogram::Histogram<u64>) {
    let spec = CellSpec {
        op: target.op,
        clients,
        warmup: settings.warmup,
        measure: settings.measure,
        keys: settings.keys,
        seed: settings.seed ^ round as u64,
        rate: settings.rate,
    };
    let all: Vec<u32> = target_pids.iter().chain(idle_pids).copied().collect();
    let label = format!(
        "round {round}/{} {} c={clients}{}",
        settings.rounds,
        target.name(),
        region.as_deref().map(|r| format!(" from {r}")).unwrap_or_default()
    );
    // CPU is counted over the measured window only: sleep through warm-up.
    let conns = &conns[..load::connections_for(clients).min(conns.len())];
    let ops = progress.ops.clone();
    let (outcome, cpu, wall) = progress
        .show(&label, async {
            let run = load::run_cell(conns, &spec, value.clone(), ops);
            tokio::pin!(run);
            let before = tokio::select! {
                _ = tokio::time::sleep(spec.warmup) => (CpuSnapshot::take(&all), Instant::now()),
                _ = &mut run => unreachable!("a cell outlives its warm-up"),
            };
            let outcome = run.await;
            let after = CpuSnapshot::take(&all);
            (outcome, CpuUse::between(&before.0, &after, target_pids, idle_pids), before.1.elapsed())
        })
        .await;
    let cell = CellResult::new(
        round,
        workload,
        target,
        clients,
        region,
        &outcome,
        cpu,
        wall.as_secs_f64(),
        settings.noise_cores,
    );
    if let Some(err) = &cell.first_error {
        eprintln!("  {}: {} errors, first: {err}", cell.target, cell.errors);
    }
    (cell, outcome.histogram)
}

/// The `local` scenario: both systems on this machine, no added latency.
pub async fn local(settings: &Settings) -> Result<(serde_json::Value, String, Vec<report::Summary>)> {
    let value = Arc::new(load::value(settings.value_bytes, settings.seed));
    let mut clusters: Vec<LocalCluster> = Vec::new();
    for system in &settings.systems {
        eprintln!("starting a 3-member {} cluster ...", system.as_str());
        clusters.push(match system {
            System::Geokv => LocalCluster::start_geokv(&settings.geokv, 3).await?,
            System::GeokvTls => LocalCluster::start_geokv_with(&settings.geokv, 3, true).await?,
            System::Etcd => LocalCluster::start_etcd(&settings.etcd_bin, 3).await?,
        });
    }
    let max_clients = *settings.clients.iter().max().ok_or_else(|| anyhow!("no client counts"))?;
    let mut pools = Vec::new();
    let mut leaders = Vec::new();
    for cluster in &clusters {
        let leader = cluster.wait_ready(Duration::from_secs(30)).await?;
        leaders.push((cluster.system, leader));
        // Clients prefer the leader (geokv's client finds it itself; etcd's
        // followers would forward, adding a hop).
        let mut endpoints = cluster.endpoints();
        endpoints.rotate_left(leader as usize - 1);
        let conns = Conn::open(
            cluster.system,
            &endpoints,
            None,
            load::connections_for(max_clients),
            cluster.client_tls.clone(),
        )
        .await?;
        eprintln!("preloading {} keys into {} ...", settings.keys, cluster.system.as_str());
        load::preload(&conns, settings.keys, &value, 32).await.context("preload")?;
        if cluster.system.is_geokv() && WORKLOADS.iter().any(|w| w.op.is_eventual()) {
            load::preload_with(&conns, Op::PutEventual, settings.keys, &value, 32).await.context("eventual preload")?;
        }
        pools.push(conns);
    }
    let cells_per_round: usize =
        WORKLOADS.iter().map(|w| w.systems.iter().filter(|s| settings.systems.contains(s)).count()).sum::<usize>()
            * settings.clients.len();
    let mut progress = Progress::new(cells_per_round * settings.rounds);
    let mut collector = Collector::default();
    for round in 1..=settings.rounds {
        for workload in WORKLOADS {
            for &clients in &settings.clients {
                let mut order: Vec<usize> =
                    (0..clusters.len()).filter(|&i| workload.systems.contains(&clusters[i].system)).collect();
                if round % 2 == 0 {
                    order.reverse();
                }
                for i in order {
                    let target = Target { system: clusters[i].system, op: workload.op };
                    let idle: Vec<u32> =
                        clusters.iter().enumerate().filter(|(j, _)| *j != i).flat_map(|(_, c)| c.pids()).collect();
                    let (cell, histogram) = measure_cell(
                        &mut progress,
                        settings,
                        round,
                        workload.name,
                        target,
                        clients,
                        None,
                        &pools[i],
                        &value,
                        &clusters[i].pids(),
                        &idle,
                    )
                    .await;
                    collector.add(cell, &histogram);
                }
            }
        }
    }
    let mut leaders_after = Vec::new();
    for cluster in &clusters {
        leaders_after.push((cluster.system, cluster.leader().await.ok().flatten()));
    }
    let summaries = collector.summaries();
    let ratios = collector.ratios();
    let mut text = String::new();
    text.push_str(&report::summary_table(&summaries));
    if !ratios.is_empty() {
        text.push('\n');
        text.push_str(&report::ratio_table(&ratios));
    }
    let json = json!({
        "leaders_before": leaders, "leaders_after": leaders_after,
        "cells": collector.cells, "summaries": summaries, "ratios": ratios,
    });
    Ok((json, text, summaries))
}

/// Physical floor of an operation on `system` from a client in region
/// `client`, with the group led from `leader` and replicas in `replicas`
/// (region indexes): (what it is, ms).
fn floor_ms(
    matrix: &geokv_lab::RegionMatrix,
    system: System,
    replicas: &[usize],
    client: usize,
    leader: usize,
    op: Op,
) -> (&'static str, u64) {
    let to_leader = matrix.rtt_ms(client, leader);
    let n = replicas.len();
    // The leader needs acks from a majority including itself: the
    // (majority - 1)-th nearest other replica.
    let mut others: Vec<u64> = replicas.iter().filter(|&&j| j != leader).map(|&j| matrix.rtt_ms(leader, j)).collect();
    others.sort_unstable();
    let quorum = others.get((n / 2 + 1).saturating_sub(2)).copied().unwrap_or(0);
    match (system, op) {
        // Eventual: acknowledged / served by the client's region's replica
        // (`replicas` are then the eventual shard's), nothing crosses the WAN.
        (System::Geokv | System::GeokvTls, Op::PutEventual | Op::Get(ReadLevel::Eventual)) => {
            let nearest = replicas.iter().map(|&j| matrix.rtt_ms(client, j)).min().unwrap_or(to_leader);
            ("local replica (eventual: no WAN)", nearest)
        }
        (System::Etcd, Op::PutEventual | Op::Get(ReadLevel::Eventual)) => ("(no eventual mode)", 0),
        (_, Op::Put | Op::Get(ReadLevel::Linearizable)) => ("RTT to leader + leader's quorum RTT", to_leader + quorum),
        (_, Op::Get(ReadLevel::Lease)) => ("RTT to leader", to_leader),
        // The client (region set) reads its own region's replica first.
        (System::Geokv | System::GeokvTls, Op::Get(ReadLevel::Local | ReadLevel::Bounded { .. })) => {
            let nearest = replicas.iter().map(|&j| matrix.rtt_ms(client, j)).min().unwrap_or(to_leader);
            ("nearest replica", nearest)
        }
        // The leader's read index, then the nearest replica (local if any).
        (System::Geokv | System::GeokvTls, Op::Get(ReadLevel::Follower)) => {
            let via = |j: usize| matrix.rtt_ms(client, j) + matrix.rtt_ms(j, leader);
            let nearest = replicas.iter().min_by_key(|&&j| matrix.rtt_ms(client, j)).map_or(to_leader, |&j| via(j));
            ("nearest replica + its RTT to leader", nearest)
        }
        // etcd's client talks to its own region's member.
        (System::Etcd, Op::Get(_)) => ("local member", 0),
        (_, Op::Mix { .. }) => ("(a mix)", 0),
    }
}

/// The name of an operation in WAN tables, shared by both systems.
fn op_name(op: Op) -> &'static str {
    match op {
        Op::Put => "put",
        Op::PutEventual => "put eventual",
        Op::Get(ReadLevel::Eventual) => "get eventual",
        Op::Get(ReadLevel::Linearizable) => "get linearizable",
        Op::Get(ReadLevel::Lease) => "get lease",
        Op::Get(ReadLevel::Local) => "get local (stale / serializable)",
        Op::Get(ReadLevel::Follower) => "get follower",
        Op::Get(ReadLevel::Bounded { .. }) => "get bounded",
        Op::Mix { .. } => "mix",
    }
}

/// Pause after the last cell before scraping replication delays, so the
/// last eventual writes have reached every replica (the largest one-way
/// delay is well under this).
const EVENTUAL_DRAIN: Duration = Duration::from_secs(2);

/// Every node's replication-delay histograms of `shard`, by (receiver, origin).
async fn scrape_delays(
    lab: &geokv_lab::Lab,
    shard: u64,
) -> Result<BTreeMap<(u64, u64), crate::ecdelay::BucketHistogram>> {
    let mut out = BTreeMap::new();
    for node in lab.nodes() {
        let text = lab.scrape_metrics(node.id).await.map_err(|e| anyhow!("scrape node {}: {e}", node.id))?;
        for (origin, h) in crate::ecdelay::parse(&text, Some(&[shard])) {
            out.insert((node.id, origin), h);
        }
    }
    Ok(out)
}

/// Checks, from every region, that an eventual write is acknowledged by
/// that region's replica and that the region's replica serves the preload
/// locally (waits for replication up to 30 s).
async fn check_eventual_paths(lab: &geokv_lab::Lab, regions: &[String], keys: u64, value: &[u8]) -> Result<()> {
    let last = load::eventual_key(keys.saturating_sub(1));
    for region in regions {
        let client = lab.client_for_region(region).await.map_err(|e| anyhow!("{e}"))?;
        let probe = format!("{}probe-{region}", load::EVENTUAL_KEY_PREFIX);
        let written = client.put(&probe, value).await?;
        let origin = written.origin.map(|id| lab.node(id).map(|n| n.region.clone()));
        match origin {
            Some(Ok(r)) if written.eventual && &r == region => {}
            _ => bail!("an eventual put from {region} was acknowledged as {written:?}, not by {region}'s replica"),
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let read = client.get_with(&last, geokv_client::Consistency::Stale).await?;
            if !read.info.served.is_eventual() || read.info.region != *region {
                bail!("an eventual get from {region} was served {:?} by {}", read.info.served, read.info.region);
            }
            if read.kv.is_some() {
                break;
            }
            if Instant::now() > deadline {
                bail!("{region}'s replica still lacks {last} 30 s after the preload");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// A WAN scenario: geokv in the lab and etcd in network namespaces behind
/// the same kind of proxies, clients in every region, rounds interleaved.
pub async fn wan(
    settings: &Settings,
    matrix: geokv_lab::RegionMatrix,
) -> Result<(serde_json::Value, String, Vec<report::Summary>)> {
    use geokv_lab::{Lab, LabConfig};
    let value = Arc::new(load::value(settings.value_bytes, settings.seed));
    let regions = matrix.regions().to_vec();
    let run_geokv = settings.systems.contains(&System::Geokv);
    let run_etcd = settings.systems.contains(&System::Etcd);
    // geokv: the lab, leader of the keys' shard in its earliest region.
    let dir = tempfile::Builder::new().prefix("geokv-bench-lab-").tempdir()?;
    let mut lab = None;
    let mut geokv_replicas = Vec::new();
    let mut leader_index = 0usize;
    let mut shard = 0;
    let mut eventual_shard = 0;
    let mut eventual_replicas: Vec<usize> = Vec::new();
    let mut pools: Vec<(System, usize, Vec<Conn>)> = Vec::new();
    let mut geokv_pids = Vec::new();
    if run_geokv {
        let mut config = LabConfig::new(dir.path(), settings.geokv.clone());
        config.regions = matrix.clone();
        config.node_log_filter = Some("warn".into());
        // The eventual targets' range, and metrics for its replication delay.
        config.node_args.push(format!("--eventual-ranges={}", load::EVENTUAL_RANGE));
        config.metrics = true;
        eprintln!("starting geokv-lab: {} regions (eventual range {}) ...", regions.len(), load::EVENTUAL_RANGE);
        let started = Lab::start(config).await.map_err(|e| anyhow!("lab: {e}"))?;
        let map = started.client_for_region(&regions[0]).await.map_err(|e| anyhow!("{e}"))?.shard_map().await?;
        let keys_shard = map.shard_for_key(load::key(0).as_bytes()).ok_or_else(|| anyhow!("no shard for the keys"))?;
        shard = keys_shard.shard_id;
        geokv_replicas = keys_shard.replicas.iter().filter_map(|r| matrix.index_of(&r.region)).collect();
        let ev_shard = map
            .shard_for_key(load::eventual_key(0).as_bytes())
            .filter(|s| s.mode.is_eventual())
            .ok_or_else(|| anyhow!("no eventual shard for {} (--eventual-ranges ignored?)", load::eventual_key(0)))?;
        eventual_shard = ev_shard.shard_id;
        eventual_replicas = ev_shard.replicas.iter().filter_map(|r| matrix.index_of(&r.region)).collect();
        let leader_node = keys_shard
            .replicas
            .iter()
            .min_by_key(|r| matrix.index_of(&r.region).unwrap_or(usize::MAX))
            .map(|r| r.node_id)
            .ok_or_else(|| anyhow!("shard {shard} has no replicas"))?;
        started.transfer_leader(shard, leader_node, Duration::from_secs(60)).await.map_err(|e| anyhow!("{e}"))?;
        let leader_region = started.node(leader_node).map_err(|e| anyhow!("{e}"))?.region.clone();
        leader_index = matrix.index_of(&leader_region).expect("lab region");
        geokv_pids = started.nodes().iter().filter_map(|n| n.pid()).collect();
        for (r, region) in regions.iter().enumerate() {
            let endpoint = started.endpoint_for_region(region).map_err(|e| anyhow!("{e}"))?;
            let ip = started.client_ip_for_region(region).map_err(|e| anyhow!("{e}"))?;
            // The client knows its region, so follower, bounded and stale
            // reads go to that region's replica first.
            let conns = Conn::open_in_region(
                System::Geokv,
                &[endpoint],
                Some(ip),
                region,
                load::connections_for(settings.wan_clients),
            )
            .await?;
            pools.push((System::Geokv, r, conns));
        }
        lab = Some(started);
    }
    // etcd: one member per region in its own network namespace.
    let mut etcd = None;
    let mut etcd_pids = Vec::new();
    if run_etcd {
        eprintln!("starting etcd: one member per region, each in its own network namespace ...");
        let wan = crate::netns::EtcdWan::start(&settings.etcd_bin, &matrix).await?;
        crate::cluster::etcd_move_leader(&wan.cluster, leader_index as u64 + 1, Duration::from_secs(60)).await?;
        etcd_pids = wan.cluster.pids();
        let endpoints = wan.cluster.endpoints();
        for r in 0..regions.len() {
            // Prefer the region's own member, as a geo-aware client would.
            let mut mine = endpoints.clone();
            mine.rotate_left(r);
            let conns = Conn::open(
                System::Etcd,
                &mine,
                Some(wan.client_ip(r)),
                load::connections_for(settings.wan_clients),
                None,
            )
            .await?;
            pools.push((System::Etcd, r, conns));
        }
        etcd = Some(wan);
    }
    for (system, r, conns) in &pools {
        if *r == leader_index {
            eprintln!(
                "preloading {} keys into {} (leader in {}) ...",
                settings.keys,
                system.as_str(),
                regions[leader_index]
            );
            load::preload(conns, settings.keys, &value, 64).await?;
            if *system == System::Geokv {
                eprintln!(
                    "preloading {} eventual keys ({}) from {} ...",
                    settings.keys,
                    load::EVENTUAL_RANGE,
                    regions[*r]
                );
                load::preload_with(conns, Op::PutEventual, settings.keys, &value, 64).await?;
            }
        }
    }
    // Every region's client must write to and read from its own region's
    // replica, and every replica must hold the preload before the cells.
    let mut delay_before = BTreeMap::new();
    if let Some(lab) = &lab {
        check_eventual_paths(lab, &regions, settings.keys, &value).await?;
        delay_before = scrape_delays(lab, eventual_shard).await?;
    }
    let ops = |system: System| -> Vec<Op> {
        let mut ops = vec![Op::Put];
        if system == System::Geokv {
            ops.push(Op::PutEventual);
        }
        ops.push(Op::Get(ReadLevel::Linearizable));
        if system == System::Geokv {
            ops.push(Op::Get(ReadLevel::Lease));
            ops.push(Op::Get(ReadLevel::Follower));
            ops.push(Op::Get(ReadLevel::Bounded { max_staleness_ms: load::BOUNDED_STALENESS_MS }));
        }
        ops.push(Op::Get(ReadLevel::Local));
        if system == System::Geokv {
            ops.push(Op::Get(ReadLevel::Eventual));
        }
        ops
    };
    let all_ops = [
        Op::Put,
        Op::PutEventual,
        Op::Get(ReadLevel::Linearizable),
        Op::Get(ReadLevel::Lease),
        Op::Get(ReadLevel::Follower),
        Op::Get(ReadLevel::Bounded { max_staleness_ms: load::BOUNDED_STALENESS_MS }),
        Op::Get(ReadLevel::Local),
        Op::Get(ReadLevel::Eventual),
    ];
    let total: usize = pools.iter().map(|(s, _, _)| ops(*s).len()).sum::<usize>() * settings.rounds;
    let mut progress = Progress::new(total);
    let mut collector = Collector::default();
    for round in 1..=settings.rounds {
        for (r, region) in regions.iter().enumerate() {
            for op in all_ops {
                let mut order: Vec<&(System, usize, Vec<Conn>)> =
                    pools.iter().filter(|(s, pr, _)| *pr == r && ops(*s).contains(&op)).collect();
                if round % 2 == 0 {
                    order.reverse();
                }
                for (system, _, conns) in order {
                    let target = Target { system: *system, op };
                    let (mine, idle) = match system {
                        System::Geokv | System::GeokvTls => (&geokv_pids, &etcd_pids),
                        System::Etcd => (&etcd_pids, &geokv_pids),
                    };
                    let (cell, histogram) = measure_cell(
                        &mut progress,
                        settings,
                        round,
                        op_name(op),
                        target,
                        settings.wan_clients,
                        Some(region.clone()),
                        conns,
                        &value,
                        mine,
                        idle,
                    )
                    .await;
                    collector.add(cell, &histogram);
                }
            }
        }
    }
    // Replication delay of the eventual cells' writes (minus the preload's).
    let mut delays = Vec::new();
    if let Some(lab) = &lab {
        tokio::time::sleep(EVENTUAL_DRAIN).await;
        let after = scrape_delays(lab, eventual_shard).await?;
        for ((receiver, origin), h) in &after {
            let h = h.since(delay_before.get(&(*receiver, *origin)).unwrap_or(&Default::default()));
            let region_of = |id: u64| lab.node(id).map(|n| n.region.clone()).map_err(|e| anyhow!("{e}"));
            let (a, b) = (region_of(*receiver)?, region_of(*origin)?);
            let (ia, ib) = (matrix.index_of(&a).expect("lab region"), matrix.index_of(&b).expect("lab region"));
            let one_way = matrix.rtt_ms(ia, ib) as f64 / 2.0;
            delays.push(crate::ecdelay::DelayRow::new((*receiver, &a), (*origin, &b), one_way, &h));
        }
    }
    let geokv_leader_after = match &lab {
        Some(lab) => lab.leader_of(shard).await.ok().flatten(),
        None => None,
    };
    let etcd_leader_after = match &etcd {
        Some(wan) => wan.cluster.leader().await.ok().flatten(),
        None => None,
    };
    let summaries = collector.summaries();
    let ratios = collector.ratios();
    let all_regions: Vec<usize> = (0..regions.len()).collect();
    let mut text = format!(
        "leaders in {}: geokv shard {shard} replicas in {:?} (leader after the run: node {geokv_leader_after:?}); \
         etcd one member per region (leader after: member {etcd_leader_after:?}); {} clients per region\n",
        regions[leader_index],
        geokv_replicas.iter().map(|&i| regions[i].as_str()).collect::<Vec<_>>(),
        settings.wan_clients
    );
    text.push_str(&format!(
        "{:<30} {:<8} {:>20} {:>20} {:>8} {:>7} {:>7}  floor\n",
        "target", "region", "p50 ms [range]", "p99 ms [range]", "floor", "p50-fl", "ops/s"
    ));
    let mut floors = Vec::new();
    for s in &summaries {
        let region = s.region.clone().unwrap_or_default();
        let r = matrix.index_of(&region).expect("lab region");
        let op =
            all_ops.iter().copied().find(|op| Target { system: s.system, op: *op }.name() == s.target).expect("op");
        let replicas = match s.system {
            System::Geokv | System::GeokvTls if op.is_eventual() => &eventual_replicas,
            System::Geokv | System::GeokvTls => &geokv_replicas,
            System::Etcd => &all_regions,
        };
        let (what, floor) = floor_ms(&matrix, s.system, replicas, r, leader_index, op);
        text.push_str(&format!(
            "{:<30} {:<8} {:>20} {:>20} {:>8} {:>7.1} {:>7.0}  {what}\n",
            s.target,
            region,
            s.p50_ms.show(1),
            s.p99_ms.show(1),
            floor,
            s.p50_ms.median - floor as f64,
            s.throughput_ops_s.median
        ));
        floors.push(json!({"target": s.target, "region": region, "floor_ms": floor, "floor": what}));
    }
    if !delays.is_empty() {
        text.push_str(&format!(
            "\neventual shard {eventual_shard} ({}, replicas in {:?}): replication delay of the cells' writes at each \
             receiver (geokv_ec_replication_delay_seconds: apply time - the write's HLC time, read in ms; quantiles interpolated in the \
             histogram's buckets, 10 ms wide from 20 to 100 ms, then 25 to 150, 50 to 200, 100 to 300: each \
             quantile's bucket width is in results.json), next to the link's one-way delay (RTT/2)\n",
            load::EVENTUAL_RANGE,
            eventual_replicas.iter().map(|&i| regions[i].as_str()).collect::<Vec<_>>(),
        ));
        text.push_str(&crate::ecdelay::table(&delays));
    }
    if !ratios.is_empty() {
        text.push('\n');
        text.push_str(&report::ratio_table(&ratios));
    }
    let json = json!({
        "eventual_range": load::EVENTUAL_RANGE, "eventual_shard": eventual_shard,
        "eventual_replica_regions": eventual_replicas.iter().map(|&i| regions[i].clone()).collect::<Vec<_>>(),
        "replication_delay": delays,
        "regions": regions, "leader_region": regions[leader_index], "geokv_shard": shard,
        "geokv_replica_regions": geokv_replicas.iter().map(|&i| regions[i].clone()).collect::<Vec<_>>(),
        "geokv_leader_after": geokv_leader_after, "etcd_leader_after": etcd_leader_after,
        "floors": floors, "cells": collector.cells, "summaries": summaries, "ratios": ratios,
    });
    drop(etcd);
    drop(lab);
    Ok((json, text, summaries))
}

/// One leader kill: how long writes were unavailable.
#[derive(Debug, Clone, Serialize)]
pub struct Kill {
    pub system: System,
    pub killed: u64,
    pub new_leader: Option<u64>,
    /// From SIGKILL to the first write that succeeded after it, ms.
    pub unavailable_ms: f64,
    /// Writes that failed (after the client's own retries) meanwhile.
    pub failed_writes: u64,
}

/// Writers putting continuously; returns success completion times.
async fn failover_once(cluster: &mut LocalCluster, settings: &Settings, value: &Arc<Vec<u8>>) -> Result<Kill> {
    let leader = cluster.wait_ready(Duration::from_secs(60)).await?;
    let mut endpoints = cluster.endpoints();
    endpoints.rotate_left(leader as usize - 1);
    let writers = settings.clients.iter().copied().max().unwrap_or(8).min(16);
    let conns = Conn::open_with_timeout(
        cluster.system,
        &endpoints,
        None,
        None,
        load::connections_for(writers),
        load::FAILOVER_RPC_TIMEOUT,
        cluster.client_tls.clone(),
    )
    .await?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killed_at: Arc<std::sync::OnceLock<Instant>> = Arc::new(std::sync::OnceLock::new());
    let first_after: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..writers {
        let conn = conns[w % conns.len()].clone();
        let (stop, killed_at, first_after, failed, value) =
            (stop.clone(), killed_at.clone(), first_after.clone(), failed.clone(), value.clone());
        let keys = settings.keys;
        tasks.spawn(async move {
            let mut i = w as u64;
            while !stop.load(Ordering::Relaxed) {
                i = (i + 7919) % keys;
                let result = conn.send(Op::Put, &load::key(i), &value).await;
                let done = Instant::now();
                match result {
                    Ok(()) => {
                        if killed_at.get().is_some_and(|k| done > *k) {
                            let mut first = first_after.lock().expect("lock");
                            if first.is_none() {
                                *first = Some(done);
                            }
                        }
                    }
                    Err(_) => {
                        if killed_at.get().is_some() {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        tokio::time::sleep(load::ETCD_RETRY_BACKOFF).await;
                    }
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let kill_time = Instant::now();
    cluster.kill(leader);
    killed_at.set(kill_time).expect("killed once");
    let limit = Duration::from_secs(60);
    let first = loop {
        if let Some(first) = *first_after.lock().expect("lock") {
            break Some(first);
        }
        if kill_time.elapsed() > limit {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    let new_leader = cluster.leader().await.ok().flatten();
    cluster.restart(leader)?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let first =
        first.ok_or_else(|| anyhow!("{}: no write succeeded within {limit:?} of the kill", cluster.system.as_str()))?;
    Ok(Kill {
        system: cluster.system,
        killed: leader,
        new_leader,
        unavailable_ms: (first - kill_time).as_secs_f64() * 1000.0,
        failed_writes: failed.load(Ordering::Relaxed),
    })
}

/// The `failover` scenario: SIGKILL the leader under write load, `kills`
/// times per system, interleaved.
pub async fn failover(settings: &Settings) -> Result<(serde_json::Value, String, Vec<report::Summary>)> {
    let value = Arc::new(load::value(settings.value_bytes, settings.seed));
    let mut clusters = Vec::new();
    for system in &settings.systems {
        eprintln!("starting a 3-member {} cluster ...", system.as_str());
        clusters.push(match system {
            System::Geokv | System::GeokvTls => LocalCluster::start_geokv(&settings.geokv, 3).await?,
            System::Etcd => LocalCluster::start_etcd(&settings.etcd_bin, 3).await?,
        });
    }
    let mut kills = Vec::new();
    for k in 0..settings.kills {
        let mut order: Vec<usize> = (0..clusters.len()).collect();
        if k % 2 == 1 {
            order.reverse();
        }
        for i in order {
            eprintln!(
                "[kill {}/{}] {}: SIGKILL the leader under write load ...",
                k + 1,
                settings.kills,
                clusters[i].system.as_str()
            );
            let kill = failover_once(&mut clusters[i], settings, &value).await?;
            eprintln!(
                "  node {} killed; writes back after {:.0} ms (new leader {:?})",
                kill.killed, kill.unavailable_ms, kill.new_leader
            );
            kills.push(kill);
        }
    }
    let mut text = format!(
        "{:<8} {:>6} {:>24} {:>10} {:>10}  (heartbeat {} ms; election timeout geokv {}-{} ms, etcd {} ms)\n",
        "system",
        "kills",
        "unavailable ms [range]",
        "p50",
        "p99",
        crate::cluster::HEARTBEAT_MS,
        crate::cluster::ELECTION_MIN_MS,
        crate::cluster::ELECTION_MAX_MS,
        crate::cluster::ETCD_ELECTION_MS
    );
    let mut summary = Vec::new();
    for system in &settings.systems {
        let mut windows: Vec<f64> = kills.iter().filter(|k| k.system == *system).map(|k| k.unavailable_ms).collect();
        windows.sort_by(f64::total_cmp);
        let quantile = |q: f64| windows[((windows.len() as f64 * q).ceil() as usize).clamp(1, windows.len()) - 1];
        let spread = Spread::of(&windows);
        text.push_str(&format!(
            "{:<8} {:>6} {:>24} {:>10.0} {:>10.0}\n",
            system.as_str(),
            windows.len(),
            spread.show(0),
            quantile(0.5),
            quantile(0.99)
        ));
        summary.push(json!({"system": system, "kills": windows.len(), "unavailable_ms": spread,
            "p50_ms": quantile(0.5), "p99_ms": quantile(0.99)}));
    }
    Ok((json!({"kills": kills, "summary": summary}), text, Vec::new()))
}
