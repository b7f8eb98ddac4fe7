//! The client's one error type, and the classification of gRPC statuses into
//! what the retry loop should do about them.
//!
//! Two layers:
//!
//! - [`Error`] is what callers see. Each variant says whether the operation
//!   took effect (`Unavailable`: a read failed, or a write was definitely not
//!   applied), might have (`Indeterminate`), or was refused for good
//!   (`InvalidArgument`, `Server`, `Protocol`, `Config`).
//! - [`Failure`] is what one *attempt* learned from one status. The retry loop
//!   in [`crate::client`] turns a sequence of failures into at most one
//!   [`Error`]. The important bit is [`Failure::may_have_applied`]: once any
//!   attempt of a write may have reached a server, the write can only end as a
//!   success or as [`Error::Indeterminate`], never as a definite failure.

use geokv_proto::kv::{ErrorDetail, ShardInfo, error_detail};
use tonic::{Code, Status};

/// Everything that can go wrong in a geokv client call.
///
/// The `Display` text is one line that ends with what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request is malformed (empty key, value too large, inverted scan
    /// range, batch spanning shards, ...). Retrying the same request cannot
    /// succeed.
    #[error("invalid argument: {0}; fix the request, retrying it will not help")]
    InvalidArgument(String),

    /// A write may or may not have been applied: some attempt reached a
    /// server (or may have), and no attempt came back with an answer. The
    /// write is applied at most once, but whether it was is unknown.
    #[error(
        "outcome unknown: the write to shard {shard_id} may or may not have been applied ({cause}); read the key back before deciding to write again"
    )]
    Indeterminate {
        /// The shard the write was routed to.
        shard_id: u64,
        /// The last thing that went wrong.
        cause: String,
    },

    /// Retries were exhausted (attempt limit or deadline) without an answer.
    /// For a write this means no attempt can have been applied.
    #[error(
        "unavailable after {attempts} attempt(s): {cause}; check that the cluster is running and reachable, then retry"
    )]
    Unavailable {
        /// How many RPCs were tried.
        attempts: u32,
        /// The last thing that went wrong.
        cause: String,
    },

    /// The cluster does not know the caller (`Unauthenticated`: no, a wrong
    /// or a revoked credential) or does not allow it this
    /// (`PermissionDenied`; the message names the missing permission).
    /// Nothing was done.
    #[error("not allowed ({code:?}): {message}")]
    Denied {
        /// `Unauthenticated` or `PermissionDenied`.
        code: Code,
        /// The server's message.
        message: String,
    },

    /// The server refused the request with a status this client does not
    /// retry (e.g. `Unimplemented`, or `ResourceExhausted` without an overload hint).
    #[error("server refused the request ({code:?}): {message}; check the server logs")]
    Server {
        /// The gRPC status code.
        code: Code,
        /// The server's message.
        message: String,
    },

    /// A compare-and-swap or batch on a key of an eventual shard, refused by
    /// the server (eventual shards accept only puts and deletes, which last
    /// writer wins settles: there is no single current value to compare
    /// against). Nothing was applied; retrying cannot succeed.
    #[error(
        "{operation} is not available on shard {shard_id}, an eventual (last-writer-wins) shard ({message}); use put and delete for its keys, or keep keys that need compare-and-swap or batches in a Raft shard"
    )]
    EventualShard {
        shard_id: u64,
        /// "compare-and-swap" or "batch".
        operation: &'static str,
        /// The server's message.
        message: String,
    },

    /// The cluster's current state does not allow the request (e.g. creating
    /// a shard over a range that already holds keys, or before the shard map
    /// is bootstrapped). Nothing was changed; the same request can succeed
    /// only once that state changes. Returned by admin operations
    /// ([`Client::create_shard`](crate::Client::create_shard)).
    #[error("refused: {0}; change what the message names first, retrying as is will not help")]
    FailedPrecondition(String),

    /// An admin request named a shard (or node) the cluster does not have.
    /// Nothing was changed.
    #[error("not found: {0}; check the id with `kvctl shards` (shards) or `kvctl node list` (nodes)")]
    NotFound(String),

    /// The server answered something that breaks the protocol (e.g. a scan
    /// page that goes backwards, an unordered shard map).
    #[error("protocol violation: {0}; client and server versions may not match, report this")]
    Protocol(String),

    /// The client configuration is unusable (no endpoints, a zero limit, an
    /// address that is not `host:port`).
    #[error("invalid client configuration: {0}")]
    Config(String),
}

