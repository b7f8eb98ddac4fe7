//! The geokv client: a Rust library for talking to a geokv cluster, and the
//! `kvctl` command-line tool built on it.
//!
//! # What it owns
//!
//! A [`Client`] owns everything a caller should not have to think about:
//! finding the node that can serve a request, connecting to it, retrying
//! when the cluster moves underneath, and telling apart a write that failed
//! from one whose outcome is unknown. It holds one lazily connected gRPC
//! channel per node address, a cached shard map, a cached leader per shard,
//! and a write session. Clones share all of it.
//!
//! It deliberately does not: cache values, batch across shards, hide
//! indeterminate outcomes, or pick replicas by latency (stale reads prefer the
//! cached leader, then fall back to the other replicas).
//!
//! # Routing and retries
//!
//! The key space is split into shards, contiguous ranges `[start, end)` each
//! replicated by its own Raft group (or, for eventual shards, by leaderless
//! replicas: see below). The client fetches the shard map
//! (`Admin.GetShardMap`) from any seed node at [`Client::connect`], finds the
//! shard owning a key by binary search, and sends the request with that
//! shard's id and epoch in the header. Writes and linearizable or lease reads
//! go to the shard leader: the cached one, else the first replica. Nodes
//! refuse misrouted requests with structured hints in the gRPC status
//! details, and the client acts on them:
//!
//! - `NotLeader { leader }`: remember the new leader and resend there at once;
//!   with no leader known (an election is running), back off and try the
//!   other replicas.
//! - `WrongShard`: the cached map is stale; fetch a newer one (first from the
//!   node that said so) and route again.
//! - a refused connection: the node is down; try the next replica.
//! - `Overloaded { retry_after_ms }` (`RESOURCE_EXHAUSTED`: the node admits
//!   no more requests at once, nothing was done): wait the hint, at least
//!   the backoff, and resend to the same node.
//!
//! Every operation is bounded by [`ClientConfig::max_attempts`] RPCs and a
//! total [`ClientConfig::deadline`]; each RPC by
//! [`ClientConfig::rpc_timeout`]. Between rounds the client sleeps a jittered
//! exponential backoff (20 ms doubling to 250 ms, ±50%).
//!
//! # Exactly-once writes
//!
//! Every write carries a [`WriteSession`](geokv_proto::kv::WriteSession): the
//! client's random id, a sequence number taken once per logical write and
//! reused by all its retries, and the lowest sequence this client still has
//! in flight. The server's state machine remembers the last result per
//! client and answers a retry with it instead of applying the write twice, so
//! the client can resend a write whose first attempt may have committed.
//!
//! # Unknown is not failure
//!
//! A write whose RPC timed out, whose connection broke after sending, or that
//! the server reports as indeterminate (leadership lost after proposing) may
//! have been applied. The client retries it with the same session; if the
//! retries run out before any attempt answers, the result is
//! [`Error::Indeterminate`], never a plain failure. Only when *every* attempt
//! definitely did not apply (refused connections, `NotLeader`, `WrongShard`)
//! is a write reported as [`Error::Unavailable`]. A history checker can
//! therefore treat `Unavailable` writes as failed and `Indeterminate` ones as
//! maybe-applied.
//!
//! # Eventual shards
//!
//! Key ranges a cluster configures as eventual ([`ShardMode::Eventual`]) have
//! no leader: every replica accepts puts and deletes, stamps them with its
//! hybrid logical clock ([`Hlc`]), acknowledges once the write is durable
//! locally and replicates it asynchronously; the newest timestamp wins. The
//! client sends every request for such a shard to a replica in its own
//! region ([`ClientConfig::region`]) first. A write acknowledged there
//! ([`WriteResult::eventual`], `hlc`, `origin`) may still lose to a
//! concurrent write with a newer timestamp; [`Client::conflicts`] lists such
//! lost writes. These writes are not exactly-once: a write that may have
//! reached a replica is never resent, and ends as [`Error::Indeterminate`]
//! when no answer came back. Reads are served [`Served::Eventual`] (the
//! replica's local state) whatever level was asked for, and
//! compare-and-swap and batches are refused ([`Error::EventualShard`]).
//!
//! [`Client::create_shard`] makes a new eventual shard for an empty key
//! range at the start or the end of a Raft shard (`kvctl shard create`).
//!
//! # Example
//!
//! ```no_run
//! use geokv_client::{Client, Consistency, Expect};
//!
//! # async fn example() -> Result<(), geokv_client::Error> {
//! let client = Client::connect(["127.0.0.1:7001"]).await?;
//! let written = client.put("greeting", "hello").await?;
//! let read = client.get("greeting").await?.expect("just written");
//! assert_eq!(read.version, written.version);
//!
//! // Swap only if nobody changed it meanwhile.
//! let cas = client
//!     .cas("greeting", Expect::Version(read.version), Some(b"hi".to_vec()))
//!     .await?;
//! assert!(cas.swapped);
//!
//! // A cheap read from any replica, which says how stale it may be.
//! let stale = client.get_with("greeting", Consistency::Stale).await?;
//! println!("served by node {} in {}", stale.info.node_id, stale.info.region);
//!
//! // Everything from "a" on, across shards, 100 pairs at most.
//! for kv in client.scan("a"..).limit(100).await? {
//!     println!("{:?} = {:?}", kv.key, kv.value);
//! }
//!
//! // Several keys of one shard, all or nothing.
//! client.batch().put("a", "1").delete("b").condition("c", Expect::Absent).send().await?;
//! # Ok(())
//! # }
//! ```

mod backoff;
#[cfg(feature = "backup")]
pub mod backup;
mod batch;
mod client;
mod config;
mod conflicts;
pub mod display;
mod error;
mod scan;
mod session;
mod shard_admin;
mod shard_map;
mod status;
mod types;
mod users;

pub use batch::Batch;
pub use client::{Client, MAX_WRITE_RETRY_WINDOW, MIN_ATTEMPT_TIME};
pub use config::{ClientConfig, ClientTls, DEV_ENDPOINTS, Token};
pub use conflicts::{Conflict, ConflictLogInfo, ConflictReport, DEFAULT_CONFLICT_LIMIT, NodeConflicts};
pub use error::Error;
pub use scan::{KeyRange, Scan, ScanBounds};
pub use shard_admin::{CreatedShard, MergeShard, MovedReplica, NodeChange, SplitShard};
pub use shard_map::{NodeInfo, NodeState, Replica, Shard, ShardMap};
pub use status::{
    ClusterStatus, EcPeer, GroupStatus, NodeReport, NodeStatus, ReplicaStatus, Role, ShardHealth, ShardLeader,
};
pub use types::{
    BatchResult, CasResult, Consistency, DeleteResult, Expect, Hlc, KeyState, KeyValue, ReadInfo, ReadResult, Served,
    ShardMode, Versioned, WriteResult,
};
pub use users::{Grant, User};
