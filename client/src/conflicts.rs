//! The conflict logs of eventual shards: writes that were acknowledged to
//! their client and then lost, under last-writer-wins, to a concurrent write
//! they had not seen.
//!
//! Each node keeps its own bounded log of the writes *it* discarded
//! (`eventual.conflict_log_entries` entries; older ones are dropped), so the
//! same lost write is usually recorded by several nodes: every replica that
//! received both writes. [`Client::conflicts`] asks every node of the shard
//! map (`Admin.ListConflicts`), merges the answers, folds the copies of one
//! conflict into one entry that lists every node that recorded it, and sorts
//! the result newest first. A node that does not answer is reported in
//! [`ConflictReport::nodes`], not skipped silently: its log may hold
//! conflicts no other node recorded.

use std::collections::HashMap;

use geokv_proto::admin as admin_pb;

use crate::client::{admin_client, timed_out};
use crate::error::{Failure, classify};
use crate::shard_map::NodeInfo;
use crate::types::Hlc;
use crate::{Client, Error};

/// How many conflicts a node returns, and the merged report keeps, when the
/// caller asks for `limit` 0.
pub const DEFAULT_CONFLICT_LIMIT: u32 = 100;

/// One write that lost under last-writer-wins without its writer having seen
/// the winner, as recorded by one or more nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub shard_id: u64,
    pub key: Vec<u8>,
    /// The discarded write's timestamp, and the replica that accepted it.
    pub loser_hlc: Hlc,
    pub loser_origin: u64,
    /// The discarded write was a delete.
    pub loser_deleted: bool,
    /// The discarded value (`None` for a delete, or when the node did not
    /// keep it).
    pub loser_value: Option<Vec<u8>>,
    /// The write that won (its timestamp is newer), and the replica that
    /// accepted it.
    pub winner_hlc: Hlc,
    pub winner_origin: u64,
    /// The winner deleted the key.
    pub winner_deleted: bool,
    /// Every node that recorded this conflict, ascending.
    pub recorded_by: Vec<u64>,
    /// When it was first recorded: the earliest recording node's wall clock,
    /// ms since the Unix epoch.
    pub recorded_at_ms: u64,
}

impl Conflict {
    fn from_proto(conflict: admin_pb::Conflict) -> Conflict {
        Conflict {
            shard_id: conflict.shard_id,
            key: conflict.key,
            loser_hlc: Hlc::from_proto(conflict.loser_hlc).unwrap_or_default(),
            loser_origin: conflict.loser_origin,
            loser_deleted: conflict.loser_deleted,
            loser_value: conflict.loser_value.filter(|_| !conflict.loser_deleted),
            winner_hlc: Hlc::from_proto(conflict.winner_hlc).unwrap_or_default(),
            winner_origin: conflict.winner_origin,
            winner_deleted: conflict.winner_deleted,
            recorded_by: vec![conflict.recorded_by],
            recorded_at_ms: conflict.recorded_at_ms,
        }
    }

    /// What makes two nodes' records the same conflict.
    fn identity(&self) -> (u64, &[u8], Hlc, Hlc) {
        (self.shard_id, &self.key, self.loser_hlc, self.winner_hlc)
    }
}

/// One node's conflict log, as it described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictLogInfo {
    /// How many conflicts it returned for this request.
    pub returned: usize,
    /// Conflicts it recorded since its log began, including those the
    /// bounded log has since dropped.
    pub total_recorded: u64,
    /// The log's bound (`eventual.conflict_log_entries`).
    pub capacity: u64,
}

impl ConflictLogInfo {
    /// Whether the node recorded more conflicts than its log keeps, so some
    /// were dropped.
    pub fn overflowed(&self) -> bool {
        self.total_recorded > self.capacity
    }

    /// Whether the node may hold more than it returned under `limit`.
    fn may_have_more(&self, limit: usize) -> bool {
        self.returned >= limit && self.total_recorded > self.returned as u64
    }
}

/// One node of the map and what asking it for its conflict log gave.
#[derive(Debug)]
pub struct NodeConflicts {
    pub node: NodeInfo,
    /// `Err` when the node did not answer (or refused).
    pub log: Result<ConflictLogInfo, Error>,
}

/// Every node's conflict log, merged.
#[derive(Debug)]
pub struct ConflictReport {
    /// Newest first (by when first recorded, then by the winner's and the
    /// loser's timestamps); one entry per distinct conflict.
    pub conflicts: Vec<Conflict>,
    /// Whether more conflicts may exist than listed: the merged list was cut
    /// to the limit, or some node returned as many as the limit allowed
    /// while having recorded more.
    pub truncated: bool,
    /// Every node of the shard map, in map order.
    pub nodes: Vec<NodeConflicts>,
}

impl ConflictReport {
    /// Nodes that did not answer.
    pub fn unreachable(&self) -> impl Iterator<Item = &NodeConflicts> {
        self.nodes.iter().filter(|node| node.log.is_err())
    }
}

