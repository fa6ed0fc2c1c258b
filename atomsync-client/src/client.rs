//! [`Client`]: engines, storage and transport put together.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use atomsync_core::engine::{
    Conflict, ConflictPolicy, Effects, Engine, EngineError, EngineOptions, Failure, FailureKind,
    Halt, RoundEnd, Step, Storage, SyncRound, SyncStatus,
};
use atomsync_core::protocol::{PullRequest, PullResponse, PushRequest, PushResponse};
use atomsync_core::sexpr::Raw;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::storage::{SqliteDatabase, SqliteOptions, SqliteStorage, Synchronous};
use crate::transport::{DEFAULT_TIMEOUT, HttpTransport, Transport};
use crate::{Error, Result};

/// Where a [`Client`] keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// In memory: nothing survives the client (pending changes included).
    Memory,
    /// A SQLite file, created if missing.
    File(PathBuf),
}

impl From<PathBuf> for Location {
    fn from(path: PathBuf) -> Self {
        Location::File(path)
    }
}

impl From<&Path> for Location {
    fn from(path: &Path) -> Self {
        Location::File(path.to_owned())
    }
}

impl From<&PathBuf> for Location {
    fn from(path: &PathBuf) -> Self {
        Location::File(path.clone())
    }
}

impl From<&str> for Location {
    fn from(path: &str) -> Self {
        Location::File(PathBuf::from(path))
    }
}

/// Called with the group and the report of every conflict a sync raises.
pub type ConflictCallback = Arc<dyn Fn(&str, &Conflict) + Send + Sync>;

/// How a [`Client`] works; every field has a documented default.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct ClientOptions {
    /// A bearer token sent with every request. Default: none.
    pub token: Option<String>,
    /// The engines' options: conflict policy (default: the server wins),
    /// push and pull sizes, backoff.
    pub engine: EngineOptions,
    /// The time limit of one request. Default [`DEFAULT_TIMEOUT`] (30 s).
    pub timeout: Option<Duration>,
    /// How the SQLite file is opened. Default: [`Synchronous::Full`].
    pub sqlite: SqliteOptions,
    /// Called for every conflict a sync raises (the reports are also kept
    /// until [`Client::take_conflicts`]). Default: none.
    pub on_conflict: Option<ConflictCallback>,
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("token", &self.token.as_ref().map(|_| "…"))
            .field("engine", &self.engine)
            .field("timeout", &self.timeout)
            .field("sqlite", &self.sqlite)
            .field("on_conflict", &self.on_conflict.as_ref().map(|_| ".."))
            .finish()
    }
}

impl ClientOptions {
    /// Sets [`ClientOptions::token`].
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Sets [`ClientOptions::engine`].
    pub fn engine(mut self, options: EngineOptions) -> Self {
        self.engine = options;
        self
    }

    /// Sets the conflict policy of [`ClientOptions::engine`].
    pub fn policy(mut self, policy: ConflictPolicy) -> Self {
        self.engine.policy = policy;
        self
    }

    /// Sets [`ClientOptions::timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets the `synchronous` setting of [`ClientOptions::sqlite`].
    pub fn synchronous(mut self, synchronous: Synchronous) -> Self {
        self.sqlite = self.sqlite.synchronous(synchronous);
        self
    }

    /// Sets [`ClientOptions::on_conflict`].
    pub fn on_conflict(
        mut self,
        callback: impl Fn(&str, &Conflict) + Send + Sync + 'static,
    ) -> Self {
        self.on_conflict = Some(Arc::new(callback));
        self
    }
}

/// What a [`Client::sync`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncReport {
    /// Pushes sent.
    pub pushes: usize,
    /// Pulls sent.
    pub pulls: usize,
    /// Keys whose visible value changed, in key order.
    pub changed: Vec<String>,
    /// Conflicts raised (also passed to [`ClientOptions::on_conflict`] and
    /// kept until [`Client::take_conflicts`]).
    pub conflicts: Vec<Conflict>,
}

