//! The IndexedDB storage adapter, and the hook over it, in a real browser
//! (headless Chromium via wasm-bindgen-test-runner; see scripts/test.sh).

#![cfg(target_arch = "wasm32")]

use std::collections::BTreeMap;

use atomsync_core::engine::{Batch, Engine, Meta, PendingChange, StoredDoc};
use atomsync_core::protocol::Cursor;
use atomsync_core::sexpr::Raw;
use atomsync_leptos::browser::{random_id, sleep};
use atomsync_leptos::idb_store::{LocalDb, SCHEMA_VERSION};
use atomsync_leptos::{
    Endpoint, SyncedAtom, UseSyncedAtomOptions, provide_atomsync, use_synced_atom_with_options,
};
use leptos::prelude::*;
use wasm_bindgen::JsValue;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

fn meta(group: &str) -> Meta {
    Meta {
        group: group.to_owned(),
        client_id: "device/todo".to_owned(),
        cursor: Some(Cursor::new("e1".to_owned(), 7)),
        resyncing: false,
        next_mutation: 3,
        next_conflict: 1,
    }
}

fn raw(text: &str) -> Raw {
    Raw::from_text(text).unwrap()
}

#[wasm_bindgen_test]
async fn batches_persist_and_load_back_exactly() {
    let app = format!("test-{}", random_id(6));
    let db = LocalDb::open(&app).await.unwrap();
    let (nothing, problems) = db.load("todo").await.unwrap();
    assert!(nothing.is_none() && problems.is_empty());

    let mut batch = Batch {
        meta: Some(meta("todo")),
        ..Batch::default()
    };
    let doc = StoredDoc {
        value: Some(raw(
            "((title . \"milk\") (tags . #(\"a\" \"b\")) (w . 5e-324))",
        )),
        version: 2,
        epoch: None,
    };
    batch.docs.insert("k1".to_owned(), Some(doc.clone()));
    batch.docs.insert("gone".to_owned(), Some(doc.clone()));
    let change = PendingChange {
        mutation: 2,
        key: "k2".to_owned(),
        base_version: 0,
        value: Some(raw("(x . -0.0)")),
    };
    batch.pending.insert(2, Some(change.clone()));
    db.apply("todo", &batch, &[], None).unwrap().await.unwrap();

    // Another group in the same database stays apart.
    let mut other = Batch {
        meta: Some(meta("settings")),
        ..Batch::default()
    };
    other.docs.insert("k1".to_owned(), Some(doc.clone()));
    db.apply("settings", &other, &[], None)
        .unwrap()
        .await
        .unwrap();

    // Removals.
    let mut removal = Batch::default();
    removal.docs.insert("gone".to_owned(), None);
    db.apply("todo", &removal, &[], None)
        .unwrap()
        .await
        .unwrap();

    let (snapshot, problems) = db.load("todo").await.unwrap();
    let snapshot = snapshot.expect("stored");
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(snapshot.meta, meta("todo"));
    assert_eq!(snapshot.docs, BTreeMap::from([("k1".to_owned(), doc)]));
    assert_eq!(snapshot.pending, BTreeMap::from([(2, change)]));
    // The snapshot restores an engine that shows the pending write.
    let engine = Engine::restore(snapshot).unwrap();
    assert_eq!(engine.pending_len(), 1);
    assert_eq!(engine.get("k2").map(Raw::as_str), Some("(x . -0.0)"));
}

