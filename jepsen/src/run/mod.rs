//! The runner: a lab cluster, client processes, a nemesis, a history, a
//! verdict.
//!
//! # A run, step by step
//!
//! 1. Start a [`geokv_lab::Lab`] (3 or 5 nodes across emulated regions) in
//!    `OUT/lab`, and find the shard holding the workload's keys.
//! 2. Make or load the nemesis [`Schedule`] and save it as
//!    `OUT/schedule.json` (replay it with `--schedule`).
//! 3. Connect one client per *slot*, each pinned to a region (slot `i` to
//!    region `i mod R`, through that region's client IP) with retries off.
//!    A slot runs as one *process* until it sees an `info`; then it
//!    continues as a fresh process id (see [`crate::history`]).
//! 4. Run the workload ([`workload`]) and the schedule concurrently until the
//!    operation budget or the time limit runs out. Every event is stamped
//!    by one monotonic clock ([`recorder`]).
//! 5. Heal everything, then the **liveness** phase: every key must accept a
//!    write again within [`RunConfig::liveness_timeout`] (a client with
//!    retries on), followed by a final linearizable read. Both are recorded
//!    in the history like any other operation.
//! 6. Stop the lab, write `history.jsonl`, check it, write `report.json`
//!    and `timeline.html`.
//!
//! # What it does not do
//!
//! It runs on one machine: nodes, proxies, clients and checker share its
//! cores, so the latencies it reports are this machine's, under load, not a
//! deployment's. A valid verdict means "no anomaly found in N operations"
//! under these faults, never that the store is correct.

pub mod checks;
pub mod nemesis;
pub mod recorder;
pub mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use geokv_client::Consistency;
use geokv_lab::{Lab, LabConfig, NodeProgram, RegionMatrix};
use serde::Serialize;
use serde_json::{Value, json};

use crate::checker::{CheckConfig, CheckResult, Verdict, check_keys};
use crate::history::{Clock, EventType, History, NemesisWindow};
use crate::register::register_operations;
use crate::report::{self, Latency, ReportVerdict, Source, WindowAvailability};
use crate::timeline;
use nemesis::{NemesisKind, Schedule};
use recorder::Recorder;
use workload::{Generator, Op, OpSettings, ProcessClient, Workload};

/// Most client slots a run may have.
pub const MAX_CLIENTS: usize = 256;
/// Most operations a run may be asked for.
pub const MAX_OPS: u64 = 10_000_000;
/// How long the lab may take to elect every shard's leader.
pub const LAB_START_TIMEOUT: Duration = Duration::from_secs(90);
/// A process waits this long after an operation that did not succeed
/// (a dead node refuses at once; without it a process would spin).
pub const PAUSE_AFTER_FAILURE: Duration = Duration::from_millis(100);
/// How long the warm-up write may take (the lab just elected its leaders).
pub const WARMUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Where liveness and setup clients may spend retrying one RPC.
pub const SETUP_RPC_TIMEOUT: Duration = Duration::from_secs(2);
/// Eventual mode: how often the convergence check reads every replica.
pub const CONVERGENCE_POLL: Duration = Duration::from_millis(100);
/// Eventual mode: keys whose replicas still differ listed in the report.
pub const MAX_DIVERGENT_LISTED: usize = 20;

