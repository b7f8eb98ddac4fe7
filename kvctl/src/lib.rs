//! `kvctl`: read, write, scan and inspect a geokv cluster from the shell.
//!
//! A thin layer over [`geokv_client`]: it parses arguments, makes one client
//! call, and prints the answer in the `-w/--write-out` format: `simple`
//! (plain lines and aligned columns), `json` (one document, for scripts) or
//! `table` (bordered tables). Its habits are etcdctl's: `get --prefix`,
//! `--keys-only`, `put KEY -` reading stdin, `del --prefix`, a missing key
//! exits non-zero with nothing on stdout, `--timeout 3s`, shell completions.
//! Errors are one line on stderr that says what to do, with a non-zero exit
//! code.
//!
//! It lives in its own crate so that users of the client library never
//! compile clap and the other command-line dependencies. The crate is a
//! library with one public function, [`main`], so that the test package can
//! build the same program next to the node binary; `src/main.rs` calls it.

use std::io::{IsTerminal, Read};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use futures::{StreamExt, TryStreamExt};
use geokv_client::display::{parse_hex, printable, utc_millis};
use geokv_client::{
    Client, ClientConfig, ClusterStatus, Conflict, ConflictReport, Consistency, CreatedShard, Error, Expect, Hlc,
    NodeChange, NodeState, ReadInfo, Shard, ShardHealth, ShardMap, ShardMode, Versioned,
};
use serde_json::{Value, json};

/// Exit code: a compare-and-swap did not swap.
const EXIT_NOT_SWAPPED: u8 = 2;
/// Exit code: `status` found a Raft shard without a reachable leader (or an
/// eventual shard without a reachable replica).
const EXIT_DEGRADED: u8 = 3;
/// Exit code: `get` of a key that does not exist (nothing is printed on stdout).
const EXIT_NOT_FOUND: u8 = 4;
/// Exit code: the command line could not be parsed (sysexits EX_USAGE).
const EXIT_USAGE: u8 = 64;
/// The most `put KEY -` reads from stdin; the server's own limit
/// (`limits.max_value_bytes`, 1 MiB by default) is usually lower and refuses
/// larger values with a clear error.
const MAX_STDIN_VALUE_BYTES: u64 = 64 * 1024 * 1024;
/// How many deletes `del --prefix` keeps in flight at once.
const MAX_DELETES_IN_FLIGHT: usize = 16;
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
        --timeout. Keys and values are UTF-8 text (or hex with --hex); values that are \
        not printable text are shown as 0x-prefixed hex.\n\n\
        Eventual shards (MODE eventual in `kvctl shards`) have no leader: a replica in \
        --region (else the first one) acknowledges each put or delete once it is durable \
        there, stamped with a hybrid logical clock (HLC), and replicates it later; the \
        newest HLC wins and concurrent writes that lose are listed by `kvctl conflicts`. \
        Reads there are served \"eventual\" (that replica's state, maybe stale) whatever \
        --consistency asks for; cas and batches are refused.",
    after_help = "\
Examples:
  kvctl put greeting hello              write a key
  kvctl get greeting -v                 read it, and show who served it
  kvctl get greeting --consistency stale
  kvctl cas greeting --expect-value hello hi
  kvctl get user: --prefix --keys-only  the keys that start with \"user:\"
  echo -n hi | kvctl put greeting -     the value from stdin
  kvctl del tmp/ --prefix --yes         delete every key under tmp/
  kvctl scan a m --limit 20             keys in [a, m)
  kvctl -w json status                  cluster health for scripts
  kvctl -w table shards                 the shard map, in bordered tables
  kvctl --timeout 3s put greeting hi    give up after 3 s
  kvctl completion bash > /etc/bash_completion.d/kvctl
  GEOKV_ENDPOINTS=10.0.0.1:7001 kvctl shards
  kvctl conflicts --shard 4             writes eventual shards acknowledged, then discarded
  kvctl shard create --mode eventual 'session/..u'
                                        a new eventual shard for the keys session/ .. u

Output (-w/--write-out, or GEOKV_WRITE_OUT):
  simple   values and plain lines; aligned columns for lists (the default)
  json     one JSON document on stdout (--json is the same)
  table    bordered tables

TLS and authentication (docs/security.md):
  kvctl --cacert certs/ca.pem --cert certs/client.root.pem --key certs/client.root-key.pem \
        --endpoints https://127.0.0.1:7001 put greeting hello
  GEOKV_CACERT=certs/ca.pem GEOKV_TOKEN=gk_... kvctl get greeting

Environment: GEOKV_ENDPOINTS, GEOKV_SOURCE_IP, GEOKV_REGION, GEOKV_WRITE_OUT,
GEOKV_TIMEOUT, GEOKV_CACERT, GEOKV_CERT, GEOKV_KEY and GEOKV_TOKEN stand for the
flags of the same names.

Exit codes:
  0   success
  1   error (message on stderr)
  2   `cas` did not swap
  3   `status`: some shard has no reachable leader (eventual: no reachable replica)
  4   `get`: the key does not exist (stdout stays empty)
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

    /// Output format: simple (plain lines and aligned columns, for people),
    /// json (one JSON document, for scripts) or table (bordered tables).
    #[arg(short = 'w', long, global = true, env = "GEOKV_WRITE_OUT", value_enum, default_value_t = WriteOut::Simple)]
    write_out: WriteOut,

    /// Same as `-w json` (and wins over -w).
    #[arg(long, global = true)]
    json: bool,

    /// Give up on an operation, retries included, after this long: a number
    /// with a unit, e.g. 500ms, 3s, 1m. A write is resent for at most 30 s
    /// (half the shortest session TTL), then reported as of unknown outcome.
    #[arg(long, global = true, env = "GEOKV_TIMEOUT", default_value = "10s", value_parser = parse_timeout)]
    timeout: Duration,

    /// The same in milliseconds (the older spelling; wins over --timeout).
    #[arg(long, global = true, hide = true, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: Option<u64>,

    /// Read KEY, VALUE, START, END and --expect-value as 0x-prefixed hex.
    #[arg(long, global = true)]
    hex: bool,

    /// PEM file of the CA the nodes' certificates chain to: speak TLS
    /// (host:port endpoints become https://).
    #[arg(long, global = true, env = "GEOKV_CACERT")]
    cacert: Option<std::path::PathBuf>,

    /// PEM file of a client certificate (with --key): authenticate as the
    /// user it names (common name; `geokv certs client --user NAME`).
    #[arg(long, global = true, env = "GEOKV_CERT", requires = "key_file")]
    cert: Option<std::path::PathBuf>,

    /// PEM file of the client certificate's private key.
    #[arg(long = "key", global = true, env = "GEOKV_KEY", requires = "cert", value_name = "KEY_FILE")]
    key_file: Option<std::path::PathBuf>,

    /// Bearer token to authenticate with (`kvctl user add` prints one).
    /// Prefer the environment variable: a flag shows in `ps`.
    #[arg(long, global = true, env = "GEOKV_TOKEN", hide_env_values = true)]
    token: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read one key, or with --prefix every key that starts with KEY.
    #[command(after_help = "\
Prints the value. A key that does not exist prints nothing on stdout, says
\"not found\" on stderr and exits with code 4.

With --prefix: every key starting with KEY (\"\" for all keys), in key order, as
lines KEY, VALUE, KEY, VALUE... like etcdctl (-w table: one row per key; -w json:
an array); --keys-only leaves the values out. No matching key prints nothing and
exits 0. Pages are read one at a time: a prefix is not a snapshot of its keys.

On an eventual shard the read is served \"eventual\" (one replica's state, maybe
stale) whatever --consistency asks; a note on stderr (on stdout with -v) says so,
with the HLC and origin of the write that produced the value.

Examples:
  kvctl get user:42
  kvctl get user:42 -v                          also print version and who served it
  kvctl get user: --prefix                      every key under user:, with its value
  kvctl get \"\" --prefix --keys-only --limit 10   the first 10 keys
  kvctl get user:42 || echo absent              exit code 4 when it does not exist
  kvctl get user:42 --consistency stale         read any replica, cheap but maybe stale
  kvctl get user:42 --consistency follower      linearizable, from a replica in --region
  kvctl get user:42 --consistency bounded:250ms -v   local if at most 250 ms stale; says what it got
  kvctl --json get user:42                      {\"found\":true,\"key\":..,\"value\":..,\"version\":..,\"served\":..}")]
    Get {
        /// The key (with --prefix: the prefix).
        key: String,
        /// Read every key that starts with KEY, in key order.
        #[arg(long)]
        prefix: bool,
        /// Print only keys, not values.
        #[arg(long)]
        keys_only: bool,
        /// With --prefix: at most this many keys.
        #[arg(long, requires = "prefix")]
        limit: Option<usize>,
        /// How fresh the read must be.
        /// linearizable (leader, ReadIndex), lease (leader lease), follower
        /// (nearest replica, one round trip to the leader), bounded:<N>ms
        /// (nearest replica if at most N ms stale, else follower), stale.
        /// Keys of eventual shards are always served eventual.
        #[arg(long, default_value = "linearizable", value_parser = parse_consistency)]
        consistency: Consistency,
        /// Also print the version (or HLC) and which node and region served the read.
        #[arg(short, long)]
        verbose: bool,
    },

    /// Write one key.
    #[command(after_help = "\
Prints \"OK version=N\", N being the log index of the write. A write that times out
is reported as \"outcome unknown\": it may have been applied; read the key back.
On an eventual shard it prints \"OK eventual (acked by node N at HLC T)\": the write is
durable on node N only, replicates later, and may still lose to a concurrent write
with a newer HLC (see `kvctl conflicts`). It is not retried once it may have
reached a replica.

VALUE \"-\", or no VALUE with stdin not a terminal, reads the value from stdin:
every byte as read, a trailing newline included (use printf or echo -n), at
most 64 MiB (the server's limits.max_value_bytes, 1 MiB by default, is lower).
With --hex, stdin holds the value as hex.

Examples:
  kvctl put user:42 alice
  kvctl put config - < config.json              the file's bytes as the value
  printf %s \"$TOKEN\" | kvctl put token          no trailing newline
  kvctl --hex put 0x00ff 0xdeadbeef")]
    Put {
        key: String,
        /// The value; \"-\" (or nothing, when stdin is piped) reads it from stdin.
        value: Option<String>,
    },

    /// Delete one key, or with --prefix --yes every key that starts with KEY.
    #[command(after_help = "\
Prints \"OK version=N existed=true|false\". Deleting an absent key succeeds.
On an eventual shard: \"OK eventual (acked by node N at HLC T) existed=...\", existed
being what node N had (see `kvctl put --help`).

With --prefix it deletes every key starting with KEY (\"\" is every key) and
prints \"deleted N keys\"; it refuses to run without --yes. It is not atomic: each
key is its own delete (up to 16 at a time), keys written under the prefix while
it runs may survive, and an error part way reports how many were deleted.

Examples:
  kvctl del user:42
  kvctl get tmp/ --prefix --keys-only           see what would go
  kvctl del tmp/ --prefix --yes")]
    Del {
        /// The key (with --prefix: the prefix).
        key: String,
        /// Delete every key that starts with KEY.
        #[arg(long)]
        prefix: bool,
        /// Confirm a --prefix delete (required with --prefix).
        #[arg(long, requires = "prefix")]
        yes: bool,
    },

    /// Compare-and-swap: write (or delete) only if the key is as expected.
    #[command(after_help = "\
Prints \"swapped version=N\", or \"not swapped: current=V version=N\" and exits with
code 2 so scripts can tell the two apart. Keys of eventual shards have no single
current version to compare with: cas on them is refused (exit code 1).

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
Prints a KEY / VALUE / VERSION table (for keys of eventual shards VERSION shows the
HLC of the write, physical_ms.logical@node). START defaults to the first key, END to
the end of the key space; use \"\" for an explicit empty START.

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
        /// Pages of eventual shards are always served eventual.
        #[arg(long, default_value = "linearizable", value_parser = parse_consistency)]
        consistency: Consistency,
    },

    /// Show nodes (reachable or not) and each shard's leader, term and indexes.
    #[command(after_help = "\
Asks every node of the shard map for its status. Shards without a reachable
leader are flagged and make kvctl exit with code 3.

Eventual shards have no leader: their row says \"eventual\" and how many replicas
answered, and a second table shows each replica's replication: writes it
accepted (LAST-SEQ), entries its outbox still keeps (OUTBOX), tombstones not yet
collected, and how far each peer lags (node:entries/ms, * while resyncing).
They are flagged (exit code 3) only when no replica answers.

Last, what the meta shard's leader decided (moves for drains and rebalancing,
leader transfers, automatic splits and merges, merges given up, nodes marked
down or up), counted per node since it started; its log says why.

