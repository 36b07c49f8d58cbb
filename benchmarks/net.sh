#!/usr/bin/env bash
# Capacity and memory per client of the game socket: one zone-server (demo zone, 10,000 NPCs, real
# time) and one zone-bots process with N bots on loopback, for each N given.
#
#   bash benchmarks/net.sh                 # N = 100 500 1000
#   bash benchmarks/net.sh 1000 1500       # other counts
#
# For each N it prints: the server's tick p99 (worst 5-second window once every bot has joined),
# overruns, the server's CPU (cores, over the steady window, and the part of it in the kernel),
# its RSS before the bots and with them (and the growth per client), and the bots' report (joined, failed joins, snapshots and kbit/s
# per bot, RTT p50/p99, decode errors, the bot process's own CPU). Run it on a quiet machine.
# For the server's CPU per client-second, subtract what benchmarks/net-idle.sh measures first.
set -euo pipefail
cd "$(dirname "$0")/.."
# INPUT_BATCH_TICKS=K makes the server ask the bots for one input datagram every K ticks
# (zone-server --input-batch-ticks; 3 by default, 20 Hz; 1 is every tick); the report prints
# what the bots sent.
# BEHAVIOR=chase runs the bots with another zone-bots --behavior (wander by default).
# BIN=DIR runs the zone-server and zone-bots found there (e.g. an older build kept aside, for a
# before/after pair in one sitting) instead of building them. A build from before ae24386 has no
# --input-batch-ticks (so INPUT_BATCH_TICKS must stay unset) and its bots send every tick.
if [ -z "${BIN:-}" ]; then
  cargo build --release --locked -q --bin zone-server --bin zone-bots
  BIN=./target/release
fi
B=$BIN/zone-bots
. benchmarks/net-server.sh
T=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$T"' EXIT
export ZONE_TOKEN_SECRET=bench-secret
PORT=$NET_PORT
ADMIN=$NET_ADMIN
DURATION=${DURATION:-40}

rss_kb() { awk '/^VmRSS/ {print $2}' /proc/$1/status; }
cpu_ticks() { awk '{print $14 + $15}' /proc/$1/stat; }
sys_ticks() { awk '{print $15}' /proc/$1/stat; }

echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), commit $(git rev-parse --short HEAD), $(date -u +%F)"
for N in ${@:-100 500 1000}; do
  net_server "$BIN" 2> "$T/server-$N.log" &
  SP=$!
  net_server_ready || { tail -5 "$T/server-$N.log" >&2; exit 1; }
  sleep 2
  RSS0=$(rss_kb $SP)
  START=$(date +%s)
  $B --server 127.0.0.1:$PORT --count $N --duration ${DURATION}s --behavior ${BEHAVIOR:-wander} --ramp-per-s 500 \
     --report "$T/bots-$N.json" 2> "$T/bots-$N.log" &
  BP=$!
  # Ramp (N/500 s) plus settling, then a steady window of half the duration.
  RAMP=$(( N / 500 + 5 ))
  sleep $RAMP
  C0=$(cpu_ticks $SP); K0=$(sys_ticks $SP); W0=$(date +%s.%N)
  sleep $(( DURATION / 2 ))
  C1=$(cpu_ticks $SP); K1=$(sys_ticks $SP); W1=$(date +%s.%N)
  RSSN=$(rss_kb $SP)
  # Mean time the network thread spends encoding one frame for every client (all frames so far).
  ENC=$(curl -s "http://$ADMIN/metrics" | awk '/^zone_net_frame_encode_seconds_sum/ {s=$2} /^zone_net_frame_encode_seconds_count/ {c=$2} END {if (c > 0) printf "%.2f", s / c * 1000; else print "n/a"}')
  wait $BP || echo "zone-bots exited with $?"
  kill -TERM $SP; wait $SP || true
  python3 - "$T/server-$N.log" "$T/bots-$N.json" "$N" "$RSS0" "$RSSN" "$C0" "$C1" "$W0" "$W1" "$START" "$RAMP" "$ENC" "$K0" "$K1" <<'PY'
import json, sys
log, report, n, rss0, rssn, c0, c1, w0, w1, start, ramp, enc, k0, k1 = sys.argv[1:]
n, rss0, rssn = int(n), int(rss0), int(rssn)
p99 = []; overruns = 0
for line in open(log):
    try: j = json.loads(line)
    except ValueError: continue
    f = j.get("fields", j)
    if f.get("message") == "zone stats":
        ts = j.get("timestamp", "")
        p99.append(int(f.get("tick_p99_us", 0))); overruns = int(f.get("overrun_ticks", 0))
# Skip the windows that include the ramp.
skip = int(ramp) // 5 + 1
steady = p99[skip:-1] or p99
cpu = (int(c1) - int(c0)) / 100 / (float(w1) - float(w0))
kernel = (int(k1) - int(k0)) / 100 / (float(w1) - float(w0))
r = json.load(open(report))
print(f"N={n} tick_p99_ms_worst={max(steady)/1000:.2f} tick_p99_ms_windows={[round(x/1000,2) for x in steady]} overrun_ticks={overruns} "
      f"server_cpu_cores={cpu:.3f} server_kernel_cores={kernel:.3f} frame_encode_ms_mean={enc} rss_before_mb={rss0/1024:.1f} rss_with_bots_mb={rssn/1024:.1f} rss_per_client_kb={(rssn-rss0)/n:.1f}")
keys = ["input_batch_ticks", "joined", "failed_joins", "snapshots_per_bot_per_s", "kbit_per_bot_per_s", "kbit_up_per_bot_per_s", "rtt_ms_p50", "rtt_ms_p99",
        "decode_errors", "missing_baselines", "wall_s", "cpu_s", "peak_rss_mib"]
print("   bots: " + " ".join(f"{k}={r[k]}" for k in keys if k in r))
PY
  sleep 2
done
