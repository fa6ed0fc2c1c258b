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
use crate::options::{Endpoint, UseSyncedAtomOptions};

/// The bounds of a document type: any serde type that can be cloned and
/// compared.
pub trait Document: Serialize + DeserializeOwned + Clone + PartialEq + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + PartialEq + 'static> Document for T {}

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
/// standalone server: `Endpoint::Url("http://localhost:8090/sync".into())`).
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
}

// Parts are only used by the browser's sync loop.
#[cfg_attr(
    not(all(target_arch = "wasm32", not(feature = "ssr"))),
    allow(dead_code)
)]
#[derive(Clone, Copy)]
struct StatusWriters {
    ready: WriteSignal<bool>,
    persistent: WriteSignal<bool>,
    online: WriteSignal<bool>,
    syncing: WriteSignal<bool>,
    pending: WriteSignal<usize>,
    last_synced: WriteSignal<Option<i64>>,
    last_error: WriteSignal<Option<String>>,
    conflicts: WriteSignal<Vec<Conflict>>,
}

fn status_signals() -> (AtomStatus, StatusWriters) {
    let (ready, set_ready) = signal(false);
    let (persistent, set_persistent) = signal(false);
    let (online, set_online) = signal(false);
    let (syncing, set_syncing) = signal(false);
    let (pending, set_pending) = signal(0);
    let (last_synced, set_last_synced) = signal(None);
    let (last_error, set_last_error) = signal(None);
    let (conflicts, set_conflicts) = signal(Vec::new());
    (
        AtomStatus {
            ready,
            persistent,
            online,
            syncing,
            pending,
            last_synced,
            last_error,
            conflicts,
        },
        StatusWriters {
            ready: set_ready,
            persistent: set_persistent,
            online: set_online,
            syncing: set_syncing,
            pending: set_pending,
            last_synced: set_last_synced,
            last_error: set_last_error,
            conflicts: set_conflicts,
        },
    )
}

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
    /// Writes made before the local data was loaded, replayed after.
    preload: RefCell<Vec<(String, Option<Raw>)>>,
    status: StatusWriters,
    pub(crate) options: UseSyncedAtomOptions,
    pub(crate) endpoint: Endpoint,
    #[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
    pub(crate) db: RefCell<Option<Rc<crate::idb_store::LocalDb>>>,
    pub(crate) wake: RefCell<Option<futures::channel::mpsc::UnboundedSender<()>>>,
    /// Decodes the given keys from the engine into the signal.
    publish: RefCell<Option<Publish>>,
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

    #[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
    pub(crate) fn set_persistent(&self, persistent: bool) {
        self.status.persistent.set(persistent);
    }

    pub(crate) fn set_online(&self, online: bool) {
        self.status.online.set(online);
    }

    pub(crate) fn set_syncing(&self, syncing: bool) {
        self.status.syncing.set(syncing);
    }

    pub(crate) fn synced(&self, now_ms: u64) {
        self.status.last_synced.set(Some(now_ms as i64));
        self.status.last_error.set(None);
        self.status.online.set(true);
    }

    pub(crate) fn wake(&self) {
        if let Some(wake) = &*self.wake.borrow() {
            let _ = wake.unbounded_send(());
        }
    }

    /// Persists and publishes what an engine step did. Returns a future
    /// that resolves once the batch is durable (or immediately in memory).
    pub(crate) fn handle(&self, effects: Effects) -> impl Future<Output = ()> + use<> {
        let Effects {
            batch,
            changed,
            conflicts,
        } = effects;
        let persisted = self.persist(&batch);
        if !changed.is_empty()
            && let (Some(engine), Some(publish)) = (&*self.engine.borrow(), &*self.publish.borrow())
        {
            publish(engine, &changed);
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

    #[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
    fn persist(&self, batch: &atomsync_core::engine::Batch) -> impl Future<Output = ()> + use<> {
        let db = self.db.borrow().clone();
        let pending = match (&db, batch.is_empty()) {
            (Some(db), false) => Some(db.apply(&self.group, batch)),
            _ => None,
        };
        let status = self.status;
        let on_error = self.options.on_error.clone();
        let fail = move |message: String| {
            let message =
                format!("IndexedDB write failed ({message}); changes are kept in memory only");
            if let Some(on_error) = &on_error {
                on_error(&message);
            }
            status.persistent.set(false);
            status.last_error.set(Some(message));
        };
        let immediate = match &pending {
            Some(Err(e)) => Some(e.clone()),
            _ => None,
        };
        if let Some(e) = immediate {
            fail(e);
        }
        async move {
            if let Some(Ok(done)) = pending
                && let Err(e) = done.await
            {
                fail(e);
            }
        }
    }

    #[cfg(not(all(target_arch = "wasm32", not(feature = "ssr"))))]
    fn persist(&self, _batch: &atomsync_core::engine::Batch) -> impl Future<Output = ()> + use<> {
        async {}
    }

    /// Installs a restored (or new) engine, replays early writes, publishes
    /// everything and marks the atom ready.
    pub(crate) fn install(&self, engine: Engine) {
        *self.engine.borrow_mut() = Some(engine);
        let keys: Vec<String> = {
            let engine = self.engine.borrow();
            let engine = engine.as_ref().expect("just installed");
            engine.documents().map(|(k, _)| k.to_owned()).collect()
        };
        if let (Some(engine), Some(publish)) = (&*self.engine.borrow(), &*self.publish.borrow()) {
            // Keys written before loading keep their local value below.
            publish(engine, &keys);
        }
        let early = std::mem::take(&mut *self.preload.borrow_mut());
        for (key, value) in early {
            self.write_raw(key, value);
        }
        if let Some(engine) = &*self.engine.borrow() {
            self.status.pending.set(engine.pending_len());
            self.status
                .conflicts
                .set(engine.conflicts().cloned().collect());
        }
        self.status.ready.set(true);
    }

    /// Applies one local write to the engine (or queues it until loaded).
    fn write_raw(&self, key: String, value: Option<Raw>) {
        let result = {
            let mut engine = self.engine.borrow_mut();
            let Some(engine) = engine.as_mut() else {
                self.preload.borrow_mut().push((key, value));
                return;
            };
            if engine.get(&key) == value.as_ref() {
                return;
            }
            match value {
                Some(value) => engine.set(key.clone(), value),
                None => engine.delete(key.clone()),
            }
        };
        let effects = match result {
            Ok(effects) => effects,
            Err(e) => {
                self.report_error(format!("write of {key:?} refused: {e}"));
                return;
            }
        };
        // The write and its queue entry go to IndexedDB in one transaction,
        // created now; its completion is awaited in the background.
        let done = self.handle(effects);
        spawn_detached(done);
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
    docs: RwSignal<Docs<T>, LocalStorage>,
    shared: StoredValue<Rc<Shared>, LocalStorage>,
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
        self.shared.with_value(|s| s.group.clone())
    }

    /// Dismisses the reported conflicts.
    pub fn clear_conflicts(&self) {
        self.shared.with_value(|shared| {
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

    /// Pushes and pulls now instead of at the next tick.
    pub fn sync_now(&self) {
        self.shared.with_value(|shared| shared.wake());
    }

    fn commit(&self, keys: std::collections::BTreeSet<String>) {
        if keys.is_empty() {
            return;
        }
        let Some(shared) = self.shared.try_get_value() else {
            return;
        };
        for key in keys {
            let value = self
                .docs
                .with_untracked(|docs| docs.get(&key).map(sexpr::Raw::from_value));
            match value.transpose() {
                Ok(value) => shared.write_raw(key, value),
                Err(e) => shared.report_error(format!("cannot encode document {key:?}: {e}")),
            }
        }
    }
}

impl<T> DefinedAt for SyncedAtom<T> {
    fn defined_at(&self) -> Option<&'static Location<'static>> {
        self.docs.defined_at()
    }
}

impl<T> IsDisposed for SyncedAtom<T> {
    fn is_disposed(&self) -> bool {
        self.docs.is_disposed()
    }
}

impl<T> Track for SyncedAtom<T> {
    fn track(&self) {
        self.docs.track();
    }
}

impl<T> Notify for SyncedAtom<T> {
    fn notify(&self) {
        self.docs.notify();
    }
}

impl<T: 'static> ReadUntracked for SyncedAtom<T> {
    type Value = <RwSignal<Docs<T>, LocalStorage> as ReadUntracked>::Value;

    fn try_read_untracked(&self) -> Option<Self::Value> {
        self.docs.try_read_untracked()
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
        let keys = match self.guard.as_mut() {
            Some(guard) => guard.take_touched(),
            None => return,
        };
        // Release the signal's lock before reading it back.
        self.guard = None;
        self.atom.commit(keys);
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
/// During SSR the hook does no IO: it renders an empty map with `ready`
/// false, and the browser loads IndexedDB after hydration, so the page
/// hydrates without mismatch.
pub fn use_synced_atom<T: Document>(group: &str) -> SyncedAtom<T> {
    use_synced_atom_with_options(group, UseSyncedAtomOptions::default())
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
    let docs = RwSignal::new_local(Docs::default());
    let (status, writers) = status_signals();
    let shared = Rc::new(Shared {
        group: group.to_owned(),
        engine: RefCell::new(None),
        preload: RefCell::new(Vec::new()),
        status: writers,
        options,
        endpoint,
        #[cfg(all(target_arch = "wasm32", not(feature = "ssr")))]
        db: RefCell::new(None),
        wake: RefCell::new(None),
        publish: RefCell::new(None),
    });
    *shared.publish.borrow_mut() = Some(Box::new({
        let shared = Rc::downgrade(&shared);
        move |engine: &Engine, keys: &[String]| {
            let mut problems = Vec::new();
            docs.update(|docs| {
                for key in keys {
                    match engine.get(key).map(Raw::to_value::<T>).transpose() {
                        Ok(value) => docs.set_quietly(key, value),
                        Err(e) => problems.push(format!(
                            "document {key:?} does not decode as {}: {e}",
                            std::any::type_name::<T>()
                        )),
                    }
                }
            });
            if let Some(shared) = shared.upgrade() {
                for problem in problems {
                    shared.report_error(problem);
                }
            }
        }
    }));
    let atom = SyncedAtom {
        docs,
        shared: StoredValue::new_local(shared.clone()),
        status,
    };
    start(&app, shared);
    atom
}

/// SSR: no IO, nothing to start.
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
    drop(shared);
    let app = app.to_owned();
    leptos::task::spawn_local(async move {
        let Some(shared) = weak.upgrade() else { return };
        crate::sync_loop::load(&app, &shared).await;
        drop(shared);
        crate::sync_loop::run(weak, wakes).await;
    });
}