/// Why a run produced no verdict.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("invalid run configuration: {0}")]
    Config(String),
    #[error("lab: {0}")]
    Lab(#[from] geokv_lab::Error),
    #[error("client: {0}")]
    Client(#[from] geokv_client::Error),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("the recorded history is malformed (a runner bug): {0}")]
    History(#[from] crate::Error),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RunError {
    let what = what.into();
    move |source| RunError::Io { what, source }
}

/// Everything a run needs.
///
/// Invariants after [`RunConfig::validate`]: 1..=[`MAX_CLIENTS`] clients,
/// 1..=[`MAX_OPS`] operations, a non-zero time limit and timeouts; the node
/// count is a multiple of the region count.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub workload: Workload,
    pub nodes: usize,
    /// The region matrix; `None`: the 3-region default for 3 nodes, the
    /// 5-region one for 5.
    pub regions: Option<RegionMatrix>,
    pub clients: usize,
    /// Operations to invoke in all (the liveness phase adds its own).
    pub ops: u64,
    pub time_limit: Duration,
    pub seed: u64,
    /// Fault families the generated schedule draws from (empty: no faults).
    pub nemesis: Vec<NemesisKind>,
    /// A schedule to replay instead of generating one.
    pub schedule: Option<Schedule>,
    pub read_consistency: Consistency,
    pub out_dir: PathBuf,
    pub node_program: NodeProgram,
    /// One operation's bound: past it a read is `fail`, a write `info`.
    pub op_timeout: Duration,
    /// After the final heal, every key must accept a write within this.
    pub liveness_timeout: Duration,
    pub check: CheckConfig,
    /// Keep the nodes' data directories after the run (logs are always kept).
    pub keep_data: bool,
    /// Eventual mode: the nodes serve the workload's keys from an eventual
    /// (multi-master, last-writer-wins) shard
    /// ([`Workload::eventual_range`]), and every process reads and writes
    /// through its own region's replica. Register CAS is not generated
    /// (eventual shards refuse it). After the liveness phase, the
    /// convergence check must see every replica agree.
    pub eventual: bool,
    /// Eventual mode: after the final heal, every replica must hold the same
    /// value and timestamp for every key within this.
    pub convergence_timeout: Duration,
    /// The processes' clients retry within `op_timeout` (each attempt at
    /// most a [`RETRY_ATTEMPTS_PER_OP`]th of it), resending a write with its
    /// sequence number: the server must apply it once. Off, one RPC per
    /// operation.
    pub client_retries: bool,
    /// The nodes' `--max-clock-offset-ms`, when not their default.
    pub max_clock_offset_ms: Option<u64>,
    /// The cluster rebalances replicas and leaders (`geokv --rebalance`)
    /// while the run goes on; off, they stay where the nemesis puts them.
    pub rebalance: bool,
    /// The nodes run TLS with authentication; the clients connect as root.
    pub tls: bool,
    /// The nodes' `--node-dead-after-ms`, when not their default (5 min):
    /// shorter than a kill window, a killed node is marked down and its
    /// replicas re-created elsewhere during the window (with enough nodes).
    pub node_dead_after_ms: Option<u64>,
    /// The nodes' `--split-load-entries-per-s`: shards under the workload's
    /// load split on their own during the run.
    pub split_load_entries_per_s: Option<u64>,
    /// Unsafe (a negative control): an append whose outcome is unknown is
    /// run again as a new write, as by a client without exactly-once
    /// sessions ([`workload::OpSettings::unsafe_redo_unknown`]). Append
    /// workload only.
    pub unsafe_redo_unknown: bool,
    /// Unsafe (a negative control): the nodes run with
    /// `--unsafe-trust-clocks`, believing every peer's clock however far off
    /// it is, so skew beyond the offset bound goes undetected.
    pub unsafe_trust_clocks: bool,
    /// Unsafe (a negative control): the nodes run with
    /// `--unsafe-no-vote-quarantine`, so a restarted node votes and
    /// campaigns at once.
    pub unsafe_no_vote_quarantine: bool,
    /// The nodes' election timeouts, when not their defaults.
    pub election_timeout_min_ms: Option<u64>,
    pub election_timeout_max_ms: Option<u64>,
}

/// With client retries on, how many attempts fit in one operation's timeout.
pub const RETRY_ATTEMPTS_PER_OP: u32 = 4;

impl RunConfig {
    /// Defaults for `workload` writing into `out_dir`.
    pub fn new(workload: Workload, out_dir: impl Into<PathBuf>, node_program: NodeProgram) -> RunConfig {
        RunConfig {
            workload,
            nodes: 3,
            regions: None,
            clients: 6,
            ops: 2_000,
            time_limit: Duration::from_secs(30),
            seed: 1,
            nemesis: vec![NemesisKind::Partition],
            schedule: None,
            read_consistency: Consistency::Linearizable,
            out_dir: out_dir.into(),
            node_program,
            op_timeout: Duration::from_millis(2_000),
            liveness_timeout: Duration::from_secs(30),
            check: CheckConfig::default(),
            keep_data: false,
            eventual: false,
            convergence_timeout: Duration::from_secs(30),
            client_retries: false,
            max_clock_offset_ms: None,
            rebalance: false,
            tls: false,
            node_dead_after_ms: None,
            split_load_entries_per_s: None,
            unsafe_redo_unknown: false,
            unsafe_trust_clocks: false,
            unsafe_no_vote_quarantine: false,
            election_timeout_min_ms: None,
            election_timeout_max_ms: None,
        }
    }

    /// Checks the invariants listed on the type.
    pub fn validate(&self) -> Result<(), RunError> {
        let bad = |m: String| Err(RunError::Config(m));
        if self.clients == 0 || self.clients > MAX_CLIENTS {
            return bad(format!("--clients {}: 1 to {MAX_CLIENTS}", self.clients));
        }
        if self.ops == 0 || self.ops > MAX_OPS {
            return bad(format!("--ops {}: 1 to {MAX_OPS}", self.ops));
        }
        if self.time_limit.is_zero() || self.op_timeout.is_zero() || self.liveness_timeout.is_zero() {
            return bad("time limit and timeouts must be above zero".into());
        }
        let regions = self.matrix()?.regions().len();
        if self.nodes == 0 || !self.nodes.is_multiple_of(regions) {
            return bad(format!("--nodes {} is not a multiple of the {regions} regions", self.nodes));
        }
        if let Some(schedule) = &self.schedule {
            schedule.validate().map_err(|e| RunError::Config(format!("schedule: {e}")))?;
        }
        if self.eventual && self.workload.eventual_range().is_none() {
            return bad(format!(
                "--eventual: the {} workload needs conditional batches, which eventual shards refuse",
                self.workload.as_str()
            ));
        }
        if self.unsafe_redo_unknown && self.workload != Workload::Append {
            return bad("--unsafe-redo-unknown redoes appends: it needs --workload append".into());
        }
        if self.eventual && self.convergence_timeout.is_zero() {
            return bad("the convergence timeout must be above zero".into());
        }
        Ok(())
    }

    fn matrix(&self) -> Result<RegionMatrix, RunError> {
        match (&self.regions, self.nodes) {
            (Some(m), _) => Ok(m.clone()),
            (None, 5) => RegionMatrix::parse(geokv_lab::regions::FIVE_REGIONS_TOML).map_err(RunError::Lab),
            (None, _) => Ok(RegionMatrix::default_matrix()),
        }
    }
}

/// One key's liveness after the final heal.
#[derive(Clone, Debug, Serialize)]
pub struct KeyLiveness {
    pub key: String,
    pub ok: bool,
    /// From the heal to the write's acknowledgement (or to giving up).
    pub elapsed_ms: u64,
    pub error: Option<String>,
}

/// The liveness phase's result.
#[derive(Clone, Debug, Serialize)]
pub struct Liveness {
    pub verdict: ReportVerdict,
    pub summary: String,
    pub bound_ms: u64,
    pub keys: Vec<KeyLiveness>,
}

/// One key whose replicas disagreed when the convergence check gave up.
#[derive(Clone, Debug, Serialize)]
pub struct Divergent {
    pub key: String,
    /// Per node: `value@hlc` (`physical_ms.logical.node`), `absent`, or why
    /// the node did not answer.
    pub replicas: BTreeMap<u64, String>,
}

/// Eventual mode: whether every replica ended up with the same state.
#[derive(Clone, Debug, Serialize)]
pub struct Convergence {
    pub verdict: ReportVerdict,
    pub summary: String,
    pub converged: bool,
    /// From the final heal until every replica returned the same value and
    /// timestamp for every key (`None`: not within the bound).
    pub convergence_ms: Option<u64>,
    pub bound_ms: u64,
    /// The key range compared (`[start, end)`), read from each node directly
    /// (a local read on each replica).
    pub range: (String, String),
    pub keys: usize,
    /// Rounds of reads (one local scan of the range per node each).
    pub rounds: u64,
    /// When not converged: up to [`MAX_DIVERGENT_LISTED`] keys that differ.
    pub divergent_count: usize,
    pub divergent: Vec<Divergent>,
}

/// The run's parameters, as the report records them.
#[derive(Clone, Debug, Serialize)]
pub struct RunParameters {
    pub workload: Workload,
    pub seed: u64,
    pub nodes: usize,
    pub regions: Vec<String>,
    pub clients: usize,
    pub ops_limit: u64,
    pub time_limit_s: f64,
    pub read_consistency: Consistency,
    pub nemesis: Vec<NemesisKind>,
    pub schedule_replayed: bool,
    pub op_timeout_ms: u64,
    /// The clients retried within each operation's timeout.
    pub client_retries: bool,
    /// Appends of unknown outcome were redone as new writes (a negative control).
    #[serde(default)]
    pub unsafe_redo_unknown: bool,
    /// The nodes believed every peer's clock (a negative control).
    #[serde(default)]
    pub unsafe_trust_clocks: bool,
    /// The nodes ran without a vote quarantine (a negative control).
    #[serde(default)]
    pub unsafe_no_vote_quarantine: bool,
    /// The nodes' election timeouts when not their defaults.
    #[serde(default)]
    pub election_timeout_min_ms: Option<u64>,
    #[serde(default)]
    pub election_timeout_max_ms: Option<u64>,
    /// The nodes' clock offset bound when not their default.
    pub max_clock_offset_ms: Option<u64>,
    /// The cluster rebalanced replicas and leaders during the run.
    pub rebalance: bool,
    /// The nodes ran TLS with authentication.
    #[serde(default)]
    pub tls: bool,
    /// The nodes' node_dead_after_ms when not their default.
    pub node_dead_after_ms: Option<u64>,
    /// The nodes' split_load_entries_per_s when set.
    pub split_load_entries_per_s: Option<u64>,
    pub liveness_timeout_ms: u64,
    pub key_time_limit_ms: u64,
    pub key_cache_limit_bytes: usize,
    /// Eventual mode, with the range given to the nodes as `--eventual-ranges`.
    pub eventual: bool,
    pub eventual_range: Option<String>,
    pub convergence_timeout_ms: Option<u64>,
}

/// What the run did.
#[derive(Clone, Debug, Serialize)]
pub struct RunStats {
    /// From the first operation to the end of the liveness phase.
    pub duration_s: f64,
    /// Of which the workload (before the final heal).
    pub workload_s: f64,
    pub check_s: f64,
    pub operations: usize,
    pub processes: usize,
    /// Nemesis windows skipped because the fault could not be applied.
    pub nemesis_skipped: Vec<String>,
    /// The cluster's shape after the liveness phase, as its shard map says:
    /// how many shards, and each member's state (splits, moves, drains and
    /// down nodes the run caused, by the nemesis or by the cluster itself).
    pub topology_at_end: String,
}

/// `report.json` of a run.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub tool: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub verdict: ReportVerdict,
    pub summary: String,
    /// Per checker: its `verdict` and its details.
    pub checkers: BTreeMap<String, Value>,
    pub op_counts: BTreeMap<String, BTreeMap<&'static str, usize>>,
    pub latency: Vec<Latency>,
    pub availability: Vec<WindowAvailability>,
    pub nemesis_windows: Vec<NemesisWindow>,
    pub liveness: Liveness,
    /// Eventual mode only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub convergence: Option<Convergence>,
    pub parameters: RunParameters,
    pub schedule: Schedule,
    pub stats: RunStats,
    pub files: BTreeMap<&'static str, String>,
}

