//! Negative control (c): the register workload on an **eventual** shard
//! (multi-master, last writer wins) under a partition must be found INVALID,
//! with a witness, for every seed — and after the heal every replica must
//! converge.
//!
//! Every process reads and writes through its own region's replica. us-east
//! is cut off from the other two regions (its clients still reach its node)
//! for 6 s while processes on both sides write and read the same keys: a
//! process in us-east keeps reading its side's value after a write on the
//! other side has completed, which no linearization allows. Short on
//! purpose (8 s of workload per seed, 3 nodes, 6 clients); nothing here
//! asserts on timing.

use std::time::Duration;

use geokv_jepsen::report::ReportVerdict;
use geokv_jepsen::run::nemesis::{Fault, Schedule, Window};
use geokv_jepsen::run::workload::Workload;
use geokv_jepsen::run::{RunConfig, run};
use geokv_lab::{FaultShape, NodeProgram, Partition};

fn config(dir: &tempfile::TempDir, seed: u64) -> RunConfig {
    let program = NodeProgram::Lab(env!("CARGO_BIN_EXE_geokv-jepsen").into());
    let mut config = RunConfig::new(Workload::Register, dir.path().join(format!("out-{seed}")), program);
    config.clients = 6;
    config.ops = 100_000;
    config.time_limit = Duration::from_secs(8);
    config.seed = seed;
    config.eventual = true;
    config.convergence_timeout = Duration::from_secs(30);
    let isolate =
        Fault::Partition { shape: FaultShape::IsolateRegion { region: "us-east".into() }, mode: Partition::Stall };
    config.schedule = Some(Schedule { seed, windows: vec![Window { start_ms: 1_000, end_ms: 7_000, fault: isolate }] });
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventual_register_under_a_region_partition_is_caught_and_converges() {
    let dir = tempfile::tempdir().unwrap();
    for seed in [1, 2, 3] {
        let outcome = run(config(&dir, seed)).await.expect("the run completes");
        let report = &outcome.report;
        println!("seed {seed}:\n{}", report.render_text());
        assert_eq!(
            outcome.history.nemesis_windows.len(),
            1,
            "seed {seed}: the partition was applied: {:?}",
            report.stats
        );
        assert!(report.parameters.eventual && report.parameters.eventual_range.is_some());

        // Every write was accepted as eventual by the writer's own region's replica.
        let region_of_node = |node: &str| match node {
            "1" => "us-east",
            "2" => "us-west",
            "3" => "eu-west",
            other => panic!("unexpected node {other}"),
        };
        let mut eventual_writes = 0;
        for op in &outcome.history.operations {
            let Some(done) = outcome.history.completion_of(op) else { continue };
            if op.f == "write" && done.kind == geokv_jepsen::history::EventType::Ok {
                assert_eq!(done.consistency.as_deref(), Some("eventual"), "seed {seed}: {done:?}");
                let node = done.node.as_deref().expect("the accepting replica is recorded");
                assert_eq!(Some(region_of_node(node)), done.region.as_deref(), "seed {seed}: {done:?}");
                eventual_writes += 1;
            }
            assert_ne!(op.f, "cas", "seed {seed}: no CAS on an eventual shard");
        }
        assert!(eventual_writes > 10, "seed {seed}: only {eventual_writes} acknowledged writes");

        // INVALID, with a witness.
        assert_eq!(report.verdict, ReportVerdict::Invalid, "seed {seed}: must be caught: {}", report.summary);
        let linearizable = &report.checkers["linearizable"];
        assert_eq!(linearizable["verdict"], "invalid", "seed {seed}");
        let keys = linearizable["keys"].as_array().expect("per-key results");
        let invalid: Vec<_> = keys.iter().filter(|k| k["verdict"] == "invalid").collect();
        assert!(!invalid.is_empty(), "seed {seed}: no invalid key");
        for key in &invalid {
            let witness = &key["witness"];
            assert!(witness["unplaceable"]["description"].is_string(), "seed {seed}: witness {witness}");
        }
        println!(
            "seed {seed}: {} invalid key(s); first: {} cannot be placed",
            invalid.len(),
            invalid[0]["witness"]["unplaceable"]["description"]
        );

        // Liveness and convergence hold: the anomaly is the checker's alone.
        assert_eq!(report.checkers["liveness"]["verdict"], "valid", "seed {seed}: {}", report.liveness.summary);
        let convergence = report.convergence.as_ref().expect("eventual runs check convergence");
        assert!(convergence.converged, "seed {seed}: {}", convergence.summary);
        assert_eq!(report.checkers["convergence"]["verdict"], "valid");
        assert!(convergence.keys > 0, "seed {seed}: {convergence:?}");
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(format!("out-{seed}")).join("report.json")).unwrap(),
        )
        .unwrap();
        assert!(json["convergence"]["convergence_ms"].is_u64(), "seed {seed}: {}", json["convergence"]);
    }
}
