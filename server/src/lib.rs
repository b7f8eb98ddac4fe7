//! geokv-server: a geokv node.
//!
//! A node hosts many Raft groups, one per shard (a contiguous key range) it
//! holds a replica of, plus the meta shard that replicates the shard map. All
//! groups share the node's RocksDB instance, its group-commit fsync thread and
//! its gRPC connections to peers. Layers, bottom up (see `docs/architecture.md`):
//!
//! - [`storage`]: RocksDB column families and group-commit durability; the only
//!   module that names `rocksdb`;
//! - [`raft`]: openraft's type configuration, log store, state machine and
//!   network over storage;
//! - [`shards`]: the shard map (ranges, epochs, replicas with regions);
//! - [`service`]: the gRPC services (`Kv`, `Raft`, `Admin`) and [`metrics`];
//! - [`node`] and [`config`]: wiring, start-up, shutdown, validated settings;
//! - [`placement`]: where replicas go (a drained node's), pure functions of
//!   the map;
//! - [`topology`]: carrying out replica changes (learner, catch-up, joint
//!   consensus), deleting replicas that left, and carrying out drains and
//!   removals of members.
//!
//! Beside the Raft groups, a node may hold replicas of *eventual* shards
//! ([`eventual`]): leaderless, last-writer-wins by hybrid logical clock, the
//! measured contrast to consensus.
//!
//! What a node does not do yet: merge shards, split them on its own, join a
//! running cluster, or replace a dead node without an operator
//! (docs/architecture.md lists what is built).

pub mod cli;
pub mod config;
pub mod error;
pub mod eventual;
pub mod join;
pub mod metrics;
pub mod node;
pub mod placement;
pub mod raft;
pub mod service;
pub mod shards;
pub mod storage;
pub mod topology;

pub use config::Config;
pub use node::{Node, serve};
