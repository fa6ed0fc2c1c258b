//! [`Store`]: the documents of every group, in SQLite (embedded, the default)
//! or in PostgreSQL (shared by several servers).

mod postgres;
mod sqlite;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use atomsync_core::protocol::{self, Cursor, PullRequest, PullResponse, PushRequest, PushResponse};
use atomsync_core::sexpr::Raw;

use crate::history;
use crate::{Error, Result};

use self::postgres::PgStore;
pub(crate) use self::postgres::{Listener, listen};
use self::sqlite::SqliteStore;

/// The documents of every group: in one SQLite database (a file, or memory)
/// or in one PostgreSQL database that several servers may share.
///
/// A document is `(group, key, value, version)`: the value is canonical
/// S-expression text, or `NULL` for a deleted document (a tombstone, which
/// keeps its version so the deletion propagates). Every accepted change gets
/// the next number of a global, strictly increasing change counter, taken in
/// the transaction that applies the change; the pair (database epoch, change
/// number) is the clients' [`Cursor`]. Both backends give the same answers to
/// the same requests (the protocol's examples are replayed against both).
///
/// The store is blocking: async code reaches it through
/// [`SyncService`](crate::SyncService), which runs it on its own thread.
///
/// ## Usage
///
/// ```
/// use atomsync_core::protocol::{Change, PullRequest, PushRequest, ChangeResult};
/// use atomsync_core::sexpr::Raw;
/// use atomsync_server::Store;
///
/// // `Store::open("postgres://atomsync@127.0.0.1/atomsync", ..)` for PostgreSQL.
/// let mut store = Store::open_in_memory()?;
/// let response = store.push(&PushRequest {
///     group: "todo".into(),
///     client_id: "c1".into(),
///     changes: vec![Change {
///         mutation: 1,
///         key: "a".into(),
///         base_version: 0,
///         value: Some(Raw::from_text("42").unwrap()),
///     }],
///     low_water: None,
///     epoch: None,
/// })?;
/// assert!(matches!(response.results[0], ChangeResult::Accepted { version: 1, .. }));
/// let page = store.pull(&PullRequest { group: "todo".into(), since: None, limit: None })?;
/// assert_eq!(page.documents.len(), 1);
/// assert_eq!(page.cursor, store.cursor());
/// # Ok::<(), atomsync_server::Error>(())
/// ```
#[derive(Debug)]
pub struct Store {
    backend: Backend,
}

// One per service: the size of the enum does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Backend {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// Calls the same method on whichever backend.
macro_rules! each {
    ($self:expr, $store:ident => $body:expr) => {
        match &$self.backend {
            Backend::Sqlite($store) => $body,
            Backend::Postgres($store) => $body,
        }
    };
    (mut $self:expr, $store:ident => $body:expr) => {
        match &mut $self.backend {
            Backend::Sqlite($store) => $body,
            Backend::Postgres($store) => self::postgres::off_runtime(move || $body),
        }
    };
}

/// Whether `location` names a PostgreSQL database rather than a file.
pub(crate) fn is_postgres_url(location: &str) -> bool {
    location.starts_with("postgres://") || location.starts_with("postgresql://")
}

impl Store {
    /// Opens (or creates) the database at `location` and brings its schema
    /// up to date.
    ///
    /// `location` is a SQLite file path, or a PostgreSQL URL
    /// (`postgres://user@host:5432/dbname`, also `postgresql://`; the password
    /// comes from the URL or from `PGPASSWORD`), whose database must exist
    /// (the tables are created in it, all named `atomsync_*`). Several
    /// servers may open one PostgreSQL database at once, and any request may
    /// go to any of them.
    ///
    /// If history may have been lost since the database was last open (see
    /// [`Store::new_epoch_reason`]), or [`StoreOptions::new_epoch`] asks for
    /// it, the database gets a new epoch, so that every client pulls from
    /// the beginning.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] or [`Error::Postgres`] when the database cannot be
    /// opened or migrated; [`Error::Config`] for a database newer than this
    /// server.
    pub fn open(location: impl AsRef<Path>, options: StoreOptions) -> Result<Store> {
        let location = location.as_ref();
        match location.to_str() {
            Some(url) if is_postgres_url(url) => Store::open_postgres(url, options),
            _ => Ok(Store {
                backend: Backend::Sqlite(SqliteStore::open(location, options)?),
            }),
        }
    }

