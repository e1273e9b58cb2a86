#!/usr/bin/env bash
# Origin: copied from the verified recipe shared/services/verify-swift.sh into Flotilla's
# deploy/services/ so the project does not depend on ../shared at run time.
# Sibling scripts are found relative to this file's own directory; state lives
# under $FLOTILLA_SERVICES_DIR (default /tmp/flotilla-services). See README.md.
#
# End-to-end check of the Swift started by start-swift.sh, with the real
# python-swiftclient CLI and curl: stat, upload, list, download, delete, a
# 50 MiB object (plain and as an SLO in segments), and TempURLs (PUT, GET,
# prefix-based). Uses a scratch folder under the state folder and removes
# what it created.
set -euo pipefail

STATE_DIR="${FLOTILLA_SERVICES_DIR:-/tmp/flotilla-services}"
export ST_AUTH="${SWIFT_AUTH_URL:-http://127.0.0.1:8080/auth/v1.0}"
export ST_USER="${SWIFT_USER:-test:tester}"
export ST_KEY="${SWIFT_KEY:-testing}"
SIZE_MB="${VERIFY_SIZE_MB:-50}"
C="verify-$$-$RANDOM"
W="$(mktemp -d "$STATE_DIR/verify-swift.XXXXXX")"
cleanup() { swift delete "$C" >/dev/null 2>&1 || true; swift delete "${C}_segments" >/dev/null 2>&1 || true; rm -rf "$W"; }
trap cleanup EXIT
step() { echo "[verify-swift] $*"; }
fail() { echo "[verify-swift] FAILED: $*" >&2; exit 1; }

swift stat >/dev/null || fail "swift stat"
step "stat ok ($(swift stat | awk -F': ' '/Account:/{print $2}'))"

cd "$W"
mkdir -p src/sub
echo "hello swift" >src/a.txt
head -c 1234 /dev/urandom >src/sub/b.bin
head -c "$((SIZE_MB * 1024 * 1024))" /dev/urandom >big.bin
swift upload "$C" src >/dev/null
swift upload "$C" big.bin >/dev/null
swift upload --segment-size 8M --use-slo "$C" big.bin --object-name big-slo.bin >/dev/null
listing="$(swift list "$C" | sort | tr '\n' ' ')"
[ "$listing" = "big-slo.bin big.bin src/a.txt src/sub/b.bin " ] || fail "listing: $listing"
step "uploaded and listed: $listing"

mkdir dl
swift download "$C" -D dl >/dev/null
swift download "$C" big-slo.bin -o dl/big-slo.bin >/dev/null
cmp big.bin dl/big.bin || fail "big.bin differs"
cmp big.bin dl/big-slo.bin || fail "big-slo.bin differs"
cmp src/a.txt dl/src/a.txt && cmp src/sub/b.bin dl/src/sub/b.bin || fail "small files differ"
step "downloaded ${SIZE_MB} MiB plain + SLO ($(swift list "${C}_segments" | wc -l) segments) and small files: identical"

# --- TempURL -------------------------------------------------------------------
KEY="tempurl-$RANDOM$RANDOM"
swift post -m "Temp-URL-Key:$KEY"
ACCT_PATH="$(swift stat -v | awk -F': ' '/StorageURL:/{print $2}' | sed -E 's#^https?://[^/]+##')"
BASE="${ST_AUTH%/auth/*}"
put_url="$BASE$(swift tempurl PUT 600 "$ACCT_PATH/$C/tempurl-put.bin" "$KEY")"
code="$(curl -s -o /dev/null -w '%{http_code}' -X PUT --data-binary @src/sub/b.bin "$put_url")"
[ "$code" = 201 ] || fail "TempURL PUT returned $code"
get_url="$BASE$(swift tempurl GET 600 "$ACCT_PATH/$C/tempurl-put.bin" "$KEY")"
curl -sf -o tget.bin "$get_url" || fail "TempURL GET"
cmp tget.bin src/sub/b.bin || fail "TempURL GET data differs"
step "TempURL (HMAC-SHA256) PUT 201 and GET: identical"
bad="$(curl -s -o /dev/null -w '%{http_code}' -X DELETE "$get_url")"
[ "$bad" = 401 ] || fail "DELETE with a GET TempURL returned $bad, expected 401"
step "TempURL for GET refuses DELETE: 401"
sha1_url="$BASE$(swift tempurl --digest sha1 GET 600 "$ACCT_PATH/$C/tempurl-put.bin" "$KEY")"
curl -sf -o /dev/null "$sha1_url" || fail "TempURL GET (sha1)"
step "TempURL with HMAC-SHA1 also accepted"

