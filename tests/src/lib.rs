//! geokv-tests: a harness that runs real `geokv` node processes on loopback,
//! and the integration tests that use it (`tests/`).
//!
//! A [`TestCluster`] owns its processes and a temporary directory: nodes bind
//! ports chosen by the OS, are killed with SIGKILL on demand (or on `Drop`),
//! and restart on the same data directory. Waiting is always by polling a
//! condition against a deadline (never a bare sleep): a loaded 2-core CI box
//! may take seconds to elect a leader, and the tests must still pass.

pub mod scenario;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use geokv_proto::admin::admin_client::AdminClient;
use geokv_proto::admin::{GetShardMapRequest, GroupStatus, NodeStatusRequest, NodeStatusResponse};
use geokv_proto::kv::kv_client::KvClient;
use tonic::transport::Channel;

/// Regions the harness labels its nodes with, in node order.
pub const REGIONS: [&str; 3] = ["us-east", "us-west", "eu-west"];

/// How long the harness waits for a cluster condition before failing.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);

/// Per key written under faults, the value acknowledged, or `None` when the
/// outcome is unknown (shared by the writers of a test).
pub type Outcomes = std::sync::Arc<tokio::sync::Mutex<BTreeMap<String, Option<String>>>>;

/// Resident memory of process `pid`, bytes (Linux; 0 if it is gone).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    kib.unwrap_or(0) * 1024
}

/// `len` random bytes, the same for the same `seed`: a value no
/// compression shrinks, that a test can write and later check.
pub fn incompressible_value(seed: u64, len: usize) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut value = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut value);
    value
}

/// Puts `key = value` and records its outcome in `outcomes`: the value when
/// acknowledged, `None` when indeterminate or retryable; any other error
/// fails the test.
/// Scans every key through `client` and checks `outcomes` against it: every
/// acknowledged write is there with its value, and no key appears that was
/// never written. Returns (acknowledged, attempted); panics on a violation
/// or when fewer than half were acknowledged.
pub async fn check_outcomes(client: &geokv_client::Client, outcomes: &Outcomes) -> (usize, usize) {
    let kvs = wait_for("a full scan", DEFAULT_DEADLINE, || async { client.scan(..).collect().await.ok() }).await;
    let stored: BTreeMap<String, String> =
        kvs.into_iter().map(|kv| (String::from_utf8(kv.key).unwrap(), String::from_utf8(kv.value).unwrap())).collect();
    let outcomes = outcomes.lock().await;
    let mut acked = 0;
    for (key, outcome) in outcomes.iter() {
        if let Some(value) = outcome {
            acked += 1;
            assert_eq!(stored.get(key), Some(value), "acknowledged write of {key} lost");
        }
    }
    for key in stored.keys() {
        assert!(outcomes.contains_key(key), "{key} was never written");
    }
    assert!(acked >= outcomes.len() / 2, "only {acked} of {} writes acknowledged", outcomes.len());
    (acked, outcomes.len())
}

/// Under load, writers still running: every write acknowledged before
/// this call (each key written once) is found with its value by a full scan
/// made after it; writes still in flight may or may not show. Returns how
/// many were checked.
pub async fn check_acknowledged_so_far(client: &geokv_client::Client, outcomes: &Outcomes) -> usize {
    let acked: BTreeMap<String, String> =
        outcomes.lock().await.iter().filter_map(|(k, v)| Some((k.clone(), v.clone()?))).collect();
    let kvs = wait_for("a full scan", DEFAULT_DEADLINE, || async { client.scan(..).collect().await.ok() }).await;
    let stored: BTreeMap<String, String> =
        kvs.into_iter().map(|kv| (String::from_utf8(kv.key).unwrap(), String::from_utf8(kv.value).unwrap())).collect();
    for (key, value) in &acked {
        assert_eq!(stored.get(key), Some(value), "acknowledged write of {key} missing from a later scan");
    }
    acked.len()
}

/// Writes keys `<prefix>0000`, `<prefix>0001`, ... (value `v<i>`) through
/// `client`, recording each outcome, until `count` writes, `time_limit`, or
/// `stop` is set.
pub async fn write_prefix(
    client: geokv_client::Client,
    prefix: &'static str,
    count: usize,
    time_limit: Duration,
    outcomes: Outcomes,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let started = Instant::now();
    for i in 0..count {
        if started.elapsed() > time_limit || stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        put_and_record(&client, format!("{prefix}{i:04}"), format!("v{i}"), &outcomes).await;
    }
}

