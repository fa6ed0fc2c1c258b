//! How the client reaches the server: the [`Transport`] trait and its HTTP
//! implementation, [`HttpTransport`].

use std::future::Future;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use atomsync_core::engine::Failure;
use atomsync_core::protocol::{
    CONTENT_TYPE, ErrorBody, ErrorCode, PullRequest, PullResponse, PushRequest, PushResponse,
};
use atomsync_core::sexpr;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE as CONTENT_TYPE_HEADER};
use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// Sends the protocol's requests to a server.
///
/// Every failure is a [`Failure`], which the engine classifies: no answer is
/// [`Failure::Unreachable`], an error answer with a readable body is
/// [`Failure::Error`], any other unusable answer is [`Failure::Status`].
pub trait Transport: Send + Sync + 'static {
    /// Sends a pull (`GET /sync`).
    fn pull(
        &self,
        request: &PullRequest,
    ) -> impl Future<Output = Result<PullResponse, Failure>> + Send;

    /// Sends a push (`POST /sync`).
    fn push(
        &self,
        request: &PushRequest,
    ) -> impl Future<Output = Result<PushResponse, Failure>> + Send;

    /// Replaces the bearer token for the requests sent from now on (`None`:
    /// send none). Called by [`Client::set_token`](crate::Client::set_token);
    /// the default does nothing (a transport without tokens).
    fn set_token(&self, token: Option<String>) {
        let _ = token;
    }
}

/// The protocol over HTTP (`docs/protocol.md`), with reqwest.
///
/// `base_url` is where the server's routes are, the same URL every atomsync
/// client takes (`UseSyncedAtomOptions::server` in the browser too):
/// `http://host:8090` for a standalone server,
/// `https://app.example.com/atomsync` for a router nested at `/atomsync`.
/// Requests go to `{base_url}/sync`. A URL that already ends in `/sync` or
/// `/events` is refused with an [`Error::InvalidUrl`] naming the base URL
/// to write instead.
///
/// ## Usage
///
/// ```no_run
/// use atomsync_client::{HttpTransport, Transport};
/// use atomsync_core::protocol::PullRequest;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let transport = HttpTransport::new("http://127.0.0.1:8090")?.with_token("abc123");
/// let page = transport
///     .pull(&PullRequest { group: "todo".into(), since: None, limit: None })
///     .await
///     .map_err(|failure| failure.to_string())?;
/// println!("{} documents", page.documents.len());
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct HttpTransport {
    client: reqwest::Client,
    sync_url: reqwest::Url,
    token: RwLock<Option<String>>,
}

/// The default time limit of one request, connection included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

impl HttpTransport {
    /// A transport to the server at `base_url`, with a [`DEFAULT_TIMEOUT`]
    /// per request and no token.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] if `base_url` is not an `http` or `https` URL;
    /// [`Error::Http`] if the HTTP client cannot be built.
    ///
    /// This crate builds reqwest without TLS: for `https`, enable a TLS
    /// feature of reqwest in the application (for example
    /// `reqwest = { version = "0.12", features = ["rustls-tls"] }`), which
    /// Cargo unifies with this crate's reqwest.
    pub fn new(base_url: &str) -> Result<Self> {
        Self::with_timeout(base_url, DEFAULT_TIMEOUT)
    }

    /// [`HttpTransport::new`] with another time limit per request. A request
    /// that takes longer fails as [`Failure::Unreachable`].
    pub fn with_timeout(base_url: &str, timeout: Duration) -> Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .build()?;
        Self::with_client(client, base_url)
    }

    /// A transport sending through `client` (for its own TLS, proxy or
    /// timeout settings).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] if `base_url` is not an `http` or `https` URL.
    pub fn with_client(client: reqwest::Client, base_url: &str) -> Result<Self> {
        let invalid = |message: &str| Error::InvalidUrl {
            url: base_url.to_owned(),
            message: message.to_owned(),
        };
        let base = reqwest::Url::parse(base_url).map_err(|e| invalid(&e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http or https"));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(invalid("the URL must not have a query or fragment"));
        }
        let trimmed = base.path().trim_end_matches('/');
        if let Some(route) = ["/sync", "/events"]
            .into_iter()
            .find(|route| trimmed.ends_with(route))
        {
            let mut fixed = base.clone();
            fixed.set_path(&trimmed[..trimmed.len() - route.len()]);
            let fixed = fixed.as_str().trim_end_matches('/').to_owned();
            return Err(invalid(&format!(
                "give the base URL the routes are under, without `{route}`: write `{fixed}` \
                 (requests go to `{fixed}/sync` and `{fixed}/events`)"
            )));
        }
        let path = format!("{}/sync", base.path().trim_end_matches('/'));
        let mut sync_url = base;
        sync_url.set_path(&path);
        Ok(HttpTransport {
            client,
            sync_url,
            token: RwLock::new(None),
        })
    }

    /// Sends `Authorization: Bearer TOKEN` with every request.
    pub fn with_token(self, token: impl Into<String>) -> Self {
        self.set_token(Some(token.into()));
        self
    }

    /// Replaces the bearer token (`None`: send none), for the requests sent
    /// from now on.
    pub fn set_token(&self, token: Option<String>) {
        *self.token.write().unwrap_or_else(PoisonError::into_inner) = token;
    }

    /// The URL requests go to (`{base_url}/sync`).
    pub fn sync_url(&self) -> &reqwest::Url {
        &self.sync_url
    }

    fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let token = self
            .token
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match token {
            Some(token) => request.header(AUTHORIZATION, format!("Bearer {token}")),
            None => request,
        }
    }
}

impl Transport for HttpTransport {
    fn set_token(&self, token: Option<String>) {
        HttpTransport::set_token(self, token);
    }

