#!/usr/bin/env bash
# Checks the Dockerfile without a container engine (see dockerfile-check.py for what it checks).
# Installs dockerfile-parse into the venv assets/k8s/check.sh uses (a few seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${K8S_CHECK_VENV:-/tmp/zone-k8s-venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -c 'import dockerfile_parse' 2>/dev/null || "$VENV/bin/pip" install -q dockerfile-parse
"$VENV/bin/python" .ci/dockerfile-check.py
