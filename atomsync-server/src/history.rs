//! The high-water mark: how a [`Store`](crate::Store) notices, when it opens,
//! that its database went back in time.
//!
//! A cursor `EPOCH.SEQ` is only meaningful while the database that handed it
//! out keeps every change up to `SEQ`. A database that went back (an older
//! backup restored, a `.db` file copied without its `-wal`, the last commits
//! lost by a power failure under `synchronous = NORMAL`) still carries its old
//! epoch inside the file, so the epoch alone cannot tell. The store therefore
//! keeps a second record *outside* the database file, `FILE.atomsync-hwm`
//! beside it: the epoch, the highest change number it has acknowledged, and
//! whether the last run closed cleanly. On open, the two are compared, and
//! the store mints a new epoch (every client then resets) whenever history
//! may have been lost:
//!
//! - the mark is missing beside a database that already holds data (the file
//!   was copied or restored without it, or written by an atomsync that kept
//!   no mark), or it is unreadable;
//! - the mark names another epoch (another database was put in place);
//! - the mark's change number is above the database's (commits were lost);
//! - the last run did not close cleanly and commits are not synced to disk
//!   one by one (`synchronous` other than `FULL`), so its last commits may be
//!   gone even though the mark was not updated after them.
//!
//! The mark is rewritten after every commit that takes a change number,
//! before the push is answered (a small write at offset 0, not synced: a
//! crashed *process* keeps it in the page cache), and synced when it is
//! created and when the store closes.
//!
//! ## Limits
//!
//! A restore that puts back the mark together with the database (a copy of
//! the whole directory, a VM snapshot) cannot be told from the inside:
//! declare it with `StoreOptions::new_epoch` (`atomsync-server --new-epoch
//! LABEL`, once per label).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The first word of a mark file, with its format version.
const MAGIC: &str = "atomsync-hwm 1";

/// The high-water mark file of an open store.
#[derive(Debug)]
pub(crate) struct HighWater {
    file: File,
    epoch: String,
}

/// What a mark file says.
#[derive(Debug, PartialEq, Eq)]
struct Mark {
    epoch: String,
    seq: u64,
    clean: bool,
}

/// The mark file of the database at `db`.
pub(crate) fn mark_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".atomsync-hwm");
    PathBuf::from(name)
}

/// FNV-1a, 64 bits: a checksum of a mark's fields (torn writes), and the
/// stable hash of a change's value. Not cryptographic.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

fn encode(mark: &Mark) -> String {
    let body = format!(
        "{MAGIC} {} {:020} {}",
        mark.epoch,
        mark.seq,
        u8::from(mark.clean)
    );
    format!("{body} {:016x}\n", fnv1a(body.as_bytes()))
}

fn decode(text: &str) -> Option<Mark> {
    let line = text.strip_suffix('\n')?;
    let (body, check) = line.rsplit_once(' ')?;
    if u64::from_str_radix(check, 16).ok()? != fnv1a(body.as_bytes()) {
        return None;
    }
    let rest = body.strip_prefix(MAGIC)?.strip_prefix(' ')?;
    let mut fields = rest.split(' ');
    let epoch = fields.next()?.to_owned();
    let seq = fields.next()?.parse().ok()?;
    let clean = match fields.next()? {
        "0" => false,
        "1" => true,
        _ => return None,
    };
    fields
        .next()
        .is_none()
        .then_some(Mark { epoch, seq, clean })
}

