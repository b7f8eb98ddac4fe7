//! Where replicas go: pure decisions over the shard map and which nodes
//! answer, unit-tested without sockets. The loop that carries them out is
//! [`crate::topology::manage_members`].
//!
//! It decides drains and replacements: every replica on a draining,
//! removing or down node moves to another node, one replica change per shard, at most
//! `max_moves_in_flight` changes in the cluster at once (config
//! `max_moves_in_flight`, default [`DEFAULT_MAX_MOVES_IN_FLIGHT`]). A target must be
//! up in the map (not draining or removed), answering, and hold no replica
//! of the shard; among those, one in a region the shard's other replicas do
//! not cover comes first (keeping replicas in distinct regions), then the
//! node with the fewest replicas. And, with nothing leaving, it rebalances
//! ([`plan_rebalance`]): shards spread over more regions, then replica
//! counts evened out, so that a joined node fills up.

use std::collections::{BTreeMap, BTreeSet};

use crate::shards::{NodeState, ReplicaChange, ShardDesc, ShardMap};

/// Replica changes under way in the cluster at once, at most, unless the
/// config says otherwise (`max_moves_in_flight`; each ships a whole shard as
/// a snapshot).
pub const DEFAULT_MAX_MOVES_IN_FLIGHT: usize = 2;

/// Why a node's replicas cannot all leave it: one line per shard that has
/// nowhere to go. Empty: a drain can complete (if the targets answer).
pub fn drain_blockers(map: &ShardMap, node: u64) -> Vec<String> {
    let everyone: BTreeSet<u64> = map.nodes.iter().map(|n| n.id).collect();
    map.shards
        .iter()
        .filter(|s| s.placed_on(node))
        .filter_map(|s| {
            let load = replica_counts(map);
            target(map, s, node, &everyone, &load).is_none().then(|| {
                format!(
                    "shard {} has nowhere to go: every other up node holds a replica of it (replicas {:?})",
                    s.id, s.replicas
                )
            })
        })
        .collect()
}

/// The replica changes to record now so that leaving nodes empty: for each
/// shard with a replica on a leaving node and no change under way, a move
/// to the best target among `live` nodes, while fewer than
/// `max_moves_in_flight` changes are under way.
pub fn plan_drains(map: &ShardMap, live: &BTreeSet<u64>, max_moves_in_flight: usize) -> Vec<(u64, ReplicaChange)> {
    let leaving: BTreeSet<u64> = map.nodes.iter().filter(|n| n.state.is_leaving()).map(|n| n.id).collect();
    let mut budget = max_moves_in_flight.saturating_sub(map.shards.iter().filter(|s| s.change.is_some()).count());
    let mut load = replica_counts(map);
    let mut plan = Vec::new();
    for shard in map.shards.iter().filter(|s| s.change.is_none() && !map.in_merge(s.id)) {
        if budget == 0 {
            break;
        }
        // A down replica first: it restores the shard's fault tolerance.
        let down = |r: &u64| map.node(*r).is_some_and(|n| n.state == NodeState::Down);
        let from = shard.replicas.iter().copied().find(down);
        let Some(from) = from.or_else(|| shard.replicas.iter().copied().find(|r| leaving.contains(r))) else {
            continue;
        };
        // An eventual shard's leaving replica ships what it accepted to every
        // staying one before it goes: not while one of those is down.
        if shard.is_eventual() && shard.replicas.iter().any(|r| *r != from && down(r)) {
            continue;
        }
        let Some(to) = target(map, shard, from, live, &load) else { continue };
        *load.entry(to).or_default() += 1;
        budget -= 1;
        plan.push((shard.id, ReplicaChange { add: Some(to), remove: Some(from) }));
    }
    plan
}

