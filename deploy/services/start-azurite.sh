#!/usr/bin/env bash
# Origin: copied from the verified recipe shared/services/start-azurite.sh into Flotilla's
# deploy/services/ so the project does not depend on ../shared at run time.
# Sibling scripts are found relative to this file's own directory; state lives
# under $FLOTILLA_SERVICES_DIR (default /tmp/flotilla-services). See README.md.
#
# Start Azurite's blob service on 127.0.0.1:${AZURITE_BLOB_PORT:-10000} with
# on-disk persistence under the state folder, and wait until it answers.
# Idempotent: if the recorded process is alive and answering, does nothing.
set -euo pipefail

STATE_DIR="${FLOTILLA_SERVICES_DIR:-/tmp/flotilla-services}"
PREFIX="${AZURITE_PREFIX:-$STATE_DIR/azurite/npm}"
HOST=127.0.0.1
PORT="${AZURITE_BLOB_PORT:-10000}"
TIMEOUT="${AZURITE_START_TIMEOUT:-60}"
DATA="$STATE_DIR/azurite/data"
RUN="$STATE_DIR/run"
LOGDIR="$STATE_DIR/log"
PIDFILE="$RUN/azurite-blob.pid"
BIN="$PREFIX/node_modules/.bin/azurite-blob"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { echo "[start-azurite] $*" >&2; }

answers() {
  # Any HTTP status means the server is up (an unsigned request gets 4xx).
  local code
  code="$(curl -s -o /dev/null -m 3 -w '%{http_code}' "http://$HOST:$PORT/devstoreaccount1?comp=list" || true)"
  [ -n "$code" ] && [ "$code" != "000" ]
}

pid_alive() { # pid_alive PIDFILE PATTERN
  [ -f "$1" ] || return 1
  local pid; pid="$(cat "$1")"
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$2"
}

if [ ! -x "$BIN" ]; then
  log "azurite not installed, running install-azurite.sh"
  bash "$HERE/install-azurite.sh"
fi

mkdir -p "$DATA" "$RUN" "$LOGDIR"
# one start at a time (fd 9 is closed for the server so it does not keep the lock)
exec 9>"$RUN/start-azurite.lock"
flock -w 120 9 || { log "ERROR: another start-azurite.sh holds $RUN/start-azurite.lock"; exit 1; }

if pid_alive "$PIDFILE" azurite-blob; then
  if answers; then
    log "already running (pid $(cat "$PIDFILE")) on http://$HOST:$PORT"
    exit 0
  fi
  log "pid $(cat "$PIDFILE") (started earlier) is alive; waiting for it to answer"
else
  rm -f "$PIDFILE"
  if answers; then
    log "ERROR: something not started by this script already answers on $HOST:$PORT"
    exit 1
  fi

  args=(--blobHost "$HOST" --blobPort "$PORT" --location "$DATA"
        --skipApiVersionCheck --loose --disableTelemetry --silent)
  if [ -n "${AZURITE_DEBUG_LOG:-}" ]; then args+=(--debug "$AZURITE_DEBUG_LOG"); fi

  log "starting azurite-blob on $HOST:$PORT (data in $DATA)"
  # own session, so that signals to this shell's group do not reach it
  setsid "$BIN" "${args[@]}" </dev/null >>"$LOGDIR/azurite-blob.log" 2>&1 9>&- &
  echo $! >"$PIDFILE"
fi

start=$SECONDS
deadline=$((SECONDS + TIMEOUT))
until answers; do
  if ! pid_alive "$PIDFILE" azurite-blob; then
    log "ERROR: azurite-blob exited; last log lines:"
    tail -n 30 "$LOGDIR/azurite-blob.log" >&2 || true
    rm -f "$PIDFILE"
    exit 1
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    log "ERROR: azurite-blob did not answer on $HOST:$PORT within ${TIMEOUT}s (left running as pid $(cat "$PIDFILE"); stop-services.sh stops it); last log lines:"
    tail -n 30 "$LOGDIR/azurite-blob.log" >&2 || true
    exit 1
  fi
  sleep 0.5
done
log "ready: http://$HOST:$PORT/devstoreaccount1 (pid $(cat "$PIDFILE"), $((SECONDS - start))s)"
