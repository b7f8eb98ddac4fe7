//! The client against an in-process mock cluster.
//!
//! The mock speaks the real wire protocol (tonic servers for `Kv` and
//! `Admin` on loopback ports) but keeps one shared, scripted state: the shard
//! map, who leads each shard, the data, a session table that deduplicates
//! writes, and a queue of faults to inject. Each test sets up a story —
//! "node 2 leads", "the shard split", "the first put is lost after applying"
//! — and checks both what the client returned and which RPCs it sent.
//!
//! Shards can be made eventual ([`MockCluster::set_eventual`]): then every
//! node accepts puts and deletes (stamped with a fake HLC, not deduplicated),
//! reads are served EVENTUAL, compare-and-swap and batches are refused, and
//! each node answers `ListConflicts` from its own scripted log.
//!
//! Any node answers `CreateShard` like a real one: it carves an eventual
//! shard from the start or the end of a Raft shard (which shrinks, at a new
//! epoch), refuses ranges that hold keys or sit elsewhere, and answers a
//! repeat of a completed request with the shard, naming no parent.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use geokv_client::{Client, ClientConfig, Consistency, CreatedShard, Error, Expect, Served, ShardMode};
use geokv_proto::admin::admin_server::{Admin, AdminServer};
use geokv_proto::admin::{self as admin_pb, GetShardMapRequest, NodeStatusRequest, NodeStatusResponse};
use geokv_proto::kv::kv_server::{Kv, KvServer};
use geokv_proto::kv::{self as pb, ErrorDetail, error_detail};
use prost::Message;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request, Response, Status};

/// What to do to a matching request instead of (or besides) serving it.
#[derive(Clone)]
enum Action {
    /// Answer with this status and optional detail.
    Fail(Code, &'static str, Option<error_detail::Kind>),
    /// Wait this long first.
    Delay(Duration),
    /// Apply the write, then answer "indeterminate".
    ApplyThenLose,
}

struct Fault {
    /// 0 matches every node.
    node: u64,
    method: &'static str,
    /// How many more requests this fault hits.
    times: usize,
    action: Action,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Call {
    node: u64,
    method: &'static str,
    shard_id: u64,
    sequence: u64,
}

#[derive(Clone)]
enum Stored {
    Write(pb::WriteResponse),
    Cas(pb::CasResponse),
}

#[derive(Default)]
struct State {
    map: admin_pb::ShardMap,
    /// Shard id → leader node id (0 = no leader).
    leaders: HashMap<u64, u64>,
    data: BTreeMap<Vec<u8>, (Vec<u8>, u64)>,
    log_index: u64,
    sessions: HashMap<(u64, u64), Stored>,
    faults: Vec<Fault>,
    calls: Vec<Call>,
    page_size: usize,
    /// Eventual shards: key → (HLC, origin) of the write that produced it.
    stamps: HashMap<Vec<u8>, (pb::Hlc, u64)>,
    /// Eventual shards: each node's conflict log, newest first.
    conflicts: HashMap<u64, Vec<admin_pb::Conflict>>,
}

impl State {
    fn shard_for(&self, key: &[u8]) -> Option<pb::ShardInfo> {
        self.map
            .shards
            .iter()
            .find(|s| s.start.as_slice() <= key && (s.end.is_empty() || key < s.end.as_slice()))
            .cloned()
    }

    fn is_eventual(shard: &pb::ShardInfo) -> bool {
        shard.mode == pb::ShardMode::Eventual as i32
    }

    fn addr_of(&self, node_id: u64) -> String {
        self.map.nodes.iter().find(|n| n.node_id == node_id).map(|n| n.addr.clone()).unwrap_or_default()
    }

    /// `Admin.CreateShard`, as the server does it.
    fn create_shard(
        &mut self,
        start: Vec<u8>,
        end: Vec<u8>,
        mode: i32,
    ) -> Result<admin_pb::CreateShardResponse, Status> {
        if mode != pb::ShardMode::Eventual as i32 {
            return Err(Status::invalid_argument(
                "only eventual shards can be created: Raft shards come from the split points a cluster starts with",
            ));
        }
        if !end.is_empty() && end <= start {
            return Err(Status::invalid_argument("the range is empty: END must sort after START"));
        }
        if let Some(done) = self.map.shards.iter().find(|s| s.start == start && s.end == end && State::is_eventual(s)) {
            return Ok(admin_pb::CreateShardResponse {
                shard_id: done.shard_id,
                map_version: self.map.version,
                ..Default::default()
            });
        }
        let parent = self.shard_for(&start).expect("the mock's shards cover every key");
        let within = parent.end.is_empty() || (!end.is_empty() && end <= parent.end);
        if State::is_eventual(&parent) || !within {
            return Err(Status::invalid_argument(format!(
                "the range must lie inside one Raft shard; it starts in shard {}",
                parent.shard_id
            )));
        }
        let (parent_start, parent_end) = match (start != parent.start, end != parent.end) {
            (true, false) => (parent.start.clone(), start.clone()),
            (false, true) => (end.clone(), parent.end.clone()),
            _ => {
                return Err(Status::invalid_argument(format!(
                    "the range must begin or end where shard {} does, but not both",
                    parent.shard_id
                )));
            }
        };
        let first_key = self.data.range(start.clone()..).next().map(|(key, _)| key);
        if let Some(key) = first_key.filter(|key| end.is_empty() || key.as_slice() < end.as_slice()) {
            return Err(Status::failed_precondition(format!(
                "shard {} holds keys in the range (e.g. {:?}): only an empty range can become a new shard",
                parent.shard_id,
                String::from_utf8_lossy(key)
            )));
        }
        let shard_id = self.map.shards.iter().map(|s| s.shard_id).max().unwrap_or(0) + 1;
        let parent_epoch = parent.epoch + 1;
        let shrunk = self.map.shards.iter_mut().find(|s| s.shard_id == parent.shard_id).expect("the parent");
        (shrunk.start, shrunk.end, shrunk.epoch) = (parent_start, parent_end, parent_epoch);
        self.map.shards.push(pb::ShardInfo {
            shard_id,
            epoch: 1,
            start,
            end,
            replicas: parent.replicas,
            mode: pb::ShardMode::Eventual as i32,
            ..Default::default()
        });
        self.map.shards.sort_by(|a, b| a.start.cmp(&b.start));
        self.map.version += 1;
        self.leaders.insert(shard_id, 0);
        Ok(admin_pb::CreateShardResponse {
            shard_id,
            map_version: self.map.version,
            parent_shard_id: parent.shard_id,
            parent_epoch,
        })
    }

