//! Integration tests against real `geokv` processes.
//!
//! Each test starts its own 3-node cluster (regions us-east, us-west, eu-west)
//! on loopback with split points g, n, u: data shards 1 = [.., g),
//! 2 = [g, n), 3 = [n, u), 4 = [u, ..), plus the meta shard 0.

use std::collections::BTreeMap;
use std::time::Duration;

use geokv_proto::kv::kv_client::KvClient;
use geokv_proto::kv::{
    self as pb, BatchRequest, CasRequest, Consistency, Expectation, GetRequest, PutRequest, ScanRequest, WriteSession,
    expectation,
};
use geokv_tests::{ClusterOptions, DEFAULT_DEADLINE, TestCluster, rss_bytes, wait_for};
use tonic::Code;

/// Data shard owning keys starting with `h` (see the module doc).
const SHARD_H: u64 = 2;

/// Starts a cluster of this package's `geokv-node` binary.
fn start(opts: ClusterOptions) -> TestCluster {
    TestCluster::start(env!("CARGO_BIN_EXE_geokv-node"), opts)
}

fn put_req(key: &str, value: &str) -> PutRequest {
    PutRequest { header: None, session: None, key: key.into(), value: value.into() }
}

fn get_req(key: &str, consistency: Consistency) -> GetRequest {
    GetRequest { header: None, key: key.into(), consistency: consistency as i32, max_staleness_ms: 0 }
}

/// Writes through the leader of `shard`, re-finding it while leadership moves.
async fn put_via_leader(c: &TestCluster, shard: u64, key: &str, value: &str) -> u64 {
    wait_for(&format!("put {key}"), DEFAULT_DEADLINE, || async {
        let leader = c.wait_leader(shard).await;
        let mut kv = c.kv(leader).await;
        kv.put(put_req(key, value)).await.ok().map(|r| r.into_inner().version)
    })
    .await
}

