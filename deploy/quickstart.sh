#!/usr/bin/env bash
# deploy/quickstart.sh — Flotilla's main job on an embedded default: back up a sample
# directory to a local store, change it, back up again (incremental), restore both
# points in time, and verify. Nothing to configure; everything stays in one scratch
# directory (default ./quickstart, or the first argument), which is printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
out=${1:-$repo/quickstart}
rm -rf "$out"
mkdir -p "$out"
out=$(cd "$out" && pwd)

step() { printf '\n==> %s\n' "$*"; }

step "building flotilla-agent (release)"
cargo build --release --locked -p flotilla-client --bin flotilla-agent
agent="$repo/target/release/flotilla-agent"

step "making a sample directory: $out/sample"
mkdir -p "$out/sample/etc" "$out/sample/www/html" "$out/sample/var/log"
printf 'listen 80\nroot /var/www/html\n' > "$out/sample/etc/site.conf"
for i in $(seq 1 200); do printf '<p>page %d</p>\n' "$i" > "$out/sample/www/html/page$i.html"; done
head -c 3000000 /dev/urandom > "$out/sample/var/db.bin"
seq 1 100000 > "$out/sample/var/log/app.log"
ln -s site.conf "$out/sample/etc/current"

export FLOTILLA_PASSPHRASE="quickstart-passphrase"
store="file://$out/store"
state="$out/state"

step "full backup to $store (encrypted with a passphrase)"
"$agent" --state-dir "$state" backup "$out/sample" "$store" --volsize 1
cp -a "$out/sample" "$out/sample-at-first-backup"
sleep 1

step "changing the sample (append to the log, edit a page, delete one) and backing up again"
seq 100001 120000 >> "$out/sample/var/log/app.log"
echo '<p>edited</p>' >> "$out/sample/www/html/page1.html"
rm "$out/sample/www/html/page2.html"
"$agent" --state-dir "$state" backup "$out/sample" "$store" --volsize 1

step "what the store holds"
"$agent" --state-dir "$state" status "$store"

first=$("$agent" --state-dir "$state" status --json "$store" | python3 -c 'import json,sys; print(json.load(sys.stdin)["chains"][0]["sets"][0]["time"])')

step "restoring the latest backup into $out/restored-latest"
"$agent" --state-dir "$state" restore "$store" "$out/restored-latest"
diff -r "$out/sample" "$out/restored-latest" && echo "restored-latest equals the sample"

step "restoring the first backup (time $first) into $out/restored-first"
"$agent" --state-dir "$state" restore "$store" "$out/restored-first" --time "$first"
diff -r "$out/sample-at-first-backup" "$out/restored-first" && echo "restored-first equals the sample as it was"

step "restoring one file as it was at the first backup"
"$agent" --state-dir "$state" restore "$store" "$out/page1-first.html" --time "$first" --path www/html/page1.html
cat "$out/page1-first.html"

step "verifying the latest backup against the sample (data and metadata)"
"$agent" --state-dir "$state" verify "$store" "$out/sample"

cat <<TXT

Done. Everything is in $out:
  sample/            the directory that was backed up
  store/             the backup, in duplicity's format (encrypted OpenPGP objects)
  state/             flotilla-agent's local signature cache
  restored-latest/   restore of the latest backup
  restored-first/    restore of the first backup
Stock duplicity reads the same store:
  PASSPHRASE=quickstart-passphrase duplicity restore $store /tmp/dup-restore
TXT