    fn take_fault(&mut self, node: u64, method: &'static str) -> Option<Action> {
        let fault =
            self.faults.iter_mut().find(|f| (f.node == 0 || f.node == node) && f.method == method && f.times > 0)?;
        fault.times -= 1;
        Some(fault.action.clone())
    }
}

fn status_with(code: Code, message: &str, kind: error_detail::Kind) -> Status {
    let detail = ErrorDetail { kind: Some(kind) };
    Status::with_details(code, message, detail.encode_to_vec().into())
}

fn indeterminate(shard_id: u64) -> Status {
    status_with(Code::Unknown, "leadership lost", error_detail::Kind::Indeterminate(pb::Indeterminate { shard_id }))
}

#[derive(Clone)]
struct Node {
    id: u64,
    state: Arc<Mutex<State>>,
}

impl Node {
    /// Records the call and applies any fault; `Ok(true)` means "apply, then
    /// lose the answer".
    async fn enter(
        &self,
        method: &'static str,
        header: &Option<pb::RequestHeader>,
        session: &Option<pb::WriteSession>,
    ) -> Result<bool, Status> {
        let action = {
            let mut state = self.state.lock().unwrap();
            state.calls.push(Call {
                node: self.id,
                method,
                shard_id: header.as_ref().map_or(0, |h| h.shard_id),
                sequence: session.as_ref().map_or(0, |s| s.sequence),
            });
            state.take_fault(self.id, method)
        };
        match action {
            None => Ok(false),
            Some(Action::Delay(delay)) => {
                tokio::time::sleep(delay).await;
                Ok(false)
            }
            Some(Action::Fail(code, message, None)) => Err(Status::new(code, message)),
            Some(Action::Fail(code, message, Some(kind))) => Err(status_with(code, message, kind)),
            Some(Action::ApplyThenLose) => Ok(true),
        }
    }

    /// Routing checks a real node makes: right shard and epoch, and (when
    /// asked) leadership.
    fn check(
        &self,
        state: &State,
        header: &Option<pb::RequestHeader>,
        key: &[u8],
        needs_leader: bool,
    ) -> Result<pb::ShardInfo, Status> {
        let header = (*header).unwrap_or_default();
        let wrong_shard = |current: Option<pb::ShardInfo>| {
            status_with(
                Code::FailedPrecondition,
                "wrong shard",
                error_detail::Kind::WrongShard(pb::WrongShard { current, map_version: state.map.version }),
            )
        };
        let Some(shard) = state.shard_for(key) else {
            return Err(wrong_shard(None));
        };
        if header.shard_id != shard.shard_id || (header.epoch != 0 && header.epoch != shard.epoch) {
            return Err(wrong_shard(Some(shard)));
        }
        let leader = state.leaders.get(&shard.shard_id).copied().unwrap_or(0);
        if needs_leader && leader != self.id && !State::is_eventual(&shard) {
            return Err(status_with(
                Code::FailedPrecondition,
                "not leader",
                error_detail::Kind::NotLeader(pb::NotLeader {
                    shard_id: shard.shard_id,
                    leader_id: leader,
                    leader_addr: if leader == 0 { String::new() } else { state.addr_of(leader) },
                    term: 3,
                }),
            ));
        }
        Ok(shard)
    }

    fn read_info(&self, state: &State, consistency: i32, eventual: bool) -> pb::ReadInfo {
        let stale = consistency == pb::Consistency::Stale as i32;
        pb::ReadInfo {
            served: if eventual { pb::Consistency::Eventual as i32 } else { consistency },
            node_id: self.id,
            region: format!("region-{}", self.id),
            applied_index: state.log_index,
            staleness_bound_ms: if stale || eventual { u64::MAX } else { 0 },
            fell_back: false,
            weaker_than_requested: eventual && !stale,
        }
    }

