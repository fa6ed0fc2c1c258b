//! [`use_synced_atom`]: a Leptos signal over a group's documents, kept in
//! IndexedDB and synced with the server.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};
use std::panic::Location;
use std::rc::Rc;

use atomsync_core::engine::{Conflict, Effects, Engine};
use atomsync_core::sexpr::{self, Raw};
use leptos::prelude::*;
use leptos::reactive::traits::{
    DefinedAt, IsDisposed, Notify, ReadUntracked, Track, UntrackableGuard, Write,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::docs::Docs;
use crate::halt::{Resume, SyncHalt};
use crate::options::{Endpoint, UseSyncedAtomOptions};

/// The bounds of a document type: any serde type that can be cloned and
/// compared. With the `ssr` feature it must also be `Send + Sync`, because
/// server rendering may finish a page on another thread.
#[cfg(not(feature = "ssr"))]
pub trait Document: Serialize + DeserializeOwned + Clone + PartialEq + 'static {}
#[cfg(not(feature = "ssr"))]
impl<T: Serialize + DeserializeOwned + Clone + PartialEq + 'static> Document for T {}

/// The bounds of a document type: any serde type that can be cloned and
/// compared. With the `ssr` feature it must also be `Send + Sync`, because
/// server rendering may finish a page on another thread.
#[cfg(feature = "ssr")]
pub trait Document:
    Serialize + DeserializeOwned + Clone + PartialEq + Send + Sync + 'static
{
}
#[cfg(feature = "ssr")]
impl<T: Serialize + DeserializeOwned + Clone + PartialEq + Send + Sync + 'static> Document for T {}

/// Where the documents of an atom live: thread-local in the browser (any `T`
/// works), thread-safe on the server (rendering may move between threads).
#[cfg(not(feature = "ssr"))]
type DocsStorage = LocalStorage;
#[cfg(feature = "ssr")]
type DocsStorage = SyncStorage;

/// The app-wide atomsync settings provided by [`provide_atomsync`].
#[derive(Debug, Clone)]
pub struct AtomsyncContext {
    /// The app's name: its IndexedDB database is `atomsync:<app>`.
    pub app: String,
    /// The endpoint hooks use unless their options name one.
    pub endpoint: Endpoint,
}

/// Opens atomsync for the app `app` (its IndexedDB database is
/// `atomsync:<app>`), syncing through atomsync's server functions. Call it
/// once near the root of the app, before any [`use_synced_atom`].
pub fn provide_atomsync(app: impl Into<String>) {
    provide_atomsync_with_endpoint(app, Endpoint::ServerFunctions);
}

/// Like [`provide_atomsync`], with another default endpoint (e.g. a
/// standalone server at its base URL: `Endpoint::Url("http://localhost:8090".into())`).
pub fn provide_atomsync_with_endpoint(app: impl Into<String>, endpoint: Endpoint) {
    provide_context(AtomsyncContext {
        app: app.into(),
        endpoint,
    });
}

/// The sync status of a [`SyncedAtom`], as signals.
#[derive(Debug, Clone, Copy)]
pub struct AtomStatus {
    /// The local data (IndexedDB) is loaded. Always `false` during SSR.
    pub ready: ReadSignal<bool>,
    /// This tab runs the group's sync (engine, IndexedDB writes, server
    /// requests). Other tabs of the app forward their writes to it and
    /// mirror its changes; when it closes, one of them takes over.
    pub leader: ReadSignal<bool>,
    /// The data is kept in IndexedDB; `false` if IndexedDB is unavailable or
    /// failed (private modes, quota), in which case it lives in memory only.
    pub persistent: ReadSignal<bool>,
    /// The last request reached the server.
    pub online: ReadSignal<bool>,
    /// A push or pull is under way.
    pub syncing: ReadSignal<bool>,
    /// Local writes the server has not acknowledged yet.
    pub pending: ReadSignal<usize>,
    /// When the last sync with the server succeeded (Unix milliseconds).
    pub last_synced: ReadSignal<Option<i64>>,
    /// The last error (sync or storage), if the latest attempt failed.
    pub last_error: ReadSignal<Option<String>>,
    /// Conflicts reported by the server and not yet dismissed.
    pub conflicts: ReadSignal<Vec<Conflict>>,
    /// Why and since when sync is halted, if it is: the server refused the
    /// credentials or a request, and sending again cannot help until
    /// something changes. Local reads and writes go on working. A new
    /// token, the browser's `online` event, [`SyncedAtom::resume`] or a new
    /// page load resume it, depending on the [`HaltReason`](crate::HaltReason).
    /// Every tab shows the leader's.
    pub halted: ReadSignal<Option<SyncHalt>>,
}

// Parts are only used by the browser's sync loop.
#[cfg_attr(
    not(all(target_arch = "wasm32", not(feature = "ssr"))),
    allow(dead_code)
)]
#[derive(Clone, Copy)]
pub(crate) struct StatusWriters {
    pub(crate) ready: WriteSignal<bool>,
    pub(crate) leader: WriteSignal<bool>,
    pub(crate) persistent: WriteSignal<bool>,
    pub(crate) online: WriteSignal<bool>,
    pub(crate) syncing: WriteSignal<bool>,
    pub(crate) pending: WriteSignal<usize>,
    pub(crate) last_synced: WriteSignal<Option<i64>>,
    pub(crate) last_error: WriteSignal<Option<String>>,
    pub(crate) conflicts: WriteSignal<Vec<Conflict>>,
    pub(crate) halted: WriteSignal<Option<SyncHalt>>,
}

