//! The elastic-topology scenario of tests/tests/scenario.rs, in the lab:
//! every link carries the RTTs of lab/regions/4-region.toml, so each step's
//! time and the clients' latency are what a WAN gives. Three regions start
//! (us-east, us-west, eu-west); six clients, two per region, write and read
//! through their region's lab address throughout.
//!
//! 1. load until automatic (load) splits have made at least 16 shards;
//! 2. a node joins ap-northeast: replicas and leaders rebalance onto it;
//! 3. the us-east node is drained and removed;
//! 4. a node joins us-east again, then eu-west is killed: its replicas are
//!    re-created on the others.
//!
//! Each step's duration, client error rate and p99 are printed (numbers:
//! docs/operations.md); at the end a full scan holds every acknowledged
//! write.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use geokv_client::{NodeState, ShardMap};
use geokv_lab::regions::FOUR_REGIONS_TOML;
use geokv_lab::{Lab, LabConfig, NodeProgram, RegionMatrix};
use geokv_tests::Outcomes;
use geokv_tests::scenario::{Ops, layout, step_stats, write_and_read};

const STEP_DEADLINE: Duration = Duration::from_secs(300);

async fn map(lab: &Lab) -> Option<ShardMap> {
    lab.client_for_region("us-west").await.ok()?.refresh_shard_map().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_topology_scenario_across_the_wan() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = LabConfig::new(dir.path(), NodeProgram::Lab(env!("CARGO_BIN_EXE_geokv-lab").into()));
    config.regions = RegionMatrix::parse(FOUR_REGIONS_TOML).unwrap();
    config.start_regions = Some(3);
    config.rebalance = true;
    config.start_timeout = Duration::from_secs(120);
    config.node_args = vec![
        "--split-load-entries-per-s=1".into(),
        "--split-size-bytes=0".into(),
        "--merge-size-bytes=0".into(),
        "--node-dead-after-ms=4000".into(),
    ];
    let lab = Lab::start(config).await.expect("the lab starts");
    let outcomes: Outcomes = Arc::default();
    let ops: Ops = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for (writer, region) in ["us-east", "us-west", "eu-west"].iter().cycle().take(6).enumerate() {
        let client = lab.client_for_region(region).await.expect("a region client");
        clients.push(tokio::spawn(write_and_read(client, writer, outcomes.clone(), ops.clone(), stop.clone())));
    }
    let mut report = Vec::new();

    let start = Instant::now();
    let m = lab
        .wait_until("16 shards from load splits", STEP_DEADLINE, |lab| async move {
            let m = map(lab).await?;
            (m.shards.len() >= 16).then_some(m)
        })
        .await
        .expect("load splits");
    report.push(("load splits to 16 shards", start, start.elapsed(), m.shards.len()));

    let start = Instant::now();
    let four = lab.add_node("ap-northeast").await.expect("a node joins ap-northeast");
    let m = lab
        .wait_until("replicas rebalanced onto the joined node, which leads shards", STEP_DEADLINE, |lab| async move {
            let m = map(lab).await?;
            let (load, settled) = layout(&m);
            let (min, max) = (load.values().min()?, load.values().max()?);
            let even = load.len() == 4 && max - min <= 1 && m.node(four)?.state == NodeState::Up;
            let leads = lab.status().await.shards.iter().any(|s| s.leader == Some(four));
            (settled && even && leads).then_some(m)
        })
        .await
        .expect("rebalanced");
    report.push(("join ap-northeast, rebalance", start, start.elapsed(), layout(&m).0[&four]));

    let start = Instant::now();
    lab.drain(1).await.expect("drain recorded");
    lab.wait_until("node 1 drained", STEP_DEADLINE, |lab| async move {
        let m = map(lab).await?;
        let (load, settled) = layout(&m);
        (settled && !load.contains_key(&1)).then_some(())
    })
    .await
    .expect("node 1 drained");
    lab.remove_node(1, false).await.expect("node 1 removed");
    report.push(("drain and remove node 1 (us-east)", start, start.elapsed(), 1));

    let five = lab.add_node("us-east").await.expect("a node joins us-east");
    lab.wait_until("the new us-east node holds replicas", STEP_DEADLINE, |lab| async move {
        let m = map(lab).await?;
        let (load, settled) = layout(&m);
        (settled && load.get(&five).copied().unwrap_or(0) > 0).then_some(())
    })
    .await
    .expect("node 5 holds replicas");
    let start = Instant::now();
    assert_eq!(lab.kill_region("eu-west").unwrap(), vec![3]);
    let m = lab
        .wait_until("eu-west's replicas re-created elsewhere", STEP_DEADLINE, |lab| async move {
            let m = map(lab).await?;
            let full = m.shards.iter().all(|s| s.replicas.len() == 3 && !s.is_changing());
            (m.node(3)?.state == NodeState::Down && full && !layout(&m).0.contains_key(&3)).then_some(m)
        })
        .await
        .expect("re-replicated");
    report.push(("lose eu-west, re-replicate", start, start.elapsed(), m.shards.len()));

    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("client");
    }
    for (step, since, took, n) in &report {
        let (count, errors, p99) = step_stats(&ops, *since, *took).await;
        println!("{step}: {took:?} ({n}); meanwhile {count} client ops, {:.1}% failed, p99 {p99:?}", errors * 100.0);
    }
    let client = lab.client_for_region("us-west").await.unwrap();
    let (acked, total) = geokv_tests::check_outcomes(&client, &outcomes).await;
    println!("{acked} of {total} writes acknowledged, every one found by a full scan");
    lab.shutdown(false);
}
