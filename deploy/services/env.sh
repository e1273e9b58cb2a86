# Origin: copied from the verified recipe shared/services/env.sh into Flotilla's
# deploy/services/ so the project does not depend on ../shared at run time.
# Only sets variables (no set -e: it is sourced into the caller's shell). See README.md.
#
# Source this file (". env.sh") to get the connection settings of the services
# started by start-azurite.sh and start-swift.sh. It only sets variables.
# Ports follow the same overrides as the start scripts.

# --- Azurite (blob) ------------------------------------------------------------
_az_port="${AZURITE_BLOB_PORT:-10000}"
export AZURE_STORAGE_ACCOUNT_NAME=devstoreaccount1
export AZURE_STORAGE_ACCOUNT_KEY='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='
# blob endpoint including the account (path-style, as Azurite serves it)
export AZURE_STORAGE_ENDPOINT="http://127.0.0.1:${_az_port}/devstoreaccount1"
export AZURE_ALLOW_HTTP=true
# object_store's emulator mode takes the URL *without* the account and appends it
export AZURITE_BLOB_STORAGE_URL="http://127.0.0.1:${_az_port}"
export AZURE_STORAGE_CONNECTION_STRING="DefaultEndpointsProtocol=http;AccountName=${AZURE_STORAGE_ACCOUNT_NAME};AccountKey=${AZURE_STORAGE_ACCOUNT_KEY};BlobEndpoint=${AZURE_STORAGE_ENDPOINT};"
# the name duplicity 0.8.22's azure:// backend reads
export AZURE_CONNECTION_STRING="$AZURE_STORAGE_CONNECTION_STRING"

# --- Swift (TempAuth, v1 auth) -------------------------------------------------
_sw_port="${SWIFT_PROXY_PORT:-8080}"
export SWIFT_AUTH_URL="http://127.0.0.1:${_sw_port}/auth/v1.0"
export SWIFT_USER=test:tester
export SWIFT_KEY=testing
# storage URL that TempAuth returns for test:tester
export SWIFT_STORAGE_URL="http://127.0.0.1:${_sw_port}/v1/AUTH_test"
# second account, for isolation tests
export SWIFT_USER2=test2:tester2
export SWIFT_KEY2=testing2
# python-swiftclient's CLI names
export ST_AUTH="$SWIFT_AUTH_URL" ST_USER="$SWIFT_USER" ST_KEY="$SWIFT_KEY"
# the names duplicity's swift:// backend (and flotilla-agent) read
export SWIFT_AUTHURL="$SWIFT_AUTH_URL" SWIFT_AUTHVERSION=1
export SWIFT_USERNAME="$SWIFT_USER" SWIFT_PASSWORD="$SWIFT_KEY"

# --- duplicity's azure:// backend -------------------------------------------------
# azure-storage-blob installed by install-duplicity.sh, for PYTHONPATH
export FLOTILLA_DUPLICITY_AZURE_SITE="${FLOTILLA_SERVICES_DIR:-/tmp/flotilla-services}/duplicity-azure/site"

# --- Keystone v3 (only when started with SWIFT_KEYSTONE=1) ---------------------
export SWIFT_KEYSTONE_URL="http://127.0.0.1:${SWIFT_KEYSTONE_PORT:-6050}/v3"
export SWIFT_KEYSTONE_USER=tester SWIFT_KEYSTONE_PASSWORD=testing SWIFT_KEYSTONE_PROJECT=test
export SWIFT_KEYSTONE_DOMAIN=Default
unset _az_port _sw_port
