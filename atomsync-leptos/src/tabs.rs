//! Many tabs of one app (wasm32 only): one leader tab per group runs the
//! engine, writes the group's state to IndexedDB and syncs; the other tabs
//! (followers) show what it announces over a `BroadcastChannel` and hand
//! their writes to it through IndexedDB.
//!
//! ## Who leads
//!
//! Whoever holds the Web Lock `atomsync:<app>:<group>`; when its tab closes
//! the browser hands the lock to the next waiting tab. Web Locks exist only
//! in secure contexts (https, localhost): on a plain-http origin (an app on a
//! LAN address) leadership is a **lease** in IndexedDB instead (store
//! `leases`): a tab leads while its lease, renewed every
//! [`LEASE_RENEW_MS`], has not passed ([`LEASE_TTL_MS`]); a follower takes a
//! passed (or released) lease. The lease is also a fence: every transaction
//! of the leader's state first checks, inside the transaction, that the tab
//! still holds it, and aborts otherwise, so a tab that was frozen past its
//! lease (a background tab) cannot write over its successor's state; it
//! steps down and hands its unsaved writes over as a follower would. Either
//! way the group has one engine, one client id and one mutation counter at a
//! time: tabs never share mutation numbers or overwrite each other's queue.
//! Without IndexedDB nothing is shared: every tab syncs on its own, in
//! memory, under its own client id.
//!
//! ## Follower writes
//!
//! A follower shows its write at once and puts it in the IndexedDB `outbox`
//! ([`OutboxEntry`](crate::idb_store::OutboxEntry)), with a fingerprint of
//! the value it showed ([`Seen`]), then pokes the leader. The leader applies
//! outbox entries (on a poke, on every round, and right after taking over)
//! with [`Engine::write_based`](atomsync_core::engine::Engine::write_based):
//! a write on a value that changed meanwhile is a reported conflict
//! (`ConflictCause::Concurrent`), never a silent overwrite. The resulting
//! state and the deletion of the entries commit in one transaction, so an
//! entry is applied exactly once whenever any tab closes: a write a
//! follower showed is durable once its outbox entry committed, and no
//! acknowledgement is needed.

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use atomsync_core::engine::{Conflict, Effects, Seen};
use atomsync_core::sexpr::{self, Raw};
use futures::channel::mpsc::UnboundedReceiver;
use serde::{Deserialize, Serialize};
use wasm_bindgen::JsCast;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::prelude::*;

use crate::browser::{now_ms, sleep};
use crate::halt::{Resume, SyncHalt};
use crate::idb_store::OutboxEntry;
use crate::use_synced_atom::Shared;
use leptos::prelude::Set;

/// How long a lease lasts unless renewed (milliseconds).
pub const LEASE_TTL_MS: u64 = 5_000;
/// How often a leader renews its lease, and a follower asks for it.
pub const LEASE_RENEW_MS: u32 = 1_000;
/// A leader stops writing as leader this long before its lease passes.
const LEASE_MARGIN_MS: u64 = 1_000;

/// What tabs tell each other.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum TabMessage {
    /// A follower put writes into the outbox.
    Outbox { group: String },
    /// The leader's visible documents changed.
    Changed {
        group: String,
        docs: Vec<(String, Option<Raw>)>,
        pending: usize,
        online: bool,
        last_synced: Option<i64>,
        /// The leader's unread conflict reports, when they changed.
        conflicts: Option<Vec<Conflict>>,
    },
    /// The leader's sync halted (`Some`) or resumed (`None`).
    Halted {
        group: String,
        halted: Option<SyncHalt>,
    },
    /// A follower asks the leader to resume a halted sync.
    Resume { group: String, why: Resume },
}

impl TabMessage {
    fn group(&self) -> &str {
        match self {
            TabMessage::Outbox { group }
            | TabMessage::Changed { group, .. }
            | TabMessage::Halted { group, .. }
            | TabMessage::Resume { group, .. } => group,
        }
    }
}

/// The channel between the tabs of one app.
pub(crate) struct Tabs {
    channel: web_sys::BroadcastChannel,
    _on_message: Closure<dyn FnMut(web_sys::MessageEvent)>,
    /// Gives a lease up when the page goes away.
    on_pagehide: Option<Closure<dyn FnMut(web_sys::Event)>>,
}