async fn stale_get(c: &TestCluster, node: u64, key: &str) -> Option<Vec<u8>> {
    let mut kv = c.kv(node).await;
    let resp = kv.get(get_req(key, Consistency::Stale)).await.expect("stale read").into_inner();
    let read = resp.read.expect("read info");
    assert_eq!(read.node_id, node, "a stale read is served by the node asked");
    assert_eq!(read.served, Consistency::Stale as i32);
    resp.kv.map(|kv| kv.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_leader_kill_restart_and_full_restart() {
    let mut c = start(ClusterOptions::default());
    c.wait_all_leaders().await;
    let mut acked: BTreeMap<String, String> = BTreeMap::new();

    // Writes through every node (each client knows only one endpoint and is
    // routed by the shard map and leader hints), across every shard.
    for node in &c.nodes {
        let client = geokv_client::Client::connect([node.addr.clone()]).await.expect("connect");
        for prefix in ["a", "h", "p", "x"] {
            for i in 0..5 {
                let key = format!("{prefix}-{}-{i}", node.id);
                let value = format!("v{i}-via-{}", node.id);
                client.put(key.as_bytes(), value.as_bytes()).await.expect("put");
                acked.insert(key, value);
            }
        }
    }
    let client = geokv_client::Client::connect(c.endpoints()).await.expect("connect");
    for (k, v) in &acked {
        let got = client.get(k.as_bytes()).await.expect("get").expect("present");
        assert_eq!(got.value, v.as_bytes(), "key {k}");
    }

    // kill -9 the leader of shard 2: another node takes over, writes go on.
    let old_leader = c.wait_leader(SHARD_H).await;
    c.kill(old_leader);
    let new_leader = c.wait_leader(SHARD_H).await;
    assert_ne!(new_leader, old_leader);
    for i in 0..10 {
        for prefix in ["a", "h", "p", "x"] {
            let key = format!("{prefix}-after-kill-{i}");
            client.put(key.as_bytes(), b"later").await.expect("put after failover");
            acked.insert(key, "later".into());
        }
    }

    // The killed node restarts, catches up, and serves what it missed.
    c.restart(old_leader);
    c.wait_all_leaders().await;
    for shard in 1..=4 {
        let leader = c.wait_leader(shard).await;
        let committed = c.group_statuses(shard).await[&leader].committed_index;
        c.wait_applied(old_leader, shard, committed).await;
    }
    for (k, v) in &acked {
        assert_eq!(stale_get(&c, old_leader, k).await.as_deref(), Some(v.as_bytes()), "restarted node, key {k}");
    }

    // Crash every node at once, restart: every acknowledged write is there.
    c.kill_all();
    for id in 1..=3 {
        c.restart(id);
    }
    c.wait_all_leaders().await;
    let client = geokv_client::Client::connect(c.endpoints()).await.expect("connect");
    for (k, v) in &acked {
        let got = client.get(k.as_bytes()).await.expect("get after full restart").expect("present");
        assert_eq!(got.value, v.as_bytes(), "after full restart, key {k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_replica_is_restored_by_snapshot_after_log_purge() {
    let opts = ClusterOptions { snapshot_every_entries: 20, logs_kept_after_snapshot: 0, ..ClusterOptions::default() };
    let mut c = start(opts);
    c.wait_all_leaders().await;
    let leader = c.wait_leader(SHARD_H).await;
    let lagging = c.nodes.iter().map(|n| n.id).find(|id| *id != leader).expect("a follower");
    let lagging_last = c.group_statuses(SHARD_H).await[&lagging].last_log_index;
    c.kill(lagging);

    // 120 values of 64 KiB: the snapshot travels in several ~1 MiB chunks.
    let value = |i: usize| format!("value-{i:03}-").repeat(64 * 1024 / 10);
    let mut written = Vec::new();
    for i in 0..120 {
        let key = format!("h-snap-{i:03}");
        put_via_leader(&c, SHARD_H, &key, &value(i)).await;
        written.push(key);
    }
    // The log the lagging node would need is gone from the leader.
    let leader = c.wait_leader(SHARD_H).await;
    wait_for("the leader to purge its log past the lagging node", DEFAULT_DEADLINE, || async {
        let g = c.group_statuses(SHARD_H).await.remove(&leader)?;
        (g.purged_index > lagging_last + 20).then_some(())
    })
    .await;

    c.restart(lagging);
    let committed = c.group_statuses(SHARD_H).await[&leader].committed_index;
    let status = c.wait_applied(lagging, SHARD_H, committed).await;
    assert!(
        status.snapshot_index > lagging_last,
        "node {lagging} caught up through a snapshot (snapshot index {}, its log ended at {lagging_last})",
        status.snapshot_index
    );
    for (i, key) in written.iter().enumerate() {
        let expected = value(i);
        assert_eq!(stale_get(&c, lagging, key).await.as_deref(), Some(expected.as_bytes()), "key {key}");
    }
}

/// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`: the peak).
fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("{field} in /proc status"));
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("a number of kB")
}

/// A measurement more than a test (`--run-ignored only`): a follower that
/// missed 192 MiB of one shard catches up by snapshot, and neither the
/// sender's nor the receiver's memory grows with the shard. The peak RSS
/// of both is printed; the bound asserted is a third of the data, which the
/// whole-shard snapshots of earlier versions (two copies in memory on each
/// side) broke by far.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a memory measurement: writes 192 MiB"]
async fn a_large_snapshot_moves_in_bounded_memory() {
    const VALUES: usize = 384;
    const VALUE_BYTES: usize = 512 * 1024;
    let opts = ClusterOptions { snapshot_every_entries: 64, logs_kept_after_snapshot: 0, ..ClusterOptions::default() };
    let mut c = start(opts);
    c.wait_all_leaders().await;
    let leader = c.wait_leader(SHARD_H).await;
    let lagging = c.nodes.iter().map(|n| n.id).find(|id| *id != leader).expect("a follower");
    let lagging_last = c.group_statuses(SHARD_H).await[&lagging].last_log_index;
    c.kill(lagging);
    let value = |i: usize| format!("{i:07}").repeat(VALUE_BYTES / 7);
    for i in 0..VALUES {
        put_via_leader(&c, SHARD_H, &format!("h-big-{i:04}"), &value(i)).await;
    }
    let leader = c.wait_leader(SHARD_H).await;
    wait_for("the leader to purge its log past the lagging node", DEFAULT_DEADLINE, || async {
        let g = c.group_statuses(SHARD_H).await.remove(&leader)?;
        (g.purged_index > lagging_last + 64).then_some(())
    })
    .await;
    let leader_pid = c.node(leader).pid().expect("leader runs");
    let before = proc_kib(leader_pid, "VmRSS");
    // Reset the leader's peak, so that it shows the send alone.
    std::fs::write(format!("/proc/{leader_pid}/clear_refs"), "5").expect("reset VmHWM");

    c.restart(lagging);
    let committed = c.group_statuses(SHARD_H).await[&leader].committed_index;
    let status = c.wait_applied(lagging, SHARD_H, committed).await;
    assert!(status.snapshot_index > lagging_last, "caught up through a snapshot");
    let leader_peak = proc_kib(leader_pid, "VmHWM");
    let follower_peak = proc_kib(c.node(lagging).pid().expect("follower runs"), "VmHWM");
    let data_kib = (VALUES * VALUE_BYTES / 1024) as u64;
    eprintln!(
        "snapshot of {} MiB: leader RSS {} MiB before, peak {} MiB while sending (+{} MiB); follower peak {} MiB",
        data_kib / 1024,
        before / 1024,
        leader_peak / 1024,
        leader_peak.saturating_sub(before) / 1024,
        follower_peak / 1024
    );
    assert!(leader_peak.saturating_sub(before) < data_kib / 3, "the sender's memory grew with the shard");
    assert!(follower_peak < data_kib / 3 * 2, "the receiver's memory grew with the shard");
    for i in [0, VALUES / 2, VALUES - 1] {
        let key = format!("h-big-{i:04}");
        assert_eq!(stale_get(&c, lagging, &key).await.as_deref(), Some(value(i).as_bytes()), "key {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_write_is_applied_once() {
    let mut c = start(ClusterOptions::default());
    c.wait_all_leaders().await;
    let key = "h-exactly-once";
    let session = |sequence, first_incomplete| Some(WriteSession { client_id: 77, sequence, first_incomplete });
    // "Create if absent": applying it twice would find the key present and fail.
    let create = |sequence| BatchRequest {
        header: None,
        session: session(sequence, 1),
        conditions: vec![pb::Condition {
            key: key.into(),
            expected: Some(Expectation { expect: Some(expectation::Expect::Absent(true)) }),
        }],
        ops: vec![pb::BatchOp {
            op: Some(pb::batch_op::Op::Put(pb::batch_op::Put { key: key.into(), value: b"first".to_vec() })),
        }],
    };
    let leader = c.wait_leader(SHARD_H).await;
    let mut kv = c.kv(leader).await;
    let first = kv.batch(create(1)).await.expect("first attempt").into_inner();
    assert!(first.applied);
    let retry = kv.batch(create(1)).await.expect("retry").into_inner();
    assert_eq!((retry.applied, retry.version), (true, first.version), "the retry returns the first result");
    let fresh = kv.batch(create(2)).await.expect("a new write").into_inner();
    assert!(!fresh.applied, "a new sequence is a new write: the key exists now");

    // The session lives in the replicated state machine: a new leader answers
    // the retry the same way.
    c.kill(leader);
    let new_leader = c.wait_leader(SHARD_H).await;
    let mut kv = c.kv(new_leader).await;
    let retry = wait_for("the retry at the new leader", DEFAULT_DEADLINE, || {
        let mut kv = kv.clone();
        async move { kv.batch(create(1)).await.ok().map(|r| r.into_inner()) }
    })
    .await;
    assert_eq!((retry.applied, retry.version), (true, first.version));
    let got = kv.get(get_req(key, Consistency::Linearizable)).await.expect("get").into_inner().kv.expect("present");
    assert_eq!((got.value.as_slice(), got.version), (&b"first"[..], first.version));

    // Results below first_incomplete are forgotten: their retry is refused as
    // unknown, never re-applied.
    let put = |sequence, first_incomplete| PutRequest {
        session: session(sequence, first_incomplete),
        ..put_req(key, "later")
    };
    kv.put(put(5, 5)).await.expect("put seq 5");
    let err = kv.put(put(3, 5)).await.expect_err("seq 3 is below first_incomplete");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("session"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_cross_shards_in_key_order_with_paging() {
    let c = start(ClusterOptions::default());
    c.wait_all_leaders().await;
    let client = geokv_client::Client::connect(c.endpoints()).await.expect("connect");
    let mut expected = Vec::new();
    for first in b'a'..=b'z' {
        for i in 0..4 {
            let key = format!("{}{i:02}", first as char);
            client.put(key.as_bytes(), key.as_bytes()).await.expect("put");
            expected.push(key);
        }
    }
    expected.sort();

    // Through the client: the whole key space, every shard, in order.
    let all = client.scan(..).await.expect("scan");
    let keys: Vec<String> = all.iter().map(|kv| String::from_utf8(kv.key.clone()).unwrap()).collect();
    assert_eq!(keys, expected);
    let some = client.scan(b"f".to_vec()..b"p".to_vec()).limit(10).await.expect("bounded scan");
    let keys: Vec<String> = some.iter().map(|kv| String::from_utf8(kv.key.clone()).unwrap()).collect();
    let want: Vec<String> = expected.iter().filter(|k| k.as_str() >= "f").take(10).cloned().collect();
    assert_eq!(keys, want);

    // Raw pages of 7 following resume keys: same result, no gaps, no repeats,
    // each page within one shard.
    let mut pages = 0;
    let mut got = Vec::new();
    let mut start = Vec::new();
    loop {
        let leader = c.wait_leader(shard_of(&start)).await;
        let mut kv = c.kv(leader).await;
        let req = ScanRequest {
            header: None,
            start: start.clone(),
            end: Vec::new(),
            limit: 7,
            consistency: 0,
            max_staleness_ms: 0,
        };
        let page = kv.scan(req).await.expect("scan page").into_inner();
        assert!(page.kvs.len() <= 7);
        got.extend(page.kvs.iter().map(|kv| String::from_utf8(kv.key.clone()).unwrap()));
        pages += 1;
        if !page.more {
            break;
        }
        assert!(page.resume_key > start, "resume key moves forward");
        start = page.resume_key;
    }
    assert_eq!(got, expected);
    assert!(pages >= 104 / 7, "{pages} pages");
}

fn shard_of(key: &[u8]) -> u64 {
    match key.first() {
        None => 1,
        Some(b) if *b < b'g' => 1,
        Some(b) if *b < b'n' => 2,
        Some(b) if *b < b'u' => 3,
        _ => 4,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_precisely_and_nothing_is_half_applied() {
    let c = start(ClusterOptions::default());
    c.wait_all_leaders().await;
    let leader = c.wait_leader(SHARD_H).await;
    let mut kv = c.kv(leader).await;
    let code = |r: Result<tonic::Response<pb::WriteResponse>, tonic::Status>| r.expect_err("must be refused").code();

    assert_eq!(code(kv.put(put_req("", "v")).await), Code::InvalidArgument);
    assert_eq!(code(kv.put(put_req(&"h".repeat(4097), "v")).await), Code::InvalidArgument);
    let big = PutRequest { value: vec![0; 1024 * 1024 + 1], ..put_req("h-big", "") };
    let err = kv.put(big).await.expect_err("oversized value");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("max_value_bytes"), "{}", err.message());

    let inverted = ScanRequest {
        header: None,
        start: b"m".to_vec(),
        end: b"h".to_vec(),
        limit: 0,
        consistency: 0,
        max_staleness_ms: 0,
    };
    assert_eq!(kv.scan(inverted).await.expect_err("inverted").code(), Code::InvalidArgument);

    // A batch across shards is refused whole: neither key is written.
    let put_op = |k: &str| pb::BatchOp {
        op: Some(pb::batch_op::Op::Put(pb::batch_op::Put { key: k.into(), value: b"x".to_vec() })),
    };
    let cross =
        BatchRequest { header: None, session: None, conditions: vec![], ops: vec![put_op("h-one"), put_op("z-two")] };
    let err = kv.batch(cross).await.expect_err("cross-shard batch");
    assert_eq!(err.code(), Code::InvalidArgument);
    let oversized = BatchRequest {
        header: None,
        session: None,
        conditions: vec![],
        ops: (0..200).map(|i| put_op(&format!("h{i}"))).collect(),
    };
    assert_eq!(kv.batch(oversized).await.expect_err("oversized batch").code(), Code::InvalidArgument);
    for k in ["h-one", "z-two", "h-big", "h0"] {
        let leader = c.wait_leader(shard_of(k.as_bytes())).await;
        let got = c.kv(leader).await.get(get_req(k, Consistency::Linearizable)).await.expect("get").into_inner();
        assert!(got.kv.is_none(), "{k} must not exist");
    }

    // Stale routing: a request naming the wrong shard gets the right one back.
    let misrouted = PutRequest { header: Some(pb::RequestHeader { shard_id: 3, epoch: 1 }), ..put_req("h-x", "v") };
    let err = kv.put(misrouted).await.expect_err("wrong shard");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let detail = geokv_proto::details::decode(err.details()).expect("detail");
    match detail.kind {
        Some(pb::error_detail::Kind::WrongShard(w)) => assert_eq!(w.current.expect("current").shard_id, SHARD_H),
        other => panic!("expected WrongShard, got {other:?}"),
    }

    // A follower refuses a write that names its shard (as a client with a
    // router sends it) with a hint naming the leader; one that does not is
    // forwarded to the leader.
    let follower = c.nodes.iter().map(|n| n.id).find(|id| *id != leader).unwrap();
    let routed = PutRequest { header: Some(pb::RequestHeader { shard_id: SHARD_H, epoch: 0 }), ..put_req("h-y", "v") };
    let err = c.kv(follower).await.put(routed).await.expect_err("follower");
    let detail = geokv_proto::details::decode(err.details()).expect("detail");
    match detail.kind {
        Some(pb::error_detail::Kind::NotLeader(n)) => {
            assert_eq!(n.leader_id, leader);
            assert_eq!(n.leader_addr, c.node(leader).addr);
        }
        other => panic!("expected NotLeader, got {other:?}"),
    }
    let forwarded = c.kv(follower).await.put(put_req("h-y", "v")).await.expect("forwarded to the leader");
    assert_eq!(forwarded.into_inner().shard_id, SHARD_H);

    // A CAS whose expectation fails is an answer, not an error.
    kv.put(put_req("h-cas", "one")).await.expect("put");
    let cas = |expected: &str, new: &str| CasRequest {
        header: None,
        session: None,
        key: b"h-cas".to_vec(),
        expected: Some(Expectation { expect: Some(expectation::Expect::Value(expected.into())) }),
        new_value: Some(new.into()),
    };
    let miss = kv.compare_and_swap(cas("zero", "two")).await.expect("cas").into_inner();
    assert!(!miss.swapped);
    assert_eq!(miss.current.expect("current").value, b"one");
    let hit = kv.compare_and_swap(cas("one", "two")).await.expect("cas").into_inner();
    assert!(hit.swapped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_on_request() {
    let c = start(ClusterOptions::default());
    c.wait_all_leaders().await;
    let leader = c.wait_leader(SHARD_H).await;
    let target = c.nodes.iter().map(|n| n.id).find(|id| *id != leader).unwrap();
    let mut admin = geokv_proto::admin::admin_client::AdminClient::connect(format!("http://{}", c.node(leader).addr))
        .await
        .expect("admin");
    let req = geokv_proto::admin::TransferLeaderRequest { shard_id: SHARD_H, to_node: target };
    admin.transfer_leader(req).await.expect("transfer requested");
    wait_for(&format!("node {target} to lead shard {SHARD_H}"), DEFAULT_DEADLINE, || async {
        (c.wait_leader(SHARD_H).await == target).then_some(())
    })
    .await;
    // A node that does not lead the shard refuses, saying so.
    let mut admin = geokv_proto::admin::admin_client::AdminClient::connect(format!("http://{}", c.node(leader).addr))
        .await
        .expect("admin");
    let err = admin
        .transfer_leader(geokv_proto::admin::TransferLeaderRequest { shard_id: SHARD_H, to_node: leader })
        .await
        .expect_err("not the leader any more");
    assert_eq!(err.code(), Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_node_cleanly_while_its_peers_stay_connected() {
    let mut c = start(ClusterOptions::default());
    c.wait_all_leaders().await;
    let leader = c.wait_leader(SHARD_H).await;
    put_via_leader(&c, SHARD_H, "h-before-stop", "v").await;
    // Peers hold replication streams to it; shutdown must not wait on them forever.
    let status = c.terminate(leader, Duration::from_secs(20)).expect("the node exits on SIGTERM within 20 s");
    assert!(status.success(), "clean exit, got {status:?}");
    c.restart(leader);
    c.wait_leader(SHARD_H).await;
    let got = wait_for("a read after restart", DEFAULT_DEADLINE, || async {
        let leader = c.wait_leader(SHARD_H).await;
        c.kv(leader).await.get(get_req("h-before-stop", Consistency::Linearizable)).await.ok()
    })
    .await;
    assert_eq!(got.into_inner().kv.expect("present").value, b"v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_linearizable_reads_share_read_index_rounds() {
    let c = start(ClusterOptions { metrics: true, ..ClusterOptions::default() });
    c.wait_all_leaders().await;
    let leader = c.wait_leader(SHARD_H).await;
    let version = put_via_leader(&c, SHARD_H, "h-read", "v").await;
    let before = c.metrics(leader).await;
    let mut readers = Vec::new();
    for _ in 0..64 {
        let mut kv = c.kv(leader).await;
        readers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..5 {
                let r = kv.get(get_req("h-read", Consistency::Linearizable)).await.expect("read").into_inner();
                let info = r.read.expect("read info");
                assert_eq!((info.served, info.staleness_bound_ms), (Consistency::Linearizable as i32, 0));
                seen.push(r.kv.expect("present").version);
            }
            seen
        }));
    }
    for r in readers {
        assert!(r.await.unwrap().iter().all(|v| *v == version), "every read sees the write");
    }
    let after = c.metrics(leader).await;
    let delta = |name: &str| {
        let now = after.get(name).copied().unwrap_or_else(|| panic!("{name} missing from {after:?}"));
        now - before.get(name).copied().unwrap_or(0.0)
    };
    let (rounds, reads) = (delta("geokv_read_index_rounds_total"), delta("geokv_read_index_reads_total"));
    eprintln!("{reads} concurrent linearizable reads took {rounds} ReadIndex rounds");
    // The node's safe-time pushes also run (single-waiter) rounds meanwhile.
    assert!(reads >= 320.0, "{reads}");
    assert!(rounds < reads / 2.0, "{reads} reads took {rounds} rounds: concurrent reads must share rounds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_and_bounded_reads_say_what_they_served() {
    let c = start(ClusterOptions::default());
    c.wait_all_leaders().await;
    let leader = c.wait_leader(SHARD_H).await;
    let follower = c.nodes.iter().map(|n| n.id).find(|id| *id != leader).unwrap();
    let mut at_follower = c.kv(follower).await;
    let read = |consistency: Consistency, max_staleness_ms: u64| GetRequest {
        max_staleness_ms,
        ..get_req("h-fresh", consistency)
    };

    // FOLLOWER is linearizable: a write acknowledged before the read starts
    // is seen, though the follower serves it.
    for i in 0..20 {
        let version = put_via_leader(&c, SHARD_H, "h-fresh", &format!("v{i}")).await;
        let r = at_follower.get(read(Consistency::Follower, 0)).await.expect("follower read").into_inner();
        let info = r.read.expect("read info");
        assert_eq!((info.served, info.node_id, info.staleness_bound_ms), (Consistency::Follower as i32, follower, 0));
        assert_eq!(r.kv.expect("present").version, version, "follower read {i} saw the latest write");
    }

    // BOUNDED within a generous bound is served locally once safe times
    // arrive, and reports a bound within the one asked for.
    let info = wait_for("a locally served bounded read", DEFAULT_DEADLINE, || {
        let mut kv = at_follower.clone();
        async move {
            let info = kv.get(read(Consistency::Bounded, 5_000)).await.ok()?.into_inner().read?;
            (info.served == Consistency::Bounded as i32).then_some(info)
        }
    })
    .await;
    assert!(!info.fell_back && info.staleness_bound_ms <= 5_000, "{info:?}");
    // A bound no replica can promise (below the clock offset bound) falls
    // back to a follower read, and says so.
    let r = at_follower.get(read(Consistency::Bounded, 1)).await.expect("bounded read").into_inner();
    let info = r.read.expect("read info");
    assert_eq!((info.served, info.fell_back, info.staleness_bound_ms), (Consistency::Follower as i32, true, 0));
    // STALE reports the same kind of finite estimate; BOUNDED needs a bound.
    let info = at_follower.get(read(Consistency::Stale, 0)).await.expect("stale").into_inner().read.unwrap();
    assert!(info.staleness_bound_ms < 60_000, "{info:?}");
    let err = at_follower.get(read(Consistency::Bounded, 0)).await.expect_err("no bound");
    assert_eq!(err.code(), Code::InvalidArgument);

    // LEASE at the leader is served from the lease.
    let info = wait_for("a lease read", DEFAULT_DEADLINE, || async {
        let r = c.kv(leader).await.get(read(Consistency::Lease, 0)).await.ok()?.into_inner();
        let info = r.read?;
        (info.served == Consistency::Lease as i32).then_some(info)
    })
    .await;
    assert_eq!((info.node_id, info.staleness_bound_ms), (leader, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_leader_moves_to_its_preferred_region_and_returns_after_a_restart() {
    let mut c = start(ClusterOptions::default());
    c.wait_all_leaders().await;
    let leader = c.wait_leader(SHARD_H).await;
    // Prefer the region of a node that does not lead shard 2 now.
    let target = c.nodes.iter().map(|n| n.id).find(|id| *id != leader).unwrap();
    let region = geokv_tests::REGIONS[(target as usize - 1) % geokv_tests::REGIONS.len()];
    let client = geokv_client::Client::connect(c.endpoints()).await.expect("connect");
    let err = client.set_leader_region(SHARD_H, Some("atlantis")).await.expect_err("unknown region");
    assert!(matches!(err, geokv_client::Error::InvalidArgument(_)), "{err}");
    client.set_leader_region(SHARD_H, Some(region)).await.expect("set the preferred region");
    wait_until_leader(&c, SHARD_H, target).await;
    let map = client.refresh_shard_map().await.expect("map");
    let shard = map.shards.iter().find(|s| s.shard_id == SHARD_H).unwrap();
    assert_eq!(shard.preferred_leader_region.as_deref(), Some(region));

    // Failover elsewhere, then back once the preferred node has rejoined.
    c.kill(target);
    let interim = c.wait_leader(SHARD_H).await;
    assert_ne!(interim, target);
    c.restart(target);
    wait_until_leader(&c, SHARD_H, target).await;
}

async fn wait_until_leader(c: &TestCluster, shard: u64, want: u64) {
    wait_for(&format!("node {want} to lead shard {shard}"), DEFAULT_DEADLINE, || async {
        (c.wait_leader(shard).await == want).then_some(())
    })
    .await
}

/// Finding: a restarted node used to campaign as soon as its own election
/// timer fired (openraft forgets, on restart, the lease it promised the old
/// leader) and could win with a voter whose lease had run out, while the old
/// leader still served lease reads on that promise. During its quarantine
/// (`election_timeout_max_ms` after start) it must neither vote nor campaign.
///
/// Node 2 leads every group, then all three stop. Node 3 restarts first and
/// outlives its quarantine (it campaigns, but alone cannot win); then node 1
/// restarts. Node 3 would grant node 1 a vote at
/// once, and node 1 refuses node 3's votes while quarantined: so a leader
/// before node 1's quarantine ends could only come from node 1 campaigning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_does_not_campaign_during_its_vote_quarantine() {
    // Election timeouts far below the quarantine: a restarted node whose timer
    // ran would campaign well inside it.
    let quarantine_ms = 6_000;
    let opts = ClusterOptions {
        election_timeout_min_ms: 300,
        election_timeout_max_ms: quarantine_ms,
        ..ClusterOptions::default()
    };
    let mut c = start(opts);
    // Node 2, which stays down, leads everything: openraft restores a
    // restarted *leader* as leader of its old term at once (harmless: no
    // election, no promise broken, no lease before a quorum acknowledges it),
    // which is not what this is about.
    for (shard, leader) in c.wait_all_leaders().await {
        if leader != 2 {
            let addr = c.node(leader).addr.clone();
            let mut admin =
                geokv_proto::admin::admin_client::AdminClient::connect(format!("http://{addr}")).await.expect("admin");
            let req = geokv_proto::admin::TransferLeaderRequest { shard_id: shard, to_node: 2 };
            admin.transfer_leader(req).await.expect("transfer requested");
            wait_until_leader(&c, shard, 2).await;
        }
    }
    for id in [1, 2, 3] {
        c.kill(id);
    }
    c.restart(3);
    wait_for("node 3 past its quarantine", DEFAULT_DEADLINE, || async {
        c.status(3).await.filter(|s| s.uptime_ms > quarantine_ms).map(|_| ())
    })
    .await;
    c.restart(1);
    let node1_uptime_at_first_leader = wait_for("a leader on node 1 or 3", DEFAULT_DEADLINE, || async {
        // Node 3 first: node 1's uptime is then read at or after the moment
        // a leader was seen anywhere.
        let node3 = c.status(3).await;
        let node1 = c.status(1).await?;
        let led = |s: &geokv_proto::admin::NodeStatusResponse| s.groups.iter().any(|g| g.role == "leader");
        (node3.as_ref().is_some_and(led) || led(&node1)).then_some(node1.uptime_ms)
    })
    .await;
    assert!(
        node1_uptime_at_first_leader >= quarantine_ms,
        "a group elected a leader {node1_uptime_at_first_leader} ms after node 1 restarted, inside its \
         {quarantine_ms} ms quarantine: node 1 campaigned\n{}",
        c.logs_tail(40)
    );
}

/// The standard gRPC health service and `/readyz` say SERVING only while a
/// node can serve: here, a node whose meta shard lost its quorum (both
/// peers killed) turns NOT_SERVING with the reason, and SERVING again once
/// they are back; `/healthz` (liveness) answers throughout. Server
/// reflection lists the services for generic tools.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_whether_a_node_can_serve() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let mut c =
        TestCluster::start(env!("CARGO_BIN_EXE_geokv-node"), ClusterOptions { metrics: true, ..Default::default() });
    let addrs: Vec<String> = c.nodes.iter().map(|n| n.addr.clone()).collect();
    let status = |id: u64| {
        let endpoint = format!("http://{}", addrs[id as usize - 1]);
        async move {
            let channel = tonic::transport::Channel::from_shared(endpoint).ok()?.connect().await.ok()?;
            let reply = HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await.ok()?;
            ServingStatus::try_from(reply.into_inner().status).ok()
        }
    };
    for id in 1..=3 {
        wait_for(&format!("node {id} SERVING"), DEFAULT_DEADLINE, || async {
            (status(id).await == Some(ServingStatus::Serving)).then_some(())
        })
        .await;
    }
    assert_eq!(c.http_get(1, "/readyz").await.map(|(s, _)| s), Some("HTTP/1.0 200 OK".into()));

    c.kill(2);
    c.kill(3);
    let endpoint = format!("http://{}", c.node(1).addr);
    let channel = tonic::transport::Channel::from_shared(endpoint).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel.clone());
    wait_for("node 1 NOT_SERVING without a quorum", DEFAULT_DEADLINE, || {
        let mut health = health.clone();
        async move {
            let reply = health.check(HealthCheckRequest { service: "geokv.kv.Kv".into() }).await.ok()?;
            (reply.into_inner().status == ServingStatus::NotServing as i32).then_some(())
        }
    })
    .await;
    let (line, body) = c.http_get(1, "/readyz").await.expect("readyz answers");
    assert!(line.contains("503") && body.contains("knows no leader"), "{line}: {body}");
    assert_eq!(c.http_get(1, "/healthz").await.map(|(s, _)| s), Some("HTTP/1.0 200 OK".into()));
    let raft = health.check(HealthCheckRequest { service: "geokv.raft.Raft".into() }).await.unwrap();
    assert_eq!(raft.into_inner().status, ServingStatus::Serving as i32, "peers must still reach it");

    c.restart(2);
    c.restart(3);
    wait_for("node 1 SERVING again", DEFAULT_DEADLINE, || async {
        (status(1).await == Some(ServingStatus::Serving)).then_some(())
    })
    .await;

    // Reflection: the services, by name, as grpcurl would list them.
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().expect("a reply");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else { panic!("{reply:?}") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["geokv.kv.Kv", "geokv.admin.Admin", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == expected), "{expected} not in {names:?}");
    }
}

/// Finding 9 of the correctness review: a data shard whose state on disk
/// cannot be read stops alone, with a message naming it; the node starts,
/// serves its other shards, and says in its status which group stopped and
/// why. Before, any such shard made the whole node fail to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_whose_state_on_disk_is_corrupt_stops_alone_and_the_node_serves_the_rest() {
    use geokv_server::storage::{MetaFamily, Storage, apply_meta_tag, raft_meta_tag};
    const SHARD_P: u64 = 3;
    let mut c = start(ClusterOptions::default());
    c.wait_all_leaders().await;
    for (shard, key) in [(1, "a-before"), (SHARD_H, "h-before"), (SHARD_P, "p-before")] {
        put_via_leader(&c, shard, key, "1").await;
    }
    // Node 3 holds a replica of every shard. Stopped, one shard's range
    // record (read when its state machine opens) and another's vote (read
    // when its Raft group starts) are overwritten with garbage.
    c.kill(3);
    {
        let storage = Storage::open(&c.node(3).data_dir.join("db")).expect("open node 3's store");
        let mut batch = storage.batch();
        batch.put_meta(MetaFamily::Apply, SHARD_H, apply_meta_tag::RANGE, b"\xff\xff");
        batch.put_meta(MetaFamily::Raft, SHARD_P, raft_meta_tag::VOTE, b"\xff");
        storage.write_relaxed(batch).expect("corrupt");
    }
    c.restart(3);

    // It starts, and its shard 1 replica catches up on writes made since.
    put_via_leader(&c, 1, "a-after", "2").await;
    let leader = c.wait_leader(1).await;
    let committed = c.group_statuses(1).await[&leader].committed_index;
    c.wait_applied(3, 1, committed).await;
    assert_eq!(stale_get(&c, 3, "a-after").await.as_deref(), Some(&b"2"[..]));

    // The two shards stopped on node 3, each with a reason naming it; their
    // other replicas still take writes.
    let status = c.status(3).await.expect("node 3 answers");
    let stopped: BTreeMap<u64, String> =
        status.groups.iter().filter(|g| !g.error.is_empty()).map(|g| (g.shard_id, g.error.clone())).collect();
    assert_eq!(stopped.keys().copied().collect::<Vec<_>>(), vec![SHARD_H, SHARD_P], "{stopped:?}");
    for (shard, why) in &stopped {
        assert!(why.contains(&format!("shard {shard}")), "{why}");
        let group = status.groups.iter().find(|g| g.shard_id == *shard).unwrap();
        assert_eq!(group.role, "shutdown");
    }
    put_via_leader(&c, SHARD_H, "h-after", "2").await;
    put_via_leader(&c, SHARD_P, "p-after", "2").await;
    let log = c.log(3);
    assert!(log.contains("its group is not started here"), "the log says what happened");
}

/// Finding 6 of the correctness review ("fsyncgate"): once a WAL fsync
/// fails, a node acknowledges no further write, refuses new ones as
/// `UNAVAILABLE` before proposing (known not applied), and reports itself
/// not ready; the other replicas carry on, and after a restart on a healthy
/// disk every acknowledged write is there. Before the fix the fsync thread
/// logged the failure and completed later waiters with `Ok`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failed_fsync_a_node_acknowledges_no_write_and_is_not_ready() {
    let mut c = start(ClusterOptions { metrics: true, ..Default::default() });
    // Each node's disk fails once its own trigger file exists.
    let trigger = |c: &TestCluster, id: u64| c.dir().join(format!("fail-fsync-{id}"));
    for id in 1..=3 {
        c.kill(id);
        c.set_node_args(id, vec![format!("--fault-fail-fsync-when-exists={}", trigger(&c, id).display())]);
        c.restart(id);
    }
    c.wait_all_leaders().await;
    put_via_leader(&c, SHARD_H, "h-before", "1").await;
    let leader = c.wait_leader(SHARD_H).await;

    // The disk starts failing under the shard's leader.
    let trigger = trigger(&c, leader);
    std::fs::write(&trigger, b"").unwrap();
    let mut kv = c.kv(leader).await;
    let first = kv.put(put_req("h-during", "2")).await;
    assert!(first.is_err(), "a write whose log fsync failed is not acknowledged: {first:?}");
    let refused = wait_for("writes refused as unavailable", DEFAULT_DEADLINE, || {
        let mut kv = kv.clone();
        async move { kv.put(put_req("h-refused", "3")).await.err().filter(|s| s.code() == Code::Unavailable) }
    })
    .await;
    assert!(refused.message().contains("fsync failed"), "{}", refused.message());
    let (line, body) = c.http_get(leader, "/readyz").await.expect("readyz answers");
    assert!(line.contains("503") && body.contains("fsync"), "{line}: {body}");

    // The others elect a leader and take writes.
    let others: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let new_leader = wait_for("a new leader of the shard", DEFAULT_DEADLINE, || async {
        let groups = c.group_statuses(SHARD_H).await;
        others.iter().copied().find(|id| groups.get(id).is_some_and(|g| g.role == "leader"))
    })
    .await;
    let mut kv = c.kv(new_leader).await;
    wait_for("a write at the new leader", DEFAULT_DEADLINE, || {
        let mut kv = kv.clone();
        async move { kv.put(put_req("h-after", "4")).await.ok() }
    })
    .await;
    assert!(kv.put(put_req("h-after-2", "5")).await.is_ok());

    // Restarted on a healthy disk, the node recovers what is really on disk
    // and catches up: every acknowledged write, and no refused one.
    std::fs::remove_file(&trigger).unwrap();
    c.kill(leader);
    c.restart(leader);
    let committed = c.group_statuses(SHARD_H).await[&new_leader].committed_index;
    c.wait_applied(leader, SHARD_H, committed).await;
    for (key, value) in [("h-before", "1"), ("h-after", "4"), ("h-after-2", "5")] {
        assert_eq!(stale_get(&c, leader, key).await.as_deref(), Some(value.as_bytes()), "{key}");
    }
    assert_eq!(stale_get(&c, leader, "h-refused").await, None, "a refused write was not applied");
}

/// Overload protection: a node serves at most `limits.max_inflight_requests`
/// client requests at once over all its connections. One more waits
/// briefly (two per connection at most), the rest are refused with
/// `RESOURCE_EXHAUSTED`, an `Overloaded` detail carrying a retry
/// hint, and nothing done; the Rust client waits out the hint and gets
/// every request through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_node_refuses_with_a_retry_hint_and_clients_back_off() {
    let c = start(ClusterOptions {
        metrics: true,
        extra_args: vec!["--max-inflight-requests=2".into()],
        ..Default::default()
    });
    c.wait_all_leaders().await;
    let leader = c.wait_leader(SHARD_H).await;
    let kv = c.kv(leader).await;

    // Bursts of 32 raw puts at once to the shard's leader, until one is
    // refused (on a loaded machine a burst may not overlap enough).
    let mut burst = 0;
    let (refused, keys) = wait_for("a put refused as overloaded", DEFAULT_DEADLINE, || {
        burst += 1;
        let kv = kv.clone();
        let keys: Vec<String> = (0..32).map(|i| format!("h-burst-{burst}-{i}")).collect();
        async move {
            let replies = futures::future::join_all(keys.iter().map(|key| {
                let mut kv = kv.clone();
                async move { kv.put(put_req(key, "v")).await }
            }))
            .await;
            let refused: Vec<(String, tonic::Status)> =
                keys.iter().cloned().zip(replies).filter_map(|(key, reply)| Some((key, reply.err()?))).collect();
            (!refused.is_empty()).then_some((refused, keys))
        }
    })
    .await;
    assert!(refused.len() < keys.len(), "some of the burst got through");
    let client = c.client().await;
    for (key, status) in &refused {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains("retry after"), "{}", status.message());
        let detail = geokv_proto::details::decode(status.details()).expect("an error detail");
        let Some(geokv_proto::kv::error_detail::Kind::Overloaded(o)) = detail.kind else { panic!("{detail:?}") };
        assert_eq!(o.node_id, leader);
        assert!(o.retry_after_ms > 0);
        assert!(client.get(key.as_bytes()).await.expect("read").is_none(), "a refused put did nothing: {key}");
    }

    // The Rust client gets 64 concurrent writes through the same limit.
    let writes = futures::future::join_all((0..64).map(|i| {
        let client = client.clone();
        async move { client.put(format!("h-client-{i}").into_bytes(), b"v".to_vec()).await }
    }))
    .await;
    for (i, w) in writes.iter().enumerate() {
        assert!(w.is_ok(), "client write {i}: {w:?}");
    }
    let metrics = c.metrics(leader).await;
    let exhausted: f64 =
        metrics.iter().filter(|(k, _)| k.contains("code=\"RESOURCE_EXHAUSTED\"")).map(|(_, v)| *v).sum();
    assert!(exhausted >= refused.len() as f64, "counted in geokv_requests_total: {exhausted}");
}

/// `--log-format json`: every line a node logs is one JSON object with a
/// timestamp, a level and a message, for log collectors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let c = start(ClusterOptions { nodes: 3, extra_args: vec!["--log-format=json".into()], ..Default::default() });
    c.wait_all_leaders().await;
    let log = c.log(1);
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() > 3, "{log}");
    for line in lines {
        let event: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(event["timestamp"].is_string() && event["level"].is_string(), "{line}");
        assert!(event["fields"]["message"].is_string(), "{line}");
    }
}

/// Runs `promtool ARGS` with `stdin`, returning its exit status and output.
fn promtool(args: &[&str], stdin: &str) -> (std::process::ExitStatus, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; `cargo xtask setup` installs it)");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status, format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// A live node's `/metrics` passes `promtool check metrics` (HELP and TYPE
/// on every family, `_total` counters, base units), carries the families an
/// SLO is built on, and the alert rules (`promtool check rules`) and the
/// Grafana dashboard in docs/monitoring name only families nodes export.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_the_dashboard_and_alerts_use_only_what_nodes_export() {
    let c = start(ClusterOptions {
        metrics: true,
        extra_args: vec!["--eventual-ranges=ev/..ev0".into()],
        ..Default::default()
    });
    c.wait_all_leaders().await;
    let client = c.client().await;
    client.put("h-metrics", "v").await.expect("put");
    client.get("h-metrics").await.expect("linearizable get");
    client.get_with("h-metrics", geokv_client::Consistency::Lease).await.expect("lease get");
    client.put("ev/metrics", "v").await.expect("eventual put");
    let shard = client.refresh_shard_map().await.unwrap().shard_for_key(b"h-metrics").unwrap().shard_id;
    let leader = c.wait_leader(shard).await;
    let (status, text) = c.http_get(leader, "/metrics").await.expect("metrics answer");
    assert!(status.contains("200"), "{status}");

    let (ok, out) = promtool(&["check", "metrics"], &text);
    assert!(ok.success(), "promtool check metrics:\n{out}\n--- the metrics ---\n{text}");

    let families: std::collections::BTreeSet<&str> =
        text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();
    let helped = text.lines().filter(|l| l.starts_with("# HELP ")).count();
    assert_eq!(helped, families.len(), "a HELP for every TYPE");
    for family in [
        "geokv_requests_total",
        "geokv_request_duration_seconds",
        "geokv_leader_changes_total",
        "geokv_elections_total",
        "geokv_apply_lag_entries",
        "geokv_raft_committed_index",
        "geokv_read_fallbacks_total",
        "geokv_replication_lag_entries",
        "geokv_ec_conflicts_total",
        "geokv_ec_replication_lag_seconds",
        "geokv_ec_catchup_seconds",
        "geokv_rocksdb_sst_bytes",
        "geokv_connections",
        "geokv_build_info",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ] {
        assert!(families.contains(family), "{family} missing from:\n{text}");
    }
    assert!(text.contains("geokv_requests_total{method=\"put\",code=\"OK\"} "), "{text}");
    assert!(text.contains("geokv_request_duration_seconds_bucket{method=\"get\",consistency=\"lease\",le=\"0.0005\"}"));
    let connections = text.lines().find_map(|l| l.strip_prefix("geokv_connections ")).expect("a connections gauge");
    assert!(connections.trim().parse::<f64>().unwrap() >= 1.0, "this scrape's client is connected");

    // Every family the alert rules and the dashboard query is exported.
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/monitoring");
    let rules = std::fs::read_to_string(docs.join("alerts.yml")).unwrap();
    let (ok, out) = promtool(&["check", "rules", docs.join("alerts.yml").to_str().unwrap()], "");
    assert!(ok.success(), "promtool check rules:\n{out}");
    let dashboard = std::fs::read_to_string(docs.join("grafana-dashboard.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| p.len() >= 10), "a dashboard with its panels");
    for source in [&rules, &dashboard] {
        let mut rest = source.as_str();
        while let Some(at) = rest.find(['g', 'p']) {
            rest = &rest[at..];
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            rest = &rest[name.len().max(1)..];
            if !(name.starts_with("geokv_") || name.starts_with("process_")) || name.len() < 8 {
                continue;
            }
            let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(&name);
            assert!(families.contains(base) || families.contains(name.as_str()), "{name} is queried but not exported");
        }
    }
}

/// The Python interpreter with grpcio, grpcio-tools, grpcio-health-checking,
/// grpcio-reflection and grpcio-status (`cargo xtask setup` makes it:
/// `$HOME/.cache/geokv-python`; `GEOKV_PYTHON` overrides).
fn python() -> std::path::PathBuf {
    std::env::var_os("GEOKV_PYTHON").map(Into::into).unwrap_or_else(|| {
        std::path::PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/geokv-python/bin/python")
    })
}

/// A gRPC client not written here (Python's grpcio, stubs generated from
/// our protos at run time) finds the services by reflection, sees health
/// SERVING, and puts and gets through every node, leader or not: a node
/// that does not lead the key's shard forwards the request. A request that
/// names its shard, as the Rust client's do, is not forwarded: NOT_LEADER,
/// with the leader's address in the standard google.rpc.ErrorInfo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generic_grpc_client_reads_and_writes_through_every_node() {
    let c = start(ClusterOptions { metrics: true, ..Default::default() });
    c.wait_all_leaders().await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/generic_client.py");
    let protos = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/proto");
    let python = python();
    let out = std::process::Command::new(&python)
        .arg(&script)
        .arg(&protos)
        .args(c.endpoints())
        .output()
        .unwrap_or_else(|e| panic!("{} ({e}): run `cargo xtask setup`", python.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the Python client failed:\n{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON report");
    let nodes = report["nodes"].as_object().unwrap();
    assert_eq!(nodes.len(), 3);
    for (endpoint, node) in nodes {
        assert_eq!(node["health"], "SERVING", "{endpoint}");
        let services: Vec<&str> = node["services"].as_array().unwrap().iter().filter_map(|s| s.as_str()).collect();
        for service in ["geokv.kv.Kv", "geokv.admin.Admin", "grpc.health.v1.Health"] {
            assert!(services.contains(&service), "{endpoint} lists {services:?}");
        }
        assert_eq!(node["puts"], 4, "{endpoint}");
    }
    let not_leader = &report["not_leader"];
    assert_eq!(not_leader["code"], "FAILED_PRECONDITION", "{report}");
    assert_eq!(not_leader["reason"], "NOT_LEADER", "{report}");
    assert_eq!(not_leader["domain"], "geokv");
    let leader_addr = not_leader["metadata"]["leader_addr"].as_str().unwrap();
    assert!(c.endpoints().iter().any(|e| e == leader_addr), "{leader_addr}");
    // Some node forwarded (each shard has one leader and three nodes were asked).
    let mut forwarded = 0.0;
    for id in 1..=3 {
        forwarded += c
            .metrics(id)
            .await
            .iter()
            .filter(|(k, _)| k.starts_with("geokv_forwarded_requests_total"))
            .map(|(_, v)| v)
            .sum::<f64>();
    }
    assert!(forwarded >= 8.0, "puts and gets at followers were forwarded: {forwarded}");
}

/// Far more concurrent clients than the node admits (2,000 requests in
/// flight over 40 connections, the limit 64): the excess is refused with
/// RESOURCE_EXHAUSTED, the node's health (within 5 s) and a probe read
/// through the Rust client, which backs off on the hint (within 15 s),
/// answer three times in a row during the flood, and the node's memory
/// stays under a bound (512 MiB here; the run prints what it reached).
/// Bounded: 2,000 clients, three probes, each with its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_clients_is_refused_in_part_and_the_node_stays_responsive_and_bounded() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    const CLIENTS: usize = 2_000;
    const CONNECTIONS: usize = 40;
    let c = start(ClusterOptions { extra_args: vec!["--max-inflight-requests=64".into()], ..Default::default() });
    c.wait_all_leaders().await;
    let leader = c.wait_leader(SHARD_H).await;
    let addr = c.node(leader).addr.clone();
    let pid = c.node(leader).pid().expect("running");
    let rss_before = rss_bytes(pid);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let channels: Vec<_> = (0..CONNECTIONS).map(|_| geokv_tests::channel(&addr)).collect();
    let value = "v".repeat(1024);
    let flood: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let mut kv = KvClient::new(channels[i % CONNECTIONS].clone());
            let (stop, value) = (stop.clone(), value.clone());
            tokio::spawn(async move {
                let (mut ok, mut refused, mut other) = (0u64, 0u64, 0u64);
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    match kv.put(put_req(&format!("h-flood-{i}-{}", n % 4), &value)).await {
                        Ok(_) => ok += 1,
                        Err(s) if s.code() == Code::ResourceExhausted => refused += 1,
                        Err(_) => other += 1,
                    }
                }
                (ok, refused, other)
            })
        })
        .collect();
    let client = c.client().await;
    let mut health = HealthClient::new(geokv_tests::channel(&addr));
    let (mut probes, mut peak_rss, mut slowest_health, mut slowest_read) = (0, 0u64, Duration::ZERO, Duration::ZERO);
    let mut statuses = Vec::new();
    // Three probes, each bounded by its own deadline, while the flood runs.
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let reply =
            tokio::time::timeout(Duration::from_secs(5), health.check(HealthCheckRequest { service: String::new() }))
                .await
                .expect("health answers within 5 s under the flood")
                .expect("health answers");
        statuses.push(reply.into_inner().status);
        slowest_health = slowest_health.max(t.elapsed());
        let t = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(15), client.get("h-probe"))
            .await
            .expect("a probe read answers within 15 s under the flood")
            .expect("the probe read succeeds (the client backs off on the hint)");
        slowest_read = slowest_read.max(t.elapsed());
        peak_rss = peak_rss.max(rss_bytes(pid));
        probes += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut refused, mut other) = (0, 0, 0);
    for task in flood {
        let (o, r, x) = task.await.unwrap();
        (ok, refused, other) = (ok + o, refused + r, other + x);
    }
    eprintln!(
        "{CLIENTS} clients over {CONNECTIONS} connections, limit 64: {ok} ok, {refused} refused, {other} other; \
         {probes} probes, slowest health {slowest_health:?} (statuses {statuses:?}), slowest probe read \
         {slowest_read:?}; \
         RSS {} MiB before, peak {} MiB",
        rss_before >> 20,
        peak_rss >> 20
    );
    assert!(refused > 0 && ok > 0, "some refused, some served: {ok} ok, {refused} refused");
    assert!(peak_rss < 512 << 20, "the node's memory stayed under 512 MiB: {} MiB", peak_rss >> 20);
}