impl RunReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("reports serialise")
    }

    /// The text the CLI prints.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let p = &self.parameters;
        let nemesis = if p.schedule_replayed { "a replayed schedule".to_string() } else { format!("{:?}", p.nemesis) };
        let mode = p.eventual_range.as_ref().map_or(String::new(), |r| format!(" on an eventual shard ({r})"));
        out.push_str(&format!(
            "geokv-jepsen run: {} workload{mode}, {} nodes, {} clients, seed {}, {} reads, nemesis {nemesis} ({} windows)\n",
            p.workload.as_str(),
            p.nodes,
            p.clients,
            p.seed,
            p.read_consistency,
            self.schedule.windows.len(),
        ));
        out.push_str(&format!(
            "{} operations by {} processes in {:.1} s (+ {:.1} s checking)\n",
            self.stats.operations, self.stats.processes, self.stats.duration_s, self.stats.check_s
        ));
        out.push_str(&format!("topology at the end: {}\n", self.stats.topology_at_end));
        for (f, counts) in &self.op_counts {
            let c = |k| counts.get(k).copied().unwrap_or(0);
            out.push_str(&format!("  {f:<10} ok {:>6}  fail {:>6}  info {:>6}\n", c("ok"), c("fail"), c("info")));
        }
        out.push_str("availability (ok/s):\n");
        for w in &self.availability {
            let rate = w.ok_per_s.map_or("-".to_string(), |r| format!("{r:.1}"));
            let label = if w.kind == "fault" { w.description.as_str() } else { "healthy" };
            let from = w.start_time as f64 / 1e9;
            let to = w.end_time as f64 / 1e9;
            out.push_str(&format!(
                "  {from:>6.1}-{to:<6.1}s {rate:>7}  ok {:>5} fail {:>5} info {:>4}  {label}\n",
                w.ok, w.fail, w.info
            ));
        }
        for (name, checker) in &self.checkers {
            let verdict = checker["verdict"].as_str().unwrap_or("?").to_uppercase();
            let summary = checker["summary"].as_str().unwrap_or("");
            out.push_str(&format!("{name}: {verdict}: {summary}\n"));
        }
        out.push_str(&format!("{}: {}\n", self.verdict.as_str().to_uppercase(), self.summary));
        for (what, path) in &self.files {
            out.push_str(&format!("  {what}: {path}\n"));
        }
        out
    }
}

/// The result of a run.
pub struct RunOutcome {
    pub report: RunReport,
    pub history: History,
}

fn worst(verdicts: impl IntoIterator<Item = ReportVerdict>) -> ReportVerdict {
    let rank = |v: ReportVerdict| match v {
        ReportVerdict::Valid => 0,
        ReportVerdict::Inconclusive => 1,
        ReportVerdict::Unknown => 2,
        ReportVerdict::Invalid => 3,
    };
    verdicts.into_iter().max_by_key(|v| rank(*v)).unwrap_or(ReportVerdict::Inconclusive)
}

