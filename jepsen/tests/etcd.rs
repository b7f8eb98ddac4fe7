//! Real Jepsen histories of etcd (from Porcupine's test data; see
//! testdata/jepsen-etcd/README.md): every verdict must match the known one.
//! A history that comes out UNKNOWN within the generous budget below is
//! reported and fails the test too — it is never counted as a pass.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use geokv_jepsen::check_register_text;
use geokv_jepsen::checker::{CheckConfig, Verdict};

fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/jepsen-etcd")
}

#[test]
fn every_etcd_history_gets_its_known_verdict() {
    let dir = testdata();
    let expected: BTreeMap<String, String> = std::fs::read_to_string(dir.join("expected.tsv"))
        .expect("expected.tsv")
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(name, verdict)| (name.to_string(), verdict.trim().to_string()))
        .collect();
    assert_eq!(expected.len(), 102, "expected.tsv lists 102 verdicts");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("testdata dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "edn"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 103);

    // Files in parallel, each checked on one thread with a one-minute budget.
    let config = CheckConfig { key_time_limit_ms: 60_000, threads: 1, ..CheckConfig::default() };
    let next = Mutex::new(files.iter());
    let outcomes = Mutex::new(Vec::new());
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) {
            scope.spawn(|| {
                loop {
                    let Some(path) = next.lock().unwrap().next() else { break };
                    let name = path.file_stem().unwrap().to_string_lossy().into_owned();
                    let text = std::fs::read_to_string(path).unwrap();
                    let one = Instant::now();
                    let (history, result) = check_register_text(&text, true, &config)
                        .unwrap_or_else(|e| panic!("{name}: cannot read: {e}"));
                    let ms = one.elapsed().as_secs_f64() * 1e3;
                    outcomes.lock().unwrap().push((name, result.verdict, history.operations.len(), ms));
                }
            });
        }
    });
    let total_s = started.elapsed().as_secs_f64();
    let mut outcomes = outcomes.into_inner().unwrap();
    outcomes.sort_by(|a, b| b.3.total_cmp(&a.3));
    let mut wrong = Vec::new();
    for (name, verdict, ops, ms) in &outcomes {
        match expected.get(name).map(String::as_str) {
            Some(want) if want == verdict.as_str() => {}
            Some(want) => {
                wrong.push(format!("{name}: got {}, expected {want} ({ops} ops, {ms:.0} ms)", verdict.as_str()))
            }
            // etcd_095 is empty: nothing to contradict.
            None => assert_eq!((*verdict, *ops), (Verdict::Valid, 0), "{name} has no expected verdict"),
        }
    }
    eprintln!("checked {} etcd histories in {total_s:.2} s; slowest:", outcomes.len());
    for (name, verdict, ops, ms) in outcomes.iter().take(5) {
        eprintln!("  {name}: {} ({ops} ops) in {ms:.0} ms", verdict.as_str());
    }
    assert!(wrong.is_empty(), "verdicts differ from Porcupine's:\n{}", wrong.join("\n"));
}

#[test]
fn a_tampered_passing_history_is_caught() {
    // Negative control: etcd_002 is valid; make one read return a value
    // no one ever wrote and it must fail.
    let text = std::fs::read_to_string(testdata().join("etcd_002.edn")).unwrap();
    let config = CheckConfig::default();
    assert_eq!(check_register_text(&text, true, &config).unwrap().1.verdict, Verdict::Valid);
    let target = text.lines().position(|l| l.contains(":type :ok, :f :read, :value ")).expect("an ok read");
    let tampered: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, line)| {
            if i == target {
                let at = line.find(":value ").unwrap();
                format!("{}:value 99}}", &line[..at])
            } else {
                line.to_string()
            }
        })
        .collect();
    let (_, result) = check_register_text(&tampered.join("\n"), true, &config).unwrap();
    assert_eq!(result.verdict, Verdict::Invalid);
}
