#!/usr/bin/env bash
# The lobby dashboard against live data: a zone-lobby (its own PostgreSQL schema and Redis
# prefix), a zone server announcing itself to it, 10 bots logging in and joining through it,
# 4 players matched in the duel mode, a refused match request, a refresh, a FleetAutoscaler
# review, and a real Prometheus scraping the lobby and the server every second. Then every query
# of zone-lobby.json and every selector of lobby-alerts.yml must return data (check_live.py),
# except the series that only exist once their failure happened (5xx, backend errors, rate
# limits, reused refresh tokens, kicks, takeovers, seat allocation failures, leader changes on a
# single lobby): those are listed as allowed-empty, never silently passed. About 45 s.
#
#   bash assets/grafana/check-live-lobby.sh     # needs PostgreSQL and Redis (DATABASE_URL, REDIS_URL)
#   KEEP_LOGS=DIR bash assets/grafana/check-live-lobby.sh   # keeps the lobby's, server's, bots' and Prometheus's logs in DIR
set -euo pipefail
cd "$(dirname "$0")/../.."
WAIT=${WAIT:-30}
SERVER=${ZONE_SERVER_BIN:-target/debug/zone-server}
BOTSBIN=${ZONE_BOTS_BIN:-target/debug/zone-bots}
LOBBY=${ZONE_LOBBY_BIN:-target/debug/zone-lobby}
DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/}

# Built when missing, or when zone-bots is older than a flag used below (always building would
# not be a no-op after `cargo test --workspace`: three packages alone unify other features, and
# CI would compile the lobby and the server again).
bots_help=$([ -x "$BOTSBIN" ] && "$BOTSBIN" --help 2>/dev/null || true)
if [ ! -x "$SERVER" ] || [ ! -x "$BOTSBIN" ] || [ ! -x "$LOBBY" ] || ! grep -q -- '--join-wait' <<<"$bots_help"; then
  cargo build --locked -q -p zone-server --bin zone-server -p zone-tools --bin zone-bots -p zone-lobby --bin zone-lobby
