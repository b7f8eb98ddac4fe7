//! Eventual mode: leaderless, multi-master shards (the contrast to Raft).
//!
//! Every replica of an eventual shard accepts `Put`/`Delete`. A write is
//! stamped with the node's hybrid logical clock ([`hlc`]), written together
//! with an outbox entry in one fsynced RocksDB batch, acknowledged, and then
//! shipped to every peer replica in order ([`ship`]). A receiver keeps the
//! record with the greater timestamp (last writer wins); deletes are
//! tombstones ordered the same way.
//!
//! # Conflicts
//! Each record carries the timestamp of the record its writer overwrote
//! (`pred`). When two records for a key meet and the newer one's `pred` is
//! older than the other's timestamp, the newer writer never saw the older
//! write: the older one is *discarded* (it was acknowledged to its client and
//! is now lost). The node that notices records it in its bounded conflict
//! log ([`ConflictLog`]); several nodes may record the same loss.
//!
//! # Positions (all durable, in `ec_meta`)
//! - per shard: the last outbox sequence written and the first still kept;
//! - per (shard, peer): the sequence that peer acknowledged (sender side);
//! - per (shard, origin): the last sequence and timestamp received from that
//!   origin, with the origin's incarnation (receiver side): a replayed entry
//!   is recognised and skipped, a gap is refused so the sender rewinds.
//!
//! A peer that fell behind what the outbox keeps (`outbox_max_entries`) gets
//! the whole range instead (full resync, merged by the same rule), then
//! continues from the outbox.
//!
//! # Tombstone collection
//! A tombstone stamped `t` may be dropped by a node once every replica has
//! received every write stamped `<= t` from every origin ("stable"): then no
//! older write for the key can arrive anywhere, by replay or by resync.
//! Each node computes its own stable time from what it received and learns
//! its peers' from their messages.

pub mod hlc;
pub mod ship;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::EventualConfig;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::node::wall_ms;
use crate::raft::{decode, encode};
use crate::shards::ShardDesc;
use crate::storage::{Batch, EcFamily, Pair, Storage, StorageError};
pub use hlc::{Clock, Hlc};

/// `ec_meta` tags.
pub(crate) mod tag {
    pub const LAST_SEQ: u8 = 1;
    pub const FIRST_KEPT: u8 = 2;
    pub const ACKED: u8 = 3;
    pub const RECEIVED: u8 = 4;
    pub const TOMBSTONE: u8 = 5;
    /// Node-wide records use the pseudo shard id `u64::MAX`.
    pub const CLOCK: u8 = 6;
    pub const CONFLICT: u8 = 7;
    pub const INCARNATION: u8 = 8;
}

const NODE_WIDE: u64 = u64::MAX;

/// How stale a replica whose stable time is `stable_physical_ms` may be,
/// read at `wall_ms` on its own clock: every write missing here was stamped
/// after the stable time, and a write's stamp is at most `offset` ahead of
/// its node's wall clock (writes are refused beyond: [`Clock::now_for_write`]),
/// whose wall clock is at most `offset` ahead of this one. So a missing
/// write was accepted less than `wall - stable + 2 × offset` ago.
///
/// [`Clock::now_for_write`]: crate::eventual::hlc::Clock::now_for_write
pub fn staleness_bound_ms(wall_ms: u64, stable_physical_ms: u64, offset_ms: u64) -> u64 {
    wall_ms.saturating_sub(stable_physical_ms) + 2 * offset_ms
}

fn meta_key(shard: u64, tag: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + rest.len());
    k.extend_from_slice(&shard.to_be_bytes());
    k.push(tag);
    k.extend_from_slice(rest);
    k
}

/// The `[start, end)` keys of every `ec_meta` record of `shard` with `tag`.
fn tag_range(shard: u64, tag: u8) -> (Vec<u8>, Vec<u8>) {
    (meta_key(shard, tag, &[]), meta_key(shard, tag + 1, &[]))
}

fn outbox_key(shard: u64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&shard.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn tombstone_key(shard: u64, hlc: Hlc, key: &[u8]) -> Vec<u8> {
    meta_key(shard, tag::TOMBSTONE, &[&hlc.to_be_bytes()[..], key].concat())
}

/// What an eventual shard stores under a user key (in `data`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EcRecord {
    /// `None`: a tombstone (the key was deleted).
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
    pub hlc: Hlc,
    /// The timestamp of the record this write overwrote where it was
    /// accepted (default: there was none).
    pub pred: Hlc,
}

impl EcRecord {
    /// The node that accepted the write.
    pub fn origin(&self) -> u64 {
        self.hlc.node
    }
}

/// One replicated write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EcWrite {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub record: EcRecord,
}

/// A replication message from `from` (one per stream item).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ship {
    pub from: u64,
    /// Changes when the sender's data was created anew (positions restart).
    pub incarnation: u64,
    /// The sender's clock when it sent this (moves the receiver's clock).
    pub clock: Hlc,
    /// The sender's stable time for this shard (see module docs).
    pub stable: Hlc,
    pub body: ShipBody,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ShipBody {
    /// The sender's own writes with their outbox sequences, increasing.
    Entries(Vec<(u64, EcWrite)>),
    /// A page of the sender's whole range (records of any origin).
    Resync(Vec<EcWrite>),
    /// The resync covered the sender's writes up to `seq`, and every write
    /// the sender stamps later is newer than `clock`.
    ResyncDone { seq: u64, clock: Hlc },
    /// Nothing to send: the sender wrote nothing after `seq`, and every
    /// write it stamps later is newer than `clock`.
    Heartbeat { seq: u64, clock: Hlc },
}

