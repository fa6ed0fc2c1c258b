//! The end-to-end flows of the original Atomsync, with the native client
//! (`atomsync-client`) against a real atomsync server: the server's router on
//! a real socket (127.0.0.1, ephemeral port) over a SQLite file, restarted on
//! the same file and port where a flow needs it.
//!
//! Every flow runs twice: on one server over SQLite (`on_sqlite`), and on
//! PostgreSQL with each client on a server instance of its own, all on one
//! database (`on_postgres_instances`): what one client pushes through its
//! instance, the others pull through theirs.

#[path = "../../atomsync-server/tests/common/pg.rs"]
#[allow(dead_code, missing_docs, unreachable_pub)]
mod pg;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use atomsync_client::{Client, ClientOptions, Error, Synchronous};
use atomsync_core::engine::{Failure, FailureKind, Resolution};
use atomsync_core::protocol::ErrorCode;
use atomsync_server::{Store, StoreOptions, SyncService, TokenFile};
use serde::{Deserialize, Serialize};
use tempfile::TempDir;

/// A real atomsync server: [`atomsync_server::router`] served by axum on
/// 127.0.0.1, its store in a file of a temporary directory.
struct TestServer {
    /// A SQLite file or a PostgreSQL URL.
    db: String,
    /// A users file (TOML) to authorize requests with; `None` allows all.
    users: Option<String>,
    address: SocketAddr,
    running: Option<Running>,
}

struct Running {
    service: SyncService,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    /// Starts a server with a fresh database in `dir`, on an ephemeral port.
    async fn start(dir: &Path) -> TestServer {
        Self::start_with_users(dir, None).await
    }

    /// [`TestServer::start`] with a users file.
    async fn start_with_users(dir: &Path, users: Option<&str>) -> TestServer {
        Self::start_at(dir.join("server.db").display().to_string(), users).await
    }

    /// A server on the database at `db` (a file or a PostgreSQL URL).
    async fn start_at(db: String, users: Option<&str>) -> TestServer {
        let mut server = TestServer {
            db,
            users: users.map(str::to_owned),
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            running: None,
        };
        server.launch().await;
        server
    }

    /// Opens the database and serves it on `self.address` (the same port
    /// again after a stop).
    async fn launch(&mut self) {
        assert!(self.running.is_none(), "the server is running");
        let db = self.db.clone();
        let store = tokio::task::spawn_blocking(move || {
            Store::open(
                &db,
                StoreOptions::default().synchronous(atomsync_server::Synchronous::Normal),
            )
        })
        .await
        .unwrap()
        .expect("the server database opens");
        let service = match &self.users {
            Some(users) => SyncService::with_authorizer(
                store,
                TokenFile::from_toml(users).expect("a valid users file"),
            ),
            None => SyncService::new(store),
        };
        let listener = tokio::net::TcpListener::bind(self.address)
            .await
            .unwrap_or_else(|e| panic!("cannot listen on {}: {e}", self.address));
        self.address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = atomsync_server::router(service.clone());
        let shutdown = service.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                    shutdown.shutdown();
                })
                .await
                .expect("the server runs");
        });
        self.running = Some(Running {
            service,
            stop,
            task,
        });
    }

    /// The base URL clients use.
    fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Stops serving and closes the database; the port is free afterwards.
    async fn stop(&mut self) {
        let running = self.running.take().expect("the server is running");
        let _ = running.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), running.task)
            .await
            .expect("the server stops within 10 s")
            .unwrap();
        running.service.close().await;
    }

    /// Starts again on the same database file and the same port.
    async fn restart(&mut self) {
        self.launch().await;
    }
}

/// A test's server and the directory holding every database.
struct Setup {
    dir: TempDir,
    /// The server of the first client (and, on SQLite, of every client).
    server: TestServer,
    /// On PostgreSQL: the database every instance serves, the instances of
    /// the other clients, and which client is on which instance.
    shared_db: Option<String>,
    others: std::sync::Mutex<Vec<TestServer>>,
    urls: std::sync::Mutex<BTreeMap<String, String>>,
}

