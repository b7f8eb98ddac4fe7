//! The node-to-node Raft transport, server side: unwraps the shard id, hands
//! the openraft message to that shard's group and wraps the reply.
//!
//! A message for a shard this node does not host (yet) is answered
//! `NotFound`; the sender treats that as unreachable and backs off. A
//! message from a node the map records as removed is answered
//! `PermissionDenied`.
//!
//! Snapshot transfers in progress are kept here, one per shard, between the
//! streams that carry them (see [`Inbox`]): a sender whose stream broke asks
//! how far it got and resumes from there.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use geokv_proto::raft::raft_server::Raft;
use geokv_proto::raft::{RaftMessage, SnapshotChunk, SnapshotProgressReply, SnapshotProgressRequest};
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status, Streaming};

use crate::eventual::Ship;
use crate::node::{Node, SafeTime};
use crate::raft::command::Command;
use crate::raft::network::SHARD_METADATA_KEY;
use crate::raft::read_index::RoundError;
use crate::raft::snapshot::{Receiving, Refused};
use crate::raft::{ShardRaft, Snapshot, TypeConfig, Vote, decode, encode};
use crate::shards::NodeState;
use openraft::error::{ClientWriteError, RaftError};
use openraft::vote::RaftLeaderId;

pub struct RaftService {
    node: Arc<Node>,
    inbox: Arc<Inbox>,
}

/// A transfer left unfinished this long is dropped (its files deleted).
const ABANDONED_TRANSFER: Duration = Duration::from_secs(600);

/// Snapshot transfers being received, one per shard: the latest transfer's
/// progress, and its state while no stream carries it.
#[derive(Default)]
struct Inbox {
    transfers: Mutex<HashMap<u64, Inbound>>,
}

struct Inbound {
    transfer: u64,
    next_seq: u64,
    /// `None` while a stream is carrying the transfer.
    parked: Option<Receiving>,
    touched: Instant,
}

impl Inbox {
    /// Starts transfer `r` of its shard, replacing any other.
    fn begin(&self, r: &Receiving) {
        let mut t = self.transfers.lock().expect("snapshot inbox");
        t.retain(|_, i| i.parked.is_none() || i.touched.elapsed() < ABANDONED_TRANSFER);
        let entry = Inbound { transfer: r.transfer, next_seq: r.next_seq, parked: None, touched: Instant::now() };
        t.insert(r.shard, entry);
    }

    /// Takes parked transfer `transfer` of `shard` to carry it on from chunk
    /// `seq`.
    fn resume(&self, shard: u64, transfer: u64, seq: u64) -> Result<Receiving, Status> {
        let mut t = self.transfers.lock().expect("snapshot inbox");
        let Some(i) = t.get_mut(&shard).filter(|i| i.transfer == transfer) else {
            return Err(Status::failed_precondition(format!(
                "no snapshot transfer {transfer:x} of shard {shard} here: start from chunk 0"
            )));
        };
        if i.next_seq != seq {
            return Err(Status::failed_precondition(format!("expected chunk {}, not {seq}", i.next_seq)));
        }
        i.touched = Instant::now();
        i.parked.take().ok_or_else(|| Status::unavailable("another stream is carrying this snapshot transfer"))
    }

    fn progressed(&self, r: &Receiving) {
        if let Some(i) = self.transfers.lock().expect("snapshot inbox").get_mut(&r.shard)
            && i.transfer == r.transfer
        {
            i.next_seq = r.next_seq;
            i.touched = Instant::now();
        }
    }

    /// Keeps `r` for a resumed stream, unless a newer transfer replaced it.
    fn park(&self, r: Receiving) {
        if let Some(i) = self.transfers.lock().expect("snapshot inbox").get_mut(&r.shard)
            && i.transfer == r.transfer
        {
            i.next_seq = r.next_seq;
            i.touched = Instant::now();
            i.parked = Some(r);
        }
    }

    fn done(&self, shard: u64, transfer: u64) {
        let mut t = self.transfers.lock().expect("snapshot inbox");
        if t.get(&shard).is_some_and(|i| i.transfer == transfer) {
            t.remove(&shard);
        }
    }

