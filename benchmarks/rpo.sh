#!/usr/bin/env bash
# RPO at kill -9: what a zone-server loses when it is killed without warning, against the input
# journal's flush interval (100 ms to the OS, fsync every 1 s: server/src/journal_sink.rs). Each
# round starts one zone-server (demo zone, real time, 2 threads, file persistence only: file
# snapshots and the file journal, no Redis or PostgreSQL) on a fresh data directory, lets BOTS
# wandering bots play, and a random WAIT_MIN..WAIT_MAX seconds after they are all connected reads
# the server's tick (zone_ticks_total in /metrics) and at once kills it with SIGKILL. Then
# `zone-replay DATA/journal` gives the last tick the journal holds (final_tick); the ticks lost are
# the tick at the kill minus final_tick, the time lost is that times 1000/60 ms, and the inputs
# lost are estimated as the lost ticks times the inputs per tick measured over the round (an
# estimate: the journal does not say which inputs the lost ticks held). Finally the server is
# restarted on the same directory with --restore required: the time from its start to /readyz,
# and the tick it restored to, which must equal final_tick. A CSV row a round, and a summary
# (min/median/max of the time lost, against the 100 ms flush and the 1 s fsync).
#
#   bash benchmarks/rpo.sh                                 # the figure (10 rounds, a few minutes)
#   ROUNDS=2 bash benchmarks/rpo.sh                        # a quick check of the script
#
# Environment:
#   ROUNDS     kills to measure (default 10)
#   BOTS       number of bots (default 200)
#   WAIT_MIN, WAIT_MAX  seconds between all bots connected and the kill, drawn uniformly
#              (default 3 and 8)
#   OUT        directory for rpo.csv, summary.json, machine.txt and the rounds' logs (logs/)
#              (default benchmarks/<date>-rpo)
#   BIN        directory holding release zone-server, zone-bots and zone-replay (default: build them)
# A kill -9 loses what the process had not yet handed to the OS; what a power cut loses (up to the
# 1 s fsync interval) is not measured here. The lost ticks may be under-counted by a tick, never
# over-counted: the server may run a tick between the read and the kill (read_to_kill_ms says how
# long that was), and zone_ticks_total is counted after the tick's journal record is handed to the
# writer, so the read can lag the journal by a tick (then lost_ticks can be -1: nothing was lost).
# Ports: UDP 127.0.0.1:27877, admin 127.0.0.1:29200. Everything stops by itself at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-10}
BOTS=${BOTS:-200}
WAIT_MIN=${WAIT_MIN:-3}
WAIT_MAX=${WAIT_MAX:-8}
OUT=${OUT:-benchmarks/$(date -u +%F)-rpo}
if [ -z "${BIN:-}" ]; then
  cargo build --release --locked -q --bin zone-server --bin zone-bots --bin zone-replay
  BIN=./target/release
fi
for tool in curl python3; do command -v $tool >/dev/null || { echo "rpo.sh: $tool is missing"; exit 1; }; done
for b in zone-server zone-bots zone-replay; do [ -x "$BIN/$b" ] || { echo "rpo.sh: $BIN/$b is missing"; exit 1; }; done

PORT=27877
ADMIN=127.0.0.1:29200
if curl -s -o /dev/null "http://$ADMIN/healthz"; then echo "rpo.sh: something already listens on $ADMIN"; exit 1; fi
mkdir -p "$OUT/logs"
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
export ZONE_TOKEN_SECRET=rpo-secret
SERVER_ARGS=(--zone assets/zones/demo.toml --bind 127.0.0.1:$PORT --admin $ADMIN --threads 2 --persistence on
  --log-format json --max-clients 5000 --handshake-rate-per-ip 100000)
BOTS_S=600   # longer than any round: the bots are stopped when their server is killed

echo "# rpo: $ROUNDS rounds, $BOTS bots, kill -9 ${WAIT_MIN}-${WAIT_MAX}s after all joined; machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/ {print $2}') GiB, $(df -T "$WORK" | awk 'NR==2 {print $2}') data dir, commit $(git rev-parse --short HEAD), $(date -u '+%F %T') UTC, load $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$OUT/machine.txt"

# The helpers that must be quick (the read before the kill, the readiness poll) and the arithmetic.
cat > "$WORK/rpo.py" <<'PY'
import csv, json, os, signal, statistics, sys, time, urllib.request

def metrics(admin):
    text = urllib.request.urlopen(f"http://{admin}/metrics", timeout=5).read().decode()
    m = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line: continue
        name, value = line.rsplit(" ", 1)
        base = name.split("{")[0]  # one series each, labelled zone="<id>"
        if base in ("zone_ticks_total", "zone_inputs_total", "zone_journal_records_total", "zone_players"):
            m[base] = m.get(base, 0) + int(float(value))
    return m

