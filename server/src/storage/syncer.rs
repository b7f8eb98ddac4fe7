//! Group commit: one thread fsyncs RocksDB's WAL on behalf of every waiter.
//!
//! Callers write to RocksDB without sync, then register a callback here. The
//! thread takes every waiter queued so far, issues one `flush_wal(sync=true)`,
//! and completes them all. A waiter registered after its write returned is
//! therefore covered by the fsync that completes it; a busy node with many
//! shards pays one fsync per round instead of one per append.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use rocksdb::DB;

use super::StorageError;

type Done = Box<dyn FnOnce(Result<(), StorageError>) + Send>;

/// The most waiters one fsync round completes; the rest wait for the next
/// round. Bounds the latency a single round adds to the last waiter.
const MAX_WAITERS_PER_SYNC: usize = 4096;

pub struct Syncer {
    /// `None` only while dropping.
    tx: Mutex<Option<mpsc::Sender<Done>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    syncs: Arc<AtomicU64>,
    waiters: Arc<AtomicU64>,
}

impl Syncer {
    pub fn start(db: Arc<DB>) -> Syncer {
        let (tx, rx) = mpsc::channel::<Done>();
        let syncs = Arc::new(AtomicU64::new(0));
        let waiters = Arc::new(AtomicU64::new(0));
        let (s, w) = (syncs.clone(), waiters.clone());
        let thread = std::thread::Builder::new()
            .name("geokv-fsync".into())
            .spawn(move || run(db, rx, s, w))
            .expect("spawn fsync thread");
        Syncer { tx: Mutex::new(Some(tx)), thread: Some(thread), syncs, waiters }
    }

    /// Runs `done` after the next fsync.
    pub fn on_sync(&self, done: Done) {
        let tx = self.tx.lock().expect("syncer lock");
        let unsent = match tx.as_ref() {
            Some(tx) => tx.send(done).err().map(|mpsc::SendError(done)| done),
            None => Some(done),
        };
        if let Some(done) = unsent {
            done(Err(StorageError::SyncerGone));
        }
    }

    /// Resolves after the next fsync.
    pub fn sync(&self) -> impl Future<Output = Result<(), StorageError>> + Send + 'static {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.on_sync(Box::new(move |res| {
            let _ = tx.send(res);
        }));
        async move { rx.await.unwrap_or(Err(StorageError::SyncerGone)) }
    }

    /// `(fsyncs issued, waiters completed)`.
    pub fn stats(&self) -> (u64, u64) {
        (self.syncs.load(Ordering::Relaxed), self.waiters.load(Ordering::Relaxed))
    }
}

impl Drop for Syncer {
    /// Stops the thread after it has completed every waiter, and waits for
    /// it: once the `Storage` is gone, so is the thread's handle on the DB,
    /// and RocksDB closes before the caller goes on (e.g. removes the files).
    fn drop(&mut self) {
        self.tx.lock().expect("syncer lock").take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(db: Arc<DB>, rx: mpsc::Receiver<Done>, syncs: Arc<AtomicU64>, waiters: Arc<AtomicU64>) {
    let mut batch: Vec<Done> = Vec::new();
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < MAX_WAITERS_PER_SYNC {
            match rx.try_recv() {
                Ok(done) => batch.push(done),
                Err(_) => break,
            }
        }
        let result = db.flush_wal(true);
        syncs.fetch_add(1, Ordering::Relaxed);
        waiters.fetch_add(batch.len() as u64, Ordering::Relaxed);
        for done in batch.drain(..) {
            done(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(StorageError::Rocks(e.clone())),
            });
        }
        if let Err(e) = result {
            tracing::error!(cause = %e, "WAL fsync failed; the node can no longer promise durability");
        }
    }
}
