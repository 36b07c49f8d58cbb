#!/usr/bin/env bash
# Two builds of zone-server and zone-bots measured in one sitting, alternated run by run, so that
# the machine's speed of the hour weighs on both alike (it moves by 1.5x and more on this machine
# kind: compare only figures of one sitting). For each round it runs benchmarks/net-idle.sh and
# then benchmarks/net.sh N for each N given, with A's binaries and with B's, and prints every
# line prefixed with its round and the build's label.
#
#   bash benchmarks/net-ab.sh A_DIR B_DIR [ROUNDS] [N...]    # ROUNDS 2, N 500 2000 by default
#
# A_DIR and B_DIR each hold a release zone-server and zone-bots (e.g. an older commit built with
# `CARGO_TARGET_DIR=/tmp/old cargo build --release --locked --bin zone-server --bin zone-bots`
# in a worktree of it, then copied aside). Lines are labelled `build=A:<dir name>` or
# `build=B:<dir name>`. Round 1 runs A first, round 2 B first, and so on, so that neither build
# always runs in the other's wake. The server's CPU per client-second is
# (server_cpu_cores - server_alone_cores) / N, from lines of the same round and build.
set -euo pipefail
usage() { sed -n '2,15p' "${BASH_SOURCE[0]}" >&2; exit 2; }
[ $# -ge 2 ] || usage
A=$(cd "$1" 2>/dev/null && pwd) || { echo "net-ab.sh: no directory $1" >&2; exit 2; }
B=$(cd "$2" 2>/dev/null && pwd) || { echo "net-ab.sh: no directory $2" >&2; exit 2; }
ROUNDS=${3:-2}
[[ "$ROUNDS" =~ ^[1-9]$ ]] || { echo "net-ab.sh: ROUNDS is 1 to 9 (got $ROUNDS): give it before the counts" >&2; exit 2; }
shift $(( $# >= 3 ? 3 : 2 ))
COUNTS=${*:-500 2000}
cd "$(dirname "${BASH_SOURCE[0]}")/.."
for d in "$A" "$B"; do
  for b in zone-server zone-bots; do
    [ -x "$d/$b" ] || { echo "net-ab.sh: no $d/$b (build it first, see the top of this script)" >&2; exit 2; }
  done
done
echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u '+%F %H:%M') UTC; A=$A B=$B, $ROUNDS rounds of: idle, N = $COUNTS"
run() {
  local r=$1 tag=$2 d=$3
  local label="round=$r build=$tag:$(basename "$d")"
  # (zone-server prints its final tick and zone hash on exit: not a figure here.)
  BIN=$d bash benchmarks/net-idle.sh | sed "/^final_tick/d; s|^|$label |"
  for n in $COUNTS; do
    BIN=$d bash benchmarks/net.sh "$n" | sed "/^final_tick/d; /^# machine/d; s|^|$label |"
  done
}
for r in $(seq 1 "$ROUNDS"); do
  if [ $(( r % 2 )) -eq 1 ]; then
    run "$r" A "$A"; run "$r" B "$B"
  else
    run "$r" B "$B"; run "$r" A "$A"
  fi
done
echo "# done $(date -u '+%H:%M') UTC"
