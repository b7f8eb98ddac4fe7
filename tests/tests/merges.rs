//! Merging Raft shards against real `geokv` processes while clients write
//! (default split points g, n, u: shards 1-4).
//!
//! Shown here: a merge under concurrent writes loses and duplicates no
//! acknowledged write; the absorbed shard's replicas retire without taking
//! the data with them; the merged shard survives a full restart; a merge of
//! shards on different nodes first moves the right shard's replicas onto
//! the left's; and bad merge requests are refused precisely and change
//! nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use geokv_client::{Client, Error};
use geokv_tests::{ClusterOptions, DEFAULT_DEADLINE, Outcomes, TestCluster, check_outcomes, wait_for, write_prefix};

const SHARD_G_N: u64 = 2;
const SHARD_N_U: u64 = 3;
const SHARD_U_END: u64 = 4;
const WRITES_PER_WRITER: usize = 400;
const WRITE_TIME_LIMIT: Duration = Duration::from_secs(90);
/// A merge of aligned shards takes a few member-loop passes (0.5 s each);
/// one that moves a replica first adds a snapshot and a catch-up.
const MERGE_DEADLINE: Duration = Duration::from_secs(120);

async fn write_keys(client: Client, prefix: &'static str, outcomes: Outcomes, stop: Arc<AtomicBool>) {
    write_prefix(client, prefix, WRITES_PER_WRITER, WRITE_TIME_LIMIT, outcomes, stop).await
}

/// Writers on both shards of the merge (and one beside them), each on its
/// own client, whose map goes stale at the merge.
async fn start_writers(
    c: &TestCluster,
    outcomes: &Outcomes,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut writers = Vec::new();
    for prefix in ["h", "k", "p", "r", "b"] {
        writers.push(tokio::spawn(write_keys(c.client().await, prefix, outcomes.clone(), stop.clone())));
    }
    writers
}

/// Stops the writers, waits for them, then for every replica of the
/// absorbed shard (3) to retire.
async fn stop_writers_and_await_retired(c: &TestCluster, writers: Vec<tokio::task::JoinHandle<()>>, stop: &AtomicBool) {
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    wait_for("shard 3's replicas retired", DEFAULT_DEADLINE, || async {
        c.group_statuses(SHARD_N_U).await.is_empty().then_some(())
    })
    .await;
}

/// `geokv_topology_decisions_total{kind}` summed over the nodes that answer
/// (only the meta leader counts; leadership may have moved).
async fn decisions(c: &TestCluster, kind: &str) -> f64 {
    let series = format!("geokv_topology_decisions_total{{kind=\"{kind}\"}}");
    let mut total = 0.0;
    for id in 1..=3 {
        if c.node(id).is_answering() {
            total += c.metrics(id).await.get(&series).copied().unwrap_or(0.0);
        }
    }
    total
}

async fn written(outcomes: &Outcomes, n: usize) -> Option<()> {
    (outcomes.lock().await.len() >= n).then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_under_writes_loses_nothing_and_survives_a_restart() {
    let mut c = TestCluster::start(env!("CARGO_BIN_EXE_geokv-node"), ClusterOptions::default());
    c.wait_all_leaders().await;
    let admin = c.client().await;

    // Bad input first: each refused precisely, the map as it was.
    let before = admin.refresh_shard_map().await.unwrap();
    let err = admin.merge_shard(99).await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err}");
    let err = admin.merge_shard(SHARD_U_END).await.unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(_)) && err.to_string().contains("last shard"), "{err}");
    let none = admin.cancel_merge(SHARD_G_N).await.expect("cancelling no merge");
    assert!(!none.created, "no merge to cancel: {none:?}");
    assert_eq!(admin.refresh_shard_map().await.unwrap(), before, "refused merges change nothing");

    let outcomes: Outcomes = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&c, &outcomes, &stop).await;
    wait_for("writes before the merge", DEFAULT_DEADLINE, || written(&outcomes, 150)).await;

    let start = Instant::now();
    let merge = admin.merge_shard(SHARD_G_N).await.expect("merge recorded");
    assert!(merge.created);
    assert_eq!(merge.right_shard_id, SHARD_N_U);
    // While it is under way, the right shard is in no other change.
    let err = admin.split_shard(SHARD_N_U, "q").await;
    if let Err(err) = &err {
        assert!(matches!(err, Error::FailedPrecondition(_) | Error::NotFound(_)), "{err}");
    }
    let merged = admin.wait_for_merge(SHARD_G_N, MERGE_DEADLINE).await.expect("merge done");
    let took = start.elapsed();
    assert_eq!((merged.start.as_slice(), merged.end.as_slice()), (b"g".as_slice(), b"u".as_slice()), "{merged:?}");
    let map = admin.refresh_shard_map().await.unwrap();
    assert!(map.shard(SHARD_N_U).is_none(), "the absorbed shard left the map: {map:?}");
    let old_epoch = before.shard(SHARD_G_N).unwrap().epoch.max(before.shard(SHARD_N_U).unwrap().epoch);
    assert!(merged.epoch > old_epoch, "a new epoch: {merged:?}");
    eprintln!("merge of shards 2 and 3 took {took:?} under writes");

    // Writers go on through the merge and after it.
    let now = outcomes.lock().await.len();
    wait_for("writes after the merge", DEFAULT_DEADLINE, || written(&outcomes, now + 150)).await;
    // The absorbed shard's replicas retire; the merged shard runs everywhere.
    stop_writers_and_await_retired(&c, writers, &stop).await;
    wait_for("shard 2 on every node", DEFAULT_DEADLINE, || async {
        let groups = c.group_statuses(SHARD_G_N).await;
        (groups.len() == 3 && groups.values().all(|g| g.end == b"u")).then_some(())
    })
    .await;

    // A full scan matches every acknowledged write, nothing unknown.
    let scan = c.client().await;
    let (acked, total) = check_outcomes(&scan, &outcomes).await;
    eprintln!("{acked} of {total} writes acknowledged, every one found after the merge");
    let stored = scan.scan(..).collect().await.expect("scan");

    // A full restart: the merged range comes from each node's own log.
    c.kill_all();
    for id in 1..=3 {
        c.restart(id);
    }
    c.wait_all_leaders().await;
    let scan = c.client().await;
    let after =
        wait_for("a full scan after the restart", DEFAULT_DEADLINE, || async { scan.scan(..).collect().await.ok() })
            .await;
    assert_eq!(after, stored, "the same data after a full restart");
    assert!(c.group_statuses(SHARD_N_U).await.is_empty(), "the absorbed shard does not come back");
    // Writes to the absorbed range go to the merged shard.
    let put = scan.put("q-after-restart", "v").await.expect("a write to the old right range");
    assert_eq!(put.shard_id, SHARD_G_N);
    c.kill_all();
}