fn status_signals() -> (AtomStatus, StatusWriters) {
    let (ready, set_ready) = signal(false);
    let (leader, set_leader) = signal(false);
    let (persistent, set_persistent) = signal(false);
    let (online, set_online) = signal(false);
    let (syncing, set_syncing) = signal(false);
    let (pending, set_pending) = signal(0);
    let (last_synced, set_last_synced) = signal(None);
    let (last_error, set_last_error) = signal(None);
    let (conflicts, set_conflicts) = signal(Vec::new());
    let (halted, set_halted) = signal(None);
    (
        AtomStatus {
            ready,
            leader,
            persistent,
            online,
            syncing,
            pending,
            last_synced,
            last_error,
            conflicts,
            halted,
        },
        StatusWriters {
            ready: set_ready,
            leader: set_leader,
            persistent: set_persistent,
            online: set_online,
            syncing: set_syncing,
            pending: set_pending,
            last_synced: set_last_synced,
            last_error: set_last_error,
            conflicts: set_conflicts,
            halted: set_halted,
        },
    )
}

/// The outbox entries an engine step applied (see [`crate::tabs`]).
#[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
pub(crate) type Applied = Vec<crate::idb_store::OutboxKey>;
/// No outbox outside the browser: always empty.
#[cfg(not(all(target_arch = "wasm32", not(feature = "ssr"))))]
pub(crate) type Applied = Vec<std::convert::Infallible>;

/// Decodes `(key, value)` pairs into the atom's signal.
#[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
type PublishValues = Box<dyn Fn(&[(String, Option<Raw>)])>;

/// The keys currently in the atom's signal.
type KeysFn = Box<dyn Fn() -> Vec<String>>;

/// Decodes the given keys from the engine into the atom's signal.
type Publish = Box<dyn Fn(&Engine, &[String])>;

/// The state shared by a [`SyncedAtom`] and its sync loop.
#[cfg_attr(
    not(all(target_arch = "wasm32", not(feature = "ssr"))),
    allow(dead_code)
)]
pub(crate) struct Shared {
    pub(crate) group: String,
    pub(crate) engine: RefCell<Option<Engine>>,
    /// The engine's halt as shown, with the token the refused request
    /// carried (see [`crate::halt`]).
    pub(crate) halt: RefCell<Option<(SyncHalt, Option<String>)>>,
    /// Writes made before the local data was loaded, replayed after.
    preload: RefCell<Vec<(String, Option<Raw>)>>,
    pub(crate) status: StatusWriters,
    /// A configuration mistake (see [`Shared::report_config_error`]): it
    /// stays in `last_error` after successful syncs, until a reload.
    config_error: RefCell<Option<String>>,
    pub(crate) options: UseSyncedAtomOptions,
    pub(crate) endpoint: Endpoint,
    #[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
    pub(crate) db: RefCell<Option<Rc<crate::idb_store::LocalDb>>>,
    /// Writes the engine's batches to IndexedDB, in order, one at a time.
    #[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
    pub(crate) writer: crate::persist::Writer,
    /// This state itself, for the tasks it starts.
    #[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
    pub(crate) me: RefCell<std::rc::Weak<Shared>>,
    pub(crate) wake: RefCell<Option<futures::channel::mpsc::UnboundedSender<()>>>,
    /// Decodes the given keys from the engine into the signal.
    publish: RefCell<Option<Publish>>,
    /// The keys currently in the signal.
    rendered_keys: RefCell<Option<KeysFn>>,
    /// The last known online state and sync time (what the status shows).
    pub(crate) online: std::cell::Cell<bool>,
    pub(crate) last_synced: std::cell::Cell<Option<i64>>,
    /// Decodes values announced by the leader tab into the signal.
    #[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
    pub(crate) publish_values: RefCell<Option<PublishValues>>,
    /// Another tab leads this group: writes are forwarded to it.
    #[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
    pub(crate) follower: std::cell::Cell<bool>,
    #[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
    pub(crate) tabs: RefCell<Option<crate::tabs::Tabs>>,
    #[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
    pub(crate) lock: RefCell<Option<crate::tabs::LockGuard>>,
    /// This atom's id among the tabs (the lease owner, the outbox entries'
    /// author).
    #[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
    pub(crate) tab: String,
    /// Leadership is a lease (no Web Locks here): while leading, when it
    /// passes unless renewed (Unix milliseconds).
    #[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
    pub(crate) lease: std::cell::Cell<Option<u64>>,
    /// Leadership is a lease in this browser (no Web Locks).
    #[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
    pub(crate) lease_mode: std::cell::Cell<bool>,
    /// As a follower: what this tab shows of each key, as the leader
    /// announced it or this tab wrote it (keys not here: the loaded state).
    #[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
    pub(crate) seen: RefCell<std::collections::BTreeMap<String, atomsync_core::engine::Seen>>,
    /// As a follower: how many outbox entries this tab wrote.
    #[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
    pub(crate) outbox_seq: std::cell::Cell<u64>,
    /// Outbox records already reported unreadable.
    #[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
    pub(crate) bad_outbox: RefCell<std::collections::BTreeSet<String>>,
}

