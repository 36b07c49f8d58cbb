#!/usr/bin/env bash
# Soak: one zone-server (demo zone, 10,000 NPCs, real time, 2 threads) with Redis hot snapshots,
# PostgreSQL cold snapshots and events, and the file journal all on, and one zone-bots process
# with 1,000 wandering bots on loopback, for a given duration. Once a minute it records the
# server's RSS, tick p50 and p99 (the server's own one-minute stats window), snapshots/s per bot
# (the bots' mean over that minute), decode errors, and every queue-drop counter the server
# exports, into a CSV; at the end it prints a summary and plots the CSV (PNG, with gnuplot).
#
#   DURATION=1h bash benchmarks/soak.sh                    # the figure (about 65 minutes)
#   DURATION=5m BOTS=200 bash benchmarks/soak.sh           # a quick check of the script
#
# Environment:
#   DURATION   how long the bots play: 1h, 30m, 90s (default 1h)
#   BOTS       number of bots (default 1000)
#   WARMUP_MIN minutes excluded from the RSS-growth figure (default 10)
#   OUT        directory for soak.csv, soak.png, the logs and the bots' report
#              (default benchmarks/<date>-soak)
#   BIN        directory holding release zone-server and zone-bots (default: build them)
#   DATABASE_URL, REDIS_URL  the services (default the local ones on 127.0.0.1)
# Ports: UDP 127.0.0.1:27777, admin 127.0.0.1:29100. Everything stops by itself at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-1h}
BOTS=${BOTS:-1000}
WARMUP_MIN=${WARMUP_MIN:-10}
OUT=${OUT:-benchmarks/$(date -u +%F)-soak}
DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
if [ -z "${BIN:-}" ]; then
  cargo build --release --locked -q --bin zone-server --bin zone-bots
  BIN=./target/release
fi
for tool in curl python3; do command -v $tool >/dev/null || { echo "soak.sh: $tool is missing"; exit 1; }; done
redis-cli -u "$REDIS_URL" ping >/dev/null 2>&1 || { echo "soak.sh: Redis does not answer at $REDIS_URL"; exit 1; }
psql "$DATABASE_URL" -qtAc 'select 1' >/dev/null 2>&1 || { echo "soak.sh: PostgreSQL does not answer at $DATABASE_URL"; exit 1; }

mkdir -p "$OUT"
DATA=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$DATA"' EXIT
export ZONE_TOKEN_SECRET=soak-secret
PORT=27777
ADMIN=127.0.0.1:29100
INSTANCE=soak-$(date -u +%Y%m%d%H%M%S)-$$
# Seconds: accept 1h, 30m, 90s, 90.
secs() { python3 -c 'import re,sys; m=re.fullmatch(r"([0-9.]+)(ms|s|m|h)?", sys.argv[1]); v=float(m[1]); print(int(v*{None:1,"s":1,"m":60,"h":3600,"ms":0.001}[m[2]]))' "$1"; }
RUN_S=$(secs "$DURATION")

# The checkout's commit when the run starts (with BIN, the binaries may be older: say so in the write-up).
COMMIT=$(git rev-parse --short HEAD)
echo "# soak: $BOTS bots for ${RUN_S}s; machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/ {print $2}') GiB, commit $COMMIT, $(date -u '+%F %T') UTC, load $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$OUT/machine.txt"

$BIN/zone-server --zone assets/zones/demo.toml --bind 127.0.0.1:$PORT --admin $ADMIN --threads 2 \
  --persistence on --data-dir "$DATA" --redis "$REDIS_URL" --postgres "$DATABASE_URL" --instance "$INSTANCE" \
  --journal-retention 2GB --log-format json --stats-interval 60 \
  --max-clients 5000 --handshake-rate-per-ip 100000 2> "$OUT/server.log" &
SP=$!
for _ in $(seq 1 200); do curl -sf "http://$ADMIN/readyz" >/dev/null && break; sleep 0.1; done
curl -sf "http://$ADMIN/readyz" >/dev/null || { echo "soak.sh: zone-server did not become ready; see $OUT/server.log"; exit 1; }

