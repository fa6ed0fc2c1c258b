//! The engine's persistence contract in the browser (wasm32 only): every
//! batch the engine hands out is written to IndexedDB, in order, before
//! anything that depends on it is sent, and a batch that fails puts the
//! engine back to the last committed state.
//!
//! Local writes must show at once, so their batches cannot be awaited where
//! they are made. They go to a [`Writer`] instead: one transaction at a time,
//! later batches merged while one is being written (so a burst of writes is
//! one transaction). The sync loop waits for the writer to be idle before it
//! asks its round for a request ([`Writer::idle`]), so no push carries a
//! change, and no pull starts from a cursor, that IndexedDB does not hold.
//!
//! When a transaction fails (quota, an abort), the batches after it are not
//! written either (they build on it): the engine is dropped at once (writes
//! made meanwhile wait, as before the first load), the group is loaded again
//! from IndexedDB, the signal shows the stored state, and the loss is
//! reported in `status().last_error` and `on_error`: nothing the user saw is
//! dropped silently, and the stored `next_mutation` always covers every
//! number ever sent.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};

use atomsync_core::engine::Batch;
use futures::FutureExt;
use futures::channel::oneshot;
use futures::future::LocalBoxFuture;

use crate::idb_store::LocalDb;
use crate::use_synced_atom::Shared;

/// Writes a group's batches to IndexedDB one transaction at a time.
#[derive(Default)]
pub(crate) struct Writer {
    inner: Rc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Batches waiting for the transaction in progress, merged.
    queued: RefCell<Option<Batch>>,
    /// A transaction is being written.
    busy: Cell<bool>,
    /// How many transactions failed so far.
    failures: Cell<u64>,
    /// Woken when nothing is queued or being written.
    waiters: RefCell<Vec<oneshot::Sender<()>>>,
}

impl Writer {
    /// Queues `batch` behind the ones already handed over, into `db`. When
    /// nothing is being written its transaction is created at once, so it
    /// commits even if the atom is disposed right after; the batches queued
    /// behind it are written too, atom or not.
    pub(crate) fn queue(&self, shared: &Rc<Shared>, db: Rc<LocalDb>, batch: Batch) {
        if batch.is_empty() {
            return;
        }
        let inner = &self.inner;
        match &mut *inner.queued.borrow_mut() {
            Some(queued) => queued.merge(batch),
            slot @ None => *slot = Some(batch),
        }
        if inner.busy.replace(true) {
            return;
        }
        let batch = inner.queued.borrow_mut().take().expect("just queued");
        let first = db.apply(&shared.group, &batch);
        leptos::task::spawn_local(drain(
            Rc::clone(inner),
            db,
            shared.group.clone(),
            Rc::downgrade(shared),
            batch,
            first,
        ));
    }

    /// How many transactions have failed since the atom started.
    pub(crate) fn failures(&self) -> u64 {
        self.inner.failures.get()
    }

    /// Resolves once every batch handed over so far is committed (or has
    /// failed, see [`Writer::failures`]).
    pub(crate) fn idle(&self) -> impl Future<Output = ()> + use<> {
        let wait = if self.inner.busy.get() {
            let (done, wait) = oneshot::channel();
            self.inner.waiters.borrow_mut().push(done);
            Some(wait)
        } else {
            None
        };
        async move {
            if let Some(wait) = wait {
                let _dropped = wait.await;
            }
        }
    }
}

impl Inner {
    fn finish(&self) {
        self.busy.set(false);
        for waiter in self.waiters.borrow_mut().drain(..) {
            let _gone = waiter.send(());
        }
    }
}

/// The transaction of a batch, created.
type Started = Result<LocalBoxFuture<'static, Result<(), String>>, String>;

/// Awaits `first`, then writes the queued batches until none is left.
async fn drain(
    inner: Rc<Inner>,
    db: Rc<LocalDb>,
    group: String,
    shared: Weak<Shared>,
    mut batch: Batch,
    first: Result<impl Future<Output = Result<(), String>> + 'static, String>,
) {
    let mut started: Started = first.map(|f| f.boxed_local());
    loop {
        let result = match started {
            Ok(done) => done.await,
            Err(e) => Err(e),
        };
        if let Err(error) = result {
            let count = |b: &Batch| b.pending.values().filter(|c| c.is_some()).count();
            let lost = count(&batch) + inner.queued.borrow_mut().take().map_or(0, |b| count(&b));
            inner.failures.set(inner.failures.get() + 1);
            if let Some(shared) = shared.upgrade() {
                restore(&shared, &db, &error, lost).await;
            }
            // Writes made while restoring (replayed into the restored
            // engine) were queued behind: write them before going idle.
            let Some(next) = inner.queued.borrow_mut().take() else {
                inner.finish();
                return;
            };
            batch = next;
            started = db.apply(&group, &batch).map(|f| f.boxed_local());
            continue;
        }
        let Some(next) = inner.queued.borrow_mut().take() else {
            inner.finish();
            return;
        };
        batch = next;
        started = db.apply(&group, &batch).map(|f| f.boxed_local());
    }
}

/// Puts the engine back to what IndexedDB holds after a failed transaction.
async fn restore(shared: &Rc<Shared>, db: &LocalDb, error: &str, lost: usize) {
    // Writes made from now on wait for the restored engine.
    let old = shared.engine.borrow_mut().take();
    let options = old.as_ref().map(|engine| engine.options().clone());
    let restored = match db.load(&shared.group).await {
        Ok((Some(snapshot), _)) => atomsync_core::engine::Engine::restore(snapshot)
            .map_err(|e| format!("the stored state is unusable: {e}")),
        // Nothing was ever stored: nothing was ever sent either.
        Ok((None, _)) => old
            .as_ref()
            .map(|engine| engine.client_id().to_owned())
            .ok_or_else(|| "no engine".to_owned())
            .and_then(|id| {
                atomsync_core::engine::Engine::new(shared.group.clone(), id)
                    .map_err(|e| e.to_string())
            }),
        Err(e) => Err(e),
    };
    match restored {
        Ok(engine) => {
            let engine = match options {
                Some(options) => engine.with_options(options),
                None => engine,
            };
            shared.reinstall(engine);
            shared.report_error(format!(
                "IndexedDB write failed ({error}); {lost} unsaved change(s) were undone and \
                 the stored state is shown again"
            ));
        }
        Err(e) => {
            // Keep what memory has, and say that nothing is stored any more.
            if let Some(old) = old {
                *shared.engine.borrow_mut() = Some(old);
            }
            *shared.db.borrow_mut() = None;
            shared.set_persistent(false);
            shared.report_error(format!(
                "IndexedDB write failed ({error}) and could not be read back ({e}); \
                 changes are kept in memory only"
            ));
        }
    }
}
