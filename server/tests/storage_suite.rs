//! openraft's storage conformance suite, run against geokv's RocksDB log
//! store (with its in-memory tail) and state machine (one shard of a fresh
//! node database per case).

use std::sync::Arc;

use geokv_server::raft::TypeConfig;
use geokv_server::raft::log_store::ShardLogStore;
use geokv_server::raft::log_tail::LogTail;
use geokv_server::raft::state_machine::{SessionLimits, ShardKind, ShardStateMachine};
use geokv_server::storage::Storage;
use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};

struct Builder;

impl StoreBuilder<TypeConfig, ShardLogStore, ShardStateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, ShardLogStore, ShardStateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let storage = Storage::open(dir.path()).expect("open storage");
        let shard = 7;
        let kind = ShardKind::Data { start: Vec::new(), end: None, epoch: 1 };
        let limits = SessionLimits { ttl_ms: 60_000, gc_interval_ms: 1_000 };
        // The log's in-memory tail, shared as a node shares it: the suite
        // checks reads served from it too.
        let tail = Arc::new(LogTail::default());
        let sm = ShardStateMachine::new(shard, kind, Arc::clone(&storage), limits)
            .expect("state machine")
            .with_log_tail(tail.clone());
        Ok((dir, ShardLogStore::new(shard, storage, tail), sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() -> Result<(), StorageError<TypeConfig>> {
    Suite::test_all(Builder).await
}
