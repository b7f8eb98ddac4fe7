//! Batched ReadIndex: concurrent linearizable reads of one shard share one
//! leadership confirmation round.
//!
//! A ReadIndex round asks a quorum to confirm leadership, then waits until
//! the state machine has applied the commit index observed at its start.
//! Any read that *arrived before the round started* may be served after it:
//! the round's read index is at least the commit index at the read's arrival.
//! So reads queue up; one round runs at a time and takes everyone queued when
//! it starts; whoever arrives during a round waits for the next one. Under
//! load this turns N quorum rounds into about one per round trip, at the cost
//! of at most one extra round for a read that arrives mid-round.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::ReadPolicy;
use openraft::error::{LinearizableReadError, RaftError};
use tokio::sync::oneshot;

use super::{ShardRaft, TypeConfig};

/// What a round tells each of its reads.
pub type RoundResult = Result<(), RoundError>;

#[derive(Debug, Clone)]
pub enum RoundError {
    /// openraft could not confirm leadership (not leader, no quorum, stopped).
    Raft(RaftError<TypeConfig, LinearizableReadError<TypeConfig>>),
    /// The round did not finish within the request timeout.
    TimedOut,
}

#[derive(Default)]
struct Queue {
    running: bool,
    waiting: Vec<oneshot::Sender<RoundResult>>,
}

/// One shard's ReadIndex batcher.
#[derive(Default)]
pub struct ReadIndexBatcher {
    queue: Mutex<Queue>,
}

impl ReadIndexBatcher {
    /// Resolves once a ReadIndex round that started after this call has
    /// confirmed leadership and the state machine has caught up with it.
    /// `counters` (rounds, reads) are incremented for observability.
    pub async fn confirm(
        self: &Arc<Self>,
        raft: &ShardRaft,
        timeout: Duration,
        counters: Arc<crate::metrics::Metrics>,
    ) -> RoundResult {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut q = self.queue.lock().expect("read queue lock");
            q.waiting.push(tx);
            !std::mem::replace(&mut q.running, true)
        };
        if start {
            tokio::spawn(self.clone().run_rounds(raft.clone(), timeout, counters));
        }
        rx.await.unwrap_or(Err(RoundError::TimedOut))
    }

    async fn run_rounds(self: Arc<Self>, raft: ShardRaft, timeout: Duration, counters: Arc<crate::metrics::Metrics>) {
        loop {
            let batch = {
                let mut q = self.queue.lock().expect("read queue lock");
                if q.waiting.is_empty() {
                    q.running = false;
                    return;
                }
                std::mem::take(&mut q.waiting)
            };
            counters.read_index_rounds.fetch_add(1, Ordering::Relaxed);
            counters.read_index_reads.fetch_add(batch.len() as u64, Ordering::Relaxed);
            let result = match tokio::time::timeout(timeout, raft.ensure_linearizable(ReadPolicy::ReadIndex)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(RoundError::Raft(e)),
                Err(_) => Err(RoundError::TimedOut),
            };
            for waiter in batch {
                let _ = waiter.send(result.clone());
            }
        }
    }
}
