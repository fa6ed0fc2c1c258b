//! atomsync's Leptos server functions: pull and push with the [`SExpr`]
//! encoding. With the `ssr` feature they run against the
//! `atomsync_server::SyncService` the host app provides as context (see
//! `provide_sync_service`); in the browser they are the hook's default
//! transport.
//!
//! On the server they are exactly as strict as the plain HTTP routes, with
//! the same code: a request from a page of another site is refused with 403
//! (the service's `atomsync_server::OriginPolicy`), a body without the
//! protocol's content type with 415, a body over the limit with 413 and one
//! that does not arrive in time with 408 (`atomsync_server::read_sexpr_body`),
//! each with the protocol's S-expression `ErrorBody`, before the arguments
//! are decoded. In the browser they go through [`SyncFnClient`], which keeps
//! the status and body of such a refusal (and of a proxy's or host's, such as
//! a plain `413`) as a [`ServerFnFailure`]. See `docs/security.md`.

// The argument structs `#[server]` generates have undocumented fields.
#![allow(missing_docs)]

use atomsync_core::protocol::{ErrorBody, PullRequest, PullResponse, PushRequest, PushResponse};
use leptos::prelude::*;

use crate::codec::SExpr;
pub use crate::fn_client::{ServerFnFailure, SyncFnClient};

/// The answer of a server function: the protocol's response, or the
/// protocol's error (the same [`ErrorBody`] the HTTP routes send), in band so
/// the client can tell a cursor reset or an auth failure from a network error.
pub type Reply<T> = Result<T, ErrorBody>;

/// The body of a server function. `#[server]` emits the body only when
/// leptos's `ssr` feature is on (server_fn's macro decides): if this crate's
/// own `ssr` is off then, the app forgot to forward it, and the build stops
/// here with the fix instead of an unresolved name deep inside this crate.
#[cfg(feature = "ssr")]
#[allow(unused_macros)] // unused where `#[server]` emits no body (the browser)
macro_rules! on_the_server {
    ($($body:tt)*) => { $($body)* };
}

#[cfg(not(feature = "ssr"))]
#[allow(unused_macros)] // used only in a misconfigured server build
macro_rules! on_the_server {
    ($($body:tt)*) => {
        compile_error!(
            "atomsync-leptos: leptos's `ssr` feature is on but atomsync-leptos's is not. \
             Turn it on from your app's `ssr` feature, with the server as an optional \
             dependency: ssr = [\"leptos/ssr\", \"dep:leptos_axum\", \
             \"atomsync-leptos/ssr\", \"dep:atomsync-server\", ...] \
             (see the README, \"Add atomsync to your Leptos app\")"
        )
    };
}

/// Pulls the documents of a group changed after a cursor.
#[server(prefix = "/atomsync", endpoint = "pull", input = SExpr, output = SExpr, client = SyncFnClient)]
#[middleware(crate::guard::ServerFnGuard)]
pub async fn pull(
    token: Option<String>,
    request: PullRequest,
) -> Result<Reply<PullResponse>, ServerFnFailure> {
    on_the_server! {
        let (service, credentials) = match server::service_and_credentials(token) {
            Ok(found) => found,
            Err(missing) => return Ok(Err(missing)),
        };
        Ok(service
            .pull(&credentials, request)
            .await
            .map_err(|e| e.body()))
    }
}

/// Pushes a batch of changes to a group.
#[server(prefix = "/atomsync", endpoint = "push", input = SExpr, output = SExpr, client = SyncFnClient)]
#[middleware(crate::guard::ServerFnGuard)]
pub async fn push(
    token: Option<String>,
    request: PushRequest,
) -> Result<Reply<PushResponse>, ServerFnFailure> {
    on_the_server! {
        let (service, credentials) = match server::service_and_credentials(token) {
            Ok(found) => found,
            Err(missing) => return Ok(Err(missing)),
        };
        Ok(service
            .push(&credentials, request)
            .await
            .map_err(|e| e.body()))
    }
}

