//! Node and cluster status, as reported by `Admin.NodeStatus`, and the
//! per-shard summary `kvctl status` prints.

use std::fmt;

use geokv_proto::admin as admin_pb;

use crate::Error;
use crate::shard_map::{NodeInfo, Shard, ShardMap};

/// A node's role in one Raft group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
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
            Role::Other(other) => other,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One node's view of one Raft group it hosts.
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
}

/// What one node says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub node: NodeInfo,
    /// False while the node is still starting.
    pub ready: bool,
    pub groups: Vec<GroupStatus>,
    pub uptime_ms: u64,
}

impl NodeStatus {
    pub(crate) fn from_proto(status: admin_pb::NodeStatusResponse) -> Result<NodeStatus, String> {
        let node = status.node.ok_or("node status without node info")?;
        Ok(NodeStatus {
            node: NodeInfo { node_id: node.node_id, addr: node.addr, region: node.region, zone: node.zone },
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
                })
                .collect(),
            uptime_ms: status.uptime_ms,
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
    ShardHealth { shard: shard.clone(), leader, named_leader_id, replicas_reporting: views.len() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(node_id: u64) -> NodeInfo {
        NodeInfo { node_id, addr: format!("127.0.0.1:700{node_id}"), region: format!("r{node_id}"), zone: "a".into() }
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
        }
    }

    fn shard(shard_id: u64) -> Shard {
        Shard { shard_id, epoch: 1, start: vec![], end: vec![], replicas: vec![], preferred_leader_region: None }
    }

    fn status(node_id: u64, groups: Vec<GroupStatus>) -> NodeStatus {
        NodeStatus { node: node(node_id), ready: true, groups, uptime_ms: 1 }
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
        assert_eq!(Role::parse("witness"), Role::Other("witness".into()));
        assert_eq!(Role::parse("witness").to_string(), "witness");
    }
}