impl Tabs {
    /// Joins the app's channel; messages for `shared`'s group reach it.
    pub(crate) fn open(app: &str, shared: Weak<Shared>) -> Option<Tabs> {
        let shared_for_hide = shared.clone();
        let channel = web_sys::BroadcastChannel::new(&format!("atomsync:{app}")).ok()?;
        let on_message = Closure::<dyn FnMut(web_sys::MessageEvent)>::new(
            move |event: web_sys::MessageEvent| {
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                let Some(text) = event.data().as_string() else {
                    return;
                };
                match sexpr::from_str::<TabMessage>(&text) {
                    Ok(message) if message.group() == shared.group => {
                        shared.on_tab_message(message);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        shared.report_error(format!("unreadable message from another tab: {e}"));
                    }
                }
            },
        );
        channel.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        let on_pagehide = web_sys::window().map(|window| {
            let on_pagehide =
                Closure::<dyn FnMut(web_sys::Event)>::new(move |_event: web_sys::Event| {
                    if let Some(shared) = shared_for_hide.upgrade()
                        && shared.lease_mode.get()
                        && shared.leads_now()
                        && let Some(db) = shared.db.borrow().clone()
                    {
                        db.release_lease(&shared.group);
                    }
                });
            let _ = window
                .add_event_listener_with_callback("pagehide", on_pagehide.as_ref().unchecked_ref());
            on_pagehide
        });
        Some(Tabs {
            channel,
            _on_message: on_message,
            on_pagehide,
        })
    }

    /// Sends a message to the other tabs.
    pub(crate) fn post(&self, message: &TabMessage) {
        if let Ok(text) = sexpr::to_string(message) {
            let _ = self.channel.post_message(&JsValue::from_str(&text));
        }
    }
}

impl Drop for Tabs {
    fn drop(&mut self) {
        self.channel.set_onmessage(None);
        self.channel.close();
        if let (Some(window), Some(on_pagehide)) = (web_sys::window(), &self.on_pagehide) {
            let _ = window.remove_event_listener_with_callback(
                "pagehide",
                on_pagehide.as_ref().unchecked_ref(),
            );
        }
    }
}

/// A held Web Lock; released when dropped (or when the tab closes).
pub(crate) struct LockGuard {
    release: js_sys::Function,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let _ = self.release.call0(&JsValue::NULL);
    }
}

/// The outcome of asking for the group's lock.
pub(crate) enum Lock {
    /// This tab leads.
    Held(LockGuard),
    /// Another tab leads.
    Busy,
    /// No Web Locks API here: every tab leads on its own.
    Unsupported,
}

/// Asks for the lock `name`: at once (`wait` false: `Busy` if another tab
/// holds it), or waiting until it is free.
pub(crate) async fn lock(name: &str, wait: bool) -> Lock {
    let Some(locks) = web_sys::window()
        .map(|w| w.navigator())
        .and_then(|n| js_sys::Reflect::get(&n, &JsValue::from_str("locks")).ok())
        .filter(|l| !l.is_undefined() && !l.is_null())
    else {
        return Lock::Unsupported;
    };
    let Ok(request) = js_sys::Reflect::get(&locks, &JsValue::from_str("request")) else {
        return Lock::Unsupported;
    };
    let Some(request) = request.dyn_ref::<js_sys::Function>() else {
        return Lock::Unsupported;
    };
    let granted: Rc<RefCell<Option<Option<js_sys::Function>>>> = Rc::new(RefCell::new(None));
    let (notify, granted_rx) = futures::channel::oneshot::channel::<()>();
    let notify = RefCell::new(Some(notify));
    let slot = granted.clone();
    let callback = Closure::<dyn FnMut(JsValue) -> js_sys::Promise>::new(move |lock: JsValue| {
        if lock.is_null() {
            *slot.borrow_mut() = Some(None);
            if let Some(n) = notify.borrow_mut().take() {
                let _ = n.send(());
            }
            return js_sys::Promise::resolve(&JsValue::UNDEFINED);
        }
        // Hold the lock until the release function is called.
        let mut release = None;
        let held = js_sys::Promise::new(&mut |resolve, _reject| release = Some(resolve));
        let delivered = notify
            .borrow_mut()
            .take()
            .is_some_and(|n| n.send(()).is_ok());
        if delivered {
            *slot.borrow_mut() = Some(release);
        } else if let Some(release) = release {
            // Nobody waits any more (the atom is gone): give the lock back
            // at once instead of holding it until the tab closes.
            let _ = release.call0(&JsValue::NULL);
        }
        held
    });
    let options = js_sys::Object::new();
    let _ = js_sys::Reflect::set(
        &options,
        &JsValue::from_str("ifAvailable"),
        &JsValue::from_bool(!wait),
    );
    if request
        .call3(
            &locks,
            &JsValue::from_str(name),
            &options,
            callback.as_ref().unchecked_ref(),
        )
        .is_err()
    {
        return Lock::Unsupported;
    }
    // The browser keeps calling into the callback only once; keep it alive.
    callback.forget();
    let _ = granted_rx.await;
    let outcome = granted.borrow_mut().take();
    match outcome {
        Some(Some(release)) => Lock::Held(LockGuard { release }),
        Some(None) => Lock::Busy,
        None => Lock::Unsupported,
    }
}

