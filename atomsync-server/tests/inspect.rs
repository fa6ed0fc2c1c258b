//! `atomsync-server inspect`: the real binary reading a database filled
//! through the library, on SQLite and PostgreSQL; it never writes.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use atomsync_core::protocol::ChangeResult;
use atomsync_server::{Store, StoreOptions, Synchronous};
use common::{change, push_request};

/// Runs `atomsync-server inspect --db DB ARGS..`.
fn inspect(db: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_atomsync-server"))
        .arg("inspect")
        .args(["--db", db])
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("atomsync-server did not run")
}

/// Its stdout, after checking that it succeeded.
fn ok(db: &str, args: &[&str]) -> String {
    let out = inspect(db, args);
    assert!(
        out.status.success(),
        "inspect {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Its stderr, after checking that it failed with `code`.
fn fails(db: &str, args: &[&str], code: i32) -> String {
    let out = inspect(db, args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "inspect {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stderr).unwrap()
}

/// The line of `text` that starts with `start`.
fn line<'a>(text: &'a str, start: &str) -> &'a str {
    text.lines()
        .find(|l| l.trim_start().starts_with(start))
        .unwrap_or_else(|| panic!("no line starting with {start:?} in:\n{text}"))
}

fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

fn open(location: &str) -> Store {
    Store::open(
        location,
        StoreOptions::default().synchronous(Synchronous::Off),
    )
    .unwrap()
}

/// Fills `store`: group `todo` with `a` (version 2), `b`, `gone` (deleted)
/// and a long document; group `notes` with one. Client `c2`'s change to `a`
/// is refused. Returns the latest change number.
fn fill(store: &mut Store, long: &str) -> u64 {
    let push = |store: &mut Store, group: &str, client: &str, changes| {
        store.push(&push_request(group, client, changes)).unwrap()
    };
    push(
        store,
        "todo",
        "c1",
        vec![
            change(1, "a", 0, Some("(title \"milk\")")),
            change(2, "b", 0, Some("1e-308")),
            change(3, "gone", 0, Some("x")),
            change(4, "long", 0, Some(long)),
        ],
    );
    push(
        store,
        "todo",
        "c1",
        vec![
            change(5, "a", 1, Some("(title \"oat milk\")")),
            change(6, "gone", 1, None),
        ],
    );
    let refused = push(store, "todo", "c2", vec![change(1, "a", 1, Some("late"))]);
    assert!(matches!(refused.results[0], ChangeResult::Conflict { .. }));
    push(
        store,
        "notes",
        "c1",
        vec![change(7, "n", 0, Some("\"hi\""))],
    );
    store.latest_cursor().unwrap().seq
}

fn long_value() -> String {
    format!("\"{}\"", "y".repeat(10_000))
}

on_both_backends! {
    #[test]
    fn the_summary_shows_the_latest_cursor_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let db = location(dir.path());
        let mut store = open(&db);
        let seq = fill(&mut store, &long_value());
        let cursor = store.latest_cursor().unwrap();
        drop(store);

        let out = ok(&db, &[]);
        assert_eq!(out, ok(&db, &["summary"]));
        assert_eq!(words(line(&out, "latest cursor")), ["latest", "cursor", &cursor.to_string()]);
        assert_eq!(words(line(&out, "latest change")), ["latest", "change", &seq.to_string()]);
        assert_eq!(words(line(&out, "epoch")), ["epoch", &cursor.epoch]);
        assert_eq!(words(line(&out, "groups")), ["groups", "2"]);
        assert_eq!(words(line(&out, "documents")), ["documents", "4"]);
        assert_eq!(words(line(&out, "tombstones")), ["tombstones", "1"]);
        // c1's 7 mutations and c2's refused one.
        assert_eq!(words(line(&out, "pending"))[1], "8");
    }

    #[test]
    fn groups_are_listed_with_their_counts_and_latest_change() {
        let dir = tempfile::tempdir().unwrap();
        let db = location(dir.path());
        let mut store = open(&db);
        let seq = fill(&mut store, &long_value());
        drop(store);

        let out = ok(&db, &["groups"]);
        assert_eq!(words(line(&out, "GROUP")), ["GROUP", "DOCUMENTS", "TOMBSTONES", "LATEST", "CHANGE"]);
        assert_eq!(words(line(&out, "notes")), ["notes", "1", "0", &seq.to_string()]);
        assert_eq!(words(line(&out, "todo")), ["todo", "3", "1", &(seq - 1).to_string()]);
    }

    #[test]
    fn a_document_shows_its_value_and_version_cut_unless_full() {
        let dir = tempfile::tempdir().unwrap();
        let db = location(dir.path());
        let mut store = open(&db);
        let long = long_value();
        fill(&mut store, &long);
        drop(store);

        let out = ok(&db, &["doc", "todo", "a"]);
        assert_eq!(words(line(&out, "version")), ["version", "2"]);
        assert_eq!(line(&out, "value"), "value    (title \"oat milk\")");
        assert!(line(&out, "changed").contains(" 20"), "{out}");

        let out = ok(&db, &["doc", "todo", "gone"]);
        assert!(line(&out, "value").contains("tombstone"), "{out}");

        let out = ok(&db, &["doc", "todo", "long"]);
        assert!(out.len() < 5000, "not cut: {} bytes", out.len());
        assert!(out.contains("--full shows it all"), "{out}");
        let out = ok(&db, &["doc", "todo", "long", "--full"]);
        assert!(out.contains(&long), "not whole");
    }

    #[test]
    fn a_group_lists_its_documents_by_key_and_changes_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let db = location(dir.path());
        let mut store = open(&db);
        let seq = fill(&mut store, &long_value());
        drop(store);

        let out = ok(&db, &["group", "todo"]);
        let keys: Vec<&str> = out.lines().skip(1).map(|l| words(l)[1]).collect();
        assert_eq!(keys, ["a", "b", "gone", "long"]);
        assert!(line(&out, &format!("{} ", seq - 1)).contains("(deleted)"), "{out}");
        assert!(out.contains("1e-308"), "{out}");
        let long_row = out.lines().find(|l| words(l)[1] == "long").unwrap();
        assert!(long_row.len() < 200 && long_row.contains("bytes)"), "{long_row}");

        let out = ok(&db, &["changes", "todo", "--limit", "2"]);
        let rows: Vec<Vec<&str>> = out.lines().skip(1).map(words).collect();
        // `todo`'s last two changes: `gone` deleted, then `a` version 2.
        assert_eq!(rows[0][..3], [(seq - 1).to_string().as_str(), "gone", "2"]);
        assert_eq!(rows[1][..3], [(seq - 2).to_string().as_str(), "a", "2"]);
        assert!(rows[2].join(" ").contains("--limit"), "{out}");
        // No note when nothing more remains.
        let out = ok(&db, &["changes", "todo", "--limit", "4"]);
        assert_eq!(out.lines().count(), 5, "{out}");
        assert!(!out.contains("--limit"), "{out}");
    }

    #[test]
    fn pending_lists_the_remembered_mutations_and_their_answers() {
        let dir = tempfile::tempdir().unwrap();
        let db = location(dir.path());
        let mut store = open(&db);
        fill(&mut store, &long_value());
        drop(store);

        let out = ok(&db, &["pending"]);
        let row = |client: &str, mutation: &str| {
            out.lines()
                .find(|l| words(l)[..2] == [client, mutation])
                .unwrap_or_else(|| panic!("no {client} {mutation} in:\n{out}"))
        };
        assert_eq!(words(row("c1", "5")), ["c1", "5", "todo", "a", "1", "accepted", "as", "version", "2"]);
        assert_eq!(words(row("c2", "1")), ["c2", "1", "todo", "a", "1", "refused", "(conflict)"]);
        let notes = ok(&db, &["pending", "--group", "notes"]);
        assert_eq!(notes.lines().count(), 2, "{notes}");
        assert!(notes.contains("notes"));
    }

    #[test]
    fn what_is_not_there_is_an_error_and_bad_input_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = location(dir.path());
        let mut store = open(&db);
        fill(&mut store, &long_value());
        drop(store);

        let e = fails(&db, &["doc", "todo", "nope"], 1);
        assert!(e.contains("no document `nope` in group `todo`"), "{e}");
        let e = fails(&db, &["group", "nope"], 1);
        assert!(e.contains("no documents in group `nope`"), "{e}");
        let e = fails(&db, &["changes", "todo", "--limit", "0"], 2);
        assert!(e.contains("at least 1"), "{e}");
        fails(&db, &["doc", "todo"], 2);
        fails(&db, &["frobnicate"], 2);
    }
}

