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
//! A change whose new replica is marked down while it is still a learner,
//! or that an operator cancels then (`kvctl shard move … --cancel`), is
//! given up instead ([`MetaCommand::CancelReplicaChange`], after the learner
//! is taken out of the group), so that a dead target does not hold the
//! shard's changes up.
//!
//! What to change is decided elsewhere: an operator's `kvctl shard move`,
//! or [`crate::placement`] for a node being drained, replaced or filled
//! ([`manage_members`] records its moves); this module carries it out.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use openraft::{BasicNode, ChangeMembers};

use crate::node::Node;
use crate::placement;
use crate::raft::command::{Command, CommandResult, MergeCommand, MetaCommand};
use crate::raft::state_machine::stored_range;
use crate::raft::{ShardRaft, matched_index, within_lag};
use crate::shards::{META_SHARD_ID, NodeState, ReplicaChange, ShardDesc, describe};
use geokv_proto::admin::GroupStatus;

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

/// A test switch, never for production: the meta leader holds a merge's
/// freeze this many milliseconds between recording it in the map and
/// freezing the right shard's log, so that a test can stop a replica before
/// that replica applies the freeze (the give-up path).
pub const HOLD_MERGE_FREEZE_MS: &str = "GEOKV_TEST_HOLD_MERGE_FREEZE_MS";

fn hold_merge_freeze() -> Duration {
    static SET: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *SET.get_or_init(|| {
        Duration::from_millis(std::env::var(HOLD_MERGE_FREEZE_MS).ok().and_then(|v| v.parse().ok()).unwrap_or(0))
    })
}

/// Bound on waiting for the leader's snapshot and log purge (step 1).
const SNAPSHOT_WAIT: Duration = Duration::from_secs(30);

