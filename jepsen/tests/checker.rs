//! Hand-written histories of known verdict. Each reads like a story: who did
//! what, when, and why the verdict follows.

mod common;

use common::{check, check_with, history};
use geokv_jepsen::checker::{CheckConfig, KeyVerdict, UnknownReason, Verdict};

fn witness_of(result: &geokv_jepsen::CheckResult) -> &geokv_jepsen::checker::Witness {
    match &result.first_invalid().expect("an invalid key").verdict {
        KeyVerdict::Invalid { witness } => witness,
        other => panic!("expected invalid, got {other:?}"),
    }
}

#[test]
fn stale_read_after_a_completed_write_is_invalid() {
    let result = check(
        "p0 invoke write 1 @0
         p0 ok write 1 @10
         p0 invoke write 2 @20
         p0 ok write 2 @30
         # write 2 completed at 30; a read invoked at 40 cannot see 1.
         p1 invoke read @40
         p1 ok read 1 @50",
    );
    assert_eq!(result.verdict, Verdict::Invalid);
    let witness = witness_of(&result);
    assert_eq!(witness.unplaceable.description, "read -> 1");
    assert_eq!(witness.state_after, "2");
    let prefix: Vec<_> = witness.linearized.iter().map(|op| op.description.as_str()).collect();
    assert_eq!(prefix, ["write 1", "write 2"]);
    assert!(witness.concurrent.is_empty(), "nothing overlaps the read");
}

#[test]
fn concurrent_writes_and_a_read_of_either_are_valid() {
    for seen in [1, 2] {
        let result = check(&format!(
            "p0 invoke write 1 @0
             p1 invoke write 2 @5
             p0 ok write 1 @20
             p1 ok write 2 @25
             p2 invoke read @30
             p2 ok read {seen} @40"
        ));
        assert_eq!(result.verdict, Verdict::Valid, "read of {seen}");
    }
    // But not a value nobody wrote, and not nil once a write has completed.
    for seen in ["3", "null"] {
        let result = check(&format!(
            "p0 invoke write 1 @0
             p1 invoke write 2 @5
             p0 ok write 1 @20
             p1 ok write 2 @25
             p2 invoke read @30
             p2 ok read {seen} @40"
        ));
        assert_eq!(result.verdict, Verdict::Invalid, "read of {seen}");
    }
}

#[test]
fn info_write_that_took_effect_later_is_valid() {
    // p0's write timed out at 10; it was committed anyway and seen at 100.
    let result = check(
        "p0 invoke write 1 @0
         p0 info write 1 @10
         p1 invoke read @50
         p1 ok read null @60
         p2 invoke read @100
         p2 ok read 1 @110",
    );
    assert_eq!(result.verdict, Verdict::Valid);
}

#[test]
fn info_write_that_never_took_effect_is_valid() {
    let result = check(
        "p0 invoke write 1 @0
         p0 info write 1 @10
         p1 invoke read @50
         p1 ok read null @60
         p2 invoke read @100
         p2 ok read null @110",
    );
    assert_eq!(result.verdict, Verdict::Valid);
}

#[test]
fn info_write_cannot_take_effect_before_its_invoke() {
    let result = check(
        "p1 invoke read @0
         p1 ok read 1 @5
         p0 invoke write 1 @10
         p0 info write 1 @20",
    );
    assert_eq!(result.verdict, Verdict::Invalid);
}

#[test]
fn info_write_once_seen_cannot_unhappen() {
    // Read 1 then read nil: the unknown write would have to take effect twice.
    let result = check(
        "p0 invoke write 1 @0
         p0 info write 1 @10
         p1 invoke read @20
         p1 ok read 1 @30
         p1 invoke read @40
         p1 ok read null @50",
    );
    assert_eq!(result.verdict, Verdict::Invalid);
}

