#!/usr/bin/env bash
# Runs the atomsync todo demo on http://127.0.0.1:3000 (cargo leptos serve),
# installing what is missing first. Idempotent. Data: ./atomsync-demo.db.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
exec cargo leptos serve