#[wasm_bindgen_test]
async fn bad_records_are_reported_and_kept() {
    let app = format!("test-{}", random_id(6));
    let db = LocalDb::open(&app).await.unwrap();
    let mut batch = Batch {
        meta: Some(meta("todo")),
        ..Batch::default()
    };
    batch.docs.insert(
        "ok".to_owned(),
        Some(StoredDoc {
            value: Some(raw("1")),
            version: 1,
            epoch: None,
        }),
    );
    db.apply("todo", &batch, &[], None).unwrap().await.unwrap();
    drop(db);

    // Corrupt records written behind the adapter's back.
    let script = format!(
        "return new Promise((resolve, reject) => {{ \
           const open = indexedDB.open('atomsync:{app}'); \
           open.onsuccess = () => {{ \
             const tx = open.result.transaction('docs', 'readwrite'); \
             tx.objectStore('docs').put(42, ['todo', 'number']); \
             tx.objectStore('docs').put('(unbalanced', ['todo', 'text']); \
             tx.oncomplete = () => {{ open.result.close(); resolve(true); }}; \
             tx.onerror = () => reject(tx.error); }}; }})"
    );
    let promise: js_sys::Promise = js_sys::Function::new_no_args(&script)
        .call0(&JsValue::NULL)
        .unwrap()
        .into();
    wasm_bindgen_futures::JsFuture::from(promise).await.unwrap();

    let db = LocalDb::open(&app).await.unwrap();
    let (snapshot, problems) = db.load("todo").await.unwrap();
    let snapshot = snapshot.unwrap();
    assert_eq!(snapshot.docs.len(), 1, "the good record loads");
    assert_eq!(
        problems.len(),
        2,
        "both bad records are reported: {problems:?}"
    );
    // Nothing was deleted: loading again reports them again.
    let (_, again) = db.load("todo").await.unwrap();
    assert_eq!(again.len(), 2);
    assert_eq!(SCHEMA_VERSION, 2);
}

/// A hook over the app's IndexedDB with no server, ready.
async fn ready_atom(app: &str) -> (SyncedAtom<String>, Owner) {
    let _ = any_spawner::Executor::init_wasm_bindgen();
    let owner = Owner::new_root(None);
    owner.set();
    provide_atomsync(app.to_owned());
    let atom = use_synced_atom_with_options::<String>(
        "todo",
        UseSyncedAtomOptions::default().endpoint(Endpoint::None),
    );
    // Ready, and leading: the atom of the previous "page" may still hold
    // the group's lock for a moment after its owner was cleaned up.
    while !(atom.status().ready.get_untracked() && atom.status().leader.get_untracked()) {
        sleep(5).await;
    }
    (atom, owner)
}

#[wasm_bindgen_test]
async fn a_bulk_update_through_the_hook_persists_and_reloads() {
    let app = format!("test-{}", random_id(6));
    let (atom, owner) = ready_atom(&app).await;
    atom.update(|docs| {
        for i in 0..500 {
            docs.insert(format!("k{i:03}"), format!("value {i}"));
        }
    });
    atom.update(|docs| {
        docs.remove("k007");
        docs.insert("k008", "changed".to_owned());
    });
    assert_eq!(atom.with_untracked(|d| d.len()), 499);
    assert_eq!(atom.status().last_error.get_untracked(), None);
    owner.cleanup();

    // A fresh atom (a reload) reads back what the two writes stored.
    let (atom, owner) = ready_atom(&app).await;
    assert_eq!(atom.status().last_error.get_untracked(), None);
    assert_eq!(atom.with_untracked(|d| d.len()), 499);
    assert!(atom.with_untracked(|d| !d.contains_key("k007")));
    assert_eq!(
        atom.with_untracked(|d| d.get("k008").cloned()),
        Some("changed".to_owned())
    );
    // 500 inserts, then two changes queued behind k007's and k008's first
    // ones (those might have been in flight).
    assert_eq!(atom.status().pending.get_untracked(), 502);
    // Mutation numbers continue after the restored queue.
    atom.insert("new", "after reload".to_owned());
    assert_eq!(atom.status().pending.get_untracked(), 503);
    owner.cleanup();
}

