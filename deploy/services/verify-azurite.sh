#!/usr/bin/env bash
# Origin: copied from the verified recipe shared/services/verify-azurite.sh into Flotilla's
# deploy/services/ so the project does not depend on ../shared at run time.
# Sibling scripts are found relative to this file's own directory; state lives
# under $FLOTILLA_SERVICES_DIR (default /tmp/flotilla-services). See README.md.
#
# Run verify-azurite.py with the Azure SDK from PyPI, in a virtualenv under
# the state folder (made on first use).
set -euo pipefail
STATE_DIR="${FLOTILLA_SERVICES_DIR:-/tmp/flotilla-services}"
VENV="$STATE_DIR/venv"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if ! "$VENV/bin/python" -c 'import azure.storage.blob' 2>/dev/null; then
  python3 -m venv "$VENV"
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/pip" install --quiet "azure-storage-blob==${AZURE_BLOB_PY_VERSION:-12.31.1}"
fi
exec "$VENV/bin/python" "$HERE/verify-azurite.py"
