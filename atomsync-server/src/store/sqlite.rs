//! The SQLite backend of [`Store`](super::Store): the documents of every
//! group in one SQLite file (or in memory).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use atomsync_core::protocol::{
    self, Change, ChangeResult, Cursor, Document, PullRequest, PullResponse, PushRequest,
    PushResponse,
};
use atomsync_core::sexpr::Raw;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{
    StoreOptions, StoreStats, Synchronous, check_cursor, new_epoch, stored_value, unix_seconds,
    validate_push, value_hash,
};
use crate::history::{self, HighWater};
use crate::{Error, Result};

/// The schema, one migration per entry, applied in order. `PRAGMA
/// user_version` holds how many have been applied. Never edit an entry once
/// released: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: the change counter, the documents and the answered mutations.
    "CREATE TABLE meta (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        epoch TEXT NOT NULL,
        seq INTEGER NOT NULL CHECK (seq >= 0)
    ) STRICT;
    CREATE TABLE documents (
        grp TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT,
        version INTEGER NOT NULL CHECK (version >= 1),
        seq INTEGER NOT NULL,
        PRIMARY KEY (grp, key)
    ) STRICT;
    CREATE INDEX documents_by_seq ON documents (grp, seq);
    CREATE TABLE mutations (
        client_id TEXT NOT NULL,
        mutation INTEGER NOT NULL,
        grp TEXT NOT NULL,
        key TEXT NOT NULL,
        version INTEGER,
        PRIMARY KEY (client_id, mutation)
    ) STRICT, WITHOUT ROWID;",
    // 2: what each mutation was (to tell a retry from a reused number), when
    // each document last changed (tombstone purges), and how far purges went.
    "ALTER TABLE mutations ADD COLUMN base_version INTEGER;
    ALTER TABLE mutations ADD COLUMN value_hash INTEGER;
    ALTER TABLE documents ADD COLUMN changed_at INTEGER NOT NULL DEFAULT 0;
    UPDATE documents SET changed_at = unixepoch();
    CREATE INDEX tombstones_by_age ON documents (changed_at) WHERE value IS NULL;
    ALTER TABLE meta ADD COLUMN purged_seq INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE meta ADD COLUMN purged_version INTEGER NOT NULL DEFAULT 0;",
    // 3: the label of the last restore the operator declared.
    "ALTER TABLE meta ADD COLUMN restore_label TEXT;",
];

/// The documents of every group in one SQLite database: the embedded
/// backend of [`Store`](super::Store), blocking, one connection.
#[derive(Debug)]
pub(crate) struct SqliteStore {
    conn: Connection,
    epoch: String,
    seq: u64,
    /// Pulls from before this change number are reset: a tombstone changed
    /// at it (or before) was purged.
    purged_seq: u64,
    /// The highest version of a purged tombstone: a document created again
    /// gets a version above it.
    purged_version: u64,
    max_pull_bytes: usize,
    tombstone_horizon: Option<Duration>,
    /// The high-water mark beside the database file (none in memory).
    mark: Option<HighWater>,
    /// Why this open gave the database a new epoch, if it did.
    new_epoch_reason: Option<String>,
}

impl SqliteStore {
    /// Opens (or creates) the database at `path` and brings its schema up to
    /// date.
    ///
    /// If history may have been lost since the database was last open (see
    /// [`SqliteStore::new_epoch_reason`]), or [`StoreOptions::new_epoch`] asks for
    /// it, the database gets a new epoch, so that every client pulls from
    /// the beginning.
    pub(crate) fn open(path: impl AsRef<Path>, options: StoreOptions) -> Result<SqliteStore> {
        let path = path.as_ref();
        let conn = Connection::open(path)?;
        SqliteStore::setup(conn, &options, Some(path))
    }

    /// Opens a fresh database in memory, for tests and simulations.
    /// Opens a fresh database in memory with `options`.
    pub(crate) fn open_in_memory_with(options: &StoreOptions) -> Result<SqliteStore> {
        SqliteStore::setup(Connection::open_in_memory()?, options, None)
    }

