//! Workloads: what each client process asks, and how each request becomes
//! an `invoke` and exactly one completion in the history.
//!
//! # Generators
//!
//! Each client *slot* has its own seeded generator, so the same seed gives
//! every slot the same sequence of operations — kinds, keys and values —
//! whatever the cluster answers. (Which slot runs first, and so the
//! interleaving, is the cluster's timing.) Values are unique per run: slot
//! `s` writes `s * 1_000_000 + n` for its `n`-th operation.
//!
//! - **register**: read / write / CAS on per-group keys `r<group>-<epoch>`.
//!   Slots are split into groups of at most [`MAX_PROCESSES_PER_KEY`]; a
//!   group's key rotates after about [`OPS_PER_KEY`] operations, so no key's
//!   search grows large. In a run the group's slots count their operations
//!   together ([`Generator::with_group_counter`]), so they all work on the
//!   same key at the same time: a slot whose operations are fast (lease reads
//!   at its own region's leader) does not run ahead onto keys that slots in
//!   slower regions reach only later, where no write of theirs could show
//!   one of its reads stale. A CAS expects the value this slot last wrote on the
//!   key (or an absent key) and swaps in a fresh value. In eventual mode
//!   ([`Generator::without_cas`]) the CAS share becomes writes: eventual
//!   shards refuse CAS.
//! - **set**: `add e` puts key `set/<e>`; `read` scans the `set/` prefix.
//! - **bank**: [`ACCOUNTS`] accounts `bank/<i>` in one shard, starting at
//!   [`INITIAL_BALANCE`]. A transfer reads both balances and sends one batch
//!   that writes both, conditioned on the versions it read; `read` is one
//!   scan of the accounts.
//! - **append** (exactly-once): lists on per-group keys `l<group>-<epoch>`
//!   (at most [`MAX_APPENDERS_PER_LIST`] processes per key, rotating after
//!   about [`OPS_PER_LIST`] operations). `append e` reads the list
//!   (linearizable) and swaps in the list with `e` at its end, conditioned on
//!   the version it read; `read` reads the list at the run's level. Every
//!   element is unique, so a write applied twice shows as an element twice,
//!   and a retry answered by re-running the swap instead of by the session
//!   table shows as a `fail` (its condition no longer holds) whose element is
//!   in the list.
//!
//! # Outcomes
//!
//! Client retries are off by default (one RPC per operation), so an answer is
//! about that one attempt; with `--client-retries` the client library resends
//! within the operation's timeout (a write with the same sequence number, so
//! the server must apply it once: a double apply shows as a register value
//! coming back after a later write). A write refused before it could apply
//! ([`geokv_client::Error::Unavailable`], invalid argument, a failed
//! condition, a CAS or batch an eventual shard refused) is `fail`; one that may have applied (indeterminate, timed
//! out, anything else) is `info`, and the slot continues as a fresh
//! process. A read that does not answer is `fail`: reads change nothing.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use geokv_client::{Client, Consistency, Expect};
use geokv_proto::kv::kv_client::KvClient;
use geokv_proto::kv::{self as pb};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tonic::transport::Channel;

use super::nemesis::SeededRng;
use super::recorder::{CompletionMeta, Recorder};
use crate::history::{CAS_MISMATCH_ERROR, EventType};

/// At most this many processes share a register key.
pub const MAX_PROCESSES_PER_KEY: usize = 6;
/// A register group moves to a new key after about this many operations.
pub const OPS_PER_KEY: u64 = 180;
/// Most operations one slot may generate (values are `slot * 1e6 + n`).
pub const MAX_OPS_PER_SLOT: u64 = 999_999;
/// Bank accounts, all in one shard (keys `bank/0` ..).
pub const ACCOUNTS: usize = 5;
/// Each account's balance before the run.
pub const INITIAL_BALANCE: u64 = 100;
/// Largest single transfer.
pub const MAX_TRANSFER: u64 = 20;
/// Key prefix and scan range of the set workload.
pub const SET_PREFIX: &str = "set/";
pub const SET_END: &str = "set0";
/// Key prefix and scan range of the bank workload.
pub const BANK_PREFIX: &str = "bank/";
pub const BANK_END: &str = "bank0";
/// At most this many processes append to one list.
pub const MAX_APPENDERS_PER_LIST: usize = 3;
/// An append group moves to a new list after about this many operations.
pub const OPS_PER_LIST: u64 = 90;

/// Which workload a run drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    Register,
    Set,
    Bank,
    Append,
}