impl Error {
    /// Whether trying the same operation again later may succeed, and doing so
    /// is safe.
    ///
    /// True only for [`Error::Unavailable`]. [`Error::Indeterminate`] is
    /// deliberately *not* retryable: re-issuing the write is a new write, so
    /// read the key first (or use a compare-and-swap) to learn what happened.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }

    /// Whether this is a write whose outcome is unknown.
    pub fn is_indeterminate(&self) -> bool {
        matches!(self, Error::Indeterminate { .. })
    }
}

/// What one failed attempt means for the retry loop.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Failure {
    /// The node is not the shard leader; `leader_id == 0` means it does not
    /// know who is. Definitely not applied.
    NotLeader { shard_id: u64, leader_id: u64, leader_addr: String, term: u64 },
    /// The client's shard map is stale. Definitely not applied.
    /// (Boxed: a shard is large, and failures are passed around by value.)
    WrongShard { current: Option<Box<ShardInfo>>, map_version: u64 },
    /// The server proposed the write but cannot tell whether it committed.
    /// Retrying with the same session is safe.
    Indeterminate { shard_id: u64, message: String },
    /// The server no longer remembers the result of this session sequence:
    /// the outcome is unknown and retrying cannot learn it.
    SessionForgotten(String),
    /// Bad input; final.
    InvalidArgument(String),
    /// The connection could not be established: the request was never sent.
    NotSent(String),
    /// The server itself answered `Unavailable` (starting, no quorum for a
    /// read, shutting down). geokv nodes answer so only before proposing
    /// anything, so nothing was applied. Retry elsewhere.
    Declined(String),
    /// `Unavailable` made up by the transport after the request may have been
    /// sent (the connection broke). Retry elsewhere.
    Unavailable(String),
    /// Timeout, cancellation, unknown or internal error: the request may
    /// have been processed. Retry (writes with the same session).
    MaybeProcessed(String),
    /// The node admits no more requests at once (`RESOURCE_EXHAUSTED` with
    /// a retry hint). Nothing was done: retry on the same node after the
    /// hint.
    Overloaded { retry_after_ms: u64, message: String },
    /// Any other status: final.
    Rejected { code: Code, message: String },
    /// The client could not route the request (no shard covers the key, or
    /// the shard map could not be refreshed). Nothing was sent.
    NoRoute(String),
}

impl Failure {
    /// Whether the attempt may have caused a write to be applied.
    pub(crate) fn may_have_applied(&self) -> bool {
        match self {
            Failure::Indeterminate { .. }
            | Failure::SessionForgotten(_)
            | Failure::Unavailable(_)
            | Failure::MaybeProcessed(_) => true,
            Failure::NotLeader { .. }
            | Failure::WrongShard { .. }
            | Failure::InvalidArgument(_)
            | Failure::NotSent(_)
            | Failure::Declined(_)
            | Failure::Overloaded { .. }
            | Failure::Rejected { .. }
            | Failure::NoRoute(_) => false,
        }
    }

    /// A short description for logs and error causes.
    pub(crate) fn describe(&self) -> String {
        match self {
            Failure::NotLeader { shard_id, leader_id: 0, term, .. } => {
                format!("shard {shard_id} has no known leader (term {term})")
            }
            Failure::NotLeader { shard_id, leader_id, leader_addr, term } => {
                format!("not the leader of shard {shard_id}; leader is node {leader_id} at {leader_addr} (term {term})")
            }
            Failure::WrongShard { current, map_version } => match current {
                Some(shard) => format!(
                    "stale shard map: key now belongs to shard {} epoch {} (map version {map_version})",
                    shard.shard_id, shard.epoch
                ),
                None => format!("stale shard map: no shard covers the key (map version {map_version})"),
            },
            Failure::Indeterminate { shard_id, message } => {
                format!("shard {shard_id} could not tell whether the write committed: {message}")
            }
            Failure::SessionForgotten(message) => {
                format!("server forgot the result of this write: {message}")
            }
            Failure::InvalidArgument(message) => message.clone(),
            Failure::NotSent(message) => format!("could not connect: {message}"),
            Failure::Declined(message) | Failure::Unavailable(message) => format!("unavailable: {message}"),
            Failure::MaybeProcessed(message) => message.clone(),
            Failure::Overloaded { message, .. } => format!("overloaded: {message}"),
            Failure::Rejected { code, message } => format!("{code:?}: {message}"),
            Failure::NoRoute(message) => message.clone(),
        }
    }
}

