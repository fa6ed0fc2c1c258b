//! The messages of the sync protocol, shared by clients and the server.
//!
//! Every message travels as S-expressions ([`crate::sexpr`]) with content type
//! [`CONTENT_TYPE`]. Document values are [`Raw`] datums: the server stores and
//! forwards them without knowing the application's types. See
//! `docs/protocol.md` for the HTTP routes and exact examples.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::sexpr::Raw;

/// The media type of S-expression bodies.
pub const CONTENT_TYPE: &str = "application/x-atomsync-sexpr";

/// Longest accepted group name, in bytes.
pub const MAX_GROUP_LEN: usize = 128;
/// Longest accepted document key, in bytes.
pub const MAX_KEY_LEN: usize = 512;
/// Longest accepted client id, in bytes.
pub const MAX_CLIENT_ID_LEN: usize = 128;
/// Pull page size when the request names none.
pub const DEFAULT_PULL_LIMIT: u32 = 500;
/// Largest pull page a server hands out.
pub const MAX_PULL_LIMIT: u32 = 5000;
/// Most changes in one push.
pub const MAX_PUSH_CHANGES: usize = 1000;
/// Largest version or change number accepted on the wire (fits SQLite's i64).
pub const MAX_VERSION: u64 = i64::MAX as u64;

/// A position in the server's change log, tied to the database it came from.
///
/// Written as `EPOCH.SEQ`, or `EPOCH.SEQ.FLOOR` once the server has purged
/// tombstones: `EPOCH` identifies the database (a new one, or one that may
/// have lost history, has another), `SEQ` is the number of the last change
/// the holder has seen, and `FLOOR` the server's purge floor when it handed
/// the cursor out. A cursor from another epoch, or one below a purge floor
/// that rose after it was handed out (its holder may have missed a deletion),
/// is refused with [`ErrorCode::CursorReset`], telling the client to pull from
/// scratch. Clients treat cursors as opaque.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cursor {
    /// The identity of the database the cursor belongs to.
    pub epoch: String,
    /// The last change number seen.
    pub seq: u64,
    /// The server's purge floor when it handed the cursor out: tombstones
    /// changed at or before it may be gone (0: none purged).
    pub floor: u64,
}

impl Cursor {
    /// A cursor of database `epoch` at change `seq`, with no purge floor.
    pub fn new(epoch: impl Into<String>, seq: u64) -> Cursor {
        Cursor {
            epoch: epoch.into(),
            seq,
            floor: 0,
        }
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.epoch, self.seq)?;
        if self.floor > 0 {
            write!(f, ".{}", self.floor)?;
        }
        Ok(())
    }
}

/// Why a text is not a [`Cursor`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorParseError;

impl fmt::Display for CursorParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid cursor: expected EPOCH.SEQ as returned by the server")
    }
}

impl std::error::Error for CursorParseError {}

impl FromStr for Cursor {
    type Err = CursorParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split('.');
        let epoch = parts.next().ok_or(CursorParseError)?;
        let seq = parts.next().ok_or(CursorParseError)?;
        let floor = parts.next();
        if parts.next().is_some() {
            return Err(CursorParseError);
        }
        let valid_epoch = !epoch.is_empty()
            && epoch.len() <= 64
            && epoch
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !valid_epoch {
            return Err(CursorParseError);
        }
        let number = |text: &str| -> Result<u64, CursorParseError> {
            if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
                return Err(CursorParseError);
            }
            text.parse::<u64>()
                .ok()
                .filter(|&n| n <= MAX_VERSION)
                .ok_or(CursorParseError)
        };
        let seq = number(seq)?;
        // `EPOCH.SEQ.0` is not the canonical form of `EPOCH.SEQ`.
        let floor = match floor {
            None => 0,
            Some(text) => Some(number(text)?)
                .filter(|&n| n > 0)
                .ok_or(CursorParseError)?,
        };
        Ok(Cursor {
            epoch: epoch.to_owned(),
            seq,
            floor,
        })
    }
}

