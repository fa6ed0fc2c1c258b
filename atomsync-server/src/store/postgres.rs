//! The PostgreSQL backend of [`Store`](super::Store): one database shared by
//! any number of stateless servers.
//!
//! ## Why `postgres` (tokio-postgres)
//!
//! The store is driven from one blocking thread per server (as SQLite is), so
//! the client is [`postgres`](::postgres), the blocking face of
//! `tokio-postgres` (it runs each connection on a private single-threaded
//! tokio runtime). `tokio-postgres` gives direct access to `LISTEN`/`NOTIFY`
//! (which live updates across servers need), explicit transactions with
//! isolation levels, prepared statements and the server's error codes, with
//! no compile-time database and no macros; `sqlx` would bring its own pool,
//! runtime glue and query macros for no gain here, and a pool is not needed
//! because each server's store thread uses one connection (the listener uses
//! a second one).
//!
//! ## Ordering of changes
//!
//! The change counter is a row (`atomsync_meta.seq`) locked and advanced in
//! the push transaction (`SELECT .. FOR UPDATE`), not a sequence: pushes
//! commit one after the other in change-number order, so a pull (one
//! `REPEATABLE READ` snapshot reading the counter and the documents) never
//! sees a change number whose predecessors are still uncommitted, and a
//! client paging with the returned cursors never skips a change that
//! commits later with a smaller number. This keeps the protocol's "one
//! counter for the whole database" exactly as with SQLite.
//!
//! ## Epochs
//!
//! The epoch is kept in `atomsync_meta`. A database created anew gets a new
//! one; a database restored elsewhere (`pg_dump` into another database or
//! cluster, a point-in-time recovery or a promoted replica: the cluster's
//! system identifier, the database's OID or the timeline changed since the
//! last start) gets a new one when a server opens it, and so does an
//! operator's declaration ([`StoreOptions::new_epoch`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::postgres::error::SqlState;
use ::postgres::fallible_iterator::FallibleIterator;
use ::postgres::{Client, Config, IsolationLevel, NoTls, Statement};
use atomsync_core::protocol::{
    self, Change, ChangeResult, Cursor, Document, PullRequest, PullResponse, PushRequest,
    PushResponse,
};
use atomsync_core::sexpr::Raw;

use super::{
    StoreOptions, StoreStats, check_cursor, new_epoch, stored_value, unix_seconds, value_hash,
};
use crate::{Error, Result};

/// The channel of change notifications; each payload is
/// `INSTANCE GROUP SEQ`.
pub(crate) const CHANNEL: &str = "atomsync";

/// Held (transaction-scoped) while migrating, so that servers starting at
/// once migrate one after the other.
const MIGRATION_LOCK: i64 = 0x6174_6f6d_7379_6e63; // "atomsync"

/// How long connecting may take before a request gets 503.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The schema, one migration per entry, applied in order;
/// `atomsync_schema.version` holds how many were applied. Never edit an entry
/// once released: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: the counter and epoch, the documents and the answered mutations.
    "CREATE TABLE atomsync_meta (
        id integer PRIMARY KEY CHECK (id = 1),
        epoch text NOT NULL,
        seq bigint NOT NULL CHECK (seq >= 0),
        purged_seq bigint NOT NULL DEFAULT 0,
        purged_version bigint NOT NULL DEFAULT 0,
        restore_label text,
        identity text
    );
    CREATE TABLE atomsync_documents (
        grp text NOT NULL,
        key text NOT NULL,
        value text,
        version bigint NOT NULL CHECK (version >= 1),
        seq bigint NOT NULL,
        changed_at bigint NOT NULL,
        PRIMARY KEY (grp, key)
    );
    CREATE INDEX atomsync_documents_by_seq ON atomsync_documents (grp, seq);
    CREATE INDEX atomsync_tombstones_by_age ON atomsync_documents (changed_at)
        WHERE value IS NULL;
    CREATE TABLE atomsync_mutations (
        client_id text NOT NULL,
        mutation bigint NOT NULL,
        grp text NOT NULL,
        key text NOT NULL,
        version bigint,
        base_version bigint,
        value_hash bigint,
        PRIMARY KEY (client_id, mutation)
    );",
];

