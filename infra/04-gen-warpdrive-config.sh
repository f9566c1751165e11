#!/usr/bin/env bash
# 04-gen-warpdrive-config.sh — write WarpDrive's config for the demo to CONFIG_PATH
# (/etc/warpdrive/config.yaml): the two accounts from 01 as azureblob backends datasets-cac
# (region A) and datasets-wus3 (region B), read with the VM's managed identity (no secret in
# the file), mounted at MOUNT_POINT, cached on the NVMe disk when 03 mounted one.
#
# CACHE_DIR and CACHE_MAX_SIZE override the cache's place and size (default: 80% of the disk's
# free space, at most 2TB). Settings: see 00-env.sh. SYSROOT prefixes the paths it checks (tests).
#
# Usage: infra/04-gen-warpdrive-config.sh [--help]
set -euo pipefail
# shellcheck source=00-env.sh
source "$(cd -- "$(dirname "$0")" && pwd)/00-env.sh"
handle_help "$@"
SYSROOT=${SYSROOT:-}
load_generated
[[ -n "${STORAGE_ACCOUNT_A:-}" && -n "${STORAGE_ACCOUNT_B:-}" ]] ||
  die "STORAGE_ACCOUNT_A/B unknown: copy infra/.env.generated from where 01 ran (or set them)"

if [[ -z "${CACHE_DIR:-}" ]]; then
  if mountpoint -q "$SYSROOT$NVME_MOUNT"; then CACHE_DIR=$NVME_MOUNT/warpdrive-cache; else CACHE_DIR=/var/cache/warpdrive; fi
fi
if [[ -z "${CACHE_MAX_SIZE:-}" ]]; then
  probe="$SYSROOT$CACHE_DIR"
  while [[ ! -d "$probe" ]]; do probe=$(dirname "$probe"); done
  free_gb=$(df -P -BG "$probe" | awk 'NR == 2 {sub("G", "", $4); print $4}')
  size=$((free_gb * 8 / 10))
  ((size > 2048)) && size=2048
  ((size < 1)) && size=1
  CACHE_MAX_SIZE="${size}GB"
fi

tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
cat >"$tmp" <<YAML
# WarpDrive for the two-region demo (written by infra/04-gen-warpdrive-config.sh).
mount_point: $MOUNT_POINT
allow_other: true            # the training user reads a mount root started
metrics: {addr: "127.0.0.1:9090"}   # read on this VM (demo/03); no authentication
cache:
  path: $CACHE_DIR
  max_size: $CACHE_MAX_SIZE
  block_size: 4MB
  readahead_blocks: 8
  max_parallel_fetch: 32
backends:
  - name: datasets-cac
    type: azureblob
    mount_path: /datasets-cac
    config: {account: $STORAGE_ACCOUNT_A, container: $STORAGE_CONTAINER}
    auth: {method: managed_identity}
  - name: datasets-wus3
    type: azureblob
    mount_path: /datasets-wus3
    config: {account: $STORAGE_ACCOUNT_B, container: $STORAGE_CONTAINER}
    auth: {method: managed_identity}
YAML
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; fi
target="$SYSROOT$CONFIG_PATH"
$SUDO mkdir -p "$(dirname "$target")"
$SUDO install -m 0644 "$tmp" "$target"
log "Wrote $CONFIG_PATH"
note "region A: $STORAGE_ACCOUNT_A/$STORAGE_CONTAINER → $MOUNT_POINT/datasets-cac"
note "region B: $STORAGE_ACCOUNT_B/$STORAGE_CONTAINER → $MOUNT_POINT/datasets-wus3"
note "cache:    $CACHE_DIR (max $CACHE_MAX_SIZE)"
