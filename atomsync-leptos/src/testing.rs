//! Fault injection for the crate's browser tests (feature
//! `fault-injection`, wasm32 only): never turn it on in an app.
//!
//! - [`fail_next_commits`]: the next IndexedDB transactions of the hook are
//!   aborted after their writes, as a quota error would abort them.
//! - [`pushed_keys`]: the keys of every change the hook has pushed, recorded
//!   before the request leaves.
//! - [`serve_with`]: the hook's requests are answered by an in-page
//!   [`FakeServer`] instead of the network.

use std::cell::{Cell, RefCell};

use atomsync_core::engine::Failure;
use atomsync_core::engine::testing::{FakeServer, SimServer};
use atomsync_core::protocol::{PullRequest, PullResponse, PushRequest, PushResponse};

thread_local! {
    static FAIL_COMMITS: Cell<u32> = const { Cell::new(0) };
    static PUSHED: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    static FAKE: RefCell<Option<FakeServer>> = const { RefCell::new(None) };
}

/// Answers the hook's pushes and pulls with `server` from now on (in this
/// page), whatever the atom's endpoint.
pub fn serve_with(server: FakeServer) {
    FAKE.with(|f| *f.borrow_mut() = Some(server));
}

/// Stops [`serve_with`]: requests go to the network again.
pub fn stop_serving() {
    FAKE.with(|f| *f.borrow_mut() = None);
}

/// Runs `f` on the fake server of [`serve_with`], if there is one.
pub fn with_fake_server<R>(f: impl FnOnce(&mut FakeServer) -> R) -> Option<R> {
    FAKE.with(|fake| fake.borrow_mut().as_mut().map(f))
}

/// The fake server's answer to a pull, if one serves.
pub(crate) fn fake_pull(request: &PullRequest) -> Option<Result<PullResponse, Failure>> {
    with_fake_server(|server| server.pull(request).map_err(Failure::Error))
}

/// The fake server's answer to a push, if one serves.
pub(crate) fn fake_push(request: &PushRequest) -> Option<Result<PushResponse, Failure>> {
    with_fake_server(|server| server.push(request).map_err(Failure::Error))
}

/// Makes the next `n` IndexedDB write transactions abort.
pub fn fail_next_commits(n: u32) {
    FAIL_COMMITS.with(|f| f.set(n));
}

/// Whether the write transaction being made must abort (and counts it).
pub(crate) fn take_commit_failure() -> bool {
    FAIL_COMMITS.with(|f| {
        let n = f.get();
        f.set(n.saturating_sub(1));
        n > 0
    })
}

/// The keys of every change pushed so far, in order.
pub fn pushed_keys() -> Vec<String> {
    PUSHED.with(|p| p.borrow().clone())
}

/// Records a push about to be sent.
pub(crate) fn record_push(request: &PushRequest) {
    PUSHED.with(|p| {
        p.borrow_mut()
            .extend(request.changes.iter().map(|c| c.key.clone()));
    });
}
