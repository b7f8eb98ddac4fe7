//! The nemesis: a seeded schedule of fault windows and the lab calls that
//! carry it out.
//!
//! A [`Schedule`] alternates fault windows with healthy ones. It is made
//! from the seed before any operation runs (after the lab is up, so that a
//! shard's id is known), saved as `schedule.json`, and can be replayed with
//! `--schedule FILE`. Faults that name "the leader" are resolved when their
//! window starts — who leads is the cluster's business, not the seed's — and
//! the nemesis `start` event records which node it hit.
//!
//! Every window ends with a *heal all*: partitions and latency overrides
//! cleared, killed nodes restarted, paused nodes resumed. So windows never
//! pile up, and the final heal before the liveness phase is the same call.
//! Faults overlap *within* a window instead: a `composed` window cuts the
//! network and, while it is cut, kills, pauses or quickly restarts a node
//! (Jepsen's etcd suite composes nemeses the same way), and a `restart`
//! window brings a killed node back within [`QUICK_RESTART_MIN_MS`]..
//! [`QUICK_RESTART_MAX_MS`], inside the vote quarantine it may have promised
//! its old leader. A `clock` window restarts a node with its wall clock
//! shifted (libfaketime; monotonic time stays true) and the heal restarts it
//! with a true one.

use std::time::Duration;

use geokv_lab::{Endpoint, FaultShape, Lab, Partition, ProcessState};
use serde::{Deserialize, Serialize};

/// The first fault starts after this much healthy time (clients warm up).
pub const LEAD_IN_MS: u64 = 1_000;
/// A fault window lasts between these (pauses: at least [`PAUSE_MIN_MS`]).
pub const FAULT_MIN_MS: u64 = 2_000;
pub const FAULT_MAX_MS: u64 = 5_000;
/// Pauses outlast the time the followers take to elect a new leader with the
/// default timing (a follower campaigns once the leader lease,
/// `election_timeout_max_ms` = 1 s, and then one election timeout of
/// 0.5–1 s have passed without a heartbeat: 1.5–2 s), so they elect one
/// while the old leader is frozen.
pub const PAUSE_MIN_MS: u64 = 3_500;
/// The nodes' default `raft.max_clock_offset_ms`; clock skews are multiples
/// of it, within the bound (0.5×) and beyond it (2×, 5×, 20×).
pub const DEFAULT_CLOCK_OFFSET_BOUND_MS: i64 = 50;
const CLOCK_SKEW_FACTORS_TENTHS: [i64; 4] = [5, 20, 50, 200];

/// The nodes' default `raft.election_timeout_max_ms` (the server's own
/// default, read from it): the lease a follower promises its leader.
pub fn default_election_timeout_max_ms() -> u64 {
    geokv_server::config::RaftConfig::default().election_timeout_max_ms
}
/// A `lease-race` window holds this long after the new leader can have been
/// elected, for writes to it and lease reads at the old one.
pub const LEASE_RACE_AFTER_MS: u64 = 2_000;

/// How long a quick restart keeps its node down (the window itself lasts
/// [`FAULT_MIN_MS`]..[`FAULT_MAX_MS`], the node up again for most of it).
pub const QUICK_RESTART_MIN_MS: u64 = 50;
pub const QUICK_RESTART_MAX_MS: u64 = 300;
/// Healthy time between faults.
pub const HEAL_MIN_MS: u64 = 1_500;
pub const HEAL_MAX_MS: u64 = 3_500;
/// Most windows one schedule holds.
pub const MAX_WINDOWS: usize = 10_000;

/// A small, stable PRNG (SplitMix64): the same seed gives the same numbers
/// whatever version of `rand` the workspace uses.
#[derive(Clone, Debug)]
pub struct SeededRng(u64);

impl SeededRng {
    pub fn new(seed: u64) -> SeededRng {
        SeededRng(seed)
    }

    /// A stream derived from `seed` for one purpose (`stream` tells them apart).
    pub fn derived(seed: u64, stream: u64) -> SeededRng {
        let mut rng = SeededRng(seed ^ stream.wrapping_mul(0xA24B_AED4_963E_E407));
        rng.next_u64();
        rng
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        assert!(low <= high, "empty range {low}..={high}");
        low + self.next_u64() % (high - low + 1)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "below(0)");
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `percent`/100.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

/// The fault families `--nemesis` chooses from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NemesisKind {
    Partition,
    Kill,
    Pause,
    Latency,
    /// Kill a node and start it again within 50-300 ms.
    Restart,
    /// A partition and, during it, a kill, pause or quick restart.
    Composed,
    /// One node's wall clock offset by ±(0.5 … 20) × the nodes' default
    /// offset bound (50 ms), through libfaketime.
    Clock,
    /// Split the shard holding a workload-shaped key at that key, alone or
    /// while a partition or a kill holds. Permanent: the heal leaves it.
    Split,
    /// Hand a shard's leadership to another voter, alone or while a
    /// partition or a kill holds.
    TransferLeader,
    /// Move a replica of the shard holding a workload-shaped key to a node
    /// without one (learner, catch-up, joint consensus), alone or while a
    /// partition or a kill holds. Needs more nodes than replicas.
    MoveReplica,
    /// Merge the shard holding a workload-shaped key with a neighbour
    /// (replicas aligned first, then the freeze and the absorb), alone or
    /// while a partition or a kill holds. Permanent.
    Merge,
    /// Add a node (`geokv --join`) when the lab has no joined node that is
    /// up, else drain and remove that one (`kvctl node remove --force`),
    /// alone or while a partition or a kill holds. Permanent.
    AddRemoveNode,
    /// The restart race of a leader lease ([`Fault::LeaseRace`]): a
    /// follower cut off from the leader until its promise lapses, then the
    /// leader's region cut off and the other follower restarted at once. Needs 3
    /// nodes. Not part of `all`: it is aimed at one hole (a restarted node
    /// that votes or campaigns inside the lease it promised), caught with
    /// lease reads when the nodes run `--unsafe-no-vote-quarantine`.
    LeaseRace,
}

