//! Moving a Raft shard's replica between real `geokv` processes (4 nodes in 3
//! regions, every shard on 3 of them), while clients write.
//!
//! Shown here: the new replica is a learner until it has caught up, so the
//! shard tolerates a failure at every step (a voter killed while the new
//! replica cannot catch up leaves the shard writable, which a voter added
//! before catching up would not); the move then completes by joint
//! consensus with that voter still down; no acknowledged write is lost or
//! duplicated; the new replica serves the data it was sent; the old one
//! deletes its copy; a move whose new replica dies as a learner is given up
//! once that node is marked down; and bad move requests change nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use geokv_client::{Client, ClientConfig, Error, NodeState};
use geokv_proto::kv::{Consistency, GetRequest, RequestHeader};
use geokv_tests::{ClusterOptions, DEFAULT_DEADLINE, Outcomes, TestCluster, put_and_record, wait_for};

/// Every writer stops after this many writes or this long.
const WRITES_PER_WRITER: usize = 300;
const WRITE_TIME_LIMIT: Duration = Duration::from_secs(60);

fn options() -> ClusterOptions {
    ClusterOptions { nodes: 4, ..ClusterOptions::default() }
}

/// Writes keys `a<writer>-<i>` (shard 1, [ "", g)) until told to stop.
async fn write_keys(client: Client, writer: usize, outcomes: Outcomes, stop: Arc<std::sync::atomic::AtomicBool>) {
    let started = Instant::now();
    for i in 0..WRITES_PER_WRITER {
        if started.elapsed() > WRITE_TIME_LIMIT || stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        let key = format!("a{writer}-{i:04}");
        let value = format!("v{writer}-{i}");
        put_and_record(&client, key, value, &outcomes).await;
    }
}