/// What a server needs to follow the changes of the others: where to
/// connect, and its own name (its own notifications are already announced).
#[derive(Debug, Clone)]
pub(crate) struct Listener {
    pub(crate) config: Config,
    pub(crate) instance: String,
}

/// The prepared statements of one connection.
struct Conn {
    client: Client,
    lock_meta: Statement,
    read_meta: Statement,
    record: Statement,
    correct: Statement,
    answered: Statement,
    create: Statement,
    update: Statement,
    find_document: Statement,
    pull: Statement,
}

impl Conn {
    fn connect(config: &Config) -> std::result::Result<Conn, ::postgres::Error> {
        let mut client = config.connect(NoTls)?;
        let mut prepare = |sql: &str| client.prepare(sql);
        let lock_meta = prepare(
            "SELECT epoch, seq, purged_seq, purged_version FROM atomsync_meta WHERE id = 1 \
             FOR UPDATE",
        )?;
        let read_meta = prepare(
            "SELECT epoch, seq, purged_seq, purged_version FROM atomsync_meta WHERE id = 1",
        )?;
        let record = prepare(
            "INSERT INTO atomsync_mutations (client_id, mutation, grp, key, version, \
             base_version, value_hash) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        )?;
        let correct = prepare(
            "UPDATE atomsync_mutations SET version = $3 WHERE client_id = $1 AND mutation = $2",
        )?;
        let answered = prepare(
            "SELECT grp, key, version, base_version, value_hash FROM atomsync_mutations \
             WHERE client_id = $1 AND mutation = $2",
        )?;
        let create = prepare(
            "INSERT INTO atomsync_documents (grp, key, value, version, seq, changed_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (grp, key) DO NOTHING",
        )?;
        let update = prepare(
            "UPDATE atomsync_documents SET value = $3, version = $4, seq = $5, changed_at = $7 \
             WHERE grp = $1 AND key = $2 AND version = $6",
        )?;
        let find_document =
            prepare("SELECT version, value FROM atomsync_documents WHERE grp = $1 AND key = $2")?;
        let pull = prepare(
            "SELECT key, version, value, seq FROM atomsync_documents \
             WHERE grp = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )?;
        Ok(Conn {
            client,
            lock_meta,
            read_meta,
            record,
            correct,
            answered,
            create,
            update,
            find_document,
            pull,
        })
    }
}

/// The documents of every group in one PostgreSQL database, which other
/// servers may share. One connection, opened again when it breaks (requests
/// meanwhile get [`Error::Unavailable`]).
pub(crate) struct PgStore {
    config: Config,
    conn: Option<Conn>,
    epoch: String,
    seq: u64,
    purged_seq: u64,
    max_pull_bytes: usize,
    tombstone_horizon: Option<Duration>,
    new_epoch_reason: Option<String>,
    /// This server's name in notifications.
    instance: String,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("epoch", &self.epoch)
            .field("seq", &self.seq)
            .field("connected", &self.conn.is_some())
            .finish_non_exhaustive()
    }
}

/// Runs `f` (which blocks on PostgreSQL) on this thread, or on a scoped
/// thread of its own when this one drives an async runtime: the blocking
/// client runs its own private runtime, which may not be started inside
/// another. (The [`SyncService`](crate::SyncService)'s store thread is a
/// plain thread; this is for a store used directly from async code.)
pub(crate) fn off_runtime<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|scope| match scope.spawn(f).join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        })
    } else {
        f()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Closing the connection blocks too.
        if let Some(conn) = self.conn.take() {
            off_runtime(move || drop(conn));
        }
    }
}

