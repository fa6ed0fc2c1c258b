//! The sans-IO client sync engine: one [`Engine`] per group.
//!
//! The engine holds a group's documents as the server last confirmed them,
//! the queue of local writes the server has not answered yet, and the pull
//! cursor. It does no IO and reads no clock: an adapter asks it for requests
//! ([`Engine::next_push`], [`Engine::next_pull`]), sends them however it likes,
//! and folds the answers back in ([`Engine::on_push_response`],
//! [`Engine::on_pull_response`], [`Engine::on_push_error`],
//! [`Engine::on_pull_error`]). Every step returns [`Effects`]: a [`Batch`] to
//! persist atomically, the keys whose visible value changed, and the conflicts
//! it raised.
//!
//! ## Usage
//!
//! ```
//! use atomsync_core::engine::{Engine, MemoryStorage, Storage};
//! use atomsync_core::protocol::{ChangeResult, Cursor, PushResponse};
//! use atomsync_core::sexpr::Raw;
//!
//! let mut storage = MemoryStorage::default();
//! let mut engine = Engine::new("todo", "device-1/todo")?;
//!
//! // A write is visible at once; persist its batch before reporting it done.
//! let effects = engine.set("milk", Raw::from_value("Buy milk")?)?;
//! storage.apply(&effects.batch)?;
//! assert_eq!(effects.changed, ["milk"]);
//! assert_eq!(engine.get("milk").unwrap().as_str(), r#""Buy milk""#);
//!
//! // The adapter sends the push and folds the answer back in.
//! let push = engine.next_push(0).expect("one pending change");
//! let response = PushResponse {
//!     results: vec![ChangeResult::Accepted {
//!         mutation: push.changes[0].mutation,
//!         key: "milk".into(),
//!         version: 1,
//!     }],
//!     cursor: Cursor::new("e1", 1),
//! };
//! let effects = engine.on_push_response(&push, response);
//! storage.apply(&effects.batch)?;
//! assert_eq!(engine.pending_len(), 0);
//! assert_eq!(engine.confirmed("milk").unwrap().version, 1);
//!
//! // After a restart the engine comes back from the storage.
//! let engine = Engine::restore(storage.load()?.unwrap())?;
//! assert_eq!(engine.get("milk").unwrap().as_str(), r#""Buy milk""#);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Driving it
//!
//! An adapter owns the engine, a [`Storage`] and a transport. Whenever there
//! was a local write, the server poked (event stream: [`Engine::on_server_cursor`]),
//! a timer fired, or [`Engine::ready_at`] passed, it runs a [`SyncRound`]:
//! the round says which request to send next, the adapter sends it, folds
//! the answer back in through the round, and persists the batch before it
//! asks for the next request. The native client and the browser hook both
//! run it, so they cannot drift apart.
//!
//! ```
//! use atomsync_core::engine::{Engine, Failure, MemoryStorage, RoundEnd, Step, Storage, SyncRound};
//!
//! // Offline: the write stays pending and the engine backs off.
//! let mut storage = MemoryStorage::default();
//! let mut engine = Engine::new("todo", "device-1/todo")?;
//! storage.apply(&engine.set_value("milk", "Buy milk")?.batch)?;
//! let mut round = SyncRound::new();
//! let end = loop {
//!     let effects = match round.next(&mut engine, 1_000) {
//!         Step::Push(request) => round.on_push(&mut engine, &request, Err(Failure::Unreachable), 1_000, 0.3),
//!         Step::Pull(request) => round.on_pull(&mut engine, &request, Err(Failure::Unreachable), 1_000, 0.3),
//!         Step::Done(end) => break end,
//!     };
//!     storage.apply(&effects.batch)?;
//! };
//! assert_eq!(end, RoundEnd::Failed(Failure::Unreachable));
//! assert_eq!(engine.pending_len(), 1);
//! assert!(engine.ready_at().unwrap() > 1_000);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Design
//!
//! - **Documents** (`key -> `[`StoredDoc`]) are the server's state as last
//!   seen; a key's **visible** value is that of its latest pending change if
//!   it has one, else the server's. So a pull never hides a pending local
//!   write, and dropping a refused write shows the server's value again.
//! - **Pending changes** keep the order of writes and their mutation numbers.
//!   Only the oldest change of a key is ever sent; later writes to the key
//!   wait behind it and coalesce into one change, which was therefore never
//!   sent. When the oldest is accepted the next one is based on the version it
//!   got. Changes leave the queue only when the server answered them, and a
//!   retried change carries its old mutation number, so the server applies it
//!   at most once.
//! - **Answers are matched by content**, not by arrival: a push result
//!   concerns the pending change with its mutation number (late and duplicated
//!   answers find nothing left to do), and a pull page is used only if it
//!   starts at or before the engine's cursor in the same database, documents
//!   only ever moving to a higher version. One push and one pull may be in
//!   flight at the same time.
//! - **Conflicts** are resolved by the [`ConflictPolicy`] and always reported
//!   (kept durably until [`Engine::take_conflicts`]), unless the local and
//!   server values are equal.
//! - **Databases**: the cursor names the server's database (epoch) the
//!   confirmed documents come from. A cursor reset, or a push answered by
//!   another database, makes the engine forget its cursor, tag its documents
//!   with the database they came from (stale: still shown), and pull from the
//!   beginning; the documents that pull does not bring are dropped at its end.
//!   Pending changes stay queued with their base versions: the server judges
//!   them as usual.
//! - **Failures**: temporary ones back off ([`Backoff`], with the caller's
//!   time and randomness); auth and permanent ones halt syncing until
//!   [`Engine::resume`]. Local writes keep working either way.

mod conflict;
mod error;
mod forwarded;
mod retry;
mod round;
mod storage;
#[cfg(feature = "testing")]
pub mod testing;

use std::collections::{BTreeMap, BTreeSet};
use std::mem;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use conflict::{Conflict, ConflictCause, ConflictPolicy, MergeFn, Resolution};
pub use error::EngineError;
pub use forwarded::Seen;
pub use retry::{Backoff, Failure, FailureKind, Halt};
pub use round::{MAX_PASSES, MAX_RECOVERIES, RoundEnd, Step, SyncRound};
pub use storage::{
    Batch, MemoryStorage, Meta, MissingMeta, PendingChange, Snapshot, Storage, StoredDoc,
};

use crate::protocol::{
    self, Change, ChangeResult, Cursor, Document, PullRequest, PullResponse, PushRequest,
    PushResponse,
};
use crate::sexpr::Raw;

