//! Checking reads that promise bounded staleness.
//!
//! A read served at a bounded consistency level reports an upper bound δ on
//! its staleness (`staleness_bound_ms`): the value it returned was current at
//! some moment no earlier than δ before the read was invoked. Such a read is
//! correct when the history stays linearizable after its invoke time is moved
//! back by δ — its interval then covers every moment whose value it may
//! legitimately return. [`relax_bounded_staleness`] does exactly that, and the
//! ordinary checker does the rest. A read that returns something older than
//! its bound still fails; a linearizable read (δ = 0) is unchanged; a read
//! whose bound is unknown promises nothing and is left out of the check.
//!
//! The same relaxation checks *every* read by what it promised, whatever
//! level it asked for: `run` does that for each register run (the
//! `staleness_bounds` checker), and the set and append checkers judge each
//! read by [`promised_since`], so every run also tells whether the bounds
//! geokv reported were true.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::history::{Clock, Event, History, Outcome};

/// Nanoseconds per millisecond.
const NANOS_PER_MS: u64 = 1_000_000;

/// The `ok` reads of a history, by what they promised.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BoundCounts {
    /// Reads per level they were served at (the completion's
    /// `consistency`; `unreported` when it has none).
    pub reads_by_level: BTreeMap<String, u64>,
    /// Reads that reported a bound of 0: checked as they are.
    pub fresh: u64,
    /// Reads that reported a positive bound: checked invoked that much earlier.
    pub bounded: u64,
    /// Reads that reported no bound: they promise nothing and are not checked.
    pub unknown: u64,
}

impl BoundCounts {
    /// Counts one `ok` read by its completion `event`, and returns the bound
    /// it reported in ms (`Some(0)`: fresh; `None`: it promised nothing).
    pub fn note(&mut self, event: &Event) -> Option<u64> {
        let level = event.consistency.clone().unwrap_or_else(|| "unreported".into());
        *self.reads_by_level.entry(level).or_default() += 1;
        match event.staleness_bound_ms {
            None => self.unknown += 1,
            Some(0) => self.fresh += 1,
            Some(_) => self.bounded += 1,
        }
        event.staleness_bound_ms
    }

    /// Reads checked by a bound they reported (fresh or bounded).
    pub fn checked(&self) -> u64 {
        self.fresh + self.bounded
    }
}

/// The earliest time (in the history's nanoseconds) an `ok` read at
/// `invoke_time` whose completion reported `bound_ms` may reflect: its
/// invoke moved back by the bound. `None` for a bound of `None`: the read
/// promised nothing.
pub fn promised_since(invoke_time: u64, bound_ms: Option<u64>) -> Option<u64> {
    bound_ms.map(|ms| invoke_time.saturating_sub(ms.saturating_mul(NANOS_PER_MS)))
}

