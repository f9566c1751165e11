#!/usr/bin/env bash
# 05-run.sh — run ON the VM: the four-phase demo against Azure, with the same code as the local
# demo (demo/showcase.py): clear the cache and mount both regions, cold training, warm
# training, then the comparison, the metrics dashboard and warpdrive-ctl's views.
# Results in demo/out/, training logs in demo/logs/.
#
# TRAIN_STEPS, TRAIN_BATCH, TRAIN_WORKERS size the training; CONFIG_PATH is 04's config;
# PYTHON the venv's interpreter (VENV_DIR/bin/python). The mount needs root: the demo runs
# under sudo unless already root. Settings: see 00-env.sh.
#
# Usage: infra/05-run.sh [--help]
set -euo pipefail
# shellcheck source=00-env.sh
source "$(cd -- "$(dirname "$0")" && pwd)/00-env.sh"
handle_help "$@"
PYTHON=${PYTHON:-$VENV_DIR/bin/python}
[[ -x "$PYTHON" ]] || die "$PYTHON not found: run infra/03-vm-setup.sh first (or set PYTHON)"
[[ -f "$CONFIG_PATH" ]] || die "$CONFIG_PATH not found: run infra/04-gen-warpdrive-config.sh first"
SUDO=()
if [[ $(id -u) -ne 0 ]]; then SUDO=(sudo "--preserve-env=TRAIN_STEPS,TRAIN_BATCH,TRAIN_WORKERS"); fi
exec "${SUDO[@]}" "$PYTHON" "$REPO_DIR/demo/showcase.py" --config "$CONFIG_PATH" \
  --steps "$TRAIN_STEPS" --batch-size "$TRAIN_BATCH" --workers "$TRAIN_WORKERS"
