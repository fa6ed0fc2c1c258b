//! Feature combinations that cannot work, refused at compile time with the
//! fix. The file stands alone (no `use`), so a test compiles it by itself
//! with each combination.
//!
//! What is not visible here is checked elsewhere: leptos's `ssr` without this
//! crate's (in `server_fns`, where `#[server]` reveals it), and a page that
//! hydrates while this crate was built without `hydrate` (at run time, in the
//! browser console and `status().last_error`, before hydration fails).

#[cfg(all(feature = "ssr", feature = "hydrate"))]
compile_error!(
    "atomsync-leptos: the `ssr` and `hydrate` features are both on in one build. `ssr` is \
     for the server build and `hydrate` for the browser's: turn each on from your app's \
     feature of the same name, ssr = [\"leptos/ssr\", \"atomsync-leptos/ssr\", ...] and \
     hydrate = [\"leptos/hydrate\", \"atomsync-leptos/hydrate\", ...], and build them apart \
     (cargo-leptos: bin-features = [\"ssr\"], lib-features = [\"hydrate\"])"
);