Examples:
  kvctl status
  kvctl --json status | jq '.shards[] | select(.degraded)'
  kvctl --json status | jq '.nodes[].topology_decisions'")]
    Status,

    /// Show the shard map: nodes, and each shard's range, epoch, mode and replicas.
    #[command(after_help = "\
MODE is raft (one leader, linearizable writes, cas and batches) or eventual (every
replica accepts puts and deletes, last writer wins; see `kvctl --help`).

Examples:
  kvctl shards
  kvctl --json shards")]
    Shards,

    /// Split a Raft shard (shard split), merge two (shard merge), move a replica (shard
    /// move), create eventual shards (shard create), change a shard's placement (shard
    /// set-leader-region).
    #[command(
        subcommand,
        after_help = "\
Examples:
  kvctl shard split 2 h
  kvctl shard merge 2
  kvctl shard move 2 --from 1 --to 4
  kvctl shard create --mode eventual 'session/..u'
  kvctl shard set-leader-region 2 us-east"
    )]
    Shard(ShardCommand),

    /// Users, their tokens and their roles (needs the admin role).
    #[command(
        subcommand,
        after_help = "\
Examples:
  kvctl user add alice --role write --prefix app/     prints alice's token once
  kvctl user grant alice read --prefix shared/
  kvctl user list"
    )]
    User(UserCommand),

    /// The cluster's members (node list).
    #[command(
        subcommand,
        after_help = "\
Examples:
  kvctl node list
  kvctl --json node list"
    )]
    Node(NodeCommand),

    /// Copy every shard of the running cluster into a backup directory.
    #[command(after_help = "\
Each Raft shard is copied by its leader from one consistent view at a known log
index (its leader confirms leadership with a quorum first, as a linearizable read
does); the shards are copied at once, PARALLEL at a time, while the cluster
serves. Eventual shards are copied from one replica as they are. DIR gets one
file per shard (shard-ID.pb) and, last, manifest.json: the source cluster's
nodes and, per shard, its range, index, counts and the file's SHA-256. Each
shard's stream is checked against the SHA-256 its leader computed. DIR must be
new or empty. Restore into a new cluster with `geokv restore DIR`.

Examples:
  kvctl backup /backups/2026-12-06            prints the shards, keys, bytes and time
  kvctl --json backup /backups/nightly | jq .shards[].applied_index")]
    Backup {
        /// The directory to write (created; must be empty).
        dir: std::path::PathBuf,
        /// Shards copied at once.
        #[arg(long, default_value_t = geokv_client::backup::DEFAULT_PARALLEL)]
        parallel: usize,
    },

    /// List writes to eventual shards that were acknowledged, then lost.
    #[command(
        long_about = "List writes to eventual shards that were acknowledged, then lost.\n\n\
            A conflict is a write that was acknowledged to its client and then lost, under \
            last-writer-wins, to a concurrent write it had not seen: one with a newer hybrid \
            logical clock (HLC) timestamp, accepted by another replica (or by the same one) \
            before the two met. The newer write's value is the key's value everywhere; the \
            loser's value is gone except from this log.\n\n\
            Only eventual shards have conflicts: Raft shards order every write through their \
            leader. Each node logs the writes it discarded itself, so one conflict is usually \
            recorded by several nodes (RECORDED-BY); kvctl asks every node and merges the \
            copies. Each node's log is bounded by its eventual.conflict_log_entries setting: \
            the oldest entries are dropped first, and kvctl says when a node dropped some.",
        after_help = "\
Columns: LOSER is the discarded write (its HLC physical_ms.logical@node, the value
it wrote or <delete>, and \"via N\" when the accepting replica differs from the HLC's
node); WINNER the write that beat it; AT when it was first recorded (UTC).

Examples:
  kvctl conflicts                               the newest 100 across all eventual shards
  kvctl conflicts --shard 4 --limit 20
  kvctl --json conflicts | jq '.conflicts[] | select(.key == \"cart:42\")'"
    )]
    Conflicts {
        /// Only this shard (default: every eventual shard).
        #[arg(long)]
        shard: Option<u64>,
        /// At most this many conflicts, newest first (0: 100).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },

    /// Print a shell completion script for kvctl.
    #[command(after_help = "\
Examples:
  kvctl completion bash > ~/.local/share/bash-completion/completions/kvctl
  kvctl completion zsh > \"${fpath[1]}/_kvctl\"
  kvctl completion fish > ~/.config/fish/completions/kvctl.fish
  source <(kvctl completion bash)               this shell only")]
    Completion {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

/// `-w/--write-out`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum WriteOut {
    /// Values and plain lines; aligned columns for lists.
    Simple,
    /// One JSON document on stdout.
    Json,
    /// Bordered tables.
    Table,
}

impl Cli {
    /// The output format: `--json` wins over `-w`.
    fn write_out(&self) -> WriteOut {
        if self.json { WriteOut::Json } else { self.write_out }
    }

    /// The operation deadline: `--timeout-ms` wins over `--timeout`.
    fn deadline(&self) -> Duration {
        self.timeout_ms.map_or(self.timeout, Duration::from_millis)
    }
}

/// Parses `--timeout`: a positive duration with a unit (humantime: 500ms, 3s, 1m30s).
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text)
        .map_err(|err| format!("{err}: give a number with a unit, e.g. 500ms, 3s or 1m"))?;
    if duration.is_zero() {
        return Err("a timeout of zero would fail every request: give e.g. 500ms, 3s or 1m".into());
    }
    Ok(duration)
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Add a user; prints its bearer token, which is shown this once.
    #[command(
        long_about = "Add user NAME, optionally with one grant (--role, --prefix), and print its bearer \
            token: the cluster keeps only the token's SHA-256, so it is shown this once. Clients \
            send it with --token or GEOKV_TOKEN. With --certificate-only the user has no token and \
            authenticates with a client certificate whose common name is NAME (geokv certs client \
            --user NAME). Roles: read < write < admin, each on the keys under a prefix (none: every \
            key); admin is cluster-wide and takes no prefix. root is built in (its certificate is \
            the administrator) and node is reserved for cluster members.",
        after_help = "\
Examples:
  kvctl user add alice --role write --prefix app/
  kvctl user add ops --role admin
  kvctl user add reporting --role read --certificate-only"
    )]
    Add {
        name: String,
        /// The user's first grant: read, write or admin.
        #[arg(long)]
        role: Option<String>,
        /// The keys --role applies to (default: every key).
        #[arg(long, requires = "role")]
        prefix: Option<String>,
        /// No token: authenticate with a client certificate only.
        #[arg(long)]
        certificate_only: bool,
    },
    /// Remove a user: its token and certificate stop working at once.
    #[command(after_help = "\
Examples:
  kvctl user remove alice")]
    Remove { name: String },
    /// Give a user a role on a key prefix, or take it back with --revoke.
    #[command(after_help = "\
Examples:
  kvctl user grant alice read --prefix shared/
  kvctl user grant alice write --prefix app/ --revoke")]
    Grant {
        name: String,
        /// read, write or admin.
        role: String,
        /// The keys the role applies to (default: every key).
        #[arg(long)]
        prefix: Option<String>,
        /// Take the grant back instead.
        #[arg(long)]
        revoke: bool,
    },
    /// List the users and their grants (never tokens).
    #[command(after_help = "\
Examples:
  kvctl user list
  kvctl --json user list")]
    List,
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// List the members: id, region, address, state, and how many replicas and leaders each holds.
    #[command(after_help = "\
STATE is what the shard map records when it is not up: joining (admitted by geokv
--join, catching up with the map), draining, removing or removed (kvctl node drain /
remove), or down (it answered the meta shard's leader for none of node_dead_after_ms,
and its replicas are being re-created elsewhere). For a node the map records as up:
up (it answered and is ready), starting (it answered, its groups are still starting)
or down (it did not answer this time). REPLICAS counts the shards the map places on
the node, moves to it included (the meta shard not included); LEADERS the groups it
says it leads. The JSON has reachable: whether it answered.

Examples:
  kvctl node list
  kvctl --json node list | jq '.[] | select(.state != \"up\")'")]
    List,

    /// Move every replica and leadership off a node; it takes no new replicas.
    #[command(
        long_about = "Move every replica and leadership off node ID, then leave it empty and \
            draining (kvctl node remove takes it out of the cluster).\n\n\
            The node is recorded as draining in the shard map at once; the meta shard's leader \
            then moves its replicas to other up nodes that answer, at most 2 moves in the \
            cluster at a time. A target in a region the shard's other replicas do not cover \
            comes first, then the node with the fewest replicas. Each move is what kvctl \
            shard move does: the new replica is a learner until it has caught up, so no step \
            lowers a shard's fault tolerance. A node that is down can be drained: its shards \
            keep a quorum without it and the new replicas are fed by their leaders.\n\n\
            Refused, changing nothing, when some replica would have nowhere to go (every \
            other up node already holds that shard: add a node first). Replicas of eventual \
            shards move too: the new one is seeded with the whole range by every other \
            replica, the leaving one stops taking writes, and it is removed once the staying \
            replicas have acknowledged everything it accepted.",
        after_help = "\
Examples:
  kvctl node drain 3                  waits (up to --wait) until node 3 holds no replica
  kvctl node drain 3 --no-wait
  kvctl node list                     STATE draining, REPLICAS counting down
  kvctl --json node drain 3 --wait 30m
  kvctl node drain 3 --cancel         up again: takes replicas again (recorded moves finish)"
    )]
    Drain {
        /// The node to drain.
        id: u64,
        /// Cancel the node's drain: it is recorded as up again and takes
        /// replicas again; moves already recorded finish, no new ones start.
        #[arg(long, conflicts_with_all = ["no_wait", "wait"])]
        cancel: bool,
        /// Return once the drain is recorded, without waiting for it.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the node to be empty.
        #[arg(long, default_value = "10m", value_parser = parse_timeout)]
        wait: Duration,
    },

    /// Remove a drained node from the cluster for good.
    #[command(
        long_about = "Remove node ID from the cluster for good: it leaves the meta shard, its id \
            is never reused, and if it comes back it is let into no group and stops with an \
            error saying it was removed.\n\n\
            The node must hold no replica (kvctl node drain it first). With --force a node \
            that still holds replicas is drained first (moving them from the other replicas, \
            which works with the node down) and removed once empty.\n\n\
            Refused, changing nothing: a node that holds replicas (without --force), a removal \
            that would leave the meta shard fewer than 3 voters (which would survive no \
            failure), and with --force a replica that would have nowhere to go.",
        after_help = "\
Examples:
  kvctl node drain 3 && kvctl node remove 3
  kvctl node remove 3 --force         a dead node: re-replicate its shards, then remove it
  kvctl --json node remove 3 --force --wait 30m"
    )]
    Remove {
        /// The node to remove.
        id: u64,
        /// Drain it first if it still holds replicas.
        #[arg(long)]
        force: bool,
        /// Return once the removal is recorded, without waiting for a drain it needs.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for a forced drain to finish.
        #[arg(long, default_value = "10m", value_parser = parse_timeout)]
        wait: Duration,
    },
}

