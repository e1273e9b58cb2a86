#!/usr/bin/env bash
# deploy/test-packages.sh: build the two Debian packages, install them on this machine,
# check what they put where, run the installed binaries as the units would, and purge
# them again. Needs root (dpkg) on Debian bookworm; run by deploy/test.sh.
#
# Checks: files, conffiles, the flotilla system user, state directories and their
# modes, `systemd-analyze verify` of the installed units, --version/--help, a coordinator
# started as the unit starts it (user flotilla, /etc/flotilla/coordinator.toml) with an
# agent enrolled and connected through /etc/flotilla/agent.toml, both stopping cleanly
# on SIGTERM; then remove (config kept), purge (config gone, state kept and said so) and
# purge with FLOTILLA_PURGE_STATE=yes (nothing left, user gone).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
fail() { printf 'test-packages: FAIL: %s\n' "$*" >&2; exit 1; }
ok() { printf '    ok: %s\n' "$*"; }

[ "$(id -u)" -eq 0 ] || fail "needs root (dpkg -i)"
for p in flotilla-agent flotilla-coordinator; do
    if grep -q 'ok installed' <<<"$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)"; then
        fail "$p is installed on this machine already; this test installs and purges it (dpkg --purge $p first)"
    fi
done
for d in /var/lib/flotilla /var/lib/flotilla-agent /etc/flotilla; do
    [ ! -e "$d" ] || fail "$d exists already; this test would mix with it (move it away first)"
done

step "building the packages (cargo-deb)"
if ! cargo deb --version >/dev/null 2>&1; then
    cargo install cargo-deb --locked --version 3.8.0
fi
cargo build --release --locked -p flotilla-client -p flotilla-coordinator --bins
rm -f target/debian/flotilla-*.deb
cargo deb -p flotilla-coordinator --no-build --strip
cargo deb -p flotilla-client --no-build --strip
coord_deb=$(ls target/debian/flotilla-coordinator_*.deb)
agent_deb=$(ls target/debian/flotilla-agent_*.deb)
ls -l "$coord_deb" "$agent_deb"
agent_size=$(stat -c %s "$agent_deb")
[ "$agent_size" -lt $((15 * 1024 * 1024)) ] || fail "the agent package is $agent_size bytes"
dpkg-deb -f "$agent_deb" Package Version Depends
dpkg-deb -f "$coord_deb" Package Version Depends

workdir=$(mktemp -d)
serve_pid="" agent_pid=""
cleanup() {
    [ -z "$agent_pid" ] || kill "$agent_pid" 2>/dev/null || true
    [ -z "$serve_pid" ] || kill "$serve_pid" 2>/dev/null || true
    rm -rf "$workdir"
}
trap cleanup EXIT

install_both() {
    dpkg -i "$coord_deb" "$agent_deb" >"$workdir/dpkg.log" 2>&1 || { cat "$workdir/dpkg.log"; fail "dpkg -i"; }
}

step "installing both packages"
install_both
cat "$workdir/dpkg.log"
dpkg -L flotilla-agent flotilla-coordinator | sort -u > "$workdir/files"
for f in /usr/bin/flotilla /usr/bin/flotilla-agent /etc/flotilla/coordinator.toml /etc/flotilla/agent.toml \
         /usr/lib/systemd/system/flotilla-coordinator.service /usr/lib/systemd/system/flotilla-agent.service \
         /usr/share/doc/flotilla-coordinator/README.operator.md \
         /usr/share/doc/flotilla-coordinator/examples/policies.example.toml \
         /usr/share/doc/flotilla-coordinator/examples/flotilla-alerts.yml \
         /usr/share/doc/flotilla-coordinator/examples/enroll-hosts.sh; do
    grep -qx "$f" "$workdir/files" || fail "$f is not in the packages"
    [ -e "$f" ] || fail "$f was not installed"
done
ok "files in place"
grep -q /etc/flotilla/agent.toml <<<"$(dpkg-query -W -f='${Conffiles}\n' flotilla-agent flotilla-coordinator)" \
    || fail "agent.toml is not a conffile"
