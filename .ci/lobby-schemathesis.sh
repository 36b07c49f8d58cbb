#!/usr/bin/env bash
# Runs schemathesis against a live zone-lobby: every endpoint of GET /openapi.json, a bounded
# number of generated requests each, checking that nothing answers 5xx and that every answer
# matches the document. Needs the lobby built (target/debug/zone-lobby), PostgreSQL and Redis
# at DATABASE_URL / REDIS_URL. Uses its own schema and key prefix, and removes the schema at the
# end. About 25 s, plus about 55 s to install schemathesis the first time (measured on a busy machine).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${ZONE_LOBBY_BIN:-target/debug/zone-lobby}
DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/}
EXAMPLES=${SCHEMATHESIS_EXAMPLES:-25}
VENV=${SCHEMATHESIS_VENV:-/tmp/zone-schemathesis-venv}

if [ ! -x "$VENV/bin/schemathesis" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q schemathesis
fi
"$VENV/bin/schemathesis" --version

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
schema="ci_schemathesis_$$"
log=$(mktemp)
ZONE_LOBBY_SESSION_SECRET=ci-session-secret-0123456789 ZONE_TOKEN_SECRET=ci-token-secret \
  "$BIN" --listen "127.0.0.1:$port" --postgres "$DATABASE_URL" --redis "$REDIS_URL" \
  --postgres-schema "$schema" --redis-prefix "$schema:" --rate-per-ip 100000 --rate-per-account 100000 \
  --log-filter warn >"$log" 2>&1 &
lobby=$!
cleanup() {
  kill "$lobby" 2>/dev/null || true
  wait "$lobby" 2>/dev/null || true
  psql "$DATABASE_URL" -qc "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 || true
  rm -f "$log"
}
trap cleanup EXIT
for _ in $(seq 1 50); do
  curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
  sleep 0.2
done
curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || { echo "the lobby did not become ready:"; cat "$log"; exit 1; }
# A session, so the authenticated endpoints are exercised past the 401.
token=$(curl -sf -XPOST "http://127.0.0.1:$port/v1/auth/device" -H 'content-type: application/json' \
  -d '{"device_id":"schemathesis"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["session_token"])')
# /v1/auth/logout would end that session for every later request: it is tested without it.
status=0
timeout 120 "$VENV/bin/schemathesis" run "http://127.0.0.1:$port/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --phases examples,coverage,fuzzing --max-examples "$EXAMPLES" --workers 2 --max-time 20 \
  --exclude-path /v1/auth/logout \
  -H "Authorization: Bearer $token" --suppress-health-check all || status=$?
if grep -q '"level":"ERROR"\|panicked' "$log"; then
  echo "the lobby logged errors:"; cat "$log"; exit 1
fi
exit $status
