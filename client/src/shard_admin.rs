//! Creating, splitting and moving shards, draining and removing nodes:
//! [`Client::create_shard`], [`Client::split_shard`],
//! [`Client::move_replica`], [`Client::drain_node`], [`Client::remove_node`].
//!
//! `Admin.CreateShard` carves a new (eventual) shard for `[start, end)` out of
//! the start or the end of the one Raft shard that holds the range now; that
//! parent keeps the rest at a new epoch, and the new shard gets the parent's
//! replicas. Any node serves the request (it forwards the steps to the leaders
//! concerned), and repeating the same request after a failure is safe: a
//! request that already completed is answered with the shard it made. So,
//! unlike writes, every failure that is not a final refusal is retried, on the
//! next node, after a backoff, and a timeout never makes the outcome unknown
//! for good: asking again tells.

use geokv_proto::admin as admin_pb;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::client::{admin_client, sleep_until_or, timed_out};
use crate::error::{Failure, classify};
use crate::scan::{KeyRange, ScanBounds};
use crate::shard_map::NodeState;
use crate::types::ShardMode;
use crate::{Client, Error};

/// What [`Client::drain_node`] or [`Client::remove_node`] recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeChange {
    pub node_id: u64,
    /// The shard map version that records it.
    pub map_version: u64,
    /// False when an earlier request had recorded it already.
    pub created: bool,
    /// The node's state now.
    pub state: NodeState,
}

/// What [`Client::create_shard`] made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreatedShard {
    /// The new shard's id.
    pub shard_id: u64,
    /// The shard map version that holds the new shard (the client's cached
    /// map is at least this new when `create_shard` returns, unless no node
    /// could serve it in time: then the next request refreshes it).
    pub map_version: u64,
    /// The Raft shard the range was carved from. `None` when the request had
    /// already completed before (an earlier attempt, or an identical earlier
    /// request, created the shard): the server then only names the shard.
    pub parent_shard_id: Option<u64>,
    /// The parent's epoch after it gave up the range (`None` as above).
    pub parent_epoch: Option<u64>,
}

impl CreatedShard {
    fn from_proto(reply: admin_pb::CreateShardResponse) -> CreatedShard {
        let carved = reply.parent_shard_id != 0;
        CreatedShard {
            shard_id: reply.shard_id,
            map_version: reply.map_version,
            parent_shard_id: carved.then_some(reply.parent_shard_id),
            parent_epoch: carved.then_some(reply.parent_epoch),
        }
    }

    /// Whether the shard already existed: this request (or an earlier
    /// attempt of it) found it made, and nothing was changed now.
    pub fn already_existed(&self) -> bool {
        self.parent_shard_id.is_none()
    }
}

/// What [`Client::split_shard`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SplitShard {
    /// The shard that was split: it keeps the keys below the split key.
    pub left_shard_id: u64,
    pub left_epoch: u64,
    /// The new shard: the split key and everything after it.
    pub right_shard_id: u64,
    pub right_epoch: u64,
    /// The shard map version that records the split.
    pub map_version: u64,
    /// False when an earlier attempt had made the split already.
    pub created: bool,
}

/// What [`Client::merge_shard`] (or [`Client::cancel_merge`]) recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MergeShard {
    /// The shard that keeps its id and absorbs the next one.
    pub left_shard_id: u64,
    /// The shard after it, which the merge absorbs.
    pub right_shard_id: u64,
    /// The shard map version that records the merge (or its cancellation).
    pub map_version: u64,
    /// False when an earlier attempt had recorded it already (cancelling:
    /// no merge was recorded).
    pub created: bool,
}

/// What [`Client::move_replica`] recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MovedReplica {
    pub shard_id: u64,
    pub from_node: u64,
    pub to_node: u64,
    /// The shard map version that records the move.
    pub map_version: u64,
    /// False when an earlier attempt had recorded the move already.
    pub created: bool,
}

