//! The whole elastic-topology scenario on real `geokv` processes,
//! with clients writing and reading throughout:
//!
//! 1. a 3-node cluster (us-east, us-west, eu-west) is loaded until automatic
//!    (load) splits have made at least 16 shards;
//! 2. a node joins in a 4th region (ap-northeast): replicas and leaders
//!    rebalance onto it;
//! 3. an original node (us-east) is drained and removed;
//! 4. a node joins us-east again, and the whole of eu-west is killed: its
//!    replicas are re-created on the others (learner first), every shard
//!    back to 3 replicas.
//!
//! Each step's duration, client error rate and p99 latency are printed; at
//! the end a full scan matches every acknowledged write (and one before the
//! topology changes, under load, every write acknowledged by then).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use geokv_client::NodeState;
use geokv_tests::scenario::{Ops, layout, step_stats, write_and_read};
use geokv_tests::{
    ClusterOptions, DEFAULT_DEADLINE, Outcomes, TestCluster, check_acknowledged_so_far, check_outcomes, wait_for,
};

const WRITERS: usize = 6;
const STEP_DEADLINE: Duration = Duration::from_secs(240);
const DEAD_AFTER_MS: u64 = 4_000;

async fn leaders_on(c: &TestCluster, node: u64) -> usize {
    c.status(node).await.map_or(0, |s| s.groups.iter().filter(|g| g.role == "leader" && g.shard_id != 0).count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_splits_grows_shrinks_and_heals_under_load() {
    let options = ClusterOptions {
        rebalance: true,
        extra_args: vec![
            "--split-load-entries-per-s=4".into(),
            "--split-size-bytes=0".into(),
            "--merge-size-bytes=0".into(),
            format!("--node-dead-after-ms={DEAD_AFTER_MS}"),
        ],
        ..ClusterOptions::default()
    };
    let mut c = TestCluster::start(env!("CARGO_BIN_EXE_geokv-node"), options);
    c.wait_all_leaders().await;
    let admin = c.client().await;
    let outcomes: Outcomes = Arc::default();
    let ops: Ops = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for writer in 0..WRITERS {
        let client = c.client().await;
        clients.push(tokio::spawn(write_and_read(client, writer, outcomes.clone(), ops.clone(), stop.clone())));
    }
    let mut report = Vec::new();

    // 1. Load until automatic splits make at least 16 shards.
    let start = Instant::now();
    let map = wait_for("16 shards from load splits", STEP_DEADLINE, || async {
        let map = admin.refresh_shard_map().await.ok()?;
        (map.shards.len() >= 16).then_some(map)
    })
    .await;
    report.push(("load splits to 16 shards", start, start.elapsed(), map.shards.len()));
    let before = check_acknowledged_so_far(&admin, &outcomes).await;
    eprintln!("before the topology changes: {before} acknowledged writes, every one found by a full scan");

    // 2. A node joins a 4th region; replicas and leaders rebalance onto it.
    let start = Instant::now();
    let four = c.join("ap-northeast");
    let map = wait_for("replicas rebalanced onto the joined node", STEP_DEADLINE, || async {
        let map = admin.refresh_shard_map().await.ok()?;
        let (load, settled) = layout(&map);
        let (min, max) = (load.values().min()?, load.values().max()?);
        let even = load.len() == 4 && max - min <= 1;
        (settled && even && map.node(four)?.state == NodeState::Up).then_some(map)
    })
    .await;
    wait_for("the joined node leads shards", STEP_DEADLINE, || async {
        (leaders_on(&c, four).await > 0).then_some(())
    })
    .await;
    report.push(("join ap-northeast, rebalance", start, start.elapsed(), layout(&map).0[&four]));

    // 3. Drain and remove an original node.
    let start = Instant::now();
    admin.drain_node(1).await.expect("drain recorded");
    admin.wait_for_drain(1, STEP_DEADLINE).await.expect("node 1 drained");
    let removed = admin.remove_node(1, false).await.expect("node 1 removed");
    assert_eq!(removed.state, NodeState::Removed);
    c.wait_exit(1, DEFAULT_DEADLINE).await;
    let map = wait_for("every shard on 3 regions without node 1", STEP_DEADLINE, || async {
        let map = admin.refresh_shard_map().await.ok()?;
        let (load, settled) = layout(&map);
        (settled && !load.contains_key(&1)).then_some(map)
    })
    .await;
    report.push(("drain and remove node 1", start, start.elapsed(), map.shards.len()));

    // 4. A node joins us-east again; then eu-west is lost, and its replicas
    //    are re-created on the others.
    let five = c.join("us-east");
    wait_for("the new us-east node up and holding replicas", STEP_DEADLINE, || async {
        let map = admin.refresh_shard_map().await.ok()?;
        let (load, settled) = layout(&map);
        (settled && map.node(five)?.state == NodeState::Up && load.get(&five).copied().unwrap_or(0) > 0).then_some(())
    })
    .await;
    let start = Instant::now();
    c.kill(3);
    let map = wait_for("eu-west's replicas re-created elsewhere", STEP_DEADLINE, || async {
        let map = admin.refresh_shard_map().await.ok()?;
        let (load, _) = layout(&map);
        let full = map.shards.iter().all(|s| s.replicas.len() == 3 && !s.is_changing());
        (map.node(3)?.state == NodeState::Down && full && !load.contains_key(&3)).then_some(map)
    })
    .await;
    report.push(("lose eu-west, re-replicate", start, start.elapsed(), map.shards.len()));

    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("client");
    }
    for (step, since, took, n) in &report {
        let (count, errors, p99) = step_stats(&ops, *since, *took).await;
        eprintln!("{step}: {took:?} ({n}); meanwhile {count} client ops, {:.1}% failed, p99 {p99:?}", errors * 100.0);
    }
    let (acked, total) = check_outcomes(&c.client().await, &outcomes).await;
    eprintln!("{acked} of {total} writes acknowledged, every one found by a full scan");
    c.kill_all();
}
