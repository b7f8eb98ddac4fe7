//! openraft's state machine for one shard.
//!
//! Applying a run of committed entries builds one RocksDB batch holding the
//! data changes, the session records and the applied log id (and membership)
//! and writes it atomically, so the applied id can never run ahead of, or
//! behind, the data it describes. The batch is not fsynced on its own: the
//! entries it applies are already durable in the Raft log of a quorum, and the
//! next fsync of the node's WAL (a log append of any shard, at most a few ms
//! later) covers it. A crash in between loses only applied state the log still
//! holds; openraft re-applies it on restart from the stored applied id (logs
//! are purged only behind a snapshot, whose fsync covers everything before
//! it). This keeps a second fsync off every write's path, as etcd keeps its
//! backend commit off it.
//!
//! Exactly-once writes: a write carrying `(client_id, sequence)` stores its
//! result under that pair; a retry finds the result and returns it without
//! applying again. The client's `first_incomplete` lets results below it be
//! dropped, and sessions idle longer than `session_ttl_ms` are
//! garbage-collected. Collection is a function of the log alone: it runs
//! before a write entry whose proposal time (the leader's clock, carried in
//! the entry) is a GC interval past the last collection, and sees the run's
//! own pending writes, so every replica collects the same sessions at the
//! same index however openraft batches entries into runs. A collected session
//! leaves a marker with the next sequence it had not seen: a late retry (a
//! sequence below it) is refused as `SessionExpired`, which the client
//! reports as indeterminate, never applied twice; a resumed client's new
//! sequences start a new session. Markers are dropped one more TTL later.
//! Session state (markers included) is part of the snapshot.
//!
//! Invariants (asserted):
//! - applied indexes strictly increase;
//! - every key written lies in the shard's range (commands are validated
//!   against it at apply time and rejected otherwise);
//! - snapshot data installed lies in the shard's range.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::Arc;

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::command::{
    Command, CommandResult, MergeCommand, MetaCommand, Record, Rejection, ShrinkCommand, SplitCommand, WriteCommand,
    WriteOutcome,
};
use super::snapshot::{LocalSnapshot, SnapshotData, SnapshotHeader};
use super::{Entry, LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig, decode, encode};
use crate::shards::{ShardDesc, ShardMap};
use crate::storage::{Batch, MetaFamily, Storage, apply_meta_tag};

/// What a shard's state machine holds.
#[derive(Debug, Clone)]
pub enum ShardKind {
    /// The meta shard: holds the shard map, no user data.
    Meta { map_tx: watch::Sender<Arc<ShardMap>> },
    /// A data shard owning user keys in `[start, end)`.
    Data { start: Vec<u8>, end: Option<Vec<u8>>, epoch: u64 },
}

/// A data shard's stored range record: `(start, end, epoch)`.
pub(crate) type RangeRecord = (Vec<u8>, Option<Vec<u8>>, u64);

/// A key range `[start, end)` (`None`: to the end of the key space).
type KeyRange = (Vec<u8>, Option<Vec<u8>>);

impl ShardKind {
    /// The range to snapshot: the one stored as of the snapshot (a shrink
    /// may have applied after this kind was cloned), else this kind's.
    /// A stored record that does not decode is an error, not a reason to
    /// snapshot some other range.
    fn snapshot_range(&self, stored: Option<&[u8]>) -> io::Result<Option<KeyRange>> {
        let ShardKind::Data { start, end, .. } = self else { return Ok(None) };
        match stored.map(decode::<RangeRecord>).transpose()? {
            Some((start, end, _)) => Ok(Some((start, end))),
            None => Ok(Some((start.clone(), end.clone()))),
        }
    }

    fn range(&self) -> Option<(&[u8], Option<&[u8]>)> {
        match self {
            ShardKind::Meta { .. } => None,
            ShardKind::Data { start, end, .. } => Some((start, end.as_deref())),
        }
    }

    fn contains(&self, key: &[u8]) -> bool {
        match self.range() {
            None => false,
            Some((start, end)) => key >= start && end.is_none_or(|e| key < e),
        }
    }
}

/// Session bookkeeping limits.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// A client idle this long loses its session (and its saved results).
    pub ttl_ms: u64,
    /// How often (in log time) idle sessions are looked for.
    pub gc_interval_ms: u64,
}

#[derive(Clone)]
pub struct ShardStateMachine {
    shard: u64,
    kind: ShardKind,
    storage: Arc<Storage>,
    limits: SessionLimits,
    /// The last applied index, to assert monotonicity.
    last_applied_index: Option<u64>,
    /// Where a data shard reports the right halves of its splits, once they
    /// are durable, so that the node starts their groups.
    splits: Option<tokio::sync::mpsc::UnboundedSender<SplitNotice>>,
    /// Set while this data shard is frozen for a merge (see
    /// [`FrozenRecord`]). Meanwhile it changes nothing.
    frozen: Option<FrozenRecord>,
    /// Where frozen shards are published to the read path.
    frozen_shards: Option<FrozenShards>,
    /// Told the newest write-entry time applied, so that this node, as
    /// leader, proposes times that follow the log's clock.
    log_clock: Option<Arc<crate::raft::log_clock::LogClock>>,
    /// The log's in-memory tail: entries applied here are dropped from it.
    log_tail: Option<Arc<crate::raft::log_tail::LogTail>>,
}

/// The data shards frozen for a merge on this node, with their freeze
/// records: reads of them are refused (their keys belong to the merge's
/// left shard from its end on), and the node's status reports them.
pub type FrozenShards = Arc<std::sync::RwLock<HashMap<u64, FrozenRecord>>>;

/// A frozen shard's stored freeze record: `(freeze index, the shard it
/// merges into, sealed)`. A sealed freeze is never taken back.
pub type FrozenRecord = (u64, u64, bool);

/// The freeze record data shard `shard`'s replica here stores, if frozen.
pub fn frozen_record(storage: &Storage, shard: u64) -> io::Result<Option<FrozenRecord>> {
    storage.get_meta(MetaFamily::Apply, shard, apply_meta_tag::FROZEN)?.map(|b| decode(&b)).transpose()
}

/// Whether this replica stores a range record for data shard `shard`: it
/// started the shard (which persists the range it was created with), or
/// applied the split that made it.
pub fn has_stored_range(storage: &Storage, shard: u64) -> io::Result<bool> {
    Ok(storage.get_meta(MetaFamily::Apply, shard, apply_meta_tag::RANGE)?.is_some())
}

/// The range (start, end) this replica stores for data shard `shard`, if any.
pub fn stored_range(storage: &Storage, shard: u64) -> io::Result<Option<crate::shards::KeyRange>> {
    match storage.get_meta(MetaFamily::Apply, shard, apply_meta_tag::RANGE)? {
        Some(bytes) => decode::<RangeRecord>(&bytes).map(|(start, end, _)| Some((start, end))),
        None => Ok(None),
    }
}

/// A split this replica applied: the right half's group must start here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitNotice {
    pub shard: u64,
    pub start: Vec<u8>,
    pub end: Option<Vec<u8>>,
    pub epoch: u64,
    pub members: Vec<u64>,
}

/// The most results one client session keeps (its writes in flight). When
/// a client exceeds it, its oldest result is forgotten as if the client had
/// moved `first_incomplete` past it: a retry of it is refused, never re-applied.
const MAX_SAVED_RESULTS_PER_SESSION: usize = 4096;

/// Per (shard, client) session state.
///
/// Invariants: `saved` is sorted, holds no sequence below `first_incomplete`,
/// at most [`MAX_SAVED_RESULTS_PER_SESSION`] entries, and names exactly the
/// result records stored for this client (so they can be deleted one by one:
/// RocksDB range deletions on this hot path would make every read pay for
/// the accumulated tombstones).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct SessionHeader {
    pub(crate) first_incomplete: u64,
    pub(crate) last_active_ms: u64,
    pub(crate) saved: Vec<u64>,
}

fn header_key(client_id: u64) -> [u8; 8] {
    client_id.to_be_bytes()
}

/// Where a collected session leaves its marker: the client id, then 0xff (a
/// length no header or result key has).
fn marker_key(client_id: u64) -> [u8; 9] {
    let mut k = [0xffu8; 9];
    k[..8].copy_from_slice(&client_id.to_be_bytes());
    k
}

/// What a collected session leaves behind.
///
/// Invariant: every sequence the session ever applied is below
/// `next_sequence`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionMarker {
    /// Log time of the collection; the marker is dropped a TTL after it.
    collected_at_ms: u64,
    next_sequence: u64,
}

fn result_key(client_id: u64, sequence: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&client_id.to_be_bytes());
    k[8..].copy_from_slice(&sequence.to_be_bytes());
    k
}

/// Writes of the current apply run that readers of the batch must see before
/// it reaches RocksDB.
#[derive(Default)]
struct Overlay {
    data: HashMap<Vec<u8>, Option<Record>>,
    /// `None`: deleted in this run.
    sessions: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// The last session collection's log time, once this run has read it
    /// (or collected): read from storage once per run, not per entry.
    session_gc_ms: Option<u64>,
}

impl ShardStateMachine {
    pub fn new(shard: u64, kind: ShardKind, storage: Arc<Storage>, limits: SessionLimits) -> io::Result<Self> {
        let mut sm = Self {
            shard,
            kind,
            storage,
            limits,
            last_applied_index: None,
            splits: None,
            frozen: None,
            frozen_shards: None,
            log_clock: None,
            log_tail: None,
        };
        sm.last_applied_index = sm.applied_log_id()?.map(|id| id.index);
        sm.frozen = sm.apply_meta::<FrozenRecord>(apply_meta_tag::FROZEN)?;
        // A shrink applied earlier wins over the range the caller knows.
        if let (ShardKind::Data { .. }, Some((start, end, epoch))) =
            (&sm.kind, sm.apply_meta::<RangeRecord>(apply_meta_tag::RANGE)?)
        {
            sm.kind = ShardKind::Data { start, end, epoch };
        }
        if let ShardKind::Meta { map_tx } = &sm.kind
            && let Some(map) = sm.stored_map()?
        {
            map_tx.send_replace(Arc::new(map));
        }
        Ok(sm)
    }

    /// Drops entries from `tail` once they are applied here.
    pub fn with_log_tail(mut self, tail: Arc<crate::raft::log_tail::LogTail>) -> Self {
        self.log_tail = Some(tail);
        self
    }

    /// Tells `clock` the newest write-entry time applied, and now, the time
    /// of the last session collection on disk (replays and that time were
    /// proposed before any downtime, so they hold the log's clock back by
    /// it: safe, sessions only live longer; see `raft::log_clock`).
    pub fn with_log_clock(mut self, clock: Arc<crate::raft::log_clock::LogClock>) -> io::Result<Self> {
        if let Some(gc_ms) = self.apply_meta::<u64>(apply_meta_tag::SESSION_GC_MS)? {
            clock.applied(self.shard, gc_ms);
        }
        self.log_clock = Some(clock);
        Ok(self)
    }

    /// Reports the right halves of splits this data shard applies to `tx`.
    pub fn with_split_notices(mut self, tx: tokio::sync::mpsc::UnboundedSender<SplitNotice>) -> Self {
        self.splits = Some(tx);
        self
    }

    /// Publishes this shard's freeze (now, if it is frozen, and when it
    /// freezes) to `frozen`, which the read path consults.
    pub fn with_frozen_shards(mut self, frozen: FrozenShards) -> Self {
        self.frozen_shards = Some(frozen);
        self.publish_frozen();
        self
    }

    fn publish_frozen(&self) {
        if let Some(shards) = &self.frozen_shards {
            let mut shards = shards.write().expect("frozen shards");
            match self.frozen {
                Some(record) => shards.insert(self.shard, record),
                None => shards.remove(&self.shard),
            };
        }
    }

    /// The data shard's range as this replica has it (its stored range record,
    /// else the one it was created with); `None` for the meta shard.
    pub fn data_range(&self) -> Option<(Vec<u8>, Option<Vec<u8>>)> {
        self.kind.range().map(|(s, e)| (s.to_vec(), e.map(<[u8]>::to_vec)))
    }

    /// Whether this data shard's range is stored (not only known from the map).
    pub fn range_is_stored(&self) -> io::Result<bool> {
        has_stored_range(&self.storage, self.shard)
    }

