//! The systems under test as local process clusters: three `geokv` nodes or
//! three etcd members on loopback, each a real OS process with its own data
//! directory, started by the bench and killed when the cluster is dropped.
//!
//! Both get the same heartbeat (300 ms) and the same *quiet period*: the
//! shortest time without a heartbeat after which a new leader can be
//! elected, 1500 ms, the floor of any failover and the margin against
//! spurious elections. etcd: `--election-timeout=1500` (a follower campaigns
//! after a random [1500, 3000) ms). geokv (openraft): a follower campaigns
//! after the leader lease (`election_timeout_max_ms`) plus one election
//! timeout, so geokv's defaults 500–1000 ms give [1500, 2000) ms. So failover
//! windows compare like with like. Neither runs behind the lab's
//! proxies here: the `local` and `failover` scenarios measure the engines,
//! not an emulated WAN.

use std::fs::OpenOptions;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use geokv_client::{Client, ClientConfig, Role};
use geokv_lab::NodeProgram;
use geokv_lab::process::NodeProcess;
use tonic::transport::{Channel, Endpoint};

use crate::etcdpb;

/// Leader heartbeat of both systems, in ms.
pub const HEARTBEAT_MS: u64 = 300;
/// etcd's election timeout (it randomizes over [1x, 2x)), in ms.
pub const ETCD_ELECTION_MS: u64 = 1500;
/// geokv's election timeout range, in ms (its defaults): lease 1000 plus a
/// timeout in [500, 1000) starts at the same 1500 ms as etcd's.
pub const ELECTION_MIN_MS: u64 = 500;
pub const ELECTION_MAX_MS: u64 = 1000;
/// How long a cluster may take to elect leaders after starting.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Time one status RPC may take.
const STATUS_RPC_TIMEOUT: Duration = Duration::from_secs(1);
/// How often readiness is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// A port the OS considers free on 127.0.0.1 now.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn spawn_logged(command: Command, log: &Path) -> Result<NodeProcess> {
    let file =
        OpenOptions::new().create(true).append(true).open(log).with_context(|| format!("open {}", log.display()))?;
    NodeProcess::spawn(command, file).map_err(|e| anyhow!("{e}"))
}

/// One member of a local cluster.
pub struct Member {
    /// 1-based.
    pub id: u64,
    /// Address clients dial.
    pub client_addr: SocketAddr,
    command: Vec<String>,
    log: PathBuf,
    process: Option<NodeProcess>,
}

impl Member {
    /// The member's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().filter(|p| p.is_alive()).map(|p| p.pid())
    }

    fn start(&mut self) -> Result<()> {
        let mut command = Command::new(&self.command[0]);
        command.args(&self.command[1..]);
        command.env("RUST_LOG", "warn");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("GEOKV_") {
                command.env_remove(key);
            }
        }
        self.process = Some(spawn_logged(command, &self.log)?);
        Ok(())
    }

    /// A member run by `command` (program first), logging to `log`.
    pub fn new(id: u64, client_addr: SocketAddr, command: Vec<String>, log: PathBuf) -> Member {
        Member { id, client_addr, command, log, process: None }
    }

    /// SIGKILLs the member (and reaps it).
    pub fn kill(&mut self) {
        if let Some(process) = self.process.take() {
            process.kill();
        }
    }
}

/// Which system a cluster runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    Geokv,
    /// geokv with TLS and authentication (clients present root's
    /// certificate): what TLS costs, next to plaintext geokv in one run.
    GeokvTls,
    Etcd,
}

impl System {
    pub fn as_str(self) -> &'static str {
        match self {
            System::Geokv => "geokv",
            System::GeokvTls => "geokv-tls",
            System::Etcd => "etcd",
        }
    }

    /// geokv, with or without TLS.
    pub fn is_geokv(self) -> bool {
        matches!(self, System::Geokv | System::GeokvTls)
    }
}

impl LocalCluster {
    /// Starts `members` (not yet running) with data under `dir`.
    pub fn from_members(system: System, members: Vec<Member>, dir: tempfile::TempDir) -> Result<LocalCluster> {
        let mut cluster = LocalCluster { system, members, _dir: dir, client_tls: None };
        for m in &mut cluster.members {
            m.start()?;
        }
        Ok(cluster)
    }
}

