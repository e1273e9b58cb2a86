#!/usr/bin/env bash
# Origin: copied from the verified recipe shared/services/install-duplicity.sh into Flotilla's
# deploy/services/ so the project does not depend on ../shared at run time.
# Sibling scripts are found relative to this file's own directory; state lives
# under $FLOTILLA_SERVICES_DIR (default /tmp/flotilla-services). See README.md.
#
# Install Debian's duplicity (0.8.22 on bookworm) for compatibility tests
# against Azurite and Swift, plus what its backends need:
#   swift://  python3-swiftclient (Debian package)
#   azure://  azure-storage-blob (v12 API). Debian's python3-azure-storage pulls
#             in python3-azure (~580 MB), so the SDK is instead installed from
#             PyPI into $STATE_DIR/duplicity-azure/site, to be put on PYTHONPATH
#             when running duplicity.
# Idempotent.
set -euo pipefail

STATE_DIR="${FLOTILLA_SERVICES_DIR:-/tmp/flotilla-services}"
SITE="$STATE_DIR/duplicity-azure/site"
AZ_VERSION="${DUPLICITY_AZURE_BLOB_VERSION:-12.31.1}"

log() { echo "[install-duplicity] $*" >&2; }

missing=()
for p in duplicity python3-swiftclient; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if PYTHONPATH="$SITE" /usr/bin/python3 -c 'import azure.storage.blob as b, sys; sys.exit(b.__version__ != sys.argv[1])' "$AZ_VERSION" 2>/dev/null; then
  log "azure-storage-blob $AZ_VERSION already in $SITE"
else
  # duplicity runs on Debian's /usr/bin/python3, which has no pip: use any pip,
  # asking for wheels that match Debian's Python version.
  pyver="$(/usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  if python3 -m pip --version >/dev/null 2>&1; then PIP=(python3 -m pip)
  elif /usr/bin/python3 -m pip --version >/dev/null 2>&1; then PIP=(/usr/bin/python3 -m pip)
  else
    log "no pip found; installing python3-pip"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
    PIP=(/usr/bin/python3 -m pip)
  fi
  rm -rf "$SITE"
  mkdir -p "$SITE"
  log "pip install azure-storage-blob==$AZ_VERSION --target $SITE (for Python $pyver)"
  PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore "${PIP[@]}" install --quiet \
    --target "$SITE" --python-version "$pyver" --implementation cp --only-binary=:all: \
    "azure-storage-blob==$AZ_VERSION"
  PYTHONPATH="$SITE" /usr/bin/python3 -c 'import azure.storage.blob' \
    || { log "ERROR: azure.storage.blob not importable by /usr/bin/python3"; exit 1; }
fi
log "duplicity $(dpkg-query -W -f='${Version}' duplicity) ready; for azure:// run it with PYTHONPATH=$SITE"