    /// Opens the PostgreSQL database at `url` (see [`Store::open`]).
    ///
    /// # Errors
    ///
    /// As [`Store::open`]; [`Error::Config`] for a URL that does not parse.
    pub fn open_postgres(url: &str, options: StoreOptions) -> Result<Store> {
        Ok(Store {
            backend: Backend::Postgres(self::postgres::off_runtime(|| {
                PgStore::open(url, &options)
            })?),
        })
    }

    /// Opens a fresh SQLite database in memory, for tests and simulations.
    pub fn open_in_memory() -> Result<Store> {
        Store::open_in_memory_with(&StoreOptions::default())
    }

    /// Opens a fresh SQLite database in memory with `options`.
    pub fn open_in_memory_with(options: &StoreOptions) -> Result<Store> {
        Ok(Store {
            backend: Backend::Sqlite(SqliteStore::open_in_memory_with(options)?),
        })
    }

    /// Whether other servers may write to this database too (PostgreSQL):
    /// then nothing about the latest change can be cached in one process.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// Why opening gave the database a new epoch (history may have been
    /// lost, or [`StoreOptions::new_epoch`]); `None` if it kept its epoch.
    pub fn new_epoch_reason(&self) -> Option<&str> {
        each!(self, s => s.new_epoch_reason())
    }

    /// Row counts: documents, tombstones, remembered mutations.
    pub fn stats(&mut self) -> Result<StoreStats> {
        each!(mut self, s => s.stats())
    }

    /// Deletes the tombstones last changed before `cutoff`, and from then on
    /// resets pulls whose cursor is older than the newest purged one (they
    /// could miss the deletion). A purge takes a change number (so the
    /// high-water mark moves, and a copy from before it counts as older).
    /// Returns how many were deleted.
    pub fn purge_tombstones(&mut self, cutoff: SystemTime) -> Result<u64> {
        each!(mut self, s => s.purge_tombstones(cutoff))
    }

    /// [`Store::purge_tombstones`] of the tombstones older than
    /// [`StoreOptions::tombstone_horizon`] (none without a horizon).
    pub fn purge_expired_tombstones(&mut self) -> Result<u64> {
        each!(mut self, s => s.purge_expired_tombstones())
    }

    /// The identity of this database, created with it.
    pub fn epoch(&self) -> &str {
        each!(self, s => s.epoch())
    }

    /// The cursor after the last accepted change this store knows of (with
    /// PostgreSQL, other servers may have accepted changes since: see
    /// [`Store::latest_cursor`]).
    pub fn cursor(&self) -> Cursor {
        each!(self, s => s.cursor())
    }

    /// The cursor after the last accepted change, read from the database.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when PostgreSQL cannot be reached.
    pub fn latest_cursor(&mut self) -> Result<Cursor> {
        match &mut self.backend {
            Backend::Sqlite(s) => Ok(s.cursor()),
            Backend::Postgres(s) => self::postgres::off_runtime(move || s.latest_cursor()),
        }
    }

    /// The documents of a group changed after `request.since`, oldest change
    /// first, read in one transaction.
    ///
    /// A page ends after `request.limit` documents (default and maximum from
    /// [`protocol`](atomsync_core::protocol)) or
    /// [`StoreOptions::max_pull_bytes`], whichever comes first. The returned
    /// cursor is the change number of the last document returned when more
    /// remain, and the database's latest change number otherwise.
    ///
    /// # Errors
    ///
    /// [`Error::BadRequest`] for an invalid group or a zero limit;
    /// [`Error::CursorReset`] for a cursor of another database, or beyond
    /// this database's last change; [`Error::Unavailable`] when PostgreSQL
    /// cannot be reached.
    pub fn pull(&mut self, request: &PullRequest) -> Result<PullResponse> {
        each!(mut self, s => s.pull(request))
    }

