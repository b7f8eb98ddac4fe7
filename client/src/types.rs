//! The values callers send and get back, as plain Rust types.
//!
//! These mirror the wire messages of `kv.proto` but say things the wire
//! cannot: absence is an `Option`, expectations are an enum, and an unknown
//! staleness bound is `None` rather than `u64::MAX`.

use std::fmt;
use std::str::FromStr;

use geokv_proto::kv as pb;
use serde::Serialize;

/// How fresh a read must be. See `docs/consistency.md` for what each level
/// costs and where it is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Consistency {
    /// ReadIndex at the leader: a quorum confirms leadership first.
    #[default]
    Linearizable,
    /// Served by the leader from its lease, falling back to ReadIndex.
    Lease,
    /// Linearizable, served by the nearest replica after one round trip to
    /// the leader for its read index.
    Follower,
    /// Served by the nearest replica if it can prove it is at most this
    /// stale; otherwise it falls back to `Follower` and says so. In a
    /// response's `served`, the bound is not repeated (0).
    Bounded { max_staleness_ms: u64 },
    /// Whatever one replica has applied, with a reported staleness bound.
    Stale,
}

impl Consistency {
    /// The levels without parameters, strongest first (`Bounded` is parsed
    /// from `bounded:<N>ms`).
    pub const ALL: [Consistency; 4] =
        [Consistency::Linearizable, Consistency::Lease, Consistency::Follower, Consistency::Stale];

    /// The lowercase name used by `kvctl` and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::Linearizable => "linearizable",
            Consistency::Lease => "lease",
            Consistency::Follower => "follower",
            Consistency::Bounded { .. } => "bounded",
            Consistency::Stale => "stale",
        }
    }

    /// Whether requests at this level must be served by the shard leader.
    /// The others go to the nearest replica.
    pub fn needs_leader(self) -> bool {
        matches!(self, Consistency::Linearizable | Consistency::Lease)
    }

    /// The staleness bound sent with the request (0 unless `Bounded`).
    pub fn max_staleness_ms(self) -> u64 {
        match self {
            Consistency::Bounded { max_staleness_ms } => max_staleness_ms,
            _ => 0,
        }
    }

    pub(crate) fn to_proto(self) -> i32 {
        match self {
            Consistency::Linearizable => pb::Consistency::Linearizable as i32,
            Consistency::Lease => pb::Consistency::Lease as i32,
            Consistency::Follower => pb::Consistency::Follower as i32,
            Consistency::Bounded { .. } => pb::Consistency::Bounded as i32,
            Consistency::Stale => pb::Consistency::Stale as i32,
        }
    }

    pub(crate) fn from_proto(value: i32) -> Option<Consistency> {
        match pb::Consistency::try_from(value).ok()? {
            pb::Consistency::Linearizable => Some(Consistency::Linearizable),
            pb::Consistency::Lease => Some(Consistency::Lease),
            pb::Consistency::Follower => Some(Consistency::Follower),
            pb::Consistency::Bounded => Some(Consistency::Bounded { max_staleness_ms: 0 }),
            pb::Consistency::Stale => Some(Consistency::Stale),
        }
    }
}

impl Serialize for Consistency {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl fmt::Display for Consistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Consistency::Bounded { max_staleness_ms } if *max_staleness_ms > 0 => {
                write!(f, "bounded:{max_staleness_ms}ms")
            }
            other => f.write_str(other.as_str()),
        }
    }
}

impl FromStr for Consistency {
    type Err = String;

    /// `linearizable`, `lease`, `follower`, `stale`, or `bounded:<N>ms`
    /// (also `bounded:<N>`, in ms).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let help = "use linearizable, lease, follower, bounded:<N>ms or stale";
        if let Some(bound) = s.strip_prefix("bounded:").or_else(|| s.strip_prefix("BOUNDED:")) {
            let digits = bound.strip_suffix("ms").unwrap_or(bound);
            return match digits.parse::<u64>() {
                Ok(ms) if ms > 0 => Ok(Consistency::Bounded { max_staleness_ms: ms }),
                _ => Err(format!("bad staleness bound {bound:?}: give a positive number of ms, e.g. bounded:250ms")),
            };
        }
        if s.eq_ignore_ascii_case("bounded") {
            return Err(format!("bounded needs a bound, e.g. bounded:250ms; {help}"));
        }
        Consistency::ALL
            .into_iter()
            .find(|level| level.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown consistency {s:?}: {help}"))
    }
}

/// A value and the version that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: Vec<u8>,
    /// The log index of the write that produced this value (always > 0).
    pub version: u64,
}

/// A key with its value and version, as returned by scans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// The log index of the write that produced this value.
    pub version: u64,
}

impl From<pb::KeyValue> for KeyValue {
    fn from(kv: pb::KeyValue) -> Self {
        KeyValue { key: kv.key, value: kv.value, version: kv.version }
    }
}

impl From<pb::KeyValue> for Versioned {
    fn from(kv: pb::KeyValue) -> Self {
        Versioned { value: kv.value, version: kv.version }
    }
}

