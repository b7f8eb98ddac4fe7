//! The client against an in-process mock cluster ([`mock`]): each test sets
//! up a story ("node 2 leads", "the shard split", "the first put is lost
//! after applying") and checks both what the client returned and which RPCs
//! it sent. kvctl's tests (in `kvctl/tests/`) use the same mock.

#[allow(dead_code, unused_imports)]
mod mock;

use mock::*;

#[tokio::test]
async fn not_leader_hint_is_followed_then_cached() {
    let cluster = MockCluster::start(3, false).await;
    cluster.set_shards(1, &[("", "")], &[2]);
    let client = cluster.client().await;

    let written = client.put("k", "v").await.unwrap();
    assert_eq!(cluster.nodes_called("put"), [1, 2], "first replica, then the hinted leader");

    client.put("k", "w").await.unwrap();
    let read = client.get("k").await.unwrap().unwrap();
    assert_eq!(cluster.nodes_called("put"), [2]);
    assert_eq!(read.value, b"w");
    assert!(read.version > written.version);
}

#[tokio::test]
async fn wrong_shard_refreshes_the_map_and_reroutes() {
    let cluster = MockCluster::start(3, false).await;
    let client = cluster.client().await;
    client.put("x", "1").await.unwrap();
    cluster.calls();

    // The shard splits at "m"; node 3 leads the new upper half.
    cluster.set_shards(2, &[("", "m"), ("m", "")], &[1, 3]);
    let written = client.put("x", "2").await.unwrap();
    assert_eq!(written.shard_id, 2);
    let calls = cluster.calls();
    let puts: Vec<(u64, u64)> = calls.iter().filter(|c| c.method == "put").map(|c| (c.node, c.shard_id)).collect();
    assert_eq!(puts.first(), Some(&(1, 1)), "first sent with the stale map");
    assert_eq!(puts.last(), Some(&(3, 2)), "finally at the new shard's leader");
    assert_eq!(client.shard_map().await.unwrap().version, 2);
}

#[tokio::test]
async fn lost_answer_is_retried_with_the_same_sequence_and_applied_once() {
    let cluster = MockCluster::start(3, false).await;
    let client = cluster.client().await;
    cluster.fault(1, "put", 1, Action::ApplyThenLose);

    let written = client.put("k", "v").await.unwrap();
    let puts: Vec<Call> = cluster.calls().into_iter().filter(|c| c.method == "put").collect();
    assert_eq!(puts.len(), 2, "{puts:?}");
    assert_eq!(puts[0].sequence, puts[1].sequence, "a retry reuses the sequence");
    let state = cluster.state.lock().unwrap();
    assert_eq!(state.log_index, 1, "applied exactly once");
    assert_eq!(written.version, 1, "the retry got the first attempt's result");
}

#[tokio::test]
async fn each_logical_write_takes_a_new_sequence() {
    let cluster = MockCluster::start(1, false).await;
    let client = cluster.client().await;
    client.put("a", "1").await.unwrap();
    client.put("b", "2").await.unwrap();
    client.cas("a", Expect::Value(b"1".to_vec()), Some(b"3".to_vec())).await.unwrap();
    let sequences: Vec<u64> = cluster.calls().iter().filter(|c| c.sequence > 0).map(|c| c.sequence).collect();
    assert_eq!(sequences, [1, 2, 3]);
}

#[tokio::test]
async fn write_that_times_out_everywhere_is_indeterminate() {
    let cluster = MockCluster::start(3, false).await;
    let client = cluster.config().rpc_timeout(Duration::from_millis(50)).max_attempts(3).connect().await.unwrap();
    cluster.fault(0, "put", usize::MAX, Action::Delay(Duration::from_millis(300)));

    let err = client.put("k", "v").await.unwrap_err();
    assert!(matches!(err, Error::Indeterminate { shard_id: 1, .. }), "{err}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn write_refused_everywhere_is_unavailable() {
    let cluster = MockCluster::start(3, false).await;
    cluster.set_shards(1, &[("", "")], &[0]);
    let client = cluster.config().max_attempts(4).connect().await.unwrap();

    let err = client.put("k", "v").await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { attempts: 4, .. }), "{err}");
    assert!(err.is_retryable());
    assert_eq!(cluster.nodes_called("put").len(), 4);
}

