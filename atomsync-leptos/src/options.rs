//! [`UseSyncedAtomOptions`]: how a synced atom reaches its server.

use std::fmt;
use std::rc::Rc;

use atomsync_core::engine::{Conflict, ConflictPolicy};
use leptos::prelude::*;

/// A callback for conflicts.
pub type ConflictCallback = Rc<dyn Fn(&Conflict)>;

/// A callback for errors.
pub type ErrorCallback = Rc<dyn Fn(&str)>;

/// The default time limit of one request, in milliseconds (30 s).
pub const DEFAULT_REQUEST_TIMEOUT_MS: u32 = 30_000;

/// Where a synced atom syncs to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Endpoint {
    /// atomsync's server functions on the app's own server (the default).
    #[default]
    ServerFunctions,
    /// A standalone `atomsync-server` (or a router mounted elsewhere) at its
    /// base URL, e.g. `http://localhost:8090`: requests go to
    /// `{base}/sync` and the event stream is `{base}/events`, as with
    /// `atomsync_client::Client::open`. A URL ending in `/sync` or `/events`
    /// is refused with an error in [`AtomStatus::last_error`](crate::AtomStatus::last_error)
    /// and the console saying what to write. Another origin needs
    /// `--allow-origin` on the server.
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
    /// The time limit of one push or pull, in milliseconds. Default: 30 000.
    /// A request without an answer by then is abandoned (its `fetch`
    /// aborted) and counts as the server being unreachable: it is retried
    /// with the usual backoff, so a hung connection never stalls the group.
    pub request_timeout_ms: u32,
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
    /// functions (mount `atomsync_server::router` at `/atomsync`), and
    /// `{base}/events` for a standalone server's base URL.
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
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
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
            .field("request_timeout_ms", &self.request_timeout_ms)
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

    /// Syncs with a standalone server at its base URL (e.g.
    /// `http://localhost:8090`, without `/sync`; see [`Endpoint::Url`]).
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

    /// Sets the time limit of one request in milliseconds (at least 10; see
    /// the `request_timeout_ms` field).
    pub fn request_timeout_ms(mut self, ms: u32) -> Self {
        self.request_timeout_ms = ms.max(10);
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

/// The routes under a standalone server's base URL: `({base}/sync,
/// {base}/events)`. A URL that already names a route is refused with what to
/// write instead (the rule of `atomsync_client::HttpTransport` too).
#[cfg_attr(
    not(all(target_arch = "wasm32", not(feature = "ssr"))),
    allow(dead_code) // used by the browser's sync loop (and the tests)
)]
pub(crate) fn server_routes(base: &str) -> Result<(String, String), String> {
    let trimmed = base.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(format!(
            "atomsync: `.server({base:?})` is not a server URL: give the server's base URL, \
             like `.server(\"http://localhost:8090\")`"
        ));
    }
    for route in ["/sync", "/events"] {
        if let Some(fixed) = trimmed.strip_suffix(route) {
            return Err(format!(
                "atomsync: `.server({base:?})` names a route, not the server: give the base URL \
                 without `{route}`: `.server({fixed:?})` (requests go to `{fixed}/sync` and \
                 `{fixed}/events`)"
            ));
        }
    }
    Ok((format!("{trimmed}/sync"), format!("{trimmed}/events")))
}

#[cfg(test)]
mod tests {
    use super::server_routes;

    #[test]
    fn a_server_is_given_by_its_base_url() {
        for (base, sync, events) in [
            (
                "http://localhost:8090",
                "http://localhost:8090/sync",
                "http://localhost:8090/events",
            ),
            (
                "http://localhost:8090/",
                "http://localhost:8090/sync",
                "http://localhost:8090/events",
            ),
            ("/atomsync", "/atomsync/sync", "/atomsync/events"),
        ] {
            assert_eq!(
                server_routes(base),
                Ok((sync.to_owned(), events.to_owned()))
            );
        }
    }

    #[test]
    fn a_route_url_is_refused_with_what_to_write() {
        for (given, fixed) in [
            ("http://localhost:8090/sync", "http://localhost:8090"),
            ("http://localhost:8090/sync/", "http://localhost:8090"),
            ("http://localhost:8090/events", "http://localhost:8090"),
            (
                "https://app.example.com/atomsync/sync",
                "https://app.example.com/atomsync",
            ),
        ] {
            let error = server_routes(given).unwrap_err();
            assert!(
                error.contains(&format!(".server({fixed:?})")) && error.contains(given),
                "{given}: {error}"
            );
        }
        assert!(server_routes("").unwrap_err().contains("base URL"));
    }
}