pub async fn put_and_record(client: &geokv_client::Client, key: String, value: String, outcomes: &Outcomes) {
    let outcome = match client.put(&key, &value).await {
        Ok(_) => Some(value),
        Err(e) if e.is_indeterminate() || e.is_retryable() => None,
        Err(e) => panic!("put {key}: {e}"),
    };
    outcomes.lock().await.insert(key, outcome);
}

/// Settings passed to every node.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub nodes: usize,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub snapshot_every_entries: u64,
    pub logs_kept_after_snapshot: u64,
    pub split_points: Vec<String>,
    /// Serve Prometheus metrics on a free port per node ([`TestCluster::metrics`]).
    pub metrics: bool,
    pub extra_args: Vec<String>,
    /// Environment variables set for every node process.
    pub env: Vec<(String, String)>,
    /// Whether the meta leader rebalances replicas (`--rebalance`). Off by
    /// default here: most tests need the layout they started with.
    pub rebalance: bool,
    /// Serve TLS with authentication: the harness makes a CA, a node
    /// certificate for 127.0.0.1 and root's client certificate in
    /// [`TestCluster::certs_dir`], and [`TestCluster::client`] connects as
    /// root. Off: `--plaintext`.
    pub tls: bool,
    /// Each node's listen address, in id order; empty: a free port on
    /// 127.0.0.1 each. A cluster restarted from [`ClusterOptions::seed_dir`]
    /// must listen where its shard map says its nodes are.
    pub addrs: Vec<String>,
    /// Start from a copy of the data directories `node-1`, `node-2`, … in
    /// this directory (a fixture) instead of empty ones.
    pub seed_dir: Option<PathBuf>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            nodes: 3,
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 800,
            election_timeout_max_ms: 1600,
            snapshot_every_entries: 10_000,
            logs_kept_after_snapshot: 1_000,
            split_points: vec!["g".into(), "n".into(), "u".into()],
            metrics: false,
            extra_args: Vec::new(),
            env: Vec::new(),
            rebalance: false,
            tls: false,
            addrs: Vec::new(),
            seed_dir: None,
        }
    }
}

/// One node process of a test cluster.
pub struct TestNode {
    pub id: u64,
    pub addr: String,
    pub metrics_addr: Option<String>,
    pub data_dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    paused: bool,
    /// Set for a node started with `--join` ([`TestCluster::join`]): its
    /// region; it gets no `--node-id` or `--initial-cluster`.
    joins_in: Option<String>,
    /// A certificate and key this node starts with instead of the
    /// cluster's ([`TestCluster::set_node_certificate`]).
    certificate: Option<(PathBuf, PathBuf)>,
    /// Arguments this node alone starts with ([`TestCluster::set_node_args`]).
    own_args: Vec<String>,
}

impl TestNode {
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Running and not paused ([`TestCluster::pause`]): expected to answer.
    pub fn is_answering(&self) -> bool {
        self.child.is_some() && !self.paused
    }

    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// A cluster of real `geokv` processes; killed on drop.
pub struct TestCluster {
    binary: PathBuf,
    dir: tempfile::TempDir,
    pub nodes: Vec<TestNode>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    tls: bool,
}

/// A port that is free now, picked below Linux's ephemeral range (32768+).
///
/// An ephemeral port (`bind(0)`) is free only until the node binds it, and in
/// between any outgoing connection on the box — another test cluster's node
/// dialing its peers — may be handed the same port, so the node fails to
/// start and its test waits out its deadline. Ports below the ephemeral range
/// are never handed out that way; two tests picking the same one at random is
/// the only race left.
pub fn free_port() -> u16 {
    use rand::Rng;
    let mut rng = rand::rng();
    for _ in 0..1_000 {
        let port = rng.random_range(20_000..32_000);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000..32000 after 1000 tries")
}

/// Copies directory `from` with everything under it to `to`.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("creating {}: {e}", to.display()));
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("reading {}: {e}", from.display())) {
        let path = entry.expect("directory entry").path();
        let target = to.join(path.file_name().expect("a file name"));
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap_or_else(|e| panic!("copying {}: {e}", path.display()));
        }
    }
}