/// A local cluster of either system. Dropping it kills every member.
pub struct LocalCluster {
    pub system: System,
    pub members: Vec<Member>,
    /// Keeps the data directories until the cluster is dropped.
    _dir: tempfile::TempDir,
    /// geokv with TLS: the CA and root's client certificate.
    pub client_tls: Option<geokv_client::ClientTls>,
}

impl LocalCluster {
    /// Starts three `geokv` nodes from `bin` and waits for every shard to
    /// have a leader.
    pub async fn start_geokv(program: &NodeProgram, nodes: usize) -> Result<LocalCluster> {
        LocalCluster::start_geokv_with(program, nodes, false).await
    }

    /// [`LocalCluster::start_geokv`], with TLS and authentication when
    /// `tls` (a fresh CA, a node certificate for 127.0.0.1, root's client
    /// certificate; system [`System::GeokvTls`]).
    pub async fn start_geokv_with(program: &NodeProgram, nodes: usize, tls: bool) -> Result<LocalCluster> {
        let prefix: Vec<String> = match program {
            NodeProgram::Lab(path) => vec![path.display().to_string(), "node".into()],
            NodeProgram::Geokv(path) => vec![path.display().to_string()],
        };
        if !Path::new(&prefix[0]).exists() {
            bail!("no geokv node binary at {}", prefix[0]);
        }
        let dir = tempfile::Builder::new().prefix("geokv-bench-geokv-").tempdir()?;
        let certs = dir.path().join("certs");
        let (security, client_tls) = if tls {
            use geokv_server::certs::{Validity, create_ca, create_client, create_node};
            let validity = Validity::days(1);
            create_ca(&certs, validity)?;
            create_node(&certs, "node", &["127.0.0.1".into()], validity)?;
            let root = create_client(&certs, "root", validity)?;
            let flags = vec![
                format!("--tls-ca={}", certs.join("ca.pem").display()),
                format!("--tls-cert={}", certs.join("node.pem").display()),
                format!("--tls-key={}", certs.join("node-key.pem").display()),
            ];
            let client = geokv_client::ClientTls::from_files(&certs.join("ca.pem"), Some((&root.cert, &root.key)))?;
            (flags, Some(client))
        } else {
            (vec!["--plaintext".to_string()], None)
        };
        let addrs: Vec<SocketAddr> =
            (0..nodes).map(|_| Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?)))).collect::<Result<_>>()?;
        let initial =
            addrs.iter().enumerate().map(|(i, a)| format!("{}={a}@r{}", i + 1, i + 1)).collect::<Vec<_>>().join(",");
        let mut members = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let id = i as u64 + 1;
            let mut command = prefix.clone();
            command.extend([
                format!("--node-id={id}"),
                format!("--listen={addr}"),
                format!("--data-dir={}", dir.path().join(format!("node-{id}")).display()),
                format!("--initial-cluster={initial}"),
                format!("--heartbeat-interval-ms={HEARTBEAT_MS}"),
                format!("--election-timeout-min-ms={ELECTION_MIN_MS}"),
                format!("--election-timeout-max-ms={ELECTION_MAX_MS}"),
                // The eventual targets' range (the Raft targets' shard is untouched).
                format!("--eventual-ranges={}", crate::load::EVENTUAL_RANGE),
            ]);
            command.extend(security.iter().cloned());
            let log = dir.path().join(format!("node-{id}.log"));
            members.push(Member { id, client_addr: *addr, command, log, process: None });
        }
        let system = if tls { System::GeokvTls } else { System::Geokv };
        let mut cluster = LocalCluster { system, members, _dir: dir, client_tls };
        for m in &mut cluster.members {
            m.start()?;
        }
        cluster.wait_ready(START_TIMEOUT).await?;
        Ok(cluster)
    }

    /// Starts a 3-member etcd cluster from `bin` and waits for a leader.
    pub async fn start_etcd(bin: &Path, members: usize) -> Result<LocalCluster> {
        if !bin.exists() {
            bail!("no etcd at {} (apt-get install etcd-server)", bin.display());
        }
        let dir = tempfile::Builder::new().prefix("geokv-bench-etcd-").tempdir()?;
        let ports: Vec<(u16, u16)> = (0..members).map(|_| Ok((free_port()?, free_port()?))).collect::<Result<_>>()?;
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{}=http://127.0.0.1:{peer}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("geokv-bench-{}-{}", std::process::id(), ports[0].0);
        let mut list = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let id = i as u64 + 1;
            let command = etcd_command(
                bin,
                id,
                &dir.path().join(format!("m{id}")),
                &format!("http://127.0.0.1:{client}"),
                &format!("http://127.0.0.1:{client}"),
                &format!("http://127.0.0.1:{peer}"),
                &format!("http://127.0.0.1:{peer}"),
                &initial,
                &token,
            );
            let log = dir.path().join(format!("m{id}.log"));
            list.push(Member {
                id,
                client_addr: SocketAddr::from(([127, 0, 0, 1], *client)),
                command,
                log,
                process: None,
            });
        }
        let mut cluster = LocalCluster { system: System::Etcd, members: list, _dir: dir, client_tls: None };
        for m in &mut cluster.members {
            m.start()?;
        }
        cluster.wait_ready(START_TIMEOUT).await?;
        Ok(cluster)
    }

    /// Client addresses of every member, `host:port`.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_addr.to_string()).collect()
    }

    /// Pids of the running members.
    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().filter_map(Member::pid).collect()
    }

    /// Where the member logs are (for error messages).
    pub fn log_dir(&self) -> &Path {
        self._dir.path()
    }

    /// SIGKILLs member `id`.
    pub fn kill(&mut self, id: u64) {
        if let Some(m) = self.members.iter_mut().find(|m| m.id == id) {
            m.kill();
        }
    }

    /// Starts member `id` again on its data.
    pub fn restart(&mut self, id: u64) -> Result<()> {
        let m = self.members.iter_mut().find(|m| m.id == id).ok_or_else(|| anyhow!("no member {id}"))?;
        m.start()
    }

    /// Waits until every running member reports a leader (geokv: for every
    /// shard it hosts) and they agree.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<u64> {
        let start = Instant::now();
        loop {
            match self.leader().await {
                Ok(Some(leader)) => return Ok(leader),
                Ok(None) | Err(_) if start.elapsed() < timeout => tokio::time::sleep(POLL_INTERVAL).await,
                Ok(None) => bail!(
                    "{} cluster has no leader after {timeout:?}; logs in {}",
                    self.system.as_str(),
                    self.log_dir().display()
                ),
                Err(err) => bail!(
                    "{} cluster not ready after {timeout:?}: {err:#}; logs in {}",
                    self.system.as_str(),
                    self.log_dir().display()
                ),
            }
        }
    }

    /// The member leading the bench's keys, when every running member
    /// agrees on one and (geokv) every Raft shard has a leader.
    pub async fn leader(&self) -> Result<Option<u64>> {
        match self.system {
            System::Geokv | System::GeokvTls => self.geokv_leader().await,
            System::Etcd => self.etcd_leader().await,
        }
    }

    async fn geokv_leader(&self) -> Result<Option<u64>> {
        let config = ClientConfig::new(self.endpoints())
            .max_attempts(1)
            .rpc_timeout(STATUS_RPC_TIMEOUT)
            .tls(self.client_tls.clone());
        let client: Client = tokio::time::timeout(STATUS_RPC_TIMEOUT * 2, config.connect()).await??;
        let map = client.shard_map().await?;
        let shard = map
            .shard_for_key(crate::load::KEY_PREFIX.as_bytes())
            .ok_or_else(|| anyhow!("no shard for the keys"))?
            .shard_id;
        let mut leader_of_keys = None;
        let mut shards_led = std::collections::BTreeSet::new();
        for m in self.members.iter().filter(|m| m.pid().is_some()) {
            let status = client.node_status(&m.client_addr.to_string()).await?;
            if !status.ready {
                return Ok(None);
            }
            for g in &status.groups {
                if g.role == Role::Leader {
                    shards_led.insert(g.shard_id);
                    if g.shard_id == shard {
                        leader_of_keys = Some(m.id);
                    }
                }
            }
        }
        // Eventual shards are leaderless.
        let all_led = map.shards.iter().all(|s| s.mode.is_eventual() || shards_led.contains(&s.shard_id));
        Ok(leader_of_keys.filter(|_| all_led))
    }

    async fn etcd_leader(&self) -> Result<Option<u64>> {
        let (ids, leaders) = etcd_member_ids(self).await?;
        let leaders: std::collections::BTreeSet<u64> = leaders.into_iter().collect();
        if leaders.len() != 1 {
            return Ok(None);
        }
        let leader = *leaders.iter().next().expect("one");
        Ok(ids.iter().find(|(_, member)| *member == leader).map(|(id, _)| *id))
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
    }
}

