//! The browser side of a synced atom (wasm32 only): loading IndexedDB and
//! the push/pull loop.

use std::rc::{Rc, Weak};

use atomsync_core::engine::{Engine, EngineOptions, Failure, Step, SyncRound};
use atomsync_core::protocol::{PullRequest, PullResponse, PushRequest, PushResponse};
use futures::StreamExt;
use futures::channel::mpsc::UnboundedReceiver;
use leptos::prelude::*;

use crate::browser::{now_ms, random, random_id, sleep};
use crate::halt::{Resume, SyncHalt};
use crate::idb_store::LocalDb;
use crate::options::{Endpoint, server_routes};
use crate::transport;
use crate::use_synced_atom::Shared;

/// Opens IndexedDB, restores the group's engine (or makes a new one) and
/// installs it. Without IndexedDB the atom works in memory and says so.
pub(crate) async fn load(app: &str, shared: &Rc<Shared>) {
    let options = EngineOptions::default().policy(shared.options.policy.clone());
    let mut restored = None;
    match LocalDb::open(app).await {
        Ok(db) => {
            let db = Rc::new(db);
            match db.load(&shared.group).await {
                Ok((snapshot, problems)) => {
                    for problem in problems {
                        shared.report_error(problem);
                    }
                    if let Some(snapshot) = snapshot {
                        match Engine::restore(snapshot) {
                            Ok(engine) => restored = Some(engine),
                            Err(e) => shared.report_error(format!("stored state unusable: {e}")),
                        }
                    }
                    *shared.db.borrow_mut() = Some(db);
                    shared.set_persistent(true);
                }
                Err(e) => shared.report_error(format!(
                    "IndexedDB could not be read ({e}); working in memory only"
                )),
            }
        }
        Err(e) => shared.report_error(format!(
            "IndexedDB is unavailable ({e}); working in memory only"
        )),
    }
    let engine = match restored {
        Some(engine) => engine,
        None => match Engine::new(shared.group.clone(), format!("{app}-{}", random_id(12))) {
            Ok(engine) => engine,
            Err(e) => {
                shared.report_error(e.to_string());
                return;
            }
        },
    };
    shared.install(engine.with_options(options));
}

/// Pushes pending writes and pulls changes (and applies what follower tabs
/// put in the outbox) until the atom is disposed or this tab stops leading:
/// right away after a write or a poke, every poll interval otherwise,
/// backing off after failures. Returns `true` when this tab stepped down
/// (see [`crate::tabs`]), `false` when the atom is gone.
pub(crate) async fn run(shared: Weak<Shared>, wakes: &mut UnboundedReceiver<()>) -> bool {
    // A server URL that names a route: said once, and nothing is sent.
    let mut misconfigured = false;
    if let Some(shared) = shared.upgrade()
        && let Endpoint::Url(base) = &shared.endpoint
        && let Err(message) = server_routes(base)
    {
        shared.report_config_error(message);
        misconfigured = true;
    }
    // Dropped (and closed) when the loop ends.
    let mut events = match shared.upgrade() {
        Some(shared) if !misconfigured => Events::open(&shared),
        _ => None,
    };
    let mut events_opened = now_ms();
    // The browser's `online` event resumes a credentials halt and forgets
    // the backoff (removed when the loop ends).
    let _online = shared
        .upgrade()
        .and_then(|shared| OnlineListener::add(&shared));
    loop {
        let wait = {
            let Some(shared) = shared.upgrade() else {
                return false;
            };
            if !shared.leads_now() {
                shared.step_down();
                return true;
            }
            // Follower tabs' writes first: they are pushed in this round.
            shared.writer.idle().await;
            shared.drain_outbox().await;
            // No engine: a failed IndexedDB write is being undone; the
            // restored engine wakes the loop.
            let syncs = shared.endpoint != Endpoint::None && !misconfigured;
            if syncs && shared.engine.borrow().is_some() {
                step(&shared).await;
            }
            let now = now_ms();
            // `EventSource` reconnects by itself after a network error, but
            // gives up for good on an HTTP error: a 503 beyond the server's
            // cap on event streams, a 5xx while it restarts. Open it again
            // (at most every EVENTS_RETRY_MS); polling went on meanwhile.
            if syncs
                && events.as_ref().is_some_and(Events::closed)
                && now.saturating_sub(events_opened) >= EVENTS_RETRY_MS
            {
                events = Events::open(&shared);
                events_opened = now;
            }
            let poll = u64::from(shared.options.poll_interval_ms);
            // Back off after failures; otherwise poll. A lease is renewed
            // every LEASE_RENEW_MS: check it as often.
            let ready_at = shared.engine.borrow().as_ref().and_then(Engine::ready_at);
            let wait = match ready_at {
                Some(at) if at > now && syncs => at - now,
                _ => poll,
            };
            if shared.lease_mode.get() {
                wait.min(u64::from(crate::tabs::LEASE_RENEW_MS))
            } else {
                wait
            }
        };
        let timer = Box::pin(sleep(wait.min(u64::from(u32::MAX)) as u32));
        if let futures::future::Either::Right((None, _)) =
            futures::future::select(timer, wakes.next()).await
        {
            return false;
        }
        // Coalesce a burst of writes into one push.
        while let Ok(()) = wakes.try_recv() {}
    }
}

