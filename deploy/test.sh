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
#    services, scoped credentials, faults, and the bad-input tests,
# 5. with no extra arguments, the deployment checks: the quickstart
#    (deploy/test-quickstart.sh runs deploy/quickstart.sh and checks what it says and
#    leaves behind) and the Debian packages (deploy/test-packages.sh: build, install,
#    run, remove, purge).
#
# Extra arguments go to `cargo test` (e.g. `deploy/test.sh -p flotilla-common`).
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/install-test-deps.sh
# Keystone too: the Swift client's v3 authentication is tested against it.
if ! SWIFT_KEYSTONE=1 bash deploy/services/up.sh; then
    # A service that fails to start once (seen rarely: memcached) gets one more try.
    echo "test.sh: the storage services did not come up; stopping them and trying once more" >&2
    bash deploy/services/down.sh || true
    SWIFT_KEYSTONE=1 bash deploy/services/up.sh
fi
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
if [ $# -eq 0 ]; then
    for check in test-quickstart test-packages; do
        printf '\n==== deploy/%s.sh\n' "$check"
        if bash "deploy/$check.sh"; then
            echo "deploy/$check.sh: passed"
        else
            echo "deploy/$check.sh: FAILED"
            rc=1
        fi
    done
fi
exit "$rc"
