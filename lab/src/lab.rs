//! [`Lab`]: a cluster of real node processes behind the emulated WAN.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use geokv_client::{Client, ClientConfig};
use geokv_proto::admin::admin_client::AdminClient;
use geokv_proto::admin::{NodeStatusRequest, NodeStatusResponse, TransferLeaderRequest};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::net::{Endpoint, Link, LinkFault, Links, Partition, run_front_proxy};
use crate::process::{GRACEFUL_STOP_TIMEOUT, NodeProcess, ProcessState};
use crate::regions::RegionMatrix;
use crate::{Error, Result};

/// Most nodes a lab runs (node addresses use one octet each).
pub const MAX_NODES: usize = 200;
/// Name of the state file in the data directory.
pub const STATE_FILE: &str = "lab.json";
/// Time one admin RPC to a node may take (status, leader transfer).
pub const ADMIN_RPC_TIMEOUT: Duration = Duration::from_secs(2);
/// How long recording a drain or a removal may take (a meta shard commit,
/// retried on other nodes while its leader is unknown).
const MEMBER_CHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often conditions are polled while waiting for them.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Most bytes read from one metrics scrape.
pub const MAX_METRICS_BYTES: u64 = 16 * 1024 * 1024;

/// The advertised address of node `id`: what peers and clients dial (the
/// node's front proxy listens there).
pub fn advertised_ip(id: u64) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 1, id as u8))
}

/// The node's own IP: its real listener and the source of its outgoing
/// connections.
pub fn node_ip(id: u64) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 2, id as u8))
}

/// The source IP of clients in the region with this index (0-based).
pub fn client_ip(region_index: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 3, region_index as u8 + 1))
}

/// How to run a node process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeProgram {
    /// A `geokv-lab` binary, run as `geokv-lab node <geokv flags>` (the node
    /// code linked into the lab; still one OS process per node).
    Lab(PathBuf),
    /// A `geokv` binary, run as `geokv <flags>`.
    Geokv(PathBuf),
}

impl NodeProgram {
    /// The running executable, which must be `geokv-lab`.
    pub fn current_lab() -> Result<NodeProgram> {
        std::env::current_exe().map(NodeProgram::Lab).map_err(Error::io("find the running executable"))
    }

    fn command(&self) -> Command {
        match self {
            NodeProgram::Lab(path) => {
                let mut command = Command::new(path);
                command.arg("node");
                command
            }
            NodeProgram::Geokv(path) => Command::new(path),
        }
    }
}

/// What to start.
///
/// Invariants after [`LabConfig::validate`]:
/// - 1..=[`MAX_NODES`] nodes in all;
/// - election timeouts, when given, are above the heartbeat and the
///   heartbeat (default 300 ms) above the matrix's largest RTT.
#[derive(Debug, Clone)]
pub struct LabConfig {
    pub regions: RegionMatrix,
    pub nodes_per_region: usize,
    /// Start nodes only in the matrix's first this many regions (`None`:
    /// all); the others are there for [`Lab::add_node`] to join later.
    pub start_regions: Option<usize>,
    /// Node data (`node-N/`), logs (`node-N.log`) and `lab.json`.
    pub data_dir: PathBuf,
    pub program: NodeProgram,
    /// Every node's advertised and real address use this port (they differ
    /// by IP); `None` lets the OS choose per node (tests).
    pub base_port: Option<u16>,
    /// Default jitter on every link between regions or nodes, in ms.
    pub jitter_ms: u64,
    /// RTT between two endpoints of the same region (default 0).
    pub intra_region_rtt_ms: u64,
    pub heartbeat_interval_ms: Option<u64>,
    pub election_timeout_min_ms: Option<u64>,
    pub election_timeout_max_ms: Option<u64>,
    /// More `geokv` flags for every node.
    pub node_args: Vec<String>,
    /// How long [`Lab::start`] waits for every shard to have a leader.
    pub start_timeout: Duration,
    /// `RUST_LOG` for the nodes (default: inherited, else `info,openraft=warn`).
    pub node_log_filter: Option<String>,
    /// Give every node a Prometheus endpoint (`--metrics-listen` on its own
    /// IP, a free port; see [`LabNode::metrics`] and [`Lab::scrape_metrics`]).
    pub metrics: bool,
    /// Let the cluster rebalance replicas and leaders (`geokv --rebalance`).
    /// Off by default for programs (the harness, the bench and tests place
    /// leaders themselves and need them to stay); `geokv-lab up` turns it on.
    pub rebalance: bool,
    /// Run the nodes with TLS and authentication: the lab makes a CA, one
    /// node certificate for every lab address and root's client certificate
    /// under `DATA_DIR/certs` (kept across restarts), and its own clients
    /// connect as root. Off: `--plaintext`, which the nodes log.
    pub tls: bool,
}

impl LabConfig {
    /// The default matrix, one node per region, under `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>, program: NodeProgram) -> LabConfig {
        LabConfig {
            regions: RegionMatrix::default_matrix(),
            nodes_per_region: 1,
            start_regions: None,
            data_dir: data_dir.into(),
            program,
            base_port: None,
            jitter_ms: 0,
            intra_region_rtt_ms: 0,
            heartbeat_interval_ms: None,
            election_timeout_min_ms: None,
            election_timeout_max_ms: None,
            node_args: Vec::new(),
            start_timeout: Duration::from_secs(60),
            node_log_filter: None,
            metrics: false,
            rebalance: false,
            tls: false,
        }
    }

    /// Checks the invariants listed on the type.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(msg));
        let regions = self.regions.regions().len();
        if let Some(n) = self.start_regions
            && !(1..=regions).contains(&n)
        {
            return bad(format!("start in {n} regions: the matrix has {regions}; 1 to {regions}"));
        }
        let total = self.total_nodes();
        if total == 0 || total > MAX_NODES {
            return bad(format!("{total} nodes: a lab runs 1 to {MAX_NODES}"));
        }
        let heartbeat = self.heartbeat_interval_ms.unwrap_or(300);
        let slowest = self.regions.max_rtt_ms() + 2 * self.jitter_ms;
        if heartbeat <= slowest {
            return bad(format!(
                "heartbeat {heartbeat} ms must exceed the slowest round trip ({slowest} ms incl. jitter): \
                 openraft times out heartbeats after one interval"
            ));
        }
        if let Some(min) = self.election_timeout_min_ms
            && min <= heartbeat
        {
            return bad(format!("election timeout {min} ms must exceed the heartbeat {heartbeat} ms"));
        }
        Ok(())
    }

    /// Nodes the lab starts with.
    pub fn total_nodes(&self) -> usize {
        self.nodes_per_region * self.started_regions()
    }

    /// Regions the lab starts nodes in: the matrix's first ones.
    pub fn started_regions(&self) -> usize {
        self.start_regions.unwrap_or(self.regions.regions().len()).min(self.regions.regions().len())
    }
}

