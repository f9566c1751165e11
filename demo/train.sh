#!/usr/bin/env bash
# Shared by 01_train_cold.sh and 02_train_warm.sh: one forge run over a running mount, logged to
# demo/logs/PHASE.log and demo/out/PHASE.json. Works against any mount, local or on Azure.
#
#   WD_MOUNT_POINT   the mount (/wd)              METRICS_URL  its /metrics (http://localhost:9090/metrics)
#   TRAIN_STEPS      steps (300)                  TRAIN_BATCH  batch size (32)
#   TRAIN_WORKERS    DataLoader workers (8)       TRAIN_SEED   seed (42)
#   TRAIN_LOG_EVERY  steps per log line (50)      FORGE        the forge command (python3 -m forge)
#   DATASET_PREFIX   path under each region (train)
set -euo pipefail
PHASE=${1:?usage: train.sh cold|warm}
DEMO_DIR=$(cd -- "$(dirname "$0")" && pwd)
WD_MOUNT_POINT=${WD_MOUNT_POINT:-/wd}
METRICS_URL=${METRICS_URL:-http://localhost:9090/metrics}
DATASET_PREFIX=${DATASET_PREFIX:-train}
read -r -a FORGE_CMD <<< "${FORGE:-python3 -m forge}"
LOG_DIR=${DEMO_LOG_DIR:-$DEMO_DIR/logs}
OUT_DIR=${DEMO_OUT_DIR:-$DEMO_DIR/out}
mkdir -p "$LOG_DIR" "$OUT_DIR"

for region in datasets-cac datasets-wus3; do
  if [[ ! -d "$WD_MOUNT_POINT/$region/$DATASET_PREFIX" ]]; then
    echo "train.sh: $WD_MOUNT_POINT/$region/$DATASET_PREFIX not found: is the mount up?" >&2
    exit 1
  fi
done

"${FORGE_CMD[@]}" train \
  --train-root-a "$WD_MOUNT_POINT/datasets-cac/$DATASET_PREFIX" \
  --train-root-b "$WD_MOUNT_POINT/datasets-wus3/$DATASET_PREFIX" \
  --steps "${TRAIN_STEPS:-300}" \
  --batch-size "${TRAIN_BATCH:-32}" \
  --num-workers "${TRAIN_WORKERS:-8}" \
  --seed "${TRAIN_SEED:-42}" \
  --log-every "${TRAIN_LOG_EVERY:-50}" \
  --metrics-url "$METRICS_URL" \
  --json-out "$OUT_DIR/$PHASE.json" 2>&1 | tee "$LOG_DIR/$PHASE.log"