    /// Stores the range this data shard was created with, durably, unless
    /// one is stored already. From then on the replica's own log, not the
    /// shard map (which records a split before the shard's log applies it),
    /// decides the range after a restart.
    pub async fn persist_range(&self) -> io::Result<()> {
        let ShardKind::Data { start, end, epoch } = &self.kind else { return Ok(()) };
        if self.range_is_stored()? {
            return Ok(());
        }
        let mut batch = self.storage.batch();
        let record: RangeRecord = (start.clone(), end.clone(), *epoch);
        batch.put_meta(MetaFamily::Apply, self.shard, apply_meta_tag::RANGE, &encode(&record));
        self.storage.write_durable(batch)?.await?;
        Ok(())
    }

    /// A record of this shard's state machine; one that does not decode is
    /// an error naming the shard and the record.
    fn apply_meta<T: serde::de::DeserializeOwned>(&self, tag: u8) -> io::Result<Option<T>> {
        match self.storage.get_meta(MetaFamily::Apply, self.shard, tag)? {
            Some(b) => decode(&b).map(Some).map_err(|e| {
                io::Error::new(e.kind(), format!("shard {}: corrupt stored record (apply tag {tag}): {e}", self.shard))
            }),
            None => Ok(None),
        }
    }

    fn applied_log_id(&self) -> io::Result<Option<LogId>> {
        self.apply_meta(apply_meta_tag::APPLIED)
    }

    fn stored_map(&self) -> io::Result<Option<ShardMap>> {
        self.apply_meta(apply_meta_tag::SHARD_MAP)
    }

    /// The map as of the entry being applied: one written earlier in this
    /// run (not yet on disk), else the stored one.
    fn current_map(&self, pending: &Option<ShardMap>) -> io::Result<Option<ShardMap>> {
        match pending {
            Some(map) => Ok(Some(map.clone())),
            None => self.stored_map(),
        }
    }

    fn read_record(&self, key: &[u8], overlay: &Overlay) -> io::Result<Option<Record>> {
        if let Some(r) = overlay.data.get(key) {
            return Ok(r.clone());
        }
        match self.storage.get_data(key)? {
            Some(b) => Ok(Some(decode(&b)?)),
            None => Ok(None),
        }
    }

    fn read_session(&self, key: &[u8], overlay: &Overlay) -> io::Result<Option<Vec<u8>>> {
        if let Some(v) = overlay.sessions.get(key) {
            return Ok(v.clone());
        }
        Ok(self.storage.get_session(self.shard, key)?)
    }

    fn apply_write(
        &self,
        index: u64,
        cmd: &WriteCommand,
        batch: &mut Batch<'_>,
        overlay: &mut Overlay,
    ) -> io::Result<CommandResult> {
        let s = cmd.session;
        // The session's header, read once: nothing below changes it before
        // it is updated at the end.
        let mut session_header = SessionHeader::default();
        if s.client_id != 0 {
            if let Some(saved) = self.read_session(&result_key(s.client_id, s.sequence), overlay)? {
                return decode(&saved);
            }
            let header: SessionHeader = self
                .read_session(&header_key(s.client_id), overlay)?
                .map(|b| decode(&b))
                .transpose()?
                .unwrap_or_default();
            if s.sequence < header.first_incomplete {
                let r = Rejection::SessionExpired { client_id: s.client_id, sequence: s.sequence };
                return Ok(CommandResult::Rejected(r));
            }
            session_header = header;
            if let Some(bytes) = self.read_session(&marker_key(s.client_id), overlay)? {
                let marker: SessionMarker = decode(&bytes)?;
                if s.sequence < marker.next_sequence {
                    // A retry of a write the collected session may have applied.
                    let r = Rejection::SessionExpired { client_id: s.client_id, sequence: s.sequence };
                    return Ok(CommandResult::Rejected(r));
                }
                // The client resumed with new writes: a new session.
                batch.delete_session(self.shard, &marker_key(s.client_id));
                overlay.sessions.insert(marker_key(s.client_id).to_vec(), None);
            }
        }

        let ShardKind::Data { epoch, .. } = &self.kind else {
            let reason = "the meta shard holds no user keys".to_string();
            return Ok(CommandResult::Rejected(Rejection::WrongKind { shard: self.shard, reason }));
        };
        if cmd.epoch != 0 && cmd.epoch < *epoch {
            let r = Rejection::StaleEpoch { shard: self.shard, request_epoch: cmd.epoch, epoch: *epoch };
            return Ok(CommandResult::Rejected(r));
        }
        let keys = cmd.conditions.iter().map(|c| c.key.as_slice()).chain(cmd.ops.iter().map(|o| o.key()));
        for key in keys {
            if !self.kind.contains(key) {
                return Ok(CommandResult::Rejected(Rejection::KeyOutsideShard { shard: self.shard }));
            }
        }

        let mut current = Vec::with_capacity(cmd.conditions.len());
        let mut all_hold = true;
        for c in &cmd.conditions {
            let record = self.read_record(&c.key, overlay)?;
            all_hold &= c.expect.holds(record.as_ref());
            current.push(record);
        }
        let outcome = if !all_hold {
            WriteOutcome { applied: false, version: index, existed: Vec::new(), current }
        } else {
            let mut existed = Vec::with_capacity(cmd.ops.len());
            for op in &cmd.ops {
                match op {
                    // A put does not read the key: its answer does not say
                    // whether the key existed (a point read per put was a
                    // tenth of a node's CPU under write load).
                    super::command::Op::Put { key, value } => {
                        existed.push(false);
                        let record = Record { value: value.clone(), version: index };
                        batch.put_data(key, &encode(&record));
                        overlay.data.insert(key.clone(), Some(record));
                    }
                    super::command::Op::Delete { key } => {
                        existed.push(self.read_record(key, overlay)?.is_some());
                        batch.delete_data(key);
                        overlay.data.insert(key.clone(), None);
                    }
                }
            }
            WriteOutcome { applied: true, version: index, existed, current: Vec::new() }
        };
        let result = CommandResult::Write(outcome);

        if s.client_id != 0 {
            let rk = result_key(s.client_id, s.sequence);
            let saved = encode(&result);
            batch.put_session(self.shard, &rk, &saved);
            overlay.sessions.insert(rk.to_vec(), Some(saved));
            let mut header = session_header;
            header.last_active_ms = header.last_active_ms.max(cmd.proposed_at_ms);
            header.first_incomplete = header.first_incomplete.max(s.first_incomplete);
            if let Err(at) = header.saved.binary_search(&s.sequence) {
                header.saved.insert(at, s.sequence);
            }
            if header.saved.len() > MAX_SAVED_RESULTS_PER_SESSION {
                header.first_incomplete = header.first_incomplete.max(header.saved[0] + 1);
            }
            let keep_from = header.saved.partition_point(|seq| *seq < header.first_incomplete);
            for seq in header.saved.drain(..keep_from) {
                let key = result_key(s.client_id, seq);
                batch.delete_session(self.shard, &key);
                overlay.sessions.insert(key.to_vec(), None);
            }
            let encoded = encode(&header);
            batch.put_session(self.shard, &header_key(s.client_id), &encoded);
            overlay.sessions.insert(header_key(s.client_id).to_vec(), Some(encoded));
        }
        Ok(result)
    }

