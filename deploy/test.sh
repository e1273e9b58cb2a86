#!/usr/bin/env bash
# deploy/test.sh — the whole test suite, on a fresh Debian bookworm machine.
#
# 1. installs what the tests need (deploy/install-test-deps.sh: stock duplicity,
#    gpg, rdiff, ...; needs root or sudo),
# 2. builds every binary (end-to-end tests run flotilla-agent as a real process),
# 3. runs every test of the workspace: unit tests, the OpenPGP interop tests against
#    gpg, the engine round trips, duplicity/rdiff interop and the bad-input tests.
#
# Extra arguments go to `cargo test` (e.g. `deploy/test.sh -p flotilla-common`).
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/install-test-deps.sh
if ! command -v cargo >/dev/null 2>&1; then
    echo "test.sh: cargo not found: install Rust (https://rustup.rs), then run again" >&2
    exit 1
fi
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
