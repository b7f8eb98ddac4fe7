//! Labs of real node processes: the WAN shows in the latency of a write, a
//! partitioned region cannot write, a killed leader is replaced and rejoins,
//! and nothing is left running afterwards.

use std::time::{Duration, Instant};

use geokv_client::{Consistency, Error as ClientError};
use geokv_lab::process::pid_exists;
use geokv_lab::regions::FIVE_REGIONS_TOML;
use geokv_lab::{FaultShape, Lab, LabConfig, NodeProgram, RegionMatrix};

/// Longest wait for any cluster condition on a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(60);
const PUTS_MEASURED: usize = 20;

fn config(dir: &tempfile::TempDir) -> LabConfig {
    let mut config = LabConfig::new(dir.path(), NodeProgram::Lab(env!("CARGO_BIN_EXE_geokv-lab").into()));
    config.start_timeout = DEADLINE;
    config
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

async fn applied(lab: &Lab, shard: u64, node: u64) -> Option<u64> {
    lab.status().await.shards.iter().find(|s| s.shard_id == shard)?.applied.get(&node).copied()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_regions_quorum_latency_partition_failover_and_cleanup() {
    let dir = tempfile::tempdir().unwrap();
    let lab = Lab::start(config(&dir)).await.expect("the lab starts");
    assert_eq!(lab.regions(), ["us-east", "us-west", "eu-west"]);
    let east = lab.nodes().iter().find(|n| n.region == "us-east").unwrap().id;

    // 1. A write led from us-east waits for the nearest follower: eu-west,
    //    64 ms away. Not ~0 (the WAN is there), not 2 x RTT.
    let key = "greeting";
    let shard = lab.shard_of(key.as_bytes()).await.unwrap();
    lab.transfer_leader(shard, east, DEADLINE).await.expect("leadership moves to us-east");
    let client = lab.client_for_region("us-east").await.unwrap();
    client.put(key, "warm-up").await.expect("warm-up put");
    let mut samples = Vec::new();
    for i in 0..PUTS_MEASURED {
        let start = Instant::now();
        client.put(key, format!("v{i}")).await.expect("put");
        samples.push(start.elapsed());
    }
    let put_median = median(samples.clone());
    println!("put via us-east, leader in us-east: median {put_median:?} of {PUTS_MEASURED}: {samples:?}");
    assert!(put_median > Duration::from_millis(50), "median put {put_median:?}: the WAN is missing");
    assert!(put_median < Duration::from_millis(500), "median put {put_median:?}");

    // The same with every link at zero delay: what the node itself costs
    // (fsyncs, a debug build), to read the number above against.
    let nodes: Vec<_> = lab.nodes().iter().map(|n| geokv_lab::Endpoint::Node(n.id)).collect();
    lab.set_latency(&nodes, &nodes, false, Some(0), None).unwrap();
    let mut local = Vec::new();
    for i in 0..PUTS_MEASURED {
        let start = Instant::now();
        client.put(key, format!("local{i}")).await.expect("put");
        local.push(start.elapsed());
    }
    println!("the same with zero delay on every link: median {:?}", median(local));
    lab.links().heal(None, true);

    let eu = lab.client_for_region("eu-west").await.unwrap();
    let start = Instant::now();
    let read = eu.get_with(key, Consistency::Linearizable).await.unwrap();
    println!(
        "linearizable read from eu-west (leader in us-east): {:?}, served by {}",
        start.elapsed(),
        read.info.region
    );

    // 2. eu-west cut off: us-east still commits with us-west; eu-west's
    //    clients cannot write until the heal.
    lab.isolate_region("eu-west").await.unwrap();
    let start = Instant::now();
    client.put(key, "during the partition").await.expect("us-east + us-west are a quorum");
    println!("put via us-east with eu-west cut off: {:?}", start.elapsed());
    let eu_short = geokv_client::ClientConfig::new([lab.endpoint_for_region("eu-west").unwrap()])
        .local_address(Some(lab.client_ip_for_region("eu-west").unwrap()))
        .deadline(Duration::from_secs(2))
        .rpc_timeout(Duration::from_millis(1000));
    let eu_short = eu_short.connect().await.expect("eu-west's own node still answers");
    match eu_short.put(key, "from eu-west").await {
        Err(ClientError::Indeterminate { .. } | ClientError::Unavailable { .. }) => {}
        other => panic!("a write from a cut-off region must not succeed: {other:?}"),
    }
    lab.heal();
    eu.put("greeting", "from eu-west after the heal").await.expect("eu-west writes again after the heal");

    // 3. Kill the leader: another region takes over; the node restarts and
    //    catches up.
    let pids: Vec<u32> = lab.nodes().iter().filter_map(|n| n.pid()).collect();
    lab.kill(east).unwrap();
    let new_leader = lab.wait_for_leader(shard, DEADLINE, |id| id != east).await.expect("a new leader");
    let new_region = &lab.node(new_leader).unwrap().region;
    println!("node {east} (us-east) killed; node {new_leader} ({new_region}) leads shard {shard}");
    assert_ne!(new_region, "us-east");
    let west = lab.client_for_region("us-west").await.unwrap();
    let written = west.put(key, "after failover").await.expect("writes go on without us-east");
    lab.restart(east).unwrap();
    lab.wait_until("the restarted node catches up", DEADLINE, |lab| async move {
        applied(lab, shard, east).await.filter(|index| *index >= written.version)
    })
    .await
    .expect("the restarted node rejoins");

    // 4. Nothing outlives the lab.
    let pids: Vec<u32> = pids.into_iter().chain(lab.nodes().iter().filter_map(|n| n.pid())).collect();
    drop(lab);
    let alive: Vec<u32> = pids.into_iter().filter(|pid| pid_exists(*pid)).collect();
    assert!(alive.is_empty(), "node processes {alive:?} outlived the lab");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_regions_serve_and_shape_faults() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&dir);
    config.regions = RegionMatrix::parse(FIVE_REGIONS_TOML).unwrap();
    let lab = Lab::start(config).await.expect("the five-region lab starts");
    assert_eq!(lab.nodes().len(), 5);

    let wdc = lab.client_for_region("wdc").await.unwrap();
    let written = wdc.put("hello", "world").await.expect("put in wdc");
    let tok = lab.client_for_region("tok").await.unwrap();
    let start = Instant::now();
    let read = tok.get("hello").await.expect("get in tok").expect("the key exists");
    println!("linearizable get from tok: {:?}", start.elapsed());
    assert_eq!((read.value.as_slice(), read.version), (b"world".as_slice(), written.version));

    // Majorities ring: everyone reaches exactly a majority (itself + 2),
    // and no two nodes reach the same set.
    let cut = lab.links_for(&FaultShape::MajoritiesRing { seed: 7 }).await.unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for node in lab.nodes() {
        let me = geokv_lab::Endpoint::Node(node.id);
        let blocked = cut.iter().filter(|(from, _)| *from == me).count();
        assert_eq!(blocked, 2, "node {} is cut from {blocked} nodes", node.id);
        let reach: Vec<_> = cut.iter().filter(|(from, _)| *from == me).map(|(_, to)| to.clone()).collect();
        assert!(seen.insert(reach), "two nodes see the same majority");
    }
    // Bridge: 2 + 2 nodes cut apart, both ways; the bridge reaches all.
    assert_eq!(lab.links_for(&FaultShape::Bridge { seed: 7 }).await.unwrap().len(), 8);
    // Random halves: 2 x 3 node pairs, both ways.
    assert_eq!(lab.links_for(&FaultShape::RandomHalves { seed: 7 }).await.unwrap().len(), 12);
}

/// A region lost and rebuilt: `kill-region`, then `add-node` in that region,
/// through the lab's own proxies (the new node is behind the emulated WAN
/// like the others and advertises its proxy's address).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_to_a_lost_region_takes_its_shards() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&dir);
    config.rebalance = true;
    config.node_args.push("--node-dead-after-ms=3000".into());
    let lab = Lab::start(config).await.expect("the lab starts");
    let east = lab.client_for_region("us-east").await.unwrap();
    east.put("before", "the loss").await.expect("put");

    assert_eq!(lab.kill_region("eu-west").unwrap(), vec![3]);
    east.put("during", "the loss").await.expect("writable on 2 of 3");
    let id = lab.add_node("eu-west").await.expect("a node joins eu-west");
    assert_eq!(id, 4);
    let node = lab.node(4).unwrap();
    assert!(node.joined && node.region == "eu-west");
    let map = lab
        .wait_until("node 3's replicas re-created on node 4", Duration::from_secs(120), |lab| async move {
            let map = lab.client_for_region("us-east").await.ok()?.refresh_shard_map().await.ok()?;
            let rebuilt = map
                .shards
                .iter()
                .all(|s| !s.is_placed_on(3) && s.is_placed_on(4) && s.replicas.len() == 3 && s.adding_node.is_none());
            rebuilt.then_some(map)
        })
        .await
        .expect("eu-west rebuilt");
    assert_eq!(map.node(4).map(|n| n.addr.clone()), Some(node.advertised.to_string()));
    assert_eq!(map.node(3).map(|n| n.state), Some(geokv_client::NodeState::Down));
    let read = east.get("before").await.expect("get").expect("kept");
    assert_eq!(read.value, b"the loss");
    assert!(lab.status().await.unreachable.keys().eq([&3]), "only the killed node is away");
}

