//! What a history and its verdicts say, for people: op counts, latencies,
//! availability per fault window, the `report.json` document and the text the
//! CLI prints.
//!
//! Wording is deliberate: a check that finds nothing reports "no anomaly found
//! in N operations", never "correct"; a history with too little evidence (no
//! ok operation, or no ok read) is INCONCLUSIVE even when the checker found
//! nothing, because nothing was observed that could have been wrong.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::checker::{CheckConfig, CheckResult, KeyVerdict, Verdict, Witness, WitnessOp};
use crate::history::{Clock, History, Outcome};

/// Operations of a key shown before the unplaceable one in a text witness;
/// report.json always has the whole prefix.
pub const WITNESS_PREFIX_SHOWN_OPS: usize = 20;

/// The verdict of a whole report: the checker's, or INCONCLUSIVE when the
/// checker found nothing but the history holds too little evidence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportVerdict {
    Valid,
    Invalid,
    Unknown,
    /// Also the default: nothing checked yet is no pass.
    #[default]
    Inconclusive,
}

impl ReportVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportVerdict::Valid => "valid",
            ReportVerdict::Invalid => "invalid",
            ReportVerdict::Unknown => "unknown",
            ReportVerdict::Inconclusive => "inconclusive",
        }
    }

    /// The process exit code: 0 valid, 1 invalid, 2 unknown, 3 inconclusive.
    pub fn exit_code(self) -> i32 {
        match self {
            ReportVerdict::Valid => 0,
            ReportVerdict::Invalid => 1,
            ReportVerdict::Unknown => 2,
            ReportVerdict::Inconclusive => 3,
        }
    }
}

/// Why a history is too thin to pass, if it is.
pub fn inconclusive_reason(history: &History) -> Option<String> {
    let ok = history.operations.iter().filter(|op| op.outcome == Outcome::Ok);
    let (ok_ops, ok_reads) = ok.fold((0, 0), |(all, reads), op| (all + 1, reads + usize::from(op.f == "read")));
    if ok_ops == 0 {
        Some("the history has no ok operation".into())
    } else if ok_reads == 0 {
        Some("the history has no ok read, so nothing that was observed could be checked".into())
    } else {
        None
    }
}

/// The report's verdict from the checker's and the evidence.
pub fn report_verdict(history: &History, check: &CheckResult) -> ReportVerdict {
    match check.verdict {
        Verdict::Invalid => ReportVerdict::Invalid,
        Verdict::Unknown => ReportVerdict::Unknown,
        Verdict::Valid if inconclusive_reason(history).is_some() => ReportVerdict::Inconclusive,
        Verdict::Valid => ReportVerdict::Valid,
    }
}

/// Operations by `f`, then by outcome (`ok`, `fail`, `info`).
pub fn op_counts(history: &History) -> BTreeMap<String, BTreeMap<&'static str, usize>> {
    let mut counts: BTreeMap<String, BTreeMap<&'static str, usize>> = BTreeMap::new();
    for op in &history.operations {
        *counts.entry(op.f.clone()).or_default().entry(op.outcome.as_str()).or_default() += 1;
    }
    counts
}

/// Latency of the `ok` operations of one `f`, in milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Latency {
    pub f: String,
    pub count: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The `q`-th percentile (0..=100) of sorted values, by nearest rank.