    /// Applies a batch of changes to one group in one transaction.
    ///
    /// A change is accepted when its `base_version` is the document's current
    /// version (0 for a key never written); the document then gets version
    /// `base_version + 1` and the next change number. (A key whose tombstone
    /// was purged counts as never written, and also takes a base at or below
    /// the highest purged version; it then gets a version above that.)
    /// Otherwise it is a conflict answered with the current document.
    ///
    /// A change whose `(client_id, mutation)` was decided before with the
    /// same content (group, key, base version, value) is not applied again:
    /// it gets the same answer (the same version if it was accepted; a
    /// conflict with the document as it is now if it was refused). The
    /// answers to the client's mutations below `request.low_water` are
    /// forgotten.
    ///
    /// With PostgreSQL, a push that accepted a change also sends a
    /// notification (`NOTIFY atomsync`) in its transaction, which the other
    /// servers' [`SyncService`](crate::SyncService)s pass on to their
    /// `/events` subscribers.
    ///
    /// # Errors
    ///
    /// [`Error::BadRequest`] for an invalid group, client id, key, version,
    /// mutation number or batch size; [`Error::MutationReused`] for a
    /// mutation number decided before for a change with other content.
    /// Nothing is applied then. [`Error::Unavailable`] when PostgreSQL cannot
    /// be reached (the push may or may not have committed: retrying it is
    /// safe, as for any push).
    pub fn push(&mut self, request: &PushRequest) -> Result<PushResponse> {
        each!(mut self, s => s.push(request))
    }

    /// What a [`SyncService`](crate::SyncService) needs to follow the changes
    /// other servers make (PostgreSQL only).
    pub(crate) fn listener(&self) -> Option<Listener> {
        match &self.backend {
            Backend::Sqlite(_) => None,
            Backend::Postgres(s) => Some(s.listener()),
        }
    }
}

/// SQLite's `synchronous` setting: how hard a commit waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Synchronous {
    /// Every commit is on disk before it is acknowledged, even across a power
    /// failure. The default.
    #[default]
    Full,
    /// Commits survive a crash of the process; the last ones may be lost on a
    /// power failure (WAL mode).
    Normal,
    /// No syncing at all: for tests and in-process simulations only.
    Off,
}

impl Synchronous {
    pub(crate) fn pragma(self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
            Synchronous::Off => "OFF",
        }
    }
}

/// How a [`Store`] opens its database.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StoreOptions {
    /// Durability of commits; [`Synchronous::Full`] by default.
    pub synchronous: Synchronous,
    /// A pull page ends once its keys and values add up to this many bytes
    /// (8 MiB by default), whatever its limit, so that a group of large
    /// documents is read in several pages. A page always holds at least one
    /// document.
    pub max_pull_bytes: usize,
    /// The operator's declaration that the database was restored (together
    /// with its high-water mark, which the store cannot notice by itself;
    /// see `docs/protocol.md`), with a label naming the restore (a date, a
    /// ticket): the database gets a new epoch when it opens, so that every
    /// client resets, once per label. The label is kept in the database, so
    /// a declaration left in place does nothing on later starts. `None` by
    /// default.
    pub new_epoch: Option<String>,
    /// How long tombstones (deleted documents) are kept before
    /// [`Store::purge_tombstones`] may delete them; `None` keeps them for
    /// ever. 30 days by default. A client whose cursor is older than a purged
    /// tombstone is told to pull from the beginning.
    pub tombstone_horizon: Option<Duration>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            synchronous: Synchronous::default(),
            max_pull_bytes: 8 << 20,
            new_epoch: None,
            tombstone_horizon: Some(Duration::from_secs(30 * 24 * 3600)),
        }
    }
}

impl StoreOptions {
    /// Sets [`StoreOptions::max_pull_bytes`].
    pub fn max_pull_bytes(mut self, bytes: usize) -> Self {
        self.max_pull_bytes = bytes;
        self
    }

    /// Sets [`StoreOptions::synchronous`].
    pub fn synchronous(mut self, synchronous: Synchronous) -> Self {
        self.synchronous = synchronous;
        self
    }

