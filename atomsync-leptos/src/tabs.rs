//! Many tabs of one app (wasm32 only): one leader tab per group runs the
//! engine, writes IndexedDB and syncs; the other tabs forward their writes to
//! it and mirror its changes, over a `BroadcastChannel`.
//!
//! The leader is whoever holds the Web Lock `atomsync:<app>:<group>`; when its
//! tab closes the browser hands the lock to the next waiting tab, which loads
//! the state the old leader persisted (pending writes included) and takes
//! over. Without the Web Locks API every tab leads (the old behaviour).

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use atomsync_core::sexpr::{self, Raw};
use serde::{Deserialize, Serialize};
use wasm_bindgen::JsCast;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::prelude::*;

use crate::use_synced_atom::Shared;

/// What tabs tell each other.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum TabMessage {
    /// A follower's writes, for the leader to apply.
    Write {
        group: String,
        id: u64,
        writes: Vec<(String, Option<Raw>)>,
    },
    /// The leader applied the follower's writes `id`.
    Ack { group: String, id: u64 },
    /// The leader's visible documents changed.
    Changed {
        group: String,
        docs: Vec<(String, Option<Raw>)>,
        pending: usize,
        online: bool,
        last_synced: Option<i64>,
    },
}

impl TabMessage {
    fn group(&self) -> &str {
        match self {
            TabMessage::Write { group, .. }
            | TabMessage::Ack { group, .. }
            | TabMessage::Changed { group, .. } => group,
        }
    }
}

/// The channel between the tabs of one app.
pub(crate) struct Tabs {
    channel: web_sys::BroadcastChannel,
    _on_message: Closure<dyn FnMut(web_sys::MessageEvent)>,
}

impl Tabs {
    /// Joins the app's channel; messages for `shared`'s group reach it.
    pub(crate) fn open(app: &str, shared: Weak<Shared>) -> Option<Tabs> {
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
        Some(Tabs {
            channel,
            _on_message: on_message,
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
