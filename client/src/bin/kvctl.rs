//! `kvctl`: read, write, scan and inspect a geokv cluster from the shell.
//!
//! A thin layer over [`geokv_client`]: it parses arguments, makes one client
//! call, and prints the answer as a table (or JSON with `--json`). Errors are
//! one line on stderr that says what to do, with a non-zero exit code.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use geokv_client::display::{parse_hex, printable};
use geokv_client::{
    Client, ClientConfig, ClusterStatus, Consistency, Error, Expect, ReadInfo, Shard, ShardMap, Versioned,
};
use serde_json::{Value, json};

/// Exit code: a compare-and-swap did not swap.
const EXIT_NOT_SWAPPED: u8 = 2;
/// Exit code: `status` found a shard without a reachable leader.
const EXIT_DEGRADED: u8 = 3;
/// Exit code: the command line could not be parsed (sysexits EX_USAGE).
const EXIT_USAGE: u8 = 64;
/// The longest RPC kvctl waits for before retrying elsewhere.
const RPC_TIMEOUT_MAX: Duration = Duration::from_secs(5);

const START_CLUSTER_HINT: &str = "is the cluster running? start one with `cargo run --bin geokv -- dev`";

#[derive(Debug, Parser)]
#[command(
    name = "kvctl",
    version,
    about = "Read, write, scan and inspect a geokv cluster",
    long_about = "Read, write, scan and inspect a geokv cluster.\n\n\
        kvctl contacts any of --endpoints, learns the shard map from it, and routes each \
        request to the right shard's leader, following redirects and retrying within \
        --timeout-ms. Keys and values are UTF-8 text (or hex with --hex); values that are \
        not printable text are shown as 0x-prefixed hex.",
    after_help = "\
Examples:
  kvctl put greeting hello              write a key
  kvctl get greeting -v                 read it, and show who served it
  kvctl get greeting --consistency stale
  kvctl cas greeting --expect-value hello hi
  kvctl scan a m --limit 20             keys in [a, m)
  kvctl --json status                   cluster health for scripts
  GEOKV_ENDPOINTS=10.0.0.1:7001 kvctl shards

Exit codes:
  0   success (including `get` of an absent key)
  1   error (message on stderr)
  2   `cas` did not swap
  3   `status`: some shard has no reachable leader
  64  bad command line"
)]
struct Cli {
    /// Nodes to contact first, comma separated host:port; the rest of the
    /// cluster is learned from them.
    #[arg(
        long,
        global = true,
        env = "GEOKV_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
    )]
    endpoints: Vec<String>,

    /// Local IP to connect from (the lab tells client regions apart by it;
    /// `geokv-lab up` prints the one for each region).
    #[arg(long, global = true, env = "GEOKV_SOURCE_IP")]
    source_ip: Option<std::net::IpAddr>,

    /// The region this client is in: follower, bounded and stale reads go to
    /// a replica there first (`geokv-lab up` prints each region's settings).
    #[arg(long, global = true, env = "GEOKV_REGION")]
    region: Option<String>,

    /// Print JSON for scripts instead of tables.
    #[arg(long, global = true)]
    json: bool,

    /// Give up on an operation, retries included, after this many ms.
    #[arg(long, global = true, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: u64,

    /// Read KEY, VALUE, START, END and --expect-value as 0x-prefixed hex.
    #[arg(long, global = true)]
    hex: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read one key.
    #[command(after_help = "\
Prints the value, or \"(not found)\" (exit code 0) when the key does not exist.