    async fn pull(&self, request: &PullRequest) -> Result<PullResponse, Failure> {
        let mut query: Vec<(&str, String)> = vec![("group", request.group.clone())];
        if let Some(since) = &request.since {
            query.push(("since", since.to_string()));
        }
        if let Some(limit) = request.limit {
            query.push(("limit", limit.to_string()));
        }
        let builder = self.client.get(self.sync_url.clone()).query(&query);
        send(self.authorize(builder)).await
    }

    async fn push(&self, request: &PushRequest) -> Result<PushResponse, Failure> {
        let body = sexpr::to_vec(request).map_err(|e| {
            Failure::Error(ErrorBody {
                error: ErrorCode::BadRequest,
                message: format!("the push could not be encoded: {e}"),
            })
        })?;
        let builder = self
            .client
            .post(self.sync_url.clone())
            .header(CONTENT_TYPE_HEADER, CONTENT_TYPE)
            .body(body);
        send(self.authorize(builder)).await
    }
}

/// Sends a request and reads its answer as the protocol says.
async fn send<T: DeserializeOwned>(request: reqwest::RequestBuilder) -> Result<T, Failure> {
    // No answer (refused, reset, timed out): unreachable.
    let response = request.send().await.map_err(|_| Failure::Unreachable)?;
    let status = response.status();
    let body = response.bytes().await.map_err(|_| Failure::Unreachable)?;
    if status.is_success() {
        // A success the client cannot read: something between client and
        // server mangled it, or it is not an atomsync server. Temporary.
        sexpr::from_slice(&body).map_err(|_| Failure::Status(502))
    } else {
        match sexpr::from_slice::<ErrorBody>(&body) {
            Ok(error) => Err(Failure::Error(error)),
            Err(_) => Err(Failure::Status(status.as_u16())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sync_url_is_under_the_base_url() {
        let cases = [
            ("http://127.0.0.1:8090", "http://127.0.0.1:8090/sync"),
            ("http://127.0.0.1:8090/", "http://127.0.0.1:8090/sync"),
            (
                "https://example.com/atomsync",
                "https://example.com/atomsync/sync",
            ),
            (
                "https://example.com/atomsync/",
                "https://example.com/atomsync/sync",
            ),
        ];
        for (base, sync) in cases {
            assert_eq!(HttpTransport::new(base).unwrap().sync_url().as_str(), sync);
        }
        // The URL of a route instead of the base URL: refused with what to
        // write, the same rule as the browser hook's.
        for (given, base) in [
            ("http://127.0.0.1:8090/sync", "http://127.0.0.1:8090"),
            ("http://127.0.0.1:8090/sync/", "http://127.0.0.1:8090"),
            ("http://127.0.0.1:8090/events", "http://127.0.0.1:8090"),
            (
                "https://example.com/atomsync/sync",
                "https://example.com/atomsync",
            ),
        ] {
            let error = HttpTransport::new(given).unwrap_err().to_string();
            assert!(
                error.contains(given)
                    && error.contains(&format!("write `{base}`"))
                    && error.contains("without `/"),
                "{given}: {error}"
            );
        }
        for bad in [
            "",
            "127.0.0.1:8090",
            "ftp://x/",
            "http://x/?a=1",
            "not a url",
        ] {
            let error = HttpTransport::new(bad).unwrap_err();
            assert!(matches!(error, Error::InvalidUrl { .. }), "{bad}: {error}");
        }
    }

    #[tokio::test]
    async fn an_unreachable_server_is_unreachable() {
        // A port nobody listens on: bind one, then free it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let transport = HttpTransport::new(&format!("http://127.0.0.1:{port}")).unwrap();
        let request = PullRequest {
            group: "g".into(),
            since: None,
            limit: None,
        };
        assert_eq!(transport.pull(&request).await, Err(Failure::Unreachable));
    }

    /// Serves `response` (status line onwards) to every connection, reading
    /// each request's head first.
    fn canned(response: String) -> String {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    line.clear();
                }
                let _ = stream.write_all(response.as_bytes());
            }
        });
        format!("http://{address}")
    }

    fn http(status: &str, content_type: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
    }

    #[tokio::test]
    async fn answers_map_to_failures_as_the_protocol_says() {
        let body = r#"((error . cursor-reset) (message . "pull again"))"#;
        let reset = ErrorBody {
            error: ErrorCode::CursorReset,
            message: "pull again".into(),
        };
        let cases = [
            (
                http("409 Conflict", CONTENT_TYPE, body),
                Failure::Error(reset),
            ),
            (
                http("500 Internal Server Error", "text/plain", "oops"),
                Failure::Status(500),
            ),
            (
                http("404 Not Found", "text/html", "<h1>no</h1>"),
                Failure::Status(404),
            ),
            (
                http("200 OK", CONTENT_TYPE, "((documents"),
                Failure::Status(502),
            ),
        ];
        let request = PullRequest {
            group: "g".into(),
            since: Some("e1.5".parse().unwrap()),
            limit: Some(3),
        };
        for (response, expected) in cases {
            let transport = HttpTransport::new(&canned(response.clone())).unwrap();
            let answer = transport.pull(&request).await;
            assert_eq!(answer, Err(expected), "{response}");
        }
        let page = r#"((documents . #(((key . "k") (version . 2) (value . (#(1 2)))))) (cursor . "e1.9") (more . #f))"#;
        let transport = HttpTransport::new(&canned(http("200 OK", CONTENT_TYPE, page)))
            .unwrap()
            .with_token("secret");
        let page = transport.pull(&request).await.unwrap();
        assert_eq!(page.documents[0].value.as_ref().unwrap().as_str(), "#(1 2)");
        assert_eq!(page.cursor.to_string(), "e1.9");
    }
}
