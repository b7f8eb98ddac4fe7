//! The time a leader writes into a write entry (`proposed_at_ms`), which
//! session collection reads as the log's clock.
//!
//! Session GC must be a function of the log, so it uses the times the
//! entries carry, not each replica's clock. Taken straight from the
//! leader's wall clock, one leader whose clock ran an hour ahead would
//! collect every session idle for less than the TTL. So a leader's wall
//! clock is held within what the log has already said plus the time that
//! has really passed since (monotonic): `anchor ≤ time ≤ anchor + elapsed +
//! min(elapsed, max_clock_offset_ms)`, where the anchor is the newest entry
//! time this node has applied for the shard, and when it applied it. A
//! clock behind holds the log's clock where the log was (collection comes
//! later, which is safe). A clock ahead moves it at most twice as fast as
//! real time while entries come quickly (each round gains at most its own
//! length again), and by at most the offset bound past real time after a
//! pause. So the log's clock never runs more than twice as fast as real
//! time: a session is collected no sooner than half its TTL of real time
//! after its last write, and its marker lives at least as long again, so
//! every resend a client makes (within `MAX_WRITE_RETRY_WINDOW`, 30 s, of
//! a TTL of at least 60 s) finds the session or its marker. The replicated
//! entry is what every replica applies, so GC stays deterministic.
//!
//! Every applied write entry anchors, replays after a restart included, and
//! a replica that opens its log, or installs a snapshot, anchors on the last
//! session collection's time it holds: a node that leads a shard right
//! after it started, before any new write, is held to the log's time too
//! (its clock is not trusted on its own). That holds the log's clock back
//! by the downtime until it catches up (at most twice real time), which
//! only makes sessions live longer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Per shard: the newest entry time applied here, and when.
pub struct LogClock {
    max_offset_ms: u64,
    anchors: Mutex<HashMap<u64, (u64, Instant)>>,
}

/// The entry time for a leader reading `wall_ms`, given the log's newest
/// time `anchor_ms`, applied `elapsed_ms` ago: at most `elapsed_ms` plus as
/// much again (up to `max_offset_ms`) past the anchor.
pub fn entry_time_ms(wall_ms: u64, anchor_ms: u64, elapsed_ms: u64, max_offset_ms: u64) -> u64 {
    let ahead_ms = elapsed_ms.min(max_offset_ms);
    wall_ms.clamp(anchor_ms, anchor_ms.saturating_add(elapsed_ms).saturating_add(ahead_ms))
}

impl LogClock {
    pub fn new(max_offset_ms: u64) -> LogClock {
        LogClock { max_offset_ms, anchors: Mutex::default() }
    }

    /// The time to put into a write entry of `shard` proposed now, when
    /// this node's wall clock reads `wall_ms`. With no anchor (a shard whose
    /// log holds no write and no session collection yet), the wall clock.
    pub fn entry_time_ms(&self, shard: u64, wall_ms: u64) -> u64 {
        match self.anchors.lock().expect("log clock").get(&shard) {
            Some(&(anchor, at)) => entry_time_ms(wall_ms, anchor, at.elapsed().as_millis() as u64, self.max_offset_ms),
            None => wall_ms,
        }
    }

    /// Notes that `shard` applied an entry carrying `entry_ms` just now.
    /// Older times never move the anchor back.
    pub fn applied(&self, shard: u64, entry_ms: u64) {
        let mut anchors = self.anchors.lock().expect("log clock");
        match anchors.get(&shard) {
            Some(&(anchor, _)) if anchor >= entry_ms => {}
            _ => {
                anchors.insert(shard, (entry_ms, Instant::now()));
            }
        }
    }

    /// Forgets `shard` (its replica left this node).
    pub fn forget(&self, shard: u64) {
        self.anchors.lock().expect("log clock").remove(&shard);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_clock_far_ahead_moves_the_log_clock_by_elapsed_time_plus_the_bound() {
        // The log said 1_000_000; 2 s passed; this leader's clock is an hour ahead.
        let hour = 3_600_000;
        assert_eq!(entry_time_ms(1_000_000 + hour, 1_000_000, 2_000, 50), 1_002_050);
        // Within the bound it is the leader's clock.
        assert_eq!(entry_time_ms(1_002_010, 1_000_000, 2_000, 50), 1_002_010);
        // Behind the log: the log's time (never backwards).
        assert_eq!(entry_time_ms(900_000, 1_000_000, 2_000, 50), 1_000_000);
    }

    #[test]
    fn an_hour_ahead_cannot_collect_a_session_idle_for_a_minute() {
        // A session last active at t=0 of the log, TTL 60 s. A leader an
        // hour ahead proposes every 100 ms for 10 s of real time, each
        // entry applied (re-anchoring) before the next is proposed.
        let clock = LogClock::new(50);
        clock.applied(7, 0);
        let hour = 3_600_000;
        let mut latest = 0;
        for step in 1..=100u64 {
            // Real time passes: pretend by moving the anchor's instant back.
            let anchor = {
                let mut anchors = clock.anchors.lock().unwrap();
                let (t, at) = anchors[&7];
                let at = at - std::time::Duration::from_millis(100);
                anchors.insert(7, (t, at));
                t
            };
            latest = clock.entry_time_ms(7, step * 100 + hour);
            assert!(latest >= anchor);
            clock.applied(7, latest);
        }
        // 10 s real, at most 50 ms gained per round: far below the TTL.
        assert!(latest <= 10_000 + 100 * 50 + 100, "{latest}");
        assert!(latest < 60_000);
        // Entries every millisecond from a leader an hour ahead: the log's
        // clock runs at most twice as fast as real time.
        clock.applied(9, 0);
        let mut latest = 0;
        for step in 1..=1_000u64 {
            let anchor = {
                let mut anchors = clock.anchors.lock().unwrap();
                let (t, at) = anchors[&9];
                anchors.insert(9, (t, at - std::time::Duration::from_millis(1)));
                t
            };
            latest = clock.entry_time_ms(9, step + hour);
            assert!(latest >= anchor);
            clock.applied(9, latest);
        }
        assert!(latest <= 2 * 1_000 + 2, "1 s of 1 ms rounds moved the log's clock {latest} ms");
        // Without an anchor the wall clock is all there is.
        assert_eq!(clock.entry_time_ms(8, 123), 123);
        clock.forget(7);
        assert_eq!(clock.entry_time_ms(7, 5), 5);
    }
}
