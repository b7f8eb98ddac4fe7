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
//! - **stale**: a read older than the staleness bound it reported (0 for
//!   linearizable, lease and follower reads): one missing an element whose
//!   add completed before the read's invoke moved back by its bound, or one
//!   that a read completed before that moment had already seen. A read that
//!   reported no bound promised nothing and is not checked for staleness.
//!
//! `info` adds may or may not appear: they are counted ("recovered" when the
//! final read has them), never flagged.
//!
//! # Bank
//!
//! Every `ok` read (one scan of the bank's one shard) must show every account,
//! no negative balance, and the initial total. How recent it is goes unchecked
//! (its level and reported bound are counted).
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
//! And **stale**, judged as for the set by the bound each read reported: a
//! read missing an append acknowledged before its invoke moved back by its
//! bound, or shorter than a read that completed before that moment. `info`
//! appends may be present (once) or not.
//!
//! Both checkers count the reads per level served and by what they promised
//! ([`BoundCounts`]), and how many of the reads that reported a bound kept it
//! (`bounds_held`).
//!
//! Times are the history's nanoseconds, as `run` records them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use serde_json::Value;

use crate::history::{History, Operation, Outcome};
use crate::report::ReportVerdict;
use crate::staleness::{BoundCounts, promised_since};

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
    /// Reads older than the bound they reported.
    pub stale_reads: usize,
    /// Up to [`MAX_LISTED`]: (history operation index of the read, a missing element).
    pub stale_examples: Vec<(usize, u64)>,
    /// The reads (final read included) by level and by what they promised.
    pub bounds: BoundCounts,
    /// Reads that reported a bound and kept it.
    pub bounds_held: u64,
}

fn elements(value: &Value) -> Option<BTreeSet<u64>> {
    value.as_array()?.iter().map(Value::as_u64).collect()
}

