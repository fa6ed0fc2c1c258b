//! atomsync's Leptos server functions: pull and push with the [`SExpr`]
//! encoding. With the `ssr` feature they run against the
//! `atomsync_server::SyncService` the host app provides as context (see
//! [`provide_sync_service`]); in the browser they are the hook's default
//! transport.
//!
//! On the server they are exactly as strict as the plain HTTP routes, with
//! the same code: a request from a page of another site is refused with 403
//! (the service's `atomsync_server::OriginPolicy`), a body without the
//! protocol's content type with 415, a body over the limit with 413 and one
//! that does not arrive in time with 408 (`atomsync_server::read_sexpr_body`),
//! each with the protocol's S-expression `ErrorBody`, before the arguments
//! are decoded. See `docs/security.md`.

// The argument structs `#[server]` generates have undocumented fields.
#![allow(missing_docs)]

use atomsync_core::protocol::{ErrorBody, PullRequest, PullResponse, PushRequest, PushResponse};
use leptos::prelude::*;

use crate::codec::SExpr;

/// The answer of a server function: the protocol's response, or the
/// protocol's error (the same [`ErrorBody`] the HTTP routes send), in band so
/// the client can tell a cursor reset or an auth failure from a network error.
pub type Reply<T> = Result<T, ErrorBody>;

/// Pulls the documents of a group changed after a cursor.
#[server(prefix = "/atomsync", endpoint = "pull", input = SExpr, output = SExpr)]
#[middleware(crate::guard::ServerFnGuard)]
pub async fn pull(
    token: Option<String>,
    request: PullRequest,
) -> Result<Reply<PullResponse>, ServerFnError> {
    let (service, credentials) = server::service_and_credentials(token)?;
    Ok(service
        .pull(&credentials, request)
        .await
        .map_err(|e| e.body()))
}

/// Pushes a batch of changes to a group.
#[server(prefix = "/atomsync", endpoint = "push", input = SExpr, output = SExpr)]
#[middleware(crate::guard::ServerFnGuard)]
pub async fn push(
    token: Option<String>,
    request: PushRequest,
) -> Result<Reply<PushResponse>, ServerFnError> {
    let (service, credentials) = server::service_and_credentials(token)?;
    Ok(service
        .push(&credentials, request)
        .await
        .map_err(|e| e.body()))
}

#[cfg(feature = "ssr")]
pub use server::{provide_sync_service, provide_sync_service_with_options};

#[cfg(feature = "ssr")]
mod server {
    use atomsync_server::{Credentials, RouterOptions, SyncService};
    use leptos::prelude::*;

    /// Makes `service` the store behind atomsync's server functions (and the
    /// server-side rendering of `use_synced_atom`). Call it in the context
    /// closure of `leptos_routes_with_context`.
    ///
    /// The server functions check requests with the service's
    /// `OriginPolicy` and the default `RouterOptions` (body size and time);
    /// see [`provide_sync_service_with_options`].
    pub fn provide_sync_service(service: SyncService) {
        provide_context(service);
    }

    /// [`provide_sync_service`], with the body limits of `options`
    /// ([`RouterOptions::max_body`], [`RouterOptions::body_timeout`]): pass
    /// the options given to `atomsync_server::router_with_options`, so that
    /// both ways in are equally strict.
    pub fn provide_sync_service_with_options(service: SyncService, options: RouterOptions) {
        provide_context(service);
        provide_context(options);
    }

    /// The service in context and the caller's credentials: the token given
    /// as argument, else the request's own (`Authorization: Bearer`).
    pub(super) fn service_and_credentials(
        token: Option<String>,
    ) -> Result<(SyncService, Credentials), ServerFnError> {
        let service = use_context::<SyncService>().ok_or_else(|| {
            ServerFnError::new(
                "atomsync: no SyncService in context; call provide_sync_service in the \
                 context of leptos_routes_with_context",
            )
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
