//! The `geokv-jepsen` binary: exit codes, output, report files.

use std::path::Path;
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_geokv-jepsen")).args(args).output().expect("run geokv-jepsen")
}

fn etcd(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/jepsen-etcd").join(name).display().to_string()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn valid_history_exits_0_and_says_no_anomaly_found() {
    let out = run(&["check", &etcd("etcd_002.edn")]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("VALID: no anomaly found in 77 operations on 1 key"), "{stdout}");
}

#[test]
fn invalid_history_exits_1_with_a_witness_and_writes_reports() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("report");
    let out = run(&["check", &etcd("etcd_000.edn"), "--out", out_dir.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("longest linearizable prefix: 43 operations"), "{stdout}");
    assert!(stdout.contains("cannot be placed next: process 11 read -> 2"), "{stdout}");
    assert!(stdout.contains("concurrent with it"), "{stdout}");

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["verdict"], "invalid");
    assert_eq!(report["checkers"]["linearizable"]["keys"][0]["verdict"], "invalid");
    assert_eq!(report["checkers"]["linearizable"]["keys"][0]["witness"]["linearized"].as_array().unwrap().len(), 43);
    assert!(report["op_counts"]["cas"]["fail"].as_u64().unwrap() > 0);

    let html = std::fs::read_to_string(out_dir.join("timeline.html")).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("class=\"op ok unplaceable\""), "the failing read is highlighted");
    assert!(!html.contains("http://") && !html.contains("https://"), "self-contained: no network");
}

#[test]
fn json_output_is_the_report() {
    let out = run(&["check", &etcd("etcd_002.edn"), "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["verdict"], "valid");
    assert_eq!(report["summary"], "no anomaly found in 77 operations on 1 key");
}

#[test]
fn unknown_exits_2_never_0() {
    // 24 concurrent writes and a read of a value none of them wrote: far more
    // than a 1 MiB memo can decide.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hard.jsonl");
    let mut lines = Vec::new();
    for p in 0..24 {
        lines.push(format!(r#"{{"process":{p},"type":"invoke","f":"write","value":{p},"time":{p}}}"#));
    }
    for p in 0..24 {
        lines.push(format!(r#"{{"process":{p},"type":"ok","f":"write","value":{p},"time":{}}}"#, 100 + p));
    }
    lines.push(r#"{"process":99,"type":"invoke","f":"read","time":99}"#.to_string());
    lines.push(r#"{"process":99,"type":"ok","f":"read","value":777,"time":500}"#.to_string());
    std::fs::write(&path, lines.join("\n")).unwrap();
    let out = run(&["check", path.to_str().unwrap(), "--cache-limit-mb", "1"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(stdout.contains("UNKNOWN") && stdout.contains("memo limit of 1 MiB reached"), "{stdout}");
    assert!(stdout.contains("this is not a pass"), "{stdout}");
}

#[test]
fn malformed_history_exits_3_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.jsonl");
    std::fs::write(
        &path,
        "{\"process\":0,\"type\":\"invoke\",\"f\":\"read\",\"time\":1}\n{\"process\":1,\"type\":\"ok\",\"f\":\"read\",\"time\":2}\n",
    )
    .unwrap();
    let out = run(&["check", path.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("line 2: malformed history: `ok` for process 1 which has no pending invoke"), "{stderr}");
    assert!(out.stdout.is_empty(), "no verdict printed for a malformed history");

    let path = dir.path().join("bad.edn");
    std::fs::write(&path, "{:process 0, :type :invoke, :f :read, :value nil}\n{:process 0 :type}\n").unwrap();
    let out = run(&["check", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stderr).contains("line 2, column 18: key :type has no value"), "{}", text(&out.stderr));
}

#[test]
fn empty_history_is_inconclusive() {
    let out = run(&["check", &etcd("etcd_095.edn")]);
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stdout).contains("INCONCLUSIVE"), "{}", text(&out.stdout));
}

#[test]
fn usage_errors_exit_64_and_help_teaches() {
    assert_eq!(run(&["check"]).status.code(), Some(64));
    assert_eq!(run(&["frobnicate"]).status.code(), Some(64));
    assert_eq!(run(&["check", "x", "--format", "xml"]).status.code(), Some(64));
    assert_eq!(run(&["check", "x", "--time-limit-s", "0"]).status.code(), Some(64));
    let help = run(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    let help = text(&help.stdout);
    assert!(help.contains("LINEARIZABLE means") && help.contains("`info` means UNKNOWN"), "{help}");
    let check_help = run(&["check", "--help"]);
    assert_eq!(check_help.status.code(), Some(0));
    assert!(text(&check_help.stdout).contains("--time-limit-s"));
}

#[test]
fn jsonl_example_with_nemesis_and_keys() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/examples/stale-read-under-partition.jsonl");
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["check", example.to_str().unwrap(), "--all-keys", "--out", dir.path().to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("key \"k1\": INVALID"), "{stdout}");
    assert!(stdout.contains("key \"k2\": VALID"), "the info CAS explains k2's read of 11: {stdout}");
    assert!(
        stdout.contains("cannot be placed next: process 4 read -> 1 [2499.000 ms .. 2500.000 ms]  line 10"),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap()).unwrap();
    let windows: Vec<&str> =
        report["availability"].as_array().unwrap().iter().map(|w| w["kind"].as_str().unwrap()).collect();
    assert_eq!(windows, ["healthy", "fault", "healthy"]);
    assert_eq!(report["nemesis_windows"][0]["description"], "isolate n1 (the leader)");
    let html = std::fs::read_to_string(dir.path().join("timeline.html")).unwrap();
    assert!(html.contains("<rect class=\"fault\""), "the partition is shaded");
    assert!(html.contains("fault: isolate n1 (the leader)"));
}

#[test]
fn run_refuses_nonsense_before_starting_anything() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let missing_out = run(&["run", "--workload", "register"]);
    assert_eq!(missing_out.status.code(), Some(64), "{}", text(&missing_out.stderr));
    let four_nodes = run(&["run", "--nodes", "4", "--out", out.to_str().unwrap()]);
    assert_eq!(four_nodes.status.code(), Some(64));
    assert!(text(&four_nodes.stderr).contains("not a multiple of the 3 regions"), "{}", text(&four_nodes.stderr));
    let bad_schedule = dir.path().join("schedule.json");
    std::fs::write(
        &bad_schedule,
        r#"{"seed":1,"windows":[{"start_ms":5,"end_ms":1,"fault":{"kind":"kill","target":{"of":"all"}}}]}"#,
    )
    .unwrap();
    let replay = run(&["run", "--schedule", bad_schedule.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(replay.status.code(), Some(64));
    assert!(text(&replay.stderr).contains("window 0 ends"), "{}", text(&replay.stderr));
    let eventual_bank = run(&["run", "--workload", "bank", "--eventual", "--out", out.to_str().unwrap()]);
    assert_eq!(eventual_bank.status.code(), Some(64));
    assert!(text(&eventual_bank.stderr).contains("eventual shards refuse"), "{}", text(&eventual_bank.stderr));
    assert!(!out.exists(), "nothing was started");
}
