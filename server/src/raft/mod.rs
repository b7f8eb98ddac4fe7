//! Raft for geokv: openraft's type configuration, the log store and state
//! machine adapters over [`crate::storage`], and the node-to-node network.
//!
//! Every shard is its own openraft group (`Raft<TypeConfig, ShardStateMachine>`)
//! with its own log, vote and state machine, all living in the node's one
//! RocksDB instance. Groups are independent: they elect leaders, replicate and
//! snapshot on their own. What they share is the node's storage (and its group
//! commit fsync), and the network: one gRPC channel per peer node, every
//! message tagged with its shard id.
//!
//! The protocol is openraft's (0.10 alpha, pinned; see `docs/architecture.md`
//! for why and the risk): Raft with pre-vote, leader lease, ReadIndex reads and
//! pipelined (streamed) appends. Timing is configuration, tuned for WAN RTTs:
//! in openraft the append/heartbeat RPC timeout is the heartbeat interval and
//! the vote timeout is the minimum election timeout.
//!
//! This module does not route client requests or interpret the shard map;
//! `service/` and `node.rs` do.

pub mod command;
pub mod log_clock;
pub mod log_store;
pub mod log_tail;
pub mod network;
pub mod read_index;
pub mod snapshot;
pub mod state_machine;

pub use command::{Command, CommandResult};
pub use state_machine::ShardStateMachine;

openraft::declare_raft_types!(
    /// geokv's openraft type configuration.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = openraft::BasicNode,
);

/// One shard's Raft group handle.
pub type ShardRaft = openraft::Raft<TypeConfig, ShardStateMachine>;
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, snapshot::SnapshotData>;

/// The index of an optional log id (0 for none), as metrics and status show it.
pub fn index_of(id: &Option<LogId>) -> u64 {
    id.as_ref().map_or(0, |l| l.index)
}

/// As a leader's metrics say: the last log index `peer` is known to hold
/// (`None`: nothing matched yet, or this node does not lead).
pub fn matched_index(m: &openraft::RaftMetrics<TypeConfig>, peer: u64) -> Option<u64> {
    m.replication.as_ref()?.get(&peer)?.as_ref().map(|l| l.index)
}

/// Whether `peer`'s log is within `lag` entries of this leader's.
pub fn within_lag(m: &openraft::RaftMetrics<TypeConfig>, peer: u64, lag: u64) -> bool {
    matched_index(m, peer).is_some_and(|index| index + lag >= m.last_log_index.unwrap_or(0))
}

pub use crate::codec::{decode, encode};

/// A blank entry at `index` of `term` (leader node 1), for the log's tests.
#[cfg(test)]
pub(crate) fn blank_entry(term: u64, index: u64) -> Entry {
    Entry { log_id: openraft::testing::log_id::<TypeConfig>(term, 1, index), payload: openraft::EntryPayload::Blank }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Arbitrary bytes (and valid encodings with bytes flipped) decode into
    /// every peer message and stored record type as a value or an error,
    /// never a panic, and a length prefix that lies allocates nothing
    /// near it (postcard reads lengths against the input it has; serde
    /// preallocates at most 1 MiB from a length).
    #[test]
    fn arbitrary_peer_bytes_decode_or_fail_without_panicking() {
        use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
        let seed: u64 = rand::random();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let valid = encode(&command::Command::Meta(command::MetaCommand::RemoveUser { name: "alice".into() }));
        let corpus_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/testdata/hostile");
        let corpus: Vec<Vec<u8>> = std::fs::read_dir(&corpus_dir)
            .expect("tests/testdata/hostile")
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "bin"))
            .map(|p| std::fs::read(p).unwrap())
            .collect();
        assert!(corpus.len() >= 10, "the kept regression inputs");
        for case in 0..20_000 + corpus.len() {
            let mut bytes: Vec<u8> = if let Some(kept) = corpus.get(case.wrapping_sub(20_000)) {
                kept.clone()
            } else if case % 2 == 0 {
                (0..rng.random_range(0..512)).map(|_| rng.random()).collect()
            } else {
                let mut b = valid.clone();
                let i = rng.random_range(0..b.len());
                b[i] = rng.random();
                b
            };
            if case < 20_000 && case % 7 == 0 && bytes.len() >= 8 {
                bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
            }
            let _ = decode::<AppendEntriesRequest<TypeConfig>>(&bytes);
            let _ = decode::<VoteRequest<TypeConfig>>(&bytes);
            let _ = decode::<(Vote, SnapshotMeta, snapshot::SnapshotHeader)>(&bytes);
            let _ = decode::<TransferLeaderRequest<TypeConfig>>(&bytes);
            let _ = decode::<command::Command>(&bytes);
            let _ = decode::<crate::shards::ShardMap>(&bytes);
            let _ = decode::<(u64, Vec<(u64, u64)>)>(&bytes);
        }
        eprintln!("seed {seed}: 20000 cases, no panic");
    }
}
