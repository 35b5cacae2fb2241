#!/usr/bin/env bash
# Centrifugo v6.9.1 with bench/peers/centrifugo.json: anonymous clients may
# subscribe to channels without a namespace; BENCH_SECRET is the HTTP API
# key. It speaks its own protocol: run loadgen with -protocol centrifugo.
set -euo pipefail
. "$(dirname "$0")/common.bash"
need "$bin/centrifugo" centrifugo
export CENTRIFUGO_HTTP_SERVER_PORT=$BENCH_PORT CENTRIFUGO_HTTP_API_KEY=$BENCH_SECRET
cd "$BENCH_DATA"
exec "$bin/centrifugo" -c "$root/bench/peers/centrifugo.json"
