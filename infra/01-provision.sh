#!/usr/bin/env bash
# 01-provision.sh — the Azure side of the demo: a resource group, two storage accounts in two
# regions with the dataset container, a VM with a system-assigned identity that may read both.
#
# Idempotent: what exists is reused, so a second run creates nothing. Storage account names
# (globally unique) are generated once and kept in infra/.env.generated with the VM's IP and
# identity; no key or secret is read or written. The signed-in user is also given
# "Storage Blob Data Contributor" on both accounts so that 02 can upload with --auth-mode login
# (UPLOADER_ROLE=0 skips it). Settings: see 00-env.sh.
#
# Usage: infra/01-provision.sh [--help]
set -euo pipefail
# shellcheck source=00-env.sh
source "$(cd -- "$(dirname "$0")" && pwd)/00-env.sh"
handle_help "$@"
require_az
require_login
load_generated

log "Resource group $RESOURCE_GROUP ($LOCATION_A)"
if az group show --name "$RESOURCE_GROUP" -o none 2>/dev/null; then
  note "exists: reused"
else
  az_or_explain "creating the resource group" group create --name "$RESOURCE_GROUP" --location "$LOCATION_A" -o none
fi

new_account_name() {
  local side=$1 name suffix tries
  for tries in 1 2 3 4 5; do
    suffix=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
    name="${STORAGE_PREFIX}${suffix}${side}"
    if [[ "$(az storage account check-name --name "$name" --query nameAvailable -o tsv)" == "true" ]]; then
      printf '%s' "$name"
      return 0
    fi
    note "name $name is taken (try $tries)" >&2
  done
  die "no free storage account name after 5 tries: set STORAGE_PREFIX to something more unusual"
}

for side in a b; do
  if [[ $side == a ]]; then var=STORAGE_ACCOUNT_A location=$LOCATION_A; else var=STORAGE_ACCOUNT_B location=$LOCATION_B; fi
  if [[ -z "${!var:-}" ]]; then
    printf -v "$var" '%s' "$(new_account_name "$side")"
    save_generated "$var" "${!var}"
  fi
  account=${!var}
  log "Storage account $account ($location)"
  if az storage account show --name "$account" --resource-group "$RESOURCE_GROUP" -o none 2>/dev/null; then
    note "exists: reused"
  else
    az_or_explain "creating storage account $account" storage account create \
      --name "$account" --resource-group "$RESOURCE_GROUP" --location "$location" \
      --sku Standard_LRS --kind StorageV2 --min-tls-version TLS1_2 \
      --allow-blob-public-access false -o none
  fi
  # Through the management plane: needs no data role, which may take minutes to take effect.
  if [[ "$(az storage container-rm exists --storage-account "$account" --resource-group "$RESOURCE_GROUP" --name "$STORAGE_CONTAINER" --query exists -o tsv)" == "true" ]]; then
    note "container $STORAGE_CONTAINER exists: reused"
  else
    az_or_explain "creating container $STORAGE_CONTAINER" storage container-rm create \
      --storage-account "$account" --resource-group "$RESOURCE_GROUP" --name "$STORAGE_CONTAINER" -o none
  fi
done

log "VM $VM_NAME ($VM_SIZE, $LOCATION_A)"
if az vm show --resource-group "$RESOURCE_GROUP" --name "$VM_NAME" -o none 2>/dev/null; then
  note "exists: reused"
else
  [[ -f "$SSH_KEY" ]] || die "SSH public key $SSH_KEY not found: set SSH_KEY, or create one with ssh-keygen"
  az_or_explain "creating the VM" vm create --resource-group "$RESOURCE_GROUP" --name "$VM_NAME" \
    --location "$LOCATION_A" --size "$VM_SIZE" --image "$VM_IMAGE" \
    --admin-username "$ADMIN_USER" --ssh-key-values "$SSH_KEY" \
    --assign-identity '[system]' --public-ip-sku Standard --os-disk-size-gb 64 -o none
fi
principal=$(az vm show --resource-group "$RESOURCE_GROUP" --name "$VM_NAME" --query identity.principalId -o tsv)
if [[ -z "$principal" ]]; then
  principal=$(az vm identity assign --resource-group "$RESOURCE_GROUP" --name "$VM_NAME" --query systemAssignedIdentity -o tsv)
fi
save_generated VM_PRINCIPAL_ID "$principal"

grant() {
  local assignee=$1 type=$2 role=$3 scope=$4
  local count
  count=$(az role assignment list --assignee "$assignee" --role "$role" --scope "$scope" --query 'length(@)' -o tsv)
  if [[ "$count" != "0" ]]; then
    note "$role for $type $assignee: exists"
  else
    az_or_explain "granting $role" role assignment create --assignee-object-id "$assignee" \
      --assignee-principal-type "$type" --role "$role" --scope "$scope" -o none
    note "$role for $type $assignee: granted"
  fi
}

log "Role assignments"
uploader=""
if [[ "${UPLOADER_ROLE:-1}" == "1" ]]; then
  uploader=$(az ad signed-in-user show --query id -o tsv 2>/dev/null) ||
    note "signed in as a service principal: give it Storage Blob Data Contributor yourself to run 02"
fi
for account in "$STORAGE_ACCOUNT_A" "$STORAGE_ACCOUNT_B"; do
  scope=$(az storage account show --name "$account" --resource-group "$RESOURCE_GROUP" --query id -o tsv)
  grant "$principal" ServicePrincipal "Storage Blob Data Reader" "$scope"
  if [[ -n "$uploader" ]]; then
    grant "$uploader" User "Storage Blob Data Contributor" "$scope"
  fi
done

VM_IP=$(az vm show --show-details --resource-group "$RESOURCE_GROUP" --name "$VM_NAME" --query publicIps -o tsv)
save_generated VM_IP "$VM_IP"
save_generated RESOURCE_GROUP "$RESOURCE_GROUP"

log "Done"
note "VM:        $ADMIN_USER@$VM_IP (ssh $ADMIN_USER@$VM_IP)"
note "Region A:  $STORAGE_ACCOUNT_A ($LOCATION_A), container $STORAGE_CONTAINER"
note "Region B:  $STORAGE_ACCOUNT_B ($LOCATION_B), container $STORAGE_CONTAINER"
note "Saved in $ENV_GENERATED. Next: infra/02-gen-dataset.sh, then copy this repo to the VM and run 03, 04, 05 there."
