//! [`Inspector`]: a read-only look into a store's database, for operators
//! (the `atomsync-server inspect` subcommand) and tests.
//!
//! It never writes: a SQLite file is opened read-only (a missing file is an
//! error, never created) and a PostgreSQL session is read-only; no migration
//! runs and the epoch is never changed, unlike [`Store::open`](crate::Store::open).
//!
//! ## Usage
//!
//! ```no_run
//! use atomsync_server::inspect::Inspector;
//!
//! let mut db = Inspector::open("my-data.db")?;
//! for group in db.groups()? {
//!     println!("{}: {} documents", group.name, group.documents);
//! }
//! # Ok::<(), atomsync_server::Error>(())
//! ```

use std::path::Path;

use atomsync_core::protocol::Cursor;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use crate::store::is_postgres_url;
use crate::{Error, Result};

/// The database as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Summary {
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    /// How many of the backend's migrations were applied.
    pub schema_version: u64,
    /// The latest cursor: the database's epoch and last change number (with
    /// the purge floor).
    pub cursor: Cursor,
    /// How many groups have documents (or tombstones).
    pub groups: u64,
    /// Documents with a value.
    pub documents: u64,
    /// Deleted documents still kept (tombstones).
    pub tombstones: u64,
    /// Decided mutations remembered for retries (idempotency rows).
    pub mutations: u64,
}

/// One group's counts.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupSummary {
    /// The group's name.
    pub name: String,
    /// Documents with a value.
    pub documents: u64,
    /// Tombstones.
    pub tombstones: u64,
    /// The change number of the group's latest change.
    pub latest_seq: u64,
}

/// One stored document (or tombstone).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoredDocument {
    /// The document's group.
    pub group: String,
    /// The document's key.
    pub key: String,
    /// Its version.
    pub version: u64,
    /// The change number of its latest change.
    pub seq: u64,
    /// When it last changed, in seconds since the Unix epoch (0: unknown).
    pub changed_at: u64,
    /// Its canonical S-expression text; `None` for a tombstone.
    pub value: Option<String>,
}

/// A remembered mutation: how the server answered a client's change, kept
/// so that a retry gets the same answer, until the client's low-water mark
/// passes it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RememberedMutation {
    /// The client that pushed it.
    pub client_id: String,
    /// The client's mutation number.
    pub mutation: u64,
    /// The group it changed.
    pub group: String,
    /// The key it changed.
    pub key: String,
    /// The version it was based on (`None` in rows from before it was kept).
    pub base_version: Option<u64>,
    /// The version it was accepted as; `None` if it was refused (conflict).
    pub version: Option<u64>,
}

/// A read-only connection to a store's database (see the [module](self)).
///
/// Blocking: from async code, call it from `spawn_blocking`.
#[derive(Debug)]
pub struct Inspector {
    db: Db,
}

enum Db {
    Sqlite { conn: Connection, schema: u64 },
    Postgres(Box<postgres::Client>),
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Db::Sqlite { .. } => "Sqlite",
            Db::Postgres(_) => "Postgres",
        })
    }
}

/// The `changed_at` column of SQLite schemas before 2 did not exist.
fn changed_at(schema: u64) -> &'static str {
    if schema >= 2 { "changed_at" } else { "0" }
}

