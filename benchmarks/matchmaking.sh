#!/usr/bin/env bash
# The pure matcher's figures (issue 10), zone-matchmaker only (no HTTP, no PostgreSQL: the lobby's
# figures come from its own benchmarks):
#   1. one matching pass over 10,000 and 1,000 waiting tickets (criterion);
#   2. the rating gap of matched pairs against their waiting time, 10,000 bots with a spread of
#      ratings, a pass every 100 ms of simulated time (deterministic: same seed, same CSV), drawn
#      with gnuplot into benchmarks/2026-11-29-matchmaking/, with a table of gap percentiles by
#      waiting-time band.
#
#   3. (LOBBY=1) bots through a zone-lobby and a zone server: zone-bots --match duel and team3
#      (needs PostgreSQL and Redis at DATABASE_URL / REDIS_URL; own schema and key prefix, dropped
#      at the end). BIN=target/debug uses debug binaries already built instead of a release build.
#
#   bash benchmarks/matchmaking.sh          # 1 and 2
#   SKIP_BENCH=1 LOBBY=1 bash benchmarks/matchmaking.sh
#   BOTS=10000 RATE=20 SEED=1 MODES=duel bash benchmarks/matchmaking.sh
# The CSVs (one row per matched ticket) are written next to the plots and not committed.
set -euo pipefail
cd "$(dirname "$0")/.."
BOTS=${BOTS:-10000}
RATE=${RATE:-20}
SEED=${SEED:-1}
MODES=${MODES:-duel team3}
OUT=${OUT:-benchmarks/2026-11-29-matchmaking}
mkdir -p "$OUT"
echo "== machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD)"

if [ -z "${SKIP_BENCH:-}" ]; then
  echo "== 1. cargo bench -p zone-matchmaker --bench pass"
  cargo bench --locked -p zone-matchmaker --bench pass 2>&1 | grep -E "^(duel|team3|sparse)/|^pass/|time:"
fi

cargo build --release --locked -q -p zone-matchmaker --example simulate
for MODE in $MODES; do
  CSV="$OUT/$MODE.csv"
  echo "== 2. target/release/examples/simulate --bots $BOTS --rate $RATE --seed $SEED --mode $MODE --out $CSV"
  ./target/release/examples/simulate --bots "$BOTS" --rate "$RATE" --seed "$SEED" --mode "$MODE" --out "$CSV"
  echo "-- gap (rating points) by waiting-time band, $MODE, one row per matched ticket:"
  python3 - "$CSV" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
