"""The program as operators and the Job run it: a separate process, with exit code and output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


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
