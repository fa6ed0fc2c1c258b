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

use crate::idb_store::{FENCED, LocalDb, OutboxKey};
use crate::use_synced_atom::Shared;

/// Batches merged for one transaction, with the outbox entries they applied.
struct Queued {
    batch: Batch,
    applied: Vec<OutboxKey>,
}

/// Writes a group's batches to IndexedDB one transaction at a time.
#[derive(Default)]
pub(crate) struct Writer {
    inner: Rc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Batches waiting for the transaction in progress, merged.
    queued: RefCell<Option<Queued>>,
    /// The tab's id where leadership is a lease: every transaction is
    /// fenced by it (see [`LocalDb::apply`]).
    fence: RefCell<Option<String>>,
    /// A transaction is being written.
    busy: Cell<bool>,
    /// How many transactions failed so far.
    failures: Cell<u64>,
    /// Woken when nothing is queued or being written.
    waiters: RefCell<Vec<oneshot::Sender<()>>>,
}

impl Writer {
    /// Queues `batch` (and the deletion of the outbox entries it
    /// `applied`) behind the ones already handed over, into `db`, fenced by
    /// `fence` (see [`LocalDb::apply`]). When nothing is being written its
    /// transaction is created at once, so it commits even if the atom is
    /// disposed right after; the batches queued behind it are written too,
    /// atom or not.
    pub(crate) fn queue(
        &self,
        shared: &Rc<Shared>,
        db: Rc<LocalDb>,
        batch: Batch,
        applied: Vec<OutboxKey>,
        fence: Option<String>,
    ) {
        if batch.is_empty() && applied.is_empty() {
            return;
        }
        let inner = &self.inner;
        *inner.fence.borrow_mut() = fence;
        match &mut *inner.queued.borrow_mut() {
            Some(queued) => {
                queued.batch.merge(batch);
                queued.applied.extend(applied);
            }
            slot @ None => *slot = Some(Queued { batch, applied }),
        }
        if inner.busy.replace(true) {
            return;
        }
        let queued = inner.queued.borrow_mut().take().expect("just queued");
        let first = inner.start(&db, &shared.group, &queued);
        leptos::task::spawn_local(drain(
            Rc::clone(inner),
            db,
            shared.group.clone(),
            Rc::downgrade(shared),
            queued,
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
    /// Creates the transaction of `queued`.
    fn start(&self, db: &LocalDb, group: &str, queued: &Queued) -> Started {
        let fence = self.fence.borrow();
        db.apply(group, &queued.batch, &queued.applied, fence.as_deref())
            .map(|f| f.boxed_local())
    }

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
    mut batch: Queued,
    first: Started,
) {
    let mut started = first;
    loop {
        let result = match started {
            Ok(done) => done.await,
            Err(e) => Err(e),
        };
        if let Err(error) = result {
            // The local writes these batches carried, the latest per key
            // (later batches and higher mutation numbers are later).
            let mut changes: Vec<_> = batch.batch.pending.into_values().flatten().collect();
            if let Some(queued) = inner.queued.borrow_mut().take() {
                changes.extend(queued.batch.pending.into_values().flatten());
            }
            changes.sort_by_key(|change| change.mutation);
            let writes: Vec<_> = changes
                .into_iter()
                .map(|change| (change.key, change.value))
                .collect::<std::collections::BTreeMap<_, _>>()
                .into_iter()
                .collect();
            inner.failures.set(inner.failures.get() + 1);
            if let Some(shared) = shared.upgrade() {
                if error == FENCED {
                    // Another tab leads now: this one follows, and hands the
                    // writes it could not store to the leader, based on what
                    // it had stored (a change the leader made since is a
                    // reported conflict, not an overwrite).
                    shared.step_down();
                    restore(&shared, &db, &error, None).await;
                    shared.forward(writes);
                } else {
                    restore(&shared, &db, &error, Some(writes.len())).await;
                }
            }
            // Writes made while restoring (replayed into the restored
            // engine) were queued behind: write them before going idle.
            let Some(next) = inner.queued.borrow_mut().take() else {
                inner.finish();
                return;
            };
            batch = next;
            started = inner.start(&db, &group, &batch);
            continue;
        }
        let Some(next) = inner.queued.borrow_mut().take() else {
            inner.finish();
            return;
        };
        batch = next;
        started = inner.start(&db, &group, &batch);
    }
}

/// Puts the engine back to what IndexedDB holds after a failed transaction;
/// `lost`: how many unsaved writes were undone (`None`: none, they were
/// handed to the leading tab).
async fn restore(shared: &Rc<Shared>, db: &LocalDb, error: &str, lost: Option<usize>) {
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
            shared.report_error(match lost {
                Some(lost) => format!(
                    "IndexedDB write failed ({error}); {lost} unsaved change(s) were undone \
                     and the stored state is shown again"
                ),
                None => format!(
                    "this tab stopped leading the group ({error}); its unsaved changes were \
                     handed to the leading tab"
                ),
            });
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
