//! [`Client`]: the connection pool, the routing caches and the retry loop.
//!
//! Every key operation goes through [`Client::execute`]:
//!
//! 1. **Route.** Look the key up in the cached shard map (refreshing it when
//!    no shard covers the key) and pick a target: the cached leader of that
//!    shard, else its replicas in map order, skipping nodes already tried by
//!    this operation.
//! 2. **Send** one RPC with the shard's id and epoch in the header, bounded by
//!    `rpc_timeout` and by what is left of the operation's `deadline`.
//! 3. **Learn** from a failure ([`Failure`]): a `NotLeader` hint updates the
//!    leader cache and is followed at once; `WrongShard` refreshes the map
//!    (from the node that said so first, as it knows the newer version); a
//!    refused connection moves on to the next replica. Anything else, and
//!    every full round over a shard's replicas, waits a jittered backoff.
//! 4. **Stop** on success, on a final answer, or when `max_attempts` or the
//!    deadline runs out. A write that any attempt may have applied ends as
//!    [`Error::Indeterminate`]; otherwise exhaustion is [`Error::Unavailable`].
//!    A write is resent for at most [`MAX_WRITE_RETRY_WINDOW`] whatever the
//!    deadline, so every resend reaches the server while the session that
//!    deduplicates it lives, and no attempt starts with less than
//!    [`MIN_ATTEMPT_TIME`] left (it could only time out, turning a refusal
//!    into an unknown outcome).
//!
//! Eventual shards ([`ShardMode::Eventual`]) have no leader: every request
//! for them, read or write, goes to a replica in the client's region first,
//! then to the others in map order, and no leader is cached for them. Their
//! writes are not exactly-once (a replica stamps each one it receives with a
//! new timestamp), so a write is retried on another replica only after a
//! failure that proves nothing was applied (refused connection, the node
//! declining, a stale map); after any other failure it ends at once as
//! [`Error::Indeterminate`].

use std::collections::{HashMap, HashSet};

/// The longest a write is resent for, whatever [`ClientConfig::deadline`]
/// says: half the shortest session TTL a node accepts
/// (`limits.session_ttl_ms` ≥ 60 s), so every resend of a write reaches the
/// server while its exactly-once session lives, with a margin for leaders
/// whose clocks differ. (A resend that still came later would be refused as
/// indeterminate by the session's marker, never applied twice.)
///
/// [`ClientConfig::deadline`]: crate::ClientConfig::deadline
pub const MAX_WRITE_RETRY_WINDOW: Duration = Duration::from_secs(30);

/// No attempt starts with less than this left of the deadline.
pub const MIN_ATTEMPT_TIME: Duration = Duration::from_millis(5);
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use geokv_proto::MAX_GRPC_MESSAGE_BYTES;
use geokv_proto::admin::admin_client::AdminClient;
use geokv_proto::admin::{GetShardMapRequest, NodeStatusRequest};
use geokv_proto::kv as pb;
use geokv_proto::kv::kv_client::KvClient;
use tokio::time::Instant;
use tonic::Status;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::backoff::Backoff;
use crate::batch::Batch;
use crate::config::{ClientConfig, endpoint_uri};
use crate::error::{Error, Failure, classify};
use crate::scan::{KeyRange, Scan};
use crate::session::SessionTracker;
use crate::shard_map::{Shard, ShardMap};
use crate::status::{ClusterStatus, NodeReport, NodeStatus};
use crate::types::{
    CasResult, Consistency, DeleteResult, Expect, ReadInfo, ReadResult, ShardMode, Versioned, WriteResult,
};

/// HTTP/2 keep-alive ping interval on every connection, so a connection to a
/// partitioned node is noticed and replaced instead of hanging every request.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a keep-alive ping may go unanswered before the connection is
/// dropped.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A handle to a geokv cluster. Cheap to clone; clones share connections,
/// caches and the write session, and may be used from many tasks at once.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    /// Random, chosen once per `Client` (shared by its clones).
    client_id: u64,
    sessions: Mutex<SessionTracker>,
    /// One lazily connected channel per node address.
    channels: Mutex<HashMap<String, Channel>>,
    /// The `authorization` header every request carries, made once.
    credentials: Credentials,
    routing: RwLock<Routing>,
    /// Serialises shard map refreshes so a burst of `WrongShard` answers
    /// fetches the map once.
    refresh_lock: tokio::sync::Mutex<()>,
}

/// The routing caches.
///
/// Invariants:
/// - `map.version` never decreases;
/// - a leader hint is replaced only by a hint of an equal or higher term, or
///   by a node that just served a leader-only request.
#[derive(Default)]
struct Routing {
    map: Arc<ShardMap>,
    leaders: HashMap<u64, LeaderHint>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct LeaderHint {
    node_id: u64,
    addr: String,
    term: u64,
}

/// Where one attempt is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) node_id: u64,
    pub(crate) addr: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("client_id", &self.inner.client_id)
            .field("endpoints", &self.inner.config.endpoints)
            .finish_non_exhaustive()
    }
}

/// One Kv RPC the retry loop can send again and again.
pub(crate) trait KvCall: Clone + Send + 'static {
    type Reply: Send + 'static;

    /// For operations eventual shards refuse: their name in errors.
    const RAFT_ONLY: Option<&'static str>;

    fn set_header(&mut self, header: pb::RequestHeader);

    /// The write session, for writes; `None` for reads.
    fn session_mut(&mut self) -> Option<&mut pb::WriteSession>;

    fn send(
        self,
        client: KvClient<Transport>,
        timeout: Duration,
    ) -> impl Future<Output = Result<Self::Reply, Status>> + Send;
}