def ready(admin):
    try:
        return urllib.request.urlopen(f"http://{admin}/readyz", timeout=2).status == 200
    except OSError:
        return False

def num(x):
    try: return float(x)
    except ValueError: return None

cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "ready":
    # ready ADMIN T0 TIMEOUT_S PID: seconds from T0 (epoch seconds) to /readyz answering 200.
    admin, t0, timeout, pid = args[0], float(args[1]), float(args[2]), int(args[3])
    while time.time() - t0 < timeout:
        if ready(admin):
            print(f"{time.time() - t0:.3f}"); sys.exit(0)
        try: os.kill(pid, 0)
        except OSError: break
        time.sleep(0.01)
    print("nan"); sys.exit(1)
elif cmd == "read":
    # read ADMIN: zone_ticks_total, zone_inputs_total, zone_players.
    m = metrics(args[0])
    print(m.get("zone_ticks_total", 0), m.get("zone_inputs_total", 0), m.get("zone_players", 0))
elif cmd == "joined":
    # joined ADMIN BOTS TIMEOUT_S: waits until every bot is a player; prints players, ticks, inputs then.
    admin, bots, timeout = args[0], int(args[1]), float(args[2])
    t0 = time.time()
    while True:
        m = metrics(admin)
        if m.get("zone_players", 0) >= bots or time.time() - t0 > timeout: break
        time.sleep(0.05)
    print(m.get("zone_players", 0), m.get("zone_ticks_total", 0), m.get("zone_inputs_total", 0))
elif cmd == "killread":
    # killread ADMIN PID: reads /metrics and SIGKILLs PID right after. The time from sending the
    # request to the kill's return bounds how long the server ran after the counters it sent.
    admin, pid = args[0], int(args[1])
    assert pid > 1
    t_req = time.monotonic()
    m = metrics(admin)
    t_read = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    t_kill = time.monotonic()
    print(m.get("zone_ticks_total", 0), m.get("zone_inputs_total", 0), m.get("zone_journal_records_total", 0),
          m.get("zone_players", 0), f"{(t_kill - t_req) * 1000:.2f}", f"{(t_kill - t_read) * 1000:.2f}")
elif cmd == "finished":
    # finished LOG: the zone tick and the ticks run in the server's "run finished" log line.
    for line in open(args[0], errors="replace"):
        try: j = json.loads(line)
        except ValueError: continue
        f = j.get("fields", j)
        if f.get("message") == "run finished":
            print(f["tick"], f["ticks"]); sys.exit(0)
    print("nan nan"); sys.exit(1)
elif cmd == "kv":
    # kv FILE KEY...: the values of KEY=value words on the last line of FILE holding the first key.
    path, keys = args[0], args[1:]
    found = {}
    try:
        for line in open(path, errors="replace"):
            words = dict(w.split("=", 1) for w in line.split() if "=" in w)
            if keys[0] in words: found = words
    except OSError: pass
    print(" ".join(found.get(k, "nan") for k in keys))
elif cmd == "row":
    # row CSV round tick_at_kill ticks_joined inputs_at_kill inputs_joined final_tick gap_ms restore_s
    #     restored_tick players records replay_exit replay_hash restored_hash source rto_ms
    (out, rnd, tick, t0, inputs, i0, final, gap, restore_s, restored, players, records,
     rx, rhash, shash, source, rto) = args
    tick, t0, inputs, i0 = int(tick), int(t0), int(inputs), int(i0)
    ipt = (inputs - i0) / (tick - t0) if tick > t0 else None
    f = num(final)
    lost = tick - int(f) if f is not None else None
    r = num(restored)
    row = [rnd, tick, final if f is not None else "", lost if lost is not None else "",
           f"{lost * 1000 / 60:.1f}" if lost is not None else "",
           f"{ipt:.1f}" if ipt is not None else "",
           round(lost * ipt) if lost is not None and ipt is not None else "",
           gap, restore_s if num(restore_s) is not None else "", restored if r is not None else "",
           players, records, rx,
           "yes" if f is not None and r is not None and int(f) == int(r) else "NO",
           "yes" if rhash != "nan" and rhash == shash else "NO", source, rto if rto != "nan" else ""]
    new = not os.path.exists(out)
    with open(out, "a", newline="") as fh:
        w = csv.writer(fh)
        if new:
            w.writerow(["round", "tick_at_kill", "final_tick", "lost_ticks", "lost_ms", "inputs_per_tick", "est_inputs_lost",
                        "read_to_kill_ms", "restore_s", "restored_tick", "players", "journal_records_at_kill", "replay_exit",
                        "restored_eq_final", "restored_hash_eq_replay", "restore_source", "server_rto_ms"])
        w.writerow(row)
    print("rpo: round {}: tick at kill {}, journal ends at {}: lost {} ticks = {} ms (est. {} inputs); read-to-kill {} ms; "
          "restored to {} ({}) in {} s, equal to the journal's end: {}, same hash as zone-replay: {}".format(
          rnd, tick, row[2] or "?", row[3] if row[3] != "" else "?", row[4] or "?", row[6] if row[6] != "" else "?", gap,
          row[9] or "?", source, row[8] or "?", row[13], row[14]), flush=True)
