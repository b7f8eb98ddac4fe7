//! Durable storage: one RocksDB instance per node, shared by every Raft group
//! the node hosts.
//!
//! This is the only module that names `rocksdb`. Everything above it speaks in
//! shard ids, log indexes, user keys and opaque encoded records.
//!
//! # Layout (column families)
//!
//! | cf           | key                                   | value                          |
//! |--------------|---------------------------------------|--------------------------------|
//! | `raft_log`   | shard id (BE u64) ++ log index (BE u64) | encoded Raft entry           |
//! | `raft_meta`  | shard id ++ tag byte                  | vote, committed, last purged   |
//! | `data`       | user key, unprefixed                  | encoded value record           |
//! | `apply_meta` | shard id ++ tag byte                  | applied log id, membership, shard map, range, install marker |
//! | `sessions`   | shard id ++ client id ++ [sequence]   | exactly-once session state     |
//! | `ec_data`    | user key, unprefixed                   | eventual shards' records (value or tombstone, timestamp) |
//! | `ec_outbox`  | shard id ++ sequence (BE u64)          | eventual writes to ship to peers |
//! | `ec_meta`    | shard id ++ tag ++ ...                 | eventual-mode positions, tombstone index, conflict log |
//!
//! User keys are stored unprefixed: shards are contiguous key ranges and a node
//! holds at most one replica of any range, so a future split moves no data.
//!
//! # Durability
//!
//! Writes go to RocksDB's WAL without `fsync`; durability comes from the
//! [`Syncer`], one thread that fsyncs the WAL once for every group of callers
//! waiting on it. Many shards appending at once therefore share one fsync
//! (group commit across Raft groups). A caller is told its write is durable only
//! after an fsync that started after its write returned.
//!
//! What this module deliberately does not do: interpret records, enforce key
//! limits, or know about Raft's rules. Those live in `raft/` and `service/`.

mod snapshot;
mod syncer;

use std::path::Path;
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, ReadOptions, WriteBatch};

pub(crate) use snapshot::InstallMarker;
pub use snapshot::{Pin, Section, Staged, Stager};
pub use syncer::Syncer;

/// Past every user key: longer than any key the limits admit, all `0xff`.
/// The end of a range that has none (RocksDB's range calls need one).
const PAST_EVERY_KEY: [u8; KEY_BYTES_CEILING] = [0xff; KEY_BYTES_CEILING];

/// User keys must be shorter than this for [`PAST_EVERY_KEY`] to be past
/// them all (the configuration refuses a larger `limits.max_key_bytes`).
pub const KEY_BYTES_CEILING: usize = 8192;

/// Column family names, in the order they are created.
const CF_RAFT_LOG: &str = "raft_log";
const CF_RAFT_META: &str = "raft_meta";
const CF_DATA: &str = "data";
const CF_APPLY_META: &str = "apply_meta";
const CF_SESSIONS: &str = "sessions";
const CF_EC_DATA: &str = "ec_data";
const CF_EC_OUTBOX: &str = "ec_outbox";
const CF_EC_META: &str = "ec_meta";
const ALL_CFS: [&str; 8] =
    [CF_RAFT_LOG, CF_RAFT_META, CF_DATA, CF_APPLY_META, CF_SESSIONS, CF_EC_DATA, CF_EC_OUTBOX, CF_EC_META];

/// The disk format this build writes and reads: 2 (records as
/// [`crate::codec`] encodes them). Kept as decimal text under
/// [`FORMAT_KEY`] in RocksDB's default column family. Format 1 (bincode,
/// no format key) is upgraded in place at open; a newer format is refused.
pub const DISK_FORMAT: u32 = 2;
const FORMAT_KEY: &[u8] = b"geokv.disk_format";
/// While an upgrade runs: the family (its index in [`Family::ALL`]) and the
/// last key rewritten, written with each batch so a stopped upgrade resumes.
const UPGRADE_PROGRESS_KEY: &[u8] = b"geokv.upgrade_progress";

/// A column family, as the upgrade of an older format sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    RaftLog,
    RaftMeta,
    Data,
    ApplyMeta,
    Sessions,
    EcData,
    EcOutbox,
    EcMeta,
}

impl Family {
    pub const ALL: [Family; 8] = [
        Family::RaftLog,
        Family::RaftMeta,
        Family::Data,
        Family::ApplyMeta,
        Family::Sessions,
        Family::EcData,
        Family::EcOutbox,
        Family::EcMeta,
    ];

    pub fn cf_name(self) -> &'static str {
        ALL_CFS[self as usize]
    }
}

/// Rewrites one record `(family, key, value)` of disk format `from` in the
/// current format: `Some(bytes)` to store, `None` to drop it, or why it
/// cannot be read. [`crate::upgrade::record`] knows every format so far.
pub type Upgrade<'a> = &'a dyn Fn(u32, Family, &[u8], &[u8]) -> Result<Option<Vec<u8>>, String>;