/// Runs a whole test: lab, workload, nemesis, liveness, check, reports.
pub async fn run(config: RunConfig) -> Result<RunOutcome, RunError> {
    config.validate()?;
    let matrix = config.matrix()?;
    let out = config.out_dir.clone();
    std::fs::create_dir_all(&out).map_err(io(format!("create {}", out.display())))?;
    let lab_dir = out.join("lab");
    if lab_dir.exists() {
        std::fs::remove_dir_all(&lab_dir).map_err(io(format!("clear {}", lab_dir.display())))?;
    }
    let mut lab_config = LabConfig::new(&lab_dir, config.node_program.clone());
    lab_config.nodes_per_region = config.nodes / matrix.regions().len();
    lab_config.regions = matrix;
    lab_config.start_timeout = LAB_START_TIMEOUT;
    lab_config.node_log_filter = Some("warn".into());
    if let Some(range) = eventual_range(&config) {
        lab_config.node_args.push(format!("--eventual-ranges={range}"));
    }
    if config.unsafe_trust_clocks {
        lab_config.node_args.push("--unsafe-trust-clocks".into());
    }
    if config.unsafe_no_vote_quarantine {
        lab_config.node_args.push("--unsafe-no-vote-quarantine".into());
    }
    lab_config.election_timeout_min_ms = config.election_timeout_min_ms;
    lab_config.election_timeout_max_ms = config.election_timeout_max_ms;
    if let Some(ms) = config.max_clock_offset_ms {
        lab_config.node_args.push(format!("--max-clock-offset-ms={ms}"));
    }
    lab_config.rebalance = config.rebalance;
    lab_config.tls = config.tls;
    if let Some(ms) = config.node_dead_after_ms {
        lab_config.node_args.push(format!("--node-dead-after-ms={ms}"));
    }
    if let Some(rate) = config.split_load_entries_per_s {
        lab_config.node_args.push(format!("--split-load-entries-per-s={rate}"));
    }
    let lab = Lab::start(lab_config).await?;
    let result = drive(&config, &lab).await;
    lab.shutdown(false);
    drop(lab);
    if !config.keep_data {
        for entry in std::fs::read_dir(&lab_dir).map_err(io("list the lab directory"))?.flatten() {
            if entry.path().is_dir() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let driven = result?;
    finish(&config, driven)
}

/// `START..END` of the eventual range in eventual mode.
fn eventual_range(config: &RunConfig) -> Option<String> {
    let (start, end) = config.workload.eventual_range().filter(|_| config.eventual)?;
    Some(format!("{start}..{end}"))
}

/// What driving the cluster produced.
struct Driven {
    events: Vec<crate::history::Event>,
    stats: RunStats,
    liveness: Liveness,
    convergence: Option<Convergence>,
    schedule: Schedule,
}

async fn drive(config: &RunConfig, lab: &Lab) -> Result<Driven, RunError> {
    let shard = lab.shard_of(config.workload.sample_key().as_bytes()).await?;
    let schedule = match &config.schedule {
        Some(s) => s.clone(),
        None => Schedule::generate_timed(
            config.seed,
            &config.nemesis,
            config.time_limit.as_millis() as u64,
            lab.nodes().len(),
            shard,
            config.election_timeout_max_ms.unwrap_or_else(nemesis::default_election_timeout_max_ms),
        ),
    };
    let path = config.out_dir.join("schedule.json");
    let text = serde_json::to_string_pretty(&schedule).expect("schedules serialise");
    std::fs::write(&path, text).map_err(io(format!("write {}", path.display())))?;

    let regions = lab.regions().to_vec();
    // Warm-up (not recorded): the workload's shard takes a write.
    let setup = lab.client_config_for_region(&regions[0])?.rpc_timeout(SETUP_RPC_TIMEOUT).deadline(WARMUP_TIMEOUT);
    let setup = setup.connect().await?;
    if config.eventual {
        // Every replica takes writes on an eventual shard: warm up each one.
        for region in &regions {
            eventual_warmup(lab, region, config.workload.warmup_key()).await?;
        }
    } else {
        setup.put(config.workload.warmup_key(), "warm").await?;
    }
    if config.workload == Workload::Bank {
        setup_bank(lab, &setup).await?;
    }
    let mut clients = Vec::new();
    for slot in 0..config.clients {
        let region = regions[slot % regions.len()].clone();
        let client_config = lab.client_config_for_region(&region)?.deadline(config.op_timeout);
        let client_config = if config.client_retries {
            client_config.rpc_timeout(config.op_timeout / RETRY_ATTEMPTS_PER_OP)
        } else if config.unsafe_redo_unknown {
            // The harness redoes an unknown append itself: one RPC per
            // attempt, short enough that redos fit in the op timeout.
            client_config.max_attempts(1).rpc_timeout(config.op_timeout / RETRY_ATTEMPTS_PER_OP)
        } else {
            client_config.max_attempts(1).rpc_timeout(config.op_timeout)
        };
        let client = client_config.clone().connect().await?;
        let home_addr = lab.endpoint_for_region(&region)?;
        let source = lab.client_ip_for_region(&region)?;
        let home =
            workload::home_channel(&home_addr, source, config.op_timeout, lab.tonic_tls()).map_err(RunError::Config)?;
        clients.push((ProcessClient { client, home, region }, client_config));
    }

    let recorder = Arc::new(Recorder::new());
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let budget = Arc::new(AtomicU64::new(config.ops));
    let settings = OpSettings {
        consistency: config.read_consistency,
        op_timeout: config.op_timeout,
        eventual: config.eventual,
        unsafe_redo_unknown: config.unsafe_redo_unknown,
    };
    let first_processes: Vec<u64> = (0..config.clients).map(|_| recorder.fresh_process()).collect();
    let deadline = started + config.time_limit;

    let nemesis = {
        let (recorder, stop, schedule) = (recorder.clone(), stop.clone(), schedule.clone());
        async move { run_schedule(lab, &recorder, &schedule, shard, started, &stop).await }
    };
    // The slots of a key group count their operations together, so the
    // group's keys rotate for all of them at once.
    let generators: Vec<Generator> =
        (0..config.clients).map(|slot| Generator::new(config.workload, config.seed, slot, config.clients)).collect();
    let mut group_slots: BTreeMap<usize, usize> = BTreeMap::new();
    for generator in &generators {
        *group_slots.entry(generator.group()).or_default() += 1;
    }
    let group_counters: BTreeMap<usize, Arc<AtomicU64>> =
        group_slots.keys().map(|&group| (group, Arc::new(AtomicU64::new(0)))).collect();
    let mut workers = Vec::new();
    for (slot, ((pc, client_config), generator)) in clients.into_iter().zip(generators).enumerate() {
        let group = generator.group();
        let mut generator = generator.with_group_counter(group_counters[&group].clone(), group_slots[&group]);
        if config.eventual {
            generator = generator.without_cas();
        }
        let (recorder, stop, budget) = (recorder.clone(), stop.clone(), budget.clone());
        let mut pc = pc;
        let mut process = first_processes[slot];
        workers.push(tokio::spawn(async move {
            loop {
                let take = budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1));
                if stop.load(Ordering::Relaxed) || Instant::now() >= deadline || take.is_err() || recorder.full() {
                    break;
                }
                let Some(op) = generator.next_op() else { break };
                match workload::execute(&recorder, &settings, &pc, process, &op).await {
                    EventType::Ok => continue,
                    EventType::Info => {
                        // A fresh process opens a fresh client (as Jepsen's
                        // do): no cached leader that may be cut off. If the
                        // region's node cannot give a shard map, keep the old.
                        process = recorder.fresh_process();
                        if let Ok(Ok(client)) =
                            tokio::time::timeout(settings.op_timeout, client_config.clone().connect()).await
                        {
                            pc.client = client;
                        }
                    }
                    _ => {}
                }
                // A down or cut-off node answers at once: do not spin.
                tokio::time::sleep(PAUSE_AFTER_FAILURE).await;
            }
        }));
    }
    let workers_done = async {
        for worker in workers {
            let _ = worker.await;
        }
        stop.store(true, Ordering::Relaxed);
    };
    let ((), skipped) = tokio::join!(workers_done, nemesis);
    let workload_s = started.elapsed().as_secs_f64();

    // Final heal, then liveness: every key takes a write again, then a read.
    let healed = nemesis::heal_all(lab).await;
    let healed_at = Instant::now();
    recorder.nemesis("final-heal", json!(healed.join("; ")));
    let liveness = liveness_phase(config, lab, &recorder, &regions[0]).await?;
    let convergence = match config.workload.eventual_range().filter(|_| config.eventual) {
        Some(range) => Some(convergence_check(lab, range, healed_at, config.convergence_timeout).await),
        None => None,
    };
    let duration_s = started.elapsed().as_secs_f64();
    let topology_at_end = match setup.refresh_shard_map().await {
        Ok(map) => {
            let nodes: Vec<String> = map.nodes.iter().map(|n| format!("{} {}", n.node_id, n.state.as_str())).collect();
            format!("{} shards; nodes: {}", map.shards.len(), nodes.join(", "))
        }
        Err(e) => format!("shard map not read: {e}"),
    };
    let events = recorder.events();
    let processes = events.iter().filter_map(|e| e.process).collect::<BTreeSet<_>>().len();
    let stats = RunStats {
        duration_s,
        workload_s,
        check_s: 0.0,
        operations: events.iter().filter(|e| e.kind == EventType::Invoke).count(),
        processes,
        nemesis_skipped: skipped,
        topology_at_end,
    };
    Ok(Driven { events, stats, liveness, convergence, schedule })
}