impl Workload {
    pub fn as_str(self) -> &'static str {
        match self {
            Workload::Register => "register",
            Workload::Set => "set",
            Workload::Bank => "bank",
            Workload::Append => "append",
        }
    }

    /// A key of the workload's shard that no operation touches: the runner
    /// writes it before the history starts, so the shard has a leader that
    /// takes writes (warm-up), and the nemesis aims at its shard.
    pub fn warmup_key(self) -> &'static str {
        match self {
            Workload::Register => "r-warmup",
            Workload::Set => "sd-warmup",
            Workload::Bank => "ba-warmup",
            Workload::Append => "l-warmup",
        }
    }

    /// The key range `[start, end)` given to the nodes as an eventual range
    /// in eventual mode: every key the workload touches, and its warm-up key.
    /// `None`: the workload cannot run on an eventual shard (bank transfers
    /// are conditional batches and appends compare-and-swaps, which eventual
    /// shards refuse).
    pub fn eventual_range(self) -> Option<(&'static str, &'static str)> {
        match self {
            // "r-warmup" and "r<group>-<epoch>" ('-' < '0'..'9' < ':').
            Workload::Register => Some(("r-", "r:")),
            // "sd-warmup" and "set/<e>".
            Workload::Set => Some(("sd-", SET_END)),
            Workload::Bank | Workload::Append => None,
        }
    }

    /// A key the workload's shard holds (to find the shard the nemesis aims at).
    pub fn sample_key(self) -> &'static str {
        match self {
            Workload::Register => "r0-0",
            Workload::Set => "set/0",
            Workload::Bank => "bank/0",
            Workload::Append => "l0-0",
        }
    }
}

/// One generated operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    RegisterRead {
        key: String,
    },
    RegisterWrite {
        key: String,
        value: u64,
    },
    /// `expected: None`: the key must be absent.
    RegisterCas {
        key: String,
        expected: Option<u64>,
        new: u64,
    },
    SetAdd {
        element: u64,
    },
    SetRead,
    BankTransfer {
        from: usize,
        to: usize,
        amount: u64,
    },
    BankRead,
    /// Append `element` to the list at `key` (read, then a conditional swap).
    Append {
        key: String,
        element: u64,
    },
    ListRead {
        key: String,
    },
}

/// The bank account key of account `i`.
pub fn account_key(i: usize) -> String {
    format!("{BANK_PREFIX}{i}")
}

/// The set key of element `e` (zero-padded so keys sort like numbers).
pub fn set_key(element: u64) -> String {
    format!("{SET_PREFIX}{element:016}")
}

/// One slot's seeded operation source.
///
/// Invariant: the `n`-th call to [`Generator::next_op`] depends only on the
/// seed, the workload, the slot, the number of clients and whether CAS is
/// generated ([`Generator::without_cas`]); with a group counter
/// ([`Generator::with_group_counter`]) the key's epoch instead follows the
/// operations the whole group has generated so far (the kinds and values
/// stay the slot's own).
pub struct Generator {
    workload: Workload,
    slot: usize,
    rng: SeededRng,
    generated: u64,
    group: usize,
    ops_per_slot_per_key: u64,
    /// Operations generated by every slot of this group, shared by them
    /// (with [`Generator::with_group_counter`]); epochs then rotate after
    /// `ops_per_slot_per_key * group_size` of them.
    group_counter: Option<(Arc<AtomicU64>, u64)>,
    /// Register key -> the value this slot last wrote there.
    last_written: HashMap<String, u64>,
    /// Whether register CAS operations are generated (eventual shards refuse
    /// them: without, the CAS share becomes writes).
    cas: bool,
}

impl Generator {
    pub fn new(workload: Workload, seed: u64, slot: usize, clients: usize) -> Generator {
        assert!(slot < clients, "slot {slot} of {clients} clients");
        let (per_key, ops_per_key) = match workload {
            Workload::Append => (MAX_APPENDERS_PER_LIST, OPS_PER_LIST),
            _ => (MAX_PROCESSES_PER_KEY, OPS_PER_KEY),
        };
        let groups = clients.div_ceil(per_key);
        let group_size = clients.div_ceil(groups);
        Generator {
            workload,
            slot,
            rng: SeededRng::derived(seed, slot as u64 + 1),
            generated: 0,
            group: slot / group_size,
            ops_per_slot_per_key: (ops_per_key / group_size as u64).max(1),
            group_counter: None,
            last_written: HashMap::new(),
            cas: true,
        }
    }

    /// The group this slot's keys belong to (register and append).
    pub fn group(&self) -> usize {
        self.group
    }

    /// The same generator, its key epochs counted over the operations of
    /// every slot given the same `counter` (one per [`Generator::group`]),
    /// of which there are `group_slots`: the group rotates keys together.
    pub fn with_group_counter(mut self, counter: Arc<AtomicU64>, group_slots: usize) -> Generator {
        self.group_counter = Some((counter, self.ops_per_slot_per_key * group_slots.max(1) as u64));
        self
    }

