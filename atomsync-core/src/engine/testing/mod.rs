//! Test support for the engine (the `testing` feature): an in-memory model of
//! the server ([`FakeServer`]), a seeded random number generator
//! ([`SimRng`]), and a seeded fault simulation ([`simulate`], [`run_seeds`])
//! that drives many engines against any [`SimServer`].
//!
//! ## Usage
//!
//! ```
//! use atomsync_core::engine::testing::{FakeServer, SimConfig, simulate};
//!
//! let stats = simulate(7, FakeServer::new(), &SimConfig::default()).unwrap();
//! assert!(stats.writes > 0);
//! ```
//!
//! To run the simulation against another server, implement [`SimServer`] for
//! it and call [`run_seeds`] from a test.

mod fake;
mod rng;
mod sim;

pub use fake::FakeServer;
pub use rng::SimRng;
pub use sim::{Mutant, SimConfig, SimError, SimStats, run_seeds, simulate};

use crate::protocol::{ErrorBody, PullRequest, PullResponse, PushRequest, PushResponse};

/// A server the simulation can drive in-process, with no sockets and no
/// clock.
pub trait SimServer {
    /// Answers a pull.
    fn pull(&mut self, request: &PullRequest) -> Result<PullResponse, ErrorBody>;
    /// Answers a push.
    fn push(&mut self, request: &PushRequest) -> Result<PushResponse, ErrorBody>;
    /// Restarts the server: whatever it acknowledged must survive.
    fn restart(&mut self);
    /// Copies the database aside, as a backup would.
    fn checkpoint(&mut self);
    /// Restarts the server on the last [`SimServer::checkpoint`] (a restored
    /// backup; with a recent checkpoint, the loss of the last commits): the
    /// server must notice and give the database a new epoch.
    fn restore_checkpoint(&mut self);
    /// Purges every tombstone, as the tombstone horizon passing would.
    fn purge_tombstones(&mut self);
}