#[tokio::test]
async fn a_maybe_applied_attempt_keeps_the_write_indeterminate() {
    let cluster = MockCluster::start(3, false).await;
    cluster.set_shards(1, &[("", "")], &[0]);
    let client = cluster.config().max_attempts(3).connect().await.unwrap();
    // The first attempt fails in a way that may have applied it; the rest are
    // definite refusals. The outcome is still unknown.
    cluster.fault(1, "put", 1, Action::Fail(Code::Unknown, "connection reset", None));

    let err = client.put("k", "v").await.unwrap_err();
    assert!(matches!(err, Error::Indeterminate { .. }), "{err}");
}

#[tokio::test]
async fn forgotten_session_is_indeterminate_at_once() {
    let cluster = MockCluster::start(1, false).await;
    let client = cluster.client().await;
    cluster.fault(1, "put", 1, Action::Fail(Code::FailedPrecondition, "session 1 result was discarded", None));

    let err = client.put("k", "v").await.unwrap_err();
    assert!(matches!(err, Error::Indeterminate { .. }), "{err}");
    assert_eq!(cluster.nodes_called("put").len(), 1);
}

#[tokio::test]
async fn invalid_argument_is_final_and_keeps_the_server_message() {
    let cluster = MockCluster::start(1, false).await;
    let client = cluster.client().await;
    cluster.fault(1, "put", 1, Action::Fail(Code::InvalidArgument, "value is 2 MiB, limit is 1 MiB", None));

    let err = client.put("k", "v").await.unwrap_err();
    assert!(matches!(&err, Error::InvalidArgument(message) if message.contains("limit is 1 MiB")), "{err}");
    assert_eq!(cluster.nodes_called("put").len(), 1);
    assert!(matches!(client.get("").await.unwrap_err(), Error::InvalidArgument(_)));
}

#[tokio::test]
async fn dead_replica_is_skipped() {
    let cluster = MockCluster::start(2, true).await;
    cluster.set_shards(1, &[("", "")], &[1]);
    cluster.dead_node_first();
    let client = cluster.client().await;

    client.put("k", "v").await.unwrap();
    assert_eq!(cluster.nodes_called("put"), [1], "the dead node was never reached");
    let stale = client.get_with("k", Consistency::Stale).await.unwrap();
    assert_eq!(stale.kv.unwrap().value, b"v");
    assert_eq!(stale.info.served, Consistency::Stale);
    assert_eq!(stale.info.staleness_bound_ms, None);

    let status = client.cluster_status().await.unwrap();
    assert_eq!(status.unreachable().count(), 1);
    let shards = status.shards();
    assert_eq!(shards[0].leader.as_ref().unwrap().node.node_id, 1);
}

#[tokio::test]
async fn unavailable_node_is_retried_elsewhere() {
    let cluster = MockCluster::start(3, false).await;
    cluster.set_shards(1, &[("", "")], &[2]);
    let client = cluster.client().await;
    cluster.fault(1, "get", 1, Action::Fail(Code::Unavailable, "node is starting", None));

    let read = client.get_with("k", Consistency::Stale).await.unwrap();
    assert_eq!(read.kv, None);
    assert_eq!(read.info.node_id, 2);
}

