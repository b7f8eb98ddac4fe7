//! Growing, losing and healing a real cluster (`geokv` processes) while
//! clients write to every shard: the region-loss scenario.
//!
//! Three nodes in three regions hold every shard. The eu-west node dies
//! (the whole region): every shard stays writable on 2 of 3, and after
//! `node_dead_after_ms` the map marks the node down, with nowhere to put
//! its replicas. A new node joins in eu-west (`geokv --join`, no id given):
//! the meta shard assigns it the next id, it catches up, the dead node's
//! replicas are re-created on it (learner first) and it replaces the dead
//! node among the meta shard's voters. The dead node then comes back: it
//! is marked up, its stale copies are deleted, and the rebalancer moves
//! half of eu-west's replicas back to it. No acknowledged write is lost.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use geokv_client::{Client, NodeState, ShardMap};
use geokv_proto::admin::JoinClusterRequest;
use geokv_proto::admin::admin_client::AdminClient;
use geokv_tests::{ClusterOptions, DEFAULT_DEADLINE, Outcomes, TestCluster, check_outcomes, wait_for, write_prefix};

const WRITES_PER_WRITER: usize = 2_000;
const WRITE_TIME_LIMIT: Duration = Duration::from_secs(240);
const DEAD_AFTER_MS: u64 = 4_000;
/// Four shards' moves, two at a time, each a snapshot and a catch-up.
const HEAL_DEADLINE: Duration = Duration::from_secs(120);

async fn write_keys(client: Client, prefix: &'static str, outcomes: Outcomes, stop: Arc<AtomicBool>) {
    write_prefix(client, prefix, WRITES_PER_WRITER, WRITE_TIME_LIMIT, outcomes, stop).await
}

fn state(map: &ShardMap, id: u64) -> Option<NodeState> {
    map.node(id).map(|n| n.state)
}

