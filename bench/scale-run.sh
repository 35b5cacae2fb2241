#!/usr/bin/env bash
# Scale run on one machine: a real nats-server, G gateway processes, W
# worker processes, and one load-generator process per gateway, each
# holding CONNS connections on its own loopback source addresses.
#
#   bench/scale-run.sh            # 6 gateways x 15k connections, 3 workers
#   G=3 CONNS=5000 bench/scale-run.sh
#   PHASES=all ALL_RATE=5 bench/scale-run.sh    # only the fan-out to all
#
# Phases (PHASES, default all three):
#   idle    G x CONNS connections over 100 per channel, held HOLD
#   fanout  the same, 10 per channel, 200 events/s per process for HOLD
#   all     fan-out to all: every connection on one channel, ALL_RATE
#           events/s for ALL_FOR; each load generator holds its gateway's
#           CONNS (-shard-by conns), the first one triggers
#
# It prints one JSON summary per phase, the CPU seconds each kind of
# process used, and each gateway's RSS under load. Everything it starts is
# stopped on exit. While it runs, gateway i serves /metrics (and, with
# RESOUND_PPROF=true, /debug/pprof/) on 127.0.0.1:9200+i, its
# RESOUND_OPS_ADDR; its public port 9100+i answers 404 there.
set -euo pipefail
cd "$(dirname "$0")/.."
G=${G:-6} W=${W:-3} CONNS=${CONNS:-15000} HOLD=${HOLD:-20s}
PHASES=${PHASES:-idle fanout all} ALL_RATE=${ALL_RATE:-10} ALL_FOR=${ALL_FOR:-10s}
has() { [[ " $PHASES " == *" $1 "* ]]; }
OUT=${OUT:-$(mktemp -d /tmp/resound-scale.XXXXXX)}
BIN=$OUT/bin
mkdir -p "$BIN"
go build -o "$BIN/gateway" ./cmd/gateway
go build -o "$BIN/worker" ./cmd/worker
go build -o "$BIN/loadgen" ./cmd/loadgen
go build -o "$BIN/nats-server" github.com/nats-io/nats-server/v2

export REVERB_APP_ID=100001 REVERB_APP_KEY=scale-key REVERB_APP_SECRET=scale-secret
export RESOUND_LOG_FORMAT=json RESOUND_LOG_LEVEL=warn RESOUND_DRAIN_WINDOW=0
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

NATS_PORT=${NATS_PORT:-14222}
"$BIN/nats-server" -js -sd "$OUT/nats" -a 127.0.0.1 -p "$NATS_PORT" >"$OUT/nats.log" 2>&1 &
NATS_PID=$!; PIDS+=("$NATS_PID")
export NATS_URL=nats://127.0.0.1:$NATS_PORT
sleep 1
GW_PIDS=()
for i in $(seq 1 "$G"); do
  REVERB_SERVER_HOST=127.0.0.1 REVERB_SERVER_PORT=$((9100 + i)) RESOUND_OPS_ADDR=127.0.0.1:$((9200 + i)) \
    "$BIN/gateway" >"$OUT/gateway-$i.log" 2>&1 &
  GW_PIDS+=($!); PIDS+=($!)
done
WK_PIDS=()
for i in $(seq 1 "$W"); do
  RESOUND_METRICS_PORT=0 "$BIN/worker" >"$OUT/worker-$i.log" 2>&1 &
  WK_PIDS+=($!); PIDS+=($!)
done
for i in $(seq 1 "$G"); do
  until curl -fs "http://127.0.0.1:$((9100 + i))/up" >/dev/null; do sleep 0.2; done
done

cpu() { local t=0; for p in "$@"; do t=$(awk -v t="$t" '{print t + ($14 + $15) / 100}' "/proc/$p/stat"); done; echo "$t"; }
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
snapshot() { echo "{\"nats_cpu_s\":$(cpu "$NATS_PID"),\"gateways_cpu_s\":$(cpu "${GW_PIDS[@]}"),\"workers_cpu_s\":$(cpu "${WK_PIDS[@]}")}"; }

