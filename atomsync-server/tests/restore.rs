//! The standalone server while an older copy of its database file is put
//! back (a restored backup) and it restarts: the server notices by its
//! high-water mark and takes a new epoch, so every client resets and
//! converges to the server's state, and what the server lost is reported,
//! not dropped silently. Without the new epoch, the clients whose cursors
//! lie inside the restored history would skip the changes numbered anew.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use atomsync_client::{Client, ClientOptions};
use atomsync_core::engine::{ConflictCause, ConflictPolicy};
use atomsync_core::protocol::PullResponse;
use atomsync_core::sexpr::{self, Raw};
use common::ServerProcess;

const GROUP: &str = "todo";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

async fn open(dir: &Path, name: &str, url: &str, policy: ConflictPolicy) -> Client {
    Client::open_with_options(
        dir.join(format!("{name}.db")),
        url,
        name,
        ClientOptions::default().policy(policy),
    )
    .await
    .unwrap()
}

/// The server's documents (values only) and epoch, by a plain pull.
async fn server_state(server: &ServerProcess) -> (String, BTreeMap<String, Raw>) {
    let http = common::client();
    let mut since = String::new();
    let mut docs = BTreeMap::new();
    loop {
        let url = server.url(&format!("/sync?group={GROUP}&since={since}"));
        let body = http.get(url).send().await.unwrap().bytes().await.unwrap();
        let page: PullResponse = sexpr::from_slice(&body).unwrap();
        for doc in page.documents {
            match doc.value {
                Some(value) => docs.insert(doc.key, value),
                None => docs.remove(&doc.key),
            };
        }
        if !page.more {
            return (page.cursor.epoch, docs);
        }
        since = page.cursor.to_string();
    }
}

