#!/usr/bin/env bash
# Phase 3: the same training, same seed and order, on the warm cache. Settings: see train.sh.
set -euo pipefail
exec "$(cd -- "$(dirname "$0")" && pwd)/train.sh" warm
