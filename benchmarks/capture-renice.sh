#!/usr/bin/env bash
# Used for benchmarks/2026-11-29-persistence.md ("the persistence thread reniced"): runs $BIN/zone-server
# (BIN, default ./target/release) on the large zone twice, SECS (180) each: as is, then with its persist and journal
# threads reniced to 19 from outside, and prints the capture and tick figures of each.
# A/B: the persistence thread at normal priority vs reniced to 19 (externally), capture cost.
set -u
cd "$(dirname "$0")/.."
A=127.0.0.1:29300
for mode in plain reniced; do
  D=$(mktemp -d)
  ${BIN:-./target/release}/zone-server --zone assets/zones/large.toml --bind off --admin $A --threads 2 --persistence on --data-dir $D/data --log-format json --stats-interval 30 2> $D/log &
  P=$!
  sleep 2
  if [ $mode = reniced ]; then
    for t in /proc/$P/task/*; do c=$(cat $t/comm); case "$c" in persist*|journal*|housekeep*) renice -n 19 -p $(basename $t) >/dev/null; echo "reniced $c";; esac; done
  fi
  grep -h . /proc/$P/task/*/comm | sort | uniq -c | tr '\n' ' '; echo
  sleep ${SECS:-180}
  kill -TERM $P; wait $P
  python3 - $mode $D/log <<'PY'
import json,sys
cap=tick=None
for line in open(sys.argv[2]):
    try: e=json.loads(line)
    except ValueError: continue
    if "capture_p99_us" in e: cap=e
    if "tick_p99_us" in e and "tick_p50_us" in e: tick=e
# Since 0108654 the capture fields are of captures of changes, with the whole ones apart.
keys = ("captures","capture_p50_us","capture_p99_us","capture_max_us","captures_whole","capture_whole_max_us")
print(sys.argv[1], cap and {k:cap[k] for k in keys if k in cap}, tick and {k:tick[k] for k in ("tick_p50_us","tick_p99_us")})
PY
  rm -rf $D
done
