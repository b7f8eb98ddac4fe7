//! The real `kvctl` binary against the in-process mock cluster that the
//! client's tests use (`client/tests/mock/`): what it prints on stdout and
//! stderr, and its exit codes, for humans (`-w simple`, `-w table`) and for
//! scripts (`-w json`).

#[allow(dead_code, unused_imports)]
#[path = "../../client/tests/mock/mod.rs"]
mod mock;

use mock::*;

/// Runs the real `kvctl` binary against the mock cluster, stdin empty.
async fn kvctl(cluster: &MockCluster, args: &[&str]) -> (i32, String, String) {
    kvctl_with(cluster, args, b"", &[]).await
}

/// Runs the real `kvctl` binary against the mock cluster with this stdin and
/// these extra environment variables (every other `GEOKV_*` removed).
async fn kvctl_with(cluster: &MockCluster, args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> (i32, String, String) {
    use tokio::io::AsyncWriteExt;
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_kvctl"));
    command.arg("--endpoints").arg(cluster.addrs.join(",")).args(args);
    for variable in ["GEOKV_ENDPOINTS", "GEOKV_SOURCE_IP", "GEOKV_REGION", "GEOKV_WRITE_OUT", "GEOKV_TIMEOUT"] {
        command.env_remove(variable);
    }
    command.envs(env.iter().copied());
    command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    let output = child.wait_with_output().await.unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    (output.status.code().unwrap(), stdout, stderr)
}

fn parse_json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|err| panic!("{err}: {text}"))
}

#[tokio::test]
async fn kvctl_get_prefix_and_keys_only() {
    let cluster = MockCluster::start(2, false).await;
    cluster.set_shards(1, &[("", "app/y"), ("app/y", "")], &[1, 2]);
    for (key, value) in [("a", "0"), ("app/x", "1"), ("app/y", "2"), ("apq", "3")] {
        assert_eq!(kvctl(&cluster, &["put", key, value]).await.0, 0);
    }

    // etcdctl's lines: key, value, key, value; across the two shards.
    assert_eq!(kvctl(&cluster, &["get", "app/", "--prefix"]).await, (0, "app/x\n1\napp/y\n2\n".into(), String::new()));
    assert_eq!(kvctl(&cluster, &["get", "app/", "--prefix", "--keys-only"]).await.1, "app/x\napp/y\n");
    assert_eq!(kvctl(&cluster, &["get", "app/", "--prefix", "--limit", "1"]).await.1, "app/x\n1\n");
    assert_eq!(kvctl(&cluster, &["get", "", "--prefix", "--keys-only"]).await.1, "a\napp/x\napp/y\napq\n");
    assert_eq!(
        kvctl(&cluster, &["get", "zzz/", "--prefix"]).await,
        (0, String::new(), String::new()),
        "no match is not an error"
    );

    let (code, json, _) = kvctl(&cluster, &["-w", "json", "get", "app/", "--prefix"]).await;
    assert_eq!(code, 0);
    let rows = parse_json(&json);
    assert_eq!(rows.as_array().unwrap().len(), 2);
    assert_eq!((rows[1]["key"].as_str(), rows[1]["value"].as_str()), (Some("app/y"), Some("2")));
    let (_, json, _) = kvctl(&cluster, &["get", "app/", "--prefix", "--keys-only", "--json"]).await;
    let rows = parse_json(&json);
    assert_eq!(rows[0]["key"], "app/x");
    assert!(rows[0].get("value").is_none(), "--keys-only leaves values out of JSON too: {rows}");

    let (_, table, _) = kvctl(&cluster, &["-w", "table", "get", "app/", "--prefix"]).await;
    assert_eq!(
        table,
        "+-------+-------+---------+\n\
         | KEY   | VALUE | VERSION |\n\
         +-------+-------+---------+\n\
         | app/x | 1     | 2       |\n\
         | app/y | 2     | 3       |\n\
         +-------+-------+---------+\n"
    );

    // A single key with --keys-only prints the key; absent, nothing.
    assert_eq!(kvctl(&cluster, &["get", "app/x", "--keys-only"]).await.1, "app/x\n");
    let (code, out, err) = kvctl(&cluster, &["get", "app/", "--keys-only"]).await;
    assert_eq!((code, out.as_str(), err.as_str()), (4, "", "not found: app/\n"));

    // --limit belongs to --prefix.
    let (code, _, err) = kvctl(&cluster, &["get", "app/", "--limit", "1"]).await;
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--prefix"), "{err}");
}

