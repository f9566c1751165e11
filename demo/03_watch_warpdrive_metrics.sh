#!/usr/bin/env bash
# The metrics dashboard of a running mount: once (WATCH=0) or redrawn every WATCH seconds.
#   METRICS_URL (http://localhost:9090/metrics), WATCH (2)
set -euo pipefail
DEMO_DIR=$(cd -- "$(dirname "$0")" && pwd)
exec python3 "$DEMO_DIR/dashboard.py" --url "${METRICS_URL:-http://localhost:9090/metrics}" \
  --watch "${WATCH:-2}"
