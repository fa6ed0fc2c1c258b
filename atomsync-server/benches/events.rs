//! How many `/events` subscribers one server holds, and how long a poke takes
//! to reach all of them, against a plain axum server-sent-events fan-out.
//!
//! ```text
//! cargo bench -p atomsync-server --bench events [-- --subscribers 250,1000,4000]
//! ```
//!
//! Everything runs in this process on 127.0.0.1 with ephemeral ports (so
//! each subscriber costs two file descriptors: client and server side). For
//! each count N, and for each server in turn:
//!
//! - **atomsync**: `atomsync_server::serve` with `router_with_options`
//!   (`max_subscribers = N`, connections cap above it); a poke is an HTTP
//!   push of one change (committed to an in-memory SQLite store, then
//!   announced to the group's streams).
//! - **baseline**: `axum::serve` with two handlers: `GET /events`, an SSE
//!   stream of a `tokio::sync::broadcast` channel, and `POST /poke`, which
//!   sends on it. The same transport and fan-out, without a store, groups or
//!   limits.
//!
//! N raw TCP clients open `/events` and read their first event; then
//! `ROUNDS` pokes are sent one at a time, each timed from just before the
//! POST until every one of the N clients has read the new event (the
//! latency to all, i.e. the slowest client) and until half of them have
//! (the median). Then, for atomsync, one more subscriber must be refused
//! with 503 (the cap holds). Every wait is bounded; the bench asserts only
//! that every event arrived and the cap held, never a time.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use atomsync_core::protocol::{CONTENT_TYPE, Change, PushRequest};
use atomsync_core::sexpr::{self, Raw};
use atomsync_server::{RouterOptions, ServeOptions, Store, SyncService, router_with_options};
use axum::Router;
use axum::response::sse::{Event, Sse};
use axum::routing::{get, post};
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc};

const ROUNDS: u64 = 7;
const WAIT: Duration = Duration::from_secs(60);

fn counts() -> Vec<usize> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--subscribers")
        .and_then(|i| args.get(i + 1))
        .map(|list| list.split(',').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_else(|| vec![250, 1000, 4000])
}

/// The soft limit on open files ("Max open files" in /proc/self/limits).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// One subscriber: opens the stream, reports its first event, then the time
/// each later event arrives.
async fn subscriber(address: SocketAddr, ready: mpsc::Sender<()>, events: mpsc::Sender<Instant>) {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream
        .write_all(b"GET /events?group=g HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .expect("request");
    let mut lines = BufReader::new(stream).lines();
    let mut first = true;
    while let Ok(Some(line)) = lines.next_line().await {
        if line.starts_with("HTTP/1.1 ") && !line.starts_with("HTTP/1.1 200") {
            panic!("subscriber refused: {line}");
        }
        if line.contains("data:") {
            if first {
                first = false;
                let _ = ready.send(()).await;
            } else if events.send(Instant::now()).await.is_err() {
                return;
            }
        }
    }
}

/// Sends one request on a new connection and returns the status line.
async fn request(address: SocketAddr, head: &str, body: &[u8]) -> String {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let text = format!(
        "{head}\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(text.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("no answer in time")
        .unwrap();
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

struct Figures {
    connect: Duration,
    rss_per_subscriber_kib: f64,
    all_median: Duration,
    all_best: Duration,
    half_median: Duration,
}

/// Connects `n` subscribers to `address`, then times `ROUNDS` pokes.
async fn measure(
    address: SocketAddr,
    n: usize,
    poke: impl Fn(u64) -> (String, Vec<u8>),
) -> Figures {
    let rss_before = rss_kib();
    let start = Instant::now();
    let (ready_tx, mut ready) = mpsc::channel(n);
    let (events_tx, mut events) = mpsc::channel(n * 2);
    let tasks: Vec<_> = (0..n)
        .map(|_| tokio::spawn(subscriber(address, ready_tx.clone(), events_tx.clone())))
        .collect();
    drop((ready_tx, events_tx));
    for _ in 0..n {
        tokio::time::timeout(WAIT, ready.recv())
            .await
            .expect("subscribers did not all connect in time")
            .expect("a subscriber failed");
    }
    let connect = start.elapsed();
    let rss_per_subscriber_kib = rss_kib().saturating_sub(rss_before) as f64 / n as f64;
    let mut all = Vec::new();
    let mut half = Vec::new();
    for round in 1..=ROUNDS {
        let (head, body) = poke(round);
        let sent = Instant::now();
        let status = request(address, &head, &body).await;
        assert!(status.contains("200"), "poke refused: {status}");
        let mut arrivals = Vec::with_capacity(n);
        for _ in 0..n {
            let at = tokio::time::timeout(WAIT, events.recv())
                .await
                .expect("an event did not arrive in time")
                .expect("a subscriber ended");
            arrivals.push(at - sent);
        }
        arrivals.sort();
        all.push(*arrivals.last().unwrap());
        half.push(arrivals[n / 2]);
    }
    for task in tasks {
        task.abort();
    }
    all.sort();
    half.sort();
    Figures {
        connect,
        rss_per_subscriber_kib,
        all_median: all[all.len() / 2],
        all_best: all[0],
        half_median: half[half.len() / 2],
    }
}

fn push_body(round: u64) -> Vec<u8> {
    sexpr::to_vec(&PushRequest {
        group: "g".to_owned(),
        client_id: "bench".to_owned(),
        changes: vec![Change {
            mutation: round,
            key: "k".to_owned(),
            base_version: round - 1,
            value: Some(Raw::from_text(&round.to_string()).unwrap()),
        }],
        low_water: None,
        epoch: None,
    })
    .unwrap()
}

async fn atomsync(n: usize) -> Figures {
    let service = SyncService::new(Store::open_in_memory().unwrap());
    let app: Router =
        router_with_options(service.clone(), RouterOptions::default().max_subscribers(n));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let limits = ServeOptions::default().max_connections(n + 64);
    let signal_service = service.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        atomsync_server::serve(listener, app, limits)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
                signal_service.shutdown();
            })
            .await
    });
    let figures = measure(address, n, |round| {
        (
            format!("POST /sync HTTP/1.1\r\nContent-Type: {CONTENT_TYPE}"),
            push_body(round),
        )
    })
    .await;
    // The cap holds: with N streams open again (slots come back as the
    // server notices the closed ones: retry), one more is refused.
    let deadline = Instant::now() + WAIT;
    let mut opened = 0;
    while opened < n {
        assert!(
            Instant::now() < deadline,
            "slots were not given back in time"
        );
        if request_status_only(address).await.contains("200") {
            opened += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let refused = request(address, "GET /events?group=g HTTP/1.1", b"").await;
    assert!(refused.contains("503"), "the cap did not hold: {refused}");
    let _ = stop.send(());
    tokio::time::timeout(WAIT, server)
        .await
        .expect("the server did not stop")
        .unwrap()
        .unwrap();
    figures
}

/// Opens a stream and keeps its connection open (leaked until the process
/// ends, as held subscribers); returns the status line.
async fn request_status_only(address: SocketAddr) -> String {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream
        .write_all(b"GET /events?group=g HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    tokio::time::timeout(WAIT, reader.read_line(&mut line))
        .await
        .expect("no answer in time")
        .unwrap();
    if line.contains("200") {
        // Keep it open until the server shuts down.
        tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = reader.read_to_end(&mut sink).await;
        });
    }
    line
}

