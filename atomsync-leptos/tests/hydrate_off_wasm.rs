//! A page that hydrates while atomsync-leptos was built without its
//! `hydrate` feature (the app forgot `"atomsync-leptos/hydrate"`) says so in
//! the console and `status().last_error` as the hook is created, that is
//! before the hydration mismatch it causes.
//!
//! In headless Chromium, built without features (scripts/test.sh):
//! `cargo test -p atomsync-leptos --target wasm32-unknown-unknown --test hydrate_off_wasm`
#![cfg(all(target_arch = "wasm32", not(feature = "hydrate"), not(feature = "ssr")))]

use std::sync::Arc;

use atomsync_leptos::{provide_atomsync, use_synced_atom};
use hydration_context::HydrateSharedContext;
use leptos::prelude::*;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen_test]
fn hydrating_without_the_feature_is_reported_first() {
    let _ = any_spawner::Executor::init_wasm_bindgen();
    // What `leptos::mount::hydrate_body` sets up.
    let owner = Owner::new_root(Some(Arc::new(HydrateSharedContext::new())));
    owner.with(|| {
        provide_atomsync("hydrate-off");
        let todos = use_synced_atom::<String>("todo");
        let error = todos
            .status()
            .last_error
            .get_untracked()
            .unwrap_or_default();
        assert!(
            error.contains("built without its `hydrate` feature")
                && error.contains(r#"hydrate = ["leptos/hydrate", "atomsync-leptos/hydrate""#),
            "{error}"
        );
    });
}

#[wasm_bindgen_test]
fn a_client_rendered_page_is_not_reported() {
    let _ = any_spawner::Executor::init_wasm_bindgen();
    // `mount_to_body` (client-side rendering) has no shared context.
    let owner = Owner::new_root(None);
    owner.with(|| {
        provide_atomsync("hydrate-off-csr");
        let todos = use_synced_atom::<String>("todo");
        assert_eq!(todos.status().last_error.get_untracked(), None);
    });
}
