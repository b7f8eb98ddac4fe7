//! Changing the cluster's shape against real `geokv` processes: splitting
//! Raft shards while clients write (3 nodes, one per region, default split
//! points g, n, u: shards 1-4).
//!
//! Shown here: a split under concurrent writes loses and duplicates no
//! acknowledged write, the new shard runs on every replica, clients with the
//! old map are corrected and keep going, the split survives a node's restart
//! in the middle of it and a full restart after it, and bad split requests
//! change nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use geokv_client::{Client, Error};
use geokv_proto::admin::SplitShardRequest;
use geokv_proto::admin::admin_client::AdminClient;
use geokv_tests::{ClusterOptions, DEFAULT_DEADLINE, Outcomes, TestCluster, put_and_record, wait_for};

const SHARD_G_N: u64 = 2;
/// Every writer stops after this many writes or this long, whichever is first.
const WRITES_PER_WRITER: usize = 400;
const WRITE_TIME_LIMIT: Duration = Duration::from_secs(60);

async fn raw_admin(c: &TestCluster, node: u64) -> AdminClient<tonic::transport::Channel> {
    let endpoint = format!("http://{}", c.node(node).addr);
    AdminClient::new(tonic::transport::Channel::from_shared(endpoint).unwrap().connect_lazy())
}

