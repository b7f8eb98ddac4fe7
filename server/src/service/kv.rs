//! The client API (`Kv` service).
//!
//! Every request is validated against the configured limits before it gets
//! near Raft, routed by key through this node's shard map, and checked
//! against the epoch the client routed with. Writes become one Raft command
//! (with the client's exactly-once session); reads first pass the barrier of
//! their consistency level, then read RocksDB. Each response says what it got.
//!
//! Outcome classification (see `crate::error`): a write that was proposed and
//! then lost track of — timeout, leadership change, Raft stopping — is
//! *indeterminate*, never failed.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use geokv_proto::kv::kv_client::KvClient;
use geokv_proto::kv::kv_server::Kv;
use geokv_proto::kv::{
    self as pb, BatchRequest, BatchResponse, CasRequest, CasResponse, Consistency, DeleteRequest, GetRequest,
    GetResponse, PutRequest, ReadInfo, RequestHeader, ScanRequest, ScanResponse, WriteResponse, WriteSession,
};
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, ForwardToLeader, LinearizableReadError, RaftError};
use prost::Message;
use tonic::{Request, Response, Status};

use crate::admission::{Reservation, ResponseHold};
use crate::auth::{Caller, Role};
use crate::error::Error;
use crate::eventual::{EcRecord, EcShard};
use crate::node::Node;
use crate::raft::command::{
    Command, CommandResult, Condition, Expect, Op, Record, Rejection, Session, WriteCommand, WriteOutcome,
};
use crate::raft::read_index::{RoundError, RoundResult};
use crate::raft::{ShardRaft, TypeConfig, decode};
use crate::shards::{ShardDesc, ShardMap};

/// A scan page holds at most this many bytes of keys and values (stored
/// records), beside its count limit, so that one page of large values
/// cannot make a response near the message limit (at least one pair).
const SCAN_PAGE_BYTES: usize = 4 << 20;

/// The retry hint an overloaded node gives (clients wait at least this
/// long, plus their own backoff, before sending the request again).
const OVERLOAD_RETRY_AFTER_MS: u64 = 20;

/// Protobuf bytes around one pair in a response (tags, lengths, version,
/// clock), and around the pairs: what a reservation adds to keys and values.
const PAIR_OVERHEAD_BYTES: usize = 64;
const RESPONSE_OVERHEAD_BYTES: usize = 1024;

pub struct KvService {
    node: Arc<Node>,
}

/// A request routed to a hosted shard.
struct Routed {
    shard: ShardDesc,
    raft: ShardRaft,
}

/// Where a request goes: a Raft group, or a replica of an eventual shard.
enum Target {
    Raft(Routed),
    Eventual(Arc<EcShard>),
}

/// The wire form of a shard descriptor (with replica addresses and regions).
pub fn shard_info(map: &ShardMap, s: &ShardDesc) -> pb::ShardInfo {
    pb::ShardInfo {
        shard_id: s.id,
        epoch: s.epoch,
        start: s.start.clone(),
        end: s.end.clone().unwrap_or_default(),
        replicas: s
            .replicas
            .iter()
            .filter_map(|id| map.node(*id))
            .map(|n| pb::Replica {
                node_id: n.id,
                addr: n.addr.clone(),
                region: n.region.clone(),
                zone: n.zone.clone(),
            })
            .collect(),
        preferred_leader_region: s.preferred_leader_region.clone().unwrap_or_default(),
        mode: match s.mode {
            crate::shards::ShardMode::Raft => pb::ShardMode::Raft,
            crate::shards::ShardMode::Eventual => pb::ShardMode::Eventual,
        } as i32,
        adding_node: s.change.and_then(|c| c.add).unwrap_or(0),
        removing_node: s.change.and_then(|c| c.remove).unwrap_or(0),
        merging_with: s.merge.map_or(0, |m| m.right),
        merge_frozen: s.merge.is_some_and(|m| m.frozen),
    }
}

fn consistency_name(c: Consistency) -> &'static str {
    match c {
        Consistency::Linearizable => "linearizable",
        Consistency::Lease => "lease",
        Consistency::Stale => "stale",
        Consistency::Follower => "follower",
        Consistency::Bounded => "bounded",
        Consistency::Eventual => "eventual",
    }
}

fn session(s: Option<WriteSession>) -> Session {
    s.map_or_else(Session::default, |s| Session {
        client_id: s.client_id,
        sequence: s.sequence,
        first_incomplete: s.first_incomplete,
    })
}

fn expectation(e: Option<pb::Expectation>, what: &str) -> Result<Expect, Error> {
    use pb::expectation::Expect as E;
    match e.and_then(|e| e.expect) {
        Some(E::Absent(_)) => Ok(Expect::Absent),
        Some(E::Value(v)) => Ok(Expect::Value(v)),
        Some(E::Version(v)) => Ok(Expect::Version(v)),
        None => Err(Error::invalid(format!("{what} has no expectation: set absent, value or version"))),
    }
}

fn kv(key: Vec<u8>, r: Record) -> pb::KeyValue {
    pb::KeyValue { key, value: r.value, version: r.version, hlc: None, origin: 0 }
}

