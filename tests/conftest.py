"""Fixtures: the real control plane, real Calico manifests, and the program run as a process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import assets as asset_provider
from tests.support.controlplane import ControlPlane

REPO = Path(__file__).resolve().parents[1]
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def _tools_missing(reason: str) -> None:
    """In CI a missing tool is a failure; on a user's machine a skip that says how to get it."""
    message = f"{reason} (README, 'Running the tests' says how to get it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def control_plane_assets() -> asset_provider.Assets:
    if not asset_provider.can_provide():
        _tools_missing("no KUBEBUILDER_ASSETS and no `go` to build etcd and kube-apiserver")
    return asset_provider.control_plane_assets()


@pytest.fixture(scope="session")
def helm_binary() -> Path:
    if not asset_provider.can_provide():
        _tools_missing("no `go` to build helm and no KUBEBUILDER_ASSETS folder holding it")
    return asset_provider.helm_binary()


@pytest.fixture
def control_plane(control_plane_assets, tmp_path) -> ControlPlane:
    plane = ControlPlane(control_plane_assets, tmp_path / "control-plane").start()
    yield plane
    plane.stop()


@pytest.fixture(scope="module")
def module_control_plane(control_plane_assets, tmp_path_factory) -> ControlPlane:
    """One control plane for a module whose tests all prove they changed nothing."""
    plane = ControlPlane(control_plane_assets, tmp_path_factory.mktemp("control-plane")).start()
    yield plane
    plane.stop()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # type: ignore[no-untyped-def]
    skipped = len(terminalreporter.stats.get("skipped", []))
    if os.environ.get("CI") and skipped:
        terminalreporter.write_line(f"CI: {skipped} skipped test(s) count as a failure here", red=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if os.environ.get("CI") and skipped and session.exitstatus == 0:
        session.exitstatus = 1  # a skipped check in CI would be reported as passing


class HookRun:
    def __init__(self, completed: subprocess.CompletedProcess) -> None:
        self.code = completed.returncode
        self.stdout = completed.stdout
        self.stderr = completed.stderr

    @property
    def error_line(self) -> str:
        lines = [line for line in self.stderr.splitlines() if line.startswith("calico-crd-hook: error:")]
        return lines[-1] if lines else ""

    def __repr__(self) -> str:
        return f"HookRun(code={self.code}, stdout={self.stdout[-2000:]!r}, stderr={self.stderr[-3000:]!r})"


def hook_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This machine's environment without anything that would steer the program, plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CALICO_CRD_HOOK_") and k not in ("KUBERNETES_SERVICE_HOST", "KUBECONFIG")}
    env["PYTHONPATH"] = str(REPO / "hook")
    env.update(extra or {})
    return env


HOOK_COMMAND = [sys.executable, "-m", "calico_crd_hook"]


def run_hook(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> HookRun:
    """The program as operators and the Job run it: a separate process, exit code and all."""
    completed = subprocess.run([*HOOK_COMMAND, *args], capture_output=True,
                               text=True, env=hook_env(env), timeout=timeout, stdin=subprocess.DEVNULL)
    return HookRun(completed)


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.load_all(path.read_bytes(), Loader=yaml.CSafeLoader) if doc]


def install_crds_like_helm(plane: ControlPlane, manifest: Path, only: set[str] | None = None) -> None:
    """Helm creates a chart's crds/ once, with a plain create and field manager `helm`."""
    documents = [doc for doc in load_documents(manifest) if only is None or doc["metadata"]["name"] in only]
    for document in documents:
        response = plane.api("POST", CRDS, document, params={"fieldManager": "helm"})
        assert response.status_code == 201, response.text[:500]
    wait_established(plane, [doc["metadata"]["name"] for doc in documents])


def wait_established(plane: ControlPlane, names: list[str], timeout: float = 60) -> None:
    import time

    deadline = time.monotonic() + timeout
    pending = list(names)
    while pending and time.monotonic() < deadline:
        pending = [name for name in pending if not _established(plane.get(f"{CRDS}/{name}"))]
        if pending:
            time.sleep(0.1)
    assert not pending, f"not Established: {pending}"


def _established(crd: dict[str, Any] | None) -> bool:
    conditions = ((crd or {}).get("status") or {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


def crd_state(plane: ControlPlane) -> dict[str, tuple[str, int]]:
    """Every CRD's resourceVersion and generation: equal snapshots mean nothing was written."""
    items = plane.get(CRDS)["items"]
    return {crd["metadata"]["name"]: (crd["metadata"]["resourceVersion"], crd["metadata"]["generation"])
            for crd in items}


def settled_crd_state(plane: ControlPlane, quiet_seconds: float = 1.0) -> dict[str, tuple[str, int]]:
    """The snapshot once the apiserver's own CRD controllers stopped writing conditions."""
    import time

    previous = crd_state(plane)
    for _ in range(30):
        time.sleep(quiet_seconds)
        current = crd_state(plane)
        if current == previous:
            return current
        previous = current
    raise AssertionError("CRDs kept changing without any client writing")
