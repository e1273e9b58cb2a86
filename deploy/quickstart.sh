#!/usr/bin/env bash
# deploy/quickstart.sh: Flotilla's main job on an embedded default, with nothing to
# configure. In one scratch directory (default ./quickstart, or the first argument):
# builds flotilla and flotilla-agent, starts a coordinator on 127.0.0.1 whose policy
# backs up a sample directory to a local file:// store, enrolls an agent on this
# machine, runs a full and an incremental backup through the coordinator, prints the
# chain and the freshness report, restores one file as it was at the first backup and
# the whole sample as it is now, and checks both. Everything it starts is stopped at
# the end (also on failure or Ctrl-C); what it made stays in the directory.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
out=${1:-$repo/quickstart}
rm -rf "$out"
mkdir -p "$out"
out=$(cd "$out" && pwd)

step() { printf '\n==> %s\n' "$*"; }
die() { printf '\nquickstart: FAILED: %s\n' "$*" >&2; exit 1; }

pids=()
stop_all() {
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    pids=()
}
trap stop_all EXIT
trap 'exit 130' INT TERM

step "building flotilla and flotilla-agent (cargo build; a few minutes the first time)"
cargo build --locked -p flotilla-coordinator -p flotilla-client --bins
bin="$repo/target/debug"
flotilla="$bin/flotilla"
agent="$bin/flotilla-agent"

step "making a sample directory to back up: $out/sample"
mkdir -p "$out/sample/etc" "$out/sample/www/html" "$out/sample/var/log"
printf 'listen 80\nroot /var/www/html\n' > "$out/sample/etc/site.conf"
for i in $(seq 1 200); do printf '<p>page %d</p>\n' "$i" > "$out/sample/www/html/page$i.html"; done
head -c 3000000 /dev/urandom > "$out/sample/var/db.bin"
seq 1 100000 > "$out/sample/var/log/app.log"
ln -s site.conf "$out/sample/etc/current"

port=""
for p in $(seq 17443 17543); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then port=$p; break; fi
done
[ -n "$port" ] || die "no free port in 17443-17543 on 127.0.0.1"
export FLOTILLA_COORDINATOR="https://127.0.0.1:$port" FLOTILLA_COORDINATOR_DIR="$out/coordinator"

step "starting a coordinator on 127.0.0.1:$port (state in $out/coordinator)"
"$flotilla" init --dir "$out/coordinator" >/dev/null
cat > "$out/coordinator.toml" <<TOML
listen = "127.0.0.1:$port"
state_dir = "$out/coordinator"
heartbeat_secs = 2
TOML
"$flotilla" serve --config "$out/coordinator.toml" >"$out/coordinator.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
    grep -q "listening" "$out/coordinator.log" && break
    kill -0 "${pids[0]}" 2>/dev/null || { cat "$out/coordinator.log"; die "the coordinator exited"; }
    sleep 0.1
done
grep -q "listening" "$out/coordinator.log" || die "the coordinator did not start (see $out/coordinator.log)"

step "enrolling an agent on this machine as host 'quickstart' (state in $out/agent)"
export FLOTILLA_PASSPHRASE="quickstart-passphrase"
token=$("$flotilla" token create --labels role=quickstart --ttl 10m 2>/dev/null)
FLOTILLA_ENROLL_TOKEN=$token "$agent" --state-dir "$out/agent" enroll \
    --coordinator "$FLOTILLA_COORDINATOR" --ca-cert "$out/coordinator/pki/ca.pem" --hostname quickstart
"$agent" --state-dir "$out/agent" -v run >"$out/agent.log" 2>&1 &
pids+=($!)

step "applying a policy: back up $out/sample to file://$out/store, daily, encrypted"
cat > "$out/policies.toml" <<TOML
[destination.local]
kind = "file"
path = "$out/store"

[policy.quickstart]
select = { role = "quickstart" }
sources = ["$out/sample"]
destination = "local"
schedule = "0 3 * * *"          # daily at 03:00 host time (plus jitter)
jitter = "30m"
full_if_older_than = "7D"
keep_full_chains = 2
max_age = "1D"                  # the report calls a host stale after a day without backup
volsize_mb = 1
TOML
"$flotilla" policy apply "$out/policies.toml"
for _ in $(seq 1 100); do
    "$flotilla" hosts --json | grep -q '"policy_revision_applied": *1' && break
    sleep 0.2
done
"$flotilla" hosts

step "full backup now (on demand; the schedule would run it at night)"
"$flotilla" backup quickstart --wait
cp -a "$out/sample" "$out/sample-at-first-backup"
first=$(date -u +%s)
sleep 2

step "changing the sample (append to the log, edit a page, delete one) and backing up again"
seq 100001 120000 >> "$out/sample/var/log/app.log"
echo '<p>edited</p>' >> "$out/sample/www/html/page1.html"
rm "$out/sample/www/html/page2.html"
"$flotilla" backup quickstart --wait

step "the chain the catalog knows"
"$flotilla" chains quickstart

step "the freshness report"
"$flotilla" report

step "restoring one file as it was at the first backup: $out/page1-at-first-backup.html"
"$flotilla" restore quickstart --time "$first" --path www/html/page1.html \
    --target "$out/page1-at-first-backup.html"
cmp "$out/page1-at-first-backup.html" "$out/sample-at-first-backup/www/html/page1.html" \
    || die "the restored file differs from page1.html at the first backup"
echo "page1-at-first-backup.html equals www/html/page1.html as it was at the first backup"

step "restoring the latest backup: $out/restored-latest"
"$flotilla" restore quickstart --target "$out/restored-latest"
diff -r "$out/sample" "$out/restored-latest" >/dev/null || die "the restore differs from the sample"
echo "restored-latest equals the sample"

step "stopping the agent and the coordinator"
stop_all
echo "stopped"

cat <<TXT

Done: a coordinator and an agent backed up $out/sample twice (full, then incremental)
through a policy, reported on it and restored from it. Everything is in $out:
  sample/              the directory the policy backs up
  store/               the backups: flotilla-quickstart/, duplicity's format, encrypted
  coordinator/         the coordinator's CA, certificates and catalog (sled)
  agent/               the agent's identity, policy cache and signature cache
  page1-at-first-backup.html   one file, restored as it was at the first backup
  restored-latest/     the latest backup, restored
  coordinator.log, agent.log, policies.toml, coordinator.toml
Stock duplicity reads the same store:
  PASSPHRASE=$FLOTILLA_PASSPHRASE duplicity restore file://$out/store/flotilla-quickstart /tmp/dup-restore
To run a fleet: deploy/README.md (packages, systemd units, enrolling many hosts).
TXT
