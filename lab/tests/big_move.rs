//! A shard of several GiB moves across the emulated WAN: its snapshot is
//! streamed in chunks from the leader to a node in another region, with
//! bounded memory on both sides. Long and disk-hungry (the shard three times
//! over, then once more), so run by hand:
//!
//! ```sh
//! GEOKV_BIG_MOVE_GIB=2 cargo nextest run -p geokv-lab --test big_move --run-ignored only --no-capture
//! ```
//!
//! It loads the shard with the links at zero delay, puts the 4-region
//! matrix's delays back, moves one replica to the node without one, and
//! prints the time, the rate and the peak RSS of the sending leader and the
//! receiving node (numbers: docs/operations.md, "Snapshots and log
//! compaction").

use std::time::{Duration, Instant};

use futures::StreamExt;
use geokv_client::Consistency;
use geokv_lab::regions::FOUR_REGIONS_TOML;
use geokv_lab::{Endpoint, Lab, LabConfig, NodeProgram, RegionMatrix};
use geokv_tests::rss_bytes;

fn value_of(i: usize) -> Vec<u8> {
    geokv_tests::incompressible_value(i as u64, 1 << 20)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "loads several GiB; run by hand (see the module docs)"]
async fn a_shard_of_several_gib_moves_across_the_wan() {
    let gib: usize = std::env::var("GEOKV_BIG_MOVE_GIB").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let dir = tempfile::tempdir().unwrap();
    let mut config = LabConfig::new(dir.path(), NodeProgram::Lab(env!("CARGO_BIN_EXE_geokv-lab").into()));
    config.regions = RegionMatrix::parse(FOUR_REGIONS_TOML).unwrap();
    config.start_timeout = Duration::from_secs(120);
    config.node_args = vec!["--split-size-bytes=0".into(), "--merge-size-bytes=0".into()];
    let lab = Lab::start(config).await.expect("the lab starts");
    let mut everyone: Vec<Endpoint> = lab.nodes().iter().map(|n| Endpoint::Node(n.id)).collect();
    everyone.extend(lab.regions().iter().map(|r| Endpoint::Client(r.clone())));
    lab.set_latency(&everyone, &everyone, false, Some(0), None).expect("no delay while loading");

    let client = lab.client_for_region("us-east").await.unwrap();
    let start = Instant::now();
    futures::stream::iter(0..gib * 1024)
        .map(|i| {
            let client = client.clone();
            async move { client.put(format!("a{i:06}"), value_of(i)).await.expect("put") }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    println!("loaded {gib} GiB into one shard in {:?}", start.elapsed());
    lab.heal_between(&everyone, &everyone, true).expect("the matrix's delays back");

    let map = client.refresh_shard_map().await.unwrap();
    let shard = map.shard_for_key(b"a").unwrap().clone();
    let replicas: Vec<u64> = shard.replicas.iter().map(|r| r.node_id).collect();
    let to = lab.nodes().iter().map(|n| n.id).find(|n| !replicas.contains(n)).expect("a node without a replica");
    let leader = lab.wait_for_leader(shard.shard_id, Duration::from_secs(60), |_| true).await.unwrap();
    let from = replicas.iter().copied().find(|r| *r != leader).unwrap();
    let (leader_pid, to_pid) = (lab.node(leader).unwrap().pid().unwrap(), lab.node(to).unwrap().pid().unwrap());
    let (leader_before, to_before) = (rss_bytes(leader_pid), rss_bytes(to_pid));
    println!(
        "moving shard {} ({gib} GiB) from node {from} to node {to} ({}); leader node {leader} ({})",
        shard.shard_id,
        lab.node(to).unwrap().region,
        lab.node(leader).unwrap().region
    );
    let start = Instant::now();
    // Repeating the request is safe; the nodes may be busy compacting what
    // was just loaded.
    let mut attempts = 0;
    while let Err(e) = client.move_replica(shard.shard_id, from, to).await {
        attempts += 1;
        assert!(attempts < 10, "move not recorded: {e}");
        println!("move request: {e}; again");
    }
    let (mut leader_peak, mut to_peak) = (leader_before, to_before);
    let done = loop {
        leader_peak = leader_peak.max(rss_bytes(leader_pid));
        to_peak = to_peak.max(rss_bytes(to_pid));
        let map = client.refresh_shard_map().await.unwrap();
        let s = map.shard(shard.shard_id).unwrap();
        if !s.is_changing() {
            break s.clone();
        }
        assert!(start.elapsed() < Duration::from_secs(3600), "the move took over an hour");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let took = start.elapsed();
    assert!(done.replicas.iter().any(|r| r.node_id == to), "{done:?}");
    println!(
        "moved {gib} GiB in {took:?} ({:.1} MiB/s); RSS of leader node {leader}: {} -> peak {} MiB, of node {to}: {} \
         -> peak {} MiB",
        (gib * 1024) as f64 / took.as_secs_f64(),
        leader_before >> 20,
        leader_peak >> 20,
        to_before >> 20,
        to_peak >> 20
    );
    // The new replica serves the data it was sent (stale reads from its
    // region go to it).
    let local = lab.client_for_region(&lab.node(to).unwrap().region).await.unwrap();
    for i in (0..gib * 1024).step_by(331) {
        let got = local.get_with(format!("a{i:06}"), Consistency::Stale).await.expect("get");
        assert_eq!(got.kv.map(|r| r.value), Some(value_of(i)), "a{i:06}");
    }
    lab.shutdown(false);
}