/// Classifies a status returned by a geokv node (or by tonic on its behalf).
///
/// Structured details win over the code: a decodable `ErrorDetail` decides the
/// class whatever code it came with.
impl Error {
    /// The error for a status the client does not retry.
    pub(crate) fn refused(code: Code, message: String) -> Error {
        match code {
            Code::Unauthenticated | Code::PermissionDenied => Error::Denied { code, message },
            code => Error::Server { code, message },
        }
    }
}

pub(crate) fn classify(status: &Status) -> Failure {
    let message = with_root_cause(status);
    if !status.details().is_empty() {
        match geokv_proto::details::decode(status.details()) {
            Some(ErrorDetail { kind: Some(kind) }) => return classify_detail(kind, message),
            Some(ErrorDetail { kind: None }) => {}
            None => tracing::warn!(code = ?status.code(), %message, "error details without geokv's ErrorDetail"),
        }
    }
    match status.code() {
        Code::InvalidArgument => Failure::InvalidArgument(message),
        Code::FailedPrecondition if message.starts_with("session") => Failure::SessionForgotten(message),
        Code::Unavailable if was_connecting(status) => Failure::NotSent(message),
        // No transport error behind it: the node itself said so.
        Code::Unavailable if std::error::Error::source(status).is_none() => Failure::Declined(message),
        Code::Unavailable => Failure::Unavailable(message),
        Code::Unknown | Code::Internal | Code::Cancelled | Code::DeadlineExceeded | Code::Aborted | Code::DataLoss => {
            Failure::MaybeProcessed(format!("{:?}: {message}", status.code()))
        }
        code => Failure::Rejected { code, message },
    }
}

fn classify_detail(kind: error_detail::Kind, message: String) -> Failure {
    match kind {
        error_detail::Kind::NotLeader(not_leader) => Failure::NotLeader {
            shard_id: not_leader.shard_id,
            leader_id: not_leader.leader_id,
            leader_addr: not_leader.leader_addr,
            term: not_leader.term,
        },
        error_detail::Kind::WrongShard(wrong_shard) => {
            Failure::WrongShard { current: wrong_shard.current.map(Box::new), map_version: wrong_shard.map_version }
        }
        error_detail::Kind::Indeterminate(indeterminate) => {
            Failure::Indeterminate { shard_id: indeterminate.shard_id, message }
        }
        error_detail::Kind::Overloaded(overloaded) => {
            Failure::Overloaded { retry_after_ms: overloaded.retry_after_ms, message }
        }
    }
}

/// The status message, followed by the innermost error that caused it when
/// tonic made the status up from a transport error ("tcp connect error" says
/// less than "Connection refused").
fn with_root_cause(status: &Status) -> String {
    let message = status.message();
    let mut root = None;
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        root = Some(err);
        source = err.source();
    }
    match root.map(ToString::to_string) {
        Some(root) if !message.contains(&root) => format!("{message}: {root}"),
        _ => message.to_string(),
    }
}

