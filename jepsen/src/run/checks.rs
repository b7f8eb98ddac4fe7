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

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use serde_json::Value;

use crate::history::{History, Outcome};
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
