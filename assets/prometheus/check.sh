#!/usr/bin/env bash
# Checks the Prometheus assets: the example config, the alerting rules and their unit tests.
# Usage: bash assets/prometheus/check.sh   (from anywhere; exits non-zero on any failure)
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v promtool >/dev/null 2>&1; then
  echo "promtool not found; installing Debian's prometheus package (it ships promtool)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus
fi
promtool --version 2>&1 | head -n 1

promtool check config prometheus.yml
promtool check rules alerts.yml lobby-alerts.yml
promtool test rules alerts_test.yml lobby-alerts_test.yml