fn copy_database(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
    for suffix in ["-wal", "-shm"] {
        let mut side = to.as_os_str().to_owned();
        side.push(suffix);
        let _absent = std::fs::remove_file(side);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_converge_after_an_older_database_file_is_put_back() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data.db");
    let backup = dir.path().join("backup.db");
    let port = free_port().to_string();
    let args = ["--port", &port, "--db", db.to_str().unwrap()];
    let mut server = ServerProcess::start_with(&args);
    let url = server.url("");

    // a and c let the server win; b lets the client win.
    let a = open(dir.path(), "a", &url, ConflictPolicy::ServerWins).await;
    let b = open(dir.path(), "b", &url, ConflictPolicy::ClientWins).await;
    let c = open(dir.path(), "c", &url, ConflictPolicy::ServerWins).await;
    a.set(GROUP, "milk", "Buy milk").await.unwrap();
    b.set(GROUP, "bread", "Buy bread").await.unwrap();
    for client in [&a, &b, &c, &a] {
        client.sync(GROUP).await.unwrap();
    }

    // The backup: taken after a clean stop.
    assert!(server.terminate().success());
    copy_database(&db, &backup);
    let mut server = ServerProcess::start_with(&args);
    let (epoch, _) = server_state(&server).await;

    a.set(GROUP, "eggs", "Buy eggs").await.unwrap();
    a.set(GROUP, "milk", "Buy oat milk").await.unwrap();
    b.set(GROUP, "jam", "Buy jam").await.unwrap();
    for client in [&a, &b, &c, &a] {
        client.sync(GROUP).await.unwrap();
    }
    assert_eq!(c.raw_documents(GROUP).await.unwrap().len(), 4);

    // The backup is put back and the server restarts on it.
    assert!(server.terminate().success());
    copy_database(&backup, &db);
    let server = ServerProcess::start_with(&args);
    let (restored, docs) = server_state(&server).await;
    assert_ne!(
        restored, epoch,
        "a database that went back gets a new epoch"
    );
    assert_eq!(docs.len(), 2);

    // A new client writes before the others sync: with the old epoch, its
    // changes would take the numbers the others' cursors had already passed.
    let d = open(dir.path(), "d", &url, ConflictPolicy::ServerWins).await;
    for i in 0..10 {
        d.set(GROUP, &format!("x{i}"), &i).await.unwrap();
    }
    d.sync(GROUP).await.unwrap();

    let mut reports = Vec::new();
    for _round in 0..3 {
        for client in [&a, &b, &c, &d] {
            let report = client.sync(GROUP).await.unwrap();
            reports.extend(report.conflicts);
        }
    }
    let (_, server_docs) = server_state(&server).await;
    for (name, client) in [("a", &a), ("b", &b), ("c", &c), ("d", &d)] {
        assert_eq!(
            client.raw_documents(GROUP).await.unwrap(),
            server_docs,
            "client {name} differs from the server"
        );
        assert_eq!(client.status(GROUP).await.unwrap().pending, 0);
    }
    // b (client wins) wrote the lost documents again; the others reported
    // their loss before that.
    assert!(server_docs.contains_key("eggs") && server_docs.contains_key("jam"));
    let lost: Vec<&str> = reports
        .iter()
        .filter(|r| r.cause == ConflictCause::Reset)
        .map(|r| r.key.as_str())
        .collect();
    assert!(
        lost.contains(&"eggs") && lost.contains(&"jam"),
        "{reports:?}"
    );
    // The edit made after the backup is gone: the server's state is the
    // truth for documents it has.
    let milk: String = a.get(GROUP, "milk").await.unwrap().unwrap();
    assert_eq!(milk, "Buy milk");
    assert_eq!(server_docs.len(), 14);
}

/// The whole directory put back (database and high-water mark together, as
/// a VM snapshot would): the server cannot tell, keeps its epoch, and a
/// client-wins client whose versions are now above the server's must still
/// settle: `Client::sync` returns and everyone converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_returns_when_the_server_went_back_under_the_same_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data.db");
    let mark = dir.path().join("data.db.atomsync-hwm");
    let port = free_port().to_string();
    let args = ["--port", &port, "--db", db.to_str().unwrap()];
    let mut server = ServerProcess::start_with(&args);
    let url = server.url("");
    let a = open(dir.path(), "a", &url, ConflictPolicy::ClientWins).await;
    let b = open(dir.path(), "b", &url, ConflictPolicy::ServerWins).await;
    a.set(GROUP, "k", "one").await.unwrap();
    a.sync(GROUP).await.unwrap();
    assert!(server.terminate().success());
    copy_database(&db, &dir.path().join("snapshot.db"));
    std::fs::copy(&mark, dir.path().join("snapshot.hwm")).unwrap();

    let mut server = ServerProcess::start_with(&args);
    for value in ["two", "three"] {
        a.set(GROUP, "k", value).await.unwrap();
        a.sync(GROUP).await.unwrap();
    }
    assert!(server.terminate().success());
    copy_database(&dir.path().join("snapshot.db"), &db);
    std::fs::copy(dir.path().join("snapshot.hwm"), &mark).unwrap();
    let server = ServerProcess::start_with(&args);
    let (_, docs) = server_state(&server).await;
    assert_eq!(docs["k"].as_str(), "\"one\"", "the server went back");

    // a's k is at version 3, the server's at 1: a's edit must not rewrite
    // on top of version 3 for ever.
    a.set(GROUP, "k", "mine").await.unwrap();
    for client in [&a, &b, &a, &b] {
        tokio::time::timeout(std::time::Duration::from_secs(20), client.sync(GROUP))
            .await
            .expect("sync returns")
            .unwrap();
    }
    let (_, docs) = server_state(&server).await;
    assert_eq!(docs["k"].as_str(), "\"mine\"");
    for client in [&a, &b] {
        assert_eq!(client.raw_documents(GROUP).await.unwrap(), docs);
    }
}

/// A native client kept in memory with a fixed device id (as the client's
/// own example does) numbers its changes from 1 again after every restart:
/// the server tells a reused number from a retry, the client takes a new id
/// by itself, and neither write is lost nor does sync halt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_memory_client_restarted_with_the_same_id_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data.db");
    let server = ServerProcess::start(&["--db", db.to_str().unwrap()]);
    let url = server.url("");
    let first = Client::open(atomsync_client::Location::Memory, &url, "kiosk")
        .await
        .unwrap();
    first.set(GROUP, "k", "from the first run").await.unwrap();
    first.sync(GROUP).await.unwrap();
    drop(first);
    let second = Client::open(atomsync_client::Location::Memory, &url, "kiosk")
        .await
        .unwrap();
    second.set(GROUP, "j", "from the second run").await.unwrap();
    second.set(GROUP, "k", "edited blind").await.unwrap();
    let report = second.sync(GROUP).await.unwrap();
    let (_, docs) = server_state(&server).await;
    assert_eq!(docs["j"].as_str(), "\"from the second run\"");
    // k existed before this run knew of it: a reported conflict, not a
    // write answered from the past.
    assert_eq!(docs["k"].as_str(), "\"from the first run\"");
    assert_eq!(report.conflicts.len(), 1, "{report:?}");
    assert_eq!(report.conflicts[0].key, "k");
    assert!(second.status(GROUP).await.unwrap().halted.is_none());
}