/// Why and since when syncing a group is halted (see [`Client::halted`]).
///
/// A halt follows a failure that retrying the same request cannot fix:
/// refused credentials (401, 403: [`FailureKind::Auth`]) or a refused
/// request (another 4xx: [`FailureKind::Permanent`]). Local reads and writes
/// go on working; [`Client::sync`] answers [`Error::Halted`] until the halt
/// ends:
///
/// - a credentials halt ends by itself when a token is set afterwards
///   ([`Client::set_token`]); when no token was set at all
///   ([`Halted::waiting_for_token`]), only a token (not `None`) ends it;
/// - any halt ends with [`Client::resume`], and when the client is opened
///   again (halts are not stored: a refusal comes back only if the server
///   still refuses).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Halted {
    /// The engine's halt: its kind and the server's message.
    pub halt: Halt,
    /// When the request that halted syncing was answered.
    pub since: SystemTime,
    /// The server refused a request sent without a token (a 401 before
    /// login): syncing waits for [`Client::set_token`] with a token.
    pub waiting_for_token: bool,
}

/// The credentials requests are sent with, as far as halts care: a counter
/// bumped by every [`Client::set_token`] and whether a token is set.
#[derive(Debug, Default)]
struct Credentials {
    generation: AtomicU64,
    token_set: AtomicBool,
}

impl Credentials {
    /// `(generation, token set)` now.
    fn now(&self) -> (u64, bool) {
        (
            self.generation.load(Ordering::SeqCst),
            self.token_set.load(Ordering::SeqCst),
        )
    }

