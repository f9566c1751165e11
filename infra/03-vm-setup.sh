#!/usr/bin/env bash
# 03-vm-setup.sh — run ON the VM, from a copy of this repository: installs FUSE and a Python
# venv with WarpDrive, allows FUSE's allow_other, puts the local NVMe disk (when the VM has one)
# at NVME_MOUNT for the cache, and creates the mount point and cache directory.
#
# The NVMe disk is the one whose model is "Microsoft NVMe Direct Disk" (NVME_DEVICE overrides).
# A disk without a file system is formatted ext4 (label wd-nvme); one that already carries
# ext4 labelled wd-nvme is mounted as it is; any other file system is left alone unless
# FORCE_FORMAT=1. Without NVMe the cache goes on the OS disk (/var/cache/warpdrive).
# TORCH_SPEC picks the PyTorch wheel ("torch" by default; a CPU-only VM can use a CPU build).
# Settings: see 00-env.sh. SYSROOT prefixes the files it edits (for tests).
#
# Usage: infra/03-vm-setup.sh [--help]
set -euo pipefail
# shellcheck source=00-env.sh
source "$(cd -- "$(dirname "$0")" && pwd)/00-env.sh"
handle_help "$@"
SYSROOT=${SYSROOT:-}
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; fi

log "Packages: fuse3, Python venv"
$SUDO apt-get update -y -q
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q fuse3 \
  python3-venv python3-dev build-essential

log "Python venv $VENV_DIR with WarpDrive from $REPO_DIR"
if [[ ! -x "$VENV_DIR/bin/python" ]]; then
  python3 -m venv "$VENV_DIR"
fi
"$VENV_DIR/bin/pip" install -q --upgrade pip
"$VENV_DIR/bin/pip" install -q "${TORCH_SPEC:-torch}"
# matplotlib: the showcase's chart (demo/chart.py; the dev extra has it for `make demo`)
"$VENV_DIR/bin/pip" install -q "${REPO_DIR}[azure,fuse,torch]" "matplotlib>=3.8"

log "FUSE: user_allow_other"
fuse_conf="$SYSROOT/etc/fuse.conf"
if grep -qE '^\s*user_allow_other' "$fuse_conf" 2>/dev/null; then
  note "already set in $fuse_conf"
else
  echo user_allow_other | $SUDO tee -a "$fuse_conf" >/dev/null
  note "added to $fuse_conf"
fi

log "Local NVMe for the cache"
nvme_dir="$SYSROOT$NVME_MOUNT"
device=${NVME_DEVICE:-$(lsblk -dnpo NAME,MODEL | awk '/Microsoft NVMe Direct Disk/ {print $1; exit}')}
if mountpoint -q "$nvme_dir"; then
  note "$nvme_dir is already mounted: reused"
  cache_dir="$NVME_MOUNT/warpdrive-cache"
elif [[ -n "$device" ]]; then
  fstype=$(blkid -o value -s TYPE "$device" || true)
  label=$(blkid -o value -s LABEL "$device" || true)
  if [[ -z "$fstype" ]] || [[ "${FORCE_FORMAT:-0}" == "1" ]]; then
    note "formatting $device as ext4 (label wd-nvme)"
    $SUDO mkfs.ext4 -F -q -L wd-nvme "$device"
  elif [[ "$fstype" == ext4 && "$label" == wd-nvme ]]; then
    note "$device already holds our ext4 file system: mounting it as it is"
  else
    die "$device already holds a $fstype file system${label:+ (label $label)}: not touching it (FORCE_FORMAT=1 reformats it)"
  fi
  $SUDO mkdir -p "$nvme_dir"
  $SUDO mount -o noatime "$device" "$nvme_dir"
  note "mounted $device at $NVME_MOUNT"
  cache_dir="$NVME_MOUNT/warpdrive-cache"
else
  note "no local NVMe disk (VM size $VM_SIZE?): the cache goes on the OS disk"
  cache_dir=/var/cache/warpdrive
fi

log "Mount point $MOUNT_POINT, cache $cache_dir"
$SUDO mkdir -p "$SYSROOT$MOUNT_POINT" "$SYSROOT$cache_dir"
$SUDO chmod 0700 "$SYSROOT$cache_dir"

cat <<BOX
┌──────────────────────────────────────────────────────────────┐
│ WarpDrive VM ready                                           │
├──────────────────────────────────────────────────────────────┤
  venv         $VENV_DIR
  mount point  $MOUNT_POINT
  cache        $cache_dir
  NVMe         ${device:-none}
  next         infra/04-gen-warpdrive-config.sh, then infra/05-run.sh
└──────────────────────────────────────────────────────────────┘
BOX
