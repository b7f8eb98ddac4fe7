//! The node-to-node Raft transport, client side.
//!
//! One gRPC channel (one HTTP/2 connection) per peer *node*, shared by every
//! Raft group the two nodes have in common; each message carries its shard id.
//! Replication uses a bidirectional stream per (peer, shard): openraft feeds
//! append requests in and reads one result per request back, so appends are
//! pipelined rather than stop-and-wait. Heartbeats are one-message streams on
//! the same connection.
//!
//! Dead or stalled peers are detected by HTTP/2 keep-alive pings (a stalled
//! link stops answering pings and the connection is torn down), so a stream
//! never hangs forever. Unary calls are bounded by openraft's per-RPC TTL.
//!
//! Snapshots stream in chunks (`raft::snapshot`), produced from the pinned
//! view on a blocking thread into a channel of two chunks, so a sender holds
//! a few MiB whatever the shard's size. A transfer that makes no progress for
//! the configured snapshot timeout is abandoned; one whose stream breaks is
//! resumed where the receiver got to, a few times, before openraft is told.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use geokv_proto::raft::raft_client::RaftClient;
use geokv_proto::raft::{RaftMessage, SnapshotChunk, SnapshotProgressRequest};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend, RaftNetworkV2};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, Endpoint};

use super::snapshot::{LocalSnapshot, SnapshotData, produce};
use super::{Snapshot, TypeConfig, Vote, decode, encode};
use crate::tls::{PeerConnector, Tls};

type RpcError = RPCError<TypeConfig>;

/// gRPC metadata naming the shard of a `StreamAppend` stream, so the server
/// can answer before the first message arrives.
pub const SHARD_METADATA_KEY: &str = "geokv-shard";

/// Connection settings for peer channels.
#[derive(Debug, Clone, Copy)]
pub struct PeerTimeouts {
    pub connect: Duration,
    /// HTTP/2 ping interval; a peer that does not answer within
    /// `keepalive_timeout` is considered gone and its streams fail.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// A snapshot transfer that sends nothing (and gets no answer) for this
    /// long is abandoned.
    pub snapshot: Duration,
    /// Local IP to connect from (`None`: the OS chooses).
    pub local_ip: Option<std::net::IpAddr>,
}

/// The node's channels to its peers, one per address.
pub struct Peers {
    channels: Mutex<HashMap<String, Channel>>,
    timeouts: PeerTimeouts,
    /// `None`: plaintext. Each new connection takes the current (possibly
    /// rotated) certificates.
    tls: Option<Arc<Tls>>,
}

impl Peers {
    pub fn new(timeouts: PeerTimeouts, tls: Option<Arc<Tls>>) -> Arc<Self> {
        Arc::new(Self { channels: Mutex::new(HashMap::new()), timeouts, tls })
    }

    /// The node's TLS material (`None` in plaintext).
    pub fn tls(&self) -> Option<&Arc<Tls>> {
        self.tls.as_ref()
    }

    /// The channel to `addr`, created (lazily connecting) on first use.
    pub fn channel(&self, addr: &str) -> Channel {
        let mut channels = self.channels.lock().expect("peer channel lock");
        if let Some(c) = channels.get(addr) {
            return c.clone();
        }
        let t = self.timeouts;
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .expect("peer address was validated as host:port")
            .connect_timeout(t.connect)
            .http2_keep_alive_interval(t.keepalive_interval)
            .keep_alive_timeout(t.keepalive_timeout)
            .keep_alive_while_idle(true);
        let channel = dial_lazy(endpoint, self.tls.as_ref(), t.local_ip);
        channels.insert(addr.to_string(), channel.clone());
        channel
    }
}

/// A lazily connecting channel for `endpoint` (an `http://` URI: with
/// `tls`, the connector itself speaks TLS), from `local_ip` if given.
pub fn dial_lazy(endpoint: Endpoint, tls: Option<&Arc<Tls>>, local_ip: Option<std::net::IpAddr>) -> Channel {
    match tls {
        None => endpoint.tcp_nodelay(true).local_address(local_ip).connect_lazy(),
        Some(tls) => endpoint.connect_with_connector_lazy(PeerConnector { tls: tls.clone(), local_ip }),
    }
}

/// Creates per-peer links for one shard's Raft group.
pub struct ShardNetwork {
    shard: u64,
    peers: Arc<Peers>,
}

impl ShardNetwork {
    pub fn new(shard: u64, peers: Arc<Peers>) -> Self {
        Self { shard, peers }
    }
}

impl RaftNetworkFactory<TypeConfig> for ShardNetwork {
    type Network = PeerLink;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerLink {
        let client = RaftClient::new(self.peers.channel(&node.addr))
            .max_decoding_message_size(geokv_proto::MAX_GRPC_MESSAGE_BYTES)
            .max_encoding_message_size(geokv_proto::MAX_GRPC_MESSAGE_BYTES);
        PeerLink { shard: self.shard, target, client, snapshot_timeout: self.peers.timeouts.snapshot }
    }
}