/// Checks a range for `create_shard` and puts it in wire form.
fn create_request(bounds: ScanBounds, mode: ShardMode) -> Result<admin_pb::CreateShardRequest, Error> {
    let ScanBounds { start, end } = bounds;
    if let Some(end) = &end
        && *end <= start
    {
        return Err(Error::InvalidArgument(format!(
            "the range [{}, {}) is empty: its end must sort after its start",
            crate::display::printable(&start),
            crate::display::printable(end)
        )));
    }
    Ok(admin_pb::CreateShardRequest { start, end: end.unwrap_or_default(), mode: mode.to_proto() })
}

impl Client {
    /// Creates a shard of `mode` for a key range (`"a".."b"`, or `"a"..` for
    /// everything from `"a"` on), carved from the start or the end of the one
    /// Raft shard that holds the range now; that parent keeps the rest, at a
    /// new epoch. The range must begin or end where that shard does (not
    /// both), and hold no keys yet. The new shard has the parent's replicas.
    ///
    /// Only [`ShardMode::Eventual`] is supported by the server: writes there
    /// are acknowledged by one replica and replicated later, last writer
    /// wins, and compare-and-swap and batches are refused.
    ///
    /// The request is idempotent, so it is retried (on the next node, after a
    /// backoff) whenever the answer is not a final refusal, within
    /// [`ClientConfig::max_attempts`](crate::ClientConfig::max_attempts) and
    /// [`ClientConfig::deadline`](crate::ClientConfig::deadline). On success
    /// the cached shard map is refreshed to the version holding the new
    /// shard, so the next request for its keys goes there.
    ///
    /// Errors: [`Error::InvalidArgument`] for a bad range (empty, not inside
    /// one Raft shard, in the middle of one) or an unsupported mode;
    /// [`Error::FailedPrecondition`] when the range holds keys (or the map is
    /// not bootstrapped); [`Error::Unavailable`] when the retries ran out
    /// (the leaders concerned were not reachable): repeating the same request
    /// is safe.
    pub async fn create_shard(&self, range: impl KeyRange, mode: ShardMode) -> Result<CreatedShard, Error> {
        let request = create_request(range.into_bounds(), mode)?;
        let deadline = Instant::now() + self.config().deadline;
        let (addr, reply) = self
            .retry_admin("the shard may or may not exist now", deadline, |addr, timeout| {
                let request = request.clone();
                async move { self.send_create_shard(&addr, request, timeout).await }
            })
            .await?;
        let created = CreatedShard::from_proto(reply);
        self.await_map_version(&addr, created.map_version, deadline).await;
        Ok(created)
    }

    /// Splits Raft shard `shard` at `key`: the shard keeps the keys below
    /// `key`, a new shard (its id allocated by the cluster) on the same
    /// replicas gets the rest. No data moves; both halves get a new epoch, so
    /// requests routed with the old map are told to refresh it. Retried like
    /// [`Client::create_shard`]: repeating a split that was made reports it.
    ///
    /// Errors: [`Error::NotFound`] for an unknown shard;
    /// [`Error::InvalidArgument`] for a key that is empty, too long or not
    /// strictly inside the shard's range; [`Error::FailedPrecondition`] for an
    /// eventual shard or a shard that changed meanwhile;
    /// [`Error::Unavailable`] when the retries ran out (repeating is safe).
    pub async fn split_shard(&self, shard: u64, key: impl Into<Vec<u8>>) -> Result<SplitShard, Error> {
        let split_key = key.into();
        if split_key.is_empty() {
            return Err(Error::InvalidArgument("the split key must not be empty".into()));
        }
        // The epoch this request is about, from a fresh map: every attempt
        // carries it, so a retry after the split was made is told so, not
        // refused.
        let map = self.refresh_shard_map().await?;
        let expected_epoch = map.shards.iter().find(|s| s.shard_id == shard).map(|s| s.epoch);
        let request = admin_pb::SplitShardRequest {
            shard_id: shard,
            split_key,
            expected_epoch: expected_epoch.unwrap_or(0),
            automatic: false,
        };
        let deadline = Instant::now() + self.config().deadline;
        let (addr, reply) = self
            .retry_admin("the shard may or may not be split now", deadline, |addr, timeout| {
                let request = request.clone();
                async move {
                    let mut admin = admin_client(self.channel(&addr)?);
                    let mut request = tonic::Request::new(request);
                    request.set_timeout(timeout);
                    match tokio::time::timeout(timeout, admin.split_shard(request)).await {
                        Ok(Ok(reply)) => Ok(reply.into_inner()),
                        Ok(Err(status)) => Err(classify(&status)),
                        Err(_) => Err(timed_out(timeout)),
                    }
                }
            })
            .await?;
        self.await_map_version(&addr, reply.map_version, deadline).await;
        Ok(SplitShard {
            left_shard_id: reply.left_shard_id,
            left_epoch: reply.left_epoch,
            right_shard_id: reply.right_shard_id,
            right_epoch: reply.right_epoch,
            map_version: reply.map_version,
            created: reply.created,
        })
    }