/// The receiver's answer to one [`Ship`], after it is durable.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShipAck {
    /// The last sequence of the sender's this receiver holds.
    pub seq: u64,
    /// The receiver's stable time for this shard.
    pub stable: Hlc,
    /// False when the message was refused (a gap: the sender must rewind to
    /// `seq + 1`, or resync if it no longer has that entry).
    pub accepted: bool,
}

/// What the receiver remembers of one origin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Received {
    incarnation: u64,
    seq: u64,
    /// Every write of the origin stamped `<= clock` has been received.
    clock: Hlc,
}

/// One discarded write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    pub shard: u64,
    pub key: Vec<u8>,
    pub winner: Hlc,
    pub winner_deleted: bool,
    pub loser: Hlc,
    pub loser_value: Option<Vec<u8>>,
    pub recorded_by: u64,
    pub recorded_at_ms: u64,
}

/// The node's bounded, durable log of discarded writes (all eventual shards).
pub struct ConflictLog {
    capacity: u64,
    /// Sequence of the next record, and of the oldest kept.
    next: Mutex<(u64, u64)>,
}

impl ConflictLog {
    fn open(storage: &Storage, capacity: u64) -> Result<ConflictLog, StorageError> {
        let (start, end) = tag_range(NODE_WIDE, tag::CONFLICT);
        let seq_of = |k: &[u8]| u64::from_be_bytes(k[9..17].try_into().expect("conflict key"));
        let last = storage.scan_ec(EcFamily::Meta, &start, Some(&end), 1, true)?.first().map(|(k, _)| seq_of(k));
        let first = storage.scan_ec(EcFamily::Meta, &start, Some(&end), 1, false)?.first().map(|(k, _)| seq_of(k));
        let next = last.map_or(1, |l| l + 1);
        Ok(ConflictLog { capacity, next: Mutex::new((next, first.unwrap_or(next))) })
    }

    /// Adds `c` to `batch`, dropping the oldest record beyond the capacity.
    fn record(&self, batch: &mut Batch<'_>, c: &Conflict) {
        let mut next = self.next.lock().expect("conflict log");
        batch.put_ec(EcFamily::Meta, &meta_key(NODE_WIDE, tag::CONFLICT, &next.0.to_be_bytes()), &encode(c));
        next.0 += 1;
        while next.0 - next.1 > self.capacity {
            batch.delete_ec(EcFamily::Meta, &meta_key(NODE_WIDE, tag::CONFLICT, &next.1.to_be_bytes()));
            next.1 += 1;
        }
    }