macro_rules! kv_call {
    ($request:ty => $reply:ty, $method:ident, read) => {
        kv_call!(@impl $request => $reply, $method, None, |_request| None);
    };
    ($request:ty => $reply:ty, $method:ident, write) => {
        kv_call!(@impl $request => $reply, $method, None, |request| request.session.as_mut());
    };
    ($request:ty => $reply:ty, $method:ident, raft_only_write $name:literal) => {
        kv_call!(@impl $request => $reply, $method, Some($name), |request| request.session.as_mut());
    };
    (@impl $request:ty => $reply:ty, $method:ident, $raft_only:expr, |$this:ident| $session:expr) => {
        impl KvCall for $request {
            type Reply = $reply;

            const RAFT_ONLY: Option<&'static str> = $raft_only;

            fn set_header(&mut self, header: pb::RequestHeader) {
                self.header = Some(header);
            }

            fn session_mut(&mut self) -> Option<&mut pb::WriteSession> {
                let $this = self;
                $session
            }

            fn send(
                self,
                mut client: KvClient<Transport>,
                timeout: Duration,
            ) -> impl Future<Output = Result<Self::Reply, Status>> + Send {
                async move {
                    let mut request = tonic::Request::new(self);
                    request.set_timeout(timeout);
                    client.$method(request).await.map(tonic::Response::into_inner)
                }
            }
        }
    };
}

kv_call!(pb::GetRequest => pb::GetResponse, get, read);
kv_call!(pb::ScanRequest => pb::ScanResponse, scan, read);
kv_call!(pb::PutRequest => pb::WriteResponse, put, write);
kv_call!(pb::DeleteRequest => pb::WriteResponse, delete, write);
kv_call!(pb::CasRequest => pb::CasResponse, compare_and_swap, raft_only_write "compare-and-swap");
kv_call!(pb::BatchRequest => pb::BatchResponse, batch, raft_only_write "batch");

/// A sequence number in flight; finishing (dropping) it lets the server
/// forget the result.
pub(crate) struct WriteTicket<'a> {
    client: &'a Client,
    sequence: u64,
}

impl WriteTicket<'_> {
    pub(crate) fn session(&self) -> pb::WriteSession {
        pb::WriteSession {
            client_id: self.client.inner.client_id,
            sequence: self.sequence,
            first_incomplete: self.client.lock_sessions().first_incomplete(),
        }
    }
}

impl Drop for WriteTicket<'_> {
    fn drop(&mut self) {
        self.client.lock_sessions().finish(self.sequence);
    }
}