    /// Moves shard `shard`'s replica from node `from` to node `to`. The
    /// cluster records the move and returns; the shard's leader carries it
    /// out (learner, snapshot and log, joint-consensus voter change, the old
    /// replica deleted), keeping the shard's fault tolerance throughout; for
    /// an eventual shard the meta shard's leader does (docs/eventual.md).
    /// [`Client::wait_for_replica_change`] waits for it to finish. Retried
    /// like [`Client::create_shard`]: repeating a recorded move reports it.
    ///
    /// Errors: [`Error::NotFound`] for an unknown shard or node;
    /// [`Error::InvalidArgument`] when `from == to`;
    /// [`Error::FailedPrecondition`] for a `from` that
    /// holds no replica or a `to` that holds one, another change of the
    /// shard under way, or a `to` that does not answer;
    /// [`Error::Unavailable`] when the retries ran out (repeating is safe).
    pub async fn move_replica(&self, shard: u64, from: u64, to: u64) -> Result<MovedReplica, Error> {
        self.send_move(shard, from, to, false).await
    }

    /// Cancels the move of `shard`'s replica from node `from` to node `to`
    /// that the map records and that is not made yet: possible while the
    /// new replica does not vote (a Raft shard's learner) and until an
    /// eventual shard's move is made; the map then records no change and
    /// the shard keeps its replicas. `created: false`: no such move was
    /// under way (e.g. a repeat after it was cancelled).
    ///
    /// Errors as [`Client::move_replica`], and
    /// [`Error::FailedPrecondition`] when the move completed first (or the
    /// shard records another change); [`Error::Unavailable`] when it was
    /// neither cancelled nor completed within the server's request timeout
    /// (its new replica may vote already; repeating is safe).
    pub async fn cancel_move(&self, shard: u64, from: u64, to: u64) -> Result<MovedReplica, Error> {
        self.send_move(shard, from, to, true).await
    }

    async fn send_move(&self, shard: u64, from: u64, to: u64, cancel: bool) -> Result<MovedReplica, Error> {
        if from == to {
            return Err(Error::InvalidArgument(format!("from and to are both node {from}: nothing to move")));
        }
        let request = admin_pb::MoveReplicaRequest { shard_id: shard, from_node: from, to_node: to, cancel };
        let deadline = Instant::now() + self.config().deadline;
        let unknown =
            if cancel { "the move may or may not be cancelled now" } else { "the move may or may not be recorded now" };
        let (addr, reply) = self
            .retry_admin(unknown, deadline, |addr, timeout| async move {
                let mut admin = admin_client(self.channel(&addr)?);
                let mut request = tonic::Request::new(request);
                request.set_timeout(timeout);
                match tokio::time::timeout(timeout, admin.move_replica(request)).await {
                    Ok(Ok(reply)) => Ok(reply.into_inner()),
                    Ok(Err(status)) => Err(classify(&status)),
                    Err(_) => Err(timed_out(timeout)),
                }
            })
            .await?;
        self.await_map_version(&addr, reply.map_version, deadline).await;
        Ok(MovedReplica {
            shard_id: shard,
            from_node: from,
            to_node: to,
            map_version: reply.map_version,
            created: reply.created,
        })
    }

