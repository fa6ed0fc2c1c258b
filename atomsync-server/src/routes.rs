//! The HTTP routes: a thin adapter from requests to [`SyncService`].

use std::convert::Infallible;
use std::time::Duration;

use atomsync_core::protocol::{self, Cursor, PullRequest, PushRequest};
use atomsync_core::sexpr;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Extension, Query, Request, State};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{Stream, StreamExt};
use http::StatusCode;
use serde::Deserialize;

use crate::error::sexpr_response;
use crate::limits::{SubscriberSlots, read_sexpr_body};
use crate::serve::Stopping;
use crate::{Credentials, Error, Result, SyncService};

/// Settings of the HTTP routes (and, through
/// `atomsync_leptos::provide_sync_service_with_options`, of the server
/// functions).
///
/// These limits hold wherever the router is mounted. The limits of whole
/// connections (time to send the headers, idle connections, how many at
/// once) belong to the server loop: see [`serve`](crate::serve) and
/// [`ServeOptions`](crate::ServeOptions).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RouterOptions {
    /// The largest accepted request body, in bytes (4 MiB by default); larger
    /// ones are refused with 413.
    pub max_body: usize,
    /// How long a request body may take to arrive, from the end of the
    /// headers to its last byte (30 s by default, enough for 4 MiB at about
    /// 1 Mbit/s); a slower one is answered 408 and its connection closed.
    pub body_timeout: Duration,
    /// How often an idle `/events` stream sends a heartbeat comment (15 s by
    /// default). Keep it well under the server's idle timeout
    /// ([`ServeOptions::idle_timeout`](crate::ServeOptions::idle_timeout), 60 s
    /// by default), which would otherwise close quiet streams.
    pub heartbeat: Duration,
    /// How many `/events` streams this router serves at once (256 by
    /// default); beyond that a subscriber gets 503 with `Retry-After`. Each
    /// stream holds a connection, so keep it under
    /// [`ServeOptions::max_connections`](crate::ServeOptions::max_connections).
    pub max_subscribers: usize,
    /// The `Retry-After` sent with that 503 (5 s by default).
    pub retry_after: Duration,
}

impl Default for RouterOptions {
    fn default() -> Self {
        RouterOptions {
            max_body: 4 * 1024 * 1024,
            body_timeout: Duration::from_secs(30),
            heartbeat: Duration::from_secs(15),
            max_subscribers: 256,
            retry_after: Duration::from_secs(5),
        }
    }
}

impl RouterOptions {
    /// Sets [`RouterOptions::max_body`].
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Sets [`RouterOptions::body_timeout`].
    pub fn body_timeout(mut self, timeout: Duration) -> Self {
        self.body_timeout = timeout;
        self
    }

    /// Sets [`RouterOptions::heartbeat`].
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat = interval;
        self
    }

    /// Sets [`RouterOptions::max_subscribers`].
    pub fn max_subscribers(mut self, streams: usize) -> Self {
        self.max_subscribers = streams;
        self
    }

    /// Sets [`RouterOptions::retry_after`].
    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = delay;
        self
    }
}

#[derive(Clone)]
struct AppState {
    service: SyncService,
    options: RouterOptions,
    subscribers: SubscriberSlots,
}

/// The protocol's routes (`GET /sync`, `POST /sync`, `GET /events`) with the
/// default [`RouterOptions`], ready to be `.merge()`d or `.nest()`ed into a
/// host application's router.
///
/// Every request is first checked against the service's
/// [`OriginPolicy`](crate::OriginPolicy) (403 for other sites' pages), then
/// authenticated.
pub fn router<S>(service: SyncService) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    router_with_options(service, RouterOptions::default())
}

/// [`router`] with explicit [`RouterOptions`].
pub fn router_with_options<S>(service: SyncService, options: RouterOptions) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    service.mark_router_made();
    let max_body = options.max_body;
    let subscribers = SubscriberSlots::new(options.max_subscribers, options.retry_after);
    let state = AppState {
        service,
        options,
        subscribers,
    };
    Router::new()
        .route("/sync", get(pull).post(push))
        .route("/events", get(events))
        .route_layer(middleware::from_fn_with_state(state.clone(), check_origin))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// The cross-site check, before anything else (see [`OriginPolicy`](crate::OriginPolicy)).
