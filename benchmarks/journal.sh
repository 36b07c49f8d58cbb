#!/usr/bin/env bash
# Journal figures (issue 15): bytes per player-second, replay speed from a snapshot plus segments,
# RTO with segments, and the data directory's size over a long run at steady state (with a plot).
#
#   bash benchmarks/journal.sh              # all four
#   bash benchmarks/journal.sh bytes rto    # some of: bytes replay rto long
#
# bytes:  the demo zone in real time with N wandering zone-bots (N=${N:-500}) for DURATION s
#         (${DURATION:-60}); then `zone-replay --stats` on its journal: bytes per player-second now,
#         and what the same records take in format 1 (the previous, fixed-size encoding).
# replay: that journal replayed from tick 0 and from its newest snapshot (`--snapshot`), ticks/s.
# rto:    the demo zone with 200 scripted players in real time for RTO_RUN s (${RTO_RUN:-40}),
#         kill -9, restart with --restore auto: rto_ms from the restored line, and the time until
#         /readyz answers 200, RTO_REPS times (${RTO_REPS:-3}).
# long:   a small zone (the tests' busy zone, 30 scripted players) headless at full speed for LONG_HOURS hours
#         of zone time (${LONG_HOURS:-12}) with --journal-retention 1h and a full snapshot every 10 s
#         (5 kept); the data directory's size sampled every second against the zone tick
#         (OUT/long.csv, OUT/long.png with gnuplot when installed); then every kept segment that
#         has a kept snapshot at its start is replayed from it to the end.
# Results go to stdout and OUT (default /tmp/journal-bench). Talks only to 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
# PROFILE=debug uses the dev build (no release build needed; slower simulation, same journal bytes).
# SKIP_BUILD=1 uses the binaries already in target/$PROFILE.
PROFILE=${PROFILE:-release}
if [ -n "${SKIP_BUILD:-}" ]; then
  :
elif [ "$PROFILE" = release ]; then
  cargo build --release --locked -q --bin zone-server --bin zone-bots --bin zone-replay
else
  cargo build --locked -q --bin zone-server --bin zone-bots --bin zone-replay
fi
S=$PWD/target/$PROFILE/zone-server
B=$PWD/target/$PROFILE/zone-bots
R=$PWD/target/$PROFILE/zone-replay
OUT=${OUT:-/tmp/journal-bench}
mkdir -p "$OUT"
T=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$T"' EXIT
export ZONE_TOKEN_SECRET=bench-secret
PORT=17787
ADMIN=127.0.0.1:19110
WHAT=${*:-bytes replay rto long}

