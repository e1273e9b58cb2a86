#!/usr/bin/env bash
# Restore timings on a freshly made ext4 filesystem (a loop-mounted image), against
# `cp -a` of the source tree on the same kind of filesystem.
#
# Why: on a disk that has seen many trees created and deleted (as a benchmark's work dir
# has), ext4 spends most of a file creation checking recently freed inodes
# (`recently_deleted` in `ext4_create`), and a restore's time then depends on the disk's
# history more than on the tool: the same restore took 5.6 s to 18 s on one machine.
# A fresh filesystem per run removes that. Needs root (mkfs, mount).
#
# Usage: bench/fresh-fs-restore.sh STORE_URL SOURCE_TREE [RUNS [-- extra restore args]]
#   STORE_URL    a store holding a backup of SOURCE_TREE (e.g. file:///var/tmp/bench/run/...)
#   SOURCE_TREE  the tree that was backed up (copied with cp -a for the floor)
# Environment: FLOTILLA_AGENT (default target/release/flotilla-agent), FLOTILLA_PASSPHRASE
# (default the bench's passphrase), IMAGE (default /var/tmp/flotilla-fresh-fs.img, sized
# 4x the source), MOUNT (default /mnt/flotilla-fresh-fs).
set -euo pipefail
if [[ $# -lt 2 ]]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 2
fi
url=$1
src=$2
runs=${3:-3}
if ! [[ $runs =~ ^[1-9][0-9]*$ ]]; then
    echo "fresh-fs-restore: RUNS must be a positive number, not '$runs'" >&2
    exit 2
fi
shift $(($# < 3 ? $# : 3))
if [[ ${1:-} == -- ]]; then shift; fi
agent=${FLOTILLA_AGENT:-$(dirname "$0")/../target/release/flotilla-agent}
export FLOTILLA_PASSPHRASE=${FLOTILLA_PASSPHRASE:-flotilla-bench-passphrase}
image=${IMAGE:-/var/tmp/flotilla-fresh-fs.img}
mnt=${MOUNT:-/mnt/flotilla-fresh-fs}
size_kb=$(du -sk "$src" | cut -f1)

fresh_fs() {
    umount "$mnt" 2>/dev/null || true
    mkdir -p "$mnt"
    rm -f "$image"
    truncate -s $((size_kb * 4 + 1048576))K "$image"
    mkfs.ext4 -q -F "$image"
    mount -o loop "$image" "$mnt"
    sync
}
cleanup() {
    umount "$mnt" 2>/dev/null || true
    rm -f "$image"
}
trap cleanup EXIT

# Warm page cache for both sides, as bench.py does before every timed step.
find "$src" -type f -print0 | xargs -0 cat >/dev/null
if [[ $url == file://* ]]; then
    find "${url#file://}" -type f -print0 | xargs -0 cat >/dev/null
fi
for i in $(seq "$runs"); do
    fresh_fs
    /usr/bin/time -f "run $i  cp -a                      %e s wall  %U user  %S sys" \
        cp -a "$src/." "$mnt/cp"
    fresh_fs
    /usr/bin/time -f "run $i  flotilla-agent restore $* %e s wall  %U user  %S sys  %M KB" \
        "$agent" restore "$url" "$mnt/t" --state-dir "$mnt/state" "$@" >/dev/null
done
