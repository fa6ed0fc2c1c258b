//! `serve`'s graceful shutdown ends the routes' `/events` streams by itself:
//! a server with a browser listening stops at once, without a call of
//! `SyncService::shutdown`.

use std::future::IntoFuture;
use std::time::Duration;

use atomsync_server::{ServeOptions, Store, SyncService};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_ends_event_streams_on_its_graceful_shutdown() {
    let service = SyncService::new(Store::open_in_memory().unwrap());
    let app: axum::Router = axum::Router::new().nest("/atomsync", atomsync_server::router(service));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        atomsync_server::serve(listener, app, ServeOptions::default())
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .into_future(),
    );

    // A listener, as a browser's EventSource: the stream is open.
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /atomsync/events?group=todo HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    let mut buf = [0; 1024];
    while !String::from_utf8_lossy(&received).contains("event: cursor") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("the stream's first event")
            .unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&buf[..n]);
    }

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stops within 5 s with a stream open")
        .unwrap()
        .unwrap();
    // The stream ended cleanly: the connection reads to its end.
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.map(|_| rest)
    })
    .await
    .expect("the stream ends");
    assert!(rest.is_ok(), "{rest:?}");
}
