//! [`SqliteStorage`]: the engine's durable state in a SQLite file.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use atomsync_core::engine::{
    Batch, Conflict, ConflictCause, Meta, PendingChange, Resolution, Snapshot, Storage, StoredDoc,
};
use atomsync_core::protocol::Cursor;
use atomsync_core::sexpr::{self, Raw};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use crate::{Error, Result};

/// The schema, one migration per entry, applied in order. `PRAGMA
/// user_version` holds how many have been applied. Never edit an entry once
/// released: append a new one.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: per group, the engine's scalar state, the server documents as last
    // seen, the pending changes and the unread conflict reports. Values are
    // S-expression text; NULL values are deletions.
    "CREATE TABLE meta (
        grp TEXT PRIMARY KEY,
        client_id TEXT NOT NULL,
        cursor TEXT,
        resyncing INTEGER NOT NULL CHECK (resyncing IN (0, 1)),
        next_mutation INTEGER NOT NULL,
        next_conflict INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE docs (
        grp TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT,
        version INTEGER NOT NULL,
        epoch TEXT,
        PRIMARY KEY (grp, key)
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE pending (
        grp TEXT NOT NULL,
        mutation INTEGER NOT NULL,
        key TEXT NOT NULL,
        base_version INTEGER NOT NULL,
        value TEXT,
        PRIMARY KEY (grp, mutation)
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE conflicts (
        grp TEXT NOT NULL,
        id INTEGER NOT NULL,
        key TEXT NOT NULL,
        local TEXT,
        server TEXT,
        server_version INTEGER NOT NULL,
        resolution TEXT NOT NULL,
        PRIMARY KEY (grp, id)
    ) STRICT, WITHOUT ROWID;",
    // 2: what a conflict report is about (`write`, `reset`, `too-large` or
    // `concurrent`).
    "ALTER TABLE conflicts ADD COLUMN cause TEXT NOT NULL DEFAULT 'write';",
];

fn cause_text(cause: ConflictCause) -> &'static str {
    match cause {
        ConflictCause::Write => "write",
        ConflictCause::Reset => "reset",
        ConflictCause::TooLarge => "too-large",
        ConflictCause::Concurrent => "concurrent",
    }
}

fn cause_from_text(text: &str) -> Result<ConflictCause, String> {
    match text {
        "write" => Ok(ConflictCause::Write),
        "reset" => Ok(ConflictCause::Reset),
        "too-large" => Ok(ConflictCause::TooLarge),
        "concurrent" => Ok(ConflictCause::Concurrent),
        other => Err(format!(
            "cause {other:?}: expected `write`, `reset`, `too-large` or `concurrent`"
        )),
    }
}

/// SQLite's `synchronous` setting: how hard a commit waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Synchronous {
    /// A write is on disk before it is reported done, even across a power
    /// failure. The default.
    #[default]
    Full,
    /// Writes survive a crash of the process; the last ones may be lost on a
    /// power failure.
    Normal,
    /// No syncing at all: for tests only.
    Off,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
            Synchronous::Off => "OFF",
        }
    }
}

/// How a [`SqliteDatabase`] opens its file.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct SqliteOptions {
    /// Durability of commits; [`Synchronous::Full`] by default.
    pub synchronous: Synchronous,
}

impl SqliteOptions {
    /// Sets [`SqliteOptions::synchronous`].
    pub fn synchronous(mut self, synchronous: Synchronous) -> Self {
        self.synchronous = synchronous;
        self
    }
}

/// A SQLite database holding the state of any number of engines, one per
/// group. Cloning is cheap: the clones share one connection.
///
/// The calls block on SQLite: async code calls them from a blocking thread
/// (as [`Client`](crate::Client) does).
#[derive(Clone)]
pub struct SqliteDatabase {
    conn: Arc<Mutex<Connection>>,
}

impl fmt::Debug for SqliteDatabase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `try_lock`: never wait (or deadlock) just to print.
        let path = self
            .conn
            .try_lock()
            .ok()
            .and_then(|conn| conn.path().map(str::to_owned));
        f.debug_struct("SqliteDatabase")
            .field("path", &path)
            .finish_non_exhaustive()
    }
}