/// Checks a set history; each read's staleness by the bound it reported.
pub fn check_set(history: &History) -> SetResult {
    let mut attempted = BTreeSet::new();
    let mut outcome_of: HashMap<u64, Outcome> = HashMap::new();
    // (index, promised since, complete, set) of ok reads in history order;
    // the final read separately.
    let mut reads: Vec<(usize, Option<u64>, u64, BTreeSet<u64>)> = Vec::new();
    let mut bounds = BoundCounts::default();
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
                let since = promised_since(op.invoke_time, bounds.note(done));
                reads.push((op.index, since, op.complete_time.expect("ok completes"), set));
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
    // Stale reads: a read must hold every element acknowledged before the
    // moment it promised to reflect, and every element a read completed
    // before that moment had seen. An element is due from the earlier of
    // its ack and the first completion of a read holding it; a read is
    // stale when fewer of its elements are due by then than there are due
    // elements. Linear in the reads' sizes (the search over earlier reads
    // it replaces was quadratic).
    let mut due: HashMap<u64, u64> = acked_at.iter().map(|(t, e)| (*e, *t)).collect();
    for (_, _, complete, set) in &reads {
        for e in set {
            due.entry(*e).and_modify(|t| *t = (*t).min(*complete)).or_insert(*complete);
        }
    }
    let mut due_order: Vec<(u64, u64)> = due.iter().map(|(e, t)| (*t, *e)).collect();
    due_order.sort_unstable();
    let mut stale_reads = 0;
    let mut stale_examples = Vec::new();
    for (index, since, _, set) in &reads {
        let Some(since) = *since else { continue };
        let owed = due_order.partition_point(|(t, _)| *t < since);
        let held = set.iter().filter(|e| due.get(e).is_some_and(|t| *t < since)).count();
        if held < owed {
            stale_reads += 1;
            if stale_examples.len() < MAX_LISTED {
                let missing = due_order[..owed].iter().find(|(_, e)| !set.contains(e)).expect("one is missing");
                stale_examples.push((*index, missing.1));
            }
        }
    }
    let bad = !lost.is_empty() || !unexpected.is_empty() || !failed_but_present.is_empty() || stale_reads > 0;
    let verdict = if bad {
        ReportVerdict::Invalid
    } else if final_read.is_none() {
        ReportVerdict::Inconclusive
    } else {
        ReportVerdict::Valid
    };
    let summary = match verdict {
        ReportVerdict::Valid => format!(
            "no anomaly found in {} adds ({} acknowledged, {unknown} unknown, {recovered} of those present) and {} \
             reads ({} kept the staleness bound they reported, {} reported none)",
            attempted.len(),
            acknowledged.len(),
            reads.len(),
            bounds.checked(),
            bounds.unknown
        ),
        ReportVerdict::Inconclusive => "no final read after the heal succeeded: inconclusive, not a pass".into(),
        _ => format!(
            "set anomalies: {} lost, {} unexpected, {} failed adds present, {stale_reads} of {} reads staler than \
             their reported bound",
            lost.len(),
            unexpected.len(),
            failed_but_present.len(),
            bounds.checked()
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
        stale_reads,
        stale_examples,
        bounds_held: bounds.checked() - stale_reads as u64,
        bounds,
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
    /// Reads older than the bound they reported.
    pub stale_reads: usize,
    /// (list, history operation index of the read).
    pub stale_examples: Vec<(String, usize)>,
    /// The reads (final reads included) by level and by what they promised.
    pub bounds: BoundCounts,
    /// Reads that reported a bound and kept it.
    pub bounds_held: u64,
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
    /// ok reads and final reads: (operation, elements as read, the moment
    /// it promised to reflect: see [`promised_since`]).
    reads: Vec<(&'a Operation, Vec<Value>, Option<u64>)>,
    final_read: Option<Vec<Value>>,
}

/// Checks an append history.
pub fn check_append(history: &History) -> AppendResult {
    let mut lists: BTreeMap<&str, ListOps> = BTreeMap::new();
    let mut r = AppendResult::default();
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
                let since = promised_since(op.invoke_time, r.bounds.note(done));
                list.reads.push((op, elements, since));
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
        for (_, elements, _) in &list.reads {
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
        let longest = list.reads.iter().map(|(_, l, _)| l).max_by_key(|l| l.len()).cloned().unwrap_or_default();
        for (op, elements, _) in &list.reads {
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
        // Stale: missing an append acknowledged before the moment the read
        // promised to reflect, or shorter than a read completed before it.
        for (op, elements, since) in &list.reads {
            let Some(since) = *since else { continue };
            let present: BTreeSet<u64> = elements.iter().filter_map(Value::as_u64).collect();
            let missing = acked.iter().any(|(e, done)| *done < since && !present.contains(e));
            let shorter = list.reads.iter().any(|(earlier, seen, _)| {
                earlier.complete_time.is_some_and(|t| t < since) && seen.len() > elements.len()
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
        + r.stale_reads;
    r.bounds_held = r.bounds.checked() - r.stale_reads as u64;
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
             {} reads ({} kept the staleness bound they reported, {} reported none)",
            r.attempted, r.lists, r.acknowledged, r.unknown, r.recovered, r.reads, r.bounds_held, r.bounds.unknown
        ),
        ReportVerdict::Inconclusive => format!(
            "{} lists with acknowledged appends have no final read after the heal: inconclusive, not a pass",
            r.lists_without_final_read
        ),
        _ => format!(
            "append anomalies: {} duplicated, {} failed appends present, {} unexpected, {} divergent reads, {} lost, \
             {} out of order, {} of {} reads staler than their reported bound",
            r.duplicated_count,
            r.failed_but_present_count,
            r.unexpected_count,
            r.divergent_count,
            r.lost_count,
            r.out_of_order_count,
            r.stale_reads,
            r.bounds.checked()
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
    /// The reads by level and by the bound they reported: counted only. A
    /// bank read is checked for a consistent total at some one moment, not
    /// for how recent that moment was.
    pub bounds: BoundCounts,
}

/// Checks a bank history: every ok read conserves `expected_total` over
/// `accounts` accounts, none negative.
pub fn check_bank(history: &History, accounts: usize, expected_total: i64) -> BankResult {
    let mut reads = 0;
    let mut totals = BTreeMap::new();
    let mut anomalies = Vec::new();
    let mut anomaly_count = 0;
    let mut bounds = BoundCounts::default();
    for op in &history.operations {
        if !matches!(op.f.as_str(), "read" | "final-read") || op.outcome != Outcome::Ok {
            continue;
        }
        reads += 1;
        let done = history.completion_of(op).expect("ok completes");
        bounds.note(done);
        let balances = done.value.clone();
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
    BankResult { verdict, summary, expected_total, reads, totals, anomaly_count, anomalies, bounds }
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
            r#"{"process":1,"type":"ok","f":"read","value":[1],"time":6,"staleness_bound_ms":0}"#,
            r#"{"process":2,"type":"invoke","f":"final-read","time":7}"#,
            r#"{"process":2,"type":"ok","f":"final-read","value":[1,9],"time":8,"staleness_bound_ms":0}"#,
        ]);
        let fresh = check_set(&h);
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
        let result = check_set(&history(&sorted));
        assert_eq!(result.verdict, ReportVerdict::Valid, "{result:?}");
        assert_eq!(result.recovered, 1);
        let mut sorted = lines.to_vec();
        sorted.sort_by_key(|l| serde_json::from_str::<Value>(l).unwrap()["time"].as_u64());
        assert_eq!(check_set(&history(&sorted)).verdict, ReportVerdict::Inconclusive);
    }

    /// One append history line: `(process, type, f, value, time)` on list
    /// `l`; an ok read reports a staleness bound of 0 (a linearizable read).
    fn line(process: u64, kind: &str, f: &str, value: &str, time: u64) -> String {
        let bound = if kind == "ok" && f.ends_with("read") { Some(0) } else { None };
        bounded_line(process, kind, f, value, time, bound)
    }

    /// [`line`] with the staleness bound an ok read reports (`None`: none).
    fn bounded_line(process: u64, kind: &str, f: &str, value: &str, time: u64, bound_ms: Option<u64>) -> String {
        let value = if value.is_empty() { String::new() } else { format!(r#","value":{value}"#) };
        let bound = bound_ms.map_or(String::new(), |ms| format!(r#","staleness_bound_ms":{ms}"#));
        format!(r#"{{"process":{process},"type":"{kind}","f":"{f}","key":"l"{value},"time":{time}{bound}}}"#)
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
        let r = check_append(&h);
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
        let r = check_append(&h);
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
        let r = check_append(&h);
        assert_eq!(r.verdict, ReportVerdict::Invalid);
        assert_eq!(r.out_of_order, vec![("l".to_string(), 1, 2)]);
        assert_eq!(r.divergent_count, 1, "{r:?}");
        assert_eq!(r.stale_reads, 2, "{r:?}");
        assert_eq!((r.bounds.fresh, r.bounds_held), (3, 1));
        // No final read: no pass.
        let h = appends(&[line(0, "invoke", "append", "1", 1), line(0, "ok", "append", "1", 2)]);
        assert_eq!(check_append(&h).verdict, ReportVerdict::Inconclusive);
    }

    /// A read is judged by the bound it reported: 100 ms reaches back
    /// before the append it misses, 1 ms does not, and no bound promises
    /// nothing. Set and list alike.
    #[test]
    fn each_read_is_held_to_the_staleness_bound_it_reported() {
        const MS: u64 = 1_000_000;
        let list = |bound_ms: Option<u64>| {
            appends(&[
                line(0, "invoke", "append", "1", MS),
                line(0, "ok", "append", "1", 2 * MS),
                bounded_line(1, "invoke", "read", "", 50 * MS, None),
                bounded_line(1, "ok", "read", "[]", 51 * MS, bound_ms),
                line(2, "invoke", "final-read", "", 60 * MS),
                line(2, "ok", "final-read", "[1]", 61 * MS),
            ])
        };
        let r = check_append(&list(Some(100)));
        assert_eq!((r.verdict, r.stale_reads, r.bounds.bounded, r.bounds_held), (ReportVerdict::Valid, 0, 1, 2));
        let r = check_append(&list(Some(1)));
        assert_eq!((r.verdict, r.stale_reads, r.bounds_held), (ReportVerdict::Invalid, 1, 1), "{r:?}");
        assert!(r.summary.contains("1 of 2 reads staler than their reported bound"), "{}", r.summary);
        let r = check_append(&list(None));
        assert_eq!((r.verdict, r.bounds.unknown, r.bounds_held), (ReportVerdict::Valid, 1, 1));

        let set = |bound: &str| {
            let read = format!(r#"{{"process":1,"type":"ok","f":"read","value":[],"time":{}{bound}}}"#, 51 * MS);
            history(&[
                &format!(r#"{{"process":0,"type":"invoke","f":"add","value":1,"time":{MS}}}"#),
                &format!(r#"{{"process":0,"type":"ok","f":"add","value":1,"time":{}}}"#, 2 * MS),
                &format!(r#"{{"process":1,"type":"invoke","f":"read","time":{}}}"#, 50 * MS),
                &read,
                &format!(r#"{{"process":2,"type":"invoke","f":"final-read","time":{}}}"#, 60 * MS),
                &format!(
                    r#"{{"process":2,"type":"ok","f":"final-read","value":[1],"time":{},"staleness_bound_ms":0}}"#,
                    61 * MS
                ),
            ])
        };
        let r = check_set(&set(r#","consistency":"bounded","staleness_bound_ms":100"#));
        assert_eq!((r.verdict, r.bounds.reads_by_level["bounded"], r.bounds_held), (ReportVerdict::Valid, 1, 2));
        let r = check_set(&set(r#","consistency":"bounded","staleness_bound_ms":1"#));
        assert_eq!((r.verdict, r.stale_reads), (ReportVerdict::Invalid, 1));
        let r = check_set(&set(r#","consistency":"stale""#));
        assert_eq!((r.verdict, r.bounds.unknown), (ReportVerdict::Valid, 1));
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
