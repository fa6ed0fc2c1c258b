//! The hook's signal behaviour, natively with a reactive owner (no browser:
//! an in-memory engine and no server).

use std::collections::{BTreeMap, BTreeSet};

use atomsync_leptos::{provide_atomsync, use_synced_atom};
use leptos::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Todo {
    title: String,
    done: bool,
    tags: BTreeSet<String>,
    weight: f64,
}

fn todo(title: &str) -> Todo {
    Todo {
        title: title.to_owned(),
        done: false,
        tags: ["a".to_owned()].into(),
        weight: -0.0,
    }
}

fn in_owner(f: impl FnOnce()) {
    let owner = Owner::new();
    owner.set();
    f();
}

#[test]
fn reads_and_writes_like_a_signal_of_a_map() {
    in_owner(|| {
        provide_atomsync("test-app");
        let todos = use_synced_atom::<Todo>("todo");
        assert!(
            todos.status().ready.get_untracked(),
            "memory engine is ready at once"
        );
        assert!(todos.get_untracked().is_empty());

        todos.insert("a", todo("first"));
        todos.update(|docs| {
            docs.insert("b", todo("second"));
        });
        assert_eq!(todos.with_untracked(|d| d.len()), 2);
        assert_eq!(
            todos.status().pending.get_untracked(),
            2,
            "each write is queued"
        );

        todos.update_key("a", |t| t.done = true);
        assert!(todos.with_untracked(|d| d["a"].done));
        assert_eq!(todos.status().pending.get_untracked(), 3);

        assert_eq!(
            todos.remove("b").map(|t| t.title),
            Some("second".to_owned())
        );
        assert_eq!(todos.remove("missing"), None);
        assert_eq!(
            todos.with_untracked(|d| d.keys().cloned().collect::<Vec<_>>()),
            ["a"]
        );

        // `set` replaces the whole map; every key it touches is written.
        let mut docs = todos.get_untracked();
        docs.insert("c", todo("third"));
        todos.set(docs);
        assert_eq!(todos.with_untracked(|d| d.len()), 2);
    });
}

#[test]
fn readers_are_notified_and_unchanged_writes_are_not_queued() {
    in_owner(|| {
        let todos = use_synced_atom::<Todo>("todo");
        let count = Memo::new(move |_| todos.with(|d| d.len()));
        let titles = Memo::new(move |_| {
            todos.with(|d| d.values().map(|t| t.title.clone()).collect::<Vec<_>>())
        });
        assert_eq!(count.get_untracked(), 0);
        todos.insert("x", todo("x"));
        assert_eq!(count.get_untracked(), 1);
        todos.update_key("x", |t| t.title = "renamed".into());
        assert_eq!(titles.get_untracked(), ["renamed"]);

        let pending = todos.status().pending.get_untracked();
        // Writing the same value again changes nothing on the way to the server.
        todos.insert("x", todos.with_untracked(|d| d["x"].clone()));
        assert_eq!(todos.status().pending.get_untracked(), pending);
    });
}

#[test]
fn any_serde_type_works() {
    in_owner(|| {
        let nested = use_synced_atom::<BTreeMap<u8, Option<Option<i128>>>>("nested");
        nested.insert("k", [(1, Some(None)), (2, Some(Some(i128::MIN)))].into());
        assert_eq!(nested.with_untracked(|d| d["k"][&2]), Some(Some(i128::MIN)));
        let floats = use_synced_atom::<f64>("floats");
        floats.insert("tiny", 5e-324);
        assert_eq!(
            floats.with_untracked(|d| d["tiny"].to_bits()),
            5e-324f64.to_bits()
        );
    });
}

/// The README's standalone-server snippet, compiled here (the README check
/// in tests/tests/readme.rs compares the two).
#[test]
fn options_for_a_standalone_server_take_its_base_url() {
    use atomsync_leptos::{Endpoint, UseSyncedAtomOptions, use_synced_atom_with_options};
    in_owner(|| {
        provide_atomsync("test-app");
        // ANCHOR: server
        let todos = use_synced_atom_with_options::<Todo>(
            "todo",
            UseSyncedAtomOptions::default()
                .server("http://localhost:8090") // the base URL: /sync and /events are under it
                .token(Some("abc123".to_owned())) // or a Signal<Option<String>>
                .on_conflict(|c| leptos::logging::warn!("lost {:?}", c.local)),
        );
        // ANCHOR_END: server
        assert!(todos.get_untracked().is_empty());
        assert_eq!(
            UseSyncedAtomOptions::default()
                .server("http://localhost:8090")
                .endpoint,
            Some(Endpoint::Url("http://localhost:8090".to_owned()))
        );
    });
}

/// `set` replaces the whole map (issue #9, finding 9): the keys absent from
/// the new value are deleted, not only the keys it holds written.
#[test]
fn set_replaces_the_whole_map_and_deletes_what_it_lacks() {
    in_owner(|| {
        provide_atomsync("test-app");
        let todos = use_synced_atom::<Todo>("todo");
        todos.insert("a", todo("first"));
        todos.insert("b", todo("second"));
        assert_eq!(todos.status().pending.get_untracked(), 2);
        // A fresh map with one document: a is deleted, b deleted, c added.
        let mut fresh = atomsync_leptos::Docs::default();
        fresh.insert("c", todo("third"));
        todos.set(fresh);
        assert_eq!(
            todos.with_untracked(|d| d.keys().cloned().collect::<Vec<_>>()),
            ["c"]
        );
        // Two deletions queued behind a's and b's writes, and c's write.
        assert_eq!(todos.status().pending.get_untracked(), 5);
        // Emptying it deletes c too; a clone put back changes nothing.
        todos.set(atomsync_leptos::Docs::default());
        assert_eq!(todos.status().pending.get_untracked(), 6);
        let same = todos.get_untracked();
        todos.set(same);
        assert_eq!(todos.status().pending.get_untracked(), 6);
    });
}
