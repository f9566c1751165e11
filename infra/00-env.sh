#!/usr/bin/env bash
# 00-env.sh — every setting of the Azure demo, each overridable from the environment.
#
# Sourced by 01…06; run it alone to print the settings in force.
#   RESOURCE_GROUP    warpdrive-forge-rg
#   LOCATION_A        canadacentral        (region A: even shards, the VM)
#   LOCATION_B        westus3              (region B: odd shards)
#   VM_NAME           warpdrive-forge-vm
#   VM_SIZE           Standard_L8s_v3      (local NVMe for the cache; the cheap path is
#                                           Standard_D4s_v5: no NVMe, the cache goes on the OS disk)
#   VM_IMAGE          Canonical:ubuntu-24_04-lts:server:latest   (Ubuntu 24.04)
#   ADMIN_USER        azureuser
#   SSH_KEY           ~/.ssh/id_rsa.pub    (a public key file)
#   STORAGE_PREFIX    wdforge              (storage account names: PREFIX + random + a|b)
#   STORAGE_CONTAINER coco2017-wds      (not CONTAINER_NAME: container runtimes set that one)
#   NUM_SHARDS        40     IMAGES_PER_SHARD  100    IMAGE_SIZE  256    DATASET_SEED  42
#   AZURE_SUBSCRIPTION                     (optional: the subscription to use)
#   ENV_GENERATED     infra/.env.generated (names the scripts create: accounts, VM IP)
#   CONFIG_PATH       /etc/warpdrive/config.yaml
#   MOUNT_POINT /wd   NVME_MOUNT /mnt/nvme   VENV_DIR ~/warpdrive-venv
#   TRAIN_STEPS 300   TRAIN_BATCH 32   TRAIN_WORKERS 8
set -euo pipefail

INFRA_DIR=$(cd -- "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd -- "$INFRA_DIR/.." && pwd)
export INFRA_DIR REPO_DIR

export RESOURCE_GROUP=${RESOURCE_GROUP:-warpdrive-forge-rg}
export LOCATION_A=${LOCATION_A:-canadacentral}
export LOCATION_B=${LOCATION_B:-westus3}
export VM_NAME=${VM_NAME:-warpdrive-forge-vm}
export VM_SIZE=${VM_SIZE:-Standard_L8s_v3}
export VM_IMAGE=${VM_IMAGE:-Canonical:ubuntu-24_04-lts:server:latest}
export ADMIN_USER=${ADMIN_USER:-azureuser}
export SSH_KEY=${SSH_KEY:-$HOME/.ssh/id_rsa.pub}
export STORAGE_PREFIX=${STORAGE_PREFIX:-wdforge}
export STORAGE_CONTAINER=${STORAGE_CONTAINER:-coco2017-wds}
export NUM_SHARDS=${NUM_SHARDS:-40}
export IMAGES_PER_SHARD=${IMAGES_PER_SHARD:-100}
export IMAGE_SIZE=${IMAGE_SIZE:-256}
export DATASET_SEED=${DATASET_SEED:-42}
export ENV_GENERATED=${ENV_GENERATED:-$INFRA_DIR/.env.generated}
export CONFIG_PATH=${CONFIG_PATH:-/etc/warpdrive/config.yaml}
export MOUNT_POINT=${MOUNT_POINT:-/wd}
export NVME_MOUNT=${NVME_MOUNT:-/mnt/nvme}
export VENV_DIR=${VENV_DIR:-$HOME/warpdrive-venv}
export TRAIN_STEPS=${TRAIN_STEPS:-300}
export TRAIN_BATCH=${TRAIN_BATCH:-32}
export TRAIN_WORKERS=${TRAIN_WORKERS:-8}

# shellcheck source=lib.sh
source "$INFRA_DIR/lib.sh"

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  handle_help "$@"
  for name in RESOURCE_GROUP LOCATION_A LOCATION_B VM_NAME VM_SIZE VM_IMAGE ADMIN_USER SSH_KEY \
    STORAGE_PREFIX STORAGE_CONTAINER NUM_SHARDS IMAGES_PER_SHARD IMAGE_SIZE DATASET_SEED \
    ENV_GENERATED CONFIG_PATH MOUNT_POINT NVME_MOUNT VENV_DIR TRAIN_STEPS TRAIN_BATCH TRAIN_WORKERS; do
    printf '%-18s %s\n' "$name" "${!name}"
  done
fi