gateway_rss() {
  local out="" i
  for i in $(seq 1 "$G"); do out+="${out:+,}$(rss "${GW_PIDS[$((i - 1))]}")"; done
  echo "[$out]"
}

if has idle; then
echo "phase idle: $G x $CONNS connections over $((CONNS / 100)) channels each, held $HOLD" >&2
before=$(snapshot); LG=()
for i in $(seq 1 "$G"); do
  "$BIN/loadgen" idle -url "http://127.0.0.1:$((9100 + i))" -conns $((G * CONNS)) -channels $((G * CONNS / 100)) -duration "$HOLD" \
    -shard "$((i - 1))/$G" -pid "${GW_PIDS[$((i - 1))]}" -sources "127.0.$i.1-127.0.$i.20" -run idle >"$OUT/idle-$i.json" 2>"$OUT/idle-$i.err" &
  LG+=($!)
done
sleep 8
for i in $(seq 1 "$G"); do echo "gateway-$i RSS under load: $(rss "${GW_PIDS[$((i - 1))]}") KiB" >&2; done
wait "${LG[@]}"
echo "{\"phase\":\"idle\",\"cpu_before\":$before,\"cpu_after\":$(snapshot)}"
"$BIN/loadgen" merge "$OUT"/idle-*.json
fi

if has fanout; then
echo "phase fanout: $G x $CONNS connections, 10 per channel, 200 events/s per process" >&2
before=$(snapshot); LG=()
for i in $(seq 1 "$G"); do
  "$BIN/loadgen" fanout -url "http://127.0.0.1:$((9100 + i))" -conns $((G * CONNS)) -channels $((G * CONNS / 10)) -rate $((200 * G)) \
    -duration "$HOLD" -shard "$((i - 1))/$G" -sources "127.0.$i.1-127.0.$i.20" -run fanout >"$OUT/fanout-$i.json" 2>"$OUT/fanout-$i.err" &
  LG+=($!)
done
wait "${LG[@]}"
echo "{\"phase\":\"fanout\",\"cpu_before\":$before,\"cpu_after\":$(snapshot)}"
"$BIN/loadgen" merge "$OUT"/fanout-*.json
fi

if has all; then
# One channel, every connection on it. Load generator i holds the
# connections k with k mod G = i-1, all on gateway i; the first one waits
# until the cluster counts all G x CONNS subscriptions, triggers through
# gateway 1, then tells the others the count.
echo "phase all: $((G * CONNS)) connections on one channel, $ALL_RATE events/s for $ALL_FOR" >&2
before=$(snapshot); LG=()
for i in $(seq 1 "$G"); do
  "$BIN/loadgen" fanout -url "http://127.0.0.1:$((9100 + i))" -conns $((G * CONNS)) -channels 1 -rate "$ALL_RATE" \
    -duration "$ALL_FOR" -drain 60s -shard "$((i - 1))/$G" -shard-by conns -sources "127.0.$i.1-127.0.$i.20" \
    -run all -json -progress 1s >"$OUT/all-$i.json" 2>"$OUT/all-$i.err" &
  LG+=($!)
done
# RSS in the middle of the sending.
until grep -q '"phase":"send"' "$OUT/all-1.err" 2>/dev/null || ! kill -0 "${LG[0]}" 2>/dev/null; do sleep 0.5; done
sleep "$(awk -v d="${ALL_FOR%s}" 'BEGIN { print d / 2 }')"
echo "{\"phase\":\"all\",\"gateway_rss_kib\":$(gateway_rss)}"
for p in "${LG[@]}"; do wait "$p" || echo "a load generator reported errors: see \"errors\" in the merged summary" >&2; done
echo "{\"phase\":\"all\",\"cpu_before\":$before,\"cpu_after\":$(snapshot)}"
"$BIN/loadgen" merge "$OUT"/all-*.json
fi
echo "results in $OUT" >&2
