//! Errors of the request path, classified for clients.
//!
//! Routing errors carry what the client needs to fix its cache (the leader
//! hint, the current shard descriptor) and travel as an encoded
//! `geokv.kv.ErrorDetail` in the gRPC status details, so clients never parse
//! messages. Each variant maps to one stable gRPC code.

use geokv_proto::kv::{self, ErrorDetail, error_detail};
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: not retryable, nothing was done.
    #[error("{0}")]
    InvalidArgument(String),
    /// This node does not lead the shard.
    #[error("node does not lead shard {shard}; leader is {}", leader_id.map_or("unknown".to_string(), |l| l.to_string()))]
    NotLeader { shard: u64, leader_id: Option<u64>, leader_addr: Option<String>, term: u64 },
    /// The client routed with a stale view of the shard map.
    #[error("stale shard routing: {reason}")]
    WrongShard { reason: String, current: Option<Box<kv::ShardInfo>>, map_version: u64 },
    /// The write was proposed but its fate is unknown: it may still commit.
    #[error("outcome unknown for shard {shard}: {cause}; retrying with the same session is safe")]
    Indeterminate { shard: u64, cause: String },
    /// Temporarily unable to serve (starting, no quorum, shutting down).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The exactly-once session no longer remembers this write's result.
    #[error("{0}")]
    SessionExpired(String),
    /// The request is well-formed but this shard cannot do it (e.g. a
    /// compare-and-swap on an eventual shard): not retryable.
    #[error("{0}")]
    NotSupported(String),
    /// No credentials, or credentials the node does not accept.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is known but may not do this; the message names the
    /// permission it lacks, never data.
    #[error("{0}")]
    PermissionDenied(String),
    /// The node serves as many client requests as it admits at once, or
    /// holds as many responses not yet taken as it may (`why` says which);
    /// nothing was done, retry after the hint.
    #[error("node {node}: {why}; nothing was done: retry after {retry_after_ms} ms")]
    Overloaded { node: u64, why: String, retry_after_ms: u64 },
    /// A bug or a storage failure.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Whether the same request may succeed if retried (possibly elsewhere).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::NotLeader { .. }
                | Error::WrongShard { .. }
                | Error::Indeterminate { .. }
                | Error::Unavailable(_)
                | Error::Overloaded { .. }
        )
    }

    /// The gRPC code this error is reported with.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotLeader { .. } | Error::WrongShard { .. } | Error::SessionExpired(_) | Error::NotSupported(_) => {
                Code::FailedPrecondition
            }
            Error::Indeterminate { .. } => Code::Unknown,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Overloaded { .. } => Code::ResourceExhausted,
            Error::Internal(_) => Code::Internal,
        }
    }

    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let message = e.to_string();
        let code = e.code();
        let with_detail = |kind: error_detail::Kind| {
            let detail = ErrorDetail { kind: Some(kind) };
            let details = geokv_proto::details::encode(code as i32, &message, &detail);
            Status::with_details(code, message.clone(), details.into())
        };
        match e {
            Error::NotLeader { shard, leader_id, leader_addr, term } => {
                with_detail(error_detail::Kind::NotLeader(kv::NotLeader {
                    shard_id: shard,
                    leader_id: leader_id.unwrap_or(0),
                    leader_addr: leader_addr.unwrap_or_default(),
                    term,
                }))
            }
            Error::WrongShard { current, map_version, .. } => {
                with_detail(error_detail::Kind::WrongShard(kv::WrongShard {
                    current: current.map(|c| *c),
                    map_version,
                }))
            }
            Error::Indeterminate { shard, .. } => {
                with_detail(error_detail::Kind::Indeterminate(kv::Indeterminate { shard_id: shard }))
            }
            Error::Overloaded { node, retry_after_ms, .. } => {
                with_detail(error_detail::Kind::Overloaded(kv::Overloaded { node_id: node, retry_after_ms }))
            }
            Error::InvalidArgument(_)
            | Error::Unavailable(_)
            | Error::SessionExpired(_)
            | Error::NotSupported(_)
            | Error::Unauthenticated(_)
            | Error::PermissionDenied(_)
            | Error::Internal(_) => Status::new(code, message),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Internal(e.to_string())
    }
}

impl From<crate::storage::StorageError> for Error {
    fn from(e: crate::storage::StorageError) -> Self {
        Error::Internal(e.to_string())
    }
}

/// A status's message followed by its transport error's causes (tonic
/// keeps the TLS or connection error as the status's source).
pub fn status_chain(status: &Status) -> String {
    let mut text = status.message().to_string();
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

/// Whether a connection failed because a TLS certificate was refused, by
/// this side (`invalid peer certificate`) or by the peer (an alert).
pub fn is_certificate_failure(cause: &str) -> bool {
    ["invalid peer certificate", "received fatal alert", "UnknownIssuer", "BadCertificate", "UnknownCA"]
        .iter()
        .any(|sign| cause.contains(sign))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_hints_survive_the_status() {
        let status: Status =
            Error::NotLeader { shard: 3, leader_id: Some(2), leader_addr: Some("h:1".into()), term: 7 }.into();
        assert_eq!(status.code(), Code::FailedPrecondition);
        let detail = geokv_proto::details::decode(status.details()).unwrap();
        match detail.kind {
            Some(error_detail::Kind::NotLeader(n)) => assert_eq!((n.shard_id, n.leader_id, n.term), (3, 2, 7)),
            other => panic!("unexpected detail {other:?}"),
        }
        let status: Status = Error::invalid("empty key").into();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.details().is_empty());
    }
}
