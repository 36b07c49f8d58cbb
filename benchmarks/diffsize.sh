#!/usr/bin/env bash
# Snapshot diff size against full, on a zone in real time: benchmarks/diffsize.sh BINARY ZONE_FILE
# (e.g. ./target/release/zone-server assets/zones/large.toml). Files snapshots to a temp dir, a full
# every 10 s and a diff every 1 s; prints the zone_snapshot_bytes gauges each second for 32 s.
set -u
D=$(mktemp -d); A=127.0.0.1:29300
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$D"' EXIT
$1 --zone $2 --bind off --admin $A --threads 2 --persistence on --data-dir $D --snapshot-full-interval 10 --snapshot-diff-interval 1 --log-format json 2> $D/log &
P=$!
for i in $(seq 1 32); do sleep 1; curl -s http://$A/metrics | awk -v t=$i '/^zone_snapshot_bytes\{.*kind="full"/ {f=$2} /^zone_snapshot_bytes\{.*kind="diff"/ {d=$2} END {printf "t=%d full=%s diff=%s\n", t, f, d}'; done
kill -TERM $P; wait $P