    /// Up to `limit` records, newest first, of `shard` (`None`: all).
    pub fn list(&self, storage: &Storage, shard: Option<u64>, limit: usize) -> Result<Vec<Conflict>, Error> {
        let (start, end) = tag_range(NODE_WIDE, tag::CONFLICT);
        let mut out = Vec::new();
        // Kept records are bounded by the capacity; read newest first.
        for (_, v) in storage.scan_ec(EcFamily::Meta, &start, Some(&end), self.capacity as usize, true)? {
            let c: Conflict = decode(&v)?;
            if shard.is_none_or(|s| s == c.shard) {
                out.push(c);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Conflicts recorded since the log began, and the capacity.
    pub fn totals(&self) -> (u64, u64) {
        (self.next.lock().expect("conflict log").0 - 1, self.capacity)
    }
}

/// State shared by every eventual shard of a node.
pub struct EcNode {
    pub me: u64,
    pub incarnation: u64,
    pub clock: Clock,
    pub conflicts: ConflictLog,
    pub config: EventualConfig,
    pub storage: Arc<Storage>,
    pub metrics: Arc<Metrics>,
}

impl EcNode {
    /// Restores the clock floor, the incarnation and the conflict log.
    pub fn open(
        me: u64,
        storage: Arc<Storage>,
        metrics: Arc<Metrics>,
        config: EventualConfig,
        max_clock_offset_ms: u64,
    ) -> Result<Arc<EcNode>, Error> {
        let floor = match storage.get_ec(EcFamily::Meta, &meta_key(NODE_WIDE, tag::CLOCK, &[]))? {
            Some(b) => decode(&b)?,
            None => Hlc::default(),
        };
        let incarnation_key = meta_key(NODE_WIDE, tag::INCARNATION, &[]);
        let incarnation = match storage.get_ec(EcFamily::Meta, &incarnation_key)? {
            Some(b) => decode(&b)?,
            None => {
                let fresh: u64 = rand::random::<u64>() | 1;
                let mut b = storage.batch();
                b.put_ec(EcFamily::Meta, &incarnation_key, &encode(&fresh));
                storage.write_relaxed(b)?;
                fresh
            }
        };
        let conflicts = ConflictLog::open(&storage, config.conflict_log_entries)?;
        Ok(Arc::new(EcNode {
            me,
            incarnation,
            clock: Clock::new(me, floor, max_clock_offset_ms),
            conflicts,
            config,
            storage,
            metrics,
        }))
    }

    fn save_clock(&self, batch: &mut Batch<'_>) {
        batch.put_ec(EcFamily::Meta, &meta_key(NODE_WIDE, tag::CLOCK, &[]), &encode(&self.clock.peek()));
    }
}

/// What a local write reports.
#[derive(Debug, Clone, Copy)]
pub struct Receipt {
    pub hlc: Hlc,
    /// Whether the key had a live value on this replica before.
    pub existed: bool,
}

/// Sender-side view of one peer.
#[derive(Debug, Default)]
pub struct PeerState {
    pub acked: u64,
    /// The peer's stable time as last reported.
    pub stable: Hlc,
    pub resyncing: bool,
    /// Set when the link recovered after failing; cleared (and the catch-up
    /// time observed) once the peer has acknowledged everything.
    pub recovering_since: Option<Instant>,
    pub failing: bool,
}

/// One peer's replication lag, as [`EcShard::peer_lags`] reports it.
#[derive(Debug, Clone, Copy)]
pub struct PeerLag {
    pub peer: u64,
    pub acked: u64,
    /// Durable writes the peer has not acknowledged, and the age of the
    /// oldest of them.
    pub entries: u64,
    pub ms: u64,
    pub resyncing: bool,
}

struct State {
    last_seq: u64,
    first_kept: u64,
    received: HashMap<u64, Received>,
}

/// Which nodes hold an eventual shard, as the map last said: its replicas,
/// and a replica change under way (see [`EcShard::update`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Roles {
    replicas: Vec<u64>,
    adding: Option<u64>,
    removing: Option<u64>,
}

impl Roles {
    fn of(desc: &ShardDesc) -> Roles {
        let (adding, removing) = desc.change.map_or((None, None), |c| (c.add, c.remove));
        Roles { replicas: desc.replicas.clone(), adding, removing }
    }

    /// Every node that holds the shard's data or is being given it: the
    /// replicas plus the one being added. Each ships its writes to all.
    fn members(&self) -> impl Iterator<Item = u64> + '_ {
        self.replicas.iter().copied().chain(self.adding.filter(|a| !self.replicas.contains(a)))
    }
}

/// One eventual shard's replica on this node.
pub struct EcShard {
    /// The shard as the map described it when this replica started: its
    /// id and range (which do not change); its members are in `roles`.
    pub desc: ShardDesc,
    roles: Mutex<Roles>,
    node: Arc<EcNode>,
    state: Mutex<State>,
    /// The last outbox sequence known durable (shippers send up to it).
    durable_tx: watch::Sender<u64>,
    pub peers: Mutex<BTreeMap<u64, PeerState>>,
    tombstones: AtomicI64,
    /// Writes accepted locally and received, for status.
    pub received_total: AtomicU64,
    /// Set (under the state lock) when this replica left its shard and its
    /// records are deleted: nothing writes for it any more.
    retired: AtomicBool,
}

/// How a record that met an existing one fared.
#[derive(Debug, PartialEq, Eq)]
enum Merge {
    Applied,
    Discarded,
    Duplicate,
}

impl EcShard {
    /// Restores the shard's positions from storage.
    pub fn open(node: Arc<EcNode>, desc: ShardDesc) -> Result<Arc<EcShard>, Error> {
        let s = &node.storage;
        let id = desc.id;
        let u64_at = |t: u8| -> Result<Option<u64>, Error> {
            Ok(s.get_ec(EcFamily::Meta, &meta_key(id, t, &[]))?.map(|b| decode(&b)).transpose()?)
        };
        let last_seq = u64_at(tag::LAST_SEQ)?.unwrap_or(0);
        let first_kept = u64_at(tag::FIRST_KEPT)?.unwrap_or(1);
        let mut received = HashMap::new();
        let mut peers = BTreeMap::new();
        let roles = Roles::of(&desc);
        for peer in roles.members().filter(|p| *p != node.me) {
            let peer_key = peer.to_be_bytes();
            if let Some(b) = s.get_ec(EcFamily::Meta, &meta_key(id, tag::RECEIVED, &peer_key))? {
                received.insert(peer, decode::<Received>(&b)?);
            }
            let acked = match s.get_ec(EcFamily::Meta, &meta_key(id, tag::ACKED, &peer_key))? {
                Some(b) => decode(&b)?,
                None => 0,
            };
            peers.insert(peer, PeerState { acked, ..PeerState::default() });
        }
        let (start, end) = tag_range(id, tag::TOMBSTONE);
        let tombstones = s.scan_ec(EcFamily::Meta, &start, Some(&end), usize::MAX, false)?.len() as i64;
        let (durable_tx, _) = watch::channel(last_seq);
        Ok(Arc::new(EcShard {
            desc,
            roles: Mutex::new(roles),
            node,
            state: Mutex::new(State { last_seq, first_kept, received }),
            durable_tx,
            peers: Mutex::new(peers),
            tombstones: AtomicI64::new(tombstones),
            received_total: AtomicU64::new(0),
            retired: AtomicBool::new(false),
        }))
    }

    pub fn id(&self) -> u64 {
        self.desc.id
    }

    /// Takes the members the map now gives the shard (`desc`, the same
    /// shard): a node being added becomes a peer (this node ships its
    /// writes to it, first as a whole-range resync), a node removed stops
    /// being one and its positions here are dropped (should it come back,
    /// it starts afresh). Returns the new peers, whose shippers the caller
    /// starts.
    pub fn update(&self, desc: &ShardDesc) -> Result<Vec<u64>, Error> {
        let me = self.node.me;
        let new = Roles::of(desc);
        // Lock order: state, then roles; so roles is let go before state.
        let (added, gone) = {
            let mut roles = self.roles.lock().expect("ec roles");
            if *roles == new {
                return Ok(Vec::new());
            }
            let before: Vec<u64> = roles.members().collect();
            let after: Vec<u64> = new.members().collect();
            tracing::info!(shard = self.id(), replicas = ?new.replicas, adding = ?new.adding,
                removing = ?new.removing, "eventual shard members changed");
            *roles = new;
            let added: Vec<u64> = after.iter().copied().filter(|p| *p != me && !before.contains(p)).collect();
            let gone: Vec<u64> = before.into_iter().filter(|p| *p != me && !after.contains(p)).collect();
            (added, gone)
        };
        {
            // A member that joins while this replica runs has acknowledged
            // nothing of it (positions stored from an earlier time it was a
            // member are stale, and dropped below).
            let mut peers = self.peers.lock().expect("ec peers");
            for peer in &added {
                peers.insert(*peer, PeerState::default());
            }
            for peer in &gone {
                peers.remove(peer);
            }
        }
        // Positions of a member that left, or of a new member from an
        // earlier time it was one, are forgotten: a node that comes back
        // starts its sequences afresh, and is sent everything again.
        if !gone.is_empty() || !added.is_empty() {
            let mut b = self.node.storage.batch();
            let mut st = self.state.lock().expect("ec state");
            for peer in gone.iter().chain(&added) {
                for t in [tag::ACKED, tag::RECEIVED] {
                    b.delete_ec(EcFamily::Meta, &meta_key(self.id(), t, &peer.to_be_bytes()));
                }
                st.received.remove(peer);
            }
            self.node.storage.write_relaxed(b)?;
        }
        Ok(added)
    }

