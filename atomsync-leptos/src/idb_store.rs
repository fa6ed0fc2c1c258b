//! The IndexedDB storage of the hook (wasm32 only), through the `idb` crate.
//!
//! One database per app, `atomsync:<app>`, schema version [`SCHEMA_VERSION`],
//! with four object stores keyed by group that hold the leader tab's engine
//! state: `docs` (`[group, key]`), `pending` (`[group, mutation]`),
//! `conflicts` (`[group, id]`) and `meta` (`group`); and two that the tabs
//! share (version 2): `outbox` (`[group, time, tab, seq]`), the writes
//! follower tabs made, waiting for the leader (see [`OutboxEntry`]), and
//! `leases` (`group`), who leads where the Web Locks API is missing (see
//! `crate::tabs`). Records are S-expression text, so every value keeps its
//! exact type.

use std::future::Future;

use atomsync_core::engine::{Batch, Conflict, Meta, PendingChange, Seen, Snapshot, StoredDoc};
use atomsync_core::sexpr;
use atomsync_core::sexpr::Raw;
use idb::{Database, DatabaseEvent, Factory, KeyRange, ObjectStoreParams, Query, TransactionMode};
use serde::{Deserialize, Serialize};
use wasm_bindgen::JsValue;

/// The schema version of atomsync's IndexedDB databases. A later version
/// upgrades older databases in `on_upgrade_needed`.
pub const SCHEMA_VERSION: u32 = 2;

const DOCS: &str = "docs";
const PENDING: &str = "pending";
const CONFLICTS: &str = "conflicts";
const META: &str = "meta";
const OUTBOX: &str = "outbox";
const LEASES: &str = "leases";
/// The engine's state.
const STORES: [&str; 4] = [DOCS, PENDING, CONFLICTS, META];
/// What a leader's transaction touches: its state, the outbox entries it
/// applied, and (fenced) the lease.
const LEADER_STORES: [&str; 6] = [DOCS, PENDING, CONFLICTS, META, OUTBOX, LEASES];

/// Writes a follower tab made, in one signal write, for the leader tab to
/// apply with [`Engine::write_based`](atomsync_core::engine::Engine::write_based):
/// each is `(key, value, what the follower showed)` (`None`: a delete).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// The writes, in order.
    pub writes: Vec<(String, Option<Raw>, Seen)>,
}

/// Who leads a group where the Web Locks API is missing, and until when
/// (Unix milliseconds); see `crate::tabs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// The leading tab's id.
    pub owner: String,
    /// The lease ends then unless renewed.
    pub until: u64,
}

/// An outbox entry's IndexedDB key (opaque to the caller).
#[derive(Debug, Clone)]
pub struct OutboxKey(JsValue);

impl OutboxKey {
    /// The key as text, to tell entries apart.
    pub fn id(&self) -> String {
        js_sys::JSON::stringify(&self.0)
            .ok()
            .and_then(|text| text.as_string())
            .unwrap_or_default()
    }
}

/// The error of a leader's transaction whose lease another tab holds now.
pub const FENCED: &str = "another tab leads this group now (its lease passed)";

/// An open atomsync IndexedDB database.
#[derive(Debug)]
pub struct LocalDb {
    db: Database,
}

fn describe(e: impl std::fmt::Debug) -> String {
    format!("{e:?}")
}

fn pair(group: &str, second: JsValue) -> JsValue {
    let array = js_sys::Array::new();
    array.push(&JsValue::from_str(group));
    array.push(&second);
    array.into()
}

fn group_range(group: &str) -> Result<Query, String> {
    let lower = js_sys::Array::of1(&JsValue::from_str(group));
    // An empty array sorts after every string and number key.
    let upper = pair(group, js_sys::Array::new().into());
    KeyRange::bound(&lower.into(), &upper, None, None)
        .map(Query::KeyRange)
        .map_err(describe)
}

/// A record's S-expression text, or why it is unusable.
fn record_text(value: &JsValue) -> Result<String, String> {
    value
        .as_string()
        .ok_or_else(|| "an IndexedDB record is not S-expression text".to_owned())
}

