//! The shard map: which contiguous key range each Raft group owns, and where
//! its replicas live.
//!
//! The map is data of the *meta shard* (shard [`META_SHARD_ID`], a Raft group
//! over the initial voters): every change to it is a Raft command there, and
//! every node learns it by applying that group's log. A new cluster starts with
//! the map computed deterministically from the shared initial configuration
//! (members and split points), proposed once to the meta shard.
//!
//! Every shard carries an epoch that grows whenever its range or replicas
//! change; requests carry the epoch the client routed with, so a client with a
//! stale map is told so (`WrongShard`) instead of being served by the wrong
//! group. Splits are recorded here first (`MetaCommand::SplitShard`), then
//! carried out by the shard's own log; replica changes (moves) likewise are
//! recorded as an intent ([`ReplicaChange`]) that the shard's leader carries
//! out (learner, catch-up, joint consensus) before the map records the new
//! replica set (docs/architecture.md). Merges are recorded as an intent on
//! the left shard ([`MergeIntent`]) that the meta shard's leader carries out.
//! The map also holds the cluster's users and their grants ([`crate::auth`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::auth::{
    Grant, MAX_GRANT_PREFIX_BYTES, MAX_GRANTS_PER_USER, MAX_USERS, ROOT_USER, UserDesc, check_grant, check_user_name,
};

/// The id of the meta shard, which replicates the shard map itself.
pub const META_SHARD_ID: u64 = 0;

/// How a refused `add_user` of a taken name ends; the admin service maps
/// it to `ALREADY_EXISTS`.
pub const USER_EXISTS: &str = " exists (remove it first, or grant it more)";
/// How a refused `grant_user` of an unknown name begins; the admin service
/// maps it to `NOT_FOUND`.
pub const NO_USER: &str = "no user ";

/// A node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDesc {
    pub id: u64,
    /// host:port serving gRPC (client API, Raft transport and admin).
    pub addr: String,
    pub region: String,
    pub zone: String,
    /// Where the member is in its life. Whether it answers is not recorded
    /// here: that is seen by probing it.
    pub state: NodeState,
}

/// A member's life in the map: joining (`geokv --join`), up, then (at an
/// operator's request) draining, then removed; or down, when it stopped
/// answering for longer than `node_dead_after_ms`, and up again if it comes
/// back. A removed node's id is never reused (nodes are never deleted from
/// the map) and the node is refused if it comes back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    /// A member that may hold replicas and take new ones.
    #[default]
    Up,
    /// Its replicas are moving to other nodes ([`crate::placement`]); it
    /// takes no new ones. It stays draining once empty, until removed.
    Draining,
    /// Draining, and removed as soon as it holds no replica
    /// (`kvctl node remove --force`).
    Removing,
    /// Gone for good: it holds nothing and is let into no group.
    Removed,
    /// Admitted by the meta shard (which gave it its id) and catching up
    /// with the shard map as a learner of the meta shard; up once caught up.
    Joining,
    /// Unreachable for longer than `node_dead_after_ms`: its replicas are
    /// re-created on other nodes ([`crate::placement`]); up again if it
    /// answers.
    Down,
}

impl NodeState {
    /// Whether the node may be given a new replica.
    pub fn takes_replicas(self) -> bool {
        self == NodeState::Up
    }

    /// Whether its replicas are to move away.
    pub fn is_leaving(self) -> bool {
        matches!(self, NodeState::Draining | NodeState::Removing | NodeState::Down)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Draining => "draining",
            NodeState::Removing => "removing",
            NodeState::Removed => "removed",
            NodeState::Joining => "joining",
            NodeState::Down => "down",
        }
    }
}

/// A key range `[start, end)`; `end = None`: to the end of the key space.
pub type KeyRange = (Vec<u8>, Option<Vec<u8>>);

/// How a shard replicates writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardMode {
    /// One Raft group; linearizable.
    #[default]
    Raft,
    /// No leader: every replica accepts writes, last writer wins by hybrid
    /// logical clock (see `crate::eventual`).
    Eventual,
}

/// One data shard: the key range `[start, end)` (`end = None`: unbounded).
///
/// Invariants:
/// - `end`, when set, is greater than `start`;
/// - `replicas` is non-empty and holds distinct node ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardDesc {
    pub id: u64,
    pub epoch: u64,
    pub start: Vec<u8>,
    pub end: Option<Vec<u8>>,
    pub replicas: Vec<u64>,
    /// Where the cluster keeps this shard's leader when it can.
    pub preferred_leader_region: Option<String>,
    pub mode: ShardMode,
    /// A replica change under way: recorded here before the shard's group
    /// makes it, cleared when the group's voters are the new set.
    pub change: Option<ReplicaChange>,
    /// A merge with the next shard under way, recorded on this (the left)
    /// shard: see [`ShardMap::begin_merge`].
    pub merge: Option<MergeIntent>,
    /// This shard's start was made by an automatic split: automatic merges
    /// may take that boundary away again. Initial split points and an
    /// operator's splits are never merged away on their own.
    pub auto_split: bool,
}

/// A merge of a shard (the left) with the shard after it (the right), as
/// the map records it on the left one. Until `frozen` an operator may
/// cancel it. Once frozen, the meta shard's leader may freeze the right
/// shard's log (it then refuses every request), and either seal that
/// freeze once every replica applied it or, if one does not in time,
/// unfreeze it and give the merge up. `sealed_at` (the freeze index the
/// right shard's log sealed) is the point of no return: the left shard's
/// log then absorbs the right one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeIntent {
    pub right: u64,
    pub frozen: bool,
    pub sealed_at: Option<u64>,
}

