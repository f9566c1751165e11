#!/usr/bin/env bash
# 06-teardown.sh — delete the demo's resource group (the VM, both storage accounts, the data)
# and forget infra/.env.generated. Asks first; --yes skips the question (and is required when
# there is no terminal to ask on).
#
# Usage: infra/06-teardown.sh [--yes] [--help]
set -euo pipefail
# shellcheck source=00-env.sh
source "$(cd -- "$(dirname "$0")" && pwd)/00-env.sh"
handle_help "$@"
yes=0
for arg in "$@"; do
  case "$arg" in
    --yes | -y) yes=1 ;;
    *) die "unknown argument '$arg' (see --help)" ;;
  esac
done
require_az
require_login

if [[ "$(az group exists --name "$RESOURCE_GROUP" -o tsv)" != "true" ]]; then
  log "Resource group $RESOURCE_GROUP does not exist: nothing to delete"
  rm -f "$ENV_GENERATED"
  exit 0
fi
if [[ $yes -ne 1 ]]; then
  [[ -t 0 ]] || die "refusing to delete $RESOURCE_GROUP without confirmation: pass --yes"
  read -r -p "Delete resource group $RESOURCE_GROUP and everything in it? [y/N] " answer
  [[ "$answer" =~ ^[Yy]([Ee][Ss])?$ ]] || { log "Nothing deleted"; exit 0; }
fi
log "Deleting resource group $RESOURCE_GROUP (in the background on Azure's side)"
az_or_explain "deleting $RESOURCE_GROUP" group delete --name "$RESOURCE_GROUP" --yes --no-wait -o none
rm -f "$ENV_GENERATED"
note "az group show --name $RESOURCE_GROUP shows when it is gone"
