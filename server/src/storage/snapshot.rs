//! Shard snapshots at the storage level: a pinned view that a sender reads
//! lazily, and a receiver's staging area, whose SST files are ingested whole.
//!
//! Neither side ever holds a shard in memory. A [`Pin`] is a RocksDB
//! snapshot: taking one is O(1), and reading it streams from the files. A
//! [`Stager`] writes what a peer sends straight into SST files (one for user
//! data, one for sessions) under `<db>/incoming-snapshots/`; each file opens
//! with a range tombstone over what it replaces, so ingesting it replaces the
//! shard's old keys and adds the new ones in one step, without a write batch
//! the size of the shard.
//!
//! Installing is crash-safe: a durable marker names the files and the
//! metadata records to write before anything is ingested; the records are
//! written (and the marker deleted) in one synced batch after. A node that
//! stops in between finishes the install when it opens (ingesting a file
//! again is harmless: its tombstone and keys give the same result), before
//! any Raft group starts.

use std::path::PathBuf;
use std::sync::{Arc, LazyLock};

use rocksdb::{
    DB, Direction, IngestExternalFileOptions, IteratorMode, Options, ReadOptions, SstFileWriter, WriteBatch,
};
use serde::{Deserialize, Serialize};

use super::{
    CF_APPLY_META, CF_DATA, CF_SESSIONS, MetaFamily, PAST_EVERY_KEY, Storage, StorageError, apply_meta_tag, meta_key,
    prefixed,
};

/// The staging directory's name, inside the database directory.
const STAGING_DIR: &str = "incoming-snapshots";

/// Options for the SST files a receiver writes: the column families' own
/// (defaults), which ingestion requires to match.
static SST_OPTIONS: LazyLock<Options> = LazyLock::new(Options::default);

type DbSnapshot<'a> = rocksdb::SnapshotWithThreadMode<'a, DB>;

self_cell::self_cell!(
    struct PinCell {
        owner: Arc<DB>,
        #[covariant]
        dependent: DbSnapshot,
    }
);

/// A consistent read-only view of the whole database as of one instant (a
/// RocksDB snapshot). O(1) to take; while it lives, compaction keeps the
/// versions it sees, so it is held only as long as a snapshot is being
/// built or sent, never between sends.
pub struct Pin {
    cell: PinCell,
}

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pin").field("sequence", &self.cell.borrow_dependent().sequence_number()).finish()
    }
}

/// The parts of a shard a snapshot carries beside its metadata records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// User keys (unprefixed) in the shard's range.
    Data,
    /// The shard's exactly-once session records (keys without the prefix).
    Sessions,
}

impl Pin {
    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.cell.borrow_owner().cf_handle(name).unwrap_or_else(|| panic!("column family {name} missing"))
    }

    /// The record `tag` of `shard` in `family`, as of the pin.
    pub fn get_meta(&self, family: MetaFamily, shard: u64, tag: u8) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.cell.borrow_dependent().get_cf(self.cf(family.cf_name()), meta_key(shard, tag))?)
    }

    /// Calls `visit` with every pair of `section` of `shard`, in key order,
    /// until it returns `false`. `range` bounds the user data (`end = None`:
    /// unbounded); sessions are the shard's own, keys without the prefix.
    pub fn scan(
        &self,
        section: Section,
        shard: u64,
        range: (&[u8], Option<&[u8]>),
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        let mut ro = ReadOptions::default();
        // A one-pass scan: keep it out of the block cache.
        ro.fill_cache(false);
        let (cf, start, strip) = match section {
            Section::Data => {
                if let Some(end) = range.1 {
                    ro.set_iterate_upper_bound(end.to_vec());
                }
                (CF_DATA, range.0.to_vec(), 0)
            }
            Section::Sessions => {
                ro.set_iterate_upper_bound((shard + 1).to_be_bytes().to_vec());
                (CF_SESSIONS, shard.to_be_bytes().to_vec(), 8)
            }
        };
        let snapshot = self.cell.borrow_dependent();
        for item in snapshot.iterator_cf_opt(self.cf(cf), ro, IteratorMode::From(&start, Direction::Forward)) {
            let (k, v) = item?;
            if !visit(&k[strip..], &v) {
                break;
            }
        }
        Ok(())
    }
}