#[cfg_attr(
    not(all(target_arch = "wasm32", not(feature = "ssr"))),
    allow(dead_code)
)]
impl Shared {
    pub(crate) fn report_error(&self, message: String) {
        if let Some(on_error) = &self.options.on_error {
            on_error(&message);
        }
        self.status.last_error.set(Some(message));
    }

    /// Reports a mistake in the app's setup: in the console (once per page
    /// and message) and in `last_error`, where it stays.
    pub(crate) fn report_config_error(&self, message: String) {
        thread_local! {
            static LOGGED: RefCell<std::collections::BTreeSet<String>> =
                const { RefCell::new(std::collections::BTreeSet::new()) };
        }
        if LOGGED.with(|logged| logged.borrow_mut().insert(message.clone())) {
            leptos::logging::error!("{message}");
        }
        *self.config_error.borrow_mut() = Some(message.clone());
        self.report_error(message);
    }

    #[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
    pub(crate) fn set_persistent(&self, persistent: bool) {
        self.status.persistent.set(persistent);
    }

    pub(crate) fn set_online(&self, online: bool) {
        self.online.set(online);
        self.status.online.set(online);
    }

    pub(crate) fn set_syncing(&self, syncing: bool) {
        self.status.syncing.set(syncing);
    }

    pub(crate) fn synced(&self, now_ms: u64) {
        self.online.set(true);
        self.last_synced.set(Some(now_ms as i64));
        self.status.last_synced.set(Some(now_ms as i64));
        self.status
            .last_error
            .set(self.config_error.borrow().clone());
        self.status.online.set(true);
    }

    pub(crate) fn wake(&self) {
        if let Some(wake) = &*self.wake.borrow() {
            let _ = wake.unbounded_send(());
        }
    }

    /// Shows `halt` (or its end) in the status, and as the leader tells the
    /// other tabs.
    pub(crate) fn set_halt(&self, halt: Option<(SyncHalt, Option<String>)>) {
        let shown = halt.as_ref().map(|(halt, _)| halt.clone());
        *self.halt.borrow_mut() = halt;
        self.status.halted.set(shown.clone());
        #[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
        if !self.follower.get()
            && let Some(tabs) = &*self.tabs.borrow()
        {
            tabs.post(&crate::tabs::TabMessage::Halted {
                group: self.group.clone(),
                halted: shown,
            });
        }
    }

    /// Resumes syncing (see [`crate::halt`]): as a follower, by asking the
    /// leading tab; as the leader, by ending the engine's halt (for
    /// [`Resume::Online`], a credentials halt only) and its backoff, then
    /// syncing at once.
    pub(crate) fn resume(&self, why: Resume) {
        #[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
        if self.follower.get() {
            if let Some(tabs) = &*self.tabs.borrow() {
                tabs.post(&crate::tabs::TabMessage::Resume {
                    group: self.group.clone(),
                    why,
                });
            }
            return;
        }
        let ends = match (why, &*self.halt.borrow()) {
            (Resume::Online, Some((halt, _))) => halt.is_credentials(),
            _ => true,
        };
        if !ends {
            return;
        }
        if let Some(engine) = self.engine.borrow_mut().as_mut() {
            engine.resume();
        }
        if self.halt.borrow().is_some() {
            self.set_halt(None);
        }
        self.wake();
    }

    /// Ends a credentials halt once the token differs from the one the
    /// refused request carried (a `WaitingForToken` halt: once there is a
    /// token).
    pub(crate) fn resume_on_new_token(&self) {
        // The token signal may belong to an owner already cleaned up (the
        // atom's loop outlives it by a step): then there is nothing to do.
        let Some(token) = self.options.token.try_get_untracked() else {
            return;
        };
        let ends = self.halt.borrow().as_ref().is_some_and(|(halt, sent)| {
            halt.is_credentials()
                && *sent != token
                && (token.is_some() || halt.reason != crate::halt::HaltReason::WaitingForToken)
        });
        if ends {
            if let Some(engine) = self.engine.borrow_mut().as_mut() {
                engine.resume();
            }
            self.set_halt(None);
        }
    }

    /// Persists and publishes what an engine step did. Returns a future
    /// that resolves once the batch is durable (or immediately in memory).
    pub(crate) fn handle(&self, effects: Effects) -> impl Future<Output = ()> + use<> {
        self.handle_with(effects, true, Applied::default(), &[])
    }