/// The persistence contract (issue #9, findings 1 and 2): a write whose
/// IndexedDB transaction aborts is never pushed; the engine goes back to
/// what is stored, the signal shows it again, the loss is reported, and
/// a reload finds a consistent state whose numbers go on from there.
#[cfg(feature = "fault-injection")]
#[wasm_bindgen_test]
async fn a_write_whose_transaction_aborts_is_never_pushed_and_is_reported() {
    use atomsync_leptos::testing::{fail_next_commits, pushed_keys};
    let app = format!("test-{}", random_id(6));
    let _ = any_spawner::Executor::init_wasm_bindgen();
    let errors = std::rc::Rc::new(std::cell::RefCell::new(Vec::<String>::new()));
    let open = || async {
        let owner = Owner::new_root(None);
        owner.set();
        provide_atomsync(app.clone());
        // Syncs through the server functions of the test page's origin,
        // which has none: every push fails, after being recorded.
        let errors = errors.clone();
        let atom = use_synced_atom_with_options::<String>(
            "todo",
            UseSyncedAtomOptions::default()
                .poll_interval_ms(50)
                .on_error(move |e| errors.borrow_mut().push(e.to_owned())),
        );
        while !(atom.status().ready.get_untracked() && atom.status().leader.get_untracked()) {
            sleep(5).await;
        }
        (atom, owner)
    };
    let (atom, owner) = open().await;
    // The first write's transaction aborts. The loop is woken at once and
    // idle (no failure, no backoff yet): it must wait for the commit.
    fail_next_commits(1);
    atom.insert("lost", "never stored".to_owned());
    assert_eq!(
        atom.with_untracked(|d| d.get("lost").cloned()),
        Some("never stored".to_owned())
    );
    let deadline = atomsync_leptos::browser::now_ms() + 5000;
    while atom.with_untracked(|d| d.contains_key("lost")) {
        assert!(atomsync_leptos::browser::now_ms() < deadline, "not undone");
        sleep(10).await;
    }
    assert!(
        errors
            .borrow()
            .iter()
            .any(|e| e.contains("1 unsaved change")),
        "{:?}",
        errors.borrow()
    );
    assert_eq!(atom.status().pending.get_untracked(), 0);
    // The next write is stored and pushed (and fails: no server).
    atom.insert("kept", "stored".to_owned());
    let deadline = atomsync_leptos::browser::now_ms() + 5000;
    while !pushed_keys().contains(&"kept".to_owned()) {
        assert!(
            !pushed_keys().contains(&"lost".to_owned()),
            "pushed before it was stored: {:?}",
            pushed_keys()
        );
        assert!(
            atomsync_leptos::browser::now_ms() < deadline,
            "never pushed"
        );
        sleep(10).await;
    }
    assert!(
        !pushed_keys().contains(&"lost".to_owned()),
        "pushed before it was stored: {:?}",
        pushed_keys()
    );
    atom.insert("after", "stored too".to_owned());
    sleep(100).await;
    owner.cleanup();

    let (atom, owner) = open().await;
    let keys: Vec<String> = atom.with_untracked(|d| d.keys().cloned().collect());
    assert_eq!(keys, ["after", "kept"]);
    assert_eq!(atom.status().pending.get_untracked(), 2);
    owner.cleanup();
}