#[derive(Debug, Subcommand)]
enum ShardCommand {
    /// Create an eventual shard for an empty key range at the start or the end of a Raft shard.
    #[command(
        long_about = "Create a shard for the key range [START, END), carved out of the Raft shard \
            that holds it now.\n\n\
            The carve rule: the range must lie inside one Raft shard and begin or end exactly \
            where that shard does (not both), and it must hold no keys yet. That shard keeps the \
            rest of its range, at a new epoch. The new shard has the same replicas as the shard \
            it was carved from.\n\n\
            Only --mode eventual is supported: writes to the new shard's keys are acknowledged by \
            the local replica (in --region, else the first one) once durable there, and \
            replicated to the other replicas later; the newest HLC wins, and writes that lose are \
            listed by `kvctl conflicts`. Compare-and-swap and batches on its keys are refused. \
            --mode raft parses, but the server does not support creating Raft shards yet and \
            refuses it.\n\n\
            Any node serves the request; kvctl retries it (on other nodes) while the leaders \
            concerned are unreachable, within --timeout. Repeating a request after a failure is \
            safe: if the shard was made, it is reported, not made twice.",
        after_help = "\
RANGE is START..END, or START.. for everything from START on (..END starts at the
first key). Quote it for the shell; with --hex give both ends as hex (0x73..0x74).
Prints \"created eventual shard N for [START, END) (carved from shard P, now at epoch
E); map version V\".

Examples:
  kvctl shard create --mode eventual 'session/..u'   from \"session/\" up to where shard [n, u) ends
  kvctl shard create --mode eventual 'x/..'          from \"x/\" to the end (the last shard's end)
  kvctl --json shard create --mode eventual 'session/..u'
  kvctl shards                                       the new shard, and its parent's smaller range

With the default split points (g, n, u) a range must end at g, n or u, or start at
one of them (or run to the end); keys anywhere else can be made eventual when the
cluster is created (eventual_ranges in the node config)."
    )]
    Create {
        /// How the new shard replicates.
        #[arg(long, value_enum)]
        mode: ModeArg,
        /// The key range: START..END, or START.. (unbounded).
        range: String,
    },

    /// Keep SHARD's leader in REGION when a healthy replica is there: the
    /// current leader hands leadership over, and takes it back there after a
    /// failover. An empty REGION ("") lets the leader live anywhere.
    #[command(after_help = "\
Examples:
  kvctl shard set-leader-region 2 us-east
  kvctl shard set-leader-region 2 \"\"        no preference
  kvctl status                                LEADER shows where leaders are; * marks one outside its region")]
    SetLeaderRegion { shard: u64, region: String },

    /// Split Raft shard SHARD at KEY: SHARD keeps the keys below KEY, a new
    /// shard on the same replicas gets KEY and everything after it.
    #[command(
        long_about = "Split Raft shard SHARD at KEY: SHARD keeps [start, KEY), a new shard \
            (its id allocated by the cluster's meta shard) gets [KEY, end), on the same replicas. \
            No data moves: every replica already holds the keys. Both halves move to a new epoch, \
            so a client that routed with the old map is told to refresh it (WrongShard) and \
            retries; writes retried across the split still apply once (client sessions are copied \
            to the new shard).\n\n\
            The map records the split first, then the shard's own log; if the request stops in \
            between, the shard's leader completes it. kvctl retries within --timeout, and \
            its retries are safe: a split an earlier attempt made is reported (\"already split\"), \
            not made twice. Running the command again after it succeeded is refused, naming the \
            shard that now starts at KEY.",
        after_help = "\
KEY must lie strictly inside the shard's range (not its first key); with --hex give it as hex.
Prints \"split shard S at KEY: S [start, KEY) epoch E, new shard N [KEY, end) epoch E;
map version V\".

Examples:
  kvctl shards                          ids and ranges
  kvctl shard split 2 h                 shard 2 [g, n) becomes [g, h) and a new [h, n)
  kvctl --hex shard split 2 0x68        the same key, as hex
  kvctl --json shard split 2 h"
    )]
    Split {
        /// The Raft shard to split.
        shard: u64,
        /// The first key of the new, right-hand shard.
        key: String,
    },

    /// Merge Raft shard SHARD with the shard after it, and wait until the
    /// merge is done.
    #[command(
        long_about = "Merge Raft shard SHARD with the shard after it: SHARD keeps its id and \
            absorbs the next shard's keys, data and client sessions, at a new epoch; the next \
            shard's id is never used again. The cluster records the merge in the shard map, then \
            the meta shard's leader carries it out: it moves the right shard's replicas onto \
            SHARD's nodes (learner first, as kvctl shard move does), freezes the right shard (from \
            then on it refuses requests; clients retry them and land on SHARD once the map shows \
            the merge), waits until every replica has applied the freeze, and has SHARD's own log \
            absorb it in one entry. No data is copied: every replica already holds both ranges. \
            Writes retried across the merge still apply once.\n\n\
            kvctl waits until the map shows the merge over (at most --wait, default 5m; the merge \
            goes on if kvctl stops waiting); --no-wait returns once it is recorded. Before the \
            freeze a merge can be cancelled (--cancel). The cluster gives it up by itself if a \
            replica of either shard is on a node that stops being up, or if a replica has not \
            applied the freeze within 5 s (the right shard then serves again); once every replica \
            has, the freeze is sealed and the merge finishes.",
        after_help = "\
Refused, changing nothing: an unknown shard, the last shard (nothing follows it), an eventual
shard on either side, a replica change or another merge of either under way, a replica on a node
that is not up. Prints \"merged shard S with shard R: S [start, end) epoch E\".

Examples:
  kvctl shards                                ids and ranges; MERGE shows one under way
  kvctl shard merge 2                         shard 2 [g, n) absorbs shard 3 [n, u): [g, u)
  kvctl shard merge 2 --no-wait
  kvctl shard merge 2 --cancel                before the freeze only
  kvctl --json shard merge 2 --wait 10m"
    )]
    Merge {
        /// The Raft shard that absorbs the shard after it.
        shard: u64,
        /// Drop the merge recorded on SHARD (refused once it is past its freeze).
        #[arg(long, conflicts_with_all = ["no_wait", "wait"])]
        cancel: bool,
        /// Return once the merge is recorded, without waiting for it.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the merge to finish.
        #[arg(long, default_value = "5m", value_parser = parse_timeout)]
        wait: Duration,
    },

    /// Move Raft shard SHARD's replica from node --from to node --to, and
    /// wait until the move is done.
    #[command(
        long_about = "Move shard SHARD's replica from node --from to node --to. The cluster \
            records the move in the shard map, then the shard's leader carries it out: the new \
            replica joins as a learner (it does not vote, so the shard tolerates as many failures \
            as before), gets a snapshot and the log, and once caught up becomes a voter in place of \
            the old one by joint consensus (a leader that is leaving hands leadership over first); \
            the old replica then deletes its copy. Clients are not interrupted: they learn the new \
            replicas from the map.\n\n\
            kvctl waits until the map shows the move done (at most --wait, default 5m; the move \
            goes on if kvctl stops waiting) and prints the shard's replicas; --no-wait returns once \
            the move is recorded. Repeating the command while the move is under way is safe (it \
            reports the move recorded earlier). One change per shard at a time: a move, or a split, \
            waits for the one under way.\n\n\
            An eventual shard has no leader: the meta shard's leader carries its move out. Every \
            other replica sends the new one the whole range, then its new writes; the old replica \
            stops taking writes at once (clients write to another replica) and leaves once every \
            staying replica has acknowledged everything it accepted.\n\n\
            --cancel calls a recorded move off while it still can be: until the new replica votes \
            (for a Raft shard, while it is a learner; for an eventual shard, until the move is \
            made). The new replica is taken out and deletes its partial copy, the shard keeps its \
            replicas. Once the new replica votes, the move completes and --cancel says so.",
        after_help = "\
Refused, changing nothing: an unknown shard or node, --from equal to --to, --from not holding a
replica, --to holding one already or not answering, another change under way.
With --cancel: refused when the move completed first or the shard records another change;
\"nothing to cancel\" when no such move is under way.
Prints \"moved shard S from node A to node B: replicas ...; map version V\".

Examples:
  kvctl shards                                REPLICAS shows where each shard is; CHANGE a move under way
  kvctl shard move 2 --from 1 --to 4
  kvctl shard move 2 --from 1 --to 4 --no-wait
  kvctl --json shard move 2 --from 4 --to 1 --wait 10m
  kvctl shard move 2 --from 1 --to 4 --cancel   while node 4 is still a learner"
    )]
    Move {
        /// The shard whose replica moves.
        shard: u64,
        /// The node that gives up its replica.
        #[arg(long)]
        from: u64,
        /// The node that gets the replica.
        #[arg(long)]
        to: u64,
        /// Return once the move is recorded, without waiting for it.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the move to finish.
        #[arg(long, default_value = "5m", value_parser = parse_timeout)]
        wait: Duration,
        /// Cancel this move instead: possible until its new replica votes
        /// (a Raft shard's learner stage; an eventual shard's move until it
        /// is made). The shard keeps its replicas; the new one's partial
        /// copy is deleted.
        #[arg(long, conflicts_with_all = ["no_wait"])]
        cancel: bool,
    },
}

/// `--mode` of `shard create`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ModeArg {
    /// Leaderless: every replica accepts puts and deletes, last writer wins.
    Eventual,
    /// One Raft group (the server does not support creating these yet).
    Raft,
}