    /// Waits, polling the shard map, until `shard` has no replica change
    /// under way, and returns the shard as the map then has it; gives up
    /// with [`Error::Unavailable`] after `timeout` (the change goes on).
    pub async fn wait_for_replica_change(
        &self,
        shard: u64,
        timeout: std::time::Duration,
    ) -> Result<crate::shard_map::Shard, Error> {
        let deadline = Instant::now() + timeout;
        let mut backoff = Backoff::new(self.config().backoff_initial, self.config().backoff_max);
        loop {
            let map = self.refresh_shard_map().await;
            if let Ok(map) = &map {
                match map.shard(shard) {
                    Some(s) if !s.is_changing() => return Ok(s.clone()),
                    Some(_) => {}
                    None => return Err(Error::NotFound(format!("no shard {shard} in map version {}", map.version))),
                }
            }
            if Instant::now() >= deadline {
                let cause = match map {
                    Ok(_) => format!("shard {shard}'s replica change is still under way after {timeout:?}"),
                    Err(e) => e.to_string(),
                };
                return Err(Error::Unavailable { attempts: 1, cause });
            }
            sleep_until_or(deadline, backoff.next_delay()).await;
        }
    }

    /// Merges Raft shard `shard` with the shard after it
    /// (`Admin.MergeShard`): the cluster records the merge and returns; the
    /// meta shard's leader then moves the right shard's replicas onto the
    /// left's nodes, freezes the right shard (its requests are refused with
    /// `WrongShard` and retried by clients until the map shows the merge),
    /// and the left shard's log absorbs it, sessions included. See
    /// [`Client::wait_for_merge`]. Repeating a recorded merge reports it.
    ///
    /// Errors: [`Error::NotFound`] for an unknown shard;
    /// [`Error::FailedPrecondition`] for the last shard, an eventual shard on
    /// either side, a replica change or another merge of either under way,
    /// a replica on a node that is not up, or a shard that changed
    /// meanwhile; [`Error::Unavailable`] when the retries ran out.
    pub async fn merge_shard(&self, shard: u64) -> Result<MergeShard, Error> {
        let map = self.refresh_shard_map().await?;
        let expected_epoch = map.shards.iter().find(|s| s.shard_id == shard).map_or(0, |s| s.epoch);
        self.send_merge(admin_pb::MergeShardRequest { shard_id: shard, expected_epoch, cancel: false }).await
    }

    /// Cancels the merge recorded on `shard` (refused once it is past its
    /// freeze: it then finishes). `created: false` when none was recorded.
    pub async fn cancel_merge(&self, shard: u64) -> Result<MergeShard, Error> {
        self.send_merge(admin_pb::MergeShardRequest { shard_id: shard, expected_epoch: 0, cancel: true }).await
    }

    async fn send_merge(&self, request: admin_pb::MergeShardRequest) -> Result<MergeShard, Error> {
        let deadline = Instant::now() + self.config().deadline;
        let (addr, reply) = self
            .retry_admin("the merge may or may not be recorded now", deadline, |addr, timeout| async move {
                let mut admin = admin_client(self.channel(&addr)?);
                let mut request = tonic::Request::new(request);
                request.set_timeout(timeout);
                match tokio::time::timeout(timeout, admin.merge_shard(request)).await {
                    Ok(Ok(reply)) => Ok(reply.into_inner()),
                    Ok(Err(status)) => Err(classify(&status)),
                    Err(_) => Err(timed_out(timeout)),
                }
            })
            .await?;
        self.await_map_version(&addr, reply.map_version, deadline).await;
        Ok(MergeShard {
            left_shard_id: request.shard_id,
            right_shard_id: reply.right_shard_id,
            map_version: reply.map_version,
            created: reply.created,
        })
    }