/// What a read actually got: the level served and by whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadInfo {
    /// The level the server actually used (may be stronger than requested).
    pub served: Consistency,
    pub node_id: u64,
    pub region: String,
    /// The serving replica's applied log index.
    pub applied_index: u64,
    /// Upper bound on staleness in ms (0 for linearizable); `None` when the
    /// server could not bound it.
    pub staleness_bound_ms: Option<u64>,
    /// True when the requested level was upgraded (e.g. a lease read fell
    /// back to ReadIndex).
    pub fell_back: bool,
}

impl ReadInfo {
    pub(crate) fn from_proto(info: Option<pb::ReadInfo>) -> Result<ReadInfo, String> {
        let info = info.ok_or("read response without read info")?;
        let served = Consistency::from_proto(info.served)
            .ok_or_else(|| format!("unknown served consistency {}", info.served))?;
        Ok(ReadInfo {
            served,
            node_id: info.node_id,
            region: info.region,
            applied_index: info.applied_index,
            staleness_bound_ms: (info.staleness_bound_ms != u64::MAX).then_some(info.staleness_bound_ms),
            fell_back: info.fell_back,
        })
    }
}

/// The result of a read at an explicit consistency level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult {
    /// `None` when the key does not exist.
    pub kv: Option<Versioned>,
    pub info: ReadInfo,
}

/// The result of a put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteResult {
    /// The log index at which the write was applied: the key's new version.
    pub version: u64,
    pub shard_id: u64,
}

/// The result of a delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeleteResult {
    /// The log index at which the delete was applied.
    pub version: u64,
    /// Whether the key existed before the delete.
    pub existed: bool,
    pub shard_id: u64,
}

/// What a compare-and-swap or a batch condition expects of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// The key must exist with exactly this value.
    Value(Vec<u8>),
    /// The key must exist with exactly this version.
    Version(u64),
    /// The key must not exist.
    Absent,
}

impl Expect {
    pub(crate) fn to_proto(&self) -> pb::Expectation {
        use pb::expectation::Expect as E;
        let expect = match self {
            Expect::Value(value) => E::Value(value.clone()),
            Expect::Version(version) => E::Version(*version),
            Expect::Absent => E::Absent(true),
        };
        pb::Expectation { expect: Some(expect) }
    }
}

/// The result of a compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CasResult {
    /// Whether the expectation held and the new value was written.
    pub swapped: bool,
    /// When swapped: the new version (0 when the swap deleted the key).
    /// When not swapped: the current version (0 when the key is absent).
    pub version: u64,
    /// When not swapped: the key's current value, `None` if it is absent.
    /// Always `None` when swapped.
    pub current: Option<Versioned>,
    pub shard_id: u64,
}

/// The current state of one conditioned key, reported by a batch whose
/// conditions did not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyState {
    pub key: Vec<u8>,
    /// `None` when the key does not exist.
    pub current: Option<Versioned>,
}

/// The result of an atomic batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchResult {
    /// False when a condition did not hold; then nothing was written.
    pub applied: bool,
    /// The log index at which the batch was applied (when applied).
    pub version: u64,
    /// When not applied: every conditioned key's state, in request order.
    pub current: Vec<KeyState>,
    pub shard_id: u64,
}

impl KeyState {
    /// Converts a batch response entry. The wire cannot say "absent" inside a
    /// `KeyValue`, so version 0 (never a real version) means absent.
    pub(crate) fn from_proto(kv: pb::KeyValue) -> KeyState {
        let current = (kv.version != 0).then_some(Versioned { value: kv.value, version: kv.version });
        KeyState { key: kv.key, current }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consistency_round_trips() {
        for level in Consistency::ALL {
            assert_eq!(level.as_str().parse::<Consistency>(), Ok(level));
            assert_eq!(Consistency::from_proto(level.to_proto()), Some(level));
        }
        assert_eq!("LEASE".parse::<Consistency>(), Ok(Consistency::Lease));
        assert!("strong".parse::<Consistency>().is_err());
        assert!(Consistency::Linearizable.needs_leader());
        assert!(!Consistency::Stale.needs_leader());
    }

    #[test]
    fn unknown_staleness_is_none() {
        let info =
            pb::ReadInfo { served: pb::Consistency::Stale as i32, staleness_bound_ms: u64::MAX, ..Default::default() };
        let info = ReadInfo::from_proto(Some(info)).unwrap();
        assert_eq!(info.staleness_bound_ms, None);
        assert!(ReadInfo::from_proto(None).is_err());
    }

    #[test]
    fn batch_key_state_version_zero_is_absent() {
        let absent = KeyState::from_proto(pb::KeyValue { key: b"k".to_vec(), value: vec![], version: 0 });
        assert_eq!(absent.current, None);
        let present = KeyState::from_proto(pb::KeyValue { key: b"k".to_vec(), value: b"v".to_vec(), version: 4 });
        assert_eq!(present.current, Some(Versioned { value: b"v".to_vec(), version: 4 }));
    }
}