/// `geokv-lab up --tls`: the nodes serve and replicate over TLS with
/// authentication, the lab's own clients (status, leader moves) and its
/// region clients connect as root, and a client without the CA cannot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_lab_serves_its_own_clients_and_refuses_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&dir);
    config.tls = true;
    let lab = Lab::start(config).await.expect("the TLS lab starts");
    assert!(dir.path().join("certs/ca.pem").exists());
    let shard = lab.shard_of(b"greeting").await.unwrap();
    let east = lab.nodes().iter().find(|n| n.region == "us-east").unwrap().id;
    lab.transfer_leader(shard, east, DEADLINE).await.expect("leadership moves over TLS");
    let client = lab.client_for_region("eu-west").await.unwrap();
    client.put("greeting", "hello").await.unwrap();
    assert_eq!(client.get("greeting").await.unwrap().unwrap().value, b"hello");
    let plaintext = lab.client_config_for_region("eu-west").unwrap().tls(None).deadline(Duration::from_secs(2));
    match plaintext.connect().await {
        Err(_) => {}
        Ok(c) => assert!(c.get("greeting").await.is_err(), "a plaintext client was served by the TLS lab"),
    }
    assert!(lab.status().await.unreachable.is_empty(), "the lab's status reaches every node over TLS");
    let pids: Vec<u32> = lab.nodes().iter().filter_map(|n| n.pid()).collect();
    drop(lab);
    let alive: Vec<u32> = pids.into_iter().filter(|pid| pid_exists(*pid)).collect();
    assert!(alive.is_empty(), "node processes {alive:?} outlived the lab");
}