/// Replicas per node, and whether every shard has 3 replicas in 3 regions
/// with no change under way.
fn layout(map: &ShardMap) -> (BTreeMap<u64, usize>, bool) {
    let mut load = BTreeMap::new();
    let mut spread = true;
    for s in &map.shards {
        let regions: BTreeSet<&str> = s.replicas.iter().map(|r| r.region.as_str()).collect();
        spread &= s.replicas.len() == 3 && regions.len() == 3 && s.adding_node.is_none();
        for r in &s.replicas {
            *load.entry(r.node_id).or_default() += 1;
        }
    }
    (load, spread)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_region_is_rebuilt_on_a_joined_node_and_the_dead_node_is_welcomed_back() {
    let mut c = TestCluster::start(
        env!("CARGO_BIN_EXE_geokv-node"),
        ClusterOptions {
            rebalance: true,
            extra_args: vec![format!("--node-dead-after-ms={DEAD_AFTER_MS}")],
            ..Default::default()
        },
    );
    c.wait_all_leaders().await;
    let admin = c.client().await;

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
    let acked = || {
        let outcomes = outcomes.clone();
        async move { outcomes.lock().await.values().filter(|o| o.is_some()).count() }
    };
    wait_for("writes before the loss", DEFAULT_DEADLINE, || written(80)).await;

    // eu-west (node 3) is lost. Writes go on, on 2 of 3.
    c.kill(3);
    let lost_at = Instant::now();
    let before = acked().await;
    wait_for("writes acknowledged after the loss", DEFAULT_DEADLINE, || async {
        (acked().await >= before + 40).then_some(())
    })
    .await;
    let map = wait_for("node 3 marked down", DEFAULT_DEADLINE, || async {
        let map = admin.refresh_shard_map().await.ok()?;
        (state(&map, 3) == Some(NodeState::Down)).then_some(map)
    })
    .await;
    let marked_after = lost_at.elapsed();
    // Counted from its last answer, up to one probe interval (0.5 s) before
    // the kill.
    assert!(marked_after + Duration::from_secs(1) >= Duration::from_millis(DEAD_AFTER_MS), "{marked_after:?}");
    // Nowhere to go: every other node holds every shard already.
    assert!(map.shards.iter().all(|s| s.replicas.len() == 3 && s.adding_node.is_none()), "{map:?}");

    // A new node joins eu-west, with no id of its own.
    let joined = c.join("eu-west");
    assert_eq!(joined, 4);
    let map = wait_for("the joined node in the map", DEFAULT_DEADLINE, || async {
        let map = admin.refresh_shard_map().await.ok()?;
        map.node(4).is_some().then_some(map)
    })
    .await;
    assert_eq!(map.node(4).unwrap().addr, c.node(4).addr, "id 4 went to the joined node");
    // The map holds it as soon as the meta shard applied the admission; the
    // node logs once the answer reached it and its id is stored.
    wait_for("node 4 to store its id", DEFAULT_DEADLINE, || async {
        c.log(4).contains("joined the cluster").then_some(())
    })
    .await;

    // Its address is taken now: another node asking with it is refused.
    let mut raw = AdminClient::connect(format!("http://{}", c.node(1).addr)).await.unwrap();
    let taken = JoinClusterRequest { addr: c.node(4).addr.clone(), region: "us-east".into(), zone: String::new() };
    let err = raw.join_cluster(taken).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("node 4's"), "{err:?}");
    let no_region = JoinClusterRequest { addr: "127.0.0.1:1".into(), region: String::new(), zone: String::new() };
    assert_eq!(raw.join_cluster(no_region).await.unwrap_err().code(), tonic::Code::InvalidArgument);

    // The region is rebuilt on node 4: every shard back to 3 regions,
    // nothing left on node 3.
    let start = Instant::now();
    let map = wait_for("eu-west rebuilt on node 4", HEAL_DEADLINE, || async {
        let map = admin.refresh_shard_map().await.ok()?;
        let (load, spread) = layout(&map);
        (state(&map, 4) == Some(NodeState::Up) && spread && !load.contains_key(&3)).then_some(map)
    })
    .await;
    let rebuilt_in = start.elapsed();
    assert_eq!(layout(&map).0.get(&4), Some(&map.shards.len()));
    // ... and node 4 took node 3's place among the meta shard's voters.
    wait_for("node 4 a meta voter in node 3's place", DEFAULT_DEADLINE, || async {
        let leader = c.wait_leader(0).await;
        let meta = c.group_statuses(0).await.remove(&leader)?;
        let voters: BTreeSet<u64> = meta.voters.iter().copied().collect();
        (voters == BTreeSet::from([1, 2, 4])).then_some(())
    })
    .await;

    // The dead node comes back: up again, its stale copies deleted, and
    // eu-west's replicas shared between nodes 3 and 4.
    c.restart(3);
    let start = Instant::now();
    wait_for("node 3 up and holding half of eu-west", HEAL_DEADLINE, || async {
        let map = admin.refresh_shard_map().await.ok()?;
        let (load, spread) = layout(&map);
        let (three, four) = (load.get(&3).copied().unwrap_or(0), load.get(&4).copied().unwrap_or(0));
        (state(&map, 3) == Some(NodeState::Up) && spread && three.abs_diff(four) <= 1 && three > 0).then_some(())
    })
    .await;
    let welcomed_in = start.elapsed();
    wait_for("node 3 to keep only what the map places on it", DEFAULT_DEADLINE, || async {
        let map = admin.refresh_shard_map().await.ok()?;
        let status = c.status(3).await?;
        let hosted: BTreeSet<u64> = status.groups.iter().map(|g| g.shard_id).filter(|s| *s != 0).collect();
        let placed: BTreeSet<u64> = map.shards.iter().filter(|s| s.is_placed_on(3)).map(|s| s.shard_id).collect();
        (hosted == placed).then_some(())
    })
    .await;

    wait_for("writes after the heal", DEFAULT_DEADLINE, || {
        let n = outcomes.clone();
        async move { (n.lock().await.len() >= 1_200).then_some(()) }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }

    let (acked, attempted) = check_outcomes(&c.client().await, &outcomes).await;
    eprintln!(
        "node 3 marked down {marked_after:?} after its loss; eu-west rebuilt on joined node 4 in {rebuilt_in:?}; \
         node 3 back and rebalanced in {welcomed_in:?}; {acked} of {} writes acknowledged",
        attempted
    );
}
