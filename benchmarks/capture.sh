#!/usr/bin/env bash
# Snapshot capture cost on the tick thread, before and after, in one run:
#   bash benchmarks/capture.sh ZONE_FILE BINARY...
#   (e.g. bash benchmarks/capture.sh assets/zones/large.toml /tmp/old/zone-server ./target/release/zone-server)
# Runs each binary in turn, ROUNDS times (alternating, so that a change in the machine's load
# hits both alike), on the zone in real time with no players (--bind off), 2 threads, file
# persistence in a temp dir (a capture every second: a full every 10 s, a diff between), for
# SECS seconds; then stops it (SIGTERM) and prints the server's own exit line: the number of
# captures of changes and their p50 and p99 on the tick thread (whole captures, the first one and
# any after a dropped snapshot, apart), plus the tick p50/p99 of its last 30 s stats window.
# A capture a second: with SECS=60 the "p99" of 59 captures is their maximum (a new build's first
# capture is whole); use SECS=240 or more for a p99 worth the name.
# Environment: ROUNDS (default 2), SECS (default 90). Admin port 127.0.0.1:29300.
set -euo pipefail
cd "$(dirname "$0")/.."
ZONE=$1
shift
ROUNDS=${ROUNDS:-2}
SECS=${SECS:-90}
A=127.0.0.1:29300
D=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$D"' EXIT
echo "# capture: $ZONE, ${SECS}s x $ROUNDS rounds; machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), commit $(git rev-parse --short HEAD), $(date -u '+%F %T') UTC, load $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq 1 "$ROUNDS"); do
  for bin in "$@"; do
    rm -rf "$D/data"
    "$bin" --zone "$ZONE" --bind off --admin $A --threads 2 --persistence on --data-dir "$D/data" \
      --log-format json --stats-interval 30 2> "$D/log" &
    P=$!
    sleep "$SECS"
    kill -TERM $P
    wait $P || true
    python3 - "$round" "$bin" "$D/log" <<'EOF'
import json, sys
round_, binary, path = sys.argv[1:4]
cap = tick = None
for line in open(path):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    f = {**e, **e.get("fields", {})}
    if "capture_p99_us" in f:
        cap = f
    if "tick_p99_us" in f and "tick_p50_us" in f:
        tick = f
if cap is None:
    print(f"round {round_} {binary}: no capture line in the log")
    sys.exit(0)
t = f", tick p50 {tick['tick_p50_us']} us p99 {tick['tick_p99_us']} us" if tick else ""
# Builds since the allocator change report captures of changes and whole captures apart.
whole = f", whole {cap['captures_whole']} (max {cap['capture_whole_max_us']} us), changes max {cap['capture_max_us']} us" if "captures_whole" in cap else " (whole ones included)"
print(f"round {round_} {binary}: {cap['captures']} captures, p50 {cap['capture_p50_us']} us, p99 {cap['capture_p99_us']} us{whole}{t}")
EOF
  done
done
