//! Pull requests per second over loopback HTTP, against an empty axum handler
//! served and driven the same way.
//!
//! ```text
//! cargo bench -p atomsync-server --bench http -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Both servers run in this process on 127.0.0.1 with ephemeral ports; a
//! client loop with `CONCURRENCY` keep-alive connections sends requests and
//! counts the answers, in three interleaved rounds per case (best round
//! kept) that share the measurement time. Measured: a pull with an
//! up-to-date cursor (an empty page: a poll when nothing changed), a pull of
//! 10 documents (through the store thread and SQLite), and `GET /` answered
//! by `|| async {}`. The up-to-date pull is also served by
//! `atomsync_server::serve` (the binary's loop, with its timeouts and
//! connection cap) instead of `axum::serve`, to show what the limits cost.
#![allow(missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use atomsync_core::protocol::{Change, PushRequest};
use atomsync_core::sexpr::Raw;
use atomsync_server::{Credentials, ServeOptions, Store, SyncService, router};
use axum::Router;
use axum::routing::get;

const CONCURRENCY: usize = 16;

fn arg(name: &str, default: f64) -> Duration {
    let args: Vec<String> = std::env::args().collect();
    let value = args
        .iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(default);
    Duration::from_secs_f64(value)
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}")
}

/// Requests per second answered with 200 at `url` over `duration`.
async fn measure(client: &reqwest::Client, url: &str, duration: Duration) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (client, url) = (client.clone(), url.to_owned());
            let (stop, count) = (Arc::clone(&stop), Arc::clone(&count));
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let response = client.get(&url).send().await.unwrap();
                    assert_eq!(response.status(), 200);
                    let _body = response.bytes().await.unwrap();
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed();
    for task in tasks {
        task.await.unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64()
}

fn main() {
    // `cargo test --benches` runs bench binaries with no `--bench`: do nothing.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let warm_up = arg("--warm-up-time", 1.0);
    let measurement = arg("--measurement-time", 3.0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let service = SyncService::new(Store::open_in_memory().unwrap());
        let changes = (0..10)
            .map(|i| Change {
                mutation: i + 1,
                key: format!("item-{i}"),
                base_version: 0,
                value: Some(
                    Raw::from_text(&format!(
                        "((title . \"Buy item number {i}\") (done . #f) (tags . #(\"home\")))"
                    ))
                    .unwrap(),
                ),
            })
            .collect();
        let request = PushRequest {
            group: "todo".to_owned(),
            client_id: "bench".to_owned(),
            changes,
            low_water: None,
            epoch: None,
        };
        service.push(&Credentials::none(), request).await.unwrap();
        let cursor = service.cursor();

        let sync = serve(router(service.clone())).await;
        let limited = {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let app = router(service);
            tokio::spawn(async move {
                atomsync_server::serve(listener, app, ServeOptions::default())
                    .await
                    .unwrap();
            });
            format!("http://{address}")
        };
        let empty = serve(Router::new().route("/", get(|| async {}))).await;
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(CONCURRENCY)
            .build()
            .unwrap();

        let cases = [
            (
                "pull_empty_page",
                format!("{sync}/sync?group=todo&since={cursor}"),
            ),
            ("pull_10_documents", format!("{sync}/sync?group=todo")),
            ("empty_handler", format!("{empty}/")),
            (
                "pull_empty_page_with_limits",
                format!("{limited}/sync?group=todo&since={cursor}"),
            ),
        ];
        // Interleaved rounds, best of each: another process loading the
        // machine for a while then hurts every case alike.
        let rounds = 3;
        let mut best = vec![0.0f64; cases.len()];
        // `CASE=pull_10_documents` measures one case alone, for profiling.
        if let Ok(only) = std::env::var("CASE") {
            let url = &cases.iter().find(|c| c.0 == only).expect("unknown CASE").1;
            let rate = measure(&client, url, measurement).await;
            println!("{only}: {rate:.0}");
            return;
        }
        for (_, url) in &cases {
            measure(&client, url, warm_up).await;
        }
        for _ in 0..rounds {
            for (i, (_, url)) in cases.iter().enumerate() {
                let rate = measure(&client, url, measurement / rounds).await;
                best[i] = best[i].max(rate);
            }
        }
        for ((name, _), rate) in cases.iter().zip(&best) {
            println!("http/{name}: {rate:.0} requests/s (best of {rounds})");
        }
        let baseline = best[2];
        println!(
            "ratio pull_empty_page / empty_handler: {:.2}",
            best[0] / baseline
        );
        println!(
            "ratio pull_10_documents / empty_handler: {:.2}",
            best[1] / baseline
        );
        println!(
            "ratio pull_empty_page with atomsync_server::serve / with axum::serve: {:.2}",
            best[3] / best[0]
        );
    });
}