/// Leads the group whenever this tab can and follows otherwise, until the
/// atom is disposed: loads IndexedDB, takes part in the election (Web Locks,
/// or a lease without them) and runs the sync loop while leading.
pub(crate) async fn run(app: String, weak: Weak<Shared>, mut wakes: UnboundedReceiver<()>) {
    let Some(shared) = weak.upgrade() else { return };
    *shared.tabs.borrow_mut() = Tabs::open(&app, weak.clone());
    let name = format!("atomsync:{app}:{}", shared.group);
    drop(shared);
    let mut leads = match lock(&name, false).await {
        Lock::Held(guard) => {
            let Some(shared) = weak.upgrade() else { return };
            *shared.lock.borrow_mut() = Some(guard);
            true
        }
        Lock::Busy => false,
        Lock::Unsupported => {
            let Some(shared) = weak.upgrade() else { return };
            shared.lease_mode.set(true);
            false
        }
    };
    loop {
        let Some(shared) = weak.upgrade() else { return };
        if !leads {
            // Show what the leader stored, then follow until this tab leads.
            shared.follower.set(true);
            shared.status.leader.set(false);
            crate::sync_loop::load(&app, &shared).await;
            if shared.db.borrow().is_none() {
                // No IndexedDB: nothing is shared between tabs, so this one
                // syncs alone, in memory, under its own client id.
                shared.lease_mode.set(false);
                shared.follower.set(false);
                shared.status.leader.set(true);
                drop(shared);
                crate::sync_loop::run(weak, &mut wakes).await;
                return;
            }
            drop(shared);
            if !wait_to_lead(&name, &weak).await {
                return;
            }
            let Some(again) = weak.upgrade() else { return };
            // Loaded again below, with everything the old leader stored.
            *again.engine.borrow_mut() = None;
            again.seen.borrow_mut().clear();
            again.follower.set(false);
            drop(again);
            continue_as_leader(&app, &weak).await;
        } else {
            drop(shared);
            continue_as_leader(&app, &weak).await;
        }
        // With a lease: renewed while leading, and given up when the atom
        // is disposed (a route change), so that another tab leads at once.
        let lease = weak.upgrade().and_then(|shared| {
            let db = shared.db.borrow().clone();
            db.filter(|_| shared.lease_mode.get())
                .map(|db| (db, shared.group.clone()))
        });
        if lease.is_some() {
            leptos::task::spawn_local(renew(weak.clone()));
        }
        // Returns when the atom is gone, or when this tab stepped down.
        if !crate::sync_loop::run(weak.clone(), &mut wakes).await {
            if let Some((db, group)) = lease {
                db.release_lease(&group);
            }
            return;
        }
        leads = false;
    }
}

/// Loads the group as its leader.
async fn continue_as_leader(app: &str, weak: &Weak<Shared>) {
    let Some(shared) = weak.upgrade() else { return };
    crate::sync_loop::load(app, &shared).await;
}

/// Waits until this tab leads (the Web Lock, or the lease); `false` if the
/// atom was disposed meanwhile.
async fn wait_to_lead(name: &str, weak: &Weak<Shared>) -> bool {
    let Some(lease_mode) = weak.upgrade().map(|s| s.lease_mode.get()) else {
        return false;
    };
    if !lease_mode {
        let held = lock(name, true).await;
        let Some(shared) = weak.upgrade() else {
            return false;
        };
        if let Lock::Held(guard) = held {
            *shared.lock.borrow_mut() = Some(guard);
        }
        return true;
    }
    let mut reported = false;
    loop {
        {
            let Some(shared) = weak.upgrade() else {
                return false;
            };
            let db = shared.db.borrow().clone();
            if let Some(db) = db {
                match db
                    .try_lease(&shared.group, &shared.tab, now_ms(), LEASE_TTL_MS)
                    .await
                {
                    Ok(lease) if lease.owner == shared.tab => {
                        shared.lease.set(Some(lease.until));
                        return true;
                    }
                    Ok(_) => {}
                    Err(e) if !reported => {
                        reported = true;
                        shared.report_error(format!("the group's lease could not be read: {e}"));
                    }
                    Err(_) => {}
                }
            }
        }
        sleep(LEASE_RENEW_MS).await;
    }
}

