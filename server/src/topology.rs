//! Replica changes (moves), carried out: the loops that turn a change the
//! shard map records ([`crate::shards::ReplicaChange`]) into a Raft
//! membership change, and that delete a replica the map no longer places on
//! this node.
//!
//! A change is a sequence of small steps, each checked against the group's
//! own state before it is taken, so that a new leader (or this one after a
//! failure) resumes a half-done change instead of starting it again:
//!
//! 1. the leader makes sure a new replica will get a snapshot, not the log
//!    from its start (it snapshots and purges its log once);
//! 2. it adds the new replica as a learner: a learner does not vote and
//!    counts for no quorum, so the group's fault tolerance is unchanged
//!    however long the learner takes;
//! 3. once the learner's log is within [`MAX_PROMOTION_LAG`] entries of the
//!    leader's, the leader hands leadership away if it is the replica
//!    leaving, then changes the voters by joint consensus (openraft's
//!    `change_membership`: the joint configuration needs a majority of the old
//!    voters and of the new ones, so it tolerates what both tolerate);
//! 4. once the new voters are committed, the map records the new replica
//!    set ([`MetaCommand::FinishReplicaChange`]), and the replica that left
//!    deletes its copy ([`retire_replicas`]).
//!
//! What to change is decided elsewhere: an operator's `kvctl shard move`,
//! or [`crate::placement`] for a node being drained ([`drain_nodes`] records
//! its moves); this module carries it out.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::{BasicNode, ChangeMembers};

use crate::node::Node;
use crate::placement;
use crate::raft::ShardRaft;
use crate::raft::command::{Command, CommandResult, MetaCommand};
use crate::raft::state_machine::stored_range;
use crate::shards::{META_SHARD_ID, NodeState, ReplicaChange, ShardDesc, describe};

/// How often every node looks for replica changes to carry out (as the
/// shard's leader) and for replicas to retire.
const RECONCILE_INTERVAL: Duration = Duration::from_millis(500);

/// A learner whose log is at most this many entries behind the leader's is
/// caught up: promoting it cannot stall commits for longer than sending
/// that many entries takes.
pub const MAX_PROMOTION_LAG: u64 = 64;

/// A fault-injection switch for the harness's negative control, never for
/// production: when this environment variable is `1`, a learner is made a
/// voter without waiting for it to catch up (what step 3 prevents), so that
/// a test can show the fault tolerance that costs.
pub const UNSAFE_PROMOTE_AT_ONCE: &str = "GEOKV_UNSAFE_PROMOTE_LEARNERS_AT_ONCE";

fn unsafe_promote_at_once() -> bool {
    static SET: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SET.get_or_init(|| std::env::var(UNSAFE_PROMOTE_AT_ONCE).is_ok_and(|v| v == "1"))
}

/// Bound on waiting for the leader's snapshot and log purge (step 1).
const SNAPSHOT_WAIT: Duration = Duration::from_secs(30);

/// Carries out, for every shard this node leads, the replica change the map
/// records. Each shard's steps run in their own task (one at a time per
/// shard), so a slow change does not hold up the others.
pub async fn carry_out_replica_changes(node: Arc<Node>) {
    let running: Arc<Mutex<HashSet<u64>>> = Arc::default();
    while node.is_ready() {
        tokio::time::sleep(RECONCILE_INTERVAL).await;
        let map = node.shard_map();
        for desc in map.shards.iter().filter(|s| s.change.is_some() && !s.is_eventual()) {
            let Some(raft) = node.group(desc.id).await else { continue };
            if !raft.is_leader() || !running.lock().expect("running changes").insert(desc.id) {
                continue;
            }
            let (node, desc, running) = (node.clone(), desc.clone(), running.clone());
            tokio::spawn(async move {
                let change = desc.change.expect("filtered on a change");
                match step(&node, &raft, &desc, change).await {
                    Ok(Progress::Waiting(why)) => tracing::debug!(shard = desc.id, "replica change waits: {why}"),
                    Ok(Progress::Done) => {
                        tracing::info!(shard = desc.id, change = %describe(&change), "replica change made")
                    }
                    Err(e) => {
                        tracing::warn!(shard = desc.id, change = %describe(&change), cause = %e, "replica change step failed")
                    }
                }
                running.lock().expect("running changes").remove(&desc.id);
            });
        }
    }
}