impl NemesisKind {
    pub const ALL: [NemesisKind; 7] = [
        NemesisKind::Partition,
        NemesisKind::Kill,
        NemesisKind::Pause,
        NemesisKind::Latency,
        NemesisKind::Restart,
        NemesisKind::Composed,
        NemesisKind::Clock,
    ];
}

/// Which nodes a process fault hits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "of", rename_all = "snake_case")]
pub enum Target {
    /// These nodes (one, or a minority).
    Nodes { ids: Vec<u64> },
    /// Whichever node leads `shard` when the window starts.
    Leader { shard: u64 },
    /// The lowest-numbered node not leading `shard` when the window starts
    /// (the node [`Fault::IsolateFollower`] picks while the leader stays).
    Follower { shard: u64 },
    /// Every node.
    All,
}

/// One fault. Wherever a fault names a shard, shard 0 (the metadata
/// shard, never a fault target) stands for the shard of the run's workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Cut the links of a lab shape (halves, isolate node / leader, ring,
    /// bridge, one-way links).
    Partition { shape: FaultShape, mode: Partition },
    /// Isolate one node that does *not* lead `shard` when the window starts
    /// (the lowest-numbered follower): its clients keep reaching it, so
    /// reads it serves locally fall behind the majority's writes.
    IsolateFollower { shard: u64 },
    /// SIGKILL; the heal restarts them on their data.
    Kill { target: Target },
    /// SIGKILL, then a restart on the same data `down_ms` later, inside the
    /// window.
    Restart { target: Target, down_ms: u64 },
    /// Every fault of `faults`, applied in order `gap_ms` apart and held
    /// together until the window ends (never nested).
    Composed { faults: Vec<Fault>, gap_ms: u64 },
    /// Restart the nodes with their wall clocks `offset_ms` off (monotonic
    /// time stays true) and, with `rate_percent`, both clocks running at that
    /// speed (25: a quarter); the heal restarts them with true clocks.
    ClockSkew {
        target: Target,
        offset_ms: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rate_percent: Option<u32>,
    },
    /// SIGSTOP; the heal sends SIGCONT.
    Pause { target: Target },
    /// One-way delay (and jitter) on every link between two nodes.
    Latency { delay_ms: u64, jitter_ms: u64 },
    /// Split whichever shard holds `key` at `key` (`Admin.SplitShard`).
    Split { key: String },
    /// Ask `shard`'s leader to hand leadership to node `to` (the next node
    /// when `to` leads already).
    TransferLeader { shard: u64, to: u64 },
    /// Move a replica of whichever shard holds `key` (`Admin.MoveReplica`):
    /// from its `from`-th replica (modulo their number) to the `to`-th node
    /// without one, and wait for the move to finish. Permanent.
    MoveReplica { key: String, from: u64, to: u64 },
    /// Merge whichever shard holds `key` with the shard after it (with the
    /// one before it when `with_previous`, or when it is the last), through
    /// `Admin.MergeShard`, and wait for the merge to end. Permanent.
    Merge { key: String, with_previous: bool },
    /// Add a node in the `region`-th region (modulo their number), or, when
    /// a node the lab added is up, drain and remove it for good; waits for
    /// the admission or the removal.
    AddRemoveNode { region: u64 },
    /// With L the leader of `shard` when the window starts, B its
    /// lowest-numbered follower and A the next one: cut L-B both ways;
    /// `gap_ms` later (once B's promise not to vote against L has lapsed)
    /// cut L's region (L, alone in it, and its clients) off from everything
    /// else, kill A and start it again `down_ms` later. L's lease rests on
    /// A's last acknowledgement; A and B are a majority that may elect a
    /// leader only once that lease is over, which A, restarted, no longer
    /// knows: only its vote quarantine keeps it from voting or campaigning
    /// at once. L's region's clients reach only L and keep reading from it.
    /// Issue 12's finding 1, in its strong form.
    LeaseRace { shard: u64, gap_ms: u64, down_ms: u64 },
}

/// A fault held from `start_ms` to `end_ms` (run time, from the first operation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub start_ms: u64,
    pub end_ms: u64,
    pub fault: Fault,
}

/// The whole nemesis plan of a run.
///
/// Invariants (checked by [`Schedule::validate`]): windows are in time
/// order, each non-empty, none overlapping the next.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// The seed it was generated from (informational for replays).
    pub seed: u64,
    pub windows: Vec<Window>,
}

impl Schedule {
    /// A seeded schedule of `kinds` faults within `time_limit_ms`, for a lab
    /// of `nodes` nodes whose workload lives on `shard`.
    pub fn generate(seed: u64, kinds: &[NemesisKind], time_limit_ms: u64, nodes: usize, shard: u64) -> Schedule {
        Schedule::generate_timed(seed, kinds, time_limit_ms, nodes, shard, default_election_timeout_max_ms())
    }

