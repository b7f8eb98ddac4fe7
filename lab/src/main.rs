//! `geokv-lab`: start a local multi-region geokv cluster behind an emulated
//! WAN, and inject faults into it from another terminal.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use geokv_lab::control::{self, ControlRequest};
use geokv_lab::lab::{LabState, STATE_FILE};
use geokv_lab::{Endpoint, FaultShape, Lab, LabConfig, LabStatus, NodeProgram, Partition, RegionMatrix};
use tokio::sync::watch;

/// How long `down` waits for the lab process to exit.
const DOWN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Parser)]
#[command(
    name = "geokv-lab",
    version,
    about = "A local multi-region geokv cluster behind an emulated WAN, with fault injection",
    long_about = "geokv-lab runs real geokv node processes on loopback addresses and puts a TCP proxy in \
                  front of every node that delays each byte by half the RTT between the regions of its \
                  sender and receiver (from a region matrix), and can cut links or reset them. \
                  `up` runs in the foreground; the other commands steer it from another terminal \
                  (they find it through <data-dir>/lab.json).",
    after_help = "EXAMPLES:\n  \
        geokv-lab up                                   # 3 regions, 1 node each, us-east/us-west/eu-west\n  \
        geokv-lab up --regions lab/regions/5-region.toml\n  \
        geokv-lab status\n  \
        geokv-lab partition --region eu-west           # cut eu-west (nodes and clients) off\n  \
        geokv-lab partition --from 1 --to 2 --one-way  # node 1 can no longer send to node 2\n  \
        geokv-lab partition --leader-of 1 --mode reset\n  \
        geokv-lab heal\n  \
        geokv-lab latency --from 1 --to 3 --delay-ms 200\n  \
        geokv-lab kill 2 && geokv-lab restart 2\n  \
        geokv-lab transfer-leader 2 1                  # node 1 (us-east) leads shard 2\n  \
        geokv-lab up --regions lab/regions/4-region.toml   # 4 nodes, each shard on 3\n  \
        geokv-lab drain 4 && geokv-lab remove-node 4   # move node 4's replicas off, then remove it\n  \
        geokv-lab kill-region eu-west                  # lose a whole region at once\n  \
        geokv-lab add-node eu-west                     # a new node joins eu-west and takes its shards\n  \
        geokv-lab down"
)]
struct Cli {
    #[command(flatten)]
    data: DataDir,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct DataDir {
    /// The lab's data directory (node data, logs, lab.json).
    #[arg(long, global = true, default_value = "geokv-lab-data", env = "GEOKV_LAB_DATA_DIR")]
    data_dir: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Start the lab in the foreground; Ctrl-C (or `geokv-lab down`) stops it.
    Up(UpArgs),
    /// Show nodes, link faults and shard leaders.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cut links: pick exactly one shape.
    Partition(PartitionArgs),
    /// Restore cut links (all, or between --from and --to).
    Heal {
        #[arg(long, value_delimiter = ',', requires = "to")]
        from: Option<Vec<Endpoint>>,
        #[arg(long, value_delimiter = ',', requires = "from")]
        to: Option<Vec<Endpoint>>,
        /// Also drop latency overrides.
        #[arg(long)]
        latency: bool,
    },
    /// Override the delay or jitter of links (see `heal --latency` to undo).
    Latency {
        #[arg(long, value_delimiter = ',', required = true)]
        from: Vec<Endpoint>,
        #[arg(long, value_delimiter = ',', required = true)]
        to: Vec<Endpoint>,
        /// Only FROM -> TO, not back.
        #[arg(long)]
        one_way: bool,
        /// One-way delay per direction, ms (replaces the matrix's RTT/2).
        #[arg(long, required_unless_present = "jitter_ms")]
        delay_ms: Option<u64>,
        /// Random extra delay up to this, ms (order is kept).
        #[arg(long)]
        jitter_ms: Option<u64>,
    },
    /// SIGKILL a node (a crash; its data stays).
    Kill { node: u64 },
    /// Start a killed node again on its data.
    Restart { node: u64 },
    /// SIGSTOP a node.
    Pause { node: u64 },
    /// SIGCONT a paused node.
    Resume { node: u64 },
    /// Move the leadership of SHARD to NODE (and wait until it holds).
    TransferLeader { shard: u64, node: u64 },
    /// Drain NODE: its replicas move to other nodes (`kvctl node drain --no-wait`;
    /// watch `kvctl node list`).
    Drain { node: u64 },
    /// Remove NODE from the cluster for good (it must be drained, or --force
    /// drains it first); it stops, and is refused if restarted.
    RemoveNode {
        node: u64,
        /// Drain it first if it still holds replicas.
        #[arg(long)]
        force: bool,
    },
    /// SIGKILL every node of REGION at once (`restart` brings each back).
    KillRegion { region: String },
    /// Start a new node in REGION that joins the running cluster (`geokv
    /// --join`; the cluster assigns its id, printed here). With rebalancing on
    /// (the default of `up`), replicas then move onto it; a region lost with
    /// `kill-region` gets its shards back this way.
    AddNode { region: String },
    /// Stop the lab and every node. The data stays unless --wipe.
    Down {
        /// Also delete what the lab wrote in its data directory.
        #[arg(long)]
        wipe: bool,
    },
}

#[derive(Args)]
struct UpArgs {
    /// Region matrix (TOML: `regions = [...]` and `[rtt_ms] "a/b" = N`);
    /// default: the built-in us-east/us-west/eu-west matrix.
    #[arg(long)]
    regions: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    nodes_per_region: usize,
    /// Start nodes in the matrix's first N regions only; `add-node --region`
    /// joins one in the others later (default: every region).
    #[arg(long)]
    start_regions: Option<usize>,
    /// Random extra one-way delay up to this many ms on every link.
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// RTT between endpoints of the same region.
    #[arg(long, default_value_t = 0)]
    intra_region_rtt_ms: u64,
    /// Port of every node (nodes differ by IP: 127.0.1.N:PORT).
    #[arg(long, default_value_t = 7400)]
    base_port: u16,
    /// Control API port on 127.0.0.1 (0: any free port; recorded in lab.json).
    #[arg(long, default_value_t = 0)]
    control_port: u16,
    /// Run this `geokv` binary for the nodes instead of the node code built
    /// into geokv-lab.
    #[arg(long)]
    geokv_bin: Option<PathBuf>,
    #[arg(long)]
    heartbeat_interval_ms: Option<u64>,
    #[arg(long)]
    election_timeout_min_ms: Option<u64>,
    #[arg(long)]
    election_timeout_max_ms: Option<u64>,
    /// Key ranges served by eventual (multi-master) shards, START..END
    /// (comma-separated; END empty = to the end), given to every node.
    #[arg(long, value_delimiter = ',')]
    eventual_ranges: Vec<String>,
    /// Give every node a Prometheus endpoint on its own IP (a free port;
    /// `status --json` lists them).
    #[arg(long)]
    metrics: bool,
    /// Let the cluster move replicas and leaders to even out the nodes
    /// (`geokv --rebalance`): true|false. With false, leaders stay where
    /// elections and `transfer-leader` put them.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    rebalance: bool,
    /// Run the nodes with TLS and authentication: a CA, a node certificate
    /// and root's client certificate under DATA_DIR/certs (the banner says
    /// how to use them). Without it the nodes run plaintext and log so.
    #[arg(long)]
    tls: bool,
    /// Every node's --node-dead-after-ms: how long a node may answer nothing
    /// before it is marked down and its replicas re-created elsewhere
    /// (default: the node's, 300000).
    #[arg(long)]
    node_dead_after_ms: Option<u64>,
}

#[derive(Args)]
#[group(id = "shape", required = true, multiple = false)]
struct ShapeArgs {
    /// Isolate this node from every other node and other regions' clients.
    #[arg(long, group = "shape")]
    node: Option<u64>,
    /// Isolate this region: its nodes and clients from everything else.
    #[arg(long, group = "shape")]
    region: Option<String>,
    /// Isolate whichever node leads this shard now.
    #[arg(long, group = "shape")]
    leader_of: Option<u64>,
    /// Random minority/majority halves of the nodes (see --seed).
    #[arg(long, group = "shape")]
    halves: bool,
    /// Majorities ring (5+ nodes): everyone sees a different majority.
    #[arg(long, group = "shape")]
    ring: bool,
    /// Two halves joined by one bridge node (5+ nodes).
    #[arg(long, group = "shape")]
    bridge: bool,
    /// Links from these endpoints (node ids, `client:REGION`) to --to.
    #[arg(long, group = "shape", value_delimiter = ',', requires = "to")]
    from: Option<Vec<Endpoint>>,
}

#[derive(Args)]
struct PartitionArgs {
    #[command(flatten)]
    shape: ShapeArgs,
    #[arg(long, value_delimiter = ',')]
    to: Option<Vec<Endpoint>>,
    /// With --from/--to: cut only FROM -> TO.
    #[arg(long)]
    one_way: bool,
    /// Seed for --halves, --ring, --bridge (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// stall: bytes stop (TCP backpressure); reset: connections closed and refused.
    #[arg(long, default_value = "stall")]
    mode: Partition,
}

impl PartitionArgs {
    fn shape(self) -> FaultShape {
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
        });
        let s = self.shape;
        if let Some(node) = s.node {
            FaultShape::IsolateNode { node }
        } else if let Some(region) = s.region {
            FaultShape::IsolateRegion { region }
        } else if let Some(shard) = s.leader_of {
            FaultShape::IsolateLeader { shard }
        } else if s.halves {
            FaultShape::RandomHalves { seed }
        } else if s.ring {
            FaultShape::MajoritiesRing { seed }
        } else if s.bridge {
            FaultShape::Bridge { seed }
        } else {
            FaultShape::Links {
                from: s.from.unwrap_or_default(),
                to: self.to.unwrap_or_default(),
                one_way: self.one_way,
            }
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // `geokv-lab node <geokv flags>` runs one node: the lab spawns itself so
    // that users need not build the server binary separately.
    if args.get(1).is_some_and(|a| a == "node") {
        let node_args = std::iter::once("geokv".into()).chain(args.into_iter().skip(2));
        return match geokv_server::cli::main_from(node_args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("geokv node: {err:#}");
                ExitCode::FAILURE
            }
        };
    }
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("geokv-lab: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, geokv_lab::Error> {
    let data = cli.data;
    let request = match cli.command {
        Command::Up(args) => return up(args, data.data_dir).await.map(|()| ExitCode::SUCCESS),
        Command::Status { json } => {
            let status: LabStatus =
                serde_json::from_value(control::call(control_addr(&data.data_dir)?, &ControlRequest::Status).await?)
                    .map_err(|e| geokv_lab::Error::State(format!("bad status answer: {e}")))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status).expect("status serializes"));
            } else {
                print_status(&status);
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::Partition(args) => {
            let mode = args.mode;
            ControlRequest::Partition { shape: args.shape(), mode }
        }
        Command::Heal { from, to, latency } => ControlRequest::Heal { from, to, latency },
        Command::Latency { from, to, one_way, delay_ms, jitter_ms } => {
            ControlRequest::Latency { from, to, one_way, delay_ms, jitter_ms }
        }
        Command::Kill { node } => ControlRequest::Kill { node },
        Command::Restart { node } => ControlRequest::Restart { node },
        Command::Pause { node } => ControlRequest::Pause { node },
        Command::Resume { node } => ControlRequest::Resume { node },
        Command::TransferLeader { shard, node } => ControlRequest::TransferLeader { shard, to: node },
        Command::Drain { node } => ControlRequest::Drain { node },
        Command::RemoveNode { node, force } => ControlRequest::RemoveNode { node, force },
        Command::KillRegion { region } => ControlRequest::KillRegion { region },
        Command::AddNode { region } => ControlRequest::AddNode { region },
        Command::Down { wipe } => return down(&data.data_dir, wipe).await,
    };
    let result = control::call(control_addr(&data.data_dir)?, &request).await?;
    match result {
        serde_json::Value::Array(links) => {
            println!("{} links:", links.len());
            for link in links {
                println!("  {}", link.as_str().unwrap_or_default());
            }
        }
        serde_json::Value::Null => println!("OK"),
        other => println!("OK {other}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn control_addr(data_dir: &Path) -> Result<SocketAddr, geokv_lab::Error> {
    let state = LabState::read(data_dir)?;
    let addr = state.control_addr.ok_or_else(|| {
        geokv_lab::Error::State(format!("{} has no control address: the lab is not up", data_dir.display()))
    })?;
    addr.parse().map_err(|e| geokv_lab::Error::Config(format!("bad control address {addr:?} in lab.json: {e}")))
}

async fn down(data_dir: &Path, wipe: bool) -> Result<ExitCode, geokv_lab::Error> {
    let state = LabState::read(data_dir)?;
    if !geokv_lab::process::pid_exists(state.lab_pid) {
        println!("the lab (pid {}) is not running", state.lab_pid);
        if wipe {
            wipe_data_dir(data_dir, &state);
        }
        return Ok(ExitCode::SUCCESS);
    }
    control::call(control_addr(data_dir)?, &ControlRequest::Down { wipe }).await?;
    let start = Instant::now();
    while geokv_lab::process::pid_exists(state.lab_pid) {
        if start.elapsed() > DOWN_TIMEOUT {
            return Err(geokv_lab::Error::Timeout(format!("the lab (pid {}) is still running", state.lab_pid)));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("the lab is down{}", if wipe { " and its data deleted" } else { "; its data stays" });
    Ok(ExitCode::SUCCESS)
}

/// Deletes what the lab wrote: node directories and logs, and lab.json; the
/// directory itself only if that leaves it empty.
fn wipe_data_dir(data_dir: &Path, state: &LabState) {
    for node in &state.nodes {
        let _ = std::fs::remove_dir_all(data_dir.join(format!("node-{}", node.id)));
        let _ = std::fs::remove_file(data_dir.join(format!("node-{}.log", node.id)));
    }
    let _ = std::fs::remove_file(data_dir.join(STATE_FILE));
    let _ = std::fs::remove_dir(data_dir);
}

/// Resolves on Ctrl-C or SIGTERM.
async fn terminated() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn up(args: UpArgs, data_dir: PathBuf) -> Result<(), geokv_lab::Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GEOKV_LAB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let program = match args.geokv_bin {
        Some(path) => NodeProgram::Geokv(path),
        None => NodeProgram::current_lab()?,
    };
    let mut config = LabConfig::new(data_dir, program);
    if let Some(path) = &args.regions {
        config.regions = RegionMatrix::from_file(path)?;
    }
    config.nodes_per_region = args.nodes_per_region;
    config.start_regions = args.start_regions;
    config.jitter_ms = args.jitter_ms;
    config.intra_region_rtt_ms = args.intra_region_rtt_ms;
    config.base_port = Some(args.base_port);
    config.heartbeat_interval_ms = args.heartbeat_interval_ms;
    config.election_timeout_min_ms = args.election_timeout_min_ms;
    config.election_timeout_max_ms = args.election_timeout_max_ms;
    if !args.eventual_ranges.is_empty() {
        config.node_args.push(format!("--eventual-ranges={}", args.eventual_ranges.join(",")));
    }
    config.metrics = args.metrics;
    config.rebalance = args.rebalance;
    config.tls = args.tls;
    if let Some(ms) = args.node_dead_after_ms {
        config.node_args.push(format!("--node-dead-after-ms={ms}"));
    }
    println!(
        "geokv-lab: starting {} nodes in {} regions; waiting for every shard to elect a leader...",
        config.total_nodes(),
        config.started_regions()
    );
    let lab = tokio::select! {
        lab = Lab::start(config) => Arc::new(lab?),
        _ = terminated() => return Ok(()),
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.control_port))
        .await
        .map_err(geokv_lab::Error::io("bind the control port"))?;
    let control_addr = listener.local_addr().map_err(geokv_lab::Error::io("read the control address"))?;
    lab.set_control_addr(control_addr)?;
    let (down_tx, mut down_rx) = watch::channel(None);
    let control = tokio::spawn(control::serve(lab.clone(), listener, down_tx));
    print_banner(&lab, control_addr);
    let wipe = tokio::select! {
        _ = terminated() => false,
        wipe = down_rx.wait_for(Option::is_some) => wipe.map(|w| w.unwrap_or(false)).unwrap_or(false),
    };
    println!("geokv-lab: stopping the nodes...");
    control.abort();
    let state = lab.state();
    let stopper = lab.clone();
    tokio::task::spawn_blocking(move || stopper.shutdown(true)).await.expect("shutdown thread");
    if wipe {
        wipe_data_dir(&lab.config().data_dir, &state);
        println!("geokv-lab: stopped; data deleted");
    } else {
        println!("geokv-lab: stopped; data kept in {}", lab.config().data_dir.display());
    }
    Ok(())
}

fn print_banner(lab: &Lab, control_addr: SocketAddr) {
    let config = lab.config();
    let regions = config.regions.regions();
    println!(
        "\ngeokv-lab is up: {} nodes in {} regions; data in {}; control on {control_addr}\n",
        lab.nodes().len(),
        regions.len(),
        config.data_dir.display()
    );
    print!("RTT ms    ");
    for r in regions {
        print!("{r:>9}");
    }
    println!();
    for (i, a) in regions.iter().enumerate() {
        print!("{a:<10}");
        for j in 0..regions.len() {
            let rtt = if i == j { config.intra_region_rtt_ms } else { config.regions.rtt_ms(i, j) };
            print!("{rtt:>9}");
        }
        println!();
    }
    println!();
    for node in lab.nodes() {
        println!(
            "node {:<3} {:<10} {} (real {}) pid {}  log {}",
            node.id,
            node.region,
            node.advertised,
            node.listen,
            node.pid().map_or("-".into(), |p| p.to_string()),
            node.log_path.display()
        );
    }
    match lab.client_tls() {
        Some(_) => {
            let certs = geokv_lab::lab::certs_dir(&config.data_dir);
            println!(
                "\nTLS with authentication; a client is root with:\n  export GEOKV_CACERT={c}/ca.pem \
                 GEOKV_CERT={c}/client.root.pem GEOKV_KEY={c}/client.root-key.pem",
                c = certs.display()
            );
        }
        None => println!("\nPLAINTEXT: no encryption or authentication (--tls turns both on)"),
    }
    println!("\nA client in each region (the source IP tells the lab which region a client is in):");
    for view in lab.region_views() {
        println!(
            "  {:<10} cargo run --bin kvctl -- --endpoints {} --source-ip {} --region {} put greeting hello",
            view.region, view.endpoint, view.client_ip, view.region
        );
    }
    println!(
        "  (or export GEOKV_ENDPOINTS=... GEOKV_SOURCE_IP=... GEOKV_REGION=...; clients from any other IP, e.g. 127.0.0.1, \
         get no added latency)\n\n\
         From another terminal: cargo run --bin geokv-lab -- status | partition --region {} | heal | \
         kill N | restart N | pause N | resume N | latency ... | down\n\
         Ctrl-C stops the lab (the data stays).",
        regions.last().map_or("REGION", String::as_str)
    );
}

fn print_status(status: &LabStatus) {
    println!("{:<5} {:<10} {:<9} {:<8} {:<22} {:<22}", "NODE", "REGION", "STATE", "PID", "ADVERTISED", "REAL");
    for n in &status.nodes {
        let state = match &n.state {
            geokv_lab::ProcessState::Exited(why) => format!("exited ({why})"),
            other => format!("{other:?}").to_lowercase(),
        };
        let pid = n.pid.map_or("-".into(), |p| p.to_string());
        println!("{:<5} {:<10} {:<9} {:<8} {:<22} {:<22}", n.id, n.region, state, pid, n.advertised, n.listen);
    }
    println!();
    if status.faults.is_empty() {
        println!("links: no faults");
    } else {
        println!("{:<16} {:<16} {:<9} {:<9} {:<9}", "FROM", "TO", "PARTITION", "DELAY_MS", "JITTER_MS");
        for f in &status.faults {
            let opt = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
            println!(
                "{:<16} {:<16} {:<9} {:<9} {:<9}",
                f.from.to_string(),
                f.to.to_string(),
                format!("{:?}", f.fault.partition).to_lowercase(),
                opt(f.fault.delay_ms),
                opt(f.fault.jitter_ms)
            );
        }
    }
    println!();
    println!("{:<6} {:<7} {:<6} APPLIED (node=index)", "SHARD", "LEADER", "TERM");
    for s in &status.shards {
        let name = if s.shard_id == 0 { "meta".to_string() } else { s.shard_id.to_string() };
        let leader = match s.leader {
            Some(l) => l.to_string(),
            None if s.eventual => "eventual".into(),
            None => "none".into(),
        };
        let applied: Vec<String> = s.applied.iter().map(|(n, a)| format!("{n}={a}")).collect();
        println!("{:<6} {:<7} {:<6} {}", name, leader, s.term, applied.join(" "));
    }
    for (node, why) in &status.unreachable {
        println!("node {node} did not answer: {why}");
    }
}
