//! The PostgreSQL backend's figures for `BENCHMARKS.md`, each beside a
//! baseline measured in the same run:
//!
//! - push and pull through [`Store`] against raw SQL writing and reading the
//!   same rows on the same server;
//! - push throughput with 1 and with 3 instances on one database;
//! - live-update latency across instances against within one instance.
//!
//! `cargo bench -p atomsync-server --bench postgres` (starts a throwaway
//! cluster as the tests do, or uses `ATOMSYNC_TEST_POSTGRES_URL`).
#![allow(missing_docs)]

#[path = "../tests/common/pg.rs"]
#[allow(dead_code)]
mod pg;

use std::time::{Duration, Instant};

use atomsync_core::protocol::{Change, PullRequest, PushRequest};
use atomsync_core::sexpr::Raw;
use atomsync_server::{Credentials, Store, StoreOptions, SyncService};

const VALUE: &str = "((title . \"Buy milk\") (done . #f))";

fn push_request(client: &str, mutation: u64, keys: std::ops::Range<u64>) -> PushRequest {
    PushRequest {
        group: "g".to_owned(),
        client_id: client.to_owned(),
        changes: keys
            .enumerate()
            .map(|(i, k)| Change {
                mutation: mutation + i as u64,
                key: format!("k{k}"),
                base_version: 0,
                value: Some(Raw::from_text(VALUE).unwrap()),
            })
            .collect(),
        low_water: None,
        epoch: None,
    }
}

fn per_op(total: Duration, ops: u64) -> String {
    format!("{:.0} µs", total.as_secs_f64() * 1e6 / ops as f64)
}

/// Push of `batch` new documents, `rounds` times: through the store, and as
/// raw SQL doing the same row writes (counter row locked and advanced, one
/// mutation row and one document row per change, in one transaction).
fn push_and_pull(rounds: u64, batch: u64) {
    let url = pg::fresh_database();
    let mut store = Store::open(&url, StoreOptions::default()).unwrap();
    let start = Instant::now();
    for r in 0..rounds {
        store
            .push(&push_request(
                "c",
                r * batch + 1,
                r * batch..(r + 1) * batch,
            ))
            .unwrap();
    }
    let store_push = start.elapsed();

    let raw_url = pg::fresh_database();
    let mut client = postgres::Client::connect(&raw_url, postgres::NoTls).unwrap();
    client
        .batch_execute(
            "CREATE TABLE meta (id int PRIMARY KEY, seq bigint NOT NULL);
             INSERT INTO meta VALUES (1, 0);
             CREATE TABLE documents (grp text, key text, value text, version bigint,
                 seq bigint, changed_at bigint, PRIMARY KEY (grp, key));
             CREATE INDEX ON documents (grp, seq);
             CREATE TABLE mutations (client_id text, mutation bigint, grp text, key text,
                 version bigint, base_version bigint, value_hash bigint,
                 PRIMARY KEY (client_id, mutation));",
        )
        .unwrap();
    let lock = client
        .prepare("SELECT seq FROM meta WHERE id = 1 FOR UPDATE")
        .unwrap();
    let record = client
        .prepare("INSERT INTO mutations VALUES ('c', $1, 'g', $2, 1, 0, 0) ON CONFLICT DO NOTHING")
        .unwrap();
    let create = client
        .prepare(
            "INSERT INTO documents VALUES ('g', $1, $2, 1, $3, 0) ON CONFLICT (grp, key) DO NOTHING",
        )
        .unwrap();
    let start = Instant::now();
    for r in 0..rounds {
        let mut tx = client.transaction().unwrap();
        let mut seq: i64 = tx.query_one(&lock, &[]).unwrap().get(0);
        for k in r * batch..(r + 1) * batch {
            let key = format!("k{k}");
            seq += 1;
            tx.execute(&record, &[&(k as i64 + 1), &key]).unwrap();
            tx.execute(&create, &[&key, &VALUE, &seq]).unwrap();
        }
        tx.execute("UPDATE meta SET seq = $1 WHERE id = 1", &[&seq])
            .unwrap();
        tx.commit().unwrap();
    }
    let raw_push = start.elapsed();
    println!(
        "| push, {batch} change(s) per push, {rounds} pushes | {} per push | {} per push (raw SQL) |",
        per_op(store_push, rounds),
        per_op(raw_push, rounds)
    );

    // Pull everything in pages of 500.
    let pages = 20;
    let start = Instant::now();
    for _ in 0..pages {
        let mut since = None;
        loop {
            let page = store
                .pull(&PullRequest {
                    group: "g".to_owned(),
                    since,
                    limit: Some(500),
                })
                .unwrap();
            since = Some(page.cursor);
            if !page.more {
                break;
            }
        }
    }
    let store_pull = start.elapsed();
    let select = client
        .prepare("SELECT key, version, value, seq FROM documents WHERE grp = 'g' AND seq > $1 ORDER BY seq LIMIT 501")
        .unwrap();
    let start = Instant::now();
    for _ in 0..pages {
        let mut since = 0i64;
        loop {
            let mut tx = client
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .unwrap();
            let _latest: i64 = tx
                .query_one("SELECT seq FROM meta WHERE id = 1", &[])
                .unwrap()
                .get(0);
            let rows = tx.query(&select, &[&since]).unwrap();
            tx.commit().unwrap();
            let more = rows.len() > 500;
            if let Some(last) = rows.get(rows.len().min(500).saturating_sub(1)) {
                since = last.get(3);
            }
            if !more {
                break;
            }
        }
    }
    let raw_pull = start.elapsed();
    let documents = rounds * batch;
    println!(
        "| pull of {documents} documents in pages of 500 | {} per pull of all | {} per pull of all (raw SQL) |",
        per_op(store_pull, pages),
        per_op(raw_pull, pages)
    );
}

