//! Fault injection for the crate's browser tests (feature
//! `fault-injection`, wasm32 only): never turn it on in an app.
//!
//! - [`fail_next_commits`]: the next IndexedDB transactions of the hook are
//!   aborted after their writes, as a quota error would abort them.
//! - [`pushed_keys`]: the keys of every change the hook has pushed, recorded
//!   before the request leaves.

use std::cell::{Cell, RefCell};

use atomsync_core::protocol::PushRequest;

thread_local! {
    static FAIL_COMMITS: Cell<u32> = const { Cell::new(0) };
    static PUSHED: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
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