/// A live record of an eventual shard as the client sees it (`None` for a
/// tombstone).
fn ec_kv(key: Vec<u8>, r: EcRecord) -> Option<pb::KeyValue> {
    let origin = r.origin();
    Some(pb::KeyValue { key, value: r.value?, version: 0, hlc: Some(r.hlc.to_proto()), origin })
}

impl KvService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    fn limits(&self) -> &crate::config::Limits {
        &self.node.config.limits
    }

    fn check_key(&self, key: &[u8], what: &str) -> Result<(), Error> {
        let max = self.limits().max_key_bytes;
        if key.is_empty() {
            return Err(Error::invalid(format!("{what} is empty; keys must be 1..={max} bytes")));
        }
        if key.len() > max {
            return Err(Error::invalid(format!("{what} is {} bytes; the limit is max_key_bytes = {max}", key.len())));
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), Error> {
        let max = self.limits().max_value_bytes;
        if value.len() > max {
            return Err(Error::invalid(format!(
                "value is {} bytes; the limit is max_value_bytes = {max}",
                value.len()
            )));
        }
        Ok(())
    }

    /// Like [`Self::route_any`], for operations only Raft shards support
    /// (`op` names the operation in the refusal).
    async fn route(&self, key: &[u8], header: Option<&RequestHeader>, op: &str) -> Result<Routed, Error> {
        let refuse = |shard: u64| {
            Error::NotSupported(format!(
                "{op} is refused on eventual shard {shard}: its replicas accept writes independently and keep the \
                 newest (last writer wins), so nothing can be compared or applied atomically there; use a Raft shard"
            ))
        };
        match self.route_any(key, header).await {
            Ok(Target::Raft(routed)) => Ok(routed),
            Ok(Target::Eventual(replica)) => Err(refuse(replica.id())),
            // Refused the same way on a node without a replica.
            Err(e) => match self.node.shard_map().shard_for_key(key) {
                Some(s) if s.is_eventual() => Err(refuse(s.id)),
                _ => Err(e),
            },
        }
    }

    /// Finds the shard of `key`, checks the client's routing, and the local
    /// replica.
    async fn route_any(&self, key: &[u8], header: Option<&RequestHeader>) -> Result<Target, Error> {
        if !self.node.is_ready() {
            return Err(Error::Unavailable("node is starting; retry shortly".into()));
        }
        let map = self.node.shard_map();
        let shard = map
            .shard_for_key(key)
            .ok_or_else(|| Error::Internal(format!("shard map version {} covers no shard for a key", map.version)))?
            .clone();
        if let Some(h) = header
            && ((h.shard_id != 0 && h.shard_id != shard.id) || (h.epoch != 0 && h.epoch != shard.epoch))
        {
            return Err(Error::WrongShard {
                reason: format!(
                    "request routed to shard {} epoch {}, the key belongs to shard {} epoch {}",
                    h.shard_id, h.epoch, shard.id, shard.epoch
                ),
                current: Some(Box::new(shard_info(&map, &shard))),
                map_version: map.version,
            });
        }
        if shard.is_eventual()
            && let Some(replica) = self.node.eventual_shard(shard.id)
        {
            if replica.is_seeding() {
                return Err(Error::Unavailable(format!(
                    "the replica of eventual shard {} on node {} is still being seeded: nothing was done; ask one of \
                     its replicas {:?}",
                    shard.id, self.node.config.node_id, shard.replicas
                )));
            }
            return Ok(Target::Eventual(replica));
        }
        match self.node.group(shard.id).await {
            Some(raft) => Ok(Target::Raft(Routed { shard, raft })),
            None => {
                // Not a replica here: point at one that is.
                let replica = shard.replicas.first().and_then(|id| map.node(*id));
                Err(Error::NotLeader {
                    shard: shard.id,
                    leader_id: None,
                    leader_addr: replica.map(|n| n.addr.clone()),
                    term: 0,
                })
            }
        }
    }

    /// A request this shard refused for routing (it raced a map change):
    /// the client refreshes its map and asks again.
    fn wrong_shard(&self, shard: u64, reason: String) -> Error {
        let map = self.node.shard_map();
        Error::WrongShard {
            reason,
            current: map.shard(shard).map(|s| Box::new(shard_info(&map, s))),
            map_version: map.version,
        }
    }

    fn not_leader(&self, shard: u64, raft: &ShardRaft, f: &ForwardToLeader<TypeConfig>) -> Error {
        let term = raft.metrics().borrow_watched().current_term;
        let leader_addr = f.leader_node.as_ref().map(|n| n.addr.clone()).or_else(|| {
            let map = self.node.shard_map();
            f.leader_id.and_then(|id| map.node(id)).map(|n| n.addr.clone())
        });
        Error::NotLeader { shard, leader_id: f.leader_id, leader_addr, term }
    }

    /// Waits until a read at `consistency` may be served by this replica and
    /// reports what was actually served.
    async fn read_barrier(
        &self,
        routed: &Routed,
        consistency: Consistency,
        max_staleness_ms: u64,
    ) -> Result<ReadInfo, Error> {
        let shard = routed.shard.id;
        let raft = &routed.raft;
        let classify = |res: RoundResult| match res {
            Ok(index) => Ok(index),
            Err(RoundError::TimedOut) => {
                Err(Error::Unavailable(format!("shard {shard}: no quorum confirmed leadership in time")))
            }
            Err(RoundError::Raft(RaftError::APIError(LinearizableReadError::ForwardToLeader(f)))) => {
                Err(self.not_leader(shard, raft, &f))
            }
            Err(RoundError::Raft(e)) => Err(Error::Unavailable(format!("shard {shard}: {e}"))),
            Err(RoundError::Remote(e)) => Err(Error::Unavailable(format!("shard {shard}: follower read: {e}"))),
        };
        let follower_read = || async {
            let index = classify(self.node.follower_read_index(shard, raft).await)?;
            self.node.wait_applied(raft, index).await.map_err(|e| Error::Unavailable(format!("shard {shard}: {e}")))
        };
        let (served, fell_back) = match consistency {
            Consistency::Linearizable => {
                classify(self.node.leader_read_index(shard, raft).await)?;
                (Consistency::Linearizable, false)
            }
            Consistency::Lease => match classify(self.node.lease_read_index(raft).await) {
                Ok(_) => (Consistency::Lease, false),
                Err(e @ Error::NotLeader { .. }) => return Err(e),
                Err(_) => {
                    classify(self.node.leader_read_index(shard, raft).await)?;
                    (Consistency::Linearizable, true)
                }
            },
            Consistency::Follower => {
                follower_read().await?;
                (Consistency::Follower, false)
            }
            Consistency::Bounded => {
                if max_staleness_ms == 0 {
                    return Err(Error::invalid("a bounded-staleness read needs max_staleness_ms > 0"));
                }
                match self.local_staleness_ms(shard, raft) {
                    Some(bound) if bound <= max_staleness_ms => (Consistency::Bounded, false),
                    _ => {
                        follower_read().await?;
                        (Consistency::Follower, true)
                    }
                }
            }
            Consistency::Stale | Consistency::Eventual => (Consistency::Stale, false),
        };
        if fell_back {
            self.node.metrics.read_fallback(consistency_name(consistency), consistency_name(served));
        }
        // Checked once the replica has applied what the read must see: a
        // shard not frozen by then has had no write on the merge's left
        // shard to its keys yet (that shard takes them only once every
        // replica of this one applied the freeze).
        if self.node.is_frozen(shard) {
            return Err(self.wrong_shard(shard, format!("shard {shard} is being merged into the shard before it")));
        }
        let staleness_bound_ms = match served {
            Consistency::Linearizable | Consistency::Lease | Consistency::Follower => 0,
            Consistency::Bounded | Consistency::Stale | Consistency::Eventual => {
                self.local_staleness_ms(shard, raft).unwrap_or(u64::MAX)
            }
        };
        let me = &self.node.me;
        Ok(ReadInfo {
            served: served as i32,
            node_id: me.id,
            region: me.region.clone(),
            applied_index: raft.metrics().borrow_watched().last_applied.map_or(0, |l| l.index),
            staleness_bound_ms,
            fell_back,
            weaker_than_requested: false,
        })
    }

    /// What a read of an eventual shard got: this replica's state, with the
    /// bound its peers' progress proves (every write accepted anywhere
    /// before that long ago is here).
    fn eventual_read_info(&self, replica: &EcShard, requested: Consistency) -> ReadInfo {
        let me = &self.node.me;
        ReadInfo {
            served: Consistency::Eventual as i32,
            node_id: me.id,
            region: me.region.clone(),
            applied_index: 0,
            staleness_bound_ms: replica
                .staleness_bound_ms(self.node.config.raft.max_clock_offset_ms)
                .unwrap_or(u64::MAX),
            fell_back: false,
            weaker_than_requested: !matches!(requested, Consistency::Stale | Consistency::Eventual),
        }
    }

    /// A write to an eventual shard: durable on this replica, shipped later.
    async fn eventual_write(
        &self,
        replica: &EcShard,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
    ) -> Result<WriteResponse, Error> {
        let receipt = replica.write(key, value).await?;
        Ok(WriteResponse {
            version: 0,
            existed: receipt.existed,
            shard_id: replica.id(),
            eventual: true,
            hlc: Some(receipt.hlc.to_proto()),
            origin: self.node.config.node_id,
        })
    }

    /// How stale this replica's data of `shard` may be right now, if known:
    /// a leader cannot miss writes committed before its last quorum
    /// acknowledgement; a follower knows its bound from its leader's safe time.
    fn local_staleness_ms(&self, shard: u64, raft: &ShardRaft) -> Option<u64> {
        let m = raft.metrics().borrow_watched().clone();
        let applied = m.last_applied.map_or(0, |l| l.index);
        if m.state == openraft::ServerState::Leader {
            // A leader that has not committed an entry of its term yet
            // vouches for nothing: the read falls back (see leader_safe_point).
            let (acked_age, committed) = crate::node::leader_safe_point(&m)?;
            return (applied >= committed).then_some(acked_age.as_millis() as u64);
        }
        self.node.staleness_bound_ms(shard, applied)
    }

    fn read_record(&self, key: &[u8]) -> Result<Option<Record>, Error> {
        match self.node.storage.get_data(key)? {
            Some(bytes) => Ok(Some(decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Proposes a write to the shard's Raft group and waits for its result.
    async fn propose(
        &self,
        routed: &Routed,
        session: Session,
        conditions: Vec<Condition>,
        ops: Vec<Op>,
    ) -> Result<WriteOutcome, Error> {
        let shard = routed.shard.id;
        // After a failed fsync this node acknowledges nothing as durable:
        // refuse before proposing, so the write is known not to be applied.
        if let Some(cause) = self.node.storage.sync_failure() {
            return Err(Error::Unavailable(format!(
                "node {}: a WAL fsync failed ({cause}); it takes no writes until it is restarted",
                self.node.config.node_id
            )));
        }
        let cmd = Command::Write(WriteCommand {
            session,
            proposed_at_ms: self.node.log_clock.entry_time_ms(shard, crate::node::wall_ms()),
            epoch: routed.shard.epoch,
            conditions,
            ops,
        });
        let res = tokio::time::timeout(self.node.request_timeout(), routed.raft.client_write(cmd)).await;
        let indeterminate = |cause: String| Error::Indeterminate { shard, cause };
        let resp = match res {
            Err(_) => return Err(indeterminate(format!("not committed within {:?}", self.node.request_timeout()))),
            Ok(Ok(resp)) => resp,
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                return Err(self.not_leader(shard, &routed.raft, &f));
            }
            Ok(Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)))) => {
                return Err(indeterminate("leadership changed after the write was proposed".into()));
            }
            Ok(Err(RaftError::APIError(e))) => return Err(Error::Internal(format!("shard {shard}: {e}"))),
            Ok(Err(RaftError::Fatal(f))) => return Err(indeterminate(format!("raft group stopped: {f}"))),
        };
        match resp.data {
            CommandResult::Write(outcome) => Ok(outcome),
            CommandResult::Rejected(r @ Rejection::SessionExpired { .. }) => Err(Error::SessionExpired(r.to_string())),
            CommandResult::Rejected(
                r @ (Rejection::KeyOutsideShard { .. } | Rejection::StaleEpoch { .. } | Rejection::Frozen { .. }),
            ) => Err(self.wrong_shard(shard, r.to_string())),
            other => Err(Error::Internal(format!("shard {shard}: unexpected apply result {other:?}"))),
        }
    }

    /// Runs `f`, records its latency and outcome, and converts errors.
    async fn observed<T>(
        &self,
        op: &'static str,
        conn: Option<std::net::SocketAddr>,
        consistency: &'static str,
        f: impl Future<Output = Result<T, Error>>,
    ) -> Result<Response<T>, Status> {
        let start = Instant::now();
        let res = match self.node.admission.admit(conn).await {
            Some(_permit) => f.await,
            None => Err(self.overloaded(format!(
                "it serves its limit of {} requests at once (limits.max_inflight_requests)",
                self.node.config.limits.max_inflight_requests
            ))),
        };
        let code = match &res {
            Ok(_) => tonic::Code::Ok,
            Err(e) => {
                tracing::debug!(op, cause = %e, "request failed");
                e.code()
            }
        };
        self.node.metrics.observe(op, consistency, code, start.elapsed());
        res.map(Response::new).map_err(Status::from)
    }
}

