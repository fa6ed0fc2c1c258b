//! Several servers on one PostgreSQL database: live updates across them,
//! paging readers that never miss a change, an instance killed mid-push, the
//! listener's connection cut, PostgreSQL restarted under load.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use atomsync_core::protocol::{ChangeResult, Cursor, PullRequest, PullResponse, PushResponse};
use atomsync_core::sexpr;
use atomsync_server::{Error, Store, StoreOptions, SyncService};
use common::{ServerProcess, anyone, change, client, http_push, pg, push_request};

fn instance(url: &str) -> SyncService {
    SyncService::new(Store::open(url, StoreOptions::default()).unwrap())
}

/// Pushes one change; its accepted version.
async fn put(service: &SyncService, client: &str, mutation: u64, key: &str, base: u64) -> u64 {
    let value = format!("{mutation}");
    let response = service
        .push(
            &anyone(),
            push_request("g", client, vec![change(mutation, key, base, Some(&value))]),
        )
        .await
        .unwrap();
    match &response.results[0] {
        ChangeResult::Accepted { version, .. } => *version,
        other @ ChangeResult::Conflict { .. } => panic!("refused: {other:?}"),
    }
}

/// Pulls from `since` to the end in pages of `limit`, into `seen`.
async fn catch_up(
    service: &SyncService,
    since: Option<Cursor>,
    limit: u32,
    seen: &mut BTreeMap<String, u64>,
) -> Cursor {
    let mut since = since;
    loop {
        let page: PullResponse = service
            .pull(
                &anyone(),
                PullRequest {
                    group: "g".to_owned(),
                    since: since.clone(),
                    limit: Some(limit),
                },
            )
            .await
            .unwrap();
        for document in page.documents {
            seen.insert(document.key, document.version);
        }
        since = Some(page.cursor.clone());
        if !page.more {
            return page.cursor;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_through_one_instance_reaches_the_subscribers_of_another_within_100_ms() {
    let url = pg::fresh_database();
    let a = instance(&url);
    let b = instance(&url);
    let mut subscription = b.subscribe(&anyone(), "g").await.unwrap();
    assert_eq!(subscription.recv().await.unwrap().seq, 0);
    // Let B's listener connect (its first connection pokes only if a change
    // came before it).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut latencies = Vec::new();
    for m in 1..=20 {
        let start = Instant::now();
        put(&a, "c", m, &format!("k{m}"), 0).await;
        loop {
            let cursor = tokio::time::timeout(Duration::from_secs(5), subscription.recv())
                .await
                .expect("the change reaches the other instance")
                .unwrap();
            if cursor.seq >= m {
                break;
            }
        }
        latencies.push(start.elapsed());
    }
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    eprintln!(
        "push on A to event on B: median {median:?}, max {:?}",
        latencies.last().unwrap()
    );
    assert!(median < Duration::from_millis(100), "{latencies:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_on_two_instances_and_a_paging_reader_on_a_third_never_miss_a_change() {
    let url = pg::fresh_database();
    let writers = [instance(&url), instance(&url)];
    let reader = instance(&url);
    let done = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (w, service) in writers.iter().enumerate() {
        let service = service.clone();
        tasks.push(tokio::spawn(async move {
            let mut versions = BTreeMap::new();
            for m in 1..=120u64 {
                let key = format!("w{w}-{}", m % 7);
                let base = versions.get(&key).copied().unwrap_or(0);
                let version = put(&service, &format!("writer-{w}"), m, &key, base).await;
                versions.insert(key, version);
            }
            versions
        }));
    }
    let reading = {
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut seen = BTreeMap::new();
            let mut cursor = None;
            loop {
                let finished = done.load(Ordering::Acquire);
                cursor = Some(catch_up(&reader, cursor, 3, &mut seen).await);
                if finished {
                    return seen;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let mut expected = BTreeMap::new();
    for task in tasks {
        expected.extend(task.await.unwrap());
    }
    done.store(true, Ordering::Release);
    let seen = reading.await.unwrap();
    assert_eq!(seen, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_during_pushes_loses_nothing_acknowledged() {
    let url = pg::fresh_database();
    let mut doomed = ServerProcess::start(&["--db", &url]);
    let survivor = ServerProcess::start(&["--db", &url]);
    let http = client();
    let push_url = doomed.url("/sync");
    let pushing = tokio::spawn(async move {
        let mut acknowledged = Vec::new();
        for m in 1..=100_000u64 {
            let request = push_request("g", "c", vec![change(m, &format!("k{m}"), 0, Some("1"))]);
            let sent = http
                .post(&push_url)
                .header("content-type", atomsync_core::protocol::CONTENT_TYPE)
                .body(sexpr::to_string(&request).unwrap())
                .send()
                .await;
            let Ok(response) = sent else { break };
            if response.status() != 200 {
                break;
            }
            let Ok(body) = response.bytes().await else {
                break;
            };
            let answer: PushResponse = sexpr::from_slice(&body).unwrap();
            assert!(matches!(answer.results[0], ChangeResult::Accepted { .. }));
            acknowledged.push(format!("k{m}"));
        }
        acknowledged
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    doomed.kill();
    let acknowledged = pushing.await.unwrap();
    assert!(acknowledged.len() > 10, "{} pushes", acknowledged.len());
    // Everything acknowledged is there, read through the other instance.
    let mut seen = BTreeMap::new();
    let mut since = String::new();
    loop {
        let response = client()
            .get(survivor.url(&format!("/sync?group=g&since={since}&limit=1000")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let page: PullResponse = sexpr::from_slice(&response.bytes().await.unwrap()).unwrap();
        for document in page.documents {
            seen.insert(document.key, document.version);
        }
        since = page.cursor.to_string();
        if !page.more {
            break;
        }
    }
    for key in &acknowledged {
        assert!(seen.contains_key(key), "{key} was acknowledged and is lost");
    }
    // And the survivor goes on taking pushes.
    let response = http_push(
        &client(),
        &survivor.url("/sync"),
        None,
        &push_request("g", "other", vec![change(1, "after", 0, Some("2"))]),
    )
    .await;
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_updates_resume_after_the_listening_connection_is_terminated() {
    let url = pg::fresh_database();
    let a = instance(&url);
    let b = instance(&url);
    let mut subscription = b.subscribe(&anyone(), "g").await.unwrap();
    subscription.recv().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    put(&a, "c", 1, "before", 0).await;
    let cursor = tokio::time::timeout(Duration::from_secs(5), subscription.recv())
        .await
        .expect("an event before the cut")
        .unwrap();
    assert_eq!(cursor.seq, 1);
    let mut seen = BTreeMap::new();
    let mut since = catch_up(&b, None, 2, &mut seen).await;
    // Cut both instances' listening connections, and push meanwhile: that
    // notification may be lost, the poke after reconnecting is not.
    pg::sql(
        &url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = 'atomsync-listener' AND datname = current_database()",
    );
    put(&a, "c", 2, "during", 0).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let cursor = tokio::time::timeout_at(deadline.into(), subscription.recv())
            .await
            .expect("a poke once the listener is back")
            .unwrap();
        if cursor.seq >= 2 {
            break;
        }
    }
    since = catch_up(&b, Some(since), 2, &mut seen).await;
    // Live again.
    put(&a, "c", 3, "after", 0).await;
    loop {
        let cursor = tokio::time::timeout(Duration::from_secs(5), subscription.recv())
            .await
            .expect("live updates resume")
            .unwrap();
        if cursor.seq >= 3 {
            break;
        }
    }
    catch_up(&b, Some(since), 2, &mut seen).await;
    let keys: Vec<_> = seen.keys().cloned().collect();
    assert_eq!(keys, ["after", "before", "during"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_restart_under_load_is_503_meanwhile_and_recovers_alone() {
    let cluster = pg::Cluster::start();
    let url = pg::create_database(
        &format!("postgres://postgres@127.0.0.1:{}", cluster.port),
        "postgres",
    );
    let service = instance(&url);
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let service = service.clone();
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let (mut acknowledged, mut unavailable) = (Vec::new(), 0);
            let mut m = 0;
            while !stop.load(Ordering::Acquire) {
                m += 1;
                let request = push_request("g", "c", vec![change(m, &format!("k{m}"), 0, None)]);
                match service.push(&anyone(), request).await {
                    Ok(_) => acknowledged.push(format!("k{m}")),
                    Err(Error::Unavailable) => {
                        unavailable += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            (acknowledged, unavailable)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::block_in_place(|| cluster.stop());
    // Meanwhile: 503.
    let during = service
        .pull(
            &anyone(),
            PullRequest {
                group: "g".to_owned(),
                since: None,
                limit: None,
            },
        )
        .await;
    assert!(matches!(during, Err(Error::Unavailable)), "{during:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::block_in_place(|| cluster.restart());
    // Recovers alone: pushes go through again.
    let deadline = Instant::now() + Duration::from_secs(15);
    let marker = loop {
        match service
            .push(
                &anyone(),
                push_request("g", "probe", vec![change(1, "probe", 0, None)]),
            )
            .await
        {
            Ok(response) => break response,
            Err(Error::Unavailable) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no recovery: {e}"),
        }
    };
    assert!(matches!(marker.results[0], ChangeResult::Accepted { .. }));
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Release);
    let (acknowledged, unavailable) = load.await.unwrap();
    assert!(unavailable > 0, "the load saw the outage");
    let mut seen = BTreeMap::new();
    catch_up(&service, None, 1000, &mut seen).await;
    for key in &acknowledged {
        assert!(seen.contains_key(key), "{key} was acknowledged and is lost");
    }
}

/// Over HTTP, between two server processes: `/events` on B carries a push
/// made through A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_stream_of_one_process_carries_pushes_made_through_another() {
    let url = pg::fresh_database();
    let a = ServerProcess::start(&["--db", &url]);
    let b = ServerProcess::start(&["--db", &url]);
    let mut events = client().get(b.url("/events?group=g")).send().await.unwrap();
    assert_eq!(events.status(), 200);
    let mut text = String::new();
    while !text.contains("data: ") {
        let chunk = events
            .chunk()
            .await
            .unwrap()
            .expect("the stream stays open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let response = http_push(
        &client(),
        &a.url("/sync"),
        None,
        &push_request("g", "c", vec![change(1, "k", 0, Some("1"))]),
    )
    .await;
    assert_eq!(response.status(), 200);
    let pushed: PushResponse = sexpr::from_slice(&response.bytes().await.unwrap()).unwrap();
    let expected = format!("data: {}", pushed.cursor);
    tokio::time::timeout(Duration::from_secs(5), async {
        while !text.contains(&expected) {
            let chunk = events
                .chunk()
                .await
                .unwrap()
                .expect("the stream stays open");
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no event for {expected} on B: {text}"));
}