    /// [`handle`](Self::handle); with `publish_locally` false the signal
    /// already holds the changed values (local writes), so they are only
    /// announced to the other tabs. `applied`: the outbox entries the step
    /// applied, deleted in the same IndexedDB transaction; `touched`: keys
    /// announced to the other tabs even if their value did not change (the
    /// keys of those entries: their authors show their own value until
    /// told).
    #[cfg_attr(
        not(all(target_arch = "wasm32", not(feature = "ssr"))),
        allow(unused_variables)
    )]
    pub(crate) fn handle_with(
        &self,
        effects: Effects,
        publish_locally: bool,
        applied: Applied,
        touched: &[String],
    ) -> impl Future<Output = ()> + use<> {
        let Effects {
            batch,
            changed,
            conflicts,
        } = effects;
        #[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
        let queued = !batch.pending.is_empty();
        let persisted = self.persist(batch, applied);
        if publish_locally
            && !changed.is_empty()
            && let (Some(engine), Some(publish)) = (&*self.engine.borrow(), &*self.publish.borrow())
        {
            publish(engine, &changed);
        }
        // Other tabs mirror the leader's documents and its queue length.
        #[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
        if !changed.is_empty() || queued || !touched.is_empty() || !conflicts.is_empty() {
            let mut keys = changed.clone();
            keys.extend(touched.iter().cloned());
            keys.sort();
            keys.dedup();
            self.announce(&keys, !conflicts.is_empty());
        }
        for conflict in &conflicts {
            if let Some(on_conflict) = &self.options.on_conflict {
                on_conflict(conflict);
            }
        }
        if let Some(engine) = &*self.engine.borrow() {
            self.status.pending.set(engine.pending_len());
            if !conflicts.is_empty() {
                self.status
                    .conflicts
                    .set(engine.conflicts().cloned().collect());
            }
        }
        persisted
    }

    /// Hands `batch` to the writer (see [`crate::persist`]); the future
    /// resolves once every batch handed over so far is committed.
    #[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
    fn persist(
        &self,
        batch: atomsync_core::engine::Batch,
        applied: Applied,
    ) -> impl Future<Output = ()> + use<> {
        // A follower tab never writes the engine's state: the leader does.
        // In memory only (no IndexedDB): nothing to write.
        if !self.follower.get()
            && let Some(me) = self.me.borrow().upgrade()
            && let Some(db) = self.db.borrow().clone()
        {
            let fence = self.lease_mode.get().then(|| self.tab.clone());
            self.writer.queue(&me, db, batch, applied, fence);
        }
        self.writer.idle()
    }

    /// Puts back an engine loaded again after a failed IndexedDB write:
    /// every key the signal shows is decoded again from it (a key only a
    /// lost write had is removed), and writes made meanwhile are replayed.
    #[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
    pub(crate) fn reinstall(&self, engine: Engine) {
        let mut keys: Vec<String> = engine.documents().map(|(k, _)| k.to_owned()).collect();
        if let Some(shown) = &*self.rendered_keys.borrow() {
            keys.extend(shown());
        }
        keys.sort();
        keys.dedup();
        *self.engine.borrow_mut() = Some(engine);
        if self.halt.borrow().is_some() {
            self.set_halt(None);
        }
        self.publish_and_replay(&keys);
        // The sync loop waits for an engine.
        self.wake();
    }

    /// Decodes `keys` from the engine into the signal, replays the writes
    /// made while there was no engine, and updates the queue and conflict
    /// status.
    fn publish_and_replay(&self, keys: &[String]) {
        if let (Some(engine), Some(publish)) = (&*self.engine.borrow(), &*self.publish.borrow()) {
            // Keys written meanwhile keep their local value below.
            publish(engine, keys);
        }
        let early = std::mem::take(&mut *self.preload.borrow_mut());
        // Publish them again: the signal shows the stored values by now.
        self.write_raw(early, true);
        if let Some(engine) = &*self.engine.borrow() {
            self.status.pending.set(engine.pending_len());
            self.status
                .conflicts
                .set(engine.conflicts().cloned().collect());
        }
    }

    #[cfg(not(all(target_arch = "wasm32", not(feature = "ssr"))))]
    fn persist(
        &self,
        _batch: atomsync_core::engine::Batch,
        _applied: Applied,
    ) -> impl Future<Output = ()> + use<> {
        async {}
    }

    /// Installs a restored (or new) engine, replays early writes, publishes
    /// everything and marks the atom ready.
    pub(crate) fn install(&self, engine: Engine) {
        *self.engine.borrow_mut() = Some(engine);
        // A loaded engine is not halted (halts are not stored).
        *self.halt.borrow_mut() = None;
        self.status.halted.set(None);
        let keys: Vec<String> = {
            let engine = self.engine.borrow();
            let engine = engine.as_ref().expect("just installed");
            let mut keys: Vec<String> = engine.documents().map(|(k, _)| k.to_owned()).collect();
            // Server-rendered keys the local data knows better (deleted
            // locally, say) follow the local data; keys it has never seen
            // stay as rendered until the next pull.
            if let Some(known) = &*self.rendered_keys.borrow() {
                keys.extend(
                    known()
                        .into_iter()
                        .filter(|k| engine.confirmed(k).is_some() || engine.is_pending(k)),
                );
            }
            keys.sort();
            keys.dedup();
            keys
        };
        self.publish_and_replay(&keys);
        #[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
        self.status.leader.set(!self.follower.get());
        #[cfg(not(all(target_arch = "wasm32", not(feature = "ssr"))))]
        self.status.leader.set(true);
        self.status.ready.set(true);
    }

    /// Applies local writes to the engine (or queues them until loaded) as
    /// one step: their documents and queue entries reach IndexedDB in one
    /// transaction, however many there are. With `republish` false the
    /// signal is known to hold the written values already (they were encoded
    /// from it), so they are not decoded back into it.
    fn write_raw(&self, writes: Vec<(String, Option<Raw>)>, republish: bool) {
        #[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
        if !self.leads_now() {
            self.forward(writes);
            return;
        }
        let mut effects: Option<Effects> = None;
        let mut refused = Vec::new();
        {
            let mut engine = self.engine.borrow_mut();
            let Some(engine) = engine.as_mut() else {
                self.preload.borrow_mut().extend(writes);
                return;
            };
            for (key, value) in writes {
                if engine.get(&key) == value.as_ref() {
                    continue;
                }
                let result = match value {
                    Some(value) => engine.set(key.clone(), value),
                    None => engine.delete(key.clone()),
                };
                match (result, &mut effects) {
                    (Ok(step), Some(all)) => all.merge(step),
                    (Ok(step), None) => effects = Some(step),
                    (Err(e), _) => {
                        let message = format!("write of {key:?} refused: {e}");
                        refused.push((key, message));
                    }
                }
            }
        }
        if !refused.is_empty() {
            // The signal shows what is stored again: a refused write (too
            // large to push, an invalid key) is reported, never kept as if
            // it were saved.
            let keys: Vec<String> = refused.iter().map(|(key, _)| key.clone()).collect();
            if let (Some(engine), Some(publish)) = (&*self.engine.borrow(), &*self.publish.borrow())
            {
                publish(engine, &keys);
            }
            for (_, message) in refused {
                self.report_error(message);
            }
        }
        let Some(effects) = effects else { return };
        // The writes and their queue entries go to the writer (one
        // IndexedDB transaction for them all, in order); the sync loop
        // waits for it before it sends anything.
        let _written_later = self.handle_with(effects, republish, Applied::default(), &[]);
        self.wake();
    }
}