/// The eventual mode's column families, whose keys its module lays out.
///
/// Eventual records live apart from Raft's `data`: a range carved out of a
/// Raft shard may still hold that shard's leftovers on a lagging replica,
/// and neither kind of record can ever be read as the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EcFamily {
    /// User keys, unprefixed (a node holds one replica of any range).
    Data,
    Outbox,
    Meta,
}

impl EcFamily {
    fn cf_name(self) -> &'static str {
        match self {
            EcFamily::Data => CF_EC_DATA,
            EcFamily::Outbox => CF_EC_OUTBOX,
            EcFamily::Meta => CF_EC_META,
        }
    }
}

/// Tags for per-shard records in `raft_meta`.
pub mod raft_meta_tag {
    pub const VOTE: u8 = 1;
    pub const COMMITTED: u8 = 2;
    pub const LAST_PURGED: u8 = 3;
}

/// Tags for per-shard records in `apply_meta`.
pub mod apply_meta_tag {
    pub const APPLIED: u8 = 1;
    pub const MEMBERSHIP: u8 = 2;
    pub const SHARD_MAP: u8 = 3;
    /// The whole-shard snapshot blob of earlier versions (deleted at open:
    /// snapshots are now taken from a pinned view when needed).
    pub const SNAPSHOT: u8 = 4;
    pub const SESSION_GC_MS: u8 = 5;
    /// A data shard's range and epoch once it changed after creation.
    pub const RANGE: u8 = 6;
    /// A data shard frozen for a merge: `(freeze index, the shard it merges
    /// into)`.
    pub const FROZEN: u8 = 7;
    /// A snapshot install in progress (see `storage::snapshot`).
    pub const INSTALLING: u8 = 8;
}

/// Which per-shard metadata family a record lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaFamily {
    /// Raft's own state: vote, committed, purged. Written by the log store.
    Raft,
    /// The state machine's state: applied id, membership, map, snapshot.
    Apply,
}

impl MetaFamily {
    fn cf_name(self) -> &'static str {
        match self {
            MetaFamily::Raft => CF_RAFT_META,
            MetaFamily::Apply => CF_APPLY_META,
        }
    }
}

/// A storage failure. Storage errors are fatal to the Raft group that hit
/// them: openraft stops the group rather than risk diverging.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("snapshot staging: {0}")]
    Staging(String),
    #[error("fsync thread is gone")]
    SyncerGone,
    /// The data directory's disk format is one this build cannot read, or
    /// upgrading it failed.
    #[error("{0}")]
    Format(String),
    /// A WAL fsync failed on this node (maybe long ago): nothing written
    /// since is durable, and the node must be restarted.
    #[error("WAL fsync failed ({0}); this node no longer acknowledges writes until it is restarted")]
    SyncFailed(String),
}

impl From<StorageError> for std::io::Error {
    fn from(e: StorageError) -> Self {
        std::io::Error::other(e.to_string())
    }
}

/// The node's RocksDB instance plus its group-commit syncer.
///
/// Invariants:
/// - every column family in [`ALL_CFS`] exists once `open` returns;
/// - a record passed to [`Storage::write_durable`] is on stable storage when
///   the returned future resolves `Ok`.
pub struct Storage {
    db: Arc<DB>,
    syncer: Syncer,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage").field("path", &self.db.path()).finish()
    }
}

/// A column family's options. The families read by point lookups that
/// often miss (sessions: a write looks up its own result and a marker,
/// normally absent) or hit among many versions of the same keys (data,
/// eventual data) get Bloom filters, on disk and in the memtable, so a miss
/// costs a few hashed bits instead of a search of every level.
fn cf_options(name: &str) -> Options {
    let mut opts = Options::default();
    if matches!(name, CF_DATA | CF_SESSIONS | CF_EC_DATA) {
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        table.set_whole_key_filtering(true);
        opts.set_block_based_table_factory(&table);
        opts.set_memtable_whole_key_filtering(true);
        opts.set_memtable_prefix_bloom_ratio(0.02);
    }
    opts
}

impl Storage {
    /// Why a WAL fsync failed, if one did (see [`Syncer`]): the node then
    /// acknowledges nothing as durable until it is restarted.
    pub fn sync_failure(&self) -> Option<&str> {
        self.syncer.failure()
    }

    /// Opens (or creates) the node's database under `dir`.
    pub fn open(dir: &Path) -> Result<Arc<Storage>, StorageError> {
        Storage::open_with_fault(dir, None)
    }

    /// [`Storage::open`], with a fault injector for tests: once the file
    /// `fail_fsync_when` exists, every WAL fsync fails (as on a dying disk).
    pub fn open_with_fault(dir: &Path, fail_fsync_when: Option<&Path>) -> Result<Arc<Storage>, StorageError> {
        Storage::open_with(dir, fail_fsync_when, &crate::upgrade::record)
    }

