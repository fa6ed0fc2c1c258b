//! Concurrent clients over real HTTP (the router served in-process on
//! 127.0.0.1 with an ephemeral port).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use atomsync_core::protocol::{ChangeResult, Cursor, Document, PullResponse, PushResponse};
use atomsync_core::sexpr;
use atomsync_server::router;
use common::{InProcessServer, change, client, http_push, push_request};

on_both_backends! {
    async fn pull_page(
        client: &reqwest::Client,
        server: &InProcessServer,
        group: &str,
        since: Option<&Cursor>,
        limit: u32,
    ) -> PullResponse {
        let since = since.map(ToString::to_string).unwrap_or_default();
        let response = client
            .get(server.url(&format!("/sync?group={group}&since={since}&limit={limit}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        sexpr::from_slice(&response.bytes().await.unwrap()).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fifty_concurrent_pushes_on_one_key_accept_exactly_one() {
        let dir = tempfile::tempdir().unwrap();
        let service = file_service(&dir.path().join("db"));
        let server = InProcessServer::start(router(service.clone()), service.clone()).await;
        let client = client();
        let url = server.url("/sync");

        let barrier = Arc::new(tokio::sync::Barrier::new(50));
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let (client, url, barrier) = (client.clone(), url.clone(), Arc::clone(&barrier));
                tokio::spawn(async move {
                    let value = format!("((writer . {i}))");
                    let request = push_request(
                        "race",
                        &format!("client-{i}"),
                        vec![change(1, "k", 0, Some(&value))],
                    );
                    barrier.wait().await;
                    let response = http_push(&client, &url, None, &request).await;
                    assert_eq!(response.status(), 200);
                    let response: PushResponse =
                        sexpr::from_slice(&response.bytes().await.unwrap()).unwrap();
                    (i, response.results.into_iter().next().unwrap())
                })
            })
            .collect();
        let mut winners = Vec::new();
        let mut conflicts = Vec::new();
        for task in tasks {
            match task.await.unwrap() {
                (i, ChangeResult::Accepted { version, .. }) => {
                    assert_eq!(version, 1);
                    winners.push(i);
                }
                (_, ChangeResult::Conflict { current, .. }) => conflicts.push(current.unwrap()),
            }
        }
        assert_eq!(winners.len(), 1, "exactly one push wins: {winners:?}");
        let winner = winners[0];
        let expected = Document {
            key: "k".to_owned(),
            version: 1,
            value: Some(common::raw(&format!("((writer . {winner}))"))),
        };
        assert_eq!(conflicts.len(), 49);
        assert!(conflicts.iter().all(|current| *current == expected));
        let page = pull_page(&client, &server, "race", None, 10).await;
        assert_eq!(page.documents, vec![expected]);
        assert_eq!(page.cursor.seq, 1);
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pulls_alongside_a_stream_of_writes_never_miss_one() {
        const WRITERS: usize = 4;
        const PUSHES: u64 = 60;
        let dir = tempfile::tempdir().unwrap();
        let service = file_service(&dir.path().join("db"));
        let server = Arc::new(InProcessServer::start(router(service.clone()), service.clone()).await);
        let client = client();
        let url = server.url("/sync");
        let writing = Arc::new(AtomicBool::new(true));

        // Writers: each creates keys and rewrites some, and remembers the last
        // version of each key it was told about.
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (client, url) = (client.clone(), url.clone());
                tokio::spawn(async move {
                    let mut versions: BTreeMap<String, u64> = BTreeMap::new();
                    for m in 1..=PUSHES {
                        // Every third push rewrites an earlier key of this writer.
                        let key = if m % 3 == 0 {
                            format!("w{w}-{}", m / 3)
                        } else {
                            format!("w{w}-{m}")
                        };
                        let base = versions.get(&key).copied().unwrap_or(0);
                        let value = format!("({w} {m})");
                        let request = push_request(
                            "feed",
                            &format!("writer-{w}"),
                            vec![change(m, &key, base, Some(&value))],
                        );
                        let response = http_push(&client, &url, None, &request).await;
                        assert_eq!(response.status(), 200);
                        let response: PushResponse =
                            sexpr::from_slice(&response.bytes().await.unwrap()).unwrap();
                        match &response.results[0] {
                            ChangeResult::Accepted { version, .. } => {
                                versions.insert(key, *version);
                            }
                            other @ ChangeResult::Conflict { .. } => {
                                panic!("writer {w} has no competitors: {other:?}")
                            }
                        }
                    }
                    versions
                })
            })
            .collect();

        // Readers: pull in small pages as fast as they can while the writers
        // write, then once more after them.
        let readers: Vec<_> = (0..2)
            .map(|r| {
                let (client, server, writing) =
                    (client.clone(), Arc::clone(&server), Arc::clone(&writing));
                tokio::spawn(async move {
                    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
                    let mut cursor: Option<Cursor> = None;
                    let mut pulls = 0;
                    loop {
                        let done = !writing.load(Ordering::SeqCst);
                        loop {
                            let page =
                                pull_page(&client, &server, "feed", cursor.as_ref(), 3 + r).await;
                            pulls += 1;
                            if let Some(previous) = &cursor {
                                assert!(page.cursor.seq >= previous.seq, "cursors never go back");
                            }
                            for doc in page.documents {
                                let before = seen.insert(doc.key.clone(), doc.version);
                                assert!(before.is_none_or(|v| v < doc.version), "versions only grow");
                            }
                            cursor = Some(page.cursor);
                            if !page.more {
                                break;
                            }
                        }
                        if done {
                            return (seen, pulls);
                        }
                    }
                })
            })
            .collect();

        let mut expected = BTreeMap::new();
        for writer in writers {
            expected.extend(writer.await.unwrap());
        }
        writing.store(false, Ordering::SeqCst);
        for reader in readers {
            let (seen, pulls) = reader.await.unwrap();
            assert!(
                pulls > 10,
                "the reader pulled while the writers wrote ({pulls})"
            );
            assert_eq!(seen, expected, "the reader saw every change");
        }
        assert_eq!(
            service.cursor().seq,
            WRITERS as u64 * PUSHES,
            "every push took one change number"
        );
        Arc::into_inner(server).unwrap().stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn subscribers_get_a_poke_for_every_burst_of_changes() {
        let service = service();
        let credentials = common::anyone();
        let mut subscription = service.subscribe(&credentials, "g").await.unwrap();
        assert_eq!(subscription.recv().await.unwrap().seq, 0);
        let pusher = {
            let service = service.clone();
            tokio::spawn(async move {
                for m in 1..=20 {
                    service
                        .push(
                            &common::anyone(),
                            push_request("g", "c", vec![change(m, &format!("k{m}"), 0, None)]),
                        )
                        .await
                        .unwrap();
                }
            })
        };
        let mut last = 0;
        while last < 20 {
            let cursor = tokio::time::timeout(Duration::from_secs(5), subscription.recv())
                .await
                .expect("a poke for each change")
                .unwrap();
            assert!(cursor.seq > last);
            last = cursor.seq;
        }
        pusher.await.unwrap();
    }
}
