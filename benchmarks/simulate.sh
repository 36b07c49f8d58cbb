#!/usr/bin/env bash
# The whole-system simulation as a soak: COUNT seeds from FIRST (default 1 and 1000), release
# build, one process. Prints every failing seed (rerun one with
# `SEED=n cargo test -p zone-tests --test simulation`) and the seeds per second.
#
#   bash benchmarks/simulate.sh            # seeds 1..=1000
#   bash benchmarks/simulate.sh 5000 2000  # seeds 5000..=6999
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p zone-tests --example simulate
echo "# machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), commit $(git rev-parse --short HEAD), $(date -u +%F)"
./target/release/examples/simulate "${1:-1}" "${2:-1000}"