    fn next_seq(&self, shard: u64, transfer: u64) -> u64 {
        let t = self.transfers.lock().expect("snapshot inbox");
        t.get(&shard).filter(|i| i.transfer == transfer).map_or(0, |i| i.next_seq)
    }
}

/// Runs blocking snapshot work (file writes) off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Status::internal(format!("snapshot staging task: {e}")))
}

impl RaftService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node, inbox: Arc::default() }
    }

    /// Carries one stream of a snapshot transfer: stages its chunks and,
    /// after the last, installs the snapshot and answers openraft's
    /// response. A stream that breaks parks the transfer for a resume.
    async fn receive_snapshot(
        &self,
        shard: u64,
        raft: ShardRaft,
        mut inbound: Streaming<SnapshotChunk>,
    ) -> Result<Response<RaftMessage>, Status> {
        let mut current: Option<Receiving> = None;
        loop {
            let next = inbound.message().await;
            let chunk = match next {
                Ok(Some(chunk)) => chunk,
                Ok(None) | Err(_) => {
                    let got = current.as_ref().map_or(0, |r| r.next_seq);
                    if let Some(r) = current {
                        self.inbox.park(r);
                    }
                    return Err(match next {
                        Err(status) => status,
                        _ => Status::aborted(format!("the snapshot stream ended before its last chunk (at {got})")),
                    });
                }
            };
            if chunk.shard_id != shard {
                return Err(Status::invalid_argument(format!(
                    "a chunk of shard {} on shard {shard}'s stream",
                    chunk.shard_id
                )));
            }
            let mut r = match current.take() {
                Some(r) => r,
                None if chunk.seq == 0 => {
                    let storage = self.node.storage.clone();
                    let r = blocking(move || Receiving::start(&storage, &chunk))
                        .await?
                        .map_err(Status::invalid_argument)?;
                    self.refuse_removed(&r.vote)?;
                    self.inbox.begin(&r);
                    current = Some(r);
                    continue;
                }
                None => self.inbox.resume(shard, chunk.transfer, chunk.seq)?,
            };
            let (r, taken) = blocking(move || {
                let taken = r.push(&chunk);
                (r, taken)
            })
            .await?;
            match taken {
                Ok(false) => {
                    self.inbox.progressed(&r);
                    current = Some(r);
                }
                Ok(true) => {
                    self.inbox.done(shard, r.transfer);
                    let (vote, meta, snapshot) = blocking(move || r.finish()).await?.map_err(Status::internal)?;
                    return reply(shard, raft.install_full_snapshot(vote, Snapshot { meta, snapshot }).await);
                }
                Err(Refused::OutOfOrder { expected }) => {
                    self.inbox.park(r);
                    return Err(Status::failed_precondition(format!("expected chunk {expected}")));
                }
                Err(Refused::Invalid(e)) => {
                    self.inbox.done(shard, r.transfer);
                    tracing::warn!(shard, "refused a snapshot: {e}");
                    return Err(Status::invalid_argument(e));
                }
            }
        }
    }

    async fn group(&self, shard: u64) -> Result<ShardRaft, Status> {
        if !self.node.is_ready() {
            return Err(Status::unavailable("node is starting"));
        }
        self.node.group(shard).await.ok_or_else(|| {
            Status::not_found(format!("node {} hosts no replica of shard {shard}", self.node.config.node_id))
        })
    }

    /// A node that just started may have promised its old leader, before it
    /// stopped, not to vote for `election_timeout_max_ms` (the lease that
    /// leader serves reads on); openraft forgets that promise on restart, so
    /// the node keeps it here by refusing votes (and leadership transfers)
    /// for that long after start. It does not campaign either: its groups
    /// start with elections disabled until then (`Node::start_group`).
    fn check_vote_quarantine(&self) -> Result<(), Status> {
        let quarantine = self.node.config.vote_quarantine();
        if self.node.uptime() < quarantine {
            return Err(Status::unavailable(format!("node started less than {quarantine:?} ago: not voting yet")));
        }
        Ok(())
    }

    /// Whether `req` would have a replica added as a learner, which has not
    /// installed its first snapshot, take the log from its first entry
    /// (see `Node::awaits_snapshot`). Any other append is answered as
    /// usual: an empty log's conflict is how the leader finds that it must
    /// send a snapshot.
    fn replays_from_start(&self, shard: u64, req: &AppendEntriesRequest<TypeConfig>) -> bool {
        req.prev_log_id.is_none() && self.node.awaits_snapshot(shard)
    }

    /// Refuses a message sent by a node the map records as removed: a
    /// removed node is let into no group, even while it still believes it
    /// is a member (it was down when it was removed, say).
    fn refuse_removed(&self, vote: &Vote) -> Result<(), Status> {
        let from = *vote.leader_id().node_id();
        if self.node.shard_map().node(from).is_some_and(|n| n.state == NodeState::Removed) {
            return Err(Status::permission_denied(format!("node {from} was removed from the cluster")));
        }
        Ok(())
    }

    async fn open<T: DeserializeOwned>(&self, req: Request<RaftMessage>) -> Result<(ShardRaft, u64, T), Status> {
        let msg = req.into_inner();
        let raft = self.group(msg.shard_id).await?;
        let body =
            decode(&msg.payload).map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))?;
        Ok((raft, msg.shard_id, body))
    }
}