    /// As [`Schedule::generate`], for nodes whose `election_timeout_max_ms`
    /// (their lease promise, and how long a `lease-race` waits) is this.
    pub fn generate_timed(
        seed: u64,
        kinds: &[NemesisKind],
        time_limit_ms: u64,
        nodes: usize,
        shard: u64,
        election_timeout_max_ms: u64,
    ) -> Schedule {
        let mut rng = SeededRng::derived(seed, 0x004E_454D_4553_4953);
        let mut windows = Vec::new();
        let mut t = LEAD_IN_MS;
        let ids: Vec<u64> = (1..=nodes as u64).collect();
        while !kinds.is_empty() && windows.len() < MAX_WINDOWS {
            let kind = kinds[rng.below(kinds.len())];
            let fault = random_fault(&mut rng, kind, &ids, shard, election_timeout_max_ms);
            let pauses = match &fault {
                Fault::Composed { faults, .. } => faults.iter().any(|f| matches!(f, Fault::Pause { .. })),
                fault => matches!(fault, Fault::Pause { .. }),
            };
            let min = match &fault {
                // The cut, the restart, then up to two election timeouts for
                // A and B to elect a leader, and time for writes to it.
                Fault::LeaseRace { gap_ms, down_ms, .. } => {
                    gap_ms + down_ms + 2 * election_timeout_max_ms + LEASE_RACE_AFTER_MS
                }
                _ if pauses => PAUSE_MIN_MS,
                _ => FAULT_MIN_MS,
            };
            let length = rng.between(min, FAULT_MAX_MS.max(min));
            // Leave healthy time at the end: the last window heals before the limit.
            if t + length + HEAL_MIN_MS > time_limit_ms {
                break;
            }
            windows.push(Window { start_ms: t, end_ms: t + length, fault });
            t += length + rng.between(HEAL_MIN_MS, HEAL_MAX_MS);
        }
        Schedule { seed, windows }
    }

    /// Checks the invariants listed on the type.
    pub fn validate(&self) -> Result<(), String> {
        if self.windows.len() > MAX_WINDOWS {
            return Err(format!("{} windows, over the limit of {MAX_WINDOWS}", self.windows.len()));
        }
        let mut previous_end = 0;
        for (i, w) in self.windows.iter().enumerate() {
            if w.end_ms <= w.start_ms {
                return Err(format!("window {i} ends ({} ms) before it starts ({} ms)", w.end_ms, w.start_ms));
            }
            if w.start_ms < previous_end {
                return Err(format!("window {i} starts at {} ms, before window {} ended", w.start_ms, i - 1));
            }
            previous_end = w.end_ms;
        }
        Ok(())
    }
}

fn pick_nodes(rng: &mut SeededRng, ids: &[u64], count: usize) -> Vec<u64> {
    let mut pool = ids.to_vec();
    let mut picked = Vec::new();
    for _ in 0..count.min(pool.len()) {
        picked.push(pool.remove(rng.below(pool.len())));
    }
    picked.sort_unstable();
    picked
}

/// How a generated partition cuts: mostly a stall (bytes held, the peers
/// see silence), one in [`RESET_ONE_IN`] a reset (every connection on the
/// cut links closed with an RST and new ones refused: the client sees its
/// connection drop mid-request, the case that makes retried writes'
/// outcomes unknown).
fn partition_mode(rng: &mut SeededRng) -> Partition {
    if rng.below(RESET_ONE_IN) == 0 { Partition::Reset } else { Partition::Stall }
}

/// One generated partition in this many resets its connections.
pub const RESET_ONE_IN: usize = 3;