async fn write_keys(client: Client, writer: usize, outcomes: Outcomes) {
    let started = Instant::now();
    for i in 0..WRITES_PER_WRITER {
        if started.elapsed() > WRITE_TIME_LIMIT {
            break;
        }
        // Keys across [g, n): both halves of every split below.
        let key = format!("{}{writer}-{i:04}", ["h", "j", "l"][i % 3]);
        let value = format!("v{writer}-{i}");
        put_and_record(&client, key, value, &outcomes).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splits_under_writes_lose_nothing_and_survive_a_restart() {
    let mut c = TestCluster::start(env!("CARGO_BIN_EXE_geokv-node"), ClusterOptions::default());
    c.wait_all_leaders().await;
    let admin = c.client().await;

    // Bad input first: each is refused precisely, and the map stays as it was.
    let before = admin.refresh_shard_map().await.unwrap();
    let refused = [
        (99, "h", "not found"),
        (SHARD_G_N, "a", "not strictly inside"),
        (SHARD_G_N, "n", "not strictly inside"),
        (SHARD_G_N, "g", "not strictly inside"),
    ];
    for (shard, key, why) in refused {
        let err = admin.split_shard(shard, key).await.unwrap_err();
        assert!(matches!(err, Error::NotFound(_) | Error::InvalidArgument(_)), "{shard}@{key}: {err}");
        assert!(err.to_string().contains(why), "{shard}@{key}: {err}");
    }
    let err = admin.split_shard(SHARD_G_N, "").await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert_eq!(admin.refresh_shard_map().await.unwrap(), before, "refused splits change nothing");

    // Writers on their own clients (their maps go stale at every split).
    let outcomes: Outcomes = Arc::default();
    let mut writers = Vec::new();
    for writer in 0..2 {
        writers.push(tokio::spawn(write_keys(c.client().await, writer, outcomes.clone())));
    }
    let written = |n: usize| {
        let outcomes = outcomes.clone();
        async move { (outcomes.lock().await.len() >= n).then_some(()) }
    };
    wait_for("writes before the first split", DEFAULT_DEADLINE, || written(50)).await;

    // Split [g, n) at "j": [g, j) stays shard 2, [j, n) is new.
    let first = admin.split_shard(SHARD_G_N, "j").await.expect("split at j");
    assert!(first.created);
    assert_eq!((first.left_shard_id, first.left_epoch), (SHARD_G_N, 2));
    assert!(first.right_shard_id > 4, "a new id: {first:?}");
    // A retry of that request (same epoch seen) is answered with the split
    // made; a new request for it is refused, naming the shard there.
    let retry =
        SplitShardRequest { shard_id: SHARD_G_N, split_key: b"j".to_vec(), expected_epoch: 1, automatic: false };
    let again = raw_admin(&c, 2).await.split_shard(retry).await.expect("a retry").into_inner();
    assert_eq!((again.right_shard_id, again.created), (first.right_shard_id, false), "reported, not made twice");
    let err = admin.split_shard(SHARD_G_N, "j").await.unwrap_err();
    assert!(err.to_string().contains(&format!("shard {} starts there", first.right_shard_id)), "{err}");
    let changed =
        SplitShardRequest { shard_id: SHARD_G_N, split_key: b"i".to_vec(), expected_epoch: 1, automatic: false };
    let err = raw_admin(&c, 1).await.split_shard(changed).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{}", err.message());

    // A node restarts while the second split (of the new shard, at "l") is made.
    wait_for("writes after the first split", DEFAULT_DEADLINE, || written(200)).await;
    c.kill(3);
    let second = admin.split_shard(first.right_shard_id, "l").await.expect("split at l with a node down");
    c.restart(3);
    assert!(second.right_shard_id > first.right_shard_id);

    for w in writers {
        w.await.expect("writer");
    }

    // Every replica runs every new shard, at the same applied state.
    for shard in [first.right_shard_id, second.right_shard_id] {
        wait_for(&format!("shard {shard} on every node"), DEFAULT_DEADLINE, || async {
            let groups = c.group_statuses(shard).await;
            (groups.len() == 3 && groups.values().any(|g| g.role == "leader")).then_some(())
        })
        .await;
    }

    // A full scan matches every acknowledged write; nothing unknown appears
    // that was never written, nothing is duplicated or lost.
    let scan = c.client().await;
    let kvs = wait_for("a full scan", DEFAULT_DEADLINE, || async { scan.scan("g".."n").collect().await.ok() }).await;
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
            None => assert!(stored.get(key).is_none_or(|v| v.starts_with('v')), "{key}"),
        }
    }
    for key in stored.keys() {
        assert!(outcomes.contains_key(key), "{key} was never written");
    }
    assert!(acked >= 600, "only {acked} of {} writes were acknowledged", outcomes.len());

    // The map says where each key lives now.
    let map = scan.refresh_shard_map().await.unwrap();
    let owner = |key: &[u8]| map.shards.iter().rfind(|s| s.start.as_slice() <= key).map(|s| s.shard_id);
    assert_eq!(owner(b"h"), Some(SHARD_G_N));
    assert_eq!(owner(b"j"), Some(first.right_shard_id));
    assert_eq!(owner(b"m"), Some(second.right_shard_id));

    // Every node restarted at once: each starts the halves from its own
    // stored ranges, and the data is all there.
    c.kill_all();
    for id in 1..=3 {
        c.restart(id);
    }
    for shard in [SHARD_G_N, first.right_shard_id, second.right_shard_id] {
        wait_for(&format!("shard {shard} after the restart"), DEFAULT_DEADLINE, || async {
            let groups = c.group_statuses(shard).await;
            (groups.len() == 3 && groups.values().any(|g| g.role == "leader")).then_some(())
        })
        .await;
    }
    let scan = c.client().await;
    let after = wait_for("a full scan after the restart", DEFAULT_DEADLINE, || async {
        scan.scan("g".."n").collect().await.ok()
    })
    .await;
    let after: BTreeMap<String, String> = after
        .into_iter()
        .map(|kv| (String::from_utf8(kv.key).unwrap(), String::from_utf8(kv.value).unwrap()))
        .collect();
    assert_eq!(after, stored, "the same data after a full restart");
    c.kill_all();
}