    fn setup(
        mut conn: Connection,
        options: &StoreOptions,
        path: Option<&Path>,
    ) -> Result<SqliteStore> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // `journal_mode` answers with the mode in force ("memory" in memory).
        let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        conn.pragma_update(None, "synchronous", options.synchronous.pragma())?;
        conn.pragma_update(None, "foreign_keys", true)?;
        // SQLite (built with STAT4) re-plans a statement whenever a value
        // bound to a range (`seq > ?`) changes, unless the plan is pinned:
        // that re-planning was most of a small pull's cost.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
        let created = migrate(&mut conn)?;
        let (mut epoch, seq, purged_seq, purged_version) = read_meta(&conn)?;
        let durable = options.synchronous == Synchronous::Full;
        let lost = match path {
            Some(path) => history::lost_history(path, &epoch, seq, created, durable),
            None => None,
        };
        let declared = match &options.new_epoch {
            Some(label) if !created => {
                let applied: Option<String> =
                    conn.query_row("SELECT restore_label FROM meta WHERE id = 1", [], |r| {
                        r.get(0)
                    })?;
                (applied.as_deref() != Some(label.as_str())).then_some(label)
            }
            _ => None,
        };
        let reason = match (lost, declared) {
            (Some(reason), _) => Some(reason),
            (None, Some(label)) => Some(format!(
                "the operator declared a restore (new_epoch, label {label:?})"
            )),
            (None, None) => None,
        };
        if let Some(label) = &options.new_epoch {
            conn.execute("UPDATE meta SET restore_label = ?1 WHERE id = 1", [label])?;
        }
        if let Some(reason) = &reason {
            let old = epoch;
            epoch = new_epoch()?;
            conn.execute("UPDATE meta SET epoch = ?1 WHERE id = 1", [&epoch])?;
            tracing::warn!(%old, new = %epoch, "history may have been lost ({reason}): new epoch");
        }
        let mark = match path {
            Some(path) => Some(HighWater::create(path, &epoch, seq)?),
            None => None,
        };
        Ok(SqliteStore {
            conn,
            epoch,
            seq,
            purged_seq,
            purged_version,
            max_pull_bytes: options.max_pull_bytes,
            tombstone_horizon: options.tombstone_horizon,
            mark,
            new_epoch_reason: reason,
        })
    }

    /// Why opening gave the database a new epoch (history may have been
    /// lost, or [`StoreOptions::new_epoch`]); `None` if it kept its epoch.
    pub(crate) fn new_epoch_reason(&self) -> Option<&str> {
        self.new_epoch_reason.as_deref()
    }

    /// Row counts: documents, tombstones, remembered mutations.
    pub(crate) fn stats(&self) -> Result<StoreStats> {
        let count = |sql: &str| -> Result<u64> {
            Ok(self.conn.query_row(sql, [], |r| r.get::<_, i64>(0))? as u64)
        };
        Ok(StoreStats {
            documents: count("SELECT count(*) FROM documents WHERE value IS NOT NULL")?,
            tombstones: count("SELECT count(*) FROM documents WHERE value IS NULL")?,
            mutations: count("SELECT count(*) FROM mutations")?,
        })
    }

    /// Deletes the tombstones last changed before `cutoff`, and from then on
    /// resets pulls whose cursor is older than the newest purged one (they
    /// could miss the deletion). A purge takes a change number (so the
    /// high-water mark moves, and a copy from before it counts as older).
    /// Returns how many were deleted.
    pub(crate) fn purge_tombstones(&mut self, cutoff: SystemTime) -> Result<u64> {
        let cutoff = unix_seconds(cutoff);
        let tx = Tx::begin(&self.conn, "BEGIN IMMEDIATE")?;
        let (count, max_seq, max_version) = tx.query_row(
            "SELECT count(*), max(seq), max(version) FROM documents
             WHERE value IS NULL AND changed_at < ?1",
            [cutoff],
            |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, Option<i64>>(1)?.map_or(0, |v| v as u64),
                    r.get::<_, Option<i64>>(2)?.map_or(0, |v| v as u64),
                ))
            },
        )?;
        if count == 0 {
            return Ok(0);
        }
        tx.execute(
            "DELETE FROM documents WHERE value IS NULL AND changed_at < ?1",
            [cutoff],
        )?;
        let purged_seq = self.purged_seq.max(max_seq);
        let purged_version = self.purged_version.max(max_version);
        let seq = read_seq(&tx)? + 1;
        tx.execute(
            "UPDATE meta SET purged_seq = ?1, purged_version = ?2, seq = ?3 WHERE id = 1",
            params![purged_seq as i64, purged_version as i64, seq as i64],
        )?;
        tx.commit()?;
        self.purged_seq = purged_seq;
        self.purged_version = purged_version;
        self.seq = seq;
        self.note_commit(seq)?;
        tracing::info!(count, purged_seq, "tombstones purged");
        Ok(count)
    }

    /// [`SqliteStore::purge_tombstones`] of the tombstones older than
    /// [`StoreOptions::tombstone_horizon`] (none without a horizon).
    pub(crate) fn purge_expired_tombstones(&mut self) -> Result<u64> {
        match self.tombstone_horizon {
            Some(horizon) => {
                let cutoff = SystemTime::now().checked_sub(horizon).unwrap_or(UNIX_EPOCH);
                self.purge_tombstones(cutoff)
            }
            None => Ok(0),
        }
    }

    /// The identity of this database, created with it.
    pub(crate) fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The cursor after the last accepted change.
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
    /// this database's last change.
    pub(crate) fn pull(&mut self, request: &PullRequest) -> Result<PullResponse> {
        protocol::validate_group(&request.group).map_err(Error::BadRequest)?;
        let limit = match request.limit {
            None => protocol::DEFAULT_PULL_LIMIT,
            Some(0) => return Err(Error::BadRequest("limit must be at least 1".to_owned())),
            Some(n) => n.min(protocol::MAX_PULL_LIMIT),
        } as usize;
        let tx = Tx::begin(&self.conn, "BEGIN")?;
        let latest = read_seq(&tx)?;
        let since = match &request.since {
            None => 0,
            Some(cursor) => check_cursor(cursor, &self.epoch, latest, self.purged_seq)?,
        };
        let mut documents = Vec::with_capacity(limit.min(64));
        let mut last_seq = since;
        let mut more = false;
        {
            let mut stmt = tx.prepare_cached(
                "SELECT key, version, value, seq FROM documents
                 WHERE grp = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )?;
            let mut rows = stmt.query(params![request.group, since as i64, limit as i64 + 1])?;
            let mut bytes = 0;
            while let Some(row) = rows.next()? {
                if documents.len() == limit || bytes >= self.max_pull_bytes {
                    more = true;
                    break;
                }
                let document = Document {
                    key: row.get(0)?,
                    version: row.get::<_, i64>(1)? as u64,
                    value: stored_value(row.get(2)?),
                };
                bytes +=
                    document.key.len() + document.value.as_ref().map_or(0, |v| v.as_str().len());
                documents.push(document);
                last_seq = row.get::<_, i64>(3)? as u64;
            }
        }
        tx.commit()?;
        self.seq = latest;
        let seq = if more { last_seq } else { latest };
        Ok(PullResponse {
            documents,
            cursor: self.cursor_at(seq),
            more,
        })
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
    /// # Errors
    ///
    /// [`Error::BadRequest`] for an invalid group, client id, key, version,
    /// mutation number or batch size; [`Error::MutationReused`] for a
    /// mutation number decided before for a change with other content.
    /// Nothing is applied then.
    pub(crate) fn push(&mut self, request: &PushRequest) -> Result<PushResponse> {
        validate_push(request)?;
        if let Some(epoch) = &request.epoch
            && *epoch != self.epoch
        {
            return Err(Error::CursorReset(
                "the changes are based on another database's versions: pull again from the \
                 beginning, then push"
                    .to_owned(),
            ));
        }
        let now = unix_seconds(SystemTime::now());
        let purged_version = self.purged_version;
        let tx = Tx::begin(&self.conn, "BEGIN IMMEDIATE")?;
        let start = read_seq(&tx)?;
        let mut seq = start;
        let mut results = Vec::with_capacity(request.changes.len());
        {
            // Recording the answer first tells, in the same statement, whether
            // this change was decided before; the document is then written
            // only if its version is still `base_version`, and the answer is
            // corrected otherwise.
            let mut record = tx.prepare_cached(
                "INSERT INTO mutations (client_id, mutation, grp, key, version, base_version, \
                 value_hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
            )?;
            let mut correct = tx.prepare_cached(
                "UPDATE mutations SET version = ?3 WHERE client_id = ?1 AND mutation = ?2",
            )?;
            let mut answered = tx.prepare_cached(
                "SELECT grp, key, version, base_version, value_hash FROM mutations
                 WHERE client_id = ?1 AND mutation = ?2",
            )?;
            let mut create = tx.prepare_cached(
                "INSERT INTO documents (grp, key, value, version, seq, changed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (grp, key) DO NOTHING",
            )?;
            let mut update = tx.prepare_cached(
                "UPDATE documents SET value = ?3, version = ?4, seq = ?5, changed_at = ?7
                 WHERE grp = ?1 AND key = ?2 AND version = ?6",
            )?;
            let mut find_document = tx.prepare_cached(
                "SELECT version, value FROM documents WHERE grp = ?1 AND key = ?2",
            )?;
            // An absent key after a purge shows as a tombstone at the purge
            // version: what a change must be based on to write it again.
            let mut current = |key: &str| -> Result<Option<Document>> {
                let found = find_document
                    .query_row(params![request.group, key], |row| {
                        Ok(Document {
                            key: key.to_owned(),
                            version: row.get::<_, i64>(0)? as u64,
                            value: stored_value(row.get(1)?),
                        })
                    })
                    .optional()?;
                Ok(found.or_else(|| {
                    (purged_version > 0).then(|| Document {
                        key: key.to_owned(),
                        version: purged_version,
                        value: None,
                    })
                }))
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
                let recorded = record.execute(params![
                    request.client_id,
                    mutation as i64,
                    request.group,
                    key,
                    proposed.map(|v| v as i64),
                    base_version as i64,
                    hash,
                ])?;
                if recorded == 0 {
                    let (grp, answered_key, version, base, answered_hash) =
                        answered.query_row(params![request.client_id, mutation as i64], |row| {
                            Ok((
                                row.get::<_, String>(0)?,
                                row.get::<_, String>(1)?,
                                row.get::<_, Option<i64>>(2)?,
                                row.get::<_, Option<i64>>(3)?,
                                row.get::<_, Option<i64>>(4)?,
                            ))
                        })?;
                    // Rows from before schema 2 know the group and key only.
                    let same = grp == request.group
                        && answered_key == *key
                        && base.is_none_or(|b| b == base_version as i64)
                        && answered_hash.is_none_or(|h| h == hash);
                    if !same {
                        return Err(Error::MutationReused(format!(
                            "mutation {mutation} of client `{}` was already decided for another \
                             change: push under a new client id",
                            request.client_id
                        )));
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
                            current: current(key)?,
                        },
                    });
                    continue;
                }
                let value = value.as_ref().map(Raw::as_str);
                let next = seq as i64 + 1;
                let mut accepted = None;
                if let Some(version) = proposed
                    && base_version > 0
                    && update.execute(params![
                        request.group,
                        key,
                        value,
                        version as i64,
                        next,
                        base_version as i64,
                        now,
                    ])? == 1
                {
                    accepted = Some(version);
                }
                // A key never written (base 0), or whose tombstone was
                // purged (based on that tombstone, which the conflict below
                // shows at the purge version). Any other base on an absent
                // key conflicts: it was deleted (or never written) since.
                let fresh = base_version.max(purged_version);
                if accepted.is_none()
                    && (base_version == 0 || base_version == purged_version)
                    && fresh < protocol::MAX_VERSION
                    && create.execute(params![
                        request.group,
                        key,
                        value,
                        fresh as i64 + 1,
                        next,
                        now
                    ])? == 1
                {
                    accepted = Some(fresh + 1);
                }
                if accepted != proposed {
                    correct.execute(params![
                        request.client_id,
                        mutation as i64,
                        accepted.map(|v| v as i64)
                    ])?;
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
                        current: current(key)?,
                    },
                });
            }
            if let Some(low_water) = request.low_water {
                tx.prepare_cached("DELETE FROM mutations WHERE client_id = ?1 AND mutation < ?2")?
                    .execute(params![request.client_id, low_water as i64])?;
            }
        }
        if seq != start {
            tx.execute("UPDATE meta SET seq = ?1 WHERE id = 1", [seq as i64])?;
        }
        tx.commit()?;
        self.seq = seq;
        if seq != start {
            self.note_commit(seq)?;
        }
        Ok(PushResponse {
            results,
            cursor: self.cursor(),
        })
    }

    /// Records change `seq` in the high-water mark before it is acknowledged.
    fn note_commit(&mut self, seq: u64) -> Result<()> {
        if let Some(mark) = &mut self.mark {
            mark.advance(seq)?;
        }
        Ok(())
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        if let Some(mark) = &mut self.mark
            && let Err(e) = mark.close(self.seq)
        {
            tracing::error!(error = %e, "the high-water mark could not be closed");
        }
    }
}

