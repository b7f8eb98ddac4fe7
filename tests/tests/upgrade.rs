//! The disk format across releases.
//!
//! `tests/testdata/format-1` holds the data directories of a three-node
//! cluster written by the last release of disk format 1 (bincode, no format
//! key): keys in four shards, deletes, a split, an exactly-once session, an
//! eventual range, snapshots taken and logs purged. The test starts a
//! cluster of today's binary on a copy of them: every node upgrades its
//! directory once, and the cluster serves exactly what was written, the
//! session still answers its retry without applying it again, and new writes
//! work. The fixture was made by `writes_the_format_1_fixture` (ignored; it
//! describes how), with the binary of that release.
//!
//! The reverse, a directory from a newer format than this binary knows, is
//! refused with a clear error and left untouched (the same test: the
//! fixture's addresses are fixed, so one cluster of it runs at a time).

use std::path::{Path, PathBuf};
use std::time::Duration;

use geokv_proto::kv::{self as pb, Consistency, ScanRequest};
use geokv_tests::{ClusterOptions, DEFAULT_DEADLINE, TestCluster, copy_dir, wait_for};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/format-1");

/// The session of the fixture's exactly-once write.
const SESSION: pb::WriteSession = pb::WriteSession { client_id: 0xfeed, sequence: 1, first_incomplete: 1 };
const SESSION_KEY: &str = "p/session";

/// The fixture's cluster: fixed addresses (its shard map names them) on a
/// loopback address no other test uses.
fn options(seed_dir: Option<PathBuf>) -> ClusterOptions {
    ClusterOptions {
        addrs: (1..=3).map(|i| format!("127.0.77.{i}:7701")).collect(),
        snapshot_every_entries: 40,
        logs_kept_after_snapshot: 10,
        extra_args: vec!["--eventual-ranges=ev/..ev0".into()],
        seed_dir,
        ..ClusterOptions::default()
    }
}

/// What the fixture's cluster holds: key → value, for every key written
/// through Raft shards.
fn expected() -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    for prefix in ["b", "h", "p", "w"] {
        for i in 0..40 {
            let deleted = prefix == "b" && i < 10;
            out.push((format!("{prefix}/{i:03}"), (!deleted).then(|| format!("v{i}-{prefix}"))));
        }
    }
    out.push(("m/001".into(), Some("right of the split".into())));
    out.push((SESSION_KEY.into(), Some("after".into())));
    out
}

fn session_put() -> pb::PutRequest {
    pb::PutRequest { header: None, session: Some(SESSION), key: SESSION_KEY.into(), value: "once".into() }
}

async fn put_at_leader(c: &TestCluster, req: pb::PutRequest) -> pb::WriteResponse {
    let map = c.client().await.refresh_shard_map().await.expect("shard map");
    let shard = map.shard_for_key(&req.key).expect("a shard for the key").shard_id;
    let leader = c.wait_leader(shard).await;
    c.kv(leader).await.put(req).await.expect("put at the leader").into_inner()
}

/// The eventual range `ev/..ev0` as `node` serves it: key → value.
async fn eventual(c: &TestCluster, node: u64) -> Option<Vec<(String, String)>> {
    let req = ScanRequest {
        header: None,
        start: "ev/".into(),
        end: "ev0".into(),
        limit: 100,
        consistency: Consistency::Stale as i32,
        max_staleness_ms: 0,
    };
    let resp = c.kv(node).await.scan(req).await.ok()?.into_inner();
    Some(
        resp.kvs
            .into_iter()
            .map(|kv| (String::from_utf8_lossy(&kv.key).into(), String::from_utf8_lossy(&kv.value).into()))
            .collect(),
    )
}

const EVENTUAL: [(&str, &str); 2] = [("ev/a", "from node 1"), ("ev/b", "from node 2")];