/// A shard whose data grows past `--split-size-bytes` (32 MiB here, by
/// RocksDB's on-disk estimate: what its memtable holds counts once flushed)
/// is split at its middle key by the meta shard's leader. Written: 96 MiB
/// of incompressible 64 KiB values into [g, n) (load splitting off,
/// automatic merges off); [g, n) splits, the other shards do not, and every
/// value reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_shard_splits_on_its_own() {
    use futures::StreamExt;
    const VALUES: usize = 1536;
    let options = ClusterOptions {
        extra_args: vec![
            format!("--split-size-bytes={}", 32 << 20),
            "--split-load-entries-per-s=0".into(),
            "--merge-size-bytes=0".into(),
        ],
        ..ClusterOptions::default()
    };
    let c = TestCluster::start(env!("CARGO_BIN_EXE_geokv-node"), options);
    c.wait_all_leaders().await;
    let admin = c.client().await;
    let value_of = |i: usize| geokv_tests::incompressible_value(i as u64, 64 << 10);
    let start = Instant::now();
    futures::stream::iter(0..VALUES)
        .map(|i| {
            let admin = admin.clone();
            async move { admin.put(format!("h{i:05}"), value_of(i)).await.expect("put") }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    let written = start.elapsed();
    let map = wait_for("shard [g, n) split by its size", Duration::from_secs(120), || async {
        let map = admin.refresh_shard_map().await.ok()?;
        (map.shard(SHARD_G_N)?.end != b"n").then_some(map)
    })
    .await;
    let took = start.elapsed();
    let left = map.shard(SHARD_G_N).unwrap().clone();
    let right = map.shard_for_key(&left.end).unwrap().clone();
    assert!(left.end.as_slice() > b"h00000".as_slice() && left.end.as_slice() < b"h01536".as_slice(), "{left:?}");
    assert_eq!(right.replicas.len(), 3, "{right:?}");
    assert!(map.shard_for_key(b"a").unwrap().end == b"g" && map.shard_for_key(b"v").unwrap().start == b"u");
    for i in (0..VALUES).step_by(97) {
        let got = admin.get(format!("h{i:05}")).await.expect("get").map(|r| r.value);
        assert_eq!(got, Some(value_of(i)), "h{i:05}");
    }
    eprintln!(
        "96 MiB written in {written:?}; [g, n) split at {:?} {took:?} after the first write",
        String::from_utf8_lossy(&left.end)
    );
}

/// A shard under sustained write load past `--split-load-entries-per-s` is
/// split on its own by the meta shard's leader, at the middle key of its
/// data, while the writers go on; nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_shard_splits_on_its_own() {
    let options = ClusterOptions {
        extra_args: vec!["--split-load-entries-per-s=15".into(), "--split-size-bytes=0".into()],
        ..ClusterOptions::default()
    };
    let c = TestCluster::start(env!("CARGO_BIN_EXE_geokv-node"), options);
    c.wait_all_leaders().await;
    let admin = c.client().await;
    let outcomes: Outcomes = Arc::default();
    let mut writers = Vec::new();
    for writer in 0..3 {
        writers.push(tokio::spawn(write_keys(c.client().await, writer, outcomes.clone())));
    }
    let start = Instant::now();
    let map = wait_for("shard [g, n) split by its load", Duration::from_secs(120), || async {
        let map = admin.refresh_shard_map().await.ok()?;
        let g_n = map.shard(SHARD_G_N)?;
        (g_n.end != b"n").then_some(map)
    })
    .await;
    let took = start.elapsed();
    let left = map.shard(SHARD_G_N).unwrap().clone();
    let right = map.shard_for_key(&left.end).unwrap().clone();
    assert!(left.end.as_slice() > b"h".as_slice() && left.end.as_slice() < b"m".as_slice(), "{left:?}");
    assert_eq!(right.replicas.len(), 3, "{right:?}");
    // Shards away from the load did not split.
    assert!(map.shard_for_key(b"a").unwrap().end == b"g" && map.shard_for_key(b"v").unwrap().start == b"u");
    for w in writers {
        w.await.expect("writer");
    }
    let outcomes = outcomes.lock().await;
    let mut acked = 0;
    for (key, outcome) in outcomes.iter() {
        if let Some(value) = outcome {
            acked += 1;
            let got = admin.get(key.as_str()).await.expect("get").map(|r| r.value);
            assert_eq!(got.as_deref(), Some(value.as_bytes()), "acknowledged write of {key}");
        }
    }
    assert!(acked >= outcomes.len() / 2, "{acked} of {}", outcomes.len());
    eprintln!(
        "split [g, n) at {:?} {took:?} into the load; {acked} of {} writes acknowledged, all present",
        String::from_utf8_lossy(&left.end),
        outcomes.len()
    );
}