/// Parses a `postgres://` or `postgresql://` URL; the password may also come
/// from `PGPASSWORD`.
pub(crate) fn parse_url(url: &str) -> Result<Config> {
    parse_url_with(url, std::env::var("PGPASSWORD").ok())
}

/// [`parse_url`] with `PGPASSWORD`'s value.
fn parse_url_with(url: &str, pgpassword: Option<String>) -> Result<Config> {
    let mut config: Config = url
        .parse()
        .map_err(|e| Error::Config(format!("invalid PostgreSQL URL: {e}")))?;
    if config.get_password().is_none()
        && let Some(password) = pgpassword
    {
        config.password(password);
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("atomsync-server");
    }
    Ok(config)
}

/// Whether `e` means the database is out of reach (restarting, the
/// connection broken) rather than a failed statement.
fn is_unavailable(e: &::postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        None => true,
        Some(code) => {
            let class = &code.code()[..2];
            class == "08"
                || class == "57"
                || class == "53"
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
        }
    }
}

impl PgStore {
    pub(crate) fn open(url: &str, options: &StoreOptions) -> Result<PgStore> {
        let config = parse_url(url)?;
        let mut conn = connect_and_migrate(&config)?;
        let (epoch, reason) = settle_epoch(&mut conn, options)?;
        let conn = Conn::connect(&config)?;
        let mut store = PgStore {
            config,
            conn: Some(conn),
            epoch,
            seq: 0,
            purged_seq: 0,
            max_pull_bytes: options.max_pull_bytes,
            tombstone_horizon: options.tombstone_horizon,
            new_epoch_reason: reason,
            instance: new_epoch()?,
        };
        store.latest_cursor()?;
        Ok(store)
    }

    pub(crate) fn listener(&self) -> Listener {
        let mut config = self.config.clone();
        // Named apart, for operators (and tests) to find it.
        config.application_name("atomsync-listener");
        Listener {
            config,
            instance: self.instance.clone(),
        }
    }

