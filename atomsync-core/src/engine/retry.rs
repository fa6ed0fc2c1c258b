//! Failed requests: how they are classified and when to try again.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::protocol::{ErrorBody, ErrorCode};

/// Why a request got no usable answer, as the transport saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No answer: offline, connection refused or reset, timed out, lost.
    Unreachable,
    /// An HTTP error status without a readable [`ErrorBody`].
    Status(u16),
    /// The server's error body.
    Error(ErrorBody),
}

/// What a [`Failure`] means for the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FailureKind {
    /// Try again later, with backoff: offline, timeouts, 5xx, 408, 429.
    Temporary,
    /// The credentials were refused (401, 403): syncing halts until
    /// [`Engine::resume`](super::Engine::resume).
    Auth,
    /// The server refused the request (4xx other than auth): retrying the
    /// same request cannot help, so syncing halts until
    /// [`Engine::resume`](super::Engine::resume).
    Permanent,
    /// The pull cursor belongs to another database: resync from the beginning.
    CursorReset,
    /// The server decided one of the push's mutation numbers before for a
    /// change with other content (this client id numbered again after losing
    /// its state): the engine takes a new client id and pushes again at once.
    MutationReused,
    /// The request body was larger than the server takes (413): a push of
    /// several changes is split, a single change is refused alone and
    /// reported.
    TooLarge,
}

impl Failure {
    /// Classifies the failure.
    pub fn kind(&self) -> FailureKind {
        match self {
            Failure::Unreachable => FailureKind::Temporary,
            Failure::Status(status) => match status {
                401 | 403 => FailureKind::Auth,
                413 => FailureKind::TooLarge,
                408 | 425 | 429 => FailureKind::Temporary,
                400..=499 => FailureKind::Permanent,
                _ => FailureKind::Temporary,
            },
            Failure::Error(body) => match body.error {
                ErrorCode::CursorReset => FailureKind::CursorReset,
                ErrorCode::Unauthorized | ErrorCode::Forbidden => FailureKind::Auth,
                ErrorCode::BadRequest => FailureKind::Permanent,
                ErrorCode::TooLarge => FailureKind::TooLarge,
                ErrorCode::Internal | ErrorCode::Unavailable => FailureKind::Temporary,
                ErrorCode::MutationReused => FailureKind::MutationReused,
            },
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Unreachable => f.write_str("the server could not be reached"),
            Failure::Status(status) => write!(f, "the server answered with status {status}"),
            Failure::Error(body) => write!(f, "{:?}: {}", body.error, body.message),
        }
    }
}

/// Why syncing stopped until [`Engine::resume`](super::Engine::resume).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Halt {
    /// [`FailureKind::Auth`] or [`FailureKind::Permanent`].
    pub kind: FailureKind,
    /// What failed, for the app to show.
    pub message: String,
}

/// An exponential backoff schedule, computed as data.
///
/// After `n` consecutive temporary failures the next attempt waits
/// `min(max_ms, initial_ms * multiplier^(n-1))`, shortened by up to
/// `jitter` of itself using the caller's random number (so that many clients
/// do not retry in lockstep).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The wait after the first failure, in milliseconds. Default 500.
    pub initial_ms: u64,
    /// The longest wait, in milliseconds. Default 60 000.
    pub max_ms: u64,
    /// The growth factor per failure. Default 2.
    pub multiplier: u32,
    /// The largest fraction (0 to 1) of a wait that jitter takes off. Default 0.5.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial_ms: 500,
            max_ms: 60_000,
            multiplier: 2,
            jitter: 0.5,
        }
    }
}

impl Backoff {
    /// The wait in milliseconds after `failures` consecutive failures (0 for
    /// none), with `random` in `0.0..=1.0` choosing the jitter (0: the full
    /// wait; 1: the shortest).
    pub fn delay_ms(&self, failures: u32, random: f64) -> u64 {
        if failures == 0 {
            return 0;
        }
        let growth = u64::from(self.multiplier).saturating_pow(failures - 1);
        let full = self.initial_ms.saturating_mul(growth).min(self.max_ms);
        let clamp = |x: f64| if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) };
        let cut = (full as f64 * clamp(self.jitter) * clamp(random)) as u64;
        full - cut.min(full)
    }
}
