//! `atomsync-server inspect`: what a database holds, as text, read-only.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use atomsync_server::Error;
use atomsync_server::inspect::{Inspector, StoredDocument};
use clap::{Args, Subcommand};

/// A value longer than this is cut in `doc` (unless `--full`).
const DOC_CHARS: usize = 4096;
/// A value longer than this is cut in the lists.
const ROW_CHARS: usize = 60;

/// `inspect`'s arguments.
#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// The SQLite database file (never created: it must exist) or PostgreSQL
    /// URL to inspect [default: atomsync.db].
    #[arg(long, global = true)]
    db: Option<PathBuf>,

    /// What to show [default: summary].
    #[command(subcommand)]
    what: Option<What>,
}

/// What `inspect` shows.
#[derive(Debug, Subcommand)]
enum What {
    /// The epoch, the latest cursor and row counts.
    Summary,
    /// Every group with its documents, tombstones and latest change.
    Groups,
    /// A group's documents by key: version, change number, value (cut).
    Group {
        /// The group.
        name: String,
        /// At most this many documents.
        #[arg(long, default_value_t = 100, value_parser = positive)]
        limit: u64,
    },
    /// One document: its version, change number, time and value.
    Doc {
        /// The group.
        group: String,
        /// The document's key.
        key: String,
        /// Show the whole value, however long.
        #[arg(long)]
        full: bool,
    },
    /// A group's latest changes, newest first (a document's latest change
    /// only: older ones are not kept).
    Changes {
        /// The group.
        group: String,
        /// At most this many changes.
        #[arg(long, default_value_t = 20, value_parser = positive)]
        limit: u64,
    },
    /// The decided mutations kept for retries (idempotency rows), by client.
    Pending {
        /// Only this group's.
        #[arg(long)]
        group: Option<String>,
        /// At most this many rows.
        #[arg(long, default_value_t = 100, value_parser = positive)]
        limit: u64,
    },
}

/// A `--limit`: a whole number from 1.
fn positive(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("`{text}` is not a whole number of at least 1")),
    }
}

/// Runs `inspect`: prints to stdout, errors to stderr.
pub(crate) fn run(args: &InspectArgs) -> ExitCode {
    let db = args
        .db
        .clone()
        .unwrap_or_else(|| PathBuf::from("atomsync.db"));
    let result = Inspector::open(&db)
        .map_err(|e| format!("cannot inspect {}: {}", crate::shown(&db), reason(&e)))
        .and_then(|mut inspector| {
            show(&mut inspector, args.what.as_ref().unwrap_or(&What::Summary)).map_err(|e| {
                e.either(|e| format!("cannot read {}: {}", crate::shown(&db), reason(&e)))
            })
        });
    match result {
        Ok(text) => {
            let mut out = std::io::stdout().lock();
            // A closed pipe (`| head`) is not an error worth a message.
            let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("atomsync-server: {message}");
            ExitCode::FAILURE
        }
    }
}