/// The tag of a document known before a cursor reset, followed by the epoch
/// it came from. No epoch contains `:`, so a tagged document never compares
/// as from the same database: the server's full state replaces it.
const RESET_TAG: &str = "reset:";

/// The database of a stale document's tag: `EPOCH`, `EPOCH.SEQ`, or
/// [`RESET_TAG`] and an epoch (which is no epoch).
fn tag_epoch(tag: &str) -> &str {
    tag.split_once('.').map_or(tag, |(epoch, _)| epoch)
}

/// The change number a stale document's tag was learnt at, if it says.
fn tag_seq(tag: &str) -> Option<u64> {
    tag.split_once('.').and_then(|(_, seq)| seq.parse().ok())
}

/// The encoded size of a change inside a push (with the space before it).
fn change_bytes(change: &Change) -> usize {
    crate::sexpr::to_vec(change).map_or(usize::MAX / 4, |body| body.len() + 1)
}

/// FNV-1a, 64 bits (not cryptographic).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Tunables of an [`Engine`] (not persisted: pass them again on restore).
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// How refused writes are resolved. Default [`ConflictPolicy::ServerWins`].
    pub policy: ConflictPolicy,
    /// Most changes per push. Default 100 (at most
    /// [`protocol::MAX_PUSH_CHANGES`]).
    pub push_batch: usize,
    /// The largest push, in bytes of its encoded body (4 MiB less 64 KiB by
    /// default, under the server's default body limit with room for a
    /// server function's envelope). Pushes take changes until the next one
    /// would pass it; a single change that passes it on its own is refused
    /// at [`Engine::set`] ([`EngineError::TooLarge`]). A server that answers
    /// 413 all the same teaches the engine a smaller limit (until restart),
    /// and a change refused alone is dropped and reported
    /// ([`ConflictCause::TooLarge`]).
    pub max_push_bytes: usize,
    /// Page size asked for in pulls; `None` (the default) takes the server's.
    pub pull_limit: Option<u32>,
    /// The retry schedule after temporary failures.
    pub backoff: Backoff,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            policy: ConflictPolicy::default(),
            push_batch: 100,
            max_push_bytes: (4 << 20) - (64 << 10),
            pull_limit: None,
            backoff: Backoff::default(),
        }
    }
}

impl EngineOptions {
    /// Sets [`EngineOptions::policy`].
    pub fn policy(mut self, policy: ConflictPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets [`EngineOptions::push_batch`] (clamped to 1..=[`protocol::MAX_PUSH_CHANGES`]).
    pub fn push_batch(mut self, changes: usize) -> Self {
        self.push_batch = changes.clamp(1, protocol::MAX_PUSH_CHANGES);
        self
    }

    /// Sets [`EngineOptions::max_push_bytes`].
    pub fn max_push_bytes(mut self, bytes: usize) -> Self {
        self.max_push_bytes = bytes;
        self
    }

    /// Sets [`EngineOptions::pull_limit`] (`Some(0)` counts as 1).
    pub fn pull_limit(mut self, limit: Option<u32>) -> Self {
        self.pull_limit = limit.map(|n| n.max(1));
        self
    }

    /// Sets [`EngineOptions::backoff`].
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }
}

/// What one step of the engine did, for the adapter to carry out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use = "the batch must be persisted and the changed keys published"]
pub struct Effects {
    /// Persist this atomically before sending anything or reporting the step
    /// done. If that fails, drop the engine and [`Engine::restore`] it.
    pub batch: Batch,
    /// Keys whose visible value changed, in key order.
    pub changed: Vec<String>,
    /// Conflicts this step raised (also kept until [`Engine::take_conflicts`]).
    pub conflicts: Vec<Conflict>,
}

impl Effects {
    /// Folds the effects of a later step into these (see [`Batch::merge`]):
    /// one batch to persist, the changed keys of both (in key order, once
    /// each) and the conflicts of both.
    pub fn merge(&mut self, later: Effects) {
        self.batch.merge(later.batch);
        match (self.changed.last(), later.changed.first()) {
            (_, None) => {}
            (None, _) => self.changed = later.changed,
            // The common case (keys written in order): append.
            (Some(last), Some(first)) if last < first => self.changed.extend(later.changed),
            _ => {
                let all: BTreeSet<String> = mem::take(&mut self.changed)
                    .into_iter()
                    .chain(later.changed)
                    .collect();
                self.changed = all.into_iter().collect();
            }
        }
        self.conflicts.extend(later.conflicts);
    }
}

/// The engine's sync state, for status displays and drivers.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncStatus {
    /// Pending changes (local writes the server has not answered).
    pub pending: usize,
    /// A push was handed out and is not answered yet.
    pub push_in_flight: bool,
    /// A pull was handed out and is not answered yet.
    pub pull_in_flight: bool,
    /// Consecutive temporary failures.
    pub failures: u32,
    /// No request before this time (milliseconds, the caller's clock).
    pub ready_at: Option<u64>,
    /// Why syncing is halted, if it is.
    pub halted: Option<Halt>,
    /// A pull from the beginning (the first sync, or after a cursor reset)
    /// is under way.
    pub resyncing: bool,
    /// Unread conflict reports.
    pub conflicts: usize,
}

/// The client sync engine of one group. See the [module docs](self).
#[derive(Debug)]
pub struct Engine {
    meta: Meta,
    meta_dirty: bool,
    meta_persisted: bool,
    docs: BTreeMap<String, StoredDoc>,
    pending: BTreeMap<u64, PendingChange>,
    /// Pending mutation numbers per key, oldest first.
    by_key: BTreeMap<String, Vec<u64>>,
    conflicts: BTreeMap<u64, Conflict>,
    options: EngineOptions,
    push_in_flight: Option<Vec<u64>>,
    pull_in_flight: Option<Option<Cursor>>,
    /// The last used page said more changes remain.
    more: bool,
    /// The latest change number the server was seen to have (same epoch as
    /// the cursor).
    server_seq: Option<u64>,
    failures: u32,
    ready_at: Option<u64>,
    halted: Option<Halt>,
    /// A push limit the server taught by answering 413 (not persisted).
    learned_push_bytes: Option<usize>,
    out: Out,
}

/// What the current step has done so far.
#[derive(Debug, Default)]
struct Out {
    batch: Batch,
    /// Visible values of the touched keys before the step.
    before: BTreeMap<String, Option<Raw>>,
    conflicts: Vec<Conflict>,
}

