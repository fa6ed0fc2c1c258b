//! The HTTP routes: a thin adapter from requests to [`SyncService`].

use std::convert::Infallible;
use std::time::Duration;

use atomsync_core::protocol::{self, Cursor, PullRequest, PushRequest};
use atomsync_core::sexpr;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Query, Request, State};
use axum::response::Response;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use futures_util::{Stream, StreamExt};
use http::{StatusCode, header};
use serde::Deserialize;

use crate::error::sexpr_response;
use crate::{Credentials, Error, Result, SyncService};

/// Settings of the HTTP routes.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RouterOptions {
    /// The largest accepted request body, in bytes (4 MiB by default); larger
    /// ones are refused with 413.
    pub max_body: usize,
    /// How often an idle `/events` stream sends a heartbeat comment (15 s by
    /// default).
    pub heartbeat: Duration,
}

impl Default for RouterOptions {
    fn default() -> Self {
        RouterOptions {
            max_body: 4 * 1024 * 1024,
            heartbeat: Duration::from_secs(15),
        }
    }
}

impl RouterOptions {
    /// Sets [`RouterOptions::max_body`].
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Sets [`RouterOptions::heartbeat`].
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat = interval;
        self
    }
}

#[derive(Clone)]
struct AppState {
    service: SyncService,
    options: RouterOptions,
}

/// The protocol's routes (`GET /sync`, `POST /sync`, `GET /events`) with the
/// default [`RouterOptions`], ready to be `.merge()`d or `.nest()`ed into a
/// host application's router.
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
    let max_body = options.max_body;
    Router::new()
        .route("/sync", get(pull).post(push))
        .route("/events", get(events))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(AppState { service, options })
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
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim());
    if !content_type.is_some_and(|t| t.eq_ignore_ascii_case(protocol::CONTENT_TYPE)) {
        return Err(Error::UnsupportedMediaType);
    }
    let body = Bytes::from_request(request, &())
        .await
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Error::PayloadTooLarge {
                    limit: state.options.max_body,
                }
            } else {
                Error::BadRequest(format!(
                    "could not read the body: {}",
                    rejection.body_text()
                ))
            }
        })?;
    let request: PushRequest = sexpr::from_slice(&body)
        .map_err(|e| Error::BadRequest(format!("invalid push request: {e}")))?;
    let response = state.service.push(&credentials, request).await?;
    Ok(sexpr_response(StatusCode::OK, &response))
}

async fn events(
    State(state): State<AppState>,
    credentials: Credentials,
    query: Result<Query<Params>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    state.service.authenticate(&credentials)?;
    let mut params = params(query)?;
    let group = group(&mut params)?;
    let subscription = state.service.subscribe(&credentials, &group).await?;
    let stream = subscription
        .into_stream()
        .map(|cursor| Ok(Event::default().event("cursor").data(cursor.to_string())));
    Ok(Sse::new(stream).keep_alive(
        KeepAlive::new()
            .interval(state.options.heartbeat)
            .text("heartbeat"),
    ))
}
