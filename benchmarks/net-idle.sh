#!/usr/bin/env bash
# The server of benchmarks/net.sh alone (same zone and flags, no bots): the cores it uses over 20 s
# after a 5 s start, from /proc/PID/stat. Subtract it from net.sh's server cores before dividing by
# the bots, for the server's CPU per client-second.
#
#   bash benchmarks/net-idle.sh            # builds, then measures
#   BIN=DIR bash benchmarks/net-idle.sh    # the zone-server found in DIR (as net.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${BIN:-}" ]; then
  cargo build --release --locked -q --bin zone-server
  BIN=./target/release
fi
export ZONE_TOKEN_SECRET=bench-secret
"$BIN/zone-server" --zone assets/zones/demo.toml --bind 127.0.0.1:17777 --admin 127.0.0.1:19100 --persistence off --threads 2 \
  --log-format json --stats-interval 5 --max-clients 5000 --handshake-rate-per-ip 100000 \
  ${INPUT_BATCH_TICKS:+--input-batch-ticks $INPUT_BATCH_TICKS} 2>/dev/null &
P=$!
trap 'kill $P 2>/dev/null || true' EXIT
sleep 5
C0=$(awk '{print $14 + $15}' /proc/$P/stat)
sleep 20
C1=$(awk '{print $14 + $15}' /proc/$P/stat)
kill -TERM $P
wait $P || true
python3 -c "print('server_alone_cores=%.3f' % (($C1 - $C0) / 100 / 20))"