    fn set(&self, token_set: bool) {
        self.token_set.store(token_set, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

/// An offline-first client of an atomsync server: one sync engine per group,
/// their state in SQLite, and a transport.
///
/// Writes apply locally and durably at once, whether or not the server is
/// reachable; [`Client::sync`] pushes them and pulls what others wrote.
/// Cloning is cheap (an `Arc`), and all methods take `&self`.
///
/// Each group's engine pushes as client id `"{device_id}/{group}"` (the
/// server numbers mutations per client id, so ids must be unique per engine).
/// Reopening a file keeps the ids it was created with.
///
/// ## Usage
///
/// ```
/// use std::collections::BTreeSet;
/// use atomsync_client::{Client, Location};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, Debug, PartialEq)]
/// struct Todo { title: String, done: bool, tags: BTreeSet<String> }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> atomsync_client::Result<()> {
/// let client = Client::open(Location::Memory, "http://127.0.0.1:8090", "laptop").await?;
/// let todo = Todo { title: "Buy milk".into(), done: false, tags: BTreeSet::new() };
/// client.set("todo", "milk", &todo).await?; // works offline
/// assert_eq!(client.get::<Todo>("todo", "milk").await?, Some(todo));
/// assert_eq!(client.status("todo").await?.pending, 1);
/// // With a server running: client.sync("todo").await?;
/// # Ok(())
/// # }
/// ```
pub struct Client<T: Transport = HttpTransport> {
    shared: Arc<Shared<T>>,
}

impl<T: Transport> Clone for Client<T> {
    fn clone(&self) -> Self {
        Client {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T: Transport + fmt::Debug> fmt::Debug for Client<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("device_id", &self.shared.device_id)
            .field("db", &self.shared.db)
            .field("transport", &self.shared.transport)
            .finish_non_exhaustive()
    }
}

struct Shared<T> {
    db: SqliteDatabase,
    transport: T,
    device_id: String,
    options: ClientOptions,
    started: Instant,
    credentials: Arc<Credentials>,
    groups: Mutex<HashMap<String, Arc<Group>>>,
}

/// One group: its engine and storage, and the lock that keeps its syncs one
/// at a time.
struct Group {
    name: String,
    sync: tokio::sync::Mutex<()>,
    state: Mutex<GroupState>,
}

struct GroupState {
    name: String,
    client_id: String,
    options: EngineOptions,
    /// `None` after a batch could not be persisted: the engine is then ahead
    /// of its storage and is restored from it before the next use.
    engine: Option<Engine>,
    storage: SqliteStorage,
    /// The engine's halt, when it began, and the credentials generation the
    /// refused request was sent with.
    halt: Option<(Halted, u64)>,
    credentials: Arc<Credentials>,
}

impl GroupState {
    fn load(
        name: &str,
        client_id: String,
        db: &SqliteDatabase,
        options: EngineOptions,
        credentials: Arc<Credentials>,
    ) -> Result<Self> {
        let mut state = GroupState {
            name: name.to_owned(),
            client_id,
            options,
            engine: None,
            storage: db.storage(name),
            halt: None,
            credentials,
        };
        state.engine()?;
        Ok(state)
    }

    /// The engine, restored from the storage if it had to be dropped; a
    /// credentials halt that a later token ended is resumed first.
    fn engine(&mut self) -> Result<&mut Engine> {
        if self.engine.is_none() {
            let engine = match self.storage.load()? {
                Some(snapshot) => Engine::restore(snapshot)?,
                None => Engine::new(self.name.clone(), self.client_id.clone())?,
            };
            self.engine = Some(engine.with_options(self.options.clone()));
        }
        let engine = self.engine.as_mut().expect("set above");
        if engine.status().halted.is_none() {
            // Resumed, or restored (halts are not stored).
            self.halt = None;
        } else if let Some((halted, generation)) = &self.halt {
            let (now, token_set) = self.credentials.now();
            if halted.halt.kind == FailureKind::Auth
                && now != *generation
                && (token_set || !halted.waiting_for_token)
            {
                engine.resume();
                self.halt = None;
            }
        }
        Ok(engine)
    }

    /// Notes when the engine halted, after a request sent with the
    /// credentials `sent_with` (`(generation, token set)`).
    fn note_halt(&mut self, sent_with: (u64, bool)) {
        let halt = self.engine.as_ref().and_then(|e| e.status().halted);
        match halt {
            None => self.halt = None,
            Some(halt) if self.halt.is_none() => {
                let waiting_for_token = halt.kind == FailureKind::Auth && !sent_with.1;
                let halted = Halted {
                    halt,
                    since: SystemTime::now(),
                    waiting_for_token,
                };
                self.halt = Some((halted, sent_with.0));
            }
            Some(_) => {}
        }
    }

    /// Persists what a step did; if that fails, the engine is dropped (to be
    /// restored from the storage), as [`Effects::batch`] asks.
    fn persist(&mut self, effects: Effects) -> Result<Effects> {
        match self.storage.apply(&effects.batch) {
            Ok(()) => Ok(effects),
            Err(error) => {
                self.engine = None;
                Err(error)
            }
        }
    }

    /// Runs an engine step that changes state and persists it.
    fn change(&mut self, step: impl FnOnce(&mut Engine) -> Result<Effects>) -> Result<Effects> {
        let effects = step(self.engine()?)?;
        self.persist(effects)
    }
}

impl Group {
    fn lock(&self) -> MutexGuard<'_, GroupState> {
        match self.state.lock() {
            Ok(state) => state,
            Err(poisoned) => {
                // A step panicked (a bug) between changing the engine and
                // persisting it: start again from what is stored.
                let mut state = poisoned.into_inner();
                state.engine = None;
                self.state.clear_poison();
                state
            }
        }
    }
}

fn task_error(error: tokio::task::JoinError) -> Error {
    Error::Task(error.to_string())
}

/// A request of a sync round with its answer.
enum Sent {
    Push(PushRequest, std::result::Result<PushResponse, Failure>),
    Pull(PullRequest, std::result::Result<PullResponse, Failure>),
}

/// A random number in `0.0..1.0` for the backoff's jitter.
fn jitter() -> f64 {
    let bits = RandomState::new().hash_one(Instant::now());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

impl Client<HttpTransport> {
    /// Opens the client state at `location` (creating it if needed), syncing
    /// with the server at `base_url` (see [`HttpTransport`]) as `device_id`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] for a bad URL; [`Error::Engine`] for an invalid
    /// device id; [`Error::Sqlite`] or [`Error::Corrupt`] if the state cannot
    /// be opened.
    pub async fn open(
        location: impl Into<Location>,
        base_url: &str,
        device_id: &str,
    ) -> Result<Self> {
        Self::open_with_options(location, base_url, device_id, ClientOptions::default()).await
    }

    /// [`Client::open`] with explicit [`ClientOptions`].
    pub async fn open_with_options(
        location: impl Into<Location>,
        base_url: &str,
        device_id: &str,
        options: ClientOptions,
    ) -> Result<Self> {
        let timeout = options.timeout.unwrap_or(DEFAULT_TIMEOUT);
        let mut transport = HttpTransport::with_timeout(base_url, timeout)?;
        if let Some(token) = &options.token {
            transport = transport.with_token(token.clone());
        }
        Self::with_transport(location, transport, device_id, options).await
    }
}

impl<T: Transport> Client<T> {
    /// A client talking through `transport` (for other transports, or a test
    /// double). [`ClientOptions::token`] and [`ClientOptions::timeout`] are
    /// the transport's business: they are not given to it here, but whether
    /// a token is set decides whether a 401 waits for one (see [`Halted`]).
    ///
    /// # Errors
    ///
    /// [`Error::Engine`] for an empty device id or one with control
    /// characters; [`Error::Sqlite`] or [`Error::Corrupt`] if the state
    /// cannot be opened.
    pub async fn with_transport(
        location: impl Into<Location>,
        transport: T,
        device_id: &str,
        options: ClientOptions,
    ) -> Result<Self> {
        if device_id.is_empty() || device_id.chars().any(char::is_control) {
            return Err(Error::Engine(EngineError::InvalidClientId(
                "the device id must be non-empty, without control characters".to_owned(),
            )));
        }
        let location = location.into();
        let sqlite = options.sqlite.clone();
        let db = tokio::task::spawn_blocking(move || match location {
            Location::Memory => SqliteDatabase::open_in_memory(),
            Location::File(path) => SqliteDatabase::open(path, &sqlite),
        })
        .await
        .map_err(task_error)??;
        let credentials = Credentials::default();
        credentials
            .token_set
            .store(options.token.is_some(), Ordering::SeqCst);
        Ok(Client {
            shared: Arc::new(Shared {
                db,
                transport,
                device_id: device_id.to_owned(),
                options,
                started: Instant::now(),
                credentials: Arc::new(credentials),
                groups: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Replaces the bearer token for the requests sent from now on. Every
    /// group halted because the server refused the earlier credentials
    /// resumes (see [`Halted`]): its next [`Client::sync`] sends again.
    pub fn set_token(&self, token: Option<String>) {
        let token_set = token.is_some();
        self.shared.transport.set_token(token);
        self.shared.credentials.set(token_set);
    }

    /// The device id given to [`Client::open`].
    pub fn device_id(&self) -> &str {
        &self.shared.device_id
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.shared.transport
    }

    /// Runs `f` on `group`'s state on a blocking thread (SQLite never runs
    /// on the executor).
    async fn run<R: Send + 'static>(
        &self,
        group: &str,
        f: impl FnOnce(&mut GroupState) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let shared = Arc::clone(&self.shared);
        let group = group.to_owned();
        tokio::task::spawn_blocking(move || {
            let group = shared.group(&group)?;
            let mut state = group.lock();
            f(&mut state)
        })
        .await
        .map_err(task_error)?
    }

    // ----- local reads and writes -----

    /// Writes `value` at `key` of `group`. The write is durable (with its
    /// pending change) when this returns, and is pushed by the next sync.
    ///
    /// # Errors
    ///
    /// [`Error::Engine`] for an invalid group or key; [`Error::Codec`] if the
    /// value cannot be encoded; [`Error::Sqlite`] if it cannot be stored.
    pub async fn set<V: Serialize + ?Sized>(
        &self,
        group: &str,
        key: &str,
        value: &V,
    ) -> Result<()> {
        self.set_raw(group, key, Raw::from_value(value)?).await
    }

    /// Writes a value that is already an S-expression datum.
    pub async fn set_raw(&self, group: &str, key: &str, value: Raw) -> Result<()> {
        let key = key.to_owned();
        self.run(group, move |state| {
            let _persisted = state.change(|engine| Ok(engine.set(key, value)?))?;
            Ok(())
        })
        .await
    }

    /// Deletes `key` of `group` (durably, pushed by the next sync).
    pub async fn delete(&self, group: &str, key: &str) -> Result<()> {
        let key = key.to_owned();
        self.run(group, move |state| {
            let _persisted = state.change(|engine| Ok(engine.delete(key)?))?;
            Ok(())
        })
        .await
    }

    /// The visible value of `key` of `group` (the latest local write, else
    /// the server's), decoded as `V`; `None` if deleted or never written.
    ///
    /// # Errors
    ///
    /// [`Error::Codec`] if the value is not a `V`.
    pub async fn get<V: DeserializeOwned>(&self, group: &str, key: &str) -> Result<Option<V>> {
        match self.get_raw(group, key).await? {
            Some(raw) => Ok(Some(raw.to_value()?)),
            None => Ok(None),
        }
    }

    /// The visible value of `key` of `group` as a datum.
    pub async fn get_raw(&self, group: &str, key: &str) -> Result<Option<Raw>> {
        let key = key.to_owned();
        self.run(group, move |state| Ok(state.engine()?.get(&key).cloned()))
            .await
    }

    /// The visible documents of `group` that are not deleted, decoded as `V`.
    ///
    /// # Errors
    ///
    /// [`Error::Codec`] if a value is not a `V` (use
    /// [`Client::raw_documents`] for groups of mixed types).
    pub async fn documents<V: DeserializeOwned>(&self, group: &str) -> Result<BTreeMap<String, V>> {
        self.raw_documents(group)
            .await?
            .into_iter()
            .map(|(key, raw)| Ok((key, raw.to_value()?)))
            .collect()
    }

    /// The visible documents of `group` that are not deleted, as data.
    pub async fn raw_documents(&self, group: &str) -> Result<BTreeMap<String, Raw>> {
        self.run(group, |state| {
            Ok(state
                .engine()?
                .documents()
                .map(|(key, raw)| (key.to_owned(), raw.clone()))
                .collect())
        })
        .await
    }

    /// The unread conflict reports of `group`, oldest first.
    pub async fn conflicts(&self, group: &str) -> Result<Vec<Conflict>> {
        self.run(group, |state| {
            Ok(state.engine()?.conflicts().cloned().collect())
        })
        .await
    }

    /// Removes and returns the unread conflict reports of `group`.
    pub async fn take_conflicts(&self, group: &str) -> Result<Vec<Conflict>> {
        self.run(group, |state| {
            let (conflicts, effects) = state.engine()?.take_conflicts();
            let _persisted = state.persist(effects)?;
            Ok(conflicts)
        })
        .await
    }

    /// The sync state of `group` (pending changes, backoff, halt, ...).
    pub async fn status(&self, group: &str) -> Result<SyncStatus> {
        self.run(group, |state| Ok(state.engine()?.status())).await
    }

    /// Why and since when syncing `group` is halted, if it is (see
    /// [`Halted`]).
    pub async fn halted(&self, group: &str) -> Result<Option<Halted>> {
        self.run(group, |state| {
            state.engine()?;
            Ok(state.halt.as_ref().map(|(halted, _)| halted.clone()))
        })
        .await
    }

    /// Ends a halt of `group` after an auth or permanent failure (once the
    /// app fixed the cause), so that the next sync sends again.
    pub async fn resume(&self, group: &str) -> Result<()> {
        self.run(group, |state| {
            state.engine()?.resume();
            state.halt = None;
            Ok(())
        })
        .await
    }

    /// The groups with state in this client's database, in name order.
    pub async fn groups(&self) -> Result<Vec<String>> {
        let db = self.shared.db.clone();
        tokio::task::spawn_blocking(move || db.groups())
            .await
            .map_err(task_error)?
    }

    // ----- syncing -----

    /// Syncs `group` now: pushes every pending change (each answer folded in
    /// and persisted before the next request), then pulls until the server
    /// has nothing more. Syncs of one group run one at a time; a sync keeps
    /// going to its end even if its caller stops waiting.
    ///
    /// An explicit sync does not wait for the backoff of earlier temporary
    /// failures, but respects a halt.
    ///
    /// # Errors
    ///
    /// [`Error::Halted`] if syncing the group is halted (see
    /// [`Client::resume`]); [`Error::Sync`] with the first failed request
    /// (whatever was answered before it is kept); storage errors.
    pub async fn sync(&self, group: &str) -> Result<SyncReport> {
        let shared = Arc::clone(&self.shared);
        let name = group.to_owned();
        let group = {
            let shared = Arc::clone(&shared);
            tokio::task::spawn_blocking(move || shared.group(&name))
                .await
                .map_err(task_error)??
        };
        // In a task of its own: a request in flight is always folded back in.
        tokio::spawn(async move { shared.sync(&group).await })
            .await
            .map_err(task_error)?
    }
}

impl<T: Transport> Shared<T> {
    /// The group's state, loaded from the storage on first use.
    fn group(&self, name: &str) -> Result<Arc<Group>> {
        let mut groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(group) = groups.get(name) {
            return Ok(Arc::clone(group));
        }
        let client_id = format!("{}/{name}", self.device_id);
        let state = GroupState::load(
            name,
            client_id,
            &self.db,
            self.options.engine.clone(),
            Arc::clone(&self.credentials),
        )?;
        let group = Arc::new(Group {
            name: name.to_owned(),
            sync: tokio::sync::Mutex::new(()),
            state: Mutex::new(state),
        });
        groups.insert(name.to_owned(), Arc::clone(&group));
        Ok(group)
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Runs `f` on the group's state on a blocking thread.
    async fn step<R: Send + 'static>(
        group: &Arc<Group>,
        f: impl FnOnce(&mut GroupState) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let group = Arc::clone(group);
        tokio::task::spawn_blocking(move || f(&mut group.lock()))
            .await
            .map_err(task_error)?
    }

    async fn sync(&self, group: &Arc<Group>) -> Result<SyncReport> {
        let _one_at_a_time = group.sync.lock().await;
        Self::step(group, |state| {
            let engine = state.engine()?;
            if let Some(halt) = engine.status().halted {
                return Err(Error::Halted(halt));
            }
            // Not halted: this only forgets the backoff.
            engine.resume();
            Ok(())
        })
        .await?;

        let mut report = SyncReport::default();
        let mut changed = BTreeSet::new();
        // The round logic lives in the engine's crate (`SyncRound`), shared
        // with the browser hook; here is only the IO and the persistence.
        let mut round = SyncRound::new();
        let failure = loop {
            let now = self.now_ms();
            let (step, back) = Self::step(group, move |state| {
                let step = round.next(state.engine()?, now);
                Ok((step, round))
            })
            .await?;
            round = back;
            // A refusal halts with the credentials the request carried.
            let sent_with = self.credentials.now();
            let sent = match step {
                Step::Push(request) => {
                    report.pushes += 1;
                    let answer = self.transport.push(&request).await;
                    Sent::Push(request, answer)
                }
                Step::Pull(request) => {
                    report.pulls += 1;
                    let answer = self.transport.pull(&request).await;
                    Sent::Pull(request, answer)
                }
                Step::Done(RoundEnd::Failed(failure)) => break Ok(Some(failure)),
                Step::Done(RoundEnd::Halted(halt)) => break Err(Error::Halted(halt)),
                Step::Done(_) => break Ok(None),
            };
            // The answer folded in through the round, persisted before the
            // round is asked for the next request.
            let (now, jitter) = (self.now_ms(), jitter());
            let (effects, back) = Self::step(group, move |state| {
                let mut round = round;
                let effects = state.change(|engine| {
                    Ok(match sent {
                        Sent::Push(request, answer) => {
                            round.on_push(engine, &request, answer, now, jitter)
                        }
                        Sent::Pull(request, answer) => {
                            round.on_pull(engine, &request, answer, now, jitter)
                        }
                    })
                })?;
                state.note_halt(sent_with);
                Ok((effects, round))
            })
            .await?;
            round = back;
            changed.extend(effects.changed);
            report.conflicts.extend(effects.conflicts);
        };

        report.changed = changed.into_iter().collect();
        if let Some(callback) = &self.options.on_conflict {
            for conflict in &report.conflicts {
                callback(&group.name, conflict);
            }
        }
        match failure? {
            Some(failure) => Err(Error::Sync(failure)),
            None => Ok(report),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use atomsync_core::engine::testing::{FakeServer, SimServer};
    use atomsync_core::engine::{Failure, FailureKind};
    use atomsync_core::protocol::{PullRequest, PullResponse, PushRequest, PushResponse};

    use super::*;

    /// A transport to an in-memory model of the server, which can fail the
    /// next requests and hold pushes until released.
    #[derive(Clone, Default)]
    struct FakeTransport {
        server: Arc<Mutex<FakeServer>>,
        failures: Arc<Mutex<Vec<Failure>>>,
        gate: Option<Arc<tokio::sync::Semaphore>>,
        pushes_served: Arc<AtomicUsize>,
    }

    impl FakeTransport {
        fn fail_next(&self, failure: Failure) {
            self.failures.lock().unwrap().push(failure);
        }

        fn failure(&self) -> Option<Failure> {
            self.failures.lock().unwrap().pop()
        }
    }

    impl Transport for FakeTransport {
        async fn pull(&self, request: &PullRequest) -> Result<PullResponse, Failure> {
            if let Some(failure) = self.failure() {
                return Err(failure);
            }
            let answer = self.server.lock().unwrap().pull(request);
            answer.map_err(Failure::Error)
        }

        async fn push(&self, request: &PushRequest) -> Result<PushResponse, Failure> {
            if let Some(gate) = &self.gate {
                gate.acquire().await.unwrap().forget();
            }
            if let Some(failure) = self.failure() {
                return Err(failure);
            }
            let answer = self.server.lock().unwrap().push(request);
            self.pushes_served.fetch_add(1, Ordering::SeqCst);
            answer.map_err(Failure::Error)
        }
    }

    async fn client(
        transport: &FakeTransport,
        device: &str,
        options: ClientOptions,
    ) -> Client<FakeTransport> {
        Client::with_transport(Location::Memory, transport.clone(), device, options)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn conflicts_are_reported_to_the_callback_and_kept_until_taken() {
        let transport = FakeTransport::default();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let options = ClientOptions::default().on_conflict(move |group, conflict| {
            record
                .lock()
                .unwrap()
                .push((group.to_owned(), conflict.key.clone()));
        });
        let a = client(&transport, "a", ClientOptions::default()).await;
        let b = client(&transport, "b", options).await;
        a.set("g", "k", "from a").await.unwrap();
        b.set("g", "k", "from b").await.unwrap();
        a.sync("g").await.unwrap();
        let report = b.sync("g").await.unwrap();
        assert_eq!(report.conflicts.len(), 1);
        assert_eq!(*seen.lock().unwrap(), [("g".to_owned(), "k".to_owned())]);
        assert_eq!(
            b.get::<String>("g", "k").await.unwrap().as_deref(),
            Some("from a")
        );
        assert_eq!(b.conflicts("g").await.unwrap().len(), 1);
        assert_eq!(b.take_conflicts("g").await.unwrap().len(), 1);
        assert!(b.conflicts("g").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn client_wins_pushes_the_local_value_again() {
        let transport = FakeTransport::default();
        let a = client(&transport, "a", ClientOptions::default()).await;
        let b = client(
            &transport,
            "b",
            ClientOptions::default().policy(ConflictPolicy::ClientWins),
        )
        .await;
        a.set("g", "k", "from a").await.unwrap();
        b.set("g", "k", "from b").await.unwrap();
        a.sync("g").await.unwrap();
        let report = b.sync("g").await.unwrap();
        assert_eq!(report.pushes, 2, "{report:?}");
        a.sync("g").await.unwrap();
        for client in [&a, &b] {
            assert_eq!(
                client.get::<String>("g", "k").await.unwrap().as_deref(),
                Some("from b")
            );
        }
    }

    #[tokio::test]
    async fn auth_failures_halt_until_resume() {
        let transport = FakeTransport::default();
        let a = client(&transport, "a", ClientOptions::default()).await;
        a.set("g", "k", &1).await.unwrap();
        transport.fail_next(Failure::Status(401));
        let error = a.sync("g").await.unwrap_err();
        assert_eq!(error.failure().map(Failure::kind), Some(FailureKind::Auth));
        let error = a.sync("g").await.unwrap_err();
        assert!(matches!(error, Error::Halted(_)), "{error}");
        // Local work goes on while halted.
        a.set("g", "k", &2).await.unwrap();
        assert_eq!(a.get::<i32>("g", "k").await.unwrap(), Some(2));
        a.resume("g").await.unwrap();
        a.sync("g").await.unwrap();
        assert_eq!(a.status("g").await.unwrap().pending, 0);
    }

    #[tokio::test]
    async fn a_401_before_login_waits_for_a_token() {
        let transport = FakeTransport::default();
        let a = client(&transport, "a", ClientOptions::default()).await;
        a.set("g", "k", &1).await.unwrap();
        assert_eq!(a.halted("g").await.unwrap(), None);
        transport.fail_next(Failure::Status(401));
        let before = SystemTime::now();
        a.sync("g").await.unwrap_err();
        let halted = a.halted("g").await.unwrap().expect("halted");
        assert_eq!(halted.halt.kind, FailureKind::Auth);
        assert!(halted.waiting_for_token);
        assert!(halted.since >= before && halted.since <= SystemTime::now());
        // No token yet: still waiting.
        a.set_token(None);
        assert!(matches!(a.sync("g").await, Err(Error::Halted(_))));
        // A token ends the halt, without a resume.
        a.set_token(Some("t".to_owned()));
        assert_eq!(a.halted("g").await.unwrap(), None);
        a.sync("g").await.unwrap();
        assert_eq!(a.status("g").await.unwrap().pending, 0);
    }

    #[tokio::test]
    async fn a_new_token_ends_a_credentials_halt() {
        let transport = FakeTransport::default();
        let a = client(&transport, "a", ClientOptions::default().token("old")).await;
        a.set("g", "k", &1).await.unwrap();
        transport.fail_next(Failure::Status(403));
        a.sync("g").await.unwrap_err();
        let halted = a.halted("g").await.unwrap().expect("halted");
        assert!(!halted.waiting_for_token, "{halted:?}");
        assert!(matches!(a.sync("g").await, Err(Error::Halted(_))));
        a.set_token(Some("new".to_owned()));
        a.sync("g").await.unwrap();
        assert_eq!(a.status("g").await.unwrap().pending, 0);
    }

    #[tokio::test]
    async fn a_refusal_is_not_ended_by_a_token_but_by_resume() {
        let transport = FakeTransport::default();
        let a = client(&transport, "a", ClientOptions::default()).await;
        a.set("g", "k", &1).await.unwrap();
        transport.fail_next(Failure::Status(400));
        a.sync("g").await.unwrap_err();
        a.set_token(Some("t".to_owned()));
        let halted = a.halted("g").await.unwrap().expect("still halted");
        assert_eq!(halted.halt.kind, FailureKind::Permanent);
        assert!(matches!(a.sync("g").await, Err(Error::Halted(_))));
        a.resume("g").await.unwrap();
        assert_eq!(a.halted("g").await.unwrap(), None);
        a.sync("g").await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_token_set_while_a_request_was_refused_ends_that_halt() {
        // The 401 answers a request sent before the new token: the halt it
        // causes is ended by that token already.
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let transport = FakeTransport {
            gate: Some(Arc::clone(&gate)),
            ..FakeTransport::default()
        };
        let a = client(&transport, "a", ClientOptions::default()).await;
        a.set("g", "k", &1).await.unwrap();
        transport.fail_next(Failure::Status(401));
        let syncing = tokio::spawn({
            let a = a.clone();
            async move { a.sync("g").await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        a.set_token(Some("t".to_owned()));
        gate.add_permits(100);
        syncing.await.unwrap().unwrap_err();
        assert_eq!(a.halted("g").await.unwrap(), None);
        a.sync("g").await.unwrap();
        assert_eq!(a.status("g").await.unwrap().pending, 0);
    }

    #[tokio::test]
    async fn an_explicit_sync_does_not_wait_for_the_backoff() {
        let transport = FakeTransport::default();
        let a = client(&transport, "a", ClientOptions::default()).await;
        a.set("g", "k", &1).await.unwrap();
        transport.fail_next(Failure::Unreachable);
        assert!(matches!(
            a.sync("g").await,
            Err(Error::Sync(Failure::Unreachable))
        ));
        let status = a.status("g").await.unwrap();
        assert_eq!((status.pending, status.failures), (1, 1));
        assert!(status.ready_at.is_some());
        a.sync("g").await.unwrap();
        assert_eq!(a.status("g").await.unwrap().pending, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sync_whose_caller_gives_up_still_folds_its_answer_in() {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let transport = FakeTransport {
            gate: Some(Arc::clone(&gate)),
            ..FakeTransport::default()
        };
        let a = client(&transport, "a", ClientOptions::default()).await;
        a.set("g", "k", "v").await.unwrap();
        let gave_up = tokio::time::timeout(Duration::from_millis(50), a.sync("g")).await;
        assert!(gave_up.is_err(), "the push is held");
        // The push is answered after its caller left; the next sync waits
        // for that one and finds nothing left to push.
        gate.add_permits(100);
        let report = a.sync("g").await.unwrap();
        assert_eq!(report.pushes, 0, "{report:?}");
        assert_eq!(transport.pushes_served.load(Ordering::SeqCst), 1);
        assert_eq!(a.status("g").await.unwrap().pending, 0);
    }

    #[tokio::test]
    async fn invalid_names_are_errors_not_panics() {
        let transport = FakeTransport::default();
        let a = client(&transport, "a", ClientOptions::default()).await;
        let error = a.set("no spaces", "k", &1).await.unwrap_err();
        assert!(matches!(error, Error::Engine(_)), "{error}");
        let error = a.set("g", "", &1).await.unwrap_err();
        assert!(matches!(error, Error::Engine(_)), "{error}");
        a.set("g", "k", "text").await.unwrap();
        let error = a.get::<u32>("g", "k").await.unwrap_err();
        assert!(matches!(error, Error::Codec(_)), "{error}");
        assert!(a.groups().await.unwrap() == ["g"]);
        let opened =
            Client::with_transport(Location::Memory, transport, "", ClientOptions::default()).await;
        let Err(error) = opened else {
            panic!("an empty device id is refused")
        };
        assert!(matches!(error, Error::Engine(_)), "{error}");
    }
}