/// Staged files not yet handed to an install: deleted when dropped.
#[derive(Debug)]
struct StagedFiles {
    /// `(column family, file)`.
    paths: Vec<(&'static str, PathBuf)>,
    /// Set once an install's marker names the files: from then on the
    /// install (or the recovery at open) owns them.
    kept: bool,
}

impl Drop for StagedFiles {
    fn drop(&mut self) {
        if !self.kept {
            for (_, p) in &self.paths {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// A snapshot being received: pairs go straight into SST files.
pub struct Stager {
    shard: u64,
    /// `None`: a shard without user data (the meta shard).
    data: Option<SstFileWriter<'static>>,
    sessions: SstFileWriter<'static>,
    files: StagedFiles,
    bytes: u64,
}

impl std::fmt::Debug for Stager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stager").field("shard", &self.shard).field("files", &self.files.paths).finish()
    }
}

/// A received snapshot's files, complete and closed, ready to install.
#[derive(Debug)]
pub struct Staged {
    shard: u64,
    files: StagedFiles,
    /// Bytes of keys and values staged.
    pub bytes: u64,
}

/// What an install does, durably recorded before it starts.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct InstallMarker {
    /// `(column family, file)` to ingest, in order.
    files: Vec<(String, PathBuf)>,
    /// `apply_meta` records of the shard to put (`Some`) or delete (`None`)
    /// once the files are in.
    records: Vec<(u8, Option<Vec<u8>>)>,
}

impl Storage {
    /// Pins the database as it is now.
    pub fn pin(&self) -> Pin {
        Pin { cell: PinCell::new(self.db.clone(), |db| db.snapshot()) }
    }

    fn staging_dir(&self) -> PathBuf {
        self.db.path().join(STAGING_DIR)
    }

    /// Starts staging a snapshot of `shard` whose user data replaces the
    /// keys in `range` (`None`: a shard without user data) and whose
    /// sessions replace all of the shard's. `name` tells this transfer's
    /// files apart from any other's.
    pub fn stage(&self, shard: u64, name: u64, range: Option<(&[u8], Option<&[u8]>)>) -> Result<Stager, StorageError> {
        let dir = self.staging_dir();
        std::fs::create_dir_all(&dir).map_err(|e| StorageError::Staging(format!("{}: {e}", dir.display())))?;
        let mut files = StagedFiles { paths: Vec::new(), kept: false };
        // Each file replaces its range: the file's own keys are newer than
        // its tombstone's reach (the tests below show it), everything older
        // in the range goes.
        let data = match range {
            Some((start, end)) => {
                let path = dir.join(format!("{shard}-{name:016x}-data.sst"));
                let mut w = SstFileWriter::create(&SST_OPTIONS);
                w.open(&path)?;
                files.paths.push((CF_DATA, path));
                w.delete_range(start, end.unwrap_or(&PAST_EVERY_KEY))?;
                Some(w)
            }
            None => None,
        };
        let path = dir.join(format!("{shard}-{name:016x}-sessions.sst"));
        let mut sessions = SstFileWriter::create(&SST_OPTIONS);
        sessions.open(&path)?;
        files.paths.push((CF_SESSIONS, path));
        sessions.delete_range(shard.to_be_bytes(), (shard + 1).to_be_bytes())?;
        Ok(Stager { shard, data, sessions, files, bytes: 0 })
    }

    /// Installs a staged snapshot of `shard`: its files, then `records`
    /// (`apply_meta` tags to put or delete), crash-safe (see the module
    /// docs). Blocking: call it off the async runtime.
    pub fn install_staged(&self, mut staged: Staged, records: Vec<(u8, Option<Vec<u8>>)>) -> Result<(), StorageError> {
        let shard = staged.shard;
        let files = staged.files.paths.iter().map(|(cf, p)| (cf.to_string(), p.clone())).collect();
        let marker = InstallMarker { files, records };
        let mut wb = WriteBatch::default();
        wb.put_cf(self.cf(CF_APPLY_META), meta_key(shard, apply_meta_tag::INSTALLING), crate::codec::encode(&marker));
        self.write_synced(wb)?;
        staged.files.kept = true;
        self.finish_install(shard, marker)
    }

    /// Ingests the marker's files still present, then writes its records and
    /// deletes it.
    fn finish_install(&self, shard: u64, marker: InstallMarker) -> Result<(), StorageError> {
        for (cf, path) in &marker.files {
            if !path.exists() {
                continue; // ingested before a crash
            }
            let mut opts = IngestExternalFileOptions::default();
            opts.set_move_files(true);
            self.db.ingest_external_file_cf_opts(self.cf(cf), &opts, vec![path])?;
            // RocksDB unlinks a moved file; a copied one is ours to delete.
            let _ = std::fs::remove_file(path);
        }
        let mut wb = WriteBatch::default();
        let cf = self.cf(CF_APPLY_META);
        for (tag, value) in &marker.records {
            match value {
                Some(v) => wb.put_cf(cf, meta_key(shard, *tag), v),
                None => wb.delete_cf(cf, meta_key(shard, *tag)),
            }
        }
        wb.delete_cf(cf, meta_key(shard, apply_meta_tag::INSTALLING));
        self.write_synced(wb)
    }

