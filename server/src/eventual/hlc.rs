//! Hybrid logical clocks (Kulkarni et al., "Logical Physical Clocks", 2014).
//!
//! A timestamp is `(physical_ms, logical, node)`: the wall clock in ms, a
//! counter that orders events within one millisecond (or while the wall clock
//! lags a timestamp already seen), and the node id as the final tie-break, so
//! no two writes anywhere share a timestamp. The clock never goes backwards,
//! and it moves past every timestamp it receives, so a write stamped after
//! this node saw another write orders after it (causality is kept).
//!
//! A received timestamp further ahead of this node's wall clock than the
//! configured offset bound is refused: accepting it would drag every later
//! write on this node into the future and let one bad clock win every
//! conflict.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// One timestamp. Ordered by physical time, then logical counter, then node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Hlc {
    pub physical_ms: u64,
    pub logical: u32,
    pub node: u64,
}

impl Hlc {
    /// The key encoding: big-endian fields, so byte order is timestamp order.
    pub fn to_be_bytes(self) -> [u8; 20] {
        let mut out = [0u8; 20];
        out[..8].copy_from_slice(&self.physical_ms.to_be_bytes());
        out[8..12].copy_from_slice(&self.logical.to_be_bytes());
        out[12..].copy_from_slice(&self.node.to_be_bytes());
        out
    }

    pub fn from_be_bytes(b: &[u8]) -> Option<Hlc> {
        if b.len() < 20 {
            return None;
        }
        Some(Hlc {
            physical_ms: u64::from_be_bytes(b[..8].try_into().ok()?),
            logical: u32::from_be_bytes(b[8..12].try_into().ok()?),
            node: u64::from_be_bytes(b[12..20].try_into().ok()?),
        })
    }

    pub fn to_proto(self) -> geokv_proto::kv::Hlc {
        geokv_proto::kv::Hlc { physical_ms: self.physical_ms, logical: self.logical, node_id: self.node }
    }
}

impl std::fmt::Display for Hlc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}@{}", self.physical_ms, self.logical, self.node)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("timestamp {remote} is {ahead_ms} ms ahead of this node's clock (bound {bound_ms} ms)")]
pub struct ClockAhead {
    pub remote: Hlc,
    pub ahead_ms: u64,
    pub bound_ms: u64,
}

/// A node's clock. `wall` is injectable for tests.
pub struct Clock {
    node: u64,
    max_offset_ms: u64,
    last: Mutex<(u64, u32)>,
    wall: fn() -> u64,
}

impl Clock {
    /// A clock that starts no earlier than `floor` (the newest timestamp this
    /// node had issued or seen before a restart).
    pub fn new(node: u64, floor: Hlc, max_offset_ms: u64) -> Clock {
        Clock::with_wall(node, floor, max_offset_ms, crate::node::wall_ms)
    }

    fn with_wall(node: u64, floor: Hlc, max_offset_ms: u64, wall: fn() -> u64) -> Clock {
        Clock { node, max_offset_ms, last: Mutex::new((floor.physical_ms, floor.logical)), wall }
    }

    /// A new timestamp for a local event (a write, a message sent), greater
    /// than every timestamp this clock issued or observed.
    pub fn now(&self) -> Hlc {
        let wall = (self.wall)();
        let mut last = self.last.lock().expect("hlc lock");
        *last = if wall > last.0 { (wall, 0) } else { (last.0, last.1 + 1) };
        Hlc { physical_ms: last.0, logical: last.1, node: self.node }
    }

    /// A new timestamp for a local write, refused while this clock runs
    /// further ahead of the wall clock than the offset bound (after the wall
    /// clock stepped back past it: the floor from before a restart, or a
    /// clock set back). Every write's timestamp is then at most the bound
    /// ahead of its node's wall clock, which the staleness bound of eventual
    /// reads counts on.
    pub fn now_for_write(&self) -> Result<Hlc, ClockAhead> {
        let wall = (self.wall)();
        let mut last = self.last.lock().expect("hlc lock");
        if last.0 > wall + self.max_offset_ms {
            let own = Hlc { physical_ms: last.0, logical: last.1, node: self.node };
            return Err(ClockAhead { remote: own, ahead_ms: last.0 - wall, bound_ms: self.max_offset_ms });
        }
        *last = if wall > last.0 { (wall, 0) } else { (last.0, last.1 + 1) };
        Ok(Hlc { physical_ms: last.0, logical: last.1, node: self.node })
    }

