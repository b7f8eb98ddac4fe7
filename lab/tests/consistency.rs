//! Each read level across the emulated 3-region WAN, with the leader in
//! us-east: where it is served and what it costs from each region. The
//! latencies are printed (docs/consistency.md quotes them), not asserted:
//! speed belongs to benchmarks; what is asserted is who served each read and
//! what it reported.

use std::time::{Duration, Instant};

use geokv_client::Consistency;
use geokv_lab::{Lab, LabConfig, NodeProgram};

const DEADLINE: Duration = Duration::from_secs(60);
const SAMPLES: usize = 15;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// A 3-region lab (kept in `dir`) whose shard of `key` is led from us-east,
/// with `key` written there once: the lab, the shard, and a us-east client.
async fn lab_led_from_us_east(dir: &std::path::Path, key: &str) -> (Lab, u64, geokv_client::Client) {
    let mut config = LabConfig::new(dir, NodeProgram::Lab(env!("CARGO_BIN_EXE_geokv-lab").into()));
    config.start_timeout = DEADLINE;
    let lab = Lab::start(config).await.expect("the lab starts");
    let shard = lab.shard_of(key.as_bytes()).await.unwrap();
    let east = lab.nodes().iter().find(|n| n.region == "us-east").unwrap().id;
    lab.transfer_leader(shard, east, DEADLINE).await.expect("leadership moves to us-east");
    let client = lab.client_for_region("us-east").await.unwrap();
    client.put(key, "v0").await.expect("put");
    (lab, shard, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_levels_from_every_region_with_the_leader_in_us_east() {
    let dir = tempfile::tempdir().unwrap();
    let key = "profile:42";
    let (lab, shard, _writer) = lab_led_from_us_east(dir.path(), key).await;

    let levels = [
        Consistency::Linearizable,
        Consistency::Lease,
        Consistency::Follower,
        Consistency::Bounded { max_staleness_ms: 1_000 },
        Consistency::Stale,
    ];
    let mut report = Vec::new();
    for region in ["us-east", "us-west", "eu-west"] {
        let client = lab.client_for_region(region).await.unwrap();
        let mut puts = Vec::new();
        for i in 0..SAMPLES {
            let start = Instant::now();
            client.put(key, format!("{region}-{i}")).await.expect("put");
            puts.push(start.elapsed());
        }
        report.push(format!("{region:8} put                 median {:>9.1?}", median(puts)));
        for level in levels {
            // Warm up (connections, safe times), then measure.
            for _ in 0..3 {
                client.get_with(key, level).await.expect("warm-up read");
            }
            let mut samples = Vec::new();
            let mut last = None;
            for _ in 0..SAMPLES {
                let start = Instant::now();
                let read = client.get_with(key, level).await.expect("read");
                samples.push(start.elapsed());
                last = Some(read.info);
            }
            let info = last.unwrap();
            match level {
                Consistency::Linearizable | Consistency::Lease => {
                    assert_eq!(info.region, "us-east", "{level} is served by the leader");
                }
                Consistency::Follower => {
                    assert_eq!(info.region, region, "a follower read is served in the client's region");
                    assert_eq!(info.staleness_bound_ms, Some(0));
                }
                Consistency::Bounded { max_staleness_ms } => {
                    assert_eq!(info.region, region, "a bounded read is served in the client's region");
                    let bound = info.staleness_bound_ms.unwrap_or(0);
                    assert!(info.fell_back || bound <= max_staleness_ms, "{info:?}");
                }
                Consistency::Stale => assert_eq!(info.region, region),
            }
            report.push(format!(
                "{region:8} {:<19} median {:>9.1?}  served={} by {} staleness<={:?}ms fell_back={}",
                level.to_string(),
                median(samples),
                info.served,
                info.region,
                info.staleness_bound_ms,
                info.fell_back
            ));
        }
    }
    println!("leader of shard {shard} in us-east (RTT us-east/us-west 66 ms, us-east/eu-west 64 ms)");
    for line in report {
        println!("{line}");
    }
}

/// A linearizable read at the leader confirms its leadership in one quorum
/// round trip, not two (openraft's own ReadIndex waits for the heartbeat in
/// flight, then for its own; `raft::read_index`). Counted in round trips:
/// every node-to-node link is set to 100 ms each way, so a round is 200 ms,
/// two are 400; the client sits next to the leader. A read must pay at
/// least one round (it proves leadership) and well under two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linearizable_read_at_the_leader_takes_one_quorum_round_trip() {
    const ONE_WAY_MS: u64 = 100;
    let round = Duration::from_millis(2 * ONE_WAY_MS);
    let dir = tempfile::tempdir().unwrap();
    let key = "rounds:1";
    let (lab, _, client) = lab_led_from_us_east(dir.path(), key).await;
    let nodes: Vec<_> = lab.nodes().iter().map(|n| geokv_lab::Endpoint::Node(n.id)).collect();
    lab.set_latency(&nodes, &nodes, false, Some(ONE_WAY_MS), None).unwrap();
    for _ in 0..3 {
        client.get_with(key, Consistency::Linearizable).await.expect("warm-up read");
    }
    let mut samples = Vec::new();
    for _ in 0..SAMPLES {
        let start = Instant::now();
        let read = client.get_with(key, Consistency::Linearizable).await.expect("read");
        samples.push(start.elapsed());
        assert_eq!(read.info.served, Consistency::Linearizable, "{:?}", read.info);
        assert_eq!(read.info.region, "us-east", "served by the leader: {:?}", read.info);
    }
    let typical = median(samples.clone());
    println!("linearizable reads at the leader, quorum round trip {round:?}: median {typical:?} of {samples:?}");
    assert!(typical >= round, "median {typical:?}: a read must wait for a quorum ({round:?})");
    assert!(typical < round * 3 / 2, "median {typical:?}: more than one quorum round trip ({round:?}) per read");
}