fn random_fault(rng: &mut SeededRng, kind: NemesisKind, ids: &[u64], shard: u64, election_max_ms: u64) -> Fault {
    let n = ids.len();
    let minority = (n - 1) / 2;
    let one = |rng: &mut SeededRng| ids[rng.below(n)];
    match kind {
        NemesisKind::Partition => {
            // Ring and bridge need five nodes.
            let choices = if n >= 5 { 6 } else { 4 };
            let shape = match rng.below(choices) {
                0 => FaultShape::RandomHalves { seed: rng.next_u64() },
                1 => FaultShape::IsolateNode { node: one(rng) },
                2 => FaultShape::IsolateLeader { shard },
                3 => {
                    let from = one(rng);
                    let to = ids.iter().filter(|&&id| id != from).map(|&id| Endpoint::Node(id)).collect();
                    FaultShape::Links { from: vec![Endpoint::Node(from)], to, one_way: true }
                }
                4 => FaultShape::MajoritiesRing { seed: rng.next_u64() },
                _ => FaultShape::Bridge { seed: rng.next_u64() },
            };
            Fault::Partition { shape, mode: partition_mode(rng) }
        }
        NemesisKind::Kill => {
            let target = match rng.below(4) {
                0 => Target::Nodes { ids: vec![one(rng)] },
                1 => Target::Nodes { ids: pick_nodes(rng, ids, minority.max(1)) },
                2 => Target::Leader { shard },
                _ => Target::All,
            };
            Fault::Kill { target }
        }
        NemesisKind::Pause => {
            let target = match rng.below(3) {
                0 => Target::Nodes { ids: vec![one(rng)] },
                1 => Target::Nodes { ids: pick_nodes(rng, ids, minority.max(1)) },
                _ => Target::Leader { shard },
            };
            Fault::Pause { target }
        }
        NemesisKind::Latency => Fault::Latency { delay_ms: rng.between(100, 400), jitter_ms: rng.between(0, 50) },
        NemesisKind::Restart => {
            let target =
                if rng.below(2) == 0 { Target::Nodes { ids: vec![one(rng)] } } else { Target::Leader { shard } };
            Fault::Restart { target, down_ms: rng.between(QUICK_RESTART_MIN_MS, QUICK_RESTART_MAX_MS) }
        }
        NemesisKind::Clock => {
            let target =
                if rng.below(2) == 0 { Target::Nodes { ids: vec![one(rng)] } } else { Target::Leader { shard } };
            let factor = CLOCK_SKEW_FACTORS_TENTHS[rng.below(CLOCK_SKEW_FACTORS_TENTHS.len())];
            let sign = if rng.below(2) == 0 { 1 } else { -1 };
            Fault::ClockSkew {
                target,
                offset_ms: sign * DEFAULT_CLOCK_OFFSET_BOUND_MS * factor / 10,
                rate_percent: None,
            }
        }
        NemesisKind::Composed => {
            // Cut `cut` off from `peer` (or isolate it, or split the network
            // in halves), then hit a third node while the cut holds: the
            // shape of "cut L-B, restart A within 300 ms".
            let cut = one(rng);
            let others: Vec<u64> = ids.iter().copied().filter(|&id| id != cut).collect();
            let peer = others[rng.below(others.len())];
            let hit = others.iter().copied().find(|&id| id != peer).unwrap_or(peer);
            let shape = match rng.below(3) {
                0 => FaultShape::IsolateNode { node: cut },
                1 => FaultShape::RandomHalves { seed: rng.next_u64() },
                _ => FaultShape::Links {
                    from: vec![Endpoint::Node(cut)],
                    to: vec![Endpoint::Node(peer)],
                    one_way: false,
                },
            };
            let partition = Fault::Partition { shape, mode: partition_mode(rng) };
            let target = Target::Nodes { ids: vec![hit] };
            let second = match rng.below(3) {
                0 => Fault::Kill { target },
                1 => Fault::Pause { target },
                _ => Fault::Restart { target, down_ms: rng.between(QUICK_RESTART_MIN_MS, QUICK_RESTART_MAX_MS) },
            };
            Fault::Composed { faults: vec![partition, second], gap_ms: rng.between(200, 1_500) }
        }
        NemesisKind::LeaseRace => Fault::LeaseRace {
            shard,
            // Past B's promise, but before B campaigns (the promise and at
            // least one election timeout, half the maximum by default).
            gap_ms: election_max_ms + rng.between(200, 400),
            down_ms: rng.between(QUICK_RESTART_MIN_MS, QUICK_RESTART_MAX_MS),
        },
        NemesisKind::Split
        | NemesisKind::TransferLeader
        | NemesisKind::MoveReplica
        | NemesisKind::Merge
        | NemesisKind::AddRemoveNode => {
            // Register keys are r<group>-<epoch>, set elements set/<e>.
            let prefix = ["r", "set/"][rng.below(2)];
            let change = match kind {
                NemesisKind::Split => Fault::Split { key: format!("{prefix}{}", rng.between(1, 9)) },
                NemesisKind::Merge => {
                    Fault::Merge { key: format!("{prefix}{}", rng.between(1, 9)), with_previous: rng.below(2) == 0 }
                }
                NemesisKind::AddRemoveNode => Fault::AddRemoveNode { region: rng.between(0, 5) },
                NemesisKind::MoveReplica => Fault::MoveReplica {
                    key: format!("{prefix}{}", rng.between(1, 9)),
                    from: rng.between(0, 2),
                    to: rng.between(0, 2),
                },
                _ => Fault::TransferLeader { shard, to: one(rng) },
            };
            // Alone, or while a node is cut off or killed.
            let during = match rng.below(3) {
                0 => return change,
                1 => Fault::Partition { shape: FaultShape::IsolateNode { node: one(rng) }, mode: Partition::Stall },
                _ => Fault::Kill { target: Target::Nodes { ids: vec![one(rng)] } },
            };
            Fault::Composed { faults: vec![during, change], gap_ms: rng.between(200, 1_500) }
        }
    }
}

/// What a fault did, for the nemesis `start` event.
#[derive(Clone, Debug, Serialize)]
pub struct Applied {
    pub description: String,
    pub fault: Fault,
    /// The nodes it hit, when it resolved to nodes.
    pub nodes: Vec<u64>,
}

/// The lowest-numbered node that is not `leader`.
fn first_follower(lab: &Lab, leader: u64) -> Result<u64, String> {
    lab.nodes().iter().map(|n| n.id).find(|&id| id != leader).ok_or_else(|| "no follower".to_string())
}

async fn resolve(lab: &Lab, target: &Target) -> Result<Vec<u64>, String> {
    match target {
        Target::Nodes { ids } => Ok(ids.clone()),
        Target::All => Ok(lab.nodes().iter().map(|n| n.id).collect()),
        // An election may be running: give it a moment.
        Target::Leader { shard } => match lab.wait_for_leader(*shard, LEADER_WAIT, |_| true).await {
            Ok(id) => Ok(vec![id]),
            Err(e) => Err(format!("leader of shard {shard}: {e}")),
        },
        Target::Follower { shard } => {
            let leader = Box::pin(resolve(lab, &Target::Leader { shard: *shard })).await?[0];
            first_follower(lab, leader).map(|id| vec![id])
        }
    }
}

