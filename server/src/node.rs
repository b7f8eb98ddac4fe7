//! A geokv node: its storage, its Raft groups, and its gRPC server.
//!
//! Start-up, in order:
//! 1. open RocksDB (one instance for every group);
//! 2. start the meta shard's group (if this node is an initial member), which
//!    restores the stored shard map, if any;
//! 3. start a group for every data shard with a replica here, per the stored
//!    map or, on a new cluster, the initial map computed from the shared
//!    configuration; pristine groups are initialized with their replica set
//!    (every replica does so with the same membership, which openraft allows);
//! 4. (concurrently with 2-3) serve gRPC; until step 3 is done the node
//!    answers `Unavailable: node is starting`;
//! 5. in the background, propose the initial map to the meta shard until it
//!    holds one (a no-op once any node succeeded).
//!
//! Shutdown stops the gRPC server first, then every Raft group.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use openraft::BasicNode;
use openraft::Instant as _;
use openraft::async_runtime::WatchReceiver;
use openraft::error::{InitializeError, RaftError};
use tokio::net::TcpListener;
use tokio::sync::{RwLock, watch};

use crate::config::Config;
use crate::eventual::{EcNode, EcShard};
use crate::metrics::Metrics;
use crate::raft::command::SplitCommand;
use crate::raft::command::{Command, CommandResult, MetaCommand};
use crate::raft::log_store::ShardLogStore;
use crate::raft::network::{PeerTimeouts, Peers, ShardNetwork};
use crate::raft::read_index::{ReadIndexBatcher, Round, RoundError, RoundResult, leader_round, lease_read};
use crate::raft::state_machine::{FrozenShards, SessionLimits, ShardKind, SplitNotice, has_stored_range};
use crate::raft::{ShardRaft, ShardStateMachine};
use crate::service;
use crate::shards::{META_SHARD_ID, NodeState, ShardDesc, ShardMap};
use crate::storage::Storage;
use geokv_proto::raft::RaftMessage;
use geokv_proto::raft::raft_client::RaftClient;

/// How long a stopping node lets in-flight requests finish before it drops
/// the connections that are still open.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How long lease and bounded reads stay refused after a peer's clock was
/// seen beyond `max_clock_offset_ms`.
const CLOCK_SUSPECT_PERIOD: Duration = Duration::from_secs(10);

/// A voter may lag the leader by this many entries and still be handed
/// leadership (it catches up as leader before serving).
const MAX_TRANSFER_LAG_ENTRIES: u64 = 16;

/// How often a leader looks for a newer quorum acknowledgement to push as a
/// safe time.
const SAFE_TIME_POLL: Duration = Duration::from_millis(20);

/// How long after a follower last asked for a read index its shard's
/// leader keeps pushing safe times (see [`push_safe_times`]).
pub const SAFE_TIME_DEMAND: Duration = Duration::from_secs(60);

/// How often the background bootstrapper retries proposing the initial map.
const BOOTSTRAP_RETRY_INTERVAL: Duration = Duration::from_millis(200);

/// How long an operator's request to cancel a move stays in force on a node
/// (it reaches every node; the one carrying the move out acts on it).
pub const MOVE_CANCEL_LAPSE: Duration = Duration::from_secs(30);

pub struct Node {
    /// The times this node, as a leader, writes into write entries (see
    /// [`crate::raft::log_clock`]).
    pub log_clock: Arc<crate::raft::log_clock::LogClock>,
    pub config: Arc<Config>,
    /// This node as a member (id, address, region, zone).
    pub me: crate::config::Member,
    pub storage: Arc<Storage>,
    pub metrics: Arc<Metrics>,
    /// Client requests being served, at most `limits.max_inflight_requests`,
    /// and a short fair queue for the rest ([`crate::admission`]).
    pub admission: crate::admission::Admission,
    /// Room for read results until their clients took them, at most
    /// `limits.max_response_bytes` ([`crate::admission::ResponseBudget`]).
    pub responses: crate::admission::ResponseBudget,
    /// Moves an operator asked to cancel, by shard, with when: the node
    /// that carries a move out (the shard's leader, or the meta leader for
    /// an eventual shard) gives it up if it still can
    /// ([`Node::cancel_requested`]).
    move_cancels: Mutex<HashMap<u64, (crate::shards::ReplicaChange, Instant)>>,
    /// When a follower last asked this node, as a shard's leader, for a
    /// read index (a follower read, or a bounded read that fell back): only
    /// such shards get safe-time heartbeats ([`SAFE_TIME_DEMAND`]).
    safe_time_wanted: Mutex<HashMap<u64, Instant>>,
    /// Channels to every peer node, shared by all groups and by follower
    /// reads and safe-time pushes.
    pub peers: Arc<Peers>,
    groups: RwLock<BTreeMap<u64, ShardRaft>>,
    /// Replicas of eventual (leaderless) shards, and what they share.
    eventual: Mutex<BTreeMap<u64, Arc<EcShard>>>,
    pub ec: Arc<EcNode>,
    /// Per shard: batched ReadIndex rounds run here as leader, and batched
    /// read-index requests sent to the leader as follower.
    leader_reads: Mutex<HashMap<u64, Arc<ReadIndexBatcher>>>,
    follower_reads: Mutex<HashMap<u64, Arc<ReadIndexBatcher>>>,
    /// Per shard: the newest safe time its leader pushed to this node.
    safe_times: Mutex<HashMap<u64, SafeTime>>,
    /// Set when a peer's clock was seen further off than the configured
    /// bound: lease and bounded reads are refused until then.
    clock_suspect_until: Mutex<Option<Instant>>,
    map_rx: watch::Receiver<Arc<ShardMap>>,
    map_tx: watch::Sender<Arc<ShardMap>>,
    /// The map a new cluster starts with (computed from the configuration).
    initial_map: Arc<ShardMap>,
    /// Right halves of splits the local data shards applied, to start.
    split_tx: tokio::sync::mpsc::UnboundedSender<SplitNotice>,
    split_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<SplitNotice>>>,
    /// Data shards frozen here for a merge (their state machines keep it).
    frozen: FrozenShards,
    /// Held while a data group is started after start-up or retired, so
    /// that the split notices, the map watcher and the retirer never race on
    /// one shard.
    pub(crate) starting: tokio::sync::Mutex<()>,
    /// Data shards this node was added to as a learner and that have not
    /// installed their first snapshot: their data is not here yet, so they
    /// accept no log entries (see `awaits_snapshot`).
    awaiting_snapshot: Mutex<HashSet<u64>>,
    /// Data shards whose group could not start on this node (corrupt or
    /// unreadable state on disk), and why: the node serves its other shards,
    /// reports these in its status, and does not retry them until it
    /// restarts (see `failed_groups`).
    failed: Mutex<BTreeMap<u64, String>>,
    ready: AtomicBool,
    started: Instant,
    /// When the meta shard's leader last sent this replica entries or a
    /// heartbeat (readiness: a follower cut off from it is not ready).
    meta_leader_heard: Mutex<Option<Instant>>,
}

