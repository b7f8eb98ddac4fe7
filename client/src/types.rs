//! The values callers send and get back, as plain Rust types.
//!
//! These mirror the wire messages of `kv.proto` but say things the wire
//! cannot: absence is an `Option`, expectations are an enum, and an unknown
//! staleness bound is `None` rather than `u64::MAX`.
//!
//! # Eventual shards
//!
//! Keys of an eventual shard (see [`ShardMode::Eventual`]) carry no log
//! version (it is 0): they carry the [`Hlc`] timestamp of the write that
//! produced them and the replica that accepted it (`origin`). Reads of them
//! are always served [`Served::Eventual`], whatever level was requested.

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
    /// (also `bounded:<N>`, in ms). `eventual` is refused with an
    /// explanation: it is a level reads are *served* at, never one to ask for.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let help = "use linearizable, lease, follower, bounded:<N>ms or stale";
        if s.eq_ignore_ascii_case("eventual") {
            return Err(format!(
                "eventual is not a level to request: keys of eventual shards are always served eventual \
                 (one replica's local state) whatever level is asked for, and keys of Raft shards cannot \
                 be read that way; for the cheapest read of any key ask for stale ({help})"
            ));
        }
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

/// The level a read was actually served at: one of the requestable levels,
/// or [`Served::Eventual`] for keys of eventual shards.
///
/// Compares equal to a [`Consistency`] when it is that level
/// (`info.served == Consistency::Stale`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Served {
    /// A requestable level (a served `Bounded` carries bound 0).
    Level(Consistency),
    /// The key lives on an eventual (multi-master, last-writer-wins) shard:
    /// the read returned one replica's local state, with no bound on how
    /// stale it is, whatever level was requested.
    Eventual,
}

impl Served {
    /// The lowercase name used by `kvctl` and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Served::Level(level) => level.as_str(),
            Served::Eventual => "eventual",
        }
    }

    /// The requestable level, `None` for [`Served::Eventual`].
    pub fn level(self) -> Option<Consistency> {
        match self {
            Served::Level(level) => Some(level),
            Served::Eventual => None,
        }
    }

    pub fn is_eventual(self) -> bool {
        self == Served::Eventual
    }

    pub(crate) fn from_proto(value: i32) -> Option<Served> {
        Some(match pb::Consistency::try_from(value).ok()? {
            pb::Consistency::Linearizable => Served::Level(Consistency::Linearizable),
            pb::Consistency::Lease => Served::Level(Consistency::Lease),
            pb::Consistency::Follower => Served::Level(Consistency::Follower),
            pb::Consistency::Bounded => Served::Level(Consistency::Bounded { max_staleness_ms: 0 }),
            pb::Consistency::Stale => Served::Level(Consistency::Stale),
            pb::Consistency::Eventual => Served::Eventual,
        })
    }
}

impl From<Consistency> for Served {
    fn from(level: Consistency) -> Served {
        Served::Level(level)
    }
}

impl PartialEq<Consistency> for Served {
    fn eq(&self, other: &Consistency) -> bool {
        *self == Served::Level(*other)
    }
}

impl Serialize for Served {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl fmt::Display for Served {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Served::Level(level) => level.fmt(f),
            Served::Eventual => f.write_str("eventual"),
        }
    }
}

/// A hybrid logical clock reading: the timestamp an eventual shard stamps
/// on every write. Ordered by `physical_ms`, then `logical`, then `node_id`
/// (the tie-break that makes every timestamp unique); the newest wins.
///
/// Displays as `physical.logical@node`, e.g. `1732245600123.4@2`, and parses
/// back from that form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hlc {
    /// Wall-clock milliseconds since the Unix epoch (at least the physical
    /// part of every timestamp the node has seen).
    pub physical_ms: u64,
    /// Orders timestamps with the same `physical_ms`.
    pub logical: u32,
    /// The node whose clock produced it.
    pub node_id: u64,
}

impl Hlc {
    pub fn new(physical_ms: u64, logical: u32, node_id: u64) -> Hlc {
        Hlc { physical_ms, logical, node_id }
    }