#[test]
fn touching_intervals_are_concurrent() {
    // The write completes at 10 and the read is invoked at 10: they overlap
    // at that instant, so the read may be ordered first and see nil.
    let touching = "p0 invoke write 1 @0
                    p0 ok write 1 @10
                    p1 invoke read @10
                    p1 ok read null @20";
    assert_eq!(check(touching).verdict, Verdict::Valid);
    // One nanosecond later they are ordered, and the read is stale.
    let ordered = touching.replace("p1 invoke read @10", "p1 invoke read @11");
    assert_eq!(check(&ordered).verdict, Verdict::Invalid);
}

#[test]
fn real_time_order_holds_across_processes() {
    // Different processes, but p1's write completed before p2's began: p2's
    // write is last, and a later read must see it.
    let result = check(
        "p1 invoke write 1 @0
         p1 ok write 1 @10
         p2 invoke write 2 @20
         p2 ok write 2 @30
         p3 invoke read @40
         p3 ok read 1 @50",
    );
    assert_eq!(result.verdict, Verdict::Invalid);
}

#[test]
fn a_failed_write_did_not_happen() {
    let result = check(
        "p0 invoke write 1 @0
         p0 fail write 1 @10
         p1 invoke read @20
         p1 ok read 1 @30",
    );
    assert_eq!(result.verdict, Verdict::Invalid, "a fail write's value cannot be read");
    let result = check(
        "p0 invoke write 1 @0
         p0 fail write 1 @10
         p1 invoke read @20
         p1 ok read null @30",
    );
    assert_eq!(result.verdict, Verdict::Valid);
}

#[test]
fn a_failed_read_constrains_nothing() {
    let result = check(
        "p0 invoke write 1 @0
         p0 ok write 1 @10
         p1 invoke read @20
         p1 fail read 7 @30
         p1 invoke read @40
         p1 ok read 1 @50",
    );
    assert_eq!(result.verdict, Verdict::Valid);
}

#[test]
fn cas_chain_is_valid() {
    let result = check(
        "p0 invoke write 0 @0
         p0 ok write 0 @1
         p1 invoke cas [0,1] @2
         p1 ok cas [0,1] @3
         p2 invoke cas [1,2] @4
         p2 ok cas [1,2] @5
         p0 invoke cas [2,3] @6
         p0 ok cas [2,3] @7
         p1 invoke cas [1,9] @8
         p1 fail cas [1,9] error=cas-mismatch @9
         p2 invoke read @10
         p2 ok read 3 @11",
    );
    assert_eq!(result.verdict, Verdict::Valid);
}

#[test]
fn cas_chain_out_of_order_is_invalid() {
    // cas 1->2 completed before cas 0->1 was invoked: it could not have seen 1.
    let result = check(
        "p0 invoke write 0 @0
         p0 ok write 0 @1
         p2 invoke cas [1,2] @4
         p2 ok cas [1,2] @5
         p1 invoke cas [0,1] @6
         p1 ok cas [0,1] @7",
    );
    assert_eq!(result.verdict, Verdict::Invalid);
    assert_eq!(witness_of(&result).unplaceable.description, "cas 1 -> 2");
}

#[test]
fn lost_cas_race_is_invalid() {
    // Two concurrent CAS from the same state both claim success.
    let race = "p0 invoke write 0 @0
                p0 ok write 0 @1
                p1 invoke cas [0,1] @2
                p2 invoke cas [0,2] @3
                p1 ok cas [0,1] @10
                p2 ok cas [0,2] @11";
    let result = check(race);
    assert_eq!(result.verdict, Verdict::Invalid);
    let witness = witness_of(&result);
    assert_eq!(witness.concurrent.len(), 1, "the other CAS: {witness:?}");
    // The loser reporting its comparison failed is fine.
    let honest = race.replace("p2 ok cas [0,2] @11", "p2 fail cas [0,2] error=cas-mismatch @11");
    assert_eq!(check(&honest).verdict, Verdict::Valid);
}