#[tokio::test]
async fn scan_pages_across_shards_in_key_order() {
    let cluster = MockCluster::start(2, false).await;
    cluster.set_shards(1, &[("", "m"), ("m", "")], &[1, 2]);
    cluster.state.lock().unwrap().page_size = 2;
    let client = cluster.client().await;
    for key in ["a", "b", "c", "n", "o", "p", "q"] {
        client.put(key, key.to_uppercase()).await.unwrap();
    }
    cluster.calls();

    let keys = |kvs: Vec<geokv_client::KeyValue>| -> Vec<String> {
        kvs.into_iter().map(|kv| String::from_utf8(kv.key).unwrap()).collect()
    };
    assert_eq!(keys(client.scan(..).await.unwrap()), ["a", "b", "c", "n", "o", "p", "q"]);
    let scans = cluster.nodes_called("scan");
    assert_eq!(scans, [1, 1, 2, 2], "two pages per shard");

    assert_eq!(keys(client.scan("b".."p").await.unwrap()), ["b", "c", "n", "o"]);
    assert_eq!(keys(client.scan("b"..="p").await.unwrap()), ["b", "c", "n", "o", "p"]);
    assert_eq!(keys(client.scan(..).limit(3).await.unwrap()), ["a", "b", "c"]);
    assert_eq!(keys(client.scan("d"..).consistency(Consistency::Stale).collect().await.unwrap()), ["n", "o", "p", "q"]);
    assert!(client.scan("z".."a").await.is_err());
    assert!(client.scan("c".."c").await.unwrap().is_empty());
}

#[tokio::test]
async fn scan_streams_page_by_page() {
    use futures::{StreamExt, TryStreamExt};
    let cluster = MockCluster::start(2, false).await;
    cluster.set_shards(1, &[("", "k05"), ("k05", "")], &[1, 2]);
    cluster.state.lock().unwrap().page_size = 3;
    let client = cluster.client().await;
    for i in 0..10 {
        client.put(format!("k{i:02}"), "v").await.unwrap();
    }
    cluster.calls();

    // Taking the first two pairs fetches one page, not the range.
    let first: Vec<_> = client.scan(..).stream().take(2).try_collect().await.unwrap();
    assert_eq!(first.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(), [b"k00".to_vec(), b"k01".to_vec()]);
    assert_eq!(cluster.nodes_called("scan"), [1], "one page");

    // The whole stream equals the collected scan, across both shards.
    let streamed: Vec<_> = client.scan("k02".."k09").stream().try_collect().await.unwrap();
    let collected = client.scan("k02".."k09").await.unwrap();
    assert_eq!(streamed, collected);
    assert_eq!(streamed.len(), 7);
    let limited: Vec<_> = client.scan(..).limit(4).stream().try_collect().await.unwrap();
    assert_eq!(limited.len(), 4);
    // A bad range is the stream's one item.
    let bad: Vec<_> = client
        .scan(geokv_client::ScanBounds { start: b"z".to_vec(), end: Some(b"a".to_vec()) })
        .stream()
        .collect()
        .await;
    assert!(matches!(bad.as_slice(), [Err(Error::InvalidArgument(_))]), "{bad:?}");
}

#[tokio::test]
async fn cas_reports_the_current_value_when_it_does_not_swap() {
    let cluster = MockCluster::start(1, false).await;
    let client = cluster.client().await;
    let first = client.cas("lock", Expect::Absent, Some(b"me".to_vec())).await.unwrap();
    assert!(first.swapped);
    let second = client.cas("lock", Expect::Absent, Some(b"you".to_vec())).await.unwrap();
    assert!(!second.swapped);
    let current = second.current.unwrap();
    assert_eq!((current.value.as_slice(), current.version), (&b"me"[..], first.version));
    let release = client.cas("lock", Expect::Version(first.version), None).await.unwrap();
    assert!(release.swapped);
    assert_eq!(client.get("lock").await.unwrap(), None);
}