impl LocalDb {
    /// Opens (creating or upgrading) the database of `app`.
    pub async fn open(app: &str) -> Result<LocalDb, String> {
        let factory = Factory::new().map_err(describe)?;
        let mut request = factory
            .open(&format!("atomsync:{app}"), Some(SCHEMA_VERSION))
            .map_err(describe)?;
        request.on_upgrade_needed(|event| {
            let Ok(db) = event.database() else { return };
            let existing = db.store_names();
            for name in LEADER_STORES {
                if !existing.iter().any(|n| n == name) {
                    let _ = db.create_object_store(name, ObjectStoreParams::new());
                }
            }
        });
        let db = request.await.map_err(describe)?;
        Ok(LocalDb { db })
    }

    /// Loads a group's state. Records that cannot be read are skipped and
    /// reported (never deleted), so nothing is lost to a bad record.
    pub async fn load(&self, group: &str) -> Result<(Option<Snapshot>, Vec<String>), String> {
        let tx = self
            .db
            .transaction(&STORES, TransactionMode::ReadOnly)
            .map_err(describe)?;
        let mut problems = Vec::new();
        let meta_store = tx.object_store(META).map_err(describe)?;
        let meta = meta_store
            .get(JsValue::from_str(group))
            .map_err(describe)?
            .await
            .map_err(describe)?;
        let Some(meta) = meta else {
            return Ok((None, problems));
        };
        let meta: Meta = match record_text(&meta).and_then(|t| {
            sexpr::from_str(&t).map_err(|e| format!("stored meta of group {group}: {e}"))
        }) {
            Ok(meta) => meta,
            Err(e) => return Err(e),
        };
        let mut snapshot = Snapshot::new(meta);
        let mut read = async |store: &str| -> Result<Vec<String>, String> {
            let values = tx
                .object_store(store)
                .map_err(describe)?
                .get_all(Some(group_range(group)?), None)
                .map_err(describe)?
                .await
                .map_err(describe)?;
            Ok(values
                .iter()
                .filter_map(|v| match record_text(v) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        problems.push(e);
                        None
                    }
                })
                .collect())
        };
        let docs = read(DOCS).await?;
        let pending = read(PENDING).await?;
        let conflicts = read(CONFLICTS).await?;
        for text in docs {
            match sexpr::from_str::<(String, StoredDoc)>(&text) {
                Ok((key, doc)) => {
                    snapshot.docs.insert(key, doc);
                }
                Err(e) => problems.push(format!("unreadable stored document: {e}")),
            }
        }
        for text in pending {
            match sexpr::from_str::<PendingChange>(&text) {
                Ok(change) => {
                    snapshot.pending.insert(change.mutation, change);
                }
                Err(e) => problems.push(format!("unreadable pending change: {e}")),
            }
        }
        for text in conflicts {
            match sexpr::from_str::<Conflict>(&text) {
                Ok(conflict) => {
                    snapshot.conflicts.insert(conflict.id, conflict);
                }
                Err(e) => problems.push(format!("unreadable conflict report: {e}")),
            }
        }
        Ok((Some(snapshot), problems))
    }

    /// Writes a batch in one readwrite transaction. The transaction is
    /// created before this returns, so batches commit in call order; the
    /// future resolves when it has committed.
    ///
    /// `applied`: outbox entries the batch applied, deleted in the same
    /// transaction. `fence`: the tab's id where leadership is a lease; the
    /// transaction then commits only if that tab still holds the group's
    /// lease, and fails with [`FENCED`] otherwise.
    pub fn apply(
        &self,
        group: &str,
        batch: &Batch,
        applied: &[OutboxKey],
        fence: Option<&str>,
    ) -> Result<impl Future<Output = Result<(), String>> + use<>, String> {
        let tx = self
            .db
            .transaction(&LEADER_STORES, TransactionMode::ReadWrite)
            .map_err(describe)?;
        // Asked first, so it is answered before any write below.
        let lease = match fence {
            Some(owner) => {
                let request = tx
                    .object_store(LEASES)
                    .map_err(describe)?
                    .get(JsValue::from_str(group))
                    .map_err(describe)?;
                Some((request, owner.to_owned()))
            }
            None => None,
        };
        let put = |store: &str, key: JsValue, text: Option<String>| -> Result<(), String> {
            let store = tx.object_store(store).map_err(describe)?;
            match text {
                Some(text) => {
                    store
                        .put(&JsValue::from_str(&text), Some(&key))
                        .map_err(describe)?;
                }
                None => {
                    store.delete(key).map_err(describe)?;
                }
            }
            Ok(())
        };
        let encode = |v: &dyn erased::Encode| v.encode().map_err(|e| e.to_string());
        let result = (|| -> Result<(), String> {
            if let Some(meta) = &batch.meta {
                put(META, JsValue::from_str(group), Some(encode(meta)?))?;
            }
            for (key, doc) in &batch.docs {
                let text = match doc {
                    Some(doc) => Some(encode(&(key, doc))?),
                    None => None,
                };
                put(DOCS, pair(group, JsValue::from_str(key)), text)?;
            }
            for (mutation, change) in &batch.pending {
                let text = match change {
                    Some(change) => Some(encode(change)?),
                    None => None,
                };
                put(
                    PENDING,
                    pair(group, JsValue::from_f64(*mutation as f64)),
                    text,
                )?;
            }
            for (id, conflict) in &batch.conflicts {
                let text = match conflict {
                    Some(conflict) => Some(encode(conflict)?),
                    None => None,
                };
                put(CONFLICTS, pair(group, JsValue::from_f64(*id as f64)), text)?;
            }
            for OutboxKey(key) in applied {
                put(OUTBOX, key.clone(), None)?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            let _ = tx.abort();
            return Err(e);
        }
        #[cfg(feature = "fault-injection")]
        if crate::testing::take_commit_failure() {
            let _ = tx.abort();
            return Ok(futures::future::Either::Left(async {
                Err("the transaction was aborted (injected)".to_owned())
            }));
        }
        // Unfenced, the transaction is committed now (while it is active);
        // fenced, once the lease read (asked before every write) says this
        // tab still leads, from that read's success event, before any write
        // ran, or it is aborted (which undoes the writes in any case).
        let commit = match lease {
            None => Commit::Now(tx.commit().map_err(describe)?),
            Some((request, owner)) => Commit::Fenced(tx, request, owner),
        };
        let done = async move {
            let tx = match commit {
                Commit::Now(tx) => tx,
                Commit::Fenced(tx, request, owner) => {
                    let held = match request.await {
                        Ok(held) => held,
                        Err(e) => {
                            let _ = tx.abort();
                            return Err(describe(e));
                        }
                    };
                    let leads = held
                        .as_ref()
                        .and_then(JsValue::as_string)
                        .and_then(|t| sexpr::from_str::<Lease>(&t).ok())
                        .is_some_and(|lease| lease.owner == owner);
                    if !leads {
                        let _ = tx.abort();
                        return Err(FENCED.to_owned());
                    }
                    tx.commit().map_err(describe)?
                }
            };
            match tx.await {
                Ok(r) if r.is_committed() => Ok(()),
                Ok(_) => Err("the IndexedDB transaction was aborted".to_owned()),
                Err(e) => Err(describe(e)),
            }
        };
        #[cfg(feature = "fault-injection")]
        let done = futures::future::Either::Right(done);
        Ok(done)
    }
}

impl LocalDb {
    /// Puts a follower's writes into the outbox of `group`, under a key that
    /// sorts after the tab's earlier entries (`tab`, `seq`: the tab's id and
    /// its entry counter). Resolves once committed.
    pub fn outbox_put(
        &self,
        group: &str,
        tab: &str,
        seq: u64,
        entry: &OutboxEntry,
    ) -> Result<impl Future<Output = Result<(), String>> + use<>, String> {
        let text = sexpr::to_string(entry).map_err(|e| e.to_string())?;
        let key = js_sys::Array::new();
        key.push(&JsValue::from_str(group));
        key.push(&JsValue::from_f64(crate::browser::now_ms() as f64));
        key.push(&JsValue::from_str(tab));
        key.push(&JsValue::from_f64(seq as f64));
        let tx = self
            .db
            .transaction(&[OUTBOX], TransactionMode::ReadWrite)
            .map_err(describe)?;
        tx.object_store(OUTBOX)
            .map_err(describe)?
            .put(&JsValue::from_str(&text), Some(&key.into()))
            .map_err(describe)?;
        #[cfg(feature = "fault-injection")]
        if crate::testing::take_commit_failure() {
            let _ = tx.abort();
            return Ok(futures::future::Either::Left(async {
                Err("the transaction was aborted (injected)".to_owned())
            }));
        }
        let tx = tx.commit().map_err(describe)?;
        let done = async move {
            match tx.await {
                Ok(r) if r.is_committed() => Ok(()),
                Ok(_) => Err("the IndexedDB transaction was aborted".to_owned()),
                Err(e) => Err(describe(e)),
            }
        };
        #[cfg(feature = "fault-injection")]
        let done = futures::future::Either::Right(done);
        Ok(done)
    }

    /// The outbox entries of `group`, oldest first, and the records that
    /// cannot be read (with why; they are kept, not deleted).
    pub async fn outbox(
        &self,
        group: &str,
    ) -> Result<(Vec<(OutboxKey, OutboxEntry)>, Vec<(OutboxKey, String)>), String> {
        let tx = self
            .db
            .transaction(&[OUTBOX], TransactionMode::ReadOnly)
            .map_err(describe)?;
        let store = tx.object_store(OUTBOX).map_err(describe)?;
        let keys = store
            .get_all_keys(Some(group_range(group)?), None)
            .map_err(describe)?
            .await
            .map_err(describe)?;
        let values = store
            .get_all(Some(group_range(group)?), None)
            .map_err(describe)?
            .await
            .map_err(describe)?;
        let mut entries = Vec::new();
        let mut unreadable = Vec::new();
        for (key, value) in keys.into_iter().zip(values) {
            match record_text(&value).and_then(|t| {
                sexpr::from_str::<OutboxEntry>(&t)
                    .map_err(|e| format!("unreadable write from another tab: {e}"))
            }) {
                Ok(entry) => entries.push((OutboxKey(key), entry)),
                Err(e) => unreadable.push((OutboxKey(key), e)),
            }
        }
        Ok((entries, unreadable))
    }

    /// Takes (or renews) the lease of `group` for the tab `owner` until
    /// `now + ttl` if it is free, passed, or already `owner`'s; returns
    /// the lease as it is after the transaction.
    pub async fn try_lease(
        &self,
        group: &str,
        owner: &str,
        now: u64,
        ttl: u64,
    ) -> Result<Lease, String> {
        let tx = self
            .db
            .transaction(&[LEASES], TransactionMode::ReadWrite)
            .map_err(describe)?;
        let store = tx.object_store(LEASES).map_err(describe)?;
        let held = store
            .get(JsValue::from_str(group))
            .map_err(describe)?
            .await
            .map_err(describe)?
            .and_then(|v| v.as_string())
            .and_then(|t| sexpr::from_str::<Lease>(&t).ok());
        let lease = match held {
            Some(lease) if lease.owner != owner && lease.until > now => return Ok(lease),
            _ => Lease {
                owner: owner.to_owned(),
                until: now + ttl,
            },
        };
        let text = sexpr::to_string(&lease).map_err(|e| e.to_string())?;
        store
            .put(&JsValue::from_str(&text), Some(&JsValue::from_str(group)))
            .map_err(describe)?;
        match tx.commit().map_err(describe)?.await {
            Ok(r) if r.is_committed() => Ok(lease),
            Ok(_) => Err("the IndexedDB transaction was aborted".to_owned()),
            Err(e) => Err(describe(e)),
        }
    }

    /// Gives the lease of `group` up (a closing leader whose lease has not
    /// passed, so no other tab can hold it), so that another tab takes over
    /// at once instead of when it would pass. Best effort: the delete is
    /// issued now and commits if the page lives long enough.
    pub fn release_lease(&self, group: &str) {
        if let Ok(tx) = self.db.transaction(&[LEASES], TransactionMode::ReadWrite)
            && let Ok(store) = tx.object_store(LEASES)
        {
            let _ = store.delete(JsValue::from_str(group));
        }
    }
}

/// How a leader's transaction commits.
enum Commit {
    /// Committing already.
    Now(idb::Transaction),
    /// Once the lease read says that the tab (its id) still leads.
    Fenced(idb::Transaction, idb::request::GetStoreRequest, String),
}

impl Drop for LocalDb {
    fn drop(&mut self) {
        self.db.close();
    }
}

mod erased {
    /// Object-safe S-expression encoding.
    pub trait Encode {
        fn encode(&self) -> Result<String, atomsync_core::sexpr::Error>;
    }

    impl<T: serde::Serialize> Encode for T {
        fn encode(&self) -> Result<String, atomsync_core::sexpr::Error> {
            atomsync_core::sexpr::to_string(self)
        }
    }
}