fn percentile(sorted: &[u64], q: f64) -> u64 {
    assert!(!sorted.is_empty(), "percentile of nothing");
    let rank = ((q / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Latency percentiles per `f` over `ok` operations (completion − invoke).
/// Empty for histories without a clock ([`Clock::EventOrder`]).
pub fn latencies(history: &History) -> Vec<Latency> {
    if history.clock != Clock::Nanoseconds {
        return Vec::new();
    }
    let mut by_f: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for op in history.operations.iter().filter(|op| op.outcome == Outcome::Ok) {
        let done = op.complete_time.expect("ok operations complete");
        by_f.entry(op.f.as_str()).or_default().push(done - op.invoke_time);
    }
    let ms = |ns: u64| ns as f64 / 1e6;
    by_f.into_iter()
        .map(|(f, mut nanos)| {
            nanos.sort_unstable();
            Latency {
                f: f.to_string(),
                count: nanos.len(),
                p50_ms: ms(percentile(&nanos, 50.0)),
                p90_ms: ms(percentile(&nanos, 90.0)),
                p99_ms: ms(percentile(&nanos, 99.0)),
                max_ms: ms(*nanos.last().expect("non-empty")),
            }
        })
        .collect()
}

/// Outcomes of the operations that completed within one window of time:
/// a fault window (a nemesis start to its stop) or the healthy time between.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WindowAvailability {
    /// `fault` or `healthy`.
    pub kind: &'static str,
    pub description: String,
    pub start_time: u64,
    pub end_time: u64,
    pub ok: usize,
    pub fail: usize,
    pub info: usize,
    /// `ok` per second of the window; absent without a clock or for an empty window.
    pub ok_per_s: Option<f64>,
}

/// Availability per window: the history's span cut at every fault start and
/// stop. Operations count in the window where they completed (an info
/// without a completion, where it was invoked). Overlapping faults are merged.
pub fn availability(history: &History) -> Vec<WindowAvailability> {
    let (start, end) = (history.start_time(), history.end_time());
    if history.operations.is_empty() {
        return Vec::new();
    }
    // Merge fault windows into disjoint [from, to) spans.
    let mut faults: Vec<(u64, u64, String)> = history
        .nemesis_windows
        .iter()
        .map(|w| (w.start_time, w.stop_time.unwrap_or(end), w.description.clone()))
        .collect();
    faults.sort_by_key(|&(from, to, _)| (from, to));
    let mut merged: Vec<(u64, u64, String)> = Vec::new();
    for (from, to, description) in faults {
        match merged.last_mut() {
            Some(last) if from <= last.1 => {
                last.1 = last.1.max(to);
                last.2 = format!("{}; {description}", last.2);
            }
            _ => merged.push((from, to, description)),
        }
    }
    let mut windows = Vec::new();
    let mut cursor = start;
    for (from, to, description) in merged {
        if from > cursor {
            windows.push((cursor, from, "healthy", String::new()));
        }
        windows.push((from.max(cursor), to, "fault", description));
        cursor = to;
    }
    if cursor < end || windows.is_empty() {
        windows.push((cursor, end, "healthy", String::new()));
    }
    let last = windows.len() - 1;
    windows
        .into_iter()
        .enumerate()
        .map(|(i, (from, to, kind, description))| {
            let mut window = WindowAvailability {
                kind,
                description,
                start_time: from,
                end_time: to,
                ok: 0,
                fail: 0,
                info: 0,
                ok_per_s: None,
            };
            for op in &history.operations {
                let at = op.complete_time.unwrap_or(op.invoke_time);
                // Windows are [from, to); the last one also takes its end.
                if at >= from && (at < to || (i == last && at == to)) {
                    match op.outcome {
                        Outcome::Ok => window.ok += 1,
                        Outcome::Fail => window.fail += 1,
                        Outcome::Info => window.info += 1,
                    }
                }
            }
            if history.clock == Clock::Nanoseconds && to > from {
                window.ok_per_s = Some(window.ok as f64 / ((to - from) as f64 / 1e9));
            }
            window
        })
        .collect()
}

/// Where the history came from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Source {
    pub path: String,
    /// `jsonl` or `edn`.
    pub format: String,
}

/// The `report.json` document.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub version: &'static str,
    pub source: Source,
    pub clock: Clock,
    pub events: usize,
    pub operations: usize,
    pub keys: usize,
    pub verdict: ReportVerdict,
    pub summary: String,
    pub inconclusive_reason: Option<String>,
    /// One entry per checker; today only `linearizable`.
    pub checkers: BTreeMap<&'static str, CheckResult>,
    pub op_counts: BTreeMap<String, BTreeMap<&'static str, usize>>,
    pub latency: Vec<Latency>,
    pub availability: Vec<WindowAvailability>,
    pub nemesis_windows: Vec<crate::history::NemesisWindow>,
    pub config: ReportConfig,
}

/// The checker settings a report was made with.
#[derive(Clone, Debug, Serialize)]
pub struct ReportConfig {
    pub key_time_limit_ms: u64,
    pub key_cache_limit_bytes: usize,
    pub threads: usize,
    pub relax_bounded_staleness: bool,
}