    /// Applies a write to an eventual shard here: a new timestamp every time.
    fn write_eventual(
        &self,
        state: &mut State,
        shard: &pb::ShardInfo,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
    ) -> pb::WriteResponse {
        state.log_index += 1;
        let hlc = pb::Hlc { physical_ms: 1_732_245_600_000 + state.log_index, logical: 0, node_id: self.id };
        let existed = match value {
            Some(value) => {
                state.stamps.insert(key.clone(), (hlc, self.id));
                state.data.insert(key, (value, 0)).is_some()
            }
            None => {
                state.stamps.remove(&key);
                state.data.remove(&key).is_some()
            }
        };
        pb::WriteResponse {
            version: 0,
            existed,
            shard_id: shard.shard_id,
            eventual: true,
            hlc: Some(hlc),
            origin: self.id,
        }
    }
}

fn refuse_on_eventual(shard: &pb::ShardInfo, what: &str) -> Result<(), Status> {
    if State::is_eventual(shard) {
        return Err(Status::failed_precondition(format!(
            "{what} is not supported on eventual shard {}: writes there are last-writer-wins",
            shard.shard_id
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl Kv for Node {
    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let request = request.into_inner();
        self.enter("get", &request.header, &None).await?;
        let state = self.state.lock().unwrap();
        let needs_leader = request.consistency != pb::Consistency::Stale as i32;
        let shard = self.check(&state, &request.header, &request.key, needs_leader)?;
        let stamp = state.stamps.get(&request.key).copied();
        let kv = state.data.get(&request.key).map(|(value, version)| pb::KeyValue {
            key: request.key.clone(),
            value: value.clone(),
            version: *version,
            hlc: stamp.map(|(hlc, _)| hlc),
            origin: stamp.map_or(0, |(_, origin)| origin),
        });
        let read = self.read_info(&state, request.consistency, State::is_eventual(&shard));
        Ok(Response::new(pb::GetResponse { kv, read: Some(read) }))
    }

    async fn put(&self, request: Request<pb::PutRequest>) -> Result<Response<pb::WriteResponse>, Status> {
        let request = request.into_inner();
        let lose = self.enter("put", &request.header, &request.session).await?;
        let mut state = self.state.lock().unwrap();
        let shard = self.check(&state, &request.header, &request.key, true)?;
        if State::is_eventual(&shard) {
            let reply = self.write_eventual(&mut state, &shard, request.key, Some(request.value));
            if lose {
                return Err(Status::unknown("connection reset after the write"));
            }
            return Ok(Response::new(reply));
        }
        let session = request.session.expect("writes carry a session");
        let id = (session.client_id, session.sequence);
        let reply = match state.sessions.get(&id) {
            Some(Stored::Write(reply)) => *reply,
            Some(Stored::Cas(_)) => panic!("sequence {id:?} reused for a different write"),
            None => {
                state.log_index += 1;
                let version = state.log_index;
                state.data.insert(request.key, (request.value, version));
                let reply =
                    pb::WriteResponse { version, existed: false, shard_id: shard.shard_id, ..Default::default() };
                state.sessions.insert(id, Stored::Write(reply));
                reply
            }
        };
        if lose {
            return Err(indeterminate(shard.shard_id));
        }
        Ok(Response::new(reply))
    }

    async fn delete(&self, request: Request<pb::DeleteRequest>) -> Result<Response<pb::WriteResponse>, Status> {
        let request = request.into_inner();
        self.enter("delete", &request.header, &request.session).await?;
        let mut state = self.state.lock().unwrap();
        let shard = self.check(&state, &request.header, &request.key, true)?;
        if State::is_eventual(&shard) {
            return Ok(Response::new(self.write_eventual(&mut state, &shard, request.key, None)));
        }
        state.log_index += 1;
        let existed = state.data.remove(&request.key).is_some();
        Ok(Response::new(pb::WriteResponse {
            version: state.log_index,
            existed,
            shard_id: shard.shard_id,
            ..Default::default()
        }))
    }

    async fn compare_and_swap(&self, request: Request<pb::CasRequest>) -> Result<Response<pb::CasResponse>, Status> {
        use pb::expectation::Expect as E;
        let request = request.into_inner();
        self.enter("cas", &request.header, &request.session).await?;
        let mut state = self.state.lock().unwrap();
        let shard = self.check(&state, &request.header, &request.key, true)?;
        refuse_on_eventual(&shard, "compare-and-swap")?;
        let session = request.session.expect("writes carry a session");
        let id = (session.client_id, session.sequence);
        if let Some(Stored::Cas(reply)) = state.sessions.get(&id) {
            return Ok(Response::new(reply.clone()));
        }
        let current = state.data.get(&request.key).cloned();
        let holds = match request.expected.and_then(|e| e.expect) {
            Some(E::Absent(_)) => current.is_none(),
            Some(E::Value(value)) => current.as_ref().is_some_and(|(v, _)| *v == value),
            Some(E::Version(version)) => current.as_ref().is_some_and(|(_, v)| *v == version),
            None => return Err(Status::invalid_argument("missing expectation")),
        };
        let reply = if holds {
            state.log_index += 1;
            let version = state.log_index;
            match request.new_value {
                Some(value) => {
                    state.data.insert(request.key, (value, version));
                    pb::CasResponse { swapped: true, version, current: None, shard_id: shard.shard_id }
                }
                None => {
                    state.data.remove(&request.key);
                    pb::CasResponse { swapped: true, version: 0, current: None, shard_id: shard.shard_id }
                }
            }
        } else {
            pb::CasResponse {
                swapped: false,
                version: current.as_ref().map_or(0, |(_, v)| *v),
                current: current.map(|(value, version)| pb::KeyValue {
                    key: request.key.clone(),
                    value,
                    version,
                    ..Default::default()
                }),
                shard_id: shard.shard_id,
            }
        };
        state.sessions.insert(id, Stored::Cas(reply.clone()));
        Ok(Response::new(reply))
    }

    async fn scan(&self, request: Request<pb::ScanRequest>) -> Result<Response<pb::ScanResponse>, Status> {
        let request = request.into_inner();
        self.enter("scan", &request.header, &None).await?;
        let state = self.state.lock().unwrap();
        let needs_leader = request.consistency != pb::Consistency::Stale as i32;
        let shard = self.check(&state, &request.header, &request.start, needs_leader)?;
        let page = match (request.limit as usize, state.page_size) {
            (0, page) => page,
            (limit, page) => limit.min(page),
        };
        let in_range = |key: &Vec<u8>| {
            (request.end.is_empty() || *key < request.end) && (shard.end.is_empty() || *key < shard.end)
        };
        let mut keys = state.data.range(request.start.clone()..).filter(|(key, _)| in_range(key));
        let kvs: Vec<pb::KeyValue> = keys
            .by_ref()
            .take(page)
            .map(|(key, (value, version))| {
                let stamp = state.stamps.get(key).copied();
                pb::KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                    version: *version,
                    hlc: stamp.map(|(hlc, _)| hlc),
                    origin: stamp.map_or(0, |(_, origin)| origin),
                }
            })
            .collect();
        let (more, resume_key) = if keys.next().is_some() {
            let mut resume = kvs.last().expect("a full page").key.clone();
            resume.push(0);
            (true, resume)
        } else if !shard.end.is_empty() && (request.end.is_empty() || shard.end < request.end) {
            (true, shard.end.clone())
        } else {
            (false, Vec::new())
        };
        Ok(Response::new(pb::ScanResponse {
            kvs,
            resume_key,
            more,
            read: Some(self.read_info(&state, request.consistency, State::is_eventual(&shard))),
        }))
    }

    async fn batch(&self, request: Request<pb::BatchRequest>) -> Result<Response<pb::BatchResponse>, Status> {
        let request = request.into_inner();
        self.enter("batch", &request.header, &request.session).await?;
        let mut state = self.state.lock().unwrap();
        let first_key = match request.ops.first().and_then(|op| op.op.as_ref()) {
            Some(pb::batch_op::Op::Put(put)) => put.key.clone(),
            Some(pb::batch_op::Op::Delete(delete)) => delete.key.clone(),
            None => return Err(Status::invalid_argument("empty batch")),
        };
        let shard = self.check(&state, &request.header, &first_key, true)?;
        refuse_on_eventual(&shard, "batch")?;
        state.log_index += 1;
        let version = state.log_index;
        for op in request.ops {
            match op.op {
                Some(pb::batch_op::Op::Put(put)) => {
                    state.data.insert(put.key, (put.value, version));
                }
                Some(pb::batch_op::Op::Delete(delete)) => {
                    state.data.remove(&delete.key);
                }
                None => {}
            }
        }
        Ok(Response::new(pb::BatchResponse { applied: true, version, current: vec![], shard_id: shard.shard_id }))
    }
}

#[tonic::async_trait]
impl Admin for Node {
    async fn get_shard_map(&self, _: Request<GetShardMapRequest>) -> Result<Response<admin_pb::ShardMap>, Status> {
        Ok(Response::new(self.state.lock().unwrap().map.clone()))
    }

    async fn node_status(&self, _: Request<NodeStatusRequest>) -> Result<Response<NodeStatusResponse>, Status> {
        let state = self.state.lock().unwrap();
        let node = state.map.nodes.iter().find(|n| n.node_id == self.id).cloned();
        let groups = state
            .map
            .shards
            .iter()
            .filter(|shard| shard.replicas.iter().any(|r| r.node_id == self.id))
            .map(|shard| {
                let leader = state.leaders.get(&shard.shard_id).copied().unwrap_or(0);
                if State::is_eventual(shard) {
                    let peers = shard.replicas.iter().filter(|r| r.node_id != self.id);
                    return admin_pb::GroupStatus {
                        shard_id: shard.shard_id,
                        role: "eventual".into(),
                        mode: pb::ShardMode::Eventual as i32,
                        ec_last_seq: 40,
                        ec_outbox_depth: 12,
                        ec_peers: peers
                            .map(|r| admin_pb::EcPeer {
                                node_id: r.node_id,
                                acked_seq: 40 - r.node_id,
                                lag_entries: r.node_id,
                                lag_ms: 100 * r.node_id,
                                resyncing: r.node_id == 3,
                            })
                            .collect(),
                        ec_tombstones: 3,
                        epoch: shard.epoch,
                        start: shard.start.clone(),
                        end: shard.end.clone(),
                        ..Default::default()
                    };
                }
                admin_pb::GroupStatus {
                    shard_id: shard.shard_id,
                    role: if leader == self.id { "leader" } else { "follower" }.into(),
                    leader_id: leader,
                    term: 3,
                    last_log_index: state.log_index,
                    committed_index: state.log_index,
                    applied_index: state.log_index,
                    epoch: shard.epoch,
                    start: shard.start.clone(),
                    end: shard.end.clone(),
                    ..Default::default()
                }
            })
            .collect();
        Ok(Response::new(NodeStatusResponse { node, ready: true, groups, uptime_ms: 1234 }))
    }

    async fn transfer_leader(
        &self,
        req: Request<admin_pb::TransferLeaderRequest>,
    ) -> Result<Response<admin_pb::TransferLeaderResponse>, Status> {
        let req = req.into_inner();
        self.state.lock().unwrap().leaders.insert(req.shard_id, req.to_node);
        Ok(Response::new(admin_pb::TransferLeaderResponse {}))
    }

    async fn set_leader_region(
        &self,
        _: Request<admin_pb::SetLeaderRegionRequest>,
    ) -> Result<Response<admin_pb::SetLeaderRegionResponse>, Status> {
        Err(Status::unimplemented("the mock cluster does no placement"))
    }

    async fn create_shard(
        &self,
        request: Request<admin_pb::CreateShardRequest>,
    ) -> Result<Response<admin_pb::CreateShardResponse>, Status> {
        let admin_pb::CreateShardRequest { start, end, mode } = request.into_inner();
        let lose = self.enter("create_shard", &None, &None).await?;
        let mut state = self.state.lock().unwrap();
        let reply = state.create_shard(start, end, mode)?;
        if lose {
            return Err(Status::unavailable("the meta shard's leader is not reachable; retry"));
        }
        Ok(Response::new(reply))
    }

    async fn list_conflicts(
        &self,
        request: Request<admin_pb::ListConflictsRequest>,
    ) -> Result<Response<admin_pb::ListConflictsResponse>, Status> {
        let request = request.into_inner();
        self.enter("list_conflicts", &None, &None).await?;
        let state = self.state.lock().unwrap();
        let log = state.conflicts.get(&self.id).cloned().unwrap_or_default();
        let total_recorded = log.len() as u64;
        let limit = if request.limit == 0 { 100 } else { request.limit as usize };
        let conflicts =
            log.into_iter().filter(|c| request.shard_id == 0 || c.shard_id == request.shard_id).take(limit).collect();
        Ok(Response::new(admin_pb::ListConflictsResponse { conflicts, total_recorded, capacity: 2 }))
    }
}

/// Nodes 1..=`running` serve; node `running + 1` (if `with_dead_node`) is in
/// the map but nothing listens at its address.
struct MockCluster {
    state: Arc<Mutex<State>>,
    addrs: Vec<String>,
    dead_addr: Option<String>,
}

impl MockCluster {
    async fn start(running: u64, with_dead_node: bool) -> MockCluster {
        let state = Arc::new(Mutex::new(State { page_size: 100, ..Default::default() }));
        let mut addrs = Vec::new();
        for id in 1..=running {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addrs.push(listener.local_addr().unwrap().to_string());
            let node = Node { id, state: state.clone() };
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(KvServer::new(node.clone()))
                    .add_service(AdminServer::new(node))
                    .serve_with_incoming(TcpListenerStream::new(listener)),
            );
        }
        let dead_addr = with_dead_node.then(|| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr: SocketAddr = listener.local_addr().unwrap();
            addr.to_string()
        });
        let cluster = MockCluster { state, addrs, dead_addr };
        cluster.set_shards(1, &[("", "")], &[1]);
        cluster
    }

    fn all_addrs(&self) -> Vec<(u64, String)> {
        let mut all: Vec<(u64, String)> =
            self.addrs.iter().enumerate().map(|(i, a)| (i as u64 + 1, a.clone())).collect();
        if let Some(dead) = &self.dead_addr {
            all.push((all.len() as u64 + 1, dead.clone()));
        }
        all
    }

    /// Replaces the map: shards with these ranges (ids 1, 2, ...), every node
    /// a replica of each, in node order; `leaders[i]` leads shard `i + 1`.
    fn set_shards(&self, version: u64, ranges: &[(&str, &str)], leaders: &[u64]) {
        let nodes = self.all_addrs();
        let mut state = self.state.lock().unwrap();
        state.map = admin_pb::ShardMap {
            version,
            nodes: nodes
                .iter()
                .map(|(id, addr)| admin_pb::NodeInfo {
                    node_id: *id,
                    addr: addr.clone(),
                    region: format!("region-{id}"),
                    zone: "a".into(),
                })
                .collect(),
            shards: ranges
                .iter()
                .enumerate()
                .map(|(index, (start, end))| pb::ShardInfo {
                    shard_id: index as u64 + 1,
                    epoch: version,
                    start: start.as_bytes().to_vec(),
                    end: end.as_bytes().to_vec(),
                    replicas: nodes
                        .iter()
                        .map(|(id, addr)| pb::Replica {
                            node_id: *id,
                            addr: addr.clone(),
                            region: format!("region-{id}"),
                            zone: "a".into(),
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
        };
        state.leaders = leaders.iter().enumerate().map(|(index, leader)| (index as u64 + 1, *leader)).collect();
    }

    /// Makes shard `shard_id` eventual: no leader, every replica writes.
    fn set_eventual(&self, shard_id: u64) {
        let mut state = self.state.lock().unwrap();
        for shard in state.map.shards.iter_mut().filter(|s| s.shard_id == shard_id) {
            shard.mode = pb::ShardMode::Eventual as i32;
        }
        state.leaders.insert(shard_id, 0);
    }

    /// Adds a conflict to `node`'s log (newest first).
    fn record_conflict(&self, node: u64, key: &str, loser: (u64, u64), winner: (u64, u64), at: u64) {
        let hlc = |(physical_ms, node_id): (u64, u64)| Some(pb::Hlc { physical_ms, logical: 0, node_id });
        let conflict = admin_pb::Conflict {
            shard_id: 1,
            key: key.as_bytes().to_vec(),
            winner_hlc: hlc(winner),
            winner_origin: winner.1,
            winner_deleted: false,
            loser_hlc: hlc(loser),
            loser_origin: loser.1,
            loser_deleted: false,
            loser_value: Some(format!("lost-{}", loser.0).into_bytes()),
            recorded_by: node,
            recorded_at_ms: at,
        };
        self.state.lock().unwrap().conflicts.entry(node).or_default().insert(0, conflict);
    }

    /// Puts the dead node first in every shard's replica list.
    fn dead_node_first(&self) {
        let mut state = self.state.lock().unwrap();
        for shard in &mut state.map.shards {
            shard.replicas.rotate_right(1);
        }
    }

    fn fault(&self, node: u64, method: &'static str, times: usize, action: Action) {
        self.state.lock().unwrap().faults.push(Fault { node, method, times, action });
    }

    fn calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.state.lock().unwrap().calls)
    }

    fn nodes_called(&self, method: &str) -> Vec<u64> {
        self.calls().into_iter().filter(|c| c.method == method).map(|c| c.node).collect()
    }

    fn config(&self) -> ClientConfig {
        ClientConfig::new(self.addrs.clone())
            .backoff(Duration::from_millis(1), Duration::from_millis(5))
            .deadline(Duration::from_secs(5))
            .rpc_timeout(Duration::from_secs(2))
    }

    async fn client(&self) -> Client {
        self.config().connect().await.unwrap()
    }
}

#[tokio::test]
async fn not_leader_hint_is_followed_then_cached() {
    let cluster = MockCluster::start(3, false).await;
    cluster.set_shards(1, &[("", "")], &[2]);
    let client = cluster.client().await;

    let written = client.put("k", "v").await.unwrap();
    assert_eq!(cluster.nodes_called("put"), [1, 2], "first replica, then the hinted leader");

    client.put("k", "w").await.unwrap();
    let read = client.get("k").await.unwrap().unwrap();
    assert_eq!(cluster.nodes_called("put"), [2]);
    assert_eq!(read.value, b"w");
    assert!(read.version > written.version);
}

#[tokio::test]
async fn wrong_shard_refreshes_the_map_and_reroutes() {
    let cluster = MockCluster::start(3, false).await;
    let client = cluster.client().await;
    client.put("x", "1").await.unwrap();
    cluster.calls();

    // The shard splits at "m"; node 3 leads the new upper half.
    cluster.set_shards(2, &[("", "m"), ("m", "")], &[1, 3]);
    let written = client.put("x", "2").await.unwrap();
    assert_eq!(written.shard_id, 2);
    let calls = cluster.calls();
    let puts: Vec<(u64, u64)> = calls.iter().filter(|c| c.method == "put").map(|c| (c.node, c.shard_id)).collect();
    assert_eq!(puts.first(), Some(&(1, 1)), "first sent with the stale map");
    assert_eq!(puts.last(), Some(&(3, 2)), "finally at the new shard's leader");
    assert_eq!(client.shard_map().await.unwrap().version, 2);
}

#[tokio::test]
async fn lost_answer_is_retried_with_the_same_sequence_and_applied_once() {
    let cluster = MockCluster::start(3, false).await;
    let client = cluster.client().await;
    cluster.fault(1, "put", 1, Action::ApplyThenLose);

    let written = client.put("k", "v").await.unwrap();
    let puts: Vec<Call> = cluster.calls().into_iter().filter(|c| c.method == "put").collect();
    assert_eq!(puts.len(), 2, "{puts:?}");
    assert_eq!(puts[0].sequence, puts[1].sequence, "a retry reuses the sequence");
    let state = cluster.state.lock().unwrap();
    assert_eq!(state.log_index, 1, "applied exactly once");
    assert_eq!(written.version, 1, "the retry got the first attempt's result");
}

#[tokio::test]
async fn each_logical_write_takes_a_new_sequence() {
    let cluster = MockCluster::start(1, false).await;
    let client = cluster.client().await;
    client.put("a", "1").await.unwrap();
    client.put("b", "2").await.unwrap();
    client.cas("a", Expect::Value(b"1".to_vec()), Some(b"3".to_vec())).await.unwrap();
    let sequences: Vec<u64> = cluster.calls().iter().filter(|c| c.sequence > 0).map(|c| c.sequence).collect();
    assert_eq!(sequences, [1, 2, 3]);
}

#[tokio::test]
async fn write_that_times_out_everywhere_is_indeterminate() {
    let cluster = MockCluster::start(3, false).await;
    let client = cluster.config().rpc_timeout(Duration::from_millis(50)).max_attempts(3).connect().await.unwrap();
    cluster.fault(0, "put", usize::MAX, Action::Delay(Duration::from_millis(300)));

    let err = client.put("k", "v").await.unwrap_err();
    assert!(matches!(err, Error::Indeterminate { shard_id: 1, .. }), "{err}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn write_refused_everywhere_is_unavailable() {
    let cluster = MockCluster::start(3, false).await;
    cluster.set_shards(1, &[("", "")], &[0]);
    let client = cluster.config().max_attempts(4).connect().await.unwrap();

    let err = client.put("k", "v").await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { attempts: 4, .. }), "{err}");
    assert!(err.is_retryable());
    assert_eq!(cluster.nodes_called("put").len(), 4);
}

#[tokio::test]
async fn a_maybe_applied_attempt_keeps_the_write_indeterminate() {
    let cluster = MockCluster::start(3, false).await;
    cluster.set_shards(1, &[("", "")], &[0]);
    let client = cluster.config().max_attempts(3).connect().await.unwrap();
    // The first attempt fails in a way that may have applied it; the rest are
    // definite refusals. The outcome is still unknown.
    cluster.fault(1, "put", 1, Action::Fail(Code::Unknown, "connection reset", None));

    let err = client.put("k", "v").await.unwrap_err();
    assert!(matches!(err, Error::Indeterminate { .. }), "{err}");
}

#[tokio::test]
async fn forgotten_session_is_indeterminate_at_once() {
    let cluster = MockCluster::start(1, false).await;
    let client = cluster.client().await;
    cluster.fault(1, "put", 1, Action::Fail(Code::FailedPrecondition, "session 1 result was discarded", None));

    let err = client.put("k", "v").await.unwrap_err();
    assert!(matches!(err, Error::Indeterminate { .. }), "{err}");
    assert_eq!(cluster.nodes_called("put").len(), 1);
}

#[tokio::test]
async fn invalid_argument_is_final_and_keeps_the_server_message() {
    let cluster = MockCluster::start(1, false).await;
    let client = cluster.client().await;
    cluster.fault(1, "put", 1, Action::Fail(Code::InvalidArgument, "value is 2 MiB, limit is 1 MiB", None));

    let err = client.put("k", "v").await.unwrap_err();
    assert!(matches!(&err, Error::InvalidArgument(message) if message.contains("limit is 1 MiB")), "{err}");
    assert_eq!(cluster.nodes_called("put").len(), 1);
    assert!(matches!(client.get("").await.unwrap_err(), Error::InvalidArgument(_)));
}

#[tokio::test]
async fn dead_replica_is_skipped() {
    let cluster = MockCluster::start(2, true).await;
    cluster.set_shards(1, &[("", "")], &[1]);
    cluster.dead_node_first();
    let client = cluster.client().await;

    client.put("k", "v").await.unwrap();
    assert_eq!(cluster.nodes_called("put"), [1], "the dead node was never reached");
    let stale = client.get_with("k", Consistency::Stale).await.unwrap();
    assert_eq!(stale.kv.unwrap().value, b"v");
    assert_eq!(stale.info.served, Consistency::Stale);
    assert_eq!(stale.info.staleness_bound_ms, None);

    let status = client.cluster_status().await.unwrap();
    assert_eq!(status.unreachable().count(), 1);
    let shards = status.shards();
    assert_eq!(shards[0].leader.as_ref().unwrap().node.node_id, 1);
}

#[tokio::test]
async fn unavailable_node_is_retried_elsewhere() {
    let cluster = MockCluster::start(3, false).await;
    cluster.set_shards(1, &[("", "")], &[2]);
    let client = cluster.client().await;
    cluster.fault(1, "get", 1, Action::Fail(Code::Unavailable, "node is starting", None));

    let read = client.get_with("k", Consistency::Stale).await.unwrap();
    assert_eq!(read.kv, None);
    assert_eq!(read.info.node_id, 2);
}

#[tokio::test]
async fn scan_pages_across_shards_in_key_order() {
    let cluster = MockCluster::start(2, false).await;
    cluster.set_shards(1, &[("", "m"), ("m", "")], &[1, 2]);
    cluster.state.lock().unwrap().page_size = 2;
    let client = cluster.client().await;
    for key in ["a", "b", "c", "n", "o", "p", "q"] {
        client.put(key, key.to_uppercase()).await.unwrap();
    }
    cluster.calls();

    let keys = |kvs: Vec<geokv_client::KeyValue>| -> Vec<String> {
        kvs.into_iter().map(|kv| String::from_utf8(kv.key).unwrap()).collect()
    };
    assert_eq!(keys(client.scan(..).await.unwrap()), ["a", "b", "c", "n", "o", "p", "q"]);
    let scans = cluster.nodes_called("scan");
    assert_eq!(scans, [1, 1, 2, 2], "two pages per shard");

    assert_eq!(keys(client.scan("b".."p").await.unwrap()), ["b", "c", "n", "o"]);
    assert_eq!(keys(client.scan("b"..="p").await.unwrap()), ["b", "c", "n", "o", "p"]);
    assert_eq!(keys(client.scan(..).limit(3).await.unwrap()), ["a", "b", "c"]);
    assert_eq!(keys(client.scan("d"..).consistency(Consistency::Stale).collect().await.unwrap()), ["n", "o", "p", "q"]);
    assert!(client.scan("z".."a").await.is_err());
    assert!(client.scan("c".."c").await.unwrap().is_empty());
}

#[tokio::test]
async fn cas_reports_the_current_value_when_it_does_not_swap() {
    let cluster = MockCluster::start(1, false).await;
    let client = cluster.client().await;
    let first = client.cas("lock", Expect::Absent, Some(b"me".to_vec())).await.unwrap();
    assert!(first.swapped);
    let second = client.cas("lock", Expect::Absent, Some(b"you".to_vec())).await.unwrap();
    assert!(!second.swapped);
    let current = second.current.unwrap();
    assert_eq!((current.value.as_slice(), current.version), (&b"me"[..], first.version));
    let release = client.cas("lock", Expect::Version(first.version), None).await.unwrap();
    assert!(release.swapped);
    assert_eq!(client.get("lock").await.unwrap(), None);
}

#[tokio::test]
async fn batch_applies_and_refuses_keys_of_two_shards() {
    let cluster = MockCluster::start(1, false).await;
    cluster.set_shards(1, &[("", "m"), ("m", "")], &[1, 1]);
    let client = cluster.client().await;
    let applied = client.batch().put("a", "1").put("b", "2").delete("c").send().await.unwrap();
    assert!(applied.applied);
    assert_eq!(client.get("b").await.unwrap().unwrap().version, applied.version);

    let err = client.batch().put("a", "1").put("z", "2").await.unwrap_err();
    assert!(matches!(&err, Error::InvalidArgument(message) if message.contains("different shards")), "{err}");
    assert!(matches!(client.batch().condition("a", Expect::Absent).send().await, Err(Error::InvalidArgument(_))));
}

#[tokio::test]
async fn busy_leader_named_by_a_follower_is_retried_after_a_pause() {
    let cluster = MockCluster::start(3, false).await;
    cluster.set_shards(1, &[("", "")], &[2]);
    let client = cluster.client().await;
    cluster.fault(2, "put", 1, Action::Fail(Code::Unavailable, "shutting down", None));

    client.put("k", "v").await.unwrap();
    assert_eq!(cluster.nodes_called("put"), [1, 2, 3, 2]);
}

/// Runs the real `kvctl` binary against the mock cluster.
async fn kvctl(cluster: &MockCluster, args: &[&str]) -> (i32, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .arg("--endpoints")
        .arg(cluster.addrs.join(","))
        .args(args)
        .env_remove("GEOKV_ENDPOINTS")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    (output.status.code().unwrap(), stdout, stderr)
}

#[tokio::test]
async fn kvctl_speaks_to_humans_and_scripts() {
    let cluster = MockCluster::start(2, false).await;
    cluster.set_shards(1, &[("", "m"), ("m", "")], &[1, 2]);

    assert_eq!(kvctl(&cluster, &["put", "greeting", "hello"]).await, (0, "OK version=1\n".into(), String::new()));
    assert_eq!(kvctl(&cluster, &["get", "greeting"]).await.1, "hello\n");
    let (code, verbose, _) = kvctl(&cluster, &["get", "greeting", "-v"]).await;
    assert_eq!(code, 0);
    assert!(verbose.starts_with("hello\nversion=1 served=linearizable node=1 region=region-1"), "{verbose}");
    assert_eq!(kvctl(&cluster, &["get", "nothing"]).await, (0, "(not found)\n".into(), String::new()));

    let (_, json, _) = kvctl(&cluster, &["--json", "get", "greeting", "--consistency", "stale"]).await;
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["found"], true);
    assert_eq!(json["value"], "hello");
    assert_eq!(json["served"], "stale");
    assert_eq!(json["staleness_bound_ms"], serde_json::Value::Null);
    let (_, json, _) = kvctl(&cluster, &["--json", "get", "nothing"]).await;
    assert_eq!(serde_json::from_str::<serde_json::Value>(&json).unwrap()["found"], false);

    let (code, out, _) = kvctl(&cluster, &["cas", "greeting", "--expect-value", "bye", "hi"]).await;
    assert_eq!((code, out.as_str()), (2, "not swapped: current=hello version=1\n"));
    let (code, out, _) = kvctl(&cluster, &["cas", "greeting", "--expect-version", "1", "hi"]).await;
    assert_eq!((code, out.as_str()), (0, "swapped version=2\n"));

    kvctl(&cluster, &["--hex", "put", "0x7a", "0x00ff"]).await;
    let (_, table, _) = kvctl(&cluster, &["scan"]).await;
    assert_eq!(table, "KEY       VALUE   VERSION\ngreeting  hi      2\nz         0x00ff  3\n");
    assert_eq!(kvctl(&cluster, &["scan", "a", "b"]).await.1, "(no keys)\n");
    assert_eq!(kvctl(&cluster, &["del", "z"]).await.1, "OK version=4 existed=true\n");

    let (code, shards, _) = kvctl(&cluster, &["shards"]).await;
    assert_eq!(code, 0);
    assert!(shards.contains("1      -inf..m  1      raft  1@region-1,2@region-2"), "{shards}");
    let (code, status, _) = kvctl(&cluster, &["status"]).await;
    assert_eq!(code, 0, "{status}");
    assert!(status.contains("2      m..+inf  1      raft  2@region-2"), "{status}");

    cluster.set_shards(1, &[("", "m"), ("m", "")], &[1, 0]);
    let (code, status, warning) = kvctl(&cluster, &["--json", "status"]).await;
    assert_eq!(code, 3, "a leaderless shard is flagged");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["shards"][1]["leader"], serde_json::Value::Null);
    assert_eq!(warning, "");

    let (code, _, error) = kvctl(&cluster, &["--timeout-ms", "300", "put", "zz", "v"]).await;
    assert_eq!(code, 1);
    assert!(error.starts_with("error: unavailable after"), "{error}");
    assert_eq!(error.lines().count(), 1, "{error}");
}

#[tokio::test]
async fn eventual_requests_go_to_the_own_region_replica_whatever_the_level() {
    let cluster = MockCluster::start(3, false).await;
    cluster.set_shards(1, &[("", "m"), ("m", "")], &[1, 1]);
    cluster.set_eventual(2);
    let client = cluster.config().region(Some("region-2".into())).connect().await.unwrap();

    let written = client.put("p", "v").await.unwrap();
    assert!(written.eventual);
    assert_eq!((written.version, written.origin), (0, Some(2)));
    assert_eq!(written.hlc.unwrap().node_id, 2);
    let read = client.get_with("p", Consistency::Linearizable).await.unwrap();
    assert_eq!(read.info.served, Served::Eventual);
    assert!(read.info.weaker_than_requested);
    assert_eq!(read.info.node_id, 2, "read in the client's region");
    let value = read.kv.unwrap();
    assert_eq!((value.value.as_slice(), value.hlc, value.origin), (&b"v"[..], written.hlc, Some(2)));
    let deleted = client.delete("p").await.unwrap();
    assert!(deleted.eventual && deleted.existed);
    assert!(deleted.hlc > written.hlc);
    // The Raft shard next door still goes to its leader for writes.
    client.put("a", "v").await.unwrap();
    let stale = client.get_with("p", Consistency::Stale).await.unwrap();
    assert!(!stale.info.weaker_than_requested);
    assert_eq!(cluster.nodes_called("put"), [2, 1]);

    // No replica in the client's region: the first replica.
    let elsewhere = cluster.config().region(Some("mars".into())).connect().await.unwrap();
    elsewhere.put("q", "v").await.unwrap();
    elsewhere.get("q").await.unwrap();
    let calls: Vec<(&str, u64)> = cluster.calls().iter().map(|c| (c.method, c.node)).collect();
    assert_eq!(calls, [("put", 1), ("get", 1)]);
}

#[tokio::test]
async fn eventual_writes_are_retried_only_when_surely_not_applied() {
    let cluster = MockCluster::start(2, true).await;
    cluster.set_eventual(1);
    cluster.dead_node_first();
    let client = cluster.config().max_attempts(4).connect().await.unwrap();

    // The dead node refuses the connection: nothing was sent, try the next.
    let written = client.put("k", "v").await.unwrap();
    assert_eq!(written.origin, Some(1));
    // A node declining (Unavailable from the server itself): next replica.
    cluster.fault(1, "put", 1, Action::Fail(Code::Unavailable, "node is starting", None));
    assert_eq!(client.put("k", "w").await.unwrap().origin, Some(2));
    cluster.calls();

    // An attempt that may have arrived is never resent: the outcome is unknown.
    cluster.fault(1, "put", 1, Action::ApplyThenLose);
    let err = client.put("k", "x").await.unwrap_err();
    assert!(matches!(err, Error::Indeterminate { shard_id: 1, .. }), "{err}");
    assert!(err.to_string().contains("not retried"), "{err}");
    assert_eq!(cluster.nodes_called("put"), [1], "one attempt only");
    let timeout = cluster.config().rpc_timeout(Duration::from_millis(50)).connect().await.unwrap();
    cluster.fault(1, "put", 1, Action::Delay(Duration::from_millis(300)));
    assert!(timeout.put("k", "y").await.unwrap_err().is_indeterminate());
    assert_eq!(cluster.nodes_called("put"), [1]);
}

#[tokio::test]
async fn cas_and_batch_on_an_eventual_shard_are_refused_clearly() {
    let cluster = MockCluster::start(2, false).await;
    cluster.set_eventual(1);
    let client = cluster.client().await;

    let err = client.cas("k", Expect::Absent, Some(b"v".to_vec())).await.unwrap_err();
    assert!(
        matches!(&err, Error::EventualShard { shard_id: 1, operation: "compare-and-swap", message } if message.contains("last-writer-wins")),
        "{err}"
    );
    assert!(!err.is_retryable() && !err.is_indeterminate());
    let err = client.batch().put("a", "1").put("b", "2").send().await.unwrap_err();
    assert!(matches!(&err, Error::EventualShard { operation: "batch", .. }), "{err}");
    assert_eq!(cluster.calls().iter().filter(|c| c.method == "cas" || c.method == "batch").count(), 2);
}

#[tokio::test]
async fn conflicts_are_gathered_from_every_node_and_merged() {
    let cluster = MockCluster::start(2, true).await;
    cluster.set_eventual(1);
    let client = cluster.client().await;
    // Node 1 and 2 both discarded write 100@1 for 101@2; node 2 also 200@2.
    cluster.record_conflict(1, "k", (100, 1), (101, 2), 5_000);
    cluster.record_conflict(2, "k", (100, 1), (101, 2), 5_002);
    cluster.record_conflict(2, "j", (200, 2), (201, 1), 6_000);

    let report = client.conflicts(None, 0).await.unwrap();
    let summary: Vec<(&[u8], Vec<u64>, u64)> =
        report.conflicts.iter().map(|c| (c.key.as_slice(), c.recorded_by.clone(), c.recorded_at_ms)).collect();
    assert_eq!(summary, [(&b"j"[..], vec![2], 6_000), (&b"k"[..], vec![1, 2], 5_000)]);
    assert_eq!(report.conflicts[1].loser_value.as_deref(), Some(&b"lost-100"[..]));
    assert!(!report.truncated);
    assert_eq!(report.nodes.len(), 3);
    assert_eq!(report.unreachable().map(|n| n.node.node_id).collect::<Vec<_>>(), [3]);
    let two = report.nodes[1].log.as_ref().unwrap();
    assert_eq!((two.returned, two.total_recorded, two.capacity), (2, 2, 2));

    let cut = client.conflicts(Some(1), 1).await.unwrap();
    assert_eq!(cut.conflicts.len(), 1);
    assert!(cut.truncated);
}

#[tokio::test]
async fn kvctl_on_eventual_shards() {
    let cluster = MockCluster::start(2, false).await;
    cluster.set_shards(1, &[("", "m"), ("m", "")], &[1, 1]);
    cluster.set_eventual(2);

    let (code, out, _) = kvctl(&cluster, &["put", "p", "hello"]).await;
    assert_eq!((code, out.as_str()), (0, "OK eventual (acked by node 1 at HLC 1732245600001.0@1)\n"));
    let (code, out, note) = kvctl(&cluster, &["get", "p"]).await;
    assert_eq!((code, out.as_str()), (0, "hello\n"), "stdout stays the bare value");
    assert_eq!(note, "served: eventual hlc=1732245600001.0@1 origin=1 node=1 region=region-1\n");
    let (_, verbose, _) = kvctl(&cluster, &["get", "p", "-v"]).await;
    assert!(
        verbose.starts_with("hello\nhlc=1732245600001.0@1 origin=1 served=eventual (weaker than requested) node=1"),
        "{verbose}"
    );
    let (_, json, _) = kvctl(&cluster, &["--json", "get", "p"]).await;
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        (&json["served"], &json["hlc"], &json["origin"]),
        (&"eventual".into(), &"1732245600001.0@1".into(), &1.into())
    );
    assert_eq!(json["weaker_than_requested"], true);
    let (_, out, _) = kvctl(&cluster, &["--region", "region-2", "del", "p"]).await;
    assert_eq!(out, "OK eventual (acked by node 2 at HLC 1732245600002.0@2) existed=true\n");