/// One [`SyncRound`] (the same round logic as the native client's): each
/// request the round asks for is sent, its answer folded in through the
/// round, and the resulting batch persisted before the next request.
async fn step(shared: &Rc<Shared>) {
    shared.resume_on_new_token();
    // A token signal already disposed: the component that gave it is gone,
    // and the atom with it (its loop ends at the next wake).
    let Some(token) = shared.options.token.try_get_untracked() else {
        return;
    };
    let timeout_ms = shared.options.request_timeout_ms;
    shared.set_syncing(true);
    let mut round = SyncRound::new();
    let failures = shared.writer.failures();
    loop {
        // Nothing is sent before every batch so far is in IndexedDB; a
        // failed one put the engine back, and the round is over.
        shared.writer.idle().await;
        if shared.writer.failures() != failures || !shared.leads_now() {
            break;
        }
        let step = {
            let mut engine = shared.engine.borrow_mut();
            let Some(engine) = engine.as_mut() else { break };
            round.next(engine, now_ms())
        };
        let (what, answer) = match step {
            Step::Push(request) => {
                let sent = transport::push(&shared.endpoint, token.clone(), request.clone());
                let answer = within(timeout_ms, sent).await;
                ("push", Answer::Push(request, answer))
            }
            Step::Pull(request) => {
                let sent = transport::pull(&shared.endpoint, token.clone(), request.clone());
                let answer = within(timeout_ms, sent).await;
                ("pull", Answer::Pull(request, answer))
            }
            Step::Done(_) => break,
        };
        settle(shared, what, &token, &mut round, answer).await;
    }
    shared.set_syncing(false);
}

/// A request's answer, or why there is none.
type Answered<T> = Result<T, (Failure, Option<u32>)>;

/// A request of the round with its answer.
enum Answer {
    Push(PushRequest, Answered<PushResponse>),
    Pull(PullRequest, Answered<PullResponse>),
}

/// The answer of `request` if it comes within `timeout_ms`; otherwise the
/// request is dropped (a `fetch` is aborted) and the server counts as
/// unreachable, with the time limit noted.
async fn within<T>(
    timeout_ms: u32,
    request: impl Future<Output = Result<T, Failure>>,
) -> Answered<T> {
    let timer = Box::pin(sleep(timeout_ms));
    match futures::future::select(Box::pin(request), timer).await {
        futures::future::Either::Left((answer, _)) => answer.map_err(|failure| (failure, None)),
        futures::future::Either::Right(((), _)) => Err((Failure::Unreachable, Some(timeout_ms))),
    }
}

/// Folds a server answer (or failure) into the engine through the round,
/// persists and publishes the result; a refusal that halted the engine is
/// shown in the status (`token`: what the request carried).
async fn settle(
    shared: &Shared,
    what: &str,
    token: &Option<String>,
    round: &mut SyncRound,
    answer: Answer,
) {
    let failure = match &answer {
        Answer::Push(_, result) => result.as_ref().err().cloned(),
        Answer::Pull(_, result) => result.as_ref().err().cloned(),
    };
    let effects = {
        let mut engine = shared.engine.borrow_mut();
        let Some(engine) = engine.as_mut() else {
            return;
        };
        let strip = |(failure, _): (Failure, Option<u32>)| failure;
        let effects = match answer {
            Answer::Push(request, result) => {
                round.on_push(engine, &request, result.map_err(strip), now_ms(), random())
            }
            Answer::Pull(request, result) => {
                round.on_pull(engine, &request, result.map_err(strip), now_ms(), random())
            }
        };
        (effects, engine.status().halted)
    };
    let (effects, halted) = effects;
    // Callbacks run with the engine released: they may write to the atom.
    match &failure {
        Some((failure, timed_out)) => {
            shared.set_online(!matches!(failure, Failure::Unreachable));
            let message = match timed_out {
                Some(ms) => format!("{what} failed: no answer within {ms} ms; retrying"),
                None => format!("{what} failed: {failure}"),
            };
            if let Some(halt) = halted.filter(|_| shared.halt.borrow().is_none()) {
                let halt =
                    SyncHalt::from_failure(failure, halt.message, token.is_some(), now_ms() as i64);
                shared.set_halt(Some((halt, token.clone())));
            }
            shared.report_error(message);
        }
        None => shared.synced(now_ms()),
    }
    shared.handle(effects).await;
}

/// Resumes on the browser's `online` event while registered.
struct OnlineListener {
    on_online: wasm_bindgen::closure::Closure<dyn FnMut(web_sys::Event)>,
}

impl OnlineListener {
    fn add(shared: &Rc<Shared>) -> Option<OnlineListener> {
        use wasm_bindgen::JsCast;
        let weak = Rc::downgrade(shared);
        let on_online = wasm_bindgen::closure::Closure::<dyn FnMut(web_sys::Event)>::new(
            move |_event: web_sys::Event| {
                if let Some(shared) = weak.upgrade() {
                    shared.resume(Resume::Online);
                }
            },
        );
        web_sys::window()?
            .add_event_listener_with_callback("online", on_online.as_ref().unchecked_ref())
            .ok()?;
        Some(OnlineListener { on_online })
    }
}