/// The moves to record now that even out the cluster, when nothing is
/// leaving (drains come first): first, a shard with two replicas in one
/// region while an up, answering node sits in a region it lacks gets one
/// of those moved there; then, while some node holds at least two replicas
/// more than another, a replica moves from the fuller to the emptier one,
/// never to fewer distinct regions for its shard. Both among `live` nodes
/// that take replicas, one change per shard, within
/// `max_moves_in_flight`. A joined node fills up this way; a balanced
/// cluster plans nothing (no move goes back and forth: a move narrows the
/// gap it closes by two).
pub fn plan_rebalance(map: &ShardMap, live: &BTreeSet<u64>, max_moves_in_flight: usize) -> Vec<(u64, ReplicaChange)> {
    let leaving_with_replicas = map.nodes.iter().any(|n| n.state.is_leaving() && map.placed_on(n.id).next().is_some());
    let mut budget = max_moves_in_flight.saturating_sub(map.shards.iter().filter(|s| s.change.is_some()).count());
    if leaving_with_replicas || budget == 0 {
        return Vec::new();
    }
    let takers: Vec<u64> =
        map.nodes.iter().filter(|n| n.state.takes_replicas() && live.contains(&n.id)).map(|n| n.id).collect();
    let region = |id: u64| map.node(id).map_or("", |n| n.region.as_str());
    let regions = |replicas: &[u64]| replicas.iter().map(|r| region(*r)).collect::<BTreeSet<&str>>().len();
    let mut load = replica_counts(map);
    let mut planned: BTreeSet<u64> = BTreeSet::new();
    let mut plan = Vec::new();
    let movable = |s: &&ShardDesc| s.change.is_none() && !map.in_merge(s.id);

    // Spread first: it is what survives a region's loss.
    for shard in map.shards.iter().filter(movable) {
        if budget == 0 {
            break;
        }
        let covered: BTreeSet<&str> = shard.replicas.iter().map(|r| region(*r)).collect();
        if covered.len() == shard.replicas.len() {
            continue;
        }
        let to = takers
            .iter()
            .copied()
            .filter(|t| !shard.placed_on(*t) && !covered.contains(region(*t)))
            .min_by_key(|t| (load[t], *t));
        // From a region holding two of its replicas, the fuller node.
        let from = shard
            .replicas
            .iter()
            .copied()
            .filter(|r| shard.replicas.iter().filter(|o| region(**o) == region(*r)).count() > 1)
            .max_by_key(|r| (load.get(r).copied().unwrap_or(0), *r));
        if let (Some(to), Some(from)) = (to, from) {
            *load.entry(to).or_default() += 1;
            *load.entry(from).or_default() -= 1;
            planned.insert(shard.id);
            budget -= 1;
            plan.push((shard.id, ReplicaChange { add: Some(to), remove: Some(from) }));
        }
    }

    // Then counts.
    'moves: while budget > 0 {
        let mut by_load = takers.clone();
        by_load.sort_by_key(|t| (load[t], *t));
        for from in by_load.iter().rev() {
            for to in &by_load {
                if load[from] < load[to] + 2 {
                    break;
                }
                let shard = map.shards.iter().filter(movable).find(|s| {
                    if planned.contains(&s.id) || !s.replicas.contains(from) || s.placed_on(*to) {
                        return false;
                    }
                    let after = ReplicaChange { add: Some(*to), remove: Some(*from) }.apply_to(&s.replicas);
                    regions(&after) >= regions(&s.replicas)
                });
                if let Some(shard) = shard {
                    *load.get_mut(to).expect("a taker") += 1;
                    *load.get_mut(from).expect("a taker") -= 1;
                    planned.insert(shard.id);
                    budget -= 1;
                    plan.push((shard.id, ReplicaChange { add: Some(*to), remove: Some(*from) }));
                    continue 'moves;
                }
            }
        }
        break;
    }
    plan
}

/// Leadership transfers per pass of the member loop, at most.
pub const MAX_LEADER_TRANSFERS: usize = 2;

/// The leadership transfers that even out how many shards each node leads:
/// a shard's leader that leads at least two more shards than another of
/// its voters (up and answering) hands leadership to the one of them that
/// leads fewest. `leaders`: each Raft shard's leader, as the nodes report
/// it. Shards with a preferred leader region are left alone (their
/// leaders go to that region: `node::place_leaders`), as are shards with
/// a replica change under way (their leader is making it). At most
/// [`MAX_LEADER_TRANSFERS`] at once; a balanced cluster plans nothing.
pub fn plan_leader_transfers(
    map: &ShardMap,
    leaders: &BTreeMap<u64, u64>,
    live: &BTreeSet<u64>,
) -> Vec<(u64, u64, u64)> {
    let mut count: BTreeMap<u64, usize> =
        map.nodes.iter().filter(|n| n.state.takes_replicas() && live.contains(&n.id)).map(|n| (n.id, 0)).collect();
    for leader in leaders.values() {
        *count.entry(*leader).or_default() += 1;
    }
    let mut plan = Vec::new();
    for shard in map.shards.iter().filter(|s| !s.is_eventual() && s.change.is_none() && !map.in_merge(s.id)) {
        if plan.len() == MAX_LEADER_TRANSFERS {
            break;
        }
        if shard.preferred_leader_region.is_some() {
            continue;
        }
        let Some(&from) = leaders.get(&shard.id) else { continue };
        let to = shard
            .replicas
            .iter()
            .copied()
            .filter(|r| *r != from && count.contains_key(r))
            .min_by_key(|r| (count[r], *r));
        if let Some(to) = to
            && count[&from] >= count[&to] + 2
        {
            *count.get_mut(&from).expect("counted") -= 1;
            *count.get_mut(&to).expect("a taker") += 1;
            plan.push((shard.id, from, to));
        }
    }
    plan
}