    /// The key epoch of the operation being generated.
    fn epoch(&self) -> u64 {
        match &self.group_counter {
            Some((counter, ops_per_key)) => counter.fetch_add(1, Ordering::Relaxed) / ops_per_key,
            None => (self.generated - 1) / self.ops_per_slot_per_key,
        }
    }

    /// The same generator with every register CAS turned into a write of the
    /// same fresh value (the random stream, keys and values stay as they are).
    pub fn without_cas(mut self) -> Generator {
        self.cas = false;
        self
    }

    fn unique(&self) -> u64 {
        self.slot as u64 * (MAX_OPS_PER_SLOT + 1) + self.generated
    }

    /// The next operation, or `None` once the slot has used up its values.
    pub fn next_op(&mut self) -> Option<Op> {
        if self.generated >= MAX_OPS_PER_SLOT {
            return None;
        }
        self.generated += 1;
        let roll = self.rng.between(0, 99);
        let op = match self.workload {
            Workload::Register => {
                let epoch = self.epoch();
                let key = format!("r{}-{epoch}", self.group);
                if roll < 50 {
                    Op::RegisterRead { key }
                } else if roll < 80 || !self.cas {
                    let value = self.unique();
                    self.last_written.insert(key.clone(), value);
                    Op::RegisterWrite { key, value }
                } else {
                    let new = self.unique();
                    let expected = self.last_written.insert(key.clone(), new);
                    Op::RegisterCas { key, expected, new }
                }
            }
            Workload::Set if roll < 80 => Op::SetAdd { element: self.unique() },
            Workload::Set => Op::SetRead,
            Workload::Bank if roll < 60 => {
                let from = self.rng.below(ACCOUNTS);
                let to = (from + 1 + self.rng.below(ACCOUNTS - 1)) % ACCOUNTS;
                Op::BankTransfer { from, to, amount: self.rng.between(1, MAX_TRANSFER) }
            }
            Workload::Bank => Op::BankRead,
            Workload::Append => {
                let epoch = self.epoch();
                let key = format!("l{}-{epoch}", self.group);
                if roll < 70 { Op::Append { key, element: self.unique() } } else { Op::ListRead { key } }
            }
        };
        Some(op)
    }
}

/// How a client process reaches the cluster.
#[derive(Clone)]
pub struct ProcessClient {
    /// Retries off (`max_attempts(1)`) unless the run asked for them.
    pub client: Client,
    /// The process's own region's node, dialled from the region's client IP:
    /// where stale register reads go (a stale read is meant to be served by
    /// the nearest replica; the client library would send it to the leader).
    pub home: KvClient<Channel>,
    pub region: String,
}

/// A channel to `addr` from `source`, connected lazily (TLS with `tls`).
pub fn home_channel(
    addr: &str,
    source: IpAddr,
    timeout: Duration,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> Result<KvClient<Channel>, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| format!("bad address {addr}: {e}"))?
        .connect_timeout(timeout)
        .local_address(Some(source))
        .tcp_nodelay(true);
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|e| format!("TLS to {addr}: {e}"))?;
    }
    Ok(KvClient::new(endpoint.connect_lazy()))
}

/// Settings shared by every operation.
#[derive(Clone, Copy, Debug)]
pub struct OpSettings {
    pub consistency: Consistency,
    /// An operation that takes longer is abandoned: `fail` for reads, `info`
    /// for writes.
    pub op_timeout: Duration,
    /// Eventual mode: every read and write goes to the process's own
    /// region's node over the raw Kv API (that replica accepts the write and
    /// serves the read locally), not through the client library's routing.
    pub eventual: bool,
    /// Unsafe, for the append workload's negative control: an append whose
    /// outcome is unknown is run again from its read (up to
    /// [`MAX_REDOS`] times within the op timeout), as a client without
    /// exactly-once sessions would; the last attempt's answer is recorded.
    pub unsafe_redo_unknown: bool,
}

/// Most extra attempts of one append with `unsafe_redo_unknown`.
pub const MAX_REDOS: u32 = 8;

/// Why an operation did not succeed.
#[derive(Debug)]
pub struct OpError {
    /// It definitely did not take effect (`fail`); else unknown (`info`,
    /// or `fail` for reads).
    pub definite: bool,
    pub message: String,
}

impl OpError {
    fn definite(message: impl Into<String>) -> OpError {
        OpError { definite: true, message: message.into() }
    }
}