#[tokio::test]
async fn batch_applies_and_refuses_keys_of_two_shards() {
    let cluster = MockCluster::start(1, false).await;
    cluster.set_shards(1, &[("", "m"), ("m", "")], &[1, 1]);
    let client = cluster.client().await;
    let applied = client.batch().put("a", "1").put("b", "2").delete("c").send().await.unwrap();
    assert!(applied.applied);
    assert_eq!(client.get("b").await.unwrap().unwrap().version, applied.version);

    let err = client.batch().put("a", "1").put("z", "2").await.unwrap_err();
    assert!(matches!(&err, Error::InvalidArgument(message) if message.contains("different shards")), "{err}");
    assert!(matches!(client.batch().condition("a", Expect::Absent).send().await, Err(Error::InvalidArgument(_))));
}

#[tokio::test]
async fn busy_leader_named_by_a_follower_is_retried_after_a_pause() {
    let cluster = MockCluster::start(3, false).await;
    cluster.set_shards(1, &[("", "")], &[2]);
    let client = cluster.client().await;
    cluster.fault(2, "put", 1, Action::Fail(Code::Unavailable, "shutting down", None));

    client.put("k", "v").await.unwrap();
    assert_eq!(cluster.nodes_called("put"), [1, 2, 3, 2]);
}

#[tokio::test]
async fn eventual_requests_go_to_the_own_region_replica_whatever_the_level() {
    let cluster = MockCluster::start(3, false).await;
    cluster.set_shards(1, &[("", "m"), ("m", "")], &[1, 1]);
    cluster.set_eventual(2);
    let client = cluster.config().region(Some("region-2".into())).connect().await.unwrap();

    let written = client.put("p", "v").await.unwrap();
    assert!(written.eventual);
    assert_eq!((written.version, written.origin), (0, Some(2)));
    assert_eq!(written.hlc.unwrap().node_id, 2);
    let read = client.get_with("p", Consistency::Linearizable).await.unwrap();
    assert_eq!(read.info.served, Served::Eventual);
    assert!(read.info.weaker_than_requested);
    assert_eq!(read.info.node_id, 2, "read in the client's region");
    let value = read.kv.unwrap();
    assert_eq!((value.value.as_slice(), value.hlc, value.origin), (&b"v"[..], written.hlc, Some(2)));
    let deleted = client.delete("p").await.unwrap();
    assert!(deleted.eventual && deleted.existed);
    assert!(deleted.hlc > written.hlc);
    // The Raft shard next door still goes to its leader for writes.
    client.put("a", "v").await.unwrap();
    let stale = client.get_with("p", Consistency::Stale).await.unwrap();
    assert!(!stale.info.weaker_than_requested);
    assert_eq!(cluster.nodes_called("put"), [2, 1]);

    // No replica in the client's region: the first replica.
    let elsewhere = cluster.config().region(Some("mars".into())).connect().await.unwrap();
    elsewhere.put("q", "v").await.unwrap();
    elsewhere.get("q").await.unwrap();
    let calls: Vec<(&str, u64)> = cluster.calls().iter().map(|c| (c.method, c.node)).collect();
    assert_eq!(calls, [("put", 1), ("get", 1)]);
}

#[tokio::test]
async fn eventual_writes_are_retried_only_when_surely_not_applied() {
    let cluster = MockCluster::start(2, true).await;
    cluster.set_eventual(1);
    cluster.dead_node_first();
    let client = cluster.config().max_attempts(4).connect().await.unwrap();

    // The dead node refuses the connection: nothing was sent, try the next.
    let written = client.put("k", "v").await.unwrap();
    assert_eq!(written.origin, Some(1));
    // A node declining (Unavailable from the server itself): next replica.
    cluster.fault(1, "put", 1, Action::Fail(Code::Unavailable, "node is starting", None));
    assert_eq!(client.put("k", "w").await.unwrap().origin, Some(2));
    cluster.calls();

    // An attempt that may have arrived is never resent: the outcome is unknown.
    cluster.fault(1, "put", 1, Action::ApplyThenLose);
    let err = client.put("k", "x").await.unwrap_err();
    assert!(matches!(err, Error::Indeterminate { shard_id: 1, .. }), "{err}");
    assert!(err.to_string().contains("not retried"), "{err}");
    assert_eq!(cluster.nodes_called("put"), [1], "one attempt only");
    let timeout = cluster.config().rpc_timeout(Duration::from_millis(50)).connect().await.unwrap();
    cluster.fault(1, "put", 1, Action::Delay(Duration::from_millis(300)));
    assert!(timeout.put("k", "y").await.unwrap_err().is_indeterminate());
    assert_eq!(cluster.nodes_called("put"), [1]);
}