fn validate_client_id(client_id: &str) -> Result<(), EngineError> {
    if client_id.is_empty() || client_id.len() > protocol::MAX_CLIENT_ID_LEN {
        return Err(EngineError::InvalidClientId(format!(
            "must be 1 to {} bytes long",
            protocol::MAX_CLIENT_ID_LEN
        )));
    }
    if client_id.chars().any(char::is_control) {
        return Err(EngineError::InvalidClientId(
            "must not contain control characters".to_owned(),
        ));
    }
    Ok(())
}

impl Engine {
    /// A fresh engine for `group`.
    ///
    /// `client_id` names this engine to the server, which answers a retried
    /// mutation number of the same client id the same way: it must be unique
    /// per engine and kept across restarts (it is part of the persisted
    /// state). Engines of several groups on one device need distinct ids,
    /// e.g. `"{device}/{group}"`, because their mutation numbers are
    /// independent.
    pub fn new(
        group: impl Into<String>,
        client_id: impl Into<String>,
    ) -> Result<Self, EngineError> {
        let group = group.into();
        let client_id = client_id.into();
        protocol::validate_group(&group).map_err(EngineError::InvalidGroup)?;
        validate_client_id(&client_id)?;
        let meta = Meta {
            group,
            client_id,
            cursor: None,
            resyncing: true,
            next_mutation: 1,
            next_conflict: 1,
        };
        Ok(Engine::from_parts(Snapshot::new(meta), false))
    }

    /// The engine as it was when `snapshot` was stored. Nothing is in flight
    /// after a restore: unanswered changes are sent again with their mutation
    /// numbers.
    pub fn restore(snapshot: Snapshot) -> Result<Self, EngineError> {
        let Snapshot {
            mut meta,
            docs,
            pending,
            conflicts,
        } = snapshot;
        protocol::validate_group(&meta.group).map_err(EngineError::InvalidGroup)?;
        validate_client_id(&meta.client_id)?;
        for (&mutation, change) in &pending {
            if change.mutation != mutation {
                return Err(EngineError::CorruptSnapshot(format!(
                    "pending change {mutation} is stored as mutation {}",
                    change.mutation
                )));
            }
            protocol::validate_key(&change.key).map_err(EngineError::InvalidKey)?;
        }
        for (&id, conflict) in &conflicts {
            if conflict.id != id {
                return Err(EngineError::CorruptSnapshot(format!(
                    "conflict {id} is stored as conflict {}",
                    conflict.id
                )));
            }
        }
        if let Some((&last, _)) = pending.last_key_value() {
            meta.next_mutation = meta.next_mutation.max(last + 1);
        }
        if let Some((&last, _)) = conflicts.last_key_value() {
            meta.next_conflict = meta.next_conflict.max(last + 1);
        }
        Ok(Engine::from_parts(
            Snapshot {
                meta,
                docs,
                pending,
                conflicts,
            },
            true,
        ))
    }

    fn from_parts(snapshot: Snapshot, persisted: bool) -> Self {
        let mut by_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for (&mutation, change) in &snapshot.pending {
            by_key.entry(change.key.clone()).or_default().push(mutation);
        }
        Engine {
            meta: snapshot.meta,
            meta_dirty: false,
            meta_persisted: persisted,
            docs: snapshot.docs,
            pending: snapshot.pending,
            by_key,
            conflicts: snapshot.conflicts,
            options: EngineOptions::default(),
            push_in_flight: None,
            pull_in_flight: None,
            more: false,
            server_seq: None,
            failures: 0,
            ready_at: None,
            halted: None,
            learned_push_bytes: None,
            out: Out::default(),
        }
    }

    /// Replaces the options.
    pub fn with_options(mut self, options: EngineOptions) -> Self {
        self.options = options;
        self
    }

    /// Replaces the conflict policy.
    pub fn with_policy(mut self, policy: ConflictPolicy) -> Self {
        self.options.policy = policy;
        self
    }

