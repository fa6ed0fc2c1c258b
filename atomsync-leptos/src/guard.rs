//! The checks that atomsync's server functions run before they read a
//! request (feature `ssr`): the same as the plain HTTP routes', from the same
//! code in `atomsync_server`.
//!
//! ## Why a middleware, and why `ResponseOptions`
//!
//! A server function decodes its arguments before its body runs, whatever
//! the request's `Content-Type`, so a check in the body would come too late:
//! a `text/plain` request holding a valid S-expression would already be
//! decoded, and any other body would be refused with server_fn's own decode
//! error instead of the protocol's. So the check is a tower layer attached to
//! each server function with `#[middleware(ServerFnGuard)]` (server_fn 0.8),
//! which runs before decoding and answers with the protocol's own
//! [`ErrorBody`](atomsync_core::protocol::ErrorBody) and status.
//!
//! leptos_axum then rewrites the answer to a request that accepts
//! `text/html` and has a `Referer` (a plain form post) into a `302` redirect
//! back to the referring page, unless the status was set through
//! `leptos_axum::ResponseOptions`, which it applies last. The guard sets it
//! too, so a refused form post gets a real 403 or 415 (with a `Location`
//! header that browsers ignore on such statuses).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use atomsync_server::{Error, OriginPolicy, RouterOptions, SyncService, read_sexpr_body};
use axum::body::Body;
use axum::response::IntoResponse;
use http::{Request, Response};
use leptos::prelude::use_context;
use tower::ServiceExt;

/// The layer of atomsync's server functions: the service's
/// [`OriginPolicy`] (or the default, same-origin, when no service is in
/// context), then [`read_sexpr_body`] with the [`RouterOptions`] in context
/// (or the defaults).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ServerFnGuard;

impl<S> tower::Layer<S> for ServerFnGuard {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Guarded<S> {
        Guarded { inner: Some(inner) }
    }
}

/// A server function behind [`ServerFnGuard`]. server_fn builds a new one for
/// every request, so it is called once.
pub(crate) struct Guarded<S> {
    inner: Option<S>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> tower::Service<Request<Body>> for Guarded<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>> + Send + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The inner service is made ready when it is called.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // The request's context (provided by leptos_axum before the server
        // function runs) is read here, where its reactive owner is current.
        let service = use_context::<SyncService>();
        let options = use_context::<RouterOptions>().unwrap_or_default();
        let response_options = use_context::<leptos_axum::ResponseOptions>();
        let inner = self.inner.take();
        Box::pin(async move {
            let Some(inner) = inner else {
                return Ok(
                    Error::Internal("a server function was called twice".to_owned())
                        .into_response(),
                );
            };
            let (parts, body) = request.into_parts();
            let origin = match &service {
                Some(service) => service.check_origin(&parts.headers),
                None => OriginPolicy::default().check(&parts.headers),
            };
            let body = match origin {
                Ok(()) => read_sexpr_body(&parts.headers, body, &options).await,
                Err(refused) => Err(refused),
            };
            match body {
                Ok(bytes) => {
                    inner
                        .oneshot(Request::from_parts(parts, Body::from(bytes)))
                        .await
                }
                Err(error) => {
                    if let Some(response_options) = response_options {
                        response_options.set_status(error.status());
                    }
                    Ok(error.into_response())
                }
            }
        })
    }
}
