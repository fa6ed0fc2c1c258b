//! The atomsync server: versioned documents in SQLite or PostgreSQL, served
//! over HTTP.
//!
//! The server is the source of truth that every atomsync client converges to.
//! It keeps the documents of each group in SQLite (embedded, the default) or
//! in PostgreSQL (any number of servers on one database), gives every accepted change
//! a strictly increasing change number, and speaks the protocol of
//! [`atomsync_core::protocol`] (S-expression bodies, see `docs/protocol.md`):
//!
//! - `GET /sync?group=G&since=CURSOR&limit=N`: the documents of `G` changed
//!   after `CURSOR`, in change order ([`PullResponse`](atomsync_core::protocol::PullResponse)).
//! - `POST /sync`: a batch of changes to one group, each accepted or refused as
//!   a conflict ([`PushResponse`](atomsync_core::protocol::PushResponse)).
//! - `GET /events?group=G`: a server-sent-events stream of the latest cursor,
//!   sent whenever a change in `G` is accepted.
//!
//! It runs standalone (the `atomsync-server` binary) or inside a host axum
//! application, which mounts [`router`] and may bring its own [`Authorizer`].
//!
//! ## Usage
//!
//! ```no_run
//! use atomsync_server::{SyncService, Store, TokenFile};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = Store::open("atomsync.db", Default::default())?;
//! let users = TokenFile::load("users.toml")?;
//! let service = SyncService::with_authorizer(store, users);
//! let app = axum::Router::new()
//!     .route("/", axum::routing::get(|| async { "my app" }))
//!     .nest("/atomsync", atomsync_server::router(service));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8090").await?;
//! axum::serve(listener, app).await?;
//! # Ok(())
//! # }
//! ```
//!
//! The same operations are available without HTTP through [`SyncService`]'s
//! async methods, which is what server functions call:
//!
//! ```
//! use atomsync_core::protocol::{Change, PullRequest, PushRequest};
//! use atomsync_core::sexpr::Raw;
//! use atomsync_server::{Credentials, Store, SyncService};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> atomsync_server::Result<()> {
//! let service = SyncService::new(Store::open_in_memory()?);
//! let credentials = Credentials::none();
//! let push = PushRequest {
//!     group: "todo".into(),
//!     client_id: "client-1".into(),
//!     changes: vec![Change {
//!         mutation: 1,
//!         key: "milk".into(),
//!         base_version: 0,
//!         value: Some(Raw::from_text("((title . \"Buy milk\"))").unwrap()),
//!     }],
//!     low_water: None,
//!     epoch: None,
//! };
//! service.push(&credentials, push).await?;
//! let pull = PullRequest { group: "todo".into(), since: None, limit: None };
//! let page = service.pull(&credentials, pull).await?;
//! assert_eq!(page.documents[0].version, 1);
//! # Ok(())
//! # }
//! ```
//!
//! ## Features
//!
//! - `cli` (default): what only the `atomsync-server` binary needs (clap,
//!   tracing-subscriber, tower-http's CORS). A host app that mounts the
//!   router turns it off: `atomsync-server = { version = "0.1",
//!   default-features = false }` is the library alone. `toml` stays in the
//!   library: [`TokenFile`] (the users file) is library API, and host apps
//!   load it too.
//!
//! ## Design
//!
//! - [`Store`] is a plain, blocking store over two backends with the same
//!   answers: SQLite (one connection) or PostgreSQL (one connection per
//!   server, opened again when it breaks); one transaction per pull or push,
//!   schema from a `const` list of migrations per backend, run on open.
//!   Change numbers come from a counter row advanced in the same transaction
//!   as the change (with PostgreSQL, locked by it: `SELECT .. FOR UPDATE`, so
//!   pushes commit in change-number order across servers), so a pull (one
//!   read transaction, `REPEATABLE READ` on PostgreSQL) sees every change up
//!   to its cursor and no later commit can carry a smaller number. A copy of
//!   a PostgreSQL database (restored, recovered to a point in time, a
//!   promoted replica) gets a new epoch when opened.
//! - PostgreSQL is reached with the [`postgres`](https://docs.rs/postgres)
//!   crate, the blocking face of `tokio-postgres`: the store runs on one
//!   blocking thread per server, as with SQLite, and `tokio-postgres` gives
//!   direct `LISTEN`/`NOTIFY`, transactions with isolation levels, prepared
//!   statements and the server's error codes, with no compile-time database
//!   or query macros. `sqlx` was set aside: its pool, runtime glue and macros
//!   bring nothing to one connection per server, and its listener is no
//!   simpler. Each connection runs on a private single-threaded runtime;
//!   a store used directly from async code does its blocking work on a scoped
//!   thread (the service's store thread needs none).
//! - Live updates across servers: a PostgreSQL push that accepted a change
//!   sends `NOTIFY atomsync` in its transaction; each [`SyncService`] on a
//!   PostgreSQL store keeps a listening connection, passes the other
//!   servers' notifications to its `/events` subscribers, and after it
//!   reconnects (by itself) pokes every subscriber, since notifications sent
//!   meanwhile are lost. See `docs/deploy.md`.
//! - [`SyncService`] owns the store on a dedicated thread: async callers send
//!   it jobs and await the answer, so SQLite never blocks the executor. It
//!   also checks authorization, broadcasts accepted changes to the `/events`
//!   streams, and (on SQLite only, where no other process writes) answers a
//!   pull whose cursor is already the latest without asking the store.
//! - [`router`] is a thin HTTP adapter over [`SyncService`]: it parses query
//!   strings and S-expression bodies and maps every failure to an [`Error`],
//!   whose response is an S-expression
//!   [`ErrorBody`](atomsync_core::protocol::ErrorBody).
//! - Security rules live in one place each, shared by the routes and the
//!   Leptos server functions: the service's [`OriginPolicy`] (cross-site
//!   requests) and [`read_sexpr_body`] (content type, body size and time).
//!   The router caps its `/events` streams; [`serve`] bounds connections
//!   (header and idle timeouts, how many at once). See `docs/security.md`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod auth;
mod error;
mod history;
mod limits;
mod origin;
mod routes;
mod serve;
mod service;
mod store;

pub use auth::{AllowAll, AuthError, Authorizer, Credentials, TokenFile};
pub use error::{Error, Result};
pub use limits::read_sexpr_body;
pub use origin::OriginPolicy;
pub use routes::{RouterOptions, router, router_with_options};
pub use serve::{Serve, ServeOptions, serve};
pub use service::{Subscription, SyncService};
pub use store::{Store, StoreOptions, StoreStats, Synchronous};
