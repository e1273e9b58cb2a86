#!/usr/bin/env bash
# Origin: copied from the verified recipe shared/services/start-swift.sh into Flotilla's
# deploy/services/ so the project does not depend on ../shared at run time.
# Sibling scripts are found relative to this file's own directory; state lives
# under $FLOTILLA_SERVICES_DIR (default /tmp/flotilla-services). See README.md.
#
# Start a single-node, single-replica OpenStack Swift on 127.0.0.1:
#   memcached (TempAuth token cache), account, container and object servers,
#   and the proxy (TempAuth + TempURL) on port ${SWIFT_PROXY_PORT:-8080}.
# With SWIFT_KEYSTONE=1 it also runs Keystone (identity API v3, sqlite) on
#   127.0.0.1:${SWIFT_KEYSTONE_PORT:-6050} and adds authtoken + keystoneauth
#   to the proxy (TempAuth accounts stay AUTH_*, Keystone ones are KEY_*).
# Configuration, rings, data, logs and pid files live under the state folder.
# The only file written outside it is /etc/swift/swift.conf, and only when it
# is missing (Debian's swift package ships one). Idempotent: components whose
# recorded process is alive are left alone; then it waits until the proxy
# authenticates a user and serves its account, or fails.
set -euo pipefail

STATE_DIR="${FLOTILLA_SERVICES_DIR:-/tmp/flotilla-services}"
SW="$STATE_DIR/swift"
ETC="$SW/etc"
DEVICES="$SW/srv"
DEVICE=d1
RUN="$STATE_DIR/run"
LOGDIR="$STATE_DIR/log"
HOST=127.0.0.1
PROXY_PORT="${SWIFT_PROXY_PORT:-8080}"
OBJECT_PORT="${SWIFT_OBJECT_PORT:-6010}"
CONTAINER_PORT="${SWIFT_CONTAINER_PORT:-6011}"
ACCOUNT_PORT="${SWIFT_ACCOUNT_PORT:-6012}"
MEMCACHE_PORT="${SWIFT_MEMCACHE_PORT:-6013}"
PART_POWER="${SWIFT_PART_POWER:-10}"
TIMEOUT="${SWIFT_START_TIMEOUT:-60}"
KEYSTONE="${SWIFT_KEYSTONE:-0}"
KS_PORT="${SWIFT_KEYSTONE_PORT:-6050}"
KS="$STATE_DIR/keystone"
RUN_USER="$(id -un)"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { echo "[start-swift] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

need=(swift-proxy-server swift-account-server swift-container-server
      swift-object-server swift-ring-builder memcached curl)
[ "$KEYSTONE" = 1 ] && need+=(keystone-manage keystone-wsgi-public)
for b in "${need[@]}"; do
  if ! command -v "$b" >/dev/null 2>&1 \
     || { [ "$KEYSTONE" = 1 ] && ! /usr/bin/python3 -c 'import keystonemiddleware, keystoneclient' 2>/dev/null; }; then
    log "$b (or a keystone module) not found, running install-swift.sh"
    SWIFT_KEYSTONE="$KEYSTONE" bash "$HERE/install-swift.sh"
    break
  fi
done

mkdir -p "$ETC" "$DEVICES/$DEVICE" "$SW/cache" "$RUN" "$LOGDIR"
# one start at a time (fd 9 is closed for the servers so they do not keep the lock)
exec 9>"$RUN/start-swift.lock"
flock -w 120 9 || die "another start-swift.sh holds $RUN/start-swift.lock"

# --- /etc/swift/swift.conf (hash path prefix/suffix, storage policy 0) ------
# Swift always reads this one from /etc/swift. Keep an existing file.
if [ ! -f /etc/swift/swift.conf ] || ! grep -q '^\[swift-hash\]' /etc/swift/swift.conf; then
  log "writing /etc/swift/swift.conf"
  mkdir -p /etc/swift
  cat >/etc/swift/swift.conf <<EOF
[swift-hash]
swift_hash_path_suffix = flotilla-test-suffix
swift_hash_path_prefix = flotilla-test-prefix

[storage-policy:0]
name = Policy-0
default = yes
EOF
fi

# --- server configuration (rewritten every time; it is deterministic) --------
common_default() { # common_default PORT
  cat <<EOF
[DEFAULT]
bind_ip = $HOST
bind_port = $1
workers = 0
user = $RUN_USER
swift_dir = $ETC
devices = $DEVICES
mount_check = false
disable_fallocate = true
log_level = INFO
EOF
}

{ common_default "$ACCOUNT_PORT"; cat <<EOF

[pipeline:main]
pipeline = healthcheck recon account-server

[app:account-server]
use = egg:swift#account

[filter:healthcheck]
use = egg:swift#healthcheck

[filter:recon]
use = egg:swift#recon
recon_cache_path = $SW/cache

[account-replicator]
[account-auditor]
[account-reaper]
EOF
} >"$ETC/account-server.conf"

{ common_default "$CONTAINER_PORT"; cat <<EOF

[pipeline:main]
pipeline = healthcheck recon container-server

[app:container-server]
use = egg:swift#container
allow_versions = true

[filter:healthcheck]
use = egg:swift#healthcheck

[filter:recon]
use = egg:swift#recon
recon_cache_path = $SW/cache

[container-replicator]
[container-updater]
[container-auditor]
[container-sync]
[container-sharder]
EOF
} >"$ETC/container-server.conf"

{ common_default "$OBJECT_PORT"; cat <<EOF

[pipeline:main]
pipeline = healthcheck recon object-server

[app:object-server]
use = egg:swift#object

[filter:healthcheck]
use = egg:swift#healthcheck

[filter:recon]
use = egg:swift#recon
recon_cache_path = $SW/cache

[object-replicator]
[object-reconstructor]
[object-updater]
[object-auditor]
EOF
} >"$ETC/object-server.conf"

if [ "$KEYSTONE" = 1 ]; then AUTH_MW="authtoken keystoneauth tempauth"; else AUTH_MW="tempauth"; fi
cat >"$ETC/proxy-server.conf" <<EOF
[DEFAULT]
bind_ip = $HOST
bind_port = $PROXY_PORT
workers = 0
user = $RUN_USER
swift_dir = $ETC
log_level = INFO

[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk tempurl $AUTH_MW copy container-quotas account-quotas slo dlo versioned_writes symlink proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
allow_account_management = true

[filter:tempauth]
use = egg:swift#tempauth
reseller_prefix = AUTH
token_life = 86400
# user_<account>_<user> = <key> [group] ...
user_admin_admin = admin .admin .reseller_admin
user_test_tester = testing .admin
user_test_tester2 = testing2 .admin
user_test_tester3 = testing3
user_test2_tester2 = testing2 .admin

[filter:tempurl]
use = egg:swift#tempurl
methods = GET HEAD PUT POST DELETE
allowed_digests = sha1 sha256 sha512

[filter:cache]
use = egg:swift#memcache
memcache_servers = $HOST:$MEMCACHE_PORT

[filter:catch_errors]
use = egg:swift#catch_errors

[filter:gatekeeper]
use = egg:swift#gatekeeper

[filter:healthcheck]
use = egg:swift#healthcheck

[filter:proxy-logging]
use = egg:swift#proxy_logging

[filter:listing_formats]
use = egg:swift#listing_formats

[filter:bulk]
use = egg:swift#bulk

[filter:copy]
use = egg:swift#copy

[filter:container-quotas]
use = egg:swift#container_quotas

[filter:account-quotas]
use = egg:swift#account_quotas

[filter:slo]
use = egg:swift#slo

[filter:dlo]
use = egg:swift#dlo

[filter:versioned_writes]
use = egg:swift#versioned_writes
allow_versioned_writes = true

[filter:symlink]
use = egg:swift#symlink

[filter:authtoken]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory
www_authenticate_uri = http://$HOST:$KS_PORT/v3
auth_url = http://$HOST:$KS_PORT/v3
auth_type = password
project_domain_id = default
user_domain_id = default
project_name = service
username = swift
password = swiftpass
delay_auth_decision = True
cache = swift.cache
include_service_catalog = False

[filter:keystoneauth]
use = egg:swift#keystoneauth
reseller_prefix = KEY_
operator_roles = admin, member
EOF

# --- rings: one device, one replica; rebuilt only when the layout changes ----
stamp="part_power=$PART_POWER account=$ACCOUNT_PORT container=$CONTAINER_PORT object=$OBJECT_PORT device=$DEVICE"
if [ "$(cat "$ETC/rings.stamp" 2>/dev/null || true)" != "$stamp" ] \
   || [ ! -f "$ETC/account.ring.gz" ] || [ ! -f "$ETC/container.ring.gz" ] || [ ! -f "$ETC/object.ring.gz" ]; then
  log "building rings ($stamp)"
  for kind in account container object; do
    case $kind in
      account) port=$ACCOUNT_PORT ;;
      container) port=$CONTAINER_PORT ;;
      object) port=$OBJECT_PORT ;;
    esac
    rm -f "$ETC/$kind.builder" "$ETC/$kind.ring.gz"
    rm -rf "$ETC/backups"
    swift-ring-builder "$ETC/$kind.builder" create "$PART_POWER" 1 1 >/dev/null
    swift-ring-builder "$ETC/$kind.builder" add "r1z1-$HOST:$port/$DEVICE" 100 >/dev/null
    # rebalance exits 1 for warnings (e.g. one device only); check the ring file instead
    swift-ring-builder "$ETC/$kind.builder" rebalance >/dev/null || true
    [ -f "$ETC/$kind.ring.gz" ] || die "could not build the $kind ring"
  done
  echo "$stamp" >"$ETC/rings.stamp"
