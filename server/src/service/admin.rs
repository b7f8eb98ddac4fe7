//! The `Admin` service: the shard map and this node's view of its groups.

use std::sync::Arc;
use std::time::{Duration, Instant};

use geokv_proto::admin::admin_server::Admin;
use geokv_proto::admin::{
    AddUserRequest, AddUserResponse, Conflict as PbConflict, CreateShardRequest, CreateShardResponse, DrainNodeRequest,
    DrainNodeResponse, EcPeer, GetShardMapRequest, GrantUserRequest, GrantUserResponse, GroupStatus,
    JoinClusterRequest, JoinClusterResponse, ListConflictsRequest, ListConflictsResponse, ListUsersRequest,
    ListUsersResponse, MergeShardRequest, MergeShardResponse, MoveReplicaRequest, MoveReplicaResponse, NodeInfo,
    NodeState as ProtoNodeState, NodeStatusRequest, NodeStatusResponse, RemoveNodeRequest, RemoveNodeResponse,
    RemoveUserRequest, RemoveUserResponse, SetLeaderRegionRequest, SetLeaderRegionResponse, ShardMap as PbShardMap,
    SplitKeyRequest, SplitKeyResponse, SplitShardRequest, SplitShardResponse, TransferLeaderRequest,
    TransferLeaderResponse, UserGrant, UserInfo,
};
use geokv_proto::kv::ShardMode;
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use tonic::{Request, Response, Status};

use super::kv::shard_info;
use crate::auth::{Grant, Role};
use crate::node::Node;
use crate::placement;
use crate::raft::command::{Command, CommandResult, MetaCommand, Rejection, ShrinkCommand, SplitCommand};
use crate::shards::{META_SHARD_ID, NodeState, ReplicaChange, ShardDesc, ShardMap, describe};
use openraft::error::{ClientWriteError, RaftError};

/// Conflicts listed when the request asks for no limit.
const DEFAULT_CONFLICT_LIMIT: usize = 100;

pub struct AdminService {
    node: Arc<Node>,
}

/// Metadata marking a member's copy of a move's cancellation
/// ([`AdminService::cancel_move`]): `record`, or `forget` once it ended.
const CANCEL_HERE: &str = "geokv-cancel-here";
const CANCEL_RECORD: &str = "record";
const CANCEL_FORGET: &str = "forget";

impl AdminService {
    /// Cancels a recorded move (see `MoveReplicaRequest.cancel`). The
    /// request reaches every member (`local`: this is that copy, which only
    /// records it and says whether its map has the move under way), so that
    /// whichever node carries the move out (the shard's leader; the meta
    /// leader for an eventual shard), now or after a leader change, gives it
    /// up if it still can. Then waits, up to the request timeout, for this
    /// node's map to say how it ended (caught up at least with the newest
    /// map a member answered with: this node's may lag).
    async fn cancel_move(
        &self,
        shard_id: u64,
        change: ReplicaChange,
        local: bool,
    ) -> Result<Response<MoveReplicaResponse>, Status> {
        let map = self.bootstrapped_map()?;
        find_shard(&map, shard_id)?;
        for id in change.remove.iter().chain(change.add.iter()) {
            find_node(&map, *id)?;
        }
        let under_way = |map: &ShardMap| map.shard(shard_id).is_some_and(|d| d.change == Some(change));
        if under_way(&map) {
            self.node.request_cancel(shard_id, change);
        }
        if local {
            return Ok(Response::new(MoveReplicaResponse { map_version: map.version, created: under_way(&map) }));
        }
        let (mut newest, mut was_under_way) = (map.version, under_way(&map));
        for reply in self.tell_members(&map, shard_id, change, CANCEL_RECORD).await {
            newest = newest.max(reply.map_version);
            was_under_way |= reply.created;
        }
        let result = self.await_cancel(shard_id, change, newest, was_under_way).await;
        // Ended (cancelled, or found done): no member should act on it again.
        self.node.forget_cancel(shard_id);
        self.tell_members(&map, shard_id, change, CANCEL_FORGET).await;
        result
    }

    /// Sends every other member its copy of a cancellation (`what`: record
    /// or forget it), all at once, each within 1 s; the answers that came.
    async fn tell_members(
        &self,
        map: &ShardMap,
        shard_id: u64,
        change: ReplicaChange,
        what: &'static str,
    ) -> Vec<MoveReplicaResponse> {
        let (from, to) = (change.remove.unwrap_or(0), change.add.unwrap_or(0));
        let me = self.node.config.node_id;
        let sends = map.nodes.iter().filter(|n| n.id != me && n.state != NodeState::Removed).map(|n| {
            let mut admin = geokv_proto::admin::admin_client::AdminClient::new(self.node.peers.channel(&n.addr));
            let mut request = Request::new(MoveReplicaRequest { shard_id, from_node: from, to_node: to, cancel: true });
            request.metadata_mut().insert(CANCEL_HERE, what.parse().expect("valid metadata"));
            request.set_timeout(Duration::from_secs(1));
            let id = n.id;
            async move {
                match tokio::time::timeout(Duration::from_secs(1), admin.move_replica(request)).await {
                    Ok(Ok(reply)) => Some(reply.into_inner()),
                    Ok(Err(status)) => {
                        tracing::debug!(node = id, cause = %status.message(), what, "cancel not delivered");
                        None
                    }
                    Err(_) => {
                        tracing::debug!(node = id, what, "cancel not delivered in time");
                        None
                    }
                }
            }
        });
        futures::future::join_all(sends).await.into_iter().flatten().collect()
    }

