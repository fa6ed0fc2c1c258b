//! The HTTP client and error type of atomsync's server functions.
//!
//! server_fn's own client decodes every error answer (status 400 to 599) as
//! the server function's error encoding. An answer that is not one — the
//! guard's protocol refusal (an S-expression [`ErrorBody`] with 413, 403,
//! 415 or 408), or a proxy's or host's plain `413 Payload Too Large` — then
//! becomes a "could not deserialize" error with the status lost, and the
//! sync loop retried a body that could never fit, for ever. [`SyncFnClient`]
//! reads error answers itself and keeps their status and body, so a refusal
//! through the server functions means exactly what it means through the
//! plain HTTP routes: 413 splits the push or refuses one document alone, 401
//! and 403 halt until new credentials, 5xx is retried with backoff.

use std::fmt;
use std::future::Future;

use atomsync_core::engine::Failure;
use atomsync_core::protocol::ErrorBody;
use atomsync_core::sexpr;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use server_fn::client::Client;
use server_fn::client::browser::BrowserClient;
use server_fn::error::{FromServerFnError, ServerFnErrorErr};
use server_fn::request::browser::BrowserRequest;
use server_fn::response::ClientRes;
use server_fn::response::browser::BrowserResponse;

use crate::codec::SExprEncoding;

/// Why a call of atomsync's server functions got no answer from them.
///
/// A refusal by the protocol itself (a cursor reset, a stale version…) is
/// not here: the server functions answer it in band, as the `Err` of
/// [`Reply`](crate::server_fns::Reply).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerFnFailure {
    /// An error status with the protocol's [`ErrorBody`]: the request was
    /// refused before the server function ran (origin, content type, body
    /// size or time; see `atomsync_server::read_sexpr_body`).
    Refused {
        /// The HTTP status.
        status: u16,
        /// The protocol's error.
        body: ErrorBody,
    },
    /// An error status without the protocol's body: the answer of a proxy
    /// or of the host app (a body limit, a gateway error).
    Status(u16),
    /// No answer: offline, connection refused, aborted.
    Unreachable(String),
    /// server_fn's own failure: an argument or a result that did not encode
    /// or decode, a missing server function.
    ServerFn(String),
}

impl fmt::Display for ServerFnFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerFnFailure::Refused { status, body } => {
                write!(
                    f,
                    "refused with status {status}: {:?}: {}",
                    body.error, body.message
                )
            }
            ServerFnFailure::Status(status) => {
                write!(f, "the server answered with status {status}")
            }
            ServerFnFailure::Unreachable(why) => {
                write!(f, "the server could not be reached: {why}")
            }
            ServerFnFailure::ServerFn(why) => write!(f, "server function failed: {why}"),
        }
    }
}

impl std::error::Error for ServerFnFailure {}

impl FromServerFnError for ServerFnFailure {
    type Encoder = SExprEncoding;

    fn from_server_fn_error(value: ServerFnErrorErr) -> Self {
        match value {
            ServerFnErrorErr::Request(why) => ServerFnFailure::Unreachable(why),
            other => ServerFnFailure::ServerFn(other.to_string()),
        }
    }
}

impl ServerFnFailure {
    /// What an error answer (`status` 400 to 599, `body`) means: the
    /// protocol's refusal, this type itself (as the server functions encode
    /// it), or a bare status.
    pub fn from_answer(status: u16, body: &[u8]) -> ServerFnFailure {
        if let Ok(body) = sexpr::from_slice::<ErrorBody>(body) {
            return ServerFnFailure::Refused { status, body };
        }
        if let Ok(failure) = sexpr::from_slice::<ServerFnFailure>(body) {
            return failure;
        }
        ServerFnFailure::Status(status)
    }
}

impl From<ServerFnFailure> for Failure {
    /// What a failed server-function call means for the engine: the same as
    /// the same answer of the plain HTTP routes.
    fn from(failure: ServerFnFailure) -> Failure {
        match failure {
            ServerFnFailure::Refused { body, .. } => Failure::Error(body),
            ServerFnFailure::Status(status) => Failure::Status(status),
            ServerFnFailure::Unreachable(_) => Failure::Unreachable,
            // An answer that did not decode: a server of another version or
            // a broken proxy; temporary, as with the HTTP routes.
            ServerFnFailure::ServerFn(_) => Failure::Status(502),
        }
    }
}