/// Starts a fault (`workload_shard` stands in for a shard 0). An error means
/// nothing was done (e.g. no leader to hit), or for a composed fault that its
/// later parts were not (the heal undoes the earlier ones).
pub async fn apply(lab: &Lab, fault: &Fault, workload_shard: u64) -> Result<Applied, String> {
    if let Fault::Composed { faults, gap_ms } = fault {
        let mut descriptions = Vec::new();
        let mut nodes = Vec::new();
        for (i, part) in faults.iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(*gap_ms)).await;
            }
            let done = Box::pin(apply(lab, part, workload_shard)).await?;
            descriptions.push(done.description);
            nodes.extend(done.nodes);
        }
        let description = format!("composed, {gap_ms} ms apart: {}", descriptions.join(", then "));
        return Ok(Applied { description, fault: with_shard(fault, workload_shard), nodes });
    }
    let fault = &with_shard(fault, workload_shard);
    let applied = |description: String, nodes: Vec<u64>| Applied { description, fault: fault.clone(), nodes };
    match fault {
        Fault::Partition { shape, mode } => {
            let nodes = match shape {
                FaultShape::IsolateLeader { shard } => resolve(lab, &Target::Leader { shard: *shard }).await?,
                FaultShape::IsolateNode { node } => vec![*node],
                _ => Vec::new(),
            };
            // Resolve the leader once: isolate exactly the node reported.
            let shape = match (shape, nodes.first()) {
                (FaultShape::IsolateLeader { .. }, Some(&node)) => FaultShape::IsolateNode { node },
                _ => shape.clone(),
            };
            let links = lab.partition(&shape, *mode).await.map_err(|e| e.to_string())?;
            Ok(applied(format!("partition {} ({} links cut, {mode:?})", shape_text(&shape, fault), links.len()), nodes))
        }
        Fault::IsolateFollower { shard } => {
            let leader = resolve(lab, &Target::Leader { shard: *shard }).await?[0];
            let follower = first_follower(lab, leader)?;
            let links = lab.isolate_node(follower).await.map_err(|e| e.to_string())?;
            Ok(applied(
                format!(
                    "isolate follower node {follower} of shard {shard} (leader {leader}; {} links cut)",
                    links.len()
                ),
                vec![follower],
            ))
        }
        Fault::Kill { target } => {
            let ids = resolve(lab, target).await?;
            for &id in &ids {
                lab.kill(id).map_err(|e| e.to_string())?;
            }
            Ok(applied(format!("kill {} ({})", target_text(target), nodes_text(&ids)), ids))
        }
        Fault::Restart { target, down_ms } => {
            let ids = resolve(lab, target).await?;
            for &id in &ids {
                lab.kill(id).map_err(|e| e.to_string())?;
            }
            tokio::time::sleep(Duration::from_millis(*down_ms)).await;
            for &id in &ids {
                lab.restart_after_kill(id).await.map_err(|e| e.to_string())?;
            }
            Ok(applied(format!("restart {} after {down_ms} ms down ({})", target_text(target), nodes_text(&ids)), ids))
        }
        Fault::Composed { .. } => unreachable!("composed faults are applied part by part above"),
        Fault::LeaseRace { shard, gap_ms, down_ms } => {
            let leader = resolve(lab, &Target::Leader { shard: *shard }).await?[0];
            let followers: Vec<u64> = lab.nodes().iter().map(|n| n.id).filter(|&id| id != leader).collect();
            let (Some(&b), Some(&a)) = (followers.first(), followers.get(1)) else {
                return Err("a lease race needs a leader and two followers".into());
            };
            let cut =
                FaultShape::Links { from: vec![Endpoint::Node(leader)], to: vec![Endpoint::Node(b)], one_way: false };
            // L's region (L and its clients) is cut off below: its clients
            // keep L as their leader and read from it, the others move on.
            let region = lab.node(leader).map_err(|e| e.to_string())?.region.clone();
            if lab.nodes().iter().any(|n| n.region == region && n.id != leader) {
                return Err(format!("a lease race needs the leader alone in its region ({region})"));
            }
            lab.partition(&cut, Partition::Stall).await.map_err(|e| e.to_string())?;
            tokio::time::sleep(Duration::from_millis(*gap_ms)).await;
            lab.isolate_region(&region).await.map_err(|e| e.to_string())?;
            lab.kill(a).map_err(|e| e.to_string())?;
            tokio::time::sleep(Duration::from_millis(*down_ms)).await;
            lab.restart_after_kill(a).await.map_err(|e| e.to_string())?;
            Ok(applied(
                format!(
                    "lease race on shard {shard}: cut leader node {leader} from node {b}; {gap_ms} ms later isolated \
                     {region} (node {leader} and its clients) and restarted node {a} after {down_ms} ms down"
                ),
                vec![leader, b, a],
            ))
        }
        Fault::ClockSkew { target, offset_ms, rate_percent } => {
            let ids = resolve(lab, target).await?;
            let rate = rate_percent.map(|p| f64::from(p) / 100.0);
            let clock = geokv_lab::ClockFault { offset_ms: *offset_ms, rate };
            for &id in &ids {
                lab.set_clock(id, Some(clock)).await.map_err(|e| e.to_string())?;
            }
            let rate = rate.map(|r| format!(", running at {r}x")).unwrap_or_default();
            Ok(applied(format!("clock {offset_ms:+} ms{rate} on {} ({})", target_text(target), nodes_text(&ids)), ids))
        }
        Fault::Pause { target } => {
            let ids = resolve(lab, target).await?;
            for &id in &ids {
                lab.pause(id).map_err(|e| e.to_string())?;
            }
            Ok(applied(format!("pause {} ({})", target_text(target), nodes_text(&ids)), ids))
        }
        Fault::Latency { delay_ms, jitter_ms } => {
            let nodes: Vec<Endpoint> = lab.nodes().iter().map(|n| Endpoint::Node(n.id)).collect();
            lab.set_latency(&nodes, &nodes, false, Some(*delay_ms), Some(*jitter_ms)).map_err(|e| e.to_string())?;
            Ok(applied(format!("latency {delay_ms} ms ±{jitter_ms} ms one-way between all nodes"), Vec::new()))
        }
        Fault::Split { key } => {
            let (client, map) = admin_view(lab).await?;
            let shard = map.shards[shard_at(&map, key)?].shard_id;
            let split = client.split_shard(shard, key.as_bytes()).await.map_err(|e| e.to_string())?;
            Ok(applied(
                format!(
                    "split shard {shard} at {key:?}: new shard {} (epoch {})",
                    split.right_shard_id, split.right_epoch
                ),
                Vec::new(),
            ))
        }
        Fault::MoveReplica { key, from, to } => {
            let (client, map) = admin_view(lab).await?;
            let shard = &map.shards[shard_at(&map, key)?];
            let replicas: Vec<u64> = shard.replicas.iter().map(|r| r.node_id).collect();
            let spare: Vec<u64> = lab.nodes().iter().map(|n| n.id).filter(|id| !replicas.contains(id)).collect();
            if spare.is_empty() || replicas.is_empty() {
                return Err(format!("shard {} is on every node: no replica can move", shard.shard_id));
            }
            let from = replicas[*from as usize % replicas.len()];
            let to = spare[*to as usize % spare.len()];
            client.move_replica(shard.shard_id, from, to).await.map_err(|e| e.to_string())?;
            let done = client.wait_for_replica_change(shard.shard_id, MOVE_TIMEOUT).await.map_err(|e| e.to_string())?;
            let now: Vec<u64> = done.replicas.iter().map(|r| r.node_id).collect();
            Ok(applied(
                format!("moved shard {}'s replica from node {from} to node {to}: replicas {now:?}", shard.shard_id),
                vec![from, to],
            ))
        }
        Fault::Merge { key, with_previous } => {
            let (client, map) = admin_view(lab).await?;
            let at = shard_at(&map, key)?;
            let left = if (*with_previous || at + 1 == map.shards.len()) && at > 0 { at - 1 } else { at };
            let (l, r) = match (map.shards.get(left), map.shards.get(left + 1)) {
                (Some(l), Some(r)) => (l.shard_id, r.shard_id),
                _ => return Err("a single shard: nothing to merge".into()),
            };
            client.merge_shard(l).await.map_err(|e| e.to_string())?;
            let done = client.wait_for_merge(l, MOVE_TIMEOUT).await.map_err(|e| e.to_string())?;
            let absorbed = client.refresh_shard_map().await.map_err(|e| e.to_string())?.shard(r).is_none();
            let end = if done.end.is_empty() { "end".into() } else { String::from_utf8_lossy(&done.end).into_owned() };
            let replicas: Vec<u64> = done.replicas.iter().map(|r| r.node_id).collect();
            Ok(applied(
                if absorbed {
                    format!(
                        "merged shard {r} into shard {l}: it now ends at {end:?}, epoch {}, replicas {replicas:?}",
                        done.epoch
                    )
                } else {
                    format!("the merge of shards {l} and {r} was given up (a replica's node stopped being up)")
                },
                replicas,
            ))
        }
        Fault::AddRemoveNode { region } => {
            let (client, map) = admin_view(lab).await?;
            let is_up = |id: u64| map.node(id).is_some_and(|n| n.state == geokv_client::NodeState::Up);
            let added = lab.nodes().iter().find(|n| n.joined && is_up(n.id)).map(|n| n.id);
            match added {
                Some(id) => {
                    client.remove_node(id, true).await.map_err(|e| e.to_string())?;
                    let state = client.wait_for_drain(id, MOVE_TIMEOUT).await.map_err(|e| e.to_string())?;
                    Ok(applied(format!("drained and removed node {id} ({})", state.as_str()), vec![id]))
                }
                None => {
                    let regions = lab.regions();
                    let region = regions[*region as usize % regions.len()].clone();
                    let id = lab.add_node(&region).await.map_err(|e| e.to_string())?;
                    Ok(applied(format!("added node {id} in {region} (geokv --join)"), vec![id]))
                }
            }
        }
        Fault::TransferLeader { shard, to } => {
            let leader = resolve(lab, &Target::Leader { shard: *shard }).await?[0];
            let ids: Vec<u64> = lab.nodes().iter().map(|n| n.id).collect();
            let to = if *to == leader {
                ids[(ids.iter().position(|id| id == to).unwrap_or(0) + 1) % ids.len()]
            } else {
                *to
            };
            lab.transfer_leader(*shard, to, APPLY_TIMEOUT).await.map_err(|e| e.to_string())?;
            Ok(applied(format!("leadership of shard {shard} moved from node {leader} to node {to}"), vec![leader, to]))
        }
    }
}