#[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
fn spawn_detached(f: impl Future<Output = ()> + 'static) {
    leptos::task::spawn_local(f);
}

#[cfg(not(all(target_arch = "wasm32", not(feature = "ssr"))))]
fn spawn_detached(f: impl Future<Output = ()> + 'static) {
    drop(f);
}

/// A Leptos signal over the documents of one group (key → `T`), kept in
/// IndexedDB and synced with the server. Returned by [`use_synced_atom`].
///
/// It reads like an `RwSignal<Docs<T>>`: `get`, `with`, `read`, tracking,
/// and `update`/`set`/`write`, where [`Docs`] derefs to a
/// `BTreeMap<String, T>`. Writes are visible to readers at once, reach
/// IndexedDB together with their pending entry, and are pushed to the server
/// right away. Per-key helpers: [`insert`](Self::insert),
/// [`remove`](Self::remove), [`update_key`](Self::update_key).
pub struct SyncedAtom<T: 'static> {
    docs: RwSignal<Docs<T>, DocsStorage>,
    /// The group's documents as the server had them when it rendered the
    /// page (see [`UseSyncedAtomOptions::server_render`]).
    initial: Option<Resource<InitialDocs>>,
    /// The sync machinery; `None` during server rendering, which does no IO.
    shared: Option<StoredValue<Rc<Shared>, LocalStorage>>,
    group: StoredValue<String>,
    initial_merged: StoredValue<bool>,
    status: AtomStatus,
}

impl<T> Clone for SyncedAtom<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for SyncedAtom<T> {}

impl<T> std::fmt::Debug for SyncedAtom<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncedAtom")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl<T: Document> SyncedAtom<T> {
    /// The atom's sync status, as signals.
    pub fn status(&self) -> AtomStatus {
        self.status
    }

    /// Inserts or replaces the document `key`.
    pub fn insert(&self, key: impl Into<String>, value: T) {
        self.update(|docs| {
            docs.insert(key, value);
        });
    }

    /// Removes the document `key`; returns its value.
    pub fn remove(&self, key: &str) -> Option<T> {
        self.try_update(|docs| docs.remove(key)).flatten()
    }

    /// Changes the document `key` in place, if it exists.
    pub fn update_key(&self, key: &str, f: impl FnOnce(&mut T)) {
        self.update(|docs| {
            if let Some(value) = docs.get_mut(key) {
                f(value);
            }
        });
    }

    /// The group's name.
    pub fn group(&self) -> String {
        self.group.get_value()
    }

    /// Dismisses the reported conflicts.
    pub fn clear_conflicts(&self) {
        let Some(shared) = self.shared else { return };
        shared.with_value(|shared| {
            let effects = shared
                .engine
                .borrow_mut()
                .as_mut()
                .map(|engine| engine.take_conflicts().1);
            if let Some(effects) = effects {
                spawn_detached(shared.handle(effects));
            }
            shared.status.conflicts.set(Vec::new());
        });
    }

    /// Resumes a halted sync (see [`AtomStatus::halted`]) and syncs now,
    /// once the app dealt with the cause (another account, a fixed
    /// document). Works from any tab: a follower asks the leading one. The
    /// backoff after temporary failures is forgotten too. A request the
    /// server still refuses halts again.
    pub fn resume(&self) {
        if let Some(shared) = self.shared {
            shared.with_value(|shared| shared.resume(Resume::All));
        }
    }

    /// Pushes and pulls now instead of at the next tick.
    pub fn sync_now(&self) {
        if let Some(shared) = self.shared {
            shared.with_value(|shared| shared.wake());
        }
    }

    /// Writes the keys a write through the signal touched; `replaced`: the
    /// whole map was replaced, so every key the engine shows counts too
    /// (those absent now are deleted).
    fn commit(&self, mut keys: std::collections::BTreeSet<String>, replaced: bool) {
        let Some(shared) = self.shared.and_then(|s| s.try_get_value()) else {
            return;
        };
        if replaced && let Some(engine) = &*shared.engine.borrow() {
            keys.extend(engine.documents().map(|(key, _)| key.to_owned()));
        }
        if keys.is_empty() {
            return;
        }
        let mut writes = Vec::with_capacity(keys.len());
        let mut unencodable = Vec::new();
        self.docs.with_untracked(|docs| {
            for key in keys {
                match docs.get(&key).map(sexpr::Raw::from_value).transpose() {
                    Ok(value) => writes.push((key, value)),
                    Err(e) => unencodable.push(format!("cannot encode document {key:?}: {e}")),
                }
            }
        });
        // Reported outside the read, so a callback may use the atom.
        for message in unencodable {
            shared.report_error(message);
        }
        shared.write_raw(writes, false);
    }
}