async fn check_origin(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match state.service.check_origin(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

/// The query string of `GET /sync` and `GET /events`, checked by hand for
/// clear messages.
#[derive(Deserialize)]
struct Params {
    group: Option<String>,
    since: Option<String>,
    limit: Option<String>,
}

fn params(query: Result<Query<Params>, QueryRejection>) -> Result<Params> {
    let Query(params) = query.map_err(|rejection| {
        Error::BadRequest(format!("invalid query string: {}", rejection.body_text()))
    })?;
    Ok(params)
}

fn group(params: &mut Params) -> Result<String> {
    let group = params
        .group
        .take()
        .ok_or_else(|| Error::BadRequest("missing query parameter `group`".to_owned()))?;
    protocol::validate_group(&group).map_err(Error::BadRequest)?;
    Ok(group)
}

async fn pull(
    State(state): State<AppState>,
    credentials: Credentials,
    query: Result<Query<Params>, QueryRejection>,
) -> Result<Response> {
    state.service.authenticate(&credentials)?;
    let mut params = params(query)?;
    let group = group(&mut params)?;
    let since = match params.since.as_deref() {
        None | Some("") => None,
        Some(text) => Some(
            text.parse::<Cursor>()
                .map_err(|e| Error::BadRequest(format!("invalid `since`: {e}")))?,
        ),
    };
    let limit = match params.limit.as_deref() {
        None | Some("") => None,
        Some(text) => Some(
            // Any whole number from 1 up, however long; large ones are
            // capped (by the store, at the protocol's maximum page).
            Some(text)
                .filter(|t| t.len() <= 1000 && t.bytes().all(|b| b.is_ascii_digit()))
                .map(|t| t.trim_start_matches('0'))
                .filter(|t| !t.is_empty())
                .map(|t| t.parse::<u32>().unwrap_or(u32::MAX))
                .ok_or_else(|| {
                    Error::BadRequest(format!(
                        "invalid `limit`: expected a whole number from 1 to {} (larger \
                         values are capped)",
                        protocol::MAX_PULL_LIMIT
                    ))
                })?,
        ),
    };
    let request = PullRequest {
        group,
        since,
        limit,
    };
    let response = state.service.pull(&credentials, request).await?;
    Ok(sexpr_response(StatusCode::OK, &response))
}

async fn push(
    State(state): State<AppState>,
    credentials: Credentials,
    request: Request,
) -> Result<Response> {
    state.service.authenticate(&credentials)?;
    let (parts, body) = request.into_parts();
    let body = read_sexpr_body(&parts.headers, body, &state.options).await?;
    let request: PushRequest = sexpr::from_slice(&body)
        .map_err(|e| Error::BadRequest(format!("invalid push request: {e}")))?;
    let response = state.service.push(&credentials, request).await?;
    Ok(sexpr_response(StatusCode::OK, &response))
}

async fn events(
    State(state): State<AppState>,
    stopping: Option<Extension<Stopping>>,
    credentials: Credentials,
    query: Result<Query<Params>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    state.service.authenticate(&credentials)?;
    let mut params = params(query)?;
    let group = group(&mut params)?;
    let slot = state.subscribers.take()?;
    let subscription = state.service.subscribe(&credentials, &group).await?;
    let stream = subscription.into_stream().map(move |cursor| {
        // The slot goes with the stream: it is given back when the stream
        // ends or its client goes away.
        let _slot = &slot;
        Ok(Event::default().event("cursor").data(cursor.to_string()))
    });
    // Under `serve`, the stream ends with the server's graceful shutdown
    // (else it would hold the shutdown up for as long as the browser stays).
    let stream = stream.take_until(async move {
        match stopping {
            Some(Extension(stopping)) => stopping.wait().await,
            None => std::future::pending().await,
        }
    });
    Ok(Sse::new(stream).keep_alive(
        KeepAlive::new()
            .interval(state.options.heartbeat)
            .text("heartbeat"),
    ))
}
