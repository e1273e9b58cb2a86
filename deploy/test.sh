#!/usr/bin/env bash
# deploy/test.sh — the whole test suite, on a fresh Debian bookworm machine.
#
# 1. installs what the tests need (deploy/install-test-deps.sh: stock duplicity,
#    gpg, rdiff, ...; needs root or sudo),
# 2. installs and starts the storage services on 127.0.0.1 (deploy/services/up.sh:
#    Azurite from npm, a single-node OpenStack Swift from Debian's packages) and the
#    Azure SDK duplicity's azure:// backend needs; the tests find them through the
#    variables of deploy/services/env.sh. They keep running afterwards (stop them
#    with `bash deploy/services/down.sh`); FLOTILLA_SERVICES_DOWN=1 stops them at exit.
# 3. builds every binary (end-to-end tests run flotilla-agent as a real process),
# 4. runs every test of the workspace: unit tests, the OpenPGP interop tests against
#    gpg, the engine round trips, duplicity/rdiff interop, the storage conformance
#    suite against a directory, Azurite and Swift, end-to-end backups through both
#    services, scoped credentials, faults, and the bad-input tests.
#
# Extra arguments go to `cargo test` (e.g. `deploy/test.sh -p flotilla-common`).
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/install-test-deps.sh
# Keystone too: the Swift client's v3 authentication is tested against it.
SWIFT_KEYSTONE=1 bash deploy/services/up.sh
bash deploy/services/install-duplicity.sh
# shellcheck disable=SC1091
. deploy/services/env.sh
if ! command -v cargo >/dev/null 2>&1; then
    echo "test.sh: cargo not found: install Rust (https://rustup.rs), then run again" >&2
    exit 1
fi
cargo build --workspace --bins --locked
log=$(mktemp)
trap 'rm -f "$log"; if [ "${FLOTILLA_SERVICES_DOWN:-0}" = 1 ]; then bash deploy/services/down.sh; fi' EXIT
set +e
cargo test --workspace --locked "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
# One total over every test binary (cargo prints a line per binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "\ntotal: %d passed, %d failed\n", p, f }' "$log"
exit "$rc"