#[tokio::test]
async fn kvctl_write_out_formats() {
    let cluster = MockCluster::start(1, false).await;
    assert_eq!(kvctl(&cluster, &["put", "greeting", "hello"]).await.1, "OK version=1\n");

    let (code, table, _) = kvctl(&cluster, &["-w", "table", "get", "greeting"]).await;
    assert_eq!(code, 0);
    assert!(table.starts_with("+----"), "{table}");
    assert!(
        table.contains("| KEY      | VALUE | VERSION | SERVED       | NODE | REGION   | STALENESS-BOUND |"),
        "{table}"
    );
    assert!(
        table.contains("| greeting | hello | 1       | linearizable | 1    | region-1 | 0ms             |"),
        "{table}"
    );

    // -w json, --json and GEOKV_WRITE_OUT=json print the same document.
    let by_flag = kvctl(&cluster, &["-w", "json", "get", "greeting"]).await.1;
    assert_eq!(parse_json(&by_flag)["value"], "hello");
    assert_eq!(kvctl(&cluster, &["--json", "get", "greeting"]).await.1, by_flag);
    assert_eq!(kvctl_with(&cluster, &["get", "greeting"], b"", &[("GEOKV_WRITE_OUT", "json")]).await.1, by_flag);
    assert_eq!(kvctl(&cluster, &["-w", "table", "--json", "get", "greeting"]).await.1, by_flag, "--json wins");

    let (_, put, _) = kvctl(&cluster, &["-w", "table", "put", "k", "v"]).await;
    assert!(
        put.contains("| EVENTUAL | SHARD-ID | VERSION |") && put.contains("| false    | 1        | 2       |"),
        "{put}"
    );
    let (_, shards, _) = kvctl(&cluster, &["--write-out", "table", "shards"]).await;
    assert!(shards.contains("| 1     | -inf..+inf | 1     | raft | 1@region-1 |"), "{shards}");
    let (_, scan, _) = kvctl(&cluster, &["-w", "simple", "scan"]).await;
    assert_eq!(scan, "KEY       VALUE  VERSION\ngreeting  hello  1\nk         v      2\n");

    let (code, _, err) = kvctl(&cluster, &["-w", "yaml", "get", "greeting"]).await;
    assert_eq!(code, 64);
    assert!(err.contains("simple") && err.contains("json") && err.contains("table"), "{err}");
}

#[tokio::test]
async fn kvctl_put_reads_the_value_from_stdin() {
    let cluster = MockCluster::start(1, false).await;
    let value_of = |key: &'static str| {
        let cluster = &cluster;
        async move { parse_json(&kvctl(cluster, &["--json", "get", key]).await.1)["value"].clone() }
    };

    assert_eq!(
        kvctl_with(&cluster, &["put", "dash", "-"], b"line\n", &[]).await,
        (0, "OK version=1\n".into(), String::new())
    );
    assert_eq!(value_of("dash").await, "0x6c696e650a", "every byte, the newline too (so shown as hex)");
    assert_eq!(kvctl_with(&cluster, &["put", "piped"], b"no value argument", &[]).await.0, 0);
    assert_eq!(value_of("piped").await, "no value argument");
    assert_eq!(kvctl_with(&cluster, &["--hex", "put", "0x6278", "-"], b"0x00ff\n", &[]).await.0, 0);
    assert_eq!(value_of("bx").await, "0x00ff", "binary values print as hex");
    let (code, _, err) = kvctl_with(&cluster, &["--hex", "put", "0x6278", "-"], b"not hex", &[]).await;
    assert_eq!(code, 1);
    assert!(err.contains("is not hex"), "{err}");
    // A literal "-" value is still possible, as hex.
    assert_eq!(kvctl(&cluster, &["--hex", "put", "0x64", "0x2d"]).await.0, 0);
    assert_eq!(value_of("d").await, "-");
}

