//! atomsync's todo demo: a Leptos app whose data lives in `use_synced_atom`
//! groups, persisted in IndexedDB and synced through server functions.

#![forbid(unsafe_code)]

pub mod app;

/// Hydrates the server-rendered page in the browser.
#[cfg(feature = "hydrate")]
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn hydrate() {
    console_error_panic_hook::set_once();
    leptos::mount::hydrate_body(app::App);
}