    let (code, _, error) = kvctl(&cluster, &["cas", "p", "--expect-absent", "v"]).await;
    assert_eq!(code, 1);
    assert!(error.contains("compare-and-swap is not available on shard 2, an eventual"), "{error}");

    let (_, shards, _) = kvctl(&cluster, &["shards"]).await;
    assert!(shards.contains("2      m..+inf  1      eventual  1@region-1,2@region-2"), "{shards}");
    let (code, status, warning) = kvctl(&cluster, &["status"]).await;
    assert_eq!((code, warning.as_str()), (0, ""), "an eventual shard needs no leader: {status}");
    assert!(status.contains("2      m..+inf  1      eventual  - (2/2 replicas answer)  -"), "{status}");
    assert!(status.contains("2      1@region-1  eventual  40        12      3           2:2/200ms"), "{status}");
    let (_, json, _) = kvctl(&cluster, &["--json", "status"]).await;
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["shards"][1]["mode"], "eventual");
    assert_eq!(json["shards"][1]["degraded"], false);
    assert_eq!(json["shards"][1]["eventual"][1]["peers"][0]["lag_entries"], 1);

    cluster.record_conflict(2, "r", (80, 2), (85, 1), 1_732_245_599_000);
    cluster.record_conflict(2, "q", (90, 2), (95, 1), 1_732_245_600_000);
    cluster.record_conflict(1, "p", (100, 1), (101, 2), 1_732_245_601_000);
    cluster.record_conflict(2, "p", (100, 1), (101, 2), 1_732_245_601_005);
    let (code, table, notes) = kvctl(&cluster, &["conflicts"]).await;
    assert_eq!(code, 0);
    assert_eq!(
        table,
        "SHARD  KEY  LOSER             WINNER   RECORDED-BY  AT\n\
         1      p    100.0@1 lost-100  101.0@2  1,2          2024-11-22T03:20:01.000Z\n\
         1      q    90.0@2 lost-90    95.0@1   2            2024-11-22T03:20:00.000Z\n\
         1      r    80.0@2 lost-80    85.0@1   2            2024-11-22T03:19:59.000Z\n"
    );
    assert!(notes.contains("node 2 recorded 3 conflicts but keeps the newest 2"), "{notes}");
    let (_, json, _) = kvctl(&cluster, &["--json", "conflicts", "--limit", "1"]).await;
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["conflicts"][0]["recorded_by"], serde_json::json!([1, 2]));
    assert_eq!(json["conflicts"][0]["loser"]["hlc"], "100.0@1");
    assert_eq!(json["truncated"], true);
}