#[tokio::test]
async fn cas_and_batch_on_an_eventual_shard_are_refused_clearly() {
    let cluster = MockCluster::start(2, false).await;
    cluster.set_eventual(1);
    let client = cluster.client().await;

    let err = client.cas("k", Expect::Absent, Some(b"v".to_vec())).await.unwrap_err();
    assert!(
        matches!(&err, Error::EventualShard { shard_id: 1, operation: "compare-and-swap", message } if message.contains("last-writer-wins")),
        "{err}"
    );
    assert!(!err.is_retryable() && !err.is_indeterminate());
    let err = client.batch().put("a", "1").put("b", "2").send().await.unwrap_err();
    assert!(matches!(&err, Error::EventualShard { operation: "batch", .. }), "{err}");
    assert_eq!(cluster.calls().iter().filter(|c| c.method == "cas" || c.method == "batch").count(), 2);
}

#[tokio::test]
async fn conflicts_are_gathered_from_every_node_and_merged() {
    let cluster = MockCluster::start(2, true).await;
    cluster.set_eventual(1);
    let client = cluster.client().await;
    // Node 1 and 2 both discarded write 100@1 for 101@2; node 2 also 200@2.
    cluster.record_conflict(1, "k", (100, 1), (101, 2), 5_000);
    cluster.record_conflict(2, "k", (100, 1), (101, 2), 5_002);
    cluster.record_conflict(2, "j", (200, 2), (201, 1), 6_000);

    let report = client.conflicts(None, 0).await.unwrap();
    let summary: Vec<(&[u8], Vec<u64>, u64)> =
        report.conflicts.iter().map(|c| (c.key.as_slice(), c.recorded_by.clone(), c.recorded_at_ms)).collect();
    assert_eq!(summary, [(&b"j"[..], vec![2], 6_000), (&b"k"[..], vec![1, 2], 5_000)]);
    assert_eq!(report.conflicts[1].loser_value.as_deref(), Some(&b"lost-100"[..]));
    assert!(!report.truncated);
    assert_eq!(report.nodes.len(), 3);
    assert_eq!(report.unreachable().map(|n| n.node.node_id).collect::<Vec<_>>(), [3]);
    let two = report.nodes[1].log.as_ref().unwrap();
    assert_eq!((two.returned, two.total_recorded, two.capacity), (2, 2, 2));

    let cut = client.conflicts(Some(1), 1).await.unwrap();
    assert_eq!(cut.conflicts.len(), 1);
    assert!(cut.truncated);
}