    /// The connection, opened again if it was lost.
    fn conn(&mut self) -> Result<&mut Conn> {
        if self.conn.as_ref().is_some_and(|c| c.client.is_closed()) {
            self.conn = None;
        }
        if self.conn.is_none() {
            // The database may have been restored, recovered to a point in
            // time or failed over while the connection was down: the same
            // check as on open (under the meta row's lock, so one server
            // takes the new epoch and the others see it).
            let connected = Conn::connect(&self.config).map(|mut conn| {
                let settled = settle_epoch(&mut conn.client, &StoreOptions::default());
                (conn, settled)
            });
            match connected {
                Ok((conn, Ok((epoch, reason)))) => {
                    self.conn = Some(conn);
                    if epoch != self.epoch {
                        tracing::warn!(old = %self.epoch, new = %epoch, "the database has a new epoch");
                        self.epoch = epoch;
                        self.seq = 0;
                        self.purged_seq = 0;
                        if reason.is_some() {
                            self.new_epoch_reason = reason;
                        }
                    }
                }
                Ok((_, Err(e))) => {
                    tracing::warn!(error = %e, "PostgreSQL answered but its epoch could not be checked");
                    return Err(Error::Unavailable);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "PostgreSQL is out of reach");
                    return Err(Error::Unavailable);
                }
            }
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// Maps a failure: out of reach is [`Error::Unavailable`] (and the
    /// connection is dropped, to be opened again), anything else is a
    /// database error.
    fn fail(&mut self, e: ::postgres::Error) -> Error {
        if is_unavailable(&e) {
            tracing::warn!(error = %e, "PostgreSQL failed; reconnecting on the next request");
            self.conn = None;
            Error::Unavailable
        } else {
            Error::Postgres(e)
        }
    }

    fn run<T>(
        &mut self,
        f: impl FnOnce(&mut Conn) -> std::result::Result<Result<T>, ::postgres::Error>,
    ) -> Result<T> {
        let conn = self.conn()?;
        match f(conn) {
            Ok(result) => result,
            Err(e) => Err(self.fail(e)),
        }
    }

    pub(crate) fn new_epoch_reason(&self) -> Option<&str> {
        self.new_epoch_reason.as_deref()
    }

    pub(crate) fn epoch(&self) -> &str {
        &self.epoch
    }

    pub(crate) fn cursor(&self) -> Cursor {
        self.cursor_at(self.seq)
    }

    fn cursor_at(&self, seq: u64) -> Cursor {
        Cursor {
            epoch: self.epoch.clone(),
            seq,
            floor: self.purged_seq,
        }
    }

    /// Reads the counter and the purge floor.
    pub(crate) fn latest_cursor(&mut self) -> Result<Cursor> {
        let (epoch, seq, purged_seq) = self.run(|c| {
            let row = c.client.query_one(&c.read_meta, &[])?;
            Ok(Ok((
                row.get::<_, String>(0),
                row.get::<_, i64>(1) as u64,
                row.get::<_, i64>(2) as u64,
            )))
        })?;
        self.epoch = epoch;
        self.seq = seq;
        self.purged_seq = purged_seq;
        Ok(self.cursor())
    }

    pub(crate) fn stats(&mut self) -> Result<StoreStats> {
        self.run(|c| {
            let row = c.client.query_one(
                "SELECT count(*) FILTER (WHERE value IS NOT NULL), \
                 count(*) FILTER (WHERE value IS NULL), \
                 (SELECT count(*) FROM atomsync_mutations) FROM atomsync_documents",
                &[],
            )?;
            Ok(Ok(StoreStats {
                documents: row.get::<_, i64>(0) as u64,
                tombstones: row.get::<_, i64>(1) as u64,
                mutations: row.get::<_, i64>(2) as u64,
            }))
        })
    }

    pub(crate) fn purge_tombstones(&mut self, cutoff: SystemTime) -> Result<u64> {
        let cutoff = unix_seconds(cutoff);
        let done = self.run(|c| {
            let mut tx = c.client.transaction()?;
            let meta = tx.query_one(&c.lock_meta, &[])?;
            let (seq, purged_seq, purged_version) = (
                meta.get::<_, i64>(1),
                meta.get::<_, i64>(2),
                meta.get::<_, i64>(3),
            );
            let row = tx.query_one(
                "SELECT count(*), max(seq), max(version) FROM atomsync_documents \
                 WHERE value IS NULL AND changed_at < $1",
                &[&cutoff],
            )?;
            let count = row.get::<_, i64>(0) as u64;
            if count == 0 {
                return Ok(Ok(None));
            }
            tx.execute(
                "DELETE FROM atomsync_documents WHERE value IS NULL AND changed_at < $1",
                &[&cutoff],
            )?;
            let purged_seq = purged_seq.max(row.get::<_, Option<i64>>(1).unwrap_or(0));
            let purged_version = purged_version.max(row.get::<_, Option<i64>>(2).unwrap_or(0));
            let seq = seq + 1;
            tx.execute(
                "UPDATE atomsync_meta SET purged_seq = $1, purged_version = $2, seq = $3 \
                 WHERE id = 1",
                &[&purged_seq, &purged_version, &seq],
            )?;
            tx.commit()?;
            Ok(Ok(Some((count, seq as u64, purged_seq as u64))))
        })?;
        match done {
            None => Ok(0),
            Some((count, seq, purged_seq)) => {
                self.seq = seq;
                self.purged_seq = purged_seq;
                tracing::info!(count, purged_seq, "tombstones purged");
                Ok(count)
            }
        }
    }

    pub(crate) fn purge_expired_tombstones(&mut self) -> Result<u64> {
        match self.tombstone_horizon {
            Some(horizon) => {
                let cutoff = SystemTime::now().checked_sub(horizon).unwrap_or(UNIX_EPOCH);
                self.purge_tombstones(cutoff)
            }
            None => Ok(0),
        }
    }

    pub(crate) fn pull(&mut self, request: &PullRequest) -> Result<PullResponse> {
        protocol::validate_group(&request.group).map_err(Error::BadRequest)?;
        let limit = match request.limit {
            None => protocol::DEFAULT_PULL_LIMIT,
            Some(0) => return Err(Error::BadRequest("limit must be at least 1".to_owned())),
            Some(n) => n.min(protocol::MAX_PULL_LIMIT),
        } as usize;
        let max_bytes = self.max_pull_bytes;
        let (epoch, latest, purged, page) = self.run(|c| {
            let mut tx = c
                .client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let meta = tx.query_one(&c.read_meta, &[])?;
            let epoch: String = meta.get(0);
            let latest = meta.get::<_, i64>(1) as u64;
            let purged = meta.get::<_, i64>(2) as u64;
            let since = match &request.since {
                None => 0,
                Some(cursor) => match check_cursor(cursor, &epoch, latest, purged) {
                    Ok(since) => since,
                    Err(e) => return Ok(Err(e)),
                },
            };
            let rows = tx.query(
                &c.pull,
                &[&request.group, &(since as i64), &(limit as i64 + 1)],
            )?;
            tx.commit()?;
            let mut documents = Vec::with_capacity(rows.len().min(limit));
            let mut last_seq = since;
            let mut more = false;
            let mut bytes = 0;
            for row in rows {
                if documents.len() == limit || bytes >= max_bytes {
                    more = true;
                    break;
                }
                let document = Document {
                    key: row.get(0),
                    version: row.get::<_, i64>(1) as u64,
                    value: stored_value(row.get(2)),
                };
                bytes +=
                    document.key.len() + document.value.as_ref().map_or(0, |v| v.as_str().len());
                documents.push(document);
                last_seq = row.get::<_, i64>(3) as u64;
            }
            Ok(Ok((epoch, latest, purged, (documents, last_seq, more))))
        })?;
        let (documents, last_seq, more) = page;
        self.epoch = epoch;
        self.seq = self.seq.max(latest);
        self.purged_seq = purged;
        let seq = if more { last_seq } else { latest };
        Ok(PullResponse {
            documents,
            cursor: self.cursor_at(seq),
            more,
        })
    }

    pub(crate) fn push(&mut self, request: &PushRequest) -> Result<PushResponse> {
        super::validate_push(request)?;
        let now = unix_seconds(SystemTime::now());
        let instance = self.instance.clone();
        let (epoch, seq, purged_seq, results) = self.run(|c| {
            let mut tx = c.client.transaction()?;
            // The counter row's lock orders the pushes: see the module docs.
            let meta = tx.query_one(&c.lock_meta, &[])?;
            let epoch: String = meta.get(0);
            let start = meta.get::<_, i64>(1) as u64;
            let purged_seq = meta.get::<_, i64>(2) as u64;
            let purged_version = meta.get::<_, i64>(3) as u64;
            if let Some(pushed) = &request.epoch
                && *pushed != epoch
            {
                return Ok(Err(Error::CursorReset(
                    "the changes are based on another database's versions: pull again from \
                     the beginning, then push"
                        .to_owned(),
                )));
            }
            let mut seq = start;
            let mut results = Vec::with_capacity(request.changes.len());
            let group = request.group.as_str();
            let current = |tx: &mut ::postgres::Transaction<'_>,
                           key: &str|
             -> std::result::Result<Option<Document>, ::postgres::Error> {
                let found = tx.query_opt(&c.find_document, &[&group, &key])?;
                Ok(match found {
                    Some(row) => Some(Document {
                        key: key.to_owned(),
                        version: row.get::<_, i64>(0) as u64,
                        value: stored_value(row.get(1)),
                    }),
                    None => (purged_version > 0).then(|| Document {
                        key: key.to_owned(),
                        version: purged_version,
                        value: None,
                    }),
                })
            };
            for change in &request.changes {
                let Change {
                    mutation,
                    ref key,
                    base_version,
                    ref value,
                } = *change;
                let hash = value_hash(value.as_ref());
                let proposed = (base_version < protocol::MAX_VERSION).then_some(base_version + 1);
                let recorded = tx.execute(
                    &c.record,
                    &[
                        &request.client_id,
                        &(mutation as i64),
                        &group,
                        key,
                        &proposed.map(|v| v as i64),
                        &(base_version as i64),
                        &hash,
                    ],
                )?;
                if recorded == 0 {
                    let row =
                        tx.query_one(&c.answered, &[&request.client_id, &(mutation as i64)])?;
                    let answered_group: String = row.get(0);
                    let answered_key: String = row.get(1);
                    let version: Option<i64> = row.get(2);
                    let base: Option<i64> = row.get(3);
                    let answered_hash: Option<i64> = row.get(4);
                    let same = answered_group == group
                        && answered_key == *key
                        && base.is_none_or(|b| b == base_version as i64)
                        && answered_hash.is_none_or(|h| h == hash);
                    if !same {
                        return Ok(Err(Error::MutationReused(format!(
                            "mutation {mutation} of client `{}` was already decided for another \
                             change: push under a new client id",
                            request.client_id
                        ))));
                    }
                    results.push(match version {
                        Some(version) => ChangeResult::Accepted {
                            mutation,
                            key: key.clone(),
                            version: version as u64,
                        },
                        None => ChangeResult::Conflict {
                            mutation,
                            key: key.clone(),
                            current: current(&mut tx, key)?,
                        },
                    });
                    continue;
                }
                let value = value.as_ref().map(Raw::as_str);
                let next = seq as i64 + 1;
                let mut accepted = None;
                if let Some(version) = proposed
                    && base_version > 0
                    && tx.execute(
                        &c.update,
                        &[
                            &group,
                            key,
                            &value,
                            &(version as i64),
                            &next,
                            &(base_version as i64),
                            &now,
                        ],
                    )? == 1
                {
                    accepted = Some(version);
                }
                let fresh = base_version.max(purged_version);
                if accepted.is_none()
                    && (base_version == 0 || base_version == purged_version)
                    && fresh < protocol::MAX_VERSION
                    && tx.execute(
                        &c.create,
                        &[&group, key, &value, &(fresh as i64 + 1), &next, &now],
                    )? == 1
                {
                    accepted = Some(fresh + 1);
                }
                if accepted != proposed {
                    tx.execute(
                        &c.correct,
                        &[
                            &request.client_id,
                            &(mutation as i64),
                            &accepted.map(|v| v as i64),
                        ],
                    )?;
                }
                results.push(match accepted {
                    Some(version) => {
                        seq += 1;
                        ChangeResult::Accepted {
                            mutation,
                            key: key.clone(),
                            version,
                        }
                    }
                    None => ChangeResult::Conflict {
                        mutation,
                        key: key.clone(),
                        current: current(&mut tx, key)?,
                    },
                });
            }
            if let Some(low_water) = request.low_water {
                tx.execute(
                    "DELETE FROM atomsync_mutations WHERE client_id = $1 AND mutation < $2",
                    &[&request.client_id, &(low_water as i64)],
                )?;
            }
            if seq != start {
                tx.execute(
                    "UPDATE atomsync_meta SET seq = $1 WHERE id = 1",
                    &[&(seq as i64)],
                )?;
                // Delivered to the listeners when (and only if) this commits.
                let payload = format!("{instance} {group} {seq}");
                tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])?;
            }
            tx.commit()?;
            Ok(Ok((epoch, seq, purged_seq, results)))
        })?;
        self.epoch = epoch;
        self.seq = seq;
        self.purged_seq = purged_seq;
        Ok(PushResponse {
            results,
            cursor: self.cursor(),
        })
    }
}