impl SqliteDatabase {
    /// Opens (or creates) the database at `path` in WAL mode and brings its
    /// schema up to date.
    ///
    /// # Errors
    ///
    /// [`Error::Sqlite`] if the file cannot be opened or written;
    /// [`Error::Corrupt`] if it is not a database or was written by a newer
    /// client.
    pub fn open(path: impl AsRef<Path>, options: &SqliteOptions) -> Result<Self> {
        let conn = Connection::open(path)?;
        Self::setup(conn, options)
    }

    /// A fresh database in memory: nothing survives the process.
    pub fn open_in_memory() -> Result<Self> {
        Self::setup(Connection::open_in_memory()?, &SqliteOptions::default())
    }

    fn setup(mut conn: Connection, options: &SqliteOptions) -> Result<Self> {
        let not_a_database = |e: rusqlite::Error| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::NotADatabase) => {
                Error::Corrupt(format!("the file is not an atomsync client database: {e}"))
            }
            _ => Error::Sqlite(e),
        };
        conn.busy_timeout(Duration::from_secs(5))?;
        // `journal_mode` answers with the mode in force ("memory" in memory).
        let _mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(not_a_database)?;
        conn.pragma_update(None, "synchronous", options.synchronous.pragma())?;
        migrate(&mut conn).map_err(|e| match e {
            Error::Sqlite(e) => not_a_database(e),
            e => e,
        })?;
        Ok(SqliteDatabase {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock rolled its transaction back: the
        // connection is still consistent.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The storage of `group`'s engine in this database.
    pub fn storage(&self, group: impl Into<String>) -> SqliteStorage {
        SqliteStorage {
            db: self.clone(),
            group: group.into(),
        }
    }

    /// The groups with a stored engine state, in name order.
    pub fn groups(&self) -> Result<Vec<String>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached("SELECT grp FROM meta ORDER BY grp")?;
        let groups = stmt
            .query_map([], |row| row.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| corrupt_row("meta", "", &e))?;
        Ok(groups)
    }
}

/// Brings the schema up to date in one transaction.
fn migrate(conn: &mut Connection) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let applied: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let applied = usize::try_from(applied).unwrap_or(usize::MAX);
    if applied > MIGRATIONS.len() {
        return Err(Error::Corrupt(format!(
            "the database has schema version {applied}, newer than this client's {}",
            MIGRATIONS.len()
        )));
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(applied) {
        tx.execute_batch(migration)?;
        tx.pragma_update(None, "user_version", index as i64 + 1)?;
    }
    tx.commit()?;
    Ok(())
}

/// The durable state of one group's engine, in a [`SqliteDatabase`].
///
/// Each [`Batch`] is applied in one transaction. Values are stored as their
/// S-expression text, so the database is readable with the `sqlite3` shell;
/// rows that do not read back as what the engine wrote are reported as
/// [`Error::Corrupt`].
///
/// ## Usage
///
/// ```
/// use atomsync_client::SqliteDatabase;
/// use atomsync_core::engine::{Engine, Storage};
///
/// let db = SqliteDatabase::open_in_memory()?;
/// let mut storage = db.storage("todo");
/// let mut engine = Engine::new("todo", "device-1/todo")?;
/// storage.apply(&engine.set_value("milk", "Buy milk")?.batch)?;
///
/// let engine = Engine::restore(storage.load()?.expect("stored"))?;
/// assert_eq!(engine.get_value::<String>("milk")?.as_deref(), Some("Buy milk"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct SqliteStorage {
    db: SqliteDatabase,
    group: String,
}

impl SqliteStorage {
    /// The group whose state this is.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The database this storage lives in.
    pub fn database(&self) -> &SqliteDatabase {
        &self.db
    }
}

impl Storage for SqliteStorage {
    type Error = Error;