/// Eventual mode: one unrecorded write of `key` through `region`'s replica,
/// retried until it is accepted (the node may still be opening its shards).
async fn eventual_warmup(lab: &Lab, region: &str, key: &str) -> Result<(), RunError> {
    let source = lab.client_ip_for_region(region)?;
    let home = workload::home_channel(&lab.endpoint_for_region(region)?, source, SETUP_RPC_TIMEOUT, lab.tonic_tls())
        .map_err(RunError::Config)?;
    let started = Instant::now();
    loop {
        match workload::raw_put(&home, key, "warm", SETUP_RPC_TIMEOUT).await {
            Ok(_) => return Ok(()),
            Err(status) if started.elapsed() > WARMUP_TIMEOUT => {
                return Err(RunError::Config(format!(
                    "the warm-up write through {region} was not accepted within {WARMUP_TIMEOUT:?}: {status}"
                )));
            }
            Err(_) => tokio::time::sleep(PAUSE_AFTER_FAILURE).await,
        }
    }
}

/// One replica's state of a key, as the convergence check compares it.
fn replica_state(kv: &geokv_proto::kv::KeyValue) -> String {
    let value = String::from_utf8_lossy(&kv.value);
    match &kv.hlc {
        Some(h) => format!("{value}@{}.{}.{} (origin {})", h.physical_ms, h.logical, h.node_id, kv.origin),
        None => format!("{value}@- (origin {})", kv.origin),
    }
}

/// Eventual mode, after the final heal and the liveness phase: reads the
/// whole `range` from every node directly (its real listener, no proxy: a
/// local read on that replica) every [`CONVERGENCE_POLL`] until all return
/// the same keys with the same values and timestamps, or `bound` after
/// `healed_at` has passed.
async fn convergence_check(lab: &Lab, range: (&str, &str), healed_at: Instant, bound: Duration) -> Convergence {
    let (start, end) = range;
    let nodes: Vec<(u64, Result<geokv_proto::kv::kv_client::KvClient<tonic::transport::Channel>, String>)> = lab
        .nodes()
        .iter()
        .map(|n| {
            let scheme = if lab.tonic_tls().is_some() { "https" } else { "http" };
            let channel = tonic::transport::Endpoint::from_shared(format!("{scheme}://{}", n.listen))
                .map_err(|e| e.to_string())
                .and_then(|e| match lab.tonic_tls() {
                    Some(tls) => e.tls_config(tls).map_err(|e| e.to_string()),
                    None => Ok(e),
                })
                .map(|e| e.connect_timeout(SETUP_RPC_TIMEOUT).tcp_nodelay(true).connect_lazy())
                .map(geokv_proto::kv::kv_client::KvClient::new);
            (n.id, channel)
        })
        .collect();
    let mut rounds = 0;
    loop {
        rounds += 1;
        let reads = futures::future::join_all(nodes.iter().map(|(id, node)| async move {
            let state = match node {
                Ok(node) => workload::raw_scan(node, start, end, Consistency::Stale, SETUP_RPC_TIMEOUT)
                    .await
                    .map(|(kvs, _)| {
                        kvs.iter()
                            .map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), replica_state(kv)))
                            .collect::<BTreeMap<String, String>>()
                    })
                    .map_err(|s| format!("no answer: {}", s.message())),
                Err(e) => Err(e.clone()),
            };
            (*id, state)
        }))
        .await;
        let elapsed_ms = healed_at.elapsed().as_millis() as u64;
        let all_answered = reads.iter().all(|(_, r)| r.is_ok());
        let first = reads.first().and_then(|(_, r)| r.as_ref().ok());
        let equal = all_answered && reads.iter().all(|(_, r)| r.as_ref().ok() == first);
        let keys = first.map_or(0, BTreeMap::len);
        let bound_ms = bound.as_millis() as u64;
        let range_pair = (start.to_string(), end.to_string());
        if equal {
            return Convergence {
                verdict: ReportVerdict::Valid,
                summary: format!(
                    "all {} replicas hold the same {keys} keys (values and timestamps) {elapsed_ms} ms after the final heal (bound {bound_ms} ms)",
                    reads.len()
                ),
                converged: true,
                convergence_ms: Some(elapsed_ms),
                bound_ms,
                range: range_pair,
                keys,
                rounds,
                divergent_count: 0,
                divergent: Vec::new(),
            };
        }
        if healed_at.elapsed() >= bound {
            let mut all_keys = BTreeSet::new();
            for (_, r) in &reads {
                if let Ok(map) = r {
                    all_keys.extend(map.keys().cloned());
                }
            }
            let mut divergent = Vec::new();
            let mut divergent_count = 0;
            for key in &all_keys {
                let replicas: BTreeMap<u64, String> = reads
                    .iter()
                    .map(|(id, r)| {
                        let state = match r {
                            Ok(map) => map.get(key).cloned().unwrap_or_else(|| "absent".into()),
                            Err(e) => e.clone(),
                        };
                        (*id, state)
                    })
                    .collect();
                let distinct: BTreeSet<&String> = replicas.values().collect();
                if distinct.len() > 1 {
                    divergent_count += 1;
                    if divergent.len() < MAX_DIVERGENT_LISTED {
                        divergent.push(Divergent { key: key.clone(), replicas });
                    }
                }
            }
            let unanswered: Vec<String> =
                reads.iter().filter(|(_, r)| r.is_err()).map(|(id, _)| format!("node {id}")).collect();
            let why = if unanswered.is_empty() {
                format!("{divergent_count} of {} keys still differ between replicas", all_keys.len())
            } else {
                format!("{} did not answer; {divergent_count} keys differ", unanswered.join(", "))
            };
            return Convergence {
                verdict: ReportVerdict::Invalid,
                summary: format!("replicas did not converge within {bound_ms} ms of the final heal: {why}"),
                converged: false,
                convergence_ms: None,
                bound_ms,
                range: range_pair,
                keys: all_keys.len(),
                rounds,
                divergent_count,
                divergent,
            };
        }
        tokio::time::sleep(CONVERGENCE_POLL).await;
    }
}