impl<T: Document> DefinedAt for SyncedAtom<T> {
    fn defined_at(&self) -> Option<&'static Location<'static>> {
        self.docs.defined_at()
    }
}

impl<T: Document> IsDisposed for SyncedAtom<T> {
    fn is_disposed(&self) -> bool {
        self.docs.is_disposed()
    }
}

impl<T: Document> Track for SyncedAtom<T> {
    fn track(&self) {
        self.docs.track();
        if let Some(initial) = self.initial {
            initial.track();
        }
    }
}

impl<T: Document> Notify for SyncedAtom<T> {
    fn notify(&self) {
        self.docs.notify();
    }
}

impl<T: Document> ReadUntracked for SyncedAtom<T> {
    type Value = <RwSignal<Docs<T>, DocsStorage> as ReadUntracked>::Value;

    fn try_read_untracked(&self) -> Option<Self::Value> {
        self.merge_initial();
        self.docs.try_read_untracked()
    }
}

impl<T: Document> SyncedAtom<T> {
    /// Brings the server-rendered documents into the map, once, for keys
    /// the map does not hold yet. Reading the resource here registers it
    /// with an enclosing `<Suspense/>`, so the server waits for it and the
    /// browser hydrates from the same data.
    fn merge_initial(&self) {
        let Some(initial) = self.initial else { return };
        if self.initial_merged.try_get_value() != Some(false) {
            return;
        }
        // Only inside <Suspense/>: outside it the server renders without the
        // data, so the browser must not hydrate with it either.
        if use_context::<leptos::reactive::computed::suspense::SuspenseContext>().is_none() {
            return;
        }
        let Some(guard) = initial.try_read_untracked() else {
            return;
        };
        let Some(result) = &*guard else { return };
        self.initial_merged.set_value(true);
        let mut problems = Vec::new();
        match result {
            Ok(list) => self.docs.update_untracked(|docs| {
                for (key, text) in list {
                    if docs.contains_key(key) {
                        continue;
                    }
                    match sexpr::from_str::<T>(text) {
                        Ok(value) => docs.set_quietly(key, Some(value)),
                        Err(e) => problems.push(format!("document {key:?} does not decode: {e}")),
                    }
                }
            }),
            Err(e) => problems.push(format!("server-rendered documents: {e}")),
        }
        if let Some(shared) = self.shared.and_then(|s| s.try_get_value()) {
            for problem in problems {
                shared.report_error(problem);
            }
        }
    }
}

/// The write guard of a [`SyncedAtom`]: when dropped, the documents written
/// through it are persisted, queued for the server and announced.
pub struct AtomWriteGuard<T: Document> {
    atom: SyncedAtom<T>,
    guard: Option<Box<dyn DerefMut<Target = Docs<T>>>>,
    notify: bool,
}

impl<T: Document> Deref for AtomWriteGuard<T> {
    type Target = Docs<T>;
    fn deref(&self) -> &Docs<T> {
        self.guard.as_ref().expect("guard is present until dropped")
    }
}

impl<T: Document> DerefMut for AtomWriteGuard<T> {
    fn deref_mut(&mut self) -> &mut Docs<T> {
        self.guard.as_mut().expect("guard is present until dropped")
    }
}

impl<T: Document> UntrackableGuard for AtomWriteGuard<T> {
    fn untrack(&mut self) {
        self.notify = false;
    }
}

impl<T: Document> Drop for AtomWriteGuard<T> {
    fn drop(&mut self) {
        let (keys, replaced) = match self.guard.as_mut() {
            Some(guard) => guard.take_touched(),
            None => return,
        };
        // Release the signal's lock before reading it back.
        self.guard = None;
        self.atom.commit(keys, replaced);
        if self.notify {
            self.atom.docs.notify();
        }
    }
}

impl<T: Document> Write for SyncedAtom<T> {
    type Value = Docs<T>;

    fn try_write(&self) -> Option<impl UntrackableGuard<Target = Self::Value>> {
        let guard = self.docs.try_write_untracked()?;
        Some(AtomWriteGuard {
            atom: *self,
            guard: Some(Box::new(guard)),
            notify: true,
        })
    }

    fn try_write_untracked(&self) -> Option<impl DerefMut<Target = Self::Value>> {
        let guard = self.docs.try_write_untracked()?;
        Some(AtomWriteGuard {
            atom: *self,
            guard: Some(Box::new(guard)),
            notify: false,
        })
    }
}

