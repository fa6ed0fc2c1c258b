//! The store against plain rusqlite doing the same work.
//!
//! - `push_10k`: 10,000 new documents in batches of 100 (one transaction per
//!   batch) through [`Store::push`], against raw `INSERT`s of the same rows in
//!   the same transactions, with the same PRAGMAs; once with
//!   `synchronous = FULL` (the default) and once with `OFF` (the CPU cost
//!   alone).
//! - `pull_10k`: reading 10,000 changed documents through [`Store::pull`]
//!   (two pages of 5,000) and encoding the responses, against one raw
//!   `SELECT` of the same rows written out as the same S-expression text.
//! - `pull_10`: one pull of 10 documents (no baseline): the fixed cost of a
//!   pull, which the HTTP benchmark's `pull_10_documents` pays.
#![allow(missing_docs)]

use std::hint::black_box;
use std::io::Write;

use atomsync_core::protocol::{Change, PullRequest, PullResponse, PushRequest};
use atomsync_core::sexpr::{self, Raw};
use atomsync_server::{Store, StoreOptions, Synchronous};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use rusqlite::{Connection, params};

const DOCS: usize = 10_000;
const BATCH: usize = 100;

fn value(i: usize) -> String {
    format!(
        "((title . \"Buy item number {i}\") (done . {}) (tags . #(\"home\" \"errands\")) \
         (estimate . (1.5)))",
        ["#t", "#f"][i % 2]
    )
}

fn requests() -> Vec<PushRequest> {
    (0..DOCS / BATCH)
        .map(|b| PushRequest {
            group: "todo".to_owned(),
            client_id: "bench-client".to_owned(),
            changes: (0..BATCH)
                .map(|i| {
                    let n = b * BATCH + i;
                    Change {
                        mutation: n as u64 + 1,
                        key: format!("item-{n}"),
                        base_version: 0,
                        value: Some(Raw::from_text(&value(n)).unwrap()),
                    }
                })
                .collect(),
            low_water: None,
            epoch: None,
        })
        .collect()
}

fn pragma(synchronous: Synchronous) -> &'static str {
    match synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
        _ => "OFF",
    }
}

/// A database with the store's documents table and settings, for the raw
/// baselines.
fn raw_connection(path: &std::path::Path, synchronous: Synchronous) -> Connection {
    let conn = Connection::open(path).unwrap();
    let _: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .unwrap();
    conn.pragma_update(None, "synchronous", pragma(synchronous))
        .unwrap();
    conn.pragma_update(None, "foreign_keys", true).unwrap();
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .unwrap();
    conn.execute_batch(
        "CREATE TABLE documents (
            grp TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT,
            version INTEGER NOT NULL CHECK (version >= 1),
            seq INTEGER NOT NULL,
            PRIMARY KEY (grp, key)
        ) STRICT;
        CREATE INDEX documents_by_seq ON documents (grp, seq);",
    )
    .unwrap();
    conn
}

fn raw_push(conn: &mut Connection, requests: &[PushRequest]) {
    let mut seq = 0i64;
    for request in requests {
        let tx = conn.transaction().unwrap();
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO documents (grp, key, value, version, seq) VALUES (?1, ?2, ?3, 1, ?4)",
                )
                .unwrap();
            for change in &request.changes {
                seq += 1;
                insert
                    .execute(params![
                        request.group,
                        change.key,
                        change.value.as_ref().map(Raw::as_str),
                        seq
                    ])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
    }
}