pre_url="$BASE$(swift tempurl --prefix-based GET 600 "$ACCT_PATH/$C/src/" "$KEY")"
# the prefix URL signs .../src/ ; the object name is appended to the path
obj_url="${pre_url%%\?*}sub/b.bin?${pre_url#*\?}"
curl -sf -o tpre.bin "$obj_url" || fail "prefix-based TempURL GET"
cmp tpre.bin src/sub/b.bin || fail "prefix TempURL data differs"
out="${pre_url%%\?*}"; out="${out%/src/}/big.bin?${pre_url#*\?}"
code="$(curl -s -o /dev/null -w '%{http_code}' "$out")"
[ "$code" = 401 ] || fail "prefix TempURL outside its prefix returned $code"
step "prefix-based TempURL: GET inside prefix ok, outside prefix 401"
swift post -m "Temp-URL-Key:" >/dev/null

swift delete "$C" >/dev/null
swift delete "${C}_segments" >/dev/null 2>&1 || true
if swift list "$C" >/dev/null 2>&1; then fail "container still exists after delete"; fi
step "deleted objects and containers"

# --- Keystone v3 (only when start-swift.sh ran with SWIFT_KEYSTONE=1) ---------
KS_URL="${SWIFT_KEYSTONE_URL:-http://127.0.0.1:${SWIFT_KEYSTONE_PORT:-6050}/v3}"
if [ "${SWIFT_KEYSTONE:-0}" = 1 ]; then
  V3=(--auth-version 3 --os-auth-url "$KS_URL" --os-username tester --os-password testing
      --os-project-name test --os-user-domain-id default --os-project-domain-id default)
  # the swift CLI prefers ST_AUTH/ST_USER/ST_KEY over --os-* options: hide them
  swift3() { env -u ST_AUTH -u ST_USER -u ST_KEY swift "${V3[@]}" "$@"; }
  acct="$(swift3 stat | awk -F': ' '/Account:/{print $2}')"
  [[ "$acct" == KEY_* ]] || fail "keystone v3 stat: account '$acct'"
  swift3 upload "$C" src >/dev/null
  rm -rf dl3 && mkdir dl3 && swift3 download "$C" -D dl3 >/dev/null
  cmp src/sub/b.bin dl3/src/sub/b.bin || fail "keystone v3 download differs"
  KEY3="tempurl-$RANDOM$RANDOM"
  swift3 post -m "Temp-URL-Key:$KEY3"
  t_url="$BASE$(swift tempurl GET 600 "/v1/$acct/$C/src/a.txt" "$KEY3")"
  curl -sf -o t3.txt "$t_url" && cmp t3.txt src/a.txt || fail "keystone account TempURL GET"
  # a TempAuth token must not open the Keystone account
  tok="$(swift auth | awk -F= '/OS_AUTH_TOKEN/{print $2}')"
  code="$(curl -s -o /dev/null -w '%{http_code}' -H "X-Auth-Token: $tok" "$BASE/v1/$acct/$C")"
  [ "$code" = 401 ] || [ "$code" = 403 ] || fail "TempAuth token on the Keystone account returned $code"
  swift3 delete "$C" >/dev/null
  swift3 post -m "Temp-URL-Key:" >/dev/null
  step "keystone v3 ($acct): stat, upload, download, TempURL, isolation from TempAuth, delete"
fi
step "OK"
