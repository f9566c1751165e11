#!/usr/bin/env bash
# Phase 2: training on a cold cache (the first epoch comes from the regions). Settings: see train.sh.
set -euo pipefail
exec "$(cd -- "$(dirname "$0")" && pwd)/train.sh" cold
