//! [`SyncService`]: the store on its own thread, authorization and change
//! notifications, shared by the HTTP routes and server functions.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, mpsc};
use std::time::{Duration, Instant};

use atomsync_core::protocol::{self, Cursor, PullRequest, PullResponse, PushRequest, PushResponse};
use futures_util::Stream;
use http::HeaderMap;
use tokio::sync::{broadcast, oneshot, watch};

use crate::auth::{AllowAll, Authorizer, Credentials};
use crate::{Error, OriginPolicy, Result, Store};

/// How many jobs may wait for the store before callers get
/// [`Error::Unavailable`].
const QUEUE: usize = 4096;
/// How long the store thread keeps polling for work before it sleeps.
const SPIN: Duration = Duration::from_micros(50);
/// How often the store thread purges tombstones past the horizon.
const PURGE_EVERY: Duration = Duration::from_secs(3600);
/// How many change events a slow `/events` stream may fall behind before it
/// skips to the latest cursor.
const EVENTS: usize = 1024;

type Job = Box<dyn FnOnce(&mut Store) + Send>;

enum Message {
    Job(Job),
    Close(oneshot::Sender<()>),
}

/// A change accepted in a group: the change number after it.
#[derive(Clone)]
struct Event {
    group: Arc<str>,
    seq: u64,
    /// For every group: notifications may have been lost (the PostgreSQL
    /// listener reconnected).
    all: bool,
}

struct Shared {
    epoch: Arc<str>,
    /// The latest change number, updated after each commit and before its
    /// event is sent.
    latest: AtomicU64,
    /// The store's purge floor (see [`Cursor::floor`]).
    floor: AtomicU64,
    events: broadcast::Sender<Event>,
    /// Changes received in authorized pushes since start, retries included.
    changes_received: AtomicU64,
    /// Other servers write to the database too (PostgreSQL): `latest` is
    /// only what this one heard of, never a reason to skip the store.
    shared_db: bool,
    /// Set by [`SyncService::close`]: the listener stops.
    closed: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn cursor_at(&self, seq: u64) -> Cursor {
        Cursor {
            epoch: self.epoch.to_string(),
            seq,
            floor: self.floor.load(Ordering::Acquire),
        }
    }
}

struct Inner {
    jobs: mpsc::SyncSender<Message>,
    shared: Arc<Shared>,
    authorizer: Box<dyn Authorizer>,
    origin: RwLock<OriginPolicy>,
    shutdown: watch::Sender<bool>,
    /// A [`router`](crate::router) was made for this service.
    router_made: std::sync::atomic::AtomicBool,
}

/// The sync operations (pull, push, subscribe) with authorization, over a
/// [`Store`] running on a dedicated thread.
///
/// Cloning is cheap (an `Arc`); all clones share the store. The HTTP routes
/// ([`router`](crate::router)) and a host's server functions both call these
/// methods, so every client speaks the same protocol.
///
/// The store thread ends when the last clone is dropped or on
/// [`SyncService::close`].
#[derive(Clone)]
pub struct SyncService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SyncService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncService")
            .field("epoch", &self.inner.shared.epoch)
            .field("latest", &self.inner.shared.latest)
            .finish_non_exhaustive()
    }
}

impl SyncService {
    /// Serves `store` to everyone ([`AllowAll`]).
    pub fn new(store: Store) -> Self {
        SyncService::with_authorizer(store, AllowAll)
    }

