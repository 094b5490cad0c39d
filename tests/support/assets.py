"""Test control-plane binaries: etcd, kube-apiserver, kubectl, and helm 3 and 4.

Taken from KUBEBUILDER_ASSETS when it names a folder holding them; otherwise built with the
`go` command from Go modules and cached by version outside the repository, so a warm machine
pays nothing and a cold one pays one build (CONTRIBUTING.md, "Running the tests").

Run as a script to build everything ahead of the test run: `python tests/support/assets.py`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.35.4"
ETCD_VERSION = "v3.6.16"
HELM_VERSION = "v3.20.2"
HELM4_VERSION = "v4.3.1"


@dataclass(frozen=True)
class Assets:
    etcd: Path
    kube_apiserver: Path
    kubectl: Path


def cache_root() -> Path:
    configured = os.environ.get("CALICO_CRD_HOOK_CACHE")
    if configured:
        return Path(configured)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "calico-crd-hook"


def keep_in_cache(path: Path, content: bytes) -> None:
    """Written whole or not at all: parallel test workers may read the file while another writes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.tmp{os.getpid()}")
    partial.write_bytes(content)
    partial.replace(path)


def _from_kubebuilder_assets(name: str) -> Path | None:
    folder = os.environ.get("KUBEBUILDER_ASSETS")
    if not folder:
        return None
    candidate = Path(folder) / name
    return candidate if os.access(candidate, os.X_OK) else None


def _find_go() -> str | None:
    # Go from the official tarball lives in /usr/local/go, which a non-login shell may not have on PATH.
    return shutil.which("go") or shutil.which("go", path="/usr/local/go/bin")


def can_provide() -> bool:
    """Whether the binaries can be had here: named by KUBEBUILDER_ASSETS, or buildable with go."""
    return bool(os.environ.get("KUBEBUILDER_ASSETS")) or _find_go() is not None


def _go() -> str:
    go = _find_go()
    if not go:
        raise RuntimeError(
            "the `go` command is needed to build the test control plane; install Go >= 1.26 "
            "or set KUBEBUILDER_ASSETS to a folder holding etcd, kube-apiserver and kubectl"
        )
    return go


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    print("+", " ".join(args), file=sys.stderr, flush=True)
    merged_env = {**os.environ, "GOFLAGS": "-mod=mod", **(env or {})}
    result = subprocess.run(args, cwd=cwd, env=merged_env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def _scratch_module(workdir: Path, name: str) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "go.mod").exists():
        _run([_go(), "mod", "init", name], cwd=workdir)


def _downloaded_go_mod(module: str, version: str, workdir: Path) -> str:
    info = json.loads(_run([_go(), "mod", "download", "-json", f"{module}@{version}"], cwd=workdir))
    return Path(info["GoMod"]).read_text()


def _staging_replacements(kubernetes_go_mod: str, kubernetes_version: str) -> list[str]:
    """k8s.io/kubernetes points its staging modules at ./staging; a consumer must pin them to
    their published v0.<minor>.<patch> instead."""
    staging_version = "v0." + kubernetes_version.removeprefix("v").split(".", 1)[1]
    staged = re.findall(r"^\s*(k8s\.io/[\w.-]+)\s+=>\s+\./staging/", kubernetes_go_mod, re.M)
    return [f"-replace={module}={module}@{staging_version}" for module in staged]


def _publish(built: Path, destination: Path) -> Path:
    destination.parent.mkdir(parents=True, exist_ok=True)
    # A rename is atomic, so a concurrent or interrupted build never leaves half a binary.
    temporary = destination.with_name(destination.name + f".tmp{os.getpid()}")
    shutil.copy2(built, temporary)
    temporary.chmod(0o755)
    temporary.replace(destination)
    return destination