fn u(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn i(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Inspector {
    /// Opens the database at `location` (a SQLite file or a PostgreSQL URL,
    /// as for [`Store::open`](crate::Store::open)) read-only.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a missing file or a database that is not an
    /// atomsync store (or one newer than this server); [`Error::Database`]
    /// or [`Error::Postgres`] when it cannot be read.
    pub fn open(location: impl AsRef<Path>) -> Result<Inspector> {
        let location = location.as_ref();
        match location.to_str() {
            Some(url) if is_postgres_url(url) => Inspector::open_postgres(url),
            _ => Inspector::open_sqlite(location),
        }
    }

    fn open_sqlite(path: &Path) -> Result<Inspector> {
        if !path.exists() {
            return Err(Error::Config(format!(
                "no database at {}: the file is missing",
                path.display()
            )));
        }
        if !path.is_file() {
            return Err(Error::Config(format!(
                "{} is not a database file",
                path.display()
            )));
        }
        // Without a write-ahead log beside it, no connection has the
        // database open (an open WAL database always has one): it is read
        // as immutable, which creates no `-wal` and `-shm` files either.
        // With one, a server may be writing: read through the log.
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let quiet = !Path::new(&wal).exists();
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(sqlite_uri(path, quiet)?, flags)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "query_only", true)?;
        let not_atomsync = || {
            Error::Config(format!(
                "{} is not an atomsync database (no atomsync tables)",
                path.display()
            ))
        };
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' \
                 AND name IN ('meta', 'documents', 'mutations')",
                [],
                |r| r.get(0),
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::NotADatabase =>
                {
                    not_atomsync()
                }
                e => e.into(),
            })?;
        if tables != 3 {
            return Err(not_atomsync());
        }
        let schema: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        Ok(Inspector {
            db: Db::Sqlite {
                conn,
                schema: u(schema),
            },
        })
    }

    fn open_postgres(url: &str) -> Result<Inspector> {
        let config = crate::store::parse_url(url)?;
        crate::store::off_runtime(move || {
            let mut client = config.connect(postgres::NoTls)?;
            client.batch_execute("SET default_transaction_read_only = on")?;
            let found: Option<String> = client
                .query_one("SELECT to_regclass('atomsync_meta')::text", &[])?
                .try_get(0)?;
            if found.is_none() {
                return Err(Error::Config(
                    "the PostgreSQL database holds no atomsync tables".to_owned(),
                ));
            }
            Ok(Inspector {
                db: Db::Postgres(Box::new(client)),
            })
        })
    }

    /// The epoch, latest cursor and row counts.
    ///
    /// # Errors
    ///
    /// When the database cannot be read.
    pub fn summary(&mut self) -> Result<Summary> {
        match &mut self.db {
            Db::Sqlite { conn, schema } => {
                let floor = if *schema >= 2 { "purged_seq" } else { "0" };
                let (epoch, seq, purged) = conn.query_row(
                    &format!("SELECT epoch, seq, {floor} FROM meta WHERE id = 1"),
                    [],
                    |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?)),
                )?;
                let count =
                    |sql: &str| -> Result<u64> { Ok(u(conn.query_row(sql, [], |r| r.get(0))?)) };
                Ok(Summary {
                    backend: "sqlite",
                    schema_version: *schema,
                    cursor: Cursor {
                        epoch,
                        seq: u(seq),
                        floor: u(purged),
                    },
                    groups: count("SELECT count(DISTINCT grp) FROM documents")?,
                    documents: count("SELECT count(*) FROM documents WHERE value IS NOT NULL")?,
                    tombstones: count("SELECT count(*) FROM documents WHERE value IS NULL")?,
                    mutations: count("SELECT count(*) FROM mutations")?,
                })
            }
            Db::Postgres(client) => crate::store::off_runtime(move || {
                let schema: i32 = client
                    .query_opt("SELECT version FROM atomsync_schema", &[])?
                    .map(|r| r.try_get(0))
                    .transpose()?
                    .unwrap_or(0);
                let meta = client
                    .query_opt(
                        "SELECT epoch, seq, purged_seq FROM atomsync_meta WHERE id = 1",
                        &[],
                    )?
                    .ok_or_else(|| Error::Config("the database has no meta row".to_owned()))?;
                let counts = client.query_one(
                    "SELECT (SELECT count(DISTINCT grp) FROM atomsync_documents), \
                     (SELECT count(*) FROM atomsync_documents WHERE value IS NOT NULL), \
                     (SELECT count(*) FROM atomsync_documents WHERE value IS NULL), \
                     (SELECT count(*) FROM atomsync_mutations)",
                    &[],
                )?;
                Ok(Summary {
                    backend: "postgres",
                    schema_version: u64::try_from(schema).unwrap_or(0),
                    cursor: Cursor {
                        epoch: meta.try_get(0)?,
                        seq: u(meta.try_get(1)?),
                        floor: u(meta.try_get(2)?),
                    },
                    groups: u(counts.try_get(0)?),
                    documents: u(counts.try_get(1)?),
                    tombstones: u(counts.try_get(2)?),
                    mutations: u(counts.try_get(3)?),
                })
            }),
        }
    }

    /// Every group, by name, with its counts.
    ///
    /// # Errors
    ///
    /// When the database cannot be read.
    pub fn groups(&mut self) -> Result<Vec<GroupSummary>> {
        let row = |name: String, documents: i64, tombstones: i64, latest: i64| GroupSummary {
            name,
            documents: u(documents),
            tombstones: u(tombstones),
            latest_seq: u(latest),
        };
        match &mut self.db {
            Db::Sqlite { conn, .. } => {
                let mut statement = conn.prepare(
                    "SELECT grp, count(value), count(*) - count(value), max(seq) \
                     FROM documents GROUP BY grp ORDER BY grp",
                )?;
                let rows = statement
                    .query_map([], |r| Ok(row(r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(rows)
            }
            Db::Postgres(client) => crate::store::off_runtime(move || {
                Ok(client
                    .query(
                        "SELECT grp, count(value), count(*) - count(value), max(seq) \
                         FROM atomsync_documents GROUP BY grp ORDER BY grp",
                        &[],
                    )?
                    .iter()
                    .map(|r| {
                        Ok(row(
                            r.try_get(0)?,
                            r.try_get(1)?,
                            r.try_get(2)?,
                            r.try_get(3)?,
                        ))
                    })
                    .collect::<std::result::Result<Vec<_>, postgres::Error>>()?)
            }),
        }
    }

    /// The documents of `group` (tombstones included), by key, at most
    /// `limit`.
    ///
    /// # Errors
    ///
    /// When the database cannot be read.
    pub fn documents(&mut self, group: &str, limit: u64) -> Result<Vec<StoredDocument>> {
        self.select(group, "ORDER BY key", limit)
    }

    /// The latest changes to `group`, newest first, at most `limit`. Only a
    /// document's latest change is kept: an older change to a document
    /// changed since is not listed.
    ///
    /// # Errors
    ///
    /// When the database cannot be read.
    pub fn changes(&mut self, group: &str, limit: u64) -> Result<Vec<StoredDocument>> {
        self.select(group, "ORDER BY seq DESC", limit)
    }

    fn select(&mut self, group: &str, order: &str, limit: u64) -> Result<Vec<StoredDocument>> {
        match &mut self.db {
            Db::Sqlite { conn, schema } => {
                let sql = format!(
                    "SELECT grp, key, version, seq, {}, value FROM documents \
                     WHERE grp = ?1 {order} LIMIT ?2",
                    changed_at(*schema)
                );
                let mut statement = conn.prepare(&sql)?;
                let rows = statement
                    .query_map(params![group, i(limit)], sqlite_document)?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(rows)
            }
            Db::Postgres(client) => crate::store::off_runtime(move || {
                let sql = format!(
                    "SELECT grp, key, version, seq, changed_at, value FROM atomsync_documents \
                     WHERE grp = $1 {order} LIMIT $2"
                );
                let rows = client
                    .query(&sql, &[&group, &i(limit)])?
                    .iter()
                    .map(pg_document)
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                Ok(rows)
            }),
        }
    }

    /// The document (or tombstone) at `key` in `group`, if there is one.
    ///
    /// # Errors
    ///
    /// When the database cannot be read.
    pub fn document(&mut self, group: &str, key: &str) -> Result<Option<StoredDocument>> {
        match &mut self.db {
            Db::Sqlite { conn, schema } => {
                let sql = format!(
                    "SELECT grp, key, version, seq, {}, value FROM documents \
                     WHERE grp = ?1 AND key = ?2",
                    changed_at(*schema)
                );
                Ok(conn
                    .query_row(&sql, params![group, key], sqlite_document)
                    .optional()?)
            }
            Db::Postgres(client) => crate::store::off_runtime(move || {
                Ok(client
                    .query_opt(
                        "SELECT grp, key, version, seq, changed_at, value \
                         FROM atomsync_documents WHERE grp = $1 AND key = $2",
                        &[&group, &key],
                    )?
                    .as_ref()
                    .map(pg_document)
                    .transpose()?)
            }),
        }
    }

    /// The remembered mutations (of `group` only, if given), by client and
    /// mutation number, at most `limit`.
    ///
    /// # Errors
    ///
    /// When the database cannot be read.
    pub fn mutations(
        &mut self,
        group: Option<&str>,
        limit: u64,
    ) -> Result<Vec<RememberedMutation>> {
        let row = |client_id, mutation, group, key, base: Option<i64>, version: Option<i64>| {
            RememberedMutation {
                client_id,
                mutation: u(mutation),
                group,
                key,
                base_version: base.map(u),
                version: version.map(u),
            }
        };
        match &mut self.db {
            Db::Sqlite { conn, schema } => {
                let base = if *schema >= 2 { "base_version" } else { "NULL" };
                let sql = format!(
                    "SELECT client_id, mutation, grp, key, {base}, version FROM mutations \
                     WHERE ?1 IS NULL OR grp = ?1 ORDER BY client_id, mutation LIMIT ?2"
                );
                let mut statement = conn.prepare(&sql)?;
                let rows = statement
                    .query_map(params![group, i(limit)], |r| {
                        Ok(row(
                            r.get(0)?,
                            r.get(1)?,
                            r.get(2)?,
                            r.get(3)?,
                            r.get(4)?,
                            r.get(5)?,
                        ))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(rows)
            }
            Db::Postgres(client) => crate::store::off_runtime(move || {
                Ok(client
                    .query(
                        "SELECT client_id, mutation, grp, key, base_version, version \
                         FROM atomsync_mutations WHERE $1::text IS NULL OR grp = $1 \
                         ORDER BY client_id, mutation LIMIT $2",
                        &[&group, &i(limit)],
                    )?
                    .iter()
                    .map(|r| {
                        Ok(row(
                            r.try_get(0)?,
                            r.try_get(1)?,
                            r.try_get(2)?,
                            r.try_get(3)?,
                            r.try_get(4)?,
                            r.try_get(5)?,
                        ))
                    })
                    .collect::<std::result::Result<Vec<_>, postgres::Error>>()?)
            }),
        }
    }
}

/// The `file:` URI of `path`, read-only (and immutable if `immutable`).
fn sqlite_uri(path: &Path, immutable: bool) -> Result<String> {
    let absolute = std::path::absolute(path)?;
    let text = absolute
        .to_str()
        .ok_or_else(|| Error::Config(format!("{} is not a UTF-8 path", path.display())))?;
    let mut uri = String::from("file:");
    for c in text.chars() {
        match c {
            '%' | '?' | '#' => uri.push_str(&format!("%{:02X}", u32::from(c))),
            c => uri.push(c),
        }
    }
    uri.push_str("?mode=ro");
    if immutable {
        uri.push_str("&immutable=1");
    }
    Ok(uri)
}

fn sqlite_document(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredDocument> {
    Ok(StoredDocument {
        group: r.get(0)?,
        key: r.get(1)?,
        version: u(r.get(2)?),
        seq: u(r.get(3)?),
        changed_at: u(r.get(4)?),
        value: r.get(5)?,
    })
}

fn pg_document(r: &postgres::Row) -> std::result::Result<StoredDocument, postgres::Error> {
    Ok(StoredDocument {
        group: r.try_get(0)?,
        key: r.try_get(1)?,
        version: u(r.try_get(2)?),
        seq: u(r.try_get(3)?),
        changed_at: u(r.try_get(4)?),
        value: r.try_get(5)?,
    })
}