impl Client {
    /// Connects to a cluster through any of these seed nodes (`host:port`)
    /// with default limits, and fetches the shard map.
    ///
    /// Fails with [`Error::Unavailable`] when no seed answers within the
    /// retry limits.
    pub async fn connect<I, S>(endpoints: I) -> Result<Client, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientConfig::new(endpoints).connect().await
    }

    /// Connects with an explicit configuration, and fetches the shard map.
    pub async fn with_config(config: ClientConfig) -> Result<Client, Error> {
        config.validate()?;
        let client = Client {
            inner: Arc::new(Inner {
                client_id: rand::random::<u64>().max(1),
                sessions: Mutex::new(SessionTracker::new()),
                channels: Mutex::new(HashMap::new()),
                credentials: Credentials::of(&config),
                routing: RwLock::new(Routing::default()),
                refresh_lock: tokio::sync::Mutex::new(()),
                config,
            }),
        };
        client.fetch_initial_map().await?;
        Ok(client)
    }

    /// The configuration this client was built with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// This client's session id, sent with every write.
    pub fn client_id(&self) -> u64 {
        self.inner.client_id
    }

    /// Reads a key linearizably. `None` when the key does not exist.
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Versioned>, Error> {
        Ok(self.get_with(key, Consistency::Linearizable).await?.kv)
    }

    /// Reads a key at the given consistency level, and reports what the read
    /// actually got.
    pub async fn get_with(&self, key: impl AsRef<[u8]>, consistency: Consistency) -> Result<ReadResult, Error> {
        let key = key.as_ref();
        check_key(key)?;
        let request = pb::GetRequest {
            header: None,
            key: key.to_vec(),
            consistency: consistency.to_proto(),
            max_staleness_ms: consistency.max_staleness_ms(),
        };
        let reply = self.execute(key, consistency.needs_leader(), request).await?;
        let info = ReadInfo::from_proto(reply.read).map_err(Error::Protocol)?;
        // An empty key in the answer means "the key you asked for".
        if let Some(kv) = &reply.kv
            && !kv.key.is_empty()
            && kv.key != key
        {
            return Err(Error::Protocol(format!("asked for key {key:?}, got key {:?}", kv.key)));
        }
        Ok(ReadResult { kv: reply.kv.map(Versioned::from), info })
    }

    /// Writes a value. On a Raft shard it is applied exactly once even when
    /// retried. On an eventual shard it is acknowledged once durable on one
    /// replica (`origin` in the result) and replicated asynchronously; it is
    /// retried only when no attempt can have reached a replica, so an
    /// attempt that may have arrived ends as [`Error::Indeterminate`].
    pub async fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<WriteResult, Error> {
        let key = key.as_ref();
        check_key(key)?;
        let ticket = self.begin_write();
        let request = pb::PutRequest {
            header: None,
            session: Some(ticket.session()),
            key: key.to_vec(),
            value: value.as_ref().to_vec(),
        };
        let reply = self.execute(key, true, request).await?;
        Ok(WriteResult::from_proto(reply))
    }

    /// Deletes a key (deleting an absent key succeeds with `existed: false`).
    /// On eventual shards, see [`Client::put`].
    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<DeleteResult, Error> {
        let key = key.as_ref();
        check_key(key)?;
        let ticket = self.begin_write();
        let request = pb::DeleteRequest { header: None, session: Some(ticket.session()), key: key.to_vec() };
        let reply = self.execute(key, true, request).await?;
        Ok(DeleteResult::from_proto(reply))
    }

    /// Compare-and-swap: writes `new_value` (or deletes the key when `None`)
    /// only if the key's current state matches `expect`.
    ///
    /// Keys of eventual shards have no single current state to compare
    /// against: their nodes refuse it, and this returns
    /// [`Error::EventualShard`].
    pub async fn cas(
        &self,
        key: impl AsRef<[u8]>,
        expect: Expect,
        new_value: Option<Vec<u8>>,
    ) -> Result<CasResult, Error> {
        let key = key.as_ref();
        check_key(key)?;
        let ticket = self.begin_write();
        let request = pb::CasRequest {
            header: None,
            session: Some(ticket.session()),
            key: key.to_vec(),
            expected: Some(expect.to_proto()),
            new_value,
        };
        let reply = self.execute(key, true, request).await?;
        Ok(CasResult {
            swapped: reply.swapped,
            version: reply.version,
            current: reply.current.map(Versioned::from),
            shard_id: reply.shard_id,
        })
    }

    /// Scans a key range across shards, in key order. Accepts `a..b`, `a..`,
    /// `..b`, `..`, `a..=b` with `&str`, `&[u8]`, `Vec<u8>`... ends. Await it
    /// directly or configure it first:
    /// `client.scan("a".."m").limit(100).consistency(Consistency::Stale).await`.
    pub fn scan(&self, range: impl KeyRange) -> Scan<'_> {
        Scan::new(self, range.into_bounds())
    }

    /// Starts an atomic batch of writes (and conditions) on keys of one shard.
    pub fn batch(&self) -> Batch<'_> {
        Batch::new(self)
    }

    /// The cached shard map.
    pub async fn shard_map(&self) -> Result<ShardMap, Error> {
        let map = self.cached_map();
        if map.version == 0 && map.shards.is_empty() {
            return self.refresh_shard_map().await;
        }
        Ok((*map).clone())
    }

    /// Fetches the shard map again (from the first node that answers) and
    /// caches it, unless the cache already holds a newer one.
    pub async fn refresh_shard_map(&self) -> Result<ShardMap, Error> {
        let deadline = Instant::now() + self.inner.config.deadline;
        match self.refresh_map(None, 0, deadline).await {
            Ok(map) => Ok((*map).clone()),
            Err(failure) => Err(Error::Unavailable { attempts: 1, cause: Failure::from(failure).describe() }),
        }
    }

    /// Asks one node (`host:port`) for its status. One RPC, no retries.
    pub async fn node_status(&self, addr: &str) -> Result<NodeStatus, Error> {
        let unavailable =
            |failure: Failure| Error::Unavailable { attempts: 1, cause: format!("{addr}: {}", failure.describe()) };
        let channel = self.channel(addr).map_err(unavailable)?;
        let mut admin = admin_client(channel);
        let timeout = self.inner.config.rpc_timeout;
        let mut request = tonic::Request::new(NodeStatusRequest {});
        request.set_timeout(timeout);
        let reply = match tokio::time::timeout(timeout, admin.node_status(request)).await {
            Ok(Ok(reply)) => reply.into_inner(),
            Ok(Err(status)) => return Err(unavailable(classify(&status))),
            Err(_) => return Err(unavailable(timed_out(timeout))),
        };
        NodeStatus::from_proto(reply).map_err(Error::Protocol)
    }

    /// Sets (`None`: clears) the region `shard`'s leader should live in. The
    /// meta shard's leader applies it; this tries the map's nodes in turn
    /// until one does. Returns the new shard map version.
    pub async fn set_leader_region(&self, shard: u64, region: Option<&str>) -> Result<u64, Error> {
        let config = &self.inner.config;
        let deadline = Instant::now() + config.deadline;
        let mut backoff = Backoff::new(config.backoff_initial, config.backoff_max);
        let mut causes = Vec::new();
        let mut attempts = 0u32;
        // Rounds over every node until one (the meta shard's leader) applies
        // it; a cluster still bootstrapping or electing answers "retry".
        while Instant::now() < deadline && attempts < config.max_attempts {
            let map = self.refresh_shard_map().await?;
            for node in &map.nodes {
                let Ok(channel) = self.channel(&node.addr) else { continue };
                attempts += 1;
                let mut admin = admin_client(channel);
                let request = geokv_proto::admin::SetLeaderRegionRequest {
                    shard_id: shard,
                    region: region.unwrap_or_default().to_string(),
                };
                match tokio::time::timeout(config.rpc_timeout, admin.set_leader_region(request)).await {
                    Ok(Ok(reply)) => return Ok(reply.into_inner().map_version),
                    Ok(Err(status))
                        if matches!(status.code(), tonic::Code::InvalidArgument | tonic::Code::NotFound) =>
                    {
                        return Err(Error::InvalidArgument(status.message().to_string()));
                    }
                    Ok(Err(status)) => causes.push(format!("{}: {}", node.addr, status.message())),
                    Err(_) => causes.push(format!("{}: no answer", node.addr)),
                }
            }
            sleep_until_or(deadline, backoff.next_delay()).await;
        }
        let recent = causes.len().saturating_sub(3);
        Err(Error::Unavailable { attempts, cause: causes[recent..].join("; ") })
    }

    /// Asks every node of the shard map for its status, concurrently. Nodes
    /// that do not answer are reported, not skipped silently.
    pub async fn cluster_status(&self) -> Result<ClusterStatus, Error> {
        let map = self.refresh_shard_map().await?;
        let mut tasks = tokio::task::JoinSet::new();
        for (index, node) in map.nodes.iter().enumerate() {
            let client = self.clone();
            let addr = node.addr.clone();
            tasks.spawn(async move { (index, client.node_status(&addr).await) });
        }
        let mut statuses: Vec<Option<Result<NodeStatus, Error>>> = map.nodes.iter().map(|_| None).collect();
        while let Some(joined) = tasks.join_next().await {
            let (index, status) = joined.map_err(|err| Error::Protocol(format!("node status task failed: {err}")))?;
            statuses[index] = Some(status);
        }
        let nodes = map
            .nodes
            .iter()
            .zip(statuses)
            .map(|(node, status)| NodeReport {
                node: node.clone(),
                status: status.expect("every node status task reports once"),
            })
            .collect();
        Ok(ClusterStatus { map, nodes })
    }

    /// Sends `call` for `key` until it succeeds, fails for good, or the retry
    /// limits run out (see the module docs).
    pub(crate) async fn execute<C: KvCall>(
        &self,
        key: &[u8],
        needs_leader: bool,
        mut call: C,
    ) -> Result<C::Reply, Error> {
        let config = &self.inner.config;
        let is_write = call.session_mut().is_some();
        let window = if is_write { config.deadline.min(MAX_WRITE_RETRY_WINDOW) } else { config.deadline };
        let deadline = Instant::now() + window;
        let mut backoff = Backoff::new(config.backoff_initial, config.backoff_max);
        let mut attempts: u32 = 0;
        let mut may_have_applied = false;
        let mut wait_first = false;
        let mut tried: HashSet<String> = HashSet::new();
        let mut shard_id = 0;
        let mut last_cause = String::from("no attempt was made");

        loop {
            if attempts >= config.max_attempts || Instant::now() >= deadline {
                return Err(exhausted(is_write && may_have_applied, shard_id, attempts, last_cause));
            }
            let routed = self.route(key, deadline).await.and_then(|shard| {
                let candidates = self.candidates_for(&shard, needs_leader);
                match pick(&candidates, &tried) {
                    Some(picked) => Ok((shard, picked)),
                    None => Err(Failure::NoRoute(format!(
                        "shard {} has no replicas in map version {}",
                        shard.shard_id,
                        self.cached_map().version
                    ))),
                }
            });
            let (shard, (target, fresh)) = match routed {
                Ok(routed) => routed,
                Err(failure) => {
                    attempts += 1;
                    last_cause = failure.describe();
                    tracing::debug!(attempts, cause = %last_cause, "cannot route");
                    sleep_until_or(deadline, backoff.next_delay()).await;
                    continue;
                }
            };
            if shard.shard_id != shard_id {
                shard_id = shard.shard_id;
                tried.clear();
            }
            if !fresh {
                // Every replica of the shard failed this operation: start a
                // new round, after a pause.
                tried.clear();
                wait_first = true;
            }
            if wait_first {
                wait_first = false;
                sleep_until_or(deadline, backoff.next_delay()).await;
                if Instant::now() >= deadline {
                    continue;
                }
            }

            if deadline.saturating_duration_since(Instant::now()) < MIN_ATTEMPT_TIME {
                return Err(exhausted(is_write && may_have_applied, shard_id, attempts, last_cause));
            }
            attempts += 1;
            tried.insert(target.addr.clone());
            call.set_header(pb::RequestHeader { shard_id: shard.shard_id, epoch: shard.epoch });
            if let Some(session) = call.session_mut() {
                session.first_incomplete = self.lock_sessions().first_incomplete();
            }
            let timeout = config.rpc_timeout.min(deadline.saturating_duration_since(Instant::now()));
            let eventual = shard.mode.is_eventual();
            let failure = match self.send(&target, call.clone(), timeout).await {
                Ok(reply) => {
                    if needs_leader && !eventual {
                        self.note_leader(shard.shard_id, &target);
                    }
                    return Ok(reply);
                }
                Err(failure) => failure,
            };
            may_have_applied |= failure.may_have_applied();
            last_cause = format!("node {} ({}): {}", target.node_id, target.addr, failure.describe());
            if let Some(operation) = C::RAFT_ONLY
                && let Some(message) = refused_as_eventual(&failure, eventual)
            {
                return Err(Error::EventualShard { shard_id: shard.shard_id, operation, message });
            }
            if eventual && is_write && may_have_applied {
                // A replica stamps every write it receives anew: resending
                // could apply this one twice, so its outcome stays unknown.
                return Err(Error::Indeterminate {
                    shard_id: shard.shard_id,
                    cause: format!(
                        "{last_cause}; writes to eventual shards are not retried once an attempt may have reached a replica"
                    ),
                });
            }
            tracing::debug!(
                attempts,
                shard = shard.shard_id,
                node = target.node_id,
                may_have_applied,
                cause = %last_cause,
                "attempt failed"
            );

            match failure {
                // Eventual shards have no leader: a node saying otherwise
                // knows a newer map (the shard changed mode).
                Failure::NotLeader { .. } if eventual => {
                    let before = self.cached_map().version;
                    if let Err(refresh_failure) = self.refresh_map(Some(&target.addr), before + 1, deadline).await {
                        last_cause = format!("{last_cause}; then {}", Failure::from(refresh_failure).describe());
                    }
                    wait_first = true;
                }
                Failure::NotLeader { shard_id: hinted_shard, leader_id, leader_addr, term } => {
                    let hinted_shard = if hinted_shard == 0 { shard.shard_id } else { hinted_shard };
                    match self.learn_leader(hinted_shard, leader_id, &leader_addr, term) {
                        // A leader we have not tried yet: follow the hint now.
                        Some(leader) if !tried.contains(&leader.addr) => {}
                        // A leader that failed us earlier in this operation
                        // (it may have been busy or mid-election): go back to
                        // it after a pause rather than asking every follower.
                        Some(leader) if leader.addr != target.addr => {
                            tried.remove(&leader.addr);
                            wait_first = true;
                        }
                        // No leader known (an election is running), or a node
                        // naming itself: pause, then try the other replicas.
                        _ => {
                            self.forget_leader(shard.shard_id, &target.addr);
                            wait_first = true;
                        }
                    }
                }
                Failure::WrongShard { map_version, .. } => {
                    let before = self.cached_map().version;
                    match self.refresh_map(Some(&target.addr), map_version.max(before + 1), deadline).await {
                        Ok(map) if map.version > before => tried.clear(),
                        Ok(_) => wait_first = true,
                        Err(refresh_failure) => {
                            last_cause = format!("{last_cause}; then {}", Failure::from(refresh_failure).describe());
                            wait_first = true;
                        }
                    }
                }
                Failure::SessionForgotten(_) if is_write => {
                    return Err(Error::Indeterminate { shard_id: shard.shard_id, cause: last_cause });
                }
                Failure::SessionForgotten(message) => {
                    return Err(Error::Server { code: tonic::Code::FailedPrecondition, message });
                }
                Failure::InvalidArgument(message) => {
                    return Err(final_error(is_write && may_have_applied, shard.shard_id, last_cause, || {
                        Error::InvalidArgument(message)
                    }));
                }
                Failure::Rejected { code, message } => {
                    return Err(final_error(is_write && may_have_applied, shard.shard_id, last_cause, || {
                        Error::refused(code, message)
                    }));
                }
                Failure::NotSent(_) => {
                    self.forget_leader(shard.shard_id, &target.addr);
                }
                Failure::Declined(_) | Failure::Unavailable(_) | Failure::MaybeProcessed(_) => {}
                // The node did nothing: ask it again once it has had the
                // time it asked for (and at least the backoff).
                Failure::Overloaded { retry_after_ms, .. } => {
                    tried.remove(&target.addr);
                    let pause = Duration::from_millis(retry_after_ms).max(backoff.next_delay());
                    sleep_until_or(deadline, pause).await;
                }
                // The leader proposed the write and lost track of it; it is
                // the best place to ask again (with the same session), and if
                // it lost leadership it will name the new leader.
                Failure::Indeterminate { .. } => {
                    tried.remove(&target.addr);
                    wait_first = true;
                }
                Failure::NoRoute(_) => wait_first = true,
            }
        }
    }

    /// Takes a sequence number for a new logical write.
    pub(crate) fn begin_write(&self) -> WriteTicket<'_> {
        let sequence = self.lock_sessions().begin();
        WriteTicket { client: self, sequence }
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, SessionTracker> {
        self.inner.sessions.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn cached_map(&self) -> Arc<ShardMap> {
        self.read_routing().map.clone()
    }

    fn read_routing(&self) -> std::sync::RwLockReadGuard<'_, Routing> {
        self.inner.routing.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write_routing(&self) -> std::sync::RwLockWriteGuard<'_, Routing> {
        self.inner.routing.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The shard that owns `key`, refreshing the map once if none does.
    async fn route(&self, key: &[u8], deadline: Instant) -> Result<Shard, Failure> {
        let map = self.cached_map();
        if let Some(shard) = map.shard_for_key(key) {
            return Ok(shard.clone());
        }
        let map = self.refresh_map(None, map.version + 1, deadline).await?;
        map.shard_for_key(key).cloned().ok_or_else(|| {
            Failure::NoRoute(format!(
                "no shard covers key {key:?} in shard map version {} (is the cluster still starting?)",
                map.version
            ))
        })
    }

    /// Where to send a request for `shard`, best first. Raft shards: the
    /// replicas in the client's region (for reads any replica may serve),
    /// the cached leader, then the other replicas in map order. Eventual
    /// shards: see [`eventual_candidates`].
    fn candidates_for(&self, shard: &Shard, needs_leader: bool) -> Vec<Target> {
        let region = self.inner.config.region.as_deref();
        if shard.mode == ShardMode::Eventual {
            return eventual_candidates(shard, region);
        }
        let local = if needs_leader { None } else { region };
        let leader = self.read_routing().leaders.get(&shard.shard_id).cloned();
        candidates(shard, leader.as_ref(), local)
    }

    /// Records a `NotLeader` hint; returns the leader to try next, if known.
    fn learn_leader(&self, shard_id: u64, leader_id: u64, leader_addr: &str, term: u64) -> Option<Target> {
        if leader_id == 0 {
            return None;
        }
        let map = self.cached_map();
        let addr = if leader_addr.is_empty() { map.addr_of(leader_id)?.to_string() } else { leader_addr.to_string() };
        let mut routing = self.write_routing();
        let hint = LeaderHint { node_id: leader_id, addr, term };
        let current = routing.leaders.entry(shard_id).or_insert_with(|| hint.clone());
        if hint.term >= current.term {
            *current = hint;
        }
        Some(Target { node_id: current.node_id, addr: current.addr.clone() })
    }

    /// A leader-only request succeeded at `target`: it leads `shard_id`.
    fn note_leader(&self, shard_id: u64, target: &Target) {
        let mut routing = self.write_routing();
        let term = routing.leaders.get(&shard_id).map_or(0, |hint| hint.term);
        routing.leaders.insert(shard_id, LeaderHint { node_id: target.node_id, addr: target.addr.clone(), term });
    }

    /// Drops the cached leader of `shard_id` if it is the node at `addr`.
    fn forget_leader(&self, shard_id: u64, addr: &str) {
        let mut routing = self.write_routing();
        if routing.leaders.get(&shard_id).is_some_and(|hint| hint.addr == addr) {
            routing.leaders.remove(&shard_id);
        }
    }

    /// The channel to `addr`, created on first use.
    pub(crate) fn channel(&self, addr: &str) -> Result<Transport, Failure> {
        let config = &self.inner.config;
        let credentials = self.inner.credentials.clone();
        let mut channels = self.inner.channels.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(channel) = channels.get(addr) {
            return Ok(InterceptedService::new(channel.clone(), credentials));
        }
        let mut endpoint = Endpoint::from_shared(endpoint_uri(addr, config.tls.is_some()))
            .map_err(|err| Failure::NotSent(format!("bad node address {addr:?}: {err}")))?;
        if let Some(tls) = &config.tls {
            endpoint = endpoint
                .tls_config(tls.tonic())
                .map_err(|err| Failure::NotSent(format!("TLS settings for {addr}: {err}")))?;
        }
        let endpoint = endpoint
            .connect_timeout(config.connect_timeout.min(config.rpc_timeout))
            .tcp_nodelay(true)
            .local_address(config.local_address)
            .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(KEEP_ALIVE_TIMEOUT);
        let channel = endpoint.connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Ok(InterceptedService::new(channel, credentials))
    }

    /// One attempt: one RPC to one node.
    async fn send<C: KvCall>(&self, target: &Target, call: C, timeout: Duration) -> Result<C::Reply, Failure> {
        let channel = self.channel(&target.addr)?;
        let client = KvClient::new(channel)
            .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES);
        match tokio::time::timeout(timeout, call.send(client, timeout)).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(status)) => Err(classify(&status)),
            Err(_) => Err(timed_out(timeout)),
        }
    }

    /// Fetches the first shard map, retrying the seeds within the limits.
    async fn fetch_initial_map(&self) -> Result<(), Error> {
        let config = &self.inner.config;
        let deadline = Instant::now() + config.deadline;
        let mut backoff = Backoff::new(config.backoff_initial, config.backoff_max);
        let rpcs_per_round = u32::try_from(config.endpoints.len()).unwrap_or(u32::MAX);
        let mut attempts: u32 = 0;
        loop {
            let failure = match self.refresh_map(None, 0, deadline).await {
                Ok(_) => return Ok(()),
                // Asking again with the same credentials cannot help.
                Err(MapUnavailable(_, Some((code, message)))) => return Err(Error::refused(code, message)),
                Err(failure) => failure,
            };
            attempts = attempts.saturating_add(rpcs_per_round);
            if attempts >= config.max_attempts || Instant::now() >= deadline {
                return Err(Error::Unavailable {
                    attempts,
                    cause: format!("cannot reach any endpoint ({})", failure.0),
                });
            }
            sleep_until_or(deadline, backoff.next_delay()).await;
        }
    }

    /// Fetches the shard map from `prefer`, then the seeds, then every known
    /// node, until one answers with `version >= min_version` (or, failing
    /// that, takes the newest answer). Installs it unless the cache already
    /// holds a newer map; returns the cached map.
    pub(crate) async fn refresh_map(
        &self,
        prefer: Option<&str>,
        min_version: u64,
        deadline: Instant,
    ) -> Result<Arc<ShardMap>, MapUnavailable> {
        let _single_flight = self.inner.refresh_lock.lock().await;
        let cached = self.cached_map();
        if min_version > 0 && cached.version >= min_version {
            return Ok(cached);
        }
        let mut addrs: Vec<String> = Vec::new();
        let known = prefer
            .into_iter()
            .map(str::to_string)
            .chain(self.inner.config.endpoints.iter().map(|addr| addr.trim().to_string()))
            .chain(cached.nodes.iter().map(|node| node.addr.clone()));
        for addr in known {
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        let mut newest: Option<ShardMap> = None;
        let mut errors = CauseList::default();
        let mut denied = None;
        for addr in &addrs {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                errors.add("(remaining nodes)", "deadline reached".into());
                break;
            }
            let timeout = self.inner.config.rpc_timeout.min(remaining);
            match self.fetch_map_from(addr, timeout).await {
                Ok(map) => {
                    let enough = map.version >= min_version;
                    if newest.as_ref().is_none_or(|best| map.version > best.version) {
                        newest = Some(map);
                    }
                    if enough {
                        break;
                    }
                }
                Err(Failure::Rejected {
                    code: code @ (tonic::Code::Unauthenticated | tonic::Code::PermissionDenied),
                    message,
                }) => {
                    errors.add(addr, message.clone());
                    denied = Some((code, message));
                }
                Err(failure) => errors.add(addr, failure.describe()),
            }
        }
        let Some(map) = newest else {
            return Err(MapUnavailable(errors, denied));
        };
        let mut routing = self.write_routing();
        if map.version >= routing.map.version {
            tracing::debug!(version = map.version, shards = map.shards.len(), "installed shard map");
            routing.leaders.retain(|shard_id, _| map.shard(*shard_id).is_some());
            routing.map = Arc::new(map);
        }
        Ok(routing.map.clone())
    }

    async fn fetch_map_from(&self, addr: &str, timeout: Duration) -> Result<ShardMap, Failure> {
        let mut admin = admin_client(self.channel(addr)?);
        let mut request = tonic::Request::new(GetShardMapRequest {});
        request.set_timeout(timeout);
        let reply = match tokio::time::timeout(timeout, admin.get_shard_map(request)).await {
            Ok(Ok(reply)) => reply.into_inner(),
            Ok(Err(status)) => return Err(classify(&status)),
            Err(_) => return Err(timed_out(timeout)),
        };
        ShardMap::from_proto(reply).map_err(|err| Failure::NoRoute(format!("invalid shard map from {addr}: {err}")))
    }
}

