#!/usr/bin/env bash
# Where the server's CPU goes with N bots: one zone-server and one zone-bots as in
# benchmarks/net.sh (demo zone, loopback, wander), `perf record` on the server for a few seconds
# once the bots have joined, then the share of samples whose call stack holds each part of the
# work (a sample can count under several parts: "Session::encode" holds the delta encoding, for
# instance). Needs `perf` (Debian's linux-perf), and root or a kernel.perf_event_paranoid low
# enough to sample the kernel too. The server is net.sh's (benchmarks/net-server.sh, which also
# takes INPUT_BATCH_TICKS), on its ports: run it alone.
#
#   bash benchmarks/net-profile.sh            # N = 1000
#   N=2000 SECONDS_SAMPLED=8 BIN=DIR bash benchmarks/net-profile.sh
#
# STACKS_OUT=FILE (absolute, or from the repository root) keeps the samples' stacks (perf script
# -F comm,ip,sym) for a closer look.
#
# perf's unwinding (dwarf) costs the server time while it samples, so the run's own figures
# (snapshots/s, CPU) are not net.sh's: take those from net.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v perf >/dev/null || { echo "net-profile.sh: needs perf (apt-get install linux-perf)" >&2; exit 2; }
if [ -z "${BIN:-}" ]; then
  cargo build --release --locked -q --bin zone-server --bin zone-bots
  BIN=./target/release
fi
N=${N:-1000}
SAMPLED=${SECONDS_SAMPLED:-6}
[[ "$N" =~ ^[0-9]+$ && "$SAMPLED" =~ ^[0-9]+$ ]] || { echo "net-profile.sh: N and SECONDS_SAMPLED are whole numbers" >&2; exit 2; }
T=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$T"' EXIT
export ZONE_TOKEN_SECRET=bench-secret
. benchmarks/net-server.sh
net_server "$BIN" >/dev/null 2>&1 &
SP=$!
net_server_ready
sleep 2
# Sampling starts once every bot has joined (ramp at 500/s) and settled; the bots leave 2 s after.
SETTLE=$(( N / 500 + 8 ))
"$BIN/zone-bots" --server "127.0.0.1:$NET_PORT" --count "$N" --duration $(( SETTLE + SAMPLED + 2 ))s --behavior wander \
  --ramp-per-s 500 --report "$T/bots.json" >/dev/null 2>&1 &
BP=$!
sleep "$SETTLE"
echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u '+%F %H:%M') UTC; N=$N, ${SAMPLED} s sampled"
perf record -q -F 299 --call-graph dwarf,16384 -o "$T/perf.data" -p $SP -- sleep "$SAMPLED" 2>"$T/perf.err" || {
  cat "$T/perf.err" >&2
  echo "net-profile.sh: perf record failed (kernel.perf_event_paranoid = $(cat /proc/sys/kernel/perf_event_paranoid); run as root or lower it)" >&2
  exit 1
}
wait $BP || true
kill -TERM $SP; wait $SP 2>/dev/null || true
perf script -i "$T/perf.data" -F comm,ip,sym 2>/dev/null > "$T/stacks.txt"
[ -z "${STACKS_OUT:-}" ] || cp "$T/stacks.txt" "$STACKS_OUT"
python3 - "$T/stacks.txt" <<'PY'
import sys
from collections import Counter
stacks, cur, comm = [], [], None
for line in open(sys.argv[1]):
    if not line.strip():
        if comm is not None:
            stacks.append((comm, cur))
        cur, comm = [], None
    elif not line[0].isspace():
        comm = line.split()[0]
    else:
        parts = line.split(None, 1)
        cur.append(parts[1].strip() if len(parts) > 1 else "")
if comm is not None:
    stacks.append((comm, cur))
n = len(stacks)
if n == 0:
    sys.exit("no samples (can perf sample here? try: perf stat -e cpu-clock true)")
print(f"samples={n} threads=" + ", ".join(f"{c} {100 * k / n:.1f}%" for c, k in Counter(c for c, _ in stacks).most_common()))
def share(pred):
    return 100 * sum(1 for _, s in stacks if pred(s)) / n
holds = lambda name: (lambda s: any(name in f for f in s))
parts = [
    ("encoding, per client (Session::encode)", holds("Session::encode")),
    ("  interest search (nearest_slots)", holds("nearest_slots")),
    ("  delta encoding (encode_delta_capped_into)", holds("encode_delta_capped_into")),
    ("  sealing (seal_vec)", holds("seal_vec")),
    ("frame preparation (begin_frame)", holds("begin_frame")),
    ("sending (sendmmsg)", holds("send_batch")),
    ("  of which delivery into the bots' sockets (loopback)", lambda s: any("send_batch" in f for f in s)
        and any(k in f for f in s for k in ("net_rx_action", "process_backlog", "udp_rcv", "__udp4_lib_rcv"))),
    ("receiving (recvmmsg)", holds("recv_batch")),
    ("datagrams handled (handle_datagram)", holds("handle_datagram")),
    ("timers (handle_timeout)", holds("handle_timeout")),
    ("in a system call", lambda s: any(f.startswith("entry_SYSCALL") for f in s)),
    ("allocator (leaf in mimalloc)", lambda s: bool(s) and s[0].lstrip("_").startswith("mi_")),
]
for name, pred in parts:
    print(f"{name:58s} {share(pred):5.1f}%")
if not any(f.startswith("entry_SYSCALL") for _, s in stacks for f in s):
    print("warning: no sample holds a kernel frame (perf sampled user space only: run as root or lower "
          "kernel.perf_event_paranoid); the kernel's rows read 0 and the other shares are too high")
PY
