//! An in-process mock geokv cluster for the client's and kvctl's tests.
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

pub use std::collections::{BTreeMap, HashMap};
pub use std::net::SocketAddr;
pub use std::sync::{Arc, Mutex};
pub use std::time::Duration;

pub use geokv_client::{Client, ClientConfig, Consistency, CreatedShard, Error, Expect, Served, ShardMode};
pub use geokv_proto::admin::admin_server::{Admin, AdminServer};
pub use geokv_proto::admin::{self as admin_pb, GetShardMapRequest, NodeStatusRequest, NodeStatusResponse};
pub use geokv_proto::kv::kv_server::{Kv, KvServer};
pub use geokv_proto::kv::{self as pb, ErrorDetail, error_detail};
pub use prost::Message;
pub use tokio_stream::wrappers::TcpListenerStream;
pub use tonic::{Code, Request, Response, Status};

/// What to do to a matching request instead of (or besides) serving it.
#[derive(Clone)]
pub enum Action {
    /// Answer with this status and optional detail.
    Fail(Code, &'static str, Option<error_detail::Kind>),
    /// Wait this long first.
    Delay(Duration),
    /// Apply the write, then answer "indeterminate".
    ApplyThenLose,
}

pub struct Fault {
    /// 0 matches every node.
    pub node: u64,
    pub method: &'static str,
    /// How many more requests this fault hits.
    pub times: usize,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub node: u64,
    pub method: &'static str,
    pub shard_id: u64,
    pub sequence: u64,
}

#[derive(Clone)]
pub enum Stored {
    Write(pb::WriteResponse),
    Cas(pb::CasResponse),
}

#[derive(Default)]
pub struct State {
    pub map: admin_pb::ShardMap,
    /// Shard id → leader node id (0 = no leader).
    pub leaders: HashMap<u64, u64>,
    pub data: BTreeMap<Vec<u8>, (Vec<u8>, u64)>,
    pub log_index: u64,
    pub sessions: HashMap<(u64, u64), Stored>,
    pub faults: Vec<Fault>,
    pub calls: Vec<Call>,
    pub page_size: usize,
    /// Eventual shards: key → (HLC, origin) of the write that produced it.
    pub stamps: HashMap<Vec<u8>, (pb::Hlc, u64)>,
    /// Eventual shards: each node's conflict log, newest first.
    pub conflicts: HashMap<u64, Vec<admin_pb::Conflict>>,
}

impl State {
    pub fn shard_for(&self, key: &[u8]) -> Option<pb::ShardInfo> {
        self.map
            .shards
            .iter()
            .find(|s| s.start.as_slice() <= key && (s.end.is_empty() || key < s.end.as_slice()))
            .cloned()
    }

    pub fn is_eventual(shard: &pb::ShardInfo) -> bool {
        shard.mode == pb::ShardMode::Eventual as i32
    }

    pub fn addr_of(&self, node_id: u64) -> String {
        self.map.nodes.iter().find(|n| n.node_id == node_id).map(|n| n.addr.clone()).unwrap_or_default()
    }

