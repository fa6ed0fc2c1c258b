//! The IndexedDB storage of the hook (wasm32 only), through the `idb` crate.
//!
//! One database per app, `atomsync:<app>`, schema version [`SCHEMA_VERSION`],
//! with four object stores keyed by group: `docs` (`[group, key]`), `pending`
//! (`[group, mutation]`), `conflicts` (`[group, id]`) and `meta` (`group`).
//! Records are S-expression text, so every value keeps its exact type.

use std::future::Future;

use atomsync_core::engine::{Batch, Conflict, Meta, PendingChange, Snapshot, StoredDoc};
use atomsync_core::sexpr;
use idb::{Database, DatabaseEvent, Factory, KeyRange, ObjectStoreParams, Query, TransactionMode};
use wasm_bindgen::JsValue;

/// The schema version of atomsync's IndexedDB databases. A later version
/// upgrades older databases in `on_upgrade_needed`.
pub const SCHEMA_VERSION: u32 = 1;

const DOCS: &str = "docs";
const PENDING: &str = "pending";
const CONFLICTS: &str = "conflicts";
const META: &str = "meta";
const STORES: [&str; 4] = [DOCS, PENDING, CONFLICTS, META];

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
            for name in STORES {
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
    pub fn apply(
        &self,
        group: &str,
        batch: &Batch,
    ) -> Result<impl Future<Output = Result<(), String>> + use<>, String> {
        let tx = self
            .db
            .transaction(&STORES, TransactionMode::ReadWrite)
            .map_err(describe)?;
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
        let done = tx.commit().map_err(describe)?;
        let done = async move {
            match done.await {
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