impl Node {
    /// Validates the configuration and opens storage. The node serves no
    /// requests until [`Node::start_groups`] has run (`serve` does both).
    pub fn open(config: Config) -> anyhow::Result<Arc<Node>> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
        let trigger = &config.fault_fail_fsync_when_exists;
        let fault = (!trigger.as_os_str().is_empty()).then_some(trigger.as_path());
        if let Some(trigger) = fault {
            tracing::warn!(
                trigger = %trigger.display(),
                "FAULT INJECTION: every WAL fsync fails once the trigger file exists (a test setting)"
            );
        }
        let storage = Storage::open_with_fault(&config.data_dir.join("db"), fault)
            .with_context(|| format!("cannot open storage under {}", config.data_dir.display()))?;
        anyhow::ensure!(config.node_id != 0, "node id not set: a joining node gets one before it opens");
        // A joining node starts with no map: it learns the cluster's as a
        // learner of the meta shard.
        let initial_map = Arc::new(if config.joins() {
            ShardMap::default()
        } else {
            let nodes: Vec<_> = config.initial_cluster.iter().map(|m| m.desc()).collect();
            ShardMap::initial(
                &nodes,
                &config.split_point_bytes(),
                &config.eventual_range_bytes()?,
                config.replication_factor,
            )?
        });
        let (map_tx, map_rx) = watch::channel(initial_map.clone());
        let r = &config.raft;
        let log_clock = Arc::new(crate::raft::log_clock::LogClock::new(r.max_clock_offset_ms));
        if r.unsafe_trust_clocks {
            tracing::warn!(
                "UNSAFE: unsafe_trust_clocks is on: peers' clocks are believed however far off they are; lease and \
                 bounded reads may return stale data without saying so (a test harness setting, never for production)"
            );
        }
        if r.unsafe_no_vote_quarantine {
            tracing::warn!(
                "UNSAFE: unsafe_no_vote_quarantine is on: after a restart this node votes and campaigns at once, \
                 breaking the lease it may have promised its old leader; lease reads may return stale data (a test \
                 harness setting, never for production)"
            );
        }
        let tls = crate::tls::TlsFiles::from_config(&config.tls).map(crate::tls::Tls::load).transpose()?;
        let peers = Peers::new(
            PeerTimeouts {
                connect: Duration::from_millis(r.election_timeout_min_ms),
                keepalive_interval: Duration::from_millis(r.heartbeat_interval_ms.max(500)),
                keepalive_timeout: Duration::from_millis(r.election_timeout_min_ms),
                snapshot: Duration::from_millis(r.snapshot_send_timeout_ms),
                local_ip: config.outgoing_ip.parse().ok(),
            },
            tls,
        );
        let metrics = Arc::new(Metrics::default());
        let (split_tx, split_rx) = tokio::sync::mpsc::unbounded_channel();
        let ec = EcNode::open(
            config.node_id,
            storage.clone(),
            metrics.clone(),
            config.eventual.clone(),
            config.raft.max_clock_offset_ms,
        )?;
        Ok(Arc::new(Node {
            me: config.me(),
            admission: crate::admission::Admission::new(config.limits.max_inflight_requests),
            responses: crate::admission::ResponseBudget::new(config.limits.max_response_bytes),
            move_cancels: Mutex::default(),
            safe_time_wanted: Mutex::default(),
            config: Arc::new(config),
            storage,
            metrics,
            peers,
            groups: RwLock::new(BTreeMap::new()),
            eventual: Mutex::default(),
            ec,
            leader_reads: Mutex::default(),
            follower_reads: Mutex::default(),
            safe_times: Mutex::default(),
            clock_suspect_until: Mutex::default(),
            map_rx,
            map_tx,
            initial_map,
            split_tx,
            split_rx: Mutex::new(Some(split_rx)),
            frozen: FrozenShards::default(),
            starting: tokio::sync::Mutex::new(()),
            awaiting_snapshot: Mutex::default(),
            failed: Mutex::default(),
            ready: AtomicBool::new(false),
            started: Instant::now(),
            meta_leader_heard: Mutex::new(None),
            log_clock,
        }))
    }

    /// Starts every Raft group this node hosts, then marks the node ready
    /// and starts the shard map bootstrapper.
    pub async fn start_groups(self: &Arc<Self>) -> anyhow::Result<()> {
        let raft_config = Arc::new(self.config.openraft().validate()?);
        let peers = self.peers.clone();
        let limits = SessionLimits {
            ttl_ms: self.config.limits.session_ttl_ms,
            gc_interval_ms: (self.config.limits.session_ttl_ms / 10).max(1_000),
        };
        let me = self.config.node_id;

        // The meta shard replicates over every initial member; a joined node
        // is added to it (as a learner first) by its leader.
        let meta_voters: Vec<u64> = self.initial_map.nodes.iter().map(|n| n.id).collect();
        let meta_kind = ShardKind::Meta { map_tx: self.map_tx.clone() };
        let meta_sm = ShardStateMachine::new(META_SHARD_ID, meta_kind, self.storage.clone(), limits)?;
        let voters = (!self.config.joins()).then_some(meta_voters.as_slice());
        let meta = self.start_group(META_SHARD_ID, meta_sm, voters, &raft_config, &peers).await?;
        self.groups.write().await.insert(META_SHARD_ID, meta);
        if let Some(removed) = self.removed_error(&self.shard_map()) {
            return Err(removed);
        }

        // The stored map (restored by the meta state machine) wins over the
        // initial one. Each replica's range comes from its own stored record
        // when it has one: the map records a split before the shard's log
        // applies it.
        //
        // A data shard whose stored state cannot be read stops alone: the
        // node serves its other shards (the meta shard is no such option).
        let map = self.shard_map();
        let mut data = Vec::new();
        for shard in map.shards_on(me).filter(|s| !s.is_eventual()) {
            let kind = ShardKind::Data { start: shard.start.clone(), end: shard.end.clone(), epoch: shard.epoch };
            let opened = self.data_state_machine(shard.id, kind, limits).and_then(|sm| Ok((sm.range_is_stored()?, sm)));
            match opened {
                Ok((is_stored, sm)) => data.push((shard.clone(), is_stored, sm)),
                Err(e) => self.group_failed(shard.id, &e.into()),
            }
        }
        let stored: Vec<(u64, crate::shards::KeyRange)> = data
            .iter()
            .filter(|(_, is_stored, _)| *is_stored)
            .filter_map(|(d, _, sm)| sm.data_range().map(|r| (d.id, r)))
            .collect();
        for (shard, is_stored, sm) in data {
            if !is_stored {
                // A split made this shard, and this replica's left half has
                // not applied it (or skipped it, through a snapshot): the
                // split's apply starts it, or the data here is not its own.
                let born_here = self.initial_map.shard(shard.id).is_some_and(|s| s.start == shard.start);
                let overlapping = stored.iter().find(|(id, r)| *id != shard.id && ranges_overlap(r, &shard));
                if let Some((left, _)) = overlapping {
                    tracing::info!(shard = shard.id, left, "waiting for the local left half to apply the split");
                    continue;
                }
                if !born_here {
                    tracing::warn!(
                        shard = shard.id,
                        "this replica missed the split that made shard {} (it installed a snapshot past it); \
                         not starting it: the shard runs on its other replicas",
                        shard.id
                    );
                    continue;
                }
                sm.persist_range().await?;
            }
            match self.start_group(shard.id, sm, Some(&shard.replicas), &raft_config, &peers).await {
                Ok(raft) => {
                    self.groups.write().await.insert(shard.id, raft);
                }
                Err(e) => self.group_failed(shard.id, &e),
            }
        }
        // Replicas being added here (a move under way): learners, which get
        // the shard's data by snapshot from its leader.
        for desc in map.shards.iter().filter(|s| s.adding() == Some(me) && !s.is_eventual()) {
            self.start_learner_group(desc, &raft_config, limits).await?;
        }
        self.ready.store(true, Ordering::Release);
        self.start_eventual_shards()?;
        tokio::spawn(watch_for_new_shards(self.clone(), raft_config.clone(), limits));
        if !self.config.joins() {
            tokio::spawn(bootstrap_map(self.clone()));
        }
        tokio::spawn(push_safe_times(self.clone()));
        tokio::spawn(place_leaders(self.clone()));
        if let Some(rx) = self.split_rx.lock().expect("split receiver").take() {
            tokio::spawn(start_split_halves(self.clone(), rx, raft_config.clone(), limits));
        }
        tokio::spawn(finish_splits(self.clone()));
        tokio::spawn(crate::topology::carry_out_replica_changes(self.clone()));
        tokio::spawn(crate::topology::retire_replicas(self.clone()));
        tokio::spawn(crate::topology::manage_members(self.clone()));
        Ok(())
    }

    /// Records that shard `shard`'s group cannot run on this node, and why
    /// (logged once, at error level).
    fn group_failed(&self, shard: u64, error: &anyhow::Error) {
        let why = format!("{error:#}");
        tracing::error!(
            shard,
            cause = %why,
            "shard {shard}'s state on this node cannot be read: its group is not started here (the node serves its \
             other shards; the shard runs on its other replicas). Move the replica away (kvctl shard move) or \
             restore this node's data."
        );
        self.failed.lock().expect("failed groups").insert(shard, why);
    }

    /// Data shards whose group could not start on this node, and why.
    pub fn failed_groups(&self) -> BTreeMap<u64, String> {
        self.failed.lock().expect("failed groups").clone()
    }

    /// An error saying this node was removed, if the map says so.
    fn removed_error(&self, map: &ShardMap) -> Option<anyhow::Error> {
        let me = self.config.node_id;
        map.node(me).filter(|n| n.state == NodeState::Removed).map(|_| {
            anyhow::anyhow!(
                "node {me} was removed from the cluster (shard map version {}): a removed node's id is never \
                 reused and it is let into no group; this data directory is no longer a member's",
                map.version
            )
        })
    }

    /// Resolves, with the reason, once the shard map records this node as
    /// removed (it then stops, as an etcd member removed from its cluster
    /// does); pending for as long as it is a member.
    pub async fn until_removed(&self) -> anyhow::Error {
        let mut rx = self.map_rx.clone();
        loop {
            if let Some(e) = self.removed_error(&rx.borrow_and_update()) {
                return e;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    async fn start_group(
        &self,
        shard: u64,
        sm: ShardStateMachine,
        voters: Option<&[u64]>,
        raft_config: &Arc<openraft::Config>,
        peers: &Arc<Peers>,
    ) -> anyhow::Result<ShardRaft> {
        let me = self.config.node_id;
        let tail = Arc::new(crate::raft::log_tail::LogTail::default());
        let sm = sm.with_log_tail(tail.clone());
        let log = ShardLogStore::new(shard, self.storage.clone(), tail);
        let network = ShardNetwork::new(shard, peers.clone());
        // A restarted node may have promised its old leader not to vote for
        // anyone else for the lease that leader serves reads on; openraft
        // forgets that on restart, and voting for itself breaks it as surely
        // as voting for a peer. So during the quarantine (see
        // `Config::vote_quarantine`) the group neither votes
        // (`service::raft`) nor campaigns: elections start disabled and are
        // enabled when it ends.
        let quarantine_left = self.config.vote_quarantine().saturating_sub(self.uptime());
        let raft_config = if quarantine_left.is_zero() {
            raft_config.clone()
        } else {
            Arc::new(openraft::Config { enable_elect: false, ..(**raft_config).clone() })
        };
        let raft = ShardRaft::new(me, raft_config, network, log, sm)
            .await
            .with_context(|| format!("cannot start the Raft group of shard {shard}"))?;
        if !quarantine_left.is_zero() {
            let raft = raft.clone();
            tokio::spawn(async move {
                tokio::time::sleep(quarantine_left).await;
                raft.runtime_config().elect(true);
                tracing::debug!(shard, "vote quarantine over: elections enabled");
            });
        }
        if let Some(voters) = voters
            && !raft.is_initialized().await?
        {
            let members: BTreeMap<u64, BasicNode> = voters
                .iter()
                .map(|id| {
                    let map = self.shard_map();
                    let node = map.node(*id).or_else(|| self.initial_map.node(*id));
                    let addr = node.map(|n| n.addr.clone()).unwrap_or_default();
                    (*id, BasicNode::new(addr))
                })
                .collect();
            match raft.initialize(members).await {
                Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => anyhow::bail!("cannot initialize shard {shard}: {e}"),
            }
        }
        tokio::spawn(self.metrics.clone().watch_group(shard, raft.metrics()));
        match voters {
            Some(voters) => tracing::info!(shard, voters = ?voters, "raft group started"),
            None => tracing::info!(shard, "raft group started as a learner: the leader adds it"),
        }
        Ok(raft)
    }

    /// The state machine of data shard `shard` here, reporting its splits
    /// and publishing its freeze.
    fn data_state_machine(
        &self,
        shard: u64,
        kind: ShardKind,
        limits: SessionLimits,
    ) -> std::io::Result<ShardStateMachine> {
        ShardStateMachine::new(shard, kind, self.storage.clone(), limits)?
            .with_split_notices(self.split_tx.clone())
            .with_frozen_shards(self.frozen.clone())
            .with_log_clock(self.log_clock.clone())
    }

    /// Whether data shard `shard`'s replica here is frozen for a merge (it
    /// serves no more reads: its keys are the left shard's from its end on).
    pub fn is_frozen(&self, shard: u64) -> bool {
        self.frozen.read().expect("frozen shards").contains_key(&shard)
    }

    /// The freeze record of data shard `shard`'s replica here, if frozen
    /// (as its state machine last published it).
    pub fn frozen_record(&self, shard: u64) -> Option<crate::raft::state_machine::FrozenRecord> {
        self.frozen.read().expect("frozen shards").get(&shard).copied()
    }

    /// Starts `shard`'s data group unless it runs already; false if it did.
    async fn start_data_group_once(
        &self,
        shard: u64,
        kind: ShardKind,
        members: Option<&[u64]>,
        raft_config: &Arc<openraft::Config>,
        limits: SessionLimits,
    ) -> anyhow::Result<bool> {
        let _one_at_a_time = self.starting.lock().await;
        if self.group(shard).await.is_some() {
            return Ok(false);
        }
        let sm = self.data_state_machine(shard, kind, limits)?;
        let raft = self.start_group(shard, sm, members, raft_config, &self.peers).await?;
        self.groups.write().await.insert(shard, raft);
        Ok(true)
    }

    /// Starts the Raft data shards of the map placed here that do not run
    /// yet but whose range this replica stores: right halves of splits it
    /// applied while its copy of the map lagged (at start-up such a shard is
    /// not in the stored map yet). A shard without a stored range is left
    /// alone: its data here is not its own (see `start_groups`).
    async fn start_stored_shards(&self, raft_config: &Arc<openraft::Config>, limits: SessionLimits) {
        let map = self.shard_map();
        for desc in map.shards.iter().filter(|s| s.adding() == Some(self.config.node_id) && !s.is_eventual()) {
            if self.group(desc.id).await.is_none()
                && let Err(e) = self.start_learner_group(desc, raft_config, limits).await
            {
                tracing::error!(shard = desc.id, cause = %e, "cannot start a replica being added here");
            }
        }
        for desc in map.shards_on(self.config.node_id).filter(|s| !s.is_eventual()) {
            if self.group(desc.id).await.is_some() || self.failed.lock().expect("failed groups").contains_key(&desc.id)
            {
                continue;
            }
            if !matches!(has_stored_range(&self.storage, desc.id), Ok(true)) {
                continue;
            }
            let kind = ShardKind::Data { start: desc.start.clone(), end: desc.end.clone(), epoch: desc.epoch };
            match self.start_data_group_once(desc.id, kind, Some(&desc.replicas), raft_config, limits).await {
                Ok(true) => tracing::info!(shard = desc.id, "started a shard the map now places here"),
                Ok(false) => {}
                Err(e) => tracing::error!(shard = desc.id, cause = %e, "cannot start a shard the map places here"),
            }
        }
    }

    /// Starts the group of a replica being added here (a learner: not
    /// initialized, its leader adds it and sends it a snapshot). Until that
    /// snapshot is installed it refuses log entries: a leader that has not
    /// purged its log would otherwise replay it from the start, and a
    /// shard made by a split has data that no entry of its own log wrote.
    async fn start_learner_group(
        &self,
        desc: &ShardDesc,
        raft_config: &Arc<openraft::Config>,
        limits: SessionLimits,
    ) -> anyhow::Result<()> {
        if !has_stored_range(&self.storage, desc.id)? {
            self.awaiting_snapshot.lock().expect("awaiting snapshot").insert(desc.id);
        }
        let kind = ShardKind::Data { start: desc.start.clone(), end: desc.end.clone(), epoch: desc.epoch };
        if self.start_data_group_once(desc.id, kind, None, raft_config, limits).await? {
            tracing::info!(shard = desc.id, "started a replica being added here (a learner)");
        }
        Ok(())
    }

    /// Whether `shard`'s replica here was added as a learner and has not
    /// installed its first snapshot (so must not take log entries).
    pub fn awaits_snapshot(&self, shard: u64) -> bool {
        let mut awaiting = self.awaiting_snapshot.lock().expect("awaiting snapshot");
        if !awaiting.contains(&shard) {
            return false;
        }
        if matches!(has_stored_range(&self.storage, shard), Ok(true)) {
            awaiting.remove(&shard);
            return false;
        }
        true
    }

    /// Stops `shard`'s group here and deletes what this node stores of it:
    /// its Raft state and sessions, and its user keys in `range` (the part
    /// of the shard's range this replica owned; none for a learner that
    /// never received the data). For a replica the shard's group no longer
    /// has (the map records that it left).
    pub(crate) async fn retire_group(&self, shard: u64, range: Option<&crate::shards::KeyRange>) -> anyhow::Result<()> {
        let _one_at_a_time = self.starting.lock().await;
        let Some(raft) = self.groups.write().await.remove(&shard) else { return Ok(()) };
        self.log_clock.forget(shard);
        if let Err(e) = raft.shutdown().await {
            tracing::warn!(shard, cause = %e, "raft group did not shut down cleanly");
        }
        self.leader_reads.lock().expect("read batchers").remove(&shard);
        self.follower_reads.lock().expect("read batchers").remove(&shard);
        self.safe_times.lock().expect("safe times").remove(&shard);
        self.awaiting_snapshot.lock().expect("awaiting snapshot").remove(&shard);
        self.frozen.write().expect("frozen shards").remove(&shard);
        let mut batch = self.storage.batch();
        if let Some((start, end)) = range {
            batch.clear_data_range(start, end.as_deref())?;
        }
        batch.forget_shard(shard);
        self.storage.write_durable(batch)?.await?;
        tracing::info!(shard, "replica removed from this node, its data deleted");
        Ok(())
    }

    /// The Raft group of `shard`, if this node hosts it.
    pub async fn group(&self, shard: u64) -> Option<ShardRaft> {
        self.groups.read().await.get(&shard).cloned()
    }

    /// Every hosted group, by shard id.
    pub async fn groups(&self) -> Vec<(u64, ShardRaft)> {
        self.groups.read().await.iter().map(|(id, r)| (*id, r.clone())).collect()
    }

    /// Makes the eventual replicas here match the current map: starts a
    /// replica (and its shippers and collector) of every eventual shard
    /// placed on this node (a replica, or the one being added) and not
    /// running yet; gives running ones their members as the map has them now
    /// (shippers for new members); and stops and deletes a replica the map
    /// no longer places here (it left the shard by a replica change).
    fn start_eventual_shards(self: &Arc<Self>) -> anyhow::Result<()> {
        let me = self.config.node_id;
        let map = self.shard_map();
        for desc in map.placed_on(me).filter(|s| s.is_eventual()) {
            if let Some(running) = self.eventual_shard(desc.id) {
                let added = running.update(desc).with_context(|| format!("eventual shard {}", desc.id))?;
                for peer in added {
                    tokio::spawn(crate::eventual::ship::run(self.clone(), running.clone(), peer));
                }
                continue;
            }
            let shard = EcShard::open(self.ec.clone(), desc.clone())
                .with_context(|| format!("cannot open eventual shard {}", desc.id))?;
            self.eventual.lock().expect("eventual shards").insert(desc.id, shard.clone());
            let members: Vec<u64> = desc.replicas.iter().copied().chain(desc.adding()).collect();
            for peer in members.into_iter().filter(|p| *p != me) {
                tokio::spawn(crate::eventual::ship::run(self.clone(), shard.clone(), peer));
            }
            tokio::spawn(collect_eventual(self.clone(), shard));
            tracing::info!(shard = desc.id, replicas = ?desc.replicas, adding = ?desc.adding(), "eventual shard started");
        }
        let left: Vec<Arc<EcShard>> = self
            .eventual_shards()
            .into_iter()
            .filter(|r| map.shard(r.id()).is_some_and(|d| d.is_eventual() && !d.placed_on(me)))
            .collect();
        for replica in left {
            self.eventual.lock().expect("eventual shards").remove(&replica.id());
            let node = self.clone();
            tokio::spawn(async move {
                match replica.retire().await {
                    Ok(()) => tracing::info!(shard = replica.id(), "eventual replica left its shard: data deleted"),
                    Err(e) => tracing::error!(shard = replica.id(), cause = %e, "cannot delete a replica that left"),
                }
                drop(node);
            });
        }
        Ok(())
    }

    /// Records that an operator asked to cancel `change` of `shard`; it
    /// lapses after [`MOVE_CANCEL_LAPSE`] (the operator's request has
    /// long returned by then; asking again renews it).
    pub fn request_cancel(&self, shard: u64, change: crate::shards::ReplicaChange) {
        self.move_cancels.lock().expect("move cancels").insert(shard, (change, Instant::now()));
    }

    /// Whether an operator asked, recently, to cancel `change` of `shard`.
    pub fn cancel_requested(&self, shard: u64, change: crate::shards::ReplicaChange) -> bool {
        let mut cancels = self.move_cancels.lock().expect("move cancels");
        cancels.retain(|_, (_, at)| at.elapsed() < MOVE_CANCEL_LAPSE);
        cancels.get(&shard).is_some_and(|(c, _)| *c == change)
    }

    /// Forgets cancels of moves the map no longer records (cancelled or
    /// made): a later move of the same replica is a new one.
    fn prune_cancels(&self) {
        let map = self.shard_map();
        let mut cancels = self.move_cancels.lock().expect("move cancels");
        cancels.retain(|shard, (change, _)| map.shard(*shard).is_some_and(|d| d.change == Some(*change)));
    }

    /// The shards whose followers read recently (see [`push_safe_times`]).
    fn safe_time_wanted_shards(&self) -> Vec<u64> {
        let mut wanted = self.safe_time_wanted.lock().expect("safe-time demand");
        wanted.retain(|_, at| at.elapsed() < SAFE_TIME_DEMAND);
        wanted.keys().copied().collect()
    }

    /// Forgets a cancel that can no longer be carried out.
    pub fn forget_cancel(&self, shard: u64) {
        self.move_cancels.lock().expect("move cancels").remove(&shard);
    }

    /// The replica of eventual shard `shard` on this node, if any.
    pub fn eventual_shard(&self, shard: u64) -> Option<Arc<EcShard>> {
        self.eventual.lock().expect("eventual shards").get(&shard).cloned()
    }

    /// Every eventual shard replica on this node.
    pub fn eventual_shards(&self) -> Vec<Arc<EcShard>> {
        self.eventual.lock().expect("eventual shards").values().cloned().collect()
    }

    /// The current shard map: the meta shard's once bootstrapped, before that
    /// the initial map every member computes identically.
    pub fn shard_map(&self) -> Arc<ShardMap> {
        self.map_rx.borrow().clone()
    }

    /// How long a request may wait for Raft (`limits.request_timeout_ms`).
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.config.limits.request_timeout_ms)
    }

    /// A read index from this leader's lease (no round trip), refused when
    /// the lease cannot be proven or this node's clock is suspect.
    pub async fn lease_read_index(&self, raft: &ShardRaft) -> RoundResult {
        if !self.clock_ok() {
            return Err(RoundError::Remote("clock offset beyond bound: lease refused".into()));
        }
        lease_read(raft, self.config.lease()).await
    }

    /// A linearizable read index confirmed by this node as the shard's
    /// leader (batched with every concurrent caller).
    pub async fn leader_read_index(&self, shard: u64, raft: &ShardRaft) -> RoundResult {
        let batcher = self.leader_reads.lock().expect("read batchers").entry(shard).or_default().clone();
        let round = leader_round(raft.clone(), shard, self.peers.clone(), self.request_timeout());
        batcher.confirm(round, self.metrics.clone()).await
    }

    /// The read index this node, as leader, gives a follower: from its lease
    /// when it holds one (no round trip, so a follower read costs one round
    /// trip to the leader), else from a batched ReadIndex round.
    pub async fn read_index_for_follower(&self, shard: u64, raft: &ShardRaft) -> RoundResult {
        self.safe_time_wanted.lock().expect("safe-time demand").insert(shard, Instant::now());
        match self.lease_read_index(raft).await {
            Ok(index) => Ok(index),
            Err(_) => self.leader_read_index(shard, raft).await,
        }
    }

    /// A linearizable read index for a read served by this replica: from the
    /// shard's leader, one round trip shared by concurrent callers (or
    /// locally if this node leads).
    pub async fn follower_read_index(self: &Arc<Self>, shard: u64, raft: &ShardRaft) -> RoundResult {
        let batcher = self.follower_reads.lock().expect("read batchers").entry(shard).or_default().clone();
        let node = self.clone();
        let raft = raft.clone();
        let round: Round = Arc::new(move || {
            let (node, raft) = (node.clone(), raft.clone());
            Box::pin(async move { node.ask_leader_for_read_index(shard, &raft).await })
        });
        batcher.confirm(round, self.metrics.clone()).await
    }

    /// Proposes an internal command to `shard`'s leader, wherever it is
    /// (trying the leader this node knows, then every replica), retrying
    /// for a bounded time while leadership is unknown.
    pub async fn propose_internal(&self, shard: u64, cmd: &Command) -> Result<CommandResult, String> {
        let deadline = Instant::now() + self.request_timeout();
        let mut last_error = String::from("no replica answered");
        while Instant::now() < deadline {
            let map = self.shard_map();
            let mut candidates: Vec<u64> = Vec::new();
            if let Some(raft) = self.group(shard).await
                && let Some(leader) = raft.current_leader().await
            {
                candidates.push(leader);
            }
            match map.shard(shard) {
                Some(desc) => candidates.extend(&desc.replicas),
                None if shard == META_SHARD_ID => {
                    candidates.extend(map.nodes.iter().filter(|n| n.state != NodeState::Removed).map(|n| n.id))
                }
                None => return Err(format!("no shard {shard} in the map")),
            }
            for id in candidates {
                let Some(addr) = map.node(id).map(|n| n.addr.clone()) else { continue };
                let mut client = RaftClient::new(self.peers.channel(&addr));
                let payload = crate::raft::encode(cmd);
                let mut request = tonic::Request::new(RaftMessage { shard_id: shard, payload, error: String::new() });
                request.set_timeout(self.request_timeout());
                match client.propose(request).await {
                    Ok(reply) if reply.get_ref().error.is_empty() => {
                        return crate::raft::decode(&reply.get_ref().payload).map_err(|e| e.to_string());
                    }
                    Ok(reply) => last_error = format!("node {id}: {}", reply.get_ref().error),
                    Err(status) => last_error = format!("node {id}: {}", status.message()),
                }
            }
            tokio::time::sleep(BOOTSTRAP_RETRY_INTERVAL).await;
        }
        Err(last_error)
    }

    /// Whether the node at `addr` answers its status, within the request
    /// timeout. Only an answer counts: any error (a refused connection, or a
    /// reset one that a just-killed peer leaves in the channel) does not.
    pub async fn probe_peer(&self, addr: &str) -> Result<geokv_proto::admin::NodeStatusResponse, String> {
        let mut client = geokv_proto::admin::admin_client::AdminClient::new(self.peers.channel(addr));
        let mut request = tonic::Request::new(geokv_proto::admin::NodeStatusRequest {});
        request.set_timeout(self.request_timeout());
        match tokio::time::timeout(self.request_timeout(), client.node_status(request)).await {
            Err(_) => Err(format!("no answer within {:?}", self.request_timeout())),
            Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
            Ok(Ok(reply)) => Ok(reply.into_inner()),
        }
    }

    async fn ask_leader_for_read_index(&self, shard: u64, raft: &ShardRaft) -> RoundResult {
        let me = self.config.node_id;
        let leader = raft.current_leader().await.ok_or_else(|| RoundError::Remote("no known leader".into()))?;
        if leader == me {
            return self.read_index_for_follower(shard, raft).await;
        }
        let addr = self
            .shard_map()
            .node(leader)
            .map(|n| n.addr.clone())
            .ok_or_else(|| RoundError::Remote(format!("leader {leader} is not in the shard map")))?;
        let mut client = RaftClient::new(self.peers.channel(&addr));
        let mut request =
            tonic::Request::new(RaftMessage { shard_id: shard, payload: Vec::new(), error: String::new() });
        request.set_timeout(self.request_timeout());
        let reply = match tokio::time::timeout(self.request_timeout(), client.read_index(request)).await {
            Err(_) => return Err(RoundError::TimedOut),
            Ok(Err(status)) => return Err(RoundError::Remote(format!("leader {leader}: {}", status.message()))),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        if !reply.error.is_empty() {
            return Err(RoundError::Remote(format!("leader {leader}: {}", reply.error)));
        }
        crate::raft::decode::<u64>(&reply.payload).map_err(|e| RoundError::Remote(e.to_string()))
    }

    /// Waits (bounded) until this replica has applied `index` of `shard`.
    pub async fn wait_applied(&self, raft: &ShardRaft, index: u64) -> Result<(), String> {
        raft.wait(Some(self.request_timeout()))
            .applied_index_at_least(Some(index), "read")
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Records safe times pushed by `from`; refuses (and flags the clock)
    /// times further ahead of this node's clock than the offset bound.
    pub fn record_safe_times(&self, from: u64, entries: Vec<SafeTime>) {
        let now = wall_ms();
        let bound = self.config.raft.max_clock_offset_ms;
        let mut times = self.safe_times.lock().expect("safe times");
        for t in entries {
            if t.leader_wall_ms > now + bound && !self.config.raft.unsafe_trust_clocks {
                tracing::error!(
                    peer = from,
                    ahead_ms = t.leader_wall_ms - now,
                    bound_ms = bound,
                    "peer clock beyond max_clock_offset_ms: refusing lease and bounded reads"
                );
                *self.clock_suspect_until.lock().expect("clock flag") = Some(Instant::now() + CLOCK_SUSPECT_PERIOD);
                continue;
            }
            let newer = times.get(&t.shard).is_none_or(|old| t.leader_wall_ms > old.leader_wall_ms);
            if newer {
                times.insert(t.shard, t);
            }
        }
    }

    /// An upper bound on how stale this replica's data of `shard` is, given
    /// it has applied `applied`: `None` when it cannot tell.
    pub fn staleness_bound_ms(&self, shard: u64, applied: u64) -> Option<u64> {
        if !self.clock_ok() {
            return None;
        }
        let t = self.safe_times.lock().expect("safe times").get(&shard).copied()?;
        (applied >= t.index).then(|| wall_ms().saturating_sub(t.leader_wall_ms) + self.config.raft.max_clock_offset_ms)
    }

    /// False while a peer's clock was recently seen beyond the offset bound.
    pub fn clock_ok(&self) -> bool {
        self.clock_suspect_until.lock().expect("clock flag").is_none_or(|until| Instant::now() >= until)
    }

    /// Whether this node should get traffic, or why not: its groups have
    /// started, no WAL fsync has failed, it holds the shard map, the map
    /// records it as a member that serves (up or draining: not joining, down
    /// or removed), and its meta shard replica knows a leader and has
    /// applied all it knows committed.
    /// The gRPC health service and `/readyz` report this.
    pub async fn readiness(&self) -> Result<(), String> {
        if !self.is_ready() {
            return Err("starting: its Raft groups are not all started".into());
        }
        if let Some(cause) = self.storage.sync_failure() {
            return Err(format!("a WAL fsync failed ({cause}): this node acknowledges no write; restart it"));
        }
        let map = self.shard_map();
        if map.version == 0 {
            return Err("no shard map yet (not bootstrapped, or a joining node not caught up)".into());
        }
        let me = self.config.node_id;
        match map.node(me).map(|n| n.state) {
            Some(NodeState::Up | NodeState::Draining | NodeState::Removing) => {}
            Some(state) => return Err(format!("the shard map records node {me} as {}", state.as_str())),
            None => return Err(format!("node {me} is not in the shard map it holds (version {})", map.version)),
        }
        let meta = self.group(META_SHARD_ID).await.ok_or("no meta shard replica")?;
        let m = meta.metrics().borrow_watched().clone();
        if m.current_leader.is_none() {
            return Err("its meta shard replica knows no leader".into());
        }
        // openraft keeps a leader that lost its quorum leading, and a
        // follower cut off from its leader (pre-vote failing) following it:
        // either must have heard from the other side within an election
        // timeout.
        let max = Duration::from_millis(self.config.raft.election_timeout_max_ms);
        let heard = if m.state == openraft::ServerState::Leader {
            m.last_quorum_acked.as_ref().map(|t| t.elapsed())
        } else {
            self.meta_leader_heard.lock().expect("meta leader heard").map(|t| t.elapsed())
        };
        if heard.is_none_or(|ago| ago > max) {
            return Err(format!(
                "its meta shard replica knows no leader with a quorum (last contact {heard:?} ago, more than {max:?})"
            ));
        }
        let (applied, committed) = (crate::raft::index_of(&m.last_applied), crate::raft::index_of(&m.local_committed));
        if applied < committed {
            return Err(format!("its meta shard replica has applied {applied} of {committed} committed entries"));
        }
        Ok(())
    }

    /// Notes that the meta shard's leader reached this replica just now.
    pub fn meta_leader_heard(&self) {
        *self.meta_leader_heard.lock().expect("meta leader heard") = Some(Instant::now());
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stops every Raft group. Requests still in flight fail as unavailable.
    pub async fn shutdown(&self) {
        self.ready.store(false, Ordering::Release);
        let groups = std::mem::take(&mut *self.groups.write().await);
        for (shard, raft) in groups {
            if let Err(e) = raft.shutdown().await {
                tracing::warn!(shard, cause = %e, "raft group did not shut down cleanly");
            }
        }
    }
}

/// What a leader can vouch for, if anything: how long ago a quorum last
/// acknowledged it, and its committed index, which then holds every entry
/// any leader ever acknowledged.
///
/// Only once it has committed an entry of its own term (Raft §5.4.2: its
/// blank entry). Before that, its committed index can lag writes the old
/// leader already acknowledged, and a safe time built on it would let a
/// bounded read miss them while claiming to be fresh.
pub fn leader_safe_point(m: &openraft::RaftMetrics<crate::raft::TypeConfig>) -> Option<(Duration, u64)> {
    use openraft::vote::RaftLeaderId;
    if m.state != openraft::ServerState::Leader {
        return None;
    }
    let acked = m.last_quorum_acked.as_ref()?;
    let committed = m.local_committed.as_ref()?;
    (committed.leader_id.term() == m.current_term).then(|| (acked.elapsed(), committed.index))
}

/// The wall clock, in ms since the Unix epoch.
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A leader's statement to a follower: every write committed before
/// `leader_wall_ms` (leader clock) has index at most `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SafeTime {
    pub shard: u64,
    pub leader_wall_ms: u64,
    pub index: u64,
}

/// For every shard this node leads, push a safe time to the shard's other
/// voters (one message per peer). The statement comes from openraft's own
/// leadership evidence, so it costs no extra round: `last_quorum_acked` is
/// the send time of the newest heartbeat or append a quorum acknowledged; the
/// node led then, so every write committed before that moment is at most its
/// commit index now. The monotonic instant is turned into this node's wall
/// clock for the receiver, which adds `max_clock_offset_ms`.
///
/// To keep that evidence fresh without writes, the leader triggers a
/// heartbeat every `safe_time_interval_ms` (openraft's own heartbeat period
/// is longer: it doubles as the append timeout and must exceed the WAN RTT),
/// and pushes as soon as a quorum has acknowledged a newer one (polled every
/// `SAFE_TIME_POLL`), so a follower's bound is about one quorum RTT plus the
/// one-way delay plus the offset, not a heartbeat period more.
///
/// Only for shards whose followers read: a shard none of whose followers
/// asked this leader for a read index (a follower read, or a bounded read
/// that had no fresh enough safe time) within [`SAFE_TIME_DEMAND`] gets no
/// heartbeat and no push from here, so idle shards cost nothing: the first
/// bounded read of one falls back (a round trip to the leader), and the
/// ones after it are local.
async fn push_safe_times(node: Arc<Node>) {
    let interval = Duration::from_millis(node.config.raft.safe_time_interval_ms);
    let me = node.config.node_id;
    let mut next_beat = Instant::now();
    let mut pushed: HashMap<u64, (u64, Instant)> = HashMap::new();
    while node.is_ready() {
        tokio::time::sleep(SAFE_TIME_POLL).await;
        let beat = Instant::now() >= next_beat;
        if beat {
            next_beat = Instant::now() + interval;
        }
        let mut per_peer: BTreeMap<u64, Vec<SafeTime>> = BTreeMap::new();
        // Only the shards followers read: with none, nothing to look at.
        for shard in node.safe_time_wanted_shards() {
            let Some(raft) = node.group(shard).await else { continue };
            if shard == META_SHARD_ID || !raft.is_leader() {
                continue;
            }
            if beat {
                let _ = raft.trigger().heartbeat().await;
            }
            let m = raft.metrics().borrow_watched().clone();
            let Some((acked_age, committed_index)) = leader_safe_point(&m) else { continue };
            let age_ms = acked_age.as_millis() as u64;
            let safe = SafeTime { shard, leader_wall_ms: wall_ms().saturating_sub(age_ms), index: committed_index };
            // Push at every beat, and in between what is new, at most every
            // half interval (under writes, acknowledgements never stop).
            let never = Instant::now().checked_sub(interval).unwrap_or_else(Instant::now);
            let (last_wall, last_at) = pushed.get(&shard).copied().unwrap_or((0, never));
            if !beat && (safe.leader_wall_ms <= last_wall || last_at.elapsed() < interval / 2) {
                continue;
            }
            pushed.insert(shard, (safe.leader_wall_ms, Instant::now()));
            for peer in raft.voter_ids().filter(|v| *v != me) {
                per_peer.entry(peer).or_default().push(safe);
            }
        }
        let map = node.shard_map();
        for (peer, entries) in per_peer {
            let Some(addr) = map.node(peer).map(|n| n.addr.clone()) else { continue };
            let mut client = RaftClient::new(node.peers.channel(&addr));
            let payload = crate::raft::encode(&(me, entries));
            let mut request = tonic::Request::new(RaftMessage { shard_id: 0, payload, error: String::new() });
            request.set_timeout(interval * 10);
            // Fire and forget: a lost push only makes bounded reads fall back.
            tokio::spawn(async move {
                let _ = client.safe_time(request).await;
            });
        }
    }
}

/// Moves leadership of every shard this node leads to the shard's preferred
/// region, when one is set, this node is elsewhere, and a voter there is
/// caught up. Runs on every node; only leaders act. After a failover the
/// same loop brings leadership back once the preferred region's node has
/// rejoined and caught up.
async fn place_leaders(node: Arc<Node>) {
    let r = &node.config.raft;
    let interval = Duration::from_millis((r.heartbeat_interval_ms * 4).max(1_000));
    let cooldown = Duration::from_millis(r.election_timeout_max_ms * 2);
    let me = node.me.clone();
    let mut last_attempt: HashMap<u64, Instant> = HashMap::new();
    while node.is_ready() {
        tokio::time::sleep(interval).await;
        let map = node.shard_map();
        for (shard, raft) in node.groups().await {
            let Some(preferred) = map.shard(shard).and_then(|d| d.preferred_leader_region.clone()) else { continue };
            if preferred == me.region || !raft.is_leader() {
                continue;
            }
            if last_attempt.get(&shard).is_some_and(|t| t.elapsed() < cooldown) {
                continue;
            }
            let m = raft.metrics().borrow_watched().clone();
            let target = raft
                .voter_ids()
                .filter(|v| map.node(*v).is_some_and(|n| n.region == preferred))
                .find(|v| crate::raft::within_lag(&m, *v, MAX_TRANSFER_LAG_ENTRIES));
            let Some(target) = target else { continue };
            last_attempt.insert(shard, Instant::now());
            tracing::info!(shard, to = target, region = %preferred, "moving leadership to the preferred region");
            if let Err(e) = raft.trigger().transfer_leader(target).await {
                tracing::warn!(shard, cause = %e, "leadership transfer failed");
            }
        }
    }
}

fn ranges_overlap((start, end): &crate::shards::KeyRange, shard: &ShardDesc) -> bool {
    let below_end = |key: &[u8], end: &Option<Vec<u8>>| end.as_deref().is_none_or(|e| key < e);
    below_end(start, &shard.end) && below_end(&shard.start, end)
}

/// Starts the right half's group of every split a local data shard applied
/// (after the split's batch was fsynced), with the left half's voters.
async fn start_split_halves(
    node: Arc<Node>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<SplitNotice>,
    raft_config: Arc<openraft::Config>,
    limits: SessionLimits,
) {
    while let Some(notice) = rx.recv().await {
        if !node.is_ready() {
            return;
        }
        if !notice.members.contains(&node.config.node_id) {
            // This replica of the left half is a learner (a move under way):
            // the right half's group does not have it.
            tracing::info!(shard = notice.shard, "split applied here as a learner: the right half is not placed here");
            continue;
        }
        let kind = ShardKind::Data { start: notice.start.clone(), end: notice.end.clone(), epoch: notice.epoch };
        match node.start_data_group_once(notice.shard, kind, Some(&notice.members), &raft_config, limits).await {
            Ok(true) => tracing::info!(shard = notice.shard, "started the right half of a split"),
            Ok(false) => {}
            Err(e) => tracing::error!(shard = notice.shard, cause = %e, "cannot start the right half of a split"),
        }
    }
}

/// How often a leader looks for splits the map records and its log has not
/// applied yet, and how long it waits before proposing one again.
const SPLIT_RECONCILE_INTERVAL: Duration = Duration::from_secs(1);
const SPLIT_RETRY_AFTER: Duration = Duration::from_secs(3);
const SPLIT_MAX_ATTEMPTS: u32 = 10;

/// Carries out splits the map records (`MetaCommand::SplitShard`) whose
/// left half's log has not applied them: the map is the intent, so a split
/// interrupted after its first step (the caller crashed, the leader
/// changed) completes anyway. Runs on every node; only the left half's
/// leader proposes, and a split already applied is a no-op.
async fn finish_splits(node: Arc<Node>) {
    let me = node.config.node_id;
    // Per right half: when it was last proposed, and how often. A replica that
    // missed the split (through a snapshot) never starts the right half, so
    // proposing stops after a few no-op attempts.
    let mut proposed: HashMap<u64, (Instant, u32)> = HashMap::new();
    while node.is_ready() {
        tokio::time::sleep(SPLIT_RECONCILE_INTERVAL).await;
        let map = node.shard_map();
        for pair in map.shards.windows(2) {
            let (left, right) = (&pair[0], &pair[1]);
            if right.is_eventual() || left.is_eventual() || !right.replicas.contains(&me) {
                continue;
            }
            let (last, attempts) = proposed.get(&right.id).copied().unwrap_or((Instant::now(), 0));
            if node.group(right.id).await.is_some()
                || attempts >= SPLIT_MAX_ATTEMPTS
                || (attempts > 0 && last.elapsed() < SPLIT_RETRY_AFTER)
            {
                continue;
            }
            let Some(raft) = node.group(left.id).await else { continue };
            if !raft.is_leader() {
                continue;
            }
            proposed.insert(right.id, (Instant::now(), attempts + 1));
            let cmd = Command::Split(SplitCommand {
                key: right.start.clone(),
                left_epoch: left.epoch,
                right_shard: right.id,
                right_epoch: right.epoch,
                members: left.replicas.clone(),
            });
            match raft.client_write(cmd).await {
                Ok(resp) => tracing::info!(left = left.id, right = right.id, result = ?resp.data, "split carried out"),
                Err(e) => tracing::debug!(left = left.id, right = right.id, cause = %e, "split not carried out yet"),
            }
        }
    }
}

/// Starts replicas of eventual shards added to the map while the node runs
/// (`kvctl shard create`), and right halves of splits applied here before the
/// map knew them.
async fn watch_for_new_shards(node: Arc<Node>, raft_config: Arc<openraft::Config>, limits: SessionLimits) {
    let mut rx = node.map_rx.clone();
    while node.is_ready() && rx.changed().await.is_ok() {
        node.prune_cancels();
        if let Err(e) = node.start_eventual_shards() {
            tracing::error!(cause = %e, "cannot start a new eventual shard");
        }
        node.start_stored_shards(&raft_config, limits).await;
    }
}

/// Periodically drops what an eventual shard no longer needs: outbox
/// entries every peer acknowledged (and any beyond the outbox bound), and
/// tombstones every replica has seen.
async fn collect_eventual(node: Arc<Node>, shard: Arc<EcShard>) {
    let interval = Duration::from_millis(node.config.eventual.gc_interval_ms);
    while node.is_ready() && !shard.is_retired() {
        tokio::time::sleep(interval).await;
        if let Err(e) = shard.collect() {
            tracing::warn!(shard = shard.id(), cause = %e, "eventual shard collection failed");
        }
    }
}

/// Proposes the initial map to the meta shard until it holds one.
async fn bootstrap_map(node: Arc<Node>) {
    loop {
        if node.shard_map().version > 0 || !node.is_ready() {
            return;
        }
        if let Some(meta) = node.group(META_SHARD_ID).await
            && meta.is_leader()
        {
            let cmd = Command::Meta(MetaCommand::Bootstrap((*node.initial_map).clone()));
            match meta.client_write(cmd).await {
                Ok(resp) => tracing::info!(result = ?resp.data, "shard map bootstrapped"),
                Err(e) => tracing::debug!(cause = %e, "shard map bootstrap not yet possible"),
            }
        }
        tokio::time::sleep(BOOTSTRAP_RETRY_INTERVAL).await;
    }
}

/// Serves the node's gRPC services (and `/metrics` if configured) on
/// `listener` while its Raft groups start (requests meanwhile are answered
/// `Unavailable: node is starting`), until `shutdown` resolves, start-up
/// fails or the shard map records this node as removed; then stops the
/// node (returning the error in the last two cases).
pub async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let local: SocketAddr = listener.local_addr()?;
    let metrics_task = if node.config.metrics_listen.is_empty() {
        None
    } else {
        let l = TcpListener::bind(&node.config.metrics_listen)
            .await
            .with_context(|| format!("cannot bind metrics_listen {}", node.config.metrics_listen))?;
        tracing::info!(addr = %l.local_addr()?, "serving Prometheus metrics on /metrics");
        Some(tokio::spawn(crate::metrics::serve_http(node.clone(), l)))
    };
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<anyhow::Error>();
    let starting = node.clone();
    tokio::spawn(async move {
        let failed = match starting.start_groups().await {
            Err(e) => e,
            Ok(()) => starting.until_removed().await,
        };
        let _ = failed_tx.send(failed);
    });
    let startup_error = Arc::new(std::sync::Mutex::new(None));
    let slot = startup_error.clone();
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let stop = async move {
        tokio::select! {
            _ = shutdown => {}
            Ok(e) = failed_rx => {
                tracing::error!(cause = %e, "stopping the node");
                *slot.lock().expect("startup error slot") = Some(e);
            }
        }
        let _ = stopping_tx.send(());
    };
    match node.peers.tls() {
        Some(tls) => {
            tls.watch();
            tracing::info!(
                node = node.config.node_id,
                addr = %local,
                auth = node.config.tls.auth_enabled(),
                cert_not_after_unix_s = tls.not_after_unix_s(),
                "serving gRPC over TLS (peers need a node certificate from the cluster CA)"
            );
        }
        None => tracing::warn!(
            node = node.config.node_id,
            addr = %local,
            "serving gRPC in PLAINTEXT: no encryption, no authentication; anyone who can reach this port may \
             call anything (configure [tls] for anything but development)"
        ),
    }
    let router = service::router(node.clone());
    let incoming = crate::tls::incoming(listener, node.peers.tls().cloned(), node.metrics.clone());
    let server = router.serve_with_incoming_shutdown(incoming, stop);
    // Graceful shutdown waits for every connection to close, but peers keep
    // theirs open (replication streams, keep-alive): after a grace period
    // the remaining connections are dropped.
    let grace = async move {
        if stopping_rx.await.is_ok() {
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        served = server => served?,
        _ = grace => tracing::info!(node = node.config.node_id, "grace period over; closing remaining connections"),
    }
    if let Some(t) = metrics_task {
        t.abort();
    }
    node.shutdown().await;
    tracing::info!(node = node.config.node_id, "stopped");
    match startup_error.lock().expect("startup error slot").take() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::TypeConfig;

    fn leader_metrics(term: u64, committed_term: u64) -> openraft::RaftMetrics<TypeConfig> {
        let mut m = openraft::RaftMetrics::<TypeConfig>::new_initial(1);
        m.state = openraft::ServerState::Leader;
        m.current_term = term;
        m.local_committed = Some(openraft::testing::log_id::<TypeConfig>(committed_term, 1, 7));
        m.last_quorum_acked =
            Some(openraft::metrics::SerdeInstant::new(<openraft::TokioInstant as openraft::Instant>::now()));
        m
    }

    /// The start-up rule that keeps a split's right half from starting over
    /// data its local left half still owns: any shared key is an overlap.
    #[test]
    fn ranges_overlap_on_any_shared_key() {
        let desc = |start: &str, end: Option<&str>| ShardDesc {
            id: 9,
            epoch: 2,
            start: start.into(),
            end: end.map(Into::into),
            replicas: vec![1],
            preferred_leader_region: None,
            mode: crate::shards::ShardMode::Raft,
            change: None,
            merge: None,
            auto_split: false,
        };
        let range = |start: &str, end: Option<&str>| (start.as_bytes().to_vec(), end.map(|e| e.as_bytes().to_vec()));
        // The left half before the split ([g, n)) and the right half [j, n).
        assert!(ranges_overlap(&range("g", Some("n")), &desc("j", Some("n"))));
        // After the split ([g, j)): they only touch.
        assert!(!ranges_overlap(&range("g", Some("j")), &desc("j", Some("n"))));
        assert!(!ranges_overlap(&range("n", None), &desc("j", Some("n"))));
        assert!(ranges_overlap(&range("", None), &desc("j", None)));
        assert!(ranges_overlap(&range("k", Some("l")), &desc("j", None)));
    }

    /// The bounded-staleness hole after a leader change: a leader whose
    /// newest committed entry is from an older term vouches for nothing
    /// (before, it published a safe time built on a commit index that could
    /// lag writes the previous leader had acknowledged).
    #[test]
    fn a_leader_vouches_only_after_committing_in_its_own_term() {
        assert_eq!(leader_safe_point(&leader_metrics(5, 4)), None, "only the old term's entries are committed");
        let (age, index) = leader_safe_point(&leader_metrics(5, 5)).expect("its blank entry is committed");
        assert_eq!(index, 7);
        assert!(age < Duration::from_secs(5), "{age:?}");
        let mut follower = leader_metrics(5, 5);
        follower.state = openraft::ServerState::Follower;
        assert_eq!(leader_safe_point(&follower), None, "a follower is no leader");
        let mut never_acked = leader_metrics(5, 5);
        never_acked.last_quorum_acked = None;
        assert_eq!(leader_safe_point(&never_acked), None);
    }
}
