//! Node and cluster status, as reported by `Admin.NodeStatus`, and the
//! per-shard summary `kvctl status` prints.

use std::fmt;

use geokv_proto::admin as admin_pb;

use crate::Error;
use crate::shard_map::{NodeInfo, Shard, ShardMap};
use crate::types::ShardMode;

/// A node's role in one Raft group (or [`Role::Eventual`] for a replica of
/// an eventual shard, which has no leader).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
    /// A replica of an eventual shard: accepts writes itself, no leader.
    Eventual,
    /// A role this client does not know.
    Other(String),
}

impl Role {
    fn parse(role: &str) -> Role {
        match role {
            "leader" => Role::Leader,
            "follower" => Role::Follower,
            "candidate" => Role::Candidate,
            "learner" => Role::Learner,
            "shutdown" => Role::Shutdown,
            "eventual" => Role::Eventual,
            other => Role::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
            Role::Shutdown => "shutdown",
            Role::Eventual => "eventual",
            Role::Other(other) => other,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One node's view of one replica group it hosts (a Raft group, or its
/// replica of an eventual shard: then `role` is [`Role::Eventual`], there is
/// no leader nor term, and the `ec_*` fields say how replication is going).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStatus {
    pub shard_id: u64,
    pub role: Role,
    /// `None` when the node knows no leader.
    pub leader_id: Option<u64>,
    pub term: u64,
    pub last_log_index: u64,
    pub committed_index: u64,
    pub applied_index: u64,
    /// Log entries up to this index were purged (0 = none).
    pub purged_index: u64,
    /// Index of the last snapshot (0 = none).
    pub snapshot_index: u64,
    pub voters: Vec<u64>,
    pub epoch: u64,
    pub start: Vec<u8>,
    /// Empty means unbounded.
    pub end: Vec<u8>,
    pub mode: ShardMode,
    /// Eventual shards: writes this replica accepted (its outbox sequence).
    pub ec_last_seq: u64,
    /// Eventual shards: outbox entries still kept for some peer.
    pub ec_outbox_depth: u64,
    /// Eventual shards: how far each peer has acknowledged this replica's
    /// writes.
    pub ec_peers: Vec<EcPeer>,
    /// Eventual shards: tombstones still held (collected once every replica
    /// has seen them).
    pub ec_tombstones: u64,
    /// Why this Raft group is stopped on the node (role `shutdown`): its
    /// state on disk could not be read at start, or a storage error stopped
    /// it. `None` while it runs.
    pub error: Option<String>,
}

impl GroupStatus {
    /// The peer furthest behind this replica, by entries (then by age).
    pub fn ec_max_lag(&self) -> Option<&EcPeer> {
        self.ec_peers.iter().max_by_key(|peer| (peer.lag_entries, peer.lag_ms))
    }
}

/// How far one peer has acknowledged an eventual replica's writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcPeer {
    pub node_id: u64,
    /// The replica's outbox sequence the peer has acknowledged.
    pub acked_seq: u64,
    /// Writes not yet acknowledged (`ec_last_seq - acked_seq`).
    pub lag_entries: u64,
    /// Age of the oldest unacknowledged write, ms.
    pub lag_ms: u64,
    /// The peer fell behind what the outbox keeps and is being (or was) sent
    /// the whole range instead.
    pub resyncing: bool,
}

/// What one node says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub node: NodeInfo,
    /// False while the node is still starting.
    pub ready: bool,
    pub groups: Vec<GroupStatus>,
    pub uptime_ms: u64,
    /// What this node's member loop decided while it led the meta shard,
    /// since it started: `(kind, count)` (drain_move, rebalance_move,
    /// leader_transfer, split, merge, merge_align, merge_given_up,
    /// node_down, node_up).
    pub topology_decisions: Vec<(String, u64)>,
}

impl NodeStatus {
    pub(crate) fn from_proto(status: admin_pb::NodeStatusResponse) -> Result<NodeStatus, String> {
        let node = status.node.ok_or("node status without node info")?;
        Ok(NodeStatus {
            node: NodeInfo {
                node_id: node.node_id,
                addr: node.addr,
                region: node.region,
                zone: node.zone,
                state: crate::shard_map::NodeState::from_proto(node.state),
            },
            ready: status.ready,
            groups: status
                .groups
                .into_iter()
                .map(|group| GroupStatus {
                    shard_id: group.shard_id,
                    role: Role::parse(&group.role),
                    leader_id: (group.leader_id != 0).then_some(group.leader_id),
                    term: group.term,
                    last_log_index: group.last_log_index,
                    committed_index: group.committed_index,
                    applied_index: group.applied_index,
                    purged_index: group.purged_index,
                    snapshot_index: group.snapshot_index,
                    voters: group.voters,
                    epoch: group.epoch,
                    start: group.start,
                    end: group.end,
                    mode: ShardMode::from_proto(group.mode),
                    ec_last_seq: group.ec_last_seq,
                    ec_outbox_depth: group.ec_outbox_depth,
                    ec_peers: group
                        .ec_peers
                        .into_iter()
                        .map(|peer| EcPeer {
                            node_id: peer.node_id,
                            acked_seq: peer.acked_seq,
                            lag_entries: peer.lag_entries,
                            lag_ms: peer.lag_ms,
                            resyncing: peer.resyncing,
                        })
                        .collect(),
                    ec_tombstones: group.ec_tombstones,
                    error: (!group.error.is_empty()).then_some(group.error),
                })
                .collect(),
            uptime_ms: status.uptime_ms,
            topology_decisions: status.topology_decisions.into_iter().map(|d| (d.kind, d.count)).collect(),
        })
    }

