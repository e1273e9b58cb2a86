#!/usr/bin/env bash
# deploy/test-quickstart.sh: runs the README's first command (deploy/quickstart.sh) in
# a scratch directory and checks what it says and what it leaves: every step reported,
# the report showing the host fresh, both restores equal to the sample, no process
# left running, and stock duplicity restoring the store with the command it prints.
# Run by deploy/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { printf 'test-quickstart: FAIL: %s\n' "$*" >&2; exit 1; }

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
out="$dir/qs"
start=$(date +%s)
bash deploy/quickstart.sh "$out" >"$dir/log" 2>&1 || { cat "$dir/log"; fail "quickstart.sh exited non-zero"; }
echo "quickstart.sh: $(( $(date +%s) - start )) s"
expect() {
    grep -qF -- "$1" "$dir/log" || { cat "$dir/log"; fail "the output lacks: $1"; }
}
expect "==> starting a coordinator on 127.0.0.1:"
expect "Enrolled as quickstart"
expect "now protected by policy \"quickstart\""
expect "full set"
expect "incremental set"
expect "Chain 1 (2 set(s)):"
expect "1 host(s): 1 fresh; 100% fresh."
expect "page1-at-first-backup.html equals www/html/page1.html as it was at the first backup"
expect "restored-latest equals the sample"
expect "Verified: 209 path(s) match the backup's signatures"
expect "Done: a coordinator and an agent backed up $out/sample"
echo "output: every step reported"

if pgrep -f "$out" >/dev/null; then
    pgrep -af "$out"
    fail "processes still running after the quickstart"
fi
echo "no process left running"

for f in coordinator/pki/ca.pem coordinator/catalog agent/identity store/flotilla-quickstart \
         page1-at-first-backup.html restored-latest/etc/site.conf coordinator.log agent.log; do
    [ -e "$out/$f" ] || fail "$out/$f is missing"
done
ls "$out/store/flotilla-quickstart" | grep -q '^duplicity-full\..*\.manifest\.gpg$' || fail "no full manifest in the store"
ls "$out/store/flotilla-quickstart" | grep -q '^duplicity-inc\..*\.manifest\.gpg$' || fail "no incremental manifest in the store"
echo "files where the summary says"

cmd=$(grep -F "duplicity restore file://" "$dir/log" | sed 's/^ *//; s|/tmp/dup-restore$||')
[ -n "$cmd" ] || fail "no duplicity command in the summary"
# The printed command, with a target of ours.
env -i PATH="$PATH" HOME="$dir" bash -c "$cmd --archive-dir '$dir/dup-cache' '$dir/dup-restore'" >"$dir/dup.log" 2>&1 \
    || { cat "$dir/dup.log"; fail "stock duplicity could not restore the quickstart's store"; }
diff -r "$out/sample" "$dir/dup-restore" >/dev/null || fail "duplicity's restore differs from the sample"
echo "stock duplicity restores the store with the printed command"
echo "test-quickstart: all checks passed"