impl Setup {
    /// One server on a SQLite file.
    async fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start(dir.path()).await;
        Setup {
            dir,
            server,
            shared_db: None,
            others: Default::default(),
            urls: Default::default(),
        }
    }

    /// One PostgreSQL database, and an instance of its own for each client.
    async fn instances() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let db = pg::fresh_database();
        let server = TestServer::start_at(db.clone(), None).await;
        Setup {
            dir,
            server,
            shared_db: Some(db),
            others: Default::default(),
            urls: Default::default(),
        }
    }

    /// The base URL `device` uses: the server's, or on PostgreSQL, an
    /// instance of its own (the first client's is `server`).
    async fn url_for(&self, device: &str) -> String {
        let Some(db) = &self.shared_db else {
            return self.server.url();
        };
        let known = {
            let urls = self.urls.lock().unwrap();
            urls.get(device).cloned().ok_or_else(|| urls.is_empty())
        };
        let url = match known {
            Ok(url) => return url,
            Err(true) => self.server.url(),
            Err(false) => {
                let instance = TestServer::start_at(db.clone(), None).await;
                let url = instance.url();
                self.others.lock().unwrap().push(instance);
                url
            }
        };
        self.urls
            .lock()
            .unwrap()
            .insert(device.to_owned(), url.clone());
        url
    }

    /// The database file of `device`.
    fn client_db(&self, device: &str) -> PathBuf {
        self.dir.path().join(format!("{device}.db"))
    }

    /// Opens (or reopens) the client of `device`, its state in its own file.
    async fn client(&self, device: &str) -> Client {
        Client::open_with_options(
            self.client_db(device),
            &self.url_for(device).await,
            device,
            ClientOptions::default()
                .synchronous(Synchronous::Normal)
                .timeout(Duration::from_secs(10)),
        )
        .await
        .expect("the client opens")
    }
}

/// The items once on one SQLite server (`on_sqlite`) and once with each
/// client on its own instance over one PostgreSQL database
/// (`on_postgres_instances`); `setup()` makes the test's servers.
macro_rules! on_both_backends {
    (@one $module:ident, $setup:ident, $($item:item)*) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;

            async fn setup() -> Setup {
                Setup::$setup().await
            }

            $($item)*
        }
    };
    ($($item:item)*) => {
        on_both_backends!(@one on_sqlite, new, $($item)*);
        on_both_backends!(@one on_postgres_instances, instances, $($item)*);
    };
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Todo {
    title: String,
    done: bool,
}

fn todo(title: &str) -> Todo {
    Todo {
        title: title.to_owned(),
        done: false,
    }
}

async fn sync(client: &Client, group: &str) -> atomsync_client::SyncReport {
    client
        .sync(group)
        .await
        .unwrap_or_else(|e| panic!("{} syncs {group}: {e}", client.device_id()))
}

