//! The client's copy of the shard map: which key range lives in which shard,
//! and where that shard's replicas are.
//!
//! The map is fetched with `Admin.GetShardMap` from any node, validated, and
//! then only read: a lookup is a binary search over the shards' start keys.
//! The client never edits the map; it replaces it wholesale with a newer one
//! when a node answers `WrongShard`.

use geokv_proto::{admin as admin_pb, kv as pb};

use crate::types::ShardMode;

/// A node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub node_id: u64,
    /// `host:port` of the node's gRPC server.
    pub addr: String,
    pub region: String,
    pub zone: String,
    /// Where the member is in its life (the map's record; whether it
    /// answers is [`crate::Client::cluster_status`]'s business).
    pub state: NodeState,
}

/// A member's life in the shard map.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum NodeState {
    /// May hold replicas and take new ones.
    #[default]
    Up,
    /// Its replicas are moving to other nodes; it takes no new ones.
    Draining,
    /// Draining, then removed once it holds no replica.
    Removing,
    /// Gone for good; its id is never reused.
    Removed,
    /// Admitted (`geokv --join`), catching up with the shard map.
    Joining,
    /// Unreachable for longer than the cluster's `node_dead_after_ms`: its
    /// replicas are being re-created elsewhere; up again when it answers.
    Down,
}

impl NodeState {
    pub fn from_proto(state: i32) -> NodeState {
        match geokv_proto::admin::NodeState::try_from(state) {
            Ok(geokv_proto::admin::NodeState::Draining) => NodeState::Draining,
            Ok(geokv_proto::admin::NodeState::Removing) => NodeState::Removing,
            Ok(geokv_proto::admin::NodeState::Removed) => NodeState::Removed,
            Ok(geokv_proto::admin::NodeState::Joining) => NodeState::Joining,
            Ok(geokv_proto::admin::NodeState::Down) => NodeState::Down,
            _ => NodeState::Up,
        }
    }

    /// `up`, `draining`, `removing`, `removed`, `joining`, `down`.
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

/// One replica of a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub node_id: u64,
    /// `host:port` of the node's gRPC server.
    pub addr: String,
    pub region: String,
    pub zone: String,
}

/// A contiguous key range `[start, end)` and its replica group: a Raft
/// group, or the leaderless replicas of an eventual shard (see `mode`).
///
/// Invariants (checked by [`ShardMap::from_proto`]):
/// - `end` is empty (unbounded) or `start < end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub shard_id: u64,
    /// Increases whenever the range or the replica set changes.
    pub epoch: u64,
    /// Inclusive start key; empty is the smallest key.
    pub start: Vec<u8>,
    /// Exclusive end key; empty means unbounded.
    pub end: Vec<u8>,
    pub replicas: Vec<Replica>,
    /// The region the cluster keeps this shard's leader in when it can.
    pub preferred_leader_region: Option<String>,
    /// How the shard replicates: through a Raft leader, or eventually (every
    /// replica accepts writes, last writer wins).
    pub mode: ShardMode,
    /// A replica change under way: the node joining (a learner until caught
    /// up; not in `replicas` yet) and the node leaving (still in `replicas`).
    pub adding_node: Option<u64>,
    pub removing_node: Option<u64>,
    /// A merge with the next shard under way (recorded on this, the left
    /// shard): the right shard, and whether the merge is past its freeze.
    pub merging_with: Option<u64>,
    pub merge_frozen: bool,
}

impl Shard {
    /// Whether `key` lies in `[start, end)`.
    pub fn contains(&self, key: &[u8]) -> bool {
        self.start.as_slice() <= key && (self.end.is_empty() || key < self.end.as_slice())
    }