/// Clients that ask for large scans and never read the answers (raw
/// HTTP/2 whose flow-control windows stay shut) hold at most their share of
/// `limits.max_response_bytes` (32 MiB here, 8 MiB per connection): 3
/// connections x 32 scans of ~3.6 MiB pages would otherwise leave ~345 MiB
/// of answers in the node. The excess is refused with RESOURCE_EXHAUSTED,
/// another client's get and whole scan (21 MiB) are served meanwhile, the
/// node grows by less than 96 MiB, and once the slow connections close,
/// their room is given back. Bounded: 96 requests, each with its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_do_not_read_their_answers_hold_bounded_memory() {
    use prost::Message;
    const SLOW_CONNECTIONS: usize = 3;
    const SCANS_PER_CONNECTION: usize = 32;
    let c = start(ClusterOptions {
        extra_args: vec![format!("--max-response-bytes={}", 32 << 20)],
        metrics: true,
        ..Default::default()
    });
    c.wait_all_leaders().await;
    let client = c.client().await;
    let value = "v".repeat(900 << 10);
    for i in 0..24 {
        client.put(format!("h-slow-{i:02}"), &value).await.expect("put");
    }
    client.put("h-probe", "small").await.expect("put");
    let leader = c.wait_leader(SHARD_H).await;
    let addr = c.node(leader).addr.clone();
    let pid = c.node(leader).pid().expect("running");
    let rss_before = rss_bytes(pid);
    let scan = ScanRequest {
        header: None,
        start: "h-slow-".into(),
        end: "h-slow.".into(),
        limit: 100,
        consistency: Consistency::Linearizable as i32,
        max_staleness_ms: 0,
    };
    let mut frame = vec![0u8];
    frame.extend((scan.encoded_len() as u32).to_be_bytes());
    scan.encode(&mut frame).expect("encode");
    let frame = bytes::Bytes::from(frame);
    let (mut served, mut refused) = (0, 0);
    let mut slow = Vec::new();
    for _ in 0..SLOW_CONNECTIONS {
        let tcp = tokio::net::TcpStream::connect(&addr).await.expect("connect");
        let (mut sender, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
        let driver = tokio::spawn(connection);
        let mut answers = Vec::new();
        for _ in 0..SCANS_PER_CONNECTION {
            sender = sender.ready().await.expect("a stream");
            let request = http::Request::post(format!("http://{addr}/geokv.kv.Kv/Scan"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .expect("request");
            let (answer, mut stream) = sender.send_request(request, false).expect("send");
            stream.send_data(frame.clone(), true).expect("send the scan");
            answers.push(answer);
        }
        let mut unread = Vec::new();
        for answer in answers {
            let answer = tokio::time::timeout(Duration::from_secs(20), answer)
                .await
                .expect("each scan answered within 20 s")
                .expect("an HTTP/2 response");
            // An error comes trailers-only: grpc-status in the headers.
            match answer.headers().get("grpc-status").map(|v| v.to_str().unwrap_or("?").to_string()) {
                None => {
                    served += 1;
                    unread.push(answer.into_body());
                }
                Some(code) if code == "8" => refused += 1,
                Some(code) => panic!("a scan failed with grpc-status {code}: {:?}", answer.headers()),
            }
        }
        slow.push((sender, driver, unread));
    }
    let reserved = c.metrics(leader).await.get("geokv_response_reserved_bytes").copied().unwrap_or(-1.0);
    let t = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(15), client.get("h-probe"))
        .await
        .expect("a probe get answers within 15 s")
        .expect("the probe get succeeds");
    let all = tokio::time::timeout(Duration::from_secs(30), client.scan("h-slow-".."h-slow.").collect())
        .await
        .expect("a whole scan within 30 s")
        .expect("another client's scan is served");
    assert_eq!(all.len(), 24);
    let probes = t.elapsed();
    let peak_rss = rss_bytes(pid);
    eprintln!(
        "{SLOW_CONNECTIONS} connections that do not read x {SCANS_PER_CONNECTION} scans of ~3.6 MiB: {served} \
         served (left unread), {refused} refused; {} MiB reserved; probe get and 21 MiB scan in {probes:?}; RSS {} \
         MiB before, {} MiB with the answers unread",
        reserved as u64 >> 20,
        rss_before >> 20,
        peak_rss >> 20
    );
    assert!(refused > 0 && served >= SLOW_CONNECTIONS, "{served} served, {refused} refused");
    assert!(reserved > 0.0 && reserved <= (32 << 20) as f64, "reserved {reserved} bytes");
    assert!(
        peak_rss.saturating_sub(rss_before) < 96 << 20,
        "unread answers grew the node by {} MiB",
        peak_rss.saturating_sub(rss_before) >> 20
    );
    // Closing the connections drops the answers and gives their room back.
    for (sender, driver, unread) in slow {
        drop((sender, unread));
        driver.abort();
    }
    wait_for("the room of dropped answers given back", DEFAULT_DEADLINE, || async {
        (c.metrics(leader).await.get("geokv_response_reserved_bytes").copied() == Some(0.0)).then_some(())
    })
    .await;
}

/// A follower that stops (SIGSTOP: its sockets open, answering nothing)
/// while the leader takes writes costs the leader a bounded amount of
/// memory, not memory in proportion to what the follower misses: the
/// entries stay in the leader's log on disk (the in-memory tail is
/// bounded) and replication to the stopped peer waits on its connection's
/// flow-control window. Measured: writing 160 MiB of 64 KiB values with a
/// follower stopped grows the leader by ~110 MiB once (what the
/// replication pipeline to that peer holds), and another 160 MiB missed
/// adds little more; asserted: the second 160 MiB adds under 48 MiB. The
/// run prints all three phases. The follower catches up once resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_follower_costs_the_leader_bounded_memory() {
    use futures::StreamExt;
    const MIB_PER_PHASE: usize = 160;
    let mut c = start(ClusterOptions { split_points: vec!["zzz".into()], ..Default::default() });
    c.wait_all_leaders().await;
    let leader = c.wait_leader(1).await;
    let pid = c.node(leader).pid().expect("running");
    let follower = c.nodes.iter().map(|n| n.id).find(|id| *id != leader).unwrap();
    let client = c.client().await;
    let value = "v".repeat(64 << 10);
    let write = |phase: &'static str| {
        let (client, value) = (client.clone(), value.clone());
        async move {
            futures::stream::iter(0..MIB_PER_PHASE * 16)
                .map(|i| {
                    let (client, value) = (client.clone(), value.clone());
                    async move { client.put(format!("{phase}/{i:06}"), &value).await.expect("put") }
                })
                .buffer_unordered(8)
                .collect::<Vec<_>>()
                .await;
        }
    };
    write("warm").await;
    let before_up = rss_bytes(pid);
    write("up").await;
    let grew_up = rss_bytes(pid).saturating_sub(before_up);
    c.pause(follower);
    let before_stopped = rss_bytes(pid);
    write("stopped").await;
    let grew_stopped = rss_bytes(pid).saturating_sub(before_stopped);
    let before_more = rss_bytes(pid);
    write("stopped-more").await;
    let grew_more = rss_bytes(pid).saturating_sub(before_more);
    c.resume(follower);
    let applied = c.group_statuses(1).await.get(&leader).map(|g| g.applied_index).expect("the leader's status");
    c.wait_applied(follower, 1, applied).await;
    eprintln!(
        "leader RSS growth per {MIB_PER_PHASE} MiB written: {} MiB with every follower up, {} MiB with node \
         {follower} stopped, {} MiB more with it still stopped (RSS now {} MiB)",
        grew_up >> 20,
        grew_stopped >> 20,
        grew_more >> 20,
        rss_bytes(pid) >> 20
    );
    assert!(
        grew_more < 48 << 20,
        "the leader's memory grows with what the stopped follower misses: {} MiB, then {} MiB more",
        grew_stopped >> 20,
        grew_more >> 20
    );
}

/// A scan page stops once its values pass 4 MiB (not only at its count),
/// says where to resume, and the Rust client's scan still reads every key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_page_stops_at_its_byte_budget() {
    let c = start(ClusterOptions::default());
    c.wait_all_leaders().await;
    let client = c.client().await;
    let value = "v".repeat(900 << 10);
    for i in 0..12 {
        client.put(format!("h-big-{i:02}"), &value).await.expect("put");
    }
    let leader = c.wait_leader(SHARD_H).await;
    let req = ScanRequest {
        header: None,
        start: "h-big-".into(),
        end: "h-big.".into(),
        limit: 100,
        consistency: Consistency::Linearizable as i32,
        max_staleness_ms: 0,
    };
    let page = c.kv(leader).await.scan(req).await.expect("scan").into_inner();
    assert!(page.more, "the page was cut");
    assert!((1..=5).contains(&page.kvs.len()), "{} pairs of 900 KiB in one page", page.kvs.len());
    assert_eq!(page.resume_key, format!("h-big-{:02}", page.kvs.len()).into_bytes());
    let all = client.scan("h-big-".."h-big.").collect().await.expect("the whole range");
    assert_eq!(all.len(), 12);
}