#[tokio::test]
async fn create_shard_carves_an_eventual_shard_and_routes_there_at_once() {
    let cluster = MockCluster::start(3, false).await;
    cluster.set_shards(1, &[("", "m"), ("m", "")], &[1, 2]);
    let client = cluster.config().region(Some("region-3".into())).connect().await.unwrap();
    client.put("a", "1").await.unwrap();
    client.put("n", "1").await.unwrap();
    cluster.calls();

    let created = client.create_shard("session/".., ShardMode::Eventual).await.unwrap();
    assert_eq!(created, CreatedShard { shard_id: 3, map_version: 2, parent_shard_id: Some(2), parent_epoch: Some(2) });
    assert!(!created.already_existed());
    let map = client.shard_map().await.unwrap();
    assert_eq!(map.version, 2, "the cache holds the new shard");
    let shard = map.shard_for_key(b"session/1").unwrap();
    assert_eq!((shard.shard_id, shard.mode, shard.replicas.len()), (3, ShardMode::Eventual, 3));
    assert_eq!((map.shard(2).unwrap().end.as_slice(), map.shard(2).unwrap().epoch), (&b"session/"[..], 2));

    // Straight to the new shard's local replica, and to the parent's leader
    // at its new epoch: no stale-map round trips.
    let written = client.put("session/1", "v").await.unwrap();
    assert!(written.eventual);
    assert_eq!((written.shard_id, written.origin), (3, Some(3)));
    client.put("n", "2").await.unwrap();
    let calls: Vec<(&str, u64, u64)> = cluster.calls().iter().map(|c| (c.method, c.node, c.shard_id)).collect();
    assert_eq!(calls, [("create_shard", 1, 0), ("put", 3, 3), ("put", 2, 2)]);

    // The same request again: the shard, once.
    let again = client.create_shard("session/".., ShardMode::Eventual).await.unwrap();
    assert!(again.already_existed());
    assert_eq!((again.shard_id, again.map_version), (3, 2));

    let refused = |err: &Error, needle: &str| match err {
        Error::InvalidArgument(message) | Error::FailedPrecondition(message) => message.contains(needle),
        _ => false,
    };
    let err = client.create_shard("c".."d", ShardMode::Eventual).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)) && refused(&err, "begin or end where shard 1"), "{err}");
    let err = client.create_shard("k".."p", ShardMode::Eventual).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)) && refused(&err, "inside one Raft shard"), "{err}");
    let err = client.create_shard(.."b", ShardMode::Eventual).await.unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(_)) && refused(&err, "holds keys"), "{err}");
    assert!(err.to_string().starts_with("refused: shard 1 holds keys"), "{err}");
    assert!(!err.is_retryable());
    let err = client.create_shard("m".."n", ShardMode::Raft).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)) && refused(&err, "only eventual"), "{err}");
    assert_eq!(cluster.nodes_called("create_shard"), [1, 1, 1, 1, 1], "final answers are not retried");

    let err = client.create_shard("b".."a", ShardMode::Eventual).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)) && refused(&err, "is empty"), "{err}");
    assert!(cluster.calls().is_empty(), "an empty range is refused before sending");
}

