#!/usr/bin/env bash
# Runs atomsync's whole test suite; installs what is missing first. Idempotent.
# This is the README's test command and what .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi

echo "== fmt"; cargo fmt --all -- --check
echo "== clippy"; cargo clippy --workspace --all-targets -- -D warnings
echo "== tests"; cargo test --workspace --all-targets
echo "== doc tests"; cargo test --workspace --doc
echo "== wasm32 build of atomsync-core"
cargo build -p atomsync-core --target wasm32-unknown-unknown
echo "== fuzz target builds"
cargo build --manifest-path fuzz/Cargo.toml
echo "== all green"
