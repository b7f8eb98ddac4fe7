//! The real `kvctl` against real nodes (3 nodes in 3 regions, split points
//! g, n, u: data shards 1 = [.., g), 2 = [g, n), 3 = [n, u), 4 = [u, ..)):
//! every topology command given bad input exits 1 with one line on stderr
//! that names what is wrong, and the cluster is left exactly as it was
//! (its shard map and members as `kvctl --json` shows them).

use geokv_tests::{ClusterOptions, TestCluster};

/// Runs `kvctl --endpoints ADDRS ARGS` (the test package's copy of it).
fn kvctl(c: &TestCluster, args: &[&str]) -> (i32, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_geokv-kvctl"))
        .arg("--endpoints")
        .arg(c.nodes.iter().map(|n| n.addr.clone()).collect::<Vec<_>>().join(","))
        .arg("--timeout")
        .arg("20s")
        .args(args)
        .env_remove("GEOKV_ENDPOINTS")
        .output()
        .expect("run kvctl");
    let text = |b: Vec<u8>| String::from_utf8(b).expect("utf-8");
    (output.status.code().unwrap_or(-1), text(output.stdout), text(output.stderr))
}

/// The cluster as `kvctl --json` shows it: the shard map (without its
/// version, which every map change moves) and the members' states.
fn cluster_state(c: &TestCluster) -> (serde_json::Value, serde_json::Value) {
    let (code, shards, err) = kvctl(c, &["--json", "shards"]);
    assert_eq!(code, 0, "{err}");
    let (code, nodes, err) = kvctl(c, &["--json", "node", "list"]);
    assert_eq!(code, 0, "{err}");
    let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap_or_else(|e| panic!("{e}: {s}"));
    (parse(&shards), parse(&nodes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_commands_refuse_bad_input_precisely_and_change_nothing() {
    let c = TestCluster::start(env!("CARGO_BIN_EXE_geokv-node"), ClusterOptions::default());
    c.wait_all_leaders().await;
    let before = tokio::task::block_in_place(|| cluster_state(&c));
    // Each refusal and what its one line on stderr must say.
    let cases: &[(&[&str], &str)] = &[
        (&["shard", "split", "99", "k"], "not found: no shard 99"),
        (&["shard", "split", "2", "a"], "split key \"a\" is not strictly inside shard 2's range [\"g\", \"n\")"),
        (&["shard", "split", "2", "g"], "split key \"g\" is not strictly inside shard 2's range"),
        (&["shard", "split", "2", ""], "the split key must not be empty"),
        (&["shard", "merge", "99"], "not found: no shard 99"),
        (&["shard", "merge", "4"], "shard 4 is the last shard: no shard follows it to merge with"),
        (&["shard", "move", "2", "--from", "1", "--to", "1"], "from and to are both node 1: nothing to move"),
        (&["shard", "move", "99", "--from", "1", "--to", "2"], "not found: no shard 99"),
        (&["shard", "move", "2", "--from", "1", "--to", "9"], "not found: no node 9 in the cluster"),
        (&["shard", "move", "2", "--from", "1", "--to", "2"], "node 2 already holds a replica of shard 2"),
        (&["shard", "move", "2", "--from", "9", "--to", "2"], "not found: no node 9 in the cluster"),
        (&["shard", "move", "2", "--from", "1", "--to", "9", "--cancel"], "not found: no node 9 in the cluster"),
        (&["shard", "move", "99", "--from", "1", "--to", "2", "--cancel"], "not found: no shard 99"),
        (&["node", "drain", "9"], "not found: no node 9 in the cluster"),
        (&["node", "drain", "3"], "node 3 cannot be drained: shard 1 has nowhere to go"),
        (&["node", "remove", "9"], "not found: no node 9 in the cluster"),
        (&["node", "remove", "3"], "removing node 3 would leave the meta shard 2 voters"),
        (&["node", "remove", "3", "--force"], "removing node 3 would leave the meta shard 2 voters"),
    ];
    for (args, expected) in cases {
        let (code, out, err) = tokio::task::block_in_place(|| kvctl(&c, args));
        let what = format!("kvctl {}: exit {code}, stdout {out:?}, stderr {err:?}", args.join(" "));
        assert_eq!(code, 1, "{what}");
        assert!(out.is_empty(), "{what}");
        assert!(err.starts_with("error: ") && err.lines().count() == 1, "one line: {what}");
        assert!(err.contains(expected), "expected {expected:?}: {what}");
    }
    // Cancelling a move that is not under way changes nothing either.
    let (code, out, err) =
        tokio::task::block_in_place(|| kvctl(&c, &["shard", "move", "2", "--from", "1", "--to", "2", "--cancel"]));
    assert_eq!(
        (code, out.as_str()),
        (0, "no move of shard 2 from node 1 to node 2 is under way: nothing to cancel\n"),
        "{err}"
    );
    // The meta shard is not merged either.
    let (code, _, err) = tokio::task::block_in_place(|| kvctl(&c, &["shard", "merge", "0"]));
    assert_eq!(code, 1, "{err}");
    let after = tokio::task::block_in_place(|| cluster_state(&c));
    assert_eq!(before, after);
}