impl Report {
    pub fn new(history: &History, check: &CheckResult, source: Source, config: &CheckConfig, relaxed: bool) -> Report {
        let verdict = report_verdict(history, check);
        let mut checkers = BTreeMap::new();
        checkers.insert("linearizable", check.clone());
        Report {
            tool: "geokv-jepsen",
            version: env!("CARGO_PKG_VERSION"),
            source,
            clock: history.clock,
            events: history.events.len(),
            operations: history.operations.len(),
            keys: check.keys.len(),
            verdict,
            summary: summary(history, check),
            inconclusive_reason: inconclusive_reason(history),
            checkers,
            op_counts: op_counts(history),
            latency: latencies(history),
            availability: availability(history),
            nemesis_windows: history.nemesis_windows.clone(),
            config: ReportConfig {
                key_time_limit_ms: config.key_time_limit_ms,
                key_cache_limit_bytes: config.key_cache_limit_bytes,
                threads: config.threads,
                relax_bounded_staleness: relaxed,
            },
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("reports serialise")
    }
}

/// One sentence for the verdict.
pub fn summary(history: &History, check: &CheckResult) -> String {
    let checked: usize = check.keys.iter().map(|k| k.operations).sum();
    let keys = check.keys.len();
    let plural = |n: usize, word: &str| if n == 1 { format!("{n} {word}") } else { format!("{n} {word}s") };
    match report_verdict(history, check) {
        ReportVerdict::Valid => {
            format!("no anomaly found in {} on {}", plural(checked, "operation"), plural(keys, "key"))
        }
        ReportVerdict::Invalid => {
            let bad = check.keys.iter().filter(|k| k.verdict.verdict() == Verdict::Invalid).count();
            // Set and bank checks have no per-key results: their checker's
            // own summary (report.json) says what was wrong.
            let Some(first) = check.first_invalid() else {
                return "anomaly found by the workload's checker (see report.json)".to_string();
            };
            let what = match &first.verdict {
                KeyVerdict::Invalid { witness } => format!(": {} cannot be placed", op_text(&witness.unplaceable)),
                _ => String::new(),
            };
            format!("NOT linearizable: {} of {} ({:?}{what})", plural(bad, "key"), plural(keys, "key"), first.key)
        }
        ReportVerdict::Unknown => {
            let unknown = check.keys.iter().filter(|k| k.verdict.verdict() == Verdict::Unknown).count();
            format!(
                "no verdict for {} of {} (budget exhausted); no anomaly found in the rest — this is not a pass",
                plural(unknown, "key"),
                plural(keys, "key")
            )
        }
        ReportVerdict::Inconclusive => format!(
            "no anomaly found in {}, but {}: inconclusive, not a pass",
            plural(checked, "operation"),
            inconclusive_reason(history).expect("inconclusive has a reason")
        ),
    }
}

fn op_text(op: &WitnessOp) -> String {
    format!("process {} {}", op.process, op.description)
}

/// A time for humans: milliseconds since the history began, or the event
/// position for histories without a clock.
fn time_text(history: Option<&History>, time: u64) -> String {
    match history {
        Some(h) if h.clock == Clock::Nanoseconds => format!("{:.3} ms", (time - h.start_time().min(time)) as f64 / 1e6),
        Some(_) => format!("event {time}"),
        None => time.to_string(),
    }
}

fn interval_text(op: &WitnessOp, history: Option<&History>) -> String {
    let from = time_text(history, op.invoke_time);
    match op.complete_time {
        Some(done) => format!("[{from} .. {}]", time_text(history, done)),
        None => format!("[{from} .. unknown outcome]"),
    }
}

/// A witness, readably; with the history, each operation names its line.
pub fn render_witness(witness: &Witness, history: Option<&History>, out: &mut String) {
    let line = |op: &WitnessOp| match history.and_then(|h| h.operations.get(op.id).map(|o| h.line_of(o))) {
        Some(line) => format!("  line {line}"),
        None => String::new(),
    };
    let shown = witness.linearized.len().min(WITNESS_PREFIX_SHOWN_OPS);
    let hidden = witness.linearized.len() - shown;
    let _ = writeln!(
        out,
        "    longest linearizable prefix: {} operations{}",
        witness.linearized.len(),
        if hidden > 0 { format!(" (first {hidden} not shown; see report.json / --json)") } else { String::new() }
    );
    for (i, op) in witness.linearized.iter().enumerate().skip(hidden) {
        let _ = writeln!(out, "      {:>4}. {:<56} {}{}", i + 1, op_text(op), interval_text(op, history), line(op));
    }
    let _ = writeln!(out, "    state after the prefix: {}", witness.state_after);
    let _ = writeln!(
        out,
        "    cannot be placed next: {} {}{}",
        op_text(&witness.unplaceable),
        interval_text(&witness.unplaceable, history),
        line(&witness.unplaceable)
    );
    if witness.concurrent.is_empty() {
        let _ = writeln!(out, "    concurrent with it: none (no operation overlaps it)");
    } else {
        let _ = writeln!(out, "    concurrent with it ({}):", witness.concurrent.len());
    }
    for op in &witness.concurrent {
        let placed = witness.linearized.iter().any(|l| l.id == op.id);
        let _ = writeln!(
            out,
            "            {:<56} {}{}{}",
            op_text(op),
            interval_text(op, history),
            line(op),
            if placed { "  (in the prefix)" } else { "" }
        );
    }
}

/// The CLI's text report.
pub fn render_text(history: &History, source: &Source, check: &CheckResult) -> String {
    let mut out = String::new();
    let clock = match history.clock {
        Clock::Nanoseconds => "times in ns",
        Clock::EventOrder => "no clock: times are event positions",
    };
    let _ = writeln!(
        out,
        "{} ({}, {} events, {} operations, {} keys; {clock})",
        source.path,
        source.format,
        history.events.len(),
        history.operations.len(),
        check.keys.len()
    );
    for key in &check.keys {
        let name = if key.key.is_empty() { "(single register)".to_string() } else { format!("{:?}", key.key) };
        let detail = match &key.verdict {
            KeyVerdict::Valid => String::new(),
            KeyVerdict::Invalid { .. } => String::new(),
            KeyVerdict::Unknown { why } => format!(" — {why}"),
        };
        let _ = writeln!(
            out,
            "  key {name}: {}{detail} ({} ops, {} states, {:.1} ms)",
            key.verdict.verdict().as_str().to_uppercase(),
            key.operations,
            key.states_explored,
            key.elapsed_ms
        );
        if let KeyVerdict::Invalid { witness } = &key.verdict {
            render_witness(witness, Some(history), &mut out);
        }
    }
    let verdict = report_verdict(history, check);
    let _ = writeln!(out, "{}: {}", verdict.as_str().to_uppercase(), summary(history, check));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::read_jsonl;

    #[test]
    fn percentiles_by_nearest_rank() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 50.0), 50);
        assert_eq!(percentile(&values, 90.0), 90);
        assert_eq!(percentile(&values, 99.0), 99);
        assert_eq!(percentile(&[7], 99.0), 7);
    }

    #[test]
    fn counts_latencies_and_windows() {
        let ms = 1_000_000;
        let text = [
            r#"{"process":0,"type":"invoke","f":"write","value":1,"time":0}"#.to_string(),
            format!(r#"{{"process":0,"type":"ok","f":"write","value":1,"time":{}}}"#, 2 * ms),
            format!(r#"{{"type":"nemesis","f":"start","value":"partition","time":{}}}"#, 3 * ms),
            format!(r#"{{"process":1,"type":"invoke","f":"read","time":{}}}"#, 4 * ms),
            format!(r#"{{"process":1,"type":"fail","f":"read","time":{}}}"#, 9 * ms),
            format!(r#"{{"process":0,"type":"invoke","f":"write","value":2,"time":{}}}"#, 5 * ms),
            format!(r#"{{"process":0,"type":"info","f":"write","value":2,"time":{}}}"#, 10 * ms),
            format!(r#"{{"type":"nemesis","f":"stop","time":{}}}"#, 11 * ms),
            format!(r#"{{"process":1,"type":"invoke","f":"read","time":{}}}"#, 12 * ms),
            format!(r#"{{"process":1,"type":"ok","f":"read","value":2,"time":{}}}"#, 16 * ms),
        ]
        .join("\n");
        let history = read_jsonl(&text).unwrap();
        let counts = op_counts(&history);
        assert_eq!(counts["write"]["ok"], 1);
        assert_eq!(counts["write"]["info"], 1);
        assert_eq!(counts["read"]["fail"], 1);
        let latency = latencies(&history);
        assert_eq!(latency.len(), 2);
        assert_eq!((latency[0].f.as_str(), latency[0].p50_ms), ("read", 4.0));
        assert_eq!((latency[1].f.as_str(), latency[1].max_ms), ("write", 2.0));
        let windows = availability(&history);
        let shape: Vec<_> = windows.iter().map(|w| (w.kind, w.ok, w.fail, w.info)).collect();
        assert_eq!(shape, vec![("healthy", 1, 0, 0), ("fault", 0, 1, 1), ("healthy", 1, 0, 0)]);
        assert_eq!(windows[1].description, "partition");
        assert_eq!(inconclusive_reason(&history), None);
    }

    #[test]
    fn no_ok_read_is_inconclusive() {
        let text = "{\"process\":0,\"type\":\"invoke\",\"f\":\"write\",\"value\":1,\"time\":0}\n\
                    {\"process\":0,\"type\":\"ok\",\"f\":\"write\",\"value\":1,\"time\":1}\n";
        let history = read_jsonl(text).unwrap();
        assert!(inconclusive_reason(&history).unwrap().contains("no ok read"));
        let empty = read_jsonl("").unwrap();
        assert!(inconclusive_reason(&empty).unwrap().contains("no ok operation"));
    }
}