def kubernetes_binaries(version: str = KUBERNETES_VERSION) -> tuple[Path, Path]:
    target_dir = cache_root() / "bin" / f"kubernetes-{version}"
    apiserver, kubectl = target_dir / "kube-apiserver", target_dir / "kubectl"
    if apiserver.exists() and kubectl.exists():
        return apiserver, kubectl
    workdir = cache_root() / "build" / f"kubernetes-{version}"
    _scratch_module(workdir, "calico-crd-hook.local/kubernetes-build")
    replacements = _staging_replacements(_downloaded_go_mod("k8s.io/kubernetes", version, workdir), version)
    _run([_go(), "mod", "edit", *replacements], cwd=workdir)
    packages = ["k8s.io/kubernetes/cmd/kube-apiserver", "k8s.io/kubernetes/cmd/kubectl"]
    _run([_go(), "get", *(f"{p}@{version}" for p in packages)], cwd=workdir)
    minor = version.removeprefix("v").split(".")[1]
    ldflags = " ".join(
        f"-X {pkg}.{key}={value}"
        for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
        for key, value in (("gitVersion", version), ("gitMajor", "1"), ("gitMinor", minor),
                           ("gitTreeState", "clean"), ("buildDate", "1970-01-01T00:00:00Z"))
    )
    for package, destination in zip(packages, (apiserver, kubectl)):
        out = workdir / "out" / destination.name
        _run([_go(), "build", "-trimpath", "-ldflags", f"-s -w {ldflags}", "-o", str(out), package], cwd=workdir)
        _publish(out, destination)
    return apiserver, kubectl


def etcd_binary(version: str = ETCD_VERSION) -> Path:
    destination = cache_root() / "bin" / f"etcd-{version}" / "etcd"
    if destination.exists():
        return destination
    workdir = cache_root() / "build" / f"etcd-{version}"
    _scratch_module(workdir, "calico-crd-hook.local/etcd-build")
    # The server module's own go.mod replaces its siblings with local paths, which `go install`
    # refuses; as a dependency of a scratch module those replaces are ignored.
    _run([_go(), "get", f"go.etcd.io/etcd/server/v3@{version}"], cwd=workdir)
    out = workdir / "out" / "etcd"
    _run([_go(), "build", "-trimpath", "-ldflags", "-s -w", "-o", str(out), "go.etcd.io/etcd/server/v3"], cwd=workdir)
    return _publish(out, destination)


def helm_binary(version: str = HELM_VERSION) -> Path:
    """Helm 3 or Helm 4 (by the version's major), built from its Go module."""
    major = version.removeprefix("v").split(".")[0]
    found = _from_kubebuilder_assets("helm" if major == "3" else f"helm{major}")
    if found:
        return found
    destination = cache_root() / "bin" / f"helm-{version}" / "helm"
    if destination.exists():
        return destination
    workdir = cache_root() / "build" / f"helm-{version}"
    workdir.mkdir(parents=True, exist_ok=True)
    gobin = workdir / "gobin"
    module = f"helm.sh/helm/v{major}"
    ldflags = f"-s -w -X {module}/internal/version.version={version}"
    _run([_go(), "install", "-trimpath", "-ldflags", ldflags, f"{module}/cmd/helm@{version}"],
         cwd=workdir, env={"GOBIN": str(gobin), "GOFLAGS": ""})
    return _publish(gobin / "helm", destination)


def control_plane_assets() -> Assets:
    found = [_from_kubebuilder_assets(n) for n in ("etcd", "kube-apiserver", "kubectl")]
    if all(found):
        etcd, apiserver, kubectl = found
        return Assets(etcd=etcd, kube_apiserver=apiserver, kubectl=kubectl)
    apiserver, kubectl = kubernetes_binaries()
    return Assets(etcd=etcd_binary(), kube_apiserver=apiserver, kubectl=kubectl)


def main() -> int:
    """Build (or find) every binary; `--control-plane-only`: etcd, kube-apiserver and kubectl."""
    assets = control_plane_assets()
    wanted = () if "--control-plane-only" in sys.argv[1:] else (HELM_VERSION, HELM4_VERSION)
    helms = [helm_binary(version) for version in wanted]
    for path in (assets.etcd, assets.kube_apiserver, assets.kubectl, *helms):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