/// Room for responses: what a read may return, and the reservation.
impl KvService {
    /// The largest pair a response may carry, with its protobuf overhead.
    fn max_pair_bytes(&self) -> usize {
        self.limits().max_key_bytes + self.limits().max_value_bytes + PAIR_OVERHEAD_BYTES
    }

    /// The most a get's answer may hold: one pair.
    fn get_bound(&self) -> usize {
        self.max_pair_bytes() + RESPONSE_OVERHEAD_BYTES
    }

    /// The most a scan page of `limit` pairs may hold: up to
    /// [`SCAN_PAGE_BYTES`] of keys and values plus the pair that crossed it.
    fn scan_page_bound(&self, limit: usize) -> usize {
        (SCAN_PAGE_BYTES + self.max_pair_bytes()).min(limit.saturating_add(1).saturating_mul(self.max_pair_bytes()))
            + self.scan_overhead(limit)
    }

    /// What a page of `limit` pairs holds beside its keys and values.
    fn scan_overhead(&self, limit: usize) -> usize {
        limit.saturating_add(1).saturating_mul(PAIR_OVERHEAD_BYTES) + RESPONSE_OVERHEAD_BYTES
    }

    /// Room for a response of up to `bytes` to connection `conn`
    /// ([`crate::admission::ResponseBudget`]), or `RESOURCE_EXHAUSTED`.
    async fn reserve(&self, conn: Option<std::net::SocketAddr>, bytes: usize) -> Result<Reservation, Error> {
        self.node.responses.reserve(conn, bytes).await.map_err(|why| self.overloaded(why.to_string()))
    }

