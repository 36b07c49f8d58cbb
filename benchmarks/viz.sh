#!/usr/bin/env bash
# The world visualizer's figures (issue 12), all measured here, each printed with what produced it:
#   1. seek time over a 10-minute journal (36,000 ticks) of the demo and the large zone, through
#      `zone-replay --serve` (the `last_seek_ms` the driver reports, and curl's request time);
#   2. the tick thread's cost with 0, 1 and 5 viewers, in-process and paced at 60 ticks/s
#      (`cargo bench --bench viz_tick`, rounds alternate between viewer counts);
#   3. with Chromium: frames/s, bytes/frame and the page's decode/draw time in a real page, and the
#      tick's mean duration (from /metrics) with 0, 1 and 5 viewers in one zone-server run.
# Usage: bash benchmarks/viz.sh [demo|large|both]   (default both; OUT=/tmp/viz-bench keeps journals)
set -euo pipefail
cd "$(dirname "$0")/.."
ZONES=${1:-both}
[ "$ZONES" = both ] && ZONES="demo large"
OUT=${OUT:-/tmp/viz-bench}
mkdir -p "$OUT"
echo "== machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD)"
cargo build --release --locked -p zone-server -p zone-tools

for zone in $ZONES; do
  J="$OUT/$zone-10min.zjnl"
  if [ ! -f "$J" ]; then
    echo "== recording $J: zone-server --zone assets/zones/$zone.toml --ticks 36000 --sim-players 50 --threads 2"
    ./target/release/zone-server --zone "assets/zones/$zone.toml" --ticks 36000 --sim-players 50 --threads 2 \
      --journal "$J" --bind off --telemetry off --stats-interval 600 >/dev/null 2>"$OUT/$zone-record.log"
  fi
  echo "== 1. seek: zone-replay --serve 127.0.0.1:0 --threads 2 $J (checkpoints every 10 s of zone time)"
  LOG="$OUT/$zone-serve.log"
  ./target/release/zone-replay --serve 127.0.0.1:0 --threads 2 "$J" 2>"$LOG" &
  PID=$!
  trap 'kill $PID 2>/dev/null || true' EXIT
  until grep -q "http://" "$LOG"; do sleep 0.2; done
  ADDR=$(grep -o "http://[0-9.:]*" "$LOG" | head -1)
  until grep -q "zone-replay: indexed\|does not replay" "$LOG"; do sleep 1; done
  grep "zone-replay: " "$LOG"
  for t in 35999 100 18000 27123 9001 33333 1 24000 12345 30000 6000 21000 35000 17999 36000; do
    total=$(curl -s -o "$OUT/seek.json" -w "%{time_total}" -XPOST "$ADDR/world/control?op=seek&tick=$t")
    python3 -c "import json,sys; s=json.load(open('$OUT/seek.json')); print(f'seek to {s[\"tick\"]:>5}: driver {s[\"last_seek_ms\"]:8.1f} ms, request {float(sys.argv[1])*1000:8.1f} ms, {s[\"objects\"]} objects')" "$total"
  done
  kill $PID; wait $PID 2>/dev/null || true
  trap - EXIT

  echo "== 2. tick cost, in-process: cargo bench -p zone-server --bench viz_tick -- assets/zones/$zone.toml 600 3"
  cargo bench --locked -p zone-server --bench viz_tick -- "assets/zones/$zone.toml" 600 3 2>/dev/null

  if command -v chromium >/dev/null; then
    echo "== 3. page and server: VIZ_ZONE=assets/zones/$zone.toml cargo test --release -p zone-server --test viz_browser -- --ignored --nocapture measure_viewers"
    VIZ_ZONE="$PWD/assets/zones/$zone.toml" cargo test --release --locked -p zone-server --test viz_browser -- --ignored --nocapture measure_viewers 2>&1 \
      | grep -E "^(zone=|round)"
  else
    echo "== 3. skipped: no chromium"
  fi
done