fn push(c: &mut Criterion) {
    let requests = requests();
    let mut group = c.benchmark_group("push_10k");
    group.sample_size(10);
    for synchronous in [Synchronous::Full, Synchronous::Off] {
        let name = pragma(synchronous).to_ascii_lowercase();
        group.bench_function(format!("{name}/store"), |b| {
            b.iter_batched(
                || {
                    let dir = tempfile::tempdir().unwrap();
                    let options = StoreOptions::default().synchronous(synchronous);
                    let store = Store::open(dir.path().join("db"), options).unwrap();
                    (dir, store)
                },
                |(dir, mut store)| {
                    for request in &requests {
                        black_box(store.push(request).unwrap());
                    }
                    (dir, store)
                },
                BatchSize::PerIteration,
            );
        });
        group.bench_function(format!("{name}/raw_rusqlite"), |b| {
            b.iter_batched(
                || {
                    let dir = tempfile::tempdir().unwrap();
                    let conn = raw_connection(&dir.path().join("db"), synchronous);
                    (dir, conn)
                },
                |(dir, mut conn)| {
                    raw_push(&mut conn, &requests);
                    (dir, conn)
                },
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

/// Writes a pull response for raw rows by hand: the least any server must do.
fn encode_raw(rows: &[(String, i64, Option<String>)], cursor: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"((documents . #(");
    for (i, (key, version, value)) in rows.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(b"((key . ");
        out.extend_from_slice(&sexpr::to_vec(key).unwrap());
        write!(out, ") (version . {version}) (value . ").unwrap();
        match value {
            Some(value) => {
                out.push(b'(');
                out.extend_from_slice(value.as_bytes());
                out.extend_from_slice(b")))");
            }
            None => out.extend_from_slice(b"()))"),
        }
    }
    write!(out, ")) (cursor . \"{cursor}\") (more . #f))").unwrap();
}

fn pull(c: &mut Criterion) {
    let requests = requests();
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path().join("store.db"), StoreOptions::default()).unwrap();
    for request in &requests {
        store.push(request).unwrap();
    }
    let mut conn = raw_connection(&dir.path().join("raw.db"), Synchronous::Full);
    raw_push(&mut conn, &requests);

    // The two agree on what they produce (up to the cursor).
    let pages = pull_all(&mut store);
    assert_eq!(pages.len(), 2);
    let mut raw_out = Vec::new();
    raw_pull(&conn, &mut raw_out);
    let decode = |text: &[u8]| sexpr::from_slice::<PullResponse>(text).unwrap().documents;
    let mut store_docs = decode(&pages[0]);
    store_docs.extend(decode(&pages[1]));
    assert!(
        store_docs == decode(&raw_out),
        "the store and the baseline return different documents"
    );

    let mut group = c.benchmark_group("pull_10k");
    group.bench_function("store", |b| b.iter(|| black_box(pull_all(&mut store))));
    group.bench_function("raw_select", |b| {
        b.iter(|| {
            let mut out = Vec::new();
            raw_pull(&conn, &mut out);
            black_box(out)
        });
    });
    group.finish();
}

fn pull_all(store: &mut Store) -> Vec<Vec<u8>> {
    let mut pages = Vec::new();
    let mut since = None;
    loop {
        let page = store
            .pull(&PullRequest {
                group: "todo".to_owned(),
                since: since.take(),
                limit: Some(5000),
            })
            .unwrap();
        pages.push(sexpr::to_vec(&page).unwrap());
        if !page.more {
            return pages;
        }
        since = Some(page.cursor);
    }
}

fn raw_pull(conn: &Connection, out: &mut Vec<u8>) {
    let mut stmt = conn
        .prepare_cached(
            "SELECT key, version, value FROM documents WHERE grp = ?1 AND seq > ?2 ORDER BY seq",
        )
        .unwrap();
    let rows: Vec<(String, i64, Option<String>)> = stmt
        .query_map(params!["todo", 0], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    encode_raw(&rows, "epoch.10000", out);
}

/// The fixed cost of a pull: 10 documents from a database in memory.
fn pull_small(c: &mut Criterion) {
    let mut store = Store::open_in_memory().unwrap();
    let request = PushRequest {
        changes: requests()[0].changes[..10].to_vec(),
        ..requests()[0].clone()
    };
    store.push(&request).unwrap();
    let req = PullRequest {
        group: "todo".into(),
        since: None,
        limit: None,
    };
    c.bench_function("pull_10/store", |b| {
        b.iter(|| black_box(store.pull(&req).unwrap()));
    });
}

criterion_group!(benches, push, pull, pull_small);
criterion_main!(benches);