    /// This node's view of `shard_id`, if it hosts it.
    pub fn group(&self, shard_id: u64) -> Option<&GroupStatus> {
        self.groups.iter().find(|group| group.shard_id == shard_id)
    }
}

/// One node of the map and what asking it for its status gave.
#[derive(Debug)]
pub struct NodeReport {
    pub node: NodeInfo,
    /// `Err` when the node did not answer.
    pub status: Result<NodeStatus, Error>,
}

/// The shard map and every node's status.
#[derive(Debug)]
pub struct ClusterStatus {
    pub map: ShardMap,
    /// In the map's node order.
    pub nodes: Vec<NodeReport>,
}

/// A shard's leader as seen by the leader itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardLeader {
    pub node: NodeInfo,
    pub group: GroupStatus,
}

/// One reachable replica of a shard and what it says about the shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub node: NodeInfo,
    pub group: GroupStatus,
}

/// One shard's health, as `kvctl status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardHealth {
    pub shard: Shard,
    /// The reachable node that reports itself leader with the highest term;
    /// `None` when no reachable node leads the shard.
    pub leader: Option<ShardLeader>,
    /// When there is no reachable leader: the leader the followers name (by
    /// the highest term), which may be a node that did not answer.
    pub named_leader_id: Option<u64>,
    /// How many reachable nodes host a replica of the shard.
    pub replicas_reporting: usize,
    /// Those replicas' views, in the map's node order.
    pub replicas: Vec<ReplicaStatus>,
}

impl ShardHealth {
    pub fn mode(&self) -> ShardMode {
        self.shard.mode
    }

    /// Whether the shard cannot take writes: a Raft shard without a
    /// reachable leader, or an eventual shard without any reachable replica.
    pub fn is_degraded(&self) -> bool {
        match self.shard.mode {
            ShardMode::Raft => self.leader.is_none(),
            ShardMode::Eventual => self.replicas_reporting == 0,
        }
    }
}

impl ClusterStatus {
    /// Nodes that did not answer.
    pub fn unreachable(&self) -> impl Iterator<Item = &NodeReport> {
        self.nodes.iter().filter(|report| report.status.is_err())
    }

    /// Each shard of the map with its leader, in key order.
    pub fn shards(&self) -> Vec<ShardHealth> {
        let answered: Vec<&NodeStatus> = self.nodes.iter().filter_map(|report| report.status.as_ref().ok()).collect();
        self.map.shards.iter().map(|shard| shard_health(shard, &answered)).collect()
    }
}