fi

# --- processes ---------------------------------------------------------------
pid_alive() { # pid_alive NAME PATTERN
  local f="$RUN/$1.pid" pid
  [ -f "$f" ] || return 1
  pid="$(cat "$f")"
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$2"
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

conf_hash() { # hash of the configuration a server was started with
  case $1 in
    swift-account) sha256sum "$ETC/account-server.conf" ;;
    swift-container) sha256sum "$ETC/container-server.conf" ;;
    swift-object) sha256sum "$ETC/object-server.conf" ;;
    swift-proxy) sha256sum "$ETC/proxy-server.conf" ;;
    keystone) sha256sum "$KS/etc/keystone.conf" ;;
    *) echo "$MEMCACHE_PORT" ;;
  esac
}

running() { # exists and is not a zombie waiting to be reaped
  local st
  st="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}

stop_pid() { # stop_pid NAME: stop a process this script started earlier
  local pid; pid="$(cat "$RUN/$1.pid")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do running "$pid" || break; sleep 0.1; done
  if running "$pid"; then kill -9 "$pid" 2>/dev/null || true; sleep 0.5; fi
  rm -f "$RUN/$1.pid" "$RUN/$1.confhash"
}

start_one() { # start_one NAME PORT PATTERN CMD...
  local name=$1 port=$2 pattern=$3; shift 3
  if pid_alive "$name" "$pattern"; then
    if [ "$(cat "$RUN/$name.confhash" 2>/dev/null || true)" = "$(conf_hash "$name")" ]; then
      log "$name already running (pid $(cat "$RUN/$name.pid"))"
      return 0
    fi
    log "$name configuration changed: restarting pid $(cat "$RUN/$name.pid")"
    stop_pid "$name"
  fi
  rm -f "$RUN/$name.pid"
  if port_open "$port"; then
    die "port $HOST:$port is already in use by a process not started by this script ($name)"
  fi
  log "starting $name on $HOST:$port"
  # own session: Swift's servers signal their whole process group on SIGTERM
  setsid "$@" </dev/null >>"$LOGDIR/$name.log" 2>&1 9>&- &
  echo $! >"$RUN/$name.pid"
  conf_hash "$name" >"$RUN/$name.confhash"
}

wait_http() { # wait_http NAME PATTERN URL: until URL answers 2xx, bounded
  local name=$1 pattern=$2 url=$3 deadline=$((SECONDS + TIMEOUT))
  until curl -sf -o /dev/null -m 3 "$url"; do
    pid_alive "$name" "$pattern" || { tail -n 30 "$LOGDIR/$name.log" >&2 || true; die "$name exited"; }
    [ "$SECONDS" -lt "$deadline" ] || die "$name did not answer $url within ${TIMEOUT}s"
    sleep 0.5
  done
}

# --- Keystone (optional) -----------------------------------------------------------
if [ "$KEYSTONE" = 1 ]; then
  mkdir -p "$KS/etc" "$KS/fernet-keys" "$KS/credential-keys"
  cat >"$KS/etc/keystone.conf" <<EOF
[DEFAULT]
log_file = $LOGDIR/keystone-server.log
[database]
connection = sqlite:///$KS/keystone.db
[token]
provider = fernet
expiration = 86400
[fernet_tokens]
key_repository = $KS/fernet-keys
[credential]
key_repository = $KS/credential-keys
[identity]
# cheap bcrypt: test passwords only
password_hash_rounds = 4
[cache]
# in-process cache: token validation drops from ~1 s to a few ms
enabled = true
backend = dogpile.cache.memory
EOF
  if [ ! -f "$KS/bootstrapped" ]; then
    log "initialising keystone database (sqlite) in $KS"
    # a keystone left from an interrupted first start would keep the old file open
    if pid_alive keystone keystone-wsgi-public; then stop_pid keystone; fi
    rm -f "$KS/keystone.db"*
    km() { keystone-manage --config-file "$KS/etc/keystone.conf" "$@" >>"$LOGDIR/keystone-manage.log" 2>&1 \
             || { tail -n 20 "$LOGDIR/keystone-manage.log" >&2; die "keystone-manage $1 failed"; }; }
    km db_sync
    km fernet_setup --keystone-user "$RUN_USER" --keystone-group "$(id -gn)"
    km credential_setup --keystone-user "$RUN_USER" --keystone-group "$(id -gn)"
    km bootstrap --bootstrap-password admin --bootstrap-region-id RegionOne \
       --bootstrap-admin-url "http://$HOST:$KS_PORT/v3" \
       --bootstrap-internal-url "http://$HOST:$KS_PORT/v3" \
       --bootstrap-public-url "http://$HOST:$KS_PORT/v3"
    # WAL: without it keystone's own connections lock each other ("database is locked")
    /usr/bin/python3 -c 'import sqlite3,sys; sqlite3.connect(sys.argv[1]).execute("PRAGMA journal_mode=WAL")' "$KS/keystone.db"
  fi
  start_one keystone "$KS_PORT" keystone-wsgi-public \
    env OS_KEYSTONE_CONFIG_FILES="$KS/etc/keystone.conf" keystone-wsgi-public --host "$HOST" --port "$KS_PORT"
  wait_http keystone keystone-wsgi-public "http://$HOST:$KS_PORT/v3"
  if [ ! -f "$KS/bootstrapped" ]; then
    /usr/bin/python3 "$HERE/keystone-setup.py" "http://$HOST:$KS_PORT/v3" \
      "http://$HOST:$PROXY_PORT/v1/KEY_\$(project_id)s" >>"$LOGDIR/keystone-manage.log" 2>&1 \
      || { tail -n 20 "$LOGDIR/keystone-manage.log" >&2; die "keystone-setup.py failed"; }
    touch "$KS/bootstrapped"
  fi
fi

if [ "$KEYSTONE" != 1 ] && pid_alive keystone keystone-wsgi-public; then
  log "keystone not requested (SWIFT_KEYSTONE!=1): stopping the keystone started earlier"
  stop_pid keystone
fi

start_one swift-memcached "$MEMCACHE_PORT" memcached \
  memcached -l "$HOST" -p "$MEMCACHE_PORT" -U 0 -m 64 -c 1024 -u "$RUN_USER"
start_one swift-account "$ACCOUNT_PORT" swift-account-server \
  swift-account-server "$ETC/account-server.conf" --verbose
start_one swift-container "$CONTAINER_PORT" swift-container-server \
  swift-container-server "$ETC/container-server.conf" --verbose
start_one swift-object "$OBJECT_PORT" swift-object-server \
  swift-object-server "$ETC/object-server.conf" --verbose
start_one swift-proxy "$PROXY_PORT" swift-proxy-server \
  swift-proxy-server "$ETC/proxy-server.conf" --verbose

# --- readiness -----------------------------------------------------------------
check_all() {
  local n
  for n in account:"$ACCOUNT_PORT" container:"$CONTAINER_PORT" object:"$OBJECT_PORT" proxy:"$PROXY_PORT"; do
    [ "$(curl -s -m 3 "http://$HOST:${n#*:}/healthcheck" || true)" = "OK" ] || { why="${n%%:*} healthcheck"; return 1; }
  done
  local hdrs url token code
  hdrs="$(curl -s -m 5 -D - -o /dev/null -H 'X-Auth-User: test:tester' -H 'X-Auth-Key: testing' \
          "http://$HOST:$PROXY_PORT/auth/v1.0" || true)"
  url="$(printf '%s\n' "$hdrs" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-storage-url"{print $2}')"
  token="$(printf '%s\n' "$hdrs" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-auth-token"{print $2}')"
  [ -n "$url" ] && [ -n "$token" ] || { why="TempAuth login"; return 1; }
  code="$(curl -s -m 5 -o /dev/null -w '%{http_code}' -I -H "X-Auth-Token: $token" "$url" || true)"
  [ "$code" = 204 ] || [ "$code" = 200 ] || { why="account HEAD returned $code"; return 1; }
  if [ "$KEYSTONE" = 1 ]; then
    env -u ST_AUTH -u ST_USER -u ST_KEY swift --auth-version 3 --os-auth-url "http://$HOST:$KS_PORT/v3" --os-username tester \
      --os-password testing --os-project-name test --os-user-domain-id default \
      --os-project-domain-id default stat >/dev/null 2>&1 || { why="keystone v3 login + account stat"; return 1; }
  fi
}

deadline=$((SECONDS + TIMEOUT))
why=""
until check_all; do
  names=(swift-memcached:memcached swift-account:swift-account-server
         swift-container:swift-container-server swift-object:swift-object-server
         swift-proxy:swift-proxy-server)
  [ "$KEYSTONE" = 1 ] && names+=(keystone:keystone-wsgi-public)
  for name in "${names[@]}"; do
    # Looked at twice: a process seen between fork and exec is not gone.
    if ! pid_alive "${name%%:*}" "${name#*:}" && { sleep 1; ! pid_alive "${name%%:*}" "${name#*:}"; }; then
      log "ERROR: ${name%%:*} exited; last lines of $LOGDIR/${name%%:*}.log:"
      tail -n 30 "$LOGDIR/${name%%:*}.log" >&2 || true
      exit 1
    fi
  done
  if [ "$SECONDS" -ge "$deadline" ]; then
    log "ERROR: Swift not ready within ${TIMEOUT}s (failing check: $why); see $LOGDIR/swift-*.log"
    exit 1
  fi
  sleep 0.5
done
log "ready: auth http://$HOST:$PROXY_PORT/auth/v1.0 (test:tester / testing), ${SECONDS}s"
[ "$KEYSTONE" = 1 ] && log "keystone v3: http://$HOST:$KS_PORT/v3 (tester / testing, project test, domain default)"
exit 0