/// Sleeps until `at`, or returns false early when `stop` is set.
async fn sleep_until_or_stop(at: Instant, stop: &AtomicBool) -> bool {
    while Instant::now() < at {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let left = at.saturating_duration_since(Instant::now());
        tokio::time::sleep(left.min(Duration::from_millis(50))).await;
    }
    !stop.load(Ordering::Relaxed)
}

/// Carries out the schedule; returns the windows it had to skip.
async fn run_schedule(
    lab: &Lab,
    recorder: &Recorder,
    schedule: &Schedule,
    workload_shard: u64,
    started: Instant,
    stop: &AtomicBool,
) -> Vec<String> {
    let mut skipped = Vec::new();
    for window in &schedule.windows {
        let start = started + Duration::from_millis(window.start_ms);
        if !sleep_until_or_stop(start, stop).await {
            break;
        }
        let applied =
            tokio::time::timeout(nemesis::APPLY_TIMEOUT, nemesis::apply(lab, &window.fault, workload_shard)).await;
        let applied = match applied {
            Ok(Ok(applied)) => applied,
            Ok(Err(why)) => {
                // A composed fault may have applied its first part (a kill)
                // before the second failed: heal that, as the timeout does.
                nemesis::heal_all(lab).await;
                recorder.nemesis("skipped", json!(why));
                skipped.push(format!("{} ms: {why}", window.start_ms));
                continue;
            }
            Err(_) => {
                // Partly applied, maybe: heal whatever it did.
                nemesis::heal_all(lab).await;
                recorder.nemesis("skipped", json!("applying the fault timed out"));
                skipped.push(format!("{} ms: applying the fault timed out", window.start_ms));
                continue;
            }
        };
        recorder.nemesis("start", json!(applied.description));
        let end = started + Duration::from_millis(window.end_ms);
        sleep_until_or_stop(end, stop).await;
        let healed = nemesis::heal_all(lab).await;
        recorder.nemesis("stop", json!(healed.join("; ")));
    }
    skipped
}

/// Writes every bank account's initial balance (retries on; not recorded:
/// the checker knows the initial total).
/// Writes the accounts in one batch, then waits until every replica of
/// their shard has applied it: the run starts from the same state on every
/// node, so a bounded read in the first few hundred ms (allowed to miss
/// writes that recent) cannot see the bank before it was opened.
async fn setup_bank(lab: &Lab, client: &geokv_client::Client) -> Result<(), RunError> {
    let mut batch = client.batch();
    for i in 0..workload::ACCOUNTS {
        batch = batch.put(workload::account_key(i), workload::INITIAL_BALANCE.to_string());
    }
    let result = batch.send().await?;
    if !result.applied {
        return Err(RunError::Config("the bank's initial batch was not applied".into()));
    }
    let started = Instant::now();
    for node in lab.nodes() {
        loop {
            let status = lab.node_status(node.id).await.ok();
            let group = status.as_ref().map(|s| s.groups.iter().find(|g| g.shard_id == result.shard_id));
            match group {
                // Not a replica of the bank's shard: nothing to wait for.
                Some(None) => break,
                Some(Some(g)) if g.applied_index >= result.version => break,
                _ if started.elapsed() > WARMUP_TIMEOUT => {
                    return Err(RunError::Config(format!(
                        "node {} did not apply the bank's initial batch (index {}) within {WARMUP_TIMEOUT:?}",
                        node.id, result.version
                    )));
                }
                _ => tokio::time::sleep(PAUSE_AFTER_FAILURE).await,
            }
        }
    }
    Ok(())
}