/// One node of the lab.
#[derive(Debug)]
pub struct LabNode {
    pub id: u64,
    pub region: String,
    /// Where peers and clients dial it (its front proxy).
    pub advertised: SocketAddr,
    /// Its real listener (the lab's admin calls go here directly).
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    /// Its Prometheus endpoint (`GET /metrics`), when [`LabConfig::metrics`].
    pub metrics: Option<SocketAddr>,
    process: Mutex<Option<NodeProcess>>,
    /// Its clock fault, when it runs skewed ([`Lab::set_clock`]).
    clock: Mutex<Option<ClockFault>>,
    /// It was added to the running cluster ([`Lab::add_node`]): it starts
    /// with `--join` (its id is the one the cluster gave it, kept in its data
    /// directory), not as an initial member.
    pub joined: bool,
}

impl LabNode {
    fn process(&self) -> MutexGuard<'_, Option<NodeProcess>> {
        self.process.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Its clock fault, if it runs skewed.
    pub fn clock(&self) -> Option<ClockFault> {
        *self.clock.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The pid of its process, if one was started.
    pub fn pid(&self) -> Option<u32> {
        self.process().as_ref().map(NodeProcess::pid)
    }

    /// What its process is doing.
    pub fn state(&self) -> ProcessState {
        self.process().as_ref().map_or(ProcessState::Killed, NodeProcess::state)
    }
}

/// A named set of links to cut (see [`Lab::links_for`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "shape", rename_all = "snake_case")]
pub enum FaultShape {
    /// Every link from each of `from` to each of `to`, and back unless
    /// `one_way`.
    Links { from: Vec<Endpoint>, to: Vec<Endpoint>, one_way: bool },
    /// The node from every other node and from clients of other regions.
    IsolateNode { node: u64 },
    /// The region's nodes and clients from everything outside it.
    IsolateRegion { region: String },
    /// Whichever node leads the shard now, as `IsolateNode`.
    IsolateLeader { shard: u64 },
    /// Nodes shuffled (seeded) into a minority and a majority half.
    RandomHalves { seed: u64 },
    /// Nodes shuffled into a ring; each reaches only its nearest neighbours,
    /// a majority counting itself, and no two nodes see the same majority.
    MajoritiesRing { seed: u64 },
    /// Two halves that reach each other only through one bridge node.
    Bridge { seed: u64 },
}

/// A node as `status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    pub id: u64,
    pub region: String,
    pub state: ProcessState,
    pub pid: Option<u32>,
    pub advertised: String,
    pub listen: String,
    pub log: String,
    /// Its Prometheus endpoint, when the lab runs with metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
}

/// A link fault as `status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaultView {
    pub from: Endpoint,
    pub to: Endpoint,
    #[serde(flatten)]
    pub fault: LinkFault,
}

/// One shard as `status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardView {
    pub shard_id: u64,
    pub leader: Option<u64>,
    pub term: u64,
    /// Applied index per node that answered.
    pub applied: BTreeMap<u64, u64>,
    /// An eventual (multi-master) shard: it has no leader, and needs none.
    #[serde(default)]
    pub eventual: bool,
}

/// Everything `status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabStatus {
    pub nodes: Vec<NodeView>,
    pub faults: Vec<FaultView>,
    pub shards: Vec<ShardView>,
    /// Nodes that did not answer the status call, with why.
    pub unreachable: BTreeMap<u64, String>,
}

/// Where a region's clients connect, and from which IP.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegionView {
    pub region: String,
    pub endpoint: String,
    pub client_ip: IpAddr,
}

/// What `lab.json` holds: enough for `geokv-lab` commands in another
/// terminal to find the lab, and to refuse reusing a data directory with a
/// different topology.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub lab_pid: u32,
    pub control_addr: Option<String>,
    pub initial_cluster: String,
    pub regions: Vec<RegionView>,
    pub nodes: Vec<NodeView>,
}

impl LabState {
    /// Reads `<data_dir>/lab.json`.
    pub fn read(data_dir: &Path) -> Result<LabState> {
        let path = data_dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(Error::io(format!("read {} (is a lab running with this --data-dir?)", path.display())))?;
        serde_json::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }
}

/// A running lab: node processes, their front proxies and the link table.
/// Dropping it kills every node and stops every proxy.
///
/// Invariants:
/// - node ids are 1..=N; initial node `i` is in region `(i - 1) % regions`,
///   a node added later ([`Lab::add_node`]) in the region it was added to;
/// - a node's front proxy runs whenever the lab has not killed the node:
///   [`Lab::kill`] stops it too, so connections to a killed node are
///   refused, as a dead process's port refuses them, and
///   [`Lab::restart`] binds it again on the same address. (A node that
///   exits on its own keeps its proxy, which resets what it accepts.)
pub struct Lab {
    config: LabConfig,
    /// Every node, by id; [`Lab::add_node`] appends (nodes are never
    /// taken out: a removed one stays, stopped).
    nodes: RwLock<Vec<Arc<LabNode>>>,
    links: Arc<Links>,
    /// Node id -> its running front proxy.
    proxies: Mutex<BTreeMap<u64, JoinHandle<()>>>,
    initial_cluster: String,
    control_addr: Mutex<Option<SocketAddr>>,
    /// With [`LabConfig::tls`]: the CA and root's certificate.
    client_tls: Option<geokv_client::ClientTls>,
}

/// Where a TLS lab keeps its certificates.
pub fn certs_dir(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("certs")
}