#[tokio::test]
async fn kvctl_del_prefix_needs_yes() {
    let cluster = MockCluster::start(2, false).await;
    cluster.set_shards(1, &[("", "tmp/5"), ("tmp/5", "")], &[1, 2]);
    for key in ["keep", "tmp/1", "tmp/5", "tmp/9", "tmq"] {
        assert_eq!(kvctl(&cluster, &["put", key, "v"]).await.0, 0);
    }

    let (code, out, err) = kvctl(&cluster, &["del", "tmp/", "--prefix"]).await;
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(err.contains("--yes") && err.contains("--keys-only"), "{err}");
    assert_eq!(
        kvctl(&cluster, &["get", "tmp/", "--prefix", "--keys-only"]).await.1,
        "tmp/1\ntmp/5\ntmp/9\n",
        "nothing deleted"
    );
    let (code, _, err) = kvctl(&cluster, &["del", "tmp/1", "--yes"]).await;
    assert_eq!(code, 64, "--yes belongs to --prefix: {err}");

    assert_eq!(
        kvctl(&cluster, &["del", "tmp/", "--prefix", "--yes"]).await,
        (0, "deleted 3 keys\n".into(), String::new())
    );
    assert_eq!(kvctl(&cluster, &["get", "", "--prefix", "--keys-only"]).await.1, "keep\ntmq\n");
    let (_, json, _) = kvctl(&cluster, &["--json", "del", "tmp/", "--prefix", "--yes"]).await;
    assert_eq!(parse_json(&json), serde_json::json!({"deleted": 0, "prefix": "tmp/"}));
}

#[tokio::test]
async fn kvctl_timeouts_take_units_and_the_environment() {
    let cluster = MockCluster::start(2, false).await;
    cluster.set_shards(1, &[("", "m"), ("m", "")], &[1, 0]);
    for (args, env) in [
        (&["--timeout", "300ms", "put", "zz", "v"][..], &[][..]),
        (&["put", "zz", "v"][..], &[("GEOKV_TIMEOUT", "300ms")][..]),
        (&["--timeout-ms", "300", "put", "zz", "v"][..], &[][..]),
    ] {
        let started = std::time::Instant::now();
        let (code, _, err) = kvctl_with(&cluster, args, b"", env).await;
        assert_eq!(code, 1, "{args:?} {env:?}: {err}");
        assert!(err.starts_with("error: unavailable after"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(8), "{args:?} {env:?} waited the default 10 s");
    }
    for bad in ["3", "0s", "soon"] {
        let (code, _, err) = kvctl(&cluster, &["--timeout", bad, "status"]).await;
        assert_eq!(code, 64, "--timeout {bad}: {err}");
        assert!(err.contains("500ms") && err.contains("3s"), "the error shows the format: {err}");
    }
}

#[tokio::test]
async fn kvctl_completion_scripts() {
    let cluster = MockCluster::start(1, false).await;
    for (shell, marker) in [("bash", "complete -F"), ("zsh", "#compdef kvctl"), ("fish", "complete -c kvctl")] {
        let (code, script, err) = kvctl(&cluster, &["completion", shell]).await;
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(script.contains(marker), "{shell} script lacks {marker:?}");
        assert!(script.contains("write-out") && script.contains("prefix"), "{shell} completes the flags");
    }
    let (code, _, err) = kvctl(&cluster, &["completion", "tcsh"]).await;
    assert_eq!(code, 64);
    assert!(err.contains("bash"), "{err}");
}

#[tokio::test]
async fn kvctl_speaks_to_humans_and_scripts() {
    let cluster = MockCluster::start(2, false).await;
    cluster.set_shards(1, &[("", "m"), ("m", "")], &[1, 2]);

    assert_eq!(kvctl(&cluster, &["put", "greeting", "hello"]).await, (0, "OK version=1\n".into(), String::new()));
    assert_eq!(kvctl(&cluster, &["get", "greeting"]).await.1, "hello\n");
    let (code, verbose, _) = kvctl(&cluster, &["get", "greeting", "-v"]).await;
    assert_eq!(code, 0);
    assert!(verbose.starts_with("hello\nversion=1 served=linearizable node=1 region=region-1"), "{verbose}");
    assert_eq!(kvctl(&cluster, &["get", "nothing"]).await, (4, String::new(), "not found: nothing\n".into()));

    let (_, json, _) = kvctl(&cluster, &["--json", "get", "greeting", "--consistency", "stale"]).await;
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["found"], true);
    assert_eq!(json["value"], "hello");
    assert_eq!(json["served"], "stale");
    assert_eq!(json["staleness_bound_ms"], serde_json::Value::Null);
    let (code, json, _) = kvctl(&cluster, &["--json", "get", "nothing"]).await;
    assert_eq!((code, json.as_str()), (4, ""), "a missing key prints nothing on stdout, in every format");

    let (code, out, _) = kvctl(&cluster, &["cas", "greeting", "--expect-value", "bye", "hi"]).await;
    assert_eq!((code, out.as_str()), (2, "not swapped: current=hello version=1\n"));
    let (code, out, _) = kvctl(&cluster, &["cas", "greeting", "--expect-version", "1", "hi"]).await;
    assert_eq!((code, out.as_str()), (0, "swapped version=2\n"));

    kvctl(&cluster, &["--hex", "put", "0x7a", "0x00ff"]).await;
    let (_, table, _) = kvctl(&cluster, &["scan"]).await;
    assert_eq!(table, "KEY       VALUE   VERSION\ngreeting  hi      2\nz         0x00ff  3\n");
    assert_eq!(kvctl(&cluster, &["scan", "a", "b"]).await.1, "(no keys)\n");
    assert_eq!(kvctl(&cluster, &["del", "z"]).await.1, "OK version=4 existed=true\n");

    let (code, shards, _) = kvctl(&cluster, &["shards"]).await;
    assert_eq!(code, 0);
    assert!(shards.contains("1      -inf..m  1      raft  1@region-1,2@region-2"), "{shards}");
    let (code, status, _) = kvctl(&cluster, &["status"]).await;
    assert_eq!(code, 0, "{status}");
    assert!(status.contains("2      m..+inf  1      raft  2@region-2"), "{status}");

    let (code, nodes, _) = kvctl(&cluster, &["--json", "node", "list"]).await;
    assert_eq!(code, 0, "{nodes}");
    let nodes = parse_json(&nodes);
    for (i, node) in nodes.as_array().expect("an array of members").iter().enumerate() {
        let id = i as u64 + 1;
        assert_eq!(node["id"], id, "{node}");
        assert_eq!(node["region"], format!("region-{id}"), "{node}");
        assert_eq!((node["state"].as_str(), node["replicas"].as_u64()), (Some("up"), Some(2)), "{node}");
        assert_eq!(node["leaders"], 1, "node {id} leads shard {id}: {node}");
        assert!(node["address"].as_str().is_some_and(|a| a.contains(':')), "{node}");
    }
    let (_, table, _) = kvctl(&cluster, &["node", "list"]).await;
    assert!(table.starts_with("ID  REGION    ADDRESS"), "{table}");
    assert!(table.lines().nth(1).is_some_and(|row| row.contains("region-1") && row.contains(" up ")), "{table}");

    cluster.set_shards(1, &[("", "m"), ("m", "")], &[1, 0]);
    let (code, status, warning) = kvctl(&cluster, &["--json", "status"]).await;
    assert_eq!(code, 3, "a leaderless shard is flagged");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["shards"][1]["leader"], serde_json::Value::Null);
    assert_eq!(warning, "");

    let (code, _, error) = kvctl(&cluster, &["--timeout-ms", "300", "put", "zz", "v"]).await;
    assert_eq!(code, 1);
    assert!(error.starts_with("error: unavailable after"), "{error}");
    assert_eq!(error.lines().count(), 1, "{error}");
}

