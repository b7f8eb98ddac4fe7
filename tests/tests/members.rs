//! Draining and removing a member of a real cluster (4 `geokv` processes in
//! 3 regions, every shard on 3 of them) while clients write to every shard.
//!
//! Shown here: a drain moves every replica and leadership off the node
//! (each move learner first, as `shard move` does) and loses no
//! acknowledged write; a removal takes the node out of the meta shard and
//! stops it; a removed node that comes back is refused and stops again;
//! and drains or removals that could not complete, or would leave the meta
//! shard unable to survive a failure, are refused and change nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use geokv_client::{Client, Error, NodeState};
use geokv_tests::{ClusterOptions, DEFAULT_DEADLINE, Outcomes, TestCluster, check_outcomes, wait_for, write_prefix};

const WRITES_PER_WRITER: usize = 400;
const WRITE_TIME_LIMIT: Duration = Duration::from_secs(120);
/// Three shards' moves, two at a time, each a snapshot and a catch-up.
const DRAIN_DEADLINE: Duration = Duration::from_secs(120);

/// Writes keys `<prefix><i>`, one shard per prefix with the default split
/// points (g, n, u), until told to stop.
async fn write_keys(client: Client, prefix: &'static str, outcomes: Outcomes, stop: Arc<AtomicBool>) {
    write_prefix(client, prefix, WRITES_PER_WRITER, WRITE_TIME_LIMIT, outcomes, stop).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_is_emptied_removed_and_refused_when_it_comes_back() {
    let mut c = TestCluster::start(env!("CARGO_BIN_EXE_geokv-node"), ClusterOptions { nodes: 4, ..Default::default() });
    c.wait_all_leaders().await;
    let admin = c.client().await;
    let before = admin.refresh_shard_map().await.unwrap();
    // The node with the most replicas (every one has three of four shards).
    let drained =
        (1..=4u64).max_by_key(|n| (before.shards.iter().filter(|s| s.is_placed_on(*n)).count(), *n)).expect("a node");

    let outcomes: Outcomes = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for prefix in ["a", "h", "o", "v"] {
        writers.push(tokio::spawn(write_keys(c.client().await, prefix, outcomes.clone(), stop.clone())));
    }
    let written = |n: usize| {
        let outcomes = outcomes.clone();
        async move { (outcomes.lock().await.len() >= n).then_some(()) }
    };
    wait_for("writes before the drain", DEFAULT_DEADLINE, || written(80)).await;

    // Removing a node that holds replicas needs a drain (or --force).
    let err = admin.remove_node(drained, false).await.unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(_)) && err.to_string().contains("drain it first"), "{err}");

    let start = Instant::now();
    let drain = admin.drain_node(drained).await.expect("drain recorded");
    assert!(drain.created);
    assert_eq!(drain.state, NodeState::Draining);
    assert!(!admin.drain_node(drained).await.expect("a repeat").created, "a repeat records nothing");
    let state = admin.wait_for_drain(drained, DRAIN_DEADLINE).await.expect("drained");
    let drain_took = start.elapsed();
    assert_eq!(state, NodeState::Draining);
    let map = admin.refresh_shard_map().await.unwrap();
    for s in &map.shards {
        assert!(!s.is_placed_on(drained), "shard {} still on node {drained}: {s:?}", s.shard_id);
        assert_eq!(s.replicas.len(), 3, "shard {} kept its replication: {s:?}", s.shard_id);
        let mut regions: Vec<&str> = s
            .replicas
            .iter()
            .map(|r| map.nodes.iter().find(|n| n.node_id == r.node_id).unwrap().region.as_str())
            .collect();
        regions.sort();
        regions.dedup();
        assert_eq!(regions.len(), 3, "shard {}'s replicas in three regions: {s:?}", s.shard_id);
    }
    // Its copies are deleted and it leads nothing (the meta shard, whose
    // replica it keeps until removed, included).
    wait_for(&format!("node {drained} to hold and lead nothing"), DEFAULT_DEADLINE, || async {
        let status = c.status(drained).await?;
        let only_meta = status.groups.iter().all(|g| g.shard_id == 0);
        let leads = status.groups.iter().any(|g| g.role == "leader");
        (only_meta && !leads).then_some(())
    })
    .await;

    // Every other node now holds every shard: draining one of them could
    // not complete, so it is refused and changes nothing.
    let other = (1..=4).find(|n| *n != drained).unwrap();
    let err = admin.drain_node(other).await.unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(_)) && err.to_string().contains("nowhere to go"), "{err}");
    let err = admin.drain_node(9).await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err}");
    assert_eq!(admin.refresh_shard_map().await.unwrap().nodes, map.nodes, "refused drains change nothing");

    // The removal: the node stops by itself, saying why.
    let removed = admin.remove_node(drained, false).await.expect("removed");
    assert_eq!(removed.state, NodeState::Removed);
    let status = c.wait_exit(drained, DEFAULT_DEADLINE).await;
    assert!(!status.success(), "a removed node stops with an error: {status}");
    assert!(c.log(drained).contains("was removed from the cluster"), "{}", c.logs_tail(20));
    // It left the meta shard's voters; the three left may not lose another.
    wait_for(&format!("node {drained} to leave the meta shard's voters"), DEFAULT_DEADLINE, || async {
        let meta_leader = c.wait_leader(0).await;
        let meta = c.group_statuses(0).await.remove(&meta_leader)?;
        (!meta.voters.contains(&drained) && meta.voters.len() == 3).then_some(())
    })
    .await;
    let err = admin.remove_node(other, true).await.unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(_)) && err.to_string().contains("fewer than 3"), "{err}");
    let err = admin.remove_node(9, false).await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "removing a node that never was: {err}");
    assert!(admin.remove_node(drained, false).await.expect("a repeat").state == NodeState::Removed);

    // Back from the dead, with its data directory: refused, it stops again.
    let logged = c.log(drained).len();
    c.restart(drained);
    let status = c.wait_exit(drained, DEFAULT_DEADLINE).await;
    assert!(!status.success(), "{status}");
    assert!(c.log(drained)[logged..].contains("was removed from the cluster"), "{}", c.logs_tail(20));

    wait_for("writes after the removal", DEFAULT_DEADLINE, || written(1_000)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }

    // Every acknowledged write is there; nothing appears that was never written.
    let (acked, attempted) = check_outcomes(&c.client().await, &outcomes).await;
    eprintln!(
        "drained node {drained} in {drain_took:?}; {acked} of {} writes acknowledged across the drain and removal",
        attempted
    );
}

