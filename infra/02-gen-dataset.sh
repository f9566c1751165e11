#!/usr/bin/env bash
# 02-gen-dataset.sh — generate the dataset with forge's generator and upload it: even shards to
# region A, odd shards to region B, as train/shard-NNNNNN.tar in each account's container.
#
# Uploads with 'az storage blob upload-batch --auth-mode login' (your Entra ID login; 01 gave it
# Storage Blob Data Contributor). Against an emulator or with keys instead, set
# AZURE_STORAGE_CONNECTION_STRING_A and _B: each upload then reads its connection string from
# the environment (never from the command line, never written anywhere).
# NUM_SHARDS, IMAGES_PER_SHARD, IMAGE_SIZE, DATASET_SEED size it (see 00-env.sh); PYTHON is the
# interpreter with this project installed (python3).
#
# Real COCO train2017 instead of the synthetic set: COCO_DIR=/data/coco/train2017
# [COCO_ANNOTATIONS=/data/coco/annotations/instances_train2017.json] packs the images into
# ~592-image shards (SHARD_IMAGES) with infra/pack_coco.py, labels from each image's first
# annotation, and uploads those the same way.
#
# Usage: infra/02-gen-dataset.sh [--help]
set -euo pipefail
# shellcheck source=00-env.sh
source "$(cd -- "$(dirname "$0")" && pwd)/00-env.sh"
handle_help "$@"
PYTHON=${PYTHON:-python3}
require_az

if [[ -n "${AZURE_STORAGE_CONNECTION_STRING_A:-}" && -n "${AZURE_STORAGE_CONNECTION_STRING_B:-}" ]]; then
  mode=connection-string
else
  mode=login
  require_login
  load_generated
  [[ -n "${STORAGE_ACCOUNT_A:-}" && -n "${STORAGE_ACCOUNT_B:-}" ]] ||
    die "STORAGE_ACCOUNT_A/B unknown: run infra/01-provision.sh first (or set them)"
fi

WORK_DIR=$(mktemp -d)
trap 'rm -rf "$WORK_DIR"' EXIT

if [[ -n "${COCO_DIR:-}" ]]; then
  log "Packing COCO images from $COCO_DIR into shards of ${SHARD_IMAGES:-592}"
  "$PYTHON" "$INFRA_DIR/pack_coco.py" --images "$COCO_DIR" ${COCO_ANNOTATIONS:+--annotations "$COCO_ANNOTATIONS"} \
    --per-shard "${SHARD_IMAGES:-592}" --out "$WORK_DIR/a" --out "$WORK_DIR/b"
else
  log "Generating $NUM_SHARDS shards × $IMAGES_PER_SHARD images (${IMAGE_SIZE}px, seed $DATASET_SEED)"
  "$PYTHON" -m forge gen-shards --out "$WORK_DIR/a" --out "$WORK_DIR/b" --shards "$NUM_SHARDS" \
    --images-per-shard "$IMAGES_PER_SHARD" --image-size "$IMAGE_SIZE" --seed "$DATASET_SEED"
fi

upload() {
  local side=$1 dir=$2 account=$3 location=$4
  log "Uploading $(find "$dir" -name '*.tar' | wc -l | tr -d ' ') shards to region $side ($location)"
  if [[ $mode == connection-string ]]; then
    local conn_var="AZURE_STORAGE_CONNECTION_STRING_${side}"
    AZURE_STORAGE_CONNECTION_STRING=${!conn_var} az storage container create --name "$STORAGE_CONTAINER" -o none
    AZURE_STORAGE_CONNECTION_STRING=${!conn_var} az_or_explain "uploading to region $side" \
      storage blob upload-batch --destination "$STORAGE_CONTAINER" --destination-path train \
      --source "$dir" --pattern 'shard-*.tar' --overwrite true --no-progress -o none
  else
    az_or_explain "uploading to $account" storage blob upload-batch --account-name "$account" \
      --auth-mode login --destination "$STORAGE_CONTAINER" --destination-path train \
      --source "$dir" --pattern 'shard-*.tar' --overwrite true --no-progress -o none
  fi
}

upload A "$WORK_DIR/a" "${STORAGE_ACCOUNT_A:-}" "$LOCATION_A"
upload B "$WORK_DIR/b" "${STORAGE_ACCOUNT_B:-}" "$LOCATION_B"
log "Done: even shards in region A, odd shards in region B, under $STORAGE_CONTAINER/train/"