    /// Waits until the merge recorded on `shard` is over: the shard no
    /// longer records one. Returns the shard as the map then has it (it
    /// ends where the absorbed shard ended, unless the merge was given up).
    pub async fn wait_for_merge(
        &self,
        shard: u64,
        timeout: std::time::Duration,
    ) -> Result<crate::shard_map::Shard, Error> {
        let deadline = Instant::now() + timeout;
        let mut backoff = Backoff::new(self.config().backoff_initial, self.config().backoff_max);
        loop {
            let map = self.refresh_shard_map().await;
            if let Ok(map) = &map {
                match map.shard(shard) {
                    Some(s) if s.merging_with.is_none() => return Ok(s.clone()),
                    Some(_) => {}
                    None => return Err(Error::NotFound(format!("no shard {shard} in map version {}", map.version))),
                }
            }
            if Instant::now() >= deadline {
                let cause = match map {
                    Ok(_) => format!("shard {shard}'s merge is still under way after {timeout:?}"),
                    Err(e) => e.to_string(),
                };
                return Err(Error::Unavailable { attempts: 1, cause });
            }
            sleep_until_or(deadline, backoff.next_delay()).await;
        }
    }

    /// Drains node `node` (`Admin.DrainNode`): records it as draining, and
    /// the cluster then moves its replicas to other nodes. Returns once
    /// recorded (`created: false` if it was already draining); see
    /// [`Client::wait_for_drain`].
    ///
    /// [`Error::NotFound`] for an unknown node; [`Error::FailedPrecondition`]
    /// when a replica would have nowhere to go, or the node was removed.
    pub async fn drain_node(&self, node: u64) -> Result<NodeChange, Error> {
        self.send_drain(node, false).await
    }

    /// Cancels node `node`'s drain (`Admin.DrainNode` with `cancel`): it is
    /// up again and takes replicas; moves already recorded finish.
    /// `created: false` if it was up already; [`Error::FailedPrecondition`]
    /// for a removing or removed node.
    pub async fn cancel_drain(&self, node: u64) -> Result<NodeChange, Error> {
        self.send_drain(node, true).await
    }

    async fn send_drain(&self, node: u64, cancel: bool) -> Result<NodeChange, Error> {
        let request = admin_pb::DrainNodeRequest { node_id: node, cancel };
        let deadline = Instant::now() + self.config().deadline;
        let (addr, reply) = self
            .retry_admin("the drain may or may not be recorded now", deadline, |addr, timeout| async move {
                let mut admin = admin_client(self.channel(&addr)?);
                let mut request = tonic::Request::new(request);
                request.set_timeout(timeout);
                match tokio::time::timeout(timeout, admin.drain_node(request)).await {
                    Ok(Ok(reply)) => Ok(reply.into_inner()),
                    Ok(Err(status)) => Err(classify(&status)),
                    Err(_) => Err(timed_out(timeout)),
                }
            })
            .await?;
        self.await_map_version(&addr, reply.map_version, deadline).await;
        let state = match (reply.created, cancel) {
            (true, false) => NodeState::Draining,
            (true, true) => NodeState::Up,
            (false, _) => self.node_state(node).await,
        };
        Ok(NodeChange { node_id: node, map_version: reply.map_version, created: reply.created, state })
    }

    /// Removes node `node` for good (`Admin.RemoveNode`). Without `force`
    /// the node must hold no replica; with it, a node that holds some is
    /// drained first and removed once empty (state `Removing` until then).
    ///
    /// [`Error::NotFound`] for an unknown node; [`Error::FailedPrecondition`]
    /// when it holds replicas (without `force`), a replica would have
    /// nowhere to go, or the meta shard would keep fewer than 3 voters.
    pub async fn remove_node(&self, node: u64, force: bool) -> Result<NodeChange, Error> {
        let request = admin_pb::RemoveNodeRequest { node_id: node, force };
        let deadline = Instant::now() + self.config().deadline;
        let (addr, reply) = self
            .retry_admin("the removal may or may not be recorded now", deadline, |addr, timeout| async move {
                let mut admin = admin_client(self.channel(&addr)?);
                let mut request = tonic::Request::new(request);
                request.set_timeout(timeout);
                match tokio::time::timeout(timeout, admin.remove_node(request)).await {
                    Ok(Ok(reply)) => Ok(reply.into_inner()),
                    Ok(Err(status)) => Err(classify(&status)),
                    Err(_) => Err(timed_out(timeout)),
                }
            })
            .await?;
        self.await_map_version(&addr, reply.map_version, deadline).await;
        let state = NodeState::from_proto(reply.state);
        Ok(NodeChange { node_id: node, map_version: reply.map_version, created: reply.created, state })
    }