fn shard_health(shard: &Shard, answered: &[&NodeStatus]) -> ShardHealth {
    let views: Vec<(&NodeStatus, &GroupStatus)> =
        answered.iter().filter_map(|status| Some((*status, status.group(shard.shard_id)?))).collect();
    let leader = views
        .iter()
        .filter(|(_, group)| group.role == Role::Leader)
        .max_by_key(|(_, group)| group.term)
        .map(|(status, group)| ShardLeader { node: status.node.clone(), group: (*group).clone() });
    let named_leader_id = match &leader {
        Some(_) => None,
        None => views
            .iter()
            .filter(|(_, group)| group.leader_id.is_some())
            .max_by_key(|(_, group)| group.term)
            .and_then(|(_, group)| group.leader_id),
    };
    let replicas: Vec<ReplicaStatus> = views
        .iter()
        .map(|(status, group)| ReplicaStatus { node: status.node.clone(), group: (*group).clone() })
        .collect();
    ShardHealth { shard: shard.clone(), leader, named_leader_id, replicas_reporting: replicas.len(), replicas }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(node_id: u64) -> NodeInfo {
        NodeInfo {
            node_id,
            addr: format!("127.0.0.1:700{node_id}"),
            region: format!("r{node_id}"),
            zone: "a".into(),
            state: crate::shard_map::NodeState::Up,
        }
    }

    fn group(shard_id: u64, role: Role, leader_id: Option<u64>, term: u64) -> GroupStatus {
        GroupStatus {
            shard_id,
            role,
            leader_id,
            term,
            last_log_index: 10,
            committed_index: 9,
            applied_index: 8,
            purged_index: 0,
            snapshot_index: 0,
            voters: vec![1, 2, 3],
            epoch: 1,
            start: vec![],
            end: vec![],
            mode: ShardMode::Raft,
            ec_last_seq: 0,
            ec_outbox_depth: 0,
            ec_peers: vec![],
            ec_tombstones: 0,
            error: None,
        }
    }

    fn shard(shard_id: u64) -> Shard {
        Shard {
            shard_id,
            epoch: 1,
            start: vec![],
            end: vec![],
            replicas: vec![],
            preferred_leader_region: None,
            mode: ShardMode::Raft,
            adding_node: None,
            removing_node: None,
            merging_with: None,
            merge_frozen: false,
        }
    }

    fn eventual_group(shard_id: u64, lags: &[(u64, u64, u64)]) -> GroupStatus {
        GroupStatus {
            role: Role::Eventual,
            leader_id: None,
            term: 0,
            mode: ShardMode::Eventual,
            ec_last_seq: 40,
            ec_outbox_depth: 12,
            ec_peers: lags
                .iter()
                .map(|&(node_id, lag_entries, lag_ms)| EcPeer {
                    node_id,
                    acked_seq: 40 - lag_entries,
                    lag_entries,
                    lag_ms,
                    resyncing: false,
                })
                .collect(),
            ec_tombstones: 3,
            ..group(shard_id, Role::Eventual, None, 0)
        }
    }

    #[test]
    fn eventual_shards_are_healthy_without_a_leader() {
        let mut eventual = shard(9);
        eventual.mode = ShardMode::Eventual;
        let one = status(1, vec![eventual_group(9, &[(2, 0, 0), (3, 12, 340)])]);
        let two = status(2, vec![eventual_group(9, &[(1, 0, 0), (3, 12, 350)])]);
        let health = shard_health(&eventual, &[&one, &two]);
        assert_eq!(health.leader, None);
        assert_eq!(health.replicas_reporting, 2);
        assert_eq!(health.replicas.iter().map(|r| r.node.node_id).collect::<Vec<_>>(), [1, 2]);
        assert!(!health.is_degraded());
        let lag = health.replicas[0].group.ec_max_lag().unwrap();
        assert_eq!((lag.node_id, lag.lag_entries, lag.lag_ms), (3, 12, 340));
        assert!(shard_health(&eventual, &[]).is_degraded(), "no replica reachable");
        assert!(shard_health(&shard(9), &[&one]).is_degraded(), "a Raft shard needs a leader");
    }

    fn status(node_id: u64, groups: Vec<GroupStatus>) -> NodeStatus {
        NodeStatus { node: node(node_id), ready: true, groups, uptime_ms: 1, topology_decisions: Vec::new() }
    }

    #[test]
    fn leader_with_the_highest_term_wins() {
        // Node 1 is a deposed leader that has not heard of term 5 yet.
        let one = status(1, vec![group(7, Role::Leader, Some(1), 4)]);
        let two = status(2, vec![group(7, Role::Leader, Some(2), 5)]);
        let three = status(3, vec![group(7, Role::Follower, Some(2), 5)]);
        let health = shard_health(&shard(7), &[&one, &two, &three]);
        let leader = health.leader.unwrap();
        assert_eq!((leader.node.node_id, leader.group.term), (2, 5));
        assert_eq!(health.named_leader_id, None);
        assert_eq!(health.replicas_reporting, 3);
    }

    #[test]
    fn leaderless_shard_names_what_followers_believe() {
        let two = status(2, vec![group(7, Role::Follower, Some(1), 5)]);
        let three = status(3, vec![group(7, Role::Candidate, None, 6)]);
        let health = shard_health(&shard(7), &[&two, &three]);
        assert_eq!(health.leader, None);
        assert_eq!(health.named_leader_id, Some(1));
        assert_eq!(health.replicas_reporting, 2);
        let nobody = shard_health(&shard(8), &[&two, &three]);
        assert_eq!((nobody.leader, nobody.named_leader_id, nobody.replicas_reporting), (None, None, 0));
    }

    #[test]
    fn roles_parse() {
        assert_eq!(Role::parse("leader"), Role::Leader);
        assert_eq!(Role::parse("eventual"), Role::Eventual);
        assert_eq!(Role::parse("witness"), Role::Other("witness".into()));
        assert_eq!(Role::parse("witness").to_string(), "witness");
    }
}
