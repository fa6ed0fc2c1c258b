//! The server functions' browser client against error answers that are not
//! server_fn's own: a host's or proxy's plain 413, the guard's S-expression
//! refusal (issue #9, finding 7: "through server functions a host's body
//! limit surfaces as a server-function error, retried forever").
//!
//! `window.fetch` is replaced for the length of each test by a function that
//! answers as such a host would; headless Chromium via
//! wasm-bindgen-test-runner (see scripts/test.sh).

#![cfg(target_arch = "wasm32")]

use atomsync_core::protocol::{Change, Cursor, ErrorBody, ErrorCode, PullResponse, PushRequest};
use atomsync_core::sexpr::{self, Raw};
use atomsync_leptos::browser::{now_ms, random_id, sleep};
use atomsync_leptos::server_fns::{Reply, ServerFnFailure, push};
use atomsync_leptos::{UseSyncedAtomOptions, provide_atomsync, use_synced_atom_with_options};
use leptos::prelude::*;
use wasm_bindgen::JsValue;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

/// Makes `window.fetch` answer a request whose URL contains `/push` with
/// `push_status` and `push_body`, and any other with 200 and `other_body`,
/// until [`restore_fetch`].
fn answer_fetch(push_status: u16, push_body: &str, other_body: &str) {
    let install = js_sys::Function::new_with_args(
        "status, pushBody, otherBody",
        "window.__realFetch = window.__realFetch || window.fetch;
         window.__pushes = 0;
         window.fetch = (input) => {
           const url = typeof input === 'string' ? input : input.url;
           if (url.includes('/push')) {
             window.__pushes += 1;
             return Promise.resolve(new Response(pushBody, { status }));
           }
           return Promise.resolve(new Response(otherBody, { status: 200,
             headers: { 'Content-Type': 'application/x-sexpr' } }));
         };",
    );
    install
        .call3(
            &JsValue::NULL,
            &JsValue::from(push_status),
            &JsValue::from_str(push_body),
            &JsValue::from_str(other_body),
        )
        .unwrap();
}

fn pushes_seen() -> u32 {
    js_sys::Reflect::get(&js_sys::global(), &JsValue::from_str("__pushes"))
        .ok()
        .and_then(|v| v.as_f64())
        .unwrap_or(0.0) as u32
}

fn restore_fetch() {
    js_sys::Function::new_no_args("if (window.__realFetch) { window.fetch = window.__realFetch; }")
        .call0(&JsValue::NULL)
        .unwrap();
}

fn a_push() -> PushRequest {
    PushRequest {
        group: "todo".to_owned(),
        client_id: "device/todo".to_owned(),
        low_water: None,
        epoch: None,
        changes: vec![Change {
            mutation: 1,
            key: "k".to_owned(),
            base_version: 0,
            value: Some(Raw::from_text("\"v\"").unwrap()),
        }],
    }
}

#[wasm_bindgen_test]
async fn a_hosts_plain_413_keeps_its_status() {
    answer_fetch(413, "length limit exceeded", "");
    let answer = push(None, a_push()).await;
    restore_fetch();
    assert_eq!(answer.unwrap_err(), ServerFnFailure::Status(413));
}

#[wasm_bindgen_test]
async fn the_guards_refusal_keeps_its_body() {
    let body = ErrorBody {
        error: ErrorCode::Forbidden,
        message: "a request from another site".to_owned(),
    };
    answer_fetch(403, &sexpr::to_string(&body).unwrap(), "");
    let answer = push(None, a_push()).await;
    restore_fetch();
    assert_eq!(
        answer.unwrap_err(),
        ServerFnFailure::Refused { status: 403, body }
    );
}

/// The hook on the server functions behind a host that takes no push body
/// at all: the document is refused alone and reported, not retried for ever.
#[wasm_bindgen_test]
async fn a_hosts_413_refuses_the_document_instead_of_retrying_for_ever() {
    let empty: Reply<PullResponse> = Ok(PullResponse {
        documents: Vec::new(),
        cursor: Cursor::new("e1".to_owned(), 0),
        more: false,
    });
    answer_fetch(
        413,
        "<html><h1>413 Request Entity Too Large</h1></html>",
        &sexpr::to_string(&empty).unwrap(),
    );
    let app = format!("test-{}", random_id(6));
    let _ = any_spawner::Executor::init_wasm_bindgen();
    let errors = std::rc::Rc::new(std::cell::RefCell::new(Vec::<String>::new()));
    let owner = Owner::new_root(None);
    owner.set();
    provide_atomsync(app);
    let atom = {
        let errors = errors.clone();
        use_synced_atom_with_options::<String>(
            "todo",
            UseSyncedAtomOptions::default()
                .poll_interval_ms(50)
                .on_error(move |e| errors.borrow_mut().push(e.to_owned())),
        )
    };
    let deadline = now_ms() + 8_000;
    while !atom.status().ready.get_untracked() {
        assert!(now_ms() < deadline, "the atom never got ready");
        sleep(10).await;
    }
    atom.insert("note", "too big for this host".to_owned());
    while atom.status().pending.get_untracked() > 0 {
        if now_ms() > deadline {
            restore_fetch();
            panic!(
                "the write is still pending after {} pushes: {:?}",
                pushes_seen(),
                errors.borrow()
            );
        }
        sleep(10).await;
    }
    let pushes = pushes_seen();
    restore_fetch();
    assert!(
        errors
            .borrow()
            .iter()
            .any(|e| e.contains("\"note\"") && e.contains("refused")),
        "{:?}",
        errors.borrow()
    );
    assert!(atom.with_untracked(|d| !d.contains_key("note")));
    assert!(pushes >= 1, "nothing was pushed");
    owner.cleanup();
}
