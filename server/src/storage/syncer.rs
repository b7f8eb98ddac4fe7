//! Group commit: one thread fsyncs RocksDB's WAL on behalf of every waiter.
//!
//! Callers write to RocksDB without sync, then register a callback here. The
//! thread takes every waiter queued so far, issues one `flush_wal(sync=true)`,
//! and completes them all. A waiter registered after its write returned is
//! therefore covered by the fsync that completes it; a busy node with many
//! shards pays one fsync per round instead of one per append.
//!
//! A failed fsync is final ("fsyncgate": after a failed `fsync` Linux may
//! already have dropped the dirty pages it could not write, so a later
//! `fsync` that succeeds proves nothing about them). From the first failure
//! on, every waiter, queued or future, fails with [`StorageError::SyncFailed`]
//! and no fsync is tried again: nothing this node writes is acknowledged as
//! durable until it is restarted and recovers from what is really on disk, as
//! PostgreSQL and etcd do. openraft treats the failed log write as a fatal
//! storage error and stops the group, so the node stops acknowledging; and
//! [`Syncer::failure`] lets the node refuse client writes at once and report
//! itself not ready (health `NOT_SERVING`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

use rocksdb::DB;

use super::StorageError;

type Done = Box<dyn FnOnce(Result<(), StorageError>) + Send>;

/// One fsync of everything written so far: RocksDB's `flush_wal(sync)` in
/// production, a scripted one in tests.
type SyncFn = Box<dyn FnMut() -> Result<(), String> + Send>;

/// The most waiters one fsync round completes; the rest wait for the next
/// round. Bounds the latency a single round adds to the last waiter.
const MAX_WAITERS_PER_SYNC: usize = 4096;

pub struct Syncer {
    /// `None` only while dropping.
    tx: Mutex<Option<mpsc::Sender<Done>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    syncs: Arc<AtomicU64>,
    waiters: Arc<AtomicU64>,
    /// The cause of the first failed fsync, once there was one (for ever).
    failure: Arc<OnceLock<String>>,
}

impl Syncer {
    pub fn start(db: Arc<DB>) -> Syncer {
        Syncer::start_with(Box::new(move || db.flush_wal(true).map_err(|e| e.to_string())))
    }

    /// A syncer that fsyncs `db`'s WAL until the file `trigger` exists, and
    /// from then on fails every fsync without trying it (a fault injector
    /// for tests: `geokv --fault-fail-fsync-when-exists`).
    pub fn start_failing_when(db: Arc<DB>, trigger: std::path::PathBuf) -> Syncer {
        Syncer::start_with(Box::new(move || {
            if trigger.exists() {
                return Err(format!("injected fault: {} exists", trigger.display()));
            }
            db.flush_wal(true).map_err(|e| e.to_string())
        }))
    }

    /// A syncer whose fsync is `sync` (the thread owns it, and with it
    /// whatever it holds, e.g. the DB).
    fn start_with(sync: SyncFn) -> Syncer {
        let (tx, rx) = mpsc::channel::<Done>();
        let syncs = Arc::new(AtomicU64::new(0));
        let waiters = Arc::new(AtomicU64::new(0));
        let failure = Arc::new(OnceLock::new());
        let (s, w, f) = (syncs.clone(), waiters.clone(), failure.clone());
        let thread = std::thread::Builder::new()
            .name("geokv-fsync".into())
            .spawn(move || run(sync, rx, s, w, f))
            .expect("spawn fsync thread");
        Syncer { tx: Mutex::new(Some(tx)), thread: Some(thread), syncs, waiters, failure }
    }

    /// Why a WAL fsync failed, if one did: from then on nothing is
    /// acknowledged as durable until the node is restarted.
    pub fn failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
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

fn run(
    mut sync: SyncFn,
    rx: mpsc::Receiver<Done>,
    syncs: Arc<AtomicU64>,
    waiters: Arc<AtomicU64>,
    failure: Arc<OnceLock<String>>,
) {
    let mut batch: Vec<Done> = Vec::new();
    // `failure` holds the first failure for ever: see the module comment.
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < MAX_WAITERS_PER_SYNC {
            match rx.try_recv() {
                Ok(done) => batch.push(done),
                Err(_) => break,
            }
        }
        if failure.get().is_none() {
            syncs.fetch_add(1, Ordering::Relaxed);
            if let Err(cause) = sync() {
                tracing::error!(
                    %cause,
                    "WAL fsync failed; this node acknowledges nothing as durable any more: restart it \
                     (it recovers from what is on disk)"
                );
                let _ = failure.set(cause);
            }
        }
        waiters.fetch_add(batch.len() as u64, Ordering::Relaxed);
        for done in batch.drain(..) {
            done(match failure.get() {
                None => Ok(()),
                Some(cause) => Err(StorageError::SyncFailed(cause.clone())),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The regression ("fsyncgate"): a round after a failed fsync used to
    /// report success as soon as a later fsync succeeded.
    #[tokio::test]
    async fn a_failed_fsync_fails_every_later_waiter_and_is_not_retried() {
        let calls = Arc::new(AtomicU64::new(0));
        let counted = calls.clone();
        // Succeeds, fails once, then would succeed again.
        let syncer = Syncer::start_with(Box::new(move || match counted.fetch_add(1, Ordering::SeqCst) {
            1 => Err("EIO".into()),
            _ => Ok(()),
        }));
        let wait = || tokio::time::timeout(Duration::from_secs(10), syncer.sync());
        assert!(wait().await.unwrap().is_ok(), "a good fsync acknowledges");
        assert_eq!(syncer.failure(), None);
        let failed = wait().await.unwrap();
        assert_eq!(syncer.failure(), Some("EIO"), "the failure is there for readiness and writes to see");
        assert!(matches!(&failed, Err(StorageError::SyncFailed(cause)) if cause == "EIO"), "{failed:?}");
        for _ in 0..3 {
            let later = wait().await.unwrap();
            assert!(matches!(later, Err(StorageError::SyncFailed(_))), "a later waiter must not hear Ok: {later:?}");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2, "no fsync is tried after the failed one");
        assert_eq!(syncer.stats(), (2, 5));
    }
}