grep -q /etc/flotilla/coordinator.toml <<<"$(dpkg-query -W -f='${Conffiles}\n' flotilla-coordinator)" \
    || fail "coordinator.toml is not a conffile"
ok "configuration files are conffiles"
IFS=: read -r _ _ uid _ _ home shell < <(getent passwd flotilla) || fail "no user flotilla"
[ "$uid" -lt 1000 ] || fail "flotilla is not a system user (uid $uid)"
[ "$home" = /var/lib/flotilla ] || fail "flotilla's home is $home"
[ "$shell" = /usr/sbin/nologin ] || fail "flotilla's shell is $shell"
ok "system user flotilla (uid $uid, $home, $shell)"
[ "$(stat -c '%U:%G %a' /var/lib/flotilla)" = "flotilla:flotilla 700" ] \
    || fail "/var/lib/flotilla is $(stat -c '%U:%G %a' /var/lib/flotilla)"
[ "$(stat -c '%U:%G %a' /var/lib/flotilla-agent)" = "root:root 700" ] \
    || fail "/var/lib/flotilla-agent is $(stat -c '%U:%G %a' /var/lib/flotilla-agent)"
ok "state directories /var/lib/flotilla (flotilla, 0700) and /var/lib/flotilla-agent (root, 0700)"
systemd-analyze verify /usr/lib/systemd/system/flotilla-coordinator.service /usr/lib/systemd/system/flotilla-agent.service
ok "systemd-analyze verify: both units"
flotilla --version && flotilla-agent --version
grep -q "report" <<<"$(flotilla --help)" || fail "flotilla --help"
grep -q "enroll" <<<"$(flotilla-agent --help)" || fail "flotilla-agent --help"
grep -q -- "--check-storage" <<<"$(flotilla report --help)" || fail "flotilla report --help"
ok "installed binaries run"

step "running them as the units do"
runuser -u flotilla -- flotilla init --dir /var/lib/flotilla
[ "$(stat -c %U /var/lib/flotilla/pki/ca.pem)" = flotilla ] || fail "pki not owned by flotilla"
# setpriv execs (runuser would stay as the parent and turn SIGTERM into 143).
setpriv --reuid flotilla --regid flotilla --init-groups flotilla serve --config /etc/flotilla/coordinator.toml >"$workdir/serve.log" 2>&1 &
serve_pid=$!
for _ in $(seq 1 100); do
    grep -q "listening" "$workdir/serve.log" && break
    kill -0 "$serve_pid" 2>/dev/null || { cat "$workdir/serve.log"; fail "flotilla serve exited"; }
    sleep 0.1
done
export FLOTILLA_COORDINATOR_DIR=/var/lib/flotilla FLOTILLA_COORDINATOR=https://127.0.0.1:7443
# Enroll with deploy/enroll-hosts.sh, as an operator would for many hosts; ssh and scp
# are stand-ins that run on this machine.
cat > "$workdir/fake-ssh" <<'SH'
#!/bin/bash
# fake-ssh HOST COMMAND: runs COMMAND here.
exec bash -c "$2"
SH
cat > "$workdir/fake-scp" <<'SH'
#!/bin/bash
# fake-scp FILE... HOST:DIR: copies here.
args=("$@"); dest=${args[-1]}; unset 'args[-1]'
exec cp "${args[@]}" "${dest#*:}"
SH
chmod 755 "$workdir/fake-ssh" "$workdir/fake-scp"
SSH="$workdir/fake-ssh" SCP="$workdir/fake-scp" bash deploy/enroll-hosts.sh \
    --coordinator https://127.0.0.1:7443 --package "$agent_deb" --labels role=package-test this-host \
    | tee "$workdir/enroll.log"
grep -q "1 host(s), 1 enrolled" "$workdir/enroll.log" || fail "enroll-hosts.sh did not enroll the host"
[ -e /var/lib/flotilla-agent/identity ] || fail "enroll wrote no identity to the configured state_dir"
flotilla-agent --config /etc/flotilla/agent.toml run >"$workdir/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 1 100); do
    grep -q '"connected": *true' <<<"$(flotilla hosts --json)" && break
    sleep 0.1
