#!/usr/bin/env bash
# Resound all-in-one (embedded NATS JetStream, workers and gateway in one
# process), as `go run ./cmd/gateway` runs it, with a fresh data directory.
set -euo pipefail
. "$(dirname "$0")/common.bash"
need "$bin/gateway" resound
unset NATS_URL RESOUND_APPS_FILE
export REVERB_APP_ID=$BENCH_APP_ID REVERB_APP_KEY=$BENCH_KEY REVERB_APP_SECRET=$BENCH_SECRET
export REVERB_SERVER_HOST=127.0.0.1 REVERB_SERVER_PORT=$BENCH_PORT
export RESOUND_DATA_DIR=$BENCH_DATA/resound RESOUND_LOG_LEVEL=warn RESOUND_LOG_FORMAT=json RESOUND_DRAIN_WINDOW=0
rm -rf "$RESOUND_DATA_DIR"
exec "$bin/gateway"