/// After the final heal: one write per key (retries on, bounded by the
/// liveness timeout), then a final read; both recorded.
async fn liveness_phase(
    config: &RunConfig,
    lab: &Lab,
    recorder: &Recorder,
    region: &str,
) -> Result<Liveness, RunError> {
    let healed_at = Instant::now();
    let bound = config.liveness_timeout;
    let client = lab.client_config_for_region(region)?.rpc_timeout(SETUP_RPC_TIMEOUT).deadline(bound);
    let client = match tokio::time::timeout(bound, client.connect()).await {
        Ok(Ok(client)) => Some(client),
        _ => None,
    };
    let source = lab.client_ip_for_region(region)?;
    let home = workload::home_channel(&lab.endpoint_for_region(region)?, source, bound, lab.tonic_tls())
        .map_err(RunError::Config)?;
    let settings = OpSettings {
        consistency: Consistency::Linearizable,
        op_timeout: bound,
        eventual: config.eventual,
        unsafe_redo_unknown: false,
    };
    let events = recorder.events();
    // Per key: the writes to try in turn until one is ok, then the read.
    let mut keys: Vec<(String, Vec<Op>, Op)> = Vec::new();
    // Values nobody else writes: above every slot's range.
    let liveness_value = |i: usize| (MAX_CLIENTS as u64 + 1) * (workload::MAX_OPS_PER_SLOT + 1) + i as u64;
    match config.workload {
        Workload::Register => {
            let mut seen = BTreeSet::new();
            for e in events.iter().filter(|e| e.kind == EventType::Invoke) {
                seen.insert(e.key.clone());
            }
            for (i, key) in seen.into_iter().enumerate() {
                let write = Op::RegisterWrite { key: key.clone(), value: liveness_value(i) };
                keys.push((key.clone(), vec![write], Op::RegisterRead { key }));
            }
        }
        Workload::Set => {
            keys.push(("set".into(), vec![Op::SetAdd { element: liveness_value(0) }], Op::SetRead));
        }
        Workload::Bank => {
            // From each account in turn until one has the funds: a transfer
            // refused for insufficient funds is an answer, not liveness.
            let transfers = (0..workload::ACCOUNTS)
                .map(|from| Op::BankTransfer { from, to: (from + 1) % workload::ACCOUNTS, amount: 1 })
                .collect();
            keys.push(("bank".into(), transfers, Op::BankRead));
        }
        Workload::Append => {
            let mut seen = BTreeSet::new();
            for e in events.iter().filter(|e| e.kind == EventType::Invoke) {
                seen.insert(e.key.clone());
            }
            for (i, key) in seen.into_iter().enumerate() {
                let append = Op::Append { key: key.clone(), element: liveness_value(i) };
                keys.push((key.clone(), vec![append], Op::ListRead { key }));
            }
        }
    }
    let Some(client) = client else {
        let keys = keys
            .into_iter()
            .map(|(key, _, _)| KeyLiveness {
                key,
                ok: false,
                elapsed_ms: healed_at.elapsed().as_millis() as u64,
                error: Some("no node answered the shard map request".into()),
            })
            .collect();
        return Ok(liveness_result(bound, keys));
    };
    let pc = ProcessClient { client, home, region: region.to_string() };
    let final_f = if config.workload == Workload::Register { None } else { Some("final-read") };
    let checks = keys.iter().map(|(key, writes, read)| {
        let pc = pc.clone();
        async move {
            let mut kind = EventType::Fail;
            for write in writes {
                let process = recorder.fresh_process();
                kind = workload::execute(recorder, &settings, &pc, process, write).await;
                if kind != EventType::Fail || healed_at.elapsed() > bound {
                    break;
                }
            }
            let elapsed_ms = healed_at.elapsed().as_millis() as u64;
            let ok = kind == EventType::Ok;
            let error = (!ok).then(|| format!("the write ended {kind}"));
            if ok {
                let reader = recorder.fresh_process();
                match final_f {
                    None => {
                        workload::execute(recorder, &settings, &pc, reader, read).await;
                    }
                    Some(f) => final_read(recorder, &settings, &pc, reader, f, config.workload, key).await,
                }
            }
            KeyLiveness { key: key.clone(), ok, elapsed_ms, error }
        }
    });
    let results = futures::future::join_all(checks).await;
    Ok(liveness_result(bound, results))
}

/// A set, bank or list read recorded as `final-read` (of `key` for a list;
/// the set and the bank record no key).
async fn final_read(
    recorder: &Recorder,
    settings: &OpSettings,
    pc: &ProcessClient,
    process: u64,
    f: &str,
    w: Workload,
    key: &str,
) {
    let key = if w == Workload::Append { key } else { "" };
    recorder.invoke(process, f, key, Value::Null);
    let read = async {
        match w {
            Workload::Append => workload::read_list(pc, key, settings.consistency, settings.op_timeout)
                .await
                .map(|(list, meta)| (list.as_array().cloned().unwrap_or_default(), meta)),
            Workload::Set if settings.eventual => {
                workload::read_set_local(&pc.home, settings.consistency, settings.op_timeout).await
            }
            Workload::Set => workload::read_set(&pc.client, settings.consistency).await,
            _ => workload::read_bank(&pc.client, settings.consistency).await,
        }
    };
    match tokio::time::timeout(settings.op_timeout, read).await {
        Ok(Ok((values, meta))) => recorder.complete(process, EventType::Ok, f, key, json!(values), meta),
        Ok(Err(e)) => {
            let meta = recorder::CompletionMeta { error: Some(e.message), ..Default::default() };
            recorder.complete(process, EventType::Fail, f, key, Value::Null, meta);
        }
        Err(_) => {
            let meta = recorder::CompletionMeta { error: Some("timed out".into()), ..Default::default() };
            recorder.complete(process, EventType::Fail, f, key, Value::Null, meta);
        }
    }
}

fn liveness_result(bound: Duration, keys: Vec<KeyLiveness>) -> Liveness {
    let failed = keys.iter().filter(|k| !k.ok).count();
    let slowest = keys.iter().filter(|k| k.ok).map(|k| k.elapsed_ms).max().unwrap_or(0);
    let bound_ms = bound.as_millis() as u64;
    let (verdict, summary) = if keys.is_empty() {
        (ReportVerdict::Inconclusive, "no key to check".to_string())
    } else if failed == 0 {
        (
            ReportVerdict::Valid,
            format!("all {} keys took a write within {slowest} ms of the final heal (bound {bound_ms} ms)", keys.len()),
        )
    } else {
        (
            ReportVerdict::Invalid,
            format!("{failed} of {} keys did not take a write within {bound_ms} ms of the final heal", keys.len()),
        )
    };
    Liveness { verdict, summary, bound_ms, keys }
}

/// Adds `extra`'s fields to the object `target`.
fn merge_json(target: &mut Value, extra: Value) {
    if let (Value::Object(target), Value::Object(extra)) = (target, extra) {
        target.extend(extra);
    }
}

fn write_file(path: &Path, text: &str) -> Result<(), RunError> {
    std::fs::write(path, text).map_err(io(format!("write {}", path.display())))
}