bands = [(0, 1), (1, 2), (2, 5), (5, 10), (10, 20), (20, 30), (30, 60), (60, 1e9)]
def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * (len(xs) - 1) + 0.5))] if xs else float("nan")
print("| waited (s) | tickets | share | gap p50 | gap p90 | gap p99 | gap max | window at the end of the band |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for lo, hi in bands:
    sel = [r for r in rows if lo * 1000 <= int(r["waited_ms"]) < hi * 1000]
    if not sel:
        continue
    g = [float(r["gap"]) for r in sel]
    w = max(float(r["window"]) for r in sel)
    name = f"{lo}–{hi:g}" if hi < 1e9 else f"≥ {lo}"
    print(f"| {name} | {len(sel)} | {100*len(sel)/len(rows):.1f}% | {pct(g,.5):.0f} | {pct(g,.9):.0f} | {pct(g,.99):.0f} | {max(g):.0f} | {w:.0f} |")
w = sorted(int(r["waited_ms"]) for r in rows)
print(f"\nwaiting time: p50 {pct(w,.5)/1000:.2f} s, p90 {pct(w,.9)/1000:.2f} s, p99 {pct(w,.99)/1000:.2f} s, max {w[-1]/1000:.2f} s over {len(rows)} matched tickets")
PY
done

if ! command -v gnuplot >/dev/null; then
  echo "gnuplot is missing: apt-get install -y gnuplot-nox"
  exit 1
fi
for MODE in $MODES; do
  CSV="$OUT/$MODE.csv"
  PNG="$OUT/$MODE-gap-vs-wait.png"
  W=$(python3 -c "
import tomllib; m = tomllib.load(open('assets/match/modes.toml','rb'))['modes']['$MODE']
print(m.get('initial_window',100), m.get('widen_per_s',10), m.get('max_window',400))")
  read -r W0 WR WMAX <<<"$W"
  gnuplot <<GP
set terminal pngcairo size 1000,620 noenhanced
set output "$PNG"
set datafile separator ","
set title "$MODE: match rating gap vs waiting time, $BOTS bots, ratings ~N(1500,350), $RATE/s, seed $SEED"
set xlabel "waiting time (s)"
set ylabel "rating gap of the match (spread, rating points)"
set key top left
set grid
set xrange [0:40]   # the few tickets that waited longer are in the table
set yrange [0:*]
window(x) = ($W0 + $WR * x < $WMAX) ? $W0 + $WR * x : $WMAX
plot "$CSV" using (\$6/1000):8 every ::1 with points pt 7 ps 0.4 lc rgb "#4060c0" title "matched ticket", \
     window(x) with lines lw 2 lc rgb "#c03030" title "window (initial + widen_per_s x waited, capped)"
GP
  echo "wrote $PNG"
done

if [ -n "${LOBBY:-}" ]; then
  DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
  REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/}
  BIN=${BIN:-target/release}
  if [ "$BIN" = target/release ]; then
    cargo build --release --locked -q -p zone-lobby -p zone-server -p zone-tools --bin zone-lobby --bin zone-server --bin zone-bots
  fi
  SCHEMA="bench_match_bots_$$"; PREFIX="$SCHEMA:"; T=$(mktemp -d)
  cleanup() {
    kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true
    psql "$DATABASE_URL" -qc "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >/dev/null 2>&1 || true
    redis-cli -u "$REDIS_URL" --scan --pattern "$PREFIX*" 2>/dev/null | xargs -r redis-cli -u "$REDIS_URL" del >/dev/null 2>&1 || true
    rm -rf "$T"
  }
  trap cleanup EXIT
  export ZONE_TOKEN_SECRET=bench-token-secret ZONE_LOBBY_SESSION_SECRET=bench-session-secret-0123456789
  export ZONE_LOBBY_SERVICE_KEY=bench-service-key
  PORT=18391
  "$BIN/zone-lobby" --listen 127.0.0.1:$PORT --postgres "$DATABASE_URL" --redis "$REDIS_URL" --postgres-schema "$SCHEMA" \
     --redis-prefix "$PREFIX" --rate-per-ip 1000000 --rate-per-account 1000000 --log-filter warn 2> "$T/lobby.log" &
  for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.1; done
  "$BIN/zone-server" --zone assets/zones/demo.toml --bind 127.0.0.1:17791 --public-addr 127.0.0.1:17791 --admin 127.0.0.1:19191 \
     --persistence off --threads 1 --max-clients 600 --handshake-rate-per-ip 100000 \
     --instance match-bench-1 --lobby-redis "$REDIS_URL" --lobby-prefix "$PREFIX" --viz off 2> "$T/zone.log" >/dev/null &
  for _ in $(seq 1 150); do
    [ "$(curl -sf http://127.0.0.1:$PORT/v1/zones | grep -o '"offered":true' | wc -l)" -ge 1 ] && break
    sleep 0.2
  done
  for spec in "duel 20 10s" "team3 60 8s"; do
    read -r MODE COUNT DUR <<<"$spec"
    echo "== 3. zone-bots --lobby http://127.0.0.1:$PORT --match $MODE --count $COUNT --duration $DUR --ramp-per-s 50 (service key from ZONE_LOBBY_SERVICE_KEY)"
    "$BIN/zone-bots" --lobby "http://127.0.0.1:$PORT" --match "$MODE" --count "$COUNT" --duration "$DUR" --ramp-per-s 50 \
       --device-prefix "$MODE-$$-" --report "$T/bots-$MODE.json" 2> "$T/bots-$MODE.log" || true
    grep -E "^zone-bots: (mode|joined|FAILED)" "$T/bots-$MODE.log" || tail -5 "$T/bots-$MODE.log"
  done
fi
