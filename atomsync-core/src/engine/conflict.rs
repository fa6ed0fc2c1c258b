//! What happens when the server refuses a stale write.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::sexpr::Raw;

/// A merge function: `(key, local, server) -> resolved`, where `None` stands
/// for a deleted (or never written) document.
pub type MergeFn = Arc<dyn Fn(&str, Option<&Raw>, Option<&Raw>) -> Option<Raw> + Send + Sync>;

/// How the engine resolves a write the server refused as a conflict.
///
/// Whatever the policy, every conflict whose local value differs from the
/// server's is reported as a [`Conflict`]: nothing is lost silently.
#[derive(Clone, Default)]
pub enum ConflictPolicy {
    /// The server's value replaces the local one (the default, as in the
    /// original Atomsync). The lost local value is in the report.
    #[default]
    ServerWins,
    /// The local value is written again on top of the server's version.
    ClientWins,
    /// The function's result is written on top of the server's version (or
    /// simply kept, if it equals the server's value).
    Merge(MergeFn),
}

impl ConflictPolicy {
    /// A [`ConflictPolicy::Merge`] with `merge`.
    pub fn merge(
        merge: impl Fn(&str, Option<&Raw>, Option<&Raw>) -> Option<Raw> + Send + Sync + 'static,
    ) -> Self {
        ConflictPolicy::Merge(Arc::new(merge))
    }
}

impl fmt::Debug for ConflictPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConflictPolicy::ServerWins => f.write_str("ServerWins"),
            ConflictPolicy::ClientWins => f.write_str("ClientWins"),
            ConflictPolicy::Merge(_) => f.write_str("Merge(..)"),
        }
    }
}

/// How a [`Conflict`] was resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Resolution {
    /// The server's value was kept; the local value was dropped.
    ServerWins,
    /// The local value is being written again on top of the server's.
    ClientWins,
    /// The merge function's result (`None`: deleted) is the document's value,
    /// written again unless it equals the server's.
    Merged(Option<Raw>),
}

/// What a [`Conflict`] report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ConflictCause {
    /// The server refused a local write: another write got there first.
    #[default]
    Write,
    /// After a cursor reset to another database (the server was restored,
    /// lost data, or was replaced), the server no longer has a document this
    /// client had: `local` is its last value, `server` is `None`. Under
    /// [`ConflictPolicy::ServerWins`] the document is gone locally too; under
    /// [`ConflictPolicy::ClientWins`] (or a merge that keeps a value) it is
    /// uploaded again as a new write.
    Reset,
    /// A local write larger than the server takes (413, alone in its push):
    /// it was dropped, the document shows the server's value again, and
    /// `local` is the refused value.
    TooLarge,
    /// A write forwarded by another tab (see [`Engine::write_based`](super::Engine::write_based))
    /// was made on a value that has changed since: `local` is the forwarded
    /// value, `server` the value this engine showed when it arrived (pending
    /// or confirmed), resolved by the policy as a refused write would be.
    Concurrent,
}

/// A report of a local write the server refused because another write got
/// there first, or of a document a reset removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    /// The report's number, increasing per engine.
    pub id: u64,
    /// The document's key.
    pub key: String,
    /// The local value that was refused (`None`: a delete).
    pub local: Option<Raw>,
    /// The server's value it collided with (`None`: deleted or never written).
    pub server: Option<Raw>,
    /// The server's version it collided with (0: never written).
    pub server_version: u64,
    /// What the engine did about it.
    pub resolution: Resolution,
    /// What the report is about (a refused write unless told otherwise).
    #[serde(default)]
    pub cause: ConflictCause,
}

impl Conflict {
    /// The value the document has locally after the resolution.
    pub fn resolved(&self) -> Option<&Raw> {
        match &self.resolution {
            Resolution::ServerWins => self.server.as_ref(),
            Resolution::ClientWins => self.local.as_ref(),
            Resolution::Merged(value) => value.as_ref(),
        }
    }
}