    /// `None` for an absent or all-zero timestamp (never a real one).
    pub(crate) fn from_proto(hlc: Option<pb::Hlc>) -> Option<Hlc> {
        let hlc = hlc?;
        let hlc = Hlc { physical_ms: hlc.physical_ms, logical: hlc.logical, node_id: hlc.node_id };
        (hlc != Hlc::default()).then_some(hlc)
    }
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}@{}", self.physical_ms, self.logical, self.node_id)
    }
}

impl FromStr for Hlc {
    type Err = String;

    /// `physical.logical@node`, as displayed.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("bad HLC {s:?}: expected physical_ms.logical@node, e.g. 1732245600123.4@2");
        let (time, node) = s.split_once('@').ok_or_else(bad)?;
        let (physical, logical) = time.split_once('.').ok_or_else(bad)?;
        Ok(Hlc {
            physical_ms: physical.parse().map_err(|_| bad())?,
            logical: logical.parse().map_err(|_| bad())?,
            node_id: node.parse().map_err(|_| bad())?,
        })
    }
}

impl Serialize for Hlc {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// How a shard replicates its writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ShardMode {
    /// One Raft group: linearizable writes through the leader, with log
    /// versions, compare-and-swap and batches.
    #[default]
    Raft,
    /// No leader: every replica accepts puts and deletes, acknowledges them
    /// once durable locally and replicates them asynchronously; the write
    /// with the newest [`Hlc`] wins and the discarded ones are recorded in
    /// each node's conflict log ([`crate::Client::conflicts`]).
    /// Compare-and-swap and batches are refused.
    Eventual,
}

impl ShardMode {
    /// The lowercase name used by `kvctl` and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ShardMode::Raft => "raft",
            ShardMode::Eventual => "eventual",
        }
    }

    pub fn is_eventual(self) -> bool {
        self == ShardMode::Eventual
    }

    pub(crate) fn to_proto(self) -> i32 {
        match self {
            ShardMode::Raft => pb::ShardMode::Raft as i32,
            ShardMode::Eventual => pb::ShardMode::Eventual as i32,
        }
    }

    /// A mode this client does not know is treated as Raft: leader routing
    /// still works there, as the nodes redirect to their leader.
    pub(crate) fn from_proto(value: i32) -> ShardMode {
        match pb::ShardMode::try_from(value) {
            Ok(pb::ShardMode::Eventual) => ShardMode::Eventual,
            Ok(pb::ShardMode::Raft) | Err(_) => ShardMode::Raft,
        }
    }
}

impl fmt::Display for ShardMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ShardMode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// A value and the version that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: Vec<u8>,
    /// The log index of the write that produced this value (> 0 on Raft
    /// shards; 0 on eventual shards, which have no log: see `hlc`).
    pub version: u64,
    /// Eventual shards only: the timestamp of the write that produced this
    /// value.
    pub hlc: Option<Hlc>,
    /// Eventual shards only: the replica that accepted that write.
    pub origin: Option<u64>,
}

impl Versioned {
    /// A value of a Raft shard, at this log index.
    pub fn at_version(value: Vec<u8>, version: u64) -> Versioned {
        Versioned { value, version, hlc: None, origin: None }
    }
}

/// A key with its value and version, as returned by scans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// The log index of the write that produced this value (0 on eventual
    /// shards: see `hlc`).
    pub version: u64,
    /// Eventual shards only: the timestamp of the write that produced this
    /// value.
    pub hlc: Option<Hlc>,
    /// Eventual shards only: the replica that accepted that write.
    pub origin: Option<u64>,
}

impl From<pb::KeyValue> for KeyValue {
    fn from(kv: pb::KeyValue) -> Self {
        KeyValue {
            key: kv.key,
            value: kv.value,
            version: kv.version,
            hlc: Hlc::from_proto(kv.hlc),
            origin: (kv.origin != 0).then_some(kv.origin),
        }
    }
}