    pub(crate) fn from_proto(shard: pb::ShardInfo) -> Shard {
        Shard {
            shard_id: shard.shard_id,
            epoch: shard.epoch,
            start: shard.start,
            end: shard.end,
            replicas: shard
                .replicas
                .into_iter()
                .map(|r| Replica { node_id: r.node_id, addr: r.addr, region: r.region, zone: r.zone })
                .collect(),
            preferred_leader_region: (!shard.preferred_leader_region.is_empty())
                .then_some(shard.preferred_leader_region),
            mode: ShardMode::from_proto(shard.mode),
            adding_node: (shard.adding_node != 0).then_some(shard.adding_node),
            removing_node: (shard.removing_node != 0).then_some(shard.removing_node),
            merging_with: (shard.merging_with != 0).then_some(shard.merging_with),
            merge_frozen: shard.merge_frozen,
        }
    }

    /// Whether a replica change is under way.
    pub fn is_changing(&self) -> bool {
        self.adding_node.is_some() || self.removing_node.is_some()
    }

    /// Whether `node` holds a replica of this shard or is being given one.
    pub fn is_placed_on(&self, node: u64) -> bool {
        self.adding_node == Some(node) || self.replicas.iter().any(|r| r.node_id == node)
    }
}

/// The cluster's nodes and data shards, as one node knew them.
///
/// Invariants (checked by [`ShardMap::from_proto`]):
/// - shards are sorted by `start` and do not overlap: every shard but the
///   last has a bounded `end` that is `<=` the next shard's `start`;
/// - shard ids are unique.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShardMap {
    /// Increases with every change of the map.
    pub version: u64,
    pub nodes: Vec<NodeInfo>,
    /// Data shards in key order.
    pub shards: Vec<Shard>,
}

