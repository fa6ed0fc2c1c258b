//! Helpers shared by the integration tests.
#![allow(dead_code, missing_docs, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use atomsync_core::protocol::{CONTENT_TYPE, Change, ErrorBody, PushRequest};
use atomsync_core::sexpr::{self, Raw};
use atomsync_server::{Credentials, Store, StoreOptions, SyncService, Synchronous};

pub mod pg;

/// The backends every store, service and route test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// A fresh store: SQLite in memory, or a new PostgreSQL database.
    pub fn store_with(self, options: &StoreOptions) -> Store {
        match self {
            Backend::Sqlite => Store::open_in_memory_with(options).unwrap(),
            Backend::Postgres => Store::open(pg::fresh_database(), options.clone()).unwrap(),
        }
    }

    /// A fresh store with default options.
    pub fn store(self) -> Store {
        self.store_with(&StoreOptions::default())
    }

    /// A fresh service on a fresh store.
    pub fn service(self) -> SyncService {
        SyncService::new(self.store())
    }

    /// Where a fresh durable database is: a SQLite file in `dir`, or a new
    /// PostgreSQL database's URL.
    pub fn location(self, dir: &Path) -> String {
        match self {
            Backend::Sqlite => dir.join("db").display().to_string(),
            Backend::Postgres => pg::fresh_database(),
        }
    }

    /// A fresh service on a durable store: a SQLite file at `path` (without
    /// syncing), or a new PostgreSQL database.
    pub fn file_service(self, path: &Path) -> SyncService {
        match self {
            Backend::Sqlite => file_service(path),
            Backend::Postgres => self.service(),
        }
    }
}

/// Runs the items (tests and their helpers) once per backend, in modules
/// `on_sqlite` and `on_postgres`, where `backend()`, `store()`,
/// `store_with(..)` and `service()` give that backend's.
#[macro_export]
macro_rules! on_both_backends {
    (@one $module:ident, $backend:ident, $($item:item)*) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;

            #[allow(dead_code)]
            fn backend() -> $crate::common::Backend {
                $crate::common::Backend::$backend
            }

            #[allow(dead_code)]
            fn store() -> atomsync_server::Store {
                backend().store()
            }

            #[allow(dead_code)]
            fn store_with(options: &atomsync_server::StoreOptions) -> atomsync_server::Store {
                backend().store_with(options)
            }

            #[allow(dead_code)]
            fn service() -> atomsync_server::SyncService {
                backend().service()
            }

            #[allow(dead_code)]
            fn location(dir: &std::path::Path) -> String {
                backend().location(dir)
            }

            #[allow(dead_code)]
            fn file_service(path: &std::path::Path) -> atomsync_server::SyncService {
                backend().file_service(path)
            }

            $($item)*
        }
    };
    ($($item:item)*) => {
        $crate::on_both_backends!(@one on_sqlite, Sqlite, $($item)*);
        $crate::on_both_backends!(@one on_postgres, Postgres, $($item)*);
    };
}

pub fn raw(text: &str) -> Raw {
    Raw::from_text(text).unwrap()
}

pub fn change(mutation: u64, key: &str, base_version: u64, value: Option<&str>) -> Change {
    Change {
        mutation,
        key: key.to_owned(),
        base_version,
        value: value.map(raw),
    }
}

pub fn push_request(group: &str, client: &str, changes: Vec<Change>) -> PushRequest {
    PushRequest {
        group: group.to_owned(),
        client_id: client.to_owned(),
        changes,
        low_water: None,
        epoch: None,
    }
}

pub fn push_body(group: &str, client: &str, changes: Vec<Change>) -> String {
    sexpr::to_string(&push_request(group, client, changes)).unwrap()
}

pub fn decode_error(body: &[u8]) -> ErrorBody {
    sexpr::from_slice(body)
        .unwrap_or_else(|e| panic!("not an ErrorBody ({e}): {}", String::from_utf8_lossy(body)))
}

pub fn service() -> SyncService {
    SyncService::new(Store::open_in_memory().unwrap())
}

/// A file-backed service without syncing, for fast tests.
pub fn file_service(path: &Path) -> SyncService {
    let store = Store::open(path, StoreOptions::default().synchronous(Synchronous::Off)).unwrap();
    SyncService::new(store)
}

/// Serves `app` on 127.0.0.1 with an ephemeral port until the returned guard
/// is dropped.
pub struct InProcessServer {
    pub address: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl InProcessServer {
    pub async fn start(app: axum::Router, service: SyncService) -> InProcessServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                    service.shutdown();
                })
                .await
                .unwrap();
        });
        InProcessServer {
            address,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("the server did not stop")
                .unwrap();
        }
    }
}

impl Drop for InProcessServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The `atomsync-server` binary, killed when dropped.
pub struct ServerProcess {
    pub child: Child,
    pub address: SocketAddr,
    _stdout: BufReader<ChildStdout>,
}

impl ServerProcess {
    /// Starts the binary with `--port 0` and `args`, and waits for its
    /// `listening on` line.
    pub fn start(args: &[&str]) -> ServerProcess {
        let mut all = vec!["--port", "0"];
        all.extend_from_slice(args);
        ServerProcess::start_with(&all)
    }

    /// Starts the binary with exactly `args` (which must pick port 0).
    pub fn start_with(args: &[&str]) -> ServerProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_atomsync-server"));
        child
            .args(args)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = Guard(Some(
            child.spawn().expect("failed to start atomsync-server"),
        ));
        let stdout = child.0.as_mut().unwrap().stdout.take().unwrap();
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            let n = stdout.read_line(&mut line).unwrap();
            assert!(n > 0, "atomsync-server exited before listening");
            if let Some(address) = line.trim().strip_prefix("listening on http://") {
                return ServerProcess {
                    child: child.take(),
                    address: address.parse().unwrap(),
                    _stdout: stdout,
                };
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("atomsync-server did not stop on SIGTERM");
    }
}

/// Kills the child if starting it fails half-way.
struct Guard(Option<Child>);

impl Guard {
    fn take(mut self) -> Child {
        self.0.take().unwrap()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// POSTs a push over HTTP.
pub async fn http_push(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    request: &PushRequest,
) -> reqwest::Response {
    let mut builder = client
        .post(url)
        .header("content-type", CONTENT_TYPE)
        .body(sexpr::to_string(request).unwrap());
    if let Some(token) = token {
        builder = builder.bearer_auth(token);
    }
    builder.send().await.unwrap()
}

pub fn anyone() -> Credentials {
    Credentials::none()
}