/// Connects, and brings the schema up to date (under an advisory lock, so
/// that servers starting together migrate once).
fn connect_and_migrate(config: &Config) -> Result<Client> {
    let mut client = config.connect(NoTls)?;
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS atomsync_schema (version integer NOT NULL)")?;
    let applied: Option<i32> = tx
        .query_opt("SELECT version FROM atomsync_schema", &[])?
        .map(|row| row.get(0));
    let applied = match applied {
        Some(applied) => applied as usize,
        None => {
            tx.execute("INSERT INTO atomsync_schema (version) VALUES (0)", &[])?;
            0
        }
    };
    if applied > MIGRATIONS.len() {
        return Err(Error::Config(format!(
            "the database has schema version {applied}, newer than this server's {}",
            MIGRATIONS.len()
        )));
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(applied) {
        tx.batch_execute(migration)?;
        tx.execute(
            "UPDATE atomsync_schema SET version = $1",
            &[&(index as i32 + 1)],
        )?;
    }
    tx.commit()?;
    Ok(client)
}

/// What identifies this copy of the database: the cluster's system
/// identifier and timeline (when this role may read them) and the database's
/// OID. A restored copy (`pg_dump`, point-in-time recovery, a promoted
/// replica) differs in at least one of them.
fn identity(client: &mut Client) -> Result<String> {
    let database: String = client
        .query_one(
            "SELECT oid::text FROM pg_database WHERE datname = current_database()",
            &[],
        )?
        .get(0);
    let cluster = client
        .query_one(
            "SELECT (SELECT system_identifier::text FROM pg_control_system()) || '/' || \
             (SELECT timeline_id::text FROM pg_control_checkpoint())",
            &[],
        )
        .map(|row| row.get::<_, String>(0))
        .unwrap_or_else(|_| "?".to_owned());
    Ok(format!("{cluster}/{database}"))
}

/// Creates the meta row if there is none, and gives the database a new
/// epoch if it is a restored copy or the operator declared a restore.
/// Returns the epoch and why it is new, if it is.
fn settle_epoch(client: &mut Client, options: &StoreOptions) -> Result<(String, Option<String>)> {
    let identity = identity(client)?;
    let mut tx = client.transaction()?;
    let created = tx.execute(
        "INSERT INTO atomsync_meta (id, epoch, seq, identity) VALUES (1, $1, 0, $2) \
         ON CONFLICT DO NOTHING",
        &[&new_epoch()?, &identity],
    )? == 1;
    let row = tx.query_one(
        "SELECT epoch, restore_label, identity FROM atomsync_meta WHERE id = 1 FOR UPDATE",
        &[],
    )?;
    let mut epoch: String = row.get(0);
    let applied: Option<String> = row.get(1);
    let known: Option<String> = row.get(2);
    let moved = match known {
        Some(known) if !created && known != identity => Some(format!(
            "the database is another copy than when last opened ({known} → {identity}): \
             restored or failed over"
        )),
        _ => None,
    };
    let declared = match &options.new_epoch {
        Some(label) if !created && applied.as_deref() != Some(label.as_str()) => Some(format!(
            "the operator declared a restore (new_epoch, label {label:?})"
        )),
        _ => None,
    };
    let reason = moved.or(declared);
    if let Some(label) = &options.new_epoch {
        tx.execute(
            "UPDATE atomsync_meta SET restore_label = $1 WHERE id = 1",
            &[label],
        )?;
    }
    tx.execute(
        "UPDATE atomsync_meta SET identity = $1 WHERE id = 1",
        &[&identity],
    )?;
    if let Some(reason) = &reason {
        let old = epoch;
        epoch = new_epoch()?;
        tx.execute(
            "UPDATE atomsync_meta SET epoch = $1 WHERE id = 1",
            &[&epoch],
        )?;
        tracing::warn!(%old, new = %epoch, "history may have been lost ({reason}): new epoch");
    }
    tx.commit()?;
    Ok((epoch, reason))
}

/// Follows the changes other servers commit, calling `notify(group, seq)`
/// for each (in commit order), and `reconnected(seq, floor, first)` after
/// each connection (after a reconnection, notifications may have been
/// lost). Returns when
/// `alive` says so. Reconnects by itself, backing off up to one second.
pub(crate) fn listen(
    listener: &Listener,
    alive: &dyn Fn() -> bool,
    notify: &dyn Fn(&str, u64),
    reconnected: &dyn Fn(u64, u64, bool),
) {
    let mut backoff = Duration::from_millis(50);
    let mut first = true;
    while alive() {
        let connected = |seq, floor| {
            reconnected(seq, floor, first);
        };
        let result = listen_once(listener, alive, notify, &connected);
        first = false;
        match result {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "the PostgreSQL listener lost its connection; reconnecting");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

fn listen_once(
    listener: &Listener,
    alive: &dyn Fn() -> bool,
    notify: &dyn Fn(&str, u64),
    reconnected: &dyn Fn(u64, u64),
) -> std::result::Result<(), ::postgres::Error> {
    let mut client = listener.config.connect(NoTls)?;
    client.batch_execute(&format!("LISTEN {CHANNEL}"))?;
    // Listening from here on: whatever committed before is in this read.
    let row = client.query_one(
        "SELECT seq, purged_seq FROM atomsync_meta WHERE id = 1",
        &[],
    )?;
    reconnected(row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64);
    let mut idle = 0;
    while alive() {
        let mut any = false;
        {
            let mut notifications = client.notifications();
            let mut iter = notifications.timeout_iter(Duration::from_millis(200));
            while let Some(notification) = iter.next()? {
                any = true;
                let mut parts = notification.payload().split(' ');
                let (Some(instance), Some(group), Some(seq)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                if instance == listener.instance {
                    continue;
                }
                if let Ok(seq) = seq.parse() {
                    notify(group, seq);
                }
            }
        }
        if client.is_closed() {
            // Fails, with the reason.
            client.simple_query("")?;
        }
        // A quiet connection is checked now and then (a half-open one would
        // otherwise go unnoticed).
        idle = if any { 0 } else { idle + 1 };
        if idle >= 25 {
            client.simple_query("")?;
            idle = 0;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_take_the_password_from_the_url_or_pgpassword() {
        for scheme in ["postgres", "postgresql"] {
            let config = parse_url_with(
                &format!("{scheme}://u:secret@h:5433/db"),
                Some("env".into()),
            )
            .unwrap();
            assert_eq!(config.get_password(), Some(&b"secret"[..]));
            assert_eq!(config.get_user(), Some("u"));
            assert_eq!(config.get_dbname(), Some("db"));
            assert_eq!(config.get_ports(), [5433]);
            let config = parse_url_with(&format!("{scheme}://u@h/db"), Some("env".into())).unwrap();
            assert_eq!(config.get_password(), Some(&b"env"[..]));
            let config = parse_url_with(&format!("{scheme}://u@h/db"), None).unwrap();
            assert_eq!(config.get_password(), None);
            assert_eq!(config.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
        }
        assert!(matches!(
            parse_url_with("postgres://u@h:x/db", None),
            Err(Error::Config(_))
        ));
    }

    #[test]
    fn out_of_reach_is_told_apart_from_a_failed_statement() {
        // Nothing listens on port 1: connecting fails without a SQL state.
        let config = parse_url_with("postgres://u@127.0.0.1:1/db", None).unwrap();
        let Err(err) = config.connect(NoTls) else {
            panic!("something listens on port 1");
        };
        assert!(is_unavailable(&err));
    }
}