    /// `Admin.CreateShard`, as the server does it.
    pub fn create_shard(
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

    pub fn take_fault(&mut self, node: u64, method: &'static str) -> Option<Action> {
        let fault =
            self.faults.iter_mut().find(|f| (f.node == 0 || f.node == node) && f.method == method && f.times > 0)?;
        fault.times -= 1;
        Some(fault.action.clone())
    }
}

pub fn status_with(code: Code, message: &str, kind: error_detail::Kind) -> Status {
    let detail = ErrorDetail { kind: Some(kind) };
    let details = geokv_proto::details::encode(code as i32, message, &detail);
    Status::with_details(code, message, details.into())
}

pub fn indeterminate(shard_id: u64) -> Status {
    status_with(Code::Unknown, "leadership lost", error_detail::Kind::Indeterminate(pb::Indeterminate { shard_id }))
}

#[derive(Clone)]
pub struct Node {
    pub id: u64,
    pub state: Arc<Mutex<State>>,
}

impl Node {
    /// Records the call and applies any fault; `Ok(true)` means "apply, then
    /// lose the answer".
    pub async fn enter(
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
    pub fn check(
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

    pub fn read_info(&self, state: &State, consistency: i32, eventual: bool) -> pb::ReadInfo {
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
    pub fn write_eventual(
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

pub fn refuse_on_eventual(shard: &pb::ShardInfo, what: &str) -> Result<(), Status> {
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
        Ok(Response::new(NodeStatusResponse {
            node,
            ready: true,
            groups,
            uptime_ms: 1234,
            topology_decisions: Vec::new(),
        }))
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

    async fn split_shard(
        &self,
        _request: Request<admin_pb::SplitShardRequest>,
    ) -> Result<Response<admin_pb::SplitShardResponse>, Status> {
        // Splits are tested against real nodes (tests/tests/topology.rs).
        Err(Status::unimplemented("the mock cluster does not split shards"))
    }

    async fn move_replica(
        &self,
        _request: Request<admin_pb::MoveReplicaRequest>,
    ) -> Result<Response<admin_pb::MoveReplicaResponse>, Status> {
        // Moves are tested against real nodes (tests/tests/moves.rs).
        Err(Status::unimplemented("the mock cluster does not move replicas"))
    }

    async fn drain_node(
        &self,
        _request: Request<admin_pb::DrainNodeRequest>,
    ) -> Result<Response<admin_pb::DrainNodeResponse>, Status> {
        // Drains are tested against real nodes (tests/tests/members.rs).
        Err(Status::unimplemented("the mock cluster does not drain nodes"))
    }

    async fn remove_node(
        &self,
        _request: Request<admin_pb::RemoveNodeRequest>,
    ) -> Result<Response<admin_pb::RemoveNodeResponse>, Status> {
        Err(Status::unimplemented("the mock cluster does not remove nodes"))
    }

    async fn split_key(
        &self,
        _request: Request<admin_pb::SplitKeyRequest>,
    ) -> Result<Response<admin_pb::SplitKeyResponse>, Status> {
        Err(Status::unimplemented("the mock cluster finds no split keys"))
    }

    async fn merge_shard(
        &self,
        _request: Request<admin_pb::MergeShardRequest>,
    ) -> Result<Response<admin_pb::MergeShardResponse>, Status> {
        Err(Status::unimplemented("the mock cluster merges no shards"))
    }

    async fn add_user(
        &self,
        _request: Request<admin_pb::AddUserRequest>,
    ) -> Result<Response<admin_pb::AddUserResponse>, Status> {
        Err(Status::unimplemented("the mock cluster has no users"))
    }

    async fn remove_user(
        &self,
        _request: Request<admin_pb::RemoveUserRequest>,
    ) -> Result<Response<admin_pb::RemoveUserResponse>, Status> {
        Err(Status::unimplemented("the mock cluster has no users"))
    }

    async fn grant_user(
        &self,
        _request: Request<admin_pb::GrantUserRequest>,
    ) -> Result<Response<admin_pb::GrantUserResponse>, Status> {
        Err(Status::unimplemented("the mock cluster has no users"))
    }

    async fn list_users(
        &self,
        _request: Request<admin_pb::ListUsersRequest>,
    ) -> Result<Response<admin_pb::ListUsersResponse>, Status> {
        Err(Status::unimplemented("the mock cluster has no users"))
    }

    type ExportShardStream = tokio_stream::wrappers::ReceiverStream<Result<admin_pb::ExportChunk, Status>>;

    async fn export_shard(
        &self,
        _request: Request<admin_pb::ExportShardRequest>,
    ) -> Result<Response<Self::ExportShardStream>, Status> {
        Err(Status::unimplemented("the mock cluster exports nothing"))
    }

    async fn join_cluster(
        &self,
        _request: Request<admin_pb::JoinClusterRequest>,
    ) -> Result<Response<admin_pb::JoinClusterResponse>, Status> {
        Err(Status::unimplemented("the mock cluster admits no nodes"))
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
pub struct MockCluster {
    pub state: Arc<Mutex<State>>,
    pub addrs: Vec<String>,
    pub dead_addr: Option<String>,
}

impl MockCluster {
    pub async fn start(running: u64, with_dead_node: bool) -> MockCluster {
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

    pub fn all_addrs(&self) -> Vec<(u64, String)> {
        let mut all: Vec<(u64, String)> =
            self.addrs.iter().enumerate().map(|(i, a)| (i as u64 + 1, a.clone())).collect();
        if let Some(dead) = &self.dead_addr {
            all.push((all.len() as u64 + 1, dead.clone()));
        }
        all
    }

    /// Replaces the map: shards with these ranges (ids 1, 2, ...), every node
    /// a replica of each, in node order; `leaders[i]` leads shard `i + 1`.
    pub fn set_shards(&self, version: u64, ranges: &[(&str, &str)], leaders: &[u64]) {
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
                    state: admin_pb::NodeState::Up as i32,
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
    pub fn set_eventual(&self, shard_id: u64) {
        let mut state = self.state.lock().unwrap();
        for shard in state.map.shards.iter_mut().filter(|s| s.shard_id == shard_id) {
            shard.mode = pb::ShardMode::Eventual as i32;
        }
        state.leaders.insert(shard_id, 0);
    }

    /// Adds a conflict to `node`'s log (newest first).
    pub fn record_conflict(&self, node: u64, key: &str, loser: (u64, u64), winner: (u64, u64), at: u64) {
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
    pub fn dead_node_first(&self) {
        let mut state = self.state.lock().unwrap();
        for shard in &mut state.map.shards {
            shard.replicas.rotate_right(1);
        }
    }

    pub fn fault(&self, node: u64, method: &'static str, times: usize, action: Action) {
        self.state.lock().unwrap().faults.push(Fault { node, method, times, action });
    }

    pub fn calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.state.lock().unwrap().calls)
    }

    pub fn nodes_called(&self, method: &str) -> Vec<u64> {
        self.calls().into_iter().filter(|c| c.method == method).map(|c| c.node).collect()
    }

    pub fn config(&self) -> ClientConfig {
        ClientConfig::new(self.addrs.clone())
            .backoff(Duration::from_millis(1), Duration::from_millis(5))
            .deadline(Duration::from_secs(5))
            .rpc_timeout(Duration::from_secs(2))
    }

    pub async fn client(&self) -> Client {
        self.config().connect().await.unwrap()
    }
}
