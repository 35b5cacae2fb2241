#!/usr/bin/env bash
# Native TLS against plain connections: per-socket memory and unbounded
# fan-out of one all-in-one gateway, in three set-ups taking turns round
# after round (so a change in the machine's load falls on all alike):
#
#   epoll     plain ws://, the default reactor on Linux
#   portable  plain ws://, the net.Conn reactor (built -tags resound_portable):
#             what TLS connections run on, without the TLS
#   tls       wss:// and https:// (RESOUND_TLS_CERT), which runs the portable
#             reactor, with a certificate from internal/tlscert/tlstest/gencert
#
# Workloads (docs/benchmarks.md's): idle 5,000 connections over 100 channels
# with the gateway's RSS sampled; fan-out to 1 channel × 1,000 unbounded.
# Prints one line per run and writes the loadgen summaries under $OUT. The
# load generator runs on the same CPUs and decrypts what the gateway
# encrypts, so the fan-out rate over TLS carries both sides' cost; the
# gateway's CPU time per delivery is its side alone.
#
#   bench/tls-compare.sh            # ROUNDS=3 by default
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-$(mktemp -d /tmp/resound-tls-bench.XXXXXX)}
bin=$OUT/bin
mkdir -p "$bin"
ulimit -n "$(ulimit -Hn)"
(cd "$root" && go build -o "$bin/gateway" ./cmd/gateway && go build -tags resound_portable -o "$bin/gateway-portable" ./cmd/gateway &&
	go build -o "$bin/loadgen" ./cmd/loadgen && go run ./internal/tlscert/tlstest/gencert -dir "$OUT/certs" 127.0.0.1 >/dev/null)
export REVERB_APP_ID=bench REVERB_APP_KEY=bench-key REVERB_APP_SECRET=bench-secret

port=18700
start() { # setup -> sets pid, url, ca
	local setup=$1 exe=$bin/gateway
	port=$((port + 1))
	url=http://127.0.0.1:$port ca=()
	local -a env=(REVERB_SERVER_HOST=127.0.0.1 REVERB_SERVER_PORT=$port RESOUND_DATA_DIR=$OUT/data-$port
		RESOUND_LOG_LEVEL=warn RESOUND_LOG_FORMAT=json RESOUND_DRAIN_WINDOW=0)
	case $setup in
	portable) exe=$bin/gateway-portable ;;
	tls)
		env+=(RESOUND_TLS_CERT=$OUT/certs/cert.pem RESOUND_TLS_KEY=$OUT/certs/key.pem)
		url=https://127.0.0.1:$port ca=(-ca "$OUT/certs/ca.pem")
		;;
	esac
	env "${env[@]}" "$exe" 2>"$OUT/gateway-$port.log" &
	pid=$!
	for _ in $(seq 200); do
		if curl -fsS --cacert "$OUT/certs/ca.pem" "$url/up" >/dev/null 2>&1; then return; fi
		sleep 0.1
	done
	echo "gateway $setup did not come up" >&2
	exit 1
}
stop() { kill "$pid" && wait "$pid" || true; rm -rf "$OUT/data-$port"; }
# cpu is the gateway's CPU time so far (user and system), in seconds.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$pid/stat"; }

for round in $(seq "$ROUNDS"); do
	for setup in epoll portable tls; do
		start "$setup"
		f=$OUT/idle-$setup-$round.json
		"$bin/loadgen" idle -url "$url" "${ca[@]}" -conns 5000 -channels 100 -duration 15s -pid "$pid" \
			-sources 127.0.0.2-127.0.0.9 -json 2>/dev/null >"$f"
		stop
		echo "idle   $setup round $round: $(jq -c '{kib_per_conn: .idle.target_kib_per_conn, subscribed: .conns.subscribed, failed: .conns.failed}' "$f")"

		start "$setup"
		f=$OUT/fanout-$setup-$round.json
		"$bin/loadgen" fanout -url "$url" "${ca[@]}" -conns 1000 -channels 1 -rate 0 -duration 10s -drain 60s -json 2>/dev/null >"$f"
		c=$(cpu) # the whole run's: start-up and 1,000 handshakes too
		stop
		echo "fanout $setup round $round: $(jq -c --argjson cpu "$c" '{deliveries_per_s: .fanout.deliveries_per_s, deliveries: .fanout.deliveries,
			expected: .fanout.expected, missing: .fanout.missing, gateway_cpu_s: $cpu,
			gateway_cpu_us_per_delivery: (($cpu * 1e6 / .fanout.deliveries) * 100 | round / 100)}' "$f")"
	done
done
echo "summaries in $OUT"