    fn load(&mut self) -> Result<Option<Snapshot>> {
        let mut conn = self.db.lock();
        let tx = conn.transaction()?;
        let snapshot = load(&tx, &self.group)?;
        tx.commit()?;
        Ok(snapshot)
    }

    fn apply(&mut self, batch: &Batch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut conn = self.db.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        apply(&tx, &self.group, batch)?;
        tx.commit()?;
        Ok(())
    }
}

fn to_sql(number: u64, what: &str) -> Result<i64> {
    i64::try_from(number)
        .map_err(|_| Error::Corrupt(format!("{what} {number} is too large to be stored")))
}

fn apply(tx: &Transaction<'_>, group: &str, batch: &Batch) -> Result<()> {
    match &batch.meta {
        Some(meta) => {
            if meta.group != group {
                return Err(Error::Corrupt(format!(
                    "a batch of group `{}` was applied to the storage of group `{group}`",
                    meta.group
                )));
            }
            tx.prepare_cached(
                "INSERT INTO meta (grp, client_id, cursor, resyncing, next_mutation, next_conflict)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (grp) DO UPDATE SET client_id = ?2, cursor = ?3, resyncing = ?4,
                     next_mutation = ?5, next_conflict = ?6",
            )?
            .execute(params![
                group,
                meta.client_id,
                meta.cursor.as_ref().map(Cursor::to_string),
                meta.resyncing,
                to_sql(meta.next_mutation, "mutation number")?,
                to_sql(meta.next_conflict, "conflict id")?,
            ])?;
        }
        None => {
            let stored = tx
                .prepare_cached("SELECT 1 FROM meta WHERE grp = ?1")?
                .query_row([group], |_| Ok(()))
                .optional()?;
            if stored.is_none() {
                return Err(Error::Corrupt(format!(
                    "no engine state is stored for group `{group}`: the first batch must carry it"
                )));
            }
        }
    }
    {
        let mut put = tx.prepare_cached(
            "INSERT OR REPLACE INTO docs (grp, key, value, version, epoch)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        let mut remove = tx.prepare_cached("DELETE FROM docs WHERE grp = ?1 AND key = ?2")?;
        for (key, doc) in &batch.docs {
            match doc {
                Some(doc) => put.execute(params![
                    group,
                    key,
                    doc.value.as_ref().map(Raw::as_str),
                    to_sql(doc.version, "version")?,
                    doc.epoch,
                ])?,
                None => remove.execute(params![group, key])?,
            };
        }
    }
    {
        let mut put = tx.prepare_cached(
            "INSERT OR REPLACE INTO pending (grp, mutation, key, base_version, value)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        let mut remove =
            tx.prepare_cached("DELETE FROM pending WHERE grp = ?1 AND mutation = ?2")?;
        for (&mutation, change) in &batch.pending {
            let mutation = to_sql(mutation, "mutation number")?;
            match change {
                Some(change) => put.execute(params![
                    group,
                    mutation,
                    change.key,
                    to_sql(change.base_version, "version")?,
                    change.value.as_ref().map(Raw::as_str),
                ])?,
                None => remove.execute(params![group, mutation])?,
            };
        }
    }
    {
        let mut put = tx.prepare_cached(
            "INSERT OR REPLACE INTO conflicts
                 (grp, id, key, local, server, server_version, resolution, cause)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        let mut remove = tx.prepare_cached("DELETE FROM conflicts WHERE grp = ?1 AND id = ?2")?;
        for (&id, conflict) in &batch.conflicts {
            let id = to_sql(id, "conflict id")?;
            match conflict {
                Some(conflict) => put.execute(params![
                    group,
                    id,
                    conflict.key,
                    conflict.local.as_ref().map(Raw::as_str),
                    conflict.server.as_ref().map(Raw::as_str),
                    to_sql(conflict.server_version, "version")?,
                    sexpr::to_string(&conflict.resolution)?,
                    cause_text(conflict.cause),
                ])?,
                None => remove.execute(params![group, id])?,
            };
        }
    }
    Ok(())
}

/// A row that does not read back: the error names the table, the group and
/// the row.
fn corrupt_row(table: &str, row: &str, error: &dyn fmt::Display) -> Error {
    Error::Corrupt(format!("table `{table}`, row {row}: {error}"))
}

fn from_sql(number: i64) -> Result<u64, String> {
    u64::try_from(number).map_err(|_| format!("negative number {number}"))
}

fn datum(text: Option<String>) -> Result<Option<Raw>, String> {
    text.map(|text| {
        Raw::from_text(&text).map_err(|e| format!("not an S-expression datum ({e}): {text:?}"))
    })
    .transpose()
}

/// Reads rows as tuples of SQL values (any type mismatch is corruption),
/// then converts each with `convert`, naming the row on failure.
fn read_rows<R, T>(
    tx: &Transaction<'_>,
    table: &str,
    group: &str,
    sql: &str,
    row: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<R>,
    name: impl Fn(&R) -> String,
    convert: impl Fn(R) -> Result<T, String>,
) -> Result<Vec<T>> {
    let mut stmt = tx.prepare_cached(sql)?;
    let rows = stmt.query_map([group], row)?;
    let mut out = Vec::new();
    for raw in rows {
        let raw = raw.map_err(|e| corrupt_row(table, &format!("of group `{group}`"), &e))?;
        let label = format!("{} of group `{group}`", name(&raw));
        out.push(convert(raw).map_err(|e| corrupt_row(table, &label, &e))?);
    }
    Ok(out)
}

fn load(tx: &Transaction<'_>, group: &str) -> Result<Option<Snapshot>> {
    type MetaRow = (String, Option<String>, bool, i64, i64);
    let meta: Option<MetaRow> = tx
        .prepare_cached(
            "SELECT client_id, cursor, resyncing, next_mutation, next_conflict
             FROM meta WHERE grp = ?1",
        )?
        .query_row([group], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
            ))
        })
        .optional()
        .map_err(|e| corrupt_row("meta", &format!("`{group}`"), &e))?;
    let Some((client_id, cursor, resyncing, next_mutation, next_conflict)) = meta else {
        let orphans: i64 = tx
            .prepare_cached(
                "SELECT (SELECT count(*) FROM docs WHERE grp = ?1)
                      + (SELECT count(*) FROM pending WHERE grp = ?1)
                      + (SELECT count(*) FROM conflicts WHERE grp = ?1)",
            )?
            .query_row([group], |row| row.get(0))?;
        if orphans > 0 {
            return Err(Error::Corrupt(format!(
                "group `{group}` has {orphans} stored rows but no engine state (table `meta`)"
            )));
        }
        return Ok(None);
    };
    let meta_error = |e: String| corrupt_row("meta", &format!("`{group}`"), &e);
    let meta = Meta {
        group: group.to_owned(),
        client_id,
        cursor: cursor
            .map(|text| {
                text.parse::<Cursor>()
                    .map_err(|e| format!("cursor {text:?}: {e}"))
            })
            .transpose()
            .map_err(meta_error)?,
        resyncing,
        next_mutation: from_sql(next_mutation).map_err(meta_error)?,
        next_conflict: from_sql(next_conflict).map_err(meta_error)?,
    };

    let docs = read_rows(
        tx,
        "docs",
        group,
        "SELECT key, value, version, epoch FROM docs WHERE grp = ?1",
        |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, Option<String>>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, Option<String>>(3)?,
            ))
        },
        |(key, ..)| format!("{key:?}"),
        |(key, value, version, epoch)| {
            let doc = StoredDoc {
                value: datum(value)?,
                version: from_sql(version)?,
                epoch,
            };
            Ok((key, doc))
        },
    )?;

    let pending = read_rows(
        tx,
        "pending",
        group,
        "SELECT mutation, key, base_version, value FROM pending WHERE grp = ?1",
        |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, Option<String>>(3)?,
            ))
        },
        |(mutation, ..)| format!("mutation {mutation}"),
        |(mutation, key, base_version, value)| {
            let mutation = from_sql(mutation)?;
            let change = PendingChange {
                mutation,
                key,
                base_version: from_sql(base_version)?,
                value: datum(value)?,
            };
            Ok((mutation, change))
        },
    )?;

    type ConflictRow = (
        i64,
        String,
        Option<String>,
        Option<String>,
        i64,
        String,
        String,
    );
    let conflicts = read_rows(
        tx,
        "conflicts",
        group,
        "SELECT id, key, local, server, server_version, resolution, cause
         FROM conflicts WHERE grp = ?1",
        |row| -> rusqlite::Result<ConflictRow> {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
                row.get(5)?,
                row.get(6)?,
            ))
        },
        |(id, ..)| format!("id {id}"),
        |(id, key, local, server, server_version, resolution, cause)| {
            let id = from_sql(id)?;
            let resolution = sexpr::from_str::<Resolution>(&resolution)
                .map_err(|e| format!("resolution {resolution:?}: {e}"))?;
            let conflict = Conflict {
                id,
                key,
                local: datum(local)?,
                server: datum(server)?,
                server_version: from_sql(server_version)?,
                resolution,
                cause: cause_from_text(&cause)?,
            };
            Ok((id, conflict))
        },
    )?;

    Ok(Some(Snapshot {
        meta,
        docs: docs.into_iter().collect::<BTreeMap<_, _>>(),
        pending: pending.into_iter().collect(),
        conflicts: conflicts.into_iter().collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use atomsync_core::engine::{ConflictPolicy, Engine};
    use atomsync_core::protocol::{ChangeResult, Document, PushResponse};

    fn raw(text: &str) -> Raw {
        Raw::from_text(text).unwrap()
    }

    #[test]
    fn migrations_apply_to_an_empty_database_and_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.db");
        for _ in 0..2 {
            let db = SqliteDatabase::open(&path, &SqliteOptions::default()).unwrap();
            let conn = db.lock();
            let version: i64 = conn
                .pragma_query_value(None, "user_version", |row| row.get(0))
                .unwrap();
            assert_eq!(version, MIGRATIONS.len() as i64);
            for table in ["meta", "docs", "pending", "conflicts"] {
                let count: i64 = conn
                    .query_row(
                        "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
                        [table],
                        |row| row.get(0),
                    )
                    .unwrap();
                assert_eq!(count, 1, "table {table}");
            }
            let mode: String = conn
                .query_row("PRAGMA journal_mode", [], |row| row.get(0))
                .unwrap();
            assert_eq!(mode, "wal");
        }
    }

    #[test]
    fn each_migration_is_valid_sql_on_its_own() {
        let conn = Connection::open_in_memory().unwrap();
        for migration in MIGRATIONS {
            conn.execute_batch(migration).unwrap();
        }
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let error = SqliteDatabase::open(&path, &SqliteOptions::default()).unwrap_err();
        assert!(matches!(error, Error::Corrupt(_)), "{error}");
        assert!(error.to_string().contains("schema version 99"), "{error}");
    }

    #[test]
    fn a_file_that_is_not_a_database_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.db");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let error = SqliteDatabase::open(&path, &SqliteOptions::default()).unwrap_err();
        assert!(matches!(error, Error::Corrupt(_)), "{error}");
    }

    /// Drives an engine through writes, an answer with a conflict and a
    /// restore; the storage always holds exactly the engine's snapshot.
    #[test]
    fn storage_tracks_the_engine_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.db");
        let db = SqliteDatabase::open(&path, &SqliteOptions::default()).unwrap();
        let mut storage = db.storage("todo");
        assert_eq!(storage.load().unwrap(), None);
        let mut engine = Engine::new("todo", "dev/todo")
            .unwrap()
            .with_policy(ConflictPolicy::ServerWins);
        let mut apply = |effects: atomsync_core::engine::Effects, engine: &Engine| {
            storage.apply(&effects.batch).unwrap();
            assert_eq!(storage.load().unwrap(), Some(engine.snapshot()));
        };
        let effects = engine.set_value("a", &(1.5f64, "x")).unwrap();
        apply(effects, &engine);
        let effects = engine.set_value("b", &vec![f64::MAX, -0.0]).unwrap();
        apply(effects, &engine);
        let effects = engine.delete("c").unwrap();
        apply(effects, &engine);
        let push = engine.next_push(0).unwrap();
        let cursor: Cursor = "e1.7".parse().unwrap();
        let response = PushResponse {
            results: vec![
                ChangeResult::Accepted {
                    mutation: push.changes[0].mutation,
                    key: "a".into(),
                    version: 1,
                },
                ChangeResult::Conflict {
                    mutation: push.changes[1].mutation,
                    key: "b".into(),
                    current: Some(Document {
                        key: "b".into(),
                        version: 3,
                        value: Some(raw("\"theirs\"")),
                    }),
                },
                ChangeResult::Accepted {
                    mutation: push.changes[2].mutation,
                    key: "c".into(),
                    version: 1,
                },
            ],
            cursor,
        };
        let effects = engine.on_push_response(&push, response);
        assert_eq!(effects.conflicts.len(), 1);
        apply(effects, &engine);

        // Another group in the same file is independent.
        let mut other = db.storage("other");
        assert_eq!(other.load().unwrap(), None);
        assert_eq!(db.groups().unwrap(), ["todo"]);
        drop(db);
        drop(other);

        let db = SqliteDatabase::open(&path, &SqliteOptions::default()).unwrap();
        let snapshot = db.storage("todo").load().unwrap().unwrap();
        assert_eq!(snapshot, engine.snapshot());
        let restored = Engine::restore(snapshot).unwrap();
        assert_eq!(
            restored.get_value::<String>("b").unwrap().unwrap(),
            "theirs"
        );
        assert_eq!(restored.conflicts().count(), 1);
    }

    #[test]
    fn a_batch_for_another_group_or_without_meta_is_refused() {
        let db = SqliteDatabase::open_in_memory().unwrap();
        let mut engine = Engine::new("a", "dev/a").unwrap();
        let effects = engine.set_value("k", &1).unwrap();
        let error = db.storage("b").apply(&effects.batch).unwrap_err();
        assert!(error.to_string().contains("group `a`"), "{error}");
        let mut batch = effects.batch;
        batch.meta = None;
        let error = db.storage("a").apply(&batch).unwrap_err();
        assert!(matches!(error, Error::Corrupt(_)), "{error}");
    }

    #[test]
    fn corrupted_rows_are_clear_errors() {
        let cases: &[(&str, &str)] = &[
            (
                "UPDATE pending SET value = '(unclosed'",
                "not an S-expression",
            ),
            ("UPDATE pending SET base_version = -1", "negative number"),
            ("UPDATE meta SET cursor = 'no cursor'", "cursor"),
            ("UPDATE meta SET next_mutation = -5", "negative number"),
            (
                "INSERT INTO docs VALUES ('g', 'd', '#(1 2', 1, NULL)",
                "not an S-expression",
            ),
            (
                "INSERT INTO conflicts (grp, id, key, server_version, resolution)
                 VALUES ('g', 1, 'k', 0, '(bogus)')",
                "resolution",
            ),
            (
                "INSERT INTO conflicts (grp, id, key, server_version, resolution, cause)
                 VALUES ('g', 1, 'k', 0, 'ServerWins', 'maybe')",
                "cause",
            ),
            ("DELETE FROM meta", "no engine state"),
        ];
        for (sql, expected) in cases {
            let db = SqliteDatabase::open_in_memory().unwrap();
            let mut storage = db.storage("g");
            let mut engine = Engine::new("g", "dev/g").unwrap();
            storage
                .apply(&engine.set_value("k", "v").unwrap().batch)
                .unwrap();
            assert!(storage.load().unwrap().is_some());
            db.lock().execute_batch(sql).unwrap();
            let error = storage.load().unwrap_err();
            assert!(matches!(error, Error::Corrupt(_)), "{sql}: {error}");
            let message = error.to_string();
            assert!(message.contains(expected), "{sql}: {message}");
            assert!(message.contains("`g`"), "{sql}: {message}");
        }
    }
}
