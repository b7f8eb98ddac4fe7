//! Checkers for the set and bank workloads (the register workload uses the
//! linearizability checker).
//!
//! # Set
//!
//! Every `add e` is an operation; `read` returns the elements present; the
//! runner's `final-read` runs after the final heal. Anomalies:
//!
//! - **lost**: an `ok` add missing from the final read;
//! - **unexpected**: an element read that no process ever tried to add;
//! - **failed but present**: a `fail` add (definitely not applied) read back;
//! - **stale** (linearizable or lease reads only): a read missing an element
//!   whose add completed before the read was invoked, or one a read that
//!   completed before this read began had already seen.
//!
//! `info` adds may or may not appear: they are counted ("recovered" when the
//! final read has them), never flagged.
//!
//! # Bank
//!
//! Every `ok` read (one scan of the bank's one shard) must show every account,
//! no negative balance, and the initial total.
//!
//! # Append (exactly-once)
//!
//! Per list key: `append e` (unique e) and reads returning the whole list;
//! the runner's `final-read` of each list runs after the final heal. Every
//! replica's state is a prefix of one log, so at *any* read level:
//!
//! - **duplicated**: an element twice in one read (a write applied twice);
//! - **failed but present**: a `fail` append (definitely not applied) read
//!   back, e.g. a retry re-run instead of answered from the session table;
//! - **unexpected**: an element never appended to this list;
//! - **divergent**: a read that is not a prefix of the longest read;
//! - **lost**: an `ok` append missing from the final read;
//! - **out of order**: `a` acknowledged before `b` was invoked, yet `b`
//!   before `a` in the list.
//!
//! With linearizable, lease or follower reads also **stale**: a read missing
//! an append acknowledged before it was invoked, or shorter than a read that
//! completed before it began. `info` appends may be present (once) or not.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use serde_json::Value;

use crate::history::{History, Operation, Outcome};
use crate::report::ReportVerdict;

/// Anomalies listed in full in a report; beyond this only counted.
pub const MAX_LISTED: usize = 20;

/// What the set checker found.
#[derive(Clone, Debug, Serialize)]
pub struct SetResult {
    pub verdict: ReportVerdict,
    pub summary: String,
    pub attempted: usize,
    pub acknowledged: usize,
    pub unknown: usize,
    /// `info` adds the final read has.
    pub recovered: usize,
    pub final_read_size: Option<usize>,
    pub lost_count: usize,
    pub lost: Vec<u64>,
    pub unexpected_count: usize,
    pub unexpected: Vec<String>,
    pub failed_but_present_count: usize,
    pub failed_but_present: Vec<u64>,
    /// Whether stale reads count as anomalies (linearizable / lease reads).
    pub reads_must_be_fresh: bool,
    pub stale_reads: usize,
    /// Up to [`MAX_LISTED`]: (history operation index of the read, a missing element).
    pub stale_examples: Vec<(usize, u64)>,
}

fn elements(value: &Value) -> Option<BTreeSet<u64>> {
    value.as_array()?.iter().map(Value::as_u64).collect()
}