/// An error's message without the variant's prefix where it says nothing.
/// With the causes, which PostgreSQL's errors keep apart ("error
/// connecting to server: Connection refused").
fn reason(e: &Error) -> String {
    let mut text = match e {
        Error::Config(message) => message.clone(),
        e => e.to_string(),
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A failure: the database's, or a message of its own (nothing found).
enum Failure {
    Db(Error),
    Message(String),
}

impl Failure {
    fn either(self, db: impl FnOnce(Error) -> String) -> String {
        match self {
            Failure::Db(e) => db(e),
            Failure::Message(message) => message,
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Db(e)
    }
}

fn show(inspector: &mut Inspector, what: &What) -> Result<String, Failure> {
    let mut out = String::new();
    match what {
        What::Summary => {
            let s = inspector.summary()?;
            let _ = writeln!(out, "backend        {}", s.backend);
            let _ = writeln!(out, "schema version {}", s.schema_version);
            let _ = writeln!(out, "epoch          {}", s.cursor.epoch);
            let _ = writeln!(out, "latest cursor  {}", s.cursor);
            let _ = writeln!(out, "latest change  {}", s.cursor.seq);
            let _ = writeln!(out, "purge floor    {}", s.cursor.floor);
            let _ = writeln!(out, "groups         {}", s.groups);
            let _ = writeln!(out, "documents      {}", s.documents);
            let _ = writeln!(out, "tombstones     {}", s.tombstones);
            let _ = writeln!(out, "pending        {} remembered mutations", s.mutations);
        }
        What::Groups => {
            let groups = inspector.groups()?;
            if groups.is_empty() {
                out.push_str("no groups: the database holds no documents\n");
            } else {
                let width = groups
                    .iter()
                    .map(|g| g.name.chars().count())
                    .max()
                    .unwrap_or(0);
                let width = width.max("GROUP".len());
                let _ = writeln!(
                    out,
                    "{:width$}  {:>9}  {:>10}  {:>13}",
                    "GROUP", "DOCUMENTS", "TOMBSTONES", "LATEST CHANGE"
                );
                for g in groups {
                    let _ = writeln!(
                        out,
                        "{:width$}  {:>9}  {:>10}  {:>13}",
                        clean(&g.name),
                        g.documents,
                        g.tombstones,
                        g.latest_seq
                    );
                }
            }
        }
        What::Group { name, limit } => {
            // One more than shown tells whether more remain.
            let documents = inspector.documents(name, limit.saturating_add(1))?;
            rows(&mut out, name, &documents, *limit)?;
        }
        What::Changes { group, limit } => {
            let documents = inspector.changes(group, limit.saturating_add(1))?;
            rows(&mut out, group, &documents, *limit)?;
        }
        What::Doc { group, key, full } => {
            let Some(d) = inspector.document(group, key)? else {
                return Err(Failure::Message(format!(
                    "no document `{}` in group `{}`",
                    clean(key),
                    clean(group)
                )));
            };
            let _ = writeln!(out, "group    {}", clean(&d.group));
            let _ = writeln!(out, "key      {}", clean(&d.key));
            let _ = writeln!(out, "version  {}", d.version);
            let _ = writeln!(out, "change   {}", d.seq);
            let _ = writeln!(out, "changed  {}", time(d.changed_at));
            match &d.value {
                None => out.push_str("value    (deleted: a tombstone)\n"),
                Some(value) => {
                    let limit = if *full { usize::MAX } else { DOC_CHARS };
                    let (shown, cut) = cut(value, limit);
                    let _ = writeln!(out, "value    {}", clean(shown));
                    if cut {
                        let _ = writeln!(
                            out,
                            "         … cut at {DOC_CHARS} of {} characters ({} bytes): \
                             --full shows it all",
                            value.chars().count(),
                            value.len()
                        );
                    }
                }
            }
        }
        What::Pending { group, limit } => {
            let mut rows = inspector.mutations(group.as_deref(), limit.saturating_add(1))?;
            let more = rows.len() as u64 > *limit;
            rows.truncate(usize::try_from(*limit).unwrap_or(usize::MAX));
            if rows.is_empty() {
                out.push_str("no remembered mutations\n");
            } else {
                let _ = writeln!(
                    out,
                    "{:<24}  {:>8}  {:<16}  {:<24}  {:>4}  ANSWER",
                    "CLIENT", "MUTATION", "GROUP", "KEY", "BASE"
                );
                for m in &rows {
                    let base = m.base_version.map_or("?".to_owned(), |b| b.to_string());
                    let answer = match m.version {
                        Some(v) => format!("accepted as version {v}"),
                        None => "refused (conflict)".to_owned(),
                    };
                    let _ = writeln!(
                        out,
                        "{:<24}  {:>8}  {:<16}  {:<24}  {:>4}  {answer}",
                        clean(&m.client_id),
                        m.mutation,
                        clean(&m.group),
                        clean(&m.key),
                        base
                    );
                }
                if more {
                    let _ = writeln!(out, "(the first {limit}: --limit shows more)");
                }
            }
        }
    }
    Ok(out)
}

/// The document rows of `group` (`group` and `changes`).
fn rows(
    out: &mut String,
    group: &str,
    documents: &[StoredDocument],
    limit: u64,
) -> Result<(), Failure> {
    if documents.is_empty() {
        return Err(Failure::Message(format!(
            "no documents in group `{}`",
            clean(group)
        )));
    }
    let width = documents
        .iter()
        .map(|d| clean(&d.key).chars().count())
        .max()
        .unwrap_or(0)
        .max("KEY".len());
    let _ = writeln!(
        out,
        "{:>7}  {:width$}  {:>7}  {:<19}  VALUE",
        "CHANGE", "KEY", "VERSION", "CHANGED"
    );
    let more = documents.len() as u64 > limit;
    let shown = usize::try_from(limit).unwrap_or(usize::MAX);
    for d in documents.iter().take(shown) {
        let value = match &d.value {
            None => "(deleted)".to_owned(),
            Some(value) => {
                let (shown, cut) = cut(value, ROW_CHARS);
                if cut {
                    format!("{}… ({} bytes)", clean(shown), value.len())
                } else {
                    clean(shown)
                }
            }
        };
        let _ = writeln!(
            out,
            "{:>7}  {:width$}  {:>7}  {:<19}  {value}",
            d.seq,
            clean(&d.key),
            d.version,
            time(d.changed_at)
        );
    }
    if more {
        let _ = writeln!(out, "(the first {limit}: --limit shows more)");
    }
    Ok(())
}

/// The first `limit` characters of `text`, and whether that cut it.
fn cut(text: &str, limit: usize) -> (&str, bool) {
    match text.char_indices().nth(limit) {
        Some((end, _)) => (&text[..end], true),
        None => (text, false),
    }
}

/// `text` with control characters escaped, so that a row stays a row.
fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Seconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS UTC`; 0 is unknown.
fn time(seconds: u64) -> String {
    if seconds == 0 {
        return "-".to_owned();
    }
    let days = (seconds / 86_400) as i64;
    let rest = seconds % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_dates() {
        assert_eq!(time(0), "-");
        assert_eq!(time(1), "1970-01-01 00:00:01");
        assert_eq!(time(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(time(1_764_640_000), "2025-12-02 01:46:40");
    }

    #[test]
    fn values_are_cut_at_a_character_boundary() {
        assert_eq!(cut("héllo", 2), ("hé", true));
        assert_eq!(cut("hé", 2), ("hé", false));
        assert_eq!(clean("a\nb"), "a\\nb");
    }
}
