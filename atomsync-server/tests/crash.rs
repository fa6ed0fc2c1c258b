//! Kills the server binary (SIGKILL) while pushes are in flight, restarts it
//! on the same file and checks that every acknowledged write is there.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use atomsync_core::protocol::{ChangeResult, PullResponse, PushRequest, PushResponse};
use atomsync_core::sexpr;
use common::{ServerProcess, change, client, push_request};

/// Pushes `request`; `None` when the server died before answering.
async fn try_push(
    client: &reqwest::Client,
    url: &str,
    request: &PushRequest,
) -> Option<PushResponse> {
    let response = client
        .post(url)
        .header("content-type", atomsync_core::protocol::CONTENT_TYPE)
        .body(sexpr::to_string(request).unwrap())
        .send()
        .await
        .ok()?;
    assert_eq!(response.status(), 200);
    let body = response.bytes().await.ok()?;
    Some(sexpr::from_slice(&body).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_survives_a_sigkill() {
    const WRITERS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data.db");
    let db = db.to_str().unwrap().to_owned();
    let mut server = ServerProcess::start(&["--db", &db]);
    let url = server.url("/sync");
    let client = client();
    let acknowledged = Arc::new(AtomicUsize::new(0));

    // Writers push batches of new keys until the server dies, and keep what
    // was acknowledged and what was in flight.
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (client, url, acknowledged) =
                (client.clone(), url.clone(), Arc::clone(&acknowledged));
            tokio::spawn(async move {
                let mut acked: BTreeMap<String, u64> = BTreeMap::new();
                let deadline = Instant::now() + Duration::from_secs(60);
                for m in 1u64.. {
                    assert!(Instant::now() < deadline, "the server was never killed");
                    let changes = (0..5)
                        .map(|i| {
                            let key = format!("w{w}-m{m}-{i}");
                            change(m * 10 + i, &key, 0, Some(&format!("({w} {m} {i})")))
                        })
                        .collect();
                    let request = push_request("crash", &format!("writer-{w}"), changes);
                    match try_push(&client, &url, &request).await {
                        Some(response) => {
                            for result in response.results {
                                match result {
                                    ChangeResult::Accepted { key, version, .. } => {
                                        acked.insert(key, version);
                                    }
                                    other @ ChangeResult::Conflict { .. } => {
                                        panic!("unexpected {other:?}")
                                    }
                                }
                            }
                            acknowledged.fetch_add(1, Ordering::SeqCst);
                        }
                        None => return (acked, request),
                    }
                }
                unreachable!()
            })
        })
        .collect();

    // Kill it mid-stream, once a good number of pushes went through.
    while acknowledged.load(Ordering::SeqCst) < 200 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill();

    let mut results = Vec::new();
    for writer in writers {
        results.push(writer.await.unwrap());
    }
    let server = ServerProcess::start(&["--db", &db]);
    let response = client
        .get(server.url("/sync?group=crash&limit=5000"))
        .send()
        .await
        .unwrap();
    let page: PullResponse = sexpr::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert!(!page.more);
    let stored: BTreeMap<String, u64> = page
        .documents
        .iter()
        .map(|d| (d.key.clone(), d.version))
        .collect();
    let mut total = 0;
    for (acked, _) in &results {
        for (key, version) in acked {
            assert_eq!(
                stored.get(key),
                Some(version),
                "acknowledged {key} was lost"
            );
            total += 1;
        }
    }
    assert!(total >= 1000, "{total} acknowledged writes checked");

    // The pushes that were in flight: retried, they are applied exactly once
    // (or recognised, if they were committed before the kill).
    let url = server.url("/sync");
    for (_, in_flight) in &results {
        let response = try_push(&client, &url, in_flight).await.unwrap();
        for result in response.results {
            assert!(
                matches!(result, ChangeResult::Accepted { version: 1, .. }),
                "{result:?}"
            );
        }
    }
    let response = client
        .get(server.url("/sync?group=crash&limit=5000"))
        .send()
        .await
        .unwrap();
    let after: PullResponse = sexpr::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(after.documents.len(), total + 5 * WRITERS);
    assert_eq!(after.cursor.epoch, page.cursor.epoch);
}