/// [`use_synced_atom_with_options`] with default options.
///
/// ## Usage
///
/// ```
/// use atomsync_leptos::{provide_atomsync, use_synced_atom};
/// use leptos::prelude::*;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, Clone, PartialEq)]
/// struct Todo { title: String, done: bool }
///
/// #[component]
/// fn Todos() -> impl IntoView {
///     provide_atomsync("my-app");
///     let todos = use_synced_atom::<Todo>("todo");
///     let add = move |_| todos.insert("milk", Todo { title: "Buy milk".into(), done: false });
///     view! {
///         <button on:click=add>"Add"</button>
///         <ul>
///             {move || todos.with(|docs| docs.values().map(|t| view! { <li>{t.title.clone()}</li> }).collect_view())}
///         </ul>
///         <p>{move || format!("{} pending", todos.status().pending.get())}</p>
///     }
/// }
/// ```
///
/// ## Server-Side Rendering
///
/// During SSR (feature `ssr`) the hook reads the group's current documents
/// through the `atomsync_server::SyncService` the app provided with
/// `provide_sync_service` (feature `ssr`), with the request's
/// credentials (the same authorization as the server functions), once per
/// render. Readers inside a `<Suspense/>` (or `<Transition/>`) wait for
/// them, so the served HTML already lists the documents, and the browser
/// (feature `hydrate`) hydrates from the same data, serialized into the page,
/// without asking again; then it loads IndexedDB and merges pending local
/// writes in. Outside a `<Suspense/>` the server renders an empty map.
/// `ready` is false during SSR. Turn the read off with
/// [`UseSyncedAtomOptions::server_render`]. Without a `SyncService` in
/// context the server log and the browser's `status().last_error` say so.
pub fn use_synced_atom<T: Document>(group: &str) -> SyncedAtom<T> {
    use_synced_atom_with_options(group, UseSyncedAtomOptions::default())
}

/// Decodes stored values into the signal (`None`: the document is gone),
/// notifying readers once; returns what could not be decoded.
fn decode_into<'a, T: Document>(
    docs: RwSignal<Docs<T>, DocsStorage>,
    entries: impl Iterator<Item = (&'a str, Option<&'a Raw>)>,
) -> Vec<String> {
    let mut problems = Vec::new();
    docs.update(|docs| {
        for (key, raw) in entries {
            match raw.map(Raw::to_value::<T>).transpose() {
                Ok(value) => docs.set_quietly(key, value),
                Err(e) => problems.push(format!(
                    "document {key:?} does not decode as {}: {e}",
                    std::any::type_name::<T>()
                )),
            }
        }
    });
    problems
}

/// A synced atom over the documents of `group`. See [`use_synced_atom`].
pub fn use_synced_atom_with_options<T: Document>(
    group: &str,
    options: UseSyncedAtomOptions,
) -> SyncedAtom<T> {
    let context = use_context::<AtomsyncContext>();
    let endpoint = options
        .endpoint
        .clone()
        .or_else(|| context.as_ref().map(|c| c.endpoint.clone()))
        .unwrap_or_default();
    let app = context.map_or_else(|| "atomsync".to_owned(), |c| c.app);
    let docs = RwSignal::new_with_storage(Docs::default().hold());
    let (status, writers) = status_signals();
    let shared = Rc::new(Shared {
        group: group.to_owned(),
        engine: RefCell::new(None),
        halt: RefCell::new(None),
        preload: RefCell::new(Vec::new()),
        status: writers,
        config_error: RefCell::new(None),
        options,
        endpoint,
        #[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
        db: RefCell::new(None),
        #[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
        writer: crate::persist::Writer::default(),
        #[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
        me: RefCell::new(std::rc::Weak::new()),
        wake: RefCell::new(None),
        publish: RefCell::new(None),
        rendered_keys: RefCell::new(None),
        online: std::cell::Cell::new(false),
        last_synced: std::cell::Cell::new(None),
        #[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
        publish_values: RefCell::new(None),
        #[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
        follower: std::cell::Cell::new(false),
        #[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
        tabs: RefCell::new(None),
        #[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
        lock: RefCell::new(None),
        #[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
        tab: crate::browser::random_id(8),
        #[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
        lease: std::cell::Cell::new(None),
        #[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
        lease_mode: std::cell::Cell::new(false),
        #[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
        seen: RefCell::new(std::collections::BTreeMap::new()),
        #[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
        outbox_seq: std::cell::Cell::new(0),
        #[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
        bad_outbox: RefCell::new(std::collections::BTreeSet::new()),
    });
    #[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
    {
        *shared.me.borrow_mut() = Rc::downgrade(&shared);
    }
    let report = {
        let shared = Rc::downgrade(&shared);
        move |problems: Vec<String>| {
            if let Some(shared) = shared.upgrade() {
                for problem in problems {
                    shared.report_error(problem);
                }
            }
        }
    };
    *shared.publish.borrow_mut() = Some(Box::new({
        let report = report.clone();
        move |engine: &Engine, keys: &[String]| {
            report(decode_into(
                docs,
                keys.iter().map(|k| (k.as_str(), engine.get(k))),
            ));
        }
    }));
    #[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
    {
        *shared.publish_values.borrow_mut() =
            Some(Box::new(move |list: &[(String, Option<Raw>)]| {
                report(decode_into(
                    docs,
                    list.iter().map(|(k, v)| (k.as_str(), v.as_ref())),
                ));
            }));
    }
    *shared.rendered_keys.borrow_mut() = Some(Box::new(move || {
        docs.with_untracked(|docs| docs.keys().cloned().collect())
    }));
    #[cfg(all(target_arch = "wasm32", not(feature = "hydrate"), not(feature = "ssr")))]
    if hydrating() {
        shared.report_config_error(HYDRATE_OFF.to_owned());
    }
    let initial = shared
        .options
        .server_render
        .then(|| initial_docs(group))
        .flatten();
    let atom = SyncedAtom {
        docs,
        initial,
        shared: (!cfg!(feature = "ssr")).then(|| StoredValue::new_local(shared.clone())),
        group: StoredValue::new(group.to_owned()),
        initial_merged: StoredValue::new(false),
        status,
    };
    start(&app, shared);
    atom
}

