#!/usr/bin/env bash
# Runs atomsync's whole test suite, installing what is missing first
# (wasm32 target, cargo-leptos, wasm-bindgen-cli, Chromium + chromedriver).
# Idempotent. This is the README's test command and what .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."
ATOMSYNC_NEED_BROWSER=1 source scripts/setup.sh

echo "== fmt"; cargo fmt --all -- --check
cargo fmt --manifest-path examples/starter/Cargo.toml -- --check
echo "== clippy"; cargo clippy --workspace --all-targets -- -D warnings
cargo clippy -p atomsync-leptos --features hydrate,fault-injection --target wasm32-unknown-unknown --all-targets -- -D warnings
cargo clippy -p atomsync-leptos --features ssr --all-targets -- -D warnings
cargo clippy -p demo --features ssr --all-targets -- -D warnings
cargo clippy -p demo --features hydrate --target wasm32-unknown-unknown -- -D warnings
(cd examples/starter &&
  cargo clippy --features ssr -- -D warnings &&
  cargo clippy --features hydrate --target wasm32-unknown-unknown -- -D warnings)
echo "== rustdoc (broken or private intra-doc links are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
RUSTDOCFLAGS="-D warnings" cargo doc -p atomsync-leptos --features ssr --no-deps --quiet
RUSTDOCFLAGS="-D warnings" cargo doc -p atomsync-leptos --features hydrate,fault-injection --target wasm32-unknown-unknown --no-deps --quiet
echo "== demo build (cargo leptos build: server + wasm)"; cargo leptos build
echo "== starter build (examples/starter, an app outside the workspace, as the README prints it)"
(cd examples/starter && cargo leptos build)
echo "== atomsync-server's library builds without the binary's dependencies"
cargo build -p atomsync-server --no-default-features --lib
if cargo tree -p atomsync-server --no-default-features --edges normal --prefix none |
  grep -E '^(clap|tracing-subscriber|tower-http) '; then
  echo "atomsync-server --no-default-features depends on the binary's crates (above)"; exit 1
fi
echo "== misconfiguration: leptos's ssr without atomsync-leptos's is a compile error naming the fix"
if out="$(cargo check -p atomsync-leptos --features leptos/ssr 2>&1)"; then
  echo "atomsync-leptos built with leptos/ssr alone"; exit 1
fi
grep -F "leptos's \`ssr\` feature is on but atomsync-leptos's is not" <<<"$out" |
  grep -qF '"atomsync-leptos/ssr"' || { echo "$out"; exit 1; }
echo "== tests (unit, property, simulation, end-to-end, browser)"
cargo test --workspace --all-targets
echo "== doc tests"; cargo test --workspace --doc
echo "== server functions behind leptos_axum (ssr)"
cargo test -p atomsync-leptos --features ssr --test server_fns
echo "== IndexedDB adapter in headless Chromium (wasm-bindgen-test)"
(cd atomsync-leptos &&
  CHROMEDRIVER="$(command -v chromedriver)" \
  CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
  cargo test -p atomsync-leptos --features hydrate,fault-injection --target wasm32-unknown-unknown --test idb_wasm --test no_idb_wasm --test server_url_wasm --test server_fn_wasm)
echo "== a page hydrating with atomsync-leptos/hydrate off says so (headless Chromium)"
(cd atomsync-leptos &&
  CHROMEDRIVER="$(command -v chromedriver)" \
  CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
  cargo test -p atomsync-leptos --target wasm32-unknown-unknown --test hydrate_off_wasm)
echo "== wasm32 build of atomsync-core"
cargo build -p atomsync-core --target wasm32-unknown-unknown
echo "== fuzz target builds"
cargo build --manifest-path fuzz/Cargo.toml
echo "== all green"
