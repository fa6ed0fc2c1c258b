//! The store's rules, on both backends: versions, conflicts, tombstones,
//! retries, purges, paging and cursors.

mod common;

use std::time::{Duration, SystemTime};

use atomsync_core::protocol::{
    self, Change, ChangeResult, Cursor, Document, PullRequest, PullResponse, PushRequest,
    PushResponse,
};
use atomsync_server::{Error, Result, Store, StoreOptions};
use common::{change, pg, raw};

fn push(store: &mut Store, client: &str, changes: Vec<Change>) -> Result<PushResponse> {
    store.push(&PushRequest {
        group: "g".to_owned(),
        client_id: client.to_owned(),
        changes,
        low_water: None,
        epoch: None,
    })
}

fn pull(store: &mut Store, since: Option<Cursor>, limit: Option<u32>) -> Result<PullResponse> {
    store.pull(&PullRequest {
        group: "g".to_owned(),
        since,
        limit,
    })
}

fn accepted_version(result: &ChangeResult) -> Option<u64> {
    match result {
        ChangeResult::Accepted { version, .. } => Some(*version),
        ChangeResult::Conflict { .. } => None,
    }
}

on_both_backends! {

    #[test]
    fn versions_count_up_and_stale_writes_conflict() {
        let mut store = store();
        let r = push(&mut store, "c", vec![change(1, "k", 0, Some("(a)"))]).unwrap();
        assert_eq!(accepted_version(&r.results[0]), Some(1));
        assert_eq!(r.cursor.seq, 1);
        let r = push(&mut store, "c", vec![change(2, "k", 1, Some("(b)"))]).unwrap();
        assert_eq!(accepted_version(&r.results[0]), Some(2));
        // Based on version 1 again: stale.
        let r = push(&mut store, "d", vec![change(1, "k", 1, Some("(c)"))]).unwrap();
        assert_eq!(
            r.results[0],
            ChangeResult::Conflict {
                mutation: 1,
                key: "k".to_owned(),
                current: Some(Document {
                    key: "k".to_owned(),
                    version: 2,
                    value: Some(raw("(b)")),
                }),
            }
        );
        assert_eq!(r.cursor.seq, 2, "a conflict takes no change number");
        // A new key based on a version that never existed.
        let r = push(&mut store, "d", vec![change(2, "new", 3, Some("1"))]).unwrap();
        assert!(matches!(
            &r.results[0],
            ChangeResult::Conflict { current: None, .. }
        ));
        let page = pull(&mut store, None, None).unwrap();
        assert_eq!(page.documents.len(), 1);
        assert_eq!(page.documents[0].value, Some(raw("(b)")));
    }

    #[test]
    fn the_largest_version_is_a_conflict_not_an_overflow() {
        let mut store = store();
        let max = protocol::MAX_VERSION;
        let r = push(&mut store, "c", vec![change(1, "k", max, Some("1"))]).unwrap();
        assert!(matches!(
            &r.results[0],
            ChangeResult::Conflict { current: None, .. }
        ));
        let r = push(&mut store, "c", vec![change(2, "k", max - 1, Some("1"))]).unwrap();
        assert!(matches!(
            &r.results[0],
            ChangeResult::Conflict { current: None, .. }
        ));
        assert_eq!(store.cursor().seq, 0);
    }

    #[test]
    fn deletes_are_tombstones_that_keep_their_version() {
        let mut store = store();
        push(&mut store, "c", vec![change(1, "k", 0, Some("1"))]).unwrap();
        let r = push(&mut store, "c", vec![change(2, "k", 1, None)]).unwrap();
        assert_eq!(accepted_version(&r.results[0]), Some(2));
        let page = pull(&mut store, None, None).unwrap();
        assert_eq!(
            page.documents,
            vec![Document {
                key: "k".to_owned(),
                version: 2,
                value: None
            }]
        );
        // Recreating the key must be based on the tombstone's version.
        let r = push(&mut store, "c", vec![change(3, "k", 0, Some("2"))]).unwrap();
        assert!(matches!(
            &r.results[0],
            ChangeResult::Conflict {
                current: Some(Document {
                    version: 2,
                    value: None,
                    ..
                }),
                ..
            }
        ));
        let r = push(&mut store, "c", vec![change(4, "k", 2, Some("2"))]).unwrap();
        assert_eq!(accepted_version(&r.results[0]), Some(3));
    }

    #[test]
    fn changes_of_a_batch_apply_in_order() {
        let mut store = store();
        let r = push(
            &mut store,
            "c",
            vec![
                change(1, "k", 0, Some("1")),
                change(2, "k", 1, Some("2")),
                change(3, "k", 1, Some("3")),
            ],
        )
        .unwrap();
        let versions: Vec<_> = r.results.iter().map(accepted_version).collect();
        assert_eq!(versions, [Some(1), Some(2), None]);
        assert_eq!(r.cursor.seq, 2);
    }

    #[test]
    fn retried_mutations_get_the_same_answer_and_apply_once() {
        let mut store = store();
        let batch = vec![change(1, "k", 0, Some("1")), change(2, "j", 5, Some("1"))];
        let first = push(&mut store, "c", batch.clone()).unwrap();
        // Someone else changes k meanwhile.
        push(&mut store, "other", vec![change(1, "k", 1, Some("9"))]).unwrap();
        let cursor = store.cursor();
        let retry = push(&mut store, "c", batch).unwrap();
        assert_eq!(retry.results, first.results);
        assert_eq!(retry.cursor, cursor, "nothing was applied");
        let page = pull(&mut store, None, None).unwrap();
        assert_eq!(page.documents.len(), 1);
        assert_eq!(page.documents[0].version, 2);
        // A refused change is answered with the document as it is now.
        push(&mut store, "other", vec![change(2, "j", 0, Some("7"))]).unwrap();
        let retry = push(&mut store, "c", vec![change(2, "j", 5, Some("1"))]).unwrap();
        assert!(matches!(
            &retry.results[0],
            ChangeResult::Conflict {
                current: Some(Document { version: 1, .. }),
                ..
            }
        ));
        // The same mutation number for another change is a reuse (the
        // client lost its state): another key, another value, another base.
        let cursor = store.cursor();
        for other in [
            change(1, "zzz", 0, Some("1")),
            change(1, "k", 0, Some("2")),
            change(1, "k", 0, None),
            change(1, "k", 3, Some("1")),
        ] {
            let err = push(&mut store, "c", vec![other.clone()]).unwrap_err();
            assert!(matches!(err, Error::MutationReused(_)), "{other:?}: {err}");
            assert_eq!(err.status(), http::StatusCode::CONFLICT);
            assert_eq!(err.body().error, protocol::ErrorCode::MutationReused);
        }
        assert_eq!(store.cursor(), cursor, "nothing was applied");
    }

    #[test]
    fn low_water_marks_forget_settled_answers() {
        let mut store = store();
        let mut request = PushRequest {
            group: "g".to_owned(),
            client_id: "c".to_owned(),
            changes: (1..=5)
                .map(|m| change(m, &format!("k{m}"), 0, Some("1")))
                .collect(),
            low_water: None,
            epoch: None,
        };
        store.push(&request).unwrap();
        push(&mut store, "d", vec![change(1, "x", 0, Some("1"))]).unwrap();
        assert_eq!(store.stats().unwrap().mutations, 6);
        request.changes = vec![change(6, "k6", 0, Some("1"))];
        request.low_water = Some(4);
        store.push(&request).unwrap();
        // 1 to 3 of `c` are forgotten; 4 to 6 and `d`'s are kept.
        assert_eq!(store.stats().unwrap().mutations, 4);
        // A mark alone, with no change, works too.
        request.changes.clear();
        request.low_water = Some(100);
        store.push(&request).unwrap();
        assert_eq!(store.stats().unwrap().mutations, 1);
        request.low_water = Some(protocol::MAX_VERSION + 1);
        assert!(matches!(store.push(&request), Err(Error::BadRequest(_))));
    }

    #[test]
    fn purged_tombstones_reset_cursors_that_could_miss_them() {
        let mut store = store();
        push(
            &mut store,
            "c",
            vec![
                change(1, "a", 0, Some("1")),
                change(2, "b", 0, Some("1")),
                change(8, "c", 0, Some("1")),
            ],
        )
        .unwrap();
        let before_delete = store.cursor();
        push(&mut store, "c", vec![change(3, "b", 1, None)]).unwrap();
        let after_delete = store.cursor();
        // Not old enough yet.
        let past = SystemTime::now() - Duration::from_secs(3600);
        assert_eq!(store.purge_tombstones(past).unwrap(), 0);
        let future = SystemTime::now() + Duration::from_secs(3600);
        assert_eq!(store.purge_tombstones(future).unwrap(), 1);
        assert_eq!(store.stats().unwrap().tombstones, 0);
        assert_eq!(store.cursor().floor, after_delete.seq);
        assert_eq!(
            store.cursor().seq,
            after_delete.seq + 1,
            "a purge takes a number"
        );
        // Before the deletion: reset. After it: fine.
        assert!(matches!(
            pull(&mut store, Some(before_delete), None),
            Err(Error::CursorReset(_))
        ));
        assert!(pull(&mut store, Some(after_delete), None).is_ok());
        // A pull from the beginning pages through below the floor.
        let first = pull(&mut store, None, Some(1)).unwrap();
        assert!(first.more && first.cursor.seq < first.cursor.floor);
        let rest = pull(&mut store, Some(first.cursor), None).unwrap();
        assert!(!rest.more);
        // `b` written again gets a version above its purged tombstone's (2),
        // whether based on 0 or on the tombstone.
        let r = push(&mut store, "c", vec![change(4, "b", 0, Some("2"))]).unwrap();
        assert_eq!(accepted_version(&r.results[0]), Some(3));
        push(&mut store, "c", vec![change(5, "b", 3, None)]).unwrap();
        store.purge_tombstones(future).unwrap();
        let r = push(&mut store, "c", vec![change(6, "b", 4, Some("3"))]).unwrap();
        assert_eq!(accepted_version(&r.results[0]), Some(5));
        // A base above every purged version, on an absent key: a conflict.
        let r = push(&mut store, "c", vec![change(7, "zz", 9, Some("3"))]).unwrap();
        assert_eq!(accepted_version(&r.results[0]), None);
        // An edit based on a version before a purged deletion does not undo
        // the deletion silently: it conflicts with the tombstone the purge
        // left, at the purge version, and takes that base to write again.
        push(&mut store, "c", vec![change(11, "b", 5, None)]).unwrap();
        store.purge_tombstones(future).unwrap();
        let r = push(&mut store, "c", vec![change(12, "b", 5, Some("4"))]).unwrap();
        assert_eq!(
            r.results[0],
            ChangeResult::Conflict {
                mutation: 12,
                key: "b".to_owned(),
                current: Some(Document {
                    key: "b".to_owned(),
                    version: 6,
                    value: None
                }),
            }
        );
        let r = push(&mut store, "c", vec![change(13, "b", 6, Some("4"))]).unwrap();
        assert_eq!(accepted_version(&r.results[0]), Some(7));
    }

    #[test]
    fn a_rejected_batch_changes_nothing() {
        let mut store = store();
        push(&mut store, "c", vec![change(1, "k", 0, Some("1"))]).unwrap();
        let before = store.cursor();
        // The second change reuses mutation 1 for another key: the whole
        // batch is refused, its first change included.
        let err = push(
            &mut store,
            "c",
            vec![change(2, "a", 0, Some("1")), change(1, "b", 0, Some("1"))],
        )
        .unwrap_err();
        assert!(matches!(err, Error::MutationReused(_)));
        assert_eq!(store.cursor(), before);
        assert_eq!(pull(&mut store, None, None).unwrap().documents.len(), 1);
        // Mutation 2 was not recorded either.
        let r = push(&mut store, "c", vec![change(2, "a", 0, Some("1"))]).unwrap();
        assert_eq!(accepted_version(&r.results[0]), Some(1));
    }

    #[test]
    fn invalid_pushes_are_bad_requests() {
        let mut store = store();
        let ok = PushRequest {
            group: "g".to_owned(),
            client_id: "c".to_owned(),
            changes: vec![change(1, "k", 0, Some("1"))],
            low_water: None,
            epoch: None,
        };
        type Mutate = Box<dyn Fn(&mut PushRequest)>;
        let cases: Vec<(&str, Mutate)> = vec![
            ("empty group", Box::new(|r| r.group.clear())),
            ("bad group", Box::new(|r| r.group = "a b".to_owned())),
            ("long group", Box::new(|r| r.group = "g".repeat(200))),
            ("empty client", Box::new(|r| r.client_id.clear())),
            ("long client", Box::new(|r| r.client_id = "c".repeat(200))),
            (
                "control client",
                Box::new(|r| r.client_id = "a\nb".to_owned()),
            ),
            ("empty key", Box::new(|r| r.changes[0].key.clear())),
            ("long key", Box::new(|r| r.changes[0].key = "k".repeat(600))),
            (
                "control key",
                Box::new(|r| r.changes[0].key = "\0".to_owned()),
            ),
            (
                "huge base",
                Box::new(|r| r.changes[0].base_version = u64::MAX),
            ),
            (
                "huge mutation",
                Box::new(|r| r.changes[0].mutation = u64::MAX),
            ),
            (
                "too many",
                Box::new(|r| r.changes = vec![change(1, "k", 0, None); 1001]),
            ),
        ];
        for (name, mutate) in cases {
            let mut request = ok.clone();
            mutate(&mut request);
            let err = store.push(&request).unwrap_err();
            assert!(matches!(err, Error::BadRequest(_)), "{name}: {err}");
        }
        assert_eq!(store.cursor().seq, 0);
        assert!(store.push(&ok).is_ok());
    }

    #[test]
    fn pull_pages_through_changes_in_order() {
        let mut store = store();
        for i in 0..10u64 {
            push(
                &mut store,
                "c",
                vec![change(i + 1, &format!("k{i}"), 0, Some("1"))],
            )
            .unwrap();
        }
        // Another group's changes take numbers but are not returned.
        store
            .push(&PushRequest {
                group: "other".to_owned(),
                client_id: "c".to_owned(),
                changes: vec![change(100, "x", 0, Some("1"))],
                low_water: None,
                epoch: None,
            })
            .unwrap();
        // k3 changes again: it moves to the end.
        push(&mut store, "c", vec![change(11, "k3", 1, Some("2"))]).unwrap();
        let mut keys = Vec::new();
        let mut since = None;
        loop {
            let page = pull(&mut store, since, Some(4)).unwrap();
            assert!(page.documents.len() <= 4);
            keys.extend(page.documents.iter().map(|d| d.key.clone()));
            since = Some(page.cursor.clone());
            if !page.more {
                assert_eq!(
                    page.cursor.seq, 12,
                    "the last page ends at the latest change"
                );
                break;
            }
        }
        let expected: Vec<String> = [0, 1, 2, 4, 5, 6, 7, 8, 9, 3]
            .iter()
            .map(|i| format!("k{i}"))
            .collect();
        assert_eq!(keys, expected);
        // Nothing new: an empty page with the same cursor.
        let page = pull(&mut store, since.clone(), None).unwrap();
        assert!(page.documents.is_empty() && !page.more);
        assert_eq!(Some(page.cursor), since);
    }

    #[test]
    fn pull_limits() {
        let mut store = store();
        let err = pull(&mut store, None, Some(0)).unwrap_err();
        assert!(matches!(err, Error::BadRequest(_)));
        let changes: Vec<_> = (0..1000)
            .map(|i| change(i + 1, &format!("k{i}"), 0, Some("1")))
            .collect();
        for chunk in 0..(protocol::MAX_PULL_LIMIT as usize / 1000 + 1) {
            let batch = changes
                .iter()
                .map(|c| Change {
                    mutation: c.mutation + 1000 * chunk as u64,
                    key: format!("{}-{chunk}", c.key),
                    ..c.clone()
                })
                .collect();
            push(&mut store, "c", batch).unwrap();
        }
        let page = pull(&mut store, None, None).unwrap();
        assert_eq!(page.documents.len(), protocol::DEFAULT_PULL_LIMIT as usize);
        assert!(page.more);
        let page = pull(&mut store, None, Some(u32::MAX)).unwrap();
        assert_eq!(page.documents.len(), protocol::MAX_PULL_LIMIT as usize);
        assert!(page.more);
        let err = store
            .pull(&PullRequest {
                group: "bad group".to_owned(),
                since: None,
                limit: None,
            })
            .unwrap_err();
        assert!(matches!(err, Error::BadRequest(_)));
    }

    #[test]
    fn pages_end_at_the_byte_budget() {
        let dir = tempfile::tempdir().unwrap();
        let db = location(dir.path());
        let options = StoreOptions::default().max_pull_bytes(1000);
        let mut store = Store::open(&db, options).unwrap();
        let big = format!("\"{}\"", "x".repeat(600));
        let changes = (0..5)
            .map(|i| change(i + 1, &format!("k{i}"), 0, Some(&big)))
            .collect();
        push(&mut store, "c", changes).unwrap();
        let page = pull(&mut store, None, None).unwrap();
        assert_eq!(page.documents.len(), 2, "600 + 600 bytes reach the budget");
        assert!(page.more);
        let page = pull(&mut store, Some(page.cursor), Some(1)).unwrap();
        assert_eq!(page.documents.len(), 1);
        // A single document larger than the budget still makes a page.
        let options = StoreOptions::default().max_pull_bytes(10);
        drop(store);
        let mut store = Store::open(&db, options).unwrap();
        let page = pull(&mut store, None, None).unwrap();
        assert_eq!(page.documents.len(), 1);
        assert!(page.more);
    }

    #[test]
    fn foreign_or_future_cursors_reset() {
        let mut store = store();
        push(&mut store, "c", vec![change(1, "k", 0, Some("1"))]).unwrap();
        let foreign = Cursor::new("0123abcd", 1);
        assert!(matches!(
            pull(&mut store, Some(foreign), None),
            Err(Error::CursorReset(_))
        ));
        let future = Cursor::new(store.epoch().to_owned(), 2);
        assert!(matches!(
            pull(&mut store, Some(future), None),
            Err(Error::CursorReset(_))
        ));
        let current = store.cursor();
        assert!(pull(&mut store, Some(current), None).is_ok());
    }

    #[test]
    fn values_with_control_characters_and_unicode_round_trip() {
        let mut store = store();
        let text = "((s . \"nul \\x0; tab \\x9; é 😀\") (c . #\\x0))";
        push(&mut store, "c", vec![change(1, "k é 😀", 0, Some(text))]).unwrap();
        let page = pull(&mut store, None, None).unwrap();
        assert_eq!(page.documents[0].key, "k é 😀");
        assert_eq!(page.documents[0].value, Some(raw(text)));
    }

    #[test]
    fn epoch_data_and_purge_floor_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let db = location(dir.path());
        let mut store = Store::open(&db, StoreOptions::default()).unwrap();
        push(&mut store, "c", vec![change(1, "k", 0, None)]).unwrap();
        store.purge_tombstones(SystemTime::now() + Duration::from_secs(60)).unwrap();
        let (epoch, cursor) = (store.epoch().to_owned(), store.cursor());
        assert_eq!(cursor.floor, 1);
        drop(store);
        let mut store = Store::open(&db, StoreOptions::default()).unwrap();
        assert_eq!(store.epoch(), epoch);
        assert_eq!(store.new_epoch_reason(), None);
        assert_eq!(store.latest_cursor().unwrap(), cursor);
    }

    #[test]
    fn a_declared_restore_gives_a_new_epoch_once_per_label() {
        let dir = tempfile::tempdir().unwrap();
        let db = location(dir.path());
        let first = Store::open(&db, StoreOptions::default()).unwrap();
        let epoch = first.epoch().to_owned();
        drop(first);
        let declare = |label: &str| StoreOptions::default().new_epoch(Some(label.to_owned()));
        let store = Store::open(&db, declare("restore-1")).unwrap();
        assert_ne!(store.epoch(), epoch);
        let reason = store.new_epoch_reason().unwrap();
        assert!(reason.contains("restore-1") && reason.contains("operator"), "{reason}");
        let epoch = store.epoch().to_owned();
        drop(store);
        let store = Store::open(&db, declare("restore-1")).unwrap();
        assert_eq!(store.epoch(), epoch, "the same label again changes nothing");
        assert_eq!(store.new_epoch_reason(), None);
        drop(store);
        let store = Store::open(&db, declare("restore-2")).unwrap();
        assert_ne!(store.epoch(), epoch);
    }
}