impl Serialize for Cursor {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cursor {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A document as the server holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Document {
    /// The document's key within its group.
    pub key: String,
    /// The server's version of the document: 1 for the first write, +1 for each
    /// accepted change after it.
    pub version: u64,
    /// The value, or `None` for a deleted document (a tombstone).
    pub value: Option<Raw>,
}

/// `GET /sync` answer: the changed documents of a group, in change order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullResponse {
    /// Documents changed after the request's cursor, oldest change first.
    pub documents: Vec<Document>,
    /// Where the next pull continues.
    pub cursor: Cursor,
    /// Whether more changes remain after `cursor`.
    pub more: bool,
}

/// `GET /sync` parameters (also the input of the pull server function).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequest {
    /// The group to read.
    pub group: String,
    /// Read changes after this cursor; `None` reads from the beginning.
    pub since: Option<Cursor>,
    /// Most documents to return; `None` takes the server's default.
    pub limit: Option<u32>,
}

/// One change in a push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The client's number for this change: strictly increasing per client id,
    /// so a retried change is recognised and answered as the first time.
    pub mutation: u64,
    /// The document's key.
    pub key: String,
    /// The server version this change was made on; 0 for a key the client
    /// has never seen on the server.
    pub base_version: u64,
    /// The new value, or `None` to delete.
    pub value: Option<Raw>,
}

/// `POST /sync` body: a batch of changes to one group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRequest {
    /// The group written to.
    pub group: String,
    /// Identifies the client across restarts (its mutation numbers are its own).
    pub client_id: String,
    /// The changes, applied in order.
    pub changes: Vec<Change>,
    /// The client's low-water mark: every mutation number of this client id
    /// below it is settled and will never be sent again, so the server may
    /// forget its answers. `None` (absent on the wire) says nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_water: Option<u64>,
    /// The epoch the changes' base versions were read from. A server of
    /// another epoch refuses the push whole (409 `cursor-reset`): version
    /// numbers of another history could match its own by chance. `None`
    /// (absent on the wire) says nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
}

/// The outcome of one change of a push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeResult {
    /// Applied; the document now has this version.
    Accepted {
        /// The change's mutation number.
        mutation: u64,
        /// The document's key.
        key: String,
        /// The document's new version.
        version: u64,
    },
    /// Not applied: the change was based on an older version. `current` is the
    /// server's document (`None` if the key was never written).
    Conflict {
        /// The change's mutation number.
        mutation: u64,
        /// The document's key.
        key: String,
        /// The server's current document.
        current: Option<Document>,
    },
}

impl ChangeResult {
    /// The mutation number the result answers.
    pub fn mutation(&self) -> u64 {
        match self {
            ChangeResult::Accepted { mutation, .. } | ChangeResult::Conflict { mutation, .. } => {
                *mutation
            }
        }
    }
}

/// `POST /sync` answer: one result per change, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushResponse {
    /// The outcome of each change.
    pub results: Vec<ChangeResult>,
    /// The server's latest cursor after the push.
    pub cursor: Cursor,
}

/// Machine-readable error codes of [`ErrorBody`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request is malformed (syntax, shape, limits).
    BadRequest,
    /// The cursor belongs to another database: pull again from the beginning.
    CursorReset,
    /// No or an unknown token.
    Unauthorized,
    /// The token may not use this group.
    Forbidden,
    /// The body is larger than the server accepts.
    TooLarge,
    /// The server failed; retry later.
    Internal,
    /// The server is unavailable (shutting down, overloaded); retry later.
    Unavailable,
    /// A mutation number of the client id was already decided for a change
    /// with other content (the client lost its state and numbers again): the
    /// client must push under a new client id. Nothing of the push was
    /// applied.
    MutationReused,
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What kind of error.
    pub error: ErrorCode,
    /// A human-readable explanation.
    pub message: String,
}

/// Checks a group name: 1 to [`MAX_GROUP_LEN`] bytes of letters, digits and
/// `-_.:`.
pub fn validate_group(group: &str) -> Result<(), String> {
    if group.is_empty() || group.len() > MAX_GROUP_LEN {
        return Err(format!(
            "group name must be 1 to {MAX_GROUP_LEN} bytes long"
        ));
    }
    if !group
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        return Err("group name may only contain letters, digits and `-_.:`".to_owned());
    }
    Ok(())
}

/// Checks a document key: 1 to [`MAX_KEY_LEN`] bytes, no control characters.
pub fn validate_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(format!("key must be 1 to {MAX_KEY_LEN} bytes long"));
    }
    if key.chars().any(char::is_control) {
        return Err("key must not contain control characters".to_owned());
    }
    Ok(())
}
