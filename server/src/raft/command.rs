//! What goes into the Raft log, and what applying it returns.
//!
//! These types are the contract between the request path (which proposes
//! commands) and the state machine (which applies them on every replica, in
//! log order, deterministically). Anything non-deterministic — the proposing
//! leader's wall clock, for session expiry — is decided before proposal and
//! carried inside the command.

use serde::{Deserialize, Serialize};

use crate::shards::{NodeState, ReplicaChange, ShardDesc, ShardMap};

/// A Raft log payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// An atomic group of writes (and conditions) to one data shard.
    Write(WriteCommand),
    /// A change to the shard map (meta shard only).
    Meta(MetaCommand),
    /// The data shard gives up part of its range (to a new shard carved out
    /// of it). Applied in log order, so every replica rejects writes to the
    /// given-up keys from the same entry on.
    Shrink(ShrinkCommand),
    /// The data shard splits at `key`: from this entry on it owns only the
    /// keys below it, and a new group (`right_shard`, on the same replicas)
    /// owns the rest, its data already in place and its sessions copied.
    Split(SplitCommand),
    /// The data shard stops taking requests, for good, because it is being
    /// merged into the shard before it (`into`): from this entry on every
    /// write is refused ([`Rejection::Frozen`]) and nothing changes its data
    /// or sessions, so its state is final at this entry's index.
    Freeze { into: u64 },
    /// The data shard takes back its freeze at `index`: it serves requests
    /// again. Refused once sealed (answered [`CommandResult::Sealed`]).
    Unfreeze { index: u64 },
    /// The data shard's freeze at `index` becomes final: no unfreeze from
    /// here on, so the shard before it may absorb it.
    Seal { index: u64 },
    /// The data shard absorbs the frozen shard after it (see
    /// [`MergeCommand`]).
    Merge(MergeCommand),
}

/// See [`Command::Merge`]: the left shard's range grows to `right_end`, at
/// `epoch`, and it takes over the right shard's data (already in place:
/// every replica of the left holds one of the right, the meta shard's
/// leader made sure) and its client sessions, as the right shard's state
/// stands at `right_frozen_index` (its [`Command::Freeze`] entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeCommand {
    pub right_shard: u64,
    pub right_end: Option<Vec<u8>>,
    pub right_frozen_index: u64,
    pub epoch: u64,
}

/// See [`Command::Split`]. The meta shard recorded both halves first
/// ([`MetaCommand::SplitShard`]), which allocated `right_shard`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitCommand {
    pub key: Vec<u8>,
    pub left_epoch: u64,
    pub right_shard: u64,
    pub right_epoch: u64,
    /// The voters the right half's group starts with (the left's).
    pub members: Vec<u64>,
}

/// A data shard's new, narrower range and its new epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShrinkCommand {
    pub start: Vec<u8>,
    pub end: Option<Vec<u8>>,
    pub epoch: u64,
}