impl From<pb::KeyValue> for Versioned {
    fn from(kv: pb::KeyValue) -> Self {
        Versioned {
            value: kv.value,
            version: kv.version,
            hlc: Hlc::from_proto(kv.hlc),
            origin: (kv.origin != 0).then_some(kv.origin),
        }
    }
}

/// What a read actually got: the level served and by whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadInfo {
    /// The level the server actually used: may be stronger than requested,
    /// and is always [`Served::Eventual`] for keys of eventual shards.
    pub served: Served,
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
    /// True when the read was served at a weaker level than requested: a key
    /// of an eventual shard read at any level but stale.
    pub weaker_than_requested: bool,
}

impl ReadInfo {
    pub(crate) fn from_proto(info: Option<pb::ReadInfo>) -> Result<ReadInfo, String> {
        let info = info.ok_or("read response without read info")?;
        let served =
            Served::from_proto(info.served).ok_or_else(|| format!("unknown served consistency {}", info.served))?;
        Ok(ReadInfo {
            served,
            node_id: info.node_id,
            region: info.region,
            applied_index: info.applied_index,
            staleness_bound_ms: (info.staleness_bound_ms != u64::MAX).then_some(info.staleness_bound_ms),
            fell_back: info.fell_back,
            weaker_than_requested: info.weaker_than_requested,
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
///
/// On an eventual shard (`eventual: true`) the write is durable on the
/// accepting replica (`origin`) only and replicates asynchronously; a
/// concurrent write elsewhere with a newer `hlc` may still win over it (it
/// is then recorded in the conflict log, see [`crate::Client::conflicts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteResult {
    /// The log index at which the write was applied: the key's new version
    /// (0 on eventual shards).
    pub version: u64,
    pub shard_id: u64,
    /// True when the key lives on an eventual shard.
    pub eventual: bool,
    /// Eventual shards only: the write's timestamp.
    pub hlc: Option<Hlc>,
    /// Eventual shards only: the replica that accepted the write.
    pub origin: Option<u64>,
}

/// The result of a delete. On eventual shards, see [`WriteResult`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeleteResult {
    /// The log index at which the delete was applied (0 on eventual shards).
    pub version: u64,
    /// Whether the key existed before the delete (on eventual shards: on the
    /// accepting replica).
    pub existed: bool,
    pub shard_id: u64,
    /// True when the key lives on an eventual shard.
    pub eventual: bool,
    /// Eventual shards only: the delete's timestamp.
    pub hlc: Option<Hlc>,
    /// Eventual shards only: the replica that accepted the delete.
    pub origin: Option<u64>,
}

impl WriteResult {
    pub(crate) fn from_proto(reply: pb::WriteResponse) -> WriteResult {
        WriteResult {
            version: reply.version,
            shard_id: reply.shard_id,
            eventual: reply.eventual,
            hlc: Hlc::from_proto(reply.hlc),
            origin: (reply.origin != 0).then_some(reply.origin),
        }
    }
}

impl DeleteResult {
    pub(crate) fn from_proto(reply: pb::WriteResponse) -> DeleteResult {
        DeleteResult {
            version: reply.version,
            existed: reply.existed,
            shard_id: reply.shard_id,
            eventual: reply.eventual,
            hlc: Hlc::from_proto(reply.hlc),
            origin: (reply.origin != 0).then_some(reply.origin),
        }
    }
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
    pub(crate) fn from_proto(mut kv: pb::KeyValue) -> KeyState {
        let key = std::mem::take(&mut kv.key);
        let current = (kv.version != 0).then(|| Versioned::from(kv));
        KeyState { key, current }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consistency_round_trips() {
        for level in Consistency::ALL {
            assert_eq!(level.as_str().parse::<Consistency>(), Ok(level));
            assert_eq!(Served::from_proto(level.to_proto()), Some(Served::Level(level)));
        }
        assert_eq!("LEASE".parse::<Consistency>(), Ok(Consistency::Lease));
        assert!("strong".parse::<Consistency>().is_err());
        assert!(Consistency::Linearizable.needs_leader());
        assert!(!Consistency::Stale.needs_leader());
    }

    #[test]
    fn eventual_is_served_never_requested() {
        let served = Served::from_proto(pb::Consistency::Eventual as i32).unwrap();
        assert_eq!(served, Served::Eventual);
        assert_eq!(served.to_string(), "eventual");
        assert_eq!(served.level(), None);
        assert!(served != Consistency::Stale);
        assert!(Served::Level(Consistency::Stale) == Consistency::Stale);
        assert_eq!(serde_json::to_string(&served).unwrap(), "\"eventual\"");
        let err = "eventual".parse::<Consistency>().unwrap_err();
        assert!(err.contains("stale"), "{err}");
        let info = pb::ReadInfo {
            served: pb::Consistency::Eventual as i32,
            weaker_than_requested: true,
            staleness_bound_ms: u64::MAX,
            ..Default::default()
        };
        let info = ReadInfo::from_proto(Some(info)).unwrap();
        assert!(info.served.is_eventual() && info.weaker_than_requested);
        assert_eq!(info.staleness_bound_ms, None);
    }

    #[test]
    fn hlc_orders_by_physical_then_logical_then_node() {
        let a = Hlc::new(1_732_245_600_123, 4, 2);
        assert_eq!(a.to_string(), "1732245600123.4@2");
        assert_eq!("1732245600123.4@2".parse::<Hlc>(), Ok(a));
        assert!("1732245600123@2".parse::<Hlc>().is_err());
        assert!("1.2@x".parse::<Hlc>().is_err());
        assert!(Hlc::new(1_732_245_600_123, 4, 3) > a, "node id breaks ties");
        assert!(Hlc::new(1_732_245_600_123, 5, 1) > a, "logical before node");
        assert!(Hlc::new(1_732_245_600_124, 0, 1) > a, "physical first");
        let mut stamps = vec![Hlc::new(2, 0, 1), Hlc::new(1, 9, 9), Hlc::new(2, 0, 0), Hlc::new(1, 10, 0)];
        stamps.sort();
        assert_eq!(stamps, [Hlc::new(1, 9, 9), Hlc::new(1, 10, 0), Hlc::new(2, 0, 0), Hlc::new(2, 0, 1)]);
        assert_eq!(serde_json::to_string(&a).unwrap(), "\"1732245600123.4@2\"");
    }

    #[test]
    fn eventual_values_and_writes_carry_their_timestamp() {
        let stamp = Some(pb::Hlc { physical_ms: 7, logical: 1, node_id: 3 });
        let kv = pb::KeyValue { key: b"k".to_vec(), value: b"v".to_vec(), version: 0, hlc: stamp, origin: 3 };
        let versioned = Versioned::from(kv);
        assert_eq!((versioned.version, versioned.hlc, versioned.origin), (0, Some(Hlc::new(7, 1, 3)), Some(3)));
        let raft = Versioned::from(pb::KeyValue { value: b"v".to_vec(), version: 9, ..Default::default() });
        assert_eq!(raft, Versioned::at_version(b"v".to_vec(), 9));
        let reply = pb::WriteResponse { shard_id: 2, eventual: true, hlc: stamp, origin: 3, ..Default::default() };
        let written = WriteResult::from_proto(reply);
        assert!(written.eventual);
        assert_eq!((written.hlc, written.origin), (Some(Hlc::new(7, 1, 3)), Some(3)));
        let deleted = DeleteResult::from_proto(pb::WriteResponse { existed: true, ..reply });
        assert!(deleted.eventual && deleted.existed);
        let raft = WriteResult::from_proto(pb::WriteResponse { version: 5, shard_id: 1, ..Default::default() });
        assert_eq!((raft.eventual, raft.hlc, raft.origin), (false, None, None));
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
        let absent =
            KeyState::from_proto(pb::KeyValue { key: b"k".to_vec(), value: vec![], version: 0, ..Default::default() });
        assert_eq!(absent.current, None);
        let present = KeyState::from_proto(pb::KeyValue {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            version: 4,
            ..Default::default()
        });
        assert_eq!(present.key, b"k");
        assert_eq!(present.current, Some(Versioned::at_version(b"v".to_vec(), 4)));
    }
}