/// One shard's link to one peer.
pub struct PeerLink {
    shard: u64,
    target: u64,
    client: RaftClient<Channel>,
    snapshot_timeout: Duration,
}

#[derive(Clone, Copy)]
enum Unary {
    Vote,
    PreVote,
    Append,
    TransferLeader,
}

fn unreachable(msg: impl ToString) -> RpcError {
    RPCError::Unreachable(Unreachable::from_string(msg))
}

fn network(msg: impl ToString) -> RpcError {
    RPCError::Network(NetworkError::from_string(msg))
}

/// Maps a transport status to openraft's error classes: peers that cannot be
/// reached (or do not host the shard yet) make openraft back off.
fn status_to_rpc(status: tonic::Status) -> RpcError {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::NotFound | tonic::Code::DeadlineExceeded => unreachable(status),
        _ => network(status),
    }
}

fn reply_payload(reply: RaftMessage) -> Result<Vec<u8>, RpcError> {
    if reply.error.is_empty() { Ok(reply.payload) } else { Err(unreachable(reply.error)) }
}

impl PeerLink {
    fn message<T: Serialize>(&self, body: &T) -> RaftMessage {
        RaftMessage { shard_id: self.shard, payload: encode(body), error: String::new() }
    }

    async fn unary<Req: Serialize, Resp: DeserializeOwned>(
        &mut self,
        kind: Unary,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, RpcError> {
        let mut request = tonic::Request::new(self.message(req));
        request.set_timeout(ttl);
        let mut client = self.client.clone();
        let call = async move {
            match kind {
                Unary::Vote => client.vote(request).await,
                Unary::PreVote => client.pre_vote(request).await,
                Unary::Append => client.append_entries(request).await,
                Unary::TransferLeader => client.transfer_leader(request).await,
            }
        };
        let reply = match tokio::time::timeout(ttl, call).await {
            Ok(r) => r.map_err(status_to_rpc)?.into_inner(),
            Err(_) => return Err(unreachable(format!("no reply from node {} within {ttl:?}", self.target))),
        };
        decode(&reply_payload(reply)?).map_err(|e| network(format!("bad reply from node {}: {e}", self.target)))
    }
}

impl RaftNetworkV2<TypeConfig> for PeerLink {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RpcError> {
        self.unary(Unary::Append, &rpc, option.hard_ttl()).await
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> openraft::base::BoxFuture<
        's,
        Result<openraft::base::BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RpcError>>, RpcError>,
    >
    where
        S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        let shard = self.shard;
        let target = self.target;
        let mut client = self.client.clone();
        Box::pin(async move {
            let outbound =
                input.map(move |req| RaftMessage { shard_id: shard, payload: encode(&req), error: String::new() });
            let mut request = tonic::Request::new(outbound);
            request.metadata_mut().insert(SHARD_METADATA_KEY, shard.into());
            let opened = tokio::time::timeout(option.hard_ttl(), client.stream_append(request)).await;
            let inbound = match opened {
                Ok(r) => r.map_err(status_to_rpc)?.into_inner(),
                Err(_) => return Err(unreachable(format!("node {target} did not open an append stream"))),
            };
            let results = inbound.map(move |item| {
                let reply = item.map_err(status_to_rpc)?;
                decode::<StreamAppendResult<TypeConfig>>(&reply_payload(reply)?)
                    .map_err(|e| network(format!("bad append reply from node {target}: {e}")))
            });
            let boxed: openraft::base::BoxStream<'s, _> = Box::pin(results);
            Ok(boxed)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcError> {
        self.unary(Unary::Vote, &rpc, option.hard_ttl()).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcError> {
        self.unary(Unary::PreVote, &rpc, option.hard_ttl()).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let SnapshotData::Local(local) = snapshot.snapshot else {
            return Err(StreamingError::Network(NetworkError::from_string("only a snapshot taken here can be sent")));
        };
        let transfer = SnapshotTransfer {
            client: self.client.clone(),
            shard: self.shard,
            target: self.target,
            stall: self.snapshot_timeout,
        };
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            res = transfer.send(local, vote) => res,
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RpcError> {
        self.unary(Unary::TransferLeader, &req, option.hard_ttl()).await
    }
}

/// Attempts in a row that move a snapshot transfer no further before the
/// sender gives up (openraft then sends a fresh snapshot later).
const SNAPSHOT_RESUMES: u32 = 4;

/// One snapshot send to one peer.
struct SnapshotTransfer {
    client: RaftClient<Channel>,
    shard: u64,
    target: u64,
    /// No progress for this long abandons an attempt.
    stall: Duration,
}

/// How one attempt ended, when not with the peer's answer.
enum Failed {
    /// The stream broke or stalled: resume.
    Retry(String),
    /// The peer refused the snapshot, or this node could not read it.
    Fatal(String),
}

impl SnapshotTransfer {
    /// Sends `local`, resuming after a break for as long as attempts make
    /// progress: it gives up after [`SNAPSHOT_RESUMES`] attempts in a row
    /// that moved the receiver no further.
    async fn send(
        mut self,
        local: Arc<LocalSnapshot>,
        vote: Vote,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let (shard, target) = (self.shard, self.target);
        let mut from = 0;
        let mut fruitless = 0;
        loop {
            let mut why = match self.attempt(&local, &vote, from).await {
                Ok(response) => return Ok(response),
                Err(Failed::Fatal(e)) => {
                    return Err(StreamingError::Network(NetworkError::from_string(format!(
                        "snapshot of shard {shard} to node {target}: {e}"
                    ))));
                }
                Err(Failed::Retry(e)) => {
                    tracing::info!(shard, target, from, error = %e, "a snapshot transfer broke off");
                    e
                }
            };
            loop {
                fruitless += 1;
                if fruitless > SNAPSHOT_RESUMES {
                    return Err(StreamingError::Unreachable(Unreachable::from_string(format!(
                        "snapshot of shard {shard} to node {target}: {SNAPSHOT_RESUMES} attempts in a row \
                         made no progress, last: {why}"
                    ))));
                }
                tokio::time::sleep(Duration::from_millis(100 << fruitless)).await;
                match self.progress(local.id).await {
                    Ok(next) => {
                        if next > from {
                            fruitless = 0;
                        }
                        from = next;
                        tracing::info!(shard, target, from, "resuming a snapshot transfer");
                        break;
                    }
                    Err(e) => why = e,
                }
            }
        }
    }

    /// The next chunk the peer expects of transfer `id` (0: it has none).
    async fn progress(&mut self, id: u64) -> Result<u64, String> {
        let mut request = tonic::Request::new(SnapshotProgressRequest { shard_id: self.shard, transfer: id });
        request.set_timeout(self.stall);
        match tokio::time::timeout(self.stall, self.client.snapshot_progress(request)).await {
            Ok(Ok(reply)) => Ok(reply.into_inner().next_seq),
            Ok(Err(status)) => Err(format!("progress: {status}")),
            Err(_) => Err(format!("no progress answer within {:?}", self.stall)),
        }
    }

    /// Streams the chunks from `from` on and waits for the peer's answer.
    async fn attempt(
        &mut self,
        local: &Arc<LocalSnapshot>,
        vote: &Vote,
        from: u64,
    ) -> Result<SnapshotResponse<TypeConfig>, Failed> {
        let (tx, rx) = tokio::sync::mpsc::channel::<SnapshotChunk>(2);
        let (snapshot, v) = (local.clone(), *vote);
        // Set before the channel closes, so the answer to a stream cut
        // short by a read error is read as that error.
        let read_error = Arc::new(Mutex::new(None::<String>));
        let slot = read_error.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = produce(&snapshot, &v, from, &mut |chunk| tx.blocking_send(chunk).is_ok()) {
                *slot.lock().expect("read error slot") = Some(e.to_string());
            }
        });
        let pulled = Arc::new(Mutex::new(std::time::Instant::now()));
        let stamp = pulled.clone();
        let outbound = tokio_stream::wrappers::ReceiverStream::new(rx).inspect(move |_| {
            *stamp.lock().expect("progress stamp") = std::time::Instant::now();
        });
        let mut request = tonic::Request::new(outbound);
        request.metadata_mut().insert(SHARD_METADATA_KEY, self.shard.into());
        let mut client = self.client.clone();
        let call = client.install_snapshot_stream(request);
        tokio::pin!(call);
        let stall = self.stall;
        let answer = loop {
            tokio::select! {
                answer = &mut call => break answer,
                _ = tokio::time::sleep(stall / 4) => {
                    let idle = pulled.lock().expect("progress stamp").elapsed();
                    if idle > stall {
                        return Err(Failed::Retry(format!("no progress for {idle:?}")));
                    }
                }
            }
        };
        if let Some(e) = read_error.lock().expect("read error slot").take() {
            return Err(Failed::Fatal(format!("reading the snapshot: {e}")));
        }
        let reply = match answer {
            Ok(reply) => reply.into_inner(),
            Err(status) => {
                return Err(match status.code() {
                    tonic::Code::InvalidArgument | tonic::Code::PermissionDenied | tonic::Code::Internal => {
                        Failed::Fatal(status.to_string())
                    }
                    _ => Failed::Retry(status.to_string()),
                });
            }
        };
        let payload = reply_payload(reply).map_err(|e| Failed::Retry(e.to_string()))?;
        decode(&payload).map_err(|e| Failed::Fatal(format!("bad snapshot reply: {e}")))
    }
}
