#!/usr/bin/env bash
# deploy/enroll-hosts.sh: put the Flotilla agent on many hosts with one command.
#
# Run on a machine with the admin certificate (usually the coordinator host):
#   deploy/enroll-hosts.sh --coordinator https://coord.example:7443 \
#       --package flotilla-agent_0.1.0-1_amd64.deb --labels role=web,env=prod \
#       web-01 web-02 root@web-03
#
# It creates one single-use token per host in one `flotilla token create --count N`,
# then for each host over ssh: copies the package and the coordinator's CA certificate,
# installs the package (dpkg -i), enrolls with that host's token and starts the agent.
# A host that fails is reported and the others go on; the exit status is the number of
# failed hosts (0: all enrolled). Tokens of failed hosts expire unused (--ttl).
#
# Options:
#   --coordinator URL   the address agents use (required)
#   --package FILE      the flotilla-agent .deb (required)
#   --labels K=V,...    labels of the new hosts (the token's labels)
#   --ttl INTERVAL      token lifetime (default 1h)
#   --ca FILE           the CA certificate (default: $FLOTILLA_COORDINATOR_DIR/pki/ca.pem,
#                       or /var/lib/flotilla/pki/ca.pem)
#   --passphrase-file F copied to /etc/flotilla/agent.passphrase (0600) on each host,
#                       for policies with symmetric encryption
# Environment: SSH (default "ssh -o BatchMode=yes"), SCP (default "scp -q -o BatchMode=yes").
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-2}"; }

coordinator="" package="" labels="" ttl="1h" passphrase_file=""
ca="${FLOTILLA_COORDINATOR_DIR:-/var/lib/flotilla}/pki/ca.pem"
hosts=()
while [ $# -gt 0 ]; do
    case "$1" in
        --coordinator) coordinator="$2"; shift 2 ;;
        --package) package="$2"; shift 2 ;;
        --labels) labels="$2"; shift 2 ;;
        --ttl) ttl="$2"; shift 2 ;;
        --ca) ca="$2"; shift 2 ;;
        --passphrase-file) passphrase_file="$2"; shift 2 ;;
        -h|--help) usage 0 ;;
        -*) echo "enroll-hosts: unknown option $1" >&2; usage ;;
        *) hosts+=("$1"); shift ;;
    esac
done
[ -n "$coordinator" ] || { echo "enroll-hosts: --coordinator URL is required" >&2; usage; }
[ -r "$package" ] || { echo "enroll-hosts: --package: cannot read '$package'" >&2; exit 2; }
[ -r "$ca" ] || { echo "enroll-hosts: CA certificate: cannot read '$ca' (--ca FILE)" >&2; exit 2; }
[ -z "$passphrase_file" ] || [ -r "$passphrase_file" ] \
    || { echo "enroll-hosts: --passphrase-file: cannot read '$passphrase_file'" >&2; exit 2; }
[ ${#hosts[@]} -gt 0 ] || { echo "enroll-hosts: no hosts given" >&2; usage; }
SSH=${SSH:-ssh -o BatchMode=yes}
SCP=${SCP:-scp -q -o BatchMode=yes}

mapfile -t tokens < <(flotilla token create --labels "$labels" --ttl "$ttl" \
    --count "${#hosts[@]}" --coordinator "$coordinator")
[ ${#tokens[@]} -eq ${#hosts[@]} ] || { echo "enroll-hosts: could not create tokens" >&2; exit 2; }

failed=()
for i in "${!hosts[@]}"; do
    host=${hosts[$i]}
    echo "==> $host"
    tmp="/tmp/flotilla-enroll.$$"
    # The token travels on ssh's stdin, never on a command line (ps would show it).
    if $SSH "$host" "mkdir -p -m 0700 $tmp" \
        && $SCP "$package" "$ca" ${passphrase_file:+"$passphrase_file"} "$host:$tmp/" \
        && printf '%s\n' "${tokens[$i]}" | $SSH "$host" "set -e
            export DEBIAN_FRONTEND=noninteractive
            dpkg -i $tmp/$(basename "$package") >/dev/null
            if [ -n '$passphrase_file' ]; then
                install -m 0600 $tmp/$(basename "${passphrase_file:-none}") /etc/flotilla/agent.passphrase
                sed -i 's|^# *passphrase_file = .*|passphrase_file = \"/etc/flotilla/agent.passphrase\"|' /etc/flotilla/agent.toml
            fi
            read -r FLOTILLA_ENROLL_TOKEN; export FLOTILLA_ENROLL_TOKEN
            flotilla-agent --config /etc/flotilla/agent.toml enroll --coordinator '$coordinator' \
                --ca-cert $tmp/$(basename "$ca") --labels '$labels'
            rm -rf $tmp
            if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
                systemctl enable --now flotilla-agent
            fi"; then
        echo "    enrolled"
    else
        echo "    FAILED (see above)" >&2
        failed+=("$host")
    fi
done
echo
echo "${#hosts[@]} host(s), $(( ${#hosts[@]} - ${#failed[@]} )) enrolled${failed:+, failed: ${failed[*]}}"
exit ${#failed[@]}