/// Whether tonic produced this status because it could not open a connection
/// (refused, unreachable, connect timeout): then the request was never sent.
fn was_connecting(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if err.is::<tonic::ConnectError>() {
            return true;
        }
        source = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use geokv_proto::kv::{Indeterminate, NotLeader, WrongShard};

    fn with_detail(code: Code, kind: error_detail::Kind) -> Status {
        let detail = ErrorDetail { kind: Some(kind) };
        Status::with_details(code, "refused", geokv_proto::details::encode(code as i32, "refused", &detail).into())
    }

    #[test]
    fn not_leader_detail_carries_the_hint() {
        let status = with_detail(
            Code::FailedPrecondition,
            error_detail::Kind::NotLeader(NotLeader {
                shard_id: 3,
                leader_id: 2,
                leader_addr: "127.0.0.1:7002".into(),
                term: 7,
            }),
        );
        let failure = classify(&status);
        assert_eq!(
            failure,
            Failure::NotLeader { shard_id: 3, leader_id: 2, leader_addr: "127.0.0.1:7002".into(), term: 7 }
        );
        assert!(!failure.may_have_applied());
    }

    #[test]
    fn wrong_shard_detail_carries_the_current_shard() {
        let shard = ShardInfo {
            shard_id: 4,
            epoch: 2,
            start: b"m".to_vec(),
            end: vec![],
            replicas: vec![],
            ..Default::default()
        };
        let status = with_detail(
            Code::FailedPrecondition,
            error_detail::Kind::WrongShard(WrongShard { current: Some(shard.clone()), map_version: 12 }),
        );
        let failure = classify(&status);
        assert_eq!(failure, Failure::WrongShard { current: Some(Box::new(shard)), map_version: 12 });
        assert!(!failure.may_have_applied());
    }

    #[test]
    fn indeterminate_detail_may_have_applied() {
        let status = with_detail(Code::Unknown, error_detail::Kind::Indeterminate(Indeterminate { shard_id: 5 }));
        let failure = classify(&status);
        assert!(matches!(failure, Failure::Indeterminate { shard_id: 5, .. }));
        assert!(failure.may_have_applied());
    }

    #[test]
    fn an_overloaded_node_did_nothing_and_says_when_to_retry() {
        let overloaded = geokv_proto::kv::Overloaded { node_id: 2, retry_after_ms: 20 };
        let status = with_detail(Code::ResourceExhausted, error_detail::Kind::Overloaded(overloaded));
        let failure = classify(&status);
        assert!(matches!(failure, Failure::Overloaded { retry_after_ms: 20, .. }), "{failure:?}");
        assert!(!failure.may_have_applied());
        // Without the detail (another server), RESOURCE_EXHAUSTED stays final.
        let bare = classify(&Status::resource_exhausted("busy"));
        assert!(matches!(bare, Failure::Rejected { code: Code::ResourceExhausted, .. }), "{bare:?}");
    }

    #[test]
    fn details_win_over_the_code() {
        let status = with_detail(
            Code::Unavailable,
            error_detail::Kind::NotLeader(NotLeader { shard_id: 1, ..Default::default() }),
        );
        assert!(matches!(classify(&status), Failure::NotLeader { leader_id: 0, .. }));
    }

    #[test]
    fn undecodable_details_fall_back_to_the_code() {
        let status = Status::with_details(Code::InvalidArgument, "empty key", vec![0xff, 0xff].into());
        assert_eq!(classify(&status), Failure::InvalidArgument("empty key".into()));
    }

    #[test]
    fn codes_without_details() {
        let cases = [
            (Code::InvalidArgument, "empty key", false),
            (Code::FailedPrecondition, "session 9 is below first_incomplete 12", true),
            // The node said so itself: it declines before proposing anything.
            (Code::Unavailable, "node is starting", false),
            (Code::Unknown, "boom", true),
            (Code::Internal, "boom", true),
            (Code::DeadlineExceeded, "slow", true),
            (Code::Cancelled, "gone", true),
            (Code::Unimplemented, "no such method", false),
            (Code::FailedPrecondition, "something else", false),
        ];
        for (code, message, may_have_applied) in cases {
            let failure = classify(&Status::new(code, message));
            assert_eq!(failure.may_have_applied(), may_have_applied, "{code:?} {message:?} -> {failure:?}");
        }
        assert!(matches!(
            classify(&Status::new(Code::FailedPrecondition, "session expired")),
            Failure::SessionForgotten(_)
        ));
        assert!(matches!(
            classify(&Status::new(Code::Unimplemented, "x")),
            Failure::Rejected { code: Code::Unimplemented, .. }
        ));
    }

    #[test]
    fn only_unavailable_is_retryable() {
        let unavailable = Error::Unavailable { attempts: 3, cause: "refused".into() };
        let indeterminate = Error::Indeterminate { shard_id: 1, cause: "timeout".into() };
        assert!(unavailable.is_retryable());
        assert!(!indeterminate.is_retryable());
        assert!(indeterminate.is_indeterminate());
        assert!(!Error::InvalidArgument("empty key".into()).is_retryable());
    }

    #[test]
    fn display_is_one_line_and_says_what_to_do() {
        let errors = [
            Error::InvalidArgument("key must not be empty".into()),
            Error::Indeterminate { shard_id: 1, cause: "timeout".into() },
            Error::Unavailable { attempts: 10, cause: "refused".into() },
            Error::Protocol("scan went backwards".into()),
        ];
        for err in errors {
            let text = err.to_string();
            assert!(!text.contains('\n'), "{text}");
            assert!(text.contains(';') || text.contains(':'), "{text}");
        }
    }

    /// A lazily connected channel to a port nobody listens on fails while
    /// connecting; that must classify as "not sent".
    #[tokio::test]
    async fn connect_refused_is_not_sent() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
        let mut admin = geokv_proto::admin::admin_client::AdminClient::new(channel);
        let status = admin.get_shard_map(geokv_proto::admin::GetShardMapRequest {}).await.unwrap_err();
        let failure = classify(&status);
        assert!(matches!(failure, Failure::NotSent(_)), "{failure:?} from {status:?}");
        assert!(!failure.may_have_applied());
        assert!(failure.describe().to_lowercase().contains("refused"), "{}", failure.describe());
    }
}