/// A transaction run with cached `BEGIN`, `COMMIT` and `ROLLBACK` statements
/// (rusqlite's parses them anew each time, a good part of a small pull's
/// cost). Rolled back when dropped uncommitted.
struct Tx<'a> {
    conn: &'a Connection,
    open: bool,
}

impl<'a> Tx<'a> {
    /// `BEGIN` for reads, `BEGIN IMMEDIATE` for writes (takes the write lock
    /// at once, so the transaction never has to upgrade).
    fn begin(conn: &'a Connection, begin: &'static str) -> Result<Self> {
        conn.prepare_cached(begin)?.execute([])?;
        Ok(Tx { conn, open: true })
    }

    /// Commits; on failure the transaction is rolled back as `self` drops.
    fn commit(mut self) -> Result<()> {
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        self.open = false;
        Ok(())
    }
}

impl std::ops::Deref for Tx<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if self.open {
            let rolled_back = self
                .conn
                .prepare_cached("ROLLBACK")
                .and_then(|mut rollback| rollback.execute([]));
            if let Err(e) = rolled_back {
                tracing::error!(error = %e, "rollback failed");
            }
        }
    }
}

/// Brings the schema up to date and creates the meta row (with a fresh
/// epoch) in one transaction. Returns whether the database was new.
fn migrate(conn: &mut Connection) -> Result<bool> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let applied: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let applied = usize::try_from(applied).unwrap_or(usize::MAX);
    if applied > MIGRATIONS.len() {
        return Err(Error::Config(format!(
            "the database has schema version {applied}, newer than this server's {}",
            MIGRATIONS.len()
        )));
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(applied) {
        tx.execute_batch(migration)?;
        tx.pragma_update(None, "user_version", index as i64 + 1)?;
    }
    let created = tx.execute(
        "INSERT OR IGNORE INTO meta (id, epoch, seq) VALUES (1, ?1, 0)",
        [new_epoch()?],
    )? == 1;
    tx.commit()?;
    Ok(created)
}

