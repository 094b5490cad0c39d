#!/usr/bin/env bash
# The whole test suite: unit, HTTP, real control plane, real helm. Extra arguments go to pytest.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/tests/setup.sh"
cd "$repo"
exec "${CALICO_CRD_HOOK_VENV:-$repo/.venv}/bin/python" -m pytest "$@"
