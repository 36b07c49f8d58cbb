#!/usr/bin/env bash
# Validates the Kubernetes and Agones manifests in assets/k8s offline (no cluster needed):
#   - prometheusrule.yaml is what gen-prometheusrule.sh generates from assets/prometheus (not stale);
#   - core kinds with kubernetes-validate --strict, Agones kinds with check-jsonschema against
#     schemas/ (made strict), Prometheus Operator kinds against schemas/monitoring.coreos.com-v1.json
#     (see validate.py).
# Installs its PyPI tools into a venv under /tmp the first time (about 15 s), then takes ~5 s.
# Usage: bash assets/k8s/check.sh   (from anywhere; exits non-zero on any failure)
set -euo pipefail
cd "$(dirname "$0")"
VENV=${K8S_CHECK_VENV:-/tmp/zone-k8s-venv}

if [ ! -x "$VENV/bin/check-jsonschema" ] || [ ! -x "$VENV/bin/kubernetes-validate" ]; then
  echo "installing kubernetes-validate and check-jsonschema into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q kubernetes-validate check-jsonschema
fi
echo "kubernetes-validate $("$VENV/bin/kubernetes-validate" --version), $("$VENV/bin/check-jsonschema" --version)"

if ! diff -u prometheusrule.yaml <(bash gen-prometheusrule.sh --stdout) >/dev/null; then
  diff -u prometheusrule.yaml <(bash gen-prometheusrule.sh --stdout) | head -40 || true
  echo "FAIL: assets/k8s/prometheusrule.yaml is stale: run bash assets/k8s/gen-prometheusrule.sh and commit it" >&2
  exit 1
fi
echo "ok   prometheusrule.yaml is up to date with assets/prometheus/alerts.yml and lobby-alerts.yml"

"$VENV/bin/python" validate.py