/// No node answered a shard map request; the causes, by node.
#[derive(Debug)]
/// What went wrong on every node asked; the refusal if one refused the
/// client's credentials.
pub(crate) struct MapUnavailable(CauseList, Option<(tonic::Code, String)>);

impl From<MapUnavailable> for Failure {
    fn from(unavailable: MapUnavailable) -> Failure {
        Failure::NoRoute(format!("no node answered with the shard map ({})", unavailable.0))
    }
}

/// Causes grouped by message, so three nodes refusing connections read as
/// one line: `a:1,b:2,c:3: could not connect: Connection refused`.
#[derive(Debug, Default)]
struct CauseList {
    causes: Vec<(String, Vec<String>)>,
}

impl CauseList {
    fn add(&mut self, addr: &str, cause: String) {
        match self.causes.iter_mut().find(|(known, _)| *known == cause) {
            Some((_, addrs)) => addrs.push(addr.to_string()),
            None => self.causes.push((cause, vec![addr.to_string()])),
        }
    }
}

impl std::fmt::Display for CauseList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (index, (cause, addrs)) in self.causes.iter().enumerate() {
            if index > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {cause}", addrs.join(","))?;
        }
        Ok(())
    }
}

/// Adds the configured bearer token to every request.
#[derive(Clone)]
pub(crate) struct Credentials(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Credentials {
    /// The header for `config`'s token (validated printable ASCII).
    fn of(config: &ClientConfig) -> Credentials {
        let header =
            |t: &crate::config::Token| tonic::metadata::MetadataValue::try_from(format!("Bearer {}", t.0)).ok();
        Credentials(config.token.as_ref().and_then(header))
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A node's channel with the client's credentials on every request.
pub(crate) type Transport = InterceptedService<Channel, Credentials>;

pub(crate) fn admin_client(channel: Transport) -> AdminClient<Transport> {
    AdminClient::new(channel)
        .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES)
}

pub(crate) fn timed_out(timeout: Duration) -> Failure {
    Failure::MaybeProcessed(format!("no answer within {} ms", timeout.as_millis()))
}

/// Refuses empty keys before they cost a round trip.
pub(crate) fn check_key(key: &[u8]) -> Result<(), Error> {
    if key.is_empty() {
        return Err(Error::InvalidArgument("key must not be empty".into()));
    }
    Ok(())
}

/// Targets for `shard`, best first, without duplicates: replicas in
/// `local_region` (if given), the leader, the other replicas.
fn candidates(shard: &Shard, leader: Option<&LeaderHint>, local_region: Option<&str>) -> Vec<Target> {
    let mut targets: Vec<Target> = Vec::with_capacity(shard.replicas.len() + 1);
    let target = |replica: &crate::shard_map::Replica| Target { node_id: replica.node_id, addr: replica.addr.clone() };
    let local = shard.replicas.iter().filter(|r| local_region.is_some_and(|region| r.region == region)).map(target);
    let leader = leader.map(|hint| Target { node_id: hint.node_id, addr: hint.addr.clone() });
    let replicas = shard.replicas.iter().map(target);
    for target in local.chain(leader).chain(replicas) {
        if !targets.iter().any(|known| known.addr == target.addr) {
            targets.push(target);
        }
    }
    targets
}

/// Targets for a request (read or write) on an eventual shard, best first:
/// the replicas in `local_region` (if given), then the others, in map order.
/// Every replica accepts writes there, so no leader is involved.
fn eventual_candidates(shard: &Shard, local_region: Option<&str>) -> Vec<Target> {
    candidates(shard, None, local_region)
}

/// The server's message when `failure` is an eventual shard refusing an
/// operation it does not support (compare-and-swap, batch): a
/// `FAILED_PRECONDITION` from a shard the map says is eventual, or whose
/// message says so.
fn refused_as_eventual(failure: &Failure, eventual: bool) -> Option<String> {
    match failure {
        Failure::Rejected { code: tonic::Code::FailedPrecondition, message }
            if eventual || message.to_ascii_lowercase().contains("eventual") =>
        {
            Some(message.clone())
        }
        _ => None,
    }
}

/// The first candidate not yet tried (`fresh`), or the best one again when
/// all were tried. `None` when there are no candidates.
fn pick(candidates: &[Target], tried: &HashSet<String>) -> Option<(Target, bool)> {
    match candidates.iter().find(|target| !tried.contains(&target.addr)) {
        Some(target) => Some((target.clone(), true)),
        None => candidates.first().map(|target| (target.clone(), false)),
    }
}

/// The error for an operation whose retries ran out.
fn exhausted(may_have_applied: bool, shard_id: u64, attempts: u32, cause: String) -> Error {
    if may_have_applied { Error::Indeterminate { shard_id, cause } } else { Error::Unavailable { attempts, cause } }
}

/// A final answer, unless an earlier attempt may have applied the write:
/// then its outcome is still unknown.
fn final_error(may_have_applied: bool, shard_id: u64, cause: String, error: impl FnOnce() -> Error) -> Error {
    if may_have_applied { Error::Indeterminate { shard_id, cause } } else { error() }
}

pub(crate) async fn sleep_until_or(deadline: Instant, delay: Duration) {
    tokio::time::sleep_until(deadline.min(Instant::now() + delay)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard_map::Replica;

    fn replica(node_id: u64) -> Replica {
        Replica { node_id, addr: format!("127.0.0.1:700{node_id}"), region: "eu".into(), zone: "a".into() }
    }

    fn shard() -> Shard {
        Shard {
            shard_id: 1,
            epoch: 1,
            start: vec![],
            end: vec![],
            replicas: vec![replica(1), replica(2), replica(3)],
            preferred_leader_region: None,
            mode: ShardMode::Raft,
            adding_node: None,
            removing_node: None,
            merging_with: None,
            merge_frozen: false,
        }
    }

    fn addrs(targets: &[Target]) -> Vec<u64> {
        targets.iter().map(|t| t.node_id).collect()
    }

    #[test]
    fn cached_leader_goes_first_without_duplicates() {
        assert_eq!(addrs(&candidates(&shard(), None, None)), [1, 2, 3]);
        let hint = LeaderHint { node_id: 2, addr: "127.0.0.1:7002".into(), term: 4 };
        assert_eq!(addrs(&candidates(&shard(), Some(&hint), None)), [2, 1, 3]);
        let outsider = LeaderHint { node_id: 9, addr: "10.0.0.9:7001".into(), term: 4 };
        assert_eq!(addrs(&candidates(&shard(), Some(&outsider), None)), [9, 1, 2, 3]);
    }

    #[test]
    fn local_replicas_go_first_then_the_leader() {
        let mut s = shard();
        s.replicas[2].region = "us".into();
        let hint = LeaderHint { node_id: 2, addr: "127.0.0.1:7002".into(), term: 4 };
        assert_eq!(addrs(&candidates(&s, Some(&hint), Some("us"))), [3, 2, 1]);
        assert_eq!(addrs(&candidates(&s, Some(&hint), Some("mars"))), [2, 1, 3]);
    }

    #[test]
    fn eventual_shards_go_to_the_own_region_first_else_the_first_replica() {
        let mut s = shard();
        s.mode = ShardMode::Eventual;
        s.replicas[1].region = "us".into();
        s.replicas[2].region = "us".into();
        assert_eq!(addrs(&eventual_candidates(&s, Some("us"))), [2, 3, 1]);
        assert_eq!(addrs(&eventual_candidates(&s, Some("eu"))), [1, 2, 3]);
        assert_eq!(addrs(&eventual_candidates(&s, Some("mars"))), [1, 2, 3], "no replica there: the first");
        assert_eq!(addrs(&eventual_candidates(&s, None)), [1, 2, 3]);
    }

    #[tokio::test]
    async fn eventual_shards_ignore_the_leader_cache_whatever_the_level() {
        let config = ClientConfig::default().region(Some("us".into()));
        let client = test_client(config);
        let mut s = shard();
        s.replicas[2].region = "us".into();
        client.learn_leader(1, 2, "127.0.0.1:7002", 3);
        // Raft: leader-only requests go to the cached leader, others local first.
        assert_eq!(addrs(&client.candidates_for(&s, true)), [2, 1, 3]);
        assert_eq!(addrs(&client.candidates_for(&s, false)), [3, 2, 1]);
        s.mode = ShardMode::Eventual;
        assert_eq!(addrs(&client.candidates_for(&s, true)), [3, 1, 2]);
        assert_eq!(addrs(&client.candidates_for(&s, false)), [3, 1, 2]);
    }

    #[test]
    fn eventual_refusals_are_recognised() {
        let refusal =
            |message: &str| Failure::Rejected { code: tonic::Code::FailedPrecondition, message: message.to_string() };
        assert!(refused_as_eventual(&refusal("compare-and-swap is not supported here"), true).is_some());
        assert!(refused_as_eventual(&refusal("shard 3 is eventual: no compare-and-swap"), false).is_some());
        assert!(refused_as_eventual(&refusal("something else"), false).is_none());
        let other = Failure::Rejected { code: tonic::Code::Unimplemented, message: "eventual".into() };
        assert!(refused_as_eventual(&other, true).is_none());
        let err = Error::EventualShard { shard_id: 3, operation: "batch", message: "refused".into() };
        assert!(!err.is_retryable() && !err.is_indeterminate());
        assert!(err.to_string().contains("use put and delete"), "{err}");
    }

    #[test]
    fn pick_skips_tried_nodes_then_starts_over() {
        let targets = candidates(&shard(), None, None);
        let mut tried = HashSet::new();
        let (first, fresh) = pick(&targets, &tried).unwrap();
        assert_eq!((first.node_id, fresh), (1, true));
        tried.insert(first.addr);
        tried.insert("127.0.0.1:7002".to_string());
        let (third, fresh) = pick(&targets, &tried).unwrap();
        assert_eq!((third.node_id, fresh), (3, true));
        tried.insert(third.addr);
        let (again, fresh) = pick(&targets, &tried).unwrap();
        assert_eq!((again.node_id, fresh), (1, false));
        assert!(pick(&[], &tried).is_none());
    }

    #[test]
    fn exhaustion_of_a_write_that_may_have_applied_is_indeterminate() {
        assert!(matches!(exhausted(true, 4, 10, "timeout".into()), Error::Indeterminate { shard_id: 4, .. }));
        assert!(matches!(exhausted(false, 4, 10, "refused".into()), Error::Unavailable { attempts: 10, .. }));
        let rejected = || Error::InvalidArgument("value too large".into());
        assert!(matches!(final_error(true, 4, "x".into(), rejected), Error::Indeterminate { .. }));
        assert!(matches!(final_error(false, 4, "x".into(), rejected), Error::InvalidArgument(_)));
    }

    #[tokio::test]
    async fn connect_to_nothing_is_unavailable_and_fast() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let started = std::time::Instant::now();
        let err = ClientConfig::new([addr.clone()]).max_attempts(3).connect().await.unwrap_err();
        assert!(matches!(err, Error::Unavailable { .. }), "{err}");
        assert!(err.to_string().contains("cannot reach any endpoint"), "{err}");
        assert!(err.to_string().contains(&addr), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    }

    fn test_client(config: ClientConfig) -> Client {
        Client {
            inner: Arc::new(Inner {
                credentials: Credentials::of(&config),
                config,
                client_id: 42,
                sessions: Mutex::new(SessionTracker::new()),
                channels: Mutex::new(HashMap::new()),
                routing: RwLock::new(Routing::default()),
                refresh_lock: tokio::sync::Mutex::new(()),
            }),
        }
    }

    #[tokio::test]
    async fn concurrent_writes_track_first_incomplete() {
        let client = test_client(ClientConfig::default());
        let a = client.begin_write();
        let b = client.begin_write();
        assert_eq!(a.session().sequence, 1);
        assert_eq!(b.session().sequence, 2);
        assert_eq!(b.session().first_incomplete, 1);
        assert_eq!(b.session().client_id, 42);
        drop(a);
        assert_eq!(b.session().first_incomplete, 2);
        drop(b);
        let c = client.begin_write();
        assert_eq!((c.session().sequence, c.session().first_incomplete), (3, 3));
    }
}
