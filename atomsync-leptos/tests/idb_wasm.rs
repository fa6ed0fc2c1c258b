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
    assert_eq!(SCHEMA_VERSION, 1);
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
