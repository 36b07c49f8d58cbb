#!/usr/bin/env bash
# The fuzz harnesses (net/tests/fuzz.rs: the protocol; persistence/tests/fuzz.rs: snapshots and journal segments) for longer than CI runs them: CASES cases
# per target (default 200,000), release build. A failure prints the minimal input proptest found.
#
#   bash benchmarks/fuzz.sh            # 200,000 cases per target
#   bash benchmarks/fuzz.sh 2000000
set -euo pipefail
cd "$(dirname "$0")/.."
echo "# machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), commit $(git rev-parse --short HEAD), $(date -u +%F)"
time FUZZ_CASES="${1:-200000}" cargo test --release -q -p zone-net --test fuzz
time FUZZ_CASES="${1:-200000}" cargo test --release -q -p zone-persistence --test fuzz
