//! geokv-bench: latency and throughput of geokv, side by side with etcd 3.4,
//! in one run.
//!
//! # What it measures, and how it stays fair
//!
//! - **Same load generator.** One Rust load generator ([`load`]), closed
//!   loop by default or open loop at a fixed rate (`--rate`, latency from
//!   the intended send time, bounded in flight, overflow counted), drives
//!   both systems over gRPC: geokv through `geokv-client`, etcd
//!   through its own v3 API (`KV.Put`, `KV.Range`; a vendored subset of
//!   etcd's `rpc.proto` in `proto/etcd/`). Same keys, 256-byte values, client
//!   counts, connections per client (8 clients share one HTTP/2 connection)
//!   and seeds.
//! - **Same cluster shape and timing.** Three members on this machine, each
//!   a real process with its own data directory (fsync on both), heartbeat
//!   300 ms and election timeout 1500–3000 ms ([`cluster`]).
//! - **Interleaved rounds.** Each round runs every target once, alternating
//!   which system goes first (A/B, then B/A), so drift in machine load hits
//!   both alike; summaries give the median and the range across rounds and
//!   ratios are paired by round ([`report`]).
//! - **Noise on record.** Every cell records where the machine's CPU went
//!   ([`machine`]): the measured servers (which also yields ops per server
//!   CPU-second), the idle system's servers, the bench itself, and other
//!   processes; a cell where others used more than `--noise-cores` cores, or
//!   that saw errors, is flagged.
//!
//! # Scenarios
//!
//! - `local`: no added latency, both systems. Raw engine cost.
//! - `3-region` / `5-region`: both systems behind the emulated WAN, clients
//!   in every region, each figure next to its physical floor. geokv runs in
//!   `geokv-lab`; etcd members each run in their own network namespace behind
//!   the same proxy code ([`netns`]), since etcd cannot pick the source IP
//!   of its peer connections.
//! - `failover`: SIGKILL the leader under write load; time until writes
//!   succeed again, for both systems, over several kills.
//!
//! It deliberately does not run in CI as a timed test: CI runs a smoke
//! version (`--smoke`) that only checks the tool works.

pub mod cluster;
pub mod ecdelay;
pub mod load;
pub mod machine;
pub mod netns;
pub mod report;
pub mod scenario;

/// etcd's v3 API (the vendored subset).
#[allow(clippy::all, missing_docs)]
pub mod etcdpb {
    tonic::include_proto!("etcdserverpb");
}