/// A copy of every file in `dir`, by name.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut all: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    all.sort();
    all
}

const EVERY_COMMAND: &[&[&str]] = &[
    &[],
    &["groups"],
    &["group", "todo"],
    &["doc", "todo", "a"],
    &["changes", "todo"],
    &["pending"],
];

#[test]
fn inspecting_sqlite_changes_no_file_and_creates_none() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("my data.db");
    let db = path.to_str().unwrap();
    let mut store = open(db);
    fill(&mut store, &long_value());
    drop(store);

    let before = files(dir.path());
    for args in EVERY_COMMAND {
        ok(db, args);
    }
    assert!(before == files(dir.path()), "inspect changed the directory");
}

#[test]
fn a_database_in_use_is_read_through_its_log_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let db = path.to_str().unwrap();
    let mut store = open(db);
    let seq = fill(&mut store, &long_value());

    let before = files(dir.path());
    let out = ok(db, &[]);
    assert_eq!(
        words(line(&out, "latest change")),
        ["latest", "change", &seq.to_string()]
    );
    for args in EVERY_COMMAND {
        ok(db, args);
    }
    // Readers take their read locks in the shared-memory index (`-shm`),
    // which is SQLite's lock table rather than data: only that may change.
    let data = |files: Vec<(String, Vec<u8>)>| -> Vec<(String, Vec<u8>)> {
        files
            .into_iter()
            .filter(|(name, _)| !name.ends_with("-shm"))
            .collect()
    };
    assert!(
        data(before) == data(files(dir.path())),
        "inspect changed the database"
    );
    // The server keeps working.
    let response = store
        .push(&push_request(
            "todo",
            "c3",
            vec![change(1, "new", 0, Some("1"))],
        ))
        .unwrap();
    assert!(matches!(response.results[0], ChangeResult::Accepted { .. }));
    let out = ok(db, &["changes", "todo", "--limit", "1"]);
    assert_eq!(words(out.lines().nth(1).unwrap())[1], "new");
}

