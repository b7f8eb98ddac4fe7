//! The `geokv-jepsen` command line: `check`, the offline checker, and `run`,
//! a whole test against a lab cluster.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use geokv_client::Consistency;
use geokv_lab::{NodeProgram, RegionMatrix};

use crate::checker::{CheckConfig, check_keys};
use crate::edn::{EdnOptions, read_edn};
use crate::error::Error;
use crate::history::{History, read_jsonl};
use crate::register::register_operations;
use crate::report::{Report, ReportVerdict, Source, render_text, report_verdict};
use crate::run::RunConfig;
use crate::staleness::relax_bounded_staleness;
use crate::timeline;

/// Exit code for a malformed or unreadable history (the same code as
/// INCONCLUSIVE: either way there is no evidence to pass).
pub const EXIT_MALFORMED: i32 = 3;
/// Exit code for a command-line usage error (sysexits' EX_USAGE).
pub const EXIT_USAGE: i32 = 64;
/// Histories larger than this are refused rather than read into memory.
pub const MAX_HISTORY_BYTES: u64 = 2 << 30;

const LONG_ABOUT: &str = "\
geokv's Jepsen-style harness. `check` decides whether a recorded history of
register operations (read, write, compare-and-swap) is linearizable.

LINEARIZABLE means: there is one order of all the operations that took effect
such that (1) each operation appears to take effect at a single instant
between its invoke and its completion, and (2) every result agrees with a
single register going through that order (a read returns the last value
written; a CAS succeeds exactly when the register holds its expected value).
Operations whose time intervals overlap — even just touch — may be ordered
either way; one that completed before another was invoked must come first.
Each key is an independent register and is checked on its own.

OUTCOMES: `ok` happened with the reported result. `fail` definitely did not
happen (a failed read observed nothing). `info` means UNKNOWN: the client gave
up (timeout, lost connection) and the operation may have taken effect at any
time after its invoke — even long after the client gave up — or never; the
checker tries both. A process that got an `info` never invokes again. An
invoke with no completion at the end of the history counts as `info`.