/// Writes `tests/testdata/format-1` anew. Run it only with the binary of
/// the release whose format the fixture keeps (it was run once, before disk
/// format 2): `cargo nextest run -p geokv-tests --test upgrade
/// writes_the_format_1_fixture --run-ignored only`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes the fixture; run by hand with the release that defines it"]
async fn writes_the_format_1_fixture() {
    let mut c = TestCluster::start(env!("CARGO_BIN_EXE_geokv-node"), options(None));
    c.wait_all_leaders().await;
    let client = c.client().await;
    for prefix in ["b", "h", "p", "w"] {
        for i in 0..40 {
            client.put(format!("{prefix}/{i:03}"), format!("v{i}-{prefix}")).await.expect("put");
        }
    }
    for i in 0..10 {
        client.delete(format!("b/{i:03}")).await.expect("delete");
    }
    let map = client.refresh_shard_map().await.unwrap();
    let shard = map.shard_for_key(b"h").unwrap().shard_id;
    client.split_shard(shard, "k").await.expect("split at k");
    client.put("m/001", "right of the split").await.expect("put right of the split");
    let first = put_at_leader(&c, session_put()).await;
    assert!(first.version > 0, "{first:?}");
    client.put(SESSION_KEY, "after").await.expect("overwrite the session's key");
    for (node, (key, value)) in [1u64, 2].into_iter().zip(EVENTUAL) {
        let req = pb::PutRequest { header: None, session: None, key: key.into(), value: value.into() };
        c.kv(node).await.put(req).await.expect("eventual put");
    }
    let want: Vec<(String, String)> = EVENTUAL.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    for node in 1..=3 {
        wait_for("the eventual writes on every replica", DEFAULT_DEADLINE, || async {
            (eventual(&c, node).await? == want).then_some(())
        })
        .await;
    }
    check(&c).await;
    for node in 1..=3 {
        c.terminate(node, Duration::from_secs(20)).expect("a clean stop");
    }
    let out = Path::new(FIXTURE);
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out).unwrap();
    std::fs::write(out.join("session-version"), first.version.to_string()).unwrap();
    for node in 1..=3 {
        let to = out.join(format!("node-{node}"));
        copy_dir(&c.node(node).data_dir, &to);
        // RocksDB's own info logs and lock file: not data.
        for entry in std::fs::read_dir(to.join("db")).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with("LOG") || name == "LOCK" {
                std::fs::remove_file(path).unwrap();
            }
        }
    }
}

/// Every key reads back as written (linearizable), deleted ones are gone.
async fn check(c: &TestCluster) {
    let client = c.client().await;
    for (key, value) in expected() {
        let got = client.get(&key).await.unwrap_or_else(|e| panic!("get {key}: {e}"));
        assert_eq!(got.map(|v| String::from_utf8(v.value).unwrap()), value, "{key}");
    }
}

/// Today's binary opens format-1 directories: each node upgrades its
/// directory once (and says so), and the cluster serves what was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_written_by_format_1_is_upgraded_and_serves_what_it_held() {
    let mut c = TestCluster::start(env!("CARGO_BIN_EXE_geokv-node"), options(Some(FIXTURE.into())));
    c.wait_all_leaders().await;
    for node in 1..=3 {
        let log = c.log(node);
        assert!(log.contains("disk format upgraded from 1 to 2"), "node {node} says it upgraded:\n{log}");
    }
    check(&c).await;

    // The session survived: its retry answers without applying again.
    let retry = put_at_leader(&c, session_put()).await;
    let original: u64 = std::fs::read_to_string(Path::new(FIXTURE).join("session-version")).unwrap().parse().unwrap();
    assert_eq!(retry.version, original, "the retry answers the original write");
    let client = c.client().await;
    let value = client.get(SESSION_KEY).await.unwrap().map(|v| v.value);
    assert_eq!(value.as_deref(), Some(&b"after"[..]), "the retried session write was applied again");

    let want: Vec<(String, String)> = EVENTUAL.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    for node in 1..=3 {
        assert_eq!(eventual(&c, node).await.as_ref(), Some(&want), "node {node}'s eventual range");
    }
    // And the cluster goes on: new writes, including across the split.
    client.put("z/new", "written after the upgrade").await.expect("a new write");
    client.put("m/002", "right shard, after the upgrade").await.expect("a new write right of the split");

    // A restart opens the upgraded directories without upgrading again.
    c.kill(2);
    c.restart(2);
    c.wait_all_leaders().await;
    assert_eq!(c.log(2).matches("disk format upgraded").count(), 1, "upgraded once");
    check(&c).await;
    let got = client.get("z/new").await.unwrap().map(|v| v.value);
    assert_eq!(got.as_deref(), Some(&b"written after the upgrade"[..]));

    // The reverse: a directory from a newer disk format than this build
    // knows. The node refuses to start, says why and what to do, and
    // changes nothing. (In this test: the fixture's addresses are fixed.)
    c.terminate(3, Duration::from_secs(20)).expect("a clean stop");
    let db_dir = c.node(3).data_dir.join("db");
    let set_format = |value: &[u8]| {
        let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), &db_dir).unwrap();
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), &db_dir, cfs).unwrap();
        let before = db.get(b"geokv.disk_format").unwrap();
        db.put(b"geokv.disk_format", value).unwrap();
        before
    };
    assert_eq!(set_format(b"3").as_deref(), Some(&b"2"[..]), "the upgraded directory says format 2");
    c.restart(3);
    let status = c.wait_exit(3, DEFAULT_DEADLINE).await;
    assert!(!status.success(), "{status}");
    let log = c.log(3);
    assert!(log.contains("holds disk format 3, written by a newer geokv"), "{log}");
    assert!(log.contains("Run a release that reads format 3"), "{log}");
    assert_eq!(set_format(b"3").as_deref(), Some(&b"3"[..]), "left as it was");
    // The other two go on serving.
    client.put("h/while-3-is-out", "x").await.expect("a write with two of three");
}