/// Renews the lease of a leading tab until it steps down or the atom is
/// disposed; another owner found means this tab was frozen past its lease:
/// it steps down.
async fn renew(weak: Weak<Shared>) {
    loop {
        sleep(LEASE_RENEW_MS).await;
        let Some(shared) = weak.upgrade() else { return };
        if shared.follower.get() {
            return;
        }
        let Some(db) = shared.db.borrow().clone() else {
            return;
        };
        match db
            .try_lease(&shared.group, &shared.tab, now_ms(), LEASE_TTL_MS)
            .await
        {
            Ok(lease) if lease.owner == shared.tab => shared.lease.set(Some(lease.until)),
            Ok(_) => {
                shared.step_down();
                return;
            }
            // It passes by itself; the fence keeps the state safe meanwhile.
            Err(e) => shared.report_error(format!("the group's lease could not be renewed: {e}")),
        }
    }
}

impl Shared {
    /// Whether this tab may act as the group's leader now: it is no
    /// follower, and (leadership by lease) its lease has not nearly passed.
    pub(crate) fn leads_now(&self) -> bool {
        if self.follower.get() {
            return false;
        }
        if !self.lease_mode.get() {
            return true;
        }
        self.lease
            .get()
            .is_some_and(|until| now_ms() + LEASE_MARGIN_MS < until)
    }

    /// Stops leading (another tab leads, or the lease is passing): writes
    /// go to the outbox from now on, and the sync loop ends.
    pub(crate) fn step_down(&self) {
        if self.follower.replace(true) {
            return;
        }
        self.lease.set(None);
        self.status.leader.set(false);
        self.wake();
    }

    /// What this follower shows of `key`.
    fn seen_of(&self, key: &str) -> Seen {
        if let Some(seen) = self.seen.borrow().get(key) {
            return *seen;
        }
        self.engine
            .borrow()
            .as_ref()
            .map_or(Seen::of(None), |engine| engine.seen(key))
    }

    /// Hands a follower's writes to the leader: into the outbox (each with
    /// what this tab showed), then a poke. A failed put is reported and the
    /// stored values are shown again.
    pub(crate) fn forward(&self, writes: Vec<(String, Option<Raw>)>) {
        if writes.is_empty() {
            return;
        }
        let Some(db) = self.db.borrow().clone() else {
            // Followers exist only with IndexedDB (see `run`).
            self.report_error(
                "a write could not be handed to the leading tab: IndexedDB is unavailable"
                    .to_owned(),
            );
            return;
        };
        let entry = OutboxEntry {
            writes: writes
                .into_iter()
                .map(|(key, value)| {
                    let seen = self.seen_of(&key);
                    self.seen
                        .borrow_mut()
                        .insert(key.clone(), Seen::of(value.as_ref()));
                    (key, value, seen)
                })
                .collect(),
        };
        let seq = self.outbox_seq.get() + 1;
        self.outbox_seq.set(seq);
        let put = db.outbox_put(&self.group, &self.tab, seq, &entry);
        let me = self.me.borrow().clone();
        leptos::task::spawn_local(async move {
            let result = match put {
                Ok(done) => done.await,
                Err(e) => Err(e),
            };
            let Some(shared) = me.upgrade() else { return };
            match result {
                Ok(()) => {
                    if let Some(tabs) = &*shared.tabs.borrow() {
                        tabs.post(&TabMessage::Outbox {
                            group: shared.group.clone(),
                        });
                    }
                }
                Err(e) => shared.outbox_failed(&db, entry, e).await,
            }
        });
    }

