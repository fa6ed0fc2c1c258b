//! Stalled and greedy clients over real HTTP on 127.0.0.1: the timeouts and
//! caps of `atomsync_server::serve` and the router. Each test uses short
//! limits and bounds every wait, so a missing limit fails the test instead of
//! hanging it.

mod common;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use atomsync_core::engine::{Failure, FailureKind};
use atomsync_core::protocol::{CONTENT_TYPE, ErrorCode, PullResponse};
use atomsync_core::sexpr;
use atomsync_server::{RouterOptions, ServeOptions, SyncService, router_with_options};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{ServerProcess, change, client, decode_error, push_body};

/// `atomsync_server::serve` with `serve` and `router` options on an ephemeral
/// port, stopped when dropped.
struct Server {
    address: SocketAddr,
    service: SyncService,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(serve: ServeOptions, router: RouterOptions) -> Server {
        let service = common::service();
        let app = router_with_options(service.clone(), router);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let signal_service = service.clone();
        let task = tokio::spawn(
            atomsync_server::serve(listener, app, serve)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                    signal_service.shutdown();
                })
                .into_future(),
        );
        Server {
            address,
            service,
            stop: Some(stop),
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Stops the server gracefully; it must be done within 10 s.
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("the server did not stop")
            .unwrap()
            .unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads until the server closes the connection (or `limit` passes: then
/// panics). Returns what was read and when the connection closed.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, Instant) {
    let mut received = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the server kept the connection open for {limit:?}; received: {}",
        String::from_utf8_lossy(&received)
    );
    (
        String::from_utf8_lossy(&received).into_owned(),
        Instant::now(),
    )
}

/// The start of a 1 MB push: its headers and a few bytes of body.
fn stalled_upload() -> String {
    format!(
        "POST /sync HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {CONTENT_TYPE}\r\n\
         Content-Length: 1000000\r\n\r\n((group . \"g\")"
    )
}

/// The start of a request's headers, never finished.
const STALLED_HEADERS: &str = "GET /sync?group=g HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";