    /// At open: finishes every install a stop interrupted, then deletes
    /// staged files no install names (transfers that never completed).
    pub(super) fn recover_installs(&self) -> Result<usize, StorageError> {
        let mut pending = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_APPLY_META), IteratorMode::Start) {
            let (k, v) = item?;
            if k.len() == 9 && k[8] == apply_meta_tag::INSTALLING {
                let shard = u64::from_be_bytes(k[..8].try_into().expect("8 bytes"));
                let marker: InstallMarker = crate::codec::decode(&v).map_err(|e| {
                    StorageError::Staging(format!("shard {shard}: undecodable snapshot install marker: {e}"))
                })?;
                pending.push((shard, marker));
            }
        }
        let finished = pending.len();
        for (shard, marker) in pending {
            tracing::warn!(shard, "finishing a snapshot install interrupted by a stop");
            self.finish_install(shard, marker)?;
        }
        if let Ok(entries) = std::fs::read_dir(self.staging_dir()) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(finished)
    }

    /// Writes `wb` with a WAL fsync before returning (outside the
    /// group-commit path: installs, start-up).
    pub(super) fn write_synced(&self, wb: WriteBatch) -> Result<(), StorageError> {
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(true);
        Ok(self.db.write_opt(wb, &wo)?)
    }
}

impl Stager {
    /// Adds a pair of `section`; keys of a section must come in strictly
    /// increasing order (the caller checks; RocksDB refuses otherwise).
    pub fn put(&mut self, section: Section, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        match section {
            Section::Data => match &mut self.data {
                Some(w) => w.put(key, value)?,
                None => return Err(StorageError::Staging(format!("shard {} holds no user data", self.shard))),
            },
            Section::Sessions => self.sessions.put(prefixed(self.shard, key), value)?,
        }
        self.bytes += (key.len() + value.len()) as u64;
        Ok(())
    }

    /// Closes the files.
    pub fn finish(mut self) -> Result<Staged, StorageError> {
        if let Some(w) = &mut self.data {
            w.finish()?;
        }
        self.sessions.finish()?;
        let files = std::mem::replace(&mut self.files, StagedFiles { paths: Vec::new(), kept: false });
        Ok(Staged { shard: self.shard, files, bytes: self.bytes })
    }
}

