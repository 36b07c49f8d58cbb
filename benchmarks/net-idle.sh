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
. benchmarks/net-server.sh
net_server "$BIN" 2>/dev/null &
P=$!
trap 'kill $P 2>/dev/null || true' EXIT
net_server_ready
sleep 5
C0=$(awk '{print $14 + $15}' /proc/$P/stat)
sleep 20
C1=$(awk '{print $14 + $15}' /proc/$P/stat)
kill -TERM $P
wait $P || true
python3 -c "print('server_alone_cores=%.3f' % (($C1 - $C0) / 100 / 20))"