/// A change of a shard's replica set, one replica at a time: `add` joins
/// (as a learner first), `remove` leaves. A move is both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaChange {
    pub add: Option<u64>,
    pub remove: Option<u64>,
}

impl ReplicaChange {
    /// The voters once the change is made, from the voters before it: the
    /// added replica takes the removed one's place (order matters only for
    /// display and initial placement).
    pub fn apply_to(&self, replicas: &[u64]) -> Vec<u64> {
        let mut out: Vec<u64> = Vec::with_capacity(replicas.len() + 1);
        for r in replicas {
            if Some(*r) == self.remove {
                out.extend(self.add);
            } else {
                out.push(*r);
            }
        }
        if let Some(add) = self.add
            && !out.contains(&add)
        {
            out.push(add);
        }
        out
    }
}

impl ShardDesc {
    pub fn is_eventual(&self) -> bool {
        self.mode == ShardMode::Eventual
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && self.end.as_deref().is_none_or(|end| key < end)
    }

    /// The replica being added, if a change is under way.
    pub fn adding(&self) -> Option<u64> {
        self.change.and_then(|c| c.add)
    }

    /// Whether `node` holds (or is being given) a replica of this shard.
    pub fn placed_on(&self, node: u64) -> bool {
        self.replicas.contains(&node) || self.adding() == Some(node)
    }
}

/// Whether two replica lists name the same nodes (in any order).
pub fn same_replicas(a: &[u64], b: &[u64]) -> bool {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort_unstable();
    b.sort_unstable();
    a == b
}

/// The whole map.
///
/// Invariants (checked by [`ShardMap::validate`]):
/// - data shards are sorted by `start`, the first starts at the empty key, each
///   ends where the next starts and the last is unbounded: every key has
///   exactly one shard;
/// - shard ids are unique and never [`META_SHARD_ID`];
/// - every replica names a node of the map.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMap {
    /// Grows with every change (the meta shard's log index that wrote it).
    pub version: u64,
    pub nodes: Vec<NodeDesc>,
    pub shards: Vec<ShardDesc>,
    /// Users and their grants ([`crate::auth`]); never served by
    /// `GetShardMap` (tokens are kept as digests, but still).
    pub users: Vec<UserDesc>,
}

