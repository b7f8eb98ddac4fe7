//! gRPC services of a node: `Kv` (client API), `Raft` (node-to-node) and
//! `Admin` (shard map, status). The request layer validates input, routes to
//! the shard's Raft group and classifies errors; it never touches RocksDB
//! directly except through `storage` read methods, and never depends on the
//! client crate.

pub mod admin;
pub mod kv;
pub mod raft;

use std::sync::Arc;

use geokv_proto::admin::admin_server::AdminServer;
use geokv_proto::kv::kv_server::KvServer;
use geokv_proto::raft::raft_server::RaftServer;
use tonic::transport::server::Router;

use crate::node::Node;

/// All services of `node`, with message size and concurrency bounds.
pub fn router(node: Arc<Node>) -> Router {
    let max = geokv_proto::MAX_GRPC_MESSAGE_BYTES;
    let kv =
        KvServer::new(kv::KvService::new(node.clone())).max_decoding_message_size(max).max_encoding_message_size(max);
    let raft = RaftServer::new(raft::RaftService::new(node.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let admin = AdminServer::new(admin::AdminService::new(node.clone()));
    tonic::transport::Server::builder()
        .concurrency_limit_per_connection(node.config.limits.max_concurrent_requests)
        .tcp_nodelay(true)
        .add_service(kv)
        .add_service(raft)
        .add_service(admin)
}