/// A client for the topology faults, through every node's own listener (the
/// node cut off or killed may be the first one), and the shard map it
/// fetched fresh.
async fn admin_view(lab: &Lab) -> Result<(geokv_client::Client, geokv_client::ShardMap), String> {
    let endpoints: Vec<String> = lab.nodes().iter().map(|n| n.listen.to_string()).collect();
    let mut config = geokv_client::ClientConfig::new(endpoints).tls(lab.client_tls());
    config.deadline = APPLY_TIMEOUT;
    let client = config.connect().await.map_err(|e| e.to_string())?;
    let map = client.refresh_shard_map().await.map_err(|e| e.to_string())?;
    Ok((client, map))
}

/// Where in `map` the shard holding `key` is.
fn shard_at(map: &geokv_client::ShardMap, key: &str) -> Result<usize, String> {
    map.shards
        .iter()
        .rposition(|s| s.start.as_slice() <= key.as_bytes())
        .ok_or_else(|| format!("no shard holds {key:?}"))
}

/// `fault` with every shard 0 replaced by `workload_shard`.
fn with_shard(fault: &Fault, workload_shard: u64) -> Fault {
    let fix = |shard: u64| if shard == 0 { workload_shard } else { shard };
    let target = |t: &Target| match t {
        Target::Leader { shard } => Target::Leader { shard: fix(*shard) },
        Target::Follower { shard } => Target::Follower { shard: fix(*shard) },
        other => other.clone(),
    };
    match fault {
        Fault::Partition { shape: FaultShape::IsolateLeader { shard }, mode } => {
            Fault::Partition { shape: FaultShape::IsolateLeader { shard: fix(*shard) }, mode: *mode }
        }
        Fault::IsolateFollower { shard } => Fault::IsolateFollower { shard: fix(*shard) },
        Fault::LeaseRace { shard, gap_ms, down_ms } => {
            Fault::LeaseRace { shard: fix(*shard), gap_ms: *gap_ms, down_ms: *down_ms }
        }
        Fault::TransferLeader { shard, to } => Fault::TransferLeader { shard: fix(*shard), to: *to },
        Fault::Kill { target: t } => Fault::Kill { target: target(t) },
        Fault::Pause { target: t } => Fault::Pause { target: target(t) },
        Fault::Restart { target: t, down_ms } => Fault::Restart { target: target(t), down_ms: *down_ms },
        Fault::ClockSkew { target: t, offset_ms, rate_percent } => {
            Fault::ClockSkew { target: target(t), offset_ms: *offset_ms, rate_percent: *rate_percent }
        }
        Fault::Composed { faults, gap_ms } => {
            Fault::Composed { faults: faults.iter().map(|f| with_shard(f, workload_shard)).collect(), gap_ms: *gap_ms }
        }
        other => other.clone(),
    }
}

