//! The cap on event streams seen from the browser (issue #13): a page whose
//! `EventSource` was refused with 503 (every slot taken) opens it again once
//! a slot is free. `EventSource` itself never retries after an HTTP error.

use std::time::{Duration, Instant};

use atomsync_tests::browser::{Browser, Demo};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Opens `/atomsync/events` on the demo; returns the status line and the
/// connection (which holds the slot while it is open).
async fn open_stream(port: u16) -> (String, BufReader<TcpStream>) {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the demo");
    stream
        .write_all(b"GET /atomsync/events?group=todo HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .expect("send");
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut status))
        .await
        .expect("an answer within 10 s")
        .expect("read");
    (status, reader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_refused_an_event_stream_takes_one_once_a_slot_is_free() {
    let demo = Demo::start_with_env(&[("ATOMSYNC_MAX_SUBSCRIBERS", "1")]).await;
    // Another client holds the only slot.
    let (status, holder) = open_stream(demo.port).await;
    assert!(status.contains(" 200 "), "{status}");
    let (status, _) = open_stream(demo.port).await;
    assert!(status.contains(" 503 "), "the cap of 1 holds: {status}");

    let browser = Browser::start().await;
    browser.open(&demo.url()).await;
    // The page's streams were refused meanwhile; it syncs by polling.
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(holder);

    // Once the slot is free, the page takes it: then other clients are
    // refused again. Probes give their slot back at once.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, probe) = open_stream(demo.port).await;
        drop(probe);
        if status.contains(" 503 ") {
            break;
        }
        assert!(status.contains(" 200 "), "{status}");
        assert!(
            Instant::now() < deadline,
            "the page never opened its event stream again"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    browser.close().await;
}
