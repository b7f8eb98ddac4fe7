//! openraft's log storage for one shard, over the node's shared RocksDB.
//!
//! Contract with openraft, and how it is met:
//! - entries are readable as soon as `append` returns (they are written to
//!   RocksDB inline), and durable when the callback fires (after the node's
//!   group-commit fsync, shared with every other shard);
//! - the vote is fsynced before `save_vote` returns;
//! - the committed id and the purge marker need no fsync: openraft recovers
//!   from losing them.
//!
//! Invariants: entries handed to `append` are consecutive and stored under
//! their own index (asserted: openraft hands them over); an entry read back
//! decodes and sits at the index it was stored under (checked: the bytes come
//! from disk, so a violation is corruption, reported as an `InvalidData` error
//! naming the shard and index, which stops this shard's group, not the node).

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader};

use super::log_tail::LogTail;
use super::{Entry, LogId, TypeConfig, Vote, decode, encode};
use crate::storage::{MetaFamily, Storage, raft_meta_tag};

/// One shard's Raft log, vote and commit marker.
#[derive(Clone)]
pub struct ShardLogStore {
    shard: u64,
    storage: Arc<Storage>,
    /// The newest entries, decoded (shared with the readers and the state
    /// machine, which drops what it applied).
    tail: Arc<LogTail>,
}

impl ShardLogStore {
    pub fn new(shard: u64, storage: Arc<Storage>, tail: Arc<LogTail>) -> Self {
        Self { shard, storage, tail }
    }

    /// A stored Raft record (vote, committed, last purged: `tag`); one that
    /// does not decode is an error naming the shard and the record.
    fn meta<T: serde::de::DeserializeOwned>(&self, tag: u8) -> Result<Option<T>, io::Error> {
        let Some(bytes) = self.storage.get_meta(MetaFamily::Raft, self.shard, tag)? else { return Ok(None) };
        decode(&bytes).map(Some).map_err(|e| {
            let shard = self.shard;
            tracing::error!(shard, tag, "corrupt Raft metadata: {e}");
            io::Error::new(io::ErrorKind::InvalidData, format!("shard {shard}: corrupt Raft metadata (tag {tag}): {e}"))
        })
    }

    fn decode_entry(&self, index: u64, bytes: &[u8]) -> Result<Entry, io::Error> {
        let shard = self.shard;
        let corrupt = |what: String| {
            tracing::error!(shard, index, "corrupt Raft log: {what}");
            io::Error::new(io::ErrorKind::InvalidData, format!("shard {shard}: corrupt Raft log: {what}"))
        };
        let entry: Entry =
            decode(bytes).map_err(|e| corrupt(format!("the entry at index {index} cannot be decoded: {e}")))?;
        if entry.index() != index {
            return Err(corrupt(format!("the entry stored at index {index} claims index {}", entry.index())));
        }
        Ok(entry)
    }
}

impl RaftLogReader<TypeConfig> for ShardLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let from = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(x) => x.saturating_add(1),
            Bound::Excluded(x) => *x,
            Bound::Unbounded => u64::MAX,
        };
        if let Some(entries) = self.tail.get(from, to) {
            return Ok(entries);
        }
        self.storage
            .read_log(self.shard, from, to)?
            .into_iter()
            .map(|(index, bytes)| self.decode_entry(index, &bytes))
            .collect()
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.meta(raft_meta_tag::VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for ShardLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id: Option<LogId> = self.meta(raft_meta_tag::LAST_PURGED)?;
        let last_log_id = match self.storage.last_log(self.shard)? {
            Some((index, bytes)) => Some(self.decode_entry(index, &bytes)?.log_id()),
            None => last_purged_log_id,
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let mut batch = self.storage.batch();
        batch.put_meta(MetaFamily::Raft, self.shard, raft_meta_tag::VOTE, &encode(vote));
        self.storage.write_durable(batch)?.await?;
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let mut batch = self.storage.batch();
        match committed {
            Some(c) => batch.put_meta(MetaFamily::Raft, self.shard, raft_meta_tag::COMMITTED, &encode(&c)),
            None => batch.delete_meta(MetaFamily::Raft, self.shard, raft_meta_tag::COMMITTED),
        }
        self.storage.write_relaxed(batch)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        self.meta(raft_meta_tag::COMMITTED)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = self.storage.batch();
        let mut previous: Option<u64> = None;
        let mut appended = Vec::new();
        for entry in entries {
            let index = entry.index();
            if let Some(p) = previous {
                assert_eq!(index, p + 1, "shard {}: non-consecutive append {p} then {index}", self.shard);
            }
            previous = Some(index);
            let bytes = encode(&entry);
            batch.put_log(self.shard, index, &bytes);
            appended.push((entry, bytes.len()));
        }
        self.storage.write_relaxed(batch)?;
        for (entry, size) in &appended {
            self.tail.appended(entry, *size);
        }
        self.storage.on_durable(move |res| callback.io_completed(res.map_err(io::Error::from)));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index() + 1);
        self.tail.truncated(from);
        let mut batch = self.storage.batch();
        batch.delete_log_from(self.shard, from);
        // A truncation that is lost in a crash leaves entries that openraft
        // truncates again: no fsync needed.
        self.storage.write_relaxed(batch)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.tail.drop_through(log_id.index());
        let mut batch = self.storage.batch();
        // The marker goes in the same batch as the deletion: the log state
        // never shows a hole without the marker that explains it.
        batch.put_meta(MetaFamily::Raft, self.shard, raft_meta_tag::LAST_PURGED, &encode(&log_id));
        batch.delete_log_range(self.shard, 0, log_id.index() + 1);
        self.storage.write_relaxed(batch)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::blank_entry as entry;

    /// Corrupt bytes on disk are an error naming the shard and index, never
    /// a panic that would take every other shard of the node down with it.
    #[tokio::test]
    async fn corrupt_entries_are_errors_naming_shard_and_index() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        let mut batch = storage.batch();
        batch.put_log(7, 1, &encode(&entry(1, 1)));
        batch.put_log(7, 2, &encode(&entry(1, 5)));
        batch.put_log(7, 3, b"\xff\xff not an entry");
        storage.write_relaxed(batch).unwrap();
        let mut log = ShardLogStore::new(7, storage, Arc::default());

        assert_eq!(log.try_get_log_entries(1..2).await.unwrap(), vec![entry(1, 1)]);
        let misplaced = log.try_get_log_entries(1..3).await.unwrap_err();
        assert_eq!(misplaced.kind(), io::ErrorKind::InvalidData);
        assert!(misplaced.to_string().contains("shard 7") && misplaced.to_string().contains("index 2"), "{misplaced}");
        let garbage = log.try_get_log_entries(3..4).await.unwrap_err();
        assert!(garbage.to_string().contains("index 3 cannot be decoded"), "{garbage}");
        let state = log.get_log_state().await.unwrap_err();
        assert!(state.to_string().contains("shard 7"), "{state}");

        // A corrupt vote: an error naming the shard and the record, no panic.
        let mut batch = log.storage.batch();
        batch.put_meta(MetaFamily::Raft, 7, crate::storage::raft_meta_tag::VOTE, b"\xff");
        log.storage.write_relaxed(batch).unwrap();
        let vote = log.read_vote().await.unwrap_err();
        assert_eq!(vote.kind(), io::ErrorKind::InvalidData);
        assert!(vote.to_string().contains("shard 7: corrupt Raft metadata"), "{vote}");
    }
}
