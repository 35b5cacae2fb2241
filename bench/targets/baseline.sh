#!/usr/bin/env bash
# The goroutine-per-connection baseline (bench/baseline).
set -euo pipefail
. "$(dirname "$0")/common.bash"
need "$bin/baseline" baseline
exec "$bin/baseline" -port "$BENCH_PORT" -app-id "$BENCH_APP_ID" -key "$BENCH_KEY" -secret "$BENCH_SECRET" -log-level warn
