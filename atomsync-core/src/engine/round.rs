//! [`SyncRound`]: what one sync round sends next and when it stops, as data,
//! so that every adapter (the native client, the browser hook, a test) syncs
//! the same way.
//!
//! A round pushes what is pending, then pulls at least once and as long as
//! the engine knows it is behind, and starts over (a few times at most) if
//! writes came in meanwhile. It goes on at once after the failures the
//! engine recovers from by itself (a cursor reset: pull from the beginning;
//! a reused mutation number: a new client id; a push too large: split, or
//! one change refused), and ends at any other failure, at a halt, or when
//! the backoff says to wait.
//!
//! The adapter's part is the IO and the persistence contract: every
//! [`Effects`] a round hands back is persisted (and published) before the
//! adapter asks the round for the next request.
//!
//! ```
//! use atomsync_core::engine::testing::{FakeServer, SimServer};
//! use atomsync_core::engine::{Engine, MemoryStorage, RoundEnd, Step, Storage, SyncRound};
//! use atomsync_core::engine::Failure;
//!
//! let mut server = FakeServer::new();
//! let mut storage = MemoryStorage::default();
//! let mut engine = Engine::new("todo", "device-1/todo")?;
//! storage.apply(&engine.set_value("milk", "Buy milk")?.batch)?;
//!
//! let mut round = SyncRound::new();
//! let end = loop {
//!     let effects = match round.next(&mut engine, 0) {
//!         Step::Push(request) => {
//!             let answer = server.push(&request).map_err(Failure::Error);
//!             round.on_push(&mut engine, &request, answer, 0, 0.5)
//!         }
//!         Step::Pull(request) => {
//!             let answer = server.pull(&request).map_err(Failure::Error);
//!             round.on_pull(&mut engine, &request, answer, 0, 0.5)
//!         }
//!         Step::Done(end) => break end,
//!     };
//!     storage.apply(&effects.batch)?; // before the next request
//! };
//! assert_eq!(end, RoundEnd::Synced);
//! assert_eq!(engine.pending_len(), 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use super::{Effects, Engine, Failure, FailureKind, Halt};
use crate::protocol::{PullRequest, PullResponse, PushRequest, PushResponse};

/// How many push-then-pull passes one round makes while writes keep coming.
pub const MAX_PASSES: u32 = 4;
/// How many times one round goes on at once after failures the engine
/// recovers from (cursor resets, reused numbers, pushes too large).
pub const MAX_RECOVERIES: u32 = 8;

/// What a round wants done next.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Send this push, then give its answer to [`SyncRound::on_push`].
    Push(PushRequest),
    /// Send this pull, then give its answer to [`SyncRound::on_pull`].
    Pull(PullRequest),
    /// The round is over.
    Done(RoundEnd),
}

/// Why a round ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RoundEnd {
    /// Nothing left to push, and the server has nothing newer.
    Synced,
    /// Writes kept coming for [`MAX_PASSES`] passes: sync again soon.
    Busy,
    /// A request failed; the engine backs off (see [`Engine::ready_at`]).
    Failed(Failure),
    /// The backoff after earlier failures has not passed yet: nothing sent
    /// before this time (the caller's clock, milliseconds).
    Waiting {
        /// When a request may be sent.
        until: u64,
    },
    /// Syncing is halted until [`Engine::resume`].
    Halted(Halt),
}

/// One sync round over an [`Engine`]: what it sends next and when it stops,
/// as data, so that every adapter (the native client, the browser hook, a
/// test) syncs the same way.
///
/// A round pushes what is pending, then pulls at least once and as long as
/// the engine knows it is behind, and starts over (a few times at most) if
/// writes came in meanwhile. It goes on at once after the failures the
/// engine recovers from by itself (a cursor reset, a reused mutation number,
/// a push too large), and ends at any other failure, at a halt, or when the
/// backoff says to wait.
#[derive(Debug, Clone, Default)]
pub struct SyncRound {
    pulling: bool,
    pulled: bool,
    /// The newest change the current pass pushes: later writes wait for the
    /// next pass, so a stream of writes cannot keep one pass pushing.
    pass_last: Option<u64>,
    passes: u32,
    recoveries: u32,
    failure: Option<Failure>,
}

impl SyncRound {
    /// A round that has sent nothing yet.
    pub fn new() -> Self {
        SyncRound::default()
    }

    /// What to send next, or why the round is over. Every [`Effects`] handed
    /// back so far must be persisted before this is called.
    pub fn next(&mut self, engine: &mut Engine, now_ms: u64) -> Step {
        if let Some(failure) = self.failure.take() {
            return Step::Done(RoundEnd::Failed(failure));
        }
        loop {
            if let Some(halt) = engine.status().halted {
                return Step::Done(RoundEnd::Halted(halt));
            }
            if let Some(until) = engine.ready_at().filter(|&at| at > now_ms) {
                return Step::Done(RoundEnd::Waiting { until });
            }
            if !self.pulling {
                let last = *self
                    .pass_last
                    .get_or_insert_with(|| engine.pending().last().map_or(0, |c| c.mutation));
                let oldest = engine.pending().next().map(|c| c.mutation);
                if oldest.is_some_and(|m| m <= last)
                    && let Some(request) = engine.next_push(now_ms)
                {
                    return Step::Push(request);
                }
                self.pulling = true;
            }
            if (!self.pulled || engine.wants_pull())
                && let Some(request) = engine.next_pull(now_ms)
            {
                self.pulled = true;
                return Step::Pull(request);
            }
            if !engine.wants_push() {
                return Step::Done(RoundEnd::Synced);
            }
            self.passes += 1;
            if self.passes >= MAX_PASSES {
                return Step::Done(RoundEnd::Busy);
            }
            // Writes came in while pulling: push them, then pull again.
            self.pulling = false;
            self.pulled = false;
            self.pass_last = None;
        }
    }

    /// Folds in the answer to `request` (a push this round handed out).
    pub fn on_push(
        &mut self,
        engine: &mut Engine,
        request: &PushRequest,
        answer: Result<PushResponse, Failure>,
        now_ms: u64,
        jitter: f64,
    ) -> Effects {
        match answer {
            Ok(response) => engine.on_push_response(request, response),
            Err(failure) => {
                let effects = engine.on_push_error(request, &failure, now_ms, jitter);
                let recovered = matches!(
                    failure.kind(),
                    FailureKind::MutationReused | FailureKind::TooLarge | FailureKind::CursorReset
                );
                self.settle(recovered, failure);
                effects
            }
        }
    }

    /// Folds in the answer to `request` (a pull this round handed out).
    pub fn on_pull(
        &mut self,
        engine: &mut Engine,
        request: &PullRequest,
        answer: Result<PullResponse, Failure>,
        now_ms: u64,
        jitter: f64,
    ) -> Effects {
        match answer {
            Ok(response) => engine.on_pull_response(request, response),
            Err(failure) => {
                let effects = engine.on_pull_error(request, &failure, now_ms, jitter);
                let reset = failure.kind() == FailureKind::CursorReset;
                if reset {
                    // The engine pulls from the beginning now.
                    self.pulled = false;
                }
                self.settle(reset, failure);
                effects
            }
        }
    }

    /// Goes on after a failure the engine recovered from, a few times; ends
    /// the round at any other.
    fn settle(&mut self, recovered: bool, failure: Failure) {
        if recovered && self.recoveries < MAX_RECOVERIES {
            self.recoveries += 1;
        } else {
            self.failure = Some(failure);
        }
    }
}
