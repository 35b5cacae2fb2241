# Sourced by the target scripts: checks the contract's environment and
# sets $root (the repository) and $bin (where the binaries are).
: "${BENCH_PORT:?BENCH_PORT is required}"
: "${BENCH_APP_ID:?BENCH_APP_ID is required}"
: "${BENCH_KEY:?BENCH_KEY is required}"
: "${BENCH_SECRET:?BENCH_SECRET is required}"
: "${BENCH_DATA:?BENCH_DATA (a scratch directory) is required}"
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin=${BENCH_BIN:-$root/bench/.bin}
mkdir -p "$BENCH_DATA"
# Every server gets the same open-files limit: the hard one (20,000 here).
ulimit -n "$(ulimit -Hn)"

need() {
	if [ ! -x "$1" ]; then
		echo "$1 is missing: run bench/install-targets.sh $2" >&2
		exit 1
	fi
}