/// Sorts a client error into did-not-happen vs. unknown.
pub fn classify(error: &geokv_client::Error) -> OpError {
    let definite = matches!(
        error,
        geokv_client::Error::Unavailable { .. }
            | geokv_client::Error::InvalidArgument(_)
            | geokv_client::Error::Config(_)
            | geokv_client::Error::EventualShard { .. }
    );
    OpError { definite, message: error.to_string() }
}

fn read_meta(info: &geokv_client::ReadInfo) -> CompletionMeta {
    CompletionMeta {
        node: Some(info.node_id.to_string()),
        region: Some(info.region.clone()),
        consistency: Some(info.served.as_str().to_string()),
        staleness_bound_ms: info.staleness_bound_ms,
        error: None,
    }
}

fn proto_read_meta(info: Option<&pb::ReadInfo>) -> CompletionMeta {
    let Some(info) = info else { return CompletionMeta::default() };
    let served = match pb::Consistency::try_from(info.served) {
        Ok(pb::Consistency::Linearizable) => "linearizable",
        Ok(pb::Consistency::Lease) => "lease",
        Ok(pb::Consistency::Stale) => "stale",
        Ok(pb::Consistency::Follower) => "follower",
        Ok(pb::Consistency::Bounded) => "bounded",
        Ok(pb::Consistency::Eventual) => "eventual",
        Err(_) => "other",
    };
    CompletionMeta {
        node: Some(info.node_id.to_string()),
        region: Some(info.region.clone()),
        consistency: Some(served.to_string()),
        staleness_bound_ms: (info.staleness_bound_ms != u64::MAX).then_some(info.staleness_bound_ms),
        error: None,
    }
}

/// The proto level (and bound) of a read at `consistency`.
fn pb_consistency(consistency: Consistency) -> (pb::Consistency, u64) {
    match consistency {
        Consistency::Linearizable => (pb::Consistency::Linearizable, 0),
        Consistency::Lease => (pb::Consistency::Lease, 0),
        Consistency::Follower => (pb::Consistency::Follower, 0),
        Consistency::Bounded { max_staleness_ms } => (pb::Consistency::Bounded, max_staleness_ms),
        Consistency::Stale => (pb::Consistency::Stale, 0),
    }
}

/// A request header that lets the node route by key.
fn any_shard() -> Option<pb::RequestHeader> {
    Some(pb::RequestHeader { shard_id: 0, epoch: 0 })
}

/// Sorts a raw write's error: refused before it could apply
/// (`FAILED_PRECONDITION`, `INVALID_ARGUMENT`, e.g. a CAS on an eventual
/// shard) is definite; anything else may have applied.
fn classify_status(status: &tonic::Status) -> OpError {
    let definite = matches!(status.code(), tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument);
    OpError { definite, message: format!("{}: {}", status.code(), status.message()) }
}

/// One key read from `node` over the raw Kv API (served where it lands).
pub async fn raw_get(
    node: &KvClient<Channel>,
    key: &str,
    consistency: Consistency,
    timeout: Duration,
) -> Result<pb::GetResponse, tonic::Status> {
    let (level, max_staleness_ms) = pb_consistency(consistency);
    let request = pb::GetRequest {
        header: any_shard(),
        key: key.as_bytes().to_vec(),
        consistency: level as i32,
        max_staleness_ms,
    };
    let mut request = tonic::Request::new(request);
    request.set_timeout(timeout);
    Ok(node.clone().get(request).await?.into_inner())
}

/// One put sent to `node` over the raw Kv API. On an eventual shard that
/// replica accepts it (no forwarding to a leader).
pub async fn raw_put(
    node: &KvClient<Channel>,
    key: &str,
    value: &str,
    timeout: Duration,
) -> Result<pb::WriteResponse, tonic::Status> {
    let request = pb::PutRequest {
        header: any_shard(),
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        ..Default::default()
    };
    let mut request = tonic::Request::new(request);
    request.set_timeout(timeout);
    Ok(node.clone().put(request).await?.into_inner())
}

/// Most pages one raw scan reads (a bound: the workloads' ranges are small).
pub const MAX_SCAN_PAGES: usize = 10_000;