/// Node `node`'s own copy of `key`, read locally (stale: no leader involved).
async fn local_value(c: &TestCluster, node: u64, shard: u64, key: &str) -> Result<Option<Vec<u8>>, tonic::Status> {
    let request = GetRequest {
        header: Some(RequestHeader { shard_id: shard, epoch: 0 }),
        key: key.as_bytes().to_vec(),
        consistency: Consistency::Stale as i32,
        max_staleness_ms: 0,
    };
    let reply = c.kv(node).await.get(request).await?.into_inner();
    Ok(reply.kv.map(|kv| kv.value))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_keeps_fault_tolerance_and_every_write() {
    let mut c = TestCluster::start(env!("CARGO_BIN_EXE_geokv-node"), options());
    c.wait_all_leaders().await;
    let admin = c.client().await;
    let map = admin.refresh_shard_map().await.unwrap();
    let shard = map.shard_for_key(b"a").expect("a shard for a").clone();
    let replicas: Vec<u64> = shard.replicas.iter().map(|r| r.node_id).collect();
    let to = (1..=4).find(|n| !replicas.contains(n)).expect("a node without a replica");
    let (from, staying) = (replicas[2], replicas[1]);

    let outcomes: Outcomes = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for writer in 0..2 {
        writers.push(tokio::spawn(write_keys(c.client().await, writer, outcomes.clone(), stop.clone())));
    }
    let written = |n: usize| {
        let outcomes = outcomes.clone();
        async move { (outcomes.lock().await.len() >= n).then_some(()) }
    };
    wait_for("writes before the move", DEFAULT_DEADLINE, || written(60)).await;

    // The move is recorded, and its target stops answering before the
    // shard's leader (whose first look is up to half a second later) can
    // have sent it anything: it cannot catch up.
    let moved = admin.move_replica(shard.shard_id, from, to).await.expect("move recorded");
    c.pause(to);
    assert!(moved.created);
    let now = admin.refresh_shard_map().await.unwrap();
    let recorded = now.shard(shard.shard_id).unwrap();
    assert_eq!((recorded.removing_node, recorded.adding_node), (Some(from), Some(to)), "{recorded:?}");
    // A second change of the same shard waits for this one.
    let other = (1..=4).find(|n| *n != to && !replicas.contains(n));
    let err = admin.move_replica(shard.shard_id, replicas[0], other.unwrap_or(to)).await.unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(_)), "{err}");

    // With the learner stuck, one voter dies: the other two are a majority
    // of the voters, which are still the old three. (Had the new replica been
    // made a voter at once, two of four would be no quorum.)
    c.kill(staying);
    let probe = c.client().await;
    let start = Instant::now();
    probe.put("a-probe", "while the new replica is stuck").await.expect("the shard stays writable");
    let writable_after = start.elapsed();
    let leader = c.wait_leader(shard.shard_id).await;
    let group = c.group_statuses(shard.shard_id).await.remove(&leader).expect("leader status");
    let mut voters = group.voters.clone();
    voters.sort();
    let mut old = replicas.clone();
    old.sort();
    assert_eq!(voters, old, "the new replica is not a voter before it has caught up");

    // The learner comes back: it gets a snapshot and the log, and the move
    // completes by joint consensus although a voter is still down.
    c.resume(to);
    wait_for("writes during the move", DEFAULT_DEADLINE, || written(300)).await;
    let done = admin.wait_for_replica_change(shard.shard_id, DEFAULT_DEADLINE).await.expect("move done");
    let mut now_replicas: Vec<u64> = done.replicas.iter().map(|r| r.node_id).collect();
    now_replicas.sort();
    let mut expected: Vec<u64> = replicas.iter().copied().filter(|r| *r != from).chain([to]).collect();
    expected.sort();
    assert_eq!(now_replicas, expected);
    assert!(done.epoch > shard.epoch, "a new epoch: {} after {}", done.epoch, shard.epoch);
    c.restart(staying);

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }

    // The old replica deleted its copy; the new one holds the data.
    wait_for(&format!("node {from} to drop shard {}", shard.shard_id), DEFAULT_DEADLINE, || async {
        let status = c.status(from).await?;
        (!status.groups.iter().any(|g| g.shard_id == shard.shard_id)).then_some(())
    })
    .await;
    let err = local_value(&c, from, shard.shard_id, "a-probe").await.unwrap_err();
    assert_ne!(err.code(), tonic::Code::Ok);

    // Every acknowledged write is there, once; nothing appears that was
    // never written.
    let scan = c.client().await;
    let kvs = wait_for("a full scan", DEFAULT_DEADLINE, || async { scan.scan(.."g").collect().await.ok() }).await;
    let stored: BTreeMap<String, String> =
        kvs.into_iter().map(|kv| (String::from_utf8(kv.key).unwrap(), String::from_utf8(kv.value).unwrap())).collect();
    let outcomes = outcomes.lock().await;
    let mut acked = 0;
    for (key, outcome) in outcomes.iter() {
        match outcome {
            Some(value) => {
                acked += 1;
                assert_eq!(stored.get(key), Some(value), "acknowledged write of {key} lost");
            }
            None => {
                if let Some(v) = stored.get(key) {
                    assert!(v.starts_with('v'), "unknown write of {key} stored as {v}");
                }
            }
        }
    }
    for key in stored.keys() {
        assert!(key == "a-probe" || outcomes.contains_key(key), "{key} was never written");
    }
    assert!(acked >= outcomes.len() / 2, "only {acked} of {} writes acknowledged", outcomes.len());

    // The new replica serves what it was sent: its own copy of every
    // acknowledged key, once it has applied the leader's commit index.
    let leader = c.wait_leader(shard.shard_id).await;
    let commit = c.group_statuses(shard.shard_id).await[&leader].committed_index;
    c.wait_applied(to, shard.shard_id, commit).await;
    for (key, value) in outcomes.iter().filter_map(|(k, v)| v.as_ref().map(|v| (k, v))) {
        let local = local_value(&c, to, shard.shard_id, key).await.expect("a local read on the new replica");
        assert_eq!(local.as_deref(), Some(value.as_bytes()), "node {to}'s copy of {key}");
    }
    eprintln!(
        "moved shard {} from {from} to {to}: {acked} of {} writes acknowledged; writable {writable_after:?} after a \
         voter died with the learner stuck",
        shard.shard_id,
        outcomes.len()
    );
}