#[test]
fn a_missing_file_is_reported_and_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.db");
    let e = fails(path.to_str().unwrap(), &["groups"], 1);
    assert!(e.contains("missing"), "{e}");
    assert!(!path.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let e = fails(dir.path().to_str().unwrap(), &[], 1);
    assert!(e.contains("is not a database file"), "{e}");
}

#[test]
fn a_file_that_is_not_an_atomsync_database_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "hello, this is not SQLite\n".repeat(100)).unwrap();
    let e = fails(path.to_str().unwrap(), &[], 1);
    assert!(e.contains("not an atomsync database"), "{e}");

    let other = dir.path().join("other.db");
    other_sqlite_database(&other);
    let e = fails(other.to_str().unwrap(), &[], 1);
    assert!(e.contains("not an atomsync database"), "{e}");
}

/// A SQLite database of another application.
fn other_sqlite_database(path: &Path) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch("CREATE TABLE documents (id INTEGER PRIMARY KEY, body TEXT);")
        .unwrap();
}

#[test]
fn a_postgres_database_without_atomsync_tables_is_reported() {
    let url = common::pg::fresh_database();
    let e = fails(&url, &[], 1);
    assert!(e.contains("no atomsync tables"), "{e}");
    // Nothing was created (no migration ran): the same answer again.
    let e = fails(&url, &["groups"], 1);
    assert!(e.contains("no atomsync tables"), "{e}");
    let e = fails("postgres://nobody@127.0.0.1:1/x", &[], 1);
    assert!(
        e.contains("Connection refused") || e.contains("connect"),
        "{e}"
    );
}