/// A copy of a PostgreSQL database (as a restore makes one) is another
/// history: it gets a new epoch, and cursors of the original reset.
#[test]
fn a_restored_copy_of_a_postgresql_database_gets_a_new_epoch() {
    let url = pg::fresh_database();
    let mut original = Store::open(&url, StoreOptions::default()).unwrap();
    push(&mut original, "c", vec![change(1, "k", 0, Some("1"))]).unwrap();
    let cursor = original.cursor();
    drop(original);
    let (base, name) = url.rsplit_once('/').unwrap();
    let copy = format!("{name}_restored");
    pg::sql(
        &format!("{base}/postgres"),
        &format!("CREATE DATABASE {copy} TEMPLATE {name}"),
    );
    let mut restored = Store::open(format!("{base}/{copy}"), StoreOptions::default()).unwrap();
    assert_ne!(restored.epoch(), cursor.epoch);
    assert!(
        restored
            .new_epoch_reason()
            .unwrap()
            .contains("another copy")
    );
    assert!(matches!(
        pull(&mut restored, Some(cursor), None),
        Err(Error::CursorReset(_))
    ));
    // The documents came along.
    assert_eq!(pull(&mut restored, None, None).unwrap().documents.len(), 1);
}

#[test]
fn a_postgresql_url_that_does_not_parse_is_a_configuration_error() {
    let err = Store::open("postgres://u@h:notaport/db", StoreOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
}

/// Servers starting together on a new database migrate it once and agree on
/// its epoch.
#[test]
fn instances_starting_at_once_migrate_once_and_share_the_epoch() {
    let url = pg::fresh_database();
    let epochs: Vec<String> = std::thread::scope(|scope| {
        let opening: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    Store::open(&url, StoreOptions::default())
                        .unwrap()
                        .epoch()
                        .to_owned()
                })
            })
            .collect();
        opening.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert!(epochs.iter().all(|e| *e == epochs[0]), "{epochs:?}");
    // A database migrated by a newer server is refused.
    pg::sql(&url, "UPDATE atomsync_schema SET version = version + 1");
    let err = Store::open(&url, StoreOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
}