/// server_fn's browser client, reading error answers as
/// [`ServerFnFailure::from_answer`] does.
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncFnClient;

impl Client<ServerFnFailure> for SyncFnClient {
    type Request = BrowserRequest;
    type Response = BrowserResponse;

    async fn send(req: Self::Request) -> Result<Self::Response, ServerFnFailure> {
        let response = <BrowserClient as Client<ServerFnFailure>>::send(req).await?;
        let status = ClientRes::<ServerFnFailure>::status(&response);
        if !(400..=599).contains(&status) {
            return Ok(response);
        }
        let body = ClientRes::<ServerFnFailure>::try_into_bytes(response)
            .await
            .unwrap_or_default();
        Err(ServerFnFailure::from_answer(status, &body))
    }

    #[allow(clippy::type_complexity)]
    fn open_websocket(
        path: &str,
    ) -> impl Future<
        Output = Result<
            (
                impl futures::Stream<Item = Result<Bytes, Bytes>> + Send + 'static,
                impl futures::Sink<Bytes> + Send + 'static,
            ),
            ServerFnFailure,
        >,
    > + Send {
        <BrowserClient as Client<ServerFnFailure>>::open_websocket(path)
    }

    fn spawn(future: impl Future<Output = ()> + Send + 'static) {
        <BrowserClient as Client<ServerFnFailure>>::spawn(future);
    }
}

#[cfg(test)]
mod tests {
    use atomsync_core::engine::FailureKind;
    use atomsync_core::protocol::ErrorCode;

    use super::*;

    #[test]
    fn a_hosts_plain_413_keeps_its_status() {
        let failure = ServerFnFailure::from_answer(413, b"length limit exceeded");
        assert_eq!(failure, ServerFnFailure::Status(413));
        let html = b"<html><body><h1>413 Request Entity Too Large</h1></body></html>";
        assert_eq!(
            ServerFnFailure::from_answer(413, html),
            ServerFnFailure::Status(413)
        );
        assert_eq!(
            ServerFnFailure::from_answer(502, b""),
            ServerFnFailure::Status(502)
        );
    }

    #[test]
    fn the_guards_refusal_keeps_its_body() {
        let body = ErrorBody {
            error: ErrorCode::TooLarge,
            message: "body over 4194304 bytes".to_owned(),
        };
        let bytes = sexpr::to_vec(&body).unwrap();
        assert_eq!(
            ServerFnFailure::from_answer(413, &bytes),
            ServerFnFailure::Refused { status: 413, body }
        );
    }

    #[test]
    fn a_server_fn_failure_round_trips_through_its_encoding() {
        let failure = ServerFnFailure::ServerFn("args did not decode".to_owned());
        let bytes = failure.ser();
        assert_eq!(ServerFnFailure::from_answer(500, &bytes), failure);
        assert_eq!(ServerFnFailure::de(bytes), failure);
    }

    #[test]
    fn each_failure_means_for_the_engine_what_the_http_routes_answer_means() {
        let kind = |f: ServerFnFailure| Failure::from(f).kind();
        assert_eq!(kind(ServerFnFailure::Status(413)), FailureKind::TooLarge);
        let refused = |error| ServerFnFailure::Refused {
            status: 413,
            body: ErrorBody {
                error,
                message: String::new(),
            },
        };
        assert_eq!(kind(refused(ErrorCode::TooLarge)), FailureKind::TooLarge);
        assert_eq!(kind(refused(ErrorCode::Forbidden)), FailureKind::Auth);
        assert_eq!(kind(ServerFnFailure::Status(401)), FailureKind::Auth);
        assert_eq!(kind(ServerFnFailure::Status(503)), FailureKind::Temporary);
        assert_eq!(
            Failure::from(ServerFnFailure::Unreachable("reset".into())),
            Failure::Unreachable
        );
        assert_eq!(
            kind(ServerFnFailure::ServerFn("bad".into())),
            FailureKind::Temporary
        );
    }
}