/// Every pair in `[start, end)` as `node` serves it at `consistency`, page by
/// page (each RPC bounded by `timeout`), with the first page's read info.
pub async fn raw_scan(
    node: &KvClient<Channel>,
    start: &str,
    end: &str,
    consistency: Consistency,
    timeout: Duration,
) -> Result<(Vec<pb::KeyValue>, Option<pb::ReadInfo>), tonic::Status> {
    let (level, max_staleness_ms) = pb_consistency(consistency);
    let mut from = start.as_bytes().to_vec();
    let mut kvs = Vec::new();
    let mut info = None;
    for _ in 0..MAX_SCAN_PAGES {
        let request = pb::ScanRequest {
            header: any_shard(),
            start: from.clone(),
            end: end.as_bytes().to_vec(),
            consistency: level as i32,
            max_staleness_ms,
            ..Default::default()
        };
        let mut request = tonic::Request::new(request);
        request.set_timeout(timeout);
        let page = node.clone().scan(request).await?.into_inner();
        if info.is_none() {
            info = page.read;
        }
        kvs.extend(page.kvs);
        if !page.more || page.resume_key.is_empty() || page.resume_key.as_slice() >= end.as_bytes() {
            return Ok((kvs, info));
        }
        if page.resume_key <= from {
            return Err(tonic::Status::internal("a scan page did not move forward"));
        }
        from = page.resume_key;
    }
    Err(tonic::Status::internal(format!("the scan took more than {MAX_SCAN_PAGES} pages")))
}

/// What an eventual write's completion records: the replica that accepted
/// it (`origin`) and that it was accepted as eventual.
fn eventual_write_meta(reply: &pb::WriteResponse, region: &str) -> CompletionMeta {
    CompletionMeta {
        node: Some(reply.origin.to_string()),
        region: Some(region.to_string()),
        consistency: Some(if reply.eventual { "eventual" } else { "raft" }.to_string()),
        staleness_bound_ms: None,
        error: None,
    }
}

/// A register value as the history shows it: the number written, or the
/// raw text if it is not one (which the checker will then not explain).
fn register_value(bytes: &[u8]) -> Value {
    let text = String::from_utf8_lossy(bytes);
    text.parse::<u64>().map_or_else(|_| Value::String(text.into_owned()), Value::from)
}

/// What an invoke event says.
struct Invocation<'a> {
    process: u64,
    f: &'a str,
    key: &'a str,
    value: Value,
    /// Reads that do not answer are `fail`; writes are `info`.
    is_read: bool,
}