/// Shards on different nodes (4 nodes, every shard on 3): the merge moves
/// the right shard's replicas onto the left's nodes first, learner first,
/// then merges; writers keep going throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_moves_the_right_shards_replicas_first() {
    let c = TestCluster::start(env!("CARGO_BIN_EXE_geokv-node"), ClusterOptions { nodes: 4, ..Default::default() });
    c.wait_all_leaders().await;
    let admin = c.client().await;
    let before = admin.refresh_shard_map().await.unwrap();
    let ids = |shard: u64| {
        let mut ids: Vec<u64> = before.shard(shard).unwrap().replicas.iter().map(|r| r.node_id).collect();
        ids.sort_unstable();
        ids
    };
    let (left, right) = (ids(SHARD_G_N), ids(SHARD_N_U));
    assert_ne!(left, right, "the initial placement puts the two shards on different nodes");

    let outcomes: Outcomes = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&c, &outcomes, &stop).await;
    wait_for("writes before the merge", DEFAULT_DEADLINE, || written(&outcomes, 100)).await;

    let start = Instant::now();
    admin.merge_shard(SHARD_G_N).await.expect("merge recorded");
    let merged = admin.wait_for_merge(SHARD_G_N, MERGE_DEADLINE).await.expect("merge done");
    eprintln!("merge with a replica move first took {:?}", start.elapsed());
    let mut now: Vec<u64> = merged.replicas.iter().map(|r| r.node_id).collect();
    now.sort_unstable();
    assert_eq!(now, left, "the merged shard keeps the left shard's replicas");
    assert_eq!(merged.end, b"u");
    assert!(admin.refresh_shard_map().await.unwrap().shard(SHARD_N_U).is_none());

    stop_writers_and_await_retired(&c, writers, &stop).await;
    let (acked, total) = check_outcomes(&c.client().await, &outcomes).await;
    eprintln!("{acked} of {total} writes acknowledged, every one found after the merge");
    let mut c = c;
    c.kill_all();
}

