//! The crate's one error enum. Every variant that comes from reading a
//! history names the line it happened on, so a user can open the file there.

use std::path::PathBuf;

/// Why a history could not be read, validated or turned into operations.
///
/// All of these mean "malformed input": the checker never answers PASS for a
/// history it could not read, it answers with one of these instead.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A history file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    /// A JSON Lines line is not a valid event (bad JSON, missing or unknown
    /// field, wrong type).
    #[error("line {line}: not a valid history event: {message}")]
    Json { line: usize, message: String },

    /// An EDN history is outside the subset we read, or is not EDN at all.
    #[error("line {line}, column {column}: {message}")]
    Edn { line: usize, column: usize, message: String },

    /// The events parse but do not form a well-formed history (a completion
    /// without an invoke, a process invoking twice concurrently, a retired
    /// process coming back, time running backwards...).
    #[error("line {line}: malformed history: {message}")]
    Malformed { line: usize, message: String },

    /// The history is well-formed, but an operation does not fit the model it
    /// is checked against (e.g. a CAS whose value is not `[expected, new]`).
    #[error("line {line}: {message}")]
    Model { line: usize, message: String },

    /// Writing a report failed.
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

impl Error {
    /// The 1-based line of the input the error is about, if it is about one.
    pub fn line(&self) -> Option<usize> {
        match self {
            Error::Json { line, .. }
            | Error::Edn { line, .. }
            | Error::Malformed { line, .. }
            | Error::Model { line, .. } => Some(*line),
            Error::Io { .. } | Error::Write { .. } => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