/// Records `invoke`, runs `call` within the op timeout, records its one
/// completion; returns the completion's type.
async fn record<Fut>(recorder: &Recorder, settings: &OpSettings, what: Invocation<'_>, call: Fut) -> EventType
where
    Fut: Future<Output = Result<(Value, CompletionMeta), OpError>>,
{
    let Invocation { process, f, key, value, is_read } = what;
    recorder.invoke(process, f, key, value.clone());
    let result = tokio::time::timeout(settings.op_timeout, call).await;
    let (kind, value, meta) = match result {
        Ok(Ok((done, meta))) => (EventType::Ok, done, meta),
        Ok(Err(e)) => {
            let kind = if e.definite || is_read { EventType::Fail } else { EventType::Info };
            (kind, value, CompletionMeta { error: Some(e.message), ..Default::default() })
        }
        Err(_) => {
            let kind = if is_read { EventType::Fail } else { EventType::Info };
            let message = format!("timed out after {:?}", settings.op_timeout);
            (kind, value, CompletionMeta { error: Some(message), ..Default::default() })
        }
    };
    let value = if is_read && kind != EventType::Ok { Value::Null } else { value };
    recorder.complete(process, kind, f, key, value, meta);
    kind
}

/// Runs one operation as `process` and records it; returns its completion type.
pub async fn execute(
    recorder: &Recorder,
    settings: &OpSettings,
    pc: &ProcessClient,
    process: u64,
    op: &Op,
) -> EventType {
    let client = &pc.client;
    let consistency = settings.consistency;
    match op {
        Op::RegisterRead { key } => {
            let call = async {
                if consistency == Consistency::Stale || settings.eventual {
                    let reply = raw_get(&pc.home, key, consistency, settings.op_timeout)
                        .await
                        .map_err(|s| OpError::definite(s.to_string()))?;
                    let value = reply.kv.map_or(Value::Null, |kv| register_value(&kv.value));
                    Ok((value, proto_read_meta(reply.read.as_ref())))
                } else {
                    let read = client.get_with(key, consistency).await.map_err(|e| classify(&e))?;
                    let value = read.kv.map_or(Value::Null, |kv| register_value(&kv.value));
                    Ok((value, read_meta(&read.info)))
                }
            };
            record(recorder, settings, Invocation { process, f: "read", key, value: Value::Null, is_read: true }, call)
                .await
        }
        Op::RegisterWrite { key, value } => {
            let call = async {
                if settings.eventual {
                    let reply = raw_put(&pc.home, key, &value.to_string(), settings.op_timeout)
                        .await
                        .map_err(|s| classify_status(&s))?;
                    return Ok((json!(value), eventual_write_meta(&reply, &pc.region)));
                }
                client.put(key, value.to_string()).await.map_err(|e| classify(&e))?;
                Ok((json!(value), CompletionMeta::default()))
            };
            record(
                recorder,
                settings,
                Invocation { process, f: "write", key, value: json!(value), is_read: false },
                call,
            )
            .await
        }
        Op::RegisterCas { key, expected, new } => {
            let invoke = json!([expected, new]);
            let call = async {
                let expect = expected.map_or(Expect::Absent, |v| Expect::Value(v.to_string().into_bytes()));
                let result = client.cas(key, expect, Some(new.to_string().into_bytes())).await;
                match result {
                    Ok(r) if r.swapped => Ok((invoke.clone(), CompletionMeta::default())),
                    Ok(_) => Err(OpError::definite(CAS_MISMATCH_ERROR)),
                    Err(e) => Err(classify(&e)),
                }
            };
            record(
                recorder,
                settings,
                Invocation { process, f: "cas", key, value: invoke.clone(), is_read: false },
                call,
            )
            .await
        }
        Op::SetAdd { element } => {
            let call = async {
                if settings.eventual {
                    let reply = raw_put(&pc.home, &set_key(*element), "1", settings.op_timeout)
                        .await
                        .map_err(|s| classify_status(&s))?;
                    return Ok((json!(element), eventual_write_meta(&reply, &pc.region)));
                }
                client.put(set_key(*element), "1").await.map_err(|e| classify(&e))?;
                Ok((json!(element), CompletionMeta::default()))
            };
            record(
                recorder,
                settings,
                Invocation { process, f: "add", key: "", value: json!(element), is_read: false },
                call,
            )
            .await
        }
        Op::SetRead => {
            let call = async {
                if settings.eventual {
                    let (elements, meta) = read_set_local(&pc.home, consistency, settings.op_timeout).await?;
                    return Ok((json!(elements), meta));
                }
                let (elements, meta) = read_set(client, consistency).await?;
                Ok((json!(elements), meta))
            };
            record(
                recorder,
                settings,
                Invocation { process, f: "read", key: "", value: Value::Null, is_read: true },
                call,
            )
            .await
        }
        Op::BankTransfer { from, to, amount } => {
            let invoke = json!({"from": from, "to": to, "amount": amount});
            let call = async {
                let (from_key, to_key) = (account_key(*from), account_key(*to));
                // Reads inside a transfer change nothing: their failures are definite.
                let read = |key: String| async move {
                    let read = client.get_with(&key, Consistency::Linearizable).await;
                    let read = read.map_err(|e| OpError::definite(format!("reading {key}: {e}")))?;
                    let kv = read.kv.ok_or_else(|| OpError::definite(format!("{key} is missing")))?;
                    let balance = String::from_utf8_lossy(&kv.value)
                        .parse::<u64>()
                        .map_err(|_| OpError::definite(format!("{key} holds {:?}", kv.value)))?;
                    Ok::<_, OpError>((balance, kv.version))
                };
                let (from_balance, from_version) = read(from_key.clone()).await?;
                let (to_balance, to_version) = read(to_key.clone()).await?;
                if from_balance < *amount {
                    return Err(OpError::definite(format!("insufficient funds: {from_balance} < {amount}")));
                }
                let result = client
                    .batch()
                    .condition(&from_key, Expect::Version(from_version))
                    .condition(&to_key, Expect::Version(to_version))
                    .put(&from_key, (from_balance - amount).to_string())
                    .put(&to_key, (to_balance + amount).to_string())
                    .send()
                    .await
                    .map_err(|e| classify(&e))?;
                if result.applied {
                    Ok((invoke.clone(), CompletionMeta::default()))
                } else {
                    Err(OpError::definite("conflict: a balance changed since it was read"))
                }
            };
            record(
                recorder,
                settings,
                Invocation { process, f: "transfer", key: "", value: invoke.clone(), is_read: false },
                call,
            )
            .await
        }
        Op::Append { key, element } => {
            let call = async {
                let mut redos = 0;
                loop {
                    match append_once(client, key, *element).await {
                        Err(e) if !e.definite && settings.unsafe_redo_unknown && redos < MAX_REDOS => redos += 1,
                        done => return done.map(|()| (json!(element), CompletionMeta::default())),
                    }
                }
            };
            record(
                recorder,
                settings,
                Invocation { process, f: "append", key, value: json!(element), is_read: false },
                call,
            )
            .await
        }
        Op::ListRead { key } => {
            let call = read_list(pc, key, consistency, settings.op_timeout);
            record(recorder, settings, Invocation { process, f: "read", key, value: Value::Null, is_read: true }, call)
                .await
        }
        Op::BankRead => {
            let call = async {
                let (balances, meta) = read_bank(client, consistency).await?;
                Ok((json!(balances), meta))
            };
            record(
                recorder,
                settings,
                Invocation { process, f: "read", key: "", value: Value::Null, is_read: true },
                call,
            )
            .await
        }
    }
}

/// A list value as the history shows it: its elements, numbers where they
/// parse (the checker reports anything else as unexpected).
pub fn list_elements(bytes: &[u8]) -> Value {
    let text = String::from_utf8_lossy(bytes);
    if text.is_empty() {
        return json!([]);
    }
    Value::Array(
        text.split(',').map(|e| e.parse::<u64>().map_or_else(|_| Value::String(e.to_string()), Value::from)).collect(),
    )
}

/// One attempt of an append: a linearizable read of the list, then a swap
/// to the list with `element` at its end, conditioned on the version read
/// (or on the key being absent). A failed condition is definite.
async fn append_once(client: &Client, key: &str, element: u64) -> Result<(), OpError> {
    let read = client.get_with(key, Consistency::Linearizable).await;
    let read = read.map_err(|e| OpError::definite(format!("reading {key}: {e}")))?;
    let (mut list, expect) = match read.kv {
        None => (Vec::new(), Expect::Absent),
        Some(kv) => (kv.value, Expect::Version(kv.version)),
    };
    if !list.is_empty() {
        list.push(b',');
    }
    list.extend_from_slice(element.to_string().as_bytes());
    let swapped = client.cas(key, expect, Some(list)).await.map_err(|e| classify(&e))?;
    if swapped.swapped { Ok(()) } else { Err(OpError::definite("conflict: the list changed since it was read")) }
}

/// The list at `key`, read at `consistency` (stale reads from the process's
/// own region's node, like register reads).
pub async fn read_list(
    pc: &ProcessClient,
    key: &str,
    consistency: Consistency,
    timeout: Duration,
) -> Result<(Value, CompletionMeta), OpError> {
    if consistency == Consistency::Stale {
        let reply = raw_get(&pc.home, key, consistency, timeout).await.map_err(|s| OpError::definite(s.to_string()))?;
        let list = reply.kv.map_or_else(|| json!([]), |kv| list_elements(&kv.value));
        return Ok((list, proto_read_meta(reply.read.as_ref())));
    }
    let read = pc.client.get_with(key, consistency).await.map_err(|e| classify(&e))?;
    let list = read.kv.map_or_else(|| json!([]), |kv| list_elements(&kv.value));
    Ok((list, read_meta(&read.info)))
}

/// The set's elements named by these keys (numbers where they parse).
fn set_elements<'a>(keys: impl Iterator<Item = &'a [u8]>) -> Vec<Value> {
    keys.map(|key| {
        let text = String::from_utf8_lossy(&key[SET_PREFIX.len()..]).into_owned();
        text.parse::<u64>().map_or(Value::String(text), Value::from)
    })
    .collect()
}