    /// The options in force.
    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// The whole durable state, as [`Engine::restore`] takes it.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            meta: self.meta.clone(),
            docs: self.docs.clone(),
            pending: self.pending.clone(),
            conflicts: self.conflicts.clone(),
        }
    }

    /// The group this engine syncs.
    pub fn group(&self) -> &str {
        &self.meta.group
    }

    /// The client id this engine pushes with.
    pub fn client_id(&self) -> &str {
        &self.meta.client_id
    }

    /// Where the next pull continues (`None`: from the beginning).
    pub fn cursor(&self) -> Option<&Cursor> {
        self.meta.cursor.as_ref()
    }

    // ----- reading -----

    /// The visible value of `key`: the latest pending write, else the
    /// server's value. `None` for deleted and unknown keys.
    pub fn get(&self, key: &str) -> Option<&Raw> {
        match self.by_key.get(key).and_then(|list| list.last()) {
            Some(mutation) => self.pending[mutation].value.as_ref(),
            None => self.docs.get(key).and_then(|doc| doc.value.as_ref()),
        }
    }

    /// Decodes the visible value of `key` (a thin typed layer over [`Engine::get`]).
    pub fn get_value<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, EngineError> {
        self.get(key)
            .map(|raw| raw.to_value::<T>())
            .transpose()
            .map_err(EngineError::from)
    }

    /// The visible documents that are not deleted, in key order.
    pub fn documents(&self) -> impl Iterator<Item = (&str, &Raw)> + '_ {
        let keys: BTreeSet<&str> = self
            .docs
            .keys()
            .chain(self.by_key.keys())
            .map(String::as_str)
            .collect();
        keys.into_iter()
            .filter_map(|key| self.get(key).map(|value| (key, value)))
    }

    /// The server's state of `key` as last seen (including tombstones).
    pub fn confirmed(&self, key: &str) -> Option<&StoredDoc> {
        self.docs.get(key)
    }

    /// All server documents as last seen, in key order.
    pub fn confirmed_documents(&self) -> impl Iterator<Item = (&str, &StoredDoc)> + '_ {
        self.docs.iter().map(|(key, doc)| (key.as_str(), doc))
    }

    /// Whether `key` has a local write the server has not answered.
    pub fn is_pending(&self, key: &str) -> bool {
        self.by_key.contains_key(key)
    }

    /// The pending changes, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = &PendingChange> + '_ {
        self.pending.values()
    }

    /// How many changes are pending.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// The unread conflict reports, oldest first.
    pub fn conflicts(&self) -> impl Iterator<Item = &Conflict> + '_ {
        self.conflicts.values()
    }

    /// Removes and returns the unread conflict reports.
    pub fn take_conflicts(&mut self) -> (Vec<Conflict>, Effects) {
        let taken = mem::take(&mut self.conflicts);
        for &id in taken.keys() {
            self.out.batch.conflicts.insert(id, None);
        }
        (taken.into_values().collect(), self.finish())
    }

    /// The sync state.
    pub fn status(&self) -> SyncStatus {
        SyncStatus {
            pending: self.pending.len(),
            push_in_flight: self.push_in_flight.is_some(),
            pull_in_flight: self.pull_in_flight.is_some(),
            failures: self.failures,
            ready_at: self.ready_at,
            halted: self.halted.clone(),
            resyncing: self.meta.resyncing,
            conflicts: self.conflicts.len(),
        }
    }

    // ----- writing -----

    /// Writes `value` at `key`: visible at once, pushed later.
    pub fn set(&mut self, key: impl Into<String>, value: Raw) -> Result<Effects, EngineError> {
        self.write(key.into(), Some(value))
    }

    /// Encodes `value` and writes it at `key` (a thin typed layer over [`Engine::set`]).
    pub fn set_value<T: ?Sized + Serialize>(
        &mut self,
        key: impl Into<String>,
        value: &T,
    ) -> Result<Effects, EngineError> {
        let raw = Raw::from_value(value)?;
        self.write(key.into(), Some(raw))
    }

    /// Deletes `key`: gone at once, pushed later as a tombstone.
    pub fn delete(&mut self, key: impl Into<String>) -> Result<Effects, EngineError> {
        self.write(key.into(), None)
    }

    fn write(&mut self, key: String, value: Option<Raw>) -> Result<Effects, EngineError> {
        protocol::validate_key(&key).map_err(EngineError::InvalidKey)?;
        let probe = Change {
            mutation: protocol::MAX_VERSION,
            key,
            base_version: protocol::MAX_VERSION,
            value,
        };
        let bytes = self.envelope_bytes() + change_bytes(&probe);
        if bytes > self.options.max_push_bytes {
            return Err(EngineError::TooLarge {
                key: probe.key,
                bytes,
                limit: self.options.max_push_bytes,
            });
        }
        let Change { key, value, .. } = probe;
        let (head, queued) = match self.by_key.get(&key) {
            Some(list) => (
                list.first().copied(),
                list.last().copied().filter(|_| list.len() > 1),
            ),
            None => (None, None),
        };
        let change = match (head, queued) {
            // Queued behind the key's oldest change, so never sent: coalesce.
            (_, Some(last)) => PendingChange {
                value,
                ..self.pending[&last].clone()
            },
            // The oldest change may be in flight (or was sent before a
            // restart): queue a new change behind it. Its base is fixed when
            // the oldest one is answered.
            (Some(head), None) => PendingChange {
                base_version: self.pending[&head].base_version,
                mutation: self.next_mutation(),
                key,
                value,
            },
            (None, _) => PendingChange {
                mutation: self.next_mutation(),
                base_version: self.docs.get(&key).map_or(0, |doc| doc.version),
                key,
                value,
            },
        };
        self.put_pending(change);
        Ok(self.finish())
    }

    // ----- requests -----

    /// Whether a push has something to send (ignoring backoff and halts).
    pub fn wants_push(&self) -> bool {
        self.push_in_flight.is_none() && !self.by_key.is_empty()
    }

    /// Whether the engine knows it is behind the server (ignoring backoff and
    /// halts): it never pulled, is resyncing, the last page said more remain,
    /// or a push answer or [`Engine::on_server_cursor`] showed a newer change.
    pub fn wants_pull(&self) -> bool {
        if self.pull_in_flight.is_some() {
            return false;
        }
        match &self.meta.cursor {
            None => true,
            Some(cursor) => {
                self.meta.resyncing || self.more || self.server_seq.is_some_and(|s| s > cursor.seq)
            }
        }
    }

    /// The earliest time (caller's clock, milliseconds) a request may be sent
    /// after temporary failures; `None` when there is no wait.
    pub fn ready_at(&self) -> Option<u64> {
        self.ready_at
    }

    /// How long to wait from `now_ms` before the next request may be sent;
    /// `None` when syncing is halted.
    pub fn retry_after(&self, now_ms: u64) -> Option<u64> {
        if self.halted.is_some() {
            return None;
        }
        Some(self.ready_at.map_or(0, |at| at.saturating_sub(now_ms)))
    }

    fn can_send(&self, now_ms: u64) -> bool {
        self.halted.is_none() && self.ready_at.is_none_or(|at| now_ms >= at)
    }

    /// The next push: the oldest pending change of each key, in queue order,
    /// at most [`EngineOptions::push_batch`] of them. `None` if there is
    /// nothing to send, a push is in flight, syncing is halted, or the
    /// backoff wait has not passed at `now_ms`. The push stays in flight until
    /// its answer or failure is folded in.
    pub fn next_push(&mut self, now_ms: u64) -> Option<PushRequest> {
        if !self.can_send(now_ms) || self.push_in_flight.is_some() {
            return None;
        }
        // Base versions mean something in one database only: pushes name
        // it. While a pull from the beginning is under way, the documents
        // known come from answers of the server (tagged with its epoch), or
        // from before a reset: then nothing is pushed until the pull has
        // replaced them (and rebased or reported the writes made on them).
        let epoch = match &self.meta.cursor {
            Some(cursor) if !self.meta.resyncing => Some(cursor.epoch.clone()),
            _ => {
                let mut tags = self.docs.values().filter_map(|doc| doc.epoch.as_deref());
                let epoch = self
                    .cursor_epoch()
                    .or_else(|| tags.clone().next().map(tag_epoch))
                    .map(str::to_owned);
                // Known before a reset, or from another database: wait.
                if tags.any(|tag| {
                    tag.starts_with(RESET_TAG) || Some(tag_epoch(tag)) != epoch.as_deref()
                }) {
                    return None;
                }
                epoch
            }
        };
        let mut heads: Vec<u64> = self.by_key.values().map(|list| list[0]).collect();
        if heads.is_empty() {
            return None;
        }
        heads.sort_unstable();
        // Changes in queue order, while they fit the count and the bytes; a
        // first change larger than the limit goes alone (the server refuses
        // it alone, and it is reported).
        let count = self.options.push_batch.clamp(1, protocol::MAX_PUSH_CHANGES);
        let limit = self.push_limit();
        let mut bytes = self.envelope_bytes();
        let mut changes: Vec<Change> = Vec::new();
        for mutation in &heads {
            let change = self.pending[mutation].to_change();
            let size = change_bytes(&change);
            if !changes.is_empty() && (changes.len() == count || bytes + size > limit) {
                break;
            }
            bytes += size;
            changes.push(change);
        }
        heads.truncate(changes.len());
        self.push_in_flight = Some(heads);
        Some(PushRequest {
            group: self.meta.group.clone(),
            client_id: self.meta.client_id.clone(),
            changes,
            low_water: Some(self.low_water()),
            epoch,
        })
    }

    /// The next pull, from the cursor. `None` if a pull is in flight, syncing
    /// is halted, or the backoff wait has not passed at `now_ms`. The pull
    /// stays in flight until its answer or failure is folded in.
    pub fn next_pull(&mut self, now_ms: u64) -> Option<PullRequest> {
        if !self.can_send(now_ms) || self.pull_in_flight.is_some() {
            return None;
        }
        self.pull_in_flight = Some(self.meta.cursor.clone());
        Some(PullRequest {
            group: self.meta.group.clone(),
            since: self.meta.cursor.clone(),
            limit: self.options.pull_limit,
        })
    }

    /// Notes the server's latest cursor (from the event stream): if it is
    /// ahead, [`Engine::wants_pull`] turns true.
    pub fn on_server_cursor(&mut self, cursor: &Cursor) {
        self.note_server_cursor(cursor);
    }

    /// The low-water mark of this engine's mutation numbers: every number
    /// below it is settled (answered, or given up) and will never be sent
    /// again, so the server may forget its answer. Sent with every push.
    pub fn low_water(&self) -> u64 {
        self.pending
            .keys()
            .next()
            .copied()
            .unwrap_or(self.meta.next_mutation)
    }

    /// Ends a halt (after new credentials, or once the app dealt with a
    /// permanent error) and forgets the backoff.
    pub fn resume(&mut self) {
        self.halted = None;
        self.failures = 0;
        self.ready_at = None;
    }

    // ----- answers -----

    /// Folds in the answer to `request` (a push this engine handed out, maybe
    /// long ago: late and repeated answers are harmless).
    pub fn on_push_response(&mut self, request: &PushRequest, response: PushResponse) -> Effects {
        if !self.is_own_push(request) {
            return self.finish();
        }
        self.end_push(request);
        self.succeeded();
        let epoch = response.cursor.epoch.clone();
        let at = response.cursor.seq;
        if self
            .meta
            .cursor
            .as_ref()
            .is_some_and(|cursor| cursor.epoch != epoch)
        {
            // Answered by another database than the cursor's: the server
            // moved (or this is a late answer of an old one). Either way a
            // pull from the beginning sorts it out.
            self.begin_resync();
        }
        for result in response.results {
            let mutation = result.mutation();
            let (ChangeResult::Accepted { key, .. } | ChangeResult::Conflict { key, .. }) = &result;
            let sent = request
                .changes
                .iter()
                .any(|c| c.mutation == mutation && c.key == *key);
            let is_head = self.by_key.get(key).is_some_and(|list| list[0] == mutation);
            if !sent || !is_head {
                // Not ours, or answered already.
                continue;
            }
            match result {
                ChangeResult::Accepted { version, .. } => {
                    self.accepted(mutation, version, &epoch, at);
                }
                ChangeResult::Conflict { current, .. } => {
                    self.conflicted(mutation, current, &epoch, at);
                }
            }
        }
        self.note_server_cursor(&response.cursor);
        self.finish()
    }

    /// Folds in the answer to `request` (a pull this engine handed out, maybe
    /// long ago: a page is used only if it still fits the cursor).
    pub fn on_pull_response(&mut self, request: &PullRequest, response: PullResponse) -> Effects {
        if request.group != self.meta.group {
            return self.finish();
        }
        self.end_pull(request);
        self.succeeded();
        let fits = match (&request.since, &self.meta.cursor) {
            (None, None) => true,
            (Some(since), Some(cursor)) => {
                since.epoch == cursor.epoch
                    && since.seq <= cursor.seq
                    && response.cursor.epoch == since.epoch
            }
            _ => false,
        };
        if !fits {
            return self.finish();
        }
        if self.meta.cursor.is_none() {
            self.meta.resyncing = true;
        }
        let epoch = response.cursor.epoch.clone();
        let mut rebases = Vec::new();
        for doc in response.documents {
            if let Some(known) = self.known_before_reset(&doc.key, &epoch) {
                rebases.push((doc.clone(), known));
            }
            self.learn(doc.key, doc.value, doc.version, &epoch, None);
        }
        let advanced = self
            .meta
            .cursor
            .as_ref()
            .is_none_or(|cursor| response.cursor.seq >= cursor.seq);
        if advanced {
            self.more = response.more;
            self.meta.cursor = Some(response.cursor);
            self.meta_dirty = true;
        }
        // With the cursor of this database in place, so that what the
        // conflicts learn is confirmed.
        for (doc, known) in rebases {
            self.rebase(doc, known, &epoch);
        }
        if advanced && !self.more && self.meta.resyncing {
            self.end_resync();
        }
        self.finish()
    }

    /// Folds in the failure of `request` (a push this engine handed out).
    /// `now_ms` and `jitter` (random, `0.0..=1.0`) schedule the retry after a
    /// temporary failure. Failures of pushes that are no longer in flight
    /// (already reported) are ignored.
    pub fn on_push_error(
        &mut self,
        request: &PushRequest,
        failure: &Failure,
        now_ms: u64,
        jitter: f64,
    ) -> Effects {
        if self.is_own_push(request) && self.end_push(request) {
            match failure.kind() {
                // This client id numbered again (it lost its state once):
                // push the same changes under a new id, at once.
                FailureKind::MutationReused => self.rename(jitter),
                // Too large for the server: one change is refused alone;
                // several are split (the limit is learnt), at once.
                FailureKind::TooLarge => match request.changes.as_slice() {
                    [single] => self.refuse_too_large(single.mutation),
                    _ => {
                        let sent = self.envelope_bytes()
                            + request.changes.iter().map(change_bytes).sum::<usize>();
                        let half = (sent / 2).max(self.envelope_bytes() + 1);
                        self.learned_push_bytes = Some(half.min(self.push_limit()));
                    }
                },
                // Based on another database's versions: pull from the
                // beginning, then push (rebased, or reported).
                FailureKind::CursorReset => self.begin_resync(),
                kind => self.failed(kind, failure, now_ms, jitter),
            }
        }
        self.finish()
    }

    /// Folds in the failure of `request` (a pull this engine handed out).
    /// `now_ms` and `jitter` (random, `0.0..=1.0`) schedule the retry after a
    /// temporary failure. A [`FailureKind::CursorReset`] for the current
    /// cursor starts a resync from the beginning, keeping pending changes.
    pub fn on_pull_error(
        &mut self,
        request: &PullRequest,
        failure: &Failure,
        now_ms: u64,
        jitter: f64,
    ) -> Effects {
        if request.group != self.meta.group {
            return self.finish();
        }
        let current = self.end_pull(request);
        match failure.kind() {
            FailureKind::CursorReset => {
                let ours = matches!(
                    (&request.since, &self.meta.cursor),
                    (Some(since), Some(cursor)) if since.epoch == cursor.epoch
                );
                if ours {
                    self.begin_resync();
                } else if current && request.since.is_none() {
                    self.failed(FailureKind::Temporary, failure, now_ms, jitter);
                }
            }
            kind if current => self.failed(kind, failure, now_ms, jitter),
            _ => {}
        }
        self.finish()
    }

    // ----- internals -----

    /// Takes a new client id: the old one with a suffix derived from
    /// `random` (the caller's randomness, as for backoff jitter), the
    /// counter and the old id. Pending changes keep their numbers, which are
    /// fresh under the new id.
    fn rename(&mut self, random: f64) {
        let old = &self.meta.client_id;
        let base = match old.rsplit_once('~') {
            Some((base, suffix))
                if suffix.len() == 16 && suffix.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                base
            }
            _ => old.as_str(),
        };
        let mut seed = Vec::with_capacity(old.len() + 16);
        seed.extend_from_slice(&random.to_bits().to_le_bytes());
        seed.extend_from_slice(&self.meta.next_mutation.to_le_bytes());
        seed.extend_from_slice(old.as_bytes());
        let suffix = format!("~{:016x}", fnv1a(&seed));
        let mut keep = protocol::MAX_CLIENT_ID_LEN - suffix.len();
        while !base.is_char_boundary(keep.min(base.len())) {
            keep -= 1;
        }
        self.meta.client_id = format!("{}{suffix}", &base[..keep.min(base.len())]);
        self.meta_dirty = true;
    }

    /// The push limit in force: the configured one, or less if the server
    /// taught it.
    fn push_limit(&self) -> usize {
        self.learned_push_bytes
            .map_or(self.options.max_push_bytes, |learned| {
                learned.min(self.options.max_push_bytes)
            })
    }

    /// The encoded size of a push of this engine with no changes.
    fn envelope_bytes(&self) -> usize {
        let empty = PushRequest {
            group: self.meta.group.clone(),
            client_id: self.meta.client_id.clone(),
            changes: Vec::new(),
            low_water: Some(protocol::MAX_VERSION),
            epoch: self.meta.cursor.as_ref().map(|c| c.epoch.clone()),
        };
        crate::sexpr::to_vec(&empty).map_or(0, |body| body.len())
    }

    /// Drops a pending change the server refused as too large on its own,
    /// and reports it; a write queued behind it goes next, on the same base.
    fn refuse_too_large(&mut self, mutation: u64) {
        let Some(change) = self.remove_pending(mutation) else {
            return;
        };
        if let Some(&next) = self.by_key.get(&change.key).map(|list| &list[0]) {
            let mut next = self.pending[&next].clone();
            next.base_version = change.base_version;
            self.put_pending(next);
        }
        let (server, server_version) = self
            .docs
            .get(&change.key)
            .map_or((None, 0), |doc| (doc.value.clone(), doc.version));
        self.report(Conflict {
            id: 0,
            key: change.key,
            local: change.value,
            server,
            server_version,
            resolution: Resolution::ServerWins,
            cause: ConflictCause::TooLarge,
        });
    }

    fn next_mutation(&mut self) -> u64 {
        let mutation = self.meta.next_mutation;
        self.meta.next_mutation += 1;
        self.meta_dirty = true;
        mutation
    }

    fn is_own_push(&self, request: &PushRequest) -> bool {
        request.group == self.meta.group && request.client_id == self.meta.client_id
    }

    /// Clears the push in flight if `request` is it; says whether it was.
    fn end_push(&mut self, request: &PushRequest) -> bool {
        let current = self.push_in_flight.as_ref().is_some_and(|sent| {
            sent.len() == request.changes.len()
                && sent
                    .iter()
                    .zip(&request.changes)
                    .all(|(m, c)| *m == c.mutation)
        });
        if current {
            self.push_in_flight = None;
        }
        current
    }

    /// Clears the pull in flight if `request` is it; says whether it was.
    fn end_pull(&mut self, request: &PullRequest) -> bool {
        let current = self.pull_in_flight.as_ref() == Some(&request.since);
        if current {
            self.pull_in_flight = None;
        }
        current
    }

    fn succeeded(&mut self) {
        self.failures = 0;
        self.ready_at = None;
    }

    fn failed(&mut self, kind: FailureKind, failure: &Failure, now_ms: u64, jitter: f64) {
        match kind {
            // Handled where it can happen (pushes); elsewhere a server fault.
            FailureKind::MutationReused | FailureKind::TooLarge => {
                self.failed(FailureKind::Temporary, failure, now_ms, jitter);
            }
            FailureKind::Auth | FailureKind::Permanent => {
                self.halted = Some(Halt {
                    kind,
                    message: failure.to_string(),
                });
            }
            FailureKind::Temporary | FailureKind::CursorReset => {
                self.failures = self.failures.saturating_add(1);
                let wait = self.options.backoff.delay_ms(self.failures, jitter);
                self.ready_at = Some(now_ms.saturating_add(wait));
            }
        }
    }

    fn note_server_cursor(&mut self, cursor: &Cursor) {
        let same = self
            .meta
            .cursor
            .as_ref()
            .is_some_and(|ours| ours.epoch == cursor.epoch);
        if same {
            self.server_seq = Some(self.server_seq.map_or(cursor.seq, |s| s.max(cursor.seq)));
        }
    }

    /// The epoch of the cursor (that of the confirmed documents).
    fn cursor_epoch(&self) -> Option<&str> {
        self.meta.cursor.as_ref().map(|c| c.epoch.as_str())
    }

    /// The database a stored document comes from.
    fn doc_epoch<'a>(&'a self, doc: &'a StoredDoc) -> Option<&'a str> {
        match doc.epoch.as_deref() {
            Some(tag) => Some(tag_epoch(tag)),
            None => self.cursor_epoch(),
        }
    }

    /// Starts a pull from the beginning: forgets the cursor, and every
    /// confirmed document becomes stale, tagged as known before the reset
    /// ([`RESET_TAG`] and the cursor's epoch): whatever the server's full
    /// state says of it then replaces it, whatever its version.
    fn begin_resync(&mut self) {
        self.meta.resyncing = true;
        self.meta_dirty = true;
        self.more = false;
        self.server_seq = None;
        // Every document known, confirmed or learnt from answers, is now
        // known from before the reset (and the database it came from).
        let known: Vec<(String, String)> = self
            .docs
            .iter()
            .filter(|(_, doc)| {
                !doc.epoch
                    .as_deref()
                    .is_some_and(|t| t.starts_with(RESET_TAG))
            })
            .filter_map(|(key, doc)| {
                let epoch = self.doc_epoch(doc)?;
                Some((key.clone(), format!("{RESET_TAG}{epoch}")))
            })
            .collect();
        self.meta.cursor = None;
        for (key, tag) in known {
            let mut doc = self.docs[&key].clone();
            doc.epoch = Some(tag);
            self.put_doc(key, doc);
        }
    }

    /// The pull from the beginning reached the end: stale documents of the
    /// cursor's database are confirmed, the others are gone (the server does
    /// not have them). A document with a value that was confirmed before a
    /// reset to *another* database, and has no pending write, is reported
    /// ([`ConflictCause::Reset`]) and resolved by the policy: gone, or
    /// uploaded again. (Within one database, a document the full pull does
    /// not bring was deleted and its tombstone purged: it goes quietly, as a
    /// deletion pulled normally would.)
    fn end_resync(&mut self) {
        let cursor_epoch = self.cursor_epoch().map(str::to_owned);
        let cursor_seq = self.meta.cursor.as_ref().map_or(0, |c| c.seq);
        let stale: Vec<(String, Option<String>)> = self
            .docs
            .iter()
            .filter(|(_, doc)| doc.is_stale())
            .map(|(key, doc)| (key.clone(), doc.epoch.clone()))
            .collect();
        for (key, tag) in stale {
            // Learnt from this database by an answer after the pull's last
            // page was read: it is there. (One learnt before that page, yet
            // not in the pull, was deleted and its tombstone purged since.)
            // (A tag without a position, from an older version, is dropped:
            // if the server has the document after the pull's last page,
            // the next pull brings it back.)
            let this_database = tag.as_deref().is_some_and(|tag| {
                Some(tag_epoch(tag)) == cursor_epoch.as_deref()
                    && tag_seq(tag).is_some_and(|at| at > cursor_seq)
            });
            if this_database {
                let mut doc = self.docs[&key].clone();
                doc.epoch = None;
                self.put_doc(key, doc);
                continue;
            }
            self.touch(&key);
            let gone = self.docs.remove(&key).and_then(|doc| doc.value);
            self.out.batch.docs.insert(key.clone(), None);
            let other_database = tag
                .as_deref()
                .and_then(|t| t.strip_prefix(RESET_TAG))
                .is_some_and(|old| Some(old) != cursor_epoch.as_deref());
            if other_database && self.by_key.contains_key(&key) {
                // The server lacks the document a pending write was based
                // on: the write makes it again.
                self.rebase_head(&key, 0, None);
            } else if let Some(local) = gone
                && other_database
            {
                self.removed_by_reset(key, local);
            }
        }
        self.meta.resyncing = false;
        self.meta_dirty = true;
    }

    /// The value of `key` as known before a reset to a database other than
    /// `epoch`, if it has a pending write (made on it).
    fn known_before_reset(&self, key: &str, epoch: &str) -> Option<Option<Raw>> {
        let doc = self.docs.get(key)?;
        let old = doc.epoch.as_deref()?.strip_prefix(RESET_TAG)?;
        (old != epoch && self.by_key.contains_key(key)).then(|| doc.value.clone())
    }

    /// A pending write made before a reset to another database, whose
    /// document the full pull brought: its base version is the old
    /// database's. If the server has the write itself, it is settled; if
    /// the server has what the engine knew when the write was made (the same
    /// value), the write is rebased on the server's version; otherwise it is
    /// a conflict, resolved by the policy and reported now, never a write
    /// applied over somebody else's by a chance equal version.
    fn rebase(&mut self, doc: Document, known: Option<Raw>, epoch: &str) {
        let Some(&head) = self.by_key.get(&doc.key).map(|list| &list[0]) else {
            return;
        };
        let mut change = self.pending[&head].clone();
        if change.value == doc.value {
            // The server has the write itself (sent before, its answer
            // lost): settled, and a write queued behind goes on from it.
            self.accepted(head, doc.version, epoch, 0);
            return;
        }
        // The server has the state the engine last knew of it: the write
        // was made on that state (whatever its number there).
        let same = known == doc.value;
        if same {
            self.rebase_head(&doc.key, doc.version, Some(&doc.value));
            return;
        }
        change.base_version = doc.version;
        self.put_pending(change);
        if !same {
            self.conflicted(head, Some(doc), epoch, 0);
        }
    }

    /// Puts the pending writes of `key` on `base_version`. The oldest may
    /// have been sent, and decided, on its old base: the server takes one
    /// number for one change (key, base version, value), so a write on
    /// another base goes under a new number, the writes queued behind it
    /// (never sent) folded into it; dropped if its value is `server`'s.
    fn rebase_head(&mut self, key: &str, base_version: u64, server: Option<&Option<Raw>>) {
        let mutations = self.by_key.get(key).cloned().unwrap_or_default();
        let Some(head) = mutations.first() else {
            return;
        };
        if self.pending[head].base_version == base_version {
            return;
        }
        let mut value = None;
        for mutation in mutations {
            if let Some(queued) = self.remove_pending(mutation) {
                value = queued.value;
            }
        }
        if server == Some(&value) {
            return;
        }
        let change = PendingChange {
            mutation: self.next_mutation(),
            key: key.to_owned(),
            base_version,
            value,
        };
        self.put_pending(change);
    }

    /// Reports a document the server lost in a reset, and resolves it by the
    /// policy: gone (server wins), or written again as a new document.
    fn removed_by_reset(&mut self, key: String, local: Raw) {
        let local = Some(local);
        let (resolution, rewrite) = match &self.options.policy {
            ConflictPolicy::ServerWins => (Resolution::ServerWins, None),
            ConflictPolicy::ClientWins => (Resolution::ClientWins, local.clone()),
            ConflictPolicy::Merge(merge) => {
                let merged = merge(&key, local.as_ref(), None);
                (Resolution::Merged(merged.clone()), merged)
            }
        };
        if let Some(value) = rewrite {
            let change = PendingChange {
                mutation: self.next_mutation(),
                key: key.clone(),
                base_version: 0,
                value: Some(value),
            };
            self.put_pending(change);
        }
        self.report(Conflict {
            id: 0,
            key,
            local,
            server: None,
            server_version: 0,
            resolution,
            cause: ConflictCause::Reset,
        });
    }

    /// Numbers a conflict report, keeps it durably and hands it out.
    fn report(&mut self, mut conflict: Conflict) {
        conflict.id = self.meta.next_conflict;
        self.meta.next_conflict += 1;
        self.meta_dirty = true;
        self.out
            .batch
            .conflicts
            .insert(conflict.id, Some(conflict.clone()));
        self.conflicts.insert(conflict.id, conflict.clone());
        self.out.conflicts.push(conflict);
    }

    /// Learns that database `epoch` has `key` at `version`. Within one
    /// database a document only moves to higher versions; information from
    /// another database replaces it. `stale_at` `None` (a page of the
    /// cursor's database, or an answer of it) marks the document confirmed;
    /// `Some(seq)` (an answer whose cursor was `seq`, while the cursor is of
    /// another database or none) leaves it stale, tagged `EPOCH.SEQ`.
    fn learn(
        &mut self,
        key: String,
        value: Option<Raw>,
        version: u64,
        epoch: &str,
        stale_at: Option<u64>,
    ) {
        let confirm = stale_at.is_none();
        let tag = stale_at.map(|at| format!("{epoch}.{at}"));
        let doc = match self.docs.get(&key) {
            Some(old) if self.doc_epoch(old) == Some(epoch) && old.version >= version => {
                if !confirm || !old.is_stale() {
                    return;
                }
                StoredDoc {
                    epoch: None,
                    ..old.clone()
                }
            }
            _ => StoredDoc {
                value,
                version,
                epoch: tag,
            },
        };
        self.put_doc(key, doc);
    }

    /// Whether answers of database `epoch` confirm documents.
    fn confirms(&self, epoch: &str) -> bool {
        self.cursor_epoch() == Some(epoch)
    }

    fn accepted(&mut self, mutation: u64, version: u64, epoch: &str, at: u64) {
        let Some(change) = self.remove_pending(mutation) else {
            return;
        };
        if let Some(&next) = self.by_key.get(&change.key).map(|list| &list[0]) {
            let mut next = self.pending[&next].clone();
            next.base_version = version;
            self.put_pending(next);
        }
        let stale_at = (!self.confirms(epoch)).then_some(at);
        self.learn(change.key, change.value, version, epoch, stale_at);
    }

    fn conflicted(&mut self, mutation: u64, current: Option<Document>, epoch: &str, at: u64) {
        let Some((key, base)) = self
            .pending
            .get(&mutation)
            .map(|c| (c.key.clone(), c.base_version))
        else {
            return;
        };
        // The change was based on a version this database handed out: if
        // the database now has less, it went back in time (restored without
        // a new epoch). Nothing known of it can be trusted: resync, and let
        // the answer's document replace the one known.
        let now_at = current.as_ref().map_or(0, |doc| doc.version);
        if base > now_at && self.confirms(epoch) {
            self.begin_resync();
        }
        let stale_at = (!self.confirms(epoch)).then_some(at);
        if let Some(doc) = current {
            self.learn(key.clone(), doc.value, doc.version, epoch, stale_at);
        }
        // The newest state of that database known: the answer's, or a later
        // page's.
        let (server, server_version) = match self.docs.get(&key) {
            Some(doc) if self.doc_epoch(doc) == Some(epoch) => (doc.value.clone(), doc.version),
            _ => (None, 0),
        };
        // All writes queued on the key lose together; the latest is the
        // local value.
        let mutations = self.by_key.get(&key).cloned().unwrap_or_default();
        let mut local = None;
        for m in mutations {
            if let Some(change) = self.remove_pending(m) {
                local = change.value;
            }
        }
        if local == server {
            return;
        }
        let (resolution, rewrite) = match &self.options.policy {
            ConflictPolicy::ServerWins => (Resolution::ServerWins, None),
            ConflictPolicy::ClientWins => (Resolution::ClientWins, Some(local.clone())),
            ConflictPolicy::Merge(merge) => {
                let merged = merge(&key, local.as_ref(), server.as_ref());
                let rewrite = (merged != server).then(|| merged.clone());
                (Resolution::Merged(merged), rewrite)
            }
        };
        if let Some(value) = rewrite {
            let change = PendingChange {
                mutation: self.next_mutation(),
                key: key.clone(),
                base_version: server_version,
                value,
            };
            self.put_pending(change);
        }
        self.report(Conflict {
            id: 0,
            key,
            local,
            server,
            server_version,
            resolution,
            cause: ConflictCause::Write,
        });
    }

    /// Remembers the visible value of `key` before the step changes it.
    fn touch(&mut self, key: &str) {
        if !self.out.before.contains_key(key) {
            let before = self.get(key).cloned();
            self.out.before.insert(key.to_owned(), before);
        }
    }

    fn put_doc(&mut self, key: String, doc: StoredDoc) {
        self.touch(&key);
        self.out.batch.docs.insert(key.clone(), Some(doc.clone()));
        self.docs.insert(key, doc);
    }

    fn put_pending(&mut self, change: PendingChange) {
        self.touch(&change.key);
        let list = self.by_key.entry(change.key.clone()).or_default();
        if let Err(at) = list.binary_search(&change.mutation) {
            list.insert(at, change.mutation);
        }
        self.out
            .batch
            .pending
            .insert(change.mutation, Some(change.clone()));
        self.pending.insert(change.mutation, change);
    }

    fn remove_pending(&mut self, mutation: u64) -> Option<PendingChange> {
        let key = self.pending.get(&mutation)?.key.clone();
        self.touch(&key);
        let change = self.pending.remove(&mutation)?;
        if let Some(list) = self.by_key.get_mut(&key) {
            list.retain(|m| *m != mutation);
            if list.is_empty() {
                self.by_key.remove(&key);
            }
        }
        self.out.batch.pending.insert(mutation, None);
        Some(change)
    }

    /// Ends the step: the batch (with the meta state if it changed), the keys
    /// whose visible value changed, the conflicts raised.
    fn finish(&mut self) -> Effects {
        let Out {
            mut batch,
            before,
            conflicts,
        } = mem::take(&mut self.out);
        if self.meta_dirty || (!self.meta_persisted && !batch.is_empty()) {
            batch.meta = Some(self.meta.clone());
            self.meta_dirty = false;
            self.meta_persisted = true;
        }
        let changed = before
            .into_iter()
            .filter(|(key, before)| self.get(key) != before.as_ref())
            .map(|(key, _)| key)
            .collect();
        Effects {
            batch,
            changed,
            conflicts,
        }
    }
}