/// Checks a set history. `reads_must_be_fresh`: reads were linearizable
/// (or lease) reads, so a read may not miss what was acknowledged before it.
pub fn check_set(history: &History, reads_must_be_fresh: bool) -> SetResult {
    let mut attempted = BTreeSet::new();
    let mut outcome_of: HashMap<u64, Outcome> = HashMap::new();
    // (invoke, complete, set) of ok reads in history order; the final read separately.
    let mut reads: Vec<(usize, u64, u64, BTreeSet<u64>)> = Vec::new();
    let mut final_read: Option<BTreeSet<u64>> = None;
    let mut unexpected = BTreeSet::new();
    let mut acked_at: Vec<(u64, u64)> = Vec::new();
    for op in &history.operations {
        let invoke = history.invoke_of(op);
        match op.f.as_str() {
            "add" => {
                if let Some(e) = invoke.value.as_u64() {
                    attempted.insert(e);
                    outcome_of.insert(e, op.outcome);
                    if op.outcome == Outcome::Ok {
                        acked_at.push((op.complete_time.expect("ok completes"), e));
                    }
                }
            }
            "read" | "final-read" if op.outcome == Outcome::Ok => {
                let done = history.completion_of(op).expect("ok completes");
                let Some(set) = elements(&done.value) else {
                    unexpected.insert(format!("unreadable read result {}", done.value));
                    continue;
                };
                if op.f == "final-read" {
                    final_read = Some(set.clone());
                }
                reads.push((op.index, op.invoke_time, op.complete_time.expect("ok completes"), set));
            }
            _ => {}
        }
    }
    for (_, _, _, set) in &reads {
        for e in set {
            if !attempted.contains(e) {
                unexpected.insert(e.to_string());
            }
        }
    }
    let mut failed_but_present = BTreeSet::new();
    for (_, _, _, set) in &reads {
        for e in set {
            if outcome_of.get(e) == Some(&Outcome::Fail) {
                failed_but_present.insert(*e);
            }
        }
    }
    let acknowledged: BTreeSet<u64> = outcome_of.iter().filter(|(_, o)| **o == Outcome::Ok).map(|(e, _)| *e).collect();
    let unknown = outcome_of.values().filter(|o| **o == Outcome::Info).count();
    let (lost, recovered) = match &final_read {
        Some(set) => (
            acknowledged.difference(set).copied().collect::<Vec<_>>(),
            outcome_of.iter().filter(|(e, o)| **o == Outcome::Info && set.contains(e)).count(),
        ),
        None => (Vec::new(), 0),
    };
    // Stale reads: a read must hold every element acknowledged before it was
    // invoked, and every element a read completed before it began had seen.
    acked_at.sort_unstable();
    let mut by_completion: Vec<&(usize, u64, u64, BTreeSet<u64>)> = reads.iter().collect();
    by_completion.sort_by_key(|r| r.2);
    let mut stale_reads = 0;
    let mut stale_examples = Vec::new();
    for (index, invoke, _, set) in &reads {
        let mut must: BTreeSet<u64> = acked_at.iter().take_while(|(t, _)| t < invoke).map(|(_, e)| *e).collect();
        for earlier in by_completion.iter().take_while(|r| r.2 < *invoke) {
            must.extend(earlier.3.iter().copied());
        }
        if let Some(missing) = must.difference(set).next() {
            stale_reads += 1;
            if stale_examples.len() < MAX_LISTED {
                stale_examples.push((*index, *missing));
            }
        }
    }
    let stale_counts = reads_must_be_fresh && stale_reads > 0;
    let bad = !lost.is_empty() || !unexpected.is_empty() || !failed_but_present.is_empty() || stale_counts;
    let verdict = if bad {
        ReportVerdict::Invalid
    } else if final_read.is_none() {
        ReportVerdict::Inconclusive
    } else {
        ReportVerdict::Valid
    };
    let summary = match verdict {
        ReportVerdict::Valid => format!(
            "no anomaly found in {} adds ({} acknowledged, {unknown} unknown, {recovered} of those present) and {} reads",
            attempted.len(),
            acknowledged.len(),
            reads.len()
        ),
        ReportVerdict::Inconclusive => "no final read after the heal succeeded: inconclusive, not a pass".into(),
        _ => format!(
            "set anomalies: {} lost, {} unexpected, {} failed adds present, {stale_reads} stale reads{}",
            lost.len(),
            unexpected.len(),
            failed_but_present.len(),
            if reads_must_be_fresh { "" } else { " (allowed at this consistency)" }
        ),
    };
    SetResult {
        verdict,
        summary,
        attempted: attempted.len(),
        acknowledged: acknowledged.len(),
        unknown,
        recovered,
        final_read_size: final_read.as_ref().map(BTreeSet::len),
        lost_count: lost.len(),
        lost: lost.into_iter().take(MAX_LISTED).collect(),
        unexpected_count: unexpected.len(),
        unexpected: unexpected.into_iter().take(MAX_LISTED).collect(),
        failed_but_present_count: failed_but_present.len(),
        failed_but_present: failed_but_present.into_iter().take(MAX_LISTED).collect(),
        reads_must_be_fresh,
        stale_reads,
        stale_examples,
    }
}

