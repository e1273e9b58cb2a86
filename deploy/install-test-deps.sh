#!/usr/bin/env bash
# deploy/install-test-deps.sh — install what Flotilla's end-to-end tests need.
#
# Usage (root, Debian 12 "bookworm"):   bash deploy/install-test-deps.sh
#
# Idempotent: checks every Debian package with dpkg-query first, runs
# `apt-get update` only when something is missing, installs with
# --no-install-recommends, and prints what it installed (or that nothing was
# missing). Works on a fresh machine with no prior state. Exits non-zero if a
# tool still does not work afterwards (e.g. duplicity is not 0.8.x).
#
# Used by the `flotilla-tests` crate (tests/src): duplicity and gpg for the
# interoperability tests (tests/src/duplicity.rs, tests/src/gpg.rs), python3 and
# coreutils for tests/fixtures/make-duplicity-fixture.sh, rdiff for librsync
# signature/delta interop, procps (ps, pgrep) and GNU time (/usr/bin/time -v) for
# process and resource checks, chromium (headless) for the HTML report test.
set -euo pipefail

# ----------------------------------------------------------------- packages
# Debian packages for the interoperability and end-to-end tests.
PACKAGES=(
    duplicity   # stock duplicity 0.8.22 (bookworm); pulls librsync2, python3 modules
    rdiff       # librsync's command-line tool
    gnupg       # gpg, gpg-agent, gpgconf (a dependency of duplicity too)
    python3     # fixture script (duplicity depends on it anyway)
    coreutils   # touch -h -d, stat, dd, sha256sum in the fixture script
    procps      # ps/pgrep/pkill for process tests
    time        # GNU time: /usr/bin/time -v for memory measurements
    bash        # (essential) runs the fixture script
    chromium    # headless browser: renders `flotilla report --format html` in a test
)

# ---------------------------------------------------------- storage services
# Azurite (npm) and Swift (Debian packages) are installed and started by
# deploy/services/up.sh, which deploy/test.sh runs next; the Azure SDK for
# duplicity's azure:// backend by deploy/services/install-duplicity.sh.
SERVICE_PACKAGES=(curl)

install_services() { :; }

# ---------------------------------------------------------------- machinery
log() { printf 'install-test-deps: %s\n' "$*"; }
die() { printf 'install-test-deps: error: %s\n' "$*" >&2; exit 1; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        die "must run as root (or with sudo available)"
    fi
fi

command -v dpkg-query >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
    || die "needs a Debian system (dpkg-query and apt-get not found)"

if [ -r /etc/os-release ]; then
    # shellcheck disable=SC1091
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-unknown}")
    if [ "$codename" != bookworm ]; then
        log "warning: this is '$codename', not Debian bookworm; the tests expect bookworm's duplicity 0.8.22 and gnupg 2.2"
    fi
fi

is_installed() { # is_installed PACKAGE
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

wanted=("${PACKAGES[@]}" "${SERVICE_PACKAGES[@]}")
missing=()
for p in "${wanted[@]}"; do
    is_installed "$p" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
    log "all ${#wanted[@]} packages already installed: nothing to do"
else
    log "missing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -q
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
    for p in "${missing[@]}"; do
        is_installed "$p" || die "package $p is still not installed"
        log "installed $p $(dpkg-query -W -f='${Version}' "$p")"
    done
fi

install_services

# ------------------------------------------------------------------ checks
dup_version=$(LC_ALL=C.UTF-8 duplicity --version 2>&1 | head -n1) \
    || die "duplicity does not run: $dup_version"
case "$dup_version" in
    "duplicity 0.8."*) ;;
    *) die "need duplicity 0.8.x (bookworm has 0.8.22), found: $dup_version" ;;
esac
gpg_version=$(gpg --version | head -n1) || die "gpg does not run"
command -v gpgconf >/dev/null || die "gpgconf not found"
command -v gpg-agent >/dev/null || die "gpg-agent not found"
rdiff --version >/dev/null 2>&1 || die "rdiff does not run"
/usr/bin/time -v true >/dev/null 2>&1 || die "/usr/bin/time -v does not work (GNU time)"
python3 -c 'import hashlib, os, stat' || die "python3 does not work"
chromium --version >/dev/null 2>&1 || die "chromium does not run"
for t in pgrep ps stat dd; do
    command -v "$t" >/dev/null || die "$t not found"
done

log "ok: $dup_version; $gpg_version; $(rdiff --version 2>&1 | head -n1); $(python3 --version 2>&1)"