fn finish(config: &RunConfig, driven: Driven) -> Result<RunOutcome, RunError> {
    let Driven { events, mut stats, liveness, convergence, schedule } = driven;
    let out = &config.out_dir;
    let history_path = out.join("history.jsonl");
    write_file(&history_path, &crate::history::write_jsonl(&events))?;
    let history = History::from_events(events, Clock::Nanoseconds)?;
    let checking = Instant::now();
    let mut checkers: BTreeMap<String, Value> = BTreeMap::new();
    let check: CheckResult = match config.workload {
        Workload::Register => {
            // What the requested level promises: bounded reads only their
            // reported staleness (each checked as if invoked that much
            // earlier); every other level linearizability (stale reads, the
            // negative control, included).
            let (relaxed, counts) = crate::staleness::relax_bounded_staleness(&history)?;
            let checked = match config.read_consistency {
                Consistency::Bounded { .. } => &relaxed,
                _ => &history,
            };
            let ops = register_operations(checked)?;
            let result = check_keys(&ops.model, ops.keys, &config.check);
            let mut entry = serde_json::to_value(&result).expect("results serialise");
            entry["verdict"] = json!(report::report_verdict(checked, &result));
            entry["summary"] = json!(report::summary(checked, &result));
            checkers.insert("linearizable".into(), entry);
            // What every read itself reported: its bound must hold, whatever
            // level was asked for (eventual shards excepted: last-writer-wins
            // is no register, and their runs are negative controls anyway).
            if !config.eventual {
                let ops = register_operations(&relaxed)?;
                let bounds = check_keys(&ops.model, ops.keys, &config.check);
                let verdict = report::report_verdict(&relaxed, &bounds);
                let checked_reads = counts.fresh + counts.bounded;
                let summary = match verdict {
                    ReportVerdict::Valid => format!(
                        "every read's reported staleness bound held: {} fresh (bound 0), {} with a bound, {} \
                         reporting none (not checked)",
                        counts.fresh, counts.bounded, counts.unknown
                    ),
                    _ => format!(
                        "{} in {checked_reads} reads checked by their reported bounds",
                        report::summary(&relaxed, &bounds)
                    ),
                };
                let mut entry = json!({"verdict": verdict, "summary": summary});
                merge_json(&mut entry, serde_json::to_value(&counts).expect("counts serialise"));
                checkers.insert("staleness_bounds".into(), entry);
            }
            result
        }
        Workload::Set => {
            let result = checks::check_set(&history);
            let verdict = result.verdict;
            checkers.insert("set".into(), serde_json::to_value(&result).expect("results serialise"));
            CheckResult { verdict: plain_verdict(verdict), keys: Vec::new(), elapsed_ms: 0.0 }
        }
        Workload::Append => {
            let result = checks::check_append(&history);
            let verdict = result.verdict;
            checkers.insert("append".into(), serde_json::to_value(&result).expect("results serialise"));
            CheckResult { verdict: plain_verdict(verdict), keys: Vec::new(), elapsed_ms: 0.0 }
        }
        Workload::Bank => {
            let total = (workload::ACCOUNTS as u64 * workload::INITIAL_BALANCE) as i64;
            let result = checks::check_bank(&history, workload::ACCOUNTS, total);
            let verdict = result.verdict;
            checkers.insert("bank".into(), serde_json::to_value(&result).expect("results serialise"));
            CheckResult { verdict: plain_verdict(verdict), keys: Vec::new(), elapsed_ms: 0.0 }
        }
    };
    stats.check_s = checking.elapsed().as_secs_f64();
    checkers.insert(
        "liveness".into(),
        json!({"verdict": liveness.verdict, "summary": liveness.summary, "bound_ms": liveness.bound_ms}),
    );
    if let Some(c) = &convergence {
        checkers.insert(
            "convergence".into(),
            json!({"verdict": c.verdict, "summary": c.summary, "convergence_ms": c.convergence_ms, "bound_ms": c.bound_ms}),
        );
    }
    let verdicts = checkers.values().map(|c| match c["verdict"].as_str() {
        Some("valid") => ReportVerdict::Valid,
        Some("invalid") => ReportVerdict::Invalid,
        Some("unknown") => ReportVerdict::Unknown,
        _ => ReportVerdict::Inconclusive,
    });
    let verdict = worst(verdicts);
    let operations = history.operations.len();
    let summary = match verdict {
        ReportVerdict::Valid => format!(
            "no anomaly found in {operations} operations ({} workload, seed {}); every key writable again after the final heal",
            config.workload.as_str(),
            config.seed
        ),
        ReportVerdict::Invalid => {
            let bad: Vec<&str> =
                checkers.iter().filter(|(_, c)| c["verdict"] == "invalid").map(|(n, _)| n.as_str()).collect();
            format!("anomaly found by {} in {operations} operations", bad.join(", "))
        }
        ReportVerdict::Unknown => {
            format!("no verdict for part of {operations} operations (budget exhausted): not a pass")
        }
        ReportVerdict::Inconclusive => format!("too little evidence in {operations} operations: not a pass"),
    };
    let source = Source { path: history_path.display().to_string(), format: "jsonl".into() };
    let mut files = BTreeMap::new();
    for (what, name) in [
        ("history", "history.jsonl"),
        ("schedule", "schedule.json"),
        ("report", "report.json"),
        ("timeline", "timeline.html"),
        ("node logs", "lab"),
    ] {
        files.insert(what, out.join(name).display().to_string());
    }
    let matrix = config.matrix()?;
    let report = RunReport {
        tool: "geokv-jepsen",
        version: env!("CARGO_PKG_VERSION"),
        kind: "run",
        verdict,
        summary,
        checkers,
        op_counts: report::op_counts(&history),
        latency: report::latencies(&history),
        availability: report::availability(&history),
        nemesis_windows: history.nemesis_windows.clone(),
        liveness,
        convergence,
        parameters: RunParameters {
            workload: config.workload,
            seed: config.seed,
            nodes: config.nodes,
            regions: matrix.regions().to_vec(),
            clients: config.clients,
            ops_limit: config.ops,
            time_limit_s: config.time_limit.as_secs_f64(),
            read_consistency: config.read_consistency,
            nemesis: config.nemesis.clone(),
            schedule_replayed: config.schedule.is_some(),
            op_timeout_ms: config.op_timeout.as_millis() as u64,
            client_retries: config.client_retries,
            unsafe_redo_unknown: config.unsafe_redo_unknown,
            unsafe_trust_clocks: config.unsafe_trust_clocks,
            unsafe_no_vote_quarantine: config.unsafe_no_vote_quarantine,
            election_timeout_min_ms: config.election_timeout_min_ms,
            election_timeout_max_ms: config.election_timeout_max_ms,
            max_clock_offset_ms: config.max_clock_offset_ms,
            rebalance: config.rebalance,
            tls: config.tls,
            node_dead_after_ms: config.node_dead_after_ms,
            split_load_entries_per_s: config.split_load_entries_per_s,
            liveness_timeout_ms: config.liveness_timeout.as_millis() as u64,
            key_time_limit_ms: config.check.key_time_limit_ms,
            key_cache_limit_bytes: config.check.key_cache_limit_bytes,
            eventual: config.eventual,
            eventual_range: eventual_range(config),
            convergence_timeout_ms: config.eventual.then_some(config.convergence_timeout.as_millis() as u64),
        },
        schedule,
        stats,
        files,
    };
    write_file(&out.join("report.json"), &report.to_json())?;
    write_file(&out.join("timeline.html"), &timeline::render(&history, &check, &source))?;
    Ok(RunOutcome { report, history })
}

fn plain_verdict(verdict: ReportVerdict) -> Verdict {
    match verdict {
        ReportVerdict::Invalid => Verdict::Invalid,
        ReportVerdict::Unknown => Verdict::Unknown,
        ReportVerdict::Valid | ReportVerdict::Inconclusive => Verdict::Valid,
    }
}