/// What one pass over a change achieved.
#[derive(Debug)]
enum Progress {
    /// Not finished; the reason, for the log.
    Waiting(String),
    /// The group's voters are the new set and the map records it.
    Done,
}

/// Takes the next step of `change` on `raft`, which this node leads.
async fn step(node: &Node, raft: &ShardRaft, desc: &ShardDesc, change: ReplicaChange) -> Result<Progress, String> {
    let me = node.config.node_id;
    let target: BTreeSet<u64> = change.apply_to(&desc.replicas).into_iter().collect();
    let m = raft.metrics().borrow_watched().clone();
    let committed = m.committed_membership_config.membership().clone();
    let committed_voters: BTreeSet<u64> = committed.voter_ids().collect();
    if committed.get_joint_config().len() == 1 && committed_voters == target {
        return finish(node, desc.id, change).await;
    }
    // The map may record a split this group has not applied yet: a new
    // replica's snapshot would then hold the other half's keys.
    let local = stored_range(&node.storage, desc.id).map_err(|e| e.to_string())?;
    if local.as_ref().is_some_and(|(start, end)| *start != desc.start || *end != desc.end) {
        return Ok(Progress::Waiting("this group has not applied a split the map records".into()));
    }
    if let Some(add) = change.add {
        let is_member = m.membership_config.membership().get_node(&add).is_some();
        if !is_member {
            ensure_log_purged(raft).await?;
            let map = node.shard_map();
            let addr = map.node(add).map(|n| n.addr.clone()).ok_or_else(|| format!("no node {add} in the map"))?;
            raft.add_learner(add, BasicNode::new(addr), false).await.map_err(|e| e.to_string())?;
            return Ok(Progress::Waiting(format!("node {add} added as a learner")));
        }
        let last = m.last_log_index.unwrap_or(0);
        let matched = m.replication.as_ref().and_then(|r| r.get(&add)).and_then(|l| l.as_ref()).map(|l| l.index);
        if matched.is_none() {
            // Nothing sent yet, maybe by an earlier leader: this one, too,
            // must send a snapshot first.
            ensure_log_purged(raft).await?;
        }
        match matched {
            Some(index) if index + MAX_PROMOTION_LAG >= last => {}
            _ if unsafe_promote_at_once() => {
                tracing::warn!(
                    shard = desc.id,
                    learner = add,
                    "{UNSAFE_PROMOTE_AT_ONCE} set: promoting a learner that has not caught up"
                )
            }
            _ => return Ok(Progress::Waiting(format!("learner {add} at {matched:?}, the leader at {last}"))),
        }
    }
    if change.remove == Some(me) {
        // A leader does not remove itself: it hands leadership to a voter
        // that stays, whose own pass continues the change.
        let last = m.last_log_index.unwrap_or(0);
        let caught_up = |v: &u64| {
            m.replication
                .as_ref()
                .and_then(|r| r.get(v))
                .and_then(|l| l.as_ref())
                .is_some_and(|l| l.index + MAX_PROMOTION_LAG >= last)
        };
        let to = committed_voters.iter().copied().filter(|v| *v != me && target.contains(v)).find(caught_up);
        let Some(to) = to else { return Ok(Progress::Waiting("no caught-up voter to hand leadership to".into())) };
        raft.trigger().transfer_leader(to).await.map_err(|e| e.to_string())?;
        return Ok(Progress::Waiting(format!("leadership handed to node {to}, which is staying")));
    }
    // Joint consensus: openraft proposes the joint configuration (old and new
    // voters), then, once it is committed, the new one; from a joint
    // configuration left by a failed leader it proposes the new one only.
    raft.change_membership(ChangeMembers::ReplaceAllVoters(target.clone()), false).await.map_err(|e| e.to_string())?;
    tracing::info!(shard = desc.id, voters = ?target, "group voters changed");
    finish(node, desc.id, change).await
}

