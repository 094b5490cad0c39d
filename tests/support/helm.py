"""The real helm binary against the test control plane, with its own config and cache folders."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.controlplane import ControlPlane


class Helm:
    def __init__(self, binary: Path, plane: ControlPlane, home: Path) -> None:
        self.binary, self.plane = binary, plane
        self.env = {**os.environ, "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
                    "HELM_DATA_HOME": str(home / "data"), "KUBECONFIG": str(plane.kubeconfig())}

    def __call__(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        completed = subprocess.run([str(self.binary), *args], capture_output=True, text=True, env=self.env,
                                   timeout=timeout, stdin=subprocess.DEVNULL)
        if check and completed.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({completed.returncode}):\n"
                                 f"{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}")
        return completed