#[tokio::test]
async fn kvctl_on_eventual_shards() {
    let cluster = MockCluster::start(2, false).await;
    cluster.set_shards(1, &[("", "m"), ("m", "")], &[1, 1]);
    cluster.set_eventual(2);

    let (code, out, _) = kvctl(&cluster, &["put", "p", "hello"]).await;
    assert_eq!((code, out.as_str()), (0, "OK eventual (acked by node 1 at HLC 1732245600001.0@1)\n"));
    let (code, out, note) = kvctl(&cluster, &["get", "p"]).await;
    assert_eq!((code, out.as_str()), (0, "hello\n"), "stdout stays the bare value");
    assert_eq!(note, "served: eventual hlc=1732245600001.0@1 origin=1 node=1 region=region-1\n");
    let (_, verbose, _) = kvctl(&cluster, &["get", "p", "-v"]).await;
    assert!(
        verbose.starts_with("hello\nhlc=1732245600001.0@1 origin=1 served=eventual (weaker than requested) node=1"),
        "{verbose}"
    );
    let (_, json, _) = kvctl(&cluster, &["--json", "get", "p"]).await;
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        (&json["served"], &json["hlc"], &json["origin"]),
        (&"eventual".into(), &"1732245600001.0@1".into(), &1.into())
    );
    assert_eq!(json["weaker_than_requested"], true);
    let (_, out, _) = kvctl(&cluster, &["--region", "region-2", "del", "p"]).await;
    assert_eq!(out, "OK eventual (acked by node 2 at HLC 1732245600002.0@2) existed=true\n");

    let (code, _, error) = kvctl(&cluster, &["cas", "p", "--expect-absent", "v"]).await;
    assert_eq!(code, 1);
    assert!(error.contains("compare-and-swap is not available on shard 2, an eventual"), "{error}");

    let (_, shards, _) = kvctl(&cluster, &["shards"]).await;
    assert!(shards.contains("2      m..+inf  1      eventual  1@region-1,2@region-2"), "{shards}");
    let (code, status, warning) = kvctl(&cluster, &["status"]).await;
    assert_eq!((code, warning.as_str()), (0, ""), "an eventual shard needs no leader: {status}");
    assert!(status.contains("2      m..+inf  1      eventual  - (2/2 replicas answer)  -"), "{status}");
    assert!(status.contains("2      1@region-1  eventual  40        12      3           2:2/200ms"), "{status}");
    let (_, json, _) = kvctl(&cluster, &["--json", "status"]).await;
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["shards"][1]["mode"], "eventual");
    assert_eq!(json["shards"][1]["degraded"], false);
    assert_eq!(json["shards"][1]["eventual"][1]["peers"][0]["lag_entries"], 1);

    cluster.record_conflict(2, "r", (80, 2), (85, 1), 1_732_245_599_000);
    cluster.record_conflict(2, "q", (90, 2), (95, 1), 1_732_245_600_000);
    cluster.record_conflict(1, "p", (100, 1), (101, 2), 1_732_245_601_000);
    cluster.record_conflict(2, "p", (100, 1), (101, 2), 1_732_245_601_005);
    let (code, table, notes) = kvctl(&cluster, &["conflicts"]).await;
    assert_eq!(code, 0);
    assert_eq!(
        table,
        "SHARD  KEY  LOSER             WINNER   RECORDED-BY  AT\n\
         1      p    100.0@1 lost-100  101.0@2  1,2          2024-11-22T03:20:01.000Z\n\
         1      q    90.0@2 lost-90    95.0@1   2            2024-11-22T03:20:00.000Z\n\
         1      r    80.0@2 lost-80    85.0@1   2            2024-11-22T03:19:59.000Z\n"
    );
    assert!(notes.contains("node 2 recorded 3 conflicts but keeps the newest 2"), "{notes}");
    let (_, json, _) = kvctl(&cluster, &["--json", "conflicts", "--limit", "1"]).await;
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["conflicts"][0]["recorded_by"], serde_json::json!([1, 2]));
    assert_eq!(json["conflicts"][0]["loser"]["hlc"], "100.0@1");
    assert_eq!(json["truncated"], true);
}