    /// Opens the database under `dir`, refusing a disk format newer than
    /// [`DISK_FORMAT`] and upgrading an older one in place with `upgrade`.
    fn open_with(dir: &Path, fail_fsync_when: Option<&Path>, upgrade: Upgrade) -> Result<Arc<Storage>, StorageError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // The WAL is fsynced by the syncer; RocksDB must not buffer it in
        // user space beyond a write call.
        opts.set_manual_wal_flush(false);
        opts.set_max_background_jobs(2);
        opts.set_keep_log_file_num(4);
        let cfs = ALL_CFS.iter().map(|name| ColumnFamilyDescriptor::new(*name, cf_options(name)));
        let db = Arc::new(DB::open_cf_descriptors(&opts, dir, cfs)?);
        let syncer = match fail_fsync_when {
            None => Syncer::start(db.clone()),
            Some(trigger) => Syncer::start_failing_when(db.clone(), trigger.to_path_buf()),
        };
        let storage = Storage { db, syncer };
        storage.check_format(dir, upgrade)?;
        storage.recover_installs()?;
        storage.drop_legacy_snapshots()?;
        Ok(Arc::new(storage))
    }

    /// The directory's disk format: the current one is fine, a new
    /// directory gets it, format 1 (data and no format key) is upgraded,
    /// anything else is refused with what to do.
    fn check_format(&self, dir: &Path, upgrade: Upgrade) -> Result<(), StorageError> {
        let found = match self.db.get(FORMAT_KEY)? {
            None => None,
            Some(text) => Some(String::from_utf8_lossy(&text).parse::<u32>().map_err(|_| {
                StorageError::Format(format!(
                    "{}: unreadable disk format key {:?}: not a geokv data directory, or a corrupt one",
                    dir.display(),
                    String::from_utf8_lossy(&text)
                ))
            })?),
        };
        match found {
            Some(DISK_FORMAT) => Ok(()),
            Some(newer) if newer > DISK_FORMAT => Err(StorageError::Format(format!(
                "{} holds disk format {newer}, written by a newer geokv; this build reads formats 1 to \
                 {DISK_FORMAT}. Run a release that reads format {newer} (going back to an older release is not \
                 supported: restore a backup into a new directory instead)",
                dir.display()
            ))),
            Some(other) => Err(StorageError::Format(format!(
                "{}: disk format {other} is not one geokv ever wrote (1 to {DISK_FORMAT})",
                dir.display()
            ))),
            None if self.is_empty()? => {
                let mut wb = WriteBatch::default();
                wb.put(FORMAT_KEY, DISK_FORMAT.to_string());
                self.write_synced(wb)
            }
            None => self.upgrade_in_place(1, upgrade),
        }
    }

    /// Whether no column family holds a record (a new data directory).
    fn is_empty(&self) -> Result<bool, StorageError> {
        for name in ALL_CFS {
            if let Some(item) = self.db.iterator_cf(self.cf(name), IteratorMode::Start).next() {
                item?;
                return Ok(false);
            }
        }
        Ok(self.db.iterator(IteratorMode::Start).next().is_none())
    }

    /// Rewrites every record of format `from` in the current format, family
    /// by family in key order, in fsynced batches that each record how far
    /// they got: a stop in the middle resumes there (records before the
    /// mark are in the new format, records after it in the old). The format
    /// key is written last.
    fn upgrade_in_place(&self, from: u32, upgrade: Upgrade) -> Result<(), StorageError> {
        const BATCH_RECORDS: usize = 1_000;
        const BATCH_BYTES: usize = 4 << 20;
        let started = std::time::Instant::now();
        let (first, mut resume) = match self.db.get(UPGRADE_PROGRESS_KEY)? {
            Some(mark) if !mark.is_empty() && (mark[0] as usize) < Family::ALL.len() => {
                tracing::warn!(family = Family::ALL[mark[0] as usize].cf_name(), "resuming a stopped disk upgrade");
                (mark[0] as usize, Some(mark[1..].to_vec()))
            }
            Some(_) => return Err(StorageError::Format("unreadable disk upgrade progress mark".into())),
            None => (0, None),
        };
        tracing::warn!(from, to = DISK_FORMAT, "upgrading the data directory's disk format in place");
        let (mut records, mut bytes) = (0u64, 0u64);
        for (i, family) in Family::ALL.iter().enumerate().skip(first) {
            let cf = self.cf(family.cf_name());
            let mut after = if i == first { resume.take() } else { None };
            loop {
                let mode = match &after {
                    Some(k) => IteratorMode::From(k, Direction::Forward),
                    None => IteratorMode::Start,
                };
                let mut wb = WriteBatch::default();
                let (mut n, mut size, mut last) = (0usize, 0usize, None);
                for item in self.db.iterator_cf(cf, mode) {
                    let (k, v) = item?;
                    if after.as_deref() == Some(&k[..]) {
                        continue;
                    }
                    let rewritten = upgrade(from, *family, &k, &v).map_err(|e| {
                        StorageError::Format(format!(
                            "upgrading disk format {from} to {DISK_FORMAT}: {} record {}: {e}",
                            family.cf_name(),
                            hex(&k)
                        ))
                    })?;
                    match rewritten {
                        Some(new) => wb.put_cf(cf, &k, new),
                        None => wb.delete_cf(cf, &k),
                    }
                    n += 1;
                    size += k.len() + v.len();
                    last = Some(k.to_vec());
                    if n >= BATCH_RECORDS || size >= BATCH_BYTES {
                        break;
                    }
                }
                let Some(last) = last else { break };
                wb.put(UPGRADE_PROGRESS_KEY, [&[i as u8][..], &last].concat());
                self.write_synced(wb)?;
                records += n as u64;
                bytes += size as u64;
                after = Some(last);
            }
        }
        let mut wb = WriteBatch::default();
        wb.put(FORMAT_KEY, DISK_FORMAT.to_string());
        wb.delete(UPGRADE_PROGRESS_KEY);
        self.write_synced(wb)?;
        tracing::warn!(records, bytes, took = ?started.elapsed(), "disk format upgraded from {from} to {DISK_FORMAT}");
        Ok(())
    }

    /// Deletes the whole-shard snapshot blobs earlier versions stored (one
    /// per shard, as big as the shard): nothing reads them any more.
    fn drop_legacy_snapshots(&self) -> Result<(), StorageError> {
        let cf = self.cf(CF_APPLY_META);
        let mut wb = WriteBatch::default();
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, _) = item?;
            if k.len() == 9 && k[8] == apply_meta_tag::SNAPSHOT {
                wb.delete_cf(cf, k);
            }
        }
        if !wb.is_empty() {
            self.db.write(wb)?;
        }
        Ok(())
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(name).unwrap_or_else(|| panic!("column family {name} missing"))
    }

    /// Starts a write batch; nothing is visible until it is written.
    pub fn batch(&self) -> Batch<'_> {
        Batch { storage: self, wb: WriteBatch::default() }
    }

    /// Writes `batch` (visible to readers on return) and resolves once it is
    /// fsynced. The write itself happens before this function returns, so
    /// callers that must make data readable synchronously can rely on it.
    pub fn write_durable(
        &self,
        batch: Batch<'_>,
    ) -> Result<impl Future<Output = Result<(), StorageError>> + Send + 'static, StorageError> {
        self.db.write(batch.wb)?;
        Ok(self.syncer.sync())
    }

    /// Writes `batch` without waiting for an fsync (data that Raft can rebuild).
    pub fn write_relaxed(&self, batch: Batch<'_>) -> Result<(), StorageError> {
        self.db.write(batch.wb)?;
        Ok(())
    }

    /// Registers `done` to run after the next WAL fsync that covers every
    /// write completed so far.
    pub fn on_durable(&self, done: impl FnOnce(Result<(), StorageError>) + Send + 'static) {
        self.syncer.on_sync(Box::new(done));
    }

    /// Resolves after a WAL fsync that started after this call: every write
    /// completed before it is then durable.
    pub fn sync(&self) -> impl Future<Output = Result<(), StorageError>> + Send + 'static {
        self.syncer.sync()
    }

    /// RocksDB's sizes per column family (its own properties: live SST
    /// files, memtables), for metrics.
    pub fn sizes(&self) -> Vec<CfSize> {
        ALL_CFS
            .iter()
            .map(|name| {
                let cf = self.cf(name);
                let prop = |p: &str| self.db.property_int_value_cf(cf, p).ok().flatten().unwrap_or(0);
                CfSize {
                    cf: name,
                    sst_bytes: prop("rocksdb.total-sst-files-size"),
                    memtable_bytes: prop("rocksdb.size-all-mem-tables"),
                }
            })
            .collect()
    }

    /// How many fsyncs the syncer has issued and how many waiters they served.
    pub fn sync_stats(&self) -> (u64, u64) {
        self.syncer.stats()
    }

    // ---- per-shard metadata ----------------------------------------------

    pub fn get_meta(&self, family: MetaFamily, shard: u64, tag: u8) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get_cf(self.cf(family.cf_name()), meta_key(shard, tag))?)
    }

    // ---- Raft log ------------------------------------------------------

    /// Entries of `shard` with index in `[from, to)`, as `(index, bytes)`.
    pub fn read_log(&self, shard: u64, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        let mut out = Vec::new();
        if from >= to {
            return Ok(out);
        }
        let start = log_key(shard, from);
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(log_key(shard, to).to_vec());
        let iter = self.db.iterator_cf_opt(self.cf(CF_RAFT_LOG), ro, IteratorMode::From(&start, Direction::Forward));
        for item in iter {
            let (k, v) = item?;
            let (s, index) = decode_log_key(&k);
            assert_eq!(s, shard, "log iterator crossed into shard {s} while reading shard {shard}");
            out.push((index, v.to_vec()));
        }
        Ok(out)
    }

    /// The last entry of `shard`'s log, if any.
    pub fn last_log(&self, shard: u64) -> Result<Option<(u64, Vec<u8>)>, StorageError> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(log_key(shard, 0).to_vec());
        let start = log_key(shard, u64::MAX);
        let mut iter =
            self.db.iterator_cf_opt(self.cf(CF_RAFT_LOG), ro, IteratorMode::From(&start, Direction::Reverse));
        match iter.next() {
            None => Ok(None),
            Some(item) => {
                let (k, v) = item?;
                let (s, index) = decode_log_key(&k);
                if s != shard {
                    return Ok(None);
                }
                Ok(Some((index, v.to_vec())))
            }
        }
    }

    // ---- user data -----------------------------------------------------

    /// The encoded record stored under `key`.
    pub fn get_data(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get_cf(self.cf(CF_DATA), key)?)
    }

    /// Up to `limit` records with keys in `[start, end)` (`end = None`:
    /// unbounded), in key order.
    pub fn scan_data(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<Pair>, StorageError> {
        self.scan_data_within(start, end, limit, usize::MAX)
    }

    /// [`Storage::scan_data`], stopping after the record that brings the
    /// keys and values read past `max_bytes` (that record included, so a
    /// caller can tell the page was cut and where to resume).
    pub fn scan_data_within(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Pair>, StorageError> {
        let mut ro = ReadOptions::default();
        if let Some(end) = end {
            ro.set_iterate_upper_bound(end.to_vec());
        }
        let iter = self.db.iterator_cf_opt(self.cf(CF_DATA), ro, IteratorMode::From(start, Direction::Forward));
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for item in iter.take(limit) {
            let (k, v) = item?;
            bytes = bytes.saturating_add(k.len() + v.len());
            out.push((k.to_vec(), v.to_vec()));
            if bytes > max_bytes {
                break;
            }
        }
        Ok(out)
    }

    /// The approximate on-disk size of the user data in `[start, end)`
    /// (RocksDB's estimate from its files, compressed: what the memtable
    /// holds, up to a write buffer's worth, is not counted).
    pub fn approximate_data_bytes(&self, start: &[u8], end: Option<&[u8]>) -> u64 {
        let range = rocksdb::Range::new(start, end.unwrap_or(&PAST_EVERY_KEY));
        self.db.get_approximate_sizes_cf(self.cf(CF_DATA), &[range]).first().copied().unwrap_or(0)
    }

    /// A key that splits `[start, end)` into halves of about equal bytes
    /// (keys and stored records), strictly above `start`; `None` when the
    /// range holds fewer than two keys. Reads at most `max_keys` keys twice
    /// (once to total the bytes, once to find the middle), so on a larger
    /// range the key halves the first `max_keys` keys.
    pub fn middle_key(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        max_keys: usize,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        let (mut total, mut keys) = (0usize, 0usize);
        self.walk_data(start, end, max_keys, &mut |_, bytes| {
            total += bytes;
            keys += 1;
            true
        })?;
        if keys < 2 {
            return Ok(None);
        }
        let (mut sum, mut middle, mut last) = (0usize, None, None);
        self.walk_data(start, end, max_keys, &mut |key, bytes| {
            if key > start {
                if sum * 2 >= total {
                    middle = Some(key.to_vec());
                    return false;
                }
                last = Some(key.to_vec());
            }
            sum += bytes;
            true
        })?;
        // Everything before the last key was under half: split before it.
        Ok(middle.or(last))
    }

    /// Calls `visit` with each key in `[start, end)` and its bytes (key and
    /// record), in order, for at most `max_keys` keys or until it says stop.
    fn walk_data(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        max_keys: usize,
        visit: &mut dyn FnMut(&[u8], usize) -> bool,
    ) -> Result<(), StorageError> {
        const PAGE: usize = 1_024;
        let mut from = start.to_vec();
        let mut seen = 0;
        while seen < max_keys {
            let page = self.scan_data(&from, end, PAGE.min(max_keys - seen))?;
            for (k, v) in &page {
                seen += 1;
                if !visit(k, k.len() + v.len()) {
                    return Ok(());
                }
            }
            match page.last() {
                Some((last, _)) if page.len() == PAGE => from = [last.as_slice(), &[0]].concat(),
                _ => return Ok(()),
            }
        }
        Ok(())
    }

    // ---- eventual mode ---------------------------------------------------

    pub fn get_ec(&self, family: EcFamily, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get_cf(self.cf(family.cf_name()), key)?)
    }

    /// Up to `limit` pairs of `family` with keys in `[start, end)` (`end =
    /// None`: unbounded), in key order, or in reverse key order when
    /// `reverse` (starting below `end`).
    pub fn scan_ec(
        &self,
        family: EcFamily,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<Pair>, StorageError> {
        self.scan_ec_within(family, start, end, limit, usize::MAX, reverse)
    }

    /// [`Storage::scan_ec`] that also stops once the keys and values read
    /// pass `max_bytes` (the pair that crossed it included), as
    /// [`Storage::scan_data_within`] does.
    pub fn scan_ec_within(
        &self,
        family: EcFamily,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        max_bytes: usize,
        reverse: bool,
    ) -> Result<Vec<Pair>, StorageError> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(start.to_vec());
        if let Some(end) = end {
            ro.set_iterate_upper_bound(end.to_vec());
        }
        let mode = if reverse { IteratorMode::End } else { IteratorMode::Start };
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for item in self.db.iterator_cf_opt(self.cf(family.cf_name()), ro, mode).take(limit) {
            let (k, v) = item?;
            bytes = bytes.saturating_add(k.len() + v.len());
            out.push((k.to_vec(), v.to_vec()));
            if bytes > max_bytes {
                break;
            }
        }
        Ok(out)
    }

    // ---- sessions ------------------------------------------------------

    pub fn get_session(&self, shard: u64, session_key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get_cf(self.cf(CF_SESSIONS), prefixed(shard, session_key))?)
    }

    /// All session records of `shard` whose key (after the shard prefix) is
    /// exactly `key_len` bytes long, e.g. the per-client headers.
    pub fn sessions_with_key_len(&self, shard: u64, key_len: usize) -> Result<Vec<Pair>, StorageError> {
        let prefix = shard.to_be_bytes();
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound((shard + 1).to_be_bytes().to_vec());
        let mut out = Vec::new();
        for item in self.db.iterator_cf_opt(self.cf(CF_SESSIONS), ro, IteratorMode::From(&prefix, Direction::Forward)) {
            let (k, v) = item?;
            if k.len() == 8 + key_len {
                out.push((k[8..].to_vec(), v.to_vec()));
            }
        }
        Ok(out)
    }
}