/// A drain can be called off: the node is up again at once, the moves
/// already recorded finish, and no new one starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_can_be_cancelled() {
    let c = TestCluster::start(env!("CARGO_BIN_EXE_geokv-node"), ClusterOptions { nodes: 4, ..Default::default() });
    c.wait_all_leaders().await;
    let admin = c.client().await;
    let before = admin.refresh_shard_map().await.unwrap();
    let node = (1..=4u64).max_by_key(|n| (before.shards.iter().filter(|s| s.is_placed_on(*n)).count(), *n)).unwrap();
    assert!(!admin.cancel_drain(node).await.expect("nothing to cancel").created, "an up node: no change");

    assert!(admin.drain_node(node).await.expect("drain").created);
    let cancelled = admin.cancel_drain(node).await.expect("cancel");
    assert!(cancelled.created);
    assert_eq!(cancelled.state, NodeState::Up);
    assert!(!admin.cancel_drain(node).await.expect("a repeat").created);
    // The recorded moves finish; then the node's replicas stay put.
    let settled = wait_for("recorded moves to finish", DEFAULT_DEADLINE, || async {
        let map = admin.refresh_shard_map().await.ok()?;
        map.shards.iter().all(|s| !s.is_changing()).then_some(map)
    })
    .await;
    let held = |map: &geokv_client::ShardMap| map.shards.iter().filter(|s| s.is_placed_on(node)).count();
    let kept = held(&settled);
    assert!(kept >= held(&before).saturating_sub(2), "at most the 2 moves in flight left it: {kept}");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        let map = admin.refresh_shard_map().await.unwrap();
        assert_eq!(held(&map), kept, "a move started after the cancel");
        assert_eq!(map.node(node).map(|n| n.state), Some(NodeState::Up));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let err = admin.cancel_drain(9).await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err}");
}