impl From<ModeArg> for ShardMode {
    fn from(mode: ModeArg) -> ShardMode {
        match mode {
            ModeArg::Eventual => ShardMode::Eventual,
            ModeArg::Raft => ShardMode::Raft,
        }
    }
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

/// Runs kvctl on this process's arguments (the `kvctl` binary's `main`;
/// also built into the test package, which runs it against real nodes).
pub fn main() -> ExitCode {
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
    if let Command::Completion { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "kvctl", &mut std::io::stdout());
        return Ok(ExitCode::SUCCESS);
    }
    let key_arg = |text: &str| parse_arg(text, cli.hex);
    let out = cli.write_out();
    // Parse everything (and read stdin) before touching the network.
    let command = match &cli.command {
        Command::Get { key, .. } | Command::Put { key, .. } | Command::Del { key, .. } | Command::Cas { key, .. } => {
            Some(key_arg(key)?)
        }
        Command::Scan { .. }
        | Command::Status
        | Command::Shards
        | Command::Shard(_)
        | Command::User(_)
        | Command::Node(_)
        | Command::Conflicts { .. }
        | Command::Backup { .. }
        | Command::Completion { .. } => None,
    };
    let put_value = match &cli.command {
        Command::Put { value: Some(value), .. } if value != "-" => Some(key_arg(value)?),
        Command::Put { value, .. } => Some(read_stdin_value(value.is_some(), cli.hex)?),
        _ => None,
    };
    if let Command::Del { prefix: true, yes: false, key } = &cli.command {
        return Err(format!(
            "refusing to delete every key with prefix {key:?} without --yes; \
             `kvctl get {key:?} --prefix --keys-only` lists them"
        ));
    }
    let create_range = match &cli.command {
        Command::Shard(ShardCommand::Create { range, .. }) => Some(parse_range(range, cli.hex)?),
        _ => None,
    };
    let split_key = match &cli.command {
        Command::Shard(ShardCommand::Split { key, .. }) => Some(key_arg(key)?),
        _ => None,
    };
    let client = connect(&cli).await?;
    let json = out == WriteOut::Json;
    let style = Style::of(out);
    match cli.command {
        Command::Get { prefix: true, keys_only, limit, consistency, .. } => {
            let bounds = prefix_bounds(command.expect("parsed above"));
            let listing = Listing { limit, consistency, keys_only, out, simple_lines: true };
            list(&client, bounds, listing).await
        }
        Command::Get { consistency, verbose, keys_only, .. } => {
            get(&client, command.expect("parsed above"), consistency, verbose, keys_only, out).await
        }
        Command::Put { .. } => {
            let key = command.expect("parsed above");
            let written = client.put(&key, put_value.expect("read above")).await.map_err(say)?;
            let mut fields = json!({"version": written.version, "shard_id": written.shard_id});
            merge(&mut fields, eventual_write_json(written.eventual, written.hlc, written.origin));
            match out {
                WriteOut::Json => print_json(&fields),
                WriteOut::Table => print_record(&fields),
                WriteOut::Simple if written.eventual => {
                    println!("OK {}", describe_eventual_write(written.hlc, written.origin))
                }
                WriteOut::Simple => println!("OK version={}", written.version),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Del { prefix: true, .. } => delete_prefix(&client, command.expect("parsed above"), out).await,
        Command::Del { .. } => {
            let deleted = client.delete(command.expect("parsed above")).await.map_err(say)?;
            let mut fields = json!({
                "version": deleted.version,
                "existed": deleted.existed,
                "shard_id": deleted.shard_id,
            });
            merge(&mut fields, eventual_write_json(deleted.eventual, deleted.hlc, deleted.origin));
            match out {
                WriteOut::Json => print_json(&fields),
                WriteOut::Table => print_record(&fields),
                WriteOut::Simple if deleted.eventual => {
                    println!("OK {} existed={}", describe_eventual_write(deleted.hlc, deleted.origin), deleted.existed)
                }
                WriteOut::Simple => println!("OK version={} existed={}", deleted.version, deleted.existed),
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
            cas(&client, command.expect("parsed above"), expect, new_value, out).await
        }
        Command::Scan { start, end, limit, consistency } => {
            let start = start.map(|start| key_arg(&start)).transpose()?.unwrap_or_default();
            let end = end.map(|end| key_arg(&end)).transpose()?;
            let listing = Listing { limit, consistency, keys_only: false, out, simple_lines: false };
            list(&client, geokv_client::ScanBounds { start, end }, listing).await
        }
        Command::Status => status(&client, out).await,
        Command::Node(NodeCommand::List) => {
            let cluster = client.cluster_status().await.map_err(say)?;
            let rows = node_list(&cluster);
            match out {
                WriteOut::Json => print_json(&Value::Array(rows)),
                _ => {
                    let columns = ["id", "region", "address", "state", "replicas", "leaders"];
                    let table: Vec<Vec<String>> = rows
                        .iter()
                        .map(|row| {
                            columns
                                .iter()
                                .map(|c| match &row[c] {
                                    Value::String(s) => s.clone(),
                                    other => other.to_string(),
                                })
                                .collect()
                        })
                        .collect();
                    style.print(&["ID", "REGION", "ADDRESS", "STATE", "REPLICAS", "LEADERS"], &table);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Shards => {
            let map = client.refresh_shard_map().await.map_err(say)?;
            print_shard_map(&map, out);
            Ok(ExitCode::SUCCESS)
        }
        Command::Backup { dir, parallel } => {
            let manifest = geokv_client::backup::backup(&client, &dir, parallel).await.map_err(say)?;
            let pairs: u64 = manifest.shards.iter().map(|s| s.pairs).sum();
            let bytes: u64 = manifest.shards.iter().map(|s| s.bytes).sum();
            if json {
                print_json(&serde_json::to_value(&manifest).expect("a manifest serializes"));
            } else {
                for s in &manifest.shards {
                    let at = if s.eventual { "eventual".to_string() } else { format!("index {}", s.applied_index) };
                    println!(
                        "shard {:>4}  {at:<16} {:>10} keys {:>14} bytes  {}",
                        s.shard_id, s.pairs, s.bytes, s.file
                    );
                }
                println!(
                    "backed up {} shards, {pairs} keys, {bytes} bytes in {:.1} s to {}",
                    manifest.shards.len(),
                    manifest.took_ms as f64 / 1000.0,
                    dir.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Conflicts { shard, limit } => {
            let report = client.conflicts(shard, limit).await.map_err(say)?;
            if json {
                print_json(&conflicts_json(&report));
            } else {
                print_conflicts(&report, style);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Shard(ShardCommand::Create { mode, .. }) => {
            let (start, end) = create_range.expect("parsed above");
            let bounds = geokv_client::ScanBounds { start: start.clone(), end: end.clone() };
            let created = client.create_shard(bounds, mode.into()).await.map_err(say)?;
            let mode = ShardMode::from(mode);
            match out {
                WriteOut::Json => print_json(&created_json(&created, mode, &start, end.as_deref())),
                WriteOut::Table => print_record(&created_json(&created, mode, &start, end.as_deref())),
                WriteOut::Simple => println!("{}", describe_created(&created, mode, &start, end.as_deref())),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Shard(ShardCommand::SetLeaderRegion { shard, region }) => {
            let region = (!region.is_empty()).then_some(region.as_str());
            let version = client.set_leader_region(shard, region).await.map_err(say)?;
            let fields = json!({ "shard": shard, "preferred_leader_region": region, "map_version": version });
            match out {
                WriteOut::Json => print_json(&fields),
                WriteOut::Table => print_record(&fields),
                WriteOut::Simple => {
                    println!("OK shard {shard} leader region={} (map version {version})", region.unwrap_or("any"))
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Shard(ShardCommand::Split { shard, .. }) => {
            let key = split_key.expect("parsed above");
            let split = client.split_shard(shard, key.clone()).await.map_err(say)?;
            let shown = geokv_client::display::printable(&key);
            let fields = json!({
                "shard": split.left_shard_id,
                "epoch": split.left_epoch,
                "new_shard": split.right_shard_id,
                "new_epoch": split.right_epoch,
                "split_key": shown,
                "map_version": split.map_version,
                "created": split.created,
            });
            match out {
                WriteOut::Json => print_json(&fields),
                WriteOut::Table => print_record(&fields),
                WriteOut::Simple => println!(
                    "{} shard {shard} at {shown}: shard {shard} [start, {shown}) epoch {}, new shard {} [{shown}, end) \
                     epoch {}; map version {}",
                    if split.created { "split" } else { "already split:" },
                    split.left_epoch,
                    split.right_shard_id,
                    split.right_epoch,
                    split.map_version
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::User(command) => user(&client, command, out, cli.hex).await,
        Command::Node(NodeCommand::Drain { id, cancel: true, .. }) => {
            let change = client.cancel_drain(id).await.map_err(say)?;
            let fields = json!({
                "node": id,
                "map_version": change.map_version,
                "created": change.created,
                "state": change.state.as_str(),
            });
            match out {
                WriteOut::Json => print_json(&fields),
                WriteOut::Table => print_record(&fields),
                WriteOut::Simple if change.created => {
                    println!("node {id}'s drain cancelled: it is up again; map version {}", change.map_version)
                }
                WriteOut::Simple => println!("node {id} is {}: no drain to cancel", change.state.as_str()),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Node(NodeCommand::Drain { id, no_wait, wait, .. }) => {
            let change = client.drain_node(id).await.map_err(say)?;
            node_change_done(&client, out, "drain", change, no_wait, wait).await
        }
        Command::Node(NodeCommand::Remove { id, force, no_wait, wait }) => {
            let change = client.remove_node(id, force).await.map_err(say)?;
            node_change_done(&client, out, "removal", change, no_wait, wait).await
        }
        Command::Shard(ShardCommand::Merge { shard, cancel, no_wait, wait }) => {
            let merge =
                if cancel { client.cancel_merge(shard).await } else { client.merge_shard(shard).await }.map_err(say)?;
            let right = merge.right_shard_id;
            let mut fields = json!({
                "shard": shard,
                "right_shard": right,
                "map_version": merge.map_version,
                "created": merge.created,
                "cancelled": cancel,
                "done": false,
            });
            if !cancel && !no_wait {
                let done = client.wait_for_merge(shard, wait).await.map_err(say)?;
                let map = client.refresh_shard_map().await.map_err(say)?;
                if map.shard(right).is_some() {
                    return Err(format!(
                        "the merge of shards {shard} and {right} was given up (a replica's node stopped being \
                         up, or it was cancelled); see kvctl shards and kvctl node list"
                    ));
                }
                fields["done"] = json!(true);
                fields["epoch"] = json!(done.epoch);
                fields["range"] = json!(format_range(&done));
            }
            match out {
                WriteOut::Json => print_json(&fields),
                WriteOut::Table => print_record(&fields),
                WriteOut::Simple if cancel => println!(
                    "{} merge of shards {shard} and {right}; map version {}",
                    if merge.created { "cancelled the" } else { "no merge to cancel: no" },
                    merge.map_version
                ),
                WriteOut::Simple if no_wait => println!(
                    "{} merge of shard {shard} with shard {right}; map version {} (kvctl shards shows it under way)",
                    if merge.created { "recorded" } else { "already recorded:" },
                    merge.map_version
                ),
                WriteOut::Simple => println!(
                    "merged shard {shard} with shard {right}: {shard} {} epoch {}",
                    fields["range"].as_str().unwrap_or_default(),
                    fields["epoch"]
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Shard(ShardCommand::Move { shard, from, to, cancel: true, .. }) => {
            let cancelled = client.cancel_move(shard, from, to).await.map_err(say)?;
            let fields = json!({
                "shard": shard,
                "from": from,
                "to": to,
                "map_version": cancelled.map_version,
                "cancelled": cancelled.created,
            });
            match out {
                WriteOut::Json => print_json(&fields),
                WriteOut::Table => print_record(&fields),
                WriteOut::Simple if cancelled.created => println!(
                    "cancelled the move of shard {shard} from node {from} to node {to}; map version {}",
                    cancelled.map_version
                ),
                WriteOut::Simple => {
                    println!("no move of shard {shard} from node {from} to node {to} is under way: nothing to cancel")
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Shard(ShardCommand::Move { shard, from, to, no_wait, wait, .. }) => {
            let moved = client.move_replica(shard, from, to).await.map_err(say)?;
            let mut fields = json!({
                "shard": shard,
                "from": from,
                "to": to,
                "map_version": moved.map_version,
                "created": moved.created,
                "done": false,
            });
            if !no_wait {
                let done = client.wait_for_replica_change(shard, wait).await.map_err(say)?;
                let replicas: Vec<u64> = done.replicas.iter().map(|r| r.node_id).collect();
                if !replicas.contains(&to) {
                    return Err(format!(
                        "shard {shard}'s change ended without node {to} among its replicas ({replicas:?}): \
                         the move was given up (node {to} went down while a learner: kvctl node list), \
                         cancelled (kvctl shard move --cancel) or replaced; see kvctl shards"
                    ));
                }
                fields["done"] = json!(true);
                fields["replicas"] = json!(replicas);
                fields["epoch"] = json!(done.epoch);
            }
            match out {
                WriteOut::Json => print_json(&fields),
                WriteOut::Table => print_record(&fields),
                WriteOut::Simple if no_wait => println!(
                    "{} move of shard {shard} from node {from} to node {to}; map version {} \
                     (kvctl shards shows it under way)",
                    if moved.created { "recorded" } else { "already recorded:" },
                    moved.map_version
                ),
                WriteOut::Simple => println!(
                    "moved shard {shard} from node {from} to node {to}: replicas {}; epoch {}",
                    fields["replicas"], fields["epoch"]
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Completion { .. } => unreachable!("answered before connecting"),
    }
}

/// Reports a drain or removal, waiting (unless `no_wait`) for the node to
/// be empty (and, for a forced removal, removed).
async fn node_change_done(
    client: &Client,
    out: WriteOut,
    what: &str,
    change: NodeChange,
    no_wait: bool,
    wait: Duration,
) -> Result<ExitCode, String> {
    let id = change.node_id;
    let mut fields = json!({
        "node": id,
        "map_version": change.map_version,
        "created": change.created,
        "state": change.state.as_str(),
        "done": change.state == NodeState::Removed,
    });
    if !no_wait && change.state != NodeState::Removed {
        let state = client.wait_for_drain(id, wait).await.map_err(say)?;
        fields["state"] = json!(state.as_str());
        fields["done"] = json!(true);
    }
    match out {
        WriteOut::Json => print_json(&fields),
        WriteOut::Table => print_record(&fields),
        WriteOut::Simple => {
            let recorded = if change.created { "recorded" } else { "already recorded:" };
            if fields["done"] == json!(true) {
                println!(
                    "node {id} is {}: it holds no replica; map version {}",
                    fields["state"].as_str().unwrap_or(""),
                    change.map_version
                )
            } else {
                println!(
                    "{recorded} {what} of node {id} ({}); map version {} (kvctl node list shows it)",
                    change.state.as_str(),
                    change.map_version
                )
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `put`'s value from stdin: every byte (hex text with `--hex`), at most
/// [`MAX_STDIN_VALUE_BYTES`]. Without an explicit `-`, a terminal on stdin is
/// a mistake (the user forgot VALUE), not an invitation to type.
fn read_stdin_value(explicit_dash: bool, hex: bool) -> Result<Vec<u8>, String> {
    let stdin = std::io::stdin();
    if !explicit_dash && stdin.is_terminal() {
        return Err("put needs a VALUE, or \"-\" to read it from stdin (e.g. kvctl put KEY - < file)".into());
    }
    let mut value = Vec::new();
    stdin
        .lock()
        .take(MAX_STDIN_VALUE_BYTES + 1)
        .read_to_end(&mut value)
        .map_err(|err| format!("cannot read the value from stdin: {err}"))?;
    if value.len() as u64 > MAX_STDIN_VALUE_BYTES {
        return Err(format!("the value on stdin is larger than {MAX_STDIN_VALUE_BYTES} bytes"));
    }
    if !hex {
        return Ok(value);
    }
    let text = String::from_utf8(value).map_err(|_| "with --hex, stdin must hold hex text".to_string())?;
    parse_arg(text.trim(), true)
}

/// The keys that start with `prefix`: `[prefix, prefix_end)`, unbounded when
/// no key sorts after every key with the prefix (empty, or all 0xff).
fn prefix_bounds(prefix: Vec<u8>) -> geokv_client::ScanBounds {
    let mut end = prefix.clone();
    while end.last() == Some(&0xff) {
        end.pop();
    }
    let end = end.last_mut().map(|last| *last += 1).map(|()| end);
    geokv_client::ScanBounds { start: prefix, end }
}

/// `del --prefix`: every key in the prefix, streamed from a scan, deleted
/// [`MAX_DELETES_IN_FLIGHT`] at a time.
async fn delete_prefix(client: &Client, prefix: Vec<u8>, out: WriteOut) -> Result<ExitCode, String> {
    let mut deleted = 0_u64;
    let mut deletes = std::pin::pin!(
        client
            .scan(prefix_bounds(prefix.clone()))
            .stream()
            .map_ok(|kv| {
                let client = client.clone();
                async move { client.delete(kv.key).await }
            })
            .try_buffer_unordered(MAX_DELETES_IN_FLIGHT)
    );
    while let Some(result) = deletes.next().await {
        match result {
            Ok(result) => deleted += u64::from(result.existed),
            Err(err) => {
                return Err(format!(
                    "{err} (after deleting {deleted} keys with prefix {}; the others may or may not be deleted)",
                    printable(&prefix)
                ));
            }
        }
    }
    let fields = json!({"deleted": deleted, "prefix": printable(&prefix)});
    match out {
        WriteOut::Json => print_json(&fields),
        WriteOut::Table => print_record(&fields),
        WriteOut::Simple => println!("deleted {deleted} keys"),
    }
    Ok(ExitCode::SUCCESS)
}

async fn connect(cli: &Cli) -> Result<Client, String> {
    let deadline = cli.deadline();
    let tls = match &cli.cacert {
        Some(ca) => Some(
            geokv_client::ClientTls::from_files(ca, cli.cert.as_deref().zip(cli.key_file.as_deref()))
                .map_err(|e| e.to_string())?,
        ),
        None if cli.cert.is_some() => {
            return Err("--cert needs --cacert (the CA the nodes' certificates chain to)".into());
        }
        None => None,
    };
    let config = ClientConfig::new(cli.endpoints.iter().map(|e| e.trim().to_string()))
        .deadline(deadline)
        .rpc_timeout(deadline.min(RPC_TIMEOUT_MAX))
        .local_address(cli.source_ip)
        .region(cli.region.clone())
        .tls(tls)
        .token(cli.token.clone());
    match config.connect().await {
        Ok(client) => Ok(client),
        Err(Error::Unavailable { cause, .. }) => Err(format!("{cause}; {START_CLUSTER_HINT}")),
        Err(err) => Err(err.to_string()),
    }
}

/// `kvctl user ...`.
async fn user(client: &Client, command: UserCommand, out: WriteOut, hex: bool) -> Result<ExitCode, String> {
    let prefix_of =
        |prefix: Option<String>| prefix.map(|p| parse_arg(&p, hex)).transpose().map(Option::unwrap_or_default);
    let show_prefix =
        |p: &[u8]| if p.is_empty() { "(every key)".to_string() } else { String::from_utf8_lossy(p).into_owned() };
    match command {
        UserCommand::Add { name, role, prefix, certificate_only } => {
            let grants = match role {
                Some(role) => vec![geokv_client::Grant::new(role, prefix_of(prefix)?)],
                None => Vec::new(),
            };
            let token = client.add_user(&name, &grants, certificate_only).await.map_err(say)?;
            match out {
                WriteOut::Json => print_json(&json!({ "user": name, "token": token })),
                WriteOut::Table => print_record(&json!({ "user": name, "token": token })),
                WriteOut::Simple => match token {
                    Some(token) => {
                        println!("{token}");
                        eprintln!("user {name} added; the token above is shown this once (GEOKV_TOKEN=...)");
                    }
                    None => eprintln!("user {name} added; it authenticates with a client certificate for {name}"),
                },
            }
        }
        UserCommand::Remove { name } => {
            client.remove_user(&name).await.map_err(say)?;
            match out {
                WriteOut::Json => print_json(&json!({ "user": name, "removed": true })),
                _ => println!("user {name} removed"),
            }
        }
        UserCommand::Grant { name, role, prefix, revoke } => {
            let grant = geokv_client::Grant::new(role, prefix_of(prefix)?);
            let changed = client.grant(&name, &grant, revoke).await.map_err(say)?;
            let verb = if revoke { "revoked" } else { "granted" };
            match out {
                WriteOut::Json => {
                    print_json(&json!({ "user": name, "role": grant.role, "revoke": revoke, "changed": changed }))
                }
                _ if changed => println!("{verb} {} on {} to {name}", grant.role, show_prefix(&grant.prefix)),
                _ => println!(
                    "nothing to change: {name} {} {} on {}",
                    if revoke { "has no" } else { "already has" },
                    grant.role,
                    show_prefix(&grant.prefix)
                ),
            }
        }
        UserCommand::List => {
            let users = client.list_users().await.map_err(say)?;
            match out {
                WriteOut::Json => {
                    let rows: Vec<Value> = users
                        .iter()
                        .map(|u| {
                            let grants: Vec<Value> = u
                                .grants
                                .iter()
                                .map(|g| json!({ "role": g.role, "prefix": String::from_utf8_lossy(&g.prefix) }))
                                .collect();
                            json!({ "name": u.name, "grants": grants, "has_token": u.has_token })
                        })
                        .collect();
                    print_json(&Value::Array(rows));
                }
                _ => {
                    let rows: Vec<Vec<String>> = users
                        .iter()
                        .map(|u| {
                            let grants: Vec<String> =
                                u.grants.iter().map(|g| format!("{}:{}", g.role, show_prefix(&g.prefix))).collect();
                            vec![
                                u.name.clone(),
                                if u.has_token { "token" } else { "certificate" }.into(),
                                grants.join(", "),
                            ]
                        })
                        .collect();
                    Style::of(out).print(&["USER", "AUTH", "GRANTS"], &rows);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
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

/// Parses `shard create`'s RANGE: `START..END`, `START..` (unbounded) or
/// `..END` (from the first key); each end text, or hex with `--hex`.
/// Returns `[start, end)`, `None` being unbounded.
fn parse_range(text: &str, hex: bool) -> Result<(Vec<u8>, Option<Vec<u8>>), String> {
    const USAGE: &str = "give RANGE as START..END, or START.. for everything from START on (e.g. 'session/..u')";
    let Some((start, end)) = text.split_once("..") else {
        return Err(format!("{text:?} is not a range: {USAGE}"));
    };
    if text.match_indices("..").count() > 1 || text.contains("...") {
        return Err(format!(
            "{text:?} is ambiguous: it has more than one \"..\", so it is unclear where START ends; {USAGE}, and use --hex for keys that contain \"..\""
        ));
    }
    let start = parse_arg(start, hex).map_err(|err| format!("START of {text:?}: {err}"))?;
    let end = match end {
        "" => None,
        end => Some(parse_arg(end, hex).map_err(|err| format!("END of {text:?}: {err}"))?),
    };
    if let Some(end) = &end
        && *end <= start
    {
        return Err(format!("{text:?} is an empty range: END must sort after START (keys compare bytewise)"));
    }
    Ok((start, end))
}

/// `[start, end)` with `-inf` and `+inf` for the open ends.
fn format_bounds(start: &[u8], end: Option<&[u8]>) -> String {
    let start = if start.is_empty() { "-inf".into() } else { printable(start) };
    let end = end.map_or_else(|| "+inf".into(), printable);
    format!("[{start}, {end})")
}

fn describe_created(created: &CreatedShard, mode: ShardMode, start: &[u8], end: Option<&[u8]>) -> String {
    let range = format_bounds(start, end);
    match (created.parent_shard_id, created.parent_epoch) {
        (Some(parent), Some(epoch)) => format!(
            "created {mode} shard {} for {range} (carved from shard {parent}, now at epoch {epoch}); map version {}",
            created.shard_id, created.map_version
        ),
        _ => format!(
            "{mode} shard {} for {range} already existed (an earlier attempt or request created it); map version {}",
            created.shard_id, created.map_version
        ),
    }
}

fn created_json(created: &CreatedShard, mode: ShardMode, start: &[u8], end: Option<&[u8]>) -> Value {
    json!({
        "created": !created.already_existed(),
        "shard_id": created.shard_id,
        "mode": mode,
        "start": printable(start),
        "end": end.map(printable),
        "parent_shard_id": created.parent_shard_id,
        "parent_epoch": created.parent_epoch,
        "map_version": created.map_version,
    })
}

async fn get(
    client: &Client,
    key: Vec<u8>,
    consistency: Consistency,
    verbose: bool,
    keys_only: bool,
    out: WriteOut,
) -> Result<ExitCode, String> {
    let read = client.get_with(&key, consistency).await.map_err(say)?;
    let Some(kv) = &read.kv else {
        eprintln!("not found: {}", printable(&key));
        if verbose {
            eprintln!("{}", describe_read(&read.info));
        }
        return Ok(ExitCode::from(EXIT_NOT_FOUND));
    };
    let stamp = stamp_of(kv.version, kv.hlc, kv.origin);
    match out {
        WriteOut::Json => {
            let mut fields = json!({"found": true, "key": printable(&key), "version": kv.version});
            if !keys_only {
                fields["value"] = json!(printable(&kv.value));
            }
            if kv.hlc.is_some() || kv.origin.is_some() {
                fields["hlc"] = json!(kv.hlc);
                fields["origin"] = json!(kv.origin);
            }
            merge(&mut fields, read_info_json(&read.info));
            print_json(&fields);
        }
        WriteOut::Table => {
            let staleness = read.info.staleness_bound_ms.map_or_else(|| "unknown".into(), |ms| format!("{ms}ms"));
            let mut headers = vec!["KEY", "VALUE", "VERSION", "SERVED", "NODE", "REGION", "STALENESS-BOUND"];
            let mut row = vec![
                printable(&key).into_owned(),
                printable(&kv.value).into_owned(),
                kv.hlc.filter(|_| kv.version == 0).map_or_else(|| kv.version.to_string(), |hlc| hlc.to_string()),
                read.info.served.to_string(),
                read.info.node_id.to_string(),
                read.info.region.clone(),
                staleness,
            ];
            if keys_only {
                headers.remove(1);
                row.remove(1);
            }
            Style::Bordered.print(&headers, &[row]);
        }
        WriteOut::Simple => {
            if keys_only {
                println!("{}", printable(&key));
            } else {
                println!("{}", printable(&kv.value));
            }
            if verbose {
                println!("{stamp} {}", describe_read(&read.info));
            } else if read.info.served.is_eventual() {
                // Keep stdout the bare value for scripts; say what kind of read it was.
                eprintln!("served: eventual {stamp} node={} region={}", read.info.node_id, read.info.region);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `version=N` for a Raft value, `hlc=T origin=N` for an eventual one.
fn stamp_of(version: u64, hlc: Option<Hlc>, origin: Option<u64>) -> String {
    match (hlc, origin) {
        (None, None) => format!("version={version}"),
        (hlc, origin) => {
            let hlc = hlc.map_or_else(|| "-".into(), |hlc| hlc.to_string());
            let origin = origin.map_or_else(|| "-".into(), |origin| origin.to_string());
            format!("hlc={hlc} origin={origin}")
        }
    }
}

/// `eventual (acked by node N at HLC T)`.
fn describe_eventual_write(hlc: Option<Hlc>, origin: Option<u64>) -> String {
    let node = origin.or(hlc.map(|hlc| hlc.node_id)).map_or_else(|| "?".into(), |node| node.to_string());
    let hlc = hlc.map_or_else(|| "?".into(), |hlc| hlc.to_string());
    format!("eventual (acked by node {node} at HLC {hlc})")
}

fn eventual_write_json(eventual: bool, hlc: Option<Hlc>, origin: Option<u64>) -> Value {
    if eventual { json!({"eventual": true, "hlc": hlc, "origin": origin}) } else { json!({"eventual": false}) }
}

fn describe_read(info: &ReadInfo) -> String {
    let staleness = match info.staleness_bound_ms {
        Some(ms) => format!("{ms}ms"),
        None => "unknown".into(),
    };
    let fell_back = if info.fell_back { " (fell back)" } else { "" };
    if info.served.is_eventual() {
        let weaker = if info.weaker_than_requested { " (weaker than requested)" } else { "" };
        return format!(
            "served=eventual{weaker} node={} region={} staleness_bound={staleness}",
            info.node_id, info.region
        );
    }
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
        "weaker_than_requested": info.weaker_than_requested,
    })
}

async fn cas(
    client: &Client,
    key: Vec<u8>,
    expect: Expect,
    new_value: Option<Vec<u8>>,
    out: WriteOut,
) -> Result<ExitCode, String> {
    let result = client.cas(&key, expect, new_value).await.map_err(say)?;
    let fields = json!({
        "swapped": result.swapped,
        "version": result.version,
        "current": result.current.as_ref().map(versioned_json),
        "shard_id": result.shard_id,
    });
    if out == WriteOut::Json {
        print_json(&fields);
    } else if out == WriteOut::Table {
        print_record(&fields);
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
    let mut out = json!({"value": printable(&versioned.value), "version": versioned.version});
    if versioned.hlc.is_some() || versioned.origin.is_some() {
        out["hlc"] = json!(versioned.hlc);
        out["origin"] = json!(versioned.origin);
    }
    out
}

/// How `get --prefix` and `scan` print a range.
struct Listing {
    limit: Option<usize>,
    consistency: Consistency,
    keys_only: bool,
    out: WriteOut,
    /// `-w simple` prints etcdctl's lines (KEY, VALUE, KEY, ...), streamed
    /// page by page, rather than aligned columns.
    simple_lines: bool,
}

async fn list(client: &Client, bounds: geokv_client::ScanBounds, listing: Listing) -> Result<ExitCode, String> {
    let mut scan = client.scan(bounds).consistency(listing.consistency);
    if let Some(limit) = listing.limit {
        scan = scan.limit(limit);
    }
    if listing.out == WriteOut::Simple && listing.simple_lines {
        let mut pairs = std::pin::pin!(scan.stream());
        while let Some(kv) = pairs.try_next().await.map_err(say)? {
            println!("{}", printable(&kv.key));
            if !listing.keys_only {
                println!("{}", printable(&kv.value));
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let kvs = scan.await.map_err(say)?;
    if listing.out == WriteOut::Json {
        let rows: Vec<Value> = kvs
            .iter()
            .map(|kv| {
                let mut row = json!({"key": printable(&kv.key), "version": kv.version});
                if !listing.keys_only {
                    row["value"] = json!(printable(&kv.value));
                }
                if kv.hlc.is_some() || kv.origin.is_some() {
                    row["hlc"] = json!(kv.hlc);
                    row["origin"] = json!(kv.origin);
                }
                row
            })
            .collect();
        print_json(&Value::Array(rows));
        return Ok(ExitCode::SUCCESS);
    }
    if kvs.is_empty() {
        if !listing.simple_lines {
            println!("(no keys)");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = kvs
        .iter()
        .map(|kv| {
            let key = printable(&kv.key).into_owned();
            if listing.keys_only {
                return vec![key];
            }
            let version = match kv.hlc {
                Some(hlc) if kv.version == 0 => hlc.to_string(),
                _ => kv.version.to_string(),
            };
            vec![key, printable(&kv.value).into_owned(), version]
        })
        .collect();
    let headers: &[&str] = if listing.keys_only { &["KEY"] } else { &["KEY", "VALUE", "VERSION"] };
    Style::of(listing.out).print(headers, &rows);
    Ok(ExitCode::SUCCESS)
}

async fn status(client: &Client, out: WriteOut) -> Result<ExitCode, String> {
    let cluster = client.cluster_status().await.map_err(say)?;
    let shards = cluster.shards();
    let degraded = shards.iter().any(ShardHealth::is_degraded);
    if out == WriteOut::Json {
        print_json(&status_json(&cluster));
    } else {
        print_status(&cluster, Style::of(out));
    }
    Ok(if degraded { ExitCode::from(EXIT_DEGRADED) } else { ExitCode::SUCCESS })
}

/// One JSON object per member for `node list`: `id`, `region`, `address`,
/// `state` (joining / up / starting / draining / removing / removed /
/// down), `replicas` (shards the map places there),
/// `leaders` (groups it reports leading, the meta shard included; null when
/// down).
fn node_list(cluster: &ClusterStatus) -> Vec<Value> {
    cluster
        .nodes
        .iter()
        .map(|report| {
            let id = report.node.node_id;
            let replicas = cluster.map.shards.iter().filter(|s| s.is_placed_on(id)).count();
            let (answered, leaders) = match &report.status {
                Ok(status) => {
                    let leaders = status.groups.iter().filter(|g| g.role == geokv_client::Role::Leader).count();
                    (if status.ready { "up" } else { "starting" }, json!(leaders))
                }
                Err(_) => ("down", Value::Null),
            };
            let state = match report.node.state {
                NodeState::Up => answered,
                recorded => recorded.as_str(),
            };
            json!({
                "id": id,
                "region": report.node.region,
                "address": report.node.addr,
                "state": state,
                "reachable": report.status.is_ok(),
                "replicas": replicas,
                "leaders": leaders,
            })
        })
        .collect()
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
                    let decisions: serde_json::Map<String, Value> =
                        status.topology_decisions.iter().map(|(kind, n)| (kind.clone(), json!(n))).collect();
                    node["topology_decisions"] = Value::Object(decisions);
                    let stopped: serde_json::Map<String, Value> = status
                        .groups
                        .iter()
                        .filter_map(|g| Some((g.shard_id.to_string(), json!(g.error.as_ref()?))))
                        .collect();
                    node["stopped_groups"] = Value::Object(stopped);
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
            shard["degraded"] = json!(health.is_degraded());
            if health.mode() == ShardMode::Eventual {
                shard["leader"] = Value::Null;
                shard["eventual"] = Value::Array(eventual_replicas_json(health));
                return shard;
            }
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

fn eventual_replicas_json(health: &ShardHealth) -> Vec<Value> {
    health
        .replicas
        .iter()
        .map(|replica| {
            let group = &replica.group;
            let peers: Vec<Value> = group
                .ec_peers
                .iter()
                .map(|peer| {
                    json!({
                        "node_id": peer.node_id,
                        "acked_seq": peer.acked_seq,
                        "lag_entries": peer.lag_entries,
                        "lag_ms": peer.lag_ms,
                        "resyncing": peer.resyncing,
                    })
                })
                .collect();
            json!({
                "node_id": replica.node.node_id,
                "region": replica.node.region,
                "role": group.role.as_str(),
                "last_seq": group.ec_last_seq,
                "outbox_depth": group.ec_outbox_depth,
                "tombstones": group.ec_tombstones,
                "peers": peers,
            })
        })
        .collect()
}

/// Each peer's lag behind a replica: `node:entries/ms`, `*` while resyncing.
fn format_peer_lags(group: &geokv_client::GroupStatus) -> String {
    if group.ec_peers.is_empty() {
        return "-".into();
    }
    let lags: Vec<String> = group
        .ec_peers
        .iter()
        .map(|peer| {
            let resyncing = if peer.resyncing { "*" } else { "" };
            format!("{}:{}/{}ms{resyncing}", peer.node_id, peer.lag_entries, peer.lag_ms)
        })
        .collect();
    lags.join(" ")
}

fn print_status(cluster: &ClusterStatus, style: Style) {
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
    style.print(&["ID", "ADDR", "REGION/ZONE", "REACHABLE", "READY", "UPTIME"], &node_rows);
    let shards = cluster.shards();
    let shard_rows: Vec<Vec<String>> = shards
        .iter()
        .map(|health| {
            let shard = &health.shard;
            let mut row =
                vec![shard.shard_id.to_string(), format_range(shard), shard.epoch.to_string(), shard.mode.to_string()];
            if shard.mode == ShardMode::Eventual {
                let answered = format!("- ({}/{} replicas answer)", health.replicas_reporting, shard.replicas.len());
                row.extend([answered, "-".into(), "-".into(), "-".into()]);
                return row;
            }
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
    style.print(&["SHARD", "RANGE", "EPOCH", "MODE", "LEADER", "TERM", "APPLIED", "COMMITTED"], &shard_rows);
    let eventual_rows: Vec<Vec<String>> = shards
        .iter()
        .filter(|health| health.mode() == ShardMode::Eventual)
        .flat_map(|health| {
            health.replicas.iter().map(|replica| {
                let group = &replica.group;
                vec![
                    health.shard.shard_id.to_string(),
                    format!("{}@{}", replica.node.node_id, replica.node.region),
                    group.role.to_string(),
                    group.ec_last_seq.to_string(),
                    group.ec_outbox_depth.to_string(),
                    group.ec_tombstones.to_string(),
                    format_peer_lags(group),
                ]
            })
        })
        .collect();
    if !eventual_rows.is_empty() {
        println!();
        println!("Eventual replication (PEER-LAG: node:entries/ms behind this replica, * resyncing):");
        style.print(&["SHARD", "REPLICA", "ROLE", "LAST-SEQ", "OUTBOX", "TOMBSTONES", "PEER-LAG"], &eventual_rows);
    }
    let decided: Vec<String> = cluster
        .nodes
        .iter()
        .filter_map(|report| {
            let status = report.status.as_ref().ok()?;
            let counts: Vec<String> = status.topology_decisions.iter().map(|(k, n)| format!("{k} {n}")).collect();
            (!counts.is_empty()).then(|| format!("  node {}: {}", report.node.node_id, counts.join(", ")))
        })
        .collect();
    if !decided.is_empty() {
        println!();
        println!(
            "Topology decisions (by the meta shard's leader, counted since each node started; logged with reasons):"
        );
        for line in decided {
            println!("{line}");
        }
    }
    let stopped: Vec<String> = cluster
        .nodes
        .iter()
        .filter_map(|report| Some((report.node.node_id, report.status.as_ref().ok()?)))
        .flat_map(|(node, status)| {
            status.groups.iter().filter_map(move |g| {
                g.error.as_ref().map(|why| format!("  shard {} on node {node}: {why}", g.shard_id))
            })
        })
        .collect();
    if !stopped.is_empty() {
        println!();
        println!("Stopped groups (the shard runs on its other replicas; move the replica away or restore the node):");
        for line in stopped {
            println!("{line}");
        }
    }
    for report in cluster.unreachable() {
        if let Err(err) = &report.status {
            eprintln!("warning: node {} ({}) did not answer: {err}", report.node.node_id, report.node.addr);
        }
    }
    let degraded_ids = |mode: ShardMode| -> Vec<String> {
        shards
            .iter()
            .filter(|health| health.mode() == mode && health.is_degraded())
            .map(|health| health.shard.shard_id.to_string())
            .collect()
    };
    let unreachable_eventual = degraded_ids(ShardMode::Eventual);
    if !unreachable_eventual.is_empty() {
        eprintln!(
            "warning: eventual shard(s) {} have no reachable replica: their keys cannot be read or written until one answers",
            unreachable_eventual.join(",")
        );
    }
    let leaderless = degraded_ids(ShardMode::Raft);
    if !leaderless.is_empty() {
        eprintln!(
            "warning: shard(s) {} have no reachable leader: an election may be running or a quorum is down; retry in a few seconds",
            leaderless.join(",")
        );
    }
}

fn print_shard_map(map: &ShardMap, out: WriteOut) {
    let style = Style::of(out);
    if out == WriteOut::Json {
        let nodes: Vec<Value> = map
            .nodes
            .iter()
            .map(|node| {
                json!({
                    "node_id": node.node_id,
                    "addr": node.addr,
                    "region": node.region,
                    "zone": node.zone,
                    "state": node.state.as_str(),
                })
            })
            .collect();
        let shards: Vec<Value> = map.shards.iter().map(shard_json).collect();
        print_json(&json!({"version": map.version, "nodes": nodes, "shards": shards}));
        return;
    }
    println!("Shard map version {}", map.version);
    let node_rows: Vec<Vec<String>> = map
        .nodes
        .iter()
        .map(|node| {
            vec![
                node.node_id.to_string(),
                node.addr.clone(),
                region_zone(&node.region, &node.zone),
                node.state.as_str().to_string(),
            ]
        })
        .collect();
    println!();
    println!("Nodes:");
    style.print(&["ID", "ADDR", "REGION/ZONE", "STATE"], &node_rows);
    let shard_rows: Vec<Vec<String>> = map
        .shards
        .iter()
        .map(|shard| {
            let replicas: Vec<String> =
                shard.replicas.iter().map(|replica| format!("{}@{}", replica.node_id, replica.region)).collect();
            vec![
                shard.shard_id.to_string(),
                format_range(shard),
                shard.epoch.to_string(),
                shard.mode.to_string(),
                replicas.join(","),
                format_change(shard),
            ]
        })
        .collect();
    println!();
    println!("Shards:");
    style.print(&["SHARD", "RANGE", "EPOCH", "MODE", "REPLICAS", "CHANGE"], &shard_rows);
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
        "mode": shard.mode,
        "replicas": replicas,
        "adding_node": shard.adding_node,
        "removing_node": shard.removing_node,
        "merging_with": shard.merging_with,
        "merge_frozen": shard.merge_frozen,
    })
}

/// A change under way, for `kvctl shards`: a replica change ("1->4", "+4",
/// "-1"), a merge ("merge 3", "merge 3 frozen"), both, or "-".
fn format_change(shard: &Shard) -> String {
    let replicas = match (shard.removing_node, shard.adding_node) {
        (Some(from), Some(to)) => Some(format!("{from}->{to}")),
        (None, Some(to)) => Some(format!("+{to}")),
        (Some(from), None) => Some(format!("-{from}")),
        (None, None) => None,
    };
    let merge =
        shard.merging_with.map(|r| if shard.merge_frozen { format!("merge {r} frozen") } else { format!("merge {r}") });
    match (replicas, merge) {
        (Some(r), Some(m)) => format!("{r}, {m}"),
        (Some(one), None) | (None, Some(one)) => one,
        (None, None) => "-".into(),
    }
}

/// A write in a conflict: its HLC, plus ` via N` when the accepting replica
/// is not the HLC's node.
fn format_stamp(hlc: Hlc, origin: u64) -> String {
    if origin == 0 || origin == hlc.node_id { hlc.to_string() } else { format!("{hlc} via {origin}") }
}

fn conflict_row(conflict: &Conflict) -> Vec<String> {
    let lost = match (&conflict.loser_value, conflict.loser_deleted) {
        (_, true) => "<delete>".to_string(),
        (Some(value), false) => printable(value).into_owned(),
        (None, false) => "(value not kept)".to_string(),
    };
    let winner_deleted = if conflict.winner_deleted { " <delete>" } else { "" };
    let recorded_by: Vec<String> = conflict.recorded_by.iter().map(u64::to_string).collect();
    vec![
        conflict.shard_id.to_string(),
        printable(&conflict.key).into_owned(),
        format!("{} {lost}", format_stamp(conflict.loser_hlc, conflict.loser_origin)),
        format!("{}{winner_deleted}", format_stamp(conflict.winner_hlc, conflict.winner_origin)),
        recorded_by.join(","),
        utc_millis(conflict.recorded_at_ms),
    ]
}

fn print_conflicts(report: &ConflictReport, style: Style) {
    if report.conflicts.is_empty() {
        println!("(no conflicts)");
    } else {
        let rows: Vec<Vec<String>> = report.conflicts.iter().map(conflict_row).collect();
        style.print(&["SHARD", "KEY", "LOSER", "WINNER", "RECORDED-BY", "AT"], &rows);
    }
    if report.truncated {
        eprintln!("note: more conflicts were recorded than --limit shows; raise --limit or pick a --shard");
    }
    for node in &report.nodes {
        match &node.log {
            Ok(log) if log.overflowed() => eprintln!(
                "note: node {} recorded {} conflicts but keeps the newest {} (eventual.conflict_log_entries); older ones are gone from its log",
                node.node.node_id, log.total_recorded, log.capacity
            ),
            Ok(_) => {}
            Err(err) => eprintln!(
                "warning: node {} ({}) did not answer: {err}; conflicts only it recorded are missing",
                node.node.node_id, node.node.addr
            ),
        }
    }
}

fn conflicts_json(report: &ConflictReport) -> Value {
    let conflicts: Vec<Value> = report
        .conflicts
        .iter()
        .map(|conflict| {
            json!({
                "shard_id": conflict.shard_id,
                "key": printable(&conflict.key),
                "loser": {
                    "hlc": conflict.loser_hlc,
                    "origin": conflict.loser_origin,
                    "deleted": conflict.loser_deleted,
                    "value": conflict.loser_value.as_deref().map(printable),
                },
                "winner": {
                    "hlc": conflict.winner_hlc,
                    "origin": conflict.winner_origin,
                    "deleted": conflict.winner_deleted,
                },
                "recorded_by": conflict.recorded_by,
                "recorded_at_ms": conflict.recorded_at_ms,
            })
        })
        .collect();
    let nodes: Vec<Value> = report
        .nodes
        .iter()
        .map(|node| {
            let mut out = json!({"node_id": node.node.node_id, "addr": node.node.addr, "reachable": node.log.is_ok()});
            match &node.log {
                Ok(log) => merge(
                    &mut out,
                    json!({"returned": log.returned, "total_recorded": log.total_recorded, "capacity": log.capacity}),
                ),
                Err(err) => out["error"] = json!(err.to_string()),
            }
            out
        })
        .collect();
    json!({"conflicts": conflicts, "truncated": report.truncated, "nodes": nodes})
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

/// Every cell in a box, etcdctl's `-w table` look:
/// `+-----+` borders, a header row, `| cell |` rows.
fn format_bordered(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let rule: String = widths.iter().map(|w| format!("+{}", "-".repeat(w + 2))).collect::<String>() + "+\n";
    let line = |cells: &mut dyn Iterator<Item = &str>| -> String {
        let mut out = String::new();
        for (cell, width) in cells.zip(&widths) {
            out.push_str(&format!("| {cell}{} ", " ".repeat(width - cell.chars().count())));
        }
        out + "|\n"
    };
    let mut out = rule.clone();
    out.push_str(&line(&mut headers.iter().copied()));
    out.push_str(&rule);
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    if !rows.is_empty() {
        out.push_str(&rule);
    }
    out
}

/// How lists are drawn: `-w simple` aligns columns, `-w table` boxes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    Aligned,
    Bordered,
}

impl Style {
    fn of(out: WriteOut) -> Style {
        if out == WriteOut::Table { Style::Bordered } else { Style::Aligned }
    }

    fn print(self, headers: &[&str], rows: &[Vec<String>]) {
        match self {
            Style::Aligned => print!("{}", format_table(headers, rows)),
            Style::Bordered => print!("{}", format_bordered(headers, rows)),
        }
    }
}

/// A JSON object's fields as a one-row bordered table (`-w table` for the
/// commands that answer with one record): FIELD-NAME headers, values as text.
fn print_record(fields: &Value) {
    let Value::Object(fields) = fields else { return print_json(fields) };
    let headers: Vec<String> = fields.keys().map(|k| k.to_uppercase().replace('_', "-")).collect();
    let row: Vec<String> = fields
        .values()
        .map(|v| match v {
            Value::String(text) => text.clone(),
            Value::Null => "-".into(),
            other => other.to_string(),
        })
        .collect();
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    Style::Bordered.print(&headers, &[row]);
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
    fn write_out_and_timeouts() {
        let parse = |args: &[&str]| Cli::try_parse_from(std::iter::once("kvctl").chain(args.iter().copied()));
        assert_eq!(parse(&["status"]).unwrap().write_out(), WriteOut::Simple);
        assert_eq!(parse(&["-w", "table", "status"]).unwrap().write_out(), WriteOut::Table);
        assert_eq!(parse(&["status", "--write-out", "json"]).unwrap().write_out(), WriteOut::Json);
        assert_eq!(parse(&["-w", "table", "--json", "status"]).unwrap().write_out(), WriteOut::Json);
        assert_eq!(parse(&["status"]).unwrap().deadline(), Duration::from_secs(10));
        assert_eq!(parse(&["--timeout", "1m30s", "status"]).unwrap().deadline(), Duration::from_secs(90));
        assert_eq!(
            parse(&["--timeout", "3s", "--timeout-ms", "250", "status"]).unwrap().deadline(),
            Duration::from_millis(250)
        );
        assert_eq!(parse_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_timeout("500").unwrap_err().contains("e.g. 500ms"));
        assert!(parse_timeout("0ms").unwrap_err().contains("zero"));
    }

    #[test]
    fn prefixes_become_ranges() {
        let bounds = |prefix: &[u8]| {
            let b = prefix_bounds(prefix.to_vec());
            (b.start, b.end)
        };
        assert_eq!(bounds(b"app/"), (b"app/".to_vec(), Some(b"app0".to_vec())));
        assert_eq!(bounds(b"a\xff"), (b"a\xff".to_vec(), Some(b"b".to_vec())));
        assert_eq!(bounds(b"a\xfe\xff\xff"), (b"a\xfe\xff\xff".to_vec(), Some(b"a\xff".to_vec())));
        assert_eq!(bounds(b"\xff\xff"), (b"\xff\xff".to_vec(), None), "nothing sorts after every 0xff.. key");
        assert_eq!(bounds(b""), (Vec::new(), None), "the empty prefix is every key");
    }

    #[test]
    fn bordered_tables() {
        let rows = vec![vec!["a".to_string(), "1".to_string()], vec!["longer".to_string(), "22".to_string()]];
        assert_eq!(
            format_bordered(&["KEY", "VALUE"], &rows),
            "+--------+-------+\n| KEY    | VALUE |\n+--------+-------+\n| a      | 1     |\n| longer | 22    |\n+--------+-------+\n"
        );
        assert_eq!(format_bordered(&["KEY"], &[]), "+-----+\n| KEY |\n+-----+\n");
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
    fn eventual_writes_and_values_say_where_and_when() {
        let hlc = Hlc::new(1_732_245_600_123, 4, 2);
        assert_eq!(describe_eventual_write(Some(hlc), Some(2)), "eventual (acked by node 2 at HLC 1732245600123.4@2)");
        assert_eq!(stamp_of(7, None, None), "version=7");
        assert_eq!(stamp_of(0, Some(hlc), Some(2)), "hlc=1732245600123.4@2 origin=2");
        assert_eq!(eventual_write_json(false, None, None), json!({"eventual": false}));
        assert_eq!(
            eventual_write_json(true, Some(hlc), Some(2)),
            json!({"eventual": true, "hlc": "1732245600123.4@2", "origin": 2})
        );
    }

    #[test]
    fn requesting_eventual_explains_itself() {
        let parse = |args: &[&str]| Cli::try_parse_from(std::iter::once("kvctl").chain(args.iter().copied()));
        let err = parse(&["get", "k", "--consistency", "eventual"]).unwrap_err().to_string();
        assert!(err.contains("always served eventual") && err.contains("stale"), "{err}");
        assert!(parse(&["get", "k", "--consistency", "stale"]).is_ok());
    }

    #[test]
    fn conflicts_rows_and_help() {
        let conflict = Conflict {
            shard_id: 4,
            key: b"cart:42".to_vec(),
            loser_hlc: Hlc::new(1_732_245_600_123, 0, 1),
            loser_origin: 1,
            loser_deleted: false,
            loser_value: Some(b"apple".to_vec()),
            winner_hlc: Hlc::new(1_732_245_600_130, 2, 3),
            winner_origin: 2,
            winner_deleted: true,
            recorded_by: vec![1, 2, 3],
            recorded_at_ms: 1_732_245_601_000,
        };
        assert_eq!(
            conflict_row(&conflict),
            [
                "4",
                "cart:42",
                "1732245600123.0@1 apple",
                "1732245600130.2@3 via 2 <delete>",
                "1,2,3",
                "2024-11-22T03:20:01.000Z"
            ]
        );
        let deleted = Conflict { loser_deleted: true, loser_value: None, ..conflict };
        assert_eq!(conflict_row(&deleted)[2], "1732245600123.0@1 <delete>");

        let parse = |args: &[&str]| Cli::try_parse_from(std::iter::once("kvctl").chain(args.iter().copied()));
        let Command::Conflicts { shard, limit } =
            parse(&["conflicts", "--shard", "4", "--limit", "5"]).unwrap().command
        else {
            panic!("not conflicts");
        };
        assert_eq!((shard, limit), (Some(4), 5));
        let mut command = Cli::command();
        let help = command.find_subcommand_mut("conflicts").unwrap().render_long_help().to_string();
        for needle in ["acknowledged", "last-writer-wins", "Only eventual shards", "eventual.conflict_log_entries"] {
            assert!(help.contains(needle), "conflicts --help lacks {needle:?}:\n{help}");
        }
        let top = Cli::command().render_long_help().to_string();
        assert!(top.contains("Eventual shards") && top.contains("cas and batches are refused"), "{top}");
    }

    #[test]
    fn shard_create_ranges_parse() {
        let text = |start: &str, end: Option<&str>| (start.as_bytes().to_vec(), end.map(|e| e.as_bytes().to_vec()));
        assert_eq!(parse_range("session/..session0", false), Ok(text("session/", Some("session0"))));
        assert_eq!(parse_range("tmp/..", false), Ok(text("tmp/", None)));
        assert_eq!(parse_range("..m", false), Ok(text("", Some("m"))));
        assert_eq!(parse_range("..", false), Ok(text("", None)));
        assert_eq!(parse_range("0x73..0x74", true), Ok((vec![0x73], Some(vec![0x74]))));
        assert_eq!(parse_range("0x2e2e..", true), Ok((b"..".to_vec(), None)), "hex for keys with dots");

        let err = parse_range("session/", false).unwrap_err();
        assert!(err.contains("is not a range") && err.contains("START..END"), "{err}");
        for ambiguous in ["a..b..c", "a...b"] {
            let err = parse_range(ambiguous, false).unwrap_err();
            assert!(err.contains("ambiguous") && err.contains("--hex"), "{err}");
        }
        for empty in ["b..a", "a..a"] {
            let err = parse_range(empty, false).unwrap_err();
            assert!(err.contains("empty range") && err.contains("END must sort after START"), "{err}");
        }
        let err = parse_range("0x73..t", true).unwrap_err();
        assert!(err.starts_with("END of") && err.contains("not hex"), "{err}");
    }

    #[test]
    fn shard_split_takes_a_shard_id_and_a_key() {
        let parse = |args: &[&str]| Cli::try_parse_from(std::iter::once("kvctl").chain(args.iter().copied()));
        let Command::Shard(ShardCommand::Split { shard, key }) = parse(&["shard", "split", "2", "h"]).unwrap().command
        else {
            panic!("not shard split");
        };
        assert_eq!((shard, key.as_str()), (2, "h"));
        assert!(parse(&["shard", "split", "two", "h"]).is_err(), "the shard is an id");
        assert!(parse(&["shard", "split", "2"]).is_err(), "the key is required");
    }

    #[test]
    fn shard_create_parses_the_mode_and_teaches_the_carve_rule() {
        let parse = |args: &[&str]| Cli::try_parse_from(std::iter::once("kvctl").chain(args.iter().copied()));
        let Command::Shard(ShardCommand::Create { mode, range }) =
            parse(&["shard", "create", "--mode", "eventual", "a..b"]).unwrap().command
        else {
            panic!("not shard create");
        };
        assert_eq!((mode, range.as_str()), (ModeArg::Eventual, "a..b"));
        assert!(parse(&["shard", "create", "--mode", "raft", "a..b"]).is_ok(), "raft parses; the server refuses it");
        assert!(parse(&["shard", "create", "a..b"]).is_err(), "--mode is required");
        let err = parse(&["shard", "create", "--mode", "lww", "a..b"]).unwrap_err().to_string();
        assert!(err.contains("eventual") && err.contains("raft"), "{err}");

        let mut command = Cli::command();
        let help = command
            .find_subcommand_mut("shard")
            .and_then(|shard| shard.find_subcommand_mut("create"))
            .unwrap()
            .render_long_help()
            .to_string();
        for needle in [
            "begin or end exactly",
            "hold no keys",
            "same replicas",
            "acknowledged by",
            "the local replica",
            "Compare-and-swap and batches on its keys are refused",
            "--mode raft parses",
            "kvctl shard create --mode eventual 'session/..u'",
            "START..",
        ] {
            assert!(help.contains(needle), "shard create --help lacks {needle:?}:\n{help}");
        }
        let top = Cli::command().render_long_help().to_string();
        assert!(top.contains("shard create") && top.contains("kvctl shard create --mode eventual"), "{top}");
    }

    #[test]
    fn created_shards_are_described() {
        let created = CreatedShard { shard_id: 4, map_version: 9, parent_shard_id: Some(2), parent_epoch: Some(3) };
        assert_eq!(
            describe_created(&created, ShardMode::Eventual, b"session/", Some(b"session0")),
            "created eventual shard 4 for [session/, session0) (carved from shard 2, now at epoch 3); map version 9"
        );
        let repeat = CreatedShard { parent_shard_id: None, parent_epoch: None, ..created };
        assert_eq!(
            describe_created(&repeat, ShardMode::Eventual, b"tmp/", None),
            "eventual shard 4 for [tmp/, +inf) already existed (an earlier attempt or request created it); map version 9"
        );
        assert_eq!(
            created_json(&repeat, ShardMode::Eventual, b"", Some(b"m")),
            json!({"created": false, "shard_id": 4, "mode": "eventual", "start": "", "end": "m",
                   "parent_shard_id": null, "parent_epoch": null, "map_version": 9})
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
            mode: ShardMode::Raft,
            adding_node: None,
            removing_node: None,
            merging_with: None,
            merge_frozen: false,
        };
        assert_eq!(format_range(&shard("", "")), "-inf..+inf");
        assert_eq!(format_range(&shard("g", "p")), "g..p");
        assert_eq!(format_uptime(59_999), "59s");
        assert_eq!(format_uptime(61_000), "1m1s");
        assert_eq!(format_uptime(7_260_000), "2h1m");
    }
}