/// Pushes per second from 4 writers per instance for `seconds`.
async fn throughput(instances: usize, url: &str, seconds: u64) -> f64 {
    let services: Vec<_> = (0..instances)
        .map(|_| SyncService::new(Store::open(url, StoreOptions::default()).unwrap()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for (i, service) in services.iter().enumerate() {
        for w in 0..4 {
            let service = service.clone();
            tasks.push(tokio::spawn(async move {
                let client = format!("i{i}w{w}-{instances}");
                let mut n = 0u64;
                while Instant::now() < deadline {
                    n += 1;
                    let key = n * 1000 + (i * 4 + w) as u64;
                    service
                        .push(&Credentials::none(), push_request(&client, n, key..key + 1))
                        .await
                        .unwrap();
                }
                n
            }));
        }
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    for service in services {
        service.close().await;
    }
    total as f64 / seconds as f64
}

/// Median time from a push on `from` to the event on `to`.
async fn latency(from: &SyncService, to: &SyncService, rounds: u64, client: &str) -> Duration {
    let mut subscription = to.subscribe(&Credentials::none(), "g").await.unwrap();
    let mut last = subscription.recv().await.unwrap().seq;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut times = Vec::new();
    for n in 1..=rounds {
        let start = Instant::now();
        let response = from
            .push(
                &Credentials::none(),
                push_request(client, n, 1_000_000 + n..1_000_001 + n),
            )
            .await
            .unwrap();
        let target = response.cursor.seq;
        while last < target {
            last = subscription.recv().await.unwrap().seq;
        }
        times.push(start.elapsed());
    }
    times.sort();
    times[times.len() / 2]
}

fn main() {
    // `cargo test --all-targets` runs benches as tests (without `--bench`):
    // do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    println!("| measure | atomsync on PostgreSQL | baseline |");
    println!("|---|---|---|");
    push_and_pull(1000, 1);
    push_and_pull(100, 100);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let one = throughput(1, &pg::fresh_database(), 5).await;
        let three = throughput(3, &pg::fresh_database(), 5).await;
        println!(
            "| push throughput, 3 instances × 4 writers, 1 change per push | {three:.0} pushes/s | {one:.0} pushes/s (1 instance × 4 writers) |"
        );
        let url = pg::fresh_database();
        let a = SyncService::new(Store::open(&url, StoreOptions::default()).unwrap());
        let b = SyncService::new(Store::open(&url, StoreOptions::default()).unwrap());
        let across = latency(&a, &b, 200, "across").await;
        let within = latency(&a, &a, 200, "within").await;
        println!(
            "| push on A → `/events` subscriber on B (median of 200) | {:.2} ms | {:.2} ms (subscriber on A) |",
            across.as_secs_f64() * 1e3,
            within.as_secs_f64() * 1e3
        );
    });
}
