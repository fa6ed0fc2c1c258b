#!/usr/bin/env bash
# Installs what atomsync's demo and tests need, when missing. Idempotent;
# sourced by scripts/demo.sh and scripts/test.sh.
set -euo pipefail

# The wasm-bindgen version pinned in Cargo.toml; the CLI must match it.
WASM_BINDGEN_VERSION="$(sed -n 's/^wasm-bindgen = "=\(.*\)"$/\1/p' "$(dirname "${BASH_SOURCE[0]}")/../Cargo.toml")"
CARGO_LEPTOS_VERSION="0.3.10" # 0.3.11 needs Rust 1.96

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi

if ! cargo leptos --version 2>/dev/null | grep -q "$CARGO_LEPTOS_VERSION"; then
  cargo install cargo-leptos --version "$CARGO_LEPTOS_VERSION" --locked
fi

if ! wasm-bindgen --version 2>/dev/null | grep -q "$WASM_BINDGEN_VERSION"; then
  cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION" --force
fi

# PostgreSQL's server binaries (initdb, pg_ctl, postgres) for the tests of
# the PostgreSQL backend, which start a throwaway cluster of their own
# (atomsync-server/tests/common/pg.rs), unless ATOMSYNC_TEST_POSTGRES_URL
# names an existing server.
if [ -z "${ATOMSYNC_TEST_POSTGRES_URL:-}" ] \
  && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null \
  && ! command -v initdb >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql postgresql-client
fi

if [ "${ATOMSYNC_NEED_BROWSER:-0}" = 1 ] && ! { command -v chromium && command -v chromedriver; } >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver
fi