    /// A follower's outbox put failed: says so, and shows the stored values
    /// of its keys again.
    async fn outbox_failed(&self, db: &crate::idb_store::LocalDb, entry: OutboxEntry, e: String) {
        let keys: Vec<String> = entry.writes.into_iter().map(|(key, ..)| key).collect();
        self.report_error(format!(
            "IndexedDB write failed ({e}); {} unsaved change(s) were undone and the stored \
             state is shown again",
            keys.len()
        ));
        let stored = match db.load(&self.group).await {
            Ok((Some(snapshot), _)) => atomsync_core::engine::Engine::restore(snapshot).ok(),
            _ => None,
        };
        let values: Vec<(String, Option<Raw>)> = keys
            .into_iter()
            .map(|key| {
                let value = stored.as_ref().and_then(|e| e.get(&key).cloned());
                (key, value)
            })
            .collect();
        {
            let mut seen = self.seen.borrow_mut();
            for (key, value) in &values {
                seen.insert(key.clone(), Seen::of(value.as_ref()));
            }
        }
        if let Some(publish) = &*self.publish_values.borrow() {
            publish(&values);
        }
    }

    /// As the leader: applies the writes other tabs put in the outbox (see
    /// the module docs); their state and the entries' deletion commit
    /// together.
    pub(crate) async fn drain_outbox(&self) {
        let Some(db) = self.db.borrow().clone() else {
            return;
        };
        let (entries, unreadable) = match db.outbox(&self.group).await {
            Ok(read) => read,
            Err(e) => {
                self.report_error(format!("writes from other tabs could not be read: {e}"));
                return;
            }
        };
        for (key, why) in unreadable {
            if self.bad_outbox.borrow_mut().insert(key.id()) {
                self.report_error(why);
            }
        }
        if entries.is_empty() || !self.leads_now() {
            return;
        }
        let mut effects = Effects::default();
        let mut touched = Vec::new();
        let mut applied = Vec::new();
        let mut refused = Vec::new();
        {
            let mut engine = self.engine.borrow_mut();
            let Some(engine) = engine.as_mut() else {
                return;
            };
            for (id, entry) in entries {
                for (key, value, seen) in entry.writes {
                    match engine.write_based(key.clone(), value, seen) {
                        Ok(step) => effects.merge(step),
                        Err(e) => {
                            refused.push(format!("a write of {key:?} from another tab: {e}"));
                        }
                    }
                    touched.push(key);
                }
                applied.push(id);
            }
        }
        for message in refused {
            self.report_error(message);
        }
        let _committed_later = self.handle_with(effects, true, applied, &touched);
    }

    /// Tells the other tabs what the leader's documents `keys` are now (and
    /// its conflict reports, when `conflicts` changed).
    pub(crate) fn announce(&self, keys: &[String], conflicts: bool) {
        if self.follower.get() {
            return;
        }
        let (Some(tabs), Some(engine)) = (&*self.tabs.borrow(), &*self.engine.borrow()) else {
            return;
        };
        tabs.post(&TabMessage::Changed {
            group: self.group.clone(),
            docs: keys
                .iter()
                .map(|k| (k.clone(), engine.get(k).cloned()))
                .collect(),
            pending: engine.pending_len(),
            online: self.online.get(),
            last_synced: self.last_synced.get(),
            conflicts: conflicts.then(|| engine.conflicts().cloned().collect()),
        });
    }

    /// A message from another tab of the app about this group.
    pub(crate) fn on_tab_message(&self, message: TabMessage) {
        match message {
            TabMessage::Outbox { .. } => {
                if !self.follower.get() {
                    self.wake();
                }
            }
            TabMessage::Changed {
                docs,
                pending,
                online,
                last_synced,
                conflicts,
                ..
            } if self.follower.get() => {
                {
                    let mut seen = self.seen.borrow_mut();
                    for (key, value) in &docs {
                        seen.insert(key.clone(), Seen::of(value.as_ref()));
                    }
                }
                if !docs.is_empty()
                    && let Some(publish) = &*self.publish_values.borrow()
                {
                    publish(&docs);
                }
                self.status.pending.set(pending);
                self.status.online.set(online);
                self.status.last_synced.set(last_synced);
                if let Some(conflicts) = conflicts {
                    self.status.conflicts.set(conflicts);
                }
            }
            TabMessage::Changed { .. } => {}
            TabMessage::Halted { halted, .. } if self.follower.get() => {
                self.status.halted.set(halted);
            }
            TabMessage::Halted { .. } => {}
            TabMessage::Resume { why, .. } => {
                if !self.follower.get() {
                    self.resume(why);
                }
            }
        }
    }
}