/// The persistence contract for pulls (issue #9, finding 2): the first
/// page's IndexedDB transaction aborts. No later page is asked for before
/// that page is stored, so the stored cursor never passes documents that
/// are not stored: the page is pulled again, and a reload without any
/// server finds every document.
#[cfg(feature = "fault-injection")]
#[wasm_bindgen_test]
async fn a_pull_page_whose_transaction_aborts_is_pulled_again() {
    use atomsync_core::engine::testing::FakeServer;
    use atomsync_leptos::testing::{fail_next_commits, serve_with, stop_serving};
    // Two pages: the default page holds 500 documents.
    let mut server = FakeServer::new();
    for i in 0..600 {
        server.put("todo", &format!("k{i:03}"), Some(raw(&format!("\"v{i}\""))));
    }
    serve_with(server);
    let app = format!("test-{}", random_id(6));
    let _ = any_spawner::Executor::init_wasm_bindgen();
    let errors = std::rc::Rc::new(std::cell::RefCell::new(Vec::<String>::new()));
    let owner = Owner::new_root(None);
    owner.set();
    provide_atomsync(app.clone());
    // The first write transaction after loading is the first page's.
    fail_next_commits(1);
    let atom = {
        let errors = errors.clone();
        use_synced_atom_with_options::<String>(
            "todo",
            UseSyncedAtomOptions::default()
                .poll_interval_ms(50)
                .on_error(move |e| errors.borrow_mut().push(e.to_owned())),
        )
    };
    let deadline = atomsync_leptos::browser::now_ms() + 10_000;
    while atom.with_untracked(|d| d.len()) < 600 || atom.status().syncing.get_untracked() {
        assert!(
            atomsync_leptos::browser::now_ms() < deadline,
            "not every page arrived: {} documents, errors {:?}",
            atom.with_untracked(|d| d.len()),
            errors.borrow()
        );
        sleep(10).await;
    }
    assert!(
        errors
            .borrow()
            .iter()
            .any(|e| e.contains("IndexedDB write failed")),
        "the failure was injected and reported: {:?}",
        errors.borrow()
    );
    sleep(100).await;
    owner.cleanup();
    stop_serving();

    // A reload with no server: every document was stored.
    let (atom, owner) = ready_atom(&app).await;
    assert_eq!(atom.with_untracked(|d| d.len()), 600);
    assert_eq!(
        atom.with_untracked(|d| d.get("k000").cloned()),
        Some("v0".to_owned())
    );
    owner.cleanup();
}

/// Two atoms of one app and group in one page behave as two tabs: the
/// second follows the first (the group's Web Lock is taken).
async fn leader_and_follower(
    app: &str,
) -> ((SyncedAtom<String>, Owner), (SyncedAtom<String>, Owner)) {
    let _ = any_spawner::Executor::init_wasm_bindgen();
    let open = |app: String| {
        let owner = Owner::new_root(None);
        owner.set();
        provide_atomsync(app);
        let atom = use_synced_atom_with_options::<String>(
            "todo",
            UseSyncedAtomOptions::default().poll_interval_ms(50),
        );
        (atom, owner)
    };
    let leader = open(app.to_owned());
    while !(leader.0.status().ready.get_untracked() && leader.0.status().leader.get_untracked()) {
        sleep(5).await;
    }
    let follower = open(app.to_owned());
    while !follower.0.status().ready.get_untracked() {
        sleep(5).await;
    }
    assert!(!follower.0.status().leader.get_untracked());
    (leader, follower)
}

/// Waits (up to 5 s) until `check` holds.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = atomsync_leptos::browser::now_ms() + 5_000;
    while !check() {
        assert!(atomsync_leptos::browser::now_ms() < deadline, "{what}");
        sleep(10).await;
    }
}

/// Issue #9, finding 4: a follower edits a value the leader has changed
/// meanwhile (the leader's own write, not yet announced to the follower).
/// The follower's write carries what it saw, so the leader reports a
/// conflict and keeps the newer value (server wins by default), instead of
/// overwriting it silently.
#[cfg(feature = "fault-injection")]
#[wasm_bindgen_test]
async fn a_follower_write_on_a_stale_value_is_a_reported_conflict() {
    use atomsync_core::engine::ConflictCause;
    use atomsync_core::engine::testing::FakeServer;
    use atomsync_leptos::testing::{serve_with, stop_serving, with_fake_server};
    let mut server = FakeServer::new();
    server.put("todo", "milk", Some(raw("\"1\"")));
    serve_with(server);
    let app = format!("test-{}", random_id(6));
    let ((leader, leader_owner), (follower, follower_owner)) = leader_and_follower(&app).await;
    eventually("both show the server's value", || {
        leader.with_untracked(|d| d.get("milk").cloned()) == Some("1".to_owned())
            && follower.with_untracked(|d| d.get("milk").cloned()) == Some("1".to_owned())
    })
    .await;
    // No await between the two: the follower has not heard of "3".
    leader.insert("milk", "3".to_owned());
    follower.insert("milk", "2".to_owned());
    eventually("the conflict to be reported", || {
        !leader.status().conflicts.get_untracked().is_empty()
    })
    .await;
    let conflicts = leader.status().conflicts.get_untracked();
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(conflicts[0].cause, ConflictCause::Concurrent);
    assert_eq!(conflicts[0].local, Some(raw("\"2\"")));
    assert_eq!(conflicts[0].server, Some(raw("\"3\"")));
    eventually("everything to be pushed and shown", || {
        leader.status().pending.get_untracked() == 0
            && follower.with_untracked(|d| d.get("milk").cloned()) == Some("3".to_owned())
    })
    .await;
    let on_server = with_fake_server(|s| s.document("todo", "milk")).flatten();
    assert_eq!(on_server.and_then(|d| d.value), Some(raw("\"3\"")));
    // The follower sees the report too.
    eventually("the follower to show the conflict", || {
        follower.status().conflicts.get_untracked().len() == 1
    })
    .await;
    follower_owner.cleanup();
    leader_owner.cleanup();
    stop_serving();
}

