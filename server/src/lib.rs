//! geokv-server: a geokv node.
//!
//! A node hosts many Raft groups, one per shard (a contiguous key range) it
//! holds a replica of, plus the meta shard that replicates the shard map. All
//! groups share the node's RocksDB instance, its group-commit fsync thread and
//! its gRPC connections to peers. Layers, bottom up (see `docs/architecture.md`):
//!
//! - [`storage`]: RocksDB column families and group-commit durability; the only
//!   module that names `rocksdb`; [`codec`] (how records are encoded) and
//!   [`upgrade`] (older disk formats, rewritten at open);
//! - [`raft`]: openraft's type configuration, log store, state machine and
//!   network over storage;
//! - [`shards`]: the shard map (ranges, epochs, replicas with regions);
//! - [`service`]: the gRPC services (`Kv`, `Raft`, `Admin`, plus the standard
//!   health service and reflection), [`admission`] (the in-flight limit
//!   and the room for responses) and [`metrics`] (`/metrics`, `/healthz`, `/readyz`);
//! - [`tls`] (certificates, the TLS accept loop and peer dialling),
//!   [`auth`] (who may call what: peers, users, roles) and [`certs`]
//!   (`geokv certs`, a development CA);
//! - [`node`] and [`config`]: wiring, start-up, shutdown, validated settings;
//!   [`join`]: a new node asking to be admitted (`geokv --join`);
//! - [`placement`]: where replicas and leaders go (drains, dead-node
//!   replacement, rebalancing) and which shard splits, pure functions of the
//!   map and of what the nodes report;
//! - [`topology`]: carrying out replica changes (learner, catch-up, joint
//!   consensus), deleting replicas that left, and the meta leader's member
//!   loop: joins, down nodes, drains, removals, rebalancing, automatic
//!   splits.
//!
//! Beside the Raft groups, a node may hold replicas of *eventual* shards
//! ([`eventual`]): leaderless, last-writer-wins by hybrid logical clock, the
//! measured contrast to consensus.
//!
//! What a node does not do yet is listed in docs/architecture.md ("What is
//! not built yet").

pub mod admission;
pub mod auth;
pub mod certs;
pub mod cli;
pub mod codec;
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
pub mod tls;
pub mod topology;
pub mod upgrade;

pub use config::Config;
pub use node::{Node, serve};