#[tokio::test]
async fn kvctl_shard_create() {
    let cluster = MockCluster::start(2, false).await;
    cluster.set_shards(1, &[("", "session/"), ("session/", "")], &[1, 2]);

    let (code, out, err) = kvctl(&cluster, &["shard", "create", "--mode", "eventual", "session/..session0"]).await;
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (
            0,
            "created eventual shard 3 for [session/, session0) (carved from shard 2, now at epoch 2); map version 2\n",
            ""
        )
    );
    let (code, out, _) =
        kvctl(&cluster, &["--json", "shard", "create", "--mode", "eventual", "session/..session0"]).await;
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        serde_json::json!({"created": false, "shard_id": 3, "mode": "eventual", "start": "session/",
                           "end": "session0", "parent_shard_id": null, "parent_epoch": null, "map_version": 2})
    );
    let (code, out, _) = kvctl(&cluster, &["put", "session/1", "v"]).await;
    assert!(code == 0 && out.starts_with("OK eventual (acked by node 1"), "{out}");
    let (_, shards, _) = kvctl(&cluster, &["shards"]).await;
    assert!(shards.contains("3      session/..session0  1      eventual  1@region-1,2@region-2"), "{shards}");
    assert!(shards.contains("2      session0..+inf      2      raft"), "{shards}");

    let (code, out, _) = kvctl(&cluster, &["--json", "shard", "create", "--mode", "eventual", "tmp/.."]).await;
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((code, &json["end"], &json["parent_shard_id"]), (0, &serde_json::Value::Null, &2.into()));
    cluster.calls();

    let (code, _, err) = kvctl(&cluster, &["shard", "create", "--mode", "eventual", "session"]).await;
    assert_eq!(code, 1);
    assert!(err.starts_with("error: \"session\" is not a range: give RANGE as START..END"), "{err}");
    assert!(cluster.calls().is_empty(), "parse errors come before the network");

    kvctl(&cluster, &["put", "a", "1"]).await;
    let (code, _, err) = kvctl(&cluster, &["shard", "create", "--mode", "eventual", "..b"]).await;
    assert_eq!(code, 1);
    assert!(err.starts_with("error: refused: shard 1 holds keys in the range"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let (code, _, err) = kvctl(&cluster, &["shard", "create", "--mode", "raft", "..b"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("invalid argument: only eventual shards can be created"), "{err}");
}