#[test]
fn cas_mismatch_must_see_another_value() {
    // A CAS that ran and "failed the comparison" while the register surely
    // held the expected value is an anomaly; without the mismatch mark a
    // failed CAS simply did not happen.
    let text = "p0 invoke write 1 @0
                p0 ok write 1 @1
                p1 invoke cas [1,5] @2
                p1 fail cas [1,5] error=cas-mismatch @3";
    assert_eq!(check(text).verdict, Verdict::Invalid);
    assert_eq!(check(&text.replace(" error=cas-mismatch", "")).verdict, Verdict::Valid);
}

#[test]
fn info_cas_may_or_may_not_apply() {
    let base = "p0 invoke write 1 @0
                p0 ok write 1 @1
                p1 invoke cas [1,2] @2
                p1 info cas [1,2] @3
                p2 invoke read @10
                p2 ok read READ @11";
    assert_eq!(check(&base.replace("READ", "2")).verdict, Verdict::Valid);
    assert_eq!(check(&base.replace("READ", "1")).verdict, Verdict::Valid);
    assert_eq!(check(&base.replace("READ", "3")).verdict, Verdict::Invalid);
}

#[test]
fn keys_are_independent_and_early_stop_leaves_others_unknown() {
    let text = "p0 invoke write 1 key=a @0
                p0 ok write 1 key=a @1
                p1 invoke read key=b @2
                p1 ok read 1 key=b @3
                p2 invoke read key=a @4
                p2 ok read 1 key=a @5";
    let result = check(text);
    assert_eq!(result.verdict, Verdict::Invalid);
    let verdicts: Vec<_> = result.keys.iter().map(|k| (k.key.as_str(), k.verdict.verdict())).collect();
    // Key b is invalid (1 was written to a, not b); a is valid unless cancelled.
    assert_eq!(verdicts[1], ("b", Verdict::Invalid));
    assert!(matches!(verdicts[0].1, Verdict::Valid | Verdict::Unknown));
    let all = CheckConfig { stop_on_first_invalid: false, threads: 1, ..CheckConfig::default() };
    let result = check_with(&history(text), &all);
    let verdicts: Vec<_> = result.keys.iter().map(|k| (k.key.as_str(), k.verdict.verdict())).collect();
    assert_eq!(verdicts, [("a", Verdict::Valid), ("b", Verdict::Invalid)]);
}

/// n writes of distinct values, all concurrent, then a read of a value none
/// wrote: the search must try every subset before it can say no.
fn hard_history(writers: u64) -> String {
    let mut text = String::new();
    for p in 0..writers {
        text.push_str(&format!("p{p} invoke write {p} @{p}\n"));
    }
    for p in 0..writers {
        text.push_str(&format!("p{p} ok write {p} @{}\n", 1000 + p));
    }
    text.push_str("p999 invoke read @999\np999 ok read 12345 @5000\n");
    text
}

#[test]
fn time_budget_exceeded_is_unknown_never_valid() {
    let config = CheckConfig { key_time_limit_ms: 1, ..CheckConfig::default() };
    let result = check_with(&history(&hard_history(22)), &config);
    assert_eq!(result.verdict, Verdict::Unknown);
    assert_eq!(result.keys[0].verdict, KeyVerdict::Unknown { why: UnknownReason::TimeLimit { limit_ms: 1 } });
}

#[test]
fn memo_budget_exceeded_is_unknown_never_valid() {
    let config = CheckConfig { key_cache_limit_bytes: 4096, ..CheckConfig::default() };
    let result = check_with(&history(&hard_history(12)), &config);
    assert_eq!(result.verdict, Verdict::Unknown);
    assert!(matches!(result.keys[0].verdict, KeyVerdict::Unknown { why: UnknownReason::CacheLimit { .. } }));
    // With room, the same history is decided.
    assert_eq!(check(&hard_history(12)).verdict, Verdict::Invalid);
}

#[test]
fn empty_history_is_valid_for_the_checker() {
    let result = check("");
    assert_eq!(result.verdict, Verdict::Valid);
    assert!(result.keys.is_empty());
}
