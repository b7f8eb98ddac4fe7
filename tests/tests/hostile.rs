//! Hostile input on the wire: a property test that sends arbitrary bytes as
//! the request message of every RPC a node serves (client, admin and peer
//! services, over TLS as root and as a member), plus well-formed messages
//! carrying arbitrary peer payloads. The node must answer each with a
//! status (never crash, never hang past the RPC timeout), and still serve
//! reads and writes afterwards with every acknowledged write in place.
//!
//! The kept regression inputs in `tests/testdata/hostile/` go first; the
//! random cases are seeded (printed), so a failure is replayed with
//! `GEOKV_HOSTILE_SEED=N` (and its input belongs in the corpus).

use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};
use geokv_tests::{ClusterOptions, DEFAULT_DEADLINE, TestCluster, wait_for};
use rand::{Rng, SeedableRng};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Sends and receives raw message bytes (no protobuf on this side).
#[derive(Default, Clone)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Every unary method of the node's services (streaming ones are fed
/// below through the generated clients).
const UNARY: &[&str] = &[
    "/geokv.kv.Kv/Get",
    "/geokv.kv.Kv/Put",
    "/geokv.kv.Kv/Delete",
    "/geokv.kv.Kv/CompareAndSwap",
    "/geokv.kv.Kv/Scan",
    "/geokv.kv.Kv/Batch",
    "/geokv.admin.Admin/GetShardMap",
    "/geokv.admin.Admin/NodeStatus",
    "/geokv.admin.Admin/TransferLeader",
    "/geokv.admin.Admin/SetLeaderRegion",
    "/geokv.admin.Admin/ListConflicts",
    "/geokv.admin.Admin/CreateShard",
    "/geokv.admin.Admin/SplitShard",
    "/geokv.admin.Admin/MoveReplica",
    "/geokv.admin.Admin/DrainNode",
    "/geokv.admin.Admin/RemoveNode",
    "/geokv.admin.Admin/JoinCluster",
    "/geokv.admin.Admin/SplitKey",
    "/geokv.admin.Admin/MergeShard",
    "/geokv.admin.Admin/AddUser",
    "/geokv.admin.Admin/RemoveUser",
    "/geokv.admin.Admin/GrantUser",
    "/geokv.admin.Admin/ListUsers",
    "/geokv.raft.Raft/Vote",
    "/geokv.raft.Raft/PreVote",
    "/geokv.raft.Raft/AppendEntries",
    "/geokv.raft.Raft/InstallSnapshotStream",
    "/geokv.raft.Raft/SnapshotProgress",
    "/geokv.raft.Raft/TransferLeader",
    "/geokv.raft.Raft/ReadIndex",
    "/geokv.raft.Raft/SafeTime",
    "/geokv.raft.Raft/Propose",
];

/// Cases per method (`GEOKV_HOSTILE_CASES` for a longer run).
const CASES: usize = 40;
/// The longest arbitrary message, in bytes.
const MAX_CASE_BYTES: usize = 2_048;
/// Bound on one answer.
const RPC_TIMEOUT: Duration = Duration::from_secs(5);

/// Arbitrary bytes, sometimes shaped like protobuf (a field tag and a
/// length that lies) so decoding goes deeper than the first byte.
fn case(rng: &mut rand::rngs::StdRng) -> Vec<u8> {
    let len = rng.random_range(0..MAX_CASE_BYTES);
    let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
    if rng.random_bool(0.3) && bytes.len() > 6 {
        // Field 1..8, length-delimited, with a length far past the end.
        bytes[0] = (rng.random_range(1u8..8) << 3) | 2;
        bytes[1..6].copy_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    }
    bytes
}

/// The kept regression inputs (`tests/testdata/hostile/*.bin`).
fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/hostile");
    let mut inputs: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .expect("tests/testdata/hostile")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "bin"))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    inputs.sort();
    assert!(inputs.len() >= 10, "the corpus is in tests/testdata/hostile");
    inputs
}

async fn call(channel: tonic::transport::Channel, path: &'static str, body: Vec<u8>) -> Result<(), String> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| format!("not ready: {e}"))?;
    let mut request = tonic::Request::new(Bytes::from(body));
    request.set_timeout(RPC_TIMEOUT);
    let path = http::uri::PathAndQuery::from_static(path);
    match tokio::time::timeout(RPC_TIMEOUT * 2, grpc.unary(request, path, RawCodec)).await {
        Ok(_answered) => Ok(()),
        Err(_) => Err("no answer within twice the RPC timeout".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbitrary_bytes_on_every_rpc_get_a_status_and_harm_nothing() {
    let seed: u64 = std::env::var("GEOKV_HOSTILE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("GEOKV_HOSTILE_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let cases: usize = std::env::var("GEOKV_HOSTILE_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(CASES);
    let c = TestCluster::start(env!("CARGO_BIN_EXE_geokv-node"), ClusterOptions { tls: true, ..Default::default() });
    let client = c.client().await;
    wait_for("a first write", DEFAULT_DEADLINE, || async { client.put("before", "v").await.ok() }).await;
    for i in 0..50 {
        client.put(format!("k{i:02}"), format!("v{i}")).await.unwrap();
    }

    // As root (client RPCs reach decoding and validation; peer RPCs are
    // refused first) and as a member (peer RPCs reach their decoding).
    let started = Instant::now();
    let mut sent = 0usize;
    for identity in ["root", "node"] {
        let channel = c.tls_channel(1, Some(identity)).await;
        // As a member, random bytes on the peer RPCs only: a real member's
        // messages are trusted, and these rarely decode (see below).
        let paths = UNARY.iter().filter(|p| identity == "root" || p.starts_with("/geokv.raft."));
        for path in paths {
            for (name, body) in corpus() {
                call(channel.clone(), path, body).await.unwrap_or_else(|e| panic!("{path} as {identity}, {name}: {e}"));
                sent += 1;
            }
            for _ in 0..cases {
                let body = case(&mut rng);
                call(channel.clone(), path, body).await.unwrap_or_else(|e| panic!("{path} as {identity}: {e}"));
                sent += 1;
            }
        }
        // Well-formed peer messages with arbitrary payloads, to shards no
        // node hosts (decoding and routing; payloads for real shards are
        // decoded by the unit test `raft::tests::arbitrary_peer_bytes_*`:
        // a member is trusted with real shards' messages).
        let mut raft = geokv_proto::raft::raft_client::RaftClient::new(channel.clone());
        for _ in 0..cases {
            let shard_id = rng.random_range(1_000_000..2_000_000);
            let message = geokv_proto::raft::RaftMessage { shard_id, payload: case(&mut rng), ..Default::default() };
            let mut request = tonic::Request::new(message);
            request.set_timeout(RPC_TIMEOUT);
            let answered = tokio::time::timeout(RPC_TIMEOUT * 2, raft.append_entries(request)).await;
            assert!(answered.is_ok(), "AppendEntries with an arbitrary payload hung");
            sent += 1;
        }
    }
    eprintln!("{sent} hostile requests answered in {:?}", started.elapsed());

    for node in &c.nodes {
        assert!(node.is_running(), "node {} died", node.id);
    }
    let after = wait_for("a write after the hostile requests", DEFAULT_DEADLINE, || async {
        client.put("after", "v").await.ok()
    })
    .await;
    assert!(after.version > 0);
    for i in 0..50 {
        assert_eq!(client.get(format!("k{i:02}")).await.unwrap().unwrap().value, format!("v{i}").as_bytes());
    }
    for id in 1..=3 {
        assert!(!c.log(id).contains("panicked"), "node {id} panicked: {}", c.log(id));
    }
}
