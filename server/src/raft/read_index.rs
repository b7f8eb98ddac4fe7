//! Batched ReadIndex: concurrent linearizable reads of one shard share one
//! leadership confirmation round.
//!
//! A ReadIndex round asks a quorum to confirm leadership and yields the
//! commit index observed at its start (the *read index*). Any read that
//! *arrived before the round started* may be served once the replica has
//! applied up to that index: the read index is at least the commit index at
//! the read's arrival. So reads queue up, and a round takes everyone queued
//! when it starts. Several rounds run at once: a read that arrives
//! mid-round starts the next one right away rather than waiting a whole
//! round for the current one to finish. Under load this turns N rounds into
//! a handful per round trip. How many may run at once follows how long the
//! batcher's rounds take: 4 while they are fast (a LAN), 16 once they
//! average 10 ms or more (a WAN), see [`rounds_allowed`].
//!
//! The same batcher serves two kinds of rounds: on the leader, a ReadIndex
//! ([`leader_round`]); on a follower, one RPC asking the leader for its read
//! index (follower reads, `service::kv`).
//!
//! # One quorum round trip at the leader
//!
//! openraft's own ReadIndex (`ensure_linearizable(ReadPolicy::ReadIndex)`)
//! confirms leadership with a heartbeat sent after the read arrived, but its
//! heartbeat worker keeps at most one heartbeat in flight per follower and
//! sends the next only when the previous one is answered. A read arriving
//! while one is in flight (always, here: the safe-time pusher triggers one
//! every 50 ms, less than a WAN round trip) waits for it to come back, then
//! for its own: two quorum round trips. So the leader runs its own round
//! ([`probe_round`]): inside openraft's core, in order with every state
//! change, it takes the read index (the local commit index, once an entry of
//! this leader's term is committed, which covers its blank entry) and the
//! voter configuration; then it sends every other voter an empty append
//! (`prev_log_id` none, no entries, no commit index: it changes nothing on
//! the follower but its vote, which it already holds) carrying this leader's
//! vote, all at once. A follower answers `Success` only if it has not seen a
//! higher vote; once such answers and the leader itself make a majority of
//! every configuration, no other leader was elected before the read arrived
//! (any election needs a vote from that majority), so the read index covers
//! every write acknowledged before it. One quorum round trip, however many
//! rounds are in flight. When the index cannot be taken that way (no entry
//! of this term committed yet, say) or a follower answers with a higher
//! vote, openraft's ReadIndex decides (it also steps a deposed leader down).

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use openraft::error::{LinearizableReadError, RaftError};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
use openraft::vote::RaftLeaderId;
use openraft::{BasicNode, LinearizerOption, RaftNetworkV2, ReadPolicy, ServerState};
use tokio::sync::oneshot;

use super::network::{Peers, ShardNetwork};
use super::{ShardRaft, TypeConfig};
use crate::metrics::Metrics;

/// What a round tells each of its reads: the index they must see applied.
pub type RoundResult = Result<u64, RoundError>;

/// A round to run; called once per round.
pub type Round = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = RoundResult> + Send>> + Send + Sync>;

#[derive(Debug, Clone)]
pub enum RoundError {
    /// openraft could not confirm leadership (not leader, no quorum, stopped).
    Raft(RaftError<TypeConfig, LinearizableReadError<TypeConfig>>),
    /// The leader could not be asked, or refused (follower reads).
    Remote(String),
    /// The round did not finish in time.
    TimedOut,
}

/// Rounds one batcher runs at once while its rounds are fast. A read that
/// arrives while rounds are in flight starts a new one (up to the bound)
/// instead of waiting for the current one to finish, so a read costs one
/// round, not up to two; past the bound, reads batch into the next round.
/// Each round costs a quorum of RPCs, so on a LAN, where a round takes a
/// fraction of a millisecond and waiting for one costs little, few rounds
/// batch many reads: 16 there cost about a quarter of the linearizable read
/// throughput at 64 clients against 4 (docs/benchmarks.md).
const ROUNDS_IN_FLIGHT_WHEN_FAST: usize = 4;

/// Rounds one batcher runs at once once its rounds are slow (across a WAN):
/// at 4, eight concurrent readers already queued behind a whole round (p99
/// two rounds, leader and follower reads alike); at 16 the 3-region bench's
/// p99 is one round.
const ROUNDS_IN_FLIGHT_WHEN_SLOW: usize = 16;

/// A batcher whose rounds take this long on average (see [`Queue::note_round`])
/// counts as slow.
const SLOW_ROUND: Duration = Duration::from_millis(10);

/// How many rounds may be in flight when rounds take `typical` on average:
/// waiting for a round to finish is worth a new round only when a round is
/// long.
fn rounds_allowed(typical: Duration) -> usize {
    if typical >= SLOW_ROUND { ROUNDS_IN_FLIGHT_WHEN_SLOW } else { ROUNDS_IN_FLIGHT_WHEN_FAST }
}

