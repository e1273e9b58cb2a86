#!/usr/bin/env bash
# deploy/services/down.sh — stop the services started by up.sh (Azurite,
# Swift and, if it was started, Keystone) via stop-services.sh all, which only
# signals the pids recorded under $FLOTILLA_SERVICES_DIR/run after checking
# their command lines. Data, rings and installs are kept, so a later up.sh is
# fast. Idempotent: with nothing running it does nothing and exits 0.
# Written for Flotilla on top of the scripts copied from shared/services/.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bash "$HERE/stop-services.sh" all
echo "[down] Azurite and Swift are stopped (state kept in ${FLOTILLA_SERVICES_DIR:-/tmp/flotilla-services})" >&2