/// What the console and `last_error` say when a page hydrates with this
/// crate built without `hydrate`: the server rendered the group's documents,
/// which this build cannot read back, so hydration is about to fail.
#[cfg(all(target_arch = "wasm32", not(feature = "hydrate"), not(feature = "ssr")))]
const HYDRATE_OFF: &str = "atomsync-leptos: this page is hydrating, but atomsync-leptos was \
    built without its `hydrate` feature, so it cannot read the server-rendered documents and \
    hydration will fail. Turn it on from your app's `hydrate` feature: hydrate = \
    [\"leptos/hydrate\", \"atomsync-leptos/hydrate\", ...] (see the README, \"Add atomsync to \
    your Leptos app\")";

/// Whether the page is being hydrated (leptos's `hydrate` is on in the app).
#[cfg(all(target_arch = "wasm32", not(feature = "hydrate"), not(feature = "ssr")))]
fn hydrating() -> bool {
    Owner::current_shared_context().is_some_and(|context| context.during_hydration())
}

/// The group's documents, `(key, S-expression text)`, as the server had them
/// when it rendered the page.
pub type InitialDocs = Result<Vec<(String, String)>, String>;

/// On the server: the group's current documents read through the same
/// `SyncService` the server functions use, with the request's credentials
/// (so the same authorization applies). Serialized into the page, so the
/// browser hydrates from the same data without asking again.
#[cfg(feature = "ssr")]
fn initial_docs(group: &str) -> Option<Resource<InitialDocs>> {
    use atomsync_core::protocol::PullRequest;
    use atomsync_server::{Credentials, SyncService};
    let service = use_context::<SyncService>();
    let parts = use_context::<http::request::Parts>();
    let group = group.to_owned();
    Some(Resource::new_blocking(
        || (),
        move |()| {
            let (service, parts, group) = (service.clone(), parts.clone(), group.clone());
            async move {
                let Some(service) = service else {
                    // Shown in the browser's `status().last_error` after
                    // hydration. Not logged: a fallback page (404) rendered
                    // without the context would log it wrongly; the server
                    // functions log it once, at the browser's first sync.
                    return Err(crate::server_fns::server::NO_SERVICE.to_owned());
                };
                let credentials =
                    parts.map_or_else(Credentials::none, |p| Credentials::from_parts(&p));
                let mut docs = Vec::new();
                let mut since = None;
                loop {
                    let page = service
                        .pull(
                            &credentials,
                            PullRequest {
                                group: group.clone(),
                                since,
                                limit: None,
                            },
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                    docs.extend(
                        page.documents
                            .into_iter()
                            .filter_map(|d| d.value.map(|v| (d.key, v.into_string()))),
                    );
                    if !page.more {
                        break;
                    }
                    since = Some(page.cursor);
                }
                Ok(docs)
            }
        },
    ))
}

/// In the browser the resource is hydrated from the server's data (it does
/// not run); rendered on the client alone it holds nothing.
#[cfg(all(not(feature = "ssr"), feature = "hydrate"))]
fn initial_docs(_group: &str) -> Option<Resource<InitialDocs>> {
    Some(Resource::new_blocking(|| (), |()| async { Ok(Vec::new()) }))
}

/// Without SSR or hydration (native tests, client-only apps): nothing.
#[cfg(not(any(feature = "ssr", feature = "hydrate")))]
fn initial_docs(_group: &str) -> Option<Resource<InitialDocs>> {
    None
}

/// SSR: no IO besides the initial documents, nothing to start.
#[cfg(feature = "ssr")]
fn start(_app: &str, _shared: Rc<Shared>) {}

/// Native, without SSR (tests, native apps using the signal alone): an
/// in-memory engine, no server.
#[cfg(all(not(feature = "ssr"), not(target_arch = "wasm32")))]
fn start(app: &str, shared: Rc<Shared>) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let client = format!("{app}-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    match Engine::new(shared.group.clone(), client) {
        Ok(engine) => {
            let options = atomsync_core::engine::EngineOptions::default()
                .policy(shared.options.policy.clone());
            let engine = engine.with_options(options);
            shared.install(engine);
        }
        Err(e) => shared.report_error(e.to_string()),
    }
}

/// Browser: load IndexedDB, then run the sync loop. The loop holds the
/// shared state weakly: when the owner of the atom is cleaned up, the state
/// (and with it the wake channel and the IndexedDB connection) is dropped and
/// the loop ends.
#[cfg(all(not(feature = "ssr"), target_arch = "wasm32"))]
fn start(app: &str, shared: Rc<Shared>) {
    let (wake, wakes) = futures::channel::mpsc::unbounded();
    *shared.wake.borrow_mut() = Some(wake);
    let weak = Rc::downgrade(&shared);
    // A new token ends a credentials halt: the loop compares it with the
    // refused one, woken at once.
    let token = shared.options.token;
    let woken = weak.clone();
    Effect::watch(
        move || token.get(),
        move |_, _, _| {
            if let Some(shared) = woken.upgrade() {
                shared.wake();
            }
        },
        false,
    );
    drop(shared);
    leptos::task::spawn_local(crate::tabs::run(app.to_owned(), weak, wakes));
}