/// A follower's write on the current value is applied by the leader and
/// pushed (through the IndexedDB outbox), and shown by both.
#[cfg(feature = "fault-injection")]
#[wasm_bindgen_test]
async fn a_follower_write_reaches_the_server_through_the_leader() {
    use atomsync_core::engine::testing::FakeServer;
    use atomsync_leptos::testing::{serve_with, stop_serving, with_fake_server};
    serve_with(FakeServer::new());
    let app = format!("test-{}", random_id(6));
    let ((leader, leader_owner), (follower, follower_owner)) = leader_and_follower(&app).await;
    follower.insert("bread", "from the follower".to_owned());
    eventually("the leader to push it", || {
        with_fake_server(|s| s.document("todo", "bread"))
            .flatten()
            .is_some_and(|d| d.value == Some(raw("\"from the follower\"")))
    })
    .await;
    assert_eq!(
        leader.with_untracked(|d| d.get("bread").cloned()),
        Some("from the follower".to_owned())
    );
    assert!(leader.status().conflicts.get_untracked().is_empty());
    follower_owner.cleanup();
    leader_owner.cleanup();
    stop_serving();
}

/// Issue #9, finding 7: a document larger than a push may carry is refused
/// alone, with a report naming it, and the signal shows the stored value
/// again; every other key keeps syncing.
#[cfg(feature = "fault-injection")]
#[wasm_bindgen_test]
async fn an_oversized_document_is_refused_alone_and_reported() {
    use atomsync_core::engine::testing::FakeServer;
    use atomsync_leptos::testing::{serve_with, stop_serving, with_fake_server};
    serve_with(FakeServer::new());
    let app = format!("test-{}", random_id(6));
    let _ = any_spawner::Executor::init_wasm_bindgen();
    let errors = std::rc::Rc::new(std::cell::RefCell::new(Vec::<String>::new()));
    let owner = Owner::new_root(None);
    owner.set();
    provide_atomsync(app.clone());
    let atom = {
        let errors = errors.clone();
        use_synced_atom_with_options::<String>(
            "todo",
            UseSyncedAtomOptions::default()
                .poll_interval_ms(50)
                .on_error(move |e| errors.borrow_mut().push(e.to_owned())),
        )
    };
    eventually("ready", || atom.status().ready.get_untracked()).await;
    atom.insert("small", "fits".to_owned());
    atom.update(|docs| {
        docs.insert("huge", "x".repeat(5 << 20));
        docs.insert("next", "fits too".to_owned());
    });
    eventually("the others to be pushed", || {
        with_fake_server(|s| {
            s.document("todo", "small").is_some() && s.document("todo", "next").is_some()
        }) == Some(true)
    })
    .await;
    assert!(
        with_fake_server(|s| s.document("todo", "huge"))
            .flatten()
            .is_none()
    );
    assert!(
        errors
            .borrow()
            .iter()
            .any(|e| e.contains("\"huge\"") && e.contains("refused")),
        "{:?}",
        errors.borrow()
    );
    assert!(atom.with_untracked(|d| !d.contains_key("huge")));
    assert_eq!(atom.status().pending.get_untracked(), 0);
    owner.cleanup();
    stop_serving();
}