/// Records in the map that the change was made.
async fn finish(node: &Node, shard: u64, change: ReplicaChange) -> Result<Progress, String> {
    let cmd = Command::Meta(MetaCommand::FinishReplicaChange { shard, change });
    match node.propose_internal(META_SHARD_ID, &cmd).await? {
        CommandResult::Meta { .. } => Ok(Progress::Done),
        CommandResult::Rejected(r) => Err(format!("the shard map refused to record the change: {r}")),
        other => Err(format!("unexpected answer from the meta shard: {other:?}")),
    }
}

/// Makes sure this leader's log no longer starts at the group's beginning,
/// so that a replica with an empty log is sent a snapshot (the shard's
/// data), never the log from its first entry (which, for a shard made by a
/// split, does not hold the data the split handed over). Once per leader:
/// a snapshot, then the log purged up to it.
async fn ensure_log_purged(raft: &ShardRaft) -> Result<(), String> {
    if raft.metrics().borrow_watched().purged.is_some() {
        return Ok(());
    }
    let applied = raft.metrics().borrow_watched().last_applied.as_ref().map(|l| l.index);
    raft.trigger().snapshot().await.map_err(|e| e.to_string())?;
    let snapshot = raft
        .wait(Some(SNAPSHOT_WAIT))
        .metrics(|m| m.snapshot.as_ref().map(|s| s.index) >= applied, "snapshot for a new replica")
        .await
        .map_err(|e| format!("no snapshot in time: {e}"))?
        .snapshot
        .as_ref()
        .map(|s| s.index)
        .ok_or("no snapshot was built")?;
    raft.trigger().purge_log(snapshot).await.map_err(|e| e.to_string())?;
    raft.wait(Some(SNAPSHOT_WAIT))
        .metrics(|m| m.purged.is_some(), "log purged for a new replica")
        .await
        .map_err(|e| format!("log not purged in time: {e}"))?;
    tracing::info!(snapshot, "log purged up to a snapshot: a new replica is sent the snapshot first");
    Ok(())
}

/// Deletes replicas this node hosts that the map no longer places here: the
/// shard's group committed voters without this node (the map records a
/// finished change only then). A shard the map does not know (a split's
/// right half that this node applied before its map did) is left alone.
pub async fn retire_replicas(node: Arc<Node>) {
    let me = node.config.node_id;
    while node.is_ready() {
        tokio::time::sleep(RECONCILE_INTERVAL).await;
        let map = node.shard_map();
        for (shard, _) in node.groups().await {
            let Some(desc) = map.shard(shard).filter(|d| !d.is_eventual()) else { continue };
            if shard == META_SHARD_ID || desc.placed_on(me) {
                continue;
            }
            // Only the part of the shard's range both this replica and the
            // map agree on: wider here means a split this replica has not
            // applied, whose other half is not this group's to delete.
            let local = match stored_range(&node.storage, shard) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(shard, cause = %e, "cannot read the range of a replica to retire");
                    continue;
                }
            };
            let range = local.and_then(|local| intersect(&local, &(desc.start.clone(), desc.end.clone())));
            if let Err(e) = node.retire_group(shard, range.as_ref()).await {
                tracing::error!(shard, cause = %e, "cannot delete a replica that left its shard");
            }
        }
    }
}

/// On the meta shard's leader, every [`RECONCILE_INTERVAL`]: makes the
/// cluster match the members' states in the map. It hands the meta shard's
/// leadership away from a leaving node, takes removed nodes out of the meta
/// shard's voters, records a removing node as removed once it holds no
/// replica, and records the moves that empty leaving nodes
/// ([`placement::plan_drains`]; the shards' leaders carry them out). Each
/// pass looks at the map afresh, so a new meta leader resumes where the
/// last one stopped.
pub async fn drain_nodes(node: Arc<Node>) {
    while node.is_ready() {
        tokio::time::sleep(RECONCILE_INTERVAL).await;
        let Some(meta) = node.group(META_SHARD_ID).await else { continue };
        if !meta.is_leader() {
            continue;
        }
        if let Err(e) = drain_pass(&node, &meta).await {
            tracing::warn!(cause = %e, "member change step failed");
        }
    }
}