/// Keys a split-key search reads at most (twice: to total, then to halve).
pub const SPLIT_KEY_SCAN_KEYS: usize = 1_000_000;

/// What the meta shard's leader knows of a Raft shard, from the status its
/// leader reports.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ShardLoad {
    /// RocksDB's estimate of its data on disk.
    pub bytes: u64,
    /// Log entries applied per second over the load window, once a whole
    /// window has been seen.
    pub entries_per_s: Option<f64>,
}

/// When a shard is split on its own (0: never, for each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitThresholds {
    pub size_bytes: u64,
    pub load_entries_per_s: u64,
}

/// The Raft shard to split now, and why: the one furthest past a threshold
/// (its size, or its sustained load), among shards with no replica change
/// under way. One at a time: each split is two quorum commits and a new
/// group's election.
pub fn plan_split(map: &ShardMap, loads: &BTreeMap<u64, ShardLoad>, limits: SplitThresholds) -> Option<(u64, String)> {
    let mut best: Option<(f64, u64, String)> = None;
    for shard in map.shards.iter().filter(|s| !s.is_eventual() && s.change.is_none() && !map.in_merge(s.id)) {
        let Some(load) = loads.get(&shard.id) else { continue };
        let mut consider = |over: f64, why: String| {
            if over > 1.0 && best.as_ref().is_none_or(|(b, _, _)| over > *b) {
                best = Some((over, shard.id, why));
            }
        };
        if limits.size_bytes > 0 {
            let over = load.bytes as f64 / limits.size_bytes as f64;
            consider(over, format!("{} bytes on disk, over split_size_bytes {}", load.bytes, limits.size_bytes));
        }
        if let (Some(rate), true) = (load.entries_per_s, limits.load_entries_per_s > 0) {
            let over = rate / limits.load_entries_per_s as f64;
            consider(over, format!("{rate:.0} entries/s, over split_load_entries_per_s {}", limits.load_entries_per_s));
        }
    }
    best.map(|(_, shard, why)| (shard, why))
}

/// When two neighbouring shards are merged on their own (see
/// [`plan_merge`]).
#[derive(Debug, Clone, Copy)]
pub struct MergeThresholds {
    /// Together under this many bytes on disk (0: never merge).
    pub size_bytes: u64,
    /// Together under this many applied entries per second (0: any load).
    pub load_entries_per_s: f64,
}

/// The pair of neighbouring Raft shards to merge now, as `(left, why)`: the
/// smallest pair whose boundary an automatic split made (initial split
/// points and operators' splits stay), both with a whole load window
/// measured, together under the size and load thresholds, with the same
/// preferred leader region, and neither changing replicas. One merge in
/// the cluster at a time.
pub fn plan_merge(map: &ShardMap, loads: &BTreeMap<u64, ShardLoad>, limits: MergeThresholds) -> Option<(u64, String)> {
    if limits.size_bytes == 0 || map.shards.iter().any(|s| s.merge.is_some()) {
        return None;
    }
    let settled = |s: &ShardDesc| !s.is_eventual() && s.change.is_none();
    map.shards
        .windows(2)
        .filter(|pair| pair[1].auto_split && settled(&pair[0]) && settled(&pair[1]))
        .filter(|pair| pair[0].preferred_leader_region == pair[1].preferred_leader_region)
        .filter_map(|pair| {
            let (l, r) = (loads.get(&pair[0].id)?, loads.get(&pair[1].id)?);
            let (bytes, rate) = (l.bytes + r.bytes, l.entries_per_s? + r.entries_per_s?);
            let cold = limits.load_entries_per_s <= 0.0 || rate < limits.load_entries_per_s;
            (bytes < limits.size_bytes && cold).then(|| {
                let why = format!(
                    "{bytes} bytes and {rate:.1} entries/s together, under merge_size_bytes {} and {:.0} entries/s",
                    limits.size_bytes, limits.load_entries_per_s
                );
                (bytes, pair[0].id, why)
            })
        })
        .min_by_key(|(bytes, left, _)| (*bytes, *left))
        .map(|(_, left, why)| (left, why))
}

/// Replicas (held or being added) per node.
fn replica_counts(map: &ShardMap) -> BTreeMap<u64, usize> {
    let mut load: BTreeMap<u64, usize> = map.nodes.iter().map(|n| (n.id, 0)).collect();
    for s in &map.shards {
        for r in s.replicas.iter().chain(s.adding().iter()) {
            *load.entry(*r).or_default() += 1;
        }
    }
    load
}