/// The negative control of the test above: with the harness's unsafe switch
/// a learner is made a voter before it has caught up, and the same fault
/// (the new replica stuck, one voter of the old set dead) now leaves the
/// shard without a quorum until the new replica comes back. This is what
/// the learner step buys; if this test ever passes without the switch doing
/// anything, the first one shows nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_added_before_catching_up_costs_a_quorum() {
    let switch = (geokv_server::topology::UNSAFE_PROMOTE_AT_ONCE.to_string(), "1".to_string());
    let mut c = TestCluster::start(env!("CARGO_BIN_EXE_geokv-node"), ClusterOptions { env: vec![switch], ..options() });
    c.wait_all_leaders().await;
    let admin = c.client().await;
    admin.put("a-before", "1").await.expect("a write before the move");
    let shard = admin.refresh_shard_map().await.unwrap().shard_for_key(b"a").expect("a shard for a").clone();
    let replicas: Vec<u64> = shard.replicas.iter().map(|r| r.node_id).collect();
    let to = (1..=4).find(|n| !replicas.contains(n)).expect("a node without a replica");
    let from = replicas[2];

    admin.move_replica(shard.shard_id, from, to).await.expect("move recorded");
    c.pause(to);
    // The stuck replica becomes a voter anyway.
    let leader =
        wait_for(&format!("node {to} to be a voter of shard {}", shard.shard_id), DEFAULT_DEADLINE, || async {
            let groups = c.group_statuses(shard.shard_id).await;
            groups.iter().find(|(_, g)| g.role == "leader" && g.voters.contains(&to)).map(|(id, _)| *id)
        })
        .await;

    // A staying voter that does not lead dies. (The leader is kept: it made
    // the change and sends the stuck voter a snapshot once it is back; a new
    // leader elected from an unpurged log could not, and this test is about
    // the quorum, not that.)
    let staying = replicas.iter().copied().find(|r| *r != from && *r != leader).expect("a staying follower");
    c.kill(staying);
    let mut short = ClientConfig::new(c.endpoints());
    short.deadline = Duration::from_secs(8);
    let probe = short.connect().await.expect("connect");
    let stalled = probe.put("a-probe", "while the new voter is stuck").await;
    assert!(stalled.is_err(), "with a voter that never caught up and another dead, no quorum: {stalled:?}");

    // The stuck voter comes back: it catches up and the quorum with it.
    c.resume(to);
    let later = c.client().await;
    wait_for("writable once the new voter is back", DEFAULT_DEADLINE, || async {
        later.put("a-after", "1").await.ok()
    })
    .await;
    eprintln!(
        "node {to} made a voter of shard {} before catching up: writes stalled while it was stuck",
        shard.shard_id
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_moves_are_refused_and_change_nothing() {
    let mut c = TestCluster::start(env!("CARGO_BIN_EXE_geokv-node"), options());
    c.wait_all_leaders().await;
    let admin = c.client().await;
    let before = admin.refresh_shard_map().await.unwrap();
    let shard = before.shard_for_key(b"a").unwrap().clone();
    let replicas: Vec<u64> = shard.replicas.iter().map(|r| r.node_id).collect();
    let outside = (1..=4).find(|n| !replicas.contains(n)).unwrap();
    let id = shard.shard_id;

    let cases: Vec<(u64, u64, u64, &str)> = vec![
        (99, replicas[0], outside, "no shard 99"),
        (id, replicas[0], 9, "no node 9"),
        (id, replicas[0], replicas[0], "nothing to move"),
        (id, outside, replicas[0], "holds no replica"),
        (id, replicas[0], replicas[1], "already holds a replica"),
    ];
    for (shard_id, from, to, why) in cases {
        let err = admin.move_replica(shard_id, from, to).await.unwrap_err();
        assert!(
            matches!(err, Error::NotFound(_) | Error::InvalidArgument(_) | Error::FailedPrecondition(_)),
            "{shard_id} {from}->{to}: {err}"
        );
        assert!(err.to_string().contains(why), "{shard_id} {from}->{to}: {err}");
    }
    // A target that does not answer would hold the shard's changes up.
    c.kill(outside);
    let err = admin.move_replica(id, replicas[0], outside).await.unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(_)) && err.to_string().contains("does not answer"), "{err}");
    assert_eq!(admin.refresh_shard_map().await.unwrap(), before, "refused moves change nothing");
}

