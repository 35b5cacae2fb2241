#!/usr/bin/env bash
# Resound all-in-one (embedded NATS JetStream, in-process workers, one
# gateway) for the side-by-side benchmark; see bench/targets/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=bench/.bin/gateway
if [ ! -x "$bin" ]; then
  echo "$bin is missing: go tool task bench:build makes it" >&2
  exit 3
fi
# All-in-one: nothing from the caller's environment may point it elsewhere.
unset NATS_URL RESOUND_APPS_FILE REVERB_SERVER_PATH
ulimit -n "$(ulimit -Hn)"
export RESOUND_DATA_DIR="$BENCH_DATA" \
  REVERB_SERVER_HOST=127.0.0.1 REVERB_SERVER_PORT="$BENCH_PORT" \
  REVERB_APP_ID="$BENCH_APP_ID" REVERB_APP_KEY="$BENCH_KEY" REVERB_APP_SECRET="$BENCH_SECRET" \
  RESOUND_LOG_LEVEL=warn RESOUND_LOG_FORMAT=json \
  RESOUND_DRAIN_WINDOW=0
exec "$bin"