done
flotilla hosts
grep -q '"connected": *true' <<<"$(flotilla hosts --json)" || { cat "$workdir/agent.log"; fail "the agent did not connect"; }
grep -q "connected as " "$workdir/agent.log" || { cat "$workdir/agent.log"; fail "agent log (log = \"info\" from agent.toml)"; }
grep -q '"role": *"package-test"' <<<"$(flotilla hosts --json)" || fail "the host lacks the labels of enroll-hosts.sh"
ok "coordinator as user flotilla; agent enrolled by enroll-hosts.sh, connected with /etc/flotilla/agent.toml"
kill -TERM "$agent_pid"
wait "$agent_pid" || fail "the agent exited $? on SIGTERM"
agent_pid=""
kill -TERM "$serve_pid"
wait "$serve_pid" || fail "the coordinator exited $? on SIGTERM"
serve_pid=""
ok "both stop cleanly on SIGTERM"
if flotilla-agent --config /etc/flotilla/nonexistent.toml run 2>"$workdir/err"; then fail "a missing config was accepted"; fi
grep -q "/etc/flotilla/nonexistent.toml" "$workdir/err" || fail "the config error does not name the file: $(cat "$workdir/err")"
ok "a missing config file is an error naming it"

step "remove: binaries go, configuration stays"
dpkg -r flotilla-agent flotilla-coordinator >/dev/null
[ ! -e /usr/bin/flotilla ] && [ ! -e /usr/bin/flotilla-agent ] || fail "binaries left after remove"
[ -e /etc/flotilla/coordinator.toml ] && [ -e /etc/flotilla/agent.toml ] || fail "configuration gone after remove"
ok "removed"

step "purge: configuration goes, state stays (and is named)"
dpkg --purge flotilla-agent flotilla-coordinator 2>"$workdir/purge.log" >/dev/null
cat "$workdir/purge.log"
[ ! -e /etc/flotilla ] || fail "/etc/flotilla left after purge: $(ls -A /etc/flotilla)"
[ -e /var/lib/flotilla/pki/ca.pem ] || fail "purge removed the coordinator's CA without FLOTILLA_PURGE_STATE=yes"
[ -e /var/lib/flotilla-agent/identity ] || fail "purge removed the agent's identity without FLOTILLA_PURGE_STATE=yes"
grep -q "kept /var/lib/flotilla " "$workdir/purge.log" && grep -q "kept /var/lib/flotilla-agent" "$workdir/purge.log" \
    || fail "purge did not say what it kept"
ok "state kept and named"

step "install again over the kept state, then purge with FLOTILLA_PURGE_STATE=yes"
install_both
[ -e /var/lib/flotilla/pki/ca.pem ] && [ "$(stat -c %U /var/lib/flotilla/pki/ca.pem)" = flotilla ] \
    || fail "reinstall lost the kept state"
FLOTILLA_PURGE_STATE=yes dpkg --purge flotilla-agent flotilla-coordinator >/dev/null
while read -r f; do
    case "$f" in /|/etc|/usr|/usr/bin|/usr/lib|/usr/share|/usr/share/doc|/usr/lib/systemd|/usr/lib/systemd/system) continue ;; esac
    [ ! -e "$f" ] || fail "$f left after purge"
done < "$workdir/files"
for d in /etc/flotilla /var/lib/flotilla /var/lib/flotilla-agent; do
    [ ! -e "$d" ] || fail "$d left after purge with FLOTILLA_PURGE_STATE=yes"
done
! getent passwd flotilla >/dev/null || fail "user flotilla left after purge with FLOTILLA_PURGE_STATE=yes"
! getent group flotilla >/dev/null || fail "group flotilla left after purge with FLOTILLA_PURGE_STATE=yes"
ok "nothing left"
printf '\ntest-packages: all checks passed\n'