VERDICTS (exit codes): 0 VALID — no anomaly found (never a proof of
correctness; the report says \"no anomaly found in N operations\"). 1 INVALID —
with a witness: the longest linearizable prefix the search found, the
operation that cannot be placed after it, and the operations concurrent with
it. 2 UNKNOWN — a key's search ran out of its time or memory budget; never
reported as a pass. 3 INCONCLUSIVE — nothing invalid, but no ok read to judge
(or the history is malformed: a parse error names its line). 64 — usage error.

The search is Wing & Gong's with Lowe's memoization, as in Porcupine.";

const CHECK_ABOUT: &str = "\
Check a history file offline.

FILE is JSON Lines (one event per line, as the harness records it:
{\"process\":0,\"type\":\"invoke\",\"f\":\"cas\",\"key\":\"k\",\"value\":[1,2],\"time\":1000})
or a Jepsen/Knossos EDN cas-register history
({:process 0, :type :invoke, :f :cas, :value [1 2]}; single key, register starts
as nil; without :time the order of lines is the real-time order; a :fail CAS ran
and found a value other than the expected one, see --edn-fail-cas).";

#[derive(Debug, Parser)]
#[command(name = "geokv-jepsen", version, about = "geokv's Jepsen-style harness: linearizability checking of histories", long_about = LONG_ABOUT)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(about = "Check a history file offline", long_about = CHECK_ABOUT)]
    Check(CheckArgs),
    #[command(about = "Run a test against a lab cluster under faults, then check it", long_about = RUN_ABOUT)]
    Run(Box<RunArgs>),
}

const RUN_ABOUT: &str = "\
Run a Jepsen-style test: start a lab cluster of real geokv node processes
behind an emulated WAN (in OUT/lab), run --clients client processes of a
workload against it with client retries off (one RPC per operation; on with
--client-retries), while a
seeded nemesis alternates fault and heal windows; heal, require every key to
take a write again (liveness), then check the history.

Writes OUT/history.jsonl, OUT/schedule.json (replay with --schedule),
OUT/report.json, OUT/timeline.html and the node logs in OUT/lab.

WORKLOADS: register (read/write/CAS per key, checked for linearizability),
set (adds, then a final read: lost/unexpected elements, stale reads), bank
(transfers by conditional batch within one shard; reads must conserve the
total and show no negative balance), append (exactly-once: unique elements
appended to lists by read-then-conditional-swap; an element twice, a failed
append present, an acknowledged one lost, or lists that disagree is an
anomaly; run it with --client-retries, and with --unsafe-redo-unknown as its
negative control).

Stale register reads go to the process's own region's node (as a geo client
would read locally); linearizable and lease reads go through the client
library to the leader. With --eventual the keys live on an eventual shard
and every process reads and writes through its own region's replica; the
register workload must then be found INVALID under partitions (a negative
control), and the replicas must converge after the final heal (the
`convergence` checker, with convergence_ms in report.json). Exit codes as for `check`: 0 valid (\"no anomaly
found in N operations\", never a proof), 1 invalid, 2 unknown, 3
inconclusive or the run could not be carried out, 64 usage.";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum NemesisArg {
    Partition,
    Kill,
    Pause,
    Latency,
    /// Kill a node and restart it within 50-300 ms.
    Restart,
    /// A partition and, while it holds, a kill, pause or quick restart of another node.
    Composed,
    /// One node's wall clock off by 25-1000 ms (libfaketime).
    Clock,
    /// Split the shard holding a workload key there (`kvctl shard split`), alone or during a
    /// partition or a kill. Not part of `all`: splits are permanent, and bank transfers cannot
    /// span shards.
    Split,
    /// Hand a shard's leadership to another voter, alone or during a partition or a kill. Not
    /// part of `all`.
    TransferLeader,
    /// Move a replica of the shard holding a workload key to a node without one (`kvctl shard
    /// move`), alone or during a partition or a kill. Needs more nodes than replicas (e.g.
    /// --nodes 6). Not part of `all`.
    MoveReplica,
    /// Merge the shard holding a workload key with a neighbour (`kvctl shard merge`: replicas
    /// aligned by moves, the right shard frozen, the left one absorbing it), alone or during a
    /// partition or a kill. Not part of `all`: merges are permanent; pair it with `split` so
    /// that there are shards to merge.
    Merge,
    /// Add a node (`geokv --join`), or drain and remove one the run added (`kvctl node remove
    /// --force`), alone or during a partition or a kill. Not part of `all`. With `--rebalance`
    /// the added node takes replicas, so its removal moves them off again.
    AddRemoveNode,
    /// Cut the leader from one follower until that follower's lease promise lapses, then cut
    /// the leader's region off and restart the other follower at once (3 nodes). Not part of
    /// `all`. With lease reads and --unsafe-no-vote-quarantine it must be INVALID; widen the
    /// race with --election-timeout-max-ms 6000 and run it with --client-retries.
    LeaseRace,
    All,
    None,
}

/// Parses `--read-consistency` (see geokv_client::Consistency).
fn parse_consistency(s: &str) -> std::result::Result<Consistency, String> {
    s.parse()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum WorkloadArg {
    Register,
    Set,
    Bank,
    Append,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    #[arg(long, value_enum, default_value_t = WorkloadArg::Register)]
    workload: WorkloadArg,
    /// Nodes in the lab (3: us-east, us-west, eu-west; 5: five regions).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// A region matrix TOML (see lab/regions/); nodes must be a multiple of its regions.
    #[arg(long)]
    regions: Option<PathBuf>,
    /// Concurrent client processes (slots), pinned to regions round-robin.
    #[arg(long, default_value_t = 6)]
    clients: usize,
    /// Operations to invoke in all.
    #[arg(long, default_value_t = 2_000)]
    ops: u64,
    /// Stop invoking after this many seconds.
    #[arg(long, default_value_t = 30)]
    time_limit_s: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Fault families (comma-separated); `all` is every family.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "partition")]
    nemesis: Vec<NemesisArg>,
    /// Replay this schedule.json instead of generating one from the seed.
    #[arg(long)]
    schedule: Option<PathBuf>,
    /// linearizable, lease, follower, bounded:<N>ms (reads checked after
    /// moving each read's invoke back by its reported bound) or stale.
    #[arg(long, default_value = "linearizable", value_parser = parse_consistency)]
    read_consistency: Consistency,
    /// Where the history, schedule, reports and node logs go.
    #[arg(long)]
    out: PathBuf,
    /// One operation's bound in ms: past it, reads fail and writes are info.
    #[arg(long, default_value_t = 2_000)]
    op_timeout_ms: u64,
    /// Let the clients retry within --op-timeout-ms (attempts of a quarter of
    /// it each), resending writes with their sequence numbers: exactly-once
    /// under retries, leader changes and dropped connections is then checked
    /// too (a write applied twice brings an overwritten value back).
    #[arg(long)]
    client_retries: bool,
    /// UNSAFE, a negative control for --workload append: an append whose
    /// outcome is unknown is run again from its read as a new write (up to 8
    /// times within --op-timeout-ms), as a client without exactly-once
    /// sessions would, and the last attempt's answer is recorded. A run
    /// whose faults lose answers (kill, latency, restart) must be INVALID.
    #[arg(long)]
    unsafe_redo_unknown: bool,
    /// UNSAFE, a negative control for clock skew: the nodes run with
    /// --unsafe-trust-clocks (they believe every peer's clock, so skew
    /// beyond --max-clock-offset-ms goes undetected). With the clock
    /// nemesis, lease or bounded reads must then be found INVALID.
    #[arg(long)]
    unsafe_trust_clocks: bool,
    /// UNSAFE, a negative control for the vote quarantine: the nodes run
    /// with --unsafe-no-vote-quarantine (a restarted node votes and
    /// campaigns at once, forgetting the lease it promised). With the
    /// lease-race nemesis and lease reads the run must be INVALID.
    #[arg(long)]
    unsafe_no_vote_quarantine: bool,
    /// The nodes' --election-timeout-min-ms (default: theirs, 500).
    #[arg(long)]
    election_timeout_min_ms: Option<u64>,
    /// The nodes' --election-timeout-max-ms (default: theirs, 1000): the
    /// lease a follower promises, and what a lease-race window waits out.
    /// A larger one (6000) widens the race the lease-race nemesis sets up.
    #[arg(long)]
    election_timeout_max_ms: Option<u64>,
    /// The nodes' --max-clock-offset-ms (default: theirs, 50; it must stay
    /// below their election timeout). With the clock nemesis: how much skew
    /// the nodes are told to tolerate.
    #[arg(long)]
    max_clock_offset_ms: Option<u64>,
    /// Let the cluster rebalance replicas and leaders during the run
    /// (`geokv --rebalance`): moves and leadership transfers the nemesis did
    /// not ask for, racing its faults.
    #[arg(long)]
    rebalance: bool,
    /// Run the nodes with TLS and authentication (certificates made by the
    /// lab; the clients connect with root's certificate).
    #[arg(long)]
    tls: bool,
    /// The nodes' --node-dead-after-ms (default: theirs, 300000). Below a
    /// kill window (with --nemesis kill and more nodes than replicas, e.g.
    /// --nodes 6), the killed node is marked down and its replicas are
    /// re-created on other nodes while it is away; it is marked up, and its
    /// stale copies deleted, when it returns.
    #[arg(long)]
    node_dead_after_ms: Option<u64>,
    /// The nodes' --split-load-entries-per-s: a shard applying more log
    /// entries per second than this over 10 s is split at its middle key
    /// during the run (automatic splits racing the nemesis; bank transfers
    /// across the new boundary are then refused).
    #[arg(long)]
    split_load_entries_per_s: Option<u64>,
    /// After the final heal, every key must take a write within this many seconds.
    #[arg(long, default_value_t = 30)]
    liveness_timeout_s: u64,
    /// Seconds one key's linearizability search may take (then UNKNOWN).
    #[arg(long, default_value_t = 10)]
    check_time_limit_s: u64,
    /// Keep the nodes' data directories (logs are always kept).
    #[arg(long)]
    keep_data: bool,
    /// Serve the workload's keys from an eventual (multi-master,
    /// last-writer-wins) shard: the nodes get --eventual-ranges covering them,
    /// every process reads and writes through its own region's replica, no
    /// CAS is generated, and after the final heal every replica must converge
    /// (register and set workloads).
    #[arg(long)]
    eventual: bool,
    /// --eventual: seconds after the final heal within which every replica
    /// must hold the same value and timestamp for every key.
    #[arg(long, default_value_t = 30)]
    convergence_timeout_s: u64,
    /// Run this `geokv` binary for the nodes (default: this executable's `node` mode).
    #[arg(long)]
    geokv_bin: Option<PathBuf>,
    /// Print report.json instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    /// By extension (.edn, .jsonl/.json), else by the first characters.
    Auto,
    Jsonl,
    Edn,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum FailCas {
    /// A :fail CAS ran and its comparison did not hold (Jepsen's etcd client, Porcupine).
    Mismatch,
    /// A :fail CAS did not happen at all (Knossos).
    NoOp,
}

#[derive(Debug, clap::Args)]
struct CheckArgs {
    /// The history file.
    file: PathBuf,
    /// The history's format.
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    format: Format,
    /// Seconds one key's search may take before that key is UNKNOWN.
    #[arg(long, default_value_t = 10)]
    time_limit_s: u64,
    /// MiB one key's memo may use before that key is UNKNOWN.
    #[arg(long, default_value_t = 256)]
    cache_limit_mb: usize,
    /// Keys checked in parallel (default: the number of CPUs).
    #[arg(long)]
    threads: Option<usize>,
    /// Keep checking the other keys after one is invalid.
    #[arg(long)]
    all_keys: bool,
    /// Check reads that report `staleness_bound_ms` = d as if invoked d earlier
    /// (bounded-staleness reads; see the crate docs); reads that report no
    /// bound promise nothing and are left out.
    #[arg(long)]
    relax_bounded_staleness: bool,
    /// What an EDN `:fail` CAS means.
    #[arg(long, value_enum, default_value_t = FailCas::Mismatch)]
    edn_fail_cas: FailCas,
    /// Print report.json to stdout instead of text.
    #[arg(long)]
    json: bool,
    /// Write report.json and timeline.html into this directory (created if missing).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Runs the CLI; returns the process exit code.
pub fn run(args: Vec<OsString>, stdout: &mut dyn Write, stderr: &mut dyn Write) -> i32 {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            let code = match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => 0,
                _ => EXIT_USAGE,
            };
            let text = e.render().ansi().to_string();
            let _ = if code == 0 { write!(stdout, "{text}") } else { write!(stderr, "{text}") };
            return code;
        }
    };
    match cli.command {
        Command::Check(args) => check(args, stdout, stderr),
        Command::Run(args) => run_test(*args, stdout, stderr),
    }
}

