#!/usr/bin/env bash
# Installs everything the demo and the tests need, idempotently: system packages (apt-get, only
# what is missing), a virtual environment with the program and its test dependencies, and the
# Go-built etcd, kube-apiserver, kubectl, Helm 3 and Helm 4 in the cache (CONTRIBUTING.md has the
# times). `--control-plane-only` (the demo, the quick loop): no Helm, no buildah or mmdebstrap.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${CALICO_CRD_HOOK_VENV:-$repo/.venv}"
control_plane_only=""
[ "${1:-}" = "--control-plane-only" ] && control_plane_only="--control-plane-only"

# Go from the official tarball lives in /usr/local/go; a non-login shell may not have it on PATH.
[ -x /usr/local/go/bin/go ] && export PATH="$PATH:/usr/local/go/bin"

missing=()
for tool in openssl git curl; do command -v "$tool" >/dev/null || missing+=("$tool"); done
# buildah and mmdebstrap build the image from our Dockerfile on a Debian base (no Docker engine
# needed); without them the image tests skip, and fail under CI.
optional=()
if [ -z "$control_plane_only" ]; then
  for tool in buildah mmdebstrap; do command -v "$tool" >/dev/null || optional+=("$tool"); done
fi
if [ $((${#missing[@]} + ${#optional[@]})) -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" "${optional[@]}" \
      ca-certificates >/dev/null
  elif [ ${#missing[@]} -gt 0 ]; then
    echo "setup: please install: ${missing[*]}" >&2; exit 1
  else
    echo "setup: ${optional[*]} missing (not root): the image tests will be skipped (and fail in CI)" >&2
  fi
fi

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
# The editable install follows the code by itself; only a changed pyproject.toml needs pip again.
stamp="$venv/.installed-from"
wanted="$(sha256sum "$repo/pyproject.toml" | cut -d' ' -f1) $repo"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$repo[test]"
  echo "$wanted" > "$stamp"
fi

# Build (or find) the control-plane binaries now, so the first test does not pay for it.
if command -v go >/dev/null || [ -n "${KUBEBUILDER_ASSETS:-}" ]; then
  (cd "$repo" && "$venv/bin/python" tests/support/assets.py $control_plane_only >/dev/null)
else
  # Debian's golang-go is too old for Kubernetes 1.35: install Go >= 1.26 from go.dev instead.
  echo "setup: no Go >= 1.26 and no KUBEBUILDER_ASSETS: cluster and helm tests will be skipped (and fail in CI)" >&2
fi
