#!/usr/bin/env bash
# Builds or installs the benchmark targets: Go binaries into bench/.bin
# (or $BENCH_BIN), soketi into bench/peers/node_modules. Both are
# git-ignored, and nothing in `go tool task test` needs them.
#
#   bench/install-targets.sh                      # all: loadgen resound baseline soketi centrifugo
#   bench/install-targets.sh baseline centrifugo  # some
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${BENCH_BIN:-$root/bench/.bin}
mkdir -p "$bin"
cd "$root"
for t in ${*:-loadgen resound baseline soketi centrifugo}; do
	echo "== $t" >&2
	case $t in
	loadgen) go build -o "$bin/loadgen" ./cmd/loadgen ;;
	resound) go build -o "$bin/gateway" ./cmd/gateway ;;
	baseline) go build -o "$bin/baseline" ./bench/baseline ;;
	soketi) (cd bench/peers && npm ci --no-audit --no-fund) ;;
	centrifugo)
		# Its release builds stamp the version the same way.
		GOBIN=$bin go install -ldflags "-X github.com/centrifugal/centrifugo/v6/internal/build.Version=6.9.1" \
			github.com/centrifugal/centrifugo/v6@v6.9.1
		;;
	*)
		echo "unknown target $t (loadgen resound baseline soketi centrifugo)" >&2
		exit 2
		;;
	esac
done