    /// Sets [`StoreOptions::new_epoch`].
    pub fn new_epoch(mut self, label: Option<String>) -> Self {
        self.new_epoch = label;
        self
    }

    /// Sets [`StoreOptions::tombstone_horizon`].
    pub fn tombstone_horizon(mut self, horizon: Option<Duration>) -> Self {
        self.tombstone_horizon = horizon;
        self
    }
}

/// Row counts of a [`Store`], for diagnostics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct StoreStats {
    /// Documents with a value.
    pub documents: u64,
    /// Deleted documents still kept (tombstones).
    pub tombstones: u64,
    /// Decided mutations remembered for retries.
    pub mutations: u64,
}

/// A random database identity: 128 bits as 32 hex digits.
pub(crate) fn new_epoch() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::Internal(format!("no random numbers for the epoch: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

pub(crate) fn check_cursor(cursor: &Cursor, epoch: &str, latest: u64, purged: u64) -> Result<u64> {
    if cursor.epoch != epoch {
        return Err(Error::CursorReset(
            "the cursor belongs to another database: pull again from the beginning".to_owned(),
        ));
    }
    if cursor.seq > latest {
        return Err(Error::CursorReset(format!(
            "the cursor is beyond this database's last change ({latest}): \
             pull again from the beginning"
        )));
    }
    // Below the floor, and handed out before it rose: its holder may have
    // missed a deletion. (One handed out since comes from a pull from the
    // beginning, which misses nothing by skipping a purged tombstone.)
    if cursor.seq < purged && cursor.floor < purged {
        return Err(Error::CursorReset(format!(
            "the cursor is older than the tombstone horizon (deletions up to change {purged} \
             were purged): pull again from the beginning"
        )));
    }
    Ok(cursor.seq)
}

/// Seconds since the Unix epoch (0 before it).
pub(crate) fn unix_seconds(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The stable hash of a change's value, kept to tell a retried mutation from
/// a reused number (`None`, a delete, hashes apart from every text).
pub(crate) fn value_hash(value: Option<&Raw>) -> i64 {
    match value {
        Some(raw) => history::fnv1a(raw.as_str().as_bytes()) as i64,
        None => -1,
    }
}

/// A stored value back as a datum. Stored text was validated (and made
/// canonical) when it was written, so it is not parsed again.
pub(crate) fn stored_value(text: Option<String>) -> Option<Raw> {
    text.map(Raw::from_trusted)
}

pub(crate) fn validate_push(request: &PushRequest) -> Result<()> {
    protocol::validate_group(&request.group).map_err(Error::BadRequest)?;
    let id = &request.client_id;
    if id.is_empty() || id.len() > protocol::MAX_CLIENT_ID_LEN {
        return Err(Error::BadRequest(format!(
            "client id must be 1 to {} bytes long",
            protocol::MAX_CLIENT_ID_LEN
        )));
    }
    if id.chars().any(char::is_control) {
        return Err(Error::BadRequest(
            "client id must not contain control characters".to_owned(),
        ));
    }
    if request.changes.len() > protocol::MAX_PUSH_CHANGES {
        return Err(Error::BadRequest(format!(
            "a push may carry at most {} changes, this one has {}",
            protocol::MAX_PUSH_CHANGES,
            request.changes.len()
        )));
    }
    for (index, change) in request.changes.iter().enumerate() {
        protocol::validate_key(&change.key)
            .map_err(|e| Error::BadRequest(format!("change {index}: {e}")))?;
        if change.base_version > protocol::MAX_VERSION {
            return Err(Error::BadRequest(format!(
                "change {index}: base_version must be at most {}",
                protocol::MAX_VERSION
            )));
        }
        if change.mutation > protocol::MAX_VERSION {
            return Err(Error::BadRequest(format!(
                "change {index}: mutation must be at most {}",
                protocol::MAX_VERSION
            )));
        }
    }
    if request.low_water.is_some_and(|l| l > protocol::MAX_VERSION) {
        return Err(Error::BadRequest(format!(
            "low_water must be at most {}",
            protocol::MAX_VERSION
        )));
    }
    Ok(())
}