#[tokio::test]
async fn create_shard_is_retried_as_it_is_idempotent() {
    let cluster = MockCluster::start(2, false).await;
    cluster.set_shards(1, &[("", "m"), ("m", "")], &[1, 2]);
    let client = cluster.config().max_attempts(3).connect().await.unwrap();

    cluster.fault(1, "create_shard", 1, Action::Fail(Code::Unavailable, "leaders not reachable", None));
    let created = client.create_shard("x".., ShardMode::Eventual).await.unwrap();
    assert_eq!(created.parent_shard_id, Some(2));
    assert_eq!(cluster.nodes_called("create_shard"), [1, 2], "the next node, after a backoff");

    // Made, then the answer lost: asking again reports it.
    cluster.fault(0, "create_shard", 1, Action::ApplyThenLose);
    let created = client.create_shard(.."c", ShardMode::Eventual).await.unwrap();
    assert!(created.already_existed(), "{created:?}");
    assert_eq!(created.shard_id, 4);
    assert_eq!(cluster.nodes_called("create_shard"), [1, 2]);
    assert_eq!(client.shard_map().await.unwrap().shard_for_key(b"b").unwrap().shard_id, 4);

    cluster.fault(0, "create_shard", 10, Action::Fail(Code::Unavailable, "leaders not reachable", None));
    let err = client.create_shard("c".."d", ShardMode::Eventual).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { attempts: 3, .. }), "{err}");
    assert!(err.is_retryable());
    assert!(err.to_string().contains("repeating the same request is safe"), "{err}");
}