/// Why the database at `db` (epoch `epoch`, last change `seq`) may have lost
/// history, if it may have. `created`: the database was created by this
/// open. `durable`: commits are synced one by one (`synchronous = FULL`).
pub(crate) fn lost_history(
    db: &Path,
    epoch: &str,
    seq: u64,
    created: bool,
    durable: bool,
) -> Option<String> {
    let path = mark_path(db);
    let mut text = String::new();
    let read = File::open(&path).and_then(|mut file| file.read_to_string(&mut text));
    match read {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return (!created).then(|| {
                format!(
                    "no high-water mark ({}) beside the database: it was copied or restored \
                     without it",
                    path.display()
                )
            });
        }
        Err(e) => return Some(format!("the high-water mark cannot be read: {e}")),
        Ok(_) => {}
    }
    let Some(mark) = decode(&text) else {
        return Some("the high-water mark is damaged".to_owned());
    };
    if mark.epoch != epoch {
        return Some(format!(
            "the high-water mark belongs to epoch {}, the database has epoch {epoch}: \
             another copy of the database was put in place",
            mark.epoch
        ));
    }
    if mark.seq > seq {
        return Some(format!(
            "the database ends at change {seq} but had acknowledged change {}: an older \
             copy was restored or its last commits were lost",
            mark.seq
        ));
    }
    if !mark.clean && !durable {
        return Some(
            "the last run did not close cleanly and commits are not synced one by one \
             (synchronous is not FULL): its last commits may be lost"
                .to_owned(),
        );
    }
    None
}

impl HighWater {
    /// Creates (or replaces) the mark of the database at `db`, as not closed
    /// cleanly, and syncs it.
    pub(crate) fn create(db: &Path, epoch: &str, seq: u64) -> std::io::Result<HighWater> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(mark_path(db))?;
        let mut mark = HighWater {
            file,
            epoch: epoch.to_owned(),
        };
        mark.write(seq, false, true)?;
        Ok(mark)
    }

    fn write(&mut self, seq: u64, clean: bool, sync: bool) -> std::io::Result<()> {
        let text = encode(&Mark {
            epoch: self.epoch.clone(),
            seq,
            clean,
        });
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(text.as_bytes())?;
        self.file.set_len(text.len() as u64)?;
        if sync {
            self.file.sync_all()?;
        }
        Ok(())
    }

    /// Records that change `seq` was committed (before it is acknowledged).
    pub(crate) fn advance(&mut self, seq: u64) -> std::io::Result<()> {
        self.write(seq, false, false)
    }

    /// Records a clean close at change `seq`, synced.
    pub(crate) fn close(&mut self, seq: u64) -> std::io::Result<()> {
        self.write(seq, true, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip_and_damage_is_detected() {
        let mark = Mark {
            epoch: "0123abcd".to_owned(),
            seq: 42,
            clean: true,
        };
        let text = encode(&mark);
        assert_eq!(decode(&text), Some(mark));
        // Any changed byte, a cut, or trailing junk is refused.
        for at in 0..text.len() - 1 {
            let mut bytes = text.clone().into_bytes();
            bytes[at] = if bytes[at] == b'1' { b'2' } else { b'1' };
            if let Ok(changed) = String::from_utf8(bytes) {
                assert_eq!(decode(&changed), None, "byte {at} changed: {changed}");
            }
        }
        assert_eq!(decode(&text[..text.len() / 2]), None);
        assert_eq!(decode(&format!("{text}x")), None);
        assert_eq!(decode(""), None);
    }

    #[test]
    fn the_verdicts() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("data.db");
        // No mark: fine for a new database, not for one that has data.
        assert_eq!(lost_history(&db, "e1", 0, true, true), None);
        assert!(lost_history(&db, "e1", 5, false, true).is_some());
        let mut mark = HighWater::create(&db, "e1", 5).unwrap();
        mark.advance(7).unwrap();
        // Unclean: lost only where commits are not synced one by one.
        assert_eq!(lost_history(&db, "e1", 7, false, true), None);
        assert!(lost_history(&db, "e1", 7, false, false).is_some());
        // Behind the mark, or another epoch.
        assert!(lost_history(&db, "e1", 6, false, true).is_some());
        assert!(lost_history(&db, "e2", 7, false, true).is_some());
        mark.close(7).unwrap();
        assert_eq!(lost_history(&db, "e1", 7, false, false), None);
        assert_eq!(lost_history(&db, "e1", 9, false, false), None);
        std::fs::write(mark_path(&db), "garbage").unwrap();
        assert!(lost_history(&db, "e1", 7, false, true).is_some());
    }
}