/// Every pair in `[start, end)` at `consistency` through the client, and
/// what the scan's weakest page reported (or, with no page read, the level
/// asked for).
async fn scan_with_meta(
    client: &Client,
    start: &str,
    end: &str,
    consistency: Consistency,
) -> Result<(Vec<geokv_client::KeyValue>, CompletionMeta), OpError> {
    let (kvs, info) =
        client.scan(start..end).consistency(consistency).collect_with_info().await.map_err(|e| classify(&e))?;
    let meta = info.as_ref().map_or_else(
        || CompletionMeta { consistency: Some(consistency.as_str().to_string()), ..Default::default() },
        read_meta,
    );
    Ok((kvs, meta))
}

/// Every element of the set, by one scan of its prefix.
pub async fn read_set(client: &Client, consistency: Consistency) -> Result<(Vec<Value>, CompletionMeta), OpError> {
    let (kvs, meta) = scan_with_meta(client, SET_PREFIX, SET_END, consistency).await?;
    Ok((set_elements(kvs.iter().map(|kv| kv.key.as_slice())), meta))
}

/// Every element of the set as one replica (`node`) serves it.
pub async fn read_set_local(
    node: &KvClient<Channel>,
    consistency: Consistency,
    timeout: Duration,
) -> Result<(Vec<Value>, CompletionMeta), OpError> {
    let (kvs, info) = raw_scan(node, SET_PREFIX, SET_END, consistency, timeout)
        .await
        .map_err(|s| OpError::definite(s.to_string()))?;
    let elements = set_elements(kvs.iter().map(|kv| kv.key.as_slice()));
    Ok((elements, proto_read_meta(info.as_ref())))
}

