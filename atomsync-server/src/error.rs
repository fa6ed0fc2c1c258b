//! The one error type of the server.

use atomsync_core::protocol::{self, ErrorBody, ErrorCode};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

/// Everything that can go wrong in the server.
///
/// Client mistakes become 4xx responses with a clear message; server failures
/// become 5xx responses whose body says nothing about the cause (which is
/// logged instead).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request is malformed: syntax, shape or limits (400).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The cursor belongs to another database or lies beyond its last change:
    /// the client must pull from the beginning (409).
    #[error("cursor reset: {0}")]
    CursorReset(String),
    /// A mutation number of the client id was decided before for a change
    /// with other content: the client must push under a new client id (409).
    #[error("mutation reused: {0}")]
    MutationReused(String),
    /// No token, or an unknown one (401).
    #[error("unauthorized: missing or unknown credentials")]
    Unauthorized,
    /// The credentials may not use this group (403).
    #[error("forbidden: the credentials may not use group `{0}`")]
    Forbidden(String),
    /// The body is larger than the configured limit (413).
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The request comes from a browser page of an origin the
    /// [`OriginPolicy`](crate::OriginPolicy) does not accept (403).
    #[error("cross-site request refused: {0}")]
    CrossOrigin(String),
    /// The request body did not arrive within the configured time (408 with
    /// the code `unavailable`, so that clients retry; the connection is
    /// closed).
    #[error("the request body did not arrive within {seconds} s")]
    BodyTimeout {
        /// The time allowed, in seconds (rounded up).
        seconds: u64,
    },
    /// A limit on concurrent use (like the number of `/events` streams) is
    /// reached (503, with `Retry-After`).
    #[error("too busy: {what}")]
    Busy {
        /// What is exhausted, for people.
        what: String,
        /// When to try again (sent as `Retry-After`, in whole seconds).
        retry_after: std::time::Duration,
    },
    /// The body does not declare the S-expression content type (415).
    #[error(
        "unsupported content type: send `Content-Type: {}`",
        protocol::CONTENT_TYPE
    )]
    UnsupportedMediaType,
    /// The store is closed or its queue is full (503).
    #[error("service unavailable")]
    Unavailable,
    /// SQLite failed (500).
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
    /// PostgreSQL failed (500; out of reach is [`Error::Unavailable`]
    /// instead).
    #[error("database error: {0}")]
    Postgres(#[from] postgres::Error),
    /// A file could not be read (500, or a startup failure).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The configuration (a users file, a database newer than this server) is
    /// unusable (500, or a startup failure).
    #[error("configuration error: {0}")]
    Config(String),
    /// Something that should not happen, happened (500).
    #[error("internal error: {0}")]
    Internal(String),
}

/// The result type of the server.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::CursorReset(_) | Error::MutationReused(_) => StatusCode::CONFLICT,
            Error::Unauthorized => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) | Error::CrossOrigin(_) => StatusCode::FORBIDDEN,
            Error::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Error::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Error::Database(_)
            | Error::Postgres(_)
            | Error::Io(_)
            | Error::Config(_)
            | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The body this error is answered with: the cause for client mistakes,
    /// a generic message for server failures.
    pub fn body(&self) -> ErrorBody {
        let (error, message) = match self {
            Error::BadRequest(m) => (ErrorCode::BadRequest, m.clone()),
            Error::CursorReset(m) => (ErrorCode::CursorReset, m.clone()),
            Error::MutationReused(m) => (ErrorCode::MutationReused, m.clone()),
            Error::Unauthorized => (ErrorCode::Unauthorized, self.to_string()),
            Error::Forbidden(_) | Error::CrossOrigin(_) => (ErrorCode::Forbidden, self.to_string()),
            // Not the client's mistake (a slow or broken link): `unavailable`
            // tells clients to retry, where `bad-request` would make them
            // give the change up.
            Error::BodyTimeout { .. } => (ErrorCode::Unavailable, self.to_string()),
            Error::Busy { .. } => (ErrorCode::Unavailable, self.to_string()),
            Error::PayloadTooLarge { .. } => (ErrorCode::TooLarge, self.to_string()),
            Error::UnsupportedMediaType => (ErrorCode::BadRequest, self.to_string()),
            Error::Unavailable => (
                ErrorCode::Unavailable,
                "the server is unavailable, retry later".to_owned(),
            ),
            Error::Database(_)
            | Error::Postgres(_)
            | Error::Io(_)
            | Error::Config(_)
            | Error::Internal(_) => (
                ErrorCode::Internal,
                "internal server error, retry later".to_owned(),
            ),
        };
        ErrorBody { error, message }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if let Error::Busy { .. } = self {
            // Expected under load or attack: not an error of the server.
            tracing::warn!(error = %self, "request refused");
        } else if let Error::CrossOrigin(_) = self {
            tracing::info!(error = %self, "request refused");
        } else if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        } else {
            tracing::debug!(error = %self, "request refused");
        }
        let mut response = sexpr_response(status, &self.body());
        let headers = response.headers_mut();
        match &self {
            Error::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Error::BodyTimeout { .. } => {
                // The rest of the body may still come: do not read it as the
                // next request.
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Error::Busy { retry_after, .. } => {
                let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            _ => {}
        }
        response
    }
}

/// An S-expression response with the protocol's content type.
pub(crate) fn sexpr_response<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    match atomsync_core::sexpr::to_vec(value) {
        Ok(body) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(protocol::CONTENT_TYPE),
            )],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "failed to encode a response");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
