#!/usr/bin/env bash
# The rolling-update drill, full size, real processes, release build, on loopback:
#   a zone-lobby, 4 zone servers of the demo zone announcing themselves to it (--lifecycle local),
#   400 `zone-bots --lobby` bots; then the servers are replaced in 25% batches (one server each):
#   a replacement starts and shows up in the directory, the old one gets SIGTERM and drains; its
#   players are told, ask the lobby again and join another server within --rejoin-within.
# Checks: every drained server exits 0 after "final snapshot stored"; every bot joined; no move
# failed; no bot ended with an error (the final SIGINT that stops the bots is the only end).
# Reports per batch: players on the drained server, SIGTERM -> exit, time until every player was
# back on a server, players moved per second, the surviving servers' tick p99 (max of their
# per-second p99 in the directory) during the move; and the bots' move times (notice -> Welcome).
#
#   bash benchmarks/rolling.sh
#   BOTS=400 SERVERS=4 REJOIN=10s bash benchmarks/rolling.sh
#
# Needs PostgreSQL and Redis at DATABASE_URL / REDIS_URL (the local defaults otherwise); uses its
# own schema and key prefix and drops the schema at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/}
BOTS=${BOTS:-400}
SERVERS=${SERVERS:-4}
REJOIN=${REJOIN:-10s}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-30}
# The tick budget the lobby offers servers within and the servers' overload budget. The drill is
# about drains: on a shared 2-core machine the default 16.7 ms would have the lobby stop offering
# busy servers (bots then fail their first join with no_room). Set 16.7 on a quiet machine.
TICK_BUDGET_MS=${TICK_BUDGET_MS:-50}
cargo build --release --locked -q --bin zone-lobby --bin zone-server --bin zone-bots -p zone-lobby -p zone-server -p zone-tools
T=$(mktemp -d)
SCHEMA="bench_rolling_$$"
PREFIX="$SCHEMA:"
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
  psql "$DATABASE_URL" -qc "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >/dev/null 2>&1 || true
  redis-cli -u "$REDIS_URL" --scan --pattern "$PREFIX*" 2>/dev/null | xargs -r redis-cli -u "$REDIS_URL" del >/dev/null 2>&1 || true
  [ -n "${KEEP:-}" ] && echo "logs kept in $T" || rm -rf "$T"
}
trap cleanup EXIT
export ZONE_TOKEN_SECRET=bench-token-secret
export ZONE_LOBBY_SESSION_SECRET=bench-session-secret-0123456789
# A free port for the lobby (other sessions on this machine use the usual ones).
PORT=${PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), commit $(git rev-parse --short HEAD), $(date -u +%F), load before: $(cut -d' ' -f1-3 /proc/loadavg)"
./target/release/zone-lobby --listen 127.0.0.1:$PORT --postgres "$DATABASE_URL" --redis "$REDIS_URL" --postgres-schema "$SCHEMA" \
   --redis-prefix "$PREFIX" --rate-per-ip 1000000 --rate-per-account 1000000 --postgres-connections 4 \
   --tick-budget-ms "$TICK_BUDGET_MS" --log-filter warn 2> "$T/lobby.log" &
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null || { echo "FAILED: the lobby did not start:"; tail -3 "$T/lobby.log"; exit 1; }

python3 - "$T" "$PORT" "$PREFIX" "$REDIS_URL" "$BOTS" "$SERVERS" "$REJOIN" "$DRAIN_TIMEOUT" "$TICK_BUDGET_MS" <<'PY'
import atexit, json, os, signal, subprocess, sys, time, urllib.request
procs = []
# Whatever happens, no process of this drill outlives it.
atexit.register(lambda: [p.kill() for p in procs if p.poll() is None])
T, PORT, PREFIX, REDIS, BOTS, SERVERS, REJOIN, DRAIN, BUDGET = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]), sys.argv[7], sys.argv[8], sys.argv[9]
LOBBY = f"http://127.0.0.1:{PORT}"
# Seats per server: 4 x 120 >= 400 bots with 20% to spare. The lobby fills the least full server
# by its last announcement (once a second), so the seat limit is what spreads a fast ramp over
# all four, and every batch then moves a server's worth of players.
CAP = -(-BOTS * 6 // (5 * SERVERS))
n_started = 0

def server(name):
    global n_started
    k = n_started; n_started += 1
    udp, admin = 17800 + k, 19200 + k
    cmd = ["./target/release/zone-server", "--zone", "assets/zones/demo.toml", "--bind", f"127.0.0.1:{udp}",
           "--public-addr", f"127.0.0.1:{udp}", "--admin", f"127.0.0.1:{admin}", "--instance", name,
           "--data-dir", f"{T}/{name}", "--threads", "1", "--max-clients", str(CAP), "--handshake-rate-per-ip", "100000",
           "--drain-timeout", DRAIN, "--lobby-redis", REDIS, "--lobby-prefix", PREFIX, "--viz", "off",
           "--overload-budget-ms", BUDGET]
    if n_started == 1:
        print("$ " + " ".join(cmd))
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(f"{T}/{name}.log", "w"))
    procs.append(p)
    return {"name": name, "proc": p, "started": time.monotonic()}