Examples:
  kvctl get user:42
  kvctl get user:42 -v                          also print version and who served it
  kvctl get user:42 --consistency stale         read any replica, cheap but maybe stale
  kvctl get user:42 --consistency follower      linearizable, from a replica in --region
  kvctl get user:42 --consistency bounded:250ms -v   local if at most 250 ms stale; says what it got
  kvctl --json get user:42                      {\"found\":true,\"key\":..,\"value\":..,\"version\":..,\"served\":..}")]
    Get {
        key: String,
        /// How fresh the read must be.
        /// linearizable (leader, ReadIndex), lease (leader lease), follower
        /// (nearest replica, one round trip to the leader), bounded:<N>ms
        /// (nearest replica if at most N ms stale, else follower), stale.
        #[arg(long, default_value = "linearizable", value_parser = parse_consistency)]
        consistency: Consistency,
        /// Also print the version and which node and region served the read.
        #[arg(short, long)]
        verbose: bool,
    },

    /// Write one key.
    #[command(after_help = "\
Prints \"OK version=N\", N being the log index of the write. A write that times out
is reported as \"outcome unknown\": it may have been applied; read the key back.

Examples:
  kvctl put user:42 alice
  kvctl --hex put 0x00ff 0xdeadbeef")]
    Put { key: String, value: String },

    /// Delete one key.
    #[command(after_help = "\
Prints \"OK version=N existed=true|false\". Deleting an absent key succeeds.

Example:
  kvctl del user:42")]
    Del { key: String },

    /// Compare-and-swap: write (or delete) only if the key is as expected.
    #[command(after_help = "\
Prints \"swapped version=N\", or \"not swapped: current=V version=N\" and exits with
code 2 so scripts can tell the two apart.

Examples:
  kvctl cas lock --expect-absent me             take a lock
  kvctl cas lock --expect-value me --delete     release it, if still ours
  kvctl cas counter --expect-version 17 18      optimistic update")]
    Cas {
        key: String,
        #[command(flatten)]
        expect: ExpectArgs,
        /// The value to write when the expectation holds.
        #[arg(required_unless_present = "delete")]
        new_value: Option<String>,
        /// Delete the key (instead of writing NEW_VALUE) when the expectation holds.
        #[arg(long, conflicts_with = "new_value")]
        delete: bool,
    },

    /// List keys in [START, END), across shards, in key order.
    #[command(after_help = "\
Prints a KEY / VALUE / VERSION table. START defaults to the first key, END to the
end of the key space; use \"\" for an explicit empty START.

Examples:
  kvctl scan                                    everything
  kvctl scan user: user;                        keys with prefix \"user:\"
  kvctl scan a --limit 10                       the first 10 keys from \"a\"
  kvctl --json scan a m --consistency stale")]
    Scan {
        start: Option<String>,
        end: Option<String>,
        /// Return at most this many pairs.
        #[arg(long)]
        limit: Option<usize>,
        /// How fresh each page must be.
        /// linearizable (leader, ReadIndex), lease (leader lease), follower
        /// (nearest replica, one round trip to the leader), bounded:<N>ms
        /// (nearest replica if at most N ms stale, else follower), stale.
        #[arg(long, default_value = "linearizable", value_parser = parse_consistency)]
        consistency: Consistency,
    },

    /// Show nodes (reachable or not) and each shard's leader, term and indexes.
    #[command(after_help = "\
Asks every node of the shard map for its status. Shards without a reachable
leader are flagged and make kvctl exit with code 3.

Examples:
  kvctl status
  kvctl --json status | jq '.shards[] | select(.leader == null)'")]
    Status,

    /// Show the shard map: nodes, and each shard's range, epoch and replicas.
    #[command(after_help = "\
Examples:
  kvctl shards
  kvctl --json shards")]
    Shards,

    /// Change a shard's placement.
    #[command(
        subcommand,
        after_help = "\
Examples:
  kvctl shard set-leader-region 2 us-east"
    )]
    Shard(ShardCommand),
}