impl Drop for OnlineListener {
    fn drop(&mut self) {
        use wasm_bindgen::JsCast;
        if let Some(window) = web_sys::window() {
            let _ = window.remove_event_listener_with_callback(
                "online",
                self.on_online.as_ref().unchecked_ref(),
            );
        }
    }
}

/// How long after opening the event stream a closed one is opened again (the
/// server's default `Retry-After` for a full list of streams).
const EVENTS_RETRY_MS: u64 = 5_000;

/// The server's event stream: every announced change wakes the loop, which
/// then pulls. `EventSource` reconnects by itself after network errors, and
/// the loop opens it again after HTTP errors; polling goes on meanwhile. A
/// stream the server refuses with 404 (the routes are not mounted) is
/// reported once.
struct Events {
    source: web_sys::EventSource,
    _on_cursor: wasm_bindgen::closure::Closure<dyn FnMut(web_sys::MessageEvent)>,
    _on_error: wasm_bindgen::closure::Closure<dyn FnMut(web_sys::Event)>,
}

impl Events {
    fn open(shared: &Rc<Shared>) -> Option<Events> {
        use wasm_bindgen::JsCast;
        if !shared.options.live || shared.options.token.try_get_untracked() != Some(None) {
            return None;
        }
        let base = match (&shared.options.events_url, &shared.endpoint) {
            (Some(url), _) => url.clone(),
            (None, Endpoint::ServerFunctions) => "/atomsync/events".to_owned(),
            (None, Endpoint::Url(base)) => server_routes(base).ok()?.1,
            (None, Endpoint::None) => return None,
        };
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}group={}", shared.group);
        let source = web_sys::EventSource::new(&url).ok()?;
        let wake = shared.wake.borrow().clone()?;
        let on_cursor = wasm_bindgen::closure::Closure::<dyn FnMut(web_sys::MessageEvent)>::new(
            move |_event: web_sys::MessageEvent| {
                let _ = wake.unbounded_send(());
            },
        );
        source
            .add_event_listener_with_callback("cursor", on_cursor.as_ref().unchecked_ref())
            .ok()?;
        let on_error = {
            let source = source.clone();
            let poll = shared.options.poll_interval_ms;
            let shared = Rc::downgrade(shared);
            wasm_bindgen::closure::Closure::<dyn FnMut(web_sys::Event)>::new(
                move |_event: web_sys::Event| {
                    // CLOSED: the server answered, but not with a stream (a
                    // network error leaves it CONNECTING, to retry).
                    if source.ready_state() == web_sys::EventSource::CLOSED {
                        leptos::task::spawn_local(refused(url.clone(), shared.clone(), poll));
                    }
                },
            )
        };
        source
            .add_event_listener_with_callback("error", on_error.as_ref().unchecked_ref())
            .ok()?;
        Some(Events {
            source,
            _on_cursor: on_cursor,
            _on_error: on_error,
        })
    }
}

impl Events {
    /// Whether the browser gave the stream up (`readyState` `CLOSED`).
    fn closed(&self) -> bool {
        self.source.ready_state() == web_sys::EventSource::CLOSED
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.source.close();
    }
}

/// Reports an event stream the server refused, with its status (asked again
/// with `fetch`, since `EventSource` does not tell it).
async fn refused(url: String, shared: Weak<Shared>, poll_ms: u32) {
    let status = status_of(&url).await;
    let Some(shared) = shared.upgrade() else {
        return;
    };
    // Without the group: the same message for every atom, logged once.
    let url = url.split('?').next().unwrap_or_default();
    match status {
        Some(404) => shared.report_config_error(format!(
            "atomsync: live updates are off: GET {url} answered 404, so atomsync's routes are \
             not mounted there. On the server, nest them next to the Leptos routes: \
             .nest(\"/atomsync\", atomsync_server::router(service.clone())) (or turn live \
             updates off with .live(false)); polling every {poll_ms} ms meanwhile"
        )),
        Some(status) => shared.report_error(format!(
            "live updates are off: the event stream {url} answered {status}; polling every \
             {poll_ms} ms meanwhile"
        )),
        None => shared.report_error(format!(
            "live updates are off: the event stream {url} was refused; polling every \
             {poll_ms} ms meanwhile"
        )),
    }
}

/// The status of a `GET` of `url`, read from the headers (the body, a stream
/// perhaps, is not awaited).
async fn status_of(url: &str) -> Option<u16> {
    use wasm_bindgen::JsCast;
    let controller = web_sys::AbortController::new().ok()?;
    let init = web_sys::RequestInit::new();
    init.set_signal(Some(&controller.signal()));
    let window = web_sys::window()?;
    let response = wasm_bindgen_futures::JsFuture::from(window.fetch_with_str_and_init(url, &init))
        .await
        .ok()?;
    let response: web_sys::Response = response.dyn_into().ok()?;
    controller.abort();
    Some(response.status())
}