    /// Waits, polling the shard map, until no shard places a replica on
    /// `node` (and, for a node being removed, until it is removed); returns
    /// its state then. [`Error::Unavailable`] after `timeout` (the drain
    /// goes on).
    pub async fn wait_for_drain(&self, node: u64, timeout: std::time::Duration) -> Result<NodeState, Error> {
        let deadline = Instant::now() + timeout;
        let mut backoff = Backoff::new(self.config().backoff_initial, self.config().backoff_max);
        loop {
            let map = self.refresh_shard_map().await;
            if let Ok(map) = &map {
                let Some(info) = map.nodes.iter().find(|n| n.node_id == node) else {
                    return Err(Error::NotFound(format!("no node {node} in map version {}", map.version)));
                };
                let empty = !map.shards.iter().any(|s| s.is_placed_on(node));
                if empty && info.state != NodeState::Removing {
                    return Ok(info.state);
                }
            }
            if Instant::now() >= deadline {
                let cause = match map {
                    Ok(map) => {
                        let left = map.shards.iter().filter(|s| s.is_placed_on(node)).count();
                        format!("node {node} still holds {left} replicas after {timeout:?}")
                    }
                    Err(e) => e.to_string(),
                };
                return Err(Error::Unavailable { attempts: 1, cause });
            }
            sleep_until_or(deadline, backoff.next_delay()).await;
        }
    }

    async fn node_state(&self, node: u64) -> NodeState {
        let map = self.cached_map();
        map.nodes.iter().find(|n| n.node_id == node).map_or(NodeState::Up, |n| n.state)
    }