/// A database restored under a running server (here: replaced by a copy
/// under the same name, its connections cut) is noticed when the server
/// reconnects: a new epoch, and cursors of the old history reset.
#[test]
fn a_database_restored_under_a_running_store_gets_a_new_epoch_on_reconnect() {
    let url = pg::fresh_database();
    let mut store = Store::open(&url, StoreOptions::default()).unwrap();
    push(&mut store, "c", vec![change(1, "k", 0, Some("1"))]).unwrap();
    let cursor = store.cursor();
    let (base, name) = url.rsplit_once('/').unwrap();
    let admin = format!("{base}/postgres");
    pg::sql(
        &admin,
        &format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"),
    );
    pg::sql(
        &admin,
        &format!("CREATE DATABASE {name}_copy TEMPLATE {name}"),
    );
    pg::sql(&admin, &format!("DROP DATABASE {name} WITH (FORCE)"));
    pg::sql(
        &admin,
        &format!("ALTER DATABASE {name}_copy RENAME TO {name}"),
    );
    // The first request finds the connection cut (503), the next reconnects.
    let mut answer = pull(&mut store, Some(cursor.clone()), None);
    for _ in 0..50 {
        if !matches!(answer, Err(Error::Unavailable)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        answer = pull(&mut store, Some(cursor.clone()), None);
    }
    assert!(matches!(answer, Err(Error::CursorReset(_))), "{answer:?}");
    assert_ne!(store.epoch(), cursor.epoch);
    assert_eq!(pull(&mut store, None, None).unwrap().documents.len(), 1);
}
