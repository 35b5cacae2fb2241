#!/usr/bin/env bash
# soketi 1.6.1 (bench/peers), one process, default settings but the app
# and port. Its UDP cluster discovery, which it always starts, gets its own
# port next to BENCH_PORT so that it clashes with nothing.
set -euo pipefail
. "$(dirname "$0")/common.bash"
peers=$root/bench/peers
if [ ! -f "$peers/node_modules/@soketi/soketi/bin/server.js" ]; then
	echo "soketi is missing: run bench/install-targets.sh soketi" >&2
	exit 1
fi
# uWebSockets.js falls back to a slow pure-JS server when its native build
# does not load; refuse to benchmark that.
unset UWS_USE_FALLBACK
cd "$peers"
node -e 'require("./node_modules/uWebSockets.js/binaries/uws_" + process.platform + "_" + process.arch + "_" + process.versions.modules + ".node")' || {
	echo "uWebSockets.js has no native build for this Node.js; soketi would fall back to pure JS" >&2
	exit 1
}
cd "$BENCH_DATA"
export SOKETI_PORT=$BENCH_PORT SOKETI_DEFAULT_APP_ID=$BENCH_APP_ID SOKETI_DEFAULT_APP_KEY=$BENCH_KEY SOKETI_DEFAULT_APP_SECRET=$BENCH_SECRET
export SOKETI_CLUSTER_PORT=${SOKETI_CLUSTER_PORT:-$((BENCH_PORT + 1))} SOKETI_METRICS_SERVER_PORT=${SOKETI_METRICS_SERVER_PORT:-$((BENCH_PORT + 2))}
exec node "$peers/node_modules/@soketi/soketi/bin/server.js" start
