//! Checking reads that promise bounded staleness.
//!
//! A read served at a bounded consistency level reports an upper bound δ on
//! its staleness (`staleness_bound_ms`): the value it returned was current at
//! some moment no earlier than δ before the read was invoked. Such a read is
//! correct when the history stays linearizable after its invoke time is moved
//! back by δ — its interval then covers every moment whose value it may
//! legitimately return. [`relax_bounded_staleness`] does exactly that, and the
//! ordinary checker does the rest. A read that returns something older than
//! its bound still fails; a linearizable read (δ = 0) is unchanged.

use crate::error::{Error, Result};
use crate::history::{Clock, History, Outcome};

/// Nanoseconds per millisecond.
const NANOS_PER_MS: u64 = 1_000_000;

/// A copy of `history` in which every `ok` read whose completion reports
/// `staleness_bound_ms = δ > 0` is invoked δ earlier (the events keep their
/// original times; only the operations the checker uses move).
///
/// Refuses histories without a nanosecond clock that carry bounds: an event
/// index cannot be moved back by milliseconds.
pub fn relax_bounded_staleness(history: &History) -> Result<History> {
    let mut relaxed = history.clone();
    for op in &mut relaxed.operations {
        if op.f != "read" || op.outcome != Outcome::Ok {
            continue;
        }
        let completion = op.completion.expect("an ok operation has a completion");
        let Some(bound_ms) = history.events[completion].staleness_bound_ms else { continue };
        if bound_ms == 0 {
            continue;
        }
        if history.clock != Clock::Nanoseconds {
            return Err(Error::Model {
                line: history.lines[completion],
                message: "staleness bounds need a history with a nanosecond clock".into(),
            });
        }
        op.invoke_time = op.invoke_time.saturating_sub(bound_ms.saturating_mul(NANOS_PER_MS));
    }
    Ok(relaxed)
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
        let text = format!(
            "{{\"process\":0,\"type\":\"invoke\",\"f\":\"write\",\"value\":1,\"time\":0}}\n\
             {{\"process\":0,\"type\":\"ok\",\"f\":\"write\",\"value\":1,\"time\":10000000}}\n\
             {{\"process\":0,\"type\":\"invoke\",\"f\":\"write\",\"value\":2,\"time\":20000000}}\n\
             {{\"process\":0,\"type\":\"ok\",\"f\":\"write\",\"value\":2,\"time\":30000000}}\n\
             {{\"process\":1,\"type\":\"invoke\",\"f\":\"read\",\"time\":100000000}}\n\
             {{\"process\":1,\"type\":\"ok\",\"f\":\"read\",\"value\":1,\"time\":101000000,\
               \"consistency\":\"bounded\",\"staleness_bound_ms\":{bound_ms}}}\n"
        );
        read_jsonl(&text).unwrap()
    }

    #[test]
    fn a_read_within_its_bound_passes_once_relaxed() {
        let strict = history(100);
        assert_eq!(verdict(&strict), Verdict::Invalid, "stale for plain linearizability");
        let relaxed = relax_bounded_staleness(&strict).unwrap();
        assert_eq!(relaxed.operations[2].invoke_time, 0);
        assert_eq!(relaxed.events[4].time, 100_000_000, "events keep their times");
        assert_eq!(verdict(&relaxed), Verdict::Valid);
    }

    #[test]
    fn a_read_staler_than_its_bound_fails() {
        // Moved back 50 ms the read starts at 50 ms: write 2 had completed.
        let relaxed = relax_bounded_staleness(&history(50)).unwrap();
        assert_eq!(verdict(&relaxed), Verdict::Invalid);
        // 70 ms reaches back to 30 ms, touching write 2's completion: concurrent, so 1 is allowed.
        let relaxed = relax_bounded_staleness(&history(70)).unwrap();
        assert_eq!(verdict(&relaxed), Verdict::Valid);
    }
}