#[derive(Default)]
struct Queue {
    in_flight: usize,
    waiting: Vec<oneshot::Sender<RoundResult>>,
    /// A moving average of how long this batcher's rounds took (zero
    /// before the first).
    typical_round: Duration,
}

impl Queue {
    /// Folds one round's duration into the average (weight 1/8: a change of
    /// network shows within a few dozen rounds).
    fn note_round(&mut self, took: Duration) {
        self.typical_round = if self.typical_round.is_zero() { took } else { (self.typical_round * 7 + took) / 8 };
    }
}

/// One shard's batcher for one kind of round.
#[derive(Default)]
pub struct ReadIndexBatcher {
    queue: Mutex<Queue>,
}

impl ReadIndexBatcher {
    /// Resolves with the read index of a round that started after this call.
    /// `counters` (rounds, reads) are incremented for observability.
    pub async fn confirm(self: &Arc<Self>, round: Round, counters: Arc<Metrics>) -> RoundResult {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut q = self.queue.lock().expect("read queue lock");
            q.waiting.push(tx);
            let start = q.in_flight < rounds_allowed(q.typical_round);
            if start {
                q.in_flight += 1;
            }
            start
        };
        if start {
            tokio::spawn(self.clone().run_rounds(round, counters));
        }
        rx.await.unwrap_or(Err(RoundError::TimedOut))
    }

    /// Runs rounds while reads are waiting; each round takes every read
    /// queued when it starts (they all arrived before it started).
    async fn run_rounds(self: Arc<Self>, round: Round, counters: Arc<Metrics>) {
        loop {
            let batch = {
                let mut q = self.queue.lock().expect("read queue lock");
                if q.waiting.is_empty() {
                    q.in_flight -= 1;
                    return;
                }
                std::mem::take(&mut q.waiting)
            };
            counters.read_index_rounds.inc();
            counters.read_index_reads.inc_by(batch.len() as u64);
            let started = tokio::time::Instant::now();
            let result = round().await;
            self.queue.lock().expect("read queue lock").note_round(started.elapsed());
            for waiter in batch {
                let _ = waiter.send(result.clone());
            }
        }
    }
}

/// The leader-side round: a [`probe_round`] (one quorum round trip), or
/// openraft's ReadIndex when the probe cannot decide; bounded by `timeout`.
/// Either way it resolves only once this replica has applied the read
/// index (the caller reads its state machine next), as openraft's does: a
/// new leader can have committed more than it has applied yet.
pub fn leader_round(raft: ShardRaft, shard: u64, peers: Arc<Peers>, timeout: Duration) -> Round {
    Arc::new(move || {
        let (raft, peers) = (raft.clone(), peers.clone());
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            match tokio::time::timeout_at(deadline, probe_round(&raft, shard, &peers)).await {
                Ok(Probe::Confirmed(index)) => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let applied = raft.wait(Some(left)).applied_index_at_least(Some(index), "read index").await;
                    return applied.map(|_| index).map_err(|_| RoundError::TimedOut);
                }
                Err(_) => return Err(RoundError::TimedOut),
                Ok(Probe::Undecided) => {}
            }
            match tokio::time::timeout_at(deadline, raft.ensure_linearizable(ReadPolicy::ReadIndex)).await {
                Ok(Ok(read_log_id)) => Ok(read_log_id.index()),
                Ok(Err(e)) => Err(RoundError::Raft(e)),
                Err(_) => Err(RoundError::TimedOut),
            }
        })
    })
}

/// What a [`probe_round`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Probe {
    /// A majority of every voter configuration confirmed this leader after
    /// the read index was taken.
    Confirmed(u64),
    /// Not the leader, no entry of this term committed yet, a higher vote
    /// seen, or openraft stopped: ask openraft's own ReadIndex.
    Undecided,
}

/// What the leader's core says at the start of a probe round.
struct ProbeStart {
    vote: super::Vote,
    read_index: u64,
    configs: Vec<BTreeSet<u64>>,
    peers: Vec<(u64, BasicNode)>,
}