/// Issue #9, finding 6: a 401 while the token signal is still `None` (before
/// login) is not a halt for the page's life: the status says the atom waits
/// for a token, and the token, once set, ends it without a reload.
#[cfg(feature = "fault-injection")]
#[wasm_bindgen_test]
async fn a_401_before_login_ends_when_the_token_arrives() {
    use atomsync_core::engine::testing::FakeServer;
    use atomsync_leptos::HaltReason;
    use atomsync_leptos::testing::{require_token, serve_with, stop_serving, with_fake_server};
    serve_with(FakeServer::new());
    require_token(Some("secret"));
    let app = format!("test-{}", random_id(6));
    let _ = any_spawner::Executor::init_wasm_bindgen();
    let owner = Owner::new_root(None);
    owner.set();
    provide_atomsync(app.clone());
    let token = RwSignal::new(None::<String>);
    let atom = use_synced_atom_with_options::<String>(
        "todo",
        UseSyncedAtomOptions::default()
            .poll_interval_ms(50)
            .token(token),
    );
    eventually("ready", || atom.status().ready.get_untracked()).await;
    atom.insert("milk", "before login".to_owned());
    eventually("the halt to wait for a token", || {
        atom.status()
            .halted
            .get_untracked()
            .is_some_and(|halt| halt.reason == HaltReason::WaitingForToken)
    })
    .await;
    assert_eq!(atom.status().pending.get_untracked(), 1);
    // Still waiting a while later: nothing is sent without a token.
    sleep(200).await;
    assert!(atom.status().halted.get_untracked().is_some());
    token.set(Some("secret".to_owned()));
    eventually("the write to reach the server", || {
        with_fake_server(|s| s.document("todo", "milk"))
            .flatten()
            .is_some()
            && atom.status().pending.get_untracked() == 0
    })
    .await;
    assert_eq!(atom.status().halted.get_untracked(), None);
    owner.cleanup();
    stop_serving();
}

/// Issue #9, finding 8: a request that never gets an answer is abandoned
/// after `request_timeout_ms`, and the next one (after the usual backoff)
/// syncs.
#[cfg(feature = "fault-injection")]
#[wasm_bindgen_test]
async fn a_hung_request_times_out_and_the_next_one_syncs() {
    use atomsync_core::engine::testing::FakeServer;
    use atomsync_leptos::testing::{
        hang_next_requests, serve_with, stop_serving, with_fake_server,
    };
    serve_with(FakeServer::new());
    let app = format!("test-{}", random_id(6));
    let _ = any_spawner::Executor::init_wasm_bindgen();
    let errors = std::rc::Rc::new(std::cell::RefCell::new(Vec::<String>::new()));
    let owner = Owner::new_root(None);
    owner.set();
    provide_atomsync(app.clone());
    let atom = {
        let errors = errors.clone();
        use_synced_atom_with_options::<String>(
            "todo",
            UseSyncedAtomOptions::default()
                .poll_interval_ms(50)
                .request_timeout_ms(300)
                .on_error(move |e| errors.borrow_mut().push(e.to_owned())),
        )
    };
    eventually("ready", || atom.status().ready.get_untracked()).await;
    // Let the first pull through, then hang the push.
    eventually("the first pull", || {
        atom.status().last_synced.get_untracked().is_some()
    })
    .await;
    hang_next_requests(1);
    atom.insert("milk", "1".to_owned());
    eventually("the write to reach the server", || {
        with_fake_server(|s| s.document("todo", "milk"))
            .flatten()
            .is_some()
            && atom.status().pending.get_untracked() == 0
    })
    .await;
    assert!(
        errors
            .borrow()
            .iter()
            .any(|e| e.contains("no answer within 300 ms")),
        "{:?}",
        errors.borrow()
    );
    assert_eq!(atom.status().halted.get_untracked(), None);
    owner.cleanup();
    stop_serving();
}