    /// The shard's replicas as the map last said (the one being added not
    /// among them until the change is made).
    pub fn replicas(&self) -> Vec<u64> {
        self.roles.lock().expect("ec roles").replicas.clone()
    }

    /// Whether `node` is a member (a replica, or the one being added).
    pub fn is_member(&self, node: u64) -> bool {
        self.roles.lock().expect("ec roles").members().any(|m| m == node)
    }

    /// The node being added to the shard, if any.
    pub fn adding(&self) -> Option<u64> {
        self.roles.lock().expect("ec roles").adding
    }

    /// This replica is being added: it is seeded by the others and serves
    /// no client requests until the map makes it a replica.
    pub fn is_seeding(&self) -> bool {
        let roles = self.roles.lock().expect("ec roles");
        roles.adding == Some(self.node.me) && !roles.replicas.contains(&self.node.me)
    }

    /// This replica is being removed: it takes no client writes, and leaves
    /// once the staying replicas have everything it accepted.
    pub fn is_leaving(&self) -> bool {
        self.roles.lock().expect("ec roles").removing == Some(self.node.me)
    }

    /// The other members this replica has heard a position from.
    pub fn heard_from(&self) -> Vec<u64> {
        let members: Vec<u64> = self.roles.lock().expect("ec roles").members().collect();
        let st = self.state.lock().expect("ec state");
        members
            .into_iter()
            .filter(|m| *m != self.node.me && st.received.get(m).is_some_and(|g| g.clock > Hlc::default()))
            .collect()
    }

    /// Deletes this replica's data, outbox and positions (it left the
    /// shard); durable when this returns. Nothing writes for the replica
    /// afterwards: the flag is set under the state lock, which every writer
    /// holds while it checks it and issues its write.
    pub async fn retire(&self) -> Result<(), Error> {
        let id = self.id();
        let durable = {
            let _st = self.state.lock().expect("ec state");
            self.retired.store(true, Ordering::SeqCst);
            let mut b = self.node.storage.batch();
            b.delete_ec_data_range(&self.desc.start, self.desc.end.as_deref());
            b.delete_ec_range(EcFamily::Meta, &meta_key(id, 0, &[]), &meta_key(id + 1, 0, &[]));
            b.delete_ec_range(EcFamily::Outbox, &outbox_key(id, 0), &outbox_key(id + 1, 0));
            self.node.storage.write_durable(b)?
        };
        durable.await?;
        Ok(())
    }

