//! Batched ReadIndex: concurrent linearizable reads of one shard share one
//! leadership confirmation round.
//!
//! A ReadIndex round asks a quorum to confirm leadership and yields the
//! commit index observed at its start (the *read index*). Any read that
//! *arrived before the round started* may be served once the replica has
//! applied up to that index: the read index is at least the commit index at
//! the read's arrival. So reads queue up, and a round takes everyone queued
//! when it starts. Up to a few rounds run at once: a read that arrives
//! mid-round starts the next one right away rather than waiting a whole
//! round for the current one to finish. Under load this turns N rounds into
//! a handful per round trip.
//!
//! The same batcher serves two kinds of rounds: on the leader, an openraft
//! ReadIndex ([`leader_round`]); on a follower, one RPC asking the leader for
//! its read index (follower reads, `service::kv`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{LinearizableReadError, RaftError};
use openraft::{LinearizerOption, ReadPolicy};
use tokio::sync::oneshot;

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

/// Rounds one batcher runs at once. A read that arrives while rounds are in
/// flight starts a new one (up to this many) instead of waiting for the
/// current one to finish, so a read costs one round, not up to two.
const MAX_ROUNDS_IN_FLIGHT: usize = 4;

#[derive(Default)]
struct Queue {
    in_flight: usize,
    waiting: Vec<oneshot::Sender<RoundResult>>,
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
            let start = q.in_flight < MAX_ROUNDS_IN_FLIGHT;
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
            counters.read_index_rounds.fetch_add(1, Ordering::Relaxed);
            counters.read_index_reads.fetch_add(batch.len() as u64, Ordering::Relaxed);
            let result = round().await;
            for waiter in batch {
                let _ = waiter.send(result.clone());
            }
        }
    }
}

/// The leader-side round: openraft's ReadIndex (a fresh quorum
/// acknowledgement, then the local state machine catches up), bounded by
/// `timeout`.
pub fn leader_round(raft: ShardRaft, timeout: Duration) -> Round {
    Arc::new(move || {
        let raft = raft.clone();
        Box::pin(async move {
            match tokio::time::timeout(timeout, raft.ensure_linearizable(ReadPolicy::ReadIndex)).await {
                Ok(Ok(read_log_id)) => Ok(read_log_id.index()),
                Ok(Err(e)) => Err(RoundError::Raft(e)),
                Err(_) => Err(RoundError::TimedOut),
            }
        })
    })
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