impl ShardMap {
    /// Converts and validates a map received from a node.
    pub fn from_proto(map: admin_pb::ShardMap) -> Result<ShardMap, String> {
        let nodes = map
            .nodes
            .into_iter()
            .map(|n| NodeInfo {
                node_id: n.node_id,
                addr: n.addr,
                region: n.region,
                zone: n.zone,
                state: NodeState::from_proto(n.state),
            })
            .collect();
        let shards: Vec<Shard> = map.shards.into_iter().map(Shard::from_proto).collect();
        for shard in &shards {
            if !shard.end.is_empty() && shard.start >= shard.end {
                return Err(format!(
                    "shard {} has an empty or inverted range [{:?}, {:?})",
                    shard.shard_id, shard.start, shard.end
                ));
            }
        }
        for pair in shards.windows(2) {
            let (left, right) = (&pair[0], &pair[1]);
            if left.end.is_empty() || left.end > right.start {
                return Err(format!("shards {} and {} overlap or are out of key order", left.shard_id, right.shard_id));
            }
        }
        let mut ids: Vec<u64> = shards.iter().map(|s| s.shard_id).collect();
        ids.sort_unstable();
        if let Some(pair) = ids.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(format!("shard {} is listed twice", pair[0]));
        }
        Ok(ShardMap { version: map.version, nodes, shards })
    }

    /// The shard whose range contains `key`, if any.
    pub fn shard_for_key(&self, key: &[u8]) -> Option<&Shard> {
        let after = self.shards.partition_point(|shard| shard.start.as_slice() <= key);
        let shard = self.shards.get(after.checked_sub(1)?)?;
        shard.contains(key).then_some(shard)
    }

    /// The shard with this id, if the map has it.
    pub fn shard(&self, shard_id: u64) -> Option<&Shard> {
        self.shards.iter().find(|shard| shard.shard_id == shard_id)
    }

    /// The node with this id, if the map has it.
    pub fn node(&self, node_id: u64) -> Option<&NodeInfo> {
        self.nodes.iter().find(|node| node.node_id == node_id)
    }

    /// The address of a node, from the node list or any shard's replicas.
    pub fn addr_of(&self, node_id: u64) -> Option<&str> {
        if let Some(node) = self.node(node_id) {
            return Some(&node.addr);
        }
        self.shards
            .iter()
            .flat_map(|shard| &shard.replicas)
            .find(|replica| replica.node_id == node_id)
            .map(|replica| replica.addr.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(shard_id: u64, start: &str, end: &str) -> pb::ShardInfo {
        pb::ShardInfo {
            shard_id,
            epoch: 1,
            start: start.as_bytes().to_vec(),
            end: end.as_bytes().to_vec(),
            replicas: vec![pb::Replica {
                node_id: 1,
                addr: "127.0.0.1:7001".into(),
                region: "eu".into(),
                zone: "a".into(),
            }],
            ..Default::default()
        }
    }

    fn map(shards: Vec<pb::ShardInfo>) -> Result<ShardMap, String> {
        ShardMap::from_proto(admin_pb::ShardMap { version: 3, nodes: vec![], shards })
    }

    #[test]
    fn lookup_with_unbounded_ends() {
        let map = map(vec![shard(1, "", "g"), shard(2, "g", "p"), shard(3, "p", "")]).unwrap();
        let id = |key: &[u8]| map.shard_for_key(key).map(|s| s.shard_id);
        assert_eq!(id(b""), Some(1));
        assert_eq!(id(b"a"), Some(1));
        assert_eq!(id(b"f\xff\xff"), Some(1));
        assert_eq!(id(b"g"), Some(2));
        assert_eq!(id(b"o"), Some(2));
        assert_eq!(id(b"p"), Some(3));
        assert_eq!(id(b"\xff\xff\xff"), Some(3));
        assert_eq!(map.addr_of(1), Some("127.0.0.1:7001"));
        assert_eq!(map.addr_of(9), None);
    }

    #[test]
    fn lookup_in_a_map_with_holes() {
        let map = map(vec![shard(1, "b", "d"), shard(2, "f", "h")]).unwrap();
        let id = |key: &[u8]| map.shard_for_key(key).map(|s| s.shard_id);
        assert_eq!(id(b"a"), None);
        assert_eq!(id(b"b"), Some(1));
        assert_eq!(id(b"d"), None);
        assert_eq!(id(b"g"), Some(2));
        assert_eq!(id(b"h"), None);
        assert_eq!(ShardMap::default().shard_for_key(b"x"), None);
    }

    #[test]
    fn single_unbounded_shard_holds_everything() {
        let map = map(vec![shard(7, "", "")]).unwrap();
        assert_eq!(map.shard_for_key(b"").unwrap().shard_id, 7);
        assert_eq!(map.shard_for_key(b"zzz").unwrap().shard_id, 7);
    }

    #[test]
    fn shard_mode_is_kept() {
        let mut eventual = shard(2, "m", "");
        eventual.mode = pb::ShardMode::Eventual as i32;
        let mut unknown = shard(3, "t", "");
        unknown.mode = 99;
        let map = map(vec![
            shard(1, "", "m"),
            {
                eventual.end = b"t".to_vec();
                eventual
            },
            unknown,
        ])
        .unwrap();
        assert_eq!(map.shard(1).unwrap().mode, ShardMode::Raft);
        assert_eq!(map.shard_for_key(b"p").unwrap().mode, ShardMode::Eventual);
        assert_eq!(map.shard(3).unwrap().mode, ShardMode::Raft, "unknown modes route like Raft");
    }

    #[test]
    fn invalid_maps_are_refused() {
        assert!(map(vec![shard(1, "b", "a")]).is_err(), "inverted range");
        assert!(map(vec![shard(1, "a", "a")]).is_err(), "empty range");
        assert!(map(vec![shard(1, "", ""), shard(2, "m", "")]).is_err(), "unbounded not last");
        assert!(map(vec![shard(1, "", "n"), shard(2, "m", "")]).is_err(), "overlap");
        assert!(map(vec![shard(1, "m", ""), shard(2, "", "m")]).is_err(), "out of order");
        assert!(map(vec![shard(1, "", "m"), shard(1, "m", "")]).is_err(), "duplicate id");
    }
}