def instances():
    try:
        v = json.load(urllib.request.urlopen(LOBBY + "/v1/zones", timeout=5))
    except Exception:
        return []
    return [i for z in v.get("zones", []) for i in z.get("instances", [])]

def wait(what, secs, f):
    until = time.monotonic() + secs
    while not f():
        if time.monotonic() > until:
            sys.exit(f"FAILED: {what} not within {secs} s")
        time.sleep(0.1)

zones = [server(f"old-{k}") for k in range(SERVERS)]
wait("servers offered", 60, lambda: sum(1 for i in instances() if i.get("offered")) == SERVERS)
bots_cmd = ["./target/release/zone-bots", "--lobby", LOBBY, "--zone-id", "demo", "--count", str(BOTS),
            "--duration", "3600s", "--ramp-per-s", "200", "--rejoin-within", REJOIN, "--report", f"{T}/bots.json"]
print("$ " + " ".join(bots_cmd))
bots = subprocess.Popen(bots_cmd, stdout=subprocess.DEVNULL, stderr=open(f"{T}/bots.log", "w"))
procs.append(bots)
players = lambda v: sum(i.get("players", 0) for i in v)
t = time.monotonic()
def all_on():
    if bots.poll() is not None:
        sys.exit("FAILED: zone-bots ended early: " + open(f"{T}/bots.log").read()[-2000:])
    return players(instances()) >= BOTS
wait("every bot on a server", 120, all_on)
print(f"{BOTS} bots on {SERVERS} servers after {time.monotonic() - t:.2f} s")
def p99_for(secs):
    # The servers' per-second tick p99 in the directory, max over `secs`: the baseline before a batch.
    top, until = 0.0, time.monotonic() + secs
    while time.monotonic() < until:
        top = max([top] + [i.get("tick_p99_ms", 0.0) for i in instances()])
        time.sleep(0.1)
    return top
rows, total_moved, total_move_s = [], 0, 0.0
for batch in range(SERVERS):
    before = p99_for(3)
    tb = time.monotonic()
    fresh = server(f"new-{batch}")
    wait("replacement offered", 60, lambda: any(i["instance_id"] == fresh["name"] and i.get("offered") for i in instances()))
    ready_s = time.monotonic() - tb
    old = zones.pop(0)
    had = next((i["players"] for i in instances() if i["instance_id"] == old["name"]), 0)
    t0 = time.monotonic()
    old["proc"].send_signal(signal.SIGTERM)
    p99 = 0.0
    exit_s = back_s = None
    until = t0 + 120
    while time.monotonic() < until:
        v = instances()
        p99 = max([p99] + [i.get("tick_p99_ms", 0.0) for i in v if i["instance_id"] != old["name"]])
        if exit_s is None and old["proc"].poll() is not None:
            exit_s = time.monotonic() - t0
        if back_s is None and not any(i["instance_id"] == old["name"] for i in v) and players(v) >= BOTS:
            back_s = time.monotonic() - t0
        if exit_s is not None and back_s is not None:
            break
        time.sleep(0.1)
    code = old["proc"].wait(timeout=60)
    log = open(f"{T}/{old['name']}.log").read()
    snap = "final snapshot stored" in log
    if code != 0 or not snap or back_s is None:
        sys.exit(f"FAILED: batch {batch}: {old['name']} exit {code}, final snapshot {snap}, players back {back_s}")
    batch_s = time.monotonic() - tb
    rows.append((batch, old["name"], had, exit_s, back_s, had / back_s if back_s else 0, p99, ready_s, batch_s, before))
    total_moved += had; total_move_s += back_s
    zones.append(fresh)
bots.send_signal(signal.SIGINT)
bots.wait(timeout=60)
r = json.load(open(f"{T}/bots.json"))
print()
print("| batch | drained | players on it | SIGTERM -> exit 0 (s) | SIGTERM -> all players back on a server (s) | players moved/s | surviving tick p99 max during the move (ms) | tick p99 max in the 3 s before (ms) | replacement ready (s) | batch (s) |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for b in rows:
    print(f"| {b[0]} | {b[1]} | {b[2]} | {b[3]:.2f} | {b[4]:.2f} | {b[5]:.0f} | {b[6]:.2f} | {b[9]:.2f} | {b[7]:.2f} | {b[8]:.2f} |")
print()
print(f"players moved (directory, drained servers): {total_moved}; moves completed (bots): {r['moves']}, "
      f"{total_moved / total_move_s:.0f} players/s over the {total_move_s:.2f} s of moves")
print(f"bots: joined {r['joined']}/{r['count']}, move (notice -> Welcome on the new server) p50 {r['move_ms_p50']} "
      f"p99 {r['move_ms_p99']} max {r['move_ms_max']} ms, move failures {r['move_failures']} {r['move_failed_reasons']}, "
      f"failed joins {r['failed_reasons']}, ended early {r['ended_early']}, decode errors {r['decode_errors']}")
bad = r["joined"] != r["count"] or r["move_failures"] or any(k != "interrupted" for k in r["ended_early"])
for z in zones:
    z["proc"].send_signal(signal.SIGTERM)
for z in zones:
    z["proc"].wait(timeout=60)
if bad:
    sys.exit("FAILED: a bot did not join, did not move, or ended with an error")
print("OK: every drained server exited 0 after its final snapshot; every bot joined and moved; no bot ended with an error")
PY
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