/// The epoch, change counter, and purge floors (change number, version).
fn read_meta(conn: &Connection) -> Result<(String, u64, u64, u64)> {
    let meta = conn
        .prepare_cached("SELECT epoch, seq, purged_seq, purged_version FROM meta WHERE id = 1")?
        .query_row([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)? as u64,
                row.get::<_, i64>(2)? as u64,
                row.get::<_, i64>(3)? as u64,
            ))
        })?;
    Ok(meta)
}

fn read_seq(conn: &Connection) -> Result<u64> {
    let seq = conn
        .prepare_cached("SELECT seq FROM meta WHERE id = 1")?
        .query_row([], |row| row.get::<_, i64>(0))?;
    Ok(seq as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Raw {
        Raw::from_text(text).unwrap()
    }

    fn change(mutation: u64, key: &str, base_version: u64, value: Option<&str>) -> Change {
        Change {
            mutation,
            key: key.to_owned(),
            base_version,
            value: value.map(raw),
        }
    }

    fn push(store: &mut SqliteStore, client: &str, changes: Vec<Change>) -> Result<PushResponse> {
        store.push(&PushRequest {
            group: "g".to_owned(),
            client_id: client.to_owned(),
            changes,
            low_water: None,
            epoch: None,
        })
    }

    fn pull(
        store: &mut SqliteStore,
        since: Option<Cursor>,
        limit: Option<u32>,
    ) -> Result<PullResponse> {
        store.pull(&PullRequest {
            group: "g".to_owned(),
            since,
            limit,
        })
    }

    #[test]
    fn migrations_apply_to_an_empty_database_and_are_idempotent() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        let meta = read_meta(&conn).unwrap();
        let (epoch, seq, _, _) = meta.clone();
        // Running them again changes nothing, the epoch included.
        assert!(!migrate(&mut conn).unwrap(), "not new the second time");
        assert_eq!(read_meta(&conn).unwrap(), meta);
        assert_eq!(seq, 0);
        assert_eq!(epoch.len(), 32);
        // The schema is consistent.
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        conn.execute_batch("PRAGMA foreign_key_check").unwrap();
    }

    #[test]
    fn each_migration_applies_in_its_own_step() {
        let conn = Connection::open_in_memory().unwrap();
        for (index, migration) in MIGRATIONS.iter().enumerate() {
            conn.execute_batch(migration)
                .unwrap_or_else(|e| panic!("migration {} fails: {e}", index + 1));
            assert!(
                !migration.to_ascii_uppercase().contains("PRAGMA"),
                "PRAGMAs belong outside migrations"
            );
        }
    }

    #[test]
    fn a_database_newer_than_the_server_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        drop(SqliteStore::open(&path, StoreOptions::default()).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", MIGRATIONS.len() as i64 + 1)
            .unwrap();
        drop(conn);
        let err = SqliteStore::open(&path, StoreOptions::default()).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err}");
    }

    #[test]
    fn pragmas_are_set() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(
            dir.path().join("db"),
            StoreOptions::default().synchronous(Synchronous::Normal),
        )
        .unwrap();
        let mode: String = store
            .conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = store
            .conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 1);
        let fk: i64 = store
            .conn
            .pragma_query_value(None, "foreign_keys", |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1);
    }

    #[test]
    fn epoch_and_data_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut store = SqliteStore::open(&path, StoreOptions::default()).unwrap();
        push(&mut store, "c", vec![change(1, "k", 0, Some("1"))]).unwrap();
        let cursor = store.cursor();
        drop(store);
        let mut store = SqliteStore::open(&path, StoreOptions::default()).unwrap();
        assert_eq!(store.cursor(), cursor);
        let page = pull(&mut store, None, None).unwrap();
        assert_eq!(page.documents.len(), 1);
        // A new database has another epoch.
        let other = SqliteStore::open(dir.path().join("other"), StoreOptions::default()).unwrap();
        assert_ne!(other.epoch(), store.epoch());
    }

    #[test]
    fn the_purge_floor_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut store = SqliteStore::open(&path, StoreOptions::default()).unwrap();
        push(&mut store, "c", vec![change(1, "a", 0, Some("1"))]).unwrap();
        push(&mut store, "c", vec![change(2, "a", 1, None)]).unwrap();
        store
            .purge_tombstones(SystemTime::now() + Duration::from_secs(60))
            .unwrap();
        let cursor = store.cursor();
        drop(store);
        let store = SqliteStore::open(&path, StoreOptions::default()).unwrap();
        assert_eq!(store.cursor(), cursor);
        assert_eq!(store.new_epoch_reason(), None);
    }

    /// The database file put back to an older copy (a restored backup, lost
    /// last commits, a copy without its WAL): the high-water mark beside it
    /// tells, and the store takes a new epoch.
    #[test]
    fn a_database_that_went_back_gets_a_new_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let copy = dir.path().join("copy");
        let mut store = SqliteStore::open(&path, StoreOptions::default()).unwrap();
        assert_eq!(store.new_epoch_reason(), None, "a new database");
        push(&mut store, "c", vec![change(1, "a", 0, Some("1"))]).unwrap();
        let epoch = store.epoch().to_owned();
        drop(store);
        std::fs::copy(&path, &copy).unwrap();
        // Reopened as it was: same epoch.
        let mut store = SqliteStore::open(&path, StoreOptions::default()).unwrap();
        assert_eq!(store.epoch(), epoch);
        push(&mut store, "c", vec![change(2, "b", 0, Some("1"))]).unwrap();
        drop(store);
        // The older copy put back: a new epoch, the data as in the copy.
        std::fs::copy(&copy, &path).unwrap();
        let mut store = SqliteStore::open(&path, StoreOptions::default()).unwrap();
        assert_ne!(store.epoch(), epoch);
        assert!(
            store.new_epoch_reason().unwrap().contains("change 2"),
            "{:?}",
            store.new_epoch_reason()
        );
        assert_eq!(pull(&mut store, None, None).unwrap().documents.len(), 1);
        let second = store.epoch().to_owned();
        drop(store);
        // The database copied elsewhere without its mark: a new epoch too.
        let moved = dir.path().join("moved");
        std::fs::copy(&path, &moved).unwrap();
        let store = SqliteStore::open(&moved, StoreOptions::default()).unwrap();
        assert_ne!(store.epoch(), second);
        drop(store);
        // Declared restores (once per label) are tested on both backends in
        // tests/store.rs.
    }
}
