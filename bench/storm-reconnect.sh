#!/usr/bin/env bash
# Reconnect storm (issue 13): gateway RSS per idle subscribed socket after a
# drained gateway's clients all come back to another one at once.
#
# One nats-server and two gateways, A and B, on this machine. One
# `loadgen idle -reconnect` spreads CONNS subscribed connections over both
# (half each, at loadgen's default 2,000/s, 64 handshakes in flight). Once
# all are subscribed and a few seconds have passed, the script reads B's RSS
# and stops A with SIGTERM; A has RESOUND_DRAIN_WINDOW=0, so it closes all
# its clients with 4200 at once (as a crash or a restart without a drain
# window would), and loadgen reconnects every one of them to B within
# 100 ms (internal/loadgen: schedule). loadgen reads B's RSS again at the
# end of its hold, with nothing forced from outside. Memory counted:
#
#   per socket   = (B at the end − B before any connection) ÷ CONNS
#   per stormed  = (B at the end − B just before the drain) ÷ sockets moved
#
#   bench/storm-reconnect.sh                          # 15,000 connections, 3 repeats
#   CONNS=15000 REPEATS=1 AFTER=20 bench/storm-reconnect.sh
#
# Needs bench/.bin/{gateway,loadgen} (go tool task bench:build); builds
# nats-server there. Each repeat's logs and loadgen summary go to
# bench/results/storm-reconnect-<date>/<repeat>/, and one JSON line per
# repeat to stdout (and results.jsonl there). Everything it starts is
# stopped on exit.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
BIN=${BENCH_BIN:-$root/bench/.bin}
CONNS=${CONNS:-15000}
CHANNELS=${CHANNELS:-100}
REPEATS=${REPEATS:-3}
SETTLE=${SETTLE:-5}  # seconds from all subscribed to the drain
AFTER=${AFTER:-20}   # seconds of hold after the drain: a storm's trim waits for a quiet second, and 10 s since the last
SOURCES=${SOURCES:-127.0.0.2-127.0.0.9}
NATS_PORT=${NATS_PORT:-14322}
PORT_A=${PORT_A:-9341} PORT_B=${PORT_B:-9342} OPS_B=${OPS_B:-9343}
OUT=${OUT:-bench/results/storm-reconnect-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
[ -x "$BIN/gateway" ] && [ -x "$BIN/loadgen" ] || { echo "bench/.bin lacks gateway or loadgen: go tool task bench:build" >&2; exit 1; }
[ -x "$BIN/nats-server" ] || go build -o "$BIN/nats-server" github.com/nats-io/nats-server/v2

export REVERB_APP_ID=100200 REVERB_APP_KEY=bench-key REVERB_APP_SECRET=bench-secret
export RESOUND_LOG_FORMAT=json RESOUND_LOG_LEVEL=warn REVERB_SERVER_HOST=127.0.0.1
export NATS_URL=nats://127.0.0.1:$NATS_PORT
unset RESOUND_APPS_FILE

PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	PIDS=()
}
trap cleanup EXIT

rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
up() { until curl -fs "http://127.0.0.1:$1/up" >/dev/null; do sleep 0.2; done; }

HOLD=$((SETTLE + AFTER + 5))
for rep in $(seq 1 "$REPEATS"); do
	dir=$OUT/$rep
	mkdir -p "$dir"
	"$BIN/nats-server" -js -sd "$dir/nats" -a 127.0.0.1 -p "$NATS_PORT" >"$dir/nats.log" 2>&1 &
	PIDS+=($!)
	until (exec 3<>"/dev/tcp/127.0.0.1/$NATS_PORT") 2>/dev/null; do sleep 0.2; done
	REVERB_SERVER_PORT=$PORT_A RESOUND_DRAIN_WINDOW=0 "$BIN/gateway" >"$dir/gateway-a.log" 2>&1 &
	A=$!
	PIDS+=("$A")
	REVERB_SERVER_PORT=$PORT_B RESOUND_OPS_ADDR=127.0.0.1:$OPS_B "$BIN/gateway" >"$dir/gateway-b.log" 2>&1 &
	B=$!
	PIDS+=("$B")
	up "$PORT_A"
	up "$PORT_B"

	# -url is B: idle makes no API calls, and B stays up.
	"$BIN/loadgen" idle -url "http://127.0.0.1:$PORT_B" -ws-urls "http://127.0.0.1:$PORT_A,http://127.0.0.1:$PORT_B" \
		-reconnect -conns "$CONNS" -channels "$CHANNELS" -duration "${HOLD}s" -max-pending 64 \
		-pid "$B" -sources "$SOURCES" >"$dir/loadgen.json" 2>"$dir/loadgen.log" &
	LG=$!
	PIDS+=("$LG")
	until grep -Eq 'phase[":=]+connected' "$dir/loadgen.log" 2>/dev/null || ! kill -0 "$LG" 2>/dev/null; do sleep 0.2; done
	sleep "$SETTLE"
	mid=$(rss "$B")
	moved=$(curl -fs "http://127.0.0.1:$PORT_A/up" >/dev/null && echo up || echo down)
	kill -TERM "$A"
	wait "$LG" || true
	after_b=$(rss "$B")
	trims=$(curl -fs "http://127.0.0.1:$OPS_B/metrics" | awk '/^resound_memory_trims_total/ { print $2 }')

	jq -c --argjson rep "$rep" --argjson mid "$mid" --argjson end_now "$after_b" --arg a_before_drain "$moved" --argjson trims "${trims:-null}" '
		{repeat: $rep, conns: .conns.planned, established: .conns.established, subscribed: .conns.subscribed,
		 dropped: .conns.dropped, reconnects: .conns.reconnects, failures: .conns.failures,
		 b_rss_before_kib: .idle.target_rss_before_kib, b_rss_before_drain_kib: $mid, b_rss_end_kib: .idle.target_rss_after_kib,
		 bytes_per_socket: (((.idle.target_rss_after_kib - .idle.target_rss_before_kib) * 1024 / .conns.established) | round),
		 bytes_per_stormed_socket: (if .conns.reconnects > 0 then (((.idle.target_rss_after_kib - $mid) * 1024 / .conns.reconnects) | round) else null end),
		 b_rss_after_loadgen_kib: $end_now, b_memory_trims: $trims, a_up_before_drain: $a_before_drain}' "$dir/loadgen.json" | tee -a "$OUT/results.jsonl"
	cleanup
	sleep 2
done
echo "results: $OUT/results.jsonl" >&2
