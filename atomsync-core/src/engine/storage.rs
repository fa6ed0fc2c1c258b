//! Persistence as data: what the engine keeps durable, the [`Batch`]es that
//! change it and the [`Storage`] trait adapters implement.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::Conflict;
use crate::protocol::{Change, Cursor};
use crate::sexpr::Raw;

/// The last server state of a document the engine knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredDoc {
    /// The server's value, or `None` for a deleted document (a tombstone).
    pub value: Option<Raw>,
    /// The server's version of the document.
    pub version: u64,
    /// `None`: confirmed in the database (epoch) of the engine's cursor.
    /// `Some(tag)`: not confirmed by a pull from the beginning yet (after a
    /// cursor reset or before the first full pull). The tag is `EPOCH.SEQ`
    /// (learnt from that database by an answer whose cursor was `SEQ`; kept
    /// when the pull ends in that database before `SEQ`), `EPOCH` (written by
    /// an older version: dropped when the pull ends without it), or `reset:EPOCH` (known before a reset,
    /// from that database: whatever the full pull says replaces it, and it is
    /// dropped, and reported if the database changed, when the pull lacks
    /// it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
}

impl StoredDoc {
    /// Whether the document still waits for confirmation by a full pull.
    pub fn is_stale(&self) -> bool {
        self.epoch.is_some()
    }
}

/// A local write waiting for the server's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingChange {
    /// The change's number: strictly increasing per engine, never reused.
    pub mutation: u64,
    /// The document's key.
    pub key: String,
    /// The server version the write was made on (0 for a key never seen on
    /// the server). For a change queued behind another change of the same key
    /// it is provisional until that change is answered.
    pub base_version: u64,
    /// The new value, or `None` to delete.
    pub value: Option<Raw>,
}

impl PendingChange {
    /// The change as it travels in a [`PushRequest`](crate::protocol::PushRequest).
    pub fn to_change(&self) -> Change {
        Change {
            mutation: self.mutation,
            key: self.key.clone(),
            base_version: self.base_version,
            value: self.value.clone(),
        }
    }
}

/// The engine's scalar state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The group the engine syncs.
    pub group: String,
    /// The engine's client id (unique per engine, see [`Engine::new`](super::Engine::new)).
    pub client_id: String,
    /// Where the next pull continues; `None` pulls from the beginning. Its
    /// epoch is the database the confirmed documents come from.
    pub cursor: Option<Cursor>,
    /// A pull from the beginning (the first sync, or after a cursor reset)
    /// has not reached the end yet.
    pub resyncing: bool,
    /// The next mutation number to hand out.
    pub next_mutation: u64,
    /// The next conflict id to hand out.
    pub next_conflict: u64,
}

/// Changes to the durable state, to be applied atomically.
///
/// Each map entry replaces the stored item with that key (`Some`) or removes
/// it (`None`); `meta`, when present, replaces the stored [`Meta`]. Applying
/// the batches of an engine in order to its last [`Snapshot`] yields the
/// engine's current [`Engine::snapshot`](super::Engine::snapshot).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Batch {
    /// The new scalar state, if it changed.
    pub meta: Option<Meta>,
    /// Server documents by key.
    pub docs: BTreeMap<String, Option<StoredDoc>>,
    /// Pending changes by mutation number.
    pub pending: BTreeMap<u64, Option<PendingChange>>,
    /// Unread conflict reports by id.
    pub conflicts: BTreeMap<u64, Option<Conflict>>,
}

impl Batch {
    /// Whether the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.meta.is_none()
            && self.docs.is_empty()
            && self.pending.is_empty()
            && self.conflicts.is_empty()
    }

    /// Folds `later` (a batch handed out after this one) into this batch, so
    /// that applying the result equals applying both in order: `later`'s
    /// entries and meta replace this batch's. An adapter can so write several
    /// engine steps (a bulk local write, say) in one transaction.
    pub fn merge(&mut self, later: Batch) {
        if later.meta.is_some() {
            self.meta = later.meta;
        }
        self.docs.extend(later.docs);
        self.pending.extend(later.pending);
        self.conflicts.extend(later.conflicts);
    }
}

/// The whole durable state of an engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The scalar state.
    pub meta: Meta,
    /// Server documents by key.
    pub docs: BTreeMap<String, StoredDoc>,
    /// Pending changes by mutation number (queue order).
    pub pending: BTreeMap<u64, PendingChange>,
    /// Unread conflict reports by id.
    pub conflicts: BTreeMap<u64, Conflict>,
}

impl Snapshot {
    /// An empty state with the given scalar state.
    pub fn new(meta: Meta) -> Self {
        Snapshot {
            meta,
            docs: BTreeMap::new(),
            pending: BTreeMap::new(),
            conflicts: BTreeMap::new(),
        }
    }

    /// Applies a batch.
    pub fn apply(&mut self, batch: &Batch) {
        if let Some(meta) = &batch.meta {
            self.meta = meta.clone();
        }
        apply_map(&mut self.docs, &batch.docs);
        apply_map(&mut self.pending, &batch.pending);
        apply_map(&mut self.conflicts, &batch.conflicts);
    }
}

fn apply_map<K: Ord + Clone, V: Clone>(target: &mut BTreeMap<K, V>, ops: &BTreeMap<K, Option<V>>) {
    for (key, op) in ops {
        match op {
            Some(value) => {
                target.insert(key.clone(), value.clone());
            }
            None => {
                target.remove(key);
            }
        }
    }
}

/// Where an engine's state is kept (one storage per engine).
///
/// The engine never calls it: the adapter driving the engine applies every
/// [`Batch`] the engine hands out, atomically and in order, before acting on
/// anything else (sending a request, reporting a write as done). On start it
/// [`load`](Storage::load)s the snapshot and gives it to
/// [`Engine::restore`](super::Engine::restore).
pub trait Storage {
    /// Why loading or applying failed.
    type Error;

    /// The stored state, or `None` if nothing was stored yet.
    fn load(&mut self) -> Result<Option<Snapshot>, Self::Error>;

    /// Applies a batch atomically: all of it or nothing.
    fn apply(&mut self, batch: &Batch) -> Result<(), Self::Error>;
}

/// A [`Storage`] in memory, for tests, simulations and apps that need no
/// durability.
#[derive(Debug, Clone, Default)]
pub struct MemoryStorage {
    snapshot: Option<Snapshot>,
}

impl MemoryStorage {
    /// The stored state.
    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref()
    }
}

/// The error of [`MemoryStorage`]: a first batch without [`Meta`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingMeta;

impl fmt::Display for MissingMeta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the first batch applied to an empty storage must carry the meta state")
    }
}

impl std::error::Error for MissingMeta {}

impl Storage for MemoryStorage {
    type Error = MissingMeta;

    fn load(&mut self) -> Result<Option<Snapshot>, MissingMeta> {
        Ok(self.snapshot.clone())
    }

    fn apply(&mut self, batch: &Batch) -> Result<(), MissingMeta> {
        match (&mut self.snapshot, &batch.meta) {
            (Some(snapshot), _) => snapshot.apply(batch),
            (None, Some(meta)) => {
                let mut snapshot = Snapshot::new(meta.clone());
                snapshot.apply(batch);
                self.snapshot = Some(snapshot);
            }
            (None, None) if batch.is_empty() => {}
            (None, None) => return Err(MissingMeta),
        }
        Ok(())
    }
}