#[cfg(feature = "ssr")]
pub use server::{provide_sync_service, provide_sync_service_with_options};

#[cfg(feature = "ssr")]
pub(crate) mod server {
    use std::sync::atomic::{AtomicBool, Ordering};

    use atomsync_core::protocol::{ErrorBody, ErrorCode};
    use atomsync_server::{Credentials, RouterOptions, SyncService};
    use leptos::prelude::*;

    /// What the server log and the browser's `status().last_error` say when
    /// the app never called [`provide_sync_service`].
    pub(crate) const NO_SERVICE: &str = "atomsync: no SyncService in context, so the server \
        functions and server rendering have no data. Call \
        atomsync_leptos::provide_sync_service(service.clone()) in the context closure of \
        leptos_routes_with_context (see the README, \"Add atomsync to your Leptos app\")";

    /// What the server log says when the service's routes were never made.
    pub(crate) const NO_ROUTES: &str = "atomsync: the SyncService given to \
        provide_sync_service has no routes, so the browser's live updates \
        (GET /atomsync/events) get 404 and fall back to polling. Mount them next to the \
        Leptos routes: .nest(\"/atomsync\", atomsync_server::router(service.clone()))";

    static NO_SERVICE_LOGGED: AtomicBool = AtomicBool::new(false);
    static NO_ROUTES_LOGGED: AtomicBool = AtomicBool::new(false);

    /// Writes `message` to the server log (stderr), once per process.
    fn log_once(logged: &AtomicBool, message: &str) {
        if !logged.swap(true, Ordering::Relaxed) {
            leptos::logging::error!("{message}");
        }
    }

    /// [`NO_SERVICE`], logged once; the text for the browser.
    pub(crate) fn no_service() -> String {
        log_once(&NO_SERVICE_LOGGED, NO_SERVICE);
        NO_SERVICE.to_owned()
    }

    /// Makes `service` the store behind atomsync's server functions (and the
    /// server-side rendering of `use_synced_atom`). Call it in the context
    /// closure of `leptos_routes_with_context`.
    ///
    /// The server functions check requests with the service's
    /// `OriginPolicy` and the default `RouterOptions` (body size and time);
    /// see [`provide_sync_service_with_options`].
    ///
    /// If no `atomsync_server::router` was made for `service` (the routes
    /// that live updates need), the server log says so, once.
    pub fn provide_sync_service(service: SyncService) {
        if !service.router_made() {
            log_once(&NO_ROUTES_LOGGED, NO_ROUTES);
        }
        provide_context(service);
    }

    /// [`provide_sync_service`], with the body limits of `options`
    /// ([`RouterOptions::max_body`], [`RouterOptions::body_timeout`]): pass
    /// the options given to `atomsync_server::router_with_options`, so that
    /// both ways in are equally strict.
    pub fn provide_sync_service_with_options(service: SyncService, options: RouterOptions) {
        provide_sync_service(service);
        provide_context(options);
    }

    /// The service in context and the caller's credentials: the token given
    /// as argument, else the request's own (`Authorization: Bearer`). Without
    /// a service, the protocol's error (a temporary one: the client retries
    /// with backoff, and shows the message in its status).
    pub(super) fn service_and_credentials(
        token: Option<String>,
    ) -> Result<(SyncService, Credentials), ErrorBody> {
        let service = use_context::<SyncService>().ok_or_else(|| ErrorBody {
            error: ErrorCode::Internal,
            message: no_service(),
        })?;
        // The request's headers and extensions go along, so a host app's own
        // authorizer can look at its session cookie.
        let credentials = match (token, use_context::<http::request::Parts>()) {
            (Some(token), _) => Credentials::bearer(token),
            (None, Some(parts)) => Credentials::from_parts(&parts),
            (None, None) => Credentials::none(),
        };
        Ok((service, credentials))
    }
}
