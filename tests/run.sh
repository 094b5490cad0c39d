#!/usr/bin/env bash
# The whole test suite: lint and types, then unit, HTTP, real control plane, real helm, the image,
# GitOps. `--quick`: the same checks, then only what needs no control plane, no helm and no image (the
# edit-run loop; CONTRIBUTING.md). Extra arguments go to pytest.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
quick=()
setup=()
if [ "${1:-}" = "--quick" ]; then
  shift
  quick=(-m "not cluster and not helm and not image and not gitops and not slow")
  setup=(--control-plane-only)
fi
bash "$repo/tests/setup.sh" "${setup[@]}"
cd "$repo"
python="${CALICO_CRD_HOOK_VENV:-$repo/.venv}/bin/python"
# Caches outside the tree, as the binaries': a fresh clone's type check starts warm.
cache="${XDG_CACHE_HOME:-$HOME/.cache}/calico-crd-hook"
export MYPY_CACHE_DIR="${MYPY_CACHE_DIR:-$cache/mypy}" RUFF_CACHE_DIR="${RUFF_CACHE_DIR:-$cache/ruff}"
"$python" -m ruff check hook tests bench
"$python" -m mypy
# Tests run in parallel workers (pytest-xdist): one more than the cores, as a scenario often waits
# on the apiserver, helm or a container. TEST_WORKERS overrides it; `-n 0` runs them in one process.
workers="${TEST_WORKERS:-$(( $(nproc) + 1 ))}"
exec "$python" -m pytest -n "$workers" "${quick[@]}" "$@"