$BIN/zone-bots --server 127.0.0.1:$PORT --count "$BOTS" --duration "${RUN_S}s" --behavior wander --ramp-per-s 200 \
  --report "$OUT/bots.json" 2> "$OUT/bots.log" &
BP=$!

# The sampler: one row a minute while the bots run, then the summary.
python3 - "$SP" "$BP" "$ADMIN" "$OUT" "$RUN_S" "$WARMUP_MIN" "$BOTS" <<'PY'
import csv, json, os, re, sys, time, urllib.request
sp, bp, admin, out, run_s, warmup, bots = sys.argv[1:]
sp, bp, run_s, warmup, bots = int(sp), int(bp), int(run_s), int(warmup), int(bots)
PROGRESS = re.compile(r"^zone-bots:\s+(\d+)s connected (\d+)/\d+ failed (\d+) .*\| ([0-9.]+) snapshots/s/bot .*decode errors (\d+)")

def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f: return f.read().split()[2] != "Z"
    except OSError: return False

def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"): return int(line.split()[1]) / 1024
    return 0.0

def cpu_s(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

def scrape():
    """The server's counters: every one whose name says it counts drops (by name and labels),
    and the sessions that ended (left, timed out or gave up on events) since the start."""
    text = urllib.request.urlopen(f"http://{admin}/metrics", timeout=5).read().decode()
    d, ended, give_ups = {}, 0, 0
    for line in text.splitlines():
        if line.startswith("#") or " " not in line: continue
        name, value = line.rsplit(" ", 1)
        base = name.split("{")[0]
        if "dropped" in base: d[name] = float(value)
        if base == "zone_net_sessions_total" and 'event="left"' in name: ended = int(float(value))
        if base == "zone_reliable_timeouts_total": give_ups = int(float(value))
    return d, ended, give_ups

srv_lines = 0
bot_lines = 0
def new_lines(path, skip):
    with open(path, errors="replace") as f: lines = f.readlines()
    return lines[skip:], len(lines)

rows = []
start = time.time()
last_p50 = last_p99 = None
bot_cpu0 = srv_cpu0 = None
minute = 0
with open(f"{out}/soak.csv", "w", newline="") as fcsv:
    w = csv.writer(fcsv)
    w.writerow(["minute", "rss_mib", "tick_p50_ms", "tick_p99_ms", "tick_rate_hz", "players", "snapshots_per_bot_per_s",
                "connected", "decode_errors", "drops_total", "server_cpu_cores", "bots_cpu_cores", "sessions_ended", "event_give_ups", "drops_detail"])
    prev_t = time.time(); srv_cpu0 = cpu_s(sp); bot_cpu0 = cpu_s(bp)
    while alive(bp) and alive(sp):
        minute += 1
        target = start + minute * 60
        while time.time() < target and alive(bp): time.sleep(1)
        if not alive(bp) or not alive(sp): break
        now = time.time()
        srv_cpu, bot_cpu = cpu_s(sp), cpu_s(bp)
        srv_new, srv_lines = new_lines(f"{out}/server.log", srv_lines)
        p50 = p99 = hz = players = None
        for line in srv_new:
            try: j = json.loads(line)
            except ValueError: continue
            f = j.get("fields", j)
            if f.get("message") == "zone stats":
                p50, p99 = int(f["tick_p50_us"]) / 1000, int(f["tick_p99_us"]) / 1000
                hz, players = float(f["tick_rate_hz"]), int(f["players"])
        bot_new, bot_lines = new_lines(f"{out}/bots.log", bot_lines)
        rates, connected, errors = [], 0, None
        for line in bot_new:
            m = PROGRESS.match(line.strip())
            if m:
                rates.append(float(m[4])); connected = int(m[2]); errors = int(m[5])
        d, ended, give_ups = scrape()
        row = [minute, round(rss_mib(sp), 1), p50, p99, hz, players,
               round(sum(rates) / len(rates), 2) if rates else None, connected, errors,
               int(sum(d.values())), round((srv_cpu - srv_cpu0) / (now - prev_t), 2),
               round((bot_cpu - bot_cpu0) / (now - prev_t), 2), ended, give_ups,
               ";".join(f"{k}={int(v)}" for k, v in sorted(d.items()) if v)]
        srv_cpu0, bot_cpu0, prev_t = srv_cpu, bot_cpu, now
        w.writerow(row); fcsv.flush()
        rows.append(row)
        print(f"soak: minute {minute:>3}: rss {row[1]} MiB, tick p50 {p50} p99 {p99} ms, {row[6]} snapshots/s/bot, "
              f"{connected} connected, decode errors {errors}, drops {row[9]}, server {row[10]} cores, bots {row[11]} cores, sessions ended {ended}", flush=True)

if not rows:
    print("soak: no minute was recorded"); sys.exit(1)
after = [r for r in rows if r[0] > warmup] or rows
rss0, rss1 = after[0][1], after[-1][1]
p99s = sorted(r[3] for r in after if r[3] is not None)
rates = sorted(r[6] for r in after if r[6] is not None)
summary = {
    "minutes": len(rows), "warmup_min": warmup, "bots": bots,
    "rss_mib_after_warmup": rss0, "rss_mib_end": rss1, "rss_mib_max": max(r[1] for r in rows),
    "rss_growth_after_warmup_pct": round((rss1 - rss0) / rss0 * 100, 2),
    "tick_p99_ms_min": p99s[0] if p99s else None, "tick_p99_ms_median": p99s[len(p99s) // 2] if p99s else None,
    "tick_p99_ms_max": p99s[-1] if p99s else None,
    "snapshots_per_bot_per_s_min": rates[0] if rates else None,
    "snapshots_per_bot_per_s_median": rates[len(rates) // 2] if rates else None,
    "decode_errors_end": rows[-1][8], "drops_end": rows[-1][9], "sessions_ended_end": rows[-1][12], "event_give_ups_end": rows[-1][13], "drops_detail_end": rows[-1][14],
}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)
print("soak summary: " + json.dumps(summary))
PY
wait $BP && echo "zone-bots exited 0" || echo "zone-bots exited with $?"
curl -s "http://$ADMIN/metrics" > "$OUT/metrics-end.txt" || true
kill -TERM $SP; wait $SP && echo "zone-server exited 0" || echo "zone-server exited with $?"
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("bots report: " + " ".join(f"{k}={r[k]}" for k in ["joined","failed_joins","snapshots_per_bot_per_s","rtt_ms_p50","rtt_ms_p99","decode_errors","missing_baselines","cpu_s","peak_rss_mib"] if k in r))' "$OUT/bots.json" || true
# Drop the instance's rows and keys so repeated soaks do not pile up data.
redis-cli -u "$REDIS_URL" --scan --pattern "*$INSTANCE*" | xargs -r redis-cli -u "$REDIS_URL" del >/dev/null || true

if command -v gnuplot >/dev/null; then
  gnuplot <<GP
set datafile separator ","
set terminal pngcairo size 1200,900 noenhanced
set output "$OUT/soak.png"
set multiplot layout 3,1 title "zone-server soak: $BOTS bots, demo zone, Redis + PostgreSQL + journal ($COMMIT)"
set key outside right
set xlabel "minute"
set ylabel "RSS (MiB)"
set yrange [0:*]
plot "$OUT/soak.csv" every ::1 using 1:2 with linespoints title "server RSS"
set ylabel "tick (ms)"
plot "$OUT/soak.csv" every ::1 using 1:3 with linespoints title "tick p50", "" every ::1 using 1:4 with linespoints title "tick p99"
set ylabel "per bot"
plot "$OUT/soak.csv" every ::1 using 1:7 with linespoints title "snapshots/s per bot", "" every ::1 using 1:9 with linespoints title "decode errors (total)"
unset multiplot
GP
  echo "plot: $OUT/soak.png"
else
  echo "gnuplot is missing (apt-get install -y gnuplot-nox): no plot; the CSV is $OUT/soak.csv"
fi