/// The command line of etcd member `id` (URLs are `http://host:port`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn etcd_command(
    bin: &Path,
    id: u64,
    data_dir: &Path,
    listen_client: &str,
    advertise_client: &str,
    listen_peer: &str,
    advertise_peer: &str,
    initial_cluster: &str,
    token: &str,
) -> Vec<String> {
    vec![
        bin.display().to_string(),
        format!("--name=m{id}"),
        format!("--data-dir={}", data_dir.display()),
        format!("--listen-client-urls={listen_client}"),
        format!("--advertise-client-urls={advertise_client}"),
        format!("--listen-peer-urls={listen_peer}"),
        format!("--initial-advertise-peer-urls={advertise_peer}"),
        format!("--initial-cluster={initial_cluster}"),
        "--initial-cluster-state=new".into(),
        format!("--initial-cluster-token={token}"),
        format!("--heartbeat-interval={HEARTBEAT_MS}"),
        format!("--election-timeout={ETCD_ELECTION_MS}"),
        "--logger=zap".into(),
        "--log-outputs=stderr".into(),
        "--log-level=warn".into(),
    ]
}

/// A gRPC endpoint for an etcd member at `host:port`, dialed from
/// `source_ip` when given.
pub fn etcd_channel(addr: &str, source_ip: Option<IpAddr>) -> Endpoint {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("valid uri")
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .local_address(source_ip)
}