#[tokio::test]
async fn kvctl_shard_create() {
    let cluster = MockCluster::start(2, false).await;
    cluster.set_shards(1, &[("", "session/"), ("session/", "")], &[1, 2]);

    let (code, out, err) = kvctl(&cluster, &["shard", "create", "--mode", "eventual", "session/..session0"]).await;
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (
            0,
            "created eventual shard 3 for [session/, session0) (carved from shard 2, now at epoch 2); map version 2\n",
            ""
        )
    );
    let (code, out, _) =
        kvctl(&cluster, &["--json", "shard", "create", "--mode", "eventual", "session/..session0"]).await;
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        serde_json::json!({"created": false, "shard_id": 3, "mode": "eventual", "start": "session/",
                           "end": "session0", "parent_shard_id": null, "parent_epoch": null, "map_version": 2})
    );
    let (code, out, _) = kvctl(&cluster, &["put", "session/1", "v"]).await;
    assert!(code == 0 && out.starts_with("OK eventual (acked by node 1"), "{out}");
    let (_, shards, _) = kvctl(&cluster, &["shards"]).await;
    assert!(shards.contains("3      session/..session0  1      eventual  1@region-1,2@region-2"), "{shards}");
    assert!(shards.contains("2      session0..+inf      2      raft"), "{shards}");

    let (code, out, _) = kvctl(&cluster, &["--json", "shard", "create", "--mode", "eventual", "tmp/.."]).await;
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((code, &json["end"], &json["parent_shard_id"]), (0, &serde_json::Value::Null, &2.into()));
    cluster.calls();

    let (code, _, err) = kvctl(&cluster, &["shard", "create", "--mode", "eventual", "session"]).await;
    assert_eq!(code, 1);
    assert!(err.starts_with("error: \"session\" is not a range: give RANGE as START..END"), "{err}");
    assert!(cluster.calls().is_empty(), "parse errors come before the network");

    kvctl(&cluster, &["put", "a", "1"]).await;
    let (code, _, err) = kvctl(&cluster, &["shard", "create", "--mode", "eventual", "..b"]).await;
    assert_eq!(code, 1);
    assert!(err.starts_with("error: refused: shard 1 holds keys in the range"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let (code, _, err) = kvctl(&cluster, &["shard", "create", "--mode", "raft", "..b"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("invalid argument: only eventual shards can be created"), "{err}");
}