#[tokio::test]
async fn a_stalled_upload_is_answered_408_and_closed_within_the_body_timeout() {
    let server = Server::start(
        ServeOptions::default(),
        RouterOptions::default().body_timeout(Duration::from_millis(500)),
    )
    .await;
    let mut stream = TcpStream::connect(server.address).await.unwrap();
    let start = Instant::now();
    stream.write_all(stalled_upload().as_bytes()).await.unwrap();
    let (response, closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    let took = closed - start;
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    // A client retries it (a slow link is no mistake of the request).
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    let error = decode_error(body.as_bytes());
    assert_eq!(error.error, ErrorCode::Unavailable, "{response}");
    assert_eq!(
        Failure::Error(error).kind(),
        FailureKind::Temporary,
        "{response}"
    );
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );
    // Nothing was stored, and the server still answers.
    let pulled: PullResponse = sexpr::from_slice(
        &client()
            .get(server.url("/sync?group=g"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(pulled.documents.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn stalled_headers_are_closed_within_the_header_timeout() {
    let server = Server::start(
        ServeOptions::default().header_timeout(Duration::from_millis(500)),
        RouterOptions::default(),
    )
    .await;
    let mut streams = Vec::new();
    for _ in 0..20 {
        let mut stream = TcpStream::connect(server.address).await.unwrap();
        stream.write_all(STALLED_HEADERS.as_bytes()).await.unwrap();
        streams.push(stream);
    }
    let start = Instant::now();
    for stream in &mut streams {
        let (response, closed) = read_until_closed(stream, Duration::from_secs(10)).await;
        assert!(
            closed - start < Duration::from_secs(5),
            "closed after {:?}",
            closed - start
        );
        assert!(!response.contains("200 OK"), "{response}");
    }
    // A connection that sends nothing at all is cut the same way.
    let mut silent = TcpStream::connect(server.address).await.unwrap();
    read_until_closed(&mut silent, Duration::from_secs(10)).await;
    server.stop().await;
}

#[tokio::test]
async fn idle_connections_are_closed_but_event_streams_live_on_heartbeats() {
    let server = Server::start(
        ServeOptions::default().idle_timeout(Duration::from_millis(700)),
        RouterOptions::default().heartbeat(Duration::from_millis(150)),
    )
    .await;
    // A keep-alive connection that answered one request, then goes quiet.
    let mut stream = TcpStream::connect(server.address).await.unwrap();
    stream
        .write_all(b"GET /sync?group=g HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let start = Instant::now();
    let (response, closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        closed - start >= Duration::from_millis(600),
        "closed too early"
    );

    // An event stream quiet for three idle timeouts is still open: its
    // heartbeats keep it alive.
    let mut events = client()
        .get(server.url("/events?group=g"))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    let deadline = Instant::now() + Duration::from_millis(2100);
    let mut heartbeats = 0;
    while Instant::now() < deadline {
        let chunk = tokio::time::timeout(Duration::from_secs(5), events.chunk())
            .await
            .expect("no heartbeat in time")
            .expect("the stream failed")
            .expect("the stream was closed");
        heartbeats += std::str::from_utf8(&chunk)
            .unwrap()
            .matches("heartbeat")
            .count();
    }
    assert!(heartbeats >= 3, "{heartbeats} heartbeats");
    drop(events);
    server.stop().await;
}

#[tokio::test]
async fn the_connection_cap_holds_and_requests_are_served_once_slots_free() {
    const CAP: usize = 4;
    const STALLED: usize = 10;
    let server = Server::start(
        ServeOptions::default()
            .max_connections(CAP)
            .header_timeout(Duration::from_millis(800)),
        RouterOptions::default(),
    )
    .await;
    // Ten connections that never finish their headers: the operating system
    // queues those beyond the cap until the server accepts them.
    let start = Instant::now();
    let mut waits = Vec::new();
    for _ in 0..STALLED {
        let mut stream = TcpStream::connect(server.address).await.unwrap();
        stream.write_all(STALLED_HEADERS.as_bytes()).await.unwrap();
        waits.push(tokio::spawn(async move {
            read_until_closed(&mut stream, Duration::from_secs(20))
                .await
                .1
        }));
    }
    // A normal pull and push, queued behind them.
    let client = client();
    let pull = tokio::spawn({
        let url = server.url("/sync?group=g");
        let client = client.clone();
        async move { client.get(url).send().await.unwrap().status() }
    });
    let mut closed = Vec::new();
    for wait in waits {
        closed.push(wait.await.unwrap() - start);
    }
    closed.sort();
    // Only CAP connections were served at once: they were cut in waves of
    // CAP, one header timeout apart, not all together.
    assert!(
        closed[CAP] - closed[0] >= Duration::from_millis(500),
        "the cap did not hold: closing times {closed:?}"
    );
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(20), pull)
            .await
            .expect("the pull was never answered")
            .unwrap(),
        200
    );
    let body = push_body("g", "c", vec![change(1, "k", 0, Some("1"))]);
    // A new connection: the pull's, kept alive, is closed by the header
    // timeout while the stalled ones are cut, and a client reusing it at
    // that moment sees the close (hyper's IncompleteMessage), not an answer.
    let pushed = common::client()
        .post(server.url("/sync"))
        .header("content-type", CONTENT_TYPE)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(pushed.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn the_subscriber_cap_answers_503_with_retry_after_and_frees_slots() {
    let server = Server::start(
        ServeOptions::default(),
        RouterOptions::default()
            .max_subscribers(2)
            .retry_after(Duration::from_secs(3)),
    )
    .await;
    let client = client();
    let url = server.url("/events?group=g");
    let first = client.get(&url).send().await.unwrap();
    let second = client.get(&url).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(second.status(), 200);
    let refused = client.get(&url).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "3");
    let body = decode_error(&refused.bytes().await.unwrap());
    assert_eq!(body.error, ErrorCode::Unavailable);
    assert!(body.message.contains("event streams"), "{}", body.message);
    // Pulls and pushes are not affected.
    assert_eq!(
        client
            .get(server.url("/sync?group=g"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // A stream that ends gives its slot back.
    drop(first);
    let mut admitted = None;
    for _ in 0..100 {
        let response = client.get(&url).send().await.unwrap();
        if response.status() == 200 {
            admitted = Some(response);
            break;
        }
        assert_eq!(response.status(), 503);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(admitted.is_some(), "the slot was never given back");
    // Streams end at shutdown, so the server stops with both still open.
    let _ = server.service.cursor();
    server.stop().await;
    drop((second, admitted));
}

#[tokio::test]
async fn the_binary_applies_its_limit_flags() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data.db");
    let mut server = ServerProcess::start(&[
        "--db",
        db.to_str().unwrap(),
        "--body-timeout",
        "0.5",
        "--header-timeout",
        "0.5",
        "--max-subscribers",
        "1",
    ]);
    let mut upload = TcpStream::connect(server.address).await.unwrap();
    upload.write_all(stalled_upload().as_bytes()).await.unwrap();
    let mut headers = TcpStream::connect(server.address).await.unwrap();
    headers.write_all(STALLED_HEADERS.as_bytes()).await.unwrap();
    let (response, _) = read_until_closed(&mut upload, Duration::from_secs(10)).await;
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    read_until_closed(&mut headers, Duration::from_secs(10)).await;

    let client = client();
    let events = client
        .get(server.url("/events?group=g"))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    let refused = client
        .get(server.url("/events?group=g"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    // SIGTERM still stops it with the stream open.
    let status = server.terminate();
    assert!(status.success(), "{status}");
    drop(events);
}