/// What the append checker found. Lists of examples hold up to
/// [`MAX_LISTED`] entries; the `_count` fields count them all.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AppendResult {
    pub verdict: ReportVerdict,
    pub summary: String,
    pub lists: usize,
    pub attempted: usize,
    pub acknowledged: usize,
    pub unknown: usize,
    /// `info` appends the final read has.
    pub recovered: usize,
    pub reads: usize,
    /// Lists with an acknowledged append but no successful final read.
    pub lists_without_final_read: usize,
    pub duplicated_count: usize,
    /// (list, element).
    pub duplicated: Vec<(String, u64)>,
    pub failed_but_present_count: usize,
    pub failed_but_present: Vec<(String, u64)>,
    pub unexpected_count: usize,
    pub unexpected: Vec<(String, String)>,
    pub divergent_count: usize,
    /// (list, history operation index of the read).
    pub divergent: Vec<(String, usize)>,
    pub lost_count: usize,
    pub lost: Vec<(String, u64)>,
    pub out_of_order_count: usize,
    /// (list, a, b): `a` was acknowledged before `b` was invoked, and `b` comes first.
    pub out_of_order: Vec<(String, u64, u64)>,
    pub reads_must_be_fresh: bool,
    pub stale_reads: usize,
    /// (list, history operation index of the read).
    pub stale_examples: Vec<(String, usize)>,
}

/// Appends `item` to `list` while it is shorter than [`MAX_LISTED`], and counts it.
fn note<T>(count: &mut usize, list: &mut Vec<T>, item: T) {
    *count += 1;
    if list.len() < MAX_LISTED {
        list.push(item);
    }
}

/// One list's operations.
#[derive(Default)]
struct ListOps<'a> {
    /// element -> its append.
    appends: BTreeMap<u64, &'a Operation>,
    /// ok reads and final reads: (operation, elements as read).
    reads: Vec<(&'a Operation, Vec<Value>)>,
    final_read: Option<Vec<Value>>,
}