/// Carries out, for every shard this node leads (and, on the meta shard's
/// leader, every eventual shard), the replica change the map
/// records. Each shard's steps run in their own task (one at a time per
/// shard), so a slow change does not hold up the others.
pub async fn carry_out_replica_changes(node: Arc<Node>) {
    let running: Arc<Mutex<HashSet<u64>>> = Arc::default();
    while node.is_ready() {
        tokio::time::sleep(RECONCILE_INTERVAL).await;
        let map = node.shard_map();
        for desc in map.shards.iter().filter(|s| s.change.is_some()) {
            // Eventual shards have no leader: the meta shard's leader
            // carries their changes out; a Raft shard's leader its own.
            let carrier = if desc.is_eventual() { META_SHARD_ID } else { desc.id };
            let Some(raft) = node.group(carrier).await else { continue };
            if !raft.is_leader() || !running.lock().expect("running changes").insert(desc.id) {
                continue;
            }
            let (node, desc, running) = (node.clone(), desc.clone(), running.clone());
            tokio::spawn(async move {
                let change = desc.change.expect("filtered on a change");
                let progress = if desc.is_eventual() {
                    step_eventual(&node, &desc, change).await
                } else {
                    step(&node, &raft, &desc, change).await
                };
                match progress {
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
    if node.cancel_requested(desc.id, change)
        && let Some(add) = change.add
    {
        // Until the new replica votes, taking it out leaves the group as it
        // was; once it does (in the joint configuration), the change goes on.
        if !m.membership_config.membership().voter_ids().any(|v| v == add) {
            let is_member = m.membership_config.membership().get_node(&add).is_some();
            return cancel(node, raft, desc.id, change, is_member, "cancelled by an operator".into()).await;
        }
        tracing::warn!(shard = desc.id, node = add, "move not cancelled: its new replica votes already; it completes");
        node.forget_cancel(desc.id);
    }
    // The map may record a split this group has not applied yet: a new
    // replica's snapshot would then hold the other half's keys.
    let local = stored_range(&node.storage, desc.id).map_err(|e| e.to_string())?;
    if local.as_ref().is_some_and(|(start, end)| *start != desc.start || *end != desc.end) {
        return Ok(Progress::Waiting("this group has not applied a split the map records".into()));
    }
    if let Some(add) = change.add {
        let is_member = m.membership_config.membership().get_node(&add).is_some();
        let is_voter = m.membership_config.membership().voter_ids().any(|v| v == add);
        if !is_voter && node.shard_map().node(add).is_none_or(|n| n.state == NodeState::Down) {
            return cancel(node, raft, desc.id, change, is_member, format!("node {add} is down")).await;
        }
        if !is_member {
            ensure_log_purged(raft).await?;
            let map = node.shard_map();
            let addr = map.node(add).map(|n| n.addr.clone()).ok_or_else(|| format!("no node {add} in the map"))?;
            raft.add_learner(add, BasicNode::new(addr), false).await.map_err(|e| e.to_string())?;
            return Ok(Progress::Waiting(format!("node {add} added as a learner")));
        }
        let last = m.last_log_index.unwrap_or(0);
        let matched = matched_index(&m, add);
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
        let to = committed_voters
            .iter()
            .copied()
            .filter(|v| *v != me && target.contains(v))
            .find(|v| within_lag(&m, *v, MAX_PROMOTION_LAG));
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

/// Takes the next step of `change` on eventual shard `desc`, from the meta
/// shard's leader, by asking the replicas where they stand (each check is
/// made afresh, so a new meta leader resumes):
///
/// 1. every member ships its writes to the new replica, first as a resync
///    of its whole range; the new one is seeded once it has heard a
///    position from every other replica that is not down (a new replica
///    that goes down first is given up, as for Raft shards);
/// 2. the replica leaving takes no client writes from when its map records
///    the change; it is removed once every staying replica has acknowledged
///    everything it accepted, so no write it acknowledged is lost. One that
///    is down cannot ship: what it accepted and had not shipped is lost
///    with it (an eventual write is durable on the replica that took it).
/// 3. the map records the new replicas, and the one that left deletes its
///    copy ([`crate::node::Node`]'s eventual replica sync).
async fn step_eventual(node: &Node, desc: &ShardDesc, change: ReplicaChange) -> Result<Progress, String> {
    let map = node.shard_map();
    let down = |id: u64| map.node(id).is_none_or(|n| n.state == NodeState::Down);
    let status = |id: u64| {
        let addr = map.node(id).map(|n| n.addr.clone());
        async move {
            let addr = addr.ok_or_else(|| format!("no node {id} in the map"))?;
            let reply = node.probe_peer(&addr).await.map_err(|e| format!("node {id}: {e}"))?;
            let group = reply
                .groups
                .into_iter()
                .find(|g| g.shard_id == desc.id && g.mode == geokv_proto::kv::ShardMode::Eventual as i32);
            Ok::<_, String>(group)
        }
    };
    // Only what the decision reads: the new replica's status while it is
    // one, the leaving one's while it is up.
    let adding = change.add.filter(|a| !desc.replicas.contains(a) && !down(*a));
    let removing = change.remove.filter(|r| desc.replicas.contains(r) && !down(*r));
    let added = match adding {
        Some(a) => status(a).await?,
        None => None,
    };
    let leaving = match removing {
        Some(r) => status(r).await?,
        None => None,
    };
    let step = if node.cancel_requested(desc.id, change) {
        EventualStep::GiveUp("cancelled by an operator".into())
    } else {
        eventual_step(desc, change, &down, added.as_ref(), leaving.as_ref())
    };
    match step {
        EventualStep::Wait(why) => Ok(Progress::Waiting(why)),
        EventualStep::GiveUp(why) => {
            let cmd = Command::Meta(MetaCommand::CancelReplicaChange { shard: desc.id, change });
            match node.propose_internal(META_SHARD_ID, &cmd).await? {
                CommandResult::Meta { .. } => {
                    tracing::warn!(shard = desc.id, change = %describe(&change), "replica change given up: {why}");
                    node.forget_cancel(desc.id);
                    Ok(Progress::Waiting(format!("given up: {why}")))
                }
                CommandResult::Rejected(r) => Err(format!("the shard map refused to drop the change: {r}")),
                other => Err(format!("unexpected answer from the meta shard: {other:?}")),
            }
        }
        EventualStep::Finish { lost_with } => {
            if let Some(gone) = lost_with {
                tracing::warn!(
                    shard = desc.id,
                    node = gone,
                    "removing the replica of a down node: writes it accepted and had not shipped are lost with it"
                );
            }
            finish(node, desc.id, change).await
        }
    }
}

/// What to do next about an eventual shard's replica change.
#[derive(Debug, PartialEq, Eq)]
enum EventualStep {
    Wait(String),
    GiveUp(String),
    /// Record the change as made; `lost_with`: the leaving replica is down,
    /// and what it had not shipped goes with it.
    Finish {
        lost_with: Option<u64>,
    },
}

/// The decision of [`step_eventual`], from the map's view of `desc` and
/// `change`, which nodes are down, and the statuses of the replica being
/// added (`added`, while it is not yet one and not down) and of the one
/// leaving (`leaving`, while it is up); `None`: it holds no replica yet.
fn eventual_step(
    desc: &ShardDesc,
    change: ReplicaChange,
    down: &dyn Fn(u64) -> bool,
    added: Option<&GroupStatus>,
    leaving: Option<&GroupStatus>,
) -> EventualStep {
    let staying = change.apply_to(&desc.replicas);
    if let Some(add) = change.add.filter(|a| !desc.replicas.contains(a)) {
        if down(add) {
            return EventualStep::GiveUp(format!("node {add} is down"));
        }
        let Some(g) = added else { return EventualStep::Wait(format!("node {add} holds no replica yet")) };
        let missing: Vec<u64> =
            desc.replicas.iter().copied().filter(|r| *r != add && !down(*r) && !g.ec_heard_from.contains(r)).collect();
        if !missing.is_empty() {
            return EventualStep::Wait(format!("new replica {add} not yet seeded by {missing:?}"));
        }
    }
    let Some(remove) = change.remove.filter(|r| desc.replicas.contains(r)) else {
        return EventualStep::Finish { lost_with: None };
    };
    if down(remove) {
        return EventualStep::Finish { lost_with: Some(remove) };
    }
    // Every staying replica must get what the leaving one accepted from it
    // (no other replica relays it): with one of them down the change could
    // neither finish safely nor wait for long. Given up; the down replica's
    // own replacement goes first (placement plans it first).
    if let Some(peer) = staying.iter().copied().find(|p| down(*p)) {
        return EventualStep::GiveUp(format!("staying replica {peer} is down: its replacement goes first"));
    }
    let Some(g) = leaving else { return EventualStep::Wait(format!("node {remove} reports no replica")) };
    if !g.ec_leaving {
        return EventualStep::Wait(format!("node {remove} does not yet refuse writes"));
    }
    if g.ec_durable_seq < g.ec_last_seq {
        return EventualStep::Wait(format!("node {remove} has writes not yet durable"));
    }
    for peer in staying {
        let acked = g.ec_peers.iter().find(|p| p.node_id == peer).map_or(0, |p| p.acked_seq);
        if acked < g.ec_last_seq {
            return EventualStep::Wait(format!(
                "node {peer} has acknowledged node {remove}'s writes up to {acked} of {}",
                g.ec_last_seq
            ));
        }
    }
    EventualStep::Finish { lost_with: None }
}

/// Gives up `change` before its new replica votes: that replica went down
/// while still a learner (it would otherwise hold the shard's changes up
/// until it came back), or an operator cancelled the move (`why` says
/// which): takes the learner out of the group, then drops the change from
/// the map.
/// Only from the learner stage: once the new replica is a voter in the
/// group's (joint) configuration the change goes forward, which needs a
/// majority of the new voters, not the new one.
async fn cancel(
    node: &Node,
    raft: &ShardRaft,
    shard: u64,
    change: ReplicaChange,
    is_member: bool,
    why: String,
) -> Result<Progress, String> {
    let add = change.add.expect("a change that adds");
    if is_member {
        raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([add])), false)
            .await
            .map_err(|e| e.to_string())?;
    }
    let cmd = Command::Meta(MetaCommand::CancelReplicaChange { shard, change });
    match node.propose_internal(META_SHARD_ID, &cmd).await? {
        CommandResult::Meta { .. } => {
            tracing::warn!(shard, change = %describe(&change), "replica change given up: {why}");
            node.forget_cancel(shard);
            Ok(Progress::Waiting(format!("given up: {why}")))
        }
        CommandResult::Rejected(r) => Err(format!("the shard map refused to drop the change: {r}")),
        other => Err(format!("unexpected answer from the meta shard: {other:?}")),
    }
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
            if shard != META_SHARD_ID && map.shard(shard).is_none() && absorbed_here(&node, shard) {
                // Its keys and data are the left shard's now: only its Raft
                // state and sessions go.
                if let Err(e) = node.retire_group(shard, None).await {
                    tracing::error!(shard, cause = %e, "cannot retire a merged shard's replica");
                }
                continue;
            }
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

/// Whether the replica here of the shard frozen `shard` merges into has
/// absorbed it: its range, as this replica stores it, covers `shard`'s
/// (by the merge's entry, or by a snapshot taken after it). Until then the
/// frozen replica is what that apply reads, so it stays.
fn absorbed_here(node: &Node, shard: u64) -> bool {
    let storage = &node.storage;
    let Ok(Some((_, into, _))) = crate::raft::state_machine::frozen_record(storage, shard) else { return false };
    match (stored_range(storage, into), stored_range(storage, shard)) {
        (Ok(Some(outer)), Ok(Some(inner))) => intersect(&outer, &inner) == Some(inner),
        _ => false,
    }
}

/// The meta shard grows to this many voters when members join (more would
/// slow every map change for little: the map changes rarely).
pub const META_VOTERS_TARGET: usize = 5;

/// On the meta shard's leader, every [`RECONCILE_INTERVAL`]: makes the
/// cluster match the members' states in the map, and the map match which
/// members answer. One step per pass, looked at afresh each time, so a new
/// meta leader resumes where the last one stopped:
///
/// - hands the meta shard's leadership away from a leaving node;
/// - probes every member; one that has answered no probe for
///   `node_dead_after_ms` (counted from when this node became the meta
///   leader, at the earliest) is marked down, and a down one that answers
///   is up again;
/// - takes removed nodes out of the meta shard; adds joining (and returned)
///   nodes to it as learners, marks a joining one up once it has caught up
///   with the map, and makes caught-up learners voters in place of down
///   voters or while there are fewer than [`META_VOTERS_TARGET`];
/// - records a removing node as removed once it holds no replica;
/// - records the moves that empty leaving (draining, removing, down) nodes
///   ([`placement::plan_drains`]), or with nothing leaving and rebalancing
///   on, the moves that even out the cluster ([`placement::plan_rebalance`]).
///   The shards' leaders carry them out;
/// - with no move to record and rebalancing on, asks leaders of shards
///   without a preferred region to hand leadership on so that every node
///   leads about as many shards ([`placement::plan_leader_transfers`]).
pub async fn manage_members(node: Arc<Node>) {
    let mut seen = Seen::default();
    while node.is_ready() {
        tokio::time::sleep(RECONCILE_INTERVAL).await;
        let Some(meta) = node.group(META_SHARD_ID).await else { continue };
        if !meta.is_leader() {
            // A new term as leader starts every member's clock afresh.
            seen = Seen::default();
            continue;
        }
        if let Err(e) = members_pass(&node, &meta, &mut seen).await {
            tracing::warn!(cause = %e, "member change step failed");
        }
    }
}

/// What the member loop remembers between passes (only while this node
/// leads the meta shard).
#[derive(Default)]
struct Seen {
    /// When each member last answered a probe (or when this leadership
    /// began, for one that has not yet).
    answered: HashMap<u64, Instant>,
    /// When leadership of a shard was last handed on, so that a transfer
    /// has time to happen before the next one is planned.
    transferred: HashMap<u64, Instant>,
    /// Per shard and epoch: its leader's applied index over the last
    /// [`LOAD_WINDOW`] and a bit, oldest first (a split starts afresh).
    applied: HashMap<(u64, u64), VecDeque<(Instant, u64)>>,
    /// When a shard was last split here, so that its new epoch reaches the
    /// map and the statuses before it is looked at again.
    split: HashMap<u64, Instant>,
    /// Per right shard of a frozen merge: the index of its freeze entry,
    /// and when this node froze it (or first learnt the index).
    frozen_at: HashMap<u64, (u64, Instant)>,
    /// Per right shard: since when the freeze is held (a test switch, see
    /// [`HOLD_MERGE_FREEZE_MS`]).
    freeze_held: HashMap<u64, Instant>,
}

/// Load is the log entries a shard applies per second over this long.
const LOAD_WINDOW: Duration = Duration::from_secs(10);
/// How long a shard just split is left alone by automatic splits.
const SPLIT_COOLDOWN: Duration = Duration::from_secs(10);

impl Seen {
    /// Records a shard's applied index now and returns its rate over the
    /// load window, once a whole window has been seen.
    fn sample(&mut self, shard: u64, epoch: u64, applied: u64, now: Instant) -> Option<f64> {
        let samples = self.applied.entry((shard, epoch)).or_default();
        samples.push_back((now, applied));
        while samples.len() > 2 && now.duration_since(samples[1].0) >= LOAD_WINDOW {
            samples.pop_front();
        }
        let (then, from) = *samples.front()?;
        let span = now.duration_since(then);
        (span >= LOAD_WINDOW).then(|| applied.saturating_sub(from) as f64 / span.as_secs_f64())
    }
}

/// How long a shard whose leadership was just handed on is left alone by
/// leader balancing.
const TRANSFER_COOLDOWN: Duration = Duration::from_secs(5);

/// Proposes a member's new state to the meta shard.
async fn record_state(node: &Node, id: u64, state: NodeState) -> Result<(), String> {
    let cmd = Command::Meta(MetaCommand::SetNodeState { node: id, state });
    match node.propose_internal(META_SHARD_ID, &cmd).await? {
        CommandResult::Meta { .. } => Ok(()),
        other => Err(format!("recording node {id} as {}: {other:?}", state.as_str())),
    }
}

async fn members_pass(node: &Node, meta: &ShardRaft, seen: &mut Seen) -> Result<(), String> {
    let me = node.config.node_id;
    let map = node.shard_map();
    let m = meta.metrics().borrow_watched().clone();
    let membership = m.membership_config.membership().clone();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let state = |id: u64| map.node(id).map_or(NodeState::Removed, |n| n.state);
    let caught_up = |id: &u64| within_lag(&m, *id, MAX_PROMOTION_LAG);

    if state(me) != NodeState::Up {
        let to = voters.iter().copied().filter(|v| *v != me && state(*v) == NodeState::Up).find(caught_up);
        if let Some(to) = to {
            meta.trigger().transfer_leader(to).await.map_err(|e| e.to_string())?;
            tracing::info!(to, "meta shard leadership handed away from this leaving node");
            return Ok(());
        }
    }

    // Who answers, probed all at once (a paused node costs one timeout).
    let members: Vec<_> = map.nodes.iter().filter(|n| n.state != NodeState::Removed).collect();
    let answers = futures::future::join_all(members.iter().map(|n| node.probe_peer(&n.addr))).await;
    let now = Instant::now();
    let mut live = BTreeSet::new();
    // Each Raft shard's leader, as the nodes say (the highest term wins),
    // with what it reports of the shard.
    let mut leaders: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let mut reported: BTreeMap<u64, (u64, u64, u64)> = BTreeMap::new();
    // What every replica has applied, by (shard, node); the shards their
    // leaders report frozen and not sealed (the freeze index).
    let mut applied_on: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    let mut unsealed: BTreeMap<u64, u64> = BTreeMap::new();
    for (n, answer) in members.iter().zip(answers) {
        let answered = seen.answered.entry(n.id).or_insert(now);
        let Ok(status) = answer else { continue };
        *answered = now;
        live.insert(n.id);
        applied_on.extend(status.groups.iter().map(|g| ((g.shard_id, n.id), g.applied_index)));
        for g in status.groups.iter().filter(|g| g.role == "leader" && g.shard_id != META_SHARD_ID) {
            let known = leaders.entry(g.shard_id).or_insert((g.term, n.id));
            if g.term >= known.0 {
                *known = (g.term, n.id);
                reported.insert(g.shard_id, (g.epoch, g.applied_index, g.approximate_bytes));
                if g.frozen_index > 0 && !g.freeze_sealed {
                    unsealed.insert(g.shard_id, g.frozen_index);
                } else {
                    unsealed.remove(&g.shard_id);
                }
            }
        }
    }
    let dead_after = Duration::from_millis(node.config.node_dead_after_ms);
    for n in &members {
        let silent = now.duration_since(seen.answered[&n.id]);
        if n.state == NodeState::Up && silent >= dead_after {
            record_state(node, n.id, NodeState::Down).await?;
            node.metrics.topology_decision("node_down");
            tracing::warn!(node = n.id, silent = ?silent, "node marked down: its replicas are re-created elsewhere");
            return Ok(());
        }
        if n.state == NodeState::Down && live.contains(&n.id) {
            record_state(node, n.id, NodeState::Up).await?;
            node.metrics.topology_decision("node_up");
            tracing::info!(node = n.id, "a down node answers again: marked up");
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

    // Joining (or returned) members that answer: learners of the meta shard.
    let is_member = |id: u64| membership.get_node(&id).is_some();
    if let Some(n) = members
        .iter()
        .find(|n| matches!(n.state, NodeState::Joining | NodeState::Up) && live.contains(&n.id) && !is_member(n.id))
    {
        meta.add_learner(n.id, BasicNode::new(n.addr.clone()), false).await.map_err(|e| e.to_string())?;
        tracing::info!(node = n.id, "node added to the meta shard as a learner");
        return Ok(());
    }
    if let Some(n) = members.iter().find(|n| n.state == NodeState::Joining && is_member(n.id) && caught_up(&n.id)) {
        record_state(node, n.id, NodeState::Up).await?;
        tracing::info!(node = n.id, "joined node caught up with the shard map: marked up");
        return Ok(());
    }
    let down_voter = voters.iter().copied().find(|v| state(*v) == NodeState::Down);
    if down_voter.is_some() || voters.len() < META_VOTERS_TARGET {
        let covered: BTreeSet<&str> = voters.iter().filter_map(|v| map.node(*v)).map(|n| n.region.as_str()).collect();
        let learner = members
            .iter()
            .filter(|n| n.state == NodeState::Up && !voters.contains(&n.id) && is_member(n.id))
            .filter(|n| live.contains(&n.id) && caught_up(&n.id))
            .min_by_key(|n| (covered.contains(n.region.as_str()), n.id));
        if let Some(learner) = learner {
            let mut new: BTreeSet<u64> = voters.clone();
            new.extend([learner.id]);
            if let Some(down) = down_voter {
                new.remove(&down);
            }
            meta.change_membership(ChangeMembers::ReplaceAllVoters(new.clone()), false)
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(voters = ?new, replaced = ?down_voter, "meta shard voters changed");
            return Ok(());
        }
    }

    for n in map.nodes.iter().filter(|n| n.state == NodeState::Removing && map.placed_on(n.id).next().is_none()) {
        record_state(node, n.id, NodeState::Removed).await?;
        tracing::info!(node = n.id, "drained node removed");
    }

    seen.frozen_at.retain(|right, _| map.in_merge(*right));
    seen.freeze_held.retain(|right, _| map.in_merge(*right));
    for left in map.shards.iter().filter(|s| s.merge.is_some()).map(|s| s.id) {
        if let Err(e) = merge_step(node, &map, left, &live, &applied_on, seen).await {
            tracing::warn!(shard = left, cause = %e, "merge step failed; retried on the next pass");
        }
    }
    // A shard frozen with no merge in the map (a freeze that landed after
    // its merge was given up): take it back. Refused once sealed, so this
    // never undoes a merge that goes through.
    for (shard, index) in unsealed.into_iter().filter(|(s, _)| map.shard(*s).is_some() && !map.in_merge(*s)) {
        match node.propose_internal(shard, &Command::Unfreeze { index }).await {
            Ok(CommandResult::Unfrozen) => tracing::info!(shard, index, "a freeze without a merge taken back"),
            other => tracing::debug!(shard, index, result = ?other, "a stray freeze not taken back yet"),
        }
    }

    let budget = node.config.max_moves_in_flight;
    let mut plan = placement::plan_drains(&map, &live, budget);
    let why = if plan.is_empty() && node.config.rebalance {
        plan = placement::plan_rebalance(&map, &live, budget);
        "rebalance"
    } else {
        "drain"
    };
    let moving = !plan.is_empty();
    for (shard, change) in plan {
        let cmd = if why == "drain" {
            MetaCommand::BeginDrainMove { shard, change }
        } else {
            MetaCommand::BeginReplicaChange { shard, change }
        };
        match node.propose_internal(META_SHARD_ID, &Command::Meta(cmd)).await? {
            CommandResult::Meta { .. } => {
                node.metrics.topology_decision(if why == "drain" { "drain_move" } else { "rebalance_move" });
                tracing::info!(shard, change = %describe(&change), "{why}: replica move recorded")
            }
            CommandResult::Rejected(r) => {
                tracing::warn!(shard, change = %describe(&change), reason = %r, "{why}: move refused")
            }
            other => return Err(format!("unexpected answer from the meta shard: {other:?}")),
        }
    }
    if moving {
        return Ok(());
    }
    let limits = placement::SplitThresholds {
        size_bytes: node.config.split_size_bytes,
        load_entries_per_s: node.config.split_load_entries_per_s,
    };
    let merge_limits = placement::MergeThresholds {
        size_bytes: node.config.merge_size_bytes,
        load_entries_per_s: node.config.split_load_entries_per_s as f64 / 2.0,
    };
    if limits.size_bytes > 0 || limits.load_entries_per_s > 0 || merge_limits.size_bytes > 0 {
        seen.split.retain(|_, at| at.elapsed() < SPLIT_COOLDOWN);
        let mut loads = BTreeMap::new();
        for (shard, (epoch, applied, bytes)) in &reported {
            let entries_per_s = seen.sample(*shard, *epoch, *applied, now);
            if !seen.split.contains_key(shard) && map.shard(*shard).is_some_and(|d| d.epoch == *epoch) {
                loads.insert(*shard, placement::ShardLoad { bytes: *bytes, entries_per_s });
            }
        }
        seen.applied.retain(|(shard, epoch), _| map.shard(*shard).is_some_and(|d| d.epoch == *epoch));
        if let Some((shard, why)) = placement::plan_split(&map, &loads, limits)
            && let Some(leader) = leaders.get(&shard).and_then(|(_, l)| map.node(*l))
        {
            seen.split.insert(shard, Instant::now());
            node.metrics.topology_decision("split");
            split_at_middle(node, &map, shard, &leader.addr, &why).await;
        } else if let Some((left, why)) = placement::plan_merge(&map, &loads, merge_limits) {
            let expected_epoch = map.shard(left).map_or(0, |d| d.epoch);
            let cmd = Command::Meta(MetaCommand::BeginMerge { left, expected_epoch });
            match node.propose_internal(META_SHARD_ID, &cmd).await? {
                CommandResult::Meta { .. } => {
                    node.metrics.topology_decision("merge");
                    tracing::info!(shard = left, %why, "automatic merge recorded")
                }
                other => tracing::warn!(shard = left, %why, result = ?other, "automatic merge refused"),
            }
        }
    }
    if !node.config.rebalance {
        return Ok(());
    }

    // Leaders last: with the replicas where they belong, even out who leads.
    seen.transferred.retain(|_, at| at.elapsed() < TRANSFER_COOLDOWN);
    let leaders: BTreeMap<u64, u64> = leaders
        .into_iter()
        .filter(|(shard, _)| !seen.transferred.contains_key(shard))
        .map(|(shard, (_, leader))| (shard, leader))
        .collect();
    for (shard, from, to) in placement::plan_leader_transfers(&map, &leaders, &live) {
        seen.transferred.insert(shard, Instant::now());
        let Some(addr) = map.node(from).map(|n| n.addr.clone()) else { continue };
        let mut client = geokv_proto::admin::admin_client::AdminClient::new(node.peers.channel(&addr));
        let request = geokv_proto::admin::TransferLeaderRequest { shard_id: shard, to_node: to };
        match client.transfer_leader(request).await {
            Ok(_) => {
                node.metrics.topology_decision("leader_transfer");
                tracing::info!(shard, from, to, "leader balance: leadership handed on")
            }
            Err(status) => tracing::debug!(shard, from, to, cause = %status.message(), "leader balance: not now"),
        }
    }
    Ok(())
}

/// How long a merge's freeze may wait for every replica of the right
/// shard to apply it before it is taken back and the merge given up (the
/// right shard's keys are unavailable meanwhile).
pub const MERGE_FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

/// Takes the next step of the merge recorded on shard `left`
/// ([`placement::plan_merge_step`]). Every step is safe to repeat, so a new
/// meta leader picks the merge up where it stands:
///
/// 1. align: the right shard's replicas move onto the left's nodes;
/// 2. freeze (in the map), once every replica answers;
/// 3. freeze the right shard's log ([`Command::Freeze`]); once every one
///    of its replicas applied the freeze (its state is final everywhere,
///    and every replica of the left shard can read it locally), seal it
///    ([`Command::Seal`]) and record that ([`MetaCommand::CommitMerge`]).
///    A replica that has not applied it within [`MERGE_FREEZE_TIMEOUT`]
///    (down, cut off) gets the freeze taken back ([`Command::Unfreeze`],
///    refused once sealed) and the merge is given up;
/// 4. sealed: the left shard's log absorbs the right one
///    ([`Command::Merge`]), and the map records the merge
///    ([`MetaCommand::FinishMerge`]) and drops the right shard, whose
///    replicas then retire without deleting data.
async fn merge_step(
    node: &Node,
    map: &crate::shards::ShardMap,
    left: u64,
    live: &BTreeSet<u64>,
    applied_on: &BTreeMap<(u64, u64), u64>,
    seen: &mut Seen,
) -> Result<(), String> {
    let meta = |cmd: MetaCommand| async move {
        match node.propose_internal(META_SHARD_ID, &Command::Meta(cmd)).await? {
            CommandResult::Meta { .. } => Ok(()),
            other => Err(format!("the shard map refused it: {other:?}")),
        }
    };
    match placement::plan_merge_step(map, left, live) {
        placement::MergeStep::None | placement::MergeStep::Wait => Ok(()),
        placement::MergeStep::Cancel(why) => {
            meta(MetaCommand::CancelMerge { left, unfrozen: false }).await?;
            node.metrics.topology_decision("merge_given_up");
            tracing::warn!(shard = left, %why, "merge given up");
            Ok(())
        }
        placement::MergeStep::Align { right, change } => {
            meta(MetaCommand::BeginReplicaChange { shard: right, change }).await?;
            node.metrics.topology_decision("merge_align");
            tracing::info!(shard = left, right, change = %describe(&change), "merge: replica move recorded to align");
            Ok(())
        }
        placement::MergeStep::Freeze => {
            meta(MetaCommand::FreezeMerge { left }).await?;
            tracing::info!(shard = left, "merge: replicas aligned, freeze recorded");
            Ok(())
        }
        placement::MergeStep::Seal { right } => {
            let (index, since) = match seen.frozen_at.get(&right) {
                Some(at) => *at,
                None if seen.freeze_held.entry(right).or_insert_with(Instant::now).elapsed() < hold_merge_freeze() => {
                    return Ok(());
                }
                None => match node.propose_internal(right, &Command::Freeze { into: left }).await? {
                    CommandResult::Frozen { index } => {
                        tracing::info!(shard = left, right, index, "merge: right shard frozen");
                        *seen.frozen_at.entry(right).or_insert((index, Instant::now()))
                    }
                    other => return Err(format!("shard {right} refused its freeze: {other:?}")),
                },
            };
            let r = map.shard(right).ok_or_else(|| format!("no shard {right} in the map"))?;
            let lagging: Vec<u64> = r
                .replicas
                .iter()
                .copied()
                .filter(|n| applied_on.get(&(right, *n)).is_none_or(|applied| *applied < index))
                .collect();
            let sealed = if lagging.is_empty() {
                match node.propose_internal(right, &Command::Seal { index }).await? {
                    CommandResult::Sealed { .. } => true,
                    other => {
                        // Taken back meanwhile: freeze anew next pass.
                        seen.frozen_at.remove(&right);
                        return Err(format!("shard {right} refused to seal its freeze at {index}: {other:?}"));
                    }
                }
            } else if since.elapsed() >= MERGE_FREEZE_TIMEOUT {
                match node.propose_internal(right, &Command::Unfreeze { index }).await? {
                    CommandResult::Unfrozen => {
                        seen.frozen_at.remove(&right);
                        meta(MetaCommand::CancelMerge { left, unfrozen: true }).await?;
                        node.metrics.topology_decision("merge_given_up");
                        tracing::warn!(
                            shard = left,
                            right,
                            ?lagging,
                            "merge given up: these replicas did not apply the freeze within {MERGE_FREEZE_TIMEOUT:?}; \
                             the right shard serves again"
                        );
                        return Ok(());
                    }
                    CommandResult::Sealed { .. } => true,
                    other => return Err(format!("shard {right} refused to take its freeze back: {other:?}")),
                }
            } else {
                tracing::debug!(shard = left, right, ?lagging, "merge: waiting for every replica to apply the freeze");
                false
            };
            if sealed {
                meta(MetaCommand::CommitMerge { left, right_frozen_index: index }).await?;
                tracing::info!(shard = left, right, index, "merge: freeze sealed, the merge goes through");
            }
            Ok(())
        }
        placement::MergeStep::Carry { right, epoch, index } => {
            let r = map.shard(right).ok_or_else(|| format!("no shard {right} in the map"))?;
            let cmd = Command::Merge(MergeCommand {
                right_shard: right,
                right_end: r.end.clone(),
                right_frozen_index: index,
                epoch,
            });
            match node.propose_internal(left, &cmd).await? {
                CommandResult::Merged { .. } => {}
                other => return Err(format!("shard {left} refused the merge: {other:?}")),
            }
            meta(MetaCommand::FinishMerge { left, right, epoch }).await?;
            seen.frozen_at.remove(&right);
            tracing::info!(shard = left, right, epoch, "merge done: the right shard's keys are the left shard's");
            Ok(())
        }
    }
}

/// Splits `shard` at the key its leader (at `addr`) finds in the middle of
/// its data, through `Admin.SplitShard` there, as `kvctl shard split` would
/// (the map records it, then the shard's log applies it). Failures are
/// logged: the next pass looks again.
async fn split_at_middle(node: &Node, map: &crate::shards::ShardMap, shard: u64, addr: &str, why: &str) {
    use geokv_proto::admin::{SplitKeyRequest, SplitShardRequest};
    let Some(epoch) = map.shard(shard).map(|d| d.epoch) else { return };
    let mut client = geokv_proto::admin::admin_client::AdminClient::new(node.peers.channel(addr));
    let key = match client.split_key(SplitKeyRequest { shard_id: shard }).await {
        Ok(reply) if reply.get_ref().found => reply.into_inner().key,
        Ok(_) => return tracing::debug!(shard, "automatic split: fewer than two keys"),
        Err(status) => return tracing::debug!(shard, cause = %status.message(), "automatic split: no key yet"),
    };
    let request = SplitShardRequest { shard_id: shard, split_key: key.clone(), expected_epoch: epoch, automatic: true };
    match client.split_shard(request).await {
        Ok(reply) => {
            let right = reply.into_inner().right_shard_id;
            tracing::info!(shard, right, key = %String::from_utf8_lossy(&key), %why, "automatic split")
        }
        Err(status) => tracing::warn!(shard, cause = %status.message(), %why, "automatic split failed"),
    }
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

    fn eventual_desc(replicas: &[u64], change: ReplicaChange) -> ShardDesc {
        ShardDesc {
            id: 7,
            epoch: 3,
            start: b"ev/".to_vec(),
            end: Some(b"ev0".to_vec()),
            replicas: replicas.to_vec(),
            preferred_leader_region: None,
            mode: crate::shards::ShardMode::Eventual,
            change: Some(change),
            merge: None,
            auto_split: false,
        }
    }

    /// The leaving replica's status: `last` writes accepted (all durable),
    /// and what each peer acknowledged.
    fn leaving(last: u64, acked: &[(u64, u64)]) -> GroupStatus {
        GroupStatus {
            ec_leaving: true,
            ec_last_seq: last,
            ec_durable_seq: last,
            ec_peers: acked
                .iter()
                .map(|(node_id, acked_seq)| geokv_proto::admin::EcPeer {
                    node_id: *node_id,
                    acked_seq: *acked_seq,
                    ..Default::default()
                })
                .collect(),
            ..GroupStatus::default()
        }
    }

    fn heard(from: &[u64]) -> GroupStatus {
        GroupStatus { ec_heard_from: from.to_vec(), ec_seeding: true, ..GroupStatus::default() }
    }

    /// Moving node 1's replica of an eventual shard to node 4: not before
    /// node 4 has heard from every other replica, nor before node 1 refuses
    /// writes and every staying replica (4 included) acknowledged all it
    /// accepted; a down new replica or a down staying one gives the move
    /// up; a down leaving one is removed, its unshipped writes lost.
    #[test]
    fn an_eventual_replica_leaves_only_once_the_staying_ones_have_its_writes() {
        let change = ReplicaChange { add: Some(4), remove: Some(1) };
        let desc = eventual_desc(&[1, 2, 3], change);
        let none_down = |_: u64| false;
        let wait = |step: EventualStep| matches!(step, EventualStep::Wait(_));
        assert!(wait(eventual_step(&desc, change, &none_down, None, None)), "no replica on 4 yet");
        assert!(wait(eventual_step(&desc, change, &none_down, Some(&heard(&[1, 2])), None)), "3 not heard");
        let seeded = heard(&[1, 2, 3]);
        let all_acked = leaving(50, &[(2, 50), (3, 50), (4, 50)]);
        let not_refusing = GroupStatus { ec_leaving: false, ..all_acked.clone() };
        assert!(wait(eventual_step(&desc, change, &none_down, Some(&seeded), Some(&not_refusing))));
        let behind = leaving(50, &[(2, 50), (3, 49), (4, 50)]);
        assert!(wait(eventual_step(&desc, change, &none_down, Some(&seeded), Some(&behind))), "3 lacks one");
        let new_one_behind = leaving(50, &[(2, 50), (3, 50), (4, 12)]);
        assert!(wait(eventual_step(&desc, change, &none_down, Some(&seeded), Some(&new_one_behind))));
        let not_durable = GroupStatus { ec_durable_seq: 49, ..all_acked.clone() };
        assert!(wait(eventual_step(&desc, change, &none_down, Some(&seeded), Some(&not_durable))));
        assert_eq!(
            eventual_step(&desc, change, &none_down, Some(&seeded), Some(&all_acked)),
            EventualStep::Finish { lost_with: None }
        );
        // Node 3 (staying) down: given up, so its own replacement can go first.
        let three_down = |n: u64| n == 3;
        assert!(matches!(
            eventual_step(&desc, change, &three_down, Some(&heard(&[1, 2])), Some(&behind)),
            EventualStep::GiveUp(_)
        ));
        // The new replica down: given up.
        let four_down = |n: u64| n == 4;
        assert!(matches!(eventual_step(&desc, change, &four_down, None, Some(&all_acked)), EventualStep::GiveUp(_)));
        // The leaving replica down: seeded by the others, then removed.
        let one_down = |n: u64| n == 1;
        assert!(wait(eventual_step(&desc, change, &one_down, Some(&heard(&[2])), None)));
        assert_eq!(
            eventual_step(&desc, change, &one_down, Some(&heard(&[2, 3])), None),
            EventualStep::Finish { lost_with: Some(1) }
        );
    }

    #[test]
    fn only_shared_keys_are_retired() {
        assert_eq!(intersect(&range("g", Some("n")), &range("g", Some("j"))), Some(range("g", Some("j"))));
        assert_eq!(intersect(&range("g", None), &range("j", Some("n"))), Some(range("j", Some("n"))));
        assert_eq!(intersect(&range("", None), &range("u", None)), Some(range("u", None)));
        assert_eq!(intersect(&range("a", Some("g")), &range("g", Some("n"))), None);
    }
}