    /// The newest timestamp issued or observed, without ticking.
    pub fn peek(&self) -> Hlc {
        let last = self.last.lock().expect("hlc lock");
        Hlc { physical_ms: last.0, logical: last.1, node: self.node }
    }

    /// Moves the clock past a received timestamp, unless that timestamp is
    /// beyond the offset bound.
    pub fn observe(&self, remote: Hlc) -> Result<(), ClockAhead> {
        let wall = (self.wall)();
        if remote.physical_ms > wall + self.max_offset_ms {
            return Err(ClockAhead { remote, ahead_ms: remote.physical_ms - wall, bound_ms: self.max_offset_ms });
        }
        let mut last = self.last.lock().expect("hlc lock");
        if (remote.physical_ms, remote.logical) > *last {
            *last = (remote.physical_ms, remote.logical);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frozen() -> u64 {
        1_000
    }

    #[test]
    fn ticks_within_one_millisecond_and_never_goes_back() {
        let c = Clock::with_wall(1, Hlc::default(), 50, frozen);
        let a = c.now();
        let b = c.now();
        assert_eq!((a.physical_ms, a.logical), (1_000, 0));
        assert!(b > a && b.logical == 1);
        // A floor ahead of the wall clock (restart after a clock step back).
        let c = Clock::with_wall(1, Hlc { physical_ms: 2_000, logical: 7, node: 1 }, 50, frozen);
        assert_eq!(c.now(), Hlc { physical_ms: 2_000, logical: 8, node: 1 });
    }

    #[test]
    fn a_write_is_refused_while_the_clock_runs_beyond_the_bound_ahead_of_the_wall() {
        // Within the bound ahead (a timestamp observed from a faster peer): fine.
        let c = Clock::with_wall(1, Hlc { physical_ms: 1_050, logical: 0, node: 2 }, 50, frozen);
        assert_eq!(c.now_for_write().unwrap(), Hlc { physical_ms: 1_050, logical: 1, node: 1 });
        // A floor 1 s ahead of the wall clock (it was set back): refused, not stamped.
        let c = Clock::with_wall(1, Hlc { physical_ms: 2_000, logical: 7, node: 1 }, 50, frozen);
        let err = c.now_for_write().unwrap_err();
        assert_eq!((err.ahead_ms, err.bound_ms), (1_000, 50));
        assert_eq!(c.peek(), Hlc { physical_ms: 2_000, logical: 7, node: 1 }, "nothing was issued");
    }

    #[test]
    fn observing_moves_past_the_remote_timestamp() {
        let c = Clock::with_wall(1, Hlc::default(), 50, frozen);
        let remote = Hlc { physical_ms: 1_040, logical: 3, node: 2 };
        c.observe(remote).unwrap();
        let next = c.now();
        assert!(next > remote, "{next} must order after {remote}");
        assert_eq!(next.node, 1);
    }

    #[test]
    fn refuses_timestamps_beyond_the_offset_bound() {
        let c = Clock::with_wall(1, Hlc::default(), 50, frozen);
        let err = c.observe(Hlc { physical_ms: 1_051, logical: 0, node: 2 }).unwrap_err();
        assert_eq!(err.ahead_ms, 51);
        assert_eq!(c.peek().physical_ms, 0, "a refused timestamp does not move the clock");
    }

    #[test]
    fn byte_order_is_timestamp_order() {
        let a = Hlc { physical_ms: 5, logical: u32::MAX, node: 9 };
        let b = Hlc { physical_ms: 6, logical: 0, node: 1 };
        assert!(a < b && a.to_be_bytes() < b.to_be_bytes());
        assert_eq!(Hlc::from_be_bytes(&a.to_be_bytes()), Some(a));
    }
}