/// Makes (once) the CA, a node certificate naming every address a lab node
/// can have (front proxy and real listener of nodes 1..=MAX_NODES, and
/// 127.0.0.1) and root's client certificate; returns root's TLS settings.
fn lab_certs(data_dir: &std::path::Path) -> Result<geokv_client::ClientTls> {
    use geokv_server::certs::{Validity, ca_files, create_ca, create_client, create_node};
    let dir = certs_dir(data_dir);
    let failed = |e: anyhow::Error| Error::Config(format!("lab certificates in {}: {e:#}", dir.display()));
    let validity = Validity::days(365);
    if !ca_files(&dir).cert.exists() {
        create_ca(&dir, validity).map_err(failed)?;
        let mut hosts = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        for id in 1..=MAX_NODES as u64 {
            hosts.push(advertised_ip(id).to_string());
            hosts.push(node_ip(id).to_string());
        }
        create_node(&dir, "node", &hosts, validity).map_err(failed)?;
        create_client(&dir, "root", validity).map_err(failed)?;
    }
    geokv_client::ClientTls::from_files(
        &dir.join("ca.pem"),
        Some((&dir.join("client.root.pem"), &dir.join("client.root-key.pem"))),
    )
    .map_err(|e| Error::Config(e.to_string()))
}

impl Lab {
    /// Starts every node and proxy and waits (up to
    /// [`LabConfig::start_timeout`]) until every shard has a leader.
    pub async fn start(config: LabConfig) -> Result<Lab> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir)
            .map_err(Error::io(format!("create {}", config.data_dir.display())))?;
        let regions = config.regions.regions().to_vec();
        let links = Links::new(config.regions.clone(), config.intra_region_rtt_ms, config.jitter_ms);
        for (index, region) in regions.iter().enumerate() {
            links.add_client_region(region, client_ip(index))?;
        }
        let mut nodes = Vec::new();
        let mut proxies = BTreeMap::new();
        let mut listeners = Vec::new();
        for index in 0..config.total_nodes() {
            let id = index as u64 + 1;
            let region = regions[index % config.started_regions()].clone();
            let port = config.base_port.unwrap_or(0);
            let listener = TcpListener::bind((advertised_ip(id), port))
                .await
                .map_err(Error::io(format!("bind the front proxy of node {id} on {}:{port}", advertised_ip(id))))?;
            let advertised = listener.local_addr().map_err(Error::io("read a proxy's address"))?;
            let listen = match config.base_port {
                Some(port) => SocketAddr::new(node_ip(id), port),
                None => free_addr(node_ip(id))?,
            };
            let metrics = if config.metrics { Some(free_addr(node_ip(id))?) } else { None };
            links.add_node(id, &region, node_ip(id))?;
            listeners.push(listener);
            nodes.push(LabNode {
                id,
                region,
                advertised,
                listen,
                data_dir: config.data_dir.join(format!("node-{id}")),
                log_path: config.data_dir.join(format!("node-{id}.log")),
                metrics,
                process: Mutex::new(None),
                clock: Mutex::new(None),
                joined: false,
            });
        }
        for (node, listener) in nodes.iter().zip(listeners) {
            let proxy = run_front_proxy(listener, node.listen, Endpoint::Node(node.id), links.clone());
            proxies.insert(node.id, tokio::spawn(proxy));
        }
        let initial_cluster =
            nodes.iter().map(|n| format!("{}={}@{}", n.id, n.advertised, n.region)).collect::<Vec<_>>().join(",");
        check_data_dir(&config.data_dir, &initial_cluster, &nodes)?;
        let proxies = Mutex::new(proxies);
        let nodes = RwLock::new(nodes.into_iter().map(Arc::new).collect());
        let client_tls = if config.tls { Some(lab_certs(&config.data_dir)?) } else { None };
        let lab = Lab { config, nodes, links, proxies, initial_cluster, control_addr: Mutex::new(None), client_tls };
        for node in lab.nodes() {
            lab.spawn(&node)?;
        }
        lab.write_state()?;
        let deadline = lab.config.start_timeout;
        lab.wait_until("every shard has a leader", deadline, |lab| async move {
            let status = lab.status().await;
            let all_up = status.unreachable.is_empty();
            let ready = |s: &ShardView| s.leader.is_some() || s.eventual;
            (all_up && !status.shards.is_empty() && status.shards.iter().all(ready)).then_some(())
        })
        .await?;
        Ok(lab)
    }

    fn spawn(&self, node: &LabNode) -> Result<()> {
        let mut process = node.process();
        if process.as_ref().is_some_and(NodeProcess::is_alive) {
            return Err(Error::State(format!("node {} is already running", node.id)));
        }
        let mut command = self.config.program.command();
        if node.joined {
            let seeds: Vec<String> =
                self.nodes().iter().filter(|n| n.id != node.id).map(|n| n.advertised.to_string()).collect();
            command
                .arg(format!("--join={}", seeds.join(",")))
                .arg(format!("--region={}", node.region))
                .arg(format!("--advertise-addr={}", node.advertised));
        } else {
            command.arg(format!("--node-id={}", node.id)).arg(format!("--initial-cluster={}", self.initial_cluster));
        }
        command
            .arg(format!("--listen={}", node.listen))
            .arg(format!("--outgoing-ip={}", node_ip(node.id)))
            .arg(format!("--data-dir={}", node.data_dir.display()));
        if let Some(metrics) = node.metrics {
            command.arg(format!("--metrics-listen={metrics}"));
        }
        let optional = [
            ("heartbeat-interval-ms", self.config.heartbeat_interval_ms),
            ("election-timeout-min-ms", self.config.election_timeout_min_ms),
            ("election-timeout-max-ms", self.config.election_timeout_max_ms),
        ];
        for (flag, value) in optional {
            if let Some(value) = value {
                command.arg(format!("--{flag}={value}"));
            }
        }
        command.arg(format!("--rebalance={}", self.config.rebalance));
        if self.config.tls {
            let dir = certs_dir(&self.config.data_dir);
            command
                .arg(format!("--tls-ca={}", dir.join("ca.pem").display()))
                .arg(format!("--tls-cert={}", dir.join("node.pem").display()))
                .arg(format!("--tls-key={}", dir.join("node-key.pem").display()));
        } else {
            command.arg("--plaintext");
        }
        command.args(&self.config.node_args);
        let filter = self
            .config
            .node_log_filter
            .clone()
            .or_else(|| std::env::var("RUST_LOG").ok())
            .unwrap_or_else(|| "info,openraft=warn".into());
        command.env("RUST_LOG", filter);
        if let Some(clock) = node.clock() {
            command
                .env("LD_PRELOAD", faketime_library()?)
                .env("FAKETIME", clock.faketime())
                .env("FAKETIME_NO_CACHE", "1");
            // An offset alone moves the wall clock only: monotonic time
            // (leases, timeouts) stays true, as an NTP-less host's would. A
            // rate moves both, as a bad oscillator does.
            if clock.rate.is_none() {
                command.env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
            }
        }
        // The node must not pick up a GEOKV_* setting meant for kvctl.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("GEOKV_") {
                command.env_remove(key);
            }
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .map_err(Error::io(format!("open {}", node.log_path.display())))?;
        *process = Some(NodeProcess::spawn(command, log)?);
        Ok(())
    }

    /// The configuration it was started with.
    pub fn config(&self) -> &LabConfig {
        &self.config
    }

    /// Every node, by id order.
    pub fn nodes(&self) -> Vec<Arc<LabNode>> {
        self.nodes.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Node `id`.
    pub fn node(&self, id: u64) -> Result<Arc<LabNode>> {
        self.nodes()
            .into_iter()
            .find(|n| n.id == id)
            .ok_or_else(|| Error::Unknown { what: "node", name: id.to_string() })
    }

    /// The link table (for fine-grained control).
    pub fn links(&self) -> &Arc<Links> {
        &self.links
    }

    /// Region names.
    pub fn regions(&self) -> &[String] {
        self.config.regions.regions()
    }

    fn region_index(&self, region: &str) -> Result<usize> {
        self.config.regions.index_of(region).ok_or_else(|| Error::Unknown { what: "region", name: region.into() })
    }

    /// The address a client in `region` should use: the advertised address
    /// of the region's first node (an error while the region has none: see
    /// [`LabConfig::start_regions`]).
    pub fn endpoint_for_region(&self, region: &str) -> Result<String> {
        self.region_index(region)?;
        let nodes = self.nodes();
        let node = nodes
            .iter()
            .find(|n| n.region == region)
            .ok_or_else(|| Error::State(format!("region {region} has no node yet (add-node --region {region})")))?;
        Ok(node.advertised.to_string())
    }

    /// The source IP of clients in `region`.
    pub fn client_ip_for_region(&self, region: &str) -> Result<IpAddr> {
        Ok(client_ip(self.region_index(region)?))
    }

    /// Per region that has a node: endpoint and client source IP.
    pub fn region_views(&self) -> Vec<RegionView> {
        self.regions()
            .iter()
            .filter_map(|region| {
                Some(RegionView {
                    region: region.clone(),
                    endpoint: self.endpoint_for_region(region).ok()?,
                    client_ip: self.client_ip_for_region(region).ok()?,
                })
            })
            .collect()
    }

    /// A client configuration for a client in `region`: its endpoint and
    /// source IP.
    pub fn client_config_for_region(&self, region: &str) -> Result<ClientConfig> {
        Ok(ClientConfig::new([self.endpoint_for_region(region)?])
            .local_address(Some(self.client_ip_for_region(region)?))
            .region(Some(region.to_string()))
            .tls(self.client_tls()))
    }

    /// With TLS: the CA and root's client certificate, for clients of this
    /// lab.
    pub fn client_tls(&self) -> Option<geokv_client::ClientTls> {
        self.client_tls.clone()
    }

    /// A channel to `addr` (a node's own listener), over TLS as root when
    /// the lab runs TLS; connects at once.
    pub async fn channel(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
    ) -> std::result::Result<tonic::transport::Channel, String> {
        let scheme = if self.client_tls.is_some() { "https" } else { "http" };
        let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(connect_timeout);
        if let Some(tls) = self.tonic_tls() {
            endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
        }
        endpoint.connect().await.map_err(|e| format!("connect: {e}"))
    }

    /// With TLS: tonic's settings for a raw channel to a node as root (dial
    /// it as `https://`).
    pub fn tonic_tls(&self) -> Option<tonic::transport::ClientTlsConfig> {
        let tls = self.client_tls.as_ref()?;
        let (cert, key) = tls.identity.clone().expect("the lab's clients are root");
        Some(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&tls.ca_certificate_pem))
                .identity(tonic::transport::Identity::from_pem(cert, key)),
        )
    }

    /// A connected client in `region`.
    pub async fn client_for_region(&self, region: &str) -> Result<Client> {
        Ok(self.client_config_for_region(region)?.connect().await?)
    }

    fn with_process<T>(&self, id: u64, act: impl FnOnce(&NodeProcess) -> Result<T>) -> Result<T> {
        let node = self.node(id)?;
        let process = node.process();
        match process.as_ref() {
            Some(p) if p.is_alive() => act(p),
            _ => Err(Error::State(format!("node {id} is not running"))),
        }
    }

    fn lock_proxies(&self) -> MutexGuard<'_, BTreeMap<u64, JoinHandle<()>>> {
        self.proxies.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// SIGKILLs node `id` (a crash), and stops its front proxy: the
    /// connections it relayed break and new ones are refused, so a client
    /// can tell the request was never sent.
    pub fn kill(&self, id: u64) -> Result<()> {
        self.with_process(id, |p| {
            p.kill();
            Ok(())
        })?;
        if let Some(proxy) = self.lock_proxies().remove(&id) {
            proxy.abort();
        }
        self.write_state()
    }

    /// Starts node `id` again on its data directory (and its front proxy,
    /// on the same address, if [`Lab::kill`] stopped it). Must be called
    /// within the lab's tokio runtime.
    pub fn restart(&self, id: u64) -> Result<()> {
        let node = self.node(id)?;
        let mut proxies = self.lock_proxies();
        if let std::collections::btree_map::Entry::Vacant(slot) = proxies.entry(id) {
            let listener = rebind(node.advertised)?;
            let proxy = run_front_proxy(listener, node.listen, Endpoint::Node(id), self.links.clone());
            slot.insert(tokio::spawn(proxy));
        }
        drop(proxies);
        self.spawn(&node)?;
        self.write_state()
    }

    /// Restarts node `id` with `clock` (`None`: a true clock again), through
    /// libfaketime (Debian's `faketime` package); a no-op when it already
    /// runs so.
    pub async fn set_clock(&self, id: u64, clock: Option<ClockFault>) -> Result<()> {
        let node = self.node(id)?;
        if let Some(clock) = &clock {
            clock.validate()?;
            faketime_library()?;
        }
        if node.clock() == clock && node.state() == ProcessState::Running {
            return Ok(());
        }
        *node.clock.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = clock;
        if node.state() != ProcessState::Killed {
            self.kill(id)?;
        }
        self.restart_after_kill(id).await
    }

    /// [`Lab::restart`] right after [`Lab::kill`]: the killed front proxy's
    /// listener closes only once its aborted task has been dropped, so the
    /// address is retried until it is free, for at most [`REBIND_TIMEOUT`].
    pub async fn restart_after_kill(&self, id: u64) -> Result<()> {
        let deadline = Instant::now() + REBIND_TIMEOUT;
        loop {
            match self.restart(id) {
                Err(Error::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline =>
                {
                    tokio::time::sleep(REBIND_POLL).await;
                }
                done => return done,
            }
        }
    }

    /// SIGSTOPs node `id`.
    pub fn pause(&self, id: u64) -> Result<()> {
        self.with_process(id, NodeProcess::pause)
    }

    /// SIGCONTs node `id`.
    pub fn resume(&self, id: u64) -> Result<()> {
        self.with_process(id, NodeProcess::resume)
    }

    /// Every endpoint: nodes, then region clients.
    fn all_endpoints(&self) -> Vec<Endpoint> {
        self.nodes()
            .iter()
            .map(|n| Endpoint::Node(n.id))
            .chain(self.regions().iter().map(|r| Endpoint::Client(r.clone())))
            .collect()
    }

    /// The directed links a shape cuts (asks the nodes for `IsolateLeader`).
    pub async fn links_for(&self, shape: &FaultShape) -> Result<Vec<Link>> {
        let node_ids: Vec<u64> = self.nodes().iter().map(|n| n.id).collect();
        let nodes = |ids: &[u64]| ids.iter().map(|id| Endpoint::Node(*id)).collect::<Vec<_>>();
        let shuffled = |seed: u64| {
            let mut ids = node_ids.clone();
            ids.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
            ids
        };
        let links = match shape {
            FaultShape::Links { from, to, one_way } => {
                for endpoint in from.iter().chain(to) {
                    self.links.check(endpoint)?;
                }
                between(from, to, *one_way)
            }
            FaultShape::IsolateNode { node } => {
                let region = &self.node(*node)?.region;
                let others: Vec<Endpoint> = self
                    .all_endpoints()
                    .into_iter()
                    .filter(|e| match e {
                        Endpoint::Node(id) => id != node,
                        Endpoint::Client(r) => r != region,
                        Endpoint::External => false,
                    })
                    .collect();
                between(&[Endpoint::Node(*node)], &others, false)
            }
            FaultShape::IsolateRegion { region } => {
                self.region_index(region)?;
                let inside = |e: &Endpoint| match e {
                    Endpoint::Node(id) => self.node(*id).is_ok_and(|n| &n.region == region),
                    Endpoint::Client(r) => r == region,
                    Endpoint::External => false,
                };
                let (a, b): (Vec<Endpoint>, Vec<Endpoint>) = self.all_endpoints().into_iter().partition(inside);
                between(&a, &b, false)
            }
            FaultShape::IsolateLeader { shard } => {
                let leader = self
                    .leader_of(*shard)
                    .await?
                    .ok_or_else(|| Error::State(format!("shard {shard} has no leader to isolate")))?;
                return Box::pin(self.links_for(&FaultShape::IsolateNode { node: leader })).await;
            }
            FaultShape::RandomHalves { seed } => {
                let ids = shuffled(*seed);
                let (minority, majority) = ids.split_at(ids.len() / 2);
                between(&nodes(minority), &nodes(majority), false)
            }
            FaultShape::MajoritiesRing { seed } => {
                let ids = shuffled(*seed);
                let n = ids.len();
                if n < 5 {
                    return Err(Error::Config(format!("majorities ring needs 5 or more nodes, the lab has {n}")));
                }
                // Each node keeps `reach` neighbours on each side: with itself,
                // a majority; any two nodes' majorities differ.
                let reach = (n / 2).div_ceil(2);
                let mut cut = Vec::new();
                for i in 0..n {
                    for j in 0..n {
                        let distance = (i + n - j) % n;
                        if i != j && distance.min(n - distance) > reach {
                            cut.push((Endpoint::Node(ids[i]), Endpoint::Node(ids[j])));
                        }
                    }
                }
                cut
            }
            FaultShape::Bridge { seed } => {
                let ids = shuffled(*seed);
                let n = ids.len();
                if n < 5 {
                    return Err(Error::Config(format!("a bridge needs 5 or more nodes, the lab has {n}")));
                }
                let (left, rest) = ids.split_at(n / 2);
                between(&nodes(left), &nodes(&rest[1..]), false)
            }
        };
        Ok(links)
    }

    /// Cuts the links of `shape` by `mode`; returns them.
    pub async fn partition(&self, shape: &FaultShape, mode: Partition) -> Result<Vec<Link>> {
        let links = self.links_for(shape).await?;
        self.links.set_partition(links.iter().cloned(), mode);
        Ok(links)
    }

    /// Isolates node `id` (stall).
    pub async fn isolate_node(&self, id: u64) -> Result<Vec<Link>> {
        self.partition(&FaultShape::IsolateNode { node: id }, Partition::Stall).await
    }

    /// Isolates a region (stall).
    pub async fn isolate_region(&self, region: &str) -> Result<Vec<Link>> {
        self.partition(&FaultShape::IsolateRegion { region: region.into() }, Partition::Stall).await
    }

    /// Isolates the current leader of `shard` (stall).
    pub async fn isolate_leader(&self, shard: u64) -> Result<Vec<Link>> {
        self.partition(&FaultShape::IsolateLeader { shard }, Partition::Stall).await
    }

    /// Clears every partition (latency overrides stay).
    pub fn heal(&self) {
        self.links.heal(None, false);
    }

    /// Clears partitions (and latency overrides with `latency`) between each
    /// of `a` and each of `b`, both ways.
    pub fn heal_between(&self, a: &[Endpoint], b: &[Endpoint], latency: bool) -> Result<()> {
        for endpoint in a.iter().chain(b) {
            self.links.check(endpoint)?;
        }
        self.links.heal(Some(between(a, b, false)), latency);
        Ok(())
    }

    /// Sets the one-way delay and/or jitter of the links from each of `from`
    /// to each of `to` (and back unless `one_way`).
    pub fn set_latency(
        &self,
        from: &[Endpoint],
        to: &[Endpoint],
        one_way: bool,
        delay_ms: Option<u64>,
        jitter_ms: Option<u64>,
    ) -> Result<Vec<Link>> {
        for endpoint in from.iter().chain(to) {
            self.links.check(endpoint)?;
        }
        let links = between(from, to, one_way);
        self.links.set_latency(links.iter().cloned(), delay_ms, jitter_ms);
        Ok(links)
    }

    /// Node `id`'s own status, asked directly (not through its proxy).
    pub async fn node_status(&self, id: u64) -> Result<NodeStatusResponse> {
        let node = self.node(id)?;
        let fail = |cause: String| Error::Node { node: id, cause };
        let call = async {
            let channel = self.channel(node.listen, ADMIN_RPC_TIMEOUT).await.map_err(fail)?;
            AdminClient::new(channel)
                .node_status(NodeStatusRequest {})
                .await
                .map(|r| r.into_inner())
                .map_err(|s| fail(s.message().to_string()))
        };
        tokio::time::timeout(ADMIN_RPC_TIMEOUT, call).await.map_err(|_| fail("status timed out".into()))?
    }

    /// Node `id`'s Prometheus metrics text (`GET /metrics` on its metrics
    /// endpoint, asked directly). Requires [`LabConfig::metrics`].
    pub async fn scrape_metrics(&self, id: u64) -> Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let node = self.node(id)?;
        let fail = |cause: String| Error::Node { node: id, cause };
        let addr = node.metrics.ok_or_else(|| fail("the lab was started without metrics endpoints".into()))?;
        let call = async {
            let mut stream =
                tokio::net::TcpStream::connect(addr).await.map_err(|e| fail(format!("connect to {addr}: {e}")))?;
            stream
                .write_all(b"GET /metrics HTTP/1.0\r\nHost: lab\r\n\r\n")
                .await
                .map_err(|e| fail(format!("send to {addr}: {e}")))?;
            let mut body = Vec::new();
            stream
                .take(MAX_METRICS_BYTES)
                .read_to_end(&mut body)
                .await
                .map_err(|e| fail(format!("read from {addr}: {e}")))?;
            let text = String::from_utf8_lossy(&body).into_owned();
            let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| fail("a reply without headers".into()))?;
            if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
                return Err(fail(format!("metrics endpoint answered {}", head.lines().next().unwrap_or(""))));
            }
            Ok(body.to_string())
        };
        tokio::time::timeout(ADMIN_RPC_TIMEOUT, call).await.map_err(|_| fail("metrics scrape timed out".into()))?
    }

    /// Nodes, link faults, and every shard's leader as the nodes report it.
    pub async fn status(&self) -> LabStatus {
        let nodes = self.nodes();
        let answers = futures::future::join_all(nodes.iter().map(|n| async move {
            let live = matches!(n.state(), ProcessState::Running);
            let answer =
                if live { self.node_status(n.id).await } else { Err(Error::State(format!("{:?}", n.state()))) };
            (n.id, answer)
        }))
        .await;
        let mut shards: BTreeMap<u64, ShardView> = BTreeMap::new();
        let mut unreachable = BTreeMap::new();
        for (id, answer) in answers {
            match answer {
                Ok(status) if status.ready => {
                    for g in status.groups {
                        let view = shards.entry(g.shard_id).or_insert_with(|| ShardView {
                            shard_id: g.shard_id,
                            leader: None,
                            term: 0,
                            applied: BTreeMap::new(),
                            eventual: false,
                        });
                        view.eventual |= g.mode == geokv_proto::kv::ShardMode::Eventual as i32;
                        view.applied.insert(id, g.applied_index);
                        if g.role == "leader" && g.term >= view.term {
                            view.term = g.term;
                            view.leader = Some(id);
                        }
                    }
                }
                Ok(_) => {
                    unreachable.insert(id, "starting".to_string());
                }
                Err(err) => {
                    unreachable.insert(id, err.to_string());
                }
            }
        }
        LabStatus {
            nodes: self.node_views(),
            faults: self.links.faults().into_iter().map(|((from, to), fault)| FaultView { from, to, fault }).collect(),
            shards: shards.into_values().collect(),
            unreachable,
        }
    }

    fn node_views(&self) -> Vec<NodeView> {
        self.nodes()
            .iter()
            .map(|n| NodeView {
                id: n.id,
                region: n.region.clone(),
                state: n.state(),
                pid: n.pid(),
                advertised: n.advertised.to_string(),
                listen: n.listen.to_string(),
                log: n.log_path.display().to_string(),
                metrics: n.metrics.map(|m| m.to_string()),
            })
            .collect()
    }

    /// The node that leads `shard` now (highest term among nodes that say
    /// they lead it), if any answers.
    pub async fn leader_of(&self, shard: u64) -> Result<Option<u64>> {
        let status = self.status().await;
        let view = status.shards.iter().find(|s| s.shard_id == shard);
        match view {
            Some(view) => Ok(view.leader),
            None if status.shards.is_empty() => Ok(None),
            None => Err(Error::Unknown { what: "shard", name: shard.to_string() }),
        }
    }

    /// The id of the data shard holding `key`, from the nodes' reports.
    pub async fn shard_of(&self, key: &[u8]) -> Result<u64> {
        for node in self.nodes() {
            let Ok(status) = self.node_status(node.id).await else { continue };
            for g in status.groups {
                let after_start = key >= g.start.as_slice();
                let before_end = g.end.is_empty() || key < g.end.as_slice();
                if g.shard_id != 0 && after_start && before_end {
                    return Ok(g.shard_id);
                }
            }
        }
        Err(Error::State("no node reported a shard for the key".into()))
    }

    /// Polls `condition` every [`POLL_INTERVAL`] until it returns `Some`, or
    /// fails after `timeout`.
    pub async fn wait_until<'a, T, F, Fut>(&'a self, what: &str, timeout: Duration, mut condition: F) -> Result<T>
    where
        F: FnMut(&'a Lab) -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let start = Instant::now();
        loop {
            if let Some(value) = condition(self).await {
                return Ok(value);
            }
            if start.elapsed() > timeout {
                return Err(Error::Timeout(format!("{what} (after {timeout:?})")));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits until `shard` has a leader satisfying `accept`; returns it.
    pub async fn wait_for_leader(&self, shard: u64, timeout: Duration, accept: impl Fn(u64) -> bool) -> Result<u64> {
        let accept = &accept;
        self.wait_until(&format!("a new leader of shard {shard}"), timeout, |lab| async move {
            lab.leader_of(shard).await.ok().flatten().filter(|id| accept(*id))
        })
        .await
    }

    /// Moves leadership of `shard` to node `to` and waits until it holds.
    pub async fn transfer_leader(&self, shard: u64, to: u64, timeout: Duration) -> Result<()> {
        self.node(to)?;
        let start = Instant::now();
        loop {
            let leader = self.wait_for_leader(shard, timeout.saturating_sub(start.elapsed()), |_| true).await?;
            if leader == to {
                return Ok(());
            }
            let node = self.node(leader)?;
            let ask = async {
                let mut admin = AdminClient::new(self.channel(node.listen, ADMIN_RPC_TIMEOUT).await.ok()?);
                admin.transfer_leader(TransferLeaderRequest { shard_id: shard, to_node: to }).await.ok()
            };
            let _ = tokio::time::timeout(ADMIN_RPC_TIMEOUT, ask).await;
            // Give the transfer a few election rounds before asking again.
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until {
                if self.leader_of(shard).await.ok().flatten() == Some(to) {
                    return Ok(());
                }
                if start.elapsed() > timeout {
                    return Err(Error::Timeout(format!("leadership of shard {shard} to node {to}")));
                }
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        }
    }

    /// A client that dials the nodes' real listeners (no emulated WAN), for
    /// the lab's own admin requests.
    async fn admin_client(&self) -> Result<Client> {
        let endpoints: Vec<String> = self.nodes().iter().map(|n| n.listen.to_string()).collect();
        let mut config = ClientConfig::new(endpoints).tls(self.client_tls());
        config.deadline = MEMBER_CHANGE_TIMEOUT;
        Ok(config.connect().await?)
    }

    /// Starts a new node in `region` that joins the running cluster
    /// (`geokv --join`, every other node a seed), with its own IPs, front
    /// proxy and links like every node; returns its id once the cluster has
    /// admitted it. The lab's id for it is the next one (one above every
    /// node's), which is the one the cluster assigns when only the lab adds
    /// nodes; a different one is an error. With rebalancing on
    /// (`geokv-lab up` default) the cluster then moves replicas onto it.
    pub async fn add_node(&self, region: &str) -> Result<u64> {
        self.region_index(region)?;
        let id = self.nodes().iter().map(|n| n.id).max().unwrap_or(0) + 1;
        if id as usize > MAX_NODES {
            return Err(Error::Config(format!("a lab runs at most {MAX_NODES} nodes")));
        }
        let port = self.config.base_port.unwrap_or(0);
        let listener = TcpListener::bind((advertised_ip(id), port))
            .await
            .map_err(Error::io(format!("bind the front proxy of node {id} on {}:{port}", advertised_ip(id))))?;
        let advertised = listener.local_addr().map_err(Error::io("read a proxy's address"))?;
        let listen = match self.config.base_port {
            Some(port) => SocketAddr::new(node_ip(id), port),
            None => free_addr(node_ip(id))?,
        };
        let metrics = if self.config.metrics { Some(free_addr(node_ip(id))?) } else { None };
        self.links.add_node(id, region, node_ip(id))?;
        let node = Arc::new(LabNode {
            id,
            region: region.to_string(),
            advertised,
            listen,
            data_dir: self.config.data_dir.join(format!("node-{id}")),
            log_path: self.config.data_dir.join(format!("node-{id}.log")),
            metrics,
            process: Mutex::new(None),
            clock: Mutex::new(None),
            joined: true,
        });
        let proxy = run_front_proxy(listener, node.listen, Endpoint::Node(id), self.links.clone());
        self.lock_proxies().insert(id, tokio::spawn(proxy));
        self.nodes.write().unwrap_or_else(|poisoned| poisoned.into_inner()).push(node.clone());
        self.spawn(&node)?;
        self.write_state()?;
        let id_file = geokv_server::join::id_file(&node.data_dir);
        let given = self
            .wait_until(&format!("node {id} admitted to the cluster"), self.config.start_timeout, |_| {
                let id_file = id_file.clone();
                async move { std::fs::read_to_string(&id_file).ok().and_then(|t| t.trim().parse::<u64>().ok()) }
            })
            .await?;
        if given != id {
            return Err(Error::State(format!(
                "the cluster gave the new node id {given}, the lab expected {id}: was a node added outside the lab?"
            )));
        }
        Ok(id)
    }

    /// Drains node `id` (`kvctl node drain --no-wait`): records it, and
    /// returns the shard map version that holds it.
    pub async fn drain(&self, id: u64) -> Result<u64> {
        self.node(id)?;
        Ok(self.admin_client().await?.drain_node(id).await?.map_version)
    }

    /// Removes node `id` (`kvctl node remove --no-wait`); with `force`, a
    /// node holding replicas is drained first. Returns its state now.
    pub async fn remove_node(&self, id: u64, force: bool) -> Result<&'static str> {
        self.node(id)?;
        Ok(self.admin_client().await?.remove_node(id, force).await?.state.as_str())
    }

    /// SIGKILLs every node in `region` (a region lost at once); returns
    /// their ids.
    pub fn kill_region(&self, region: &str) -> Result<Vec<u64>> {
        let ids: Vec<u64> = self.nodes().iter().filter(|n| n.region == region).map(|n| n.id).collect();
        if ids.is_empty() {
            return Err(Error::Unknown { what: "region", name: region.into() });
        }
        for id in &ids {
            self.kill(*id)?;
        }
        Ok(ids)
    }

    /// Records the control API address in `lab.json`.
    pub fn set_control_addr(&self, addr: SocketAddr) -> Result<()> {
        *self.control_addr.lock().unwrap_or_else(|p| p.into_inner()) = Some(addr);
        self.write_state()
    }

    /// The contents of `lab.json`.
    pub fn state(&self) -> LabState {
        LabState {
            lab_pid: std::process::id(),
            control_addr: self.control_addr.lock().unwrap_or_else(|p| p.into_inner()).map(|a| a.to_string()),
            initial_cluster: self.initial_cluster.clone(),
            regions: self.region_views(),
            nodes: self.node_views(),
        }
    }

    /// Writes `lab.json` (atomically: a temporary file, then rename).
    pub fn write_state(&self) -> Result<()> {
        let path = self.config.data_dir.join(STATE_FILE);
        let tmp = self.config.data_dir.join(format!("{STATE_FILE}.tmp"));
        let text = serde_json::to_string_pretty(&self.state()).expect("lab state serializes");
        std::fs::write(&tmp, text).map_err(Error::io(format!("write {}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(Error::io(format!("rename to {}", path.display())))
    }

    /// Stops every node (SIGTERM, then SIGKILL after a grace period when
    /// `graceful`; else SIGKILL) and every proxy. The data stays.
    pub fn shutdown(&self, graceful: bool) {
        let processes: Vec<_> = self.nodes().iter().map(|n| n.process().take()).collect();
        std::thread::scope(|scope| {
            for process in processes.into_iter().flatten() {
                scope.spawn(move || {
                    if graceful {
                        process.stop(GRACEFUL_STOP_TIMEOUT);
                    } else {
                        process.kill();
                    }
                });
            }
        });
        for (_, proxy) in std::mem::take(&mut *self.lock_proxies()) {
            proxy.abort();
        }
        let _ = self.write_state();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.shutdown(false);
    }
}

/// Links from each of `a` to each of `b` (and back unless `one_way`),
/// skipping self-links and client-to-client pairs (no such connections).
fn between(a: &[Endpoint], b: &[Endpoint], one_way: bool) -> Vec<Link> {
    let mut links = BTreeSet::new();
    for x in a {
        for y in b {
            let clients = !matches!(x, Endpoint::Node(_)) && !matches!(y, Endpoint::Node(_));
            if x == y || clients {
                continue;
            }
            links.insert((x.clone(), y.clone()));
            if !one_way {
                links.insert((y.clone(), x.clone()));
            }
        }
    }
    links.into_iter().collect()
}

/// How long [`Lab::restart_after_kill`] waits for a killed node's front-proxy
/// address to come free.
pub const REBIND_TIMEOUT: Duration = Duration::from_secs(2);
const REBIND_POLL: Duration = Duration::from_millis(10);

/// A listener on `addr` again, for a proxy that was stopped (address reuse
/// on: connections of the old one may linger in TIME_WAIT).
fn rebind(addr: SocketAddr) -> Result<TcpListener> {
    let fail = Error::io(format!("bind the front proxy on {addr} again"));
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None);
    let listener = socket.and_then(|socket| {
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        TcpListener::from_std(socket.into())
    });
    listener.map_err(fail)
}

/// A port the OS considers free on `ip` right now.
fn free_addr(ip: IpAddr) -> Result<SocketAddr> {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map_err(Error::io(format!("find a free port on {ip}")))
}

/// Refuses a data directory in use by a running lab, or holding nodes of a
/// different topology.
fn check_data_dir(data_dir: &Path, initial_cluster: &str, nodes: &[LabNode]) -> Result<()> {
    let Ok(previous) = LabState::read(data_dir) else { return Ok(()) };
    if previous.lab_pid != std::process::id() && crate::process::pid_exists(previous.lab_pid) {
        return Err(Error::State(format!(
            "a lab (pid {}) is running on {}; stop it with `geokv-lab down` or use another --data-dir",
            previous.lab_pid,
            data_dir.display()
        )));
    }
    let has_data = nodes.iter().any(|n| n.data_dir.exists());
    if has_data && previous.initial_cluster != initial_cluster {
        return Err(Error::Config(format!(
            "{} holds nodes of another lab ({}); this one would be {}. Use another --data-dir, \
             or the same --regions/--nodes-per-region/--base-port, or `geokv-lab down --wipe` first",
            data_dir.display(),
            previous.initial_cluster,
            initial_cluster
        )));
    }
    Ok(())
}

/// Where Debian's `faketime` package puts the multi-threaded libfaketime.
const FAKETIME_LIBRARIES: [&str; 2] =
    ["/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1", "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1"];

fn faketime_library() -> Result<&'static str> {
    FAKETIME_LIBRARIES.into_iter().find(|p| std::path::Path::new(p).exists()).ok_or_else(|| {
        Error::State("clock skew needs libfaketime: apt-get install faketime (cargo xtask test installs it)".into())
    })
}

/// A node's clock fault: its clocks' offset from the machine's, and how
/// fast they run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClockFault {
    /// The wall clock's offset, in ms (monotonic time keeps no offset).
    pub offset_ms: i64,
    /// Both clocks, wall and monotonic, advance at this rate (0.5: half
    /// speed); `None` is true speed.
    pub rate: Option<f64>,
}

/// The slowest and fastest clock rate [`ClockFault`] accepts.
pub const CLOCK_RATE_RANGE: std::ops::RangeInclusive<f64> = 0.1..=10.0;

impl ClockFault {
    fn validate(&self) -> Result<()> {
        match self.rate {
            Some(rate) if !CLOCK_RATE_RANGE.contains(&rate) => {
                Err(Error::Config(format!("clock rate {rate} is outside {CLOCK_RATE_RANGE:?}")))
            }
            _ => Ok(()),
        }
    }

    /// libfaketime's `FAKETIME`: a relative offset in signed seconds, then
    /// ` xRATE` when the rate is not true.
    fn faketime(&self) -> String {
        let sign = if self.offset_ms < 0 { '-' } else { '+' };
        let abs = self.offset_ms.unsigned_abs();
        let offset = format!("{sign}{}.{:03}", abs / 1000, abs % 1000);
        match self.rate {
            Some(rate) => format!("{offset} x{rate}"),
            None => offset,
        }
    }
}

#[cfg(test)]
mod clock_tests {
    use super::ClockFault;

    #[test]
    fn faketime_offsets_are_signed_seconds_and_rates_follow() {
        let offset = |offset_ms| ClockFault { offset_ms, rate: None }.faketime();
        assert_eq!(offset(500), "+0.500");
        assert_eq!(offset(-1_250), "-1.250");
        assert_eq!(offset(0), "+0.000");
        assert_eq!(offset(20_000), "+20.000");
        assert_eq!(ClockFault { offset_ms: 0, rate: Some(0.25) }.faketime(), "+0.000 x0.25");
        assert!(ClockFault { offset_ms: 0, rate: Some(0.0) }.validate().is_err());
        assert!(ClockFault { offset_ms: 0, rate: Some(2.0) }.validate().is_ok());
    }
}