impl Client {
    /// Collects the conflict logs of every node in the shard map: writes to
    /// eventual shards that were acknowledged and then lost to a concurrent
    /// write with a newer timestamp.
    ///
    /// `shard`: only this shard (`None`: every eventual shard). `limit`: at
    /// most this many conflicts per node and in the merged report (0: 100).
    /// Nodes are asked concurrently, one RPC each, no retries; a node that
    /// does not answer is reported in [`ConflictReport::nodes`]. Fails only
    /// when the shard map cannot be fetched.
    pub async fn conflicts(&self, shard: Option<u64>, limit: u32) -> Result<ConflictReport, Error> {
        let map = self.refresh_shard_map().await?;
        let mut tasks = tokio::task::JoinSet::new();
        for (index, node) in map.nodes.iter().enumerate() {
            let client = self.clone();
            let addr = node.addr.clone();
            tasks.spawn(async move { (index, client.node_conflicts(&addr, shard.unwrap_or(0), limit).await) });
        }
        type Answer = Result<(ConflictLogInfo, Vec<Conflict>), Error>;
        let mut answers: Vec<Option<Answer>> = map.nodes.iter().map(|_| None).collect();
        while let Some(joined) = tasks.join_next().await {
            let (index, answer) = joined.map_err(|err| Error::Protocol(format!("conflict log task failed: {err}")))?;
            answers[index] = Some(answer);
        }
        let mut per_node = Vec::new();
        let mut nodes = Vec::new();
        for (node, answer) in map.nodes.iter().zip(answers) {
            let log = answer.expect("every conflict log task reports once").map(|(info, conflicts)| {
                per_node.push(conflicts);
                info
            });
            nodes.push(NodeConflicts { node: node.clone(), log });
        }
        let limit = usize::try_from(if limit == 0 { DEFAULT_CONFLICT_LIMIT } else { limit }).unwrap_or(usize::MAX);
        let (conflicts, cut) = merge_conflicts(per_node, limit);
        let node_full = nodes.iter().any(|node| node.log.as_ref().is_ok_and(|log| log.may_have_more(limit)));
        Ok(ConflictReport { conflicts, truncated: cut || node_full, nodes })
    }

    /// One node's conflict log. One RPC, no retries.
    async fn node_conflicts(
        &self,
        addr: &str,
        shard_id: u64,
        limit: u32,
    ) -> Result<(ConflictLogInfo, Vec<Conflict>), Error> {
        let failed = |failure: Failure| match failure {
            Failure::Rejected { code, message } => Error::refused(code, format!("{addr}: {message}")),
            Failure::InvalidArgument(message) => Error::InvalidArgument(format!("{addr}: {message}")),
            failure => Error::Unavailable { attempts: 1, cause: format!("{addr}: {}", failure.describe()) },
        };
        let mut admin = admin_client(self.channel(addr).map_err(failed)?);
        let timeout = self.config().rpc_timeout;
        let mut request = tonic::Request::new(admin_pb::ListConflictsRequest { shard_id, limit });
        request.set_timeout(timeout);
        let reply = match tokio::time::timeout(timeout, admin.list_conflicts(request)).await {
            Ok(Ok(reply)) => reply.into_inner(),
            Ok(Err(status)) => return Err(failed(classify(&status))),
            Err(_) => return Err(failed(timed_out(timeout))),
        };
        let info = ConflictLogInfo {
            returned: reply.conflicts.len(),
            total_recorded: reply.total_recorded,
            capacity: reply.capacity,
        };
        Ok((info, reply.conflicts.into_iter().map(Conflict::from_proto).collect()))
    }
}