fn shape_text(shape: &FaultShape, fault: &Fault) -> String {
    let original = match fault {
        Fault::Partition { shape: FaultShape::IsolateLeader { shard }, .. } => format!("leader of shard {shard}: "),
        _ => String::new(),
    };
    let text = match shape {
        FaultShape::Links { from, to, one_way } => {
            let list = |e: &[Endpoint]| e.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
            format!("{} -> {}{}", list(from), list(to), if *one_way { " one-way" } else { "" })
        }
        FaultShape::IsolateNode { node } => format!("isolate node {node}"),
        FaultShape::IsolateRegion { region } => format!("isolate region {region}"),
        FaultShape::IsolateLeader { shard } => format!("isolate leader of shard {shard}"),
        FaultShape::RandomHalves { seed } => format!("random halves (seed {seed})"),
        FaultShape::MajoritiesRing { seed } => format!("majorities ring (seed {seed})"),
        FaultShape::Bridge { seed } => format!("bridge (seed {seed})"),
    };
    format!("{original}{text}")
}

fn target_text(target: &Target) -> String {
    match target {
        Target::Nodes { ids } if ids.len() == 1 => "one node".into(),
        Target::Nodes { .. } => "a minority".into(),
        Target::Leader { shard } => format!("the leader of shard {shard}"),
        Target::Follower { shard } => format!("a follower of shard {shard}"),
        Target::All => "all nodes".into(),
    }
}

fn nodes_text(ids: &[u64]) -> String {
    let ids: Vec<String> = ids.iter().map(|id| format!("node {id}")).collect();
    ids.join(", ")
}

/// Ends every fault: links healed (latency too), killed or exited nodes
/// restarted, paused nodes resumed. Returns what it had to do.
pub async fn heal_all(lab: &Lab) -> Vec<String> {
    let mut done = Vec::new();
    lab.links().heal(None, true);
    for node in lab.nodes() {
        if node.clock().is_some() {
            match lab.set_clock(node.id, None).await {
                Ok(()) => done.push(format!("restarted node {} with a true clock", node.id)),
                Err(e) => done.push(format!("reset node {}'s clock failed: {e}", node.id)),
            }
            continue;
        }
        match node.state() {
            ProcessState::Running => {}
            ProcessState::Paused => match lab.resume(node.id) {
                Ok(()) => done.push(format!("resumed node {}", node.id)),
                Err(e) => done.push(format!("resume node {} failed: {e}", node.id)),
            },
            ProcessState::Killed | ProcessState::Exited(_) => match lab.restart_after_kill(node.id).await {
                Ok(()) => done.push(format!("restarted node {}", node.id)),
                Err(e) => done.push(format!("restart node {} failed: {e}", node.id)),
            },
        }
    }
    done
}

/// How long a fault aimed at a leader waits for the shard to have one.
pub const LEADER_WAIT: Duration = Duration::from_secs(3);

/// How long `apply` may take before the window is skipped.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(8);