on_both_backends! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_clients_converge_on_same_key() {
        let setup = setup().await;
        let alice = setup.client("alice").await;
        let bob = setup.client("bob").await;
        // Both write the same new key while neither has synced.
        alice.set("todo", "milk", &todo("Buy milk")).await.unwrap();
        bob.set("todo", "milk", &todo("Buy oat milk"))
            .await
            .unwrap();

        let report = sync(&alice, "todo").await;
        assert!(report.conflicts.is_empty(), "{report:?}");
        // Bob's write is refused: the server's value wins, and the loss is
        // reported, not silent.
        let report = sync(&bob, "todo").await;
        assert_eq!(report.conflicts.len(), 1, "{report:?}");
        assert_eq!(report.changed, ["milk"]);
        sync(&alice, "todo").await;

        let expected = Some(todo("Buy milk"));
        assert_eq!(alice.get::<Todo>("todo", "milk").await.unwrap(), expected);
        assert_eq!(bob.get::<Todo>("todo", "milk").await.unwrap(), expected);
        let conflicts = bob.conflicts("todo").await.unwrap();
        assert_eq!(conflicts.len(), 1);
        let conflict = &conflicts[0];
        assert_eq!(conflict.key, "milk");
        assert_eq!(conflict.resolution, Resolution::ServerWins);
        assert_eq!(
            conflict.local.as_ref().unwrap().to_value::<Todo>().unwrap(),
            todo("Buy oat milk")
        );
        assert_eq!(
            conflict
                .server
                .as_ref()
                .unwrap()
                .to_value::<Todo>()
                .unwrap(),
            todo("Buy milk")
        );
        assert!(alice.conflicts("todo").await.unwrap().is_empty());
        assert_eq!(bob.take_conflicts("todo").await.unwrap().len(), 1);
        assert!(bob.conflicts("todo").await.unwrap().is_empty());
        for client in [&alice, &bob] {
            assert_eq!(client.status("todo").await.unwrap().pending, 0);
            assert_eq!(
                client.documents::<Todo>("todo").await.unwrap(),
                BTreeMap::from([("milk".to_owned(), todo("Buy milk"))])
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delete_propagates_across_clients() {
        let setup = setup().await;
        let alice = setup.client("alice").await;
        let bob = setup.client("bob").await;
        alice.set("todo", "milk", &todo("Buy milk")).await.unwrap();
        alice
            .set("todo", "bread", &todo("Buy bread"))
            .await
            .unwrap();
        sync(&alice, "todo").await;
        sync(&bob, "todo").await;
        assert_eq!(bob.documents::<Todo>("todo").await.unwrap().len(), 2);

        alice.delete("todo", "milk").await.unwrap();
        assert_eq!(alice.get::<Todo>("todo", "milk").await.unwrap(), None);
        sync(&alice, "todo").await;
        let report = sync(&bob, "todo").await;
        assert_eq!(report.changed, ["milk"]);
        assert_eq!(bob.get::<Todo>("todo", "milk").await.unwrap(), None);
        assert_eq!(
            bob.documents::<Todo>("todo").await.unwrap(),
            BTreeMap::from([("bread".to_owned(), todo("Buy bread"))])
        );

        // A fresh client sees the deletion too (the tombstone is pulled, the
        // document is not shown), and can recreate the key on top of it.
        let carol = setup.client("carol").await;
        sync(&carol, "todo").await;
        assert_eq!(carol.get::<Todo>("todo", "milk").await.unwrap(), None);
        carol
            .set("todo", "milk", &todo("Milk again"))
            .await
            .unwrap();
        let report = sync(&carol, "todo").await;
        assert!(report.conflicts.is_empty(), "{report:?}");
        sync(&bob, "todo").await;
        assert_eq!(
            bob.get::<Todo>("todo", "milk").await.unwrap(),
            Some(todo("Milk again"))
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn update_propagates_across_clients() {
        let setup = setup().await;
        let alice = setup.client("alice").await;
        let bob = setup.client("bob").await;
        alice.set("todo", "milk", &todo("Buy milk")).await.unwrap();
        sync(&alice, "todo").await;
        sync(&bob, "todo").await;
        assert_eq!(
            bob.get::<Todo>("todo", "milk").await.unwrap(),
            Some(todo("Buy milk"))
        );

        // Bob updates what he pulled; then Alice updates Bob's version.
        let done = Todo {
            title: "Buy milk".to_owned(),
            done: true,
        };
        bob.set("todo", "milk", &done).await.unwrap();
        let report = sync(&bob, "todo").await;
        assert!(report.conflicts.is_empty(), "{report:?}");
        let report = sync(&alice, "todo").await;
        assert_eq!(report.changed, ["milk"]);
        assert_eq!(alice.get::<Todo>("todo", "milk").await.unwrap(), Some(done));

        alice
            .set("todo", "milk", &todo("Buy more milk"))
            .await
            .unwrap();
        sync(&alice, "todo").await;
        sync(&bob, "todo").await;
        for client in [&alice, &bob] {
            assert_eq!(
                client.get::<Todo>("todo", "milk").await.unwrap(),
                Some(todo("Buy more milk"))
            );
            assert!(client.conflicts("todo").await.unwrap().is_empty());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn store_persists_across_client_restart() {
        let setup = setup().await;
        let alice = setup.client("alice").await;
        alice.set("todo", "milk", &todo("Buy milk")).await.unwrap();
        alice
            .set("todo", "bread", &todo("Buy bread"))
            .await
            .unwrap();
        sync(&alice, "todo").await;
        // Written after the sync: pending when the client goes away.
        alice.set("todo", "eggs", &todo("Buy eggs")).await.unwrap();
        alice.delete("todo", "bread").await.unwrap();
        drop(alice);

        // The same file, reopened: documents, pending changes and cursor are back.
        let alice = setup.client("alice").await;
        let status = alice.status("todo").await.unwrap();
        assert_eq!(status.pending, 2, "{status:?}");
        assert_eq!(
            alice.documents::<Todo>("todo").await.unwrap(),
            BTreeMap::from([
                ("eggs".to_owned(), todo("Buy eggs")),
                ("milk".to_owned(), todo("Buy milk")),
            ])
        );
        assert_eq!(alice.groups().await.unwrap(), ["todo"]);
        let report = sync(&alice, "todo").await;
        assert!(report.conflicts.is_empty(), "{report:?}");
        assert_eq!(alice.status("todo").await.unwrap().pending, 0);

        let bob = setup.client("bob").await;
        sync(&bob, "todo").await;
        assert_eq!(
            bob.documents::<Todo>("todo").await.unwrap(),
            alice.documents::<Todo>("todo").await.unwrap()
        );

        // Reopened once more, nothing is pending and nothing new arrives.
        drop(alice);
        let alice = setup.client("alice").await;
        assert_eq!(alice.status("todo").await.unwrap().pending, 0);
        let report = sync(&alice, "todo").await;
        assert_eq!(report.pushes, 0);
        assert!(report.changed.is_empty(), "{report:?}");
        assert_eq!(alice.documents::<Todo>("todo").await.unwrap().len(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fresh_client_pulls_from_server() {
        let setup = setup().await;
        let alice = setup.client("alice").await;
        for (key, title) in [
            ("milk", "Buy milk"),
            ("bread", "Buy bread"),
            ("eggs", "Eggs"),
        ] {
            alice.set("todo", key, &todo(title)).await.unwrap();
        }
        alice.delete("todo", "eggs").await.unwrap();
        sync(&alice, "todo").await;

        let fresh = setup.client("fresh").await;
        assert!(fresh.documents::<Todo>("todo").await.unwrap().is_empty());
        let report = sync(&fresh, "todo").await;
        assert_eq!(report.pushes, 0);
        assert_eq!(report.changed, ["bread", "milk"]);
        assert_eq!(
            fresh.documents::<Todo>("todo").await.unwrap(),
            BTreeMap::from([
                ("bread".to_owned(), todo("Buy bread")),
                ("milk".to_owned(), todo("Buy milk")),
            ])
        );
        let status = fresh.status("todo").await.unwrap();
        assert_eq!(status.pending, 0);
        assert!(!status.resyncing, "{status:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batch_sync_of_50_documents() {
        let setup = setup().await;
        let alice = setup.client("alice").await;
        let expected: BTreeMap<String, Todo> = (0..50)
            .map(|i| (format!("item-{i:02}"), todo(&format!("Item number {i}"))))
            .collect();
        for (key, value) in &expected {
            alice.set("todo", key, value).await.unwrap();
        }
        assert_eq!(alice.status("todo").await.unwrap().pending, 50);
        let report = sync(&alice, "todo").await;
        assert_eq!(report.pushes, 1, "one push carries the 50 changes");
        assert_eq!(alice.status("todo").await.unwrap().pending, 0);

        // Bob pulls them in pages of 7.
        let bob = Client::open_with_options(
            setup.client_db("bob"),
            &setup.url_for("bob").await,
            "bob",
            ClientOptions::default()
                .synchronous(Synchronous::Normal)
                .engine(atomsync_core::engine::EngineOptions::default().pull_limit(Some(7))),
        )
        .await
        .unwrap();
        let report = sync(&bob, "todo").await;
        assert_eq!(report.pulls, 8, "50 documents in pages of 7: {report:?}");
        assert_eq!(report.changed.len(), 50);
        assert_eq!(bob.documents::<Todo>("todo").await.unwrap(), expected);
        assert_eq!(alice.documents::<Todo>("todo").await.unwrap(), expected);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pending_changes_survive_server_restart() {
        let mut setup = setup().await;
        let alice = setup.client("alice").await;
        let bob = setup.client("bob").await;
        alice.set("todo", "milk", &todo("Buy milk")).await.unwrap();
        alice
            .set("todo", "bread", &todo("Buy bread"))
            .await
            .unwrap();
        sync(&alice, "todo").await;
        sync(&bob, "todo").await;
        let url = setup.server.url();

        setup.server.stop().await;
        // Written while the server is down: they stay pending, durably.
        alice.set("todo", "eggs", &todo("Buy eggs")).await.unwrap();
        alice.delete("todo", "bread").await.unwrap();
        alice
            .set("todo", "milk", &todo("Buy oat milk"))
            .await
            .unwrap();
        let error = alice.sync("todo").await.unwrap_err();
        assert!(
            matches!(error, Error::Sync(Failure::Unreachable)),
            "{error}"
        );
        assert_eq!(alice.status("todo").await.unwrap().pending, 3);
        // The client restarts too while the server is away.
        drop(alice);
        let alice = setup.client("alice").await;
        assert_eq!(alice.status("todo").await.unwrap().pending, 3);

        setup.server.restart().await;
        assert_eq!(setup.server.url(), url, "the same port");
        let report = sync(&alice, "todo").await;
        assert!(report.conflicts.is_empty(), "{report:?}");
        assert_eq!(alice.status("todo").await.unwrap().pending, 0);

        // Bob continues from his cursor of before the restart (same database).
        let report = sync(&bob, "todo").await;
        assert_eq!(report.changed, ["bread", "eggs", "milk"]);
        let expected = BTreeMap::from([
            ("eggs".to_owned(), todo("Buy eggs")),
            ("milk".to_owned(), todo("Buy oat milk")),
        ]);
        assert_eq!(bob.documents::<Todo>("todo").await.unwrap(), expected);
        assert_eq!(alice.documents::<Todo>("todo").await.unwrap(), expected);
        assert!(!bob.status("todo").await.unwrap().resyncing);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn groups_are_isolated() {
        let setup = setup().await;
        let alice = setup.client("alice").await;
        let bob = setup.client("bob").await;
        // The same key in two groups; the engines of one device push as
        // different client ids, so their mutation numbers (both starting at 1)
        // do not collide.
        alice.set("todo", "shared", &todo("in todo")).await.unwrap();
        alice.set("work", "shared", &todo("in work")).await.unwrap();
        alice
            .set("work", "only-work", &todo("work item"))
            .await
            .unwrap();
        sync(&alice, "todo").await;
        sync(&alice, "work").await;

        sync(&bob, "todo").await;
        assert_eq!(
            bob.documents::<Todo>("todo").await.unwrap(),
            BTreeMap::from([("shared".to_owned(), todo("in todo"))])
        );
        assert!(bob.documents::<Todo>("work").await.unwrap().is_empty());

        sync(&bob, "work").await;
        assert_eq!(
            bob.documents::<Todo>("work").await.unwrap(),
            BTreeMap::from([
                ("only-work".to_owned(), todo("work item")),
                ("shared".to_owned(), todo("in work")),
            ])
        );

        // A deletion in one group leaves the other alone.
        bob.delete("todo", "shared").await.unwrap();
        sync(&bob, "todo").await;
        sync(&alice, "todo").await;
        let report = sync(&alice, "work").await;
        assert!(report.changed.is_empty(), "{report:?}");
        assert_eq!(alice.get::<Todo>("todo", "shared").await.unwrap(), None);
        assert_eq!(
            alice.get::<Todo>("work", "shared").await.unwrap(),
            Some(todo("in work"))
        );
        let mut groups = bob.groups().await.unwrap();
        groups.sort();
        assert_eq!(groups, ["todo", "work"]);
    }

    /// Every kind of value the codec has to keep exact.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    struct Rich {
        /// A UUID as its 16 bytes, and as its text.
        id: [u8; 16],
        id_text: String,
        tags: BTreeSet<String>,
        /// Milliseconds since the Unix epoch.
        created_at: i64,
        status: Status,
        /// Unset, explicitly cleared, or set.
        note: Option<Option<String>>,
        floats: Vec<f64>,
        ratio: f32,
        weights: BTreeMap<String, f64>,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Status {
        Open,
        Snoozed { until: i64, reason: Option<String> },
        Done(String),
        Moved(u8, char),
    }

    /// Bitwise equality for floats (NaN signs and -0.0 included), plain equality
    /// for the rest.
    fn assert_same(a: &Rich, b: &Rich) {
        let bits = |floats: &[f64]| floats.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        let weights = |r: &Rich| {
            r.weights
                .iter()
                .map(|(k, v)| (k.clone(), v.to_bits()))
                .collect::<Vec<_>>()
        };
        assert_eq!(a.id, b.id);
        assert_eq!(a.id_text, b.id_text);
        assert_eq!(a.tags, b.tags);
        assert_eq!(a.created_at, b.created_at);
        assert_eq!(a.status, b.status);
        assert_eq!(a.note, b.note);
        assert_eq!(
            bits(&a.floats),
            bits(&b.floats),
            "{:?} vs {:?}",
            a.floats,
            b.floats
        );
        assert_eq!(a.ratio.to_bits(), b.ratio.to_bits());
        assert_eq!(weights(a), weights(b));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rich_types_round_trip_between_clients() {
        let setup = setup().await;
        let alice = setup.client("alice").await;
        let bob = setup.client("bob").await;
        let uuid = [
            0x55, 0x0e, 0x84, 0x00, 0xe2, 0x9b, 0x41, 0xd4, 0xa7, 0x16, 0x44, 0x66, 0x55, 0x44, 0x00,
            0x00,
        ];
        let base = Rich {
            id: uuid,
            id_text: "550e8400-e29b-41d4-a716-446655440000".to_owned(),
            tags: ["home", "urgent", "with \"quotes\" and \\ and λ", ""]
                .into_iter()
                .map(str::to_owned)
                .collect(),
            created_at: 1_718_035_200_123,
            status: Status::Open,
            note: None,
            floats: vec![
                f64::MAX,
                f64::MIN,
                5e-324,
                -5e-324,
                f64::MIN_POSITIVE,
                0.0,
                -0.0,
                f64::NAN,
                -f64::NAN,
                f64::INFINITY,
                f64::NEG_INFINITY,
                0.1 + 0.2,
                1e16,
            ],
            ratio: f32::MIN_POSITIVE,
            weights: BTreeMap::from([("nan".to_owned(), -f64::NAN), ("zero".to_owned(), -0.0)]),
        };
        let documents = BTreeMap::from([
            ("plain".to_owned(), base.clone()),
            (
                "snoozed".to_owned(),
                Rich {
                    status: Status::Snoozed {
                        until: i64::MIN,
                        reason: Some("later".to_owned()),
                    },
                    note: Some(None),
                    created_at: i64::MAX,
                    ..base.clone()
                },
            ),
            (
                "done".to_owned(),
                Rich {
                    status: Status::Done("yes\n\t\u{1F600}".to_owned()),
                    note: Some(Some("a note".to_owned())),
                    created_at: -1,
                    tags: BTreeSet::new(),
                    floats: Vec::new(),
                    ..base.clone()
                },
            ),
            (
                "moved".to_owned(),
                Rich {
                    status: Status::Moved(255, '\u{0}'),
                    note: Some(Some(String::new())),
                    id: [0; 16],
                    ..base.clone()
                },
            ),
        ]);
        for (key, value) in &documents {
            alice.set("rich", key, value).await.unwrap();
        }
        sync(&alice, "rich").await;
        sync(&bob, "rich").await;

        let received = bob.documents::<Rich>("rich").await.unwrap();
        assert_eq!(
            received.keys().collect::<Vec<_>>(),
            documents.keys().collect::<Vec<_>>()
        );
        for (key, value) in &documents {
            assert_same(&received[key], value);
            let one = bob.get::<Rich>("rich", key).await.unwrap().unwrap();
            assert_same(&one, value);
        }
        // Bob's reopened database gives the same values back: what is stored
        // locally is exact too.
        drop(bob);
        let bob = setup.client("bob").await;
        for (key, value) in &documents {
            assert_same(&bob.get::<Rich>("rich", key).await.unwrap().unwrap(), value);
        }
        // The distinction between "unset" and "cleared" survives.
        let notes: Vec<_> = bob
            .documents::<Rich>("rich")
            .await
            .unwrap()
            .into_values()
            .map(|r| r.note)
            .collect();
        assert!(notes.contains(&None) && notes.contains(&Some(None)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bearer_tokens_authorize_and_refusals_halt() {
        let dir = tempfile::tempdir().unwrap();
        let users = r#"
            [users.alice]
            token = "alice-token"
            groups = ["todo"]
        "#;
        let server = TestServer::start_with_users(dir.path(), Some(users)).await;
        let url = server.url();
        let db = dir.path().join("alice.db");
        let open = async |token: Option<&str>| {
            let mut options = ClientOptions::default().synchronous(Synchronous::Normal);
            if let Some(token) = token {
                options = options.token(token);
            }
            Client::open_with_options(&db, &url, "alice", options).await
        };

        // Without a token: 401, and syncing halts (local writes go on).
        let alice = open(None).await.unwrap();
        alice.set("todo", "milk", &todo("Buy milk")).await.unwrap();
        let error = alice.sync("todo").await.unwrap_err();
        let Some(Failure::Error(body)) = error.failure() else {
            panic!("{error}")
        };
        assert_eq!(body.error, ErrorCode::Unauthorized);
        assert!(matches!(alice.sync("todo").await, Err(Error::Halted(_))));

        // With the token, after a resume: the pending write goes through.
        alice.set_token(Some("alice-token".to_owned()));
        alice.resume("todo").await.unwrap();
        sync(&alice, "todo").await;
        assert_eq!(alice.status("todo").await.unwrap().pending, 0);
        drop(alice);

        // A group the token may not use: 403, halted too.
        let alice = open(Some("alice-token")).await.unwrap();
        alice.set("work", "x", &todo("x")).await.unwrap();
        let error = alice.sync("work").await.unwrap_err();
        assert_eq!(
            error.failure().map(Failure::kind),
            Some(FailureKind::Auth),
            "{error}"
        );
        let Some(Failure::Error(body)) = error.failure() else {
            panic!("{error}")
        };
        assert_eq!(body.error, ErrorCode::Forbidden);
        assert_eq!(alice.status("work").await.unwrap().pending, 1);
        // The other group is not affected.
        sync(&alice, "todo").await;
    }
}

/// Halts and timeouts of the native client (#9 findings 6 and 8), on one
/// SQLite server.
mod halts_and_timeouts {
    use super::*;

    /// Issue #9, finding 6 (native): a 401 before login is not a halt for ever:
    /// the token, once set, ends it without a `resume`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_token_ends_a_credentials_halt() {
        let dir = tempfile::tempdir().unwrap();
        let users = r#"
            [users.alice]
            token = "alice-token"
            groups = ["todo"]
        "#;
        let server = TestServer::start_with_users(dir.path(), Some(users)).await;
        let alice = Client::open_with_options(
            dir.path().join("alice.db"),
            &server.url(),
            "alice",
            ClientOptions::default().synchronous(Synchronous::Normal),
        )
        .await
        .unwrap();
        alice.set("todo", "milk", &todo("Buy milk")).await.unwrap();
        let error = alice.sync("todo").await.unwrap_err();
        assert_eq!(error.failure().map(Failure::kind), Some(FailureKind::Auth));
        assert!(matches!(alice.sync("todo").await, Err(Error::Halted(_))));
        // A wrong token is refused too (and halts again); the right one syncs.
        alice.set_token(Some("wrong".to_owned()));
        let error = alice.sync("todo").await.unwrap_err();
        assert_eq!(error.failure().map(Failure::kind), Some(FailureKind::Auth));
        alice.set_token(Some("alice-token".to_owned()));
        sync(&alice, "todo").await;
        assert_eq!(alice.status("todo").await.unwrap().pending, 0);
    }

    /// Issue #9, finding 8 (native): a server that accepts the connection and
    /// never answers costs one request timeout, then the usual backoff; the
    /// next sync goes through.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_request_times_out_and_the_next_one_syncs() {
        use tokio::net::TcpListener;
        let setup = Setup::new().await;
        // In front of the server: the first connection is held open and never
        // answered; the others are passed through.
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
        let server = setup.server.address;
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let Ok((mut inbound, _)) = proxy.accept().await else {
                    return;
                };
                if held.is_empty() {
                    held.push(inbound);
                    continue;
                }
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(server).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        let client = Client::open_with_options(
            setup.client_db("laptop"),
            &proxy_url,
            "laptop",
            ClientOptions::default()
                .synchronous(Synchronous::Normal)
                .timeout(Duration::from_millis(500)),
        )
        .await
        .unwrap();
        client.set("todo", "milk", &todo("Buy milk")).await.unwrap();
        let started = std::time::Instant::now();
        let error = tokio::time::timeout(Duration::from_secs(10), client.sync("todo"))
            .await
            .expect("the hung request times out")
            .unwrap_err();
        assert!(
            matches!(error, Error::Sync(Failure::Unreachable)),
            "{error}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        let status = client.status("todo").await.unwrap();
        assert_eq!((status.pending, status.failures), (1, 1));
        assert!(status.ready_at.is_some() && status.halted.is_none());
        sync(&client, "todo").await;
        assert_eq!(client.status("todo").await.unwrap().pending, 0);
    }
}