/// Every account's balance (`null`: missing, or not a number), by one scan
/// of the bank's range (one shard: one read).
pub async fn read_bank(client: &Client, consistency: Consistency) -> Result<(Vec<Value>, CompletionMeta), OpError> {
    let (kvs, meta) = scan_with_meta(client, BANK_PREFIX, BANK_END, consistency).await?;
    let mut balances = vec![Value::Null; ACCOUNTS];
    for kv in kvs {
        let name = String::from_utf8_lossy(&kv.key[BANK_PREFIX.len()..]).into_owned();
        let balance = String::from_utf8_lossy(&kv.value).parse::<i64>().ok();
        match name.parse::<usize>() {
            Ok(i) if i < ACCOUNTS => balances[i] = balance.map_or(Value::Null, Value::from),
            _ => return Err(OpError::definite(format!("unexpected bank key {name:?}"))),
        }
    }
    Ok((balances, meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_operations_and_values_are_unique() {
        let run = |seed| {
            let mut ops = Vec::new();
            for slot in 0..8 {
                let mut generator = Generator::new(Workload::Register, seed, slot, 8);
                ops.extend((0..400).map(|_| generator.next_op().unwrap()));
            }
            ops
        };
        let (a, b, c) = (run(3), run(3), run(4));
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut written = std::collections::HashSet::new();
        let mut keys = std::collections::HashSet::new();
        for op in &a {
            match op {
                Op::RegisterWrite { key, value } | Op::RegisterCas { key, new: value, .. } => {
                    assert!(written.insert(*value), "value {value} written twice");
                    keys.insert(key.clone());
                }
                Op::RegisterRead { key } => {
                    keys.insert(key.clone());
                }
                other => panic!("{other:?}"),
            }
        }
        // 8 clients: 2 groups of 4; 45 ops per slot per key; 400 ops -> 9 epochs.
        assert_eq!(keys.len(), 2 * 9, "{keys:?}");
    }

    #[test]
    fn without_cas_turns_every_cas_into_a_write_of_the_same_value() {
        let mut with = Generator::new(Workload::Register, 9, 1, 6);
        let mut without = Generator::new(Workload::Register, 9, 1, 6).without_cas();
        let mut converted = 0;
        for _ in 0..500 {
            match (with.next_op().unwrap(), without.next_op().unwrap()) {
                (Op::RegisterCas { key, new, .. }, Op::RegisterWrite { key: k, value }) => {
                    assert_eq!((key, new), (k, value));
                    converted += 1;
                }
                (_, Op::RegisterCas { .. }) => panic!("a CAS without CAS"),
                (a, b) => assert_eq!(a, b),
            }
        }
        assert!(converted > 50, "{converted}");
    }

    #[test]
    fn bank_transfers_move_between_distinct_accounts() {
        let mut generator = Generator::new(Workload::Bank, 1, 0, 1);
        for _ in 0..1000 {
            if let Some(Op::BankTransfer { from, to, amount }) = generator.next_op() {
                assert!(from != to && from < ACCOUNTS && to < ACCOUNTS && (1..=MAX_TRANSFER).contains(&amount));
            }
        }
    }
    #[test]
    fn a_group_counter_keeps_a_fast_slot_on_the_slow_slots_key() {
        fn key(op: Op) -> String {
            match op {
                Op::RegisterRead { key } | Op::RegisterWrite { key, .. } | Op::RegisterCas { key, .. } => key,
                other => panic!("{other:?}"),
            }
        }
        // 6 clients, one group of 6: 30 ops per slot per key, 180 per group.
        let counter = Arc::new(AtomicU64::new(0));
        let mut fast = Generator::new(Workload::Register, 3, 0, 6).with_group_counter(counter.clone(), 6);
        let mut slow = Generator::new(Workload::Register, 3, 1, 6).with_group_counter(counter, 6);
        // Alone, the fast slot would be on its 6th key after 179 operations.
        for _ in 0..179 {
            assert_eq!(key(fast.next_op().unwrap()), "r0-0");
        }
        assert_eq!(key(slow.next_op().unwrap()), "r0-0", "the slow slot's first operation shares the key");
        assert_eq!(key(slow.next_op().unwrap()), "r0-1", "the group's 181st operation moves every slot on");
        assert_eq!(key(fast.next_op().unwrap()), "r0-1");
        // Without a counter each slot rotates on its own operations.
        let mut alone = Generator::new(Workload::Register, 3, 0, 6);
        let keys: Vec<String> = (0..31).map(|_| key(alone.next_op().unwrap())).collect();
        assert_eq!((keys[29].as_str(), keys[30].as_str()), ("r0-0", "r0-1"));
    }
}