ready() { for _ in $(seq 1 600); do curl -sf "http://$ADMIN/readyz" >/dev/null && return 0; sleep 0.05; done; return 1; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

echo "# machine: $(nproc) cores, profile $PROFILE, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), commit $(git rev-parse --short HEAD), $(date -u +%F)"

if [[ " $WHAT " == *" bytes "* || " $WHAT " == *" replay "* ]]; then
  N=${N:-500}; DURATION=${DURATION:-60}
  D="$OUT/bots-data"; rm -rf "$D"
  echo "## bytes: demo zone, $N wandering bots, ${DURATION} s (load before: $(load))"
  $S --zone assets/zones/demo.toml --bind 127.0.0.1:$PORT --admin $ADMIN --threads 2 --data-dir "$D" \
     --log-format json --stats-interval 5 --max-clients 5000 --handshake-rate-per-ip 100000 --viz off 2> "$OUT/bots-server.log" &
  SP=$!
  ready
  $B --server 127.0.0.1:$PORT --count "$N" --duration "${DURATION}s" --behavior wander --ramp-per-s 500 \
     --report "$OUT/bots-report.json" 2> "$OUT/bots.log" || echo "zone-bots exited with $?"
  echo "load after the bots: $(load)"
  kill -TERM $SP; wait $SP || true
  $R --stats "$D/journal"
  $R --list "$D/journal" | tail -n 5
  if [[ " $WHAT " == *" replay "* ]]; then
    echo "## replay (load before: $(load))"
    echo "from tick 0:"; $R "$D/journal" 2>&1 | grep -E "ticks/s|final_tick"
    OLDEST=$(ls "$D"/snapshots/snap-*-full.zsnap | head -n 1)
    echo "from the oldest kept full snapshot ($(basename "$OLDEST")) through the segments after it:"
    $R --snapshot "$OLDEST" "$D/journal" 2>&1 | grep -E "ticks/s|final_tick"
  fi
fi

if [[ " $WHAT " == *" rto "* ]]; then
  RTO_RUN=${RTO_RUN:-40}; RTO_REPS=${RTO_REPS:-3}
  D="$T/rto-data"
  echo "## rto: demo zone, 200 scripted players, ${RTO_RUN} s then kill -9, x$RTO_REPS (load before: $(load))"
  $S --zone assets/zones/demo.toml --bind off --admin $ADMIN --threads 2 --data-dir "$D" --sim-players 200 \
     --stats-interval 60 --viz off > "$OUT/rto-0.out" 2> "$OUT/rto-0.log" &
  SP=$!
  ready
  for i in $(seq 1 "$RTO_REPS"); do
    sleep "$RTO_RUN"
    kill -9 $SP; wait $SP 2>/dev/null || true
    SEGS=$(ls "$D/journal" | wc -l)
    T0=$(date +%s.%N)
    $S --zone assets/zones/demo.toml --bind off --admin $ADMIN --threads 2 --data-dir "$D" --sim-players 200 \
       --stats-interval 60 --viz off --restore auto > "$OUT/rto-$i.out" 2> "$OUT/rto-$i.log" &
    SP=$!
    ready
    T1=$(date +%s.%N)
    echo "kill $i: segments before restart $SEGS; $(head -n 1 "$OUT/rto-$i.out"); ready_after_ms=$(echo "($T1 - $T0) * 1000 / 1" | bc) (load $(load))"
  done
  kill -TERM $SP; wait $SP || true
  echo "the journal after $RTO_REPS kills replays from tick 0: $($R -q "$D/journal")"
fi

if [[ " $WHAT " == *" long "* ]]; then
  LONG_HOURS=${LONG_HOURS:-12}
  TICKS=$(( LONG_HOURS * 3600 * 60 ))
  D="$T/long-data"
  # The tests' busy zone (tests/src/lib.rs: 200 m square, 4x4 shards, a few hundred NPCs).
  sed -n '/^pub const BUSY_ZONE: &str = r#"/,/^"#;/p' tests/src/lib.rs | sed '1d;$d' > "$T/small.toml"
  echo "## long: small zone, $LONG_HOURS h of zone time at full speed, retention 1h (load before: $(load))"
  W0=$(date +%s.%N)
  $S --zone "$T/small.toml" --ticks $TICKS --persistence on --data-dir "$D" --sim-players 30 --threads 1 \
     --telemetry off --journal-retention 1h --snapshot-full-interval 10 --keep-snapshots 5 --stats-interval 600 \
     > "$OUT/long.out" 2> "$OUT/long.log" &
  SP=$!
  echo "wall_s,zone_tick,data_dir_bytes,journal_bytes,segments" > "$OUT/long.csv"
  while kill -0 $SP 2>/dev/null; do
    sleep 1
    TICK=$(ls "$D/journal" 2>/dev/null | sed -n 's/^seg-0*\([0-9][0-9]*\)\.zjnl$/\1/p' | sort -n | tail -n 1)
    echo "$(echo "$(date +%s.%N) - $W0" | bc),${TICK:-0},$(du -sb "$D" 2>/dev/null | cut -f1),$(du -sb "$D/journal" 2>/dev/null | cut -f1),$(ls "$D/journal" 2>/dev/null | wc -l)" >> "$OUT/long.csv"
  done
  wait $SP
  W1=$(date +%s.%N)
  tail -n 1 "$OUT/long.out"
  echo "ran $TICKS ticks in $(echo "$W1 - $W0" | bc) s (load after: $(load))"
  python3 - "$OUT/long.csv" <<'PY'
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if int(r["zone_tick"]) > 0]
hour = 3600 * 60
steady = [r for r in rows if int(r["zone_tick"]) >= 2 * hour]
def mb(x): return int(x) / 1e6
if steady:
    d = [mb(r["data_dir_bytes"]) for r in steady]
    print(f"steady state (zone time >= 2 h, {len(steady)} samples): data dir {min(d):.1f}..{max(d):.1f} MB, "
          f"journal {min(mb(r['journal_bytes']) for r in steady):.1f}..{max(mb(r['journal_bytes']) for r in steady):.1f} MB, "
          f"segments {min(int(r['segments']) for r in steady)}..{max(int(r['segments']) for r in steady)}")
first_hour = [mb(r["data_dir_bytes"]) for r in rows if int(r["zone_tick"]) < hour]
if first_hour: print(f"first hour: data dir up to {max(first_hour):.1f} MB")
PY
  if command -v gnuplot >/dev/null; then
    gnuplot <<EOF
set terminal png size 900,500
set output "$OUT/long.png"
set datafile separator ","
set key top left
set xlabel "zone time (hours)"
set ylabel "MB"
set title "Data directory over $LONG_HOURS h of zone time (journal retention 1 h, 5 snapshots kept)"
plot "$OUT/long.csv" using (\$2/216000):(\$3/1e6) every ::1 with lines title "data dir", \
     "$OUT/long.csv" using (\$2/216000):(\$4/1e6) every ::1 with lines title "journal"
EOF
    echo "plot: $OUT/long.png"
  fi
  $R --list "$D/journal" | tail -n 3
  OK=0; BAD=0
  for f in "$D"/journal/seg-*.zjnl; do
    START=$(basename "$f" | sed 's/^seg-0*\([0-9][0-9]*\)\.zjnl$/\1/')
    SNAP="$D/snapshots/snap-$(printf %020d "$START")-full.zsnap"
    [ -f "$SNAP" ] || continue
    if $R -q --threads 1 --snapshot "$SNAP" "$D/journal" >/dev/null 2>"$T/replay.err"; then OK=$((OK+1)); else BAD=$((BAD+1)); cat "$T/replay.err"; fi
  done
  echo "kept segments with a snapshot at their start replayed to the end: $OK ok, $BAD failed"
fi