/// A move whose new replica goes down while still a learner would hold up
/// every change of its shard until that node came back. Once the node is
/// marked down (`--node-dead-after-ms`), the shard's leader takes the
/// learner out of the group and the map drops the change; the shard's
/// replicas never changed, and a new move can start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_to_a_node_that_dies_as_a_learner_is_given_up() {
    let dead_after = ["--node-dead-after-ms=3000".to_string()];
    let mut c = TestCluster::start(
        env!("CARGO_BIN_EXE_geokv-node"),
        ClusterOptions { extra_args: dead_after.to_vec(), ..options() },
    );
    c.wait_all_leaders().await;
    let admin = c.client().await;
    let before = admin.refresh_shard_map().await.unwrap();
    let shard = before.shard_for_key(b"a").unwrap().clone();
    let replicas: Vec<u64> = shard.replicas.iter().map(|r| r.node_id).collect();
    let target = (1..=4).find(|n| !replicas.contains(n)).unwrap();
    let id = shard.shard_id;
    // Enough data that the learner's snapshot takes a while.
    let value = "x".repeat(1_000);
    for i in 0..300 {
        admin.put(format!("a{i:04}"), value.as_str()).await.expect("put");
    }

    admin.move_replica(id, replicas[0], target).await.expect("move recorded");
    c.pause(target);
    let given_up = wait_for("the move given up", Duration::from_secs(60), || async {
        let map = admin.refresh_shard_map().await.ok()?;
        let s = map.shard(id)?.clone();
        (!s.is_changing()).then_some((s, map))
    })
    .await;
    let (after, map) = given_up;
    let now: Vec<u64> = after.replicas.iter().map(|r| r.node_id).collect();
    assert_eq!(now, replicas, "the shard's replicas never changed");
    assert_eq!(map.node(target).map(|n| n.state), Some(NodeState::Down));
    assert!(logs_say(&c, "replica change given up"), "{}", c.logs_tail(30));
    admin.put("a-after", "given up").await.expect("the shard takes writes");

    // Back: up again, holding nothing of the shard; a new move runs.
    c.resume(target);
    wait_for("the target up again", DEFAULT_DEADLINE, || async {
        let map = admin.refresh_shard_map().await.ok()?;
        (map.node(target)?.state == NodeState::Up).then_some(())
    })
    .await;
    wait_for("the learner's copy deleted", DEFAULT_DEADLINE, || async {
        let status = c.status(target).await?;
        status.groups.iter().all(|g| g.shard_id != id).then_some(())
    })
    .await;
    admin.move_replica(id, replicas[0], target).await.expect("a new move");
    let moved = admin.wait_for_replica_change(id, Duration::from_secs(60)).await.expect("it completes");
    assert!(moved.replicas.iter().any(|r| r.node_id == target), "{moved:?}");
    assert_eq!(admin.get("a0299").await.unwrap().map(|r| r.value.len()), Some(1_000));
}

fn logs_say(c: &TestCluster, what: &str) -> bool {
    c.nodes.iter().any(|n| c.log(n.id).contains(what))
}

/// An operator cancels a move while its new replica is a learner (its node
/// paused, so it cannot catch up): the map drops the move, the shard keeps
/// its replicas and epoch and takes writes, the learner is taken out of the
/// group, and the target deletes its partial copy once it runs again. A
/// repeat finds nothing to cancel; a move that completed cannot be
/// cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_can_be_cancelled_while_its_new_replica_is_a_learner() {
    let mut c = TestCluster::start(env!("CARGO_BIN_EXE_geokv-node"), options());
    c.wait_all_leaders().await;
    let admin = c.client().await;
    let map = admin.refresh_shard_map().await.unwrap();
    let shard = map.shard_for_key(b"a").expect("a shard for a").clone();
    let id = shard.shard_id;
    let replicas: Vec<u64> = shard.replicas.iter().map(|r| r.node_id).collect();
    let to = (1..=4).find(|n| !replicas.contains(n)).expect("a node without a replica");
    let from = replicas[0];
    admin.put("a-before", "the cancel").await.expect("put");

    assert!(admin.move_replica(id, from, to).await.expect("move recorded").created);
    c.pause(to);
    wait_for(&format!("node {to} added as a learner"), DEFAULT_DEADLINE, || async {
        let leader = c.wait_leader(id).await;
        let group = c.group_statuses(id).await.remove(&leader)?;
        group.learners.contains(&to).then_some(())
    })
    .await;
    let cancelled = admin.cancel_move(id, from, to).await.expect("cancelled");
    assert!(cancelled.created);
    let now = admin.refresh_shard_map().await.unwrap();
    let after = now.shard(id).unwrap();
    assert!(!after.is_changing(), "{after:?}");
    assert_eq!(after.replicas.iter().map(|r| r.node_id).collect::<Vec<_>>(), replicas);
    assert_eq!(after.epoch, shard.epoch, "nothing was made: same epoch");
    let leader = c.wait_leader(id).await;
    let group = c.group_statuses(id).await.remove(&leader).expect("leader status");
    assert!(!group.learners.contains(&to) && !group.voters.contains(&to), "{group:?}");
    admin.put("a-after", "the cancel").await.expect("the shard takes writes");
    assert!(!admin.cancel_move(id, from, to).await.expect("a repeat").created, "nothing left to cancel");

    c.resume(to);
    wait_for(&format!("node {to} to drop its partial copy"), DEFAULT_DEADLINE, || async {
        let status = c.status(to).await?;
        (!status.groups.iter().any(|g| g.shard_id == id)).then_some(())
    })
    .await;

    // A move that completed is past cancelling.
    admin.move_replica(id, from, to).await.expect("move recorded");
    admin.wait_for_replica_change(id, DEFAULT_DEADLINE).await.expect("move done");
    let err = admin.cancel_move(id, from, to).await.unwrap_err();
    assert!(matches!(&err, Error::FailedPrecondition(m) if m.contains("is done")), "{err}");
    assert_eq!(admin.get("a-before").await.expect("get").map(|r| r.value), Some(b"the cancel".to_vec()));
}