/// `bytes` as lowercase hex, for messages about keys.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One column family's sizes ([`Storage::sizes`]).
#[derive(Debug, Clone, Copy)]
pub struct CfSize {
    pub cf: &'static str,
    pub sst_bytes: u64,
    pub memtable_bytes: u64,
}

/// A raw `(key, value)` pair read from a column family.
pub type Pair = (Vec<u8>, Vec<u8>);

/// A set of writes applied atomically by [`Storage::write_durable`] or
/// [`Storage::write_relaxed`].
pub struct Batch<'a> {
    storage: &'a Storage,
    wb: WriteBatch,
}

impl Batch<'_> {
    pub fn put_meta(&mut self, family: MetaFamily, shard: u64, tag: u8, value: &[u8]) {
        self.wb.put_cf(self.storage.cf(family.cf_name()), meta_key(shard, tag), value);
    }

    pub fn delete_meta(&mut self, family: MetaFamily, shard: u64, tag: u8) {
        self.wb.delete_cf(self.storage.cf(family.cf_name()), meta_key(shard, tag));
    }

    pub fn put_log(&mut self, shard: u64, index: u64, entry: &[u8]) {
        self.wb.put_cf(self.storage.cf(CF_RAFT_LOG), log_key(shard, index), entry);
    }

    /// Deletes log entries of `shard` with index in `[from, to)`.
    pub fn delete_log_range(&mut self, shard: u64, from: u64, to: u64) {
        if from < to {
            self.wb.delete_range_cf(self.storage.cf(CF_RAFT_LOG), log_key(shard, from), log_key(shard, to));
        }
    }

    /// Deletes all log entries of `shard` with index `>= from`.
    pub fn delete_log_from(&mut self, shard: u64, from: u64) {
        let cf = self.storage.cf(CF_RAFT_LOG);
        self.wb.delete_range_cf(cf, log_key(shard, from), log_key(shard, u64::MAX));
        self.wb.delete_cf(cf, log_key(shard, u64::MAX));
    }

    pub fn put_data(&mut self, key: &[u8], record: &[u8]) {
        self.wb.put_cf(self.storage.cf(CF_DATA), key, record);
    }

    pub fn delete_data(&mut self, key: &[u8]) {
        self.wb.delete_cf(self.storage.cf(CF_DATA), key);
    }

    /// Deletes every user key in `[start, end)` (`end = None`: unbounded).
    pub fn clear_data_range(&mut self, start: &[u8], end: Option<&[u8]>) -> Result<(), StorageError> {
        // One range tombstone, bounded or not: never a delete per key.
        self.wb.delete_range_cf(self.storage.cf(CF_DATA), start, end.unwrap_or(&PAST_EVERY_KEY));
        Ok(())
    }

    pub fn put_ec(&mut self, family: EcFamily, key: &[u8], value: &[u8]) {
        self.wb.put_cf(self.storage.cf(family.cf_name()), key, value);
    }

    pub fn delete_ec(&mut self, family: EcFamily, key: &[u8]) {
        self.wb.delete_cf(self.storage.cf(family.cf_name()), key);
    }

    /// Deletes an eventual shard's records in its range `[start, end)`
    /// (`None`: to the end of the key space).
    pub fn delete_ec_data_range(&mut self, start: &[u8], end: Option<&[u8]>) {
        self.delete_ec_range(EcFamily::Data, start, end.unwrap_or(&PAST_EVERY_KEY));
    }

    /// Deletes the keys of `family` in `[start, end)` (one range tombstone:
    /// for occasional bulk collection, not per write).
    pub fn delete_ec_range(&mut self, family: EcFamily, start: &[u8], end: &[u8]) {
        if start < end {
            self.wb.delete_range_cf(self.storage.cf(family.cf_name()), start, end);
        }
    }

    pub fn put_session(&mut self, shard: u64, session_key: &[u8], value: &[u8]) {
        self.wb.put_cf(self.storage.cf(CF_SESSIONS), prefixed(shard, session_key), value);
    }

    pub fn delete_session(&mut self, shard: u64, session_key: &[u8]) {
        self.wb.delete_cf(self.storage.cf(CF_SESSIONS), prefixed(shard, session_key));
    }

    /// Deletes every session record of `shard`.
    pub fn clear_sessions(&mut self, shard: u64) {
        self.wb.delete_range_cf(self.storage.cf(CF_SESSIONS), shard.to_be_bytes(), (shard + 1).to_be_bytes());
    }

    /// Deletes everything this node stores of `shard`'s Raft group except
    /// its user keys (which have no shard prefix; see
    /// [`Batch::clear_data_range`]): log, vote, committed and purged ids,
    /// applied state, membership, range, snapshot and sessions. For a
    /// replica that left the group, whose Raft state must not come back if
    /// the shard is placed here again.
    pub fn forget_shard(&mut self, shard: u64) {
        let cf = self.storage.cf(CF_RAFT_LOG);
        self.wb.delete_range_cf(cf, log_key(shard, 0), log_key(shard, u64::MAX));
        self.wb.delete_cf(cf, log_key(shard, u64::MAX));
        for family in [MetaFamily::Raft, MetaFamily::Apply] {
            let cf = self.storage.cf(family.cf_name());
            self.wb.delete_range_cf(cf, meta_key(shard, 0), meta_key(shard, u8::MAX));
            self.wb.delete_cf(cf, meta_key(shard, u8::MAX));
        }
        self.clear_sessions(shard);
    }
}

