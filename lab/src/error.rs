//! The lab's one error type.

use std::io;

/// What can go wrong starting or steering a lab.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration, a region file or a request makes no sense.
    #[error("{0}")]
    Config(String),
    /// A node, region or shard named by the caller does not exist.
    #[error("unknown {what}: {name}")]
    Unknown { what: &'static str, name: String },
    /// The operation is not possible in the current state (e.g. resume a
    /// node that is not paused).
    #[error("{0}")]
    State(String),
    /// A condition was not reached before its deadline.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Talking to a node failed.
    #[error("node {node}: {cause}")]
    Node { node: u64, cause: String },
    /// Process or socket trouble, with what was being done.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// The geokv client failed.
    #[error(transparent)]
    Client(#[from] geokv_client::Error),
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

/// The lab's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
