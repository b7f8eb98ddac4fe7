//! Exactly-once bookkeeping: the `(client_id, sequence, first_incomplete)`
//! triple every write carries (Raft thesis §6.3).
//!
//! Each logical write takes the next sequence number once and keeps it for
//! all of its retries, so the server's session table can recognise a retry
//! and answer it with the first attempt's result instead of applying it
//! again. `first_incomplete` tells the server which results it may forget: the
//! lowest sequence this client still waits for. A [`Client`](crate::Client)
//! is shared by many tasks, so several writes can be in flight at once; the
//! tracker keeps them in a sorted set.

use std::collections::BTreeSet;

/// Sequence numbers handed out and still in flight.
///
/// Invariants:
/// - every sequence in `in_flight` is `< next`;
/// - `first_incomplete()` never decreases.
#[derive(Debug)]
pub(crate) struct SessionTracker {
    next: u64,
    in_flight: BTreeSet<u64>,
    /// The last value returned by `first_incomplete()`, to check monotonicity.
    last_first_incomplete: u64,
}

impl SessionTracker {
    pub(crate) fn new() -> SessionTracker {
        SessionTracker { next: 1, in_flight: BTreeSet::new(), last_first_incomplete: 1 }
    }

    /// Takes the next sequence number and marks it in flight.
    pub(crate) fn begin(&mut self) -> u64 {
        let sequence = self.next;
        self.next += 1;
        let inserted = self.in_flight.insert(sequence);
        assert!(inserted, "sequence {sequence} handed out twice");
        sequence
    }

    /// Marks a write finished, whatever its outcome.
    pub(crate) fn finish(&mut self, sequence: u64) {
        let removed = self.in_flight.remove(&sequence);
        assert!(removed, "sequence {sequence} finished but was not in flight");
    }

    /// The lowest sequence still in flight, or the next one to be handed out
    /// when none is.
    pub(crate) fn first_incomplete(&mut self) -> u64 {
        let first = self.in_flight.first().copied().unwrap_or(self.next);
        assert!(
            first >= self.last_first_incomplete,
            "first_incomplete went backwards: {first} < {}",
            self.last_first_incomplete
        );
        self.last_first_incomplete = first;
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_incomplete_is_the_oldest_write_in_flight() {
        let mut tracker = SessionTracker::new();
        assert_eq!(tracker.first_incomplete(), 1);
        let a = tracker.begin();
        let b = tracker.begin();
        let c = tracker.begin();
        assert_eq!((a, b, c), (1, 2, 3));
        assert_eq!(tracker.first_incomplete(), 1);
        // A younger write finishing does not let the server forget the oldest.
        tracker.finish(b);
        assert_eq!(tracker.first_incomplete(), 1);
        tracker.finish(a);
        assert_eq!(tracker.first_incomplete(), 3);
        tracker.finish(c);
        assert_eq!(tracker.first_incomplete(), 4);
        let d = tracker.begin();
        assert_eq!(d, 4);
        assert_eq!(tracker.first_incomplete(), 4);
    }

    #[test]
    #[should_panic(expected = "not in flight")]
    fn finishing_twice_is_a_bug() {
        let mut tracker = SessionTracker::new();
        let a = tracker.begin();
        tracker.finish(a);
        tracker.finish(a);
    }
}
