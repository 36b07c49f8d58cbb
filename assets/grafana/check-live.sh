#!/usr/bin/env bash
# Dashboards that show data: starts a zone server (demo zone, persistence on), a few bots on its
# game socket and a real Prometheus scraping it every second, waits WAIT seconds, then runs every
# query of zone-server.json (Grafana variables substituted) and every selector of
# assets/prometheus/alerts.yml against Prometheus' HTTP API, and fails listing any that returns
# nothing (check_live.py). About 45 s plus the build.
#
#   bash assets/grafana/check-live.sh          # builds the debug binaries if missing
#   WAIT=60 BOTS=50 bash assets/grafana/check-live.sh
#
# Uses target/debug/zone-server and target/debug/zone-bots (ZONE_SERVER_BIN / ZONE_BOTS_BIN to
# use others) and Debian's prometheus (installed if missing, like assets/prometheus/check.sh).
# Everything listens on 127.0.0.1 on free ports, in a temporary directory removed at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
WAIT=${WAIT:-40}
BOTS=${BOTS:-20}
SERVER=${ZONE_SERVER_BIN:-target/debug/zone-server}
BOTSBIN=${ZONE_BOTS_BIN:-target/debug/zone-bots}

if [ ! -x "$SERVER" ] || [ ! -x "$BOTSBIN" ]; then
  echo "building the debug zone-server and zone-bots"
  cargo build --locked -q -p zone-server --bin zone-server -p zone-tools --bin zone-bots
fi
if ! command -v prometheus >/dev/null 2>&1; then
  echo "prometheus not found; installing Debian's prometheus package"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus
fi
PY=python3
if ! $PY -c 'import yaml' 2>/dev/null; then
  VENV=${K8S_CHECK_VENV:-/tmp/zone-k8s-venv}
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/python" -c 'import yaml' 2>/dev/null || "$VENV/bin/pip" install -q pyyaml
  PY="$VENV/bin/python"
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
T=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$T"
}
trap cleanup EXIT

GAME=$(free_port); ADMIN=$(free_port); PROM=$(free_port)
export ZONE_TOKEN_SECRET=check-live-secret
# Snapshots every second so the persistence panels have data within the wait.
"$SERVER" --zone assets/zones/demo.toml --bind "127.0.0.1:$GAME" --admin "127.0.0.1:$ADMIN" \
  --data-dir "$T/data" --persistence on --snapshot-full-interval 5 --snapshot-diff-interval 1 \
  --threads 2 --log-format json --stats-interval 5 >"$T/server.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 150); do curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null && break; sleep 0.2; done
curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null || { echo "the zone server did not become ready:"; tail -20 "$T/server.log"; exit 1; }

"$BOTSBIN" --server "127.0.0.1:$GAME" --count "$BOTS" --duration "$((WAIT + 30))s" --behavior wander \
  --report "$T/bots.json" >"$T/bots.log" 2>&1 &
pids+=($!)

cat >"$T/prometheus.yml" <<YML
global:
  scrape_interval: 1s
  scrape_timeout: 900ms
scrape_configs:
  - job_name: zone-server
    static_configs:
      - targets: ["127.0.0.1:$ADMIN"]
YML
prometheus --config.file="$T/prometheus.yml" --storage.tsdb.path="$T/tsdb" \
  --web.listen-address="127.0.0.1:$PROM" --log.level=warn >"$T/prometheus.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PROM/-/ready" >/dev/null && break; sleep 0.2; done
curl -sf "http://127.0.0.1:$PROM/-/ready" >/dev/null || { echo "Prometheus did not start:"; cat "$T/prometheus.log"; exit 1; }

echo "zone server 127.0.0.1:$ADMIN, $BOTS bots, Prometheus 127.0.0.1:$PROM; waiting ${WAIT}s for data"
sleep "$WAIT"
"$PY" assets/grafana/check_live.py --prometheus "http://127.0.0.1:$PROM" \
  --dashboard assets/grafana/zone-server.json --rules assets/prometheus/alerts.yml || {
  echo "--- bots (last lines)"; tail -5 "$T/bots.log"; exit 1; }
