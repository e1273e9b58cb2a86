#!/usr/bin/env bash
# deploy/services/up.sh — bring up the storage services for Flotilla's
# integration tests, on 127.0.0.1 only:
#   * Azurite blob service (npm, pinned 3.35.0) on ${AZURITE_BLOB_PORT:-10000}
#   * single-node OpenStack Swift (Debian packages, TempAuth + TempURL) with its
#     proxy on ${SWIFT_PROXY_PORT:-8080}; Keystone only if SWIFT_KEYSTONE=1
# Installs what is missing (install-azurite.sh, install-swift.sh; root needed
# for apt), starts both (start-azurite.sh, start-swift.sh), checks that both
# answer, then prints how to load the connection settings (env.sh).
# Idempotent: running it again with everything up takes about a second and
# changes nothing. State: $FLOTILLA_SERVICES_DIR (default /tmp/flotilla-services).
# Written for Flotilla on top of the scripts copied from shared/services/.
# Usage: bash deploy/services/up.sh        Stop with: bash deploy/services/down.sh
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export SWIFT_KEYSTONE="${SWIFT_KEYSTONE:-0}"   # Keystone off unless asked for
TIMEOUT="${SERVICES_UP_TIMEOUT:-60}"

log() { echo "[up] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

t0=$SECONDS
# Sequential on purpose: both installers may run apt-get (dpkg lock).
step() { # step SCRIPT: run a sibling script and report how long it took
  local s=$SECONDS
  bash "$HERE/$1"
  log "$1: $((SECONDS - s))s"
}
step install-azurite.sh
step install-swift.sh
step start-azurite.sh
step start-swift.sh

# Final, independent check with the settings tests will use (bounded wait;
# the start scripts already waited, so this normally passes at once).
# shellcheck disable=SC1091
. "$HERE/env.sh"
azurite_ok() {
  local code
  code="$(curl -s -o /dev/null -m 3 -w '%{http_code}' "$AZURE_STORAGE_ENDPOINT?comp=list" || true)"
  [ -n "$code" ] && [ "$code" != 000 ]
}
swift_ok() {
  local hdrs url tok code
  [ "$(curl -s -m 3 "${SWIFT_AUTH_URL%/auth/*}/healthcheck" || true)" = OK ] || return 1
  hdrs="$(curl -s -m 5 -D - -o /dev/null -H "X-Auth-User: $SWIFT_USER" -H "X-Auth-Key: $SWIFT_KEY" "$SWIFT_AUTH_URL" | tr -d '\r' || true)"
  url="$(printf '%s\n' "$hdrs" | awk -F': ' 'tolower($1)=="x-storage-url"{print $2}')"
  tok="$(printf '%s\n' "$hdrs" | awk -F': ' 'tolower($1)=="x-auth-token"{print $2}')"
  [ -n "$url" ] && [ -n "$tok" ] || return 1
  code="$(curl -s -m 5 -o /dev/null -w '%{http_code}' -I -H "X-Auth-Token: $tok" "$url" || true)"
  [ "$code" = 204 ] || [ "$code" = 200 ]
}
deadline=$((SECONDS + TIMEOUT))
until azurite_ok && swift_ok; do
  [ "$SECONDS" -lt "$deadline" ] || die "services did not answer within ${TIMEOUT}s (logs: ${FLOTILLA_SERVICES_DIR:-/tmp/flotilla-services}/log)"
  sleep 0.5
done

# show env.sh relative to the current directory when it is below it
envfile="$(realpath --relative-to="$PWD" "$HERE/env.sh" 2>/dev/null || echo "$HERE/env.sh")"
case "$envfile" in ../*) envfile="$HERE/env.sh" ;; esac
log "Azurite: $AZURE_STORAGE_ENDPOINT   Swift: $SWIFT_AUTH_URL ($SWIFT_USER)"
log "all services up ($((SECONDS - t0))s)"
echo "Services are up. Load the connection settings with:"
echo "  . $envfile"