#[derive(Debug, Subcommand)]
enum ShardCommand {
    /// Keep SHARD's leader in REGION when a healthy replica is there: the
    /// current leader hands leadership over, and takes it back there after a
    /// failover. An empty REGION ("") lets the leader live anywhere.
    #[command(after_help = "\
Examples:
  kvctl shard set-leader-region 2 us-east
  kvctl shard set-leader-region 2 \"\"        no preference
  kvctl status                                LEADER shows where leaders are; * marks one outside its region")]
    SetLeaderRegion { shard: u64, region: String },
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct ExpectArgs {
    /// Swap only if the key currently holds exactly this value.
    #[arg(long, value_name = "VALUE")]
    expect_value: Option<String>,
    /// Swap only if the key's current version is exactly this.
    #[arg(long, value_name = "VERSION")]
    expect_version: Option<u64>,
    /// Swap only if the key does not exist.
    #[arg(long)]
    expect_absent: bool,
}

/// Parses `--consistency`: linearizable, lease, follower, bounded:<N>ms, stale.
fn parse_consistency(s: &str) -> Result<Consistency, String> {
    s.parse()
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() { ExitCode::from(EXIT_USAGE) } else { ExitCode::SUCCESS };
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, String> {
    let key_arg = |text: &str| parse_arg(text, cli.hex);
    // Parse everything before touching the network.
    let command = match &cli.command {
        Command::Get { key, .. } | Command::Put { key, .. } | Command::Del { key } | Command::Cas { key, .. } => {
            Some(key_arg(key)?)
        }
        Command::Scan { .. } | Command::Status | Command::Shards | Command::Shard(_) => None,
    };
    let client = connect(&cli).await?;
    let json = cli.json;
    match cli.command {
        Command::Get { consistency, verbose, .. } => {
            get(&client, command.expect("parsed above"), consistency, verbose, json).await
        }
        Command::Put { value, .. } => {
            let key = command.expect("parsed above");
            let written = client.put(&key, key_arg(&value)?).await.map_err(say)?;
            if json {
                print_json(&json!({"version": written.version, "shard_id": written.shard_id}));
            } else {
                println!("OK version={}", written.version);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Del { .. } => {
            let deleted = client.delete(command.expect("parsed above")).await.map_err(say)?;
            if json {
                print_json(&json!({
                    "version": deleted.version,
                    "existed": deleted.existed,
                    "shard_id": deleted.shard_id,
                }));
            } else {
                println!("OK version={} existed={}", deleted.version, deleted.existed);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Cas { expect, new_value, .. } => {
            let expect = match (expect.expect_value, expect.expect_version, expect.expect_absent) {
                (Some(value), _, _) => Expect::Value(key_arg(&value)?),
                (None, Some(version), _) => Expect::Version(version),
                _ => Expect::Absent,
            };
            let new_value = new_value.map(|value| key_arg(&value)).transpose()?;
            cas(&client, command.expect("parsed above"), expect, new_value, json).await
        }
        Command::Scan { start, end, limit, consistency } => {
            let start = start.map(|start| key_arg(&start)).transpose()?.unwrap_or_default();
            let end = end.map(|end| key_arg(&end)).transpose()?;
            scan(&client, start, end, limit, consistency, json).await
        }
        Command::Status => status(&client, json).await,
        Command::Shards => {
            let map = client.refresh_shard_map().await.map_err(say)?;
            print_shard_map(&map, json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Shard(ShardCommand::SetLeaderRegion { shard, region }) => {
            let region = (!region.is_empty()).then_some(region.as_str());
            let version = client.set_leader_region(shard, region).await.map_err(say)?;
            if json {
                println!("{}", json!({ "shard": shard, "preferred_leader_region": region, "map_version": version }));
            } else {
                println!("OK shard {shard} leader region={} (map version {version})", region.unwrap_or("any"));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn connect(cli: &Cli) -> Result<Client, String> {
    let deadline = Duration::from_millis(cli.timeout_ms);
    let config = ClientConfig::new(cli.endpoints.iter().map(|e| e.trim().to_string()))
        .deadline(deadline)
        .rpc_timeout(deadline.min(RPC_TIMEOUT_MAX))
        .local_address(cli.source_ip)
        .region(cli.region.clone());
    match config.connect().await {
        Ok(client) => Ok(client),
        Err(Error::Unavailable { cause, .. }) => Err(format!("{cause}; {START_CLUSTER_HINT}")),
        Err(err) => Err(err.to_string()),
    }
}

/// The one-line message for a client error.
fn say(err: Error) -> String {
    err.to_string()
}

/// A key or value argument: text, or hex with `--hex`.
fn parse_arg(text: &str, hex: bool) -> Result<Vec<u8>, String> {
    if !hex {
        return Ok(text.as_bytes().to_vec());
    }
    parse_hex(text).ok_or_else(|| {
        format!("{text:?} is not hex: with --hex, give keys and values as 0x followed by pairs of hex digits")
    })
}

async fn get(
    client: &Client,
    key: Vec<u8>,
    consistency: Consistency,
    verbose: bool,
    json: bool,
) -> Result<ExitCode, String> {
    let read = client.get_with(&key, consistency).await.map_err(say)?;
    if json {
        let mut out = json!({"found": read.kv.is_some(), "key": printable(&key)});
        if let Some(kv) = &read.kv {
            out["value"] = json!(printable(&kv.value));
            out["version"] = json!(kv.version);
        }
        merge(&mut out, read_info_json(&read.info));
        print_json(&out);
        return Ok(ExitCode::SUCCESS);
    }
    match &read.kv {
        Some(kv) => println!("{}", printable(&kv.value)),
        None => println!("(not found)"),
    }
    if verbose {
        let version = read.kv.as_ref().map_or(0, |kv| kv.version);
        println!("version={version} {}", describe_read(&read.info));
    }
    Ok(ExitCode::SUCCESS)
}

fn describe_read(info: &ReadInfo) -> String {
    let staleness = match info.staleness_bound_ms {
        Some(ms) => format!("{ms}ms"),
        None => "unknown".into(),
    };
    let fell_back = if info.fell_back { " (fell back)" } else { "" };
    format!(
        "served={}{fell_back} node={} region={} applied_index={} staleness_bound={staleness}",
        info.served, info.node_id, info.region, info.applied_index
    )
}

fn read_info_json(info: &ReadInfo) -> Value {
    json!({
        "served": info.served,
        "node_id": info.node_id,
        "region": info.region,
        "applied_index": info.applied_index,
        "staleness_bound_ms": info.staleness_bound_ms,
        "fell_back": info.fell_back,
    })
}

async fn cas(
    client: &Client,
    key: Vec<u8>,
    expect: Expect,
    new_value: Option<Vec<u8>>,
    json: bool,
) -> Result<ExitCode, String> {
    let result = client.cas(&key, expect, new_value).await.map_err(say)?;
    if json {
        print_json(&json!({
            "swapped": result.swapped,
            "version": result.version,
            "current": result.current.as_ref().map(versioned_json),
            "shard_id": result.shard_id,
        }));
    } else if result.swapped {
        println!("swapped version={}", result.version);
    } else {
        match &result.current {
            Some(current) => println!("not swapped: current={} version={}", printable(&current.value), current.version),
            None => println!("not swapped: current=(absent)"),
        }
    }
    Ok(if result.swapped { ExitCode::SUCCESS } else { ExitCode::from(EXIT_NOT_SWAPPED) })
}

fn versioned_json(versioned: &Versioned) -> Value {
    json!({"value": printable(&versioned.value), "version": versioned.version})
}

async fn scan(
    client: &Client,
    start: Vec<u8>,
    end: Option<Vec<u8>>,
    limit: Option<usize>,
    consistency: Consistency,
    json: bool,
) -> Result<ExitCode, String> {
    let bounds = geokv_client::ScanBounds { start, end };
    let mut scan = client.scan(bounds).consistency(consistency);
    if let Some(limit) = limit {
        scan = scan.limit(limit);
    }
    let kvs = scan.await.map_err(say)?;
    if json {
        let rows: Vec<Value> = kvs
            .iter()
            .map(|kv| json!({"key": printable(&kv.key), "value": printable(&kv.value), "version": kv.version}))
            .collect();
        print_json(&Value::Array(rows));
        return Ok(ExitCode::SUCCESS);
    }
    if kvs.is_empty() {
        println!("(no keys)");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = kvs
        .iter()
        .map(|kv| vec![printable(&kv.key).into_owned(), printable(&kv.value).into_owned(), kv.version.to_string()])
        .collect();
    print_table(&["KEY", "VALUE", "VERSION"], &rows);
    Ok(ExitCode::SUCCESS)
}

async fn status(client: &Client, json: bool) -> Result<ExitCode, String> {
    let cluster = client.cluster_status().await.map_err(say)?;
    let shards = cluster.shards();
    let degraded = shards.iter().any(|health| health.leader.is_none());
    if json {
        print_json(&status_json(&cluster));
    } else {
        print_status(&cluster);
    }
    Ok(if degraded { ExitCode::from(EXIT_DEGRADED) } else { ExitCode::SUCCESS })
}

fn status_json(cluster: &ClusterStatus) -> Value {
    let nodes: Vec<Value> = cluster
        .nodes
        .iter()
        .map(|report| {
            let mut node = json!({
                "node_id": report.node.node_id,
                "addr": report.node.addr,
                "region": report.node.region,
                "zone": report.node.zone,
                "reachable": report.status.is_ok(),
            });
            match &report.status {
                Ok(status) => {
                    node["ready"] = json!(status.ready);
                    node["uptime_ms"] = json!(status.uptime_ms);
                }
                Err(err) => node["error"] = json!(err.to_string()),
            }
            node
        })
        .collect();
    let shards: Vec<Value> = cluster
        .shards()
        .iter()
        .map(|health| {
            let mut shard = shard_json(&health.shard);
            shard["replicas_reporting"] = json!(health.replicas_reporting);
            match &health.leader {
                Some(leader) => {
                    shard["leader"] = json!({
                        "node_id": leader.node.node_id,
                        "addr": leader.node.addr,
                        "region": leader.node.region,
                    });
                    shard["term"] = json!(leader.group.term);
                    shard["applied_index"] = json!(leader.group.applied_index);
                    shard["committed_index"] = json!(leader.group.committed_index);
                    shard["last_log_index"] = json!(leader.group.last_log_index);
                }
                None => {
                    shard["leader"] = Value::Null;
                    shard["named_leader_id"] = json!(health.named_leader_id);
                }
            }
            shard
        })
        .collect();
    json!({"map_version": cluster.map.version, "nodes": nodes, "shards": shards})
}

fn print_status(cluster: &ClusterStatus) {
    let node_rows: Vec<Vec<String>> = cluster
        .nodes
        .iter()
        .map(|report| {
            let (reachable, ready, uptime) = match &report.status {
                Ok(status) => (
                    "yes".to_string(),
                    if status.ready { "yes" } else { "starting" }.to_string(),
                    format_uptime(status.uptime_ms),
                ),
                Err(_) => ("NO".to_string(), "-".to_string(), "-".to_string()),
            };
            vec![
                report.node.node_id.to_string(),
                report.node.addr.clone(),
                region_zone(&report.node.region, &report.node.zone),
                reachable,
                ready,
                uptime,
            ]
        })
        .collect();
    println!("Nodes (shard map version {}):", cluster.map.version);
    print_table(&["ID", "ADDR", "REGION/ZONE", "REACHABLE", "READY", "UPTIME"], &node_rows);
    let shards = cluster.shards();
    let shard_rows: Vec<Vec<String>> = shards
        .iter()
        .map(|health| {
            let shard = &health.shard;
            let mut row = vec![shard.shard_id.to_string(), format_range(shard), shard.epoch.to_string()];
            match &health.leader {
                Some(leader) => row.extend([
                    {
                        let away = shard.preferred_leader_region.as_ref().is_some_and(|r| *r != leader.node.region);
                        format!("{}@{}{}", leader.node.node_id, leader.node.region, if away { "*" } else { "" })
                    },
                    leader.group.term.to_string(),
                    leader.group.applied_index.to_string(),
                    leader.group.committed_index.to_string(),
                ]),
                None => {
                    let named =
                        health.named_leader_id.map(|id| format!(" (followers name node {id})")).unwrap_or_default();
                    row.extend([format!("NONE{named}"), "-".into(), "-".into(), "-".into()]);
                }
            }
            row
        })
        .collect();
    println!();
    println!("Shards:");
    print_table(&["SHARD", "RANGE", "EPOCH", "LEADER", "TERM", "APPLIED", "COMMITTED"], &shard_rows);
    for report in cluster.unreachable() {
        if let Err(err) = &report.status {
            eprintln!("warning: node {} ({}) did not answer: {err}", report.node.node_id, report.node.addr);
        }
    }
    let leaderless: Vec<String> = shards
        .iter()
        .filter(|health| health.leader.is_none())
        .map(|health| health.shard.shard_id.to_string())
        .collect();
    if !leaderless.is_empty() {
        eprintln!(
            "warning: shard(s) {} have no reachable leader: an election may be running or a quorum is down; retry in a few seconds",
            leaderless.join(",")
        );
    }
}

fn print_shard_map(map: &ShardMap, json: bool) {
    if json {
        let nodes: Vec<Value> = map
            .nodes
            .iter()
            .map(|node| json!({"node_id": node.node_id, "addr": node.addr, "region": node.region, "zone": node.zone}))
            .collect();
        let shards: Vec<Value> = map.shards.iter().map(shard_json).collect();
        print_json(&json!({"version": map.version, "nodes": nodes, "shards": shards}));
        return;
    }
    println!("Shard map version {}", map.version);
    let node_rows: Vec<Vec<String>> = map
        .nodes
        .iter()
        .map(|node| vec![node.node_id.to_string(), node.addr.clone(), region_zone(&node.region, &node.zone)])
        .collect();
    println!();
    println!("Nodes:");
    print_table(&["ID", "ADDR", "REGION/ZONE"], &node_rows);
    let shard_rows: Vec<Vec<String>> = map
        .shards
        .iter()
        .map(|shard| {
            let replicas: Vec<String> =
                shard.replicas.iter().map(|replica| format!("{}@{}", replica.node_id, replica.region)).collect();
            vec![shard.shard_id.to_string(), format_range(shard), shard.epoch.to_string(), replicas.join(",")]
        })
        .collect();
    println!();
    println!("Shards:");
    print_table(&["SHARD", "RANGE", "EPOCH", "REPLICAS"], &shard_rows);
}

fn shard_json(shard: &Shard) -> Value {
    let replicas: Vec<Value> = shard
        .replicas
        .iter()
        .map(|replica| {
            json!({"node_id": replica.node_id, "addr": replica.addr, "region": replica.region, "zone": replica.zone})
        })
        .collect();
    json!({
        "shard_id": shard.shard_id,
        "epoch": shard.epoch,
        "start": printable(&shard.start),
        "end": if shard.end.is_empty() { Value::Null } else { json!(printable(&shard.end)) },
        "replicas": replicas,
    })
}

/// `start..end`, with `-inf` and `+inf` for the open ends.
fn format_range(shard: &Shard) -> String {
    let start = if shard.start.is_empty() { "-inf".into() } else { printable(&shard.start).into_owned() };
    let end = if shard.end.is_empty() { "+inf".into() } else { printable(&shard.end).into_owned() };
    format!("{start}..{end}")
}

fn region_zone(region: &str, zone: &str) -> String {
    if zone.is_empty() { region.to_string() } else { format!("{region}/{zone}") }
}

fn format_uptime(uptime_ms: u64) -> String {
    let seconds = uptime_ms / 1000;
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m{}s", seconds / 60, seconds % 60),
        _ => format!("{}h{}m", seconds / 3600, seconds / 60 % 60),
    }
}

fn merge(target: &mut Value, extra: Value) {
    if let (Value::Object(target), Value::Object(extra)) = (target, extra) {
        target.extend(extra);
    }
}

fn print_json(value: &Value) {
    println!("{value}");
}

/// Left-aligned columns separated by two spaces; the last column unpadded.
fn format_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::new();
        for (index, cell) in row.iter().enumerate() {
            if index + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths[index] - cell.chars().count();
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    print!("{}", format_table(headers, rows));
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_subcommand_teaches_with_an_example() {
        for sub in Cli::command().get_subcommands() {
            assert!(sub.get_about().is_some(), "{} has no about", sub.get_name());
            let after = sub.get_after_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(after.contains("kvctl "), "{} has no example", sub.get_name());
        }
    }

    #[test]
    fn cas_needs_exactly_one_expectation_and_a_new_value_or_delete() {
        let parse = |args: &[&str]| Cli::try_parse_from(std::iter::once("kvctl").chain(args.iter().copied()));
        assert!(parse(&["cas", "k", "--expect-absent", "v"]).is_ok());
        assert!(parse(&["cas", "k", "--expect-version", "3", "--delete"]).is_ok());
        assert!(parse(&["cas", "k", "v"]).is_err(), "no expectation");
        assert!(parse(&["cas", "k", "--expect-absent", "--expect-version", "3", "v"]).is_err());
        assert!(parse(&["cas", "k", "--expect-absent"]).is_err(), "no value nor --delete");
        assert!(parse(&["cas", "k", "--expect-absent", "--delete", "v"]).is_err());
    }

    #[test]
    fn global_flags_parse_anywhere() {
        let cli = Cli::try_parse_from(["kvctl", "get", "k", "--json", "--endpoints", "a:1,b:2"]).unwrap();
        assert!(cli.json);
        assert_eq!(cli.endpoints, ["a:1", "b:2"]);
        assert!(Cli::try_parse_from(["kvctl", "--timeout-ms", "0", "status"]).is_err());
    }

    #[test]
    fn default_endpoints_are_the_dev_cluster() {
        let command = Cli::command();
        let endpoints = command.get_arguments().find(|arg| arg.get_id() == "endpoints").unwrap();
        let defaults: Vec<String> =
            endpoints.get_default_values().iter().map(|value| value.to_string_lossy().into_owned()).collect();
        assert_eq!(defaults, [geokv_client::DEV_ENDPOINTS.join(",")]);
    }

    #[test]
    fn hex_arguments() {
        assert_eq!(parse_arg("0x00ff", true), Ok(vec![0, 0xff]));
        assert!(parse_arg("plain", true).is_err());
        assert_eq!(parse_arg("0x00ff", false), Ok(b"0x00ff".to_vec()));
    }

    #[test]
    fn tables_align() {
        let rows = vec![
            vec!["a".to_string(), "1".to_string(), "7".to_string()],
            vec!["longer".to_string(), "22".to_string(), "8".to_string()],
        ];
        assert_eq!(
            format_table(&["KEY", "VALUE", "VERSION"], &rows),
            "KEY     VALUE  VERSION\na       1      7\nlonger  22     8\n"
        );
    }

    #[test]
    fn ranges_and_uptimes() {
        let shard = |start: &str, end: &str| Shard {
            shard_id: 1,
            epoch: 1,
            start: start.into(),
            end: end.into(),
            replicas: vec![],
            preferred_leader_region: None,
        };
        assert_eq!(format_range(&shard("", "")), "-inf..+inf");
        assert_eq!(format_range(&shard("g", "p")), "g..p");
        assert_eq!(format_uptime(59_999), "59s");
        assert_eq!(format_uptime(61_000), "1m1s");
        assert_eq!(format_uptime(7_260_000), "2h1m");
    }
}