fn add_grant(user: &mut UserDesc, grant: &Grant) -> Result<(), String> {
    check_grant(grant, MAX_GRANT_PREFIX_BYTES)?;
    if user.grants.len() >= MAX_GRANTS_PER_USER {
        return Err(format!("user {:?} holds {MAX_GRANTS_PER_USER} grants, the most one may", user.name));
    }
    if !user.grants.contains(grant) {
        user.grants.push(grant.clone());
    }
    Ok(())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MapError {
    #[error("split points must be non-empty and strictly increasing: {0}")]
    BadSplitPoints(String),
    #[error("the cluster has no nodes")]
    NoNodes,
    #[error("invalid shard map: {0}")]
    Invalid(String),
}

impl ShardMap {
    /// The map of a new cluster: shards split at `split_points` and at the
    /// boundaries of `eventual_ranges` (shards inside those are eventual),
    /// each placed on `replication_factor` nodes (fewer if the cluster is
    /// smaller), spread over as many regions as possible, rotating so that
    /// replicas (and initial leaders) spread over the nodes.
    pub fn initial(
        nodes: &[NodeDesc],
        split_points: &[Vec<u8>],
        eventual_ranges: &[KeyRange],
        replication_factor: usize,
    ) -> Result<ShardMap, MapError> {
        if nodes.is_empty() {
            return Err(MapError::NoNodes);
        }
        for pair in split_points.windows(2) {
            if pair[0] >= pair[1] {
                return Err(MapError::BadSplitPoints(format!("{:?} >= {:?}", pair[0], pair[1])));
            }
        }
        if split_points.first().is_some_and(|p| p.is_empty()) {
            return Err(MapError::BadSplitPoints("the empty key cannot be a split point".into()));
        }
        let order = region_interleaved(nodes);
        let rf = replication_factor.clamp(1, nodes.len());
        let mut bounds: Vec<Vec<u8>> = vec![Vec::new()];
        bounds.extend(split_points.iter().cloned());
        for (start, end) in eventual_ranges {
            bounds.push(start.clone());
            bounds.extend(end.iter().cloned());
        }
        bounds.sort();
        bounds.dedup();
        let eventual = |start: &[u8], end: Option<&[u8]>| {
            eventual_ranges.iter().any(|(s, e)| {
                start >= s.as_slice()
                    && match (e, end) {
                        (None, _) => true,
                        (Some(e), Some(end)) => end <= e.as_slice(),
                        (Some(_), None) => false,
                    }
            })
        };
        let shards = bounds
            .iter()
            .enumerate()
            .map(|(i, start)| ShardDesc {
                id: i as u64 + 1,
                epoch: 1,
                start: start.clone(),
                end: bounds.get(i + 1).cloned(),
                replicas: (0..rf).map(|r| order[(i + r) % order.len()]).collect(),
                preferred_leader_region: None,
                mode: if eventual(start, bounds.get(i + 1).map(Vec::as_slice)) {
                    ShardMode::Eventual
                } else {
                    ShardMode::Raft
                },
                change: None,
                merge: None,
                auto_split: false,
            })
            .collect();
        let mut nodes = nodes.to_vec();
        nodes.sort_by_key(|n| n.id);
        let map = ShardMap { version: 0, nodes, shards, users: Vec::new() };
        map.validate()?;
        Ok(map)
    }

    pub fn validate(&self) -> Result<(), MapError> {
        let bad = |msg: String| Err(MapError::Invalid(msg));
        let Some(first) = self.shards.first() else { return bad("no data shards".into()) };
        if !first.start.is_empty() {
            return bad(format!("first shard {} starts at {:?}, not the empty key", first.id, first.start));
        }
        let mut ids = std::collections::BTreeSet::new();
        for (i, s) in self.shards.iter().enumerate() {
            if s.id == META_SHARD_ID || !ids.insert(s.id) {
                return bad(format!("shard id {} is reserved or duplicated", s.id));
            }
            if s.replicas.is_empty() {
                return bad(format!("shard {} has no replicas", s.id));
            }
            for r in s.replicas.iter().chain(s.adding().iter()) {
                match self.node(*r) {
                    None => return bad(format!("shard {} names unknown node {r}", s.id)),
                    Some(n) if n.state == NodeState::Removed => {
                        return bad(format!("shard {} names removed node {r}", s.id));
                    }
                    Some(_) => {}
                }
            }
            if let Some(m) = &s.merge
                && self.shards.get(i + 1).is_none_or(|next| next.id != m.right)
            {
                return bad(format!("shard {} merges with shard {}, which does not follow it", s.id, m.right));
            }
            match (self.shards.get(i + 1), &s.end) {
                (Some(next), Some(end)) if *end == next.start && *end > s.start => {}
                (None, None) => {}
                _ => return bad(format!("shard {} does not end where the next begins", s.id)),
            }
        }
        Ok(())
    }

    /// Whether any node of the map is in `region`.
    pub fn has_region(&self, region: &str) -> bool {
        self.nodes.iter().any(|n| n.region == region)
    }

    pub fn node(&self, id: u64) -> Option<&NodeDesc> {
        self.nodes.iter().find(|n| n.id == id)
    }

    pub fn shard(&self, id: u64) -> Option<&ShardDesc> {
        self.shards.iter().find(|s| s.id == id)
    }

    /// The shard owning `key` (always one for a valid map).
    pub fn shard_for_key(&self, key: &[u8]) -> Option<&ShardDesc> {
        let i = self.shards.partition_point(|s| s.start.as_slice() <= key);
        i.checked_sub(1).map(|i| &self.shards[i]).filter(|s| s.contains(key))
    }

    /// Data shards with a replica on `node`.
    pub fn shards_on(&self, node: u64) -> impl Iterator<Item = &ShardDesc> {
        self.shards.iter().filter(move |s| s.replicas.contains(&node))
    }

    /// A drain's move, recorded as [`Self::begin_replica_change`] records it,
    /// but only while the node it moves from is still leaving (draining,
    /// removing or down): the meta leader plans drains from its copy of the
    /// map, and a drain cancelled (or a down node back up) between that plan
    /// and this entry's apply must start no move. A retry of a move already
    /// recorded answers `Ok(false)` as before.
    pub fn begin_drain_move(&mut self, shard: u64, change: ReplicaChange) -> Result<bool, String> {
        let recorded = self.shard(shard).is_some_and(|d| d.change == Some(change));
        if !recorded {
            let from = change.remove.ok_or("a drain's move must remove a replica from the leaving node")?;
            let state = self.node(from).map(|n| n.state).ok_or_else(|| format!("no node {from} in the cluster"))?;
            if !state.is_leaving() {
                return Err(format!("node {from} is {} again: no drain move off it", state.as_str()));
            }
        }
        self.begin_replica_change(shard, change)
    }

    /// Records the intent to change `shard`'s replicas (a move: `add` and
    /// `remove`), or why it is refused. `Ok(false)`: this very change is
    /// already recorded (a retry), the map unchanged.
    ///
    /// Refused: an unknown shard or node, another change under way, adding a replica the shard has, removing one it does not
    /// have, a change that is no change, removing the last replica.
    pub fn begin_replica_change(&mut self, shard: u64, change: ReplicaChange) -> Result<bool, String> {
        let ReplicaChange { add, remove } = change;
        let frozen_merge = self.merge_of(shard).filter(|(_, m)| m.frozen);
        for node in add.iter().chain(remove.iter()) {
            if self.node(*node).is_none() {
                return Err(format!("no node {node} in the cluster"));
            }
        }
        let desc =
            self.shards.iter_mut().find(|s| s.id == shard).ok_or_else(|| format!("no shard {shard} in the map"))?;
        if desc.change == Some(change) {
            return Ok(false);
        }
        if let Some(c) = desc.change {
            return Err(format!("shard {shard} is already changing replicas ({}); wait for it", describe(&c)));
        }
        if let Some((left, m)) = frozen_merge {
            return Err(format!(
                "shard {shard} is being merged (shards {left} and {}, past the freeze); its replicas change once \
                 the merge is done",
                m.right
            ));
        }
        match (add, remove) {
            (None, None) => return Err("a replica change must add or remove a replica".into()),
            (Some(a), Some(r)) if a == r => return Err(format!("moving a replica from node {a} to itself")),
            _ => {}
        }
        if let Some(a) = add
            && let Some(n) = self.nodes.iter().find(|n| n.id == a)
            && !n.state.takes_replicas()
        {
            return Err(format!("node {a} is {}: it takes no new replicas", n.state.as_str()));
        }
        if let Some(a) = add.filter(|a| desc.replicas.contains(a)) {
            return Err(format!("node {a} already holds a replica of shard {shard} (replicas {:?})", desc.replicas));
        }
        if let Some(r) = remove.filter(|r| !desc.replicas.contains(r)) {
            return Err(format!("node {r} holds no replica of shard {shard} (replicas {:?})", desc.replicas));
        }
        if add.is_none() && desc.replicas.len() == 1 {
            return Err(format!("removing the last replica of shard {shard}"));
        }
        desc.change = Some(change);
        Ok(true)
    }

    /// Records that `shard`'s group made `change` (its voters are the new
    /// set): the replicas become the new set, at a new epoch. `Ok(false)`:
    /// recorded already (a retry).
    pub fn finish_replica_change(&mut self, shard: u64, change: ReplicaChange) -> Result<bool, String> {
        let desc =
            self.shards.iter_mut().find(|s| s.id == shard).ok_or_else(|| format!("no shard {shard} in the map"))?;
        match desc.change {
            Some(c) if c == change => {
                desc.replicas = change.apply_to(&desc.replicas);
                desc.change = None;
                desc.epoch += 1;
                Ok(true)
            }
            None if change.add.is_none_or(|a| desc.replicas.contains(&a))
                && change.remove.is_none_or(|r| !desc.replicas.contains(&r)) =>
            {
                Ok(false)
            }
            other => Err(format!(
                "shard {shard} records {} under way, not {}",
                other.map_or("no change".into(), |c| describe(&c)),
                describe(&change)
            )),
        }
    }

    /// Drops `shard`'s recorded `change` before it was made: its new
    /// replica never became a voter (the shard's leader checked, and took
    /// the learner out of the group). `Ok(false)`: no change is recorded (a
    /// retry, or the change was finished meanwhile, which the caller must
    /// not have raced: it proposes only from the learner stage).
    pub fn cancel_replica_change(&mut self, shard: u64, change: ReplicaChange) -> Result<bool, String> {
        let desc =
            self.shards.iter_mut().find(|s| s.id == shard).ok_or_else(|| format!("no shard {shard} in the map"))?;
        match desc.change {
            Some(c) if c == change => {
                desc.change = None;
                Ok(true)
            }
            None => Ok(false),
            Some(other) => Err(format!("shard {shard} records {}, not {}", describe(&other), describe(&change))),
        }
    }

    /// The merge `shard` takes part in, as the left or the right shard: the
    /// left shard's id and the recorded intent.
    pub fn merge_of(&self, shard: u64) -> Option<(u64, MergeIntent)> {
        self.shards.iter().find_map(|s| s.merge.filter(|m| s.id == shard || m.right == shard).map(|m| (s.id, m)))
    }

    /// Whether `shard` takes part in a merge (the planners leave it alone).
    pub fn in_merge(&self, shard: u64) -> bool {
        self.merge_of(shard).is_some()
    }

    /// Records the intent to merge Raft shard `left` with the shard after
    /// it, or why it is refused. `Ok(false)`: recorded already (a retry).
    /// The meta shard's leader then aligns the right shard's replicas with
    /// the left's (moves), freezes it ([`ShardMap::freeze_merge`]), and the
    /// left shard's log absorbs it ([`ShardMap::finish_merge`]).
    ///
    /// Refused, changing nothing: an unknown shard, the last shard (nothing
    /// follows it), an eventual shard on either side, either shard changing
    /// replicas or in another merge, `expected_epoch` (when not 0) other
    /// than the left shard's, a replica of either on a node that is not up.
    pub fn begin_merge(&mut self, left: u64, expected_epoch: u64) -> Result<bool, String> {
        let pos = self.shards.iter().position(|s| s.id == left).ok_or_else(|| format!("no shard {left} in the map"))?;
        let l = &self.shards[pos];
        let Some(r) = self.shards.get(pos + 1) else {
            return Err(format!("shard {left} is the last shard: no shard follows it to merge with"));
        };
        if l.merge.is_some_and(|m| m.right == r.id) {
            return Ok(false);
        }
        if expected_epoch != 0 && l.epoch != expected_epoch {
            return Err(format!("shard {left} is at epoch {}, not {expected_epoch}: it changed since", l.epoch));
        }
        for s in [l, r] {
            if s.is_eventual() {
                return Err(format!("shard {} is eventual: only Raft shards merge", s.id));
            }
            if let Some(c) = &s.change {
                return Err(format!("shard {} is changing replicas ({}); merge once that is done", s.id, describe(c)));
            }
            if let Some((other_left, m)) = self.merge_of(s.id) {
                return Err(format!("shard {} is in the merge of shards {other_left} and {} already", s.id, m.right));
            }
            for n in s.replicas.iter().filter_map(|id| self.node(*id)) {
                if n.state != NodeState::Up {
                    return Err(format!(
                        "shard {} has a replica on node {}, which is {}: merge once every replica is on an up node",
                        s.id,
                        n.id,
                        n.state.as_str()
                    ));
                }
            }
        }
        let right = r.id;
        self.shards[pos].merge = Some(MergeIntent { right, frozen: false, sealed_at: None });
        Ok(true)
    }

    /// Drops the merge recorded on `left`. `Ok(false)`: none is recorded.
    /// Refused once frozen unless `unfrozen` (the meta shard's leader gives
    /// the merge up after the right shard's log took its freeze back), and
    /// always once sealed.
    pub fn cancel_merge(&mut self, left: u64, unfrozen: bool) -> Result<bool, String> {
        let desc =
            self.shards.iter_mut().find(|s| s.id == left).ok_or_else(|| format!("no shard {left} in the map"))?;
        match desc.merge {
            None => Ok(false),
            Some(m) if m.sealed_at.is_some() || (m.frozen && !unfrozen) => Err(format!(
                "the merge of shards {left} and {} is past its freeze: it finishes, or the cluster gives it up by \
                 itself if a replica does not apply the freeze in time",
                m.right
            )),
            Some(_) => {
                desc.merge = None;
                Ok(true)
            }
        }
    }

    /// Marks the merge recorded on `left` frozen: the point after which it
    /// is only carried forward. Refused unless both shards have the same
    /// replicas and neither is changing them. `Ok(false)`: frozen already.
    pub fn freeze_merge(&mut self, left: u64) -> Result<bool, String> {
        let pos = self.shards.iter().position(|s| s.id == left).ok_or_else(|| format!("no shard {left} in the map"))?;
        let Some(m) = self.shards[pos].merge else { return Err(format!("shard {left} records no merge")) };
        if m.frozen {
            return Ok(false);
        }
        let (l, r) = (&self.shards[pos], &self.shards[pos + 1]);
        if l.change.is_some() || r.change.is_some() || !same_replicas(&l.replicas, &r.replicas) {
            return Err(format!(
                "shards {left} and {} must have the same replicas, with no change under way, before the freeze",
                r.id
            ));
        }
        self.shards[pos].merge = Some(MergeIntent { frozen: true, ..m });
        Ok(true)
    }

    /// Records that the right shard's log sealed its freeze at `index` (the
    /// point of no return). `Ok(false)`: recorded already.
    pub fn commit_merge(&mut self, left: u64, index: u64) -> Result<bool, String> {
        let desc =
            self.shards.iter_mut().find(|s| s.id == left).ok_or_else(|| format!("no shard {left} in the map"))?;
        match desc.merge {
            Some(m) if m.sealed_at == Some(index) => Ok(false),
            Some(m) if m.frozen && m.sealed_at.is_none() => {
                desc.merge = Some(MergeIntent { sealed_at: Some(index), ..m });
                Ok(true)
            }
            other => Err(format!("shard {left} records {other:?}, not a frozen merge to seal at {index}")),
        }
    }

    /// Records that `left`'s log absorbed `right` (the merge's end): the
    /// left shard now ends where the right one ended, at `epoch`, and the
    /// right shard leaves the map (its id is never reused). `Ok(false)`:
    /// recorded already (a retry).
    pub fn finish_merge(&mut self, left: u64, right: u64, epoch: u64) -> Result<bool, String> {
        let pos = self.shards.iter().position(|s| s.id == left).ok_or_else(|| format!("no shard {left} in the map"))?;
        match self.shards[pos].merge {
            None if self.shard(right).is_none() && self.shards[pos].epoch >= epoch => Ok(false),
            Some(m) if m.right == right && m.sealed_at.is_some() => {
                let r = self.shards.remove(pos + 1);
                let l = &mut self.shards[pos];
                l.end = r.end;
                l.epoch = epoch;
                l.merge = None;
                Ok(true)
            }
            other => Err(format!("shard {left} records {other:?}, not a sealed merge with shard {right}")),
        }
    }

    /// The shards that place a replica on `node` (holding one or being
    /// given one).
    pub fn placed_on(&self, node: u64) -> impl Iterator<Item = &ShardDesc> {
        self.shards.iter().filter(move |s| s.placed_on(node))
    }

    /// Admits a new node at `addr` in `region`/`zone`, as joining, and
    /// returns its id: one above every id the map has held (nodes are never
    /// deleted from the map, so an id is never reused). `(id, false)`: a
    /// retry, this very node is joining already (it asked again before it
    /// stored its id). Refused: an empty region, an address that is not
    /// HOST:PORT, or one a member that is not removed uses.
    pub fn add_node(&mut self, addr: &str, region: &str, zone: &str) -> Result<(u64, bool), String> {
        if region.is_empty() {
            return Err("a joining node must name its region".into());
        }
        if addr.rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err()) {
            return Err(format!("address {addr:?} is not HOST:PORT"));
        }
        if let Some(n) = self.nodes.iter().find(|n| n.addr == addr && n.state != NodeState::Removed) {
            if n.state == NodeState::Joining && n.region == region && n.zone == zone {
                return Ok((n.id, false));
            }
            return Err(format!(
                "address {addr} is node {}'s ({}, {}): a new node needs an address no member uses",
                n.id,
                n.region,
                n.state.as_str()
            ));
        }
        let id = self.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        self.nodes.push(NodeDesc {
            id,
            addr: addr.to_string(),
            region: region.to_string(),
            zone: zone.to_string(),
            state: NodeState::Joining,
        });
        Ok((id, true))
    }

    /// Adds user `name` with a token digest (`None`: certificate only) and
    /// `grants`. `Ok(false)`: a retry (the user exists with this digest).
    /// Refused: a bad or reserved name, bad grants, a name taken, more than
    /// [`MAX_USERS`].
    pub fn add_user(&mut self, name: &str, token_sha256: Option<&str>, grants: &[Grant]) -> Result<bool, String> {
        check_user_name(name)?;
        if let Some(u) = self.users.iter().find(|u| u.name == name) {
            if u.token_sha256.as_deref() == token_sha256 && u.grants == grants {
                return Ok(false);
            }
            return Err(format!("user {name:?}{USER_EXISTS}"));
        }
        if self.users.len() >= MAX_USERS {
            return Err(format!("the cluster holds {MAX_USERS} users, the most it may"));
        }
        let mut user =
            UserDesc { name: name.into(), token_sha256: token_sha256.map(str::to_string), grants: Vec::new() };
        for g in grants {
            add_grant(&mut user, g)?;
        }
        self.users.push(user);
        Ok(true)
    }

    /// Removes user `name`. `Ok(false)`: there is none (a retry).
    pub fn remove_user(&mut self, name: &str) -> Result<bool, String> {
        if name == ROOT_USER {
            return Err("root is built in: it cannot be removed (rotate the CA to revoke its certificate)".into());
        }
        let before = self.users.len();
        self.users.retain(|u| u.name != name);
        Ok(self.users.len() < before)
    }

    /// Gives user `name` `grant`, or takes it back (`revoke`). `Ok(false)`:
    /// nothing changed (a retry).
    pub fn grant_user(&mut self, name: &str, grant: &Grant, revoke: bool) -> Result<bool, String> {
        let user = self.users.iter_mut().find(|u| u.name == name).ok_or_else(|| format!("{NO_USER}{name:?}"))?;
        if revoke {
            let before = user.grants.len();
            user.grants.retain(|g| g != grant);
            return Ok(user.grants.len() < before);
        }
        if user.grants.contains(grant) {
            return Ok(false);
        }
        add_grant(user, grant)?;
        Ok(true)
    }

    /// Moves `node` to `state`, or says why not. `Ok(false)`: it is there
    /// already (a retry).
    ///
    /// Refused: an unknown node; any change of a removed node (its id is
    /// never reused); removing a node the map still places a replica on.
    pub fn set_node_state(&mut self, node: u64, state: NodeState) -> Result<bool, String> {
        let placed: Vec<u64> = self.placed_on(node).map(|s| s.id).collect();
        let desc =
            self.nodes.iter_mut().find(|n| n.id == node).ok_or_else(|| format!("no node {node} in the cluster"))?;
        if desc.state == state {
            return Ok(false);
        }
        if desc.state == NodeState::Removed {
            return Err(format!("node {node} was removed from the cluster; a removed node's id is never reused"));
        }
        if state == NodeState::Removed && !placed.is_empty() {
            return Err(format!("node {node} still holds replicas of shards {placed:?}"));
        }
        if state == NodeState::Joining {
            return Err(format!("node {node} is a member already: only a new node joins"));
        }
        if state == NodeState::Down && !matches!(desc.state, NodeState::Up | NodeState::Joining) {
            // A draining node that dies keeps draining: its replicas leave
            // it either way, and its operator's intent is kept.
            return Err(format!("node {node} is {}: only an up node is marked down", desc.state.as_str()));
        }
        desc.state = state;
        Ok(true)
    }
}

