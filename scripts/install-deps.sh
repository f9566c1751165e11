#!/usr/bin/env bash
# Installs everything WarpDrive's tests, benchmarks and demo need on a fresh Debian/Ubuntu machine:
# FUSE 3, promtool, PostgreSQL, Chromium and fio (apt), Azurite (npm), then PyTorch's CPU build and this
# project with its extras (pip; torch held at that build), and the Azure CLI in a venv of its own
# (for infra/'s tests).
# Idempotent: each step is skipped when what it installs is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
AZURITE_VERSION="${AZURITE_VERSION:-3.37.0}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

APT_PACKAGES="fuse3 prometheus postgresql chromium chromium-driver fio"
if ! command -v fusermount3 >/dev/null 2>&1 \
  || ! command -v promtool >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1 \
  || ! command -v fio >/dev/null 2>&1 \
  || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  # prometheus for promtool (deploy/monitoring's rule tests), postgresql and chromium for the
  # control plane's tests, fio for the mount's verify test; none of their services is started here.
  echo "==> apt: $APT_PACKAGES"
  $SUDO apt-get update -qq
  # shellcheck disable=SC2086 # a list of package names
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    $APT_PACKAGES >/dev/null
fi

if ! command -v azurite-blob >/dev/null 2>&1; then
  echo "==> npm: azurite@${AZURITE_VERSION}"
  $SUDO npm install -g --no-fund --no-audit "azurite@${AZURITE_VERSION}" >/dev/null
fi

# torch first, pinned: a bare 'torch' requirement would pull a multi-GB CUDA build.
if ! "$PYTHON" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '${TORCH_VERSION}')" 2>/dev/null; then
  echo "==> pip: torch==${TORCH_VERSION}"
  "$PYTHON" -m pip install -q "torch==${TORCH_VERSION}"
fi

# ... and held there: the extras (lightning, torchdata, datasets in 'integrations') accept any
# torch 2.x, so without this pin a newer release of one of them could pull another torch in.
TORCH_PIN="$(mktemp)"
trap 'rm -f "$TORCH_PIN"' EXIT
echo "torch==${TORCH_VERSION}" >"$TORCH_PIN"

echo "==> pip: warpdrive[dev,fuse,torch] (editable; torch held at ${TORCH_VERSION})"
"$PYTHON" -m pip install -q -c "$TORCH_PIN" -e '.[dev,fuse,torch]'

# The Azure CLI for infra/'s upload test, in a venv of its own: its pinned azure-* libraries
# must not replace the ones WarpDrive uses.
AZURE_CLI_VERSION="${AZURE_CLI_VERSION:-2.91.0}"
if [ ! -x .venv-azcli/bin/az ]; then
  echo "==> pip: azure-cli==${AZURE_CLI_VERSION} (in .venv-azcli)"
  "$PYTHON" -m venv .venv-azcli
  .venv-azcli/bin/pip install -q "azure-cli==${AZURE_CLI_VERSION}" 2>&1 | grep -v '^WARNING: Location' || true
  [ -x .venv-azcli/bin/az ] || { echo "azure-cli did not install" >&2; exit 1; }
fi

# Ray Data for the integration test that reads warpdrive:// with it (tests/integration/test_ray.py):
# in a venv of its own over this Python's packages, so its pins cannot move the project's.
RAY_VERSION="${RAY_VERSION:-2.60.0}"
if [ ! -x .venv-ray/bin/python ] || ! .venv-ray/bin/python -c "import ray.data" 2>/dev/null; then
  echo "==> pip: ray[data]==${RAY_VERSION} (in .venv-ray)"
  "$PYTHON" -m venv --system-site-packages .venv-ray
  .venv-ray/bin/pip install -q -c "$TORCH_PIN" "ray[data]==${RAY_VERSION}" 2>&1 | grep -v '^WARNING: Location' || true
  .venv-ray/bin/python -c "import ray.data" || { echo "ray did not install" >&2; exit 1; }
fi