elif cmd == "summary":
    # summary CSV OUTDIR CHECK: min/median/max of the time lost, against the flush and fsync intervals.
    path, outdir, check = args
    rows = list(csv.DictReader(open(path)))
    def col(name): return [float(r[name]) for r in rows if r[name] != ""]
    def mmm(v): return {"min": min(v), "median": statistics.median(v), "max": max(v)} if v else None
    lost_ms, lost_t = col("lost_ms"), col("lost_ticks")
    anomalies = []
    for r in rows:
        why = []
        if r["replay_exit"] != "0": why.append(f"zone-replay exited {r['replay_exit']}")
        if r["final_tick"] == "": why.append("no final_tick from zone-replay")
        if r["restored_tick"] == "": why.append("the restart did not restore")
        elif r["restored_eq_final"] != "yes": why.append(f"restored tick {r['restored_tick']} != final_tick {r['final_tick']}")
        if r["restored_hash_eq_replay"] != "yes": why.append("restored hash differs from zone-replay's")
        if r["lost_ticks"] != "" and float(r["lost_ticks"]) < 0: why.append("the journal is ahead of the tick read")
        if r["restore_s"] == "": why.append("no /readyz after the restart")
        if why: anomalies.append(f"round {r['round']}: " + "; ".join(why))
    s = {
        "rounds": len(rows), "rounds_measured": len(lost_ms),
        "lost_ms": mmm(lost_ms), "lost_ticks": mmm(lost_t), "est_inputs_lost": mmm(col("est_inputs_lost")),
        "inputs_per_tick": mmm(col("inputs_per_tick")),
        "rounds_over_flush_100ms": sum(1 for v in lost_ms if v > 100), "rounds_over_fsync_1s": sum(1 for v in lost_ms if v > 1000),
        "read_to_kill_ms": mmm(col("read_to_kill_ms")), "restore_s": mmm(col("restore_s")),
        "restored_eq_final": sum(1 for r in rows if r["restored_eq_final"] == "yes"),
        "restored_hash_eq_replay": sum(1 for r in rows if r["restored_hash_eq_replay"] == "yes"),
        "tick_check": check, "anomalies": anomalies,
    }
    json.dump(s, open(f"{outdir}/summary.json", "w"), indent=1)
    if lost_ms and s["est_inputs_lost"] and s["read_to_kill_ms"]:
        print(f"rpo summary: {len(lost_ms)} kills: lost {s['lost_ms']['min']:.1f} / {s['lost_ms']['median']:.1f} / {s['lost_ms']['max']:.1f} ms "
              f"(min / median / max; {s['lost_ticks']['min']:.0f} / {s['lost_ticks']['median']:.1f} / {s['lost_ticks']['max']:.0f} ticks), "
              f"against the journal's 100 ms flush to the OS ({s['rounds_over_flush_100ms']} over it) and 1 s fsync "
              f"({s['rounds_over_fsync_1s']} over it; a power cut is not measured here)")
        print(f"rpo summary: estimated inputs lost {s['est_inputs_lost']['min']:.0f} / {s['est_inputs_lost']['median']:.0f} / {s['est_inputs_lost']['max']:.0f} "
              f"at {s['inputs_per_tick']['median']:.1f} inputs/tick; read-to-kill at most {s['read_to_kill_ms']['max']:.2f} ms")
    if s["restore_s"]:
        print(f"rpo summary: restart to /readyz {s['restore_s']['min']:.2f} / {s['restore_s']['median']:.2f} / {s['restore_s']['max']:.2f} s; "
              f"restored tick = journal end in {s['restored_eq_final']}/{len(rows)}, same hash as zone-replay in {s['restored_hash_eq_replay']}/{len(rows)}")
    print(f"rpo summary: {check}")
    print("rpo summary: anomalies: " + ("; ".join(anomalies) if anomalies else "none"))
PY
py() { python3 "$WORK/rpo.py" "$@"; }
start_server() { # DATA LOG-PREFIX [ARGS...]: starts a zone-server in the background; sets SP.
  local data=$1 log=$2; shift 2
  $BIN/zone-server "${SERVER_ARGS[@]}" --data-dir "$data" "$@" > "$log.out" 2> "$log.log" &
  SP=$!
}
stop_server() { # SIGTERM (a drain: no players are left, so it ends at once); sets RC to its exit status.
  kill -TERM "$SP" 2>/dev/null || true
  RC=0; wait "$SP" 2>/dev/null || RC=$?
}

