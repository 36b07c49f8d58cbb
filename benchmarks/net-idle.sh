#!/usr/bin/env bash
# The server of benchmarks/net.sh alone (same zone and flags, no bots): the cores it uses over 20 s,
# from /proc/PID/stat, starting 5 s after it answers /readyz. Subtract it from net.sh's server
# cores before dividing by the bots, for the server's CPU per client-second. It binds the same
# ports as net.sh (UDP 17777, admin 19100): run the two one after the other, not together.
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
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:19100/readyz >/dev/null && break; sleep 0.1; done
curl -sf http://127.0.0.1:19100/readyz >/dev/null || { echo "zone-server did not become ready (is another on port 19100?)" >&2; exit 1; }
sleep 5
C0=$(awk '{print $14 + $15}' /proc/$P/stat)
sleep 20
C1=$(awk '{print $14 + $15}' /proc/$P/stat)
kill -TERM $P
wait $P || true
python3 -c "print('server_alone_cores=%.3f' % (($C1 - $C0) / 100 / 20))"
