//! Fault injection for the crate's browser tests (feature
//! `fault-injection`, wasm32 only): never turn it on in an app.
//!
//! - [`fail_next_commits`]: the next IndexedDB transactions of the hook are
//!   aborted after their writes, as a quota error would abort them.
//! - [`pushed_keys`]: the keys of every change the hook has pushed, recorded
//!   before the request leaves.
//! - [`serve_with`]: the hook's requests are answered by an in-page
//!   [`FakeServer`] instead of the network; [`require_token`],
//!   [`fail_next_requests`] and [`hang_next_requests`] make it refuse
//!   requests without the right token (401), fail, or never answer.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;

use atomsync_core::engine::Failure;
use atomsync_core::engine::testing::{FakeServer, SimServer};
use atomsync_core::protocol::{
    ErrorBody, ErrorCode, PullRequest, PullResponse, PushRequest, PushResponse,
};

thread_local! {
    static FAIL_COMMITS: Cell<u32> = const { Cell::new(0) };
    static PUSHED: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    static FAKE: RefCell<Option<FakeServer>> = const { RefCell::new(None) };
    static TOKEN: RefCell<Option<String>> = const { RefCell::new(None) };
    static FAILURES: RefCell<Vec<Failure>> = const { RefCell::new(Vec::new()) };
    static HANGS: Cell<u32> = const { Cell::new(0) };
}

/// Answers the hook's pushes and pulls with `server` from now on (in this
/// page), whatever the atom's endpoint.
pub fn serve_with(server: FakeServer) {
    FAKE.with(|f| *f.borrow_mut() = Some(server));
}

/// Stops [`serve_with`]: requests go to the network again, and the
/// request faults ([`require_token`], [`fail_next_requests`],
/// [`hang_next_requests`]) are cleared.
pub fn stop_serving() {
    FAKE.with(|f| *f.borrow_mut() = None);
    TOKEN.with(|t| *t.borrow_mut() = None);
    FAILURES.with(|f| f.borrow_mut().clear());
    HANGS.with(|h| h.set(0));
}

/// The fake server of [`serve_with`] answers 401 (`unauthorized`) to every
/// request that does not carry `Authorization: Bearer TOKEN` (`None`: it
/// takes any request).
pub fn require_token(token: Option<&str>) {
    TOKEN.with(|t| *t.borrow_mut() = token.map(str::to_owned));
}

/// The next requests of the fake server fail with these failures, in order.
pub fn fail_next_requests(failures: impl IntoIterator<Item = Failure>) {
    FAILURES.with(|f| {
        let mut queue = f.borrow_mut();
        let mut failures: Vec<Failure> = failures.into_iter().collect();
        failures.reverse();
        failures.append(&mut queue);
        *queue = failures;
    });
}

/// The next `n` requests of the fake server never get an answer (a server
/// that accepted the connection and hangs).
pub fn hang_next_requests(n: u32) {
    HANGS.with(|h| h.set(n));
}

/// A fake answer: ready, or never.
pub(crate) type FakeAnswer<T> = Pin<Box<dyn Future<Output = Result<T, Failure>>>>;

/// The injected fault for the next request of the fake server, if any.
fn fault<T: 'static>(token: Option<&str>) -> Option<FakeAnswer<T>> {
    let hang = HANGS.with(|h| {
        let n = h.get();
        h.set(n.saturating_sub(1));
        n > 0
    });
    if hang {
        return Some(Box::pin(futures::future::pending()));
    }
    if let Some(failure) = FAILURES.with(|f| f.borrow_mut().pop()) {
        return Some(Box::pin(futures::future::ready(Err(failure))));
    }
    let required = TOKEN.with(|t| t.borrow().clone());
    if required.is_some() && required.as_deref() != token {
        let refusal = Failure::Error(ErrorBody {
            error: ErrorCode::Unauthorized,
            message: "a valid bearer token is required".to_owned(),
        });
        return Some(Box::pin(futures::future::ready(Err(refusal))));
    }
    None
}

/// Runs `f` on the fake server of [`serve_with`], if there is one.
pub fn with_fake_server<R>(f: impl FnOnce(&mut FakeServer) -> R) -> Option<R> {
    FAKE.with(|fake| fake.borrow_mut().as_mut().map(f))
}

/// The fake server's answer to a pull carrying `token`, if one serves.
pub(crate) fn fake_pull(
    request: &PullRequest,
    token: Option<&str>,
) -> Option<FakeAnswer<PullResponse>> {
    FAKE.with(|f| f.borrow().is_some()).then_some(())?;
    fault(token).or_else(|| {
        let answer = with_fake_server(|server| server.pull(request).map_err(Failure::Error))?;
        Some(Box::pin(futures::future::ready(answer)))
    })
}

/// The fake server's answer to a push carrying `token`, if one serves.
pub(crate) fn fake_push(
    request: &PushRequest,
    token: Option<&str>,
) -> Option<FakeAnswer<PushResponse>> {
    FAKE.with(|f| f.borrow().is_some()).then_some(())?;
    fault(token).or_else(|| {
        let answer = with_fake_server(|server| server.push(request).map_err(Failure::Error))?;
        Some(Box::pin(futures::future::ready(answer)))
    })
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
