#!/usr/bin/env bash
# The reported failure and its fix on a local control plane: v3.28.2 CRDs installed as Helm
# installs them, then `calico-crd-hook apply --version v3.29.1`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/tests/setup.sh" --control-plane-only
cd "$repo"
exec "${CALICO_CRD_HOOK_VENV:-$repo/.venv}/bin/python" -m tests.demo "$@"
