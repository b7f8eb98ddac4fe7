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

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use openraft::BasicNode;
use openraft::error::{InitializeError, RaftError};
use tokio::net::TcpListener;
use tokio::sync::{RwLock, watch};
use tokio_stream::wrappers::TcpListenerStream;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::raft::command::{Command, MetaCommand};
use crate::raft::log_store::ShardLogStore;
use crate::raft::network::{PeerTimeouts, Peers, ShardNetwork};
use crate::raft::state_machine::{SessionLimits, ShardKind};
use crate::raft::{ShardRaft, ShardStateMachine};
use crate::service;
use crate::shards::{META_SHARD_ID, ShardDesc, ShardMap};
use crate::storage::Storage;

/// How long a stopping node lets in-flight requests finish before it drops
/// the connections that are still open.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How often the background bootstrapper retries proposing the initial map.
const BOOTSTRAP_RETRY_INTERVAL: Duration = Duration::from_millis(200);

pub struct Node {
    pub config: Arc<Config>,
    pub storage: Arc<Storage>,
    pub metrics: Arc<Metrics>,
    groups: RwLock<BTreeMap<u64, ShardRaft>>,
    map_rx: watch::Receiver<Arc<ShardMap>>,
    map_tx: watch::Sender<Arc<ShardMap>>,
    /// The map a new cluster starts with (computed from the configuration).
    initial_map: Arc<ShardMap>,
    ready: AtomicBool,
    started: Instant,
}

impl Node {
    /// Validates the configuration and opens storage. The node serves no
    /// requests until [`Node::start_groups`] has run (`serve` does both).
    pub fn open(config: Config) -> anyhow::Result<Arc<Node>> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
        let storage = Storage::open(&config.data_dir.join("db"))
            .with_context(|| format!("cannot open storage under {}", config.data_dir.display()))?;
        let nodes: Vec<_> = config.initial_cluster.iter().map(|m| m.desc()).collect();
        let initial_map = Arc::new(ShardMap::initial(&nodes, &config.split_point_bytes(), config.replication_factor)?);
        let (map_tx, map_rx) = watch::channel(initial_map.clone());
        Ok(Arc::new(Node {
            config: Arc::new(config),
            storage,
            metrics: Arc::new(Metrics::default()),
            groups: RwLock::new(BTreeMap::new()),
            map_rx,
            map_tx,
            initial_map,
            ready: AtomicBool::new(false),
            started: Instant::now(),
        }))
    }

    /// Starts every Raft group this node hosts, then marks the node ready
    /// and starts the shard map bootstrapper.
    pub async fn start_groups(self: &Arc<Self>) -> anyhow::Result<()> {
        let raft_config = Arc::new(self.config.openraft().validate()?);
        let r = &self.config.raft;
        let peers = Peers::new(PeerTimeouts {
            connect: Duration::from_millis(r.election_timeout_min_ms),
            keepalive_interval: Duration::from_millis(r.heartbeat_interval_ms.max(500)),
            keepalive_timeout: Duration::from_millis(r.election_timeout_min_ms),
            snapshot: Duration::from_millis(r.snapshot_send_timeout_ms),
            local_ip: self.config.outgoing_ip.parse().ok(),
        });
        let limits = SessionLimits {
            ttl_ms: self.config.limits.session_ttl_ms,
            gc_interval_ms: (self.config.limits.session_ttl_ms / 10).max(1_000),
        };
        let me = self.config.node_id;

        // The meta shard replicates over every initial member.
        let meta_voters: Vec<u64> = self.initial_map.nodes.iter().map(|n| n.id).collect();
        let meta_kind = ShardKind::Meta { map_tx: self.map_tx.clone() };
        let meta_sm = ShardStateMachine::new(META_SHARD_ID, meta_kind, self.storage.clone(), limits)?;
        let meta = self.start_group(META_SHARD_ID, meta_sm, &meta_voters, &raft_config, &peers).await?;
        self.groups.write().await.insert(META_SHARD_ID, meta);

        // The stored map (restored by the meta state machine) wins over the
        // initial one.
        let map = self.shard_map();
        for shard in map.shards_on(me).cloned().collect::<Vec<ShardDesc>>() {
            let kind = ShardKind::Data { start: shard.start.clone(), end: shard.end.clone(), epoch: shard.epoch };
            let sm = ShardStateMachine::new(shard.id, kind, self.storage.clone(), limits)?;
            let raft = self.start_group(shard.id, sm, &shard.replicas, &raft_config, &peers).await?;
            self.groups.write().await.insert(shard.id, raft);
        }
        self.ready.store(true, Ordering::Release);
        tokio::spawn(bootstrap_map(self.clone()));
        Ok(())
    }

    async fn start_group(
        &self,
        shard: u64,
        sm: ShardStateMachine,
        voters: &[u64],
        raft_config: &Arc<openraft::Config>,
        peers: &Arc<Peers>,
    ) -> anyhow::Result<ShardRaft> {
        let me = self.config.node_id;
        let log = ShardLogStore::new(shard, self.storage.clone());
        let network = ShardNetwork::new(shard, peers.clone());
        let raft = ShardRaft::new(me, raft_config.clone(), network, log, sm)
            .await
            .with_context(|| format!("cannot start the Raft group of shard {shard}"))?;
        if !raft.is_initialized().await? {
            let members: BTreeMap<u64, BasicNode> = voters
                .iter()
                .map(|id| {
                    let addr = self.initial_map.node(*id).map(|n| n.addr.clone()).unwrap_or_default();
                    (*id, BasicNode::new(addr))
                })
                .collect();
            match raft.initialize(members).await {
                Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => anyhow::bail!("cannot initialize shard {shard}: {e}"),
            }
        }
        tokio::spawn(self.metrics.clone().watch_group(shard, raft.metrics()));
        tracing::info!(shard, voters = ?voters, "raft group started");
        Ok(raft)
    }

    /// The Raft group of `shard`, if this node hosts it.
    pub async fn group(&self, shard: u64) -> Option<ShardRaft> {
        self.groups.read().await.get(&shard).cloned()
    }

    /// Every hosted group, by shard id.
    pub async fn groups(&self) -> Vec<(u64, ShardRaft)> {
        self.groups.read().await.iter().map(|(id, r)| (*id, r.clone())).collect()
    }

    /// The current shard map: the meta shard's once bootstrapped, before that
    /// the initial map every member computes identically.
    pub fn shard_map(&self) -> Arc<ShardMap> {
        self.map_rx.borrow().clone()
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
/// `Unavailable: node is starting`), until `shutdown` resolves or start-up
/// fails; then stops the node.
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
        if let Err(e) = starting.start_groups().await {
            let _ = failed_tx.send(e);
        }
    });
    let startup_error = Arc::new(std::sync::Mutex::new(None));
    let slot = startup_error.clone();
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let stop = async move {
        tokio::select! {
            _ = shutdown => {}
            Ok(e) = failed_rx => {
                tracing::error!(cause = %e, "start-up failed");
                *slot.lock().expect("startup error slot") = Some(e);
            }
        }
        let _ = stopping_tx.send(());
    };
    tracing::info!(node = node.config.node_id, addr = %local, "serving gRPC");
    let router = service::router(node.clone());
    let server = router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop);
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
