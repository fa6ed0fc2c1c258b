//! The engine's error type.

use std::fmt;

/// Why the engine refused an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EngineError {
    /// The group name is not valid (see [`crate::protocol::validate_group`]).
    InvalidGroup(String),
    /// The client id is empty, too long or contains control characters.
    InvalidClientId(String),
    /// The key is not valid (see [`crate::protocol::validate_key`]).
    InvalidKey(String),
    /// A value could not be encoded or decoded.
    Codec(crate::sexpr::Error),
    /// A stored snapshot is inconsistent.
    CorruptSnapshot(String),
    /// The change would make a push larger than
    /// [`EngineOptions::max_push_bytes`](super::EngineOptions::max_push_bytes)
    /// on its own: the server could never take it.
    TooLarge {
        /// The document's key.
        key: String,
        /// The encoded change, in bytes.
        bytes: usize,
        /// The largest push, in bytes.
        limit: usize,
    },
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::InvalidGroup(message) => write!(f, "invalid group: {message}"),
            EngineError::InvalidClientId(message) => write!(f, "invalid client id: {message}"),
            EngineError::InvalidKey(message) => write!(f, "invalid key: {message}"),
            EngineError::Codec(error) => write!(f, "value codec: {error}"),
            EngineError::CorruptSnapshot(message) => write!(f, "corrupt snapshot: {message}"),
            EngineError::TooLarge { key, bytes, limit } => write!(
                f,
                "document {key:?} is too large to sync: {bytes} bytes, pushes take at most {limit}"
            ),
        }
    }
}

impl std::error::Error for EngineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EngineError::Codec(error) => Some(error),
            _ => None,
        }
    }
}

impl From<crate::sexpr::Error> for EngineError {
    fn from(error: crate::sexpr::Error) -> Self {
        EngineError::Codec(error)
    }
}
