#!/usr/bin/env bash
# The front door's figures, on loopback, release build:
#   1. logins/s (POST /v1/auth/device, a new account each) at 100 concurrent clients, p50/p99;
#   2. join requests/s (POST /v1/zones/demo/join) at 100 concurrent clients, p50/p99;
#   3. 1,000 bots through the front door into 2 zone servers: all joined, and the time until the
#      last one had (zone-bots' all_joined_s), with the login and join-request latencies.
#
#   bash benchmarks/lobby.sh            # all three
#   SECS=20 BOTS=1000 bash benchmarks/lobby.sh
#
# Needs PostgreSQL and Redis at DATABASE_URL / REDIS_URL (the local defaults otherwise); uses its
# own schema and key prefix and drops the schema at the end. Run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/}
SECS=${SECS:-10}
CONC=${CONC:-100}
BOTS=${BOTS:-1000}
cargo build --release --locked -q --bin zone-lobby --bin zone-server --bin zone-bots --example load -p zone-lobby -p zone-server -p zone-tools
L=./target/release/zone-lobby
S=./target/release/zone-server
B=./target/release/zone-bots
LOAD=./target/release/examples/load
T=$(mktemp -d)
SCHEMA="bench_lobby_$$"
PREFIX="$SCHEMA:"
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
  psql "$DATABASE_URL" -qc "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >/dev/null 2>&1 || true
  redis-cli -u "$REDIS_URL" --scan --pattern "$PREFIX*" 2>/dev/null | xargs -r redis-cli -u "$REDIS_URL" del >/dev/null 2>&1 || true
  rm -rf "$T"
}
trap cleanup EXIT
export ZONE_TOKEN_SECRET=bench-token-secret
export ZONE_LOBBY_SESSION_SECRET=bench-session-secret-0123456789
PORT=18080

echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), commit $(git rev-parse --short HEAD), $(date -u +%F), load before: $(cut -d' ' -f1-3 /proc/loadavg)"
$L --listen 127.0.0.1:$PORT --postgres "$DATABASE_URL" --redis "$REDIS_URL" --postgres-schema "$SCHEMA" \
   --redis-prefix "$PREFIX" --rate-per-ip 1000000 --rate-per-account 1000000 --postgres-connections 4 \
   --log-filter warn 2> "$T/lobby.log" &
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.1; done

# Two zone servers announcing themselves (500 seats each).
for k in 1 2; do
  $S --zone assets/zones/demo.toml --bind 127.0.0.1:1777$k --public-addr 127.0.0.1:1777$k --admin 127.0.0.1:1910$k \
     --persistence off --threads 1 --log-format json --max-clients 600 --handshake-rate-per-ip 100000 \
     --instance bench-$k --lobby-redis "$REDIS_URL" --lobby-prefix "$PREFIX" --viz off 2> "$T/zone-$k.log" &
done
for _ in $(seq 1 100); do
  [ "$(curl -sf http://127.0.0.1:$PORT/v1/zones | grep -o '"offered":true' | wc -l)" -ge 2 ] && break
  sleep 0.2
done

echo "## logins, $CONC concurrent clients, ${SECS} s"
echo "\$ $LOAD http://127.0.0.1:$PORT logins $CONC $SECS"
$LOAD "http://127.0.0.1:$PORT" logins "$CONC" "$SECS"
echo "## join requests, $CONC concurrent clients, ${SECS} s"
echo "\$ $LOAD http://127.0.0.1:$PORT joins $CONC $SECS demo"
$LOAD "http://127.0.0.1:$PORT" joins "$CONC" "$SECS" demo
# The join benchmark's seats lapse with their tokens (30 s); the bots need them free.
sleep 31

echo "## $BOTS bots through the front door into 2 zone servers"
echo "\$ $B --lobby http://127.0.0.1:$PORT --count $BOTS --duration 30s --ramp-per-s 1000"
$B --lobby "http://127.0.0.1:$PORT" --count "$BOTS" --duration 30s --ramp-per-s 1000 --report "$T/bots.json" 2> "$T/bots.log" || true
grep -E "lobby login|joined" "$T/bots.log" | tail -2
python3 - "$T/bots.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"joined {r['joined']}/{r['count']}, all joined after {r['all_joined_s']} s, "
      f"login p50 {r['lobby_login_ms_p50']} p99 {r['lobby_login_ms_p99']} ms, "
      f"join request p50 {r['lobby_join_ms_p50']} p99 {r['lobby_join_ms_p99']} ms, failed {r['failed_reasons']}")
PY
echo "announcer errors logged by the zone servers: $(cat "$T"/zone-*.log | grep -c 'cannot reach the lobby' || true)"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