/// How long a replica move may take (it waits for the new replica's
/// snapshot and catch-up, and for a quorum cut off by a held fault).
const MOVE_TIMEOUT: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_schedule_and_it_round_trips() {
        let kinds = NemesisKind::ALL;
        let a = Schedule::generate(7, &kinds, 60_000, 5, 3);
        let b = Schedule::generate(7, &kinds, 60_000, 5, 3);
        let c = Schedule::generate(8, &kinds, 60_000, 5, 3);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.windows.len() >= 5, "{a:?}");
        a.validate().unwrap();
        let json = serde_json::to_string_pretty(&a).unwrap();
        let back: Schedule = serde_json::from_str(&json).unwrap();
        assert_eq!(a, back);
        for w in &a.windows {
            if matches!(w.fault, Fault::Pause { .. }) {
                assert!(w.end_ms - w.start_ms >= PAUSE_MIN_MS);
            }
            assert!(w.end_ms + HEAL_MIN_MS <= 60_000);
        }
    }

    #[test]
    fn three_nodes_never_get_ring_or_bridge_and_none_is_empty() {
        let (mut stalls, mut resets) = (0, 0);
        for seed in 0..50 {
            let s = Schedule::generate(seed, &[NemesisKind::Partition], 30_000, 3, 2);
            for w in &s.windows {
                let Fault::Partition { shape, mode } = &w.fault else { panic!("{w:?}") };
                assert!(!matches!(shape, FaultShape::MajoritiesRing { .. } | FaultShape::Bridge { .. }));
                match mode {
                    Partition::Stall => stalls += 1,
                    Partition::Reset => resets += 1,
                    Partition::None => panic!("a partition that cuts nothing: {w:?}"),
                }
            }
        }
        // Some partitions drop connections (RST) rather than stall them.
        assert!(resets > 0 && stalls > resets, "{stalls} stalls, {resets} resets");
        assert!(Schedule::generate(1, &[], 30_000, 3, 2).windows.is_empty());
    }

    #[test]
    fn composed_windows_cut_first_and_hit_another_node_and_restarts_are_quick() {
        let mut composed = 0;
        for seed in 0..40 {
            let s = Schedule::generate(seed, &[NemesisKind::Composed, NemesisKind::Restart], 60_000, 3, 2);
            s.validate().unwrap();
            for w in &s.windows {
                match &w.fault {
                    Fault::Composed { faults, gap_ms } => {
                        composed += 1;
                        assert!(*gap_ms < w.end_ms - w.start_ms, "the second part starts inside the window: {w:?}");
                        let [Fault::Partition { shape, .. }, second] = faults.as_slice() else { panic!("{w:?}") };
                        let hit = match second {
                            Fault::Kill { target } | Fault::Pause { target } | Fault::Restart { target, .. } => target,
                            other => panic!("{other:?}"),
                        };
                        if let (FaultShape::IsolateNode { node }, Target::Nodes { ids }) = (shape, hit) {
                            assert!(!ids.contains(node), "the second fault hits another node: {w:?}");
                        }
                        if matches!(second, Fault::Pause { .. }) {
                            assert!(w.end_ms - w.start_ms >= PAUSE_MIN_MS);
                        }
                    }
                    Fault::Restart { down_ms, .. } => {
                        assert!((QUICK_RESTART_MIN_MS..=QUICK_RESTART_MAX_MS).contains(down_ms), "{w:?}")
                    }
                    other => panic!("only the asked-for kinds: {other:?}"),
                }
            }
        }
        assert!(composed > 20, "{composed} composed windows");
    }

    #[test]
    fn lease_races_wait_out_the_promise_and_leave_time_for_an_election() {
        for max in [1_000, 3_000] {
            let s = Schedule::generate_timed(5, &[NemesisKind::LeaseRace], 120_000, 3, 2, max);
            s.validate().unwrap();
            assert!(s.windows.len() >= 3, "{s:?}");
            for w in &s.windows {
                let Fault::LeaseRace { shard, gap_ms, down_ms } = &w.fault else { panic!("{w:?}") };
                assert_eq!(*shard, 2);
                assert!(*gap_ms > max && *gap_ms < max + 500, "past the promise, before B campaigns: {w:?}");
                assert!((QUICK_RESTART_MIN_MS..=QUICK_RESTART_MAX_MS).contains(down_ms), "{w:?}");
                assert!(w.end_ms - w.start_ms >= gap_ms + down_ms + 2 * max + LEASE_RACE_AFTER_MS, "{w:?}");
            }
        }
        assert!(!NemesisKind::ALL.contains(&NemesisKind::LeaseRace), "aimed at one hole: not in `all`");
    }

    #[test]
    fn topology_changes_come_alone_or_during_a_cut_or_kill() {
        let (mut alone, mut during) = (0, 0);
        for seed in 0..30 {
            let kinds = [
                NemesisKind::Split,
                NemesisKind::TransferLeader,
                NemesisKind::MoveReplica,
                NemesisKind::Merge,
                NemesisKind::AddRemoveNode,
            ];
            let s = Schedule::generate(seed, &kinds, 60_000, 3, 2);
            s.validate().unwrap();
            for w in &s.windows {
                let change = match &w.fault {
                    Fault::Composed { faults, .. } => {
                        during += 1;
                        assert!(matches!(faults[0], Fault::Partition { .. } | Fault::Kill { .. }), "{w:?}");
                        &faults[1]
                    }
                    other => {
                        alone += 1;
                        other
                    }
                };
                match change {
                    Fault::Split { key } => assert!(key.starts_with('r') || key.starts_with("set/"), "{key}"),
                    Fault::TransferLeader { shard, to } => assert!(*shard == 2 && (1..=3).contains(to)),
                    Fault::MoveReplica { key, from, to } => {
                        assert!(key.starts_with('r') || key.starts_with("set/"), "{key}");
                        assert!(*from <= 2 && *to <= 2, "indexes into the replicas and the spare nodes: {w:?}");
                    }
                    Fault::Merge { key, .. } => assert!(key.starts_with('r') || key.starts_with("set/"), "{key}"),
                    Fault::AddRemoveNode { region } => assert!(*region <= 5, "{w:?}"),
                    other => panic!("{other:?}"),
                }
            }
        }
        assert!(alone > 10 && during > 10, "{alone} alone, {during} during another fault");
    }

    #[test]
    fn overlapping_windows_are_refused() {
        let fault = Fault::Latency { delay_ms: 1, jitter_ms: 0 };
        let w = |start_ms, end_ms| Window { start_ms, end_ms, fault: fault.clone() };
        assert!(Schedule { seed: 0, windows: vec![w(0, 10), w(5, 20)] }.validate().is_err());
        assert!(Schedule { seed: 0, windows: vec![w(10, 10)] }.validate().is_err());
        assert!(Schedule { seed: 0, windows: vec![w(0, 10), w(10, 20)] }.validate().is_ok());
    }
}
