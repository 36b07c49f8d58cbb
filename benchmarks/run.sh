#!/usr/bin/env bash
# Reproduces the figures quoted in issue closing notes. Writes raw lines to stdout; paste them into
# a dated file in this folder together with the machine (nproc, CPU model) and the commit.
#
#   bash benchmarks/run.sh            # everything below, about 3 minutes on 2 cores
#
# Run it on a quiet machine: the figures are wall-clock measurements.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q
S=./target/release/zone-server
R=./target/release/zone-replay
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
finished() { grep -E "run finished" | sed 's/\x1b\[[0-9;]*m//g' | grep -oE "(ticks_per_s|tick_p50_us|tick_p99_us|tick_max_us)=[^ ]+" | tr '\n' ' '; echo; }

echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), commit $(git rev-parse --short HEAD), $(date -u +%F)"

echo "## sim: large.toml (100,000 NPCs), 2000 ticks headless, hash every 60 ticks, telemetry off"
for t in 1 2; do
  echo -n "threads=$t no players:   "; $S --zone assets/zones/large.toml --ticks 2000 --threads $t --telemetry off 2>&1 | finished
  echo -n "threads=$t 200 players:  "; $S --zone assets/zones/large.toml --ticks 2000 --threads $t --telemetry off --sim-players 200 2>&1 | finished
done

echo "## replay speed: demo.toml, 100 scripted players, 6000 ticks recorded with a hash every 60 ticks"
$S --zone assets/zones/demo.toml --ticks 6000 --threads 2 --telemetry off --sim-players 100 --journal "$T/demo.zjnl" 2>/dev/null
$R "$T/demo.zjnl" --threads 2 2>&1 | tail -2
$S --zone assets/zones/large.toml --ticks 1200 --threads 2 --telemetry off --sim-players 200 --journal "$T/large.zjnl" 2>/dev/null
$R "$T/large.zjnl" --threads 2 2>&1 | tail -2

echo "## telemetry cost: large.toml, 2 threads, 3000 ticks, alternating on/off, 3 runs each"
for i in 1 2 3; do
  for m in on off; do
    echo -n "telemetry=$m run $i: "; $S --zone assets/zones/large.toml --ticks 3000 --threads 2 --telemetry $m --admin 127.0.0.1:0 2>&1 | finished
  done
done

echo "## snapshot capture on the tick thread and snapshot sizes (files), 2 threads"
for z in demo large; do
  rm -rf "$T/d-$z"
  $S --zone assets/zones/$z.toml --ticks 1200 --threads 2 --telemetry off --persistence on --data-dir "$T/d-$z" \
     --snapshot-full-interval 10 --snapshot-diff-interval 1 --sim-players 100 2>&1 \
     | sed 's/\x1b\[[0-9;]*m//g' | grep -E "capture cost" | grep -oE "(captures|capture_p50_us|capture_p99_us|captures_whole|capture_whole_max_us)=[^ ]+" | tr '\n' ' '
  echo " ($z.toml)"
  ./target/release/zone-snapshot list "$T/d-$z/snapshots" | head -4
done