async fn drain_pass(node: &Node, meta: &ShardRaft) -> Result<(), String> {
    let me = node.config.node_id;
    let map = node.shard_map();
    let m = meta.metrics().borrow_watched().clone();
    let membership = m.membership_config.membership().clone();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let state = |id: u64| map.node(id).map_or(NodeState::Removed, |n| n.state);

    if state(me) != NodeState::Up {
        let last = m.last_log_index.unwrap_or(0);
        let to = voters.iter().copied().filter(|v| *v != me && state(*v) == NodeState::Up).find(|v| {
            m.replication
                .as_ref()
                .and_then(|r| r.get(v))
                .and_then(|l| l.as_ref())
                .is_some_and(|l| l.index + MAX_PROMOTION_LAG >= last)
        });
        if let Some(to) = to {
            meta.trigger().transfer_leader(to).await.map_err(|e| e.to_string())?;
            tracing::info!(to, "meta shard leadership handed away from this leaving node");
            return Ok(());
        }
    }

    let gone: BTreeSet<u64> =
        membership.nodes().map(|(id, _)| *id).filter(|id| state(*id) == NodeState::Removed).collect();
    if !gone.is_empty() {
        let keep: BTreeSet<u64> = voters.difference(&gone).copied().collect();
        // Joint consensus again; `false`: the removed nodes leave the group
        // altogether rather than stay as learners.
        meta.change_membership(ChangeMembers::ReplaceAllVoters(keep.clone()), false)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(removed = ?gone, voters = ?keep, "removed nodes taken out of the meta shard");
        return Ok(());
    }

    for n in map.nodes.iter().filter(|n| n.state == NodeState::Removing && map.placed_on(n.id).next().is_none()) {
        let cmd = Command::Meta(MetaCommand::SetNodeState { node: n.id, state: NodeState::Removed });
        match node.propose_internal(META_SHARD_ID, &cmd).await? {
            CommandResult::Meta { .. } => tracing::info!(node = n.id, "drained node removed"),
            other => return Err(format!("recording node {} as removed: {other:?}", n.id)),
        }
    }

    if !map.nodes.iter().any(|n| n.state.is_leaving()) {
        return Ok(());
    }
    let mut live = BTreeSet::new();
    for n in map.nodes.iter().filter(|n| n.state.takes_replicas()) {
        if node.probe_peer(&n.addr).await.is_ok() {
            live.insert(n.id);
        }
    }
    for (shard, change) in placement::plan_drains(&map, &live) {
        let cmd = Command::Meta(MetaCommand::BeginReplicaChange { shard, change });
        match node.propose_internal(META_SHARD_ID, &cmd).await? {
            CommandResult::Meta { .. } => {
                tracing::info!(shard, change = %describe(&change), "drain: replica move recorded")
            }
            CommandResult::Rejected(r) => {
                tracing::warn!(shard, change = %describe(&change), reason = %r, "drain: move refused")
            }
            other => return Err(format!("unexpected answer from the meta shard: {other:?}")),
        }
    }
    Ok(())
}

/// The keys two ranges share, if any.
fn intersect(a: &crate::shards::KeyRange, b: &crate::shards::KeyRange) -> Option<crate::shards::KeyRange> {
    let start = a.0.clone().max(b.0.clone());
    let end = match (&a.1, &b.1) {
        (Some(x), Some(y)) => Some(x.clone().min(y.clone())),
        (Some(x), None) | (None, Some(x)) => Some(x.clone()),
        (None, None) => None,
    };
    end.as_ref().is_none_or(|e| *e > start).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: &str, end: Option<&str>) -> crate::shards::KeyRange {
        (start.as_bytes().to_vec(), end.map(|e| e.as_bytes().to_vec()))
    }

    #[test]
    fn only_shared_keys_are_retired() {
        assert_eq!(intersect(&range("g", Some("n")), &range("g", Some("j"))), Some(range("g", Some("j"))));
        assert_eq!(intersect(&range("g", None), &range("j", Some("n"))), Some(range("j", Some("n"))));
        assert_eq!(intersect(&range("", None), &range("u", None)), Some(range("u", None)));
        assert_eq!(intersect(&range("a", Some("g")), &range("g", Some("n"))), None);
    }
}