# Check (not assume) how the zone tick relates to zone_ticks_total on a fresh start: a server
# without players runs 2 s and is stopped; its "run finished" line gives the zone tick and the
# ticks run (zone_ticks_total counts every tick run), and zone-replay must end at the same tick.
start_server "$WORK/check" "$OUT/logs/check"
py ready $ADMIN "$(date +%s.%N)" 60 $SP >/dev/null || { echo "rpo.sh: zone-server did not become ready; see $OUT/logs/check.log"; exit 1; }
sleep 2
read -r CHECK_READ _ _ <<< "$(py read $ADMIN)"
stop_server; CHECK_RC=$RC
read -r CHECK_TICK CHECK_RUN <<< "$(py finished "$OUT/logs/check.log")"
CHECK_REPLAY=$($BIN/zone-replay --threads 2 -q "$WORK/check/journal" 2>/dev/null | tail -1 || true)
CHECK="tick check (fresh start, stopped with SIGTERM, exit $CHECK_RC): zone tick $CHECK_TICK after $CHECK_RUN ticks run (zone_ticks_total read $CHECK_READ shortly before the stop); zone-replay: $CHECK_REPLAY"
if [ "$CHECK_TICK" = "$CHECK_RUN" ] && [ "${CHECK_REPLAY%% *}" = "final_tick=$CHECK_TICK" ]; then
  CHECK="$CHECK: zone tick = zone_ticks_total, as assumed below"
else
  CHECK="$CHECK: MISMATCH, the lost ticks below are off by the difference"
fi
echo "rpo: $CHECK"
rm -rf "$WORK/check"

rm -f "$OUT/rpo.csv"
for r in $(seq 1 "$ROUNDS"); do
  DATA=$WORK/round-$r
  L=$OUT/logs/round-$r
  start_server "$DATA" "$L-server"
  py ready $ADMIN "$(date +%s.%N)" 60 $SP >/dev/null || { echo "rpo.sh: round $r: zone-server did not become ready; see $L-server.log"; exit 1; }
  $BIN/zone-bots --server 127.0.0.1:$PORT --count "$BOTS" --duration "${BOTS_S}s" --behavior wander --ramp-per-s 200 \
    --report "$L-bots.json" 2> "$L-bots.log" &
  BP=$!
  read -r JOINED TICK0 INPUTS0 <<< "$(py joined $ADMIN "$BOTS" 60)"
  [ "$JOINED" -ge "$BOTS" ] || echo "rpo.sh: round $r: only $JOINED of $BOTS bots joined within 60 s; measured anyway"
  WAIT=$(python3 -c "import random, sys; print(f'{random.uniform(float(sys.argv[1]), float(sys.argv[2])):.3f}')" "$WAIT_MIN" "$WAIT_MAX")
  sleep "$WAIT"
  # The read and the kill, back to back.
  read -r TICK INPUTS RECORDS PLAYERS GAP _ <<< "$(py killread $ADMIN $SP)"
  wait $SP 2>/dev/null || true
  kill -TERM $BP 2>/dev/null || true; wait $BP 2>/dev/null || true
  # The last tick the journal holds.
  RX=0; $BIN/zone-replay --threads 2 "$DATA/journal" > "$L-replay.out" 2> "$L-replay.log" || RX=$?
  read -r FINAL RHASH <<< "$(py kv "$L-replay.out" final_tick zone_hash)"
  # Recovery on the same directory.
  T0=$(date +%s.%N)
  # The restored zone holds the killed run's players, with no session to leave by: a SIGTERM drain
  # would wait its whole --drain-timeout (30 s) for them, so the restart's is short.
  start_server "$DATA" "$L-restore" --restore required --drain-timeout 2
  RESTORE_S=$(py ready $ADMIN "$T0" 120 $SP || true)
  read -r RESTORED SHASH SOURCE RTO <<< "$(py kv "$L-restore.out" restored_tick zone_hash source rto_ms)"
  stop_server
  [ "$RC" = 0 ] || echo "rpo.sh: round $r: the restarted zone-server exited with $RC; see $L-restore.log"
  py row "$OUT/rpo.csv" "$r" "$TICK" "$TICK0" "$INPUTS" "$INPUTS0" "$FINAL" "$GAP" "$RESTORE_S" "$RESTORED" "$PLAYERS" "$RECORDS" \
    "$RX" "$RHASH" "$SHASH" "$SOURCE" "$RTO"
  rm -rf "$DATA"
done
py summary "$OUT/rpo.csv" "$OUT" "$CHECK" | tee "$OUT/summary.txt"
