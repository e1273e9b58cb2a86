#!/usr/bin/env bash
# Origin: copied from the verified recipe shared/services/stop-services.sh into Flotilla's
# deploy/services/ so the project does not depend on ../shared at run time.
# Sibling scripts are found relative to this file's own directory; state lives
# under $FLOTILLA_SERVICES_DIR (default /tmp/flotilla-services). See README.md.
#
# Stop what start-azurite.sh and start-swift.sh started, using only their pid
# files under the state folder (each pid is checked against the expected
# command line first, so a reused pid is never signalled). Idempotent.
# Usage: stop-services.sh [azurite|swift|all]   (default: all)
set -euo pipefail

STATE_DIR="${FLOTILLA_SERVICES_DIR:-/tmp/flotilla-services}"
RUN="$STATE_DIR/run"
WHAT="${1:-all}"
GRACE="${STOP_GRACE_SECONDS:-10}"

log() { echo "[stop-services] $*" >&2; }

# name:pattern-in-cmdline; the proxy is signalled before its backends
azurite=(azurite-blob:azurite-blob)
swift=(swift-proxy:swift-proxy-server swift-object:swift-object-server
       swift-container:swift-container-server swift-account:swift-account-server
       swift-memcached:memcached keystone:keystone-wsgi-public)
case "$WHAT" in
  azurite) names=("${azurite[@]}") ;;
  swift) names=("${swift[@]}") ;;
  all) names=("${azurite[@]}" "${swift[@]}") ;;
  *) echo "usage: $0 [azurite|swift|all]" >&2; exit 2 ;;
esac

# running = exists and is not a zombie waiting to be reaped by init
running() {
  local st
  st="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}

signalled=()
for entry in "${names[@]}"; do
  name="${entry%%:*}" pattern="${entry#*:}" f="$RUN/${entry%%:*}.pid"
  [ -f "$f" ] || continue
  pid="$(cat "$f")"
  if [ -z "$pid" ] || [ ! -r "/proc/$pid/cmdline" ] \
     || ! tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$pattern"; then
    log "$name: not running (stale pid file removed)"
    rm -f "$f" "$RUN/$name.confhash"
    continue
  fi
  kill -TERM "$pid" 2>/dev/null || true
  signalled+=("$name:$pid")
done

rc=0
deadline=$((SECONDS + GRACE))
for entry in "${signalled[@]}"; do
  name="${entry%%:*}" pid="${entry#*:}"
  while running "$pid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
  if running "$pid"; then
    log "$name: pid $pid still running after ${GRACE}s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 20); do running "$pid" || break; sleep 0.1; done
  fi
  if running "$pid"; then
    log "ERROR: $name (pid $pid) is still running"
    rc=1
  else
    log "$name: stopped (pid $pid)"
    rm -f "$RUN/$name.pid" "$RUN/$name.confhash"
  fi
done
exit "$rc"
