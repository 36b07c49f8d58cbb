#!/usr/bin/env bash
# Two builds of zone-server and zone-bots measured in one sitting, alternated run by run, so that
# the machine's speed of the hour weighs on both alike (it moves by 1.5x and more on this machine
# kind: compare only figures of one sitting). For each round it runs benchmarks/net-idle.sh and
# then benchmarks/net.sh N for each N given, first with A's binaries, then with B's, and prints
# every line prefixed with the build's label.
#
#   bash benchmarks/net-ab.sh A_DIR B_DIR [ROUNDS] [N...]    # ROUNDS 2, N 500 2000 by default
#
# A_DIR and B_DIR each hold a release zone-server and zone-bots (e.g. an older commit built with
# `CARGO_TARGET_DIR=/tmp/old cargo build --release --locked --bin zone-server --bin zone-bots`
# in a worktree of it). The label is the directory's name. The server's CPU per client-second is
# (server_cpu_cores - server_alone_cores) / N, from lines of the same round and build.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n '2,13p' "$0" >&2; exit 2; }
A=$1 B=$2
ROUNDS=${3:-2}
shift $(( $# >= 3 ? 3 : 2 ))
COUNTS=${*:-500 2000}
for d in "$A" "$B"; do
  for b in zone-server zone-bots; do
    [ -x "$d/$b" ] || { echo "net-ab.sh: no $d/$b (build it first, see the top of this script)" >&2; exit 2; }
  done
done
echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u '+%F %H:%M') UTC; A=$A B=$B, $ROUNDS rounds of: idle, N = $COUNTS"
for r in $(seq 1 "$ROUNDS"); do
  for d in "$A" "$B"; do
    label="round=$r build=$(basename "$d")"
    # (zone-server prints its final tick and zone hash on exit: not a figure here.)
    BIN=$d bash benchmarks/net-idle.sh | grep -v '^final_tick' | sed "s|^|$label |"
    for n in $COUNTS; do
      BIN=$d bash benchmarks/net.sh "$n" | grep -v '^# machine\|^final_tick' | sed "s|^|$label |"
    done
  done
done
echo "# done $(date -u '+%H:%M') UTC"