#[tokio::test]
async fn create_shard_carves_an_eventual_shard_and_routes_there_at_once() {
    let cluster = MockCluster::start(3, false).await;
    cluster.set_shards(1, &[("", "m"), ("m", "")], &[1, 2]);
    let client = cluster.config().region(Some("region-3".into())).connect().await.unwrap();
    client.put("a", "1").await.unwrap();
    client.put("n", "1").await.unwrap();
    cluster.calls();

    let created = client.create_shard("session/".., ShardMode::Eventual).await.unwrap();
    assert_eq!(created, CreatedShard { shard_id: 3, map_version: 2, parent_shard_id: Some(2), parent_epoch: Some(2) });
    assert!(!created.already_existed());
    let map = client.shard_map().await.unwrap();
    assert_eq!(map.version, 2, "the cache holds the new shard");
    let shard = map.shard_for_key(b"session/1").unwrap();
    assert_eq!((shard.shard_id, shard.mode, shard.replicas.len()), (3, ShardMode::Eventual, 3));
    assert_eq!((map.shard(2).unwrap().end.as_slice(), map.shard(2).unwrap().epoch), (&b"session/"[..], 2));

    // Straight to the new shard's local replica, and to the parent's leader
    // at its new epoch: no stale-map round trips.
    let written = client.put("session/1", "v").await.unwrap();
    assert!(written.eventual);
    assert_eq!((written.shard_id, written.origin), (3, Some(3)));
    client.put("n", "2").await.unwrap();
    let calls: Vec<(&str, u64, u64)> = cluster.calls().iter().map(|c| (c.method, c.node, c.shard_id)).collect();
    assert_eq!(calls, [("create_shard", 1, 0), ("put", 3, 3), ("put", 2, 2)]);

    // The same request again: the shard, once.
    let again = client.create_shard("session/".., ShardMode::Eventual).await.unwrap();
    assert!(again.already_existed());
    assert_eq!((again.shard_id, again.map_version), (3, 2));

    let refused = |err: &Error, needle: &str| match err {
        Error::InvalidArgument(message) | Error::FailedPrecondition(message) => message.contains(needle),
        _ => false,
    };
    let err = client.create_shard("c".."d", ShardMode::Eventual).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)) && refused(&err, "begin or end where shard 1"), "{err}");
    let err = client.create_shard("k".."p", ShardMode::Eventual).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)) && refused(&err, "inside one Raft shard"), "{err}");
    let err = client.create_shard(.."b", ShardMode::Eventual).await.unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(_)) && refused(&err, "holds keys"), "{err}");
    assert!(err.to_string().starts_with("refused: shard 1 holds keys"), "{err}");
    assert!(!err.is_retryable());
    let err = client.create_shard("m".."n", ShardMode::Raft).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)) && refused(&err, "only eventual"), "{err}");
    assert_eq!(cluster.nodes_called("create_shard"), [1, 1, 1, 1, 1], "final answers are not retried");

    let err = client.create_shard("b".."a", ShardMode::Eventual).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)) && refused(&err, "is empty"), "{err}");
    assert!(cluster.calls().is_empty(), "an empty range is refused before sending");
}

#[tokio::test]
async fn create_shard_is_retried_as_it_is_idempotent() {
    let cluster = MockCluster::start(2, false).await;
    cluster.set_shards(1, &[("", "m"), ("m", "")], &[1, 2]);
    let client = cluster.config().max_attempts(3).connect().await.unwrap();

    cluster.fault(1, "create_shard", 1, Action::Fail(Code::Unavailable, "leaders not reachable", None));
    let created = client.create_shard("x".., ShardMode::Eventual).await.unwrap();
    assert_eq!(created.parent_shard_id, Some(2));
    assert_eq!(cluster.nodes_called("create_shard"), [1, 2], "the next node, after a backoff");

    // Made, then the answer lost: asking again reports it.
    cluster.fault(0, "create_shard", 1, Action::ApplyThenLose);
    let created = client.create_shard(.."c", ShardMode::Eventual).await.unwrap();
    assert!(created.already_existed(), "{created:?}");
    assert_eq!(created.shard_id, 4);
    assert_eq!(cluster.nodes_called("create_shard"), [1, 2]);
    assert_eq!(client.shard_map().await.unwrap().shard_for_key(b"b").unwrap().shard_id, 4);

    cluster.fault(0, "create_shard", 10, Action::Fail(Code::Unavailable, "leaders not reachable", None));
    let err = client.create_shard("c".."d", ShardMode::Eventual).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { attempts: 3, .. }), "{err}");
    assert!(err.is_retryable());
    assert!(err.to_string().contains("repeating the same request is safe"), "{err}");
}