/// Exactly-once identity of a write (Raft thesis §6.3, extended for clients
/// with several writes in flight).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// 0 disables deduplication (the write is applied every time it is
    /// proposed).
    pub client_id: u64,
    pub sequence: u64,
    /// Results of this client's sequences below this may be forgotten.
    pub first_incomplete: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteCommand {
    pub session: Session,
    /// The proposing leader's wall clock, in ms since the Unix epoch; the only
    /// notion of time the state machine has (session expiry).
    pub proposed_at_ms: u64,
    /// The shard epoch the request was routed with.
    pub epoch: u64,
    /// All must hold, else nothing is written.
    pub conditions: Vec<Condition>,
    pub ops: Vec<Op>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub expect: Expect,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expect {
    Absent,
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    Version(u64),
}

impl Expect {
    pub fn holds(&self, current: Option<&Record>) -> bool {
        match (self, current) {
            (Expect::Absent, None) => true,
            (Expect::Value(v), Some(r)) => r.value == *v,
            (Expect::Version(v), Some(r)) => r.version == *v,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    // Keys and values as byte strings, not sequences of u8: the same
    // encoding in postcard (and in bincode 1), copied at once instead of
    // byte by byte.
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
}

impl Op {
    pub fn key(&self) -> &[u8] {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// Installs the initial map if the meta shard has none yet; a no-op
    /// otherwise (every initial member may propose it).
    Bootstrap(ShardMap),
    /// Sets (`None`: clears) the preferred leader region of a data shard.
    SetLeaderRegion { shard: u64, region: Option<String> },
    /// Adds `shard`, whose range is cut from the end or the start of
    /// `parent`; the parent keeps `parent_start..parent_end` at
    /// `parent_epoch` (its own log already shrank it). The new shard's id is
    /// allocated here, at apply time (`shard.id` is ignored: a proposer's map
    /// may lag). A retry is recognised by its whole effect, not by an id: an
    /// eventual shard with exactly this range, and the parent already at
    /// this range and epoch; it answers the existing id and changes nothing.
    CarveShard { parent: u64, parent_start: Vec<u8>, parent_end: Option<Vec<u8>>, parent_epoch: u64, shard: ShardDesc },
    /// Splits Raft shard `shard`, now at `epoch`, at `key`: it keeps the keys
    /// below `key` and a new shard (id allocated here, at apply time) gets the
    /// rest, on the same replicas; both at epoch `epoch + 1`. The map records
    /// the split before the shard's own log does ([`Command::Split`]): the map
    /// is the intent, which a retry (or the leader's reconciler) carries out.
    /// A retry once applied (the shard already ends at `key`, a shard starts
    /// there) answers the existing split and changes nothing.
    /// `automatic`: the meta shard's leader split it (size or load), so the
    /// new boundary may be merged away again once both halves are small and
    /// cold; an operator's split (and the initial split points) stays.
    SplitShard { shard: u64, epoch: u64, key: Vec<u8>, automatic: bool },
    /// Records that Raft shard `shard`'s replicas are to change (the intent,
    /// which the shard's leader carries out: learner, catch-up, joint
    /// consensus). Refused while another change of the shard is under way;
    /// a retry of the recorded change answers and changes nothing. See
    /// [`crate::shards::ShardMap::begin_replica_change`].
    BeginReplicaChange { shard: u64, change: ReplicaChange },
    /// Records that the shard's group made `change`: its voters are the new
    /// set. The replicas become that set, at a new epoch. Proposed by the
    /// shard's leader only after the membership change committed.
    FinishReplicaChange { shard: u64, change: ReplicaChange },
    /// Drops the recorded `change` of `shard`, which its group never made:
    /// the replica being added went down while still a learner, and the
    /// shard's leader took it out of the group. The map's planners may then
    /// record another change. See
    /// [`crate::shards::ShardMap::cancel_replica_change`].
    CancelReplicaChange { shard: u64, change: ReplicaChange },
    /// Moves a member to `state` (drain, remove); see
    /// [`crate::shards::ShardMap::set_node_state`]. A retry answers and
    /// changes nothing.
    SetNodeState { node: u64, state: NodeState },
    /// Admits a new node (`geokv --join`) as joining, with an id allocated
    /// here, at apply time: one above every id the map has held. A retry
    /// from the same joining node (same address, region and zone) answers
    /// its id and changes nothing. See
    /// [`crate::shards::ShardMap::add_node`].
    AddNode { addr: String, region: String, zone: String },
    /// Records the intent to merge Raft shard `left` with the shard after
    /// it; see [`crate::shards::ShardMap::begin_merge`].
    BeginMerge { left: u64, expected_epoch: u64 },
    /// Drops a merge (before its freeze, or once the right shard's freeze
    /// was taken back: `unfrozen`); see
    /// [`crate::shards::ShardMap::cancel_merge`].
    CancelMerge { left: u64, unfrozen: bool },
    /// The right shard's log sealed its freeze at `right_frozen_index`; see
    /// [`crate::shards::ShardMap::commit_merge`].
    CommitMerge { left: u64, right_frozen_index: u64 },
    /// The merge's point of no return; see
    /// [`crate::shards::ShardMap::freeze_merge`].
    FreezeMerge { left: u64 },
    /// The merge's end: the left shard's log absorbed the right shard; see
    /// [`crate::shards::ShardMap::finish_merge`].
    FinishMerge { left: u64, right: u64, epoch: u64 },
    /// Adds a user (the token's digest, never the token); see
    /// [`crate::shards::ShardMap::add_user`].
    AddUser { name: String, token_sha256: Option<String>, grants: Vec<crate::auth::Grant> },
    /// See [`crate::shards::ShardMap::remove_user`].
    RemoveUser { name: String },
    /// See [`crate::shards::ShardMap::grant_user`].
    GrantUser { name: String, grant: crate::auth::Grant, revoke: bool },
    /// A drain's move off a leaving node: as [`MetaCommand::BeginReplicaChange`],
    /// but refused unless the node it moves from is still leaving when the
    /// entry applies, so a drain cancelled after the meta leader planned the
    /// move starts none. See [`crate::shards::ShardMap::begin_drain_move`].
    /// (Last, so that the encoding of every older variant is unchanged.)
    BeginDrainMove { shard: u64, change: ReplicaChange },
}

/// A stored value and the log index of the write that produced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub version: u64,
}

/// What applying an entry returned to its proposer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Blank and membership entries.
    #[default]
    None,
    Write(WriteOutcome),
    /// The command was not applied, for a reason the proposer must report.
    Rejected(Rejection),
    /// A meta command was applied; the map is now at this version.
    /// `changed`: this entry changed the map (false for a repeat, which
    /// the meta shard recognises from the map itself: the proposer's own
    /// copy of the map may lag, so only this answer tells the two apart).
    Meta {
        map_version: u64,
        changed: bool,
    },
    /// A shrink was applied: the shard is now at this epoch.
    Shrunk {
        epoch: u64,
    },
    /// A split was recorded in the map (meta shard) or applied by the
    /// shard (data shard), now or earlier.
    Split {
        left_epoch: u64,
        right_shard: u64,
        right_epoch: u64,
        map_version: u64,
    },
    /// A carve was applied (or had been): the new shard's id, allocated by
    /// the meta shard, and the map version.
    Carved {
        shard_id: u64,
        map_version: u64,
    },
    /// A node was admitted (or had been): its id and the map version.
    Joined {
        node_id: u64,
        map_version: u64,
    },
    /// The data shard is frozen (now or earlier) at this log index.
    Frozen {
        index: u64,
    },
    /// The data shard's freeze is sealed (now or earlier) at this index: it
    /// is never taken back.
    Sealed {
        index: u64,
    },
    /// The data shard is not frozen (any more).
    Unfrozen,
    /// The data shard absorbed its right neighbour (now or earlier) and is
    /// at this epoch.
    Merged {
        epoch: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteOutcome {
    /// False when a condition failed: nothing was written.
    pub applied: bool,
    /// The log index of this write: the new version of every written key.
    pub version: u64,
    /// Per op: for a delete, whether the key existed before it; false for
    /// a put (which does not read the key).
    pub existed: Vec<bool>,
    /// When not applied: the current record of every conditioned key, in order.
    pub current: Vec<Option<Record>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    /// The client's result for this sequence was already forgotten: the
    /// earlier attempt's outcome cannot be reported.
    #[error("session result forgotten: sequence {sequence} of client {client_id} is older than the session keeps")]
    SessionExpired { client_id: u64, sequence: u64 },
    /// A key lies outside the shard's range (the request raced a map change).
    #[error("key outside the range of shard {shard}")]
    KeyOutsideShard { shard: u64 },
    /// The request was routed with an older epoch than the shard's.
    #[error("stale epoch {request_epoch} for shard {shard} at epoch {epoch}")]
    StaleEpoch { shard: u64, request_epoch: u64, epoch: u64 },
    /// A shrink would give up keys that hold data.
    #[error("shard {shard} holds keys in the range it would give up (first: {first_key:?}); delete them first")]
    NotEmpty { shard: u64, first_key: String },
    /// The shard is frozen for a merge into shard `into`: it takes no more
    /// requests (the map soon sends them to `into`).
    #[error("shard {shard} is being merged into shard {into}; retry once the shard map shows the merge")]
    Frozen { shard: u64, into: u64 },
    /// A command that this shard kind does not accept.
    #[error("command not accepted by shard {shard}: {reason}")]
    WrongKind { shard: u64, reason: String },
}

impl std::fmt::Display for Command {
    /// A one-line summary for logs: never the values (they may be large or
    /// sensitive), only the shape of the command.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Write(w) => write!(
                f,
                "write(client={}, seq={}, conditions={}, ops={})",
                w.session.client_id,
                w.session.sequence,
                w.conditions.len(),
                w.ops.len()
            ),
            Command::Meta(MetaCommand::Bootstrap(map)) => write!(f, "bootstrap-map(shards={})", map.shards.len()),
            Command::Meta(MetaCommand::SetLeaderRegion { shard, region }) => {
                write!(f, "set-leader-region(shard={shard}, region={region:?})")
            }
            Command::Meta(MetaCommand::AddUser { name, grants, .. }) => {
                write!(f, "add-user(name={name:?}, grants={})", grants.len())
            }
            Command::Meta(MetaCommand::RemoveUser { name }) => write!(f, "remove-user(name={name:?})"),
            Command::Meta(MetaCommand::GrantUser { name, grant, revoke }) => {
                let verb = if *revoke { "revoke" } else { "grant" };
                write!(f, "{verb}-user(name={name:?}, role={})", grant.role.as_str())
            }
            Command::Meta(MetaCommand::CarveShard { parent, parent_epoch, shard, .. }) => {
                write!(f, "carve-shard(parent={parent}@{parent_epoch}, mode={:?})", shard.mode)
            }
            Command::Meta(MetaCommand::SplitShard { shard, epoch, .. }) => {
                write!(f, "split-shard(shard={shard}@{epoch})")
            }
            Command::Meta(MetaCommand::BeginReplicaChange { shard, change }) => {
                write!(f, "begin-replica-change(shard={shard}, {})", crate::shards::describe(change))
            }
            Command::Meta(MetaCommand::BeginDrainMove { shard, change }) => {
                write!(f, "begin-drain-move(shard={shard}, {})", crate::shards::describe(change))
            }
            Command::Meta(MetaCommand::FinishReplicaChange { shard, change }) => {
                write!(f, "finish-replica-change(shard={shard}, {})", crate::shards::describe(change))
            }
            Command::Meta(MetaCommand::CancelReplicaChange { shard, change }) => {
                write!(f, "cancel-replica-change(shard={shard}, {})", crate::shards::describe(change))
            }
            Command::Meta(MetaCommand::AddNode { addr, region, .. }) => write!(f, "add-node({addr}@{region})"),
            Command::Meta(MetaCommand::SetNodeState { node, state }) => {
                write!(f, "set-node-state(node={node}, {})", state.as_str())
            }
            Command::Meta(MetaCommand::BeginMerge { left, .. }) => write!(f, "begin-merge(left={left})"),
            Command::Meta(MetaCommand::CancelMerge { left, unfrozen }) => {
                write!(f, "cancel-merge(left={left}, unfrozen={unfrozen})")
            }
            Command::Meta(MetaCommand::CommitMerge { left, right_frozen_index }) => {
                write!(f, "commit-merge(left={left}, at={right_frozen_index})")
            }
            Command::Unfreeze { index } => write!(f, "unfreeze(at={index})"),
            Command::Seal { index } => write!(f, "seal(at={index})"),
            Command::Meta(MetaCommand::FreezeMerge { left }) => write!(f, "freeze-merge(left={left})"),
            Command::Meta(MetaCommand::FinishMerge { left, right, epoch }) => {
                write!(f, "finish-merge(left={left}, right={right}, epoch={epoch})")
            }
            Command::Freeze { into } => write!(f, "freeze(into={into})"),
            Command::Merge(m) => write!(f, "merge(right={}, epoch={})", m.right_shard, m.epoch),
            Command::Shrink(s) => write!(f, "shrink(epoch={})", s.epoch),
            Command::Split(s) => write!(f, "split(right={}, epoch={})", s.right_shard, s.left_epoch),
        }
    }
}