fn meta_key(shard: u64, tag: u8) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[..8].copy_from_slice(&shard.to_be_bytes());
    k[8] = tag;
    k
}

fn log_key(shard: u64, index: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&shard.to_be_bytes());
    k[8..].copy_from_slice(&index.to_be_bytes());
    k
}

fn decode_log_key(k: &[u8]) -> (u64, u64) {
    assert_eq!(k.len(), 16, "raft_log key of {} bytes", k.len());
    let shard = u64::from_be_bytes(k[..8].try_into().expect("8 bytes"));
    let index = u64::from_be_bytes(k[8..].try_into().expect("8 bytes"));
    (shard, index)
}

fn prefixed(shard: u64, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + rest.len());
    k.extend_from_slice(&shard.to_be_bytes());
    k.extend_from_slice(rest);
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new directory is written in the current format; one from a newer
    /// format is refused by name and left as it was.
    #[test]
    fn a_newer_disk_format_is_refused_and_a_new_directory_gets_the_current_one() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        assert_eq!(storage.db.get(FORMAT_KEY).unwrap().as_deref(), Some(&b"2"[..]));
        storage.db.put(FORMAT_KEY, b"3").unwrap();
        drop(storage);
        let err = Storage::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("holds disk format 3, written by a newer geokv"), "{err}");
        let db = DB::open_cf(&Options::default(), dir.path(), ALL_CFS).unwrap();
        assert_eq!(db.get(FORMAT_KEY).unwrap().as_deref(), Some(&b"3"[..]), "left as it was");
        db.put(FORMAT_KEY, b"two").unwrap();
        drop(db);
        let err = Storage::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("unreadable disk format key"), "{err}");
    }

    /// An upgrade rewrites every record once, also when it was stopped
    /// half way (here: an error on the 1,500th record) and resumed.
    #[test]
    fn an_upgrade_stopped_half_way_resumes_and_rewrites_each_record_once() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        let mut b = storage.batch();
        for i in 0..2_500u32 {
            b.put_data(format!("k{i:05}").as_bytes(), b"v");
            b.put_log(i as u64 % 3, i as u64, b"e");
        }
        storage.write_relaxed(b).unwrap();
        storage.db.delete(FORMAT_KEY).unwrap(); // as format 1 left it
        drop(storage);

        let calls = std::sync::atomic::AtomicUsize::new(0);
        let mark = |_: u32, _: Family, _: &[u8], v: &[u8]| {
            if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1_500 {
                return Err("stopped".to_string());
            }
            Ok(Some([v, b"+"].concat()))
        };
        let err = Storage::open_with(dir.path(), None, &mark).unwrap_err().to_string();
        assert!(err.contains("stopped"), "{err}");
        let resumed = Storage::open_with(dir.path(), None, &mark).unwrap();
        assert_eq!(resumed.db.get(FORMAT_KEY).unwrap().as_deref(), Some(&b"2"[..]));
        assert!(resumed.db.get(UPGRADE_PROGRESS_KEY).unwrap().is_none());
        let data = resumed.scan_data(b"", None, usize::MAX).unwrap();
        assert_eq!(data.len(), 2_500);
        assert!(data.iter().all(|(_, v)| v == b"v+"), "every record rewritten exactly once");
        for shard in 0..3 {
            assert!(resumed.read_log(shard, 0, u64::MAX).unwrap().iter().all(|(_, v)| v == b"e+"));
        }
        // The first run committed one batch (1,000 log records) and failed
        // on its 1,501st call; the second did the other 1,500 log records
        // (500 of them again: their batch never committed) and the data.
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1_501 + 1_500 + 2_500);
    }

    #[test]
    fn log_keys_sort_by_shard_then_index() {
        assert!(log_key(1, u64::MAX) < log_key(2, 0));
        assert!(log_key(1, 9) < log_key(1, 10));
        assert_eq!(decode_log_key(&log_key(7, 42)), (7, 42));
    }

    /// A byte budget cuts a page after the record that crosses it.
    #[test]
    fn a_scan_stops_after_the_record_that_crosses_its_byte_budget() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        let mut b = storage.batch();
        for i in 0..10u8 {
            b.put_data(&[b'k', i], &[0u8; 98]);
        }
        storage.write_relaxed(b).unwrap();
        // 100 bytes a record: the third crosses 250.
        assert_eq!(storage.scan_data_within(b"", None, 100, 250).unwrap().len(), 3);
        assert_eq!(storage.scan_data_within(b"", None, 2, 250).unwrap().len(), 2, "the count still bounds it");
        assert_eq!(storage.scan_data_within(b"", None, 100, 10).unwrap().len(), 1, "at least one record");
        assert_eq!(storage.scan_data(b"", None, 100).unwrap().len(), 10);
    }

    #[tokio::test]
    async fn log_reads_stay_within_their_shard() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        let mut b = storage.batch();
        for i in 1..=3 {
            b.put_log(1, i, b"one");
            b.put_log(2, i, b"two");
        }
        storage.write_durable(b).unwrap().await.unwrap();
        assert_eq!(storage.read_log(1, 0, 100).unwrap().len(), 3);
        assert_eq!(storage.last_log(1).unwrap().unwrap().0, 3);
        assert_eq!(storage.last_log(3).unwrap(), None);
        let mut b = storage.batch();
        b.delete_log_from(1, 2);
        storage.write_relaxed(b).unwrap();
        assert_eq!(storage.last_log(1).unwrap().unwrap().0, 1);
        assert_eq!(storage.last_log(2).unwrap().unwrap().0, 3);
    }

    #[tokio::test]
    async fn the_middle_key_halves_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        assert_eq!(storage.middle_key(b"", None, 1_000).unwrap(), None, "no keys");
        let mut b = storage.batch();
        for i in 0..3_000u32 {
            b.put_data(format!("k{i:05}").as_bytes(), b"0123456789");
        }
        b.put_data(b"z", b"outside");
        storage.write_relaxed(b).unwrap();
        let middle = storage.middle_key(b"k", Some(b"l"), 1_000_000).unwrap().unwrap();
        assert_eq!(middle, b"k01500".to_vec());
        // Bounded: halves the first 1,000 keys.
        assert_eq!(storage.middle_key(b"k", Some(b"l"), 1_000).unwrap().unwrap(), b"k00500".to_vec());
        // Never the range's own start.
        let two = storage.middle_key(b"k02999", None, 10).unwrap().unwrap();
        assert_eq!(two, b"z".to_vec());
        assert_eq!(storage.middle_key(b"z", None, 10).unwrap(), None, "one key");
    }

    #[tokio::test]
    async fn unbounded_clear_removes_only_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        let mut b = storage.batch();
        for k in [&b"a"[..], b"m", b"z", b"zz"] {
            b.put_data(k, b"v");
        }
        storage.write_relaxed(b).unwrap();
        let mut b = storage.batch();
        b.clear_data_range(b"m", None).unwrap();
        storage.write_relaxed(b).unwrap();
        let left = storage.scan_data(b"", None, 10).unwrap();
        assert_eq!(left, vec![(b"a".to_vec(), b"v".to_vec())]);
    }
}