/// Checks an append history. `reads_must_be_fresh`: reads were
/// linearizable, lease or follower reads.
pub fn check_append(history: &History, reads_must_be_fresh: bool) -> AppendResult {
    let mut lists: BTreeMap<&str, ListOps> = BTreeMap::new();
    let mut r = AppendResult { reads_must_be_fresh, ..Default::default() };
    for op in &history.operations {
        let list = lists.entry(op.key.as_str()).or_default();
        match op.f.as_str() {
            "append" => {
                if let Some(e) = history.invoke_of(op).value.as_u64() {
                    list.appends.insert(e, op);
                }
            }
            "read" | "final-read" if op.outcome == Outcome::Ok => {
                let done = history.completion_of(op).expect("ok completes");
                let elements = done.value.as_array().cloned().unwrap_or_else(|| vec![done.value.clone()]);
                if op.f == "final-read" {
                    list.final_read = Some(elements.clone());
                }
                list.reads.push((op, elements));
            }
            _ => {}
        }
    }
    for (key, list) in &lists {
        let key = key.to_string();
        r.attempted += list.appends.len();
        r.acknowledged += list.appends.values().filter(|op| op.outcome == Outcome::Ok).count();
        r.unknown += list.appends.values().filter(|op| op.outcome == Outcome::Info).count();
        r.reads += list.reads.len();
        let outcome = |e: u64| list.appends.get(&e).map(|op| op.outcome);
        let mut duplicated = BTreeSet::new();
        let mut failed = BTreeSet::new();
        let mut unexpected = BTreeSet::new();
        for (_, elements) in &list.reads {
            let mut seen = BTreeSet::new();
            for element in elements {
                let Some(e) = element.as_u64() else {
                    unexpected.insert(element.to_string());
                    continue;
                };
                if !seen.insert(e) {
                    duplicated.insert(e);
                }
                match outcome(e) {
                    None => {
                        unexpected.insert(e.to_string());
                    }
                    Some(Outcome::Fail) => {
                        failed.insert(e);
                    }
                    Some(_) => {}
                }
            }
        }
        for e in duplicated {
            note(&mut r.duplicated_count, &mut r.duplicated, (key.clone(), e));
        }
        for e in failed {
            note(&mut r.failed_but_present_count, &mut r.failed_but_present, (key.clone(), e));
        }
        for e in unexpected {
            note(&mut r.unexpected_count, &mut r.unexpected, (key.clone(), e));
        }
        // Every read a prefix of the longest one.
        let longest = list.reads.iter().map(|(_, l)| l).max_by_key(|l| l.len()).cloned().unwrap_or_default();
        for (op, elements) in &list.reads {
            if longest[..elements.len()] != elements[..] {
                note(&mut r.divergent_count, &mut r.divergent, (key.clone(), op.index));
            }
        }
        // Real-time order of acknowledged appends, by their places in the longest read.
        let place: HashMap<u64, usize> =
            longest.iter().enumerate().filter_map(|(i, v)| v.as_u64().map(|e| (e, i))).collect();
        let acked: Vec<(u64, u64)> = list
            .appends
            .iter()
            .filter(|(_, op)| op.outcome == Outcome::Ok)
            .map(|(e, op)| (*e, op.complete_time.expect("ok completes")))
            .collect();
        for (b, op_b) in &list.appends {
            let Some(&pb) = place.get(b) else { continue };
            for (a, done_a) in &acked {
                if *done_a < op_b.invoke_time && place.get(a).is_some_and(|&pa| pa > pb) {
                    note(&mut r.out_of_order_count, &mut r.out_of_order, (key.clone(), *a, *b));
                }
            }
        }
        match &list.final_read {
            Some(last) => {
                let present: BTreeSet<u64> = last.iter().filter_map(Value::as_u64).collect();
                for (e, _) in acked.iter().filter(|(e, _)| !present.contains(e)) {
                    note(&mut r.lost_count, &mut r.lost, (key.clone(), *e));
                }
                r.recovered +=
                    list.appends.iter().filter(|(e, op)| op.outcome == Outcome::Info && present.contains(e)).count();
            }
            None if !acked.is_empty() => r.lists_without_final_read += 1,
            None => {}
        }
        // Stale: missing an append acknowledged before the read began, or
        // shorter than a read that completed before it began.
        for (op, elements) in &list.reads {
            let present: BTreeSet<u64> = elements.iter().filter_map(Value::as_u64).collect();
            let missing = acked.iter().any(|(e, done)| *done < op.invoke_time && !present.contains(e));
            let shorter = list.reads.iter().any(|(earlier, seen)| {
                earlier.complete_time.is_some_and(|t| t < op.invoke_time) && seen.len() > elements.len()
            });
            if missing || shorter {
                r.stale_reads += 1;
                if r.stale_examples.len() < MAX_LISTED {
                    r.stale_examples.push((key.clone(), op.index));
                }
            }
        }
    }
    r.lists = lists.values().filter(|l| !l.appends.is_empty() || !l.reads.is_empty()).count();
    let bad = r.duplicated_count
        + r.failed_but_present_count
        + r.unexpected_count
        + r.divergent_count
        + r.lost_count
        + r.out_of_order_count
        + if reads_must_be_fresh { r.stale_reads } else { 0 };
    r.verdict = if bad > 0 {
        ReportVerdict::Invalid
    } else if r.lists_without_final_read > 0 || r.lists == 0 {
        ReportVerdict::Inconclusive
    } else {
        ReportVerdict::Valid
    };
    r.summary = match r.verdict {
        ReportVerdict::Valid => format!(
            "no anomaly found in {} appends to {} lists ({} acknowledged, {} unknown, {} of those present once) and \
             {} reads",
            r.attempted, r.lists, r.acknowledged, r.unknown, r.recovered, r.reads
        ),
        ReportVerdict::Inconclusive => format!(
            "{} lists with acknowledged appends have no final read after the heal: inconclusive, not a pass",
            r.lists_without_final_read
        ),
        _ => format!(
            "append anomalies: {} duplicated, {} failed appends present, {} unexpected, {} divergent reads, {} lost, \
             {} out of order, {} stale reads{}",
            r.duplicated_count,
            r.failed_but_present_count,
            r.unexpected_count,
            r.divergent_count,
            r.lost_count,
            r.out_of_order_count,
            r.stale_reads,
            if reads_must_be_fresh { "" } else { " (allowed at this consistency)" }
        ),
    };
    r
}