fn run_config(args: &RunArgs) -> Result<RunConfig, String> {
    use crate::run::nemesis::NemesisKind;
    use crate::run::workload::Workload;
    let program = match &args.geokv_bin {
        Some(path) => NodeProgram::Geokv(path.clone()),
        None => NodeProgram::current_lab().map_err(|e| e.to_string())?,
    };
    let workload = match args.workload {
        WorkloadArg::Register => Workload::Register,
        WorkloadArg::Set => Workload::Set,
        WorkloadArg::Bank => Workload::Bank,
        WorkloadArg::Append => Workload::Append,
    };
    let mut config = RunConfig::new(workload, &args.out, program);
    config.nodes = args.nodes;
    if let Some(path) = &args.regions {
        config.regions = Some(RegionMatrix::from_file(path).map_err(|e| format!("{}: {e}", path.display()))?);
    }
    config.clients = args.clients;
    config.ops = args.ops;
    config.time_limit = Duration::from_secs(args.time_limit_s);
    config.seed = args.seed;
    let mut kinds = std::collections::BTreeSet::new();
    for n in &args.nemesis {
        match n {
            NemesisArg::Partition => kinds.insert(NemesisKind::Partition),
            NemesisArg::Kill => kinds.insert(NemesisKind::Kill),
            NemesisArg::Pause => kinds.insert(NemesisKind::Pause),
            NemesisArg::Latency => kinds.insert(NemesisKind::Latency),
            NemesisArg::Restart => kinds.insert(NemesisKind::Restart),
            NemesisArg::Composed => kinds.insert(NemesisKind::Composed),
            NemesisArg::Clock => kinds.insert(NemesisKind::Clock),
            NemesisArg::Split => kinds.insert(NemesisKind::Split),
            NemesisArg::TransferLeader => kinds.insert(NemesisKind::TransferLeader),
            NemesisArg::MoveReplica => kinds.insert(NemesisKind::MoveReplica),
            NemesisArg::Merge => kinds.insert(NemesisKind::Merge),
            NemesisArg::AddRemoveNode => kinds.insert(NemesisKind::AddRemoveNode),
            NemesisArg::LeaseRace => kinds.insert(NemesisKind::LeaseRace),
            NemesisArg::All => {
                kinds.extend(NemesisKind::ALL);
                true
            }
            NemesisArg::None => false,
        };
    }
    config.nemesis = kinds.into_iter().collect();
    if let Some(path) = &args.schedule {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        config.schedule = Some(serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?);
    }
    config.read_consistency = args.read_consistency;
    config.op_timeout = Duration::from_millis(args.op_timeout_ms);
    config.client_retries = args.client_retries;
    config.unsafe_redo_unknown = args.unsafe_redo_unknown;
    config.unsafe_trust_clocks = args.unsafe_trust_clocks;
    config.unsafe_no_vote_quarantine = args.unsafe_no_vote_quarantine;
    config.election_timeout_min_ms = args.election_timeout_min_ms;
    config.election_timeout_max_ms = args.election_timeout_max_ms;
    config.max_clock_offset_ms = args.max_clock_offset_ms;
    config.rebalance = args.rebalance;
    config.tls = args.tls;
    config.node_dead_after_ms = args.node_dead_after_ms;
    config.split_load_entries_per_s = args.split_load_entries_per_s;
    config.liveness_timeout = Duration::from_secs(args.liveness_timeout_s);
    config.check.key_time_limit_ms = args.check_time_limit_s.saturating_mul(1000);
    config.keep_data = args.keep_data;
    config.eventual = args.eventual;
    config.convergence_timeout = Duration::from_secs(args.convergence_timeout_s);
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

fn run_test(args: RunArgs, stdout: &mut dyn Write, stderr: &mut dyn Write) -> i32 {
    let config = match run_config(&args) {
        Ok(config) => config,
        Err(e) => {
            let _ = writeln!(stderr, "error: {e}");
            return EXIT_USAGE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = writeln!(stderr, "error: cannot start the async runtime: {e}");
            return EXIT_MALFORMED;
        }
    };
    match runtime.block_on(crate::run::run(config)) {
        Ok(outcome) => {
            if args.json {
                let _ = writeln!(stdout, "{}", outcome.report.to_json());
            } else {
                let _ = write!(stdout, "{}", outcome.report.render_text());
            }
            outcome.report.verdict.exit_code()
        }
        Err(e) => {
            let _ = writeln!(stderr, "error: {e}");
            let _ = writeln!(stderr, "no verdict: the run could not be carried out (exit {EXIT_MALFORMED})");
            EXIT_MALFORMED
        }
    }
}

fn detect_format(path: &Path, text: &str) -> Format {
    match path.extension().and_then(|e| e.to_str()) {
        Some("edn") => return Format::Edn,
        Some("jsonl" | "json" | "ndjson") => return Format::Jsonl,
        _ => {}
    }
    let mut chars = text.chars().filter(|c| !c.is_whitespace() && *c != ',');
    match (chars.next(), chars.next()) {
        (Some('['), _) | (Some('{'), Some(':')) | (Some(';'), _) => Format::Edn,
        _ => Format::Jsonl,
    }
}

fn read_history(args: &CheckArgs) -> Result<(History, Format), Error> {
    let io = |source| Error::Io { path: args.file.clone(), source };
    let size = std::fs::metadata(&args.file).map_err(io)?.len();
    if size > MAX_HISTORY_BYTES {
        let message = format!("history is {size} bytes, over the {MAX_HISTORY_BYTES} byte limit");
        return Err(io(std::io::Error::other(message)));
    }
    let text = std::fs::read_to_string(&args.file).map_err(io)?;
    let format = match args.format {
        Format::Auto => detect_format(&args.file, &text),
        other => other,
    };
    let history = match format {
        Format::Edn => read_edn(&text, EdnOptions { fail_cas_is_mismatch: args.edn_fail_cas == FailCas::Mismatch })?,
        Format::Jsonl | Format::Auto => read_jsonl(&text)?,
    };
    Ok((history, format))
}

fn check(args: CheckArgs, stdout: &mut dyn Write, stderr: &mut dyn Write) -> i32 {
    if args.time_limit_s == 0 || args.cache_limit_mb == 0 || args.threads == Some(0) {
        let _ = writeln!(stderr, "error: --time-limit-s, --cache-limit-mb and --threads must be at least 1");
        return EXIT_USAGE;
    }
    let config = CheckConfig {
        key_time_limit_ms: args.time_limit_s.saturating_mul(1000),
        key_cache_limit_bytes: args.cache_limit_mb.saturating_mul(1 << 20),
        threads: args.threads.unwrap_or(CheckConfig::default().threads),
        stop_on_first_invalid: !args.all_keys,
    };
    let malformed = |stderr: &mut dyn Write, e: Error| {
        let _ = writeln!(stderr, "error: {}: {e}", args.file.display());
        let _ = writeln!(stderr, "no verdict: the history could not be read (exit {EXIT_MALFORMED})");
        EXIT_MALFORMED
    };
    let (history, format) = match read_history(&args) {
        Ok(read) => read,
        Err(e) => return malformed(stderr, e),
    };
    let checked = if args.relax_bounded_staleness {
        match relax_bounded_staleness(&history) {
            Ok((relaxed, _)) => relaxed,
            Err(e) => return malformed(stderr, e),
        }
    } else {
        history.clone()
    };
    let operations = match register_operations(&checked) {
        Ok(ops) => ops,
        Err(e) => return malformed(stderr, e),
    };
    let result = check_keys(&operations.model, operations.keys, &config);
    let source = Source {
        path: args.file.display().to_string(),
        format: if format == Format::Edn { "edn" } else { "jsonl" }.to_string(),
    };
    let report = Report::new(&history, &result, source.clone(), &config, args.relax_bounded_staleness);
    if let Some(dir) = &args.out {
        let written = std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(dir.join("report.json"), report.to_json()))
            .and_then(|()| std::fs::write(dir.join("timeline.html"), timeline::render(&history, &result, &source)));
        if let Err(source) = written {
            let _ = writeln!(stderr, "error: {}", Error::Write { path: dir.clone(), source });
            return EXIT_MALFORMED;
        }
    }
    if args.json {
        let _ = writeln!(stdout, "{}", report.to_json());
    } else {
        let _ = write!(stdout, "{}", render_text(&history, &source, &result));
        if let Some(dir) = &args.out {
            let _ = writeln!(
                stdout,
                "wrote {} and {}",
                dir.join("report.json").display(),
                dir.join("timeline.html").display()
            );
        }
    }
    let verdict: ReportVerdict = report_verdict(&history, &result);
    verdict.exit_code()
}
