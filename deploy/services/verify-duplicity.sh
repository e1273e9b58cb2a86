#!/usr/bin/env bash
# Origin: copied from the verified recipe shared/services/verify-duplicity.sh into Flotilla's
# deploy/services/ so the project does not depend on ../shared at run time.
# Sibling scripts are found relative to this file's own directory; state lives
# under $FLOTILLA_SERVICES_DIR (default /tmp/flotilla-services). See README.md.
#
# Back up a small folder with duplicity 0.8.22 to Azurite (azure://) and to
# Swift (swift://, TempAuth v1; also Keystone v3 when SWIFT_KEYSTONE=1),
# restore it, compare, and remove the test containers.
# Needs install-duplicity.sh and the running services.
# Change from the shared recipe: sleep 1.1 s before modifying the source for the
# incremental (the original failed ~50% of runs on an idle machine, see below).
set -euo pipefail

STATE_DIR="${FLOTILLA_SERVICES_DIR:-/tmp/flotilla-services}"
SITE="$STATE_DIR/duplicity-azure/site"
W="$(mktemp -d "$STATE_DIR/verify-duplicity.XXXXXX")"
C="dupverify$$"
AZ_CONN="${AZURE_STORAGE_CONNECTION_STRING:-DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;}"
S_AUTH="${SWIFT_AUTH_URL:-http://127.0.0.1:8080/auth/v1.0}"
S_USER="${SWIFT_USER:-test:tester}"
S_KEY="${SWIFT_KEY:-testing}"
step() { echo "[verify-duplicity] $*"; }
fail() { echo "[verify-duplicity] FAILED: $*" >&2; exit 1; }

cleanup() {
  PYTHONPATH="$SITE" AZ_CONN="$AZ_CONN" /usr/bin/python3 -c '
import os, sys
from azure.storage.blob import BlobServiceClient
try: BlobServiceClient.from_connection_string(os.environ["AZ_CONN"]).delete_container(sys.argv[1])
except Exception: pass' "$C" || true
  swift -A "$S_AUTH" -U "$S_USER" -K "$S_KEY" delete "$C" >/dev/null 2>&1 || true
  rm -rf "$W"
}
trap cleanup EXIT

cd "$W"
mkdir -p src/sub
echo "hello duplicity" >src/a.txt
head -c 300000 /dev/urandom >src/sub/b.bin
ln -s a.txt src/link
export PASSPHRASE=verify-passphrase   # symmetric gpg encryption

run_backend() { # run_backend LABEL URL  (env prepared by the caller)
  local label=$1 url=$2 t0=$SECONDS
  duplicity --archive-dir "$W/cache-$label" full src "$url" >"log-$label" 2>&1 || { tail -20 "log-$label"; fail "$label full"; }
  # duplicity compares mtimes in whole seconds (not sizes): make sure the
  # change lands in a later second than the full backup saw, or the
  # incremental may record no change when the full backup was fast.
  sleep 1.1
  echo changed >>src/a.txt
  duplicity --archive-dir "$W/cache-$label" incr src "$url" >>"log-$label" 2>&1 || { tail -20 "log-$label"; fail "$label incr"; }
  rm -rf "$W/cache-$label"   # restore from the remote side only
  duplicity --archive-dir "$W/cache-$label" restore "$url" "restore-$label" >>"log-$label" 2>&1 || { tail -20 "log-$label"; fail "$label restore"; }
  diff -r src "restore-$label" || fail "$label: restored tree differs"
  grep -q "Attempt of" "log-$label" && fail "$label: duplicity had to retry (see log)"
  step "$label: full + incremental backup, restore, compare: identical ($((SECONDS - t0))s)"
}

# Azure: duplicity 0.8.22 reads only AZURE_CONNECTION_STRING; BlobEndpoint
# in it points the SDK at the emulator.
AZURE_CONNECTION_STRING="$AZ_CONN" PYTHONPATH="$SITE" run_backend azure "azure://$C"

# Swift v1 (TempAuth): duplicity's own connection uses SWIFT_*, but its
# size check and deletes go through swiftclient's SwiftService, which only
# does v1 auth when ST_AUTH/ST_USER/ST_KEY are set too (otherwise it falls
# back to keystone auth and every upload retries 4 x 30 s before going on).
SWIFT_AUTHURL="$S_AUTH" SWIFT_AUTHVERSION=1 SWIFT_USERNAME="$S_USER" SWIFT_PASSWORD="$S_KEY" \
ST_AUTH="$S_AUTH" ST_USER="$S_USER" ST_KEY="$S_KEY" run_backend swift-v1 "swift://$C"

if [ "${SWIFT_KEYSTONE:-0}" = 1 ]; then
  env -u ST_AUTH -u ST_USER -u ST_KEY \
    SWIFT_AUTHURL="${SWIFT_KEYSTONE_URL:-http://127.0.0.1:${SWIFT_KEYSTONE_PORT:-6050}/v3}" \
    SWIFT_AUTHVERSION=3 SWIFT_USERNAME=tester SWIFT_PASSWORD=testing SWIFT_TENANTNAME=test \
    SWIFT_USER_DOMAIN_NAME=Default SWIFT_PROJECT_DOMAIN_NAME=Default \
    bash -c "$(declare -f step fail run_backend); W='$W'; run_backend swift-v3 'swift://$C'"
  env -u ST_AUTH -u ST_USER -u ST_KEY swift --auth-version 3 \
    --os-auth-url "${SWIFT_KEYSTONE_URL:-http://127.0.0.1:${SWIFT_KEYSTONE_PORT:-6050}/v3}" \
    --os-username tester --os-password testing --os-project-name test \
    --os-user-domain-id default --os-project-domain-id default delete "$C" >/dev/null 2>&1 || true
fi
step "OK"