fn reply<T: Serialize, E: std::fmt::Display>(shard: u64, res: Result<T, E>) -> Result<Response<RaftMessage>, Status> {
    Ok(Response::new(match res {
        Ok(body) => RaftMessage { shard_id: shard, payload: encode(&body), error: String::new() },
        Err(e) => RaftMessage { shard_id: shard, payload: Vec::new(), error: e.to_string() },
    }))
}

/// The shard a stream is for, from its `geokv-shard` metadata.
fn shard_of_stream<T>(req: &Request<T>) -> Result<u64, Status> {
    req.metadata()
        .get(SHARD_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Status::invalid_argument(format!("stream without `{SHARD_METADATA_KEY}` metadata")))
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<RaftMessage, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Raft for RaftService {
    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.check_vote_quarantine()?;
        let (raft, shard, body) = self.open::<VoteRequest<TypeConfig>>(req).await?;
        self.refuse_removed(&body.vote)?;
        reply(shard, raft.vote(body).await)
    }

    async fn pre_vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.check_vote_quarantine()?;
        let (raft, shard, body) = self.open::<VoteRequest<TypeConfig>>(req).await?;
        self.refuse_removed(&body.vote)?;
        reply(shard, raft.pre_vote(body).await)
    }

    async fn append_entries(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let (raft, shard, body) = self.open::<AppendEntriesRequest<TypeConfig>>(req).await?;
        self.refuse_removed(&body.vote)?;
        if self.replays_from_start(shard, &body) {
            return Err(Status::unavailable(format!(
                "node {} is a new replica of shard {shard}: it takes a snapshot before the log's first entries",
                self.node.config.node_id
            )));
        }
        let result = raft.append_entries(body).await;
        let from_leader =
            matches!(&result, Ok(r) if !matches!(r, openraft::raft::AppendEntriesResponse::HigherVote(_)));
        if shard == crate::shards::META_SHARD_ID && from_leader {
            self.node.meta_leader_heard();
        }
        reply(shard, result)
    }

    type StreamAppendStream = ReplyStream;

    async fn stream_append(
        &self,
        req: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<Self::StreamAppendStream>, Status> {
        let shard = shard_of_stream(&req)?;
        let raft = self.group(shard).await?;
        let inbound = req.into_inner();
        // Requests in arrival order; a message that does not decode (or names
        // another shard, or would replay a new replica's log from the start)
        // ends the stream: openraft re-opens and resends.
        let node = self.node.clone();
        let requests = inbound
            .map(move |m| {
                m.ok()
                    .filter(|m| m.shard_id == shard)
                    .and_then(|m| decode::<AppendEntriesRequest<TypeConfig>>(&m.payload).ok())
                    .filter(|r| !(r.prev_log_id.is_none() && node.awaits_snapshot(shard)))
                    .filter(|r| {
                        let from = *r.vote.leader_id().node_id();
                        node.shard_map().node(from).is_none_or(|n| n.state != NodeState::Removed)
                    })
            })
            .take_while(|r| futures::future::ready(r.is_some()))
            .filter_map(futures::future::ready);
        let heard = self.node.clone();
        let replies = raft.stream_append(requests).map(move |res| {
            if shard == crate::shards::META_SHARD_ID && matches!(res, Ok(Ok(_))) {
                heard.meta_leader_heard();
            }
            Ok(match res {
                Ok(result) => RaftMessage { shard_id: shard, payload: encode(&result), error: String::new() },
                Err(fatal) => RaftMessage { shard_id: shard, payload: Vec::new(), error: fatal.to_string() },
            })
        });
        Ok(Response::new(Box::pin(replies)))
    }

    type EcReplicateStream = ReplyStream;

    async fn ec_replicate(
        &self,
        req: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<Self::EcReplicateStream>, Status> {
        let shard = shard_of_stream(&req)?;
        if !self.node.is_ready() {
            return Err(Status::unavailable("node is starting"));
        }
        let replica = self.node.eventual_shard(shard).ok_or_else(|| {
            Status::not_found(format!("node {} hosts no replica of eventual shard {shard}", self.node.config.node_id))
        })?;
        // One message at a time, in arrival order: each acknowledgement
        // follows the durable write of everything before it. A message that
        // does not decode ends the stream (the sender reconnects).
        let replies = req
            .into_inner()
            .take_while(|m| futures::future::ready(m.is_ok()))
            .filter_map(|m| futures::future::ready(m.ok()))
            .then(move |m| {
                let replica = replica.clone();
                async move {
                    let result = match decode::<Ship>(&m.payload) {
                        Ok(ship) => replica.receive(ship).await,
                        Err(e) => Err(format!("undecodable replication message: {e}")),
                    };
                    reply(shard, result).map(Response::into_inner)
                }
            });
        Ok(Response::new(Box::pin(replies)))
    }

    async fn propose(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let (raft, shard, cmd) = self.open::<Command>(req).await?;
        if matches!(cmd, Command::Write(_)) {
            return Err(Status::invalid_argument("client writes go through the Kv service"));
        }
        let timeout = self.node.request_timeout();
        let result = match tokio::time::timeout(timeout, raft.client_write(cmd)).await {
            Err(_) => Err(format!("not committed within {timeout:?}")),
            Ok(Ok(resp)) => Ok(resp.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(format!("not the leader of shard {shard}; leader is {:?}", f.leader_id))
            }
            Ok(Err(e)) => Err(e.to_string()),
        };
        reply(shard, result)
    }

    async fn install_snapshot_stream(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftMessage>, Status> {
        let shard = shard_of_stream(&req)?;
        let raft = self.group(shard).await?;
        self.receive_snapshot(shard, raft, req.into_inner()).await
    }

    async fn snapshot_progress(
        &self,
        req: Request<SnapshotProgressRequest>,
    ) -> Result<Response<SnapshotProgressReply>, Status> {
        let r = req.into_inner();
        Ok(Response::new(SnapshotProgressReply { next_seq: self.inbox.next_seq(r.shard_id, r.transfer) }))
    }

    async fn transfer_leader(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        // A transfer makes its target campaign at once, past `enable_elect`:
        // a quarantined node must not (see `Node::start_group`).
        self.check_vote_quarantine()?;
        let (raft, shard, body) = self.open::<TransferLeaderRequest<TypeConfig>>(req).await?;
        reply(shard, raft.handle_transfer_leader(body).await)
    }

    async fn read_index(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let shard = req.get_ref().shard_id;
        let raft = self.group(shard).await?;
        let result = self.node.read_index_for_follower(shard, &raft).await.map_err(|e| match e {
            RoundError::Raft(e) => e.to_string(),
            RoundError::Remote(e) => e,
            RoundError::TimedOut => "leadership not confirmed in time".to_string(),
        });
        reply(shard, result)
    }

    async fn safe_time(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        if !self.node.is_ready() {
            return Err(Status::unavailable("node is starting"));
        }
        let (from, entries) = decode::<(u64, Vec<SafeTime>)>(&req.get_ref().payload)
            .map_err(|e| Status::invalid_argument(format!("undecodable safe times: {e}")))?;
        self.node.record_safe_times(from, entries);
        reply(0, Ok::<(), String>(()))
    }
}
