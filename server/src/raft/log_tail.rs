//! The newest entries of one shard's Raft log, kept decoded in memory.
//!
//! Under write load every entry is read back soon after it is appended: by
//! the leader's replication to each follower and by the state machine's
//! apply, each a RocksDB read and a decode (about a twentieth of a node's
//! CPU in a profile of puts at 64 clients). The store puts each appended
//! entry here too, and readers take a range from here when all of it is
//! here.
//!
//! Invariants (the store and its readers share one tail):
//! - the entries are consecutive, in index order, and each is exactly the
//!   entry stored at its index (an append that does not continue the tail
//!   replaces it; a truncation or purge drops the entries it removes, before
//!   the store removes them on disk);
//! - memory is bounded: at most [`MAX_TAIL_ENTRIES`] entries and
//!   [`MAX_TAIL_BYTES`] encoded bytes (the oldest go first), and the state
//!   machine drops what it has applied, so an idle shard holds nothing.
//!
//! Anything not here is read from disk, as before.

use std::collections::VecDeque;
use std::sync::Mutex;

use openraft::entry::RaftEntry;

use super::Entry;

/// The most entries one shard's tail holds.
pub const MAX_TAIL_ENTRIES: usize = 1024;
/// The most encoded bytes one shard's tail holds (entries larger than this
/// are never kept).
pub const MAX_TAIL_BYTES: usize = 4 << 20;

#[derive(Debug, Default)]
pub struct LogTail {
    inner: Mutex<Tail>,
}

#[derive(Debug, Default)]
struct Tail {
    /// (entry, its encoded size), consecutive indexes.
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
}

impl Tail {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.index())
    }

    fn last_index(&self) -> Option<u64> {
        self.entries.back().map(|(e, _)| e.index())
    }

    fn pop_front(&mut self) {
        if let Some((_, size)) = self.entries.pop_front() {
            self.bytes -= size;
        }
    }

    fn pop_back(&mut self) {
        if let Some((_, size)) = self.entries.pop_back() {
            self.bytes -= size;
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

impl LogTail {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tail> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Entry `entry` (encoded in `size` bytes) was stored at its index.
    pub fn appended(&self, entry: &Entry, size: usize) {
        let mut tail = self.lock();
        if tail.last_index().is_some_and(|last| last + 1 != entry.index()) {
            tail.clear();
        }
        if size > MAX_TAIL_BYTES {
            tail.clear();
            return;
        }
        tail.entries.push_back((entry.clone(), size));
        tail.bytes += size;
        while tail.entries.len() > MAX_TAIL_ENTRIES || tail.bytes > MAX_TAIL_BYTES {
            tail.pop_front();
        }
    }

    /// Entries from index `from` on are being removed (a truncation).
    pub fn truncated(&self, from: u64) {
        let mut tail = self.lock();
        while tail.last_index().is_some_and(|last| last >= from) {
            tail.pop_back();
        }
    }

    /// Entries up to index `upto` are no longer wanted here: purged from
    /// the log, or applied by the state machine (a lagging follower's
    /// replication reads them from disk).
    pub fn drop_through(&self, upto: u64) {
        let mut tail = self.lock();
        while tail.first_index().is_some_and(|first| first <= upto) {
            tail.pop_front();
        }
    }

    /// The entries `[from, to)` when every one of them is here (and `to`
    /// does not reach past the last one); `None` otherwise.
    pub fn get(&self, from: u64, to: u64) -> Option<Vec<Entry>> {
        let tail = self.lock();
        let (first, last) = (tail.first_index()?, tail.last_index()?);
        if from < first || to > last + 1 || from >= to {
            return None;
        }
        let skip = (from - first) as usize;
        let take = (to - from) as usize;
        Some(tail.entries.iter().skip(skip).take(take).map(|(e, _)| e.clone()).collect())
    }

    /// Entries held and their encoded bytes.
    pub fn size(&self) -> (usize, usize) {
        let tail = self.lock();
        (tail.entries.len(), tail.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::blank_entry as entry;

    #[test]
    fn serves_only_ranges_it_holds_whole_and_follows_truncations_and_purges() {
        let tail = LogTail::default();
        assert_eq!(tail.get(1, 2), None);
        for i in 1..=5 {
            tail.appended(&entry(1, i), 10);
        }
        assert_eq!(tail.get(2, 4), Some(vec![entry(1, 2), entry(1, 3)]));
        assert_eq!(tail.get(1, 6).map(|v| v.len()), Some(5));
        assert_eq!(tail.get(0, 3), None, "index 0 is not here");
        assert_eq!(tail.get(4, 7), None, "reaches past the last entry");
        // A follower's conflicting suffix is truncated, then replaced.
        tail.truncated(4);
        assert_eq!(tail.get(4, 5), None);
        tail.appended(&entry(2, 4), 10);
        assert_eq!(tail.get(3, 5), Some(vec![entry(1, 3), entry(2, 4)]));
        // Applied or purged: gone from here.
        tail.drop_through(3);
        assert_eq!(tail.get(3, 4), None);
        assert_eq!(tail.get(4, 5), Some(vec![entry(2, 4)]));
        // An append that does not continue the tail replaces it.
        tail.appended(&entry(3, 9), 10);
        assert_eq!((tail.get(4, 5), tail.get(9, 10)), (None, Some(vec![entry(3, 9)])));
        assert_eq!(tail.size(), (1, 10));
    }

    #[test]
    fn memory_is_bounded_by_entries_and_bytes() {
        let tail = LogTail::default();
        for i in 1..=(MAX_TAIL_ENTRIES as u64 + 10) {
            tail.appended(&entry(1, i), 1);
        }
        assert_eq!(tail.size().0, MAX_TAIL_ENTRIES);
        assert_eq!(tail.get(1, 2), None, "the oldest went first");
        let big = MAX_TAIL_BYTES / 3;
        for i in 1..=4 {
            tail.appended(&entry(2, 10_000 + i), big);
        }
        assert!(tail.size().1 <= MAX_TAIL_BYTES);
        tail.appended(&entry(2, 10_005), MAX_TAIL_BYTES + 1);
        assert_eq!(tail.size(), (0, 0), "an entry larger than the bound is not kept");
    }
}
