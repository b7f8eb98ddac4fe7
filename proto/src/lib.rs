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

/// What `ExportTrailer.sha256` covers, for one pair: the key's length (u64
/// little-endian), the key, the value's length, the value, the version.
/// The exporting node and the backup check it with the same function.
pub fn export_pair_digest_input(pair: &admin::ExportPair, mut update: impl FnMut(&[u8])) {
    update(&(pair.key.len() as u64).to_le_bytes());
    update(&pair.key);
    update(&(pair.value.len() as u64).to_le_bytes());
    update(&pair.value);
    update(&pair.version.to_le_bytes());
}

/// Error details in the gRPC richer error model (see `ErrorDetail` in
/// kv.proto): what a server sends and every client decodes.
pub mod details {
    use prost::Message;
    use tonic_types::pb::{ErrorInfo, RetryInfo, Status};

    use crate::kv::{ErrorDetail, error_detail::Kind};

    /// The `ErrorInfo.domain` of geokv's errors.
    pub const DOMAIN: &str = "geokv";
    /// The `Any.type_url` of geokv's own [`ErrorDetail`].
    pub const ERROR_DETAIL_TYPE_URL: &str = "type.googleapis.com/geokv.kv.ErrorDetail";
    const ERROR_INFO_TYPE_URL: &str = "type.googleapis.com/google.rpc.ErrorInfo";
    const RETRY_INFO_TYPE_URL: &str = "type.googleapis.com/google.rpc.RetryInfo";

    fn any(type_url: &str, message: &impl Message) -> prost_types::Any {
        prost_types::Any { type_url: type_url.into(), value: message.encode_to_vec() }
    }

    /// The standard `ErrorInfo` for `detail`: a reason and the hints as
    /// string metadata, readable by any gRPC client.
    pub fn error_info(detail: &ErrorDetail) -> Option<ErrorInfo> {
        let (reason, fields): (&str, Vec<(&str, String)>) = match detail.kind.as_ref()? {
            Kind::NotLeader(n) => (
                "NOT_LEADER",
                vec![
                    ("shard_id", n.shard_id.to_string()),
                    ("leader_id", n.leader_id.to_string()),
                    ("leader_addr", n.leader_addr.clone()),
                    ("term", n.term.to_string()),
                ],
            ),
            Kind::WrongShard(w) => (
                "WRONG_SHARD",
                vec![
                    ("shard_id", w.current.as_ref().map_or(0, |c| c.shard_id).to_string()),
                    ("map_version", w.map_version.to_string()),
                ],
            ),
            Kind::Indeterminate(i) => ("INDETERMINATE", vec![("shard_id", i.shard_id.to_string())]),
            Kind::Overloaded(o) => (
                "OVERLOADED",
                vec![("node_id", o.node_id.to_string()), ("retry_after_ms", o.retry_after_ms.to_string())],
            ),
        };
        Some(ErrorInfo {
            reason: reason.into(),
            domain: DOMAIN.into(),
            metadata: fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        })
    }

    /// The `grpc-status-details-bin` bytes for an error with `detail`.
    pub fn encode(code: i32, message: &str, detail: &ErrorDetail) -> Vec<u8> {
        let mut details = Vec::new();
        if let Some(info) = error_info(detail) {
            details.push(any(ERROR_INFO_TYPE_URL, &info));
        }
        if let Some(Kind::Overloaded(o)) = &detail.kind {
            let delay = prost_types::Duration {
                seconds: (o.retry_after_ms / 1000) as i64,
                nanos: ((o.retry_after_ms % 1000) * 1_000_000) as i32,
            };
            details.push(any(RETRY_INFO_TYPE_URL, &RetryInfo { retry_delay: Some(delay) }));
        }
        details.push(any(ERROR_DETAIL_TYPE_URL, detail));
        Status { code, message: message.into(), details }.encode_to_vec()
    }

    /// geokv's [`ErrorDetail`] in status details `bytes`, if there is one.
    pub fn decode(bytes: &[u8]) -> Option<ErrorDetail> {
        let status = Status::decode(bytes).ok()?;
        let any = status.details.iter().find(|a| a.type_url == ERROR_DETAIL_TYPE_URL)?;
        ErrorDetail::decode(&any.value[..]).ok()
    }

    /// The standard `ErrorInfo` in status details `bytes`, if there is one.
    pub fn decode_error_info(bytes: &[u8]) -> Option<ErrorInfo> {
        let status = Status::decode(bytes).ok()?;
        let any = status.details.iter().find(|a| a.type_url == ERROR_INFO_TYPE_URL)?;
        ErrorInfo::decode(&any.value[..]).ok()
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::kv::{NotLeader, Overloaded};

        /// A detail survives the round trip, and a generic client finds the
        /// standard ErrorInfo (and RetryInfo) beside it.
        #[test]
        fn details_carry_the_standard_messages_and_ours() {
            let detail = ErrorDetail {
                kind: Some(Kind::NotLeader(NotLeader {
                    shard_id: 3,
                    leader_id: 2,
                    leader_addr: "10.0.0.2:7001".into(),
                    term: 9,
                })),
            };
            let bytes = encode(9, "not the leader", &detail);
            assert_eq!(decode(&bytes), Some(detail));
            let info = decode_error_info(&bytes).unwrap();
            assert_eq!((info.reason.as_str(), info.domain.as_str()), ("NOT_LEADER", DOMAIN));
            assert_eq!(info.metadata["leader_addr"], "10.0.0.2:7001");
            let overloaded =
                ErrorDetail { kind: Some(Kind::Overloaded(Overloaded { node_id: 1, retry_after_ms: 1500 })) };
            let status = Status::decode(&encode(8, "busy", &overloaded)[..]).unwrap();
            let retry = status.details.iter().find(|a| a.type_url == RETRY_INFO_TYPE_URL).unwrap();
            let delay = RetryInfo::decode(&retry.value[..]).unwrap().retry_delay.unwrap();
            assert_eq!((delay.seconds, delay.nanos), (1, 500_000_000));
            assert_eq!(decode(b"not a status"), None);
        }
    }
}

/// The encoded `FileDescriptorSet` of every geokv proto, served by gRPC
/// server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/geokv_descriptor.bin"));

/// The largest gRPC message geokv sends or accepts, in bytes. Values are at
/// most 1 MiB by default and batches are bounded, so this only has to fit a
/// whole-shard snapshot message; see `docs/operations.md`.
pub const MAX_GRPC_MESSAGE_BYTES: usize = 256 * 1024 * 1024;