/// One bad bank read.
#[derive(Clone, Debug, Serialize)]
pub struct BankAnomaly {
    /// Index into the history's operations.
    pub op: usize,
    pub balances: Value,
    pub why: String,
}

/// What the bank checker found.
#[derive(Clone, Debug, Serialize)]
pub struct BankResult {
    pub verdict: ReportVerdict,
    pub summary: String,
    pub expected_total: i64,
    pub reads: usize,
    /// Distinct totals seen, with how many reads saw each.
    pub totals: BTreeMap<i64, usize>,
    pub anomaly_count: usize,
    pub anomalies: Vec<BankAnomaly>,
}

/// Checks a bank history: every ok read conserves `expected_total` over
/// `accounts` accounts, none negative.
pub fn check_bank(history: &History, accounts: usize, expected_total: i64) -> BankResult {
    let mut reads = 0;
    let mut totals = BTreeMap::new();
    let mut anomalies = Vec::new();
    let mut anomaly_count = 0;
    for op in &history.operations {
        if !matches!(op.f.as_str(), "read" | "final-read") || op.outcome != Outcome::Ok {
            continue;
        }
        reads += 1;
        let balances = history.completion_of(op).expect("ok completes").value.clone();
        let values: Option<Vec<i64>> = balances.as_array().and_then(|a| a.iter().map(Value::as_i64).collect());
        let why = match values {
            None => Some("an account is missing or unreadable".to_string()),
            Some(v) if v.len() != accounts => Some(format!("{} accounts, expected {accounts}", v.len())),
            Some(v) => {
                let total: i64 = v.iter().sum();
                *totals.entry(total).or_insert(0) += 1;
                if let Some(negative) = v.iter().find(|b| **b < 0) {
                    Some(format!("negative balance {negative}"))
                } else if total != expected_total {
                    Some(format!("total {total}, expected {expected_total}"))
                } else {
                    None
                }
            }
        };
        if let Some(why) = why {
            anomaly_count += 1;
            if anomalies.len() < MAX_LISTED {
                anomalies.push(BankAnomaly { op: op.index, balances, why });
            }
        }
    }
    let verdict = if anomaly_count > 0 {
        ReportVerdict::Invalid
    } else if reads == 0 {
        ReportVerdict::Inconclusive
    } else {
        ReportVerdict::Valid
    };
    let transfers = history.operations.iter().filter(|op| op.f == "transfer" && op.outcome == Outcome::Ok).count();
    let summary = match verdict {
        ReportVerdict::Valid => {
            format!(
                "no anomaly found in {reads} reads and {transfers} acknowledged transfers: total {expected_total} conserved, no negative balance"
            )
        }
        ReportVerdict::Inconclusive => "no ok read: inconclusive, not a pass".into(),
        _ => format!("{anomaly_count} of {reads} reads break the bank's invariants"),
    };
    BankResult { verdict, summary, expected_total, reads, totals, anomaly_count, anomalies }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::read_jsonl;

    fn history(lines: &[&str]) -> History {
        read_jsonl(&lines.join("\n")).unwrap()
    }

    #[test]
    fn set_lost_unexpected_and_stale_are_found() {
        let h = history(&[
            r#"{"process":0,"type":"invoke","f":"add","value":1,"time":1}"#,
            r#"{"process":0,"type":"ok","f":"add","value":1,"time":2}"#,
            r#"{"process":0,"type":"invoke","f":"add","value":2,"time":3}"#,
            r#"{"process":0,"type":"ok","f":"add","value":2,"time":4}"#,
            r#"{"process":1,"type":"invoke","f":"read","time":5}"#,
            r#"{"process":1,"type":"ok","f":"read","value":[1],"time":6}"#,
            r#"{"process":2,"type":"invoke","f":"final-read","time":7}"#,
            r#"{"process":2,"type":"ok","f":"final-read","value":[1,9],"time":8}"#,
        ]);
        let fresh = check_set(&h, true);
        assert_eq!(fresh.verdict, ReportVerdict::Invalid);
        assert_eq!(fresh.lost, vec![2]);
        assert_eq!(fresh.unexpected, vec!["9".to_string()]);
        assert_eq!(fresh.stale_reads, 2, "{fresh:?}");
    }

    #[test]
    fn set_with_everything_present_is_valid_and_without_final_read_inconclusive() {
        let lines = [
            r#"{"process":0,"type":"invoke","f":"add","value":1,"time":1}"#,
            r#"{"process":0,"type":"ok","f":"add","value":1,"time":2}"#,
            r#"{"process":0,"type":"invoke","f":"add","value":2,"time":3}"#,
            r#"{"process":0,"type":"info","f":"add","value":2,"time":4}"#,
            r#"{"process":1,"type":"invoke","f":"read","time":2}"#,
            r#"{"process":1,"type":"ok","f":"read","value":[],"time":6}"#,
        ];
        let mut with_final = lines.to_vec();
        with_final.push(r#"{"process":2,"type":"invoke","f":"final-read","time":7}"#);
        with_final.push(r#"{"process":2,"type":"ok","f":"final-read","value":[1,2],"time":8}"#);
        let mut sorted = with_final.clone();
        sorted.sort_by_key(|l| serde_json::from_str::<Value>(l).unwrap()["time"].as_u64());
        let result = check_set(&history(&sorted), true);
        assert_eq!(result.verdict, ReportVerdict::Valid, "{result:?}");
        assert_eq!(result.recovered, 1);
        let mut sorted = lines.to_vec();
        sorted.sort_by_key(|l| serde_json::from_str::<Value>(l).unwrap()["time"].as_u64());
        assert_eq!(check_set(&history(&sorted), true).verdict, ReportVerdict::Inconclusive);
    }

    /// One append history line: `(process, type, f, value, time)` on list `l`.
    fn line(process: u64, kind: &str, f: &str, value: &str, time: u64) -> String {
        let value = if value.is_empty() { String::new() } else { format!(r#","value":{value}"#) };
        format!(r#"{{"process":{process},"type":"{kind}","f":"{f}","key":"l"{value},"time":{time}}}"#)
    }

    fn appends(lines: &[String]) -> History {
        read_jsonl(&lines.join("\n")).unwrap()
    }

    #[test]
    fn appends_applied_once_in_order_and_all_present_are_valid() {
        let h = appends(&[
            line(0, "invoke", "append", "1", 1),
            line(0, "ok", "append", "1", 2),
            line(1, "invoke", "append", "2", 3),
            line(1, "info", "append", "2", 4),
            line(2, "invoke", "read", "", 5),
            line(2, "ok", "read", "[1]", 6),
            line(3, "invoke", "final-read", "", 7),
            line(3, "ok", "final-read", "[1,2]", 8),
        ]);
        let r = check_append(&h, true);
        assert_eq!(r.verdict, ReportVerdict::Valid, "{r:?}");
        assert_eq!((r.lists, r.acknowledged, r.unknown, r.recovered, r.reads), (1, 1, 1, 1, 2));
    }

    #[test]
    fn a_double_apply_a_failed_append_present_and_a_lost_one_are_found() {
        let h = appends(&[
            line(0, "invoke", "append", "1", 1),
            line(0, "ok", "append", "1", 2),
            line(1, "invoke", "append", "2", 3),
            line(1, "fail", "append", "2", 4),
            line(2, "invoke", "append", "3", 5),
            line(2, "ok", "append", "3", 6),
            line(3, "invoke", "final-read", "", 7),
            line(3, "ok", "final-read", "[1,2,1]", 8),
        ]);
        let r = check_append(&h, false);
        assert_eq!(r.verdict, ReportVerdict::Invalid);
        assert_eq!(r.duplicated, vec![("l".to_string(), 1)]);
        assert_eq!(r.failed_but_present, vec![("l".to_string(), 2)]);
        assert_eq!(r.lost, vec![("l".to_string(), 3)]);
    }

    #[test]
    fn diverging_reads_order_against_real_time_and_stale_reads_are_found() {
        let h = appends(&[
            line(0, "invoke", "append", "1", 1),
            line(0, "ok", "append", "1", 2),
            line(0, "invoke", "append", "2", 3),
            line(0, "ok", "append", "2", 4),
            // Stale: 1 and 2 were acknowledged before it began.
            line(1, "invoke", "read", "", 5),
            line(1, "ok", "read", "[]", 6),
            // Not a prefix of the longest read (and stale too: 2 is missing).
            line(2, "invoke", "read", "", 7),
            line(2, "ok", "read", "[1]", 8),
            // 1 was acknowledged before 2 was invoked, yet comes after it.
            line(3, "invoke", "final-read", "", 9),
            line(3, "ok", "final-read", "[2,1]", 10),
        ]);
        let r = check_append(&h, true);
        assert_eq!(r.verdict, ReportVerdict::Invalid);
        assert_eq!(r.out_of_order, vec![("l".to_string(), 1, 2)]);
        assert_eq!(r.divergent_count, 1, "{r:?}");
        assert_eq!(r.stale_reads, 2, "{r:?}");
        // At a stale level stale reads are counted, not anomalies; the rest still are.
        let r = check_append(&h, false);
        assert_eq!((r.verdict, r.stale_reads), (ReportVerdict::Invalid, 2));
        // No final read: no pass.
        let h = appends(&[line(0, "invoke", "append", "1", 1), line(0, "ok", "append", "1", 2)]);
        assert_eq!(check_append(&h, true).verdict, ReportVerdict::Inconclusive);
    }

    #[test]
    fn bank_total_and_negatives() {
        let h = history(&[
            r#"{"process":0,"type":"invoke","f":"read","time":1}"#,
            r#"{"process":0,"type":"ok","f":"read","value":[50,50],"time":2}"#,
            r#"{"process":0,"type":"invoke","f":"read","time":3}"#,
            r#"{"process":0,"type":"ok","f":"read","value":[120,-20],"time":4}"#,
            r#"{"process":0,"type":"invoke","f":"read","time":5}"#,
            r#"{"process":0,"type":"ok","f":"read","value":[60,50],"time":6}"#,
        ]);
        let result = check_bank(&h, 2, 100);
        assert_eq!(result.verdict, ReportVerdict::Invalid);
        assert_eq!(result.anomaly_count, 2);
        assert!(result.anomalies[0].why.contains("negative"));
        assert!(result.anomalies[1].why.contains("total 110"));
        let ok = history(&[
            r#"{"process":0,"type":"invoke","f":"read","time":1}"#,
            r#"{"process":0,"type":"ok","f":"read","value":[50,50],"time":2}"#,
        ]);
        assert_eq!(check_bank(&ok, 2, 100).verdict, ReportVerdict::Valid);
    }
}