/// How many files the staging directory under database `dir` holds.
#[cfg(test)]
fn staged_file_count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join(STAGING_DIR)).map(|d| d.count()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(storage: &Storage) -> Vec<(Vec<u8>, Vec<u8>)> {
        storage.scan_data(b"", None, usize::MAX).unwrap()
    }

    /// An ingested file's range tombstone removes the older keys of the
    /// range, not the file's own keys, and nothing outside the range.
    #[tokio::test]
    async fn a_staged_snapshot_replaces_its_range_and_sessions_only() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        let mut b = storage.batch();
        for k in [&b"a"[..], b"m-old", b"m-same", b"z"] {
            b.put_data(k, b"old");
        }
        b.put_session(7, b"client-1", b"old");
        b.put_session(8, b"client-1", b"other shard");
        storage.write_durable(b).unwrap().await.unwrap();

        let mut s = storage.stage(7, 1, Some((b"m", Some(b"n")))).unwrap();
        s.put(Section::Data, b"m-new", b"new").unwrap();
        s.put(Section::Data, b"m-same", b"new").unwrap();
        s.put(Section::Sessions, b"client-2", b"new").unwrap();
        let staged = s.finish().unwrap();
        assert_eq!(staged_file_count(dir.path()), 2);
        storage.install_staged(staged, vec![(apply_meta_tag::APPLIED, Some(b"applied".to_vec()))]).unwrap();

        let got: Vec<_> = data(&storage).into_iter().map(|(k, v)| (String::from_utf8(k).unwrap(), v)).collect();
        let want: Vec<_> = [("a", "old"), ("m-new", "new"), ("m-same", "new"), ("z", "old")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect();
        assert_eq!(got, want);
        assert_eq!(storage.get_session(7, b"client-1").unwrap(), None);
        assert_eq!(storage.get_session(7, b"client-2").unwrap().as_deref(), Some(&b"new"[..]));
        assert_eq!(storage.get_session(8, b"client-1").unwrap().as_deref(), Some(&b"other shard"[..]));
        assert_eq!(
            storage.get_meta(MetaFamily::Apply, 7, apply_meta_tag::APPLIED).unwrap().as_deref(),
            Some(&b"applied"[..])
        );
        assert_eq!(storage.get_meta(MetaFamily::Apply, 7, apply_meta_tag::INSTALLING).unwrap(), None);
        assert_eq!(staged_file_count(dir.path()), 0, "ingested files leave the staging area");
    }

    /// An unbounded range's tombstone reaches every key above its start.
    #[tokio::test]
    async fn an_unbounded_range_is_replaced_to_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        let mut b = storage.batch();
        b.put_data(b"k", b"below");
        b.put_data(b"p", b"old");
        b.put_data(&[0xff; 300], b"old");
        storage.write_durable(b).unwrap().await.unwrap();
        let mut s = storage.stage(3, 1, Some((b"p", None))).unwrap();
        s.put(Section::Data, b"q", b"new").unwrap();
        storage.install_staged(s.finish().unwrap(), Vec::new()).unwrap();
        let keys: Vec<_> = data(&storage).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![b"k".to_vec(), b"q".to_vec()]);
    }

    /// A stop after the marker and before the records: the next open
    /// finishes the install; a transfer that never completed leaves no file.
    #[tokio::test]
    async fn an_interrupted_install_is_finished_at_open_and_partial_transfers_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        {
            let storage = Storage::open(dir.path()).unwrap();
            let mut s = storage.stage(5, 1, Some((b"", None))).unwrap();
            s.put(Section::Data, b"x", b"snapshot").unwrap();
            let mut staged = s.finish().unwrap();
            // What install_staged does up to the crash: the marker, no ingest.
            let marker = InstallMarker {
                files: staged.files.paths.iter().map(|(cf, p)| (cf.to_string(), p.clone())).collect(),
                records: vec![(apply_meta_tag::APPLIED, Some(b"7".to_vec()))],
            };
            let mut wb = WriteBatch::default();
            wb.put_cf(
                storage.cf(CF_APPLY_META),
                meta_key(5, apply_meta_tag::INSTALLING),
                crate::codec::encode(&marker),
            );
            storage.write_synced(wb).unwrap();
            staged.files.kept = true;
            // And a transfer of another shard, cut off midway.
            let mut other = storage.stage(6, 2, Some((b"", None))).unwrap();
            other.put(Section::Data, b"y", b"partial").unwrap();
            std::mem::forget(other);
        }
        assert_eq!(staged_file_count(dir.path()), 4);
        let storage = Storage::open(dir.path()).unwrap();
        assert_eq!(storage.get_data(b"x").unwrap().as_deref(), Some(&b"snapshot"[..]));
        assert_eq!(storage.get_data(b"y").unwrap(), None);
        assert_eq!(
            storage.get_meta(MetaFamily::Apply, 5, apply_meta_tag::APPLIED).unwrap().as_deref(),
            Some(&b"7"[..])
        );
        assert_eq!(storage.get_meta(MetaFamily::Apply, 5, apply_meta_tag::INSTALLING).unwrap(), None);
        assert_eq!(staged_file_count(dir.path()), 0);
    }

    /// A pin sees the database as it was, whatever is written after.
    #[tokio::test]
    async fn a_pin_reads_the_past() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        let mut b = storage.batch();
        b.put_data(b"a", b"1");
        b.put_session(2, b"c", b"s");
        storage.write_durable(b).unwrap().await.unwrap();
        let pin = storage.pin();
        let mut b = storage.batch();
        b.put_data(b"a", b"2");
        b.put_data(b"b", b"2");
        storage.write_durable(b).unwrap().await.unwrap();
        let mut seen = Vec::new();
        pin.scan(Section::Data, 2, (b"", None), &mut |k, v| {
            seen.push((k.to_vec(), v.to_vec()));
            true
        })
        .unwrap();
        assert_eq!(seen, vec![(b"a".to_vec(), b"1".to_vec())]);
        let mut sessions = Vec::new();
        pin.scan(Section::Sessions, 2, (b"", None), &mut |k, _| {
            sessions.push(k.to_vec());
            true
        })
        .unwrap();
        assert_eq!(sessions, vec![b"c".to_vec()]);
    }
}
