#!/usr/bin/env bash
# Origin: copied from the verified recipe shared/services/install-azurite.sh into Flotilla's
# deploy/services/ so the project does not depend on ../shared at run time.
# Sibling scripts are found relative to this file's own directory; state lives
# under $FLOTILLA_SERVICES_DIR (default /tmp/flotilla-services). See README.md.
#
# Install the Azurite storage emulator (pinned version) from the npm registry
# into a private prefix under the state folder. Idempotent: does nothing when
# the pinned version is already there.
set -euo pipefail

STATE_DIR="${FLOTILLA_SERVICES_DIR:-/tmp/flotilla-services}"
# 3.35.0 is the newest Azurite whose package.json still accepts Node 20
# (3.36.0 needs Node >= 21, 3.37.0 needs Node >= 22).
AZURITE_VERSION="${AZURITE_VERSION:-3.35.0}"
PREFIX="${AZURITE_PREFIX:-$STATE_DIR/azurite/npm}"

log() { echo "[install-azurite] $*" >&2; }

installed_version() {
  local pj="$PREFIX/node_modules/azurite/package.json"
  [ -f "$pj" ] || return 0
  node -e 'console.log(require(process.argv[1]).version)' "$pj" 2>/dev/null || true
}

if ! command -v curl >/dev/null 2>&1; then   # start-azurite.sh's readiness check uses curl
  log "installing curl"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null
fi

if [ "$(installed_version)" = "$AZURITE_VERSION" ] && [ -x "$PREFIX/node_modules/.bin/azurite-blob" ]; then
  log "azurite $AZURITE_VERSION already installed in $PREFIX"
  exit 0
fi

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  log "node/npm not found; installing Debian's nodejs and npm"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq nodejs npm >/dev/null
fi

mkdir -p "$PREFIX"
log "installing azurite@$AZURITE_VERSION into $PREFIX"
npm install --prefix "$PREFIX" --no-audit --no-fund --omit=dev --loglevel=error \
  "azurite@$AZURITE_VERSION"

v="$(installed_version)"
if [ "$v" != "$AZURITE_VERSION" ] || [ ! -x "$PREFIX/node_modules/.bin/azurite-blob" ]; then
  log "ERROR: azurite install failed (found version '${v:-none}')"
  exit 1
fi
log "azurite $v installed: $PREFIX/node_modules/.bin/azurite-blob"
