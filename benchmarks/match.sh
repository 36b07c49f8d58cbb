#!/usr/bin/env bash
# Matchmaking figures, on loopback, release build (issue 10):
#   0. (first, on an empty queue) the time from the second compatible request until both players
#      have their match, over PAIRS pairs, 10 at a time (p50/p99/max);
#   1. POST /v1/match/request at 100 concurrent clients (session players, wait_ms 0: each answer
#      means the ticket is durable in PostgreSQL), requests/s and p50/p99; each client uses 20
#      accounts in turn, and the leader matches and places the tickets meanwhile;
#   2. the trusted backends' POST /match/request {player_id, rating} at 100 concurrent clients, a
#      fresh player each time, with a zone server announced so the leader places matches meanwhile;
#   3. (printed with 2) how many tickets the leader matched meanwhile.
#
#   bash benchmarks/match.sh
#   SECS=20 PAIRS=500 bash benchmarks/match.sh
#
# Needs PostgreSQL and Redis at DATABASE_URL / REDIS_URL (the local defaults otherwise); uses its
# own schema and key prefix and drops the schema at the end. Run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/}
SECS=${SECS:-10}
CONC=${CONC:-100}
PAIRS=${PAIRS:-300}
cargo build --release --locked -q --bin zone-lobby --example match_load -p zone-lobby
L=./target/release/zone-lobby
LOAD=./target/release/examples/match_load
T=$(mktemp -d)
SCHEMA="bench_match_$$"
PREFIX="$SCHEMA:"
KEY=bench-service-key-0123456789
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
PORT=18090

echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), commit $(git rev-parse --short HEAD), $(date -u +%F), load before: $(cut -d' ' -f1-3 /proc/loadavg)"
$L --listen 127.0.0.1:$PORT --postgres "$DATABASE_URL" --redis "$REDIS_URL" --postgres-schema "$SCHEMA" \
   --redis-prefix "$PREFIX" --rate-per-ip 1000000 --rate-per-account 1000000 --postgres-connections 4 \
   --service-key "$KEY" --log-filter warn 2> "$T/lobby.log" &
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.1; done


# A zone server's record in the directory, as zone-server --lobby-redis writes it (a real zone
# server is not needed to place matches; 1,000,000 seats so the run never runs out).
announce() {
  local now; now=$(date +%s%3N)
  redis-cli -u "$REDIS_URL" set "${PREFIX}dir:arena:bench" \
    "{\"zone_id\":\"arena\",\"instance_id\":\"bench\",\"addr\":\"127.0.0.1:17777\",\"capacity\":1000000,\"players\":0,\"tick_p99_us\":1000,\"state\":\"ready\",\"updated_ms\":$now}" \
    PX 600000 >/dev/null
  redis-cli -u "$REDIS_URL" zadd "${PREFIX}dir:index" $((now + 600000)) "arena:bench" >/dev/null
}
announce

echo "## time from the second compatible request until both are matched, $PAIRS pairs, 10 at a time (queue otherwise empty)"
echo "\$ $LOAD http://127.0.0.1:$PORT pairs $PAIRS 10"
$LOAD "http://127.0.0.1:$PORT" pairs "$PAIRS" 10

echo "## POST /v1/match/request, $CONC concurrent clients (20 accounts each, used in turn), ${SECS} s, matches placed meanwhile"
echo "\$ $LOAD http://127.0.0.1:$PORT requests $CONC $SECS 20"
$LOAD "http://127.0.0.1:$PORT" requests "$CONC" "$SECS" 20
sleep 2

echo "## POST /match/request (trusted backend, seed shape), $CONC concurrent clients, ${SECS} s, matches placed meanwhile"
echo "\$ $LOAD http://127.0.0.1:$PORT seed $CONC $SECS \$KEY"
$LOAD "http://127.0.0.1:$PORT" seed "$CONC" "$SECS" "$KEY"
sleep 3
echo "tickets by state afterwards: $(psql "$DATABASE_URL" -Atc "SELECT string_agg(state || '=' || n, ' ') FROM (SELECT state, count(*) n FROM $SCHEMA.match_tickets GROUP BY state ORDER BY state) s")"
curl -sf "http://127.0.0.1:$PORT/metrics" | grep -E '^lobby_matches_total|^lobby_match_pass_seconds_(sum|count)' || true

echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
