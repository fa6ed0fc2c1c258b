//! Without IndexedDB (private modes, some embedded browsers) the hook keeps
//! working in memory and says so in its status. A test file of its own: it
//! hides `indexedDB` from the whole page.

#![cfg(target_arch = "wasm32")]

use atomsync_leptos::browser::sleep;
use atomsync_leptos::{
    Endpoint, UseSyncedAtomOptions, provide_atomsync, use_synced_atom_with_options,
};
use leptos::prelude::*;
use wasm_bindgen::JsValue;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen_test]
async fn without_indexeddb_the_atom_works_in_memory_and_says_so() {
    // Shadow window.indexedDB, as browsers without it look.
    let window = web_sys::window().unwrap();
    let descriptor = js_sys::Object::new();
    js_sys::Reflect::set(&descriptor, &"value".into(), &JsValue::UNDEFINED).unwrap();
    js_sys::Reflect::set(&descriptor, &"configurable".into(), &JsValue::TRUE).unwrap();
    js_sys::Object::define_property(&window, &"indexedDB".into(), &descriptor);

    let _ = any_spawner::Executor::init_wasm_bindgen();
    let owner = Owner::new_root(None);
    owner.set();
    provide_atomsync("no-idb");
    let atom = use_synced_atom_with_options::<String>(
        "todo",
        UseSyncedAtomOptions::default().endpoint(Endpoint::None),
    );
    atom.insert("early", "written before loading".to_owned());
    while !atom.status().ready.get_untracked() {
        sleep(5).await;
    }
    let status = atom.status();
    assert!(!status.persistent.get_untracked(), "not persistent");
    let error = status.last_error.get_untracked().unwrap_or_default();
    assert!(error.contains("IndexedDB"), "says why: {error:?}");
    // Nothing is dropped: the early write and later ones are there and queued.
    atom.insert("later", "in memory".to_owned());
    assert_eq!(atom.with_untracked(|d| d.len()), 2);
    assert_eq!(status.pending.get_untracked(), 2);
    owner.cleanup();
}