/// Merges the nodes' lists: records of the same conflict (same shard, key,
/// loser and winner timestamps) by several nodes become one entry listing
/// every recording node and the earliest recording time; the result is
/// sorted newest first and cut to `limit`. Returns whether it was cut.
pub(crate) fn merge_conflicts(per_node: Vec<Vec<Conflict>>, limit: usize) -> (Vec<Conflict>, bool) {
    let mut merged: Vec<Conflict> = Vec::new();
    let mut index: HashMap<(u64, Vec<u8>, Hlc, Hlc), usize> = HashMap::new();
    for conflict in per_node.into_iter().flatten() {
        let (shard_id, key, loser, winner) = conflict.identity();
        match index.get(&(shard_id, key.to_vec(), loser, winner)) {
            Some(&at) => {
                let known = &mut merged[at];
                known.recorded_by.extend(conflict.recorded_by);
                known.recorded_at_ms = known.recorded_at_ms.min(conflict.recorded_at_ms);
                if known.loser_value.is_none() {
                    known.loser_value = conflict.loser_value;
                }
            }
            None => {
                index.insert((shard_id, key.to_vec(), loser, winner), merged.len());
                merged.push(conflict);
            }
        }
    }
    for conflict in &mut merged {
        conflict.recorded_by.sort_unstable();
        conflict.recorded_by.dedup();
    }
    merged.sort_by(|a, b| {
        (b.recorded_at_ms, b.winner_hlc, b.loser_hlc)
            .cmp(&(a.recorded_at_ms, a.winner_hlc, a.loser_hlc))
            .then_with(|| (a.shard_id, &a.key).cmp(&(b.shard_id, &b.key)))
    });
    let truncated = merged.len() > limit;
    merged.truncate(limit);
    (merged, truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conflict(key: &str, loser: (u64, u64), winner: (u64, u64), by: u64, at: u64) -> Conflict {
        Conflict {
            shard_id: 2,
            key: key.as_bytes().to_vec(),
            loser_hlc: Hlc::new(loser.0, 0, loser.1),
            loser_origin: loser.1,
            loser_deleted: false,
            loser_value: Some(b"lost".to_vec()),
            winner_hlc: Hlc::new(winner.0, 0, winner.1),
            winner_origin: winner.1,
            winner_deleted: false,
            recorded_by: vec![by],
            recorded_at_ms: at,
        }
    }

    #[test]
    fn copies_recorded_by_several_nodes_fold_into_one() {
        let one = vec![conflict("k", (100, 1), (101, 2), 1, 5_000)];
        let two = vec![conflict("k", (100, 1), (101, 2), 2, 4_990)];
        let three = vec![conflict("k", (100, 1), (101, 2), 3, 5_010), conflict("k", (100, 1), (101, 2), 3, 5_010)];
        let (merged, truncated) = merge_conflicts(vec![three, one, two], 10);
        assert!(!truncated);
        assert_eq!(merged.len(), 1, "{merged:?}");
        assert_eq!(merged[0].recorded_by, [1, 2, 3]);
        assert_eq!(merged[0].recorded_at_ms, 4_990, "the earliest recording");
    }

    #[test]
    fn distinct_conflicts_stay_apart() {
        // Same loser, different winners; same key in another shard; another key.
        let mut other_shard = conflict("k", (100, 1), (101, 2), 1, 5_000);
        other_shard.shard_id = 3;
        let lists = vec![
            vec![conflict("k", (100, 1), (101, 2), 1, 5_000), other_shard],
            vec![conflict("k", (100, 1), (102, 3), 2, 5_000), conflict("j", (100, 1), (101, 2), 2, 5_000)],
        ];
        let (merged, _) = merge_conflicts(lists, 10);
        assert_eq!(merged.len(), 4, "{merged:?}");
        assert!(merged.iter().all(|c| c.recorded_by.len() == 1));
    }

    #[test]
    fn newest_first_then_cut_to_the_limit() {
        let lists = vec![
            vec![conflict("a", (100, 1), (101, 2), 1, 1_000), conflict("b", (200, 1), (201, 2), 1, 3_000)],
            vec![conflict("c", (300, 3), (301, 2), 2, 2_000), conflict("b", (200, 1), (201, 2), 2, 3_500)],
            // Recorded at the same time: the newer winner goes first.
            vec![conflict("d", (400, 3), (402, 1), 3, 1_000)],
        ];
        let (merged, truncated) = merge_conflicts(lists.clone(), 10);
        let keys: Vec<&[u8]> = merged.iter().map(|c| c.key.as_slice()).collect();
        assert_eq!(keys, [b"b".as_slice(), b"c", b"d", b"a"]);
        assert!(!truncated);
        let (cut, truncated) = merge_conflicts(lists, 2);
        assert_eq!(cut.len(), 2);
        assert!(truncated);
        assert_eq!(cut[0].key, b"b");
        assert_eq!(cut[0].recorded_by, [1, 2]);
    }

    #[test]
    fn conversion_drops_a_deleted_losers_value_and_keeps_the_recorder() {
        let proto = admin_pb::Conflict {
            shard_id: 4,
            key: b"k".to_vec(),
            winner_hlc: Some(geokv_proto::kv::Hlc { physical_ms: 10, logical: 1, node_id: 2 }),
            winner_origin: 2,
            loser_hlc: Some(geokv_proto::kv::Hlc { physical_ms: 10, logical: 0, node_id: 1 }),
            loser_origin: 1,
            loser_deleted: true,
            loser_value: Some(vec![]),
            recorded_by: 3,
            recorded_at_ms: 99,
            ..Default::default()
        };
        let conflict = Conflict::from_proto(proto);
        assert_eq!(conflict.loser_value, None);
        assert_eq!(conflict.recorded_by, [3]);
        assert!(conflict.loser_hlc < conflict.winner_hlc);
        assert_eq!(conflict.winner_hlc.to_string(), "10.1@2");
    }

    #[test]
    fn overflow_is_reported() {
        let info = ConflictLogInfo { returned: 100, total_recorded: 1_200, capacity: 1_000 };
        assert!(info.overflowed());
        assert!(!ConflictLogInfo { total_recorded: 1_000, ..info }.overflowed());
        assert!(info.may_have_more(100));
        assert!(!info.may_have_more(101));
        assert!(!ConflictLogInfo { total_recorded: 100, ..info }.may_have_more(100));
    }
}