/// "add 4, remove 1" and the like, for messages.
pub fn describe(c: &ReplicaChange) -> String {
    match (c.add, c.remove) {
        (Some(a), Some(r)) => format!("move from node {r} to node {a}"),
        (Some(a), None) => format!("add node {a}"),
        (None, Some(r)) => format!("remove node {r}"),
        (None, None) => "nothing".into(),
    }
}

/// Node ids ordered so that consecutive entries are in different regions
/// where possible: the first node of every region, then the second, ...
fn region_interleaved(nodes: &[NodeDesc]) -> Vec<u64> {
    let mut by_region: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for n in nodes {
        by_region.entry(n.region.as_str()).or_default().push(n.id);
    }
    by_region.values_mut().for_each(|ids| ids.sort());
    let rounds = by_region.values().map(Vec::len).max().unwrap_or(0);
    let mut out = Vec::with_capacity(nodes.len());
    for round in 0..rounds {
        for ids in by_region.values() {
            if let Some(id) = ids.get(round) {
                out.push(*id);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, region: &str) -> NodeDesc {
        NodeDesc {
            id,
            addr: format!("127.0.0.1:{}", 7000 + id),
            region: region.into(),
            zone: String::new(),
            state: NodeState::Up,
        }
    }

    /// Replica changes that cannot be made are refused, each with its
    /// reason, and change nothing: unknown shard or node, a move to the same
    /// node, a replica already there or not there, a node that takes no
    /// replicas, and removing a shard's last replica.
    #[test]
    fn bad_replica_changes_are_refused_and_change_nothing() {
        let nodes = [node(1, "us-east"), node(2, "us-west"), node(3, "eu-west"), node(4, "eu-west")];
        let mut map = ShardMap::initial(&nodes[..3], &[b"g".to_vec()], &[], 3).unwrap();
        map.nodes.push(nodes[3].clone());
        let change = |add, remove| ReplicaChange { add, remove };
        let refuse = |map: &mut ShardMap, shard, c: ReplicaChange, why: &str| {
            let before = map.clone();
            let err = map.begin_replica_change(shard, c).unwrap_err();
            assert!(err.contains(why), "{c:?}: {err}");
            assert_eq!(*map, before, "{c:?} changed the map");
        };
        refuse(&mut map, 99, change(Some(4), Some(1)), "no shard 99");
        refuse(&mut map, 1, change(Some(9), Some(1)), "no node 9");
        refuse(&mut map, 1, change(Some(2), Some(2)), "to itself");
        refuse(&mut map, 1, change(None, None), "must add or remove");
        refuse(&mut map, 1, change(Some(2), Some(1)), "already holds a replica");
        refuse(&mut map, 1, change(Some(4), Some(4)), "to itself");
        refuse(&mut map, 1, change(Some(1), None), "already holds a replica");
        map.nodes[3].state = NodeState::Draining;
        refuse(&mut map, 1, change(Some(4), Some(1)), "takes no new replicas");
        map.nodes[3].state = NodeState::Up;
        // A shard down to one replica keeps it.
        map.shards.iter_mut().find(|s| s.id == 1).unwrap().replicas = vec![3];
        refuse(&mut map, 1, change(None, Some(3)), "last replica");
        refuse(&mut map, 1, change(None, Some(1)), "holds no replica");
        assert!(map.begin_replica_change(1, change(Some(4), Some(3))).unwrap(), "a move off it is fine");
    }

    /// A drain's move is recorded only while its node is still leaving: a
    /// drain cancelled between the meta leader's plan and the entry's apply
    /// starts no move (CI once saw two moves start after a cancel). A move
    /// recorded before the cancel still answers its retry.
    #[test]
    fn a_drain_move_is_refused_once_the_node_is_up_again() {
        let nodes = [node(1, "us-east"), node(2, "us-west"), node(3, "eu-west"), node(4, "eu-west")];
        let mut map = ShardMap::initial(&nodes[..3], &[b"g".to_vec()], &[], 3).unwrap();
        map.nodes.push(nodes[3].clone());
        let off_1 = ReplicaChange { add: Some(4), remove: Some(1) };
        let before = map.clone();
        let err = map.begin_drain_move(1, off_1).unwrap_err();
        assert!(err.contains("node 1 is up again"), "{err}");
        assert_eq!(map, before);
        assert!(map.begin_drain_move(1, ReplicaChange { add: Some(4), remove: None }).is_err(), "not a move off");

        map.set_node_state(1, NodeState::Draining).unwrap();
        assert_eq!(map.begin_drain_move(1, off_1), Ok(true));
        map.set_node_state(1, NodeState::Up).unwrap();
        assert_eq!(map.begin_drain_move(1, off_1), Ok(false), "a retry of the recorded move");
        let other = map.shards.iter().find(|s| s.id != 1 && s.placed_on(1)).map(|s| s.id).unwrap();
        assert!(map.begin_drain_move(other, ReplicaChange { add: Some(4), remove: Some(1) }).is_err());
    }

    /// A merge is recorded on the left shard, frozen only with aligned
    /// replicas, cancelled only before its freeze, and finished once: the
    /// left shard takes the right one's range at the new epoch and the right
    /// one leaves the map. Bad merges are refused and change nothing.
    #[test]
    fn a_merge_goes_intent_freeze_finish_and_refuses_what_cannot_merge() {
        let nodes = [node(1, "us-east"), node(2, "us-west"), node(3, "eu-west"), node(4, "eu-west")];
        let splits = vec![b"g".to_vec(), b"n".to_vec(), b"u".to_vec()];
        let mut map = ShardMap::initial(&nodes[..3], &splits, &[], 3).unwrap();
        map.nodes.push(nodes[3].clone());
        let before = map.clone();
        assert!(map.begin_merge(99, 0).unwrap_err().contains("no shard 99"));
        assert!(map.begin_merge(4, 0).unwrap_err().contains("last shard"));
        assert!(map.begin_merge(2, 7).unwrap_err().contains("epoch"));
        map.shards[2].change = Some(ReplicaChange { add: Some(4), remove: Some(3) });
        assert!(map.begin_merge(2, 0).unwrap_err().contains("changing replicas"));
        map.shards[2].change = None;
        map.nodes[2].state = NodeState::Draining;
        assert!(map.begin_merge(2, 0).unwrap_err().contains("draining"));
        map.nodes[2].state = NodeState::Up;
        assert_eq!(map, before, "refusals change nothing");

        assert!(map.begin_merge(2, 1).unwrap());
        assert!(!map.begin_merge(2, 1).unwrap(), "a retry records nothing");
        assert!(map.begin_merge(3, 0).unwrap_err().contains("merge of shards 2 and 3"));
        assert!(map.begin_merge(1, 0).unwrap_err().contains("merge of shards 2 and 3"));
        assert_eq!(map.merge_of(3), Some((2, MergeIntent { right: 3, frozen: false, sealed_at: None })));
        map.validate().unwrap();

        // Not aligned: no freeze. Aligned: frozen, and no more moves.
        map.shards[2].replicas = vec![1, 2, 4];
        assert!(map.freeze_merge(2).is_err());
        map.shards[2].replicas = vec![3, 2, 1];
        assert!(map.freeze_merge(2).unwrap());
        assert!(!map.freeze_merge(2).unwrap());
        assert!(map.cancel_merge(2, false).unwrap_err().contains("past its freeze"));
        let change = ReplicaChange { add: Some(4), remove: Some(3) };
        assert!(map.begin_replica_change(3, change).unwrap_err().contains("being merged"));
        assert!(map.finish_merge(2, 3, 2).is_err(), "not sealed yet");
        assert!(map.commit_merge(2, 17).unwrap());
        assert!(!map.commit_merge(2, 17).unwrap());
        assert!(map.commit_merge(2, 18).is_err());
        assert!(map.cancel_merge(2, true).unwrap_err().contains("past its freeze"), "sealed: never given up");

        assert!(map.finish_merge(2, 3, 2).unwrap());
        assert!(!map.finish_merge(2, 3, 2).unwrap(), "a retry records nothing");
        map.validate().unwrap();
        let merged = map.shard(2).unwrap();
        assert_eq!((merged.start.as_slice(), merged.end.as_deref()), (&b"g"[..], Some(&b"u"[..])));
        assert_eq!((merged.epoch, merged.merge), (2, None));
        assert!(map.shard(3).is_none());
        assert_eq!(map.shard_for_key(b"p").unwrap().id, 2);

        // Cancelled before its freeze: as if never recorded.
        let before = map.clone();
        assert!(map.begin_merge(1, 0).unwrap());
        assert!(map.cancel_merge(1, false).unwrap());
        assert!(!map.cancel_merge(1, false).unwrap());
        assert_eq!(map, before);
        // Frozen, then given up by the meta leader once the freeze is undone.
        assert!(map.begin_merge(1, 0).unwrap());
        map.shards[0].replicas = map.shards[1].replicas.clone();
        let before = map.clone();
        assert!(map.freeze_merge(1).unwrap());
        assert!(map.cancel_merge(1, true).unwrap());
        assert_eq!(map.shards[0].merge, None);
        assert_eq!(map.shards[1..], before.shards[1..]);
    }

    #[test]
    fn initial_map_covers_every_key_once() {
        let nodes = [node(1, "us-east"), node(2, "us-west"), node(3, "eu-west")];
        let splits = vec![b"g".to_vec(), b"n".to_vec(), b"u".to_vec()];
        let map = ShardMap::initial(&nodes, &splits, &[], 3).unwrap();
        assert_eq!(map.shards.len(), 4);
        for key in [&b""[..], b"a", b"g", b"mzz", b"n", b"u", b"\xff\xff"] {
            let s = map.shard_for_key(key).unwrap();
            assert!(s.contains(key), "{key:?} routed to {s:?}");
        }
        assert_eq!(map.shard_for_key(b"g").unwrap().id, 2);
        assert_eq!(map.shard_for_key(b"f\xff").unwrap().id, 1);
    }

    #[test]
    fn replicas_spread_over_regions() {
        let nodes = [
            node(1, "us-east"),
            node(2, "us-east"),
            node(3, "us-west"),
            node(4, "us-west"),
            node(5, "eu-west"),
            node(6, "eu-west"),
        ];
        let map = ShardMap::initial(&nodes, &[b"m".to_vec()], &[], 3).unwrap();
        for s in &map.shards {
            let mut regions: Vec<_> = s.replicas.iter().map(|r| map.node(*r).unwrap().region.clone()).collect();
            regions.sort();
            regions.dedup();
            assert_eq!(regions.len(), 3, "shard {} replicas {:?}", s.id, s.replicas);
        }
    }

    #[test]
    fn eventual_ranges_become_their_own_shards() {
        let nodes = [node(1, "us-east"), node(2, "us-west"), node(3, "eu-west")];
        let splits = vec![b"g".to_vec(), b"n".to_vec()];
        let ranges = vec![(b"ev/".to_vec(), Some(b"ev0".to_vec())), (b"x".to_vec(), None)];
        let map = ShardMap::initial(&nodes, &splits, &ranges, 3).unwrap();
        let mode = |key: &[u8]| map.shard_for_key(key).unwrap().mode;
        assert_eq!(mode(b"ev/a"), ShardMode::Eventual);
        assert_eq!(mode(b"ev0"), ShardMode::Raft);
        assert_eq!(mode(b"e"), ShardMode::Raft);
        assert_eq!(mode(b"h"), ShardMode::Raft);
        assert_eq!(mode(b"x"), ShardMode::Eventual);
        assert_eq!(mode(b"\xff"), ShardMode::Eventual);
        // [, ev/) [ev/, ev0) [ev0, g) [g, n) [n, x) [x, ..)
        assert_eq!(map.shards.len(), 6);
    }

    #[test]
    fn a_joining_node_gets_an_id_never_used_before() {
        let nodes = [node(1, "us-east"), node(2, "us-west"), node(3, "eu-west")];
        let mut map = ShardMap::initial(&nodes, &[], &[], 3).unwrap();
        assert_eq!(map.add_node("10.0.0.4:7004", "eu-west", "b"), Ok((4, true)));
        assert_eq!(map.node(4).unwrap().state, NodeState::Joining);
        // Asked again before it stored its id: the same id, nothing new.
        assert_eq!(map.add_node("10.0.0.4:7004", "eu-west", "b"), Ok((4, false)));
        assert_eq!(map.nodes.len(), 4);
        // The address of a member that is not removed is taken.
        let err = map.add_node("127.0.0.1:7001", "us-east", "").unwrap_err();
        assert!(err.contains("node 1's"), "{err}");
        let err = map.add_node("10.0.0.4:7004", "us-east", "b").unwrap_err();
        assert!(err.contains("node 4's"), "the same address from elsewhere is not a retry: {err}");
        assert!(map.add_node("nowhere", "us-east", "").unwrap_err().contains("HOST:PORT"));
        assert!(map.add_node("10.0.0.5:7005", "", "").unwrap_err().contains("region"));
        // A removed node's id is never handed out again, and its address
        // may serve a new member.
        map.set_node_state(4, NodeState::Removed).unwrap();
        assert_eq!(map.add_node("10.0.0.4:7004", "eu-west", "b"), Ok((5, true)));
        assert_eq!(map.set_node_state(5, NodeState::Up), Ok(true));
        assert!(map.set_node_state(5, NodeState::Joining).unwrap_err().contains("only a new node joins"));
        // Down and back.
        assert_eq!(map.set_node_state(5, NodeState::Down), Ok(true));
        assert_eq!(map.set_node_state(5, NodeState::Up), Ok(true));
        map.set_node_state(5, NodeState::Draining).unwrap();
        assert!(map.set_node_state(5, NodeState::Down).unwrap_err().contains("only an up node"));
    }

    #[test]
    fn bad_split_points_are_refused() {
        let nodes = [node(1, "a")];
        let err = ShardMap::initial(&nodes, &[b"n".to_vec(), b"g".to_vec()], &[], 3).unwrap_err();
        assert!(matches!(err, MapError::BadSplitPoints(_)));
        assert!(ShardMap::initial(&nodes, &[Vec::new()], &[], 3).is_err());
        assert_eq!(ShardMap::initial(&[], &[], &[], 3).unwrap_err(), MapError::NoNodes);
    }
}