/// Polls `cond` until it returns `Some` or `deadline` passes.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut cond: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = cond().await {
            return v;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl TestCluster {
    /// Starts `opts.nodes` nodes (regions cycle through [`REGIONS`]) of the
    /// node binary at `binary` (integration tests pass
    /// `env!("CARGO_BIN_EXE_geokv-node")`).
    pub fn start(binary: impl Into<PathBuf>, opts: ClusterOptions) -> TestCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let ids: Vec<u64> = (1..=opts.nodes as u64).collect();
        let addrs: Vec<String> = if opts.addrs.is_empty() {
            ids.iter().map(|_| format!("127.0.0.1:{}", free_port())).collect()
        } else {
            assert_eq!(opts.addrs.len(), opts.nodes, "one address per node");
            opts.addrs.clone()
        };
        if let Some(seed) = &opts.seed_dir {
            for id in &ids {
                copy_dir(&seed.join(format!("node-{id}")), &dir.path().join(format!("node-{id}")));
            }
        }
        let members: Vec<String> = ids
            .iter()
            .zip(&addrs)
            .map(|(id, addr)| format!("{id}={addr}@{}", REGIONS[(*id as usize - 1) % REGIONS.len()]))
            .collect();
        let mut args = vec![
            format!("--initial-cluster={}", members.join(",")),
            format!("--heartbeat-interval-ms={}", opts.heartbeat_interval_ms),
            format!("--election-timeout-min-ms={}", opts.election_timeout_min_ms),
            format!("--election-timeout-max-ms={}", opts.election_timeout_max_ms),
            format!("--snapshot-every-entries={}", opts.snapshot_every_entries),
            format!("--logs-kept-after-snapshot={}", opts.logs_kept_after_snapshot),
            format!("--split-points={}", opts.split_points.join(",")),
            "--request-timeout-ms=5000".into(),
            format!("--rebalance={}", opts.rebalance),
        ];
        if opts.tls {
            let certs = dir.path().join("certs");
            let validity = geokv_server::certs::Validity::days(1);
            geokv_server::certs::create_ca(&certs, validity).expect("test CA");
            geokv_server::certs::create_node(&certs, "node", &["127.0.0.1".into()], validity)
                .expect("node certificate");
            geokv_server::certs::create_client(&certs, "root", validity).expect("root certificate");
            args.extend([
                format!("--tls-ca={}", certs.join("ca.pem").display()),
                format!("--tls-cert={}", certs.join("node.pem").display()),
                format!("--tls-key={}", certs.join("node-key.pem").display()),
            ]);
        } else {
            args.push("--plaintext".into());
        }
        args.extend(opts.extra_args);
        let env = opts.env;
        let nodes = ids
            .iter()
            .zip(addrs)
            .map(|(id, addr)| TestNode {
                id: *id,
                addr,
                metrics_addr: opts.metrics.then(|| format!("127.0.0.1:{}", free_port())),
                data_dir: dir.path().join(format!("node-{id}")),
                log_path: dir.path().join(format!("node-{id}.log")),
                child: None,
                paused: false,
                joins_in: None,
                certificate: None,
                own_args: Vec::new(),
            })
            .collect();
        let mut cluster = TestCluster { binary: binary.into(), dir, nodes, args, env, tls: opts.tls };
        for id in ids {
            cluster.restart(id);
        }
        cluster
    }

    pub fn node(&self, id: u64) -> &TestNode {
        self.nodes.iter().find(|n| n.id == id).unwrap_or_else(|| panic!("no node {id}"))
    }

    fn node_mut(&mut self, id: u64) -> &mut TestNode {
        self.nodes.iter_mut().find(|n| n.id == id).unwrap_or_else(|| panic!("no node {id}"))
    }

    /// A client of every node with a 20 s deadline: room for an election or
    /// a replica change under way.
    pub async fn client(&self) -> geokv_client::Client {
        let mut config = geokv_client::ClientConfig::new(self.endpoints());
        config.deadline = Duration::from_secs(20);
        if self.tls {
            config = config.tls(Some(self.client_tls(Some("root"))));
        }
        config.connect().await.expect("connect")
    }

    /// A raw TLS channel to node `id`, connected, presenting `identity`'s
    /// certificate: a user's client certificate (made on first use),
    /// `"node"` for the cluster's node certificate (a member), or none.
    pub async fn tls_channel(&self, id: u64, identity: Option<&str>) -> Channel {
        let certs = self.certs_dir();
        let read = |name: &str| std::fs::read(certs.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read("ca.pem")));
        let files = match identity {
            None => None,
            Some("node") => Some(("node.pem".to_string(), "node-key.pem".to_string())),
            Some(user) => {
                self.client_tls(Some(user));
                Some((format!("client.{user}.pem"), format!("client.{user}-key.pem")))
            }
        };
        if let Some((cert, key)) = files {
            tls = tls.identity(tonic::transport::Identity::from_pem(read(&cert), read(&key)));
        }
        tonic::transport::Endpoint::from_shared(format!("https://{}", self.node(id).addr))
            .expect("a node address")
            .tls_config(tls)
            .expect("TLS settings")
            .connect()
            .await
            .unwrap_or_else(|e| panic!("a TLS connection to node {id}: {e}"))
    }

    /// Node `id` starts (at its next restart) with this certificate and key
    /// instead of the cluster's node certificate.
    /// Node `id` starts with `args` on top of the cluster's from its next
    /// start on.
    pub fn set_node_args(&mut self, id: u64, args: Vec<String>) {
        self.node_mut(id).own_args = args;
    }

    pub fn set_node_certificate(&mut self, id: u64, cert: PathBuf, key: PathBuf) {
        self.node_mut(id).certificate = Some((cert, key));
    }

    /// Where a TLS cluster's CA, node and client certificates are.
    pub fn certs_dir(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// TLS settings trusting the cluster's CA, presenting `user`'s client
    /// certificate (made on first use) if given.
    pub fn client_tls(&self, user: Option<&str>) -> geokv_client::ClientTls {
        let certs = self.certs_dir();
        let ca = std::fs::read(certs.join("ca.pem")).expect("the cluster's CA (ClusterOptions::tls)");
        let mut tls = geokv_client::ClientTls::new(ca);
        if let Some(user) = user {
            let cert = certs.join(format!("client.{user}.pem"));
            if !cert.exists() {
                let validity = geokv_server::certs::Validity::days(1);
                geokv_server::certs::create_client(&certs, user, validity).expect("client certificate");
            }
            let key = certs.join(format!("client.{user}-key.pem"));
            tls = tls.identity(std::fs::read(cert).unwrap(), std::fs::read(key).unwrap());
        }
        tls
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    /// Starts a new node that joins the running cluster (`geokv --join`
    /// with every other node's address as a seed) in `region`, and returns
    /// the id it should get: one above every id so far (the cluster assigns
    /// it; a test checks that it did).
    pub fn join(&mut self, region: &str) -> u64 {
        let id = self.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        self.nodes.push(TestNode {
            id,
            addr: format!("127.0.0.1:{}", free_port()),
            metrics_addr: None,
            data_dir: self.dir.path().join(format!("node-{id}")),
            log_path: self.dir.path().join(format!("node-{id}.log")),
            child: None,
            paused: false,
            joins_in: Some(region.to_string()),
            certificate: None,
            own_args: Vec::new(),
        });
        self.restart(id);
        id
    }

    /// Starts (or restarts) node `id` on its data directory.
    pub fn restart(&mut self, id: u64) {
        let seeds: Vec<String> = self.nodes.iter().filter(|n| n.id != id).map(|n| n.addr.clone()).collect();
        let args = self.args.clone();
        let env = self.env.clone();
        let binary = self.binary.clone();
        let node = self.node_mut(id);
        let metrics: Vec<String> = node.metrics_addr.iter().map(|a| format!("--metrics-listen={a}")).collect();
        assert!(node.child.is_none(), "node {id} is already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log_path).expect("node log file");
        let identity = match &node.joins_in {
            None => vec![format!("--node-id={id}")],
            Some(region) => vec![format!("--join={}", seeds.join(",")), format!("--region={region}")],
        };
        let own_certificate: Vec<String> = node
            .certificate
            .iter()
            .flat_map(|(cert, key)| [format!("--tls-cert={}", cert.display()), format!("--tls-key={}", key.display())])
            .collect();
        let args: Vec<&String> = args
            .iter()
            .filter(|a| node.joins_in.is_none() || !a.starts_with("--initial-cluster="))
            .filter(|a| own_certificate.is_empty() || !(a.starts_with("--tls-cert=") || a.starts_with("--tls-key=")))
            .chain(&own_certificate)
            .chain(&node.own_args)
            .collect();
        let child = Command::new(&binary)
            .args(&identity)
            .arg(format!("--listen={}", node.addr))
            .arg(format!("--data-dir={}", node.data_dir.display()))
            .args(&args)
            .args(&metrics)
            .envs(env)
            .env("RUST_LOG", std::env::var("GEOKV_TEST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn geokv node");
        node.child = Some(child);
    }

    /// SIGKILLs node `id` (no graceful shutdown: a crash).
    pub fn kill(&mut self, id: u64) {
        self.node_mut(id).paused = false;
        if let Some(mut child) = self.node_mut(id).child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM to node `id` and waits (bounded) for it to exit;
    /// returns its exit status, or `None` if it had to be killed.
    pub fn terminate(&mut self, id: u64, deadline: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.node_mut(id).child.take()?;
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let start = Instant::now();
        while start.elapsed() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Waits (polling, bounded by `deadline`) for node `id` to exit by
    /// itself and returns its exit status; panics if it is still running
    /// then.
    pub async fn wait_exit(&mut self, id: u64, deadline: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            let node = self.node_mut(id);
            let child = node.child.as_mut().unwrap_or_else(|| panic!("node {id} is not running"));
            if let Ok(Some(status)) = child.try_wait() {
                node.child = None;
                return status;
            }
            assert!(start.elapsed() < deadline, "node {id} still running after {deadline:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Node `id`'s whole log.
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(&self.node(id).log_path).unwrap_or_default()
    }

    /// Stops node `id` with SIGSTOP: alive, its sockets open, answering
    /// nothing (a hung process or a stalled host) until [`TestCluster::resume`].
    pub fn pause(&mut self, id: u64) {
        self.signal(id, "-STOP");
        self.node_mut(id).paused = true;
    }

    /// Lets a paused node go on (SIGCONT).
    pub fn resume(&mut self, id: u64) {
        self.signal(id, "-CONT");
        self.node_mut(id).paused = false;
    }

    fn signal(&mut self, id: u64, signal: &str) {
        let child = self.node_mut(id).child.as_ref().unwrap_or_else(|| panic!("node {id} is not running"));
        let status = Command::new("kill").arg(signal).arg(child.id().to_string()).status().expect("run kill");
        assert!(status.success(), "kill {signal} node {id}: {status}");
    }

    pub fn kill_all(&mut self) {
        let ids: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
        ids.into_iter().for_each(|id| self.kill(id));
    }

    /// Node `id`'s Prometheus metrics as `name{labels} -> value` (requires
    /// [`ClusterOptions::metrics`]).
    /// `GET path` on node `id`'s metrics endpoint: the status line and the
    /// body, or `None` if it does not answer.
    pub async fn http_get(&self, id: u64, path: &str) -> Option<(String, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.node(id).metrics_addr.clone().expect("cluster started with metrics: true");
        let mut sock = tokio::net::TcpStream::connect(&addr).await.ok()?;
        sock.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).await.ok()?;
        let mut text = String::new();
        sock.read_to_string(&mut text).await.ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        Some((head.lines().next()?.to_string(), body.to_string()))
    }

    pub async fn metrics(&self, id: u64) -> BTreeMap<String, f64> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.node(id).metrics_addr.clone().expect("cluster started with metrics: true");
        let mut sock = tokio::net::TcpStream::connect(&addr).await.expect("connect to metrics");
        sock.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.expect("send");
        let mut text = String::new();
        sock.read_to_string(&mut text).await.expect("read metrics");
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with("HTTP") && l.contains(' '))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(k, v)| v.parse().ok().map(|v| (k.to_string(), v))))
            .collect()
    }

    /// The combined logs of every node (for failure messages).
    pub fn logs_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let text = std::fs::read_to_string(&n.log_path).unwrap_or_default();
            // Backtrace frames would push the error they belong to out of
            // the tail: leave them out.
            let frame = |l: &&str| {
                let t = l.trim_start();
                t.starts_with("at ") || t.split_once(": ").is_some_and(|(n, _)| n.parse::<u32>().is_ok())
            };
            let tail: Vec<&str> = text.lines().rev().filter(|l| !frame(l)).take(lines).collect();
            out.push_str(&format!("--- node {} ---\n", n.id));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// A raw Kv client for node `id` (no routing, no retries).
    pub async fn kv(&self, id: u64) -> KvClient<Channel> {
        KvClient::new(channel(&self.node(id).addr))
    }

    /// Node `id`'s status, or `None` if it does not answer.
    pub async fn status(&self, id: u64) -> Option<NodeStatusResponse> {
        let mut admin = AdminClient::new(channel(&self.node(id).addr));
        let mut req = tonic::Request::new(NodeStatusRequest {});
        req.set_timeout(Duration::from_secs(2));
        admin.node_status(req).await.ok().map(|r| r.into_inner()).filter(|s| s.ready)
    }

    /// Every running node's group status for `shard`, by node id.
    pub async fn group_statuses(&self, shard: u64) -> BTreeMap<u64, GroupStatus> {
        let mut out = BTreeMap::new();
        for n in self.nodes.iter().filter(|n| n.is_answering()) {
            if let Some(s) = self.status(n.id).await
                && let Some(g) = s.groups.into_iter().find(|g| g.shard_id == shard)
            {
                out.insert(n.id, g);
            }
        }
        out
    }

    /// Waits until every running node that is not paused answers and
    /// `shard` has a leader that every such replica of it agrees on (a
    /// replica stopped on its node aside), and returns its id.
    pub async fn wait_leader(&self, shard: u64) -> u64 {
        wait_for(&format!("a leader of shard {shard}"), DEFAULT_DEADLINE, || async {
            let mut groups = BTreeMap::new();
            for n in self.nodes.iter().filter(|n| n.is_answering()) {
                let status = self.status(n.id).await?;
                groups.extend(status.groups.into_iter().filter(|g| g.shard_id == shard).map(|g| (n.id, g)));
            }
            let (leader_id, _) = groups.iter().find(|(_, g)| g.role == "leader")?;
            // A group stopped on its node (see `GroupStatus::error`) knows no leader.
            groups.values().filter(|g| g.role != "shutdown").all(|g| g.leader_id == *leader_id).then_some(*leader_id)
        })
        .await
    }

    /// Waits until every shard (meta included) has an agreed leader.
    pub async fn wait_all_leaders(&self) -> BTreeMap<u64, u64> {
        let shards: std::collections::BTreeSet<u64> = wait_for("node status", DEFAULT_DEADLINE, || async {
            let mut shards = std::collections::BTreeSet::new();
            for n in self.nodes.iter().filter(|n| n.is_answering()) {
                let s = self.status(n.id).await?;
                // Eventual shards have no leader.
                shards.extend(s.groups.iter().filter(|g| g.role != "eventual").map(|g| g.shard_id));
            }
            Some(shards)
        })
        .await;
        let mut leaders = BTreeMap::new();
        for shard in shards {
            leaders.insert(shard, self.wait_leader(shard).await);
        }
        // The meta shard holds the bootstrapped map (version > 0) everywhere.
        wait_for("the shard map to be bootstrapped", DEFAULT_DEADLINE, || async {
            for n in self.nodes.iter().filter(|n| n.is_answering()) {
                let mut admin = AdminClient::new(channel(&n.addr));
                let map = admin.get_shard_map(GetShardMapRequest {}).await.ok()?.into_inner();
                if map.version == 0 {
                    return None;
                }
            }
            Some(())
        })
        .await;
        leaders
    }

    /// Waits until node `id` has applied shard `shard` up to `index`.
    pub async fn wait_applied(&self, id: u64, shard: u64, index: u64) -> GroupStatus {
        wait_for(&format!("node {id} to apply shard {shard} up to {index}"), DEFAULT_DEADLINE, || async {
            let s = self.status(id).await?;
            s.groups.into_iter().find(|g| g.shard_id == shard && g.applied_index >= index)
        })
        .await
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.kill_all();
        if std::thread::panicking() {
            eprintln!("{}", self.logs_tail(40));
        }
    }
}

/// A new plaintext connection (lazy) to `addr`.
pub fn channel(addr: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("valid address")
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy()
}