/// One leadership confirmation round of its own (see the module comment):
/// the read index taken inside openraft's core, then an empty append to
/// every other voter, all at once, until a majority of every configuration
/// has answered `Success`. Runs until decided: the caller bounds it.
pub async fn probe_round(raft: &ShardRaft, shard: u64, peers: &Arc<Peers>) -> Probe {
    let start = raft
        .with_raft_state(|st| {
            if st.server_state != ServerState::Leader {
                return None;
            }
            let vote = *st.vote_ref();
            let committed = st.local_committed()?;
            // Committed in this leader's term: it covers the blank entry, so
            // every entry an earlier leader committed.
            if !vote.is_committed() || committed.leader_id.term() != vote.leader_id().term() {
                return None;
            }
            let membership = st.membership_state.effective().membership();
            let me = *vote.leader_id().node_id();
            let configs = membership.get_joint_config().clone();
            let peers = membership
                .voter_ids()
                .filter(|id| *id != me)
                .map(|id| Some((id, membership.get_node(&id)?.clone())))
                .collect::<Option<Vec<_>>>()?;
            Some(ProbeStart { vote, read_index: committed.index, configs, peers })
        })
        .await;
    let Ok(Some(start)) = start else { return Probe::Undecided };
    let me = *start.vote.leader_id().node_id();
    let mut acked = BTreeSet::from([me]);
    if confirmed(&start.configs, &acked) {
        return Probe::Confirmed(start.read_index);
    }
    let mut network = ShardNetwork::new(shard, peers.clone());
    let mut probes = FuturesUnordered::new();
    for (id, node) in start.peers {
        let mut link = network.new_client(id, &node).await;
        let request = AppendEntriesRequest::<TypeConfig> {
            vote: start.vote,
            prev_log_id: None,
            entries: Vec::new(),
            leader_commit: None,
        };
        probes.push(async move { (id, link.append_entries(request, RPCOption::new(PROBE_RPC_TTL)).await) });
    }
    while let Some((id, answer)) = probes.next().await {
        match answer {
            Ok(AppendEntriesResponse::Success) => {
                acked.insert(id);
                if confirmed(&start.configs, &acked) {
                    return Probe::Confirmed(start.read_index);
                }
            }
            Ok(AppendEntriesResponse::HigherVote(_)) => return Probe::Undecided,
            // Unreachable, or an answer an empty append cannot get: this
            // voter does not count.
            Ok(_) | Err(_) => {}
        }
    }
    Probe::Undecided
}

/// A probe RPC's own bound (the round as a whole is bounded by its caller).
const PROBE_RPC_TTL: Duration = Duration::from_secs(10);

/// Whether `acked` holds a majority of every configuration (one, or the two
/// of a joint consensus).
fn confirmed(configs: &[BTreeSet<u64>], acked: &BTreeSet<u64>) -> bool {
    configs.iter().all(|config| config.intersection(acked).count() * 2 > config.len())
}

/// A lease read: served if the leader holds a quorum acknowledgement younger
/// than `lease` (no round trip), refused at once otherwise.
pub async fn lease_read(raft: &ShardRaft, lease: Duration) -> RoundResult {
    let option = LinearizerOption::new(Some(lease), false).with_wait_timeout(Duration::ZERO);
    match raft.ensure_linearizable(option).await {
        Ok(read_log_id) => Ok(read_log_id.index()),
        Err(e) => Err(RoundError::Raft(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// LAN rounds (well under a millisecond, a few under load) keep few in
    /// flight; WAN rounds (tens of ms) get many; the average follows a
    /// change of network within a few dozen rounds.
    #[test]
    fn many_rounds_in_flight_only_when_rounds_are_slow() {
        let mut q = Queue::default();
        assert_eq!(rounds_allowed(q.typical_round), ROUNDS_IN_FLIGHT_WHEN_FAST);
        q.note_round(Duration::from_millis(64));
        assert_eq!(q.typical_round, Duration::from_millis(64), "the first round sets the average");
        assert_eq!(rounds_allowed(q.typical_round), ROUNDS_IN_FLIGHT_WHEN_SLOW);
        for _ in 0..40 {
            q.note_round(Duration::from_micros(400));
        }
        assert!(q.typical_round < Duration::from_millis(1), "{:?}", q.typical_round);
        assert_eq!(rounds_allowed(q.typical_round), ROUNDS_IN_FLIGHT_WHEN_FAST);
        q.note_round(Duration::from_millis(30));
        assert_eq!(rounds_allowed(q.typical_round), ROUNDS_IN_FLIGHT_WHEN_FAST, "one slow round is not enough");
        for _ in 0..20 {
            q.note_round(Duration::from_millis(30));
        }
        assert_eq!(rounds_allowed(q.typical_round), ROUNDS_IN_FLIGHT_WHEN_SLOW);
    }

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    #[test]
    fn a_probe_round_needs_a_majority_of_every_configuration() {
        let one = vec![set(&[1, 2, 3])];
        assert!(!confirmed(&one, &set(&[1])), "the leader alone is no majority of three");
        assert!(confirmed(&one, &set(&[1, 3])));
        assert!(confirmed(&[set(&[1])], &set(&[1])), "a single voter is its own majority");
        // Joint consensus: {1,2,3} -> {1,4,5}; 1 leads.
        let joint = vec![set(&[1, 2, 3]), set(&[1, 4, 5])];
        assert!(!confirmed(&joint, &set(&[1, 2, 3])), "a majority of the old set only");
        assert!(!confirmed(&joint, &set(&[1, 4])), "a majority of the new set only");
        assert!(confirmed(&joint, &set(&[1, 2, 4])));
        // Learners never count: an answer from a node in neither set adds nothing.
        assert!(!confirmed(&one, &set(&[1, 9])));
        // Even-sized sets need more than half.
        assert!(!confirmed(&[set(&[1, 2, 3, 4])], &set(&[1, 2])));
        assert!(confirmed(&[set(&[1, 2, 3, 4])], &set(&[1, 2, 3])));
    }
}