/// A lazily connected channel to an etcd member.
pub fn etcd_lazy_channel(addr: &str, source_ip: Option<IpAddr>) -> Channel {
    etcd_channel(addr, source_ip).connect_lazy()
}

/// etcd's member id of each running member, by our 1-based id, and the
/// leader's member id as each reports it.
pub async fn etcd_member_ids(cluster: &LocalCluster) -> Result<(Vec<(u64, u64)>, Vec<u64>)> {
    let mut ids = Vec::new();
    let mut leaders = Vec::new();
    for m in cluster.members.iter().filter(|m| m.pid().is_some()) {
        let channel = etcd_channel(&m.client_addr.to_string(), None).connect().await?;
        let mut maintenance = etcdpb::maintenance_client::MaintenanceClient::new(channel);
        let mut request = tonic::Request::new(etcdpb::StatusRequest {});
        request.set_timeout(STATUS_RPC_TIMEOUT);
        let status = maintenance.status(request).await?.into_inner();
        ids.push((m.id, status.header.map(|h| h.member_id).unwrap_or(0)));
        leaders.push(status.leader);
    }
    Ok((ids, leaders))
}

/// Asks etcd to move leadership to member `to` (1-based) and waits for it.
pub async fn etcd_move_leader(cluster: &LocalCluster, to: u64, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        let current = cluster.leader().await.ok().flatten();
        if current == Some(to) {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!("etcd leadership did not move to member {to} within {timeout:?}");
        }
        if let Some(current) = current {
            let (ids, _) = etcd_member_ids(cluster).await?;
            let target =
                ids.iter().find(|(id, _)| *id == to).map(|(_, m)| *m).ok_or_else(|| anyhow!("no member {to}"))?;
            let addr = cluster.members.iter().find(|m| m.id == current).expect("leader is a member").client_addr;
            let channel = etcd_channel(&addr.to_string(), None).connect().await?;
            let mut maintenance = etcdpb::maintenance_client::MaintenanceClient::new(channel);
            let _ = maintenance.move_leader(etcdpb::MoveLeaderRequest { target_id: target }).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
