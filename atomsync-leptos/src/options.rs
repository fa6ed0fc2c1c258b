//! [`UseSyncedAtomOptions`]: how a synced atom reaches its server.

use std::fmt;
use std::rc::Rc;

use atomsync_core::engine::{Conflict, ConflictPolicy};
use leptos::prelude::*;

/// A callback for conflicts.
pub type ConflictCallback = Rc<dyn Fn(&Conflict)>;

/// A callback for errors.
pub type ErrorCallback = Rc<dyn Fn(&str)>;

/// Where a synced atom syncs to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Endpoint {
    /// atomsync's server functions on the app's own server (the default).
    #[default]
    ServerFunctions,
    /// A standalone `atomsync-server`, e.g. `http://localhost:8090/sync`
    /// (another origin needs `--allow-origin` on the server).
    Url(String),
    /// No server: local only (IndexedDB and memory).
    None,
}

/// Options of [`use_synced_atom_with_options`](crate::use_synced_atom_with_options).
#[derive(Clone)]
pub struct UseSyncedAtomOptions {
    /// Where to sync. Default: [`Endpoint::ServerFunctions`], or what
    /// [`provide_atomsync_with_endpoint`](crate::provide_atomsync_with_endpoint) set.
    pub endpoint: Option<Endpoint>,
    /// The bearer token sent with every request, read on each request (so a
    /// signal that changes after login works). Default: none.
    pub token: Signal<Option<String>>,
    /// How often to pull when nothing else triggers a sync, in milliseconds.
    /// Default: 2000. With live updates on, this is only the fallback.
    pub poll_interval_ms: u32,
    /// Listen to the server's `/events` stream (server-sent events) and pull
    /// as soon as a change is announced. Default: on. Browsers cannot send an
    /// `Authorization` header with `EventSource`, so with a token the atom
    /// polls instead.
    pub live: bool,
    /// Render the group's current server documents during SSR, so the first
    /// paint already shows them (readers must sit inside a `<Suspense/>` or
    /// `<Transition/>`). Default: on.
    pub server_render: bool,
    /// Where the event stream is. Default: `/atomsync/events` for the server
    /// functions (mount `atomsync_server::router` at `/atomsync`), and the
    /// `/events` next to `/sync` for a standalone server URL.
    pub events_url: Option<String>,
    /// What to do when the server refuses a stale write. Default:
    /// [`ConflictPolicy::ServerWins`] (the losing value is reported).
    pub policy: ConflictPolicy,
    /// Called for every conflict (also listed in the status).
    pub on_conflict: Option<ConflictCallback>,
    /// Called for every sync or storage error (also in the status).
    pub on_error: Option<ErrorCallback>,
}

impl Default for UseSyncedAtomOptions {
    fn default() -> Self {
        UseSyncedAtomOptions {
            endpoint: None,
            token: Signal::stored(None),
            poll_interval_ms: 2000,
            live: true,
            server_render: true,
            events_url: None,
            policy: ConflictPolicy::default(),
            on_conflict: None,
            on_error: None,
        }
    }
}

impl fmt::Debug for UseSyncedAtomOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UseSyncedAtomOptions")
            .field("endpoint", &self.endpoint)
            .field("poll_interval_ms", &self.poll_interval_ms)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl UseSyncedAtomOptions {
    /// Sets where to sync.
    pub fn endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoint = Some(endpoint);
        self
    }

    /// Syncs with a standalone server at `url` (e.g. `http://localhost:8090/sync`).
    pub fn server(self, url: impl Into<String>) -> Self {
        self.endpoint(Endpoint::Url(url.into()))
    }

    /// Sets the bearer token: a fixed value or a signal.
    pub fn token(mut self, token: impl Into<Signal<Option<String>>>) -> Self {
        self.token = token.into();
        self
    }

    /// Sets the poll interval in milliseconds.
    pub fn poll_interval_ms(mut self, ms: u32) -> Self {
        self.poll_interval_ms = ms.max(50);
        self
    }

    /// Turns live updates (server-sent events) on or off.
    pub fn live(mut self, live: bool) -> Self {
        self.live = live;
        self
    }

    /// Sets where the server-sent event stream is (without the `group` query).
    pub fn events_url(mut self, url: impl Into<String>) -> Self {
        self.events_url = Some(url.into());
        self
    }

    /// Turns server rendering of the group's documents on or off.
    pub fn server_render(mut self, on: bool) -> Self {
        self.server_render = on;
        self
    }

    /// Sets the conflict policy.
    pub fn policy(mut self, policy: ConflictPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Calls `f` for every conflict.
    pub fn on_conflict(mut self, f: impl Fn(&Conflict) + 'static) -> Self {
        self.on_conflict = Some(Rc::new(f));
        self
    }

    /// Calls `f` for every sync or storage error.
    pub fn on_error(mut self, f: impl Fn(&str) + 'static) -> Self {
        self.on_error = Some(Rc::new(f));
        self
    }
}