    /// Waits until this node's map, at version `newest` or later, says how
    /// the cancelled move ended (see [`AdminService::cancel_move`]).
    async fn await_cancel(
        &self,
        shard_id: u64,
        change: ReplicaChange,
        newest: u64,
        was_under_way: bool,
    ) -> Result<Response<MoveReplicaResponse>, Status> {
        let (from, to) = (change.remove.unwrap_or(0), change.add.unwrap_or(0));
        let deadline = Instant::now() + self.node.request_timeout();
        loop {
            let now = self.node.shard_map();
            if now.version >= newest {
                let desc = find_shard(&now, shard_id)?;
                let done = desc.replicas.contains(&to) && !desc.replicas.contains(&from);
                match desc.change {
                    Some(c) if c == change => {}
                    Some(other) if !was_under_way => {
                        return Err(Status::failed_precondition(format!(
                            "shard {shard_id} records another change ({}), not a move from node {from} to node {to}",
                            describe(&other)
                        )));
                    }
                    _ if done => {
                        return Err(Status::failed_precondition(format!(
                            "the move of shard {shard_id} from node {from} to node {to} is done: nothing to cancel \
                             (kvctl shard move {shard_id} --from {to} --to {from} moves it back)"
                        )));
                    }
                    _ => {
                        if was_under_way {
                            tracing::info!(shard = shard_id, from, to, "replica move cancelled by an operator");
                        }
                        let (map_version, created) = (now.version, was_under_way);
                        return Ok(Response::new(MoveReplicaResponse { map_version, created }));
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(Status::unavailable(format!(
                    "the move of shard {shard_id} from node {from} to node {to} was not cancelled within {:?}: its \
                     new replica may vote already (then the move completes), or the shard has no leader now; \
                     repeat to try again",
                    self.node.request_timeout()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    fn bootstrapped_map(&self) -> Result<Arc<ShardMap>, Status> {
        let map = self.node.shard_map();
        if map.version == 0 {
            return Err(Status::unavailable("the shard map is not bootstrapped yet; retry shortly"));
        }
        Ok(map)
    }

    /// Proposes a user command to the meta shard: the map version and
    /// whether it changed anything.
    async fn change_users(&self, cmd: MetaCommand) -> Result<(u64, bool), Status> {
        self.bootstrapped_map()?;
        let record = Command::Meta(cmd);
        match self.node.propose_internal(META_SHARD_ID, &record).await.map_err(Status::unavailable)? {
            CommandResult::Meta { map_version, changed } => Ok((map_version, changed)),
            CommandResult::Rejected(Rejection::WrongKind { reason, .. })
                if reason.starts_with("user ") && reason.ends_with(crate::shards::USER_EXISTS) =>
            {
                Err(Status::already_exists(reason))
            }
            CommandResult::Rejected(Rejection::WrongKind { reason, .. })
                if reason.starts_with(crate::shards::NO_USER) =>
            {
                Err(Status::not_found(reason))
            }
            CommandResult::Rejected(Rejection::WrongKind { reason, .. }) => Err(Status::invalid_argument(reason)),
            CommandResult::Rejected(r) => Err(Status::failed_precondition(format!("the shard map refused it: {r}"))),
            other => Err(Status::internal(format!("unexpected answer from the meta shard: {other:?}"))),
        }
    }

    /// Records `node`'s new state through the meta shard; the map version
    /// that holds it, and whether this call changed it (not a repeat).
    async fn set_node_state(&self, node: u64, state: NodeState) -> Result<(u64, bool), Status> {
        let record = Command::Meta(MetaCommand::SetNodeState { node, state });
        match self.node.propose_internal(META_SHARD_ID, &record).await.map_err(Status::unavailable)? {
            CommandResult::Meta { map_version, changed } => Ok((map_version, changed)),
            CommandResult::Rejected(r) => Err(Status::failed_precondition(format!("the shard map refused it: {r}"))),
            other => Err(Status::internal(format!("unexpected answer from the meta shard: {other:?}"))),
        }
    }
}

fn grant_from_pb(g: Option<UserGrant>) -> Result<Grant, Status> {
    let g = g.ok_or_else(|| Status::invalid_argument("no grant given"))?;
    let role = Role::parse(&g.role).map_err(Status::invalid_argument)?;
    let grant = Grant { role, prefix: g.prefix };
    crate::auth::check_grant(&grant, crate::auth::MAX_GRANT_PREFIX_BYTES).map_err(Status::invalid_argument)?;
    Ok(grant)
}

fn grant_to_pb(g: &Grant) -> UserGrant {
    UserGrant { role: g.role.as_str().into(), prefix: g.prefix.clone() }
}

fn role(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn add_user(&self, req: Request<AddUserRequest>) -> Result<Response<AddUserResponse>, Status> {
        let AddUserRequest { name, grants, certificate_only, token } = req.into_inner();
        crate::auth::check_user_name(&name).map_err(Status::invalid_argument)?;
        let grants = grants.into_iter().map(|g| grant_from_pb(Some(g))).collect::<Result<Vec<_>, _>>()?;
        if !token.is_empty() && (token.len() < 32 || token.len() > 256 || !token.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(Status::invalid_argument("a token has 32 to 256 printable ASCII characters"));
        }
        let token = match (certificate_only, token.is_empty()) {
            (true, true) => None,
            (true, false) => return Err(Status::invalid_argument("certificate_only and a token: choose one")),
            (false, true) => Some(crate::auth::new_token()),
            (false, false) => Some(token),
        };
        let token_sha256 = token.as_deref().map(crate::auth::token_digest);
        let (map_version, _) =
            self.change_users(MetaCommand::AddUser { name: name.clone(), token_sha256, grants }).await?;
        tracing::info!(user = %name, certificate_only, "user added");
        Ok(Response::new(AddUserResponse { token: token.unwrap_or_default(), map_version }))
    }

    async fn remove_user(&self, req: Request<RemoveUserRequest>) -> Result<Response<RemoveUserResponse>, Status> {
        let RemoveUserRequest { name } = req.into_inner();
        let map = self.bootstrapped_map()?;
        if name != crate::auth::ROOT_USER && !map.users.iter().any(|u| u.name == name) {
            return Err(Status::not_found(format!("no user {name:?}")));
        }
        let (map_version, _) = self.change_users(MetaCommand::RemoveUser { name: name.clone() }).await?;
        tracing::info!(user = %name, "user removed");
        Ok(Response::new(RemoveUserResponse { map_version }))
    }

    async fn grant_user(&self, req: Request<GrantUserRequest>) -> Result<Response<GrantUserResponse>, Status> {
        let GrantUserRequest { name, grant, revoke } = req.into_inner();
        let grant = grant_from_pb(grant)?;
        let (map_version, changed) =
            self.change_users(MetaCommand::GrantUser { name: name.clone(), grant: grant.clone(), revoke }).await?;
        tracing::info!(user = %name, role = grant.role.as_str(), revoke, changed, "user grant changed");
        Ok(Response::new(GrantUserResponse { map_version, changed }))
    }

    type ExportShardStream = super::export::ExportStream;

    async fn export_shard(
        &self,
        req: Request<geokv_proto::admin::ExportShardRequest>,
    ) -> Result<Response<Self::ExportShardStream>, Status> {
        let shard_id = req.into_inner().shard_id;
        let map = self.bootstrapped_map()?;
        let desc = find_shard(&map, shard_id)?;
        Ok(Response::new(super::export::export(&self.node, desc).await?))
    }

    async fn list_users(&self, _req: Request<ListUsersRequest>) -> Result<Response<ListUsersResponse>, Status> {
        let map = self.bootstrapped_map()?;
        let users = map
            .users
            .iter()
            .map(|u| UserInfo {
                name: u.name.clone(),
                grants: u.grants.iter().map(grant_to_pb).collect(),
                has_token: u.token_sha256.is_some(),
            })
            .collect();
        Ok(Response::new(ListUsersResponse { users, map_version: map.version }))
    }

    async fn get_shard_map(&self, _req: Request<GetShardMapRequest>) -> Result<Response<PbShardMap>, Status> {
        let map = self.node.shard_map();
        Ok(Response::new(PbShardMap {
            version: map.version,
            nodes: map
                .nodes
                .iter()
                .map(|n| NodeInfo {
                    node_id: n.id,
                    addr: n.addr.clone(),
                    region: n.region.clone(),
                    zone: n.zone.clone(),
                    state: node_state(n.state) as i32,
                })
                .collect(),
            shards: map.shards.iter().map(|s| shard_info(&map, s)).collect(),
        }))
    }

    async fn node_status(&self, _req: Request<NodeStatusRequest>) -> Result<Response<NodeStatusResponse>, Status> {
        let map = self.node.shard_map();
        let me = &self.node.me;
        let mut groups = Vec::new();
        for (shard, raft) in self.node.groups().await {
            let m = raft.metrics().borrow_watched().clone();
            let desc = map.shard(shard);
            let frozen = self.node.frozen_record(shard);
            groups.push(GroupStatus {
                shard_id: shard,
                role: role(m.state).into(),
                leader_id: m.current_leader.unwrap_or(0),
                term: m.current_term,
                last_log_index: m.last_log_index.unwrap_or(0),
                committed_index: crate::raft::index_of(&m.local_committed),
                applied_index: crate::raft::index_of(&m.last_applied),
                purged_index: crate::raft::index_of(&m.purged),
                snapshot_index: crate::raft::index_of(&m.snapshot),
                voters: m.membership_config.voter_ids().collect(),
                learners: m.membership_config.membership().learner_ids().collect(),
                approximate_bytes: match desc {
                    Some(d) if !d.is_eventual() => self.node.storage.approximate_data_bytes(&d.start, d.end.as_deref()),
                    _ => 0,
                },
                frozen_index: frozen.map_or(0, |(index, _, _)| index),
                freeze_sealed: frozen.is_some_and(|(_, _, sealed)| sealed),
                epoch: if shard == META_SHARD_ID { map.version } else { desc.map_or(0, |d| d.epoch) },
                start: desc.map(|d| d.start.clone()).unwrap_or_default(),
                end: desc.and_then(|d| d.end.clone()).unwrap_or_default(),
                mode: ShardMode::Raft as i32,
                error: m.running_state.as_ref().err().map(|fatal| fatal.to_string()).unwrap_or_default(),
                ..GroupStatus::default()
            });
        }
        for (shard, error) in self.node.failed_groups() {
            let desc = map.shard(shard);
            groups.push(GroupStatus {
                shard_id: shard,
                role: "shutdown".into(),
                epoch: desc.map_or(0, |d| d.epoch),
                start: desc.map(|d| d.start.clone()).unwrap_or_default(),
                end: desc.and_then(|d| d.end.clone()).unwrap_or_default(),
                mode: ShardMode::Raft as i32,
                error,
                ..GroupStatus::default()
            });
        }
        for replica in self.node.eventual_shards() {
            groups.push(GroupStatus {
                shard_id: replica.id(),
                role: "eventual".into(),
                voters: replica.replicas(),
                epoch: replica.desc.epoch,
                start: replica.desc.start.clone(),
                end: replica.desc.end.clone().unwrap_or_default(),
                mode: ShardMode::Eventual as i32,
                ec_last_seq: replica.positions().0,
                ec_outbox_depth: replica.outbox_depth(),
                ec_peers: replica
                    .peer_lags()
                    .into_iter()
                    .map(|l| EcPeer {
                        node_id: l.peer,
                        acked_seq: l.acked,
                        lag_entries: l.entries,
                        lag_ms: l.ms,
                        resyncing: l.resyncing,
                    })
                    .collect(),
                ec_tombstones: replica.tombstones(),
                ec_heard_from: replica.heard_from(),
                ec_leaving: replica.is_leaving(),
                ec_durable_seq: replica.positions().2,
                ec_seeding: replica.is_seeding(),
                ..GroupStatus::default()
            });
        }
        groups.sort_by_key(|g| g.shard_id);
        Ok(Response::new(NodeStatusResponse {
            node: Some(NodeInfo {
                node_id: me.id,
                addr: me.addr.clone(),
                region: me.region.clone(),
                zone: me.zone.clone(),
                state: node_state(self.node.shard_map().node(me.id).map_or(NodeState::Up, |n| n.state)) as i32,
            }),
            ready: self.node.is_ready(),
            groups,
            uptime_ms: self.node.uptime().as_millis() as u64,
            topology_decisions: self
                .node
                .metrics
                .topology_decisions()
                .into_iter()
                .map(|(kind, count)| geokv_proto::admin::TopologyDecisions { kind: kind.into(), count })
                .collect(),
        }))
    }

    async fn transfer_leader(
        &self,
        req: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        let TransferLeaderRequest { shard_id, to_node } = req.into_inner();
        let raft = self
            .node
            .group(shard_id)
            .await
            .ok_or_else(|| Status::not_found(format!("this node hosts no replica of shard {shard_id}")))?;
        if !raft.is_leader() {
            return Err(Status::failed_precondition(format!("this node does not lead shard {shard_id}")));
        }
        if !raft.voter_ids().any(|v| v == to_node) {
            return Err(Status::invalid_argument(format!("node {to_node} is not a voter of shard {shard_id}")));
        }
        raft.trigger().transfer_leader(to_node).await.map_err(|e| Status::unavailable(e.to_string()))?;
        tracing::info!(shard = shard_id, to_node, "leadership transfer requested");
        Ok(Response::new(TransferLeaderResponse {}))
    }

    async fn list_conflicts(
        &self,
        req: Request<ListConflictsRequest>,
    ) -> Result<Response<ListConflictsResponse>, Status> {
        let ListConflictsRequest { shard_id, limit } = req.into_inner();
        let limit = if limit == 0 { DEFAULT_CONFLICT_LIMIT } else { limit as usize };
        let ec = &self.node.ec;
        let shard = (shard_id != 0).then_some(shard_id);
        let list = ec.conflicts.list(&self.node.storage, shard, limit).map_err(Status::from)?;
        let (total_recorded, capacity) = ec.conflicts.totals();
        Ok(Response::new(ListConflictsResponse {
            conflicts: list
                .into_iter()
                .map(|c| PbConflict {
                    shard_id: c.shard,
                    key: c.key,
                    winner_hlc: Some(c.winner.to_proto()),
                    winner_origin: c.winner.node,
                    winner_deleted: c.winner_deleted,
                    loser_hlc: Some(c.loser.to_proto()),
                    loser_origin: c.loser.node,
                    loser_deleted: c.loser_value.is_none(),
                    loser_value: c.loser_value,
                    recorded_by: c.recorded_by,
                    recorded_at_ms: c.recorded_at_ms,
                })
                .collect(),
            total_recorded,
            capacity,
        }))
    }

    async fn create_shard(&self, req: Request<CreateShardRequest>) -> Result<Response<CreateShardResponse>, Status> {
        let CreateShardRequest { start, end, mode } = req.into_inner();
        if ShardMode::try_from(mode) != Ok(ShardMode::Eventual) {
            return Err(Status::invalid_argument(
                "only eventual shards can be created: Raft shards come from the split points a cluster starts with, \
                 and from splitting one (kvctl shard split)",
            ));
        }
        let max = self.node.config.limits.max_key_bytes;
        if start.len() > max || end.len() > max {
            return Err(Status::invalid_argument(format!("range bounds may be at most max_key_bytes = {max} bytes")));
        }
        let end = (!end.is_empty()).then_some(end);
        if end.as_ref().is_some_and(|e| *e <= start) {
            return Err(Status::invalid_argument("the range is empty: END must sort after START"));
        }
        let map = self.node.shard_map();
        if map.version == 0 {
            return Err(Status::unavailable("the shard map is not bootstrapped yet; retry shortly"));
        }
        let show = |k: &[u8]| String::from_utf8_lossy(k).into_owned();
        // A retry of a request that already completed.
        if let Some(done) = map.shards.iter().find(|s| s.start == start && s.end == end && s.is_eventual()) {
            return Ok(Response::new(CreateShardResponse {
                shard_id: done.id,
                map_version: map.version,
                parent_shard_id: 0,
                parent_epoch: 0,
            }));
        }
        let parent =
            map.shard_for_key(&start).ok_or_else(|| Status::internal("no shard covers the start key"))?.clone();
        let within = match (&end, &parent.end) {
            (_, None) => true,
            (Some(e), Some(pe)) => e <= pe,
            (None, Some(_)) => false,
        };
        if parent.is_eventual() || !within {
            return Err(Status::invalid_argument(format!(
                "the range must lie inside one Raft shard; it starts in shard {} [{}, {}){}",
                parent.id,
                show(&parent.start),
                parent.end.as_deref().map_or("end".into(), show),
                if parent.is_eventual() { ", which is eventual" } else { " and ends beyond it" }
            )));
        }
        let keeps_start = start != parent.start;
        let keeps_end = end != parent.end;
        let (parent_start, parent_end) = match (keeps_start, keeps_end) {
            (true, false) => (parent.start.clone(), Some(start.clone())),
            (false, true) => (end.clone().expect("a bounded end"), parent.end.clone()),
            _ => {
                return Err(Status::invalid_argument(format!(
                    "the range must begin or end where shard {} [{}, {}) does, but not both (split the shard \
                     first with kvctl shard split to carve from its middle; converting a whole shard is not built)",
                    parent.id,
                    show(&parent.start),
                    parent.end.as_deref().map_or("end".into(), show)
                )));
            }
        };
        let parent_epoch = parent.epoch + 1;
        tracing::info!(parent = parent.id, "carving an eventual shard");

        // 1. The parent stops owning the range, in its own log order.
        let shrink = Command::Shrink(ShrinkCommand {
            start: parent_start.clone(),
            end: parent_end.clone(),
            epoch: parent_epoch,
        });
        match self.node.propose_internal(parent.id, &shrink).await.map_err(Status::unavailable)? {
            CommandResult::Shrunk { .. } => {}
            CommandResult::Rejected(r @ Rejection::NotEmpty { .. }) => {
                return Err(Status::failed_precondition(r.to_string()));
            }
            other => return Err(Status::failed_precondition(format!("shard {} refused: {other:?}", parent.id))),
        }
        // 2. The map says so; every replica starts the new shard from it.
        let desc = ShardDesc {
            id: 0, // allocated by the meta shard when the carve applies
            epoch: 1,
            start,
            end,
            replicas: parent.replicas.clone(),
            preferred_leader_region: None,
            mode: crate::shards::ShardMode::Eventual,
            change: None,
            merge: None,
            auto_split: false,
        };
        let carve = Command::Meta(MetaCommand::CarveShard {
            parent: parent.id,
            parent_start,
            parent_end,
            parent_epoch,
            shard: desc,
        });
        match self.node.propose_internal(META_SHARD_ID, &carve).await.map_err(Status::unavailable)? {
            CommandResult::Carved { shard_id, map_version } => Ok(Response::new(CreateShardResponse {
                shard_id,
                map_version,
                parent_shard_id: parent.id,
                parent_epoch,
            })),
            other => Err(Status::failed_precondition(format!("the shard map refused the new shard: {other:?}"))),
        }
    }

    async fn split_shard(&self, req: Request<SplitShardRequest>) -> Result<Response<SplitShardResponse>, Status> {
        let SplitShardRequest { shard_id, split_key, expected_epoch, automatic } = req.into_inner();
        let map = self.node.shard_map();
        if map.version == 0 {
            return Err(Status::unavailable("the shard map is not bootstrapped yet; retry shortly"));
        }
        let show = |k: &[u8]| format!("{:?}", String::from_utf8_lossy(k));
        let shard = find_shard(&map, shard_id)?;
        if split_key.is_empty() {
            return Err(Status::invalid_argument("the split key must not be empty"));
        }
        let max = self.node.config.limits.max_key_bytes;
        if split_key.len() > max {
            return Err(Status::invalid_argument(format!(
                "the split key is {} bytes; the limit is max_key_bytes = {max}",
                split_key.len()
            )));
        }
        if shard.is_eventual() {
            return Err(Status::failed_precondition(format!(
                "shard {shard_id} is eventual: only Raft shards can be split"
            )));
        }
        let pos = map.shards.iter().position(|s| s.id == shard_id).expect("found above");
        let right_now = map.shards.get(pos + 1).filter(|r| r.start == split_key && !r.is_eventual());
        let done = expected_epoch != 0
            && shard.epoch == expected_epoch + 1
            && shard.end.as_ref() == Some(&split_key)
            && right_now.is_some();
        if !done && expected_epoch != 0 && shard.epoch != expected_epoch {
            return Err(Status::failed_precondition(format!(
                "shard {shard_id} is at epoch {}, not {expected_epoch}: it changed since; look again (kvctl shards)",
                shard.epoch
            )));
        }
        if !done && (!shard.contains(&split_key) || split_key == shard.start) {
            let hint = match right_now {
                Some(r) if shard.end.as_ref() == Some(&split_key) => format!(" (shard {} starts there)", r.id),
                _ => String::new(),
            };
            return Err(Status::invalid_argument(format!(
                "split key {} is not strictly inside shard {shard_id}'s range [{}, {}){hint}",
                show(&split_key),
                show(&shard.start),
                shard.end.as_deref().map_or("end".into(), show)
            )));
        }
        // 1. The map records the split (the intent: `finish_splits` carries
        //    it out if this request stops after this step). On a retry of a
        //    recorded split the meta shard answers it unchanged.
        let (left_epoch, right_shard, right_epoch, map_version, created) =
            if let Some(right) = right_now.filter(|_| done) {
                (shard.epoch, right.id, right.epoch, map.version, false)
            } else {
                let record = Command::Meta(MetaCommand::SplitShard {
                    shard: shard_id,
                    epoch: shard.epoch,
                    key: split_key.clone(),
                    automatic,
                });
                match self.node.propose_internal(META_SHARD_ID, &record).await.map_err(Status::unavailable)? {
                    CommandResult::Split { left_epoch, right_shard, right_epoch, map_version } => {
                        (left_epoch, right_shard, right_epoch, map_version, map_version > map.version)
                    }
                    CommandResult::Rejected(r) => {
                        return Err(Status::failed_precondition(format!("the shard map refused the split: {r}")));
                    }
                    other => return Err(Status::internal(format!("unexpected answer from the meta shard: {other:?}"))),
                }
            };
        tracing::info!(shard = shard_id, right_shard, "split recorded in the shard map");
        // 2. The shard's own log splits it; every replica starts the right half.
        let split = Command::Split(SplitCommand {
            key: split_key,
            left_epoch,
            right_shard,
            right_epoch,
            members: shard.replicas.clone(),
        });
        match self.node.propose_internal(shard_id, &split).await {
            Ok(CommandResult::Split { .. }) => {}
            Ok(CommandResult::Rejected(r)) => {
                return Err(Status::internal(format!(
                    "the map records the split but shard {shard_id} refused it: {r}"
                )));
            }
            Ok(other) => return Err(Status::internal(format!("unexpected answer from shard {shard_id}: {other:?}"))),
            Err(e) => {
                return Err(Status::unavailable(format!(
                    "the map records the split (shard {right_shard}); shard {shard_id}'s leader completes it once \
                     reachable ({e}); repeating the request is safe"
                )));
            }
        }
        Ok(Response::new(SplitShardResponse {
            left_shard_id: shard_id,
            left_epoch,
            right_shard_id: right_shard,
            right_epoch,
            map_version,
            created,
        }))
    }

    async fn move_replica(&self, req: Request<MoveReplicaRequest>) -> Result<Response<MoveReplicaResponse>, Status> {
        let here = req.metadata().get(CANCEL_HERE).and_then(|v| v.to_str().ok()).map(str::to_string);
        let MoveReplicaRequest { shard_id, from_node, to_node, cancel } = req.into_inner();
        if cancel {
            if here.as_deref() == Some(CANCEL_FORGET) {
                self.node.forget_cancel(shard_id);
                let map_version = self.node.shard_map().version;
                return Ok(Response::new(MoveReplicaResponse { map_version, created: false }));
            }
            let change = ReplicaChange { add: Some(to_node), remove: Some(from_node) };
            return self.cancel_move(shard_id, change, here.is_some()).await;
        }
        let map = self.node.shard_map();
        if map.version == 0 {
            return Err(Status::unavailable("the shard map is not bootstrapped yet; retry shortly"));
        }
        let shard = find_shard(&map, shard_id)?;
        let change = ReplicaChange { add: Some(to_node), remove: Some(from_node) };
        let node_ids = || map.nodes.iter().map(|n| n.id.to_string()).collect::<Vec<_>>().join(", ");
        for id in [from_node, to_node] {
            if map.node(id).is_none() {
                return Err(Status::not_found(format!("no node {id} in the cluster (nodes: {})", node_ids())));
            }
        }
        if from_node == to_node {
            return Err(Status::invalid_argument(format!(
                "--from and --to are both node {from_node}: nothing to move"
            )));
        }
        if shard.change == Some(change) {
            // A repeat of a recorded move: report it.
            return Ok(Response::new(MoveReplicaResponse { map_version: map.version, created: false }));
        }
        if shard.change.is_none() {
            if !shard.replicas.contains(&from_node) {
                return Err(Status::failed_precondition(format!(
                    "node {from_node} holds no replica of shard {shard_id} (replicas: {:?})",
                    shard.replicas
                )));
            }
            if shard.replicas.contains(&to_node) {
                return Err(Status::failed_precondition(format!(
                    "node {to_node} already holds a replica of shard {shard_id} (replicas: {:?})",
                    shard.replicas
                )));
            }
            // A replica added to a node that is down would wait as a learner
            // until it comes back, holding up every other change of the shard.
            let addr = map.node(to_node).map(|n| n.addr.clone()).unwrap_or_default();
            self.node.probe_peer(&addr).await.map_err(|e| {
                Status::failed_precondition(format!(
                    "node {to_node} ({addr}) does not answer ({e}): not moving a replica there"
                ))
            })?;
        }
        let record = Command::Meta(MetaCommand::BeginReplicaChange { shard: shard_id, change });
        match self.node.propose_internal(META_SHARD_ID, &record).await.map_err(Status::unavailable)? {
            CommandResult::Meta { map_version, changed } => {
                tracing::info!(
                    shard = shard_id,
                    from = from_node,
                    to = to_node,
                    "replica move recorded in the shard map"
                );
                Ok(Response::new(MoveReplicaResponse { map_version, created: changed }))
            }
            CommandResult::Rejected(r) => {
                Err(Status::failed_precondition(format!("the shard map refused the move: {r}")))
            }
            other => Err(Status::internal(format!("unexpected answer from the meta shard: {other:?}"))),
        }
    }

    async fn drain_node(&self, req: Request<DrainNodeRequest>) -> Result<Response<DrainNodeResponse>, Status> {
        let DrainNodeRequest { node_id, cancel } = req.into_inner();
        let map = self.bootstrapped_map()?;
        let state = find_node(&map, node_id)?.state;
        if cancel {
            return match state {
                NodeState::Up => Ok(Response::new(DrainNodeResponse { map_version: map.version, created: false })),
                NodeState::Draining => {
                    let (map_version, created) = self.set_node_state(node_id, NodeState::Up).await?;
                    tracing::info!(node = node_id, "node drain cancelled: up again");
                    Ok(Response::new(DrainNodeResponse { map_version, created }))
                }
                other => Err(Status::failed_precondition(format!(
                    "node {node_id} is {}, not draining: there is no drain to cancel",
                    other.as_str()
                ))),
            };
        }
        if matches!(state, NodeState::Draining | NodeState::Removing) {
            return Ok(Response::new(DrainNodeResponse { map_version: map.version, created: false }));
        }
        if state == NodeState::Removed {
            return Err(Status::failed_precondition(format!("node {node_id} was removed from the cluster")));
        }
        refuse_blocked_drain(&map, node_id)?;
        let (map_version, created) = self.set_node_state(node_id, NodeState::Draining).await?;
        tracing::info!(node = node_id, "node drain recorded in the shard map");
        Ok(Response::new(DrainNodeResponse { map_version, created }))
    }

    async fn remove_node(&self, req: Request<RemoveNodeRequest>) -> Result<Response<RemoveNodeResponse>, Status> {
        let RemoveNodeRequest { node_id, force } = req.into_inner();
        let map = self.bootstrapped_map()?;
        let state = find_node(&map, node_id)?.state;
        let answer = |map_version, state, created| {
            Ok(Response::new(RemoveNodeResponse { map_version, state: node_state(state) as i32, created }))
        };
        if state == NodeState::Removed || (state == NodeState::Removing && force) {
            return answer(map.version, state, false);
        }
        let meta = self.node.group(META_SHARD_ID).await.ok_or_else(|| Status::unavailable("node is starting"))?;
        let voters: Vec<u64> = meta.metrics().borrow_watched().membership_config.membership().voter_ids().collect();
        let left = voters.iter().filter(|v| **v != node_id).count();
        if voters.contains(&node_id) && left < MIN_META_VOTERS {
            return Err(Status::failed_precondition(format!(
                "removing node {node_id} would leave the meta shard {left} voters (it has {voters:?}), fewer than \
                 {MIN_META_VOTERS}: it could not survive a failure"
            )));
        }
        let holds: Vec<u64> = map.placed_on(node_id).map(|s| s.id).collect();
        let target = if holds.is_empty() {
            NodeState::Removed
        } else if force {
            refuse_blocked_drain(&map, node_id)?;
            NodeState::Removing
        } else {
            return Err(Status::failed_precondition(format!(
                "node {node_id} still holds replicas of shards {holds:?}: drain it first (kvctl node drain \
                 {node_id}), or remove it with --force, which moves them first"
            )));
        };
        let (map_version, created) = self.set_node_state(node_id, target).await?;
        tracing::info!(node = node_id, state = target.as_str(), "node removal recorded in the shard map");
        answer(map_version, target, created)
    }

    async fn split_key(&self, req: Request<SplitKeyRequest>) -> Result<Response<SplitKeyResponse>, Status> {
        let SplitKeyRequest { shard_id } = req.into_inner();
        let map = self.bootstrapped_map()?;
        let desc = find_shard(&map, shard_id)?;
        if self.node.group(shard_id).await.is_none() {
            return Err(Status::not_found(format!("this node hosts no replica of shard {shard_id}")));
        }
        let storage = self.node.storage.clone();
        let key = tokio::task::spawn_blocking(move || {
            storage.middle_key(&desc.start, desc.end.as_deref(), crate::placement::SPLIT_KEY_SCAN_KEYS)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(SplitKeyResponse { found: key.is_some(), key: key.unwrap_or_default() }))
    }

    async fn merge_shard(&self, req: Request<MergeShardRequest>) -> Result<Response<MergeShardResponse>, Status> {
        let MergeShardRequest { shard_id, expected_epoch, cancel } = req.into_inner();
        let map = self.bootstrapped_map()?;
        find_shard(&map, shard_id)?;
        let right = match map.shard(shard_id).and_then(|s| s.merge) {
            Some(m) => m.right,
            None => {
                let pos = map.shards.iter().position(|s| s.id == shard_id).expect("found above");
                map.shards.get(pos + 1).map_or(0, |r| r.id)
            }
        };
        // Always through the meta shard, which decides (and answers a
        // repeat): this node's copy of the map may lag behind it.
        let cmd = Command::Meta(if cancel {
            MetaCommand::CancelMerge { left: shard_id, unfrozen: false }
        } else {
            MetaCommand::BeginMerge { left: shard_id, expected_epoch }
        });
        match self.node.propose_internal(META_SHARD_ID, &cmd).await.map_err(Status::unavailable)? {
            CommandResult::Meta { map_version, changed: created } => {
                tracing::info!(shard = shard_id, right, cancel, created, "merge recorded in the shard map");
                Ok(Response::new(MergeShardResponse { right_shard_id: right, map_version, created }))
            }
            CommandResult::Rejected(r) => Err(Status::failed_precondition(format!("the shard map refused it: {r}"))),
            other => Err(Status::internal(format!("unexpected answer from the meta shard: {other:?}"))),
        }
    }

    async fn join_cluster(&self, req: Request<JoinClusterRequest>) -> Result<Response<JoinClusterResponse>, Status> {
        let JoinClusterRequest { addr, region, zone } = req.into_inner();
        let map = self.bootstrapped_map()?;
        if region.is_empty() {
            return Err(Status::invalid_argument("a joining node must name its region (--region)"));
        }
        if addr.rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err()) {
            return Err(Status::invalid_argument(format!("address {addr:?} is not HOST:PORT")));
        }
        // The same check the meta shard makes, for a clear answer without a
        // proposal; the meta shard's own check decides.
        (*map).clone().add_node(&addr, &region, &zone).map_err(Status::failed_precondition)?;
        let cmd = Command::Meta(MetaCommand::AddNode { addr: addr.clone(), region: region.clone(), zone });
        match self.node.propose_internal(META_SHARD_ID, &cmd).await.map_err(Status::unavailable)? {
            CommandResult::Joined { node_id, map_version } => {
                let created = map.node(node_id).is_none();
                tracing::info!(node = node_id, %addr, %region, created, "node admitted to the cluster");
                Ok(Response::new(JoinClusterResponse { node_id, map_version, created }))
            }
            CommandResult::Rejected(r) => Err(Status::failed_precondition(format!("the shard map refused it: {r}"))),
            other => Err(Status::internal(format!("unexpected answer from the meta shard: {other:?}"))),
        }
    }

    async fn set_leader_region(
        &self,
        req: Request<SetLeaderRegionRequest>,
    ) -> Result<Response<SetLeaderRegionResponse>, Status> {
        let SetLeaderRegionRequest { shard_id, region } = req.into_inner();
        let map = self.node.shard_map();
        if map.version == 0 {
            return Err(Status::unavailable("the shard map is not bootstrapped yet; retry shortly"));
        }
        if map.shard(shard_id).is_none() {
            return Err(Status::not_found(format!("no data shard {shard_id} in map version {}", map.version)));
        }
        let region = (!region.is_empty()).then_some(region);
        if let Some(r) = &region
            && !map.has_region(r)
        {
            return Err(Status::invalid_argument(format!("no node of the cluster is in region {r:?}")));
        }
        let meta = self.node.group(META_SHARD_ID).await.ok_or_else(|| Status::unavailable("node is starting"))?;
        let cmd = Command::Meta(MetaCommand::SetLeaderRegion { shard: shard_id, region });
        match meta.client_write(cmd).await {
            Ok(resp) => match resp.data {
                CommandResult::Meta { map_version, .. } => Ok(Response::new(SetLeaderRegionResponse { map_version })),
                other => Err(Status::failed_precondition(format!("not applied: {other:?}"))),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                let leader = f.leader_id.and_then(|id| map.node(id)).map(|n| n.addr.clone()).unwrap_or_default();
                Err(Status::failed_precondition(format!("not the meta shard's leader; ask {leader}")))
            }
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }
}

/// `shard_id`'s descriptor, or NOT_FOUND listing the shards there are.
fn find_shard(map: &ShardMap, shard_id: u64) -> Result<ShardDesc, Status> {
    map.shard(shard_id).cloned().ok_or_else(|| {
        let ids: Vec<String> = map.shards.iter().map(|s| s.id.to_string()).collect();
        Status::not_found(format!("no shard {shard_id} in map version {} (shards: {})", map.version, ids.join(", ")))
    })
}

/// The meta shard keeps at least this many voters: fewer survive no failure.
const MIN_META_VOTERS: usize = 3;

fn node_state(state: NodeState) -> ProtoNodeState {
    match state {
        NodeState::Up => ProtoNodeState::Up,
        NodeState::Draining => ProtoNodeState::Draining,
        NodeState::Removing => ProtoNodeState::Removing,
        NodeState::Removed => ProtoNodeState::Removed,
        NodeState::Joining => ProtoNodeState::Joining,
        NodeState::Down => ProtoNodeState::Down,
    }
}

fn find_node(map: &ShardMap, id: u64) -> Result<&crate::shards::NodeDesc, Status> {
    map.node(id).ok_or_else(|| {
        let ids: Vec<String> = map.nodes.iter().map(|n| n.id.to_string()).collect();
        Status::not_found(format!("no node {id} in the cluster (nodes: {})", ids.join(", ")))
    })
}

/// Refuses a drain that could not complete, naming every shard in the way.
fn refuse_blocked_drain(map: &ShardMap, node: u64) -> Result<(), Status> {
    let blockers = placement::drain_blockers(map, node);
    if blockers.is_empty() {
        return Ok(());
    }
    Err(Status::failed_precondition(format!("node {node} cannot be drained: {}", blockers.join("; "))))
}
