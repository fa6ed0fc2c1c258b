#!/usr/bin/env bash
# Runs atomsync's whole test suite, installing what is missing first
# (wasm32 target, cargo-leptos, wasm-bindgen-cli, Chromium + chromedriver).
# Idempotent. This is the README's test command and what .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."
ATOMSYNC_NEED_BROWSER=1 source scripts/setup.sh

echo "== fmt"; cargo fmt --all -- --check
echo "== clippy"; cargo clippy --workspace --all-targets -- -D warnings
cargo clippy -p atomsync-leptos --features hydrate,fault-injection --target wasm32-unknown-unknown --all-targets -- -D warnings
cargo clippy -p atomsync-leptos --features ssr --all-targets -- -D warnings
echo "== demo build (cargo leptos build: server + wasm)"; cargo leptos build
echo "== tests (unit, property, simulation, end-to-end, browser)"
cargo test --workspace --all-targets
echo "== doc tests"; cargo test --workspace --doc
echo "== server functions behind leptos_axum (ssr)"
cargo test -p atomsync-leptos --features ssr --test server_fns
echo "== IndexedDB adapter in headless Chromium (wasm-bindgen-test)"
(cd atomsync-leptos &&
  CHROMEDRIVER="$(command -v chromedriver)" \
  CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
  cargo test -p atomsync-leptos --features hydrate,fault-injection --target wasm32-unknown-unknown --test idb_wasm --test no_idb_wasm)
echo "== wasm32 build of atomsync-core"
cargo build -p atomsync-core --target wasm32-unknown-unknown
echo "== fuzz target builds"
cargo build --manifest-path fuzz/Cargo.toml
echo "== all green"
