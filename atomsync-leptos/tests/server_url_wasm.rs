//! The browser hook takes a standalone server's base URL, like the native
//! client: given the URL of a route (`…/sync`), it says what to write in
//! `status().last_error` and sends nothing, instead of a 404 per request.

#![cfg(target_arch = "wasm32")]

use atomsync_leptos::browser::sleep;
use atomsync_leptos::{UseSyncedAtomOptions, provide_atomsync, use_synced_atom_with_options};
use leptos::prelude::*;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen_test]
async fn a_sync_url_is_refused_with_the_base_url_to_write() {
    let _ = any_spawner::Executor::init_wasm_bindgen();
    let owner = Owner::new_root(None);
    owner.set();
    provide_atomsync("server-url");
    // No server listens there: nothing may be sent anyway.
    let atom = use_synced_atom_with_options::<String>(
        "todo",
        UseSyncedAtomOptions::default().server("http://127.0.0.1:9/sync"),
    );
    atom.insert("k", "kept locally".to_owned());
    for _ in 0..400 {
        if atom.status().last_error.get_untracked().is_some() {
            break;
        }
        sleep(5).await;
    }
    let error = atom.status().last_error.get_untracked().unwrap_or_default();
    assert!(
        error.contains(r#".server("http://127.0.0.1:9")"#) && error.contains("without `/sync`"),
        "{error:?}"
    );
    // Nothing was sent: the loop did not run, so it never went online or
    // failed a request (whose error would replace this one).
    sleep(300).await;
    assert_eq!(atom.status().last_error.get_untracked(), Some(error));
    assert!(!atom.status().online.get_untracked());
    assert_eq!(atom.status().pending.get_untracked(), 1);
    owner.cleanup();
}