    /// Sends an idempotent admin request to the nodes in turn, with a
    /// backoff, until one answers or a refusal is final; returns the address
    /// that answered and its reply. `unknown` says what the caller cannot
    /// know when the retries run out.
    pub(crate) async fn retry_admin<'a, T, Fut>(
        &'a self,
        unknown: &str,
        deadline: Instant,
        mut send: impl FnMut(String, std::time::Duration) -> Fut,
    ) -> Result<(String, T), Error>
    where
        Fut: std::future::Future<Output = Result<T, Failure>> + 'a,
    {
        let config = self.config();
        let mut backoff = Backoff::new(config.backoff_initial, config.backoff_max);
        let mut attempts: u32 = 0;
        let mut last_cause = String::from("no attempt was made");
        let mut next = 0usize;
        let addrs = self.admin_addrs();
        loop {
            if attempts >= config.max_attempts || Instant::now() >= deadline {
                return Err(Error::Unavailable {
                    attempts,
                    cause: format!("{last_cause}; {unknown}, and repeating the same request is safe"),
                });
            }
            let addr = addrs[next % addrs.len()].clone();
            next += 1;
            attempts += 1;
            let timeout = config.rpc_timeout.min(deadline.saturating_duration_since(Instant::now()));
            let failure = match send(addr.clone(), timeout).await {
                Ok(reply) => return Ok((addr, reply)),
                Err(failure) => failure,
            };
            last_cause = format!("{addr}: {}", failure.describe());
            tracing::debug!(attempts, cause = %last_cause, "admin request attempt failed");
            match failure {
                Failure::InvalidArgument(message) => return Err(Error::InvalidArgument(message)),
                Failure::SessionForgotten(message)
                | Failure::Rejected { code: tonic::Code::FailedPrecondition, message } => {
                    return Err(Error::FailedPrecondition(message));
                }
                Failure::Rejected { code: tonic::Code::NotFound, message } => return Err(Error::NotFound(message)),
                Failure::Rejected { code, message } => return Err(Error::refused(code, message)),
                // Nothing listens there: the next node at once, unless every
                // node was just tried.
                Failure::NotSent(_) if !next.is_multiple_of(addrs.len()) => {}
                _ => sleep_until_or(deadline, backoff.next_delay()).await,
            }
        }
    }

    /// Nodes that can serve admin requests, in the order to try them: the
    /// seeds, then the shard map's other nodes.
    fn admin_addrs(&self) -> Vec<String> {
        let map = self.cached_map();
        let mut addrs: Vec<String> = Vec::new();
        let known = self
            .config()
            .endpoints
            .iter()
            .map(|addr| addr.trim().to_string())
            .chain(map.nodes.iter().map(|node| node.addr.clone()));
        for addr in known {
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        addrs
    }

    async fn send_create_shard(
        &self,
        addr: &str,
        request: admin_pb::CreateShardRequest,
        timeout: std::time::Duration,
    ) -> Result<admin_pb::CreateShardResponse, Failure> {
        let mut admin = admin_client(self.channel(addr)?);
        let mut request = tonic::Request::new(request);
        request.set_timeout(timeout);
        match tokio::time::timeout(timeout, admin.create_shard(request)).await {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) => Err(classify(&status)),
            Err(_) => Err(timed_out(timeout)),
        }
    }

    /// Refreshes the cached map until it is at least `version` (first from
    /// `prefer`, which answered with that version). Gives up quietly: a
    /// request that meets an older map is told so and refreshes it then.
    pub(crate) async fn await_map_version(&self, prefer: &str, version: u64, deadline: Instant) {
        let config = self.config();
        // The shard exists already; allow the refresh a little time even when
        // creating it used up the deadline.
        let deadline = deadline.max(Instant::now() + config.rpc_timeout);
        let mut backoff = Backoff::new(config.backoff_initial, config.backoff_max);
        while self.cached_map().version < version && Instant::now() < deadline {
            match self.refresh_map(Some(prefer), version, deadline).await {
                Ok(map) if map.version >= version => return,
                Ok(map) => tracing::debug!(have = map.version, want = version, "shard map not caught up yet"),
                Err(failure) => tracing::debug!(cause = %Failure::from(failure).describe(), "shard map refresh failed"),
            }
            sleep_until_or(deadline, backoff.next_delay()).await;
        }
        if self.cached_map().version < version {
            tracing::warn!(
                version,
                "no node served the shard map holding the new shard in time; requests will refresh it"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked_before_sending() {
        let request = create_request(("session/".."session0").into_bounds(), ShardMode::Eventual).unwrap();
        assert_eq!((request.start.as_slice(), request.end.as_slice()), (&b"session/"[..], &b"session0"[..]));
        assert_eq!(request.mode, geokv_proto::kv::ShardMode::Eventual as i32);
        let unbounded = create_request(("m"..).into_bounds(), ShardMode::Raft).unwrap();
        assert_eq!((unbounded.end.as_slice(), unbounded.mode), (&b""[..], 0));
        let from_the_start = create_request((.."m").into_bounds(), ShardMode::Eventual).unwrap();
        assert_eq!(from_the_start.start, b"");
        for empty in [("b".."a").into_bounds(), ("a".."a").into_bounds(), (.."").into_bounds()] {
            let err = create_request(empty, ShardMode::Eventual).unwrap_err();
            assert!(matches!(&err, Error::InvalidArgument(m) if m.contains("is empty")), "{err}");
        }
    }

    #[test]
    fn a_repeat_names_no_parent() {
        let carved = CreatedShard::from_proto(admin_pb::CreateShardResponse {
            shard_id: 4,
            map_version: 9,
            parent_shard_id: 2,
            parent_epoch: 3,
        });
        assert_eq!((carved.parent_shard_id, carved.parent_epoch), (Some(2), Some(3)));
        assert!(!carved.already_existed());
        let repeat = CreatedShard::from_proto(admin_pb::CreateShardResponse {
            shard_id: 4,
            map_version: 9,
            ..Default::default()
        });
        assert!(repeat.already_existed());
        assert_eq!(repeat.parent_epoch, None);
    }
}