    /// Applies a run of committed entries as one atomic batch and returns one
    /// result per entry. The batch is not fsynced on its own (the Raft log,
    /// fsynced on a quorum before these entries committed, is the durable
    /// record, and the applied id lands in the same batch, so a crash
    /// re-applies what was lost), except for a run that splits, freezes,
    /// seals, takes back a freeze or merges: that one is on disk before this
    /// returns, since other groups on this node start or stop on it.
    pub async fn apply_run(&mut self, run: &[Entry]) -> io::Result<Vec<CommandResult>> {
        let storage = self.storage.clone();
        let mut batch = storage.batch();
        let mut overlay = Overlay::default();
        let mut last_applied: Option<LogId> = None;
        let mut membership: Option<StoredMembership> = None;
        let mut new_map: Option<ShardMap> = None;
        let mut results = Vec::with_capacity(run.len());
        // Splits applied in this run: the batch is fsynced before their
        // groups start, so that a restart never finds a right half's group
        // whose left half has not split.
        let mut splits: Vec<SplitNotice> = Vec::new();
        // A freeze or a merge is fsynced before it is answered: the merge's
        // coordinator moves on from what it hears, for good.
        let mut durable = false;
        let mut newest_entry_ms = 0;

        for entry in run {
            let index = entry.log_id.index;
            assert!(
                self.last_applied_index.is_none_or(|last| index > last),
                "shard {}: applying index {index} after {:?}",
                self.shard,
                self.last_applied_index
            );
            self.last_applied_index = Some(index);
            let result = match &entry.payload {
                EntryPayload::Blank => CommandResult::None,
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(entry.log_id), m.clone()));
                    CommandResult::None
                }
                EntryPayload::Normal(Command::Write(_)) if self.frozen.is_some() => {
                    let into = self.frozen.map_or(0, |(_, into, _)| into);
                    CommandResult::Rejected(Rejection::Frozen { shard: self.shard, into })
                }
                EntryPayload::Normal(Command::Write(cmd)) => {
                    newest_entry_ms = newest_entry_ms.max(cmd.proposed_at_ms);
                    self.collect_sessions(cmd.proposed_at_ms, &mut batch, &mut overlay)?;
                    self.apply_write(index, cmd, &mut batch, &mut overlay)?
                }
                EntryPayload::Normal(Command::Meta(MetaCommand::Bootstrap(map))) => match &self.kind {
                    ShardKind::Meta { .. } => {
                        let current = self.current_map(&new_map)?;
                        match current {
                            Some(existing) => CommandResult::Meta { map_version: existing.version, changed: false },
                            None => {
                                let mut map = map.clone();
                                map.version = index;
                                batch.put_meta(MetaFamily::Apply, self.shard, apply_meta_tag::SHARD_MAP, &encode(&map));
                                new_map = Some(map);
                                CommandResult::Meta { map_version: index, changed: true }
                            }
                        }
                    }
                    ShardKind::Data { .. } => CommandResult::Rejected(Rejection::WrongKind {
                        shard: self.shard,
                        reason: "shard map commands go to the meta shard".into(),
                    }),
                },
                // Handled below (they need `&mut self`).
                EntryPayload::Normal(Command::Shrink(_) | Command::Split(_) | Command::Merge(_))
                    if self.frozen.is_some() =>
                {
                    let into = self.frozen.map_or(0, |(_, into, _)| into);
                    CommandResult::Rejected(Rejection::Frozen { shard: self.shard, into })
                }
                EntryPayload::Normal(
                    Command::Shrink(_)
                    | Command::Split(_)
                    | Command::Freeze { .. }
                    | Command::Unfreeze { .. }
                    | Command::Seal { .. }
                    | Command::Merge(_)
                    | Command::Meta(MetaCommand::CarveShard { .. } | MetaCommand::SplitShard { .. }),
                ) => CommandResult::None,
                EntryPayload::Normal(Command::Meta(
                    cmd @ (MetaCommand::BeginReplicaChange { .. }
                    | MetaCommand::BeginDrainMove { .. }
                    | MetaCommand::FinishReplicaChange { .. }
                    | MetaCommand::CancelReplicaChange { .. }
                    | MetaCommand::SetNodeState { .. }
                    | MetaCommand::AddNode { .. }
                    | MetaCommand::BeginMerge { .. }
                    | MetaCommand::CancelMerge { .. }
                    | MetaCommand::CommitMerge { .. }
                    | MetaCommand::FreezeMerge { .. }
                    | MetaCommand::FinishMerge { .. }
                    | MetaCommand::AddUser { .. }
                    | MetaCommand::RemoveUser { .. }
                    | MetaCommand::GrantUser { .. }),
                )) => {
                    let current = self.current_map(&new_map)?;
                    let mut joined = None;
                    let updated = match (&self.kind, current) {
                        (ShardKind::Meta { .. }, Some(mut map)) => {
                            let changed = match cmd {
                                MetaCommand::BeginReplicaChange { shard, change } => {
                                    map.begin_replica_change(*shard, *change)
                                }
                                MetaCommand::BeginDrainMove { shard, change } => map.begin_drain_move(*shard, *change),
                                MetaCommand::FinishReplicaChange { shard, change } => {
                                    map.finish_replica_change(*shard, *change)
                                }
                                MetaCommand::CancelReplicaChange { shard, change } => {
                                    map.cancel_replica_change(*shard, *change)
                                }
                                MetaCommand::SetNodeState { node, state } => map.set_node_state(*node, *state),
                                MetaCommand::AddNode { addr, region, zone } => {
                                    map.add_node(addr, region, zone).map(|(id, created)| {
                                        joined = Some(id);
                                        created
                                    })
                                }
                                MetaCommand::BeginMerge { left, expected_epoch } => {
                                    map.begin_merge(*left, *expected_epoch)
                                }
                                MetaCommand::CancelMerge { left, unfrozen } => map.cancel_merge(*left, *unfrozen),
                                MetaCommand::CommitMerge { left, right_frozen_index } => {
                                    map.commit_merge(*left, *right_frozen_index)
                                }
                                MetaCommand::FreezeMerge { left } => map.freeze_merge(*left),
                                MetaCommand::FinishMerge { left, right, epoch } => {
                                    map.finish_merge(*left, *right, *epoch)
                                }
                                MetaCommand::AddUser { name, token_sha256, grants } => {
                                    map.add_user(name, token_sha256.as_deref(), grants)
                                }
                                MetaCommand::RemoveUser { name } => map.remove_user(name),
                                MetaCommand::GrantUser { name, grant, revoke } => map.grant_user(name, grant, *revoke),
                                _ => unreachable!("matched above"),
                            };
                            changed.and_then(|changed| {
                                if changed {
                                    map.version = index;
                                }
                                map.validate().map_err(|e| e.to_string())?;
                                Ok((map, changed))
                            })
                        }
                        (ShardKind::Meta { .. }, None) => Err("the shard map is not bootstrapped yet".to_string()),
                        (ShardKind::Data { .. }, _) => Err("shard map commands go to the meta shard".to_string()),
                    };
                    match updated {
                        Ok((map, changed)) => {
                            let map_version = map.version;
                            if changed {
                                batch.put_meta(MetaFamily::Apply, self.shard, apply_meta_tag::SHARD_MAP, &encode(&map));
                                new_map = Some(map);
                            }
                            match joined {
                                Some(node_id) => CommandResult::Joined { node_id, map_version },
                                None => CommandResult::Meta { map_version, changed },
                            }
                        }
                        Err(reason) => CommandResult::Rejected(Rejection::WrongKind { shard: self.shard, reason }),
                    }
                }
                EntryPayload::Normal(Command::Meta(MetaCommand::SetLeaderRegion { shard, region })) => {
                    let current = self.current_map(&new_map)?;
                    let updated = match (&self.kind, current) {
                        (ShardKind::Meta { .. }, Some(mut map)) => match map.shards.iter_mut().find(|s| s.id == *shard)
                        {
                            Some(desc) => {
                                desc.preferred_leader_region = region.clone();
                                map.version = index;
                                Ok(map)
                            }
                            None => Err(format!("no shard {shard} in the map")),
                        },
                        (ShardKind::Meta { .. }, None) => Err("the shard map is not bootstrapped yet".to_string()),
                        (ShardKind::Data { .. }, _) => Err("shard map commands go to the meta shard".to_string()),
                    };
                    match updated {
                        Ok(map) => {
                            batch.put_meta(MetaFamily::Apply, self.shard, apply_meta_tag::SHARD_MAP, &encode(&map));
                            new_map = Some(map);
                            CommandResult::Meta { map_version: index, changed: true }
                        }
                        Err(reason) => CommandResult::Rejected(Rejection::WrongKind { shard: self.shard, reason }),
                    }
                }
            };
            let result = match (result, &entry.payload) {
                (CommandResult::None, EntryPayload::Normal(Command::Shrink(cmd))) => {
                    self.apply_shrink(cmd, &mut batch, &overlay)?
                }
                (CommandResult::None, EntryPayload::Normal(Command::Split(cmd))) => {
                    self.apply_split(index, cmd, &mut batch, &mut overlay, &mut splits)?
                }
                (CommandResult::None, EntryPayload::Normal(Command::Freeze { into })) => {
                    durable = true;
                    self.apply_freeze(index, *into, &mut batch)
                }
                (CommandResult::None, EntryPayload::Normal(Command::Unfreeze { index: at })) => {
                    durable = true;
                    self.apply_unfreeze(*at, &mut batch)
                }
                (CommandResult::None, EntryPayload::Normal(Command::Seal { index: at })) => {
                    durable = true;
                    self.apply_seal(*at, &mut batch)
                }
                (CommandResult::None, EntryPayload::Normal(Command::Merge(cmd))) => {
                    durable = true;
                    self.apply_merge(cmd, &mut batch, &overlay).await?
                }
                (
                    CommandResult::None,
                    EntryPayload::Normal(Command::Meta(MetaCommand::SplitShard { shard, epoch, key, automatic })),
                ) => match self.split_map(index, *shard, *epoch, key, *automatic, &new_map)? {
                    Ok((map, result)) => {
                        if map.version == index {
                            batch.put_meta(MetaFamily::Apply, self.shard, apply_meta_tag::SHARD_MAP, &encode(&map));
                            new_map = Some(map);
                        }
                        result
                    }
                    Err(reason) => CommandResult::Rejected(Rejection::WrongKind { shard: self.shard, reason }),
                },
                (CommandResult::None, EntryPayload::Normal(Command::Meta(carve @ MetaCommand::CarveShard { .. }))) => {
                    match self.carve(index, carve, &new_map)? {
                        Ok((map, shard_id)) => {
                            let version = map.version;
                            batch.put_meta(MetaFamily::Apply, self.shard, apply_meta_tag::SHARD_MAP, &encode(&map));
                            new_map = Some(map);
                            CommandResult::Carved { shard_id, map_version: version }
                        }
                        Err(reason) => CommandResult::Rejected(Rejection::WrongKind { shard: self.shard, reason }),
                    }
                }
                (result, _) => result,
            };
            last_applied = Some(entry.log_id);
            results.push(result);
        }

        let Some(last_applied) = last_applied else { return Ok(results) };
        batch.put_meta(MetaFamily::Apply, self.shard, apply_meta_tag::APPLIED, &encode(&last_applied));
        if let Some(m) = &membership {
            batch.put_meta(MetaFamily::Apply, self.shard, apply_meta_tag::MEMBERSHIP, &encode(m));
        }
        if splits.is_empty() && !durable {
            storage.write_relaxed(batch)?;
        } else {
            storage.write_durable(batch)?.await?;
        }

        if let (Some(map), ShardKind::Meta { map_tx }) = (new_map, &self.kind) {
            map_tx.send_replace(Arc::new(map));
        }
        if durable {
            self.publish_frozen();
        }
        if let Some(clock) = self.log_clock.as_ref().filter(|_| newest_entry_ms > 0) {
            clock.applied(self.shard, newest_entry_ms);
        }
        for notice in splits {
            if let Some(tx) = &self.splits {
                let _ = tx.send(notice);
            }
        }
        Ok(results)
    }

    /// Splits this data shard (see [`Command::Split`]): from this entry on it
    /// owns `[start, key)` at `left_epoch`; the right half's range record and
    /// a copy of every client session are written for `right_shard` in the
    /// same batch, so both halves honour the same retries. Refused unless
    /// `key` lies strictly inside the range; a retry of an applied split
    /// (the range already ends at `key`) changes nothing.
    fn apply_split(
        &mut self,
        index: u64,
        cmd: &SplitCommand,
        batch: &mut Batch<'_>,
        overlay: &mut Overlay,
        splits: &mut Vec<SplitNotice>,
    ) -> io::Result<CommandResult> {
        let reject = |reason: String| Ok(CommandResult::Rejected(Rejection::WrongKind { shard: self.shard, reason }));
        let ShardKind::Data { start, end, epoch } = &self.kind else {
            return reject("the meta shard has no range to split".into());
        };
        let done = CommandResult::Split {
            left_epoch: cmd.left_epoch,
            right_shard: cmd.right_shard,
            right_epoch: cmd.right_epoch,
            map_version: 0,
        };
        if end.as_ref() == Some(&cmd.key) && *epoch >= cmd.left_epoch {
            return Ok(done); // a retry
        }
        if cmd.key <= *start || end.as_ref().is_some_and(|e| cmd.key >= *e) {
            return reject(format!("split key {:?} is not strictly inside the shard's range", cmd.key));
        }
        if cmd.left_epoch <= *epoch || cmd.right_shard == self.shard || cmd.members.is_empty() {
            return reject(format!("split to epoch {} but the shard is at epoch {epoch}", cmd.left_epoch));
        }
        let right: RangeRecord = (cmd.key.clone(), end.clone(), cmd.right_epoch);
        let left: RangeRecord = (start.clone(), Some(cmd.key.clone()), cmd.left_epoch);
        batch.put_meta(MetaFamily::Apply, self.shard, apply_meta_tag::RANGE, &encode(&left));
        batch.put_meta(MetaFamily::Apply, cmd.right_shard, apply_meta_tag::RANGE, &encode(&right));
        // Every session record (headers, markers, results), as of this entry.
        let mut sessions = BTreeMap::new();
        for key_len in [8, 9, 16] {
            sessions.extend(self.current_sessions(key_len, overlay)?);
        }
        batch.clear_sessions(cmd.right_shard);
        for (key, value) in &sessions {
            batch.put_session(cmd.right_shard, key, value);
        }
        let gc_ms = self.last_session_gc_ms(overlay)?;
        batch.put_meta(MetaFamily::Apply, cmd.right_shard, apply_meta_tag::SESSION_GC_MS, &encode(&gc_ms));
        tracing::info!(shard = self.shard, index, right = cmd.right_shard, sessions = sessions.len(), "shard split");
        splits.push(SplitNotice {
            shard: cmd.right_shard,
            start: right.0,
            end: right.1,
            epoch: cmd.right_epoch,
            members: cmd.members.clone(),
        });
        self.kind = ShardKind::Data { start: left.0, end: left.1, epoch: cmd.left_epoch };
        Ok(done)
    }

    /// Freezes this data shard for its merge into `into` (see
    /// [`Command::Freeze`]); a retry answers the first freeze's index.
    fn apply_freeze(&mut self, index: u64, into: u64, batch: &mut Batch<'_>) -> CommandResult {
        if let Some((at, _, _)) = self.frozen {
            return CommandResult::Frozen { index: at };
        }
        if !matches!(self.kind, ShardKind::Data { .. }) {
            let reason = "the meta shard does not merge".to_string();
            return CommandResult::Rejected(Rejection::WrongKind { shard: self.shard, reason });
        }
        let record: FrozenRecord = (index, into, false);
        batch.put_meta(MetaFamily::Apply, self.shard, apply_meta_tag::FROZEN, &encode(&record));
        self.frozen = Some(record);
        tracing::info!(shard = self.shard, index, into, "shard frozen for a merge");
        CommandResult::Frozen { index }
    }

    /// Takes back the freeze at `at` (see [`Command::Unfreeze`]): unless
    /// sealed, the shard serves requests again. A freeze at another index
    /// is a newer one, left alone; an unfrozen shard answers `Unfrozen`.
    fn apply_unfreeze(&mut self, at: u64, batch: &mut Batch<'_>) -> CommandResult {
        match self.frozen {
            None => CommandResult::Unfrozen,
            Some((index, _, true)) => CommandResult::Sealed { index },
            Some((index, _, false)) if index == at => {
                batch.delete_meta(MetaFamily::Apply, self.shard, apply_meta_tag::FROZEN);
                self.frozen = None;
                tracing::info!(shard = self.shard, index, "shard unfrozen: the merge was given up");
                CommandResult::Unfrozen
            }
            Some((index, ..)) => CommandResult::Rejected(Rejection::WrongKind {
                shard: self.shard,
                reason: format!("frozen at index {index}, not {at}"),
            }),
        }
    }

    /// Seals the freeze at `at` (see [`Command::Seal`]); refused unless the
    /// shard is frozen at exactly that index.
    fn apply_seal(&mut self, at: u64, batch: &mut Batch<'_>) -> CommandResult {
        match self.frozen {
            Some((index, into, sealed)) if index == at => {
                if !sealed {
                    let record: FrozenRecord = (index, into, true);
                    batch.put_meta(MetaFamily::Apply, self.shard, apply_meta_tag::FROZEN, &encode(&record));
                    self.frozen = Some(record);
                    tracing::info!(shard = self.shard, index, into, "freeze sealed: the merge goes through");
                }
                CommandResult::Sealed { index }
            }
            other => CommandResult::Rejected(Rejection::WrongKind {
                shard: self.shard,
                reason: format!("not frozen at index {at} (freeze: {other:?})"),
            }),
        }
    }

    /// Absorbs the frozen shard after this one (see [`Command::Merge`]).
    ///
    /// This node holds a replica of the right shard (the merge's coordinator
    /// aligned the replicas and saw every one apply the freeze before it
    /// proposed this): its state, final from the freeze on, is read here, so
    /// every replica of this shard takes over the same data and sessions.
    /// Should the right replica here lag anyway, the apply waits for it.
    /// Refused (on every replica alike): the range does not continue into
    /// the right shard's, the freeze was at another index, an older epoch.
    /// A retry of an applied merge changes nothing.
    async fn apply_merge(
        &mut self,
        cmd: &MergeCommand,
        batch: &mut Batch<'_>,
        overlay: &Overlay,
    ) -> io::Result<CommandResult> {
        let reject = |reason: String| Ok(CommandResult::Rejected(Rejection::WrongKind { shard: self.shard, reason }));
        let ShardKind::Data { start, end, epoch } = self.kind.clone() else {
            return reject("the meta shard does not merge".into());
        };
        if end == cmd.right_end && epoch >= cmd.epoch {
            return Ok(CommandResult::Merged { epoch }); // a retry
        }
        if cmd.epoch <= epoch || end.is_none() || cmd.right_shard == self.shard {
            return reject(format!("merge to epoch {} but the shard is at epoch {epoch}", cmd.epoch));
        }
        let right = cmd.right_shard;
        match self.await_applied(right, cmd.right_frozen_index).await? {
            Some((at, into, _)) if at == cmd.right_frozen_index && into == self.shard => {}
            other => {
                return reject(format!(
                    "shard {right}'s freeze is {other:?}, not at index {} into this shard",
                    cmd.right_frozen_index
                ));
            }
        }
        match stored_range(&self.storage, right)? {
            Some((r_start, r_end)) if Some(&r_start) == end.as_ref() && r_end == cmd.right_end => {}
            other => return reject(format!("shard {right}'s range {other:?} does not continue this shard's")),
        }

        // Sessions: both shards' records, combined per client.
        let right_records = |key_len| -> io::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
            Ok(self.storage.sessions_with_key_len(right, key_len)?.into_iter().collect())
        };
        let mut put = |key: &[u8], value: &[u8]| batch.put_session(self.shard, key, value);
        let mine_results = self.current_sessions(16, overlay)?;
        for (key, value) in right_records(16)? {
            if !mine_results.contains_key(&key) {
                put(&key, &value);
            }
        }
        let mine_markers = self.current_sessions(9, overlay)?;
        for (key, value) in right_records(9)? {
            let theirs: SessionMarker = decode(&value)?;
            let marker = match mine_markers.get(&key).map(|v| decode::<SessionMarker>(v)).transpose()? {
                Some(ours) => SessionMarker {
                    collected_at_ms: ours.collected_at_ms.max(theirs.collected_at_ms),
                    next_sequence: ours.next_sequence.max(theirs.next_sequence),
                },
                None => theirs,
            };
            put(&key, &encode(&marker));
        }
        let mine_headers = self.current_sessions(8, overlay)?;
        let mut dropped = Vec::new();
        for (key, value) in right_records(8)? {
            let theirs: SessionHeader = decode(&value)?;
            let mut header = match mine_headers.get(&key).map(|v| decode::<SessionHeader>(v)).transpose()? {
                Some(ours) => SessionHeader {
                    first_incomplete: ours.first_incomplete.max(theirs.first_incomplete),
                    last_active_ms: ours.last_active_ms.max(theirs.last_active_ms),
                    saved: ours
                        .saved
                        .into_iter()
                        .chain(theirs.saved)
                        .collect::<std::collections::BTreeSet<_>>()
                        .into_iter()
                        .collect(),
                },
                None => theirs,
            };
            let client = u64::from_be_bytes(key[..8].try_into().expect("8-byte session header key"));
            if header.saved.len() > MAX_SAVED_RESULTS_PER_SESSION {
                let over = header.saved.len() - MAX_SAVED_RESULTS_PER_SESSION;
                header.first_incomplete = header.first_incomplete.max(header.saved[over - 1] + 1);
            }
            let keep_from = header.saved.partition_point(|seq| *seq < header.first_incomplete);
            dropped.extend(header.saved.drain(..keep_from).map(|seq| result_key(client, seq)));
            put(&key, &encode(&header));
        }
        for key in dropped {
            batch.delete_session(self.shard, &key);
        }

        let record: RangeRecord = (start.clone(), cmd.right_end.clone(), cmd.epoch);
        batch.put_meta(MetaFamily::Apply, self.shard, apply_meta_tag::RANGE, &encode(&record));
        tracing::info!(shard = self.shard, right, epoch = cmd.epoch, "shard absorbed the shard after it (merge)");
        self.kind = ShardKind::Data { start, end: cmd.right_end.clone(), epoch: cmd.epoch };
        Ok(CommandResult::Merged { epoch: cmd.epoch })
    }

    /// The freeze record of `shard`'s replica here once that replica has
    /// applied its log up to `index` (waits for it, warning while it lags).
    /// A merge is proposed only after the freeze at `index` was sealed, so
    /// from that entry on every replica's record is the same: the answer
    /// does not depend on how far this one has got.
    async fn await_applied(&self, shard: u64, index: u64) -> io::Result<Option<FrozenRecord>> {
        let started = std::time::Instant::now();
        let mut warned = started;
        loop {
            let applied: Option<LogId> = self
                .storage
                .get_meta(MetaFamily::Apply, shard, apply_meta_tag::APPLIED)?
                .map(|b| decode(&b))
                .transpose()?;
            if applied.is_some_and(|a| a.index >= index) {
                return frozen_record(&self.storage, shard);
            }
            if warned.elapsed() >= std::time::Duration::from_secs(10) {
                warned = std::time::Instant::now();
                tracing::warn!(
                    shard = self.shard,
                    right = shard,
                    waited_s = started.elapsed().as_secs(),
                    "a merge waits for this node's replica of the right shard to apply its freeze"
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// The map after a [`MetaCommand::SplitShard`] and what to answer, or
    /// why it is refused. A retry of a recorded split answers it with the
    /// map unchanged (its version below `index`).
    fn split_map(
        &self,
        index: u64,
        shard: u64,
        epoch: u64,
        key: &[u8],
        automatic: bool,
        pending: &Option<ShardMap>,
    ) -> io::Result<Result<(ShardMap, CommandResult), String>> {
        let ShardKind::Meta { .. } = &self.kind else {
            return Ok(Err("shard map commands go to the meta shard".into()));
        };
        let Some(mut map) = self.current_map(pending)? else {
            return Ok(Err("the shard map is not bootstrapped yet".into()));
        };
        let Some(pos) = map.shards.iter().position(|s| s.id == shard) else {
            return Ok(Err(format!("no shard {shard} in the map")));
        };
        let left = &map.shards[pos];
        if left.end.as_deref() == Some(key)
            && left.epoch > epoch
            && let Some(right) = map.shards.get(pos + 1).filter(|r| !r.is_eventual())
        {
            let result = CommandResult::Split {
                left_epoch: left.epoch,
                right_shard: right.id,
                right_epoch: right.epoch,
                map_version: map.version,
            };
            return Ok(Ok((map, result))); // a retry of a recorded split
        }
        if left.epoch != epoch {
            return Ok(Err(format!("shard {shard} is at epoch {}, not {epoch}", left.epoch)));
        }
        if left.is_eventual() {
            return Ok(Err(format!("shard {shard} is eventual: only Raft shards split")));
        }
        if let Some(c) = &left.change {
            let change = crate::shards::describe(c);
            return Ok(Err(format!("shard {shard} is changing replicas ({change}); split it once that is done")));
        }
        if let Some((l, m)) = map.merge_of(shard) {
            return Ok(Err(format!(
                "shard {shard} is in the merge of shards {l} and {}; split it once that is done",
                m.right
            )));
        }
        if !left.contains(key) || key == left.start.as_slice() {
            return Ok(Err(format!("the split key is not strictly inside shard {shard}'s range")));
        }
        // Ids are never reused: shards are only ever added.
        let id = map.shards.iter().map(|s| s.id).max().unwrap_or(0) + 1;
        let mut right = left.clone();
        right.id = id;
        right.start = key.to_vec();
        right.epoch = epoch + 1;
        right.auto_split = automatic;
        let left = &mut map.shards[pos];
        left.end = Some(key.to_vec());
        left.epoch = epoch + 1;
        map.shards.insert(pos + 1, right);
        map.version = index;
        let result =
            CommandResult::Split { left_epoch: epoch + 1, right_shard: id, right_epoch: epoch + 1, map_version: index };
        Ok(map.validate().map(|()| (map, result)).map_err(|e| e.to_string()))
    }

    /// Narrows this data shard's range (see [`Command::Shrink`]): refused
    /// unless the new range keeps one end of the current one, is not empty,
    /// and the keys given up hold no data (as of this entry).
    fn apply_shrink(
        &mut self,
        cmd: &ShrinkCommand,
        batch: &mut Batch<'_>,
        overlay: &Overlay,
    ) -> io::Result<CommandResult> {
        let reject = |reason: String| Ok(CommandResult::Rejected(Rejection::WrongKind { shard: self.shard, reason }));
        let ShardKind::Data { start, end, epoch } = &self.kind else {
            return reject("the meta shard has no range to shrink".into());
        };
        if (&cmd.start, &cmd.end, cmd.epoch) == (start, end, *epoch) {
            return Ok(CommandResult::Shrunk { epoch: *epoch }); // a retry
        }
        if cmd.epoch <= *epoch {
            return reject(format!("shrink to epoch {} but the shard is at epoch {epoch}", cmd.epoch));
        }
        let keeps_start =
            cmd.start == *start && cmd.end.is_some() && end.as_ref().is_none_or(|e| cmd.end.as_ref() < Some(e));
        let keeps_end = cmd.end == *end && cmd.start > *start;
        let nonempty = cmd.end.as_ref().is_none_or(|e| *e > cmd.start);
        if !(keeps_start ^ keeps_end) || !nonempty {
            return reject("the new range must keep exactly one end of the current range".into());
        }
        let given_up: (Vec<u8>, Option<Vec<u8>>) = if keeps_start {
            (cmd.end.clone().expect("checked"), end.clone())
        } else {
            (start.clone(), Some(cmd.start.clone()))
        };
        let in_given_up = |k: &[u8]| k >= given_up.0.as_slice() && given_up.1.as_deref().is_none_or(|e| k < e);
        let mut first_key =
            overlay.data.iter().filter(|(k, r)| r.is_some() && in_given_up(k)).map(|(k, _)| k.clone()).min();
        if first_key.is_none() {
            // Stored keys there, unless this run deleted them.
            for (k, _) in self.storage.scan_data(&given_up.0, given_up.1.as_deref(), 1 + overlay.data.len())? {
                if !matches!(overlay.data.get(&k), Some(None)) {
                    first_key = Some(k);
                    break;
                }
            }
        }
        if let Some(k) = first_key {
            let first_key = String::from_utf8_lossy(&k).into_owned();
            return Ok(CommandResult::Rejected(Rejection::NotEmpty { shard: self.shard, first_key }));
        }
        let record: RangeRecord = (cmd.start.clone(), cmd.end.clone(), cmd.epoch);
        batch.put_meta(MetaFamily::Apply, self.shard, apply_meta_tag::RANGE, &encode(&record));
        tracing::info!(shard = self.shard, epoch = cmd.epoch, "shard range shrunk");
        self.kind = ShardKind::Data { start: cmd.start.clone(), end: cmd.end.clone(), epoch: cmd.epoch };
        Ok(CommandResult::Shrunk { epoch: cmd.epoch })
    }

    /// The map after a [`MetaCommand::CarveShard`], or why it is refused.
    fn carve(
        &self,
        index: u64,
        cmd: &MetaCommand,
        pending: &Option<ShardMap>,
    ) -> io::Result<Result<(ShardMap, u64), String>> {
        let MetaCommand::CarveShard { parent, parent_start, parent_end, parent_epoch, shard } = cmd else {
            unreachable!("only carve commands come here")
        };
        let ShardKind::Meta { .. } = &self.kind else {
            return Ok(Err("shard map commands go to the meta shard".into()));
        };
        let Some(mut map) = self.current_map(pending)? else {
            return Ok(Err("the shard map is not bootstrapped yet".into()));
        };
        let Some(pos) = map.shards.iter().position(|s| s.id == *parent) else {
            return Ok(Err(format!("no shard {parent} in the map")));
        };
        let done = map.shards.iter().find(|s| s.is_eventual() && s.start == shard.start && s.end == shard.end);
        let p = &map.shards[pos];
        if let Some(done) = done
            && p.start == *parent_start
            && p.end == *parent_end
            && p.epoch == *parent_epoch
        {
            let id = done.id;
            return Ok(Ok((map, id))); // a retry of a carve that was applied
        }
        if let Some(c) = &p.change {
            let change = crate::shards::describe(c);
            return Ok(Err(format!(
                "shard {parent} is changing replicas ({change}); create the shard once that is done"
            )));
        }
        if map.in_merge(*parent) {
            return Ok(Err(format!("shard {parent} is being merged; create the shard once that is done")));
        }
        // Ids are never reused: shards are only ever added.
        let id = map.shards.iter().map(|s| s.id).max().unwrap_or(0) + 1;
        let p = &mut map.shards[pos];
        if p.epoch + 1 != *parent_epoch {
            return Ok(Err(format!("shard {parent} is at epoch {}, not {}", p.epoch, parent_epoch - 1)));
        }
        let insert_at = if *parent_start == p.start { pos + 1 } else { pos };
        p.start = parent_start.clone();
        p.end = parent_end.clone();
        p.epoch = *parent_epoch;
        map.shards.insert(insert_at, ShardDesc { id, change: None, merge: None, ..shard.clone() });
        map.version = index;
        Ok(map.validate().map(|()| (map, id)).map_err(|e| e.to_string()))
    }

    /// The log time of the last session collection: this run's, once it has
    /// read (or collected), else the stored one, read once per run.
    fn last_session_gc_ms(&self, overlay: &mut Overlay) -> io::Result<u64> {
        match overlay.session_gc_ms {
            Some(at) => Ok(at),
            None => Ok(*overlay.session_gc_ms.insert(self.apply_meta(apply_meta_tag::SESSION_GC_MS)?.unwrap_or(0))),
        }
    }

    /// Stored session records whose key is `key_len` bytes (8: headers, 9:
    /// markers, 16: results), with this run's writes on top.
    fn current_sessions(&self, key_len: usize, overlay: &Overlay) -> io::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
        let mut records: BTreeMap<Vec<u8>, Vec<u8>> =
            self.storage.sessions_with_key_len(self.shard, key_len)?.into_iter().collect();
        for (key, value) in overlay.sessions.iter().filter(|(k, _)| k.len() == key_len) {
            match value {
                Some(value) => records.insert(key.clone(), value.clone()),
                None => records.remove(key),
            };
        }
        Ok(records)
    }

    /// Drops sessions idle for longer than the TTL (leaving a marker) and
    /// markers older than another TTL, at most once per GC interval of log
    /// time, as of `now_ms`, the proposal time of the write about to apply.
    /// Sees this run's pending session writes: the outcome depends on the
    /// log, not on how it was cut into runs.
    fn collect_sessions(&self, now_ms: u64, batch: &mut Batch<'_>, overlay: &mut Overlay) -> io::Result<()> {
        let last_gc = self.last_session_gc_ms(overlay)?;
        if now_ms < last_gc.saturating_add(self.limits.gc_interval_ms) {
            return Ok(());
        }
        let (headers, markers) = (self.current_sessions(8, overlay)?, self.current_sessions(9, overlay)?);
        let ttl = self.limits.ttl_ms;
        let mut dropped = 0usize;
        for (key, value) in headers {
            let header: SessionHeader = decode(&value)?;
            if header.last_active_ms.saturating_add(ttl) >= now_ms {
                continue;
            }
            let client = u64::from_be_bytes(key[..8].try_into().expect("8-byte session header key"));
            let next_sequence = header.saved.last().map_or(0, |last| last + 1).max(header.first_incomplete);
            for seq in header.saved {
                batch.delete_session(self.shard, &result_key(client, seq));
                overlay.sessions.insert(result_key(client, seq).to_vec(), None);
            }
            batch.delete_session(self.shard, &header_key(client));
            overlay.sessions.insert(header_key(client).to_vec(), None);
            let marker = encode(&SessionMarker { collected_at_ms: now_ms, next_sequence });
            batch.put_session(self.shard, &marker_key(client), &marker);
            overlay.sessions.insert(marker_key(client).to_vec(), Some(marker));
            dropped += 1;
        }
        for (key, value) in markers {
            let marker: SessionMarker = decode(&value)?;
            if marker.collected_at_ms.saturating_add(ttl) < now_ms {
                batch.delete_session(self.shard, &key);
                overlay.sessions.insert(key, None);
            }
        }
        overlay.session_gc_ms = Some(now_ms);
        batch.put_meta(MetaFamily::Apply, self.shard, apply_meta_tag::SESSION_GC_MS, &encode(&now_ms));
        if dropped > 0 {
            tracing::info!(shard = self.shard, dropped, "expired idle client sessions");
        }
        Ok(())
    }
}

impl ShardStateMachine {
    /// The range a snapshot's data replaces here, and the kind this replica
    /// becomes once it is installed: the snapshot's range record when it has
    /// one (its range shrank since creation), else this replica's range,
    /// which must then be the snapshot's. A snapshot of another range is
    /// refused, an error naming the shard, before anything is written.
    fn kind_after(&self, meta: &SnapshotMeta, header: &SnapshotHeader) -> io::Result<ShardKind> {
        let kind = match (&self.kind, &header.range_record) {
            (ShardKind::Data { .. }, Some(bytes)) => {
                let (start, end, epoch) = decode::<RangeRecord>(bytes)?;
                ShardKind::Data { start, end, epoch }
            }
            _ => self.kind.clone(),
        };
        let ours = kind.range().map(|(s, e)| (s.to_vec(), e.map(<[u8]>::to_vec)));
        if ours != header.range {
            let message = format!(
                "shard {}: refusing snapshot {:?}: its range {:?} is outside the shard's range {:?}",
                self.shard, meta.last_log_id, header.range, ours
            );
            tracing::error!(shard = self.shard, "{message}");
            return Err(io::Error::new(io::ErrorKind::InvalidData, message));
        }
        Ok(kind)
    }
}

/// Takes a snapshot of `shard` as it is now: O(1), a pinned view and the
/// few records that describe it (see `raft::snapshot`). Returns once the
/// WAL holding what the pin shows is fsynced: openraft purges the log
/// behind a snapshot's log id, so the applied state it names must survive a
/// crash first (apply batches are not synced on their own).
async fn take_snapshot(storage: &Storage, shard: u64, kind: &ShardKind) -> io::Result<Arc<LocalSnapshot>> {
    take_snapshot_records(storage, shard, kind).await.map_err(|e| failed(shard, "taking a snapshot", e))
}

async fn take_snapshot_records(storage: &Storage, shard: u64, kind: &ShardKind) -> io::Result<Arc<LocalSnapshot>> {
    let pin = storage.pin();
    let get = |tag| pin.get_meta(MetaFamily::Apply, shard, tag);
    let last_log_id: Option<LogId> = get(apply_meta_tag::APPLIED)?.as_deref().map(decode).transpose()?;
    let last_membership: StoredMembership =
        get(apply_meta_tag::MEMBERSHIP)?.as_deref().map(decode).transpose()?.unwrap_or_default();
    let range_record = get(apply_meta_tag::RANGE)?;
    let header = SnapshotHeader {
        range: kind.snapshot_range(range_record.as_deref())?,
        range_record,
        frozen: get(apply_meta_tag::FROZEN)?,
        shard_map: get(apply_meta_tag::SHARD_MAP)?,
        session_gc: get(apply_meta_tag::SESSION_GC_MS)?,
    };
    storage.sync().await?;
    Ok(Arc::new(LocalSnapshot::new(shard, SnapshotMeta { last_log_id, last_membership }, header, pin)))
}

/// A state-machine error as openraft gets it: naming the shard and what it
/// was doing (entries by index), and logged once, since openraft stops the
/// shard's Raft group on it (the node and its other groups go on).
fn failed(shard: u64, doing: &str, e: io::Error) -> io::Error {
    tracing::error!(shard, doing, cause = %e, "state machine error: this shard's Raft group stops on this node");
    io::Error::new(e.kind(), format!("shard {shard}: {doing}: {e}"))
}

impl RaftStateMachine<TypeConfig> for ShardStateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = ShardSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let read = || -> io::Result<_> {
            let applied = self.applied_log_id()?;
            let membership = self.apply_meta(apply_meta_tag::MEMBERSHIP)?.unwrap_or_default();
            Ok((applied, membership))
        };
        read().map_err(|e| failed(self.shard, "reading the applied state", e))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut run = Vec::new();
        let mut responders = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            run.push(entry);
            responders.push(responder);
        }
        let (Some(first), Some(last)) = (run.first().map(|e| e.log_id.index), run.last().map(|e| e.log_id.index))
        else {
            return Ok(());
        };
        let results = self
            .apply_run(&run)
            .await
            .map_err(|e| failed(self.shard, &format!("applying entries {first}..={last}"), e))?;
        if let Some(tail) = &self.log_tail {
            tail.drop_through(last);
        }
        for (responder, result) in responders.into_iter().zip(results) {
            if let Some(r) = responder {
                r.send(result);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        ShardSnapshotBuilder { shard: self.shard, kind: self.kind.clone(), storage: self.storage.clone() }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotData) -> Result<(), io::Error> {
        let header = match &snapshot {
            SnapshotData::Local(local) => local.header.clone(),
            SnapshotData::Received { header, .. } => header.clone(),
        };
        let kind = self.kind_after(meta, &header)?;
        let frozen = header.frozen.as_deref().map(decode::<FrozenRecord>).transpose()?;
        let session_gc_ms = header.session_gc.as_deref().map(decode::<u64>).transpose()?;
        let new_map = match (&header.shard_map, &self.kind) {
            (Some(bytes), ShardKind::Meta { .. }) => Some(decode::<ShardMap>(bytes)?),
            _ => None,
        };
        let storage = self.storage.clone();
        let (staged, pairs) = match snapshot {
            SnapshotData::Received { staged, pairs, .. } => (staged, pairs),
            // Taken on this node (tests, a restore): staged through the
            // same path a peer's chunks take.
            SnapshotData::Local(local) => {
                let storage = storage.clone();
                tokio::task::spawn_blocking(move || super::snapshot::stage_local(&storage, &local))
                    .await
                    .map_err(io::Error::other)??
            }
        };
        let bytes = staged.bytes;
        // The records the snapshot carries replace this replica's (the
        // range record only on a data shard, the map only on the meta shard).
        let mut records = Vec::new();
        if let (ShardKind::Data { .. }, Some(range)) = (&self.kind, &header.range_record) {
            records.push((apply_meta_tag::RANGE, Some(range.clone())));
        }
        if new_map.is_some() {
            records.push((apply_meta_tag::SHARD_MAP, header.shard_map.clone()));
        }
        records.push((apply_meta_tag::FROZEN, header.frozen.clone()));
        records.push((apply_meta_tag::SESSION_GC_MS, header.session_gc.clone()));
        records.push((apply_meta_tag::APPLIED, meta.last_log_id.as_ref().map(encode)));
        records.push((apply_meta_tag::MEMBERSHIP, Some(encode(&meta.last_membership))));
        tokio::task::spawn_blocking(move || storage.install_staged(staged, records))
            .await
            .map_err(io::Error::other)??;
        self.kind = kind;
        self.frozen = frozen;
        self.publish_frozen();
        self.last_applied_index = meta.last_log_id.as_ref().map(|id| id.index);
        if let (Some(map), ShardKind::Meta { map_tx }) = (new_map, &self.kind) {
            map_tx.send_replace(Arc::new(map));
        }
        // The log's time as of the snapshot: a replica that leads before it
        // applies a write is held to it too (see `raft::log_clock`).
        if let (Some(clock), Some(gc_ms)) = (&self.log_clock, session_gc_ms) {
            clock.applied(self.shard, gc_ms);
        }
        tracing::info!(shard = self.shard, last = ?meta.last_log_id, pairs, bytes, "installed snapshot");
        Ok(())
    }

    /// A snapshot of the shard as it is now (taking one is O(1)): the
    /// replica's applied state is itself the latest snapshot, so there is
    /// nothing stored to return and nothing older to keep.
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let local = take_snapshot(&self.storage, self.shard, &self.kind).await?;
        if local.meta.last_log_id.is_none() {
            return Ok(None);
        }
        Ok(Some(Snapshot { meta: local.meta.clone(), snapshot: SnapshotData::Local(local) }))
    }
}

