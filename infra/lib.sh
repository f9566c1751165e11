# shellcheck shell=bash
# Helpers shared by the infra scripts (sourced, never run). No secret is ever printed or written:
# the scripts handle resource names, never keys.

log() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

# --help / -h anywhere: print the comment block at the top of the calling script.
handle_help() {
  local arg
  for arg in "$@"; do
    case "$arg" in
      -h | --help)
        sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"
        exit 0
        ;;
    esac
  done
}

require_az() {
  command -v az >/dev/null 2>&1 ||
    die "the Azure CLI ('az') is not installed: apt-get install azure-cli, or pip install azure-cli"
  local version
  version=$(az version --query '"azure-cli"' -o tsv 2>/dev/null) || die "'az version' failed: is the Azure CLI installation broken?"
  local major=${version%%.*} rest=${version#*.}
  local minor=${rest%%.*}
  if ((major < 2 || (major == 2 && minor < 50))); then
    die "Azure CLI $version is too old: 2.50 or newer is needed (az upgrade)"
  fi
}

require_login() {
  az account show -o none 2>/dev/null ||
    die "not logged in to Azure: run 'az login' (on a VM with an identity: 'az login --identity')"
  if [[ -n "${AZURE_SUBSCRIPTION:-}" ]]; then
    az account set --subscription "$AZURE_SUBSCRIPTION" 2>/dev/null ||
      die "subscription '$AZURE_SUBSCRIPTION' (AZURE_SUBSCRIPTION) is not one this login can use (az account list)"
  fi
  SUBSCRIPTION_ID=$(az account show --query id -o tsv)
  note "subscription $(az account show --query name -o tsv) ($SUBSCRIPTION_ID)"
}

# Run az, and on failure explain the errors people hit most before giving up.
az_or_explain() {
  local what=$1 err
  shift
  err=$(mktemp)
  if az "$@" 2>"$err"; then
    rm -f "$err"
    return 0
  fi
  cat "$err" >&2
  if grep -qiE 'QuotaExceeded|exceeding approved .* quota|Operation could not be completed as it results in exceeding' "$err"; then
    printf '\n%s failed: the subscription has no quota for %s in %s.\n' "$what" "$VM_SIZE" "$LOCATION_A" >&2
    printf 'Request more vCPU quota for that VM family (portal: Subscriptions > Usage + quotas),\nor use the cheap path: VM_SIZE=Standard_D4s_v5 (no local NVMe: the cache goes on the OS disk).\n' >&2
  elif grep -qiE 'SkuNotAvailable|NotAvailableForSubscription' "$err"; then
    printf '\n%s failed: %s is not offered in %s for this subscription.\nTry another region (LOCATION_A) or size (VM_SIZE); az vm list-skus -l %s shows what is.\n' "$what" "$VM_SIZE" "$LOCATION_A" "$LOCATION_A" >&2
  elif grep -qiE 'AuthorizationFailed|does not have authorization' "$err"; then
    printf '\n%s failed: this login may not do that here. Creating resources needs Contributor on the\nsubscription or resource group; role assignments need Owner or User Access Administrator.\n' "$what" >&2
  fi
  rm -f "$err"
  die "$what failed"
}

load_generated() {
  if [[ -f "$ENV_GENERATED" ]]; then
    # shellcheck source=/dev/null
    source "$ENV_GENERATED"
  fi
}

# Record a generated value (a name, an address: never a secret) for the later scripts.
save_generated() {
  local key=$1 value=$2 tmp
  tmp=$(mktemp)
  if [[ -f "$ENV_GENERATED" ]]; then
    grep -v "^${key}=" "$ENV_GENERATED" >"$tmp" || true
  fi
  printf '%s=%q\n' "$key" "$value" >>"$tmp"
  mv "$tmp" "$ENV_GENERATED"
  chmod 0644 "$ENV_GENERATED"
}