fi
command -v prometheus >/dev/null 2>&1 || { export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus; }
PY=python3
$PY -c 'import yaml' 2>/dev/null || { VENV=${K8S_CHECK_VENV:-/tmp/zone-k8s-venv}; [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"; "$VENV/bin/pip" install -q pyyaml; PY="$VENV/bin/python"; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
T=$(mktemp -d)
schema="live_lobby_$$"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  psql "$DATABASE_URL" -qc "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 || true
  redis-cli -u "$REDIS_URL" --scan --pattern "$schema:*" 2>/dev/null | xargs -r redis-cli -u "$REDIS_URL" DEL >/dev/null 2>&1 || true
  if [ -n "${KEEP_LOGS:-}" ]; then mkdir -p "$KEEP_LOGS" && cp "$T"/*.log "$KEEP_LOGS"/ 2>/dev/null || true; fi
  rm -rf "$T"
}
trap cleanup EXIT

LP=$(free_port); GAME=$(free_port); ADMIN=$(free_port); PROM=$(free_port)
L="http://127.0.0.1:$LP"
export ZONE_TOKEN_SECRET=check-live-secret ZONE_LOBBY_SESSION_SECRET=check-live-session-secret-0123456789
"$LOBBY" --listen "127.0.0.1:$LP" --postgres "$DATABASE_URL" --redis "$REDIS_URL" \
  --postgres-schema "$schema" --redis-prefix "$schema:" --rate-per-ip 100000 --rate-per-account 100000 \
  --tick-budget-ms 1000 --log-format json >"$T/lobby.log" 2>&1 &
pids+=($!)
"$SERVER" --zone assets/zones/demo.toml --bind "127.0.0.1:$GAME" --admin "127.0.0.1:$ADMIN" --persistence off \
  --overload-budget-ms 1000 --lobby-redis "$REDIS_URL" --lobby-prefix "$schema:" --public-addr "127.0.0.1:$GAME" --threads 2 \
  --log-format json >"$T/server.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 150); do curl -sf "http://127.0.0.1:$LP/readyz" >/dev/null && curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null && break; sleep 0.2; done
curl -sf "http://127.0.0.1:$LP/readyz" >/dev/null || { echo "the lobby did not become ready:"; tail -20 "$T/lobby.log"; exit 1; }

cat >"$T/prometheus.yml" <<YML
global:
  scrape_interval: 1s
  scrape_timeout: 900ms
scrape_configs:
  - job_name: zone-lobby
    static_configs:
      - targets: ["127.0.0.1:$LP"]
  - job_name: zone-server
    static_configs:
      - targets: ["127.0.0.1:$ADMIN"]
YML
prometheus --config.file="$T/prometheus.yml" --storage.tsdb.path="$T/tsdb" \
  --web.listen-address="127.0.0.1:$PROM" --log.level=warn >"$T/prometheus.log" 2>&1 &
pids+=($!)
# Wait until the lobby offers the zone; the bots also ask again for 15 s on `no_room` or
# `unknown_zone` (--join-wait). (The lobby's tick budget and the server's overload budget are 1 s
# above: a debug build on a loaded 2-core CI machine has 1 s windows whose tick p99 is over the
# default 16.7 ms, and the lobby would refuse every join made in such a second, so no join report
# would ever reach the dashboard. Both budgets are tested elsewhere: server/lobby's tests and the
# zone server's overload tests.)
zones=""
for _ in $(seq 1 100); do
  zones=$(curl -sf --max-time 2 "$L/v1/zones" || true)
  grep -q '"joinable":true' <<<"$zones" && break
  sleep 0.2
done
grep -q '"joinable":true' <<<"$zones" || { echo "the lobby never offered the zone server within 20 s: $zones"; tail -20 "$T/server.log"; exit 1; }

"$BOTSBIN" --lobby "$L" --count 10 --duration "$((WAIT + 20))s" --behavior wander --join-wait 15s \
  --device-prefix "$schema-bot-" >"$T/bots.log" 2>&1 &
pids+=($!)

login() { curl -sf -XPOST "$L/v1/auth/device" -H 'content-type: application/json' -d "{\"device_id\":\"$schema-$1\"}"; }
token() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
# Matchmaking: 4 players in duel (two matches), one unknown mode (refused).
for i in 1 2 3 4; do
  t=$(login "m$i" | token session_token)
  curl -s -XPOST "$L/v1/match/request" -H "authorization: Bearer $t" -H 'content-type: application/json' \
    -d '{"mode":"duel","wait_ms":10000}' >"$T/match-$i.json" &
done
t=$(login "m5" | token session_token)
curl -s -XPOST "$L/v1/match/request" -H "authorization: Bearer $t" -H 'content-type: application/json' -d '{"mode":"nope"}' >/dev/null
# A refresh, and a FleetAutoscaler review.
r=$(login "r1" | token refresh_token)
curl -s -XPOST "$L/v1/auth/refresh" -H 'content-type: application/json' -d "{\"refresh_token\":\"$r\"}" >/dev/null
for _ in 1 2 3; do
  curl -s -XPOST "$L/v1/fleet-autoscale" -H 'content-type: application/json' \
    --data @server/lobby/tests/fixtures/autoscale/evening-ramp.review.json >/dev/null
  sleep 1
done
wait $(jobs -p | tail -n +1 | grep -v -e "${pids[0]}" -e "${pids[1]}" -e "${pids[2]}" -e "${pids[3]}" || true) 2>/dev/null || true

echo "lobby 127.0.0.1:$LP, zone server 127.0.0.1:$ADMIN, 10 bots, Prometheus 127.0.0.1:$PROM; waiting ${WAIT}s for data"
sleep "$WAIT"
grep -h '"status"' "$T"/match-*.json | head -4 | cut -c1-80 || true
check() {
  "$PY" assets/grafana/check_live.py --prometheus "http://127.0.0.1:$PROM" \
    --dashboard assets/grafana/zone-lobby.json --rules assets/prometheus/lobby-alerts.yml \
    --allow-empty 'status=~\\?"5\.\.' --allow-empty lobby_backend_errors_total --allow-empty lobby_rate_limited_total \
    --allow-empty lobby_refresh_reuse_total --allow-empty lobby_kicks_total --allow-empty lobby_sessions_taken_over_total \
    --allow-empty lobby_match_allocation_failures_total --allow-empty lobby_zone_event_errors_total \
    --allow-empty lobby_match_leader_changes_total
}
# A rate needs two scrapes of a series: on a loaded machine a counter that appeared late (the zone
# server's event reports) may have only one by now. One more look 15 s later before failing.
check || { echo "retrying once in 15 s"; sleep 15; check; } || {
  echo "--- lobby log (last lines)"; tail -5 "$T/lobby.log"
  echo "--- bots (first and last lines)"; head -3 "$T/bots.log" || true; tail -3 "$T/bots.log" || true
  echo "--- zone server log (warnings)"; grep -v '"level":"INFO"' "$T/server.log" | tail -5 || true
  exit 1
}