/// Builds a snapshot: takes one (O(1)); openraft keeps its log id.
pub struct ShardSnapshotBuilder {
    shard: u64,
    kind: ShardKind,
    storage: Arc<Storage>,
}

impl RaftSnapshotBuilder<TypeConfig> for ShardSnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let local = take_snapshot(&self.storage, self.shard, &self.kind).await?;
        tracing::debug!(shard = self.shard, last = ?local.meta.last_log_id, "took snapshot");
        Ok(Snapshot { meta: local.meta.clone(), snapshot: SnapshotData::Local(local) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::command::{Condition, Expect, Op, Session};

    const DAY_MS: u64 = 24 * 3600 * 1000;

    fn data_sm(dir: &std::path::Path, limits: SessionLimits) -> ShardStateMachine {
        let storage = Storage::open(dir).unwrap();
        let kind = ShardKind::Data { start: b"g".to_vec(), end: Some(b"n".to_vec()), epoch: 3 };
        ShardStateMachine::new(2, kind, storage, limits).unwrap()
    }

    fn limits() -> SessionLimits {
        SessionLimits { ttl_ms: DAY_MS, gc_interval_ms: 1000 }
    }

    fn write(index: u64, session: Session, now_ms: u64, conditions: Vec<Condition>, ops: Vec<Op>) -> Entry {
        let cmd = WriteCommand { session, proposed_at_ms: now_ms, epoch: 3, conditions, ops };
        Entry {
            log_id: openraft::testing::log_id::<TypeConfig>(1, 1, index),
            payload: EntryPayload::Normal(Command::Write(cmd)),
        }
    }

    fn put(key: &str, value: &str) -> Op {
        Op::Put { key: key.into(), value: value.into() }
    }

    fn outcome(r: &CommandResult) -> &WriteOutcome {
        match r {
            CommandResult::Write(o) => o,
            other => panic!("expected a write outcome, got {other:?}"),
        }
    }

    fn absent(key: &str) -> Condition {
        Condition { key: key.into(), expect: Expect::Absent }
    }

    #[tokio::test]
    async fn a_duplicate_returns_the_first_result_even_within_one_run() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = data_sm(dir.path(), limits());
        let s = Session { client_id: 9, sequence: 1, first_incomplete: 1 };
        let create = |i| write(i, s, 1000, vec![absent("h1")], vec![put("h1", "a")]);
        let results = sm.apply_run(&[create(1), create(2)]).await.unwrap();
        assert_eq!(results[0], results[1], "the retry in the same run is deduplicated");
        assert!(outcome(&results[0]).applied);
        let later = sm.apply_run(&[create(3)]).await.unwrap();
        assert_eq!(later[0], results[0], "and in a later run");
        let record: Record = decode(&sm.storage.get_data(b"h1").unwrap().unwrap()).unwrap();
        assert_eq!(record, Record { value: b"a".to_vec(), version: 1 });
    }

    #[tokio::test]
    async fn conditions_see_earlier_writes_of_the_same_run_and_failures_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = data_sm(dir.path(), limits());
        let none = Session::default();
        let r = sm
            .apply_run(&[
                write(1, none, 1, vec![], vec![put("h1", "a")]),
                write(2, none, 1, vec![absent("h1")], vec![put("h1", "b"), put("h2", "b")]),
            ])
            .await
            .unwrap();
        let failed = outcome(&r[1]);
        assert!(!failed.applied);
        assert_eq!(failed.current, vec![Some(Record { value: b"a".to_vec(), version: 1 })]);
        assert!(sm.storage.get_data(b"h2").unwrap().is_none(), "a failed batch writes nothing");
    }

    #[tokio::test]
    async fn keys_outside_the_range_and_stale_epochs_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = data_sm(dir.path(), limits());
        let r = sm
            .apply_run(&[write(1, Session::default(), 1, vec![], vec![put("h1", "a"), put("z", "a")])])
            .await
            .unwrap();
        assert_eq!(r[0], CommandResult::Rejected(Rejection::KeyOutsideShard { shard: 2 }));
        assert!(sm.storage.get_data(b"h1").unwrap().is_none());
        let mut stale = write(2, Session::default(), 1, vec![], vec![put("h1", "a")]);
        if let EntryPayload::Normal(Command::Write(w)) = &mut stale.payload {
            w.epoch = 2;
        }
        let r = sm.apply_run(&[stale]).await.unwrap();
        assert!(matches!(r[0], CommandResult::Rejected(Rejection::StaleEpoch { epoch: 3, request_epoch: 2, .. })));
    }

    #[tokio::test]
    async fn sessions_forget_below_first_incomplete_and_expire_when_idle() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = data_sm(dir.path(), limits());
        let s = |sequence, first_incomplete| Session { client_id: 5, sequence, first_incomplete };
        sm.apply_run(&[write(1, s(1, 1), 1000, vec![], vec![put("h1", "a")])]).await.unwrap();
        sm.apply_run(&[write(2, s(2, 2), 1000, vec![], vec![put("h1", "b")])]).await.unwrap();
        let r = sm.apply_run(&[write(3, s(1, 2), 1000, vec![], vec![put("h1", "c")])]).await.unwrap();
        assert_eq!(r[0], CommandResult::Rejected(Rejection::SessionExpired { client_id: 5, sequence: 1 }));
        assert!(sm.storage.get_session(2, &result_key(5, 2)).unwrap().is_some());

        // Another client writes a day later: client 5's session is collected.
        let other = Session { client_id: 6, sequence: 1, first_incomplete: 1 };
        sm.apply_run(&[write(4, other, 1000 + DAY_MS + 1, vec![], vec![put("h2", "x")])]).await.unwrap();
        assert!(sm.storage.get_session(2, &header_key(5)).unwrap().is_none());
        assert!(sm.storage.get_session(2, &result_key(5, 2)).unwrap().is_none());
        assert!(sm.storage.get_session(2, &header_key(6)).unwrap().is_some());
    }

    /// Every session record of shard 2, sorted: what a replica would answer
    /// retries from.
    fn session_state(sm: &ShardStateMachine) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut all = Vec::new();
        for key_len in [8, 9, 16] {
            all.extend(sm.storage.sessions_with_key_len(2, key_len).unwrap());
        }
        all.sort();
        all
    }

    /// Finding: collection used to run once per apply run, as of the run's
    /// newest proposal time, and read headers from storage only. A replica
    /// that got the same log in one run and one that got it in two then
    /// answered the same retry differently (one deduplicated it, the other
    /// applied it again). Now both collect at the same entry.
    #[tokio::test]
    async fn session_collection_does_not_depend_on_how_the_log_is_cut_into_runs() {
        let later = 1000 + DAY_MS + 5_000;
        let log = [
            write(1, Session { client_id: 5, sequence: 1, first_incomplete: 1 }, 1000, vec![], vec![put("h1", "a")]),
            write(2, Session { client_id: 6, sequence: 1, first_incomplete: 1 }, later, vec![], vec![put("h2", "x")]),
            // Client 5's late retry of sequence 1.
            write(3, Session { client_id: 5, sequence: 1, first_incomplete: 1 }, later, vec![], vec![put("h1", "a")]),
        ];
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut one_run = data_sm(a.path(), limits());
        let mut two_runs = data_sm(b.path(), limits());
        // Both apply the first write alone; then one gets the rest as one
        // run, the other as two.
        let mut together = one_run.apply_run(&log[..1]).await.unwrap();
        together.extend(one_run.apply_run(&log[1..]).await.unwrap());
        let mut apart = two_runs.apply_run(&log[..1]).await.unwrap();
        apart.extend(two_runs.apply_run(&log[1..2]).await.unwrap());
        apart.extend(two_runs.apply_run(&log[2..]).await.unwrap());
        assert_eq!(together, apart, "the same log answers the same, however it is cut");
        assert_eq!(session_state(&one_run), session_state(&two_runs));
        assert_eq!(one_run.storage.get_data(b"h1").unwrap(), two_runs.storage.get_data(b"h1").unwrap());
        // And the late retry is refused, not applied a second time.
        assert_eq!(together[2], CommandResult::Rejected(Rejection::SessionExpired { client_id: 5, sequence: 1 }));
    }

    /// A collected session leaves a marker: retries of its sequences are
    /// refused (indeterminate for the client), new sequences of a resumed
    /// client start a new session, and the marker goes a TTL later.
    #[tokio::test]
    async fn a_collected_session_refuses_late_retries_and_lets_its_client_resume() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = data_sm(dir.path(), limits());
        let s = |sequence| Session { client_id: 5, sequence, first_incomplete: 1 };
        for seq in 1..=3 {
            sm.apply_run(&[write(seq, s(seq), 1000, vec![], vec![put("h1", "v")])]).await.unwrap();
        }
        let later = 1000 + DAY_MS + 5_000;
        let other = |index, at| write(index, Session::default(), at, vec![], vec![put("h9", "x")]);
        sm.apply_run(&[other(4, later)]).await.unwrap();
        assert!(sm.storage.get_session(2, &header_key(5)).unwrap().is_none(), "collected");
        assert!(sm.storage.get_session(2, &marker_key(5)).unwrap().is_some(), "with a marker");

        for seq in 1..=3 {
            let r = sm.apply_run(&[write(4 + seq, s(seq), later, vec![], vec![put("h1", "again")])]).await.unwrap();
            assert_eq!(r[0], CommandResult::Rejected(Rejection::SessionExpired { client_id: 5, sequence: seq }));
        }
        let stored: Record = decode(&sm.storage.get_data(b"h1").unwrap().unwrap()).unwrap();
        assert_eq!(stored.value, b"v".to_vec(), "no late retry applied");

        let r = sm.apply_run(&[write(8, s(4), later, vec![], vec![put("h1", "resumed")])]).await.unwrap();
        assert!(outcome(&r[0]).applied, "a new sequence starts a new session");
        assert!(sm.storage.get_session(2, &marker_key(5)).unwrap().is_none());
        assert!(sm.storage.get_session(2, &header_key(5)).unwrap().is_some());

        // Markers of clients that never come back go one TTL after collection.
        let s7 = Session { client_id: 7, sequence: 1, first_incomplete: 1 };
        sm.apply_run(&[write(9, s7, later, vec![], vec![put("h3", "y")])]).await.unwrap();
        sm.apply_run(&[other(10, later + DAY_MS + 5_000)]).await.unwrap();
        assert!(sm.storage.get_session(2, &marker_key(7)).unwrap().is_some());
        sm.apply_run(&[other(11, later + 2 * DAY_MS + 10_000)]).await.unwrap();
        assert!(sm.storage.get_session(2, &marker_key(7)).unwrap().is_none(), "dropped a TTL after collection");
    }

    #[tokio::test]
    async fn a_session_keeps_a_bounded_number_of_results() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = data_sm(dir.path(), limits());
        // A client that never reports progress (first_incomplete stays 1).
        let s = |sequence| Session { client_id: 4, sequence, first_incomplete: 1 };
        let n = MAX_SAVED_RESULTS_PER_SESSION as u64 + 2;
        let run: Vec<Entry> = (1..=n).map(|i| write(i, s(i), 1000, vec![], vec![put("h1", "v")])).collect();
        sm.apply_run(&run).await.unwrap();
        let r = sm.apply_run(&[write(n + 1, s(1), 1000, vec![], vec![put("h1", "again")])]).await.unwrap();
        assert_eq!(r[0], CommandResult::Rejected(Rejection::SessionExpired { client_id: 4, sequence: 1 }));
        assert!(sm.storage.get_session(2, &result_key(4, 2)).unwrap().is_none());
        let r = sm.apply_run(&[write(n + 2, s(n), 1000, vec![], vec![put("h1", "again")])]).await.unwrap();
        assert_eq!(outcome(&r[0]).version, n, "recent results are still answered");
    }

    #[tokio::test]
    async fn a_snapshot_moves_range_data_and_sessions_to_another_replica() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut leader = data_sm(a.path(), limits());
        let s = Session { client_id: 9, sequence: 1, first_incomplete: 1 };
        leader.apply_run(&[write(1, s, 1000, vec![], vec![put("h1", "a"), put("m9", "z")])]).await.unwrap();
        let snap = leader.get_snapshot_builder().await.build_snapshot().await.unwrap();

        let mut follower = data_sm(b.path(), limits());
        follower.apply_run(&[write(1, Session::default(), 1, vec![], vec![put("h-old", "gone")])]).await.unwrap();
        follower.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();
        assert!(follower.storage.get_data(b"h-old").unwrap().is_none(), "install replaces the range");
        assert!(follower.storage.get_data(b"m9").unwrap().is_some());
        // The session came along: the retry is answered, not re-applied.
        let r = follower.apply_run(&[write(2, s, 1000, vec![], vec![put("h1", "again")])]).await.unwrap();
        assert_eq!(outcome(&r[0]).version, 1);
        assert_eq!(follower.applied_state().await.unwrap().0.map(|l| l.index), Some(2));
    }

    /// A snapshot from a peer holding a key outside this shard's range is
    /// refused with an error naming the shard (the group stops on it), and
    /// nothing of it is written; it used to panic the whole node.
    #[tokio::test]
    async fn a_snapshot_with_keys_outside_the_range_is_refused_not_a_panic() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let wide = ShardKind::Data { start: b"a".to_vec(), end: Some(b"z".to_vec()), epoch: 3 };
        let mut peer = ShardStateMachine::new(2, wide, Storage::open(a.path()).unwrap(), limits()).unwrap();
        peer.apply_run(&[write(1, Session::default(), 1, vec![], vec![put("h1", "a"), put("x1", "outside")])])
            .await
            .unwrap();
        let snap = peer.get_snapshot_builder().await.build_snapshot().await.unwrap();

        let mut sm = data_sm(b.path(), limits());
        sm.apply_run(&[write(1, Session::default(), 1, vec![], vec![put("h-mine", "kept")])]).await.unwrap();
        let err = sm.install_snapshot(&snap.meta, snap.snapshot).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("shard 2") && err.to_string().contains("outside"), "{err}");
        assert!(sm.storage.get_data(b"h-mine").unwrap().is_some(), "nothing of the refused snapshot was written");
        assert!(sm.storage.get_data(b"x1").unwrap().is_none());
        assert!(matches!(&sm.kind, ShardKind::Data { end: Some(e), .. } if e == b"n"), "the range is unchanged");
    }

    /// Corrupt records on disk are errors that name the shard and the
    /// entries being applied (openraft then stops this shard's group), not
    /// panics, and a corrupt range record is no reason to snapshot some
    /// other range.
    #[tokio::test]
    async fn corrupt_stored_records_are_errors_naming_the_shard_and_the_entries() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = data_sm(dir.path(), limits());
        sm.apply_run(&[write(1, Session::default(), 1, vec![], vec![put("h1", "a")])]).await.unwrap();
        let mut batch = sm.storage.batch();
        batch.put_meta(MetaFamily::Apply, 2, apply_meta_tag::SESSION_GC_MS, b"\xff");
        batch.put_meta(MetaFamily::Apply, 2, apply_meta_tag::RANGE, b"\xff\xff");
        sm.storage.write_relaxed(batch).unwrap();

        // Far enough on for a session collection, which reads the GC time.
        let entries: Vec<_> = (2..=3)
            .map(|i| write(i, Session::default(), 10 * DAY_MS, vec![], vec![put("h2", "b")]))
            .map(|e| Ok((e, None)))
            .collect();
        let err = sm.apply(futures::stream::iter(entries)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().starts_with("shard 2: applying entries 2..=3:"), "{err}");
        assert!(sm.storage.get_data(b"h2").unwrap().is_none(), "nothing of the failed run was written");

        let snapshot = sm.get_snapshot_builder().await.build_snapshot().await.unwrap_err();
        assert!(snapshot.to_string().contains("shard 2: taking a snapshot"), "{snapshot}");
    }

    /// A meta shard state machine over a fresh store, and the map it publishes.
    fn meta_sm(dir: &std::path::Path) -> (ShardStateMachine, watch::Receiver<Arc<ShardMap>>) {
        let (map_tx, map_rx) = watch::channel(Arc::new(ShardMap::default()));
        let meta =
            ShardStateMachine::new(0, ShardKind::Meta { map_tx }, Storage::open(dir).unwrap(), limits()).unwrap();
        (meta, map_rx)
    }

    fn three_nodes() -> Vec<crate::shards::NodeDesc> {
        (1..=3)
            .map(|id| crate::shards::NodeDesc {
                id,
                addr: format!("127.0.0.1:{}", 7000 + id),
                region: format!("r{id}"),
                zone: String::new(),
                state: crate::shards::NodeState::Up,
            })
            .collect()
    }

    fn meta_entry(index: u64, cmd: MetaCommand) -> Entry {
        Entry {
            log_id: openraft::testing::log_id::<TypeConfig>(1, 1, index),
            payload: EntryPayload::Normal(Command::Meta(cmd)),
        }
    }

    /// Finding: the proposer picked the new shard's id as max+1 of its own,
    /// possibly lagging, map, and the carve took "id already in the map" for
    /// a retry: two creates could leave the second parent at its old epoch
    /// in the map (its replicas, already shrunk, then refused every write as
    /// StaleEpoch). Ids are now allocated at apply time, and a retry is
    /// recognised by its whole effect.
    #[tokio::test]
    async fn concurrent_carves_get_their_own_ids_and_a_retry_changes_nothing() {
        use crate::shards::ShardMode;
        let dir = tempfile::tempdir().unwrap();
        let (mut meta, _map_rx) = meta_sm(dir.path());
        let splits = [b"g".to_vec(), b"n".to_vec(), b"u".to_vec()];
        let initial = ShardMap::initial(&three_nodes(), &splits, &[], 3).unwrap();
        meta.apply_run(&[meta_entry(1, MetaCommand::Bootstrap(initial.clone()))]).await.unwrap();
        let carve = |parent: u64, parent_start: &str, parent_end: Option<&str>, start: &str, end: Option<&str>| {
            let epoch = initial.shard(parent).unwrap().epoch + 1;
            MetaCommand::CarveShard {
                parent,
                parent_start: parent_start.into(),
                parent_end: parent_end.map(Into::into),
                parent_epoch: epoch,
                // Both proposers saw the same map and would have picked id 5.
                shard: ShardDesc {
                    id: 5,
                    epoch: 1,
                    start: start.into(),
                    end: end.map(Into::into),
                    replicas: vec![1, 2, 3],
                    preferred_leader_region: None,
                    mode: ShardMode::Eventual,
                    change: None,
                    merge: None,
                    auto_split: false,
                },
            }
        };
        let from_last = carve(4, "u", Some("x"), "x", None);
        let from_first = carve(1, "", Some("f"), "f", Some("g"));
        let r = meta.apply_run(&[meta_entry(2, from_last.clone()), meta_entry(3, from_first)]).await.unwrap();
        assert_eq!(r[0], CommandResult::Carved { shard_id: 5, map_version: 2 });
        assert_eq!(r[1], CommandResult::Carved { shard_id: 6, map_version: 3 });
        let map = meta.stored_map().unwrap().unwrap();
        map.validate().unwrap();
        for (parent, end) in [(1, "f"), (4, "x")] {
            let p = map.shard(parent).unwrap();
            assert_eq!(p.epoch, initial.shard(parent).unwrap().epoch + 1, "shard {parent} is at its new epoch");
            assert_eq!(p.end.as_deref(), Some(end.as_bytes()));
        }
        assert_eq!(map.shard_for_key(b"fa").unwrap().id, 6);
        assert_eq!(map.shard_for_key(b"xa").unwrap().id, 5);

        // The same carve again (a retried request): the existing shard, nothing changed.
        let r = meta.apply_run(&[meta_entry(4, from_last.clone())]).await.unwrap();
        assert_eq!(r[0], CommandResult::Carved { shard_id: 5, map_version: 3 });
        assert_eq!(meta.stored_map().unwrap().unwrap(), map);
        // A carve from a stale epoch is refused, not mistaken for a retry.
        let mut stale = carve(2, "g", Some("m"), "m", Some("n"));
        if let MetaCommand::CarveShard { parent_epoch, .. } = &mut stale {
            *parent_epoch += 5;
        }
        let r = meta.apply_run(&[meta_entry(5, stale)]).await.unwrap();
        assert!(
            matches!(&r[0], CommandResult::Rejected(Rejection::WrongKind { reason, .. }) if reason.contains("epoch")),
            "{r:?}"
        );
    }

    /// A repeated meta command says it changed nothing, whatever map the
    /// proposer holds: the admin service used to compare the answer's map
    /// version with its own, possibly lagging, copy and called a repeated
    /// drain cancel "created" when it asked a node that had not yet applied
    /// the first one.
    #[tokio::test]
    async fn a_repeated_meta_command_answers_unchanged() {
        use crate::shards::NodeState;
        let dir = tempfile::tempdir().unwrap();
        let (mut meta, _map_rx) = meta_sm(dir.path());
        let initial = ShardMap::initial(&three_nodes(), &[b"m".to_vec()], &[], 3).unwrap();
        meta.apply_run(&[meta_entry(1, MetaCommand::Bootstrap(initial))]).await.unwrap();
        let drain = MetaCommand::SetNodeState { node: 2, state: NodeState::Draining };
        let up = MetaCommand::SetNodeState { node: 2, state: NodeState::Up };
        let r = meta
            .apply_run(&[meta_entry(2, drain.clone()), meta_entry(3, up.clone()), meta_entry(4, up)])
            .await
            .unwrap();
        assert_eq!(r[0], CommandResult::Meta { map_version: 2, changed: true });
        assert_eq!(r[1], CommandResult::Meta { map_version: 3, changed: true });
        assert_eq!(r[2], CommandResult::Meta { map_version: 3, changed: false }, "a repeat");
        let r = meta.apply_run(&[meta_entry(5, MetaCommand::Bootstrap(ShardMap::default()))]).await.unwrap();
        assert_eq!(r[0], CommandResult::Meta { map_version: 3, changed: false }, "bootstrapped already");
    }

    fn shrink(index: u64, start: &str, end: &str, epoch: u64) -> Entry {
        let cmd = ShrinkCommand { start: start.into(), end: Some(end.into()), epoch };
        Entry {
            log_id: openraft::testing::log_id::<TypeConfig>(1, 1, index),
            payload: EntryPayload::Normal(Command::Shrink(cmd)),
        }
    }

    #[tokio::test]
    async fn a_shrink_gives_up_only_empty_keys_and_survives_restart_and_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = data_sm(dir.path(), limits());
        let none = Session::default();
        // [g, n) at epoch 3 holds "m1": giving up [m, n) is refused.
        sm.apply_run(&[write(1, none, 1, vec![], vec![put("m1", "a"), put("h1", "a")])]).await.unwrap();
        let r = sm.apply_run(&[shrink(2, "g", "m", 4)]).await.unwrap();
        assert!(matches!(&r[0], CommandResult::Rejected(Rejection::NotEmpty { first_key, .. }) if first_key == "m1"));
        // Deleted in the same run, then given up: accepted; and the middle or both ends are refused.
        let del = write(3, none, 1, vec![], vec![Op::Delete { key: "m1".into() }]);
        let r = sm.apply_run(&[del, shrink(4, "h", "m", 4), shrink(5, "g", "m", 4)]).await.unwrap();
        assert!(matches!(r[1], CommandResult::Rejected(Rejection::WrongKind { .. })), "{:?}", r[1]);
        assert_eq!(r[2], CommandResult::Shrunk { epoch: 4 });
        // From here on every replica refuses the given-up keys and old epochs.
        let mut w = write(6, none, 1, vec![], vec![put("m2", "a")]);
        if let EntryPayload::Normal(Command::Write(c)) = &mut w.payload {
            c.epoch = 4;
        }
        let r = sm.apply_run(&[w, write(7, none, 1, vec![], vec![put("h2", "a")])]).await.unwrap();
        assert_eq!(r[0], CommandResult::Rejected(Rejection::KeyOutsideShard { shard: 2 }));
        assert!(matches!(r[1], CommandResult::Rejected(Rejection::StaleEpoch { epoch: 4, request_epoch: 3, .. })));
        // A retry of the same shrink is a no-op.
        assert_eq!(sm.apply_run(&[shrink(8, "g", "m", 4)]).await.unwrap()[0], CommandResult::Shrunk { epoch: 4 });

        // A restart keeps the narrower range, whatever range the caller passes.
        let wide = ShardKind::Data { start: b"g".to_vec(), end: Some(b"n".to_vec()), epoch: 3 };
        let restarted = ShardStateMachine::new(2, wide, sm.storage.clone(), limits()).unwrap();
        assert!(matches!(&restarted.kind, ShardKind::Data { end: Some(e), epoch: 4, .. } if e == b"m"));
        // A snapshot carries it to a replica that never applied the shrink.
        let mut builder = sm.get_snapshot_builder().await;
        let snap = builder.build_snapshot().await.unwrap();
        let other_dir = tempfile::tempdir().unwrap();
        let mut other = data_sm(other_dir.path(), limits());
        other.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();
        assert!(matches!(&other.kind, ShardKind::Data { end: Some(e), epoch: 4, .. } if e == b"m"));
        assert!(other.storage.get_data(b"h1").unwrap().is_some());
    }

    fn split_entry(index: u64, key: &str, left_epoch: u64, right_shard: u64) -> Entry {
        let cmd =
            SplitCommand { key: key.into(), left_epoch, right_shard, right_epoch: left_epoch, members: vec![1, 2, 3] };
        Entry {
            log_id: openraft::testing::log_id::<TypeConfig>(1, 1, index),
            payload: EntryPayload::Normal(Command::Split(cmd)),
        }
    }

    /// A split narrows the left half in log order, hands the right half its
    /// range and every session (a write retried across the split is answered
    /// from the copy, not applied again), is reported only once durable, and
    /// a retry changes nothing.
    #[tokio::test]
    async fn a_split_hands_the_right_half_its_range_and_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut sm = data_sm(dir.path(), limits()).with_split_notices(tx);
        let s = Session { client_id: 7, sequence: 1, first_incomplete: 1 };
        let first = write(1, s, 1000, vec![], vec![put("k1", "a")]);
        let results = sm.apply_run(&[first.clone(), split_entry(2, "k", 4, 9)]).await.unwrap();
        assert!(outcome(&results[0]).applied);
        assert!(matches!(results[1], CommandResult::Split { right_shard: 9, left_epoch: 4, .. }), "{:?}", results[1]);
        let notice = rx.try_recv().expect("the split is reported");
        assert_eq!((notice.shard, notice.start.as_slice(), notice.end.as_deref()), (9, &b"k"[..], Some(&b"n"[..])));
        assert_eq!(sm.data_range(), Some((b"g".to_vec(), Some(b"k".to_vec()))));

        // The left half refuses the given-up keys, and an old-epoch write.
        let mut late = write(3, Session::default(), 1000, vec![], vec![put("k2", "b")]);
        if let EntryPayload::Normal(Command::Write(w)) = &mut late.payload {
            w.epoch = 4;
        }
        let refused = sm.apply_run(&[late]).await.unwrap();
        assert_eq!(refused[0], CommandResult::Rejected(Rejection::KeyOutsideShard { shard: 2 }));
        let stale = sm.apply_run(&[write(4, Session::default(), 1000, vec![], vec![put("h", "c")])]).await.unwrap();
        assert!(matches!(stale[0], CommandResult::Rejected(Rejection::StaleEpoch { .. })), "{:?}", stale[0]);

        // A retry of the split: answered, nothing reported again.
        let again = sm.apply_run(&[split_entry(5, "k", 4, 9)]).await.unwrap();
        assert!(matches!(again[0], CommandResult::Split { .. }));
        assert!(rx.try_recv().is_err(), "a retried split starts nothing");
        // A key outside the (new) range is refused.
        let outside = sm.apply_run(&[split_entry(6, "m", 5, 10)]).await.unwrap();
        assert!(matches!(outside[0], CommandResult::Rejected(_)), "{:?}", outside[0]);

        // The right half, started from its stored range, holds the data and
        // answers the retried write from the copied session.
        let storage = sm.storage.clone();
        let kind = ShardKind::Data { start: b"zz".to_vec(), end: None, epoch: 1 };
        let mut right = ShardStateMachine::new(9, kind, storage, limits()).unwrap();
        assert_eq!(right.data_range(), Some((b"k".to_vec(), Some(b"n".to_vec()))), "the stored range wins");
        assert!(right.range_is_stored().unwrap());
        let mut retry = first.clone();
        if let EntryPayload::Normal(Command::Write(w)) = &mut retry.payload {
            w.epoch = 4;
        }
        let answered = right.apply_run(&[retry]).await.unwrap();
        assert_eq!(answered[0], results[0], "the retry is answered from the copied session");
        let record: Record = decode(&right.storage.get_data(b"k1").unwrap().unwrap()).unwrap();
        assert_eq!((record.value.as_slice(), record.version), (&b"a"[..], 1), "not applied again");
    }

    /// A merge: the right shard freezes (every later write refused, a
    /// repeated freeze answers the first index), then the left one absorbs
    /// its range and its sessions, so a write applied on the right and
    /// retried on the merged shard is answered, not applied again; a retry
    /// of the merge changes nothing; both survive a restart.
    #[tokio::test]
    async fn a_merge_absorbs_the_frozen_right_shard_and_its_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let mut left = data_sm(dir.path(), limits());
        let storage = left.storage.clone();
        let right_kind = || ShardKind::Data { start: b"n".to_vec(), end: Some(b"u".to_vec()), epoch: 3 };
        let frozen = FrozenShards::default();
        let mut right = ShardStateMachine::new(3, right_kind(), storage.clone(), limits())
            .unwrap()
            .with_frozen_shards(frozen.clone());
        right.persist_range().await.unwrap();

        let both = Session { client_id: 7, sequence: 1, first_incomplete: 1 };
        left.apply_run(&[write(1, both, 1000, vec![], vec![put("h1", "a")])]).await.unwrap();
        let on_right = Session { client_id: 7, sequence: 2, first_incomplete: 1 };
        let only_right = Session { client_id: 8, sequence: 1, first_incomplete: 1 };
        let answered = right
            .apply_run(&[
                write(1, on_right, 1000, vec![], vec![put("p1", "b")]),
                write(2, only_right, 1000, vec![], vec![put("p2", "c")]),
            ])
            .await
            .unwrap();

        let freeze = |index| Entry {
            log_id: openraft::testing::log_id::<TypeConfig>(1, 1, index),
            payload: EntryPayload::Normal(Command::Freeze { into: 2 }),
        };
        let r = right
            .apply_run(&[freeze(3), write(4, Session::default(), 1000, vec![], vec![put("p3", "x")])])
            .await
            .unwrap();
        assert_eq!(r[0], CommandResult::Frozen { index: 3 });
        assert_eq!(r[1], CommandResult::Rejected(Rejection::Frozen { shard: 3, into: 2 }));
        assert!(storage.get_data(b"p3").unwrap().is_none(), "a frozen shard writes nothing");
        assert!(frozen.read().unwrap().contains_key(&3), "the read path is told");
        assert_eq!(right.apply_run(&[freeze(5)]).await.unwrap()[0], CommandResult::Frozen { index: 3 });
        // Taken back (the merge given up): it writes again; frozen anew at
        // 8, an unfreeze of the old freeze is refused; once sealed, none is.
        let entry = |index, cmd| Entry {
            log_id: openraft::testing::log_id::<TypeConfig>(1, 1, index),
            payload: EntryPayload::Normal(cmd),
        };
        assert_eq!(
            right.apply_run(&[entry(6, Command::Unfreeze { index: 3 })]).await.unwrap()[0],
            CommandResult::Unfrozen
        );
        assert!(!frozen.read().unwrap().contains_key(&3));
        assert!(
            outcome(
                &right.apply_run(&[write(7, Session::default(), 1000, vec![], vec![put("p5", "d")])]).await.unwrap()[0]
            )
            .applied
        );
        let r = right
            .apply_run(&[
                freeze(8),
                entry(9, Command::Unfreeze { index: 3 }),
                entry(10, Command::Seal { index: 8 }),
                entry(11, Command::Unfreeze { index: 8 }),
            ])
            .await
            .unwrap();
        assert_eq!(r[0], CommandResult::Frozen { index: 8 });
        assert!(matches!(r[1], CommandResult::Rejected(_)), "{:?}", r[1]);
        assert_eq!((&r[2], &r[3]), (&CommandResult::Sealed { index: 8 }, &CommandResult::Sealed { index: 8 }));
        assert!(frozen.read().unwrap().contains_key(&3));

        let merge = |index, frozen_at| Entry {
            log_id: openraft::testing::log_id::<TypeConfig>(1, 1, index),
            payload: EntryPayload::Normal(Command::Merge(MergeCommand {
                right_shard: 3,
                right_end: Some(b"u".to_vec()),
                right_frozen_index: frozen_at,
                epoch: 4,
            })),
        };
        let wrong = left.apply_run(&[merge(2, 3)]).await.unwrap();
        assert!(matches!(wrong[0], CommandResult::Rejected(_)), "another freeze index: {:?}", wrong[0]);
        assert_eq!(left.apply_run(&[merge(3, 8)]).await.unwrap()[0], CommandResult::Merged { epoch: 4 });
        assert!(storage.get_data(b"p5").unwrap().is_some());
        assert_eq!(left.data_range(), Some((b"g".to_vec(), Some(b"u".to_vec()))));

        // Retries of writes the right shard applied: answered from its
        // sessions (the value written then, at its version), not applied.
        let retry = |index, session, key: &str| {
            let mut e = write(index, session, 2000, vec![], vec![put(key, "again")]);
            if let EntryPayload::Normal(Command::Write(w)) = &mut e.payload {
                w.epoch = 4;
            }
            e
        };
        let again = left.apply_run(&[retry(4, on_right, "p1"), retry(5, only_right, "p2")]).await.unwrap();
        assert_eq!(again, answered, "answered from the absorbed sessions");
        let record: Record = decode(&storage.get_data(b"p1").unwrap().unwrap()).unwrap();
        assert_eq!(record.value, b"b", "not applied again");
        // New writes to the absorbed keys apply; a merge retry changes nothing.
        let next = Session { client_id: 8, sequence: 2, first_incomplete: 2 };
        assert!(outcome(&left.apply_run(&[retry(6, next, "p4")]).await.unwrap()[0]).applied);
        assert_eq!(left.apply_run(&[merge(7, 8)]).await.unwrap()[0], CommandResult::Merged { epoch: 4 });

        // After a restart: the left keeps its wider range, the right stays frozen.
        drop((left, right, storage));
        let left = data_sm(dir.path(), limits());
        assert_eq!(left.data_range(), Some((b"g".to_vec(), Some(b"u".to_vec()))));
        let restarted = FrozenShards::default();
        let _right = ShardStateMachine::new(3, right_kind(), left.storage.clone(), limits())
            .unwrap()
            .with_frozen_shards(restarted.clone());
        assert!(restarted.read().unwrap().contains_key(&3));
    }

    /// The map records a split once: a new id past every other, both halves
    /// at the next epoch; a retry answers the same split, a stale epoch or a
    /// key outside the shard is refused.
    #[tokio::test]
    async fn the_map_records_a_split_once() {
        let dir = tempfile::tempdir().unwrap();
        let (mut meta, map_rx) = meta_sm(dir.path());
        let initial = ShardMap::initial(&three_nodes(), &[b"g".to_vec(), b"n".to_vec()], &[], 3).unwrap();
        meta.apply_run(&[meta_entry(1, MetaCommand::Bootstrap(initial))]).await.unwrap();
        let split = |key: &str, epoch| MetaCommand::SplitShard { shard: 2, epoch, key: key.into(), automatic: false };
        let r = meta.apply_run(&[meta_entry(2, split("h", 1))]).await.unwrap();
        assert_eq!(r[0], CommandResult::Split { left_epoch: 2, right_shard: 4, right_epoch: 2, map_version: 2 });
        let map = map_rx.borrow().clone();
        assert_eq!(map.shard_for_key(b"h").unwrap().id, 4);
        assert_eq!(map.shard_for_key(b"gz").unwrap().id, 2);
        assert_eq!(map.shard(2).unwrap().epoch, 2);
        assert_eq!(map.shard(4).unwrap().replicas, map.shard(2).unwrap().replicas);
        let retry = meta.apply_run(&[meta_entry(3, split("h", 1))]).await.unwrap();
        assert_eq!(retry[0], r[0], "a retry answers the recorded split");
        assert_eq!(map_rx.borrow().version, 2, "and changes nothing");
        for refused in [split("i", 1), split("a", 2), split("g", 2)] {
            let out = meta.apply_run(&[meta_entry(4, refused.clone())]).await.unwrap();
            assert!(matches!(out[0], CommandResult::Rejected(_)), "{refused:?}: {:?}", out[0]);
            meta.last_applied_index = Some(3);
        }
    }
}