async fn baseline(n: usize) -> Figures {
    let (tx, _) = broadcast::channel::<u64>(1024);
    let events = {
        let tx = tx.clone();
        move || {
            let rx = tx.subscribe();
            async move {
                let first = futures_util::stream::once(async {
                    Ok::<_, Infallible>(Event::default().data("0"))
                });
                let rest = futures_util::stream::unfold(rx, |mut rx| async move {
                    let seq = rx.recv().await.ok()?;
                    Some((Ok(Event::default().data(seq.to_string())), rx))
                });
                Sse::new(first.chain(rest))
            }
        }
    };
    let poke = {
        let tx = tx.clone();
        move |body: String| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(body.len() as u64);
                "ok"
            }
        }
    };
    let app = Router::new()
        .route("/events", get(events))
        .route("/poke", post(poke));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let figures = measure(address, n, |round| {
        (
            "POST /poke HTTP/1.1".to_owned(),
            round.to_string().into_bytes(),
        )
    })
    .await;
    server.abort();
    figures
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    // `cargo bench` without `--bench` runs benches as tests: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let limit = open_files_limit();
    println!(
        "open files limit (ulimit -n): {}",
        limit.map_or("unknown".to_owned(), |l| l.to_string())
    );
    runtime.block_on(async {
        for n in counts() {
            if let Some(limit) = limit {
                // Client and server sides both live in this process.
                if (2 * n + 64) as u64 > limit {
                    println!("{n} subscribers: skipped, needs {} descriptors", 2 * n + 64);
                    continue;
                }
            }
            let ours = atomsync(n).await;
            let base = baseline(n).await;
            println!(
                "{n} subscribers: atomsync poke to all {} (best {}, half {}), connect all {}, \
                 {:.1} KiB RSS each (both sides) | baseline poke to all {} (best {}, half {}), \
                 connect all {}, {:.1} KiB | ratio (baseline/atomsync, median to all) {:.2}x",
                ms(ours.all_median),
                ms(ours.all_best),
                ms(ours.half_median),
                ms(ours.connect),
                ours.rss_per_subscriber_kib,
                ms(base.all_median),
                ms(base.all_best),
                ms(base.half_median),
                ms(base.connect),
                base.rss_per_subscriber_kib,
                base.all_median.as_secs_f64() / ours.all_median.as_secs_f64(),
            );
        }
    });
    // Held subscribers and server tasks end with the runtime.
    runtime.shutdown_timeout(Duration::from_secs(1));
}
