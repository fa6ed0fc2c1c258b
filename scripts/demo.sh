#!/usr/bin/env bash
# Runs the atomsync demo; installs what is missing first. Idempotent.
# Until the Leptos demo app exists this runs the standalone sync server on
# http://127.0.0.1:8090 with its data in ./atomsync-demo.db.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --release -p atomsync-server -- --port "${PORT:-8090}" --db "${DB:-atomsync-demo.db}"