    fn overloaded(&self, why: String) -> Error {
        Error::Overloaded { node: self.node.config.node_id, why, retry_after_ms: OVERLOAD_RETRY_AFTER_MS }
    }
}

/// The client's address, which admission and the response budget count
/// per connection.
fn connection<T>(req: &Request<T>) -> Option<std::net::SocketAddr> {
    req.extensions().get::<crate::tls::ConnInfo>().and_then(|c| c.remote)
}

fn raft_write_response(routed: &Routed, out: &WriteOutcome) -> WriteResponse {
    WriteResponse {
        version: out.version,
        existed: out.existed.first().copied().unwrap_or(false),
        shard_id: routed.shard.id,
        eventual: false,
        hlc: None,
        origin: 0,
    }
}

/// The handlers, serving a request on this node (or saying where to go).
impl KvService {
    #[tracing::instrument(level = "debug", skip_all, fields(key_len = req.get_ref().key.len()))]
    async fn get_here(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let caller = Caller::of(&req)?;
        let conn = connection(&req);
        let req = req.into_inner();
        let consistency = Consistency::try_from(req.consistency).unwrap_or(Consistency::Linearizable);
        let hold = ResponseHold::default();
        let response = self
            .observed("get", conn, consistency_name(consistency), async {
                self.check_key(&req.key, "key")?;
                caller.check_key(Role::Read, &req.key)?;
                let response = match self.route_any(&req.key, req.header.as_ref()).await? {
                    Target::Raft(routed) => {
                        let read = self.read_barrier(&routed, consistency, req.max_staleness_ms).await?;
                        hold.set(self.reserve(conn, self.get_bound()).await?);
                        let kv = self.read_record(&req.key)?.map(|r| kv(req.key.clone(), r));
                        GetResponse { kv, read: Some(read) }
                    }
                    Target::Eventual(replica) => {
                        hold.set(self.reserve(conn, self.get_bound()).await?);
                        let kv = replica.get(&req.key)?.and_then(|r| ec_kv(req.key.clone(), r));
                        GetResponse { kv, read: Some(self.eventual_read_info(&replica, consistency)) }
                    }
                };
                hold.shrink_to(response.encoded_len());
                Ok(response)
            })
            .await?;
        Ok(hold.attach(response))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(key_len = req.get_ref().key.len()))]
    async fn put_here(&self, req: Request<PutRequest>) -> Result<Response<WriteResponse>, Status> {
        let caller = Caller::of(&req)?;
        let conn = connection(&req);
        let req = req.into_inner();
        self.observed("put", conn, "-", async {
            self.check_key(&req.key, "key")?;
            caller.check_key(Role::Write, &req.key)?;
            self.check_value(&req.value)?;
            let routed = match self.route_any(&req.key, req.header.as_ref()).await? {
                Target::Raft(routed) => routed,
                Target::Eventual(replica) => return self.eventual_write(&replica, req.key, Some(req.value)).await,
            };
            let op = Op::Put { key: req.key, value: req.value };
            let out = self.propose(&routed, session(req.session), Vec::new(), vec![op]).await?;
            Ok(raft_write_response(&routed, &out))
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(key_len = req.get_ref().key.len()))]
    async fn delete_here(&self, req: Request<DeleteRequest>) -> Result<Response<WriteResponse>, Status> {
        let caller = Caller::of(&req)?;
        let conn = connection(&req);
        let req = req.into_inner();
        self.observed("delete", conn, "-", async {
            self.check_key(&req.key, "key")?;
            caller.check_key(Role::Write, &req.key)?;
            let routed = match self.route_any(&req.key, req.header.as_ref()).await? {
                Target::Raft(routed) => routed,
                Target::Eventual(replica) => return self.eventual_write(&replica, req.key, None).await,
            };
            let op = Op::Delete { key: req.key };
            let out = self.propose(&routed, session(req.session), Vec::new(), vec![op]).await?;
            Ok(raft_write_response(&routed, &out))
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(key_len = req.get_ref().key.len()))]
    async fn compare_and_swap_here(&self, req: Request<CasRequest>) -> Result<Response<CasResponse>, Status> {
        let caller = Caller::of(&req)?;
        let conn = connection(&req);
        let req = req.into_inner();
        let hold = ResponseHold::default();
        let response = self
            .observed("cas", conn, "-", async {
                self.check_key(&req.key, "key")?;
                caller.check_key(Role::Write, &req.key)?;
                if let Some(v) = &req.new_value {
                    self.check_value(v)?;
                }
                let expect = expectation(req.expected, "compare-and-swap")?;
                let routed = self.route(&req.key, req.header.as_ref(), "compare-and-swap").await?;
                let condition = Condition { key: req.key.clone(), expect };
                let op = match req.new_value {
                    Some(value) => Op::Put { key: req.key.clone(), value },
                    None => Op::Delete { key: req.key.clone() },
                };
                let deletes = matches!(op, Op::Delete { .. });
                let out = self.propose(&routed, session(req.session), vec![condition], vec![op]).await?;
                let shard_id = routed.shard.id;
                Ok(if out.applied {
                    CasResponse {
                        swapped: true,
                        version: if deletes { 0 } else { out.version },
                        current: None,
                        shard_id,
                    }
                } else {
                    let current = out.current.into_iter().next().flatten().map(|r| kv(req.key, r));
                    let response = CasResponse {
                        swapped: false,
                        version: current.as_ref().map_or(0, |c| c.version),
                        current,
                        shard_id,
                    };
                    // Nothing was written: the current value may wait for room
                    // like a read, and be refused as one.
                    hold.set(self.reserve(conn, response.encoded_len()).await?);
                    response
                })
            })
            .await?;
        Ok(hold.attach(response))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn scan_here(&self, req: Request<ScanRequest>) -> Result<Response<ScanResponse>, Status> {
        let caller = Caller::of(&req)?;
        let conn = connection(&req);
        let req = req.into_inner();
        let consistency = Consistency::try_from(req.consistency).unwrap_or(Consistency::Linearizable);
        let hold = ResponseHold::default();
        let response = self
            .observed("scan", conn, consistency_name(consistency), async {
                let max_key = self.limits().max_key_bytes;
                if req.start.len() > max_key || req.end.len() > max_key {
                    return Err(Error::invalid(format!("scan bounds may be at most max_key_bytes = {max_key} bytes")));
                }
                let end = (!req.end.is_empty()).then_some(req.end.clone());
                if end.as_ref().is_some_and(|e| *e <= req.start) {
                    return Err(Error::invalid(format!(
                        "scan range is empty or inverted: start {:?} is not below end {:?}",
                        String::from_utf8_lossy(&req.start),
                        String::from_utf8_lossy(&req.end)
                    )));
                }
                caller.check_range(Role::Read, &req.start, &req.end)?;
                let (default, max) = (self.limits().default_scan_limit, self.limits().max_scan_limit);
                let limit = match req.limit {
                    0 => default,
                    n if n > max => {
                        return Err(Error::invalid(format!("scan limit {n} exceeds max_scan_limit = {max}")));
                    }
                    n => n,
                } as usize;
                let (read, shard_end, eventual) = match self.route_any(&req.start, req.header.as_ref()).await? {
                    Target::Raft(routed) => {
                        let read = self.read_barrier(&routed, consistency, req.max_staleness_ms).await?;
                        (read, routed.shard.end.clone(), None)
                    }
                    Target::Eventual(replica) => {
                        (self.eventual_read_info(&replica, consistency), replica.desc.end.clone(), Some(replica))
                    }
                };
                let stop = match (&end, &shard_end) {
                    (Some(e), Some(s)) => Some(e.min(s).clone()),
                    (Some(e), None) => Some(e.clone()),
                    (None, s) => s.clone(),
                };
                // Room for the page: all it may hold if free, else what is free
                // (a shorter page), at least one pair.
                let at_least = self.max_pair_bytes() + self.scan_overhead(limit);
                let reservation = self.node.responses.reserve_within(conn, at_least, self.scan_page_bound(limit)).await;
                let reservation = reservation.map_err(|why| self.overloaded(why.to_string()))?;
                let budget = (reservation.bytes() as usize).saturating_sub(at_least).min(SCAN_PAGE_BYTES);
                hold.set(reservation);
                let mut rows = match &eventual {
                    None => self.node.storage.scan_data_within(&req.start, stop.as_deref(), limit + 1, budget)?,
                    Some(replica) => {
                        let mut rows = replica.scan(&req.start, limit + 1, budget)?;
                        rows.retain(|(k, _)| stop.as_ref().is_none_or(|s| k < s));
                        rows
                    }
                };
                // A page ends at the limit or once its keys and values pass its
                // budget (SCAN_PAGE_BYTES, less when the node is short of room
                // for responses): the row that crossed it starts the next page.
                let page_bytes: usize = rows.iter().map(|(k, v)| k.len() + v.len()).sum();
                let over_budget = rows.len() > 1 && page_bytes > budget;
                let (more, resume_key) = if rows.len() > limit || over_budget {
                    let next = rows.pop().expect("more rows than the page holds").0;
                    (true, next)
                } else {
                    match shard_end {
                        Some(s) if end.as_ref().is_none_or(|e| s < *e) => (true, s),
                        _ => (false, Vec::new()),
                    }
                };
                let mut kvs = Vec::with_capacity(rows.len());
                for (k, v) in rows {
                    if eventual.is_some() {
                        // Tombstones count toward the page but are not returned.
                        kvs.extend(ec_kv(k, decode::<EcRecord>(&v)?));
                    } else {
                        kvs.push(kv(k, decode::<Record>(&v)?));
                    }
                }
                let response = ScanResponse { kvs, resume_key, more, read: Some(read) };
                hold.shrink_to(response.encoded_len());
                Ok(response)
            })
            .await?;
        Ok(hold.attach(response))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(ops = req.get_ref().ops.len()))]
    async fn batch_here(&self, req: Request<BatchRequest>) -> Result<Response<BatchResponse>, Status> {
        let caller = Caller::of(&req)?;
        let conn = connection(&req);
        let req = req.into_inner();
        let hold = ResponseHold::default();
        let response = self
            .observed("batch", conn, "-", async {
                let l = self.limits();
                if req.ops.is_empty() {
                    return Err(Error::invalid("batch has no operations"));
                }
                let count = req.ops.len() + req.conditions.len();
                if count > l.max_batch_ops {
                    return Err(Error::invalid(format!(
                        "batch has {count} operations and conditions; the limit is max_batch_ops = {}",
                        l.max_batch_ops
                    )));
                }
                let mut ops = Vec::with_capacity(req.ops.len());
                let mut bytes = 0usize;
                for (i, op) in req.ops.into_iter().enumerate() {
                    let op = match op.op {
                        Some(pb::batch_op::Op::Put(p)) => {
                            self.check_key(&p.key, &format!("key of op {i}"))?;
                            self.check_value(&p.value)?;
                            caller.check_key(Role::Write, &p.key)?;
                            Op::Put { key: p.key, value: p.value }
                        }
                        Some(pb::batch_op::Op::Delete(d)) => {
                            self.check_key(&d.key, &format!("key of op {i}"))?;
                            caller.check_key(Role::Write, &d.key)?;
                            Op::Delete { key: d.key }
                        }
                        None => return Err(Error::invalid(format!("batch op {i} is neither put nor delete"))),
                    };
                    bytes += op.key().len() + if let Op::Put { value, .. } = &op { value.len() } else { 0 };
                    ops.push(op);
                }
                let mut conditions = Vec::with_capacity(req.conditions.len());
                for (i, c) in req.conditions.into_iter().enumerate() {
                    self.check_key(&c.key, &format!("key of condition {i}"))?;
                    caller.check_key(Role::Read, &c.key)?;
                    bytes += c.key.len();
                    conditions
                        .push(Condition { key: c.key, expect: expectation(c.expected, &format!("condition {i}"))? });
                }
                if bytes > l.max_batch_bytes {
                    return Err(Error::invalid(format!(
                        "batch carries {bytes} bytes; the limit is max_batch_bytes = {}",
                        l.max_batch_bytes
                    )));
                }
                let routed = self.route(ops[0].key(), req.header.as_ref(), "an atomic batch").await?;
                let keys = ops.iter().map(Op::key).chain(conditions.iter().map(|c| c.key.as_slice()));
                for key in keys {
                    if !routed.shard.contains(key) {
                        let other = self.node.shard_map().shard_for_key(key).map_or(0, |s| s.id);
                        return Err(Error::invalid(format!(
                            "batch keys span shards {} and {other}; a batch is atomic within one shard only",
                            routed.shard.id
                        )));
                    }
                }
                let condition_keys: Vec<Vec<u8>> = conditions.iter().map(|c| c.key.clone()).collect();
                let out = self.propose(&routed, session(req.session), conditions, ops).await?;
                let current = if out.applied {
                    Vec::new()
                } else {
                    condition_keys
                        .into_iter()
                        .zip(out.current)
                        .map(|(key, r)| match r {
                            Some(r) => kv(key, r),
                            None => pb::KeyValue { key, value: Vec::new(), version: 0, hlc: None, origin: 0 },
                        })
                        .collect()
                };
                let response =
                    BatchResponse { applied: out.applied, version: out.version, current, shard_id: routed.shard.id };
                if !response.applied {
                    // Nothing was written: the current values may wait for room
                    // like a read, and be refused as one.
                    hold.set(self.reserve(conn, response.encoded_len()).await?);
                }
                Ok(response)
            })
            .await?;
        Ok(hold.attach(response))
    }
}

/// How many times a request may be forwarded (the node asked, maybe a
/// replica that is not the leader, then the leader), counted in the
/// `geokv-forwards` metadata.
const MAX_FORWARDS: u32 = 2;
const FORWARDS: &str = "geokv-forwards";

/// What it takes to forward a request: its message (cloned before this
/// node consumed it), the hops so far and the caller's deadline.
struct Forward<T> {
    message: T,
    hops: u32,
    deadline: Option<Instant>,
    conn: Option<std::net::SocketAddr>,
}

/// A gRPC timeout (`grpc-timeout`: an integer and a unit, H M S m u n).
fn grpc_timeout(value: &str) -> Option<Duration> {
    let (n, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

impl KvService {
    /// Whether a request that this node cannot serve is forwarded: yes for
    /// one that does not name its shard (a generic gRPC client, which has
    /// no router), up to [`MAX_FORWARDS`] hops; no for the Rust client,
    /// which names the shard it routed to and learns from `NotLeader`.
    fn forwardable<T: Clone>(&self, req: &Request<T>, header: Option<&RequestHeader>) -> Option<Forward<T>> {
        if header.is_some_and(|h| h.shard_id != 0) {
            return None;
        }
        let hops = req.metadata().get(FORWARDS).and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(0);
        let deadline =
            req.metadata().get("grpc-timeout").and_then(|v| grpc_timeout(v.to_str().ok()?)).map(|t| Instant::now() + t);
        let conn = connection(req);
        (hops < MAX_FORWARDS).then(|| Forward { message: req.get_ref().clone(), hops, deadline, conn })
    }

    /// `result`, or, when it says this node does not lead the shard and the
    /// request may be forwarded, the answer of the node it names: sent over
    /// the node's own peer connection (a cluster member; the caller's
    /// permissions were checked here already) within the caller's deadline.
    /// A forwarded write that gets no answer is reported indeterminate: it
    /// may have been applied. A forwarded read first reserves room for
    /// `read_bytes` of answer, held until its client took it.
    async fn or_forward<T, R, F, Fut>(
        &self,
        method: &'static str,
        result: Result<Response<R>, Status>,
        forward: Option<Forward<T>>,
        write: bool,
        read_bytes: usize,
        call: F,
    ) -> Result<Response<R>, Status>
    where
        R: prost::Message,
        F: FnOnce(KvClient<tonic::transport::Channel>, Request<T>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        let (Err(status), Some(forward)) = (&result, forward) else { return result };
        let Some(geokv_proto::kv::error_detail::Kind::NotLeader(hint)) =
            geokv_proto::details::decode(status.details()).and_then(|d| d.kind)
        else {
            return result;
        };
        let me = &self.node.me;
        if hint.leader_addr.is_empty() || hint.leader_addr == me.addr {
            return result;
        }
        let timeout = forward
            .deadline
            .map_or(self.node.request_timeout(), |d| d.saturating_duration_since(Instant::now()))
            .min(self.node.request_timeout());
        let hold = ResponseHold::default();
        if !write {
            hold.set(self.reserve(forward.conn, read_bytes).await?);
        }
        let mut request = Request::new(forward.message);
        request.set_timeout(timeout);
        let hops = (forward.hops + 1).to_string().parse().expect("digits are valid metadata");
        request.metadata_mut().insert(FORWARDS, hops);
        let client = KvClient::new(self.node.peers.channel(&hint.leader_addr))
            .max_decoding_message_size(geokv_proto::MAX_GRPC_MESSAGE_BYTES)
            .max_encoding_message_size(geokv_proto::MAX_GRPC_MESSAGE_BYTES);
        self.node.metrics.forwarded(method);
        let failed = |why: String| {
            let cause = format!("forwarded to node {} at {}: {why}", hint.leader_id, hint.leader_addr);
            Status::from(if write {
                Error::Indeterminate { shard: hint.shard_id, cause }
            } else {
                Error::Unavailable(format!("shard {}: {cause}", hint.shard_id))
            })
        };
        match tokio::time::timeout(timeout, call(client, request)).await {
            Ok(Ok(response)) => {
                hold.shrink_to(response.get_ref().encoded_len());
                Ok(hold.attach(response))
            }
            // Refused before it was sent (nothing listens there): this
            // node's own answer stands, and says where to go.
            Ok(Err(s))
                if s.code() == tonic::Code::Unavailable && crate::error::status_chain(&s).contains("connect") =>
            {
                result
            }
            Ok(Err(s)) if s.code() == tonic::Code::Unknown || s.code() == tonic::Code::Cancelled => {
                Err(failed(s.message().to_string()))
            }
            Ok(Err(s)) => Err(s),
            Err(_) => Err(failed(format!("no answer within {timeout:?}"))),
        }
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn get(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let forward = self.forwardable(&req, req.get_ref().header.as_ref());
        let result = self.get_here(req).await;
        let bytes = self.get_bound();
        self.or_forward("get", result, forward, false, bytes, |mut c, r| async move { c.get(r).await }).await
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<WriteResponse>, Status> {
        let forward = self.forwardable(&req, req.get_ref().header.as_ref());
        let result = self.put_here(req).await;
        self.or_forward("put", result, forward, true, 0, |mut c, r| async move { c.put(r).await }).await
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Result<Response<WriteResponse>, Status> {
        let forward = self.forwardable(&req, req.get_ref().header.as_ref());
        let result = self.delete_here(req).await;
        self.or_forward("delete", result, forward, true, 0, |mut c, r| async move { c.delete(r).await }).await
    }

    async fn compare_and_swap(&self, req: Request<CasRequest>) -> Result<Response<CasResponse>, Status> {
        let forward = self.forwardable(&req, req.get_ref().header.as_ref());
        let result = self.compare_and_swap_here(req).await;
        self.or_forward("cas", result, forward, true, 0, |mut c, r| async move { c.compare_and_swap(r).await }).await
    }

    async fn scan(&self, req: Request<ScanRequest>) -> Result<Response<ScanResponse>, Status> {
        let forward = self.forwardable(&req, req.get_ref().header.as_ref());
        let limit = match req.get_ref().limit {
            0 => self.limits().default_scan_limit,
            n => n.min(self.limits().max_scan_limit),
        };
        let bytes = self.scan_page_bound(limit as usize);
        let result = self.scan_here(req).await;
        self.or_forward("scan", result, forward, false, bytes, |mut c, r| async move { c.scan(r).await }).await
    }

    async fn batch(&self, req: Request<BatchRequest>) -> Result<Response<BatchResponse>, Status> {
        let forward = self.forwardable(&req, req.get_ref().header.as_ref());
        let result = self.batch_here(req).await;
        self.or_forward("batch", result, forward, true, 0, |mut c, r| async move { c.batch(r).await }).await
    }
}