    /// Serves `store` to the requests `authorizer` lets through.
    ///
    /// # Panics
    ///
    /// If the operating system cannot start a thread.
    pub fn with_authorizer(store: Store, authorizer: impl Authorizer) -> Self {
        let (events, _) = broadcast::channel(EVENTS);
        let shared = Arc::new(Shared {
            epoch: store.epoch().into(),
            latest: AtomicU64::new(store.cursor().seq),
            floor: AtomicU64::new(store.cursor().floor),
            events,
            changes_received: AtomicU64::new(0),
            shared_db: store.is_shared(),
            closed: std::sync::atomic::AtomicBool::new(false),
        });
        if let Some(listener) = store.listener() {
            let weak = Arc::downgrade(&shared);
            std::thread::Builder::new()
                .name("atomsync-listen".to_owned())
                .spawn(move || listen(&listener, &weak))
                .expect("failed to start the listener thread");
        }
        let (jobs, queue) = mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("atomsync-store".to_owned())
            .spawn({
                let shared = Arc::clone(&shared);
                move || run_store(store, &queue, &shared)
            })
            .expect("failed to start the store thread");
        let (shutdown, _) = watch::channel(false);
        SyncService {
            inner: Arc::new(Inner {
                jobs,
                shared,
                authorizer: Box::new(authorizer),
                origin: RwLock::new(OriginPolicy::default()),
                shutdown,
                router_made: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// `self` with the [`OriginPolicy`] that decides which browser pages may
    /// call it ([`OriginPolicy::same_origin`] by default), for every clone
    /// (see [`SyncService::set_origin_policy`]).
    pub fn with_origin_policy(self, policy: OriginPolicy) -> Self {
        self.set_origin_policy(policy);
        self
    }

    /// Replaces the [`OriginPolicy`] of this service and all its clones. The
    /// HTTP routes and the Leptos server functions both check it (through
    /// [`SyncService::check_origin`]), so one setting covers both.
    pub fn set_origin_policy(&self, policy: OriginPolicy) {
        *self
            .inner
            .origin
            .write()
            .unwrap_or_else(PoisonError::into_inner) = policy;
    }

    /// The current [`OriginPolicy`].
    pub fn origin_policy(&self) -> OriginPolicy {
        self.inner
            .origin
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Checks a request's headers against the [`OriginPolicy`]
    /// ([`OriginPolicy::check`]): the first check of every request.
    ///
    /// # Errors
    ///
    /// [`Error::CrossOrigin`] (403) for a page of another site.
    pub fn check_origin(&self, headers: &HeaderMap) -> Result<()> {
        self.inner
            .origin
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .check(headers)
    }

    /// The identity of the served database.
    pub fn epoch(&self) -> &str {
        &self.inner.shared.epoch
    }

    /// The cursor after the last accepted change this server knows of: on
    /// SQLite, the latest; on PostgreSQL, the latest this server made or
    /// heard of from the others (their notifications arrive within
    /// milliseconds), which requests never rely on.
    pub fn cursor(&self) -> Cursor {
        let shared = &self.inner.shared;
        shared.cursor_at(shared.latest.load(Ordering::Acquire))
    }

    /// Checks that `credentials` identify someone, before any work is done
    /// for the request ([`Authorizer::authenticate`]).
    ///
    /// # Errors
    ///
    /// [`Error::Unauthorized`].
    pub fn authenticate(&self, credentials: &Credentials) -> Result<()> {
        self.inner
            .authorizer
            .authenticate(credentials)
            .map_err(|e| e.into_error(""))
    }

    fn authorize(&self, credentials: &Credentials, group: &str) -> Result<()> {
        self.inner
            .authorizer
            .authorize(credentials, group)
            .map_err(|e| e.into_error(group))
    }

    /// Reads the changes of a group ([`Store::pull`]) if `credentials` may use
    /// it.
    ///
    /// # Errors
    ///
    /// [`Error::Unauthorized`], [`Error::Forbidden`], those of
    /// [`Store::pull`], and [`Error::Unavailable`] if the store is closed or
    /// overloaded.
    pub async fn pull(
        &self,
        credentials: &Credentials,
        request: PullRequest,
    ) -> Result<PullResponse> {
        // Well-formed first (400), then allowed (403), as on every route.
        protocol::validate_group(&request.group).map_err(Error::BadRequest)?;
        if request.limit == Some(0) {
            return Err(Error::BadRequest("limit must be at least 1".to_owned()));
        }
        self.authorize(credentials, &request.group)?;
        // An up-to-date cursor (the usual poll): nothing changed after it, in
        // any group, and the store need not be asked.
        // (Not when other servers share the database: they may have.)
        let shared = &self.inner.shared;
        let up_to_date = request.since.as_ref().filter(|since| {
            !shared.shared_db
                && *since.epoch == *shared.epoch
                && since.seq == shared.latest.load(Ordering::Acquire)
        });
        if let Some(since) = up_to_date {
            return Ok(PullResponse {
                documents: Vec::new(),
                cursor: since.clone(),
                more: false,
            });
        }
        let response = self.call(move |store| store.pull(&request)).await??;
        tracing::debug!(
            documents = response.documents.len(),
            cursor = %response.cursor,
            more = response.more,
            "pull"
        );
        Ok(response)
    }

    /// How many changes authorized pushes have brought since the service
    /// started, retries and duplicates included (diagnostics: a client that
    /// sends a change twice shows here, though the store applies it once).
    pub fn changes_received(&self) -> u64 {
        self.inner.shared.changes_received.load(Ordering::Relaxed)
    }

    /// Applies a batch of changes ([`Store::push`]) if `credentials` may use
    /// the group, and notifies the group's subscribers when a change was
    /// accepted.
    ///
    /// # Errors
    ///
    /// [`Error::Unauthorized`], [`Error::Forbidden`], those of
    /// [`Store::push`], and [`Error::Unavailable`] if the store is closed or
    /// overloaded.
    pub async fn push(
        &self,
        credentials: &Credentials,
        request: PushRequest,
    ) -> Result<PushResponse> {
        crate::store::validate_push(&request)?;
        self.authorize(credentials, &request.group)?;
        let shared = Arc::clone(&self.inner.shared);
        shared
            .changes_received
            .fetch_add(request.changes.len() as u64, Ordering::Relaxed);
        self.call(move |store| {
            let before = store.cursor().seq;
            let response = store.push(&request)?;
            let after = response.cursor.seq;
            tracing::debug!(
                group = %request.group,
                client = %request.client_id,
                changes = request.changes.len(),
                applied = after.saturating_sub(before),
                "push"
            );
            if after != before {
                // Still on the store thread: events leave in change order.
                shared.latest.fetch_max(after, Ordering::AcqRel);
                let _no_subscribers = shared.events.send(Event {
                    group: request.group.as_str().into(),
                    seq: after,
                    all: false,
                });
            }
            Ok(response)
        })
        .await?
    }

    /// Follows a group: the returned [`Subscription`] yields the current
    /// cursor first, then the latest cursor after each accepted change in the
    /// group. It ends on [`SyncService::shutdown`].
    ///
    /// On PostgreSQL, changes accepted by the other servers on the database
    /// count too (they arrive by `LISTEN`/`NOTIFY`); when this server's
    /// listening connection is cut, it reconnects by itself and every
    /// subscription gets the latest cursor, since notifications sent
    /// meanwhile were lost.
    ///
    /// # Errors
    ///
    /// [`Error::BadRequest`] for an invalid group name,
    /// [`Error::Unauthorized`], [`Error::Forbidden`].
    pub async fn subscribe(&self, credentials: &Credentials, group: &str) -> Result<Subscription> {
        protocol::validate_group(group).map_err(Error::BadRequest)?;
        self.authorize(credentials, group)?;
        let shared = &self.inner.shared;
        // Subscribe before reading the cursor: a change committed in between
        // is then seen by one or the other.
        let events = shared.events.subscribe();
        let initial = if shared.shared_db {
            self.call(|store| store.latest_cursor()).await??
        } else {
            self.cursor()
        };
        Ok(Subscription {
            group: group.into(),
            shared: Arc::clone(shared),
            events,
            initial: Some(initial),
            shutdown: self.inner.shutdown.subscribe(),
        })
    }

    /// Runs `f` with the store on the store thread and returns its result.
    ///
    /// Changes made this way bypass authorization and are not announced to
    /// subscribers; use it for reads, maintenance and tests.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] if the store is closed or its queue is full.
    pub async fn call<R, F>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&mut Store) -> R + Send + 'static,
        R: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let shared = Arc::clone(&self.inner.shared);
        let job: Job = Box::new(move |store| {
            let result = f(store);
            // Changes made through `call` move the latest cursor too, before
            // the caller hears back.
            let cursor = store.cursor();
            shared.latest.fetch_max(cursor.seq, Ordering::AcqRel);
            shared.floor.store(cursor.floor, Ordering::Release);
            let _gone = reply.send(result);
        });
        self.inner
            .jobs
            .try_send(Message::Job(job))
            .map_err(|_| Error::Unavailable)?;
        answer.await.map_err(|_| Error::Unavailable)
    }

    /// Whether a [`router`](crate::router) (or
    /// [`router_with_options`](crate::router_with_options)) was made for this
    /// service or a clone of it. A Leptos app needs the routes for live
    /// updates (`/atomsync/events`); `atomsync_leptos::provide_sync_service`
    /// reports it once in the server log when they are missing.
    pub fn router_made(&self) -> bool {
        self.inner.router_made.load(Ordering::Relaxed)
    }

    pub(crate) fn mark_router_made(&self) {
        self.inner.router_made.store(true, Ordering::Relaxed);
    }

    /// Ends every [`Subscription`] (and `/events` stream), now and from now
    /// on, so that a graceful HTTP shutdown is not held up by them. Pulls and
    /// pushes go on working.
    ///
    /// [`serve`](crate::serve) ends the routes' streams by itself on its
    /// graceful shutdown; call this with another server loop, such as
    /// `axum::serve(..).with_graceful_shutdown(..)`.
    pub fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }

    /// [`SyncService::shutdown`], then closes the store once the jobs already
    /// queued are done, and waits for it. Later calls fail with
    /// [`Error::Unavailable`].
    pub async fn close(&self) {
        self.shutdown();
        self.inner.shared.closed.store(true, Ordering::Release);
        let (done, closed) = oneshot::channel();
        let jobs = self.inner.jobs.clone();
        // `send` blocks while the queue is full: not on an executor thread.
        let sent = tokio::task::spawn_blocking(move || jobs.send(Message::Close(done)).is_ok())
            .await
            .unwrap_or(false);
        if sent {
            let _already_closed = closed.await;
        }
    }
}

/// Follows the changes other servers make to a shared (PostgreSQL) database
/// and announces them to this server's subscribers, until the service is
/// gone. After each (re)connection every subscriber is poked, since
/// notifications sent meanwhile were lost.
fn listen(listener: &crate::store::Listener, shared: &std::sync::Weak<Shared>) {
    let alive = || {
        shared
            .upgrade()
            .is_some_and(|s| !s.closed.load(Ordering::Acquire))
    };
    let notify = |group: &str, seq: u64| {
        if let Some(shared) = shared.upgrade() {
            shared.latest.fetch_max(seq, Ordering::AcqRel);
            let _no_subscribers = shared.events.send(Event {
                group: group.into(),
                seq,
                all: false,
            });
        }
    };
    let reconnected = |seq: u64, floor: u64, first: bool| {
        if let Some(shared) = shared.upgrade() {
            shared.floor.store(floor, Ordering::Release);
            let before = shared.latest.fetch_max(seq, Ordering::AcqRel);
            // The first connection pokes only if a change came before it.
            if first && seq <= before {
                return;
            }
            let latest = before.max(seq);
            let _no_subscribers = shared.events.send(Event {
                group: "".into(),
                seq: latest,
                all: true,
            });
        }
    };
    crate::store::listen(listener, &alive, &notify, &reconnected);
}

fn run_store(mut store: Store, queue: &mpsc::Receiver<Message>, shared: &Shared) {
    let mut next_purge = Instant::now();
    loop {
        if Instant::now() >= next_purge {
            match store.purge_expired_tombstones() {
                Ok(0) => {}
                Ok(_) => {
                    let cursor = store.cursor();
                    shared.floor.store(cursor.floor, Ordering::Release);
                    shared.latest.fetch_max(cursor.seq, Ordering::AcqRel);
                }
                Err(e) => tracing::error!(error = %e, "purging tombstones failed"),
            }
            next_purge = Instant::now() + PURGE_EVERY;
        }
        let message = match next_message(queue, next_purge) {
            Next::Message(message) => message,
            Next::Timeout => continue,
            Next::Closed => return,
        };
        match message {
            Message::Job(job) => {
                // A panicking job (a bug) fails its own request, not the
                // service: its transaction rolls back as it unwinds.
                let run = std::panic::AssertUnwindSafe(|| job(&mut store));
                if std::panic::catch_unwind(run).is_err() {
                    tracing::error!("a store job panicked");
                }
            }
            Message::Close(done) => {
                drop(store);
                let _gone = done.send(());
                return;
            }
        }
    }
}

enum Next {
    Message(Message),
    Timeout,
    Closed,
}

/// The next message, or a timeout at `until`. After a job, the thread polls
/// (yielding the CPU) for [`SPIN`] before it sleeps: under load the next job
/// comes sooner, and waking a sleeping thread costs more than a small pull.
fn next_message(queue: &mpsc::Receiver<Message>, until: Instant) -> Next {
    let deadline = Instant::now() + SPIN;
    loop {
        match queue.try_recv() {
            Ok(message) => return Next::Message(message),
            Err(mpsc::TryRecvError::Disconnected) => return Next::Closed,
            Err(mpsc::TryRecvError::Empty) if Instant::now() < deadline => {
                std::thread::yield_now();
            }
            Err(mpsc::TryRecvError::Empty) => {
                let wait = until.saturating_duration_since(Instant::now());
                return match queue.recv_timeout(wait) {
                    Ok(message) => Next::Message(message),
                    Err(mpsc::RecvTimeoutError::Timeout) => Next::Timeout,
                    Err(mpsc::RecvTimeoutError::Disconnected) => Next::Closed,
                };
            }
        }
    }
}

/// The cursors of one group: the current one, then the latest after each
/// accepted change. Made by [`SyncService::subscribe`].
pub struct Subscription {
    group: Arc<str>,
    shared: Arc<Shared>,
    events: broadcast::Receiver<Event>,
    initial: Option<Cursor>,
    shutdown: watch::Receiver<bool>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// The group followed.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The next cursor; `None` once the service shuts down.
    ///
    /// A subscriber that falls far behind skips to the latest cursor.
    pub async fn recv(&mut self) -> Option<Cursor> {
        if *self.shutdown.borrow() {
            return None;
        }
        if let Some(cursor) = self.initial.take() {
            return Some(cursor);
        }
        loop {
            tokio::select! {
                _ = self.shutdown.wait_for(|stop| *stop) => return None,
                event = self.events.recv() => match event {
                    Ok(event) if event.all || event.group == self.group => {
                        return Some(self.shared.cursor_at(event.seq));
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let seq = self.shared.latest.load(Ordering::Acquire);
                        return Some(self.shared.cursor_at(seq));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            }
        }
    }

    /// The subscription as a stream of cursors.
    pub fn into_stream(self) -> impl Stream<Item = Cursor> + Send + 'static {
        futures_util::stream::unfold(self, |mut subscription| async move {
            let cursor = subscription.recv().await?;
            Some((cursor, subscription))
        })
    }
}