/// Issue #9, finding 6: a refused request halts the group in every tab,
/// with its status; `resume()` from a follower tab asks the leader, which
/// syncs again.
#[cfg(feature = "fault-injection")]
#[wasm_bindgen_test]
async fn resume_from_a_follower_ends_a_refusal() {
    use atomsync_core::engine::Failure;
    use atomsync_core::engine::testing::FakeServer;
    use atomsync_leptos::HaltReason;
    use atomsync_leptos::testing::{
        fail_next_requests, serve_with, stop_serving, with_fake_server,
    };
    serve_with(FakeServer::new());
    let app = format!("test-{}", random_id(6));
    let ((leader, leader_owner), (follower, follower_owner)) = leader_and_follower(&app).await;
    fail_next_requests([Failure::Status(400)]);
    follower.insert("bread", "refused once".to_owned());
    let refused = |atom: &SyncedAtom<String>| {
        atom.status()
            .halted
            .get_untracked()
            .is_some_and(|halt| halt.reason == HaltReason::Refused { status: 400 })
    };
    eventually("both tabs to show the halt", || {
        refused(&leader) && refused(&follower)
    })
    .await;
    // Halted: nothing is sent, the write waits.
    sleep(200).await;
    assert!(
        with_fake_server(|s| s.document("todo", "bread"))
            .flatten()
            .is_none()
    );
    assert_eq!(leader.status().pending.get_untracked(), 1);
    follower.resume();
    eventually("the write to reach the server", || {
        with_fake_server(|s| s.document("todo", "bread"))
            .flatten()
            .is_some()
    })
    .await;
    eventually("both tabs to show the halt ended", || {
        leader.status().halted.get_untracked().is_none()
            && follower.status().halted.get_untracked().is_none()
    })
    .await;
    follower_owner.cleanup();
    leader_owner.cleanup();
    stop_serving();
}

/// A credentials refusal (a token the server no longer takes) ends on the
/// browser's `online` event; a refusal of the request itself does not.
#[cfg(feature = "fault-injection")]
#[wasm_bindgen_test]
async fn the_online_event_ends_a_credentials_halt() {
    use atomsync_core::engine::Failure;
    use atomsync_core::engine::testing::FakeServer;
    use atomsync_leptos::HaltReason;
    use atomsync_leptos::testing::{fail_next_requests, serve_with, stop_serving};
    serve_with(FakeServer::new());
    let app = format!("test-{}", random_id(6));
    let _ = any_spawner::Executor::init_wasm_bindgen();
    let owner = Owner::new_root(None);
    owner.set();
    provide_atomsync(app.clone());
    let atom = use_synced_atom_with_options::<String>(
        "todo",
        UseSyncedAtomOptions::default()
            .poll_interval_ms(50)
            .token(Some("t".to_owned())),
    );
    eventually("ready", || atom.status().ready.get_untracked()).await;
    let online = || {
        let event = web_sys::Event::new("online").unwrap();
        web_sys::window().unwrap().dispatch_event(&event).unwrap();
    };
    let halted = move || atom.status().halted.get_untracked().map(|h| h.reason);
    fail_next_requests([Failure::Status(400)]);
    atom.insert("a", "1".to_owned());
    eventually("a refusal", || {
        halted() == Some(HaltReason::Refused { status: 400 })
    })
    .await;
    online();
    sleep(200).await;
    assert_eq!(halted(), Some(HaltReason::Refused { status: 400 }));
    atom.resume();
    eventually("synced", || {
        halted().is_none() && atom.status().pending.get_untracked() == 0
    })
    .await;
    fail_next_requests([Failure::Status(403)]);
    atom.insert("b", "2".to_owned());
    eventually("a credentials halt", || {
        halted() == Some(HaltReason::Credentials { status: 403 })
    })
    .await;
    online();
    eventually("synced", || {
        halted().is_none() && atom.status().pending.get_untracked() == 0
    })
    .await;
    owner.cleanup();
    stop_serving();
}
