#!/usr/bin/env bash
# Origin: copied from the verified recipe shared/services/install-swift.sh into Flotilla's
# deploy/services/ so the project does not depend on ../shared at run time.
# Sibling scripts are found relative to this file's own directory; state lives
# under $FLOTILLA_SERVICES_DIR (default /tmp/flotilla-services). See README.md.
#
# Install OpenStack Swift (Debian bookworm packages) plus the swift command-line
# client. Configuration, rings and data are made by start-swift.sh under the
# state folder; nothing here starts a service. Idempotent.
set -euo pipefail

# memcached: TempAuth keeps its tokens in memcache, so the proxy needs one.
# curl: used by start-swift.sh's readiness checks.
PKGS=(swift swift-proxy swift-account swift-container swift-object python3-swiftclient memcached curl)
# SWIFT_KEYSTONE=1 adds Keystone (identity v3 server, run by start-swift.sh
# with SWIFT_KEYSTONE=1), the proxy's keystonemiddleware and keystoneclient
# (which the swift CLI needs for v3 auth). python3-keystone is used instead of
# the 'keystone' package to skip its debconf/dbconfig/apache setup.
if [ "${SWIFT_KEYSTONE:-0}" = 1 ]; then
  PKGS+=(python3-keystone python3-keystonemiddleware python3-keystoneclient)
fi
# Extra packages can be added, e.g. SWIFT_EXTRA_PKGS="duplicity".
read -r -a EXTRA <<<"${SWIFT_EXTRA_PKGS:-}"
PKGS+=("${EXTRA[@]}")

log() { echo "[install-swift] $*" >&2; }

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$p")
  fi
done
if [ "${#missing[@]}" -eq 0 ]; then
  log "already installed: ${PKGS[*]}"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
# Keep the packages' init scripts from starting Debian's own services (which
# would listen on all interfaces with Debian's configuration). Only add a
# policy-rc.d when none exists, and remove only the one added here.
POLICY=/usr/sbin/policy-rc.d
added_policy=0
if [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$POLICY"
  chmod +x "$POLICY"
  added_policy=1
  trap '[ "$added_policy" = 1 ] && rm -f "$POLICY"' EXIT
fi

log "apt-get update"
apt-get update -qq
log "installing: ${missing[*]}"
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

for b in swift-proxy-server swift-account-server swift-container-server swift-object-server swift-ring-builder swift memcached; do
  command -v "$b" >/dev/null || { log "ERROR: $b missing after install"; exit 1; }
done
log "swift $(dpkg-query -W -f='${Version}' swift-proxy), python3-swiftclient $(dpkg-query -W -f='${Version}' python3-swiftclient) installed"