/// A replica of the right shard that cannot apply the freeze (paused just
/// as the merge is frozen in the map) gets the freeze taken back within
/// the freeze timeout: the merge is given up, the right shard serves again
/// on its other two replicas, and a later merge, with every replica back,
/// goes through. The freeze is held 3 s before the right shard's log
/// freezes (a test switch), so that the pause lands first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freeze_a_replica_cannot_apply_is_taken_back() {
    let options = ClusterOptions {
        env: vec![("GEOKV_TEST_HOLD_MERGE_FREEZE_MS".into(), "3000".into())],
        metrics: true,
        ..ClusterOptions::default()
    };
    let mut c = TestCluster::start(env!("CARGO_BIN_EXE_geokv-node"), options);
    c.wait_all_leaders().await;
    let admin = c.client().await;
    let outcomes: Outcomes = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&c, &outcomes, &stop).await;
    wait_for("writes before the merge", DEFAULT_DEADLINE, || written(&outcomes, 100)).await;

    let meta_leader = c.wait_leader(0).await;
    let victim = (1..=3).find(|n| *n != meta_leader).expect("a node that does not lead the meta shard");
    admin.merge_shard(SHARD_G_N).await.expect("merge recorded");
    wait_for("the merge frozen in the map", DEFAULT_DEADLINE, || async {
        let map = admin.refresh_shard_map().await.ok()?;
        map.shard(SHARD_G_N)?.merge_frozen.then_some(())
    })
    .await;
    c.pause(victim);
    let start = Instant::now();
    let shard = admin.wait_for_merge(SHARD_G_N, MERGE_DEADLINE).await.expect("the merge ends");
    let given_up = start.elapsed();
    assert_eq!(shard.end, b"n", "given up, not merged: {shard:?}");
    let map = admin.refresh_shard_map().await.unwrap();
    assert!(map.shard(SHARD_N_U).is_some_and(|r| r.start == b"n" && r.end == b"u"), "{map:?}");
    eprintln!("merge given up {given_up:?} after node {victim} was paused");
    assert!(decisions(&c, "merge_given_up").await >= 1.0, "the give-up is counted");
    // The right shard serves again with one replica still paused.
    let put =
        wait_for("a write to the right shard", DEFAULT_DEADLINE, || async { admin.put("q-unfrozen", "v").await.ok() })
            .await;
    assert_eq!(put.shard_id, SHARD_N_U);
    outcomes.lock().await.insert("q-unfrozen".into(), Some("v".into()));
    assert!(admin.get("q-unfrozen").await.expect("a read").is_some());

    c.resume(victim);
    wait_for("node back", DEFAULT_DEADLINE, || async { c.status(victim).await }).await;
    admin.merge_shard(SHARD_G_N).await.expect("merge recorded again");
    let merged = admin.wait_for_merge(SHARD_G_N, MERGE_DEADLINE).await.expect("merge done");
    assert_eq!(merged.end, b"u", "{merged:?}");

    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    let (acked, total) = check_outcomes(&c.client().await, &outcomes).await;
    eprintln!("{acked} of {total} writes acknowledged, every one found");
    c.kill_all();
}

/// A shard split by its load (`--split-load-entries-per-s`) is merged back
/// on its own once both halves are cold (and small: under the default
/// `merge_size_bytes`); the initial split points are never merged away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cold_halves_of_a_load_split_merge_back_on_their_own() {
    let options = ClusterOptions {
        extra_args: vec!["--split-load-entries-per-s=15".into(), "--split-size-bytes=0".into()],
        metrics: true,
        ..ClusterOptions::default()
    };
    let mut c = TestCluster::start(env!("CARGO_BIN_EXE_geokv-node"), options);
    c.wait_all_leaders().await;
    let admin = c.client().await;
    let outcomes: Outcomes = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for prefix in ["h", "j", "l"] {
        writers.push(tokio::spawn(write_keys(c.client().await, prefix, outcomes.clone(), stop.clone())));
    }
    let split = wait_for("shard [g, n) split by its load", Duration::from_secs(120), || async {
        let map = admin.refresh_shard_map().await.ok()?;
        (map.shard(SHARD_G_N)?.end != b"n").then_some(map)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    let right = split.shard_for_key(&split.shard(SHARD_G_N).unwrap().end).unwrap().shard_id;
    let start = Instant::now();
    let merged = wait_for("the cold halves merged back", Duration::from_secs(120), || async {
        let map = admin.refresh_shard_map().await.ok()?;
        (map.shard(SHARD_G_N)?.end == b"n" && map.shard(right).is_none()).then_some(map)
    })
    .await;
    eprintln!("split off shard {right}; merged back {:?} after the load stopped", start.elapsed());
    let starts: Vec<&[u8]> = merged.shards.iter().map(|s| s.start.as_slice()).collect();
    assert_eq!(starts, [&b""[..], b"g", b"n", b"u"], "the initial split points stay");
    // Both decisions were counted where they were made (the meta leader).
    for kind in ["split", "merge"] {
        let counted = decisions(&c, kind).await;
        assert!(counted >= 1.0, "geokv_topology_decisions_total{{kind=\"{kind}\"}} is {counted}");
    }
    // ... and `kvctl status` shows them (NodeStatus.topology_decisions).
    let status = admin.cluster_status().await.expect("cluster status");
    let shown: u64 = status
        .nodes
        .iter()
        .filter_map(|r| r.status.as_ref().ok())
        .flat_map(|s| s.topology_decisions.iter())
        .filter(|(kind, _)| kind == "merge")
        .map(|(_, n)| n)
        .sum();
    assert!(shown >= 1, "{status:?}");
    let (acked, total) = check_outcomes(&c.client().await, &outcomes).await;
    eprintln!("{acked} of {total} writes acknowledged, every one found");
    c.kill_all();
}