    /// Whether this replica left its shard ([`EcShard::retire`]).
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::SeqCst)
    }

    /// The record under `key`, tombstones included.
    pub fn get(&self, key: &[u8]) -> Result<Option<EcRecord>, Error> {
        match self.node.storage.get_ec(EcFamily::Data, key)? {
            Some(b) => Ok(Some(decode(&b)?)),
            None => Ok(None),
        }
    }

    /// Up to `limit` records (tombstones included) from `start` to the end
    /// of the shard's range, in key order, ending early once their keys and
    /// values pass `max_bytes` (at least one record).
    pub fn scan(&self, start: &[u8], limit: usize, max_bytes: usize) -> Result<Vec<Pair>, Error> {
        let end = self.desc.end.as_deref();
        Ok(self.node.storage.scan_ec_within(EcFamily::Data, start, end, limit, max_bytes, false)?)
    }

    /// Accepts a local write (`value = None`: delete) and returns once it is
    /// durable here.
    pub async fn write(&self, key: Vec<u8>, value: Option<Vec<u8>>) -> Result<Receipt, Error> {
        let (seq, receipt, durable) = {
            let mut st = self.state.lock().expect("ec state");
            // Checked under the state lock: a write that passed has its
            // sequence before a status that reports the replica leaving.
            if self.is_leaving() || self.is_seeding() || self.is_retired() {
                return Err(Error::Unavailable(format!(
                    "the replica of eventual shard {} on node {} is {}: nothing was written; another replica takes the \
                     write",
                    self.id(),
                    self.node.me,
                    if self.is_seeding() { "still being seeded" } else { "leaving it" }
                )));
            }
            let existing = self.get(&key)?;
            let hlc = self.node.clock.now_for_write().map_err(|e| {
                Error::Unavailable(format!(
                    "eventual shard {}: this node's clock runs behind its hybrid clock: {e}; writes wait until the \
                     wall clock catches up (was it set back?)",
                    self.id()
                ))
            })?;
            let record = EcRecord { value, hlc, pred: existing.as_ref().map_or(Hlc::default(), |e| e.hlc) };
            let mut batch = self.node.storage.batch();
            self.put_record(&mut batch, &key, &record, existing.as_ref());
            st.last_seq += 1;
            let seq = st.last_seq;
            let write = EcWrite { key, record };
            batch.put_ec(EcFamily::Outbox, &outbox_key(self.id(), seq), &encode(&write));
            batch.put_ec(EcFamily::Meta, &meta_key(self.id(), tag::LAST_SEQ, &[]), &encode(&seq));
            self.node.save_clock(&mut batch);
            let durable = self.node.storage.write_durable(batch)?;
            let existed = existing.is_some_and(|e| e.value.is_some());
            (seq, Receipt { hlc, existed }, durable)
        };
        durable.await?;
        self.received_total.fetch_add(1, Ordering::Relaxed);
        // An fsync covers every write made before it, so all sequences up to
        // this one are durable now.
        self.durable_tx.send_if_modified(|d| {
            let newer = seq > *d;
            if newer {
                *d = seq;
            }
            newer
        });
        Ok(receipt)
    }

    /// Writes `record` under `key` (replacing `existing`) into `batch`,
    /// keeping the tombstone index in step.
    fn put_record(&self, batch: &mut Batch<'_>, key: &[u8], record: &EcRecord, existing: Option<&EcRecord>) {
        if let Some(old) = existing.filter(|e| e.value.is_none()) {
            batch.delete_ec(EcFamily::Meta, &tombstone_key(self.id(), old.hlc, key));
            self.tombstones.fetch_sub(1, Ordering::Relaxed);
        }
        if record.value.is_none() {
            batch.put_ec(EcFamily::Meta, &tombstone_key(self.id(), record.hlc, key), &[]);
            self.tombstones.fetch_add(1, Ordering::Relaxed);
        }
        batch.put_ec(EcFamily::Data, key, &encode(record));
    }

    /// Last writer wins: applies `incoming` if it is newer than what is
    /// stored, recording the loser when the two were concurrent.
    fn merge(
        &self,
        batch: &mut Batch<'_>,
        pending: &mut HashMap<Vec<u8>, EcRecord>,
        w: EcWrite,
    ) -> Result<Merge, Error> {
        let existing = match pending.get(&w.key) {
            Some(r) => Some(r.clone()),
            None => self.get(&w.key)?,
        };
        let record = w.record;
        let (outcome, winner, loser) = match &existing {
            None => (Merge::Applied, &record, None),
            Some(e) if e.hlc == record.hlc => (Merge::Duplicate, e, None),
            Some(e) if record.hlc > e.hlc => (Merge::Applied, &record, Some(e)),
            Some(e) => (Merge::Discarded, e, Some(&record)),
        };
        if let Some(loser) = loser.filter(|l| winner.pred < l.hlc) {
            let c = Conflict {
                shard: self.id(),
                key: w.key.clone(),
                winner: winner.hlc,
                winner_deleted: winner.value.is_none(),
                loser: loser.hlc,
                loser_value: loser.value.clone(),
                recorded_by: self.node.me,
                recorded_at_ms: wall_ms(),
            };
            tracing::debug!(shard = self.id(), winner = %c.winner, loser = %c.loser, "eventual write discarded");
            self.node.conflicts.record(batch, &c);
            self.node.metrics.ec_conflict(self.id());
        }
        if let Merge::Applied = outcome {
            self.put_record(batch, &w.key, &record, existing.as_ref());
            pending.insert(w.key, record);
        }
        Ok(outcome)
    }

    /// Applies one replication message from a peer; the ack is sent once
    /// everything it says is durable.
    pub async fn receive(&self, ship: Ship) -> Result<ShipAck, String> {
        let from = ship.from;
        if !self.is_member(from) {
            return Err(format!("node {from} is not a replica of eventual shard {}", self.id()));
        }
        self.node.clock.observe(ship.clock).map_err(|e| {
            tracing::error!(peer = from, cause = %e, "refusing replication from a peer whose clock is ahead");
            e.to_string()
        })?;
        if let Some(p) = self.peers.lock().expect("ec peers").get_mut(&from) {
            p.stable = p.stable.max(ship.stable);
        }
        let (ack, durable) = {
            let mut st = self.state.lock().expect("ec state");
            if self.is_retired() {
                return Err(format!("this node's replica of eventual shard {} left it", self.id()));
            }
            // Again under the lock: positions of a member that just left
            // must not be stored after [`EcShard::update`] dropped them.
            if !self.is_member(from) {
                return Err(format!("node {from} is no longer a replica of eventual shard {}", self.id()));
            }
            let mut got = st.received.get(&from).copied().unwrap_or_default();
            if got.incarnation != ship.incarnation {
                // The sender's data was created anew: its sequences restart.
                got = Received { incarnation: ship.incarnation, ..Received::default() };
            }
            let mut batch = self.node.storage.batch();
            let mut pending = HashMap::new();
            let mut accepted = true;
            let now = wall_ms();
            match ship.body {
                ShipBody::Entries(entries) => {
                    for (seq, w) in entries {
                        if seq <= got.seq {
                            continue;
                        }
                        if seq != got.seq + 1 {
                            accepted = false;
                            break;
                        }
                        got = Received { seq, clock: got.clock.max(w.record.hlc), ..got };
                        let delay = now.saturating_sub(w.record.hlc.physical_ms);
                        self.node.metrics.ec_replication_delay(self.id(), from, delay);
                        self.merge(&mut batch, &mut pending, w).map_err(|e| e.to_string())?;
                    }
                }
                ShipBody::Resync(writes) => {
                    for w in writes {
                        self.merge(&mut batch, &mut pending, w).map_err(|e| e.to_string())?;
                    }
                }
                ShipBody::ResyncDone { seq, clock } => {
                    if seq >= got.seq {
                        got = Received { seq, clock: got.clock.max(clock), ..got };
                    }
                }
                ShipBody::Heartbeat { seq, clock } => {
                    if got.seq >= seq {
                        got.clock = got.clock.max(clock);
                    } else {
                        accepted = false;
                    }
                }
            }
            self.received_total.fetch_add(pending.len() as u64, Ordering::Relaxed);
            st.received.insert(from, got);
            batch.put_ec(EcFamily::Meta, &meta_key(self.id(), tag::RECEIVED, &from.to_be_bytes()), &encode(&got));
            self.node.save_clock(&mut batch);
            let durable = self.node.storage.write_durable(batch).map_err(|e| e.to_string())?;
            let ack = ShipAck { seq: got.seq, stable: self.local_stable(&st), accepted };
            (ack, durable)
        };
        durable.await.map_err(|e| e.to_string())?;
        Ok(ack)
    }

    /// Every write stamped `<=` this, from every origin, is here.
    fn local_stable(&self, st: &State) -> Hlc {
        let roles = self.roles.lock().expect("ec roles");
        roles
            .members()
            .filter(|r| *r != self.node.me)
            .map(|r| st.received.get(&r).map_or(Hlc::default(), |g| g.clock))
            .min()
            .unwrap_or_else(|| self.node.clock.peek())
    }

    /// This replica's stable time.
    pub fn stable(&self) -> Hlc {
        self.local_stable(&self.state.lock().expect("ec state"))
    }

    /// Every write stamped `<=` this, from every origin, is on every replica.
    fn cluster_stable(&self) -> Hlc {
        let mine = self.stable();
        let peers = self.peers.lock().expect("ec peers");
        peers.values().map(|p| p.stable).fold(mine, Hlc::min)
    }

    /// An upper bound on how far behind this replica may be, in ms: every
    /// write accepted anywhere before that long ago is here. `None` until
    /// every peer has been heard from. See [`staleness_bound_ms`].
    pub fn staleness_bound_ms(&self, max_clock_offset_ms: u64) -> Option<u64> {
        let stable = self.stable();
        (stable.physical_ms > 0).then(|| staleness_bound_ms(wall_ms(), stable.physical_ms, max_clock_offset_ms))
    }

    /// `(last sequence, first kept, durable)`.
    pub fn positions(&self) -> (u64, u64, u64) {
        let st = self.state.lock().expect("ec state");
        (st.last_seq, st.first_kept, *self.durable_tx.borrow())
    }

    pub fn tombstones(&self) -> u64 {
        self.tombstones.load(Ordering::Relaxed).max(0) as u64
    }

    /// Up to `limit` outbox entries from `from` on, up to `to`, in order.
    pub fn read_outbox(&self, from: u64, to: u64, limit: usize) -> Result<Vec<(u64, EcWrite)>, Error> {
        if from > to {
            return Ok(Vec::new());
        }
        let rows = self.node.storage.scan_ec(
            EcFamily::Outbox,
            &outbox_key(self.id(), from),
            Some(&outbox_key(self.id(), to.saturating_add(1))),
            limit,
            false,
        )?;
        rows.into_iter()
            .map(|(k, v)| {
                let seq = u64::from_be_bytes(k[8..16].try_into().expect("outbox key"));
                Ok((seq, decode(&v)?))
            })
            .collect()
    }

    /// Entries kept in the outbox for some peer.
    pub fn outbox_depth(&self) -> u64 {
        let (last, first_kept, _) = self.positions();
        (last + 1).saturating_sub(first_kept)
    }

    /// How far each peer is behind this replica's durable writes (for
    /// status and metrics).
    pub fn peer_lags(&self) -> Vec<PeerLag> {
        let durable = *self.durable_tx.borrow();
        let peers: Vec<(u64, u64, bool)> =
            self.peers.lock().expect("ec peers").iter().map(|(id, p)| (*id, p.acked, p.resyncing)).collect();
        peers
            .into_iter()
            .map(|(peer, acked, resyncing)| PeerLag {
                peer,
                acked,
                entries: durable.saturating_sub(acked),
                ms: self.oldest_unacked_age_ms(acked, durable),
                resyncing,
            })
            .collect()
    }

    /// The age in ms of the oldest write a peer that acknowledged `acked`
    /// lacks.
    fn oldest_unacked_age_ms(&self, acked: u64, durable: u64) -> u64 {
        if acked >= durable {
            return 0;
        }
        match self.read_outbox(acked + 1, acked + 1, 1) {
            Ok(rows) => rows.first().map_or(0, |(_, w)| wall_ms().saturating_sub(w.record.hlc.physical_ms)),
            Err(_) => 0,
        }
    }

    /// Where the outbox stands for a heartbeat or a resync: the last sequence
    /// written and a timestamp every later write will exceed.
    pub fn watermark(&self) -> (u64, Hlc) {
        let st = self.state.lock().expect("ec state");
        (st.last_seq, self.node.clock.now())
    }

    /// A receiver for the durable sequence (shippers wait on it).
    pub fn durable_rx(&self) -> watch::Receiver<u64> {
        self.durable_tx.subscribe()
    }

    /// Records `peer`'s acknowledgement durably (no fsync needed: a lost
    /// position only replays entries the peer skips as duplicates).
    pub fn save_acked(&self, peer: u64, acked: u64) -> Result<(), Error> {
        let _st = self.state.lock().expect("ec state");
        if self.is_retired() || !self.is_member(peer) {
            return Ok(());
        }
        let mut b = self.node.storage.batch();
        b.put_ec(EcFamily::Meta, &meta_key(self.id(), tag::ACKED, &peer.to_be_bytes()), &encode(&acked));
        self.node.storage.write_relaxed(b)?;
        Ok(())
    }

    /// Drops outbox entries every peer acknowledged, enforces the outbox
    /// bound, and collects tombstones every replica has seen.
    pub fn collect(&self) -> Result<(), Error> {
        let storage = &self.node.storage;
        let id = self.id();
        let min_acked = self.peers.lock().expect("ec peers").values().map(|p| p.acked).min();
        {
            let mut st = self.state.lock().expect("ec state");
            if self.is_retired() {
                return Ok(());
            }
            let durable = *self.durable_tx.borrow();
            let mut keep_from = min_acked.map_or(durable + 1, |a| a + 1).min(st.last_seq + 1);
            let bound = self.node.config.outbox_max_entries;
            if st.last_seq + 1 - keep_from.min(st.last_seq + 1) > bound {
                keep_from = st.last_seq + 1 - bound;
                tracing::warn!(shard = id, keep_from, "outbox over its bound: peers behind it will get a full resync");
            }
            if keep_from > st.first_kept {
                let mut b = storage.batch();
                b.delete_ec_range(EcFamily::Outbox, &outbox_key(id, st.first_kept), &outbox_key(id, keep_from));
                b.put_ec(EcFamily::Meta, &meta_key(id, tag::FIRST_KEPT, &[]), &encode(&keep_from));
                storage.write_relaxed(b)?;
                st.first_kept = keep_from;
            }
        }
        let stable = self.cluster_stable();
        if stable.physical_ms == 0 {
            return Ok(());
        }
        let start = meta_key(id, tag::TOMBSTONE, &[]);
        let end = tombstone_key(id, stable, &[]);
        let mut collected = 0;
        for (k, _) in storage.scan_ec(EcFamily::Meta, &start, Some(&end), 10_000, false)? {
            let (Some(hlc), user_key) = (Hlc::from_be_bytes(&k[9..]), &k[29..]) else { continue };
            let _st = self.state.lock().expect("ec state");
            let mut b = storage.batch();
            b.delete_ec(EcFamily::Meta, &k);
            // The index entry may be stale (the tombstone was overwritten
            // since the scan): then only the entry goes.
            let live = self.get(user_key)?.is_some_and(|r| r.value.is_none() && r.hlc == hlc);
            if live {
                b.delete_ec(EcFamily::Data, user_key);
            }
            storage.write_relaxed(b)?;
            if live {
                self.tombstones.fetch_sub(1, Ordering::Relaxed);
                collected += 1;
            }
        }
        if collected > 0 {
            tracing::debug!(shard = id, collected, stable = %stable, "tombstones collected");
            self.node.metrics.ec_tombstones_collected(collected);
        }
        Ok(())
    }

    pub fn node(&self) -> &Arc<EcNode> {
        &self.node
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worst case the bound must cover: the origin's wall clock `offset`
    /// ahead of the reader's, and its hybrid clock `offset` ahead of its wall
    /// (observed from a faster peer, the most a write may be stamped). A
    /// write accepted at reader time `t_w` is stamped `t_w + 2 × offset`;
    /// everything up to just before it is stable here. Read `d` later, the
    /// bound must be at least `d`. (With one offset, as before, it said
    /// `d - offset`.)
    #[test]
    fn the_eventual_staleness_bound_covers_a_stamp_ahead_of_two_clocks() {
        let offset = 50;
        for d in [0u64, 1, 40, 120, 5_000] {
            let t_w = 1_000_000;
            let stamp = t_w + 2 * offset;
            let stable = stamp - 1;
            let bound = staleness_bound_ms(t_w + d, stable, offset);
            assert!(bound >= d, "reported {bound} ms for a write missing for {d} ms");
        }
    }
    use crate::shards::ShardMode;

    struct Replica {
        _dir: tempfile::TempDir,
        shard: Arc<EcShard>,
    }

    fn replica(me: u64) -> Replica {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        let config = EventualConfig { outbox_max_entries: 4, ..EventualConfig::default() };
        let node = EcNode::open(me, storage, Arc::new(Metrics::default()), config, 50).unwrap();
        let desc = ShardDesc {
            id: 7,
            epoch: 1,
            start: b"ev/".to_vec(),
            end: Some(b"ev0".to_vec()),
            replicas: vec![1, 2, 3],
            preferred_leader_region: None,
            mode: ShardMode::Eventual,
            change: None,
            merge: None,
            auto_split: false,
        };
        Replica { _dir: dir, shard: EcShard::open(node, desc).unwrap() }
    }

    impl Replica {
        /// What this replica would ship to a peer that acknowledged `after`.
        fn ship_since(&self, after: u64) -> Ship {
            let (_, _, durable) = self.shard.positions();
            let entries = self.shard.read_outbox(after + 1, durable, 100).unwrap();
            self.ship(ShipBody::Entries(entries))
        }

        fn ship(&self, body: ShipBody) -> Ship {
            let ec = self.shard.node();
            Ship { from: ec.me, incarnation: ec.incarnation, clock: ec.clock.now(), stable: self.shard.stable(), body }
        }

        fn value(&self, key: &[u8]) -> Option<Vec<u8>> {
            self.shard.get(key).unwrap().and_then(|r| r.value)
        }

        fn conflicts(&self) -> Vec<Conflict> {
            self.shard.node().conflicts.list(&self.shard.node().storage, None, 100).unwrap()
        }
    }

    #[tokio::test]
    async fn concurrent_writes_converge_on_the_newest_and_log_the_loser() {
        let (a, b) = (replica(1), replica(2));
        a.shard.write(b"ev/k".to_vec(), Some(b"from-a".to_vec())).await.unwrap();
        // b writes later without having seen a's write: concurrent.
        let late = b.shard.write(b"ev/k".to_vec(), Some(b"from-b".to_vec())).await.unwrap();
        let a_to_b = a.ship_since(0);
        let b_to_a = b.ship_since(0);
        let ack = b.shard.receive(a_to_b).await.unwrap();
        assert!(ack.accepted && ack.seq == 1);
        a.shard.receive(b_to_a).await.unwrap();
        assert_eq!(a.value(b"ev/k"), Some(b"from-b".to_vec()));
        assert_eq!(b.value(b"ev/k"), Some(b"from-b".to_vec()));
        for r in [&a, &b] {
            let c = r.conflicts();
            assert_eq!(c.len(), 1, "each side saw the loss once");
            assert_eq!((c[0].winner, c[0].loser_value.as_deref()), (late.hlc, Some(&b"from-a"[..])));
        }
    }

    #[tokio::test]
    async fn a_write_that_saw_the_previous_one_is_not_a_conflict() {
        let (a, b) = (replica(1), replica(2));
        a.shard.write(b"ev/k".to_vec(), Some(b"1".to_vec())).await.unwrap();
        b.shard.receive(a.ship_since(0)).await.unwrap();
        b.shard.write(b"ev/k".to_vec(), Some(b"2".to_vec())).await.unwrap();
        a.shard.receive(b.ship_since(0)).await.unwrap();
        assert_eq!(a.value(b"ev/k"), Some(b"2".to_vec()));
        assert!(a.conflicts().is_empty() && b.conflicts().is_empty());
    }

    #[tokio::test]
    async fn replays_are_skipped_and_gaps_refused() {
        let (a, b) = (replica(1), replica(2));
        for i in 0..3 {
            a.shard.write(format!("ev/{i}").into_bytes(), Some(b"v".to_vec())).await.unwrap();
        }
        assert_eq!(b.shard.receive(a.ship_since(0)).await.unwrap().seq, 3);
        // A replay of everything changes nothing.
        let again = b.shard.receive(a.ship_since(0)).await.unwrap();
        assert!(again.accepted && again.seq == 3);
        a.shard.write(b"ev/3".to_vec(), Some(b"v".to_vec())).await.unwrap();
        a.shard.write(b"ev/4".to_vec(), Some(b"v".to_vec())).await.unwrap();
        // Skipping sequence 4: refused, and b says where it stands.
        let gap = b.shard.receive(a.ship_since(4)).await.unwrap();
        assert!(!gap.accepted && gap.seq == 3);
        assert_eq!(b.value(b"ev/4"), None);
    }

    #[tokio::test]
    async fn tombstones_win_over_older_writes_and_are_collected_once_everyone_has_them() {
        let (a, b, c) = (replica(1), replica(2), replica(3));
        a.shard.write(b"ev/k".to_vec(), Some(b"v".to_vec())).await.unwrap();
        for r in [&b, &c] {
            r.shard.receive(a.ship_since(0)).await.unwrap();
        }
        b.shard.write(b"ev/k".to_vec(), None).await.unwrap();
        // c misses the delete for now; a gets it, and then the old put again.
        a.shard.receive(b.ship_since(0)).await.unwrap();
        let replay = a.ship(ShipBody::Resync(vec![EcWrite {
            key: b"ev/k".to_vec(),
            record: c.shard.get(b"ev/k").unwrap().unwrap(),
        }]));
        b.shard.receive(replay).await.unwrap();
        assert_eq!(a.value(b"ev/k"), None);
        assert_eq!(b.value(b"ev/k"), None, "an older write does not resurrect a deleted key");
        assert_eq!(a.shard.tombstones(), 1);

        // Not collected while c has not seen the delete.
        a.shard.collect().unwrap();
        assert_eq!(a.shard.tombstones(), 1);
        c.shard.receive(b.ship_since(0)).await.unwrap();
        // Let every pair exchange heartbeats twice: positions, then stable times.
        for _ in 0..2 {
            for (from, to) in [(&a, &b), (&a, &c), (&b, &a), (&b, &c), (&c, &a), (&c, &b)] {
                let (seq, clock) = from.shard.watermark();
                to.shard.receive(from.ship(ShipBody::Heartbeat { seq, clock })).await.unwrap();
            }
        }
        for r in [&a, &b, &c] {
            for peer in [1, 2, 3] {
                if let Some(p) = r.shard.peers.lock().unwrap().get_mut(&peer) {
                    p.acked = r.shard.positions().0;
                }
            }
            r.shard.collect().unwrap();
            assert_eq!(r.shard.tombstones(), 0);
            assert!(r.shard.get(b"ev/k").unwrap().is_none());
        }
    }

    #[tokio::test]
    async fn the_outbox_stays_bounded_and_a_resync_brings_a_peer_back() {
        let (a, b) = (replica(1), replica(2));
        for i in 0..10 {
            a.shard.write(format!("ev/{i}").into_bytes(), Some(b"v".to_vec())).await.unwrap();
        }
        a.shard.collect().unwrap();
        let (last, first_kept, _) = a.shard.positions();
        assert_eq!((last, first_kept), (10, 7), "outbox_max_entries = 4 keeps the newest 4");
        // The entries b needs are gone: a resync (pages, then the marker).
        let rows = a.shard.scan(b"ev/", 100, usize::MAX).unwrap();
        let writes = rows.into_iter().map(|(key, v)| EcWrite { key, record: decode(&v).unwrap() }).collect();
        b.shard.receive(a.ship(ShipBody::Resync(writes))).await.unwrap();
        let (seq, clock) = a.shard.watermark();
        let ack = b.shard.receive(a.ship(ShipBody::ResyncDone { seq, clock })).await.unwrap();
        assert_eq!(ack.seq, 10);
        assert_eq!(b.value(b"ev/0"), Some(b"v".to_vec()));
        a.shard.write(b"ev/new".to_vec(), Some(b"v".to_vec())).await.unwrap();
        assert!(b.shard.receive(a.ship_since(10)).await.unwrap().accepted);
        assert_eq!(b.value(b"ev/new"), Some(b"v".to_vec()));
    }
}
