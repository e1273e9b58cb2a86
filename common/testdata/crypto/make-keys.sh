#!/bin/sh
# Regenerates the TEST-ONLY OpenPGP keys in this directory with GnuPG 2.2.
# These keys protect nothing: their secret halves are committed on purpose.
set -eu
cd "$(dirname "$0")"
GNUPGHOME=$(mktemp -d /tmp/flotilla-keys.XXXXXX)
export GNUPGHOME
trap 'gpgconf --kill all; rm -rf "$GNUPGHOME"' EXIT
G="gpg --batch --pinentry-mode loopback"

fpr() { gpg --with-colons --list-keys "$1" | awk -F: '/^fpr/ {print $10; exit}'; }

# 1. RSA-3072 [SC] primary + RSA-3072 [E] subkey, no passphrase.
$G --passphrase '' --quick-gen-key 'Flotilla Test RSA <rsa@test.invalid>' rsa3072 sign,cert never
F=$(fpr rsa@test.invalid)
$G --passphrase '' --quick-add-key "$F" rsa3072 encr never
$G --armor --export "$F" > rsa.pub.asc
$G --passphrase '' --armor --export-secret-keys "$F" > rsa.sec.asc

# 2. Ed25519 [SC] + Cv25519 [E] (gpg "future-default"), no passphrase.
$G --passphrase '' --quick-gen-key 'Flotilla Test Ed25519 <ed@test.invalid>' future-default default never
F=$(fpr ed@test.invalid)
$G --armor --export "$F" > ed.pub.asc
$G --passphrase '' --armor --export-secret-keys "$F" > ed.sec.asc

# 3. Ed25519 [C] primary + Ed25519 [S] subkey + Cv25519 [E] subkey,
#    protected with the passphrase "flotilla-test".
$G --passphrase 'flotilla-test' --quick-gen-key 'Flotilla Test Subkeys <sub@test.invalid>' ed25519 cert never
F=$(fpr sub@test.invalid)
$G --passphrase 'flotilla-test' --quick-add-key "$F" ed25519 sign never
$G --passphrase 'flotilla-test' --quick-add-key "$F" cv25519 encr never
$G --armor --export "$F" > sub.pub.asc
$G --passphrase 'flotilla-test' --armor --export-secret-keys "$F" > sub.sec.asc

# 4. A key that expired in 2020 (created with a faked clock).
$G --passphrase '' --faked-system-time 20200101T000000 --quick-gen-key 'Flotilla Test Expired <expired@test.invalid>' future-default default 2d
F=$(fpr expired@test.invalid)
$G --armor --export "$F" > expired.pub.asc

# 5. A revoked key (gpg's automatically generated revocation certificate, imported).
$G --passphrase '' --quick-gen-key 'Flotilla Test Revoked <revoked@test.invalid>' future-default default never
F=$(fpr revoked@test.invalid)
sed 's/^:-----BEGIN/-----BEGIN/' "$GNUPGHOME/openpgp-revocs.d/$F.rev" > "$GNUPGHOME/rev.asc"
$G --import "$GNUPGHOME/rev.asc"
$G --armor --export "$F" > revoked.pub.asc
