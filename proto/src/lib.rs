//! geokv's wire protocols, generated from `proto/*.proto` at build time.
//!
//! - [`kv`]: the client API (`Kv` service) and the structured error details
//!   (`ErrorDetail`) that carry routing hints.
//! - [`admin`]: the shard map and node status (`Admin` service).
//! - [`raft`]: the node-to-node transport shared by all Raft groups (`Raft`
//!   service); its payloads are private to geokv nodes.
//!
//! This crate holds no logic: servers and clients convert at their edges.

#![allow(clippy::all, missing_docs)]

pub mod kv {
    tonic::include_proto!("geokv.kv");
}

pub mod admin {
    tonic::include_proto!("geokv.admin");
}

pub mod raft {
    tonic::include_proto!("geokv.raft");
}

/// The encoded `FileDescriptorSet` of every geokv proto, served by gRPC
/// server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/geokv_descriptor.bin"));

/// The largest gRPC message geokv sends or accepts, in bytes. Values are at
/// most 1 MiB by default and batches are bounded, so this only has to fit a
/// whole-shard snapshot message; see `docs/operations.md`.
pub const MAX_GRPC_MESSAGE_BYTES: usize = 256 * 1024 * 1024;