/// A copy of `history` in which every `ok` read whose completion reports
/// `staleness_bound_ms = δ > 0` is invoked δ earlier (the events keep their
/// original times; only the operations the checker uses move), and every
/// `ok` read that reports no bound is dropped (as a failed read is: it
/// promised nothing); with the counts of each.
///
/// Refuses histories without a nanosecond clock that carry bounds: an event
/// index cannot be moved back by milliseconds.
pub fn relax_bounded_staleness(history: &History) -> Result<(History, BoundCounts)> {
    let mut relaxed = history.clone();
    let mut counts = BoundCounts::default();
    for op in &mut relaxed.operations {
        if op.f != "read" || op.outcome != Outcome::Ok {
            continue;
        }
        let completion = op.completion.expect("an ok operation has a completion");
        let Some(bound_ms) = counts.note(&history.events[completion]) else {
            op.outcome = Outcome::Fail;
            continue;
        };
        if bound_ms == 0 {
            continue;
        }
        if history.clock != Clock::Nanoseconds {
            return Err(Error::Model {
                line: history.lines[completion],
                message: "staleness bounds need a history with a nanosecond clock".into(),
            });
        }
        op.invoke_time = promised_since(op.invoke_time, Some(bound_ms)).expect("a bound");
    }
    Ok((relaxed, counts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::{CheckConfig, Verdict, check_keys};
    use crate::history::read_jsonl;
    use crate::register::register_operations;

    fn verdict(history: &History) -> Verdict {
        let ops = register_operations(history).unwrap();
        check_keys(&ops.model, ops.keys, &CheckConfig::default()).verdict
    }

    /// write 1 completes at 10 ms, write 2 at 20-30 ms; a bounded read
    /// invoked at 100 ms returns 1 (stale by 70-90 ms).
    fn history(bound_ms: u64) -> History {
        read_jsonl(&history_text(Some(bound_ms))).unwrap()
    }

    /// The same history; with `None` the read is a stale one reporting no bound.
    fn history_text(bound_ms: Option<u64>) -> String {
        let (level, bound) = match bound_ms {
            Some(ms) => ("bounded", format!(",\"staleness_bound_ms\":{ms}")),
            None => ("stale", String::new()),
        };
        format!(
            "{{\"process\":0,\"type\":\"invoke\",\"f\":\"write\",\"value\":1,\"time\":0}}\n\
             {{\"process\":0,\"type\":\"ok\",\"f\":\"write\",\"value\":1,\"time\":10000000}}\n\
             {{\"process\":0,\"type\":\"invoke\",\"f\":\"write\",\"value\":2,\"time\":20000000}}\n\
             {{\"process\":0,\"type\":\"ok\",\"f\":\"write\",\"value\":2,\"time\":30000000}}\n\
             {{\"process\":1,\"type\":\"invoke\",\"f\":\"read\",\"time\":100000000}}\n\
             {{\"process\":1,\"type\":\"ok\",\"f\":\"read\",\"value\":1,\"time\":101000000,\
               \"consistency\":\"{level}\"{bound}}}\n"
        )
    }

    #[test]
    fn a_read_within_its_bound_passes_once_relaxed() {
        let strict = history(100);
        assert_eq!(verdict(&strict), Verdict::Invalid, "stale for plain linearizability");
        let (relaxed, counts) = relax_bounded_staleness(&strict).unwrap();
        assert_eq!((counts.fresh, counts.bounded, counts.unknown), (0, 1, 0));
        assert_eq!(counts.reads_by_level["bounded"], 1);
        assert_eq!(relaxed.operations[2].invoke_time, 0);
        assert_eq!(relaxed.events[4].time, 100_000_000, "events keep their times");
        assert_eq!(verdict(&relaxed), Verdict::Valid);
    }

    #[test]
    fn a_read_staler_than_its_bound_fails() {
        // Moved back 50 ms the read starts at 50 ms: write 2 had completed.
        let (relaxed, _) = relax_bounded_staleness(&history(50)).unwrap();
        assert_eq!(verdict(&relaxed), Verdict::Invalid);
        // 70 ms reaches back to 30 ms, touching write 2's completion: concurrent, so 1 is allowed.
        let (relaxed, _) = relax_bounded_staleness(&history(70)).unwrap();
        assert_eq!(verdict(&relaxed), Verdict::Valid);
    }

    /// A read that reports no bound promised nothing: it is not checked
    /// (before, it was checked as if its bound were 0). One that claims 0 is
    /// checked strictly.
    #[test]
    fn an_unknown_bound_promises_nothing_and_a_zero_bound_everything() {
        let unknown = read_jsonl(&history_text(None)).unwrap();
        assert_eq!(verdict(&unknown), Verdict::Invalid, "stale for plain linearizability");
        let (relaxed, counts) = relax_bounded_staleness(&unknown).unwrap();
        assert_eq!((counts.fresh, counts.bounded, counts.unknown), (0, 0, 1));
        assert_eq!(counts.reads_by_level["stale"], 1);
        assert_eq!(verdict(&relaxed), Verdict::Valid);
        let (relaxed, counts) = relax_bounded_staleness(&history(0)).unwrap();
        assert_eq!((counts.fresh, counts.bounded, counts.unknown), (1, 0, 0));
        assert_eq!(verdict(&relaxed), Verdict::Invalid, "a fresh read that was stale is caught");
    }
}
