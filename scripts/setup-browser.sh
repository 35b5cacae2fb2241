#!/bin/sh
# Installs headless Chromium, Debian's `chromium` package, for the
# dashboard's browser test (tests/browser), unless a chromium is already
# on PATH. About 20 seconds on this machine (apt-get update included).
#
#   scripts/setup-browser.sh               install now; exit status says how it went
#   scripts/setup-browser.sh --background  start the install and return at once
#
# `go tool task test` (and test:go) start it in the background first, so
# the install runs beside lint and the Go tests instead of adding its time
# in series; tests/browser waits for it. Either way the outcome is left in
# .resound/browser-setup.status ("running <pid>", "ok" or "failed"), the
# output in .resound/browser-setup.log.
set -u

root=$(cd "$(dirname "$0")/.." && pwd)
state="$root/.resound"
status="$state/browser-setup.status"
log="$state/browser-setup.log"
mkdir -p "$state"

# put writes the status file whole (a reader never sees half a line).
put() {
	printf '%s\n' "$1" > "$status.tmp" && mv -f "$status.tmp" "$status"
}

if command -v chromium >/dev/null 2>&1; then
	put ok
	[ "${1:-}" = --background ] || echo "setup-browser: $(command -v chromium) is there"
	exit 0
fi

if [ "${1:-}" = --background ]; then
	# One install at a time: apt holds a lock, and a second would fail.
	if [ -f "$status" ] && read -r word pid < "$status" && [ "$word" = running ] && kill -0 "$pid" 2>/dev/null; then
		exit 0
	fi
	# setsid: a Ctrl-C on the test run must not stop apt half-way.
	if command -v setsid >/dev/null 2>&1; then
		setsid "$0" > "$log" 2>&1 < /dev/null &
	else
		nohup "$0" > "$log" 2>&1 < /dev/null &
	fi
	# The install takes seconds; the child overwrites this when it is done.
	put "running $!"
	echo "setup-browser: installing chromium in the background (log: $log)"
	exit 0
fi

put "running $$"
sudo=""
if [ "$(id -u)" != 0 ]; then
	sudo="sudo"
fi
start=$(date +%s)
echo "setup-browser: installing Debian's chromium"
if $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
	$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium > /dev/null &&
	command -v chromium > /dev/null 2>&1; then
	echo "setup-browser: chromium installed in $(($(date +%s) - start)) s"
	put ok
	exit 0
fi
echo "setup-browser: installing chromium failed" >&2
put failed
exit 1