/// The best node among `candidates` to take `shard`'s replica on `from`.
fn target(
    map: &ShardMap,
    shard: &ShardDesc,
    from: u64,
    candidates: &BTreeSet<u64>,
    load: &BTreeMap<u64, usize>,
) -> Option<u64> {
    let region = |id: u64| map.node(id).map(|n| n.region.as_str());
    let covered: BTreeSet<&str> = shard.replicas.iter().filter(|r| **r != from).filter_map(|r| region(*r)).collect();
    map.nodes
        .iter()
        .filter(|n| n.state.takes_replicas() && candidates.contains(&n.id) && !shard.placed_on(n.id))
        .min_by_key(|n| (covered.contains(n.region.as_str()), load.get(&n.id).copied().unwrap_or(0), n.id))
        .map(|n| n.id)
}

/// The next step of the merge recorded on shard `left` (see
/// [`ShardMap::begin_merge`]), as a function of the map alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeStep {
    /// No merge is recorded on `left`.
    None,
    /// The merge cannot go on (it has not reached its freeze): drop it.
    Cancel(String),
    /// A replica change of either shard is under way: wait for it.
    Wait,
    /// Move one of the right shard's replicas towards the left's nodes.
    Align { right: u64, change: ReplicaChange },
    /// The replicas match and every one answers: record the freeze in the
    /// map.
    Freeze,
    /// Frozen in the map: freeze the right shard's log, then seal the
    /// freeze once every replica applied it, or take it back and give the
    /// merge up if one does not in time.
    Seal { right: u64 },
    /// Sealed at `index`: the left shard absorbs the right one, to `epoch`.
    Carry { right: u64, epoch: u64, index: u64 },
}

