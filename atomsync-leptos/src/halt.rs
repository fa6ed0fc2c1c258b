//! [`SyncHalt`]: why a synced atom stopped syncing, and how it starts again.
//!
//! A request that retrying cannot fix halts the group's sync: the server
//! refused the credentials (401, 403) or the request itself (another 4xx,
//! such as 400). Temporary failures (offline, timeouts, 5xx) never halt:
//! they are retried with backoff. While halted, local reads and writes go on
//! working and are kept; [`AtomStatus::halted`](crate::AtomStatus::halted)
//! says why, and sync resumes:
//!
//! - [`HaltReason::WaitingForToken`] (a 401 while the token signal is
//!   `None`, before login): as soon as the token signal holds a token;
//! - [`HaltReason::Credentials`]: when the token signal changes, or the
//!   browser's `online` event fires;
//! - any halt: with [`SyncedAtom::resume`](crate::SyncedAtom::resume), from
//!   any tab, and at the next page load (halts are not stored: a refusal
//!   comes back only if the server still refuses).

use atomsync_core::engine::Failure;
use atomsync_core::protocol::ErrorCode;
use serde::{Deserialize, Serialize};

/// Why syncing is halted (see [`SyncHalt`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum HaltReason {
    /// The server wants credentials and the token signal is `None` (a 401
    /// before login). Sync resumes by itself once the signal holds a token.
    WaitingForToken,
    /// The server refused the token (401) or its access to the group (403).
    /// Sync resumes when the token signal changes, on the browser's `online`
    /// event, or with [`SyncedAtom::resume`](crate::SyncedAtom::resume).
    Credentials {
        /// The HTTP status (401 or 403).
        status: u16,
    },
    /// The server refused the request itself (a 4xx other than 401, 403,
    /// 408, 413, 425 and 429): sending it again cannot help until the app
    /// or the server changes. Sync resumes with
    /// [`SyncedAtom::resume`](crate::SyncedAtom::resume) or a new page load.
    Refused {
        /// The HTTP status.
        status: u16,
    },
}

/// Why and since when a synced atom's sync is halted; see
/// [`AtomStatus::halted`](crate::AtomStatus::halted).
///
/// A request that retrying cannot fix halts the group's sync: the server
/// refused the credentials (401, 403) or the request itself (another 4xx).
/// Temporary failures (offline, timeouts, 5xx) never halt; they are retried
/// with backoff. While halted, local reads and writes go on and are kept.
/// What resumes depends on the [`HaltReason`]; any halt ends with
/// [`SyncedAtom::resume`](crate::SyncedAtom::resume), from any tab, and at
/// the next page load (halts are not stored: a refusal comes back only if
/// the server still refuses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SyncHalt {
    /// Why.
    pub reason: HaltReason,
    /// What the server said, for the app to show.
    pub message: String,
    /// When the refusal came (Unix milliseconds).
    pub since: i64,
}

impl SyncHalt {
    /// The halt a refused request caused; `token_set`: the request carried
    /// a token.
    #[cfg_attr(
        not(all(target_arch = "wasm32", not(feature = "ssr"))),
        allow(dead_code) // made by the browser's sync loop
    )]
    pub(crate) fn from_failure(
        failure: &Failure,
        message: String,
        token_set: bool,
        since: i64,
    ) -> SyncHalt {
        let status = match failure {
            Failure::Status(status) => *status,
            Failure::Error(body) => match body.error {
                ErrorCode::Unauthorized => 401,
                ErrorCode::Forbidden => 403,
                ErrorCode::TooLarge => 413,
                ErrorCode::CursorReset | ErrorCode::MutationReused => 409,
                ErrorCode::Internal => 500,
                ErrorCode::Unavailable => 503,
                _ => 400,
            },
            Failure::Unreachable => 0,
        };
        let reason = match status {
            401 if !token_set => HaltReason::WaitingForToken,
            401 | 403 => HaltReason::Credentials { status },
            _ => HaltReason::Refused { status },
        };
        SyncHalt {
            reason,
            message,
            since,
        }
    }

    /// Whether the halt is about credentials (a new token may end it).
    pub fn is_credentials(&self) -> bool {
        matches!(
            self.reason,
            HaltReason::WaitingForToken | HaltReason::Credentials { .. }
        )
    }
}

/// What ends a halt (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    not(all(target_arch = "wasm32", not(feature = "ssr"))),
    allow(dead_code) // used by the browser's sync loop
)]
pub(crate) enum Resume {
    /// [`SyncedAtom::resume`](crate::SyncedAtom::resume): any halt, and
    /// the backoff is forgotten.
    All,
    /// The browser went online: credential halts, and the backoff.
    Online,
}

#[cfg(test)]
mod tests {
    use super::*;
    use atomsync_core::protocol::ErrorBody;

    #[test]
    fn refusals_map_to_reasons() {
        let halt = |failure: Failure, token: bool| {
            SyncHalt::from_failure(&failure, String::new(), token, 0).reason
        };
        let body = |error| {
            Failure::Error(ErrorBody {
                error,
                message: String::new(),
            })
        };
        assert_eq!(
            halt(Failure::Status(401), false),
            HaltReason::WaitingForToken
        );
        assert_eq!(
            halt(body(ErrorCode::Unauthorized), false),
            HaltReason::WaitingForToken
        );
        assert_eq!(
            halt(body(ErrorCode::Unauthorized), true),
            HaltReason::Credentials { status: 401 }
        );
        assert_eq!(
            halt(Failure::Status(403), false),
            HaltReason::Credentials { status: 403 }
        );
        assert_eq!(
            halt(body(ErrorCode::BadRequest), true),
            HaltReason::Refused { status: 400 }
        );
        assert_eq!(
            halt(Failure::Status(404), true),
            HaltReason::Refused { status: 404 }
        );
    }
}
