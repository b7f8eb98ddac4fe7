//! gRPC services of a node: `Kv` (client API), `Raft` (node-to-node) and
//! `Admin` (shard map, status), plus the standard `grpc.health.v1.Health`
//! (tonic-health; see [`report_health`]) and server reflection
//! (tonic-reflection, v1 and v1alpha, so grpcurl and other generic tools
//! find the services). The request layer validates input, routes to
//! the shard's Raft group and classifies errors; it never touches RocksDB
//! directly except through `storage` read methods, and never depends on the
//! client crate.

pub mod admin;
pub mod export;
pub mod kv;
pub mod raft;

use std::sync::Arc;

use geokv_proto::admin::admin_server::AdminServer;
use geokv_proto::kv::kv_server::KvServer;
use geokv_proto::raft::raft_server::RaftServer;
use tonic::transport::server::Router;
use tower::layer::util::{Identity, Stack};

use crate::node::Node;

/// All services of `node`, with message size and concurrency bounds.
pub fn router(
    node: Arc<Node>,
) -> Router<Stack<crate::admission::ResponseHoldLayer, Stack<crate::auth::AuthLayer, Identity>>> {
    let max = geokv_proto::MAX_GRPC_MESSAGE_BYTES;
    let kv =
        KvServer::new(kv::KvService::new(node.clone())).max_decoding_message_size(max).max_encoding_message_size(max);
    let raft = RaftServer::new(raft::RaftService::new(node.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let admin = AdminServer::new(admin::AdminService::new(node.clone()));
    let (reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(report_health(node.clone(), reporter));
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(geokv_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().expect("geokv's descriptors are valid");
    let reflection_v1alpha = reflection().build_v1alpha().expect("geokv's descriptors are valid");
    tonic::transport::Server::builder()
        .concurrency_limit_per_connection(node.config.limits.max_concurrent_requests)
        .tcp_nodelay(true)
        .layer(crate::auth::AuthLayer::new(Arc::new(NodeAuth(node.clone()))))
        .layer(crate::admission::ResponseHoldLayer)
        .add_service(kv)
        .add_service(raft)
        .add_service(admin)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
}

/// What [`crate::auth::AuthLayer`] reads of the node.
struct NodeAuth(Arc<Node>);

impl crate::auth::AuthSource for NodeAuth {
    fn auth_enabled(&self) -> bool {
        self.0.config.tls.auth_enabled()
    }

    fn current_map(&self) -> Arc<crate::shards::ShardMap> {
        self.0.shard_map()
    }
}

/// How often the health service's status is brought up to date.
const HEALTH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// Keeps the `grpc.health.v1` status of the server (`""`) and of the
/// client-facing services (`geokv.kv.Kv`, `geokv.admin.Admin`) at `SERVING`
/// while [`Node::readiness`] holds and `NOT_SERVING` otherwise (the reason
/// is logged on each change and served by `/readyz`). `geokv.raft.Raft`
/// always serves: peers must reach a node that is catching up.
async fn report_health(node: Arc<Node>, reporter: tonic_health::server::HealthReporter) {
    use tonic_health::ServingStatus;
    reporter.set_service_status("geokv.raft.Raft", ServingStatus::Serving).await;
    let mut last: Option<Result<(), String>> = None;
    loop {
        let now = node.readiness().await;
        if last.as_ref() != Some(&now) {
            let status = if now.is_ok() { ServingStatus::Serving } else { ServingStatus::NotServing };
            for service in ["", "geokv.kv.Kv", "geokv.admin.Admin"] {
                reporter.set_service_status(service, status).await;
            }
            match &now {
                Ok(()) => tracing::info!("health: SERVING"),
                Err(why) => tracing::info!(%why, "health: NOT_SERVING"),
            }
            last = Some(now);
        }
        tokio::time::sleep(HEALTH_INTERVAL).await;
    }
}