/// What to do next for the merge recorded on `left`. Before the freeze a
/// merge is given up when a replica of either shard is on a node that is
/// not up (a drain or a replacement needs to move it, and the merge holds
/// moves up). Alignment moves the right shard's replicas one at a time onto
/// the left's nodes, pairing a node of the same region first, so that the
/// shard's regions stay what they were.
pub fn plan_merge_step(map: &ShardMap, left: u64, live: &BTreeSet<u64>) -> MergeStep {
    let Some(pos) = map.shards.iter().position(|s| s.id == left) else { return MergeStep::None };
    let l = &map.shards[pos];
    let Some(intent) = l.merge else { return MergeStep::None };
    let Some(r) = map.shards.get(pos + 1).filter(|r| r.id == intent.right) else {
        return MergeStep::Cancel(format!("shard {} no longer follows shard {left}", intent.right));
    };
    if let Some(index) = intent.sealed_at {
        return MergeStep::Carry { right: r.id, epoch: l.epoch.max(r.epoch) + 1, index };
    }
    if intent.frozen {
        return MergeStep::Seal { right: r.id };
    }
    for s in [l, r] {
        for n in s.replicas.iter().chain(s.adding().iter()).filter_map(|id| map.node(*id)) {
            if n.state != crate::shards::NodeState::Up {
                return MergeStep::Cancel(format!(
                    "shard {} has a replica on node {}, which is {}",
                    s.id,
                    n.id,
                    n.state.as_str()
                ));
            }
        }
    }
    if l.change.is_some() || r.change.is_some() {
        return MergeStep::Wait;
    }
    let missing: Vec<u64> = l.replicas.iter().copied().filter(|n| !r.replicas.contains(n)).collect();
    let extra: Vec<u64> = r.replicas.iter().copied().filter(|n| !l.replicas.contains(n)).collect();
    let region = |id: &u64| map.node(*id).map(|n| n.region.as_str());
    let change = match (extra.first(), missing.first()) {
        (None, None) if l.replicas.iter().all(|n| live.contains(n)) => return MergeStep::Freeze,
        (None, None) => return MergeStep::Wait,
        (Some(from), Some(_)) => {
            let to = missing.iter().find(|to| region(to) == region(from)).unwrap_or(&missing[0]);
            ReplicaChange { add: Some(*to), remove: Some(*from) }
        }
        (None, Some(to)) => ReplicaChange { add: Some(*to), remove: None },
        (Some(from), None) => ReplicaChange { add: None, remove: Some(*from) },
    };
    MergeStep::Align { right: r.id, change }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shards::{NodeDesc, NodeState, ShardMode};

    /// The default budget of moves under way.
    const M: usize = DEFAULT_MAX_MOVES_IN_FLIGHT;

    fn map(nodes: &[(u64, &str)], shards: &[&[u64]]) -> ShardMap {
        let nodes = nodes
            .iter()
            .map(|(id, region)| NodeDesc {
                id: *id,
                addr: format!("127.0.0.1:{}", 7000 + id),
                region: region.to_string(),
                zone: String::new(),
                state: NodeState::Up,
            })
            .collect();
        let n = shards.len();
        let shards = shards
            .iter()
            .enumerate()
            .map(|(i, replicas)| ShardDesc {
                id: i as u64 + 1,
                epoch: 1,
                start: if i == 0 { Vec::new() } else { vec![b'a' + i as u8] },
                end: (i + 1 < n).then(|| vec![b'a' + i as u8 + 1]),
                replicas: replicas.to_vec(),
                preferred_leader_region: None,
                mode: ShardMode::Raft,
                change: None,
                merge: None,
                auto_split: false,
            })
            .collect();
        let map = ShardMap { version: 1, nodes, shards, users: Vec::new() };
        map.validate().unwrap();
        map
    }

    /// A merge aligns the right shard onto the left's nodes one move at a
    /// time (same region first), freezes once they match, then carries on;
    /// it is given up when a replica's node stops being up before the
    /// freeze; the planners that move replicas leave both shards alone.
    #[test]
    fn a_merge_aligns_then_freezes_and_holds_other_moves_off() {
        let nodes = [(1, "us-east"), (2, "us-west"), (3, "eu-west"), (4, "eu-west"), (5, "us-east")];
        let mut m = map(&nodes, &[&[1, 2, 3], &[1, 2, 3], &[5, 2, 4]]);
        assert_eq!(plan_merge_step(&m, 2, &all(&m)), MergeStep::None);
        m.begin_merge(2, 0).unwrap();
        // Node 5 (us-east) gives way to node 1 (us-east), then 4 to 3 (eu-west).
        let first = ReplicaChange { add: Some(1), remove: Some(5) };
        assert_eq!(plan_merge_step(&m, 2, &all(&m)), MergeStep::Align { right: 3, change: first });
        m.begin_replica_change(3, first).unwrap();
        assert_eq!(plan_merge_step(&m, 2, &all(&m)), MergeStep::Wait);
        assert!(plan_rebalance(&m, &all(&m), M).iter().all(|(s, _)| *s != 2 && *s != 3));
        m.finish_replica_change(3, first).unwrap();
        let second = ReplicaChange { add: Some(3), remove: Some(4) };
        assert_eq!(plan_merge_step(&m, 2, &all(&m)), MergeStep::Align { right: 3, change: second });
        m.begin_replica_change(3, second).unwrap();
        m.finish_replica_change(3, second).unwrap();
        assert_eq!(plan_merge_step(&m, 2, &all(&m)), MergeStep::Freeze);

        // A replica's node drains before the freeze: the merge is given up,
        // and only then does the drain move it.
        set(&mut m, 1, NodeState::Draining);
        assert!(matches!(plan_merge_step(&m, 2, &all(&m)), MergeStep::Cancel(why) if why.contains("node 1")));
        assert!(plan_drains(&m, &all(&m), M).iter().all(|(s, _)| *s != 2 && *s != 3));
        set(&mut m, 1, NodeState::Up);

        // A replica that does not answer holds the freeze off.
        let mut some = all(&m);
        some.remove(&2);
        assert_eq!(plan_merge_step(&m, 2, &some), MergeStep::Wait);

        m.freeze_merge(2).unwrap();
        assert_eq!(plan_merge_step(&m, 2, &all(&m)), MergeStep::Seal { right: 3 });
        m.commit_merge(2, 40).unwrap();
        let epoch = m.shard(3).unwrap().epoch.max(m.shard(2).unwrap().epoch) + 1;
        assert_eq!(plan_merge_step(&m, 2, &all(&m)), MergeStep::Carry { right: 3, epoch, index: 40 });
        set(&mut m, 1, NodeState::Draining);
        let step = plan_merge_step(&m, 2, &some);
        assert_eq!(step, MergeStep::Carry { right: 3, epoch, index: 40 }, "sealed, it goes on");
    }

    /// Automatic merges take only boundaries an automatic split made, of
    /// small cold pairs with a whole load window, the smallest first, one
    /// at a time.
    #[test]
    fn only_small_cold_automatic_splits_merge_on_their_own() {
        let nodes = [(1, "us-east"), (2, "us-west"), (3, "eu-west")];
        let mut m = map(&nodes, &[&[1, 2, 3], &[1, 2, 3], &[1, 2, 3], &[1, 2, 3]]);
        let limits = MergeThresholds { size_bytes: 1000, load_entries_per_s: 10.0 };
        let load = |bytes, rate| ShardLoad { bytes, entries_per_s: Some(rate) };
        let mut loads: BTreeMap<u64, ShardLoad> = (1..=4).map(|id| (id, load(100, 1.0))).collect();
        assert_eq!(plan_merge(&m, &loads, limits), None, "no boundary made by an automatic split");
        m.shards[2].auto_split = true;
        m.shards[3].auto_split = true;
        assert_eq!(plan_merge(&m, &loads, limits).map(|(l, _)| l), Some(2));
        loads.insert(2, load(950, 1.0));
        assert_eq!(plan_merge(&m, &loads, limits).map(|(l, _)| l), Some(3), "the smaller pair first");
        loads.insert(4, load(100, 9.5));
        assert_eq!(plan_merge(&m, &loads, limits), None, "too big, or too hot");
        loads.insert(4, ShardLoad { bytes: 100, entries_per_s: None });
        assert_eq!(plan_merge(&m, &loads, limits), None, "a load window not measured yet");
        loads.insert(4, load(100, 1.0));
        assert!(plan_merge(&m, &loads, MergeThresholds { size_bytes: 0, ..limits }).is_none(), "0: never");
        m.begin_merge(1, 0).unwrap();
        assert_eq!(plan_merge(&m, &loads, limits), None, "one merge at a time");
    }

    fn set(map: &mut ShardMap, node: u64, state: NodeState) {
        map.set_node_state(node, state).unwrap();
    }

    fn all(map: &ShardMap) -> BTreeSet<u64> {
        map.nodes.iter().map(|n| n.id).collect()
    }

    #[test]
    fn a_drained_replica_goes_to_the_region_the_shard_lacks() {
        // Node 4 is in us-east with node 1; node 5 in eu-west, which shard
        // 1 loses when node 3 drains.
        let mut m =
            map(&[(1, "us-east"), (2, "us-west"), (3, "eu-west"), (4, "us-east"), (5, "eu-west")], &[&[1, 2, 3]]);
        set(&mut m, 3, NodeState::Draining);
        assert_eq!(plan_drains(&m, &all(&m), M), vec![(1, ReplicaChange { add: Some(5), remove: Some(3) })]);
        // Node 5 does not answer: the next best, in a covered region.
        let live: BTreeSet<u64> = [1, 2, 3, 4].into();
        assert_eq!(plan_drains(&m, &live, M), vec![(1, ReplicaChange { add: Some(4), remove: Some(3) })]);
    }

    /// A down replica moves before a draining one of the same shard (it
    /// restores fault tolerance); an eventual shard's replica is not moved
    /// while another of its replicas is down (the leaving one must ship what
    /// it took to every staying one first); otherwise eventual shards drain
    /// like Raft ones.
    #[test]
    fn down_replicas_move_first_and_eventual_ones_wait_for_their_peers() {
        let nodes = [(1, "a"), (2, "b"), (3, "c"), (4, "a"), (5, "b"), (6, "c")];
        let mut m = map(&nodes, &[&[1, 2, 3], &[1, 2, 3]]);
        m.shards[1].mode = crate::shards::ShardMode::Eventual;
        set(&mut m, 1, NodeState::Draining);
        let removed = |plan: &[(u64, ReplicaChange)]| plan.iter().map(|(s, c)| (*s, c.remove)).collect::<Vec<_>>();
        assert_eq!(removed(&plan_drains(&m, &all(&m), 4)), [(1, Some(1)), (2, Some(1))]);
        assert!(drain_blockers(&m, 1).is_empty(), "eventual replicas move too");
        set(&mut m, 2, NodeState::Down);
        assert_eq!(removed(&plan_drains(&m, &all(&m), 4)), [(1, Some(2)), (2, Some(2))], "the down replica first");
        set(&mut m, 3, NodeState::Down);
        assert_eq!(removed(&plan_drains(&m, &all(&m), 4)), [(1, Some(2))], "not the eventual one: 3 is down too");
    }

    #[test]
    fn moves_spread_by_load_and_stay_within_the_budget() {
        let mut m = map(
            &[(1, "a"), (2, "b"), (3, "c"), (4, "a"), (5, "a")],
            &[&[1, 2, 3], &[1, 2, 3], &[1, 2, 3], &[1, 2, 3], &[4, 2, 3]],
        );
        set(&mut m, 1, NodeState::Draining);
        let plan = plan_drains(&m, &all(&m), M);
        assert_eq!(plan.len(), M);
        // Node 5 holds nothing, node 4 one replica: the first move goes to 5,
        // the second to 4 or 5 by load (1 each), the lower id first.
        assert_eq!(plan[0], (1, ReplicaChange { add: Some(5), remove: Some(1) }));
        assert_eq!(plan[1], (2, ReplicaChange { add: Some(4), remove: Some(1) }));
        // Changes under way count against the budget.
        m.begin_replica_change(1, plan[0].1).unwrap();
        let next = plan_drains(&m, &all(&m), M);
        assert_eq!(next.len(), M - 1);
        assert_ne!(next[0].0, 1, "a shard already changing is left alone");
        // The budget is the operator's: one at a time, or all four at once.
        assert_eq!(plan_drains(&m, &all(&m), 1), Vec::new(), "one change is under way already");
        assert_eq!(plan_drains(&m, &all(&m), 5).len(), 3, "every other shard on node 1 moves at once");
    }

    #[test]
    fn nothing_moves_onto_leaving_nodes_or_off_nodes_that_stay() {
        let mut m = map(&[(1, "a"), (2, "b"), (3, "c"), (4, "a")], &[&[1, 2, 3]]);
        assert!(plan_drains(&m, &all(&m), M).is_empty(), "no node is leaving");
        set(&mut m, 4, NodeState::Draining);
        set(&mut m, 1, NodeState::Draining);
        assert!(plan_drains(&m, &all(&m), M).is_empty(), "the only spare node is leaving too");
        assert_eq!(drain_blockers(&m, 1).len(), 1, "{:?}", drain_blockers(&m, 1));
    }

    #[test]
    fn blockers_name_each_shard_that_cannot_leave() {
        let m = map(&[(1, "a"), (2, "b"), (3, "c")], &[&[1, 2, 3], &[1, 2, 3]]);
        let blockers = drain_blockers(&m, 2);
        assert_eq!(blockers.len(), 2);
        assert!(blockers[0].contains("shard 1 has nowhere to go"), "{blockers:?}");
        let m = map(&[(1, "a"), (2, "b"), (3, "c"), (4, "a")], &[&[1, 2, 3], &[4, 2, 3]]);
        assert!(drain_blockers(&m, 1).is_empty());
        assert!(drain_blockers(&m, 4).is_empty(), "node 1 can take shard 2's replica");
    }

    #[test]
    fn a_down_node_is_replaced_in_the_region_its_shards_lack() {
        let mut m = map(&[(1, "a"), (2, "b"), (3, "c"), (4, "c")], &[&[1, 2, 3], &[1, 2, 3]]);
        set(&mut m, 3, NodeState::Down);
        // Node 3 answers nothing, which does not matter: it is the source.
        let live: BTreeSet<u64> = [1, 2, 4].into();
        let plan = plan_drains(&m, &live, M);
        assert_eq!(plan.len(), 2);
        assert!(plan.iter().all(|(_, c)| *c == ReplicaChange { add: Some(4), remove: Some(3) }), "{plan:?}");
        assert!(plan_rebalance(&m, &live, M).is_empty(), "nothing rebalances while a node has replicas to leave");
    }

    #[test]
    fn a_joined_node_fills_up_without_losing_a_region() {
        // Node 4 joined in region c: only node 3's replicas may go to it
        // (anything else would put two replicas in c).
        let mut m = map(&[(1, "a"), (2, "b"), (3, "c"), (4, "c")], &[&[1, 2, 3][..]; 6]);
        let live = all(&m);
        let mut moved = 0;
        for _ in 0..10 {
            let plan = plan_rebalance(&m, &live, M);
            if plan.is_empty() {
                break;
            }
            assert!(plan.len() <= M);
            for (shard, change) in plan {
                assert_eq!(change, ReplicaChange { add: Some(4), remove: Some(3) });
                m.begin_replica_change(shard, change).unwrap();
                m.finish_replica_change(shard, change).unwrap();
                moved += 1;
            }
        }
        assert_eq!(moved, 3, "6 replicas between nodes 3 and 4: 3 each");
        let load = replica_counts(&m);
        assert_eq!((load[&3], load[&4]), (3, 3));
        // A joined node that does not answer gets nothing.
        let mut m = map(&[(1, "a"), (2, "b"), (3, "c"), (4, "c")], &[&[1, 2, 3][..]; 6]);
        assert!(plan_rebalance(&m, &[1, 2, 3].into(), M).is_empty());
        m.nodes[3].state = NodeState::Joining;
        assert!(plan_rebalance(&m, &all(&m), M).is_empty(), "a joining node takes no replica yet");
    }

    #[test]
    fn a_region_added_back_gets_the_shards_that_doubled_up() {
        // After region c was lost, shard 1 was re-replicated in region a.
        let m = map(&[(1, "a"), (2, "b"), (3, "c"), (4, "a")], &[&[1, 2, 4], &[2, 3, 4]]);
        let plan = plan_rebalance(&m, &all(&m), M);
        assert_eq!(plan[0], (1, ReplicaChange { add: Some(3), remove: Some(4) }), "{plan:?}");
        // Balanced and spread: nothing to do.
        let m = map(&[(1, "a"), (2, "b"), (3, "c")], &[&[1, 2, 3], &[2, 3, 1]]);
        assert!(plan_rebalance(&m, &all(&m), M).is_empty());
    }

    #[test]
    fn leaders_spread_over_the_voters_and_preferences_win() {
        // Every shard on nodes 1-3, node 3 leads all four.
        let mut m = map(&[(1, "a"), (2, "b"), (3, "c")], &[&[1, 2, 3][..]; 4]);
        let mut leaders: BTreeMap<u64, u64> = (1..=4).map(|s| (s, 3)).collect();
        let live = all(&m);
        let mut rounds = 0;
        loop {
            let plan = plan_leader_transfers(&m, &leaders, &live);
            if plan.is_empty() {
                break;
            }
            assert!(plan.len() <= MAX_LEADER_TRANSFERS);
            for (shard, from, to) in plan {
                assert_eq!(leaders[&shard], from);
                leaders.insert(shard, to);
            }
            rounds += 1;
            assert!(rounds < 10, "no end to the transfers: {leaders:?}");
        }
        let mut count: BTreeMap<u64, usize> = BTreeMap::new();
        leaders.values().for_each(|l| *count.entry(*l).or_default() += 1);
        assert!(count.values().max().unwrap() - count.values().min().unwrap() <= 1, "{count:?}");
        assert_eq!(count.len(), 3, "every node leads something: {count:?}");
        // A node that does not answer is given nothing; a preferred region is
        // not second-guessed.
        let leaders: BTreeMap<u64, u64> = (1..=4).map(|s| (s, 3)).collect();
        let plan = plan_leader_transfers(&m, &leaders, &[1, 3].into());
        assert!(plan.iter().all(|(_, _, to)| *to == 1), "{plan:?}");
        for s in &mut m.shards {
            s.preferred_leader_region = Some("c".into());
        }
        assert!(plan_leader_transfers(&m, &leaders, &live).is_empty());
    }

    #[test]
    fn a_change_given_up_frees_the_shard_for_another() {
        let mut m = map(&[(1, "a"), (2, "b"), (3, "c"), (4, "a"), (5, "a")], &[&[1, 2, 3]]);
        let to_four = ReplicaChange { add: Some(4), remove: Some(1) };
        m.begin_replica_change(1, to_four).unwrap();
        set(&mut m, 4, NodeState::Down);
        let err = m.cancel_replica_change(1, ReplicaChange { add: Some(5), remove: Some(1) }).unwrap_err();
        assert!(err.contains("not move from node 1 to node 5"), "{err}");
        assert_eq!(m.cancel_replica_change(1, to_four), Ok(true));
        assert_eq!(m.cancel_replica_change(1, to_four), Ok(false), "a retry");
        assert_eq!(m.shard(1).unwrap().replicas, vec![1, 2, 3], "nothing else changed");
        m.validate().unwrap();
        set(&mut m, 1, NodeState::Draining);
        assert_eq!(plan_drains(&m, &all(&m), M), vec![(1, ReplicaChange { add: Some(5), remove: Some(1) })]);
    }

    #[test]
    fn the_shard_furthest_past_a_threshold_splits_first() {
        let mut m = map(&[(1, "a"), (2, "b"), (3, "c")], &[&[1, 2, 3][..]; 3]);
        let limits = SplitThresholds { size_bytes: 100, load_entries_per_s: 50 };
        let load = |bytes, rate| ShardLoad { bytes, entries_per_s: rate };
        let mut loads: BTreeMap<u64, ShardLoad> =
            [(1, load(90, Some(40.0))), (2, load(150, None)), (3, load(10, Some(100.0)))].into();
        // Shard 3 is 2x over its load, shard 2 1.5x over its size.
        let (shard, why) = plan_split(&m, &loads, limits).unwrap();
        assert_eq!(shard, 3);
        assert!(why.contains("entries/s"), "{why}");
        // Thresholds of 0 are off; a shard changing replicas waits.
        assert_eq!(plan_split(&m, &loads, SplitThresholds { load_entries_per_s: 0, ..limits }).unwrap().0, 2);
        m.shards[1].change = Some(ReplicaChange { add: None, remove: Some(1) });
        assert!(plan_split(&m, &loads, SplitThresholds { load_entries_per_s: 0, ..limits }).is_none());
        assert!(plan_split(&m, &loads, SplitThresholds { size_bytes: 0, load_entries_per_s: 0 }).is_none());
        loads.clear();
        assert!(plan_split(&m, &loads, limits).is_none(), "nothing known, nothing split");
    }

    #[test]
    fn removal_waits_for_an_empty_node_and_is_final() {
        let mut m = map(&[(1, "a"), (2, "b"), (3, "c"), (4, "a")], &[&[1, 2, 3]]);
        assert!(m.set_node_state(1, NodeState::Removed).unwrap_err().contains("still holds replicas"));
        assert_eq!(m.set_node_state(4, NodeState::Removed), Ok(true));
        assert_eq!(m.set_node_state(4, NodeState::Removed), Ok(false), "a retry");
        assert!(m.set_node_state(4, NodeState::Up).unwrap_err().contains("never reused"));
        let err = m.begin_replica_change(1, ReplicaChange { add: Some(4), remove: Some(1) }).unwrap_err();
        assert!(err.contains("removed"), "{err}");
        assert!(m.set_node_state(9, NodeState::Draining).unwrap_err().contains("no node 9"));
    }
}
