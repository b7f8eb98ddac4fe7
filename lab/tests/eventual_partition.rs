//! Eventual mode under a partition, across the emulated 3-region WAN: both
//! sides of a partition accept a write to the same key; after the heal every
//! replica holds the same winner (the newer timestamp) and the loser — a
//! write its client was told succeeded — is in the conflict log.

use std::time::Duration;

use geokv_client::{Client, Consistency};
use geokv_lab::{Lab, LabConfig, NodeProgram};

const DEADLINE: Duration = Duration::from_secs(60);
const KEY: &str = "ev/contested";

/// What every region's own replica serves for `KEY`: `(value, hlc)`.
async fn values(clients: &[(String, Client)]) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (region, client) in clients {
        let read = client.get_with(KEY, Consistency::Stale).await.ok()?;
        assert_eq!(&read.info.region, region, "an eventual read is served by the region's own replica");
        let v = read.kv?;
        out.push((String::from_utf8(v.value).unwrap(), v.hlc.map(|h| h.to_string()).unwrap_or_default()));
    }
    Some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_on_both_sides_of_a_partition_converge_and_the_loser_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = LabConfig::new(dir.path(), NodeProgram::Lab(env!("CARGO_BIN_EXE_geokv-lab").into()));
    config.start_timeout = DEADLINE;
    config.node_args = vec!["--eventual-ranges=ev/..ev0".into()];
    let lab = Lab::start(config).await.expect("the lab starts");
    let mut clients = Vec::new();
    for region in lab.regions().to_vec() {
        clients.push((region.clone(), lab.client_for_region(&region).await.unwrap()));
    }
    let (east, west) = (&clients[0].1, &clients[2].1);
    assert_eq!((clients[0].0.as_str(), clients[2].0.as_str()), ("us-east", "eu-west"));

    lab.isolate_region("eu-west").await.unwrap();
    let first = east.put(KEY, "from us-east").await.expect("us-east accepts the write locally");
    // Not seen by eu-west (cut off): the two writes are concurrent.
    let second = west.put(KEY, "from eu-west").await.expect("eu-west accepts the write locally too");
    assert!(first.eventual && second.eventual);
    let (first_hlc, second_hlc) = (first.hlc.unwrap(), second.hlc.unwrap());
    let (winner, loser) =
        if second_hlc > first_hlc { ("from eu-west", "from us-east") } else { ("from us-east", "from eu-west") };
    println!("concurrent writes: us-east at {first_hlc}, eu-west at {second_hlc}; {winner:?} must win");

    lab.heal();
    let converged = lab
        .wait_until("every replica to hold the winner", DEADLINE, |_| async {
            let got = values(&clients).await?;
            got.iter().all(|(v, _)| v == winner).then_some(got)
        })
        .await
        .expect("replicas converge after the heal");
    println!("after the heal: {converged:?}");
    assert!(converged.windows(2).all(|w| w[0] == w[1]), "same value and timestamp everywhere");

    let report = east.conflicts(None, 100).await.expect("conflict logs");
    let lost = report
        .conflicts
        .iter()
        .find(|c| c.key == KEY.as_bytes())
        .unwrap_or_else(|| panic!("the discarded write is logged: {report:?}"));
    assert_eq!(lost.loser_value.as_deref(), Some(loser.as_bytes()));
    assert_eq!((lost.loser_hlc.to_string(), lost.winner_hlc.to_string()), {
        let (w, l) = if second_hlc > first_hlc { (second_hlc, first_hlc) } else { (first_hlc, second_hlc) };
        (l.to_string(), w.to_string())
    });
    println!("conflict log: {lost:?}");
}
