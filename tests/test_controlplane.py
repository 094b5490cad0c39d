"""The test control plane dies with the test process that started it, however that process ends:
a suite stopped by a timeout must not leave etcd and kube-apiserver running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.calico_cluster import wait_until

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[1]
STARTS_A_PLANE = """
import sys, time
from pathlib import Path
from tests.support.assets import control_plane_assets
from tests.support.controlplane import PlanePool
pool = PlanePool(control_plane_assets(), lambda: Path(sys.argv[1]) / str(time.monotonic_ns()))
plane = pool.take()  # started in the pool's thread, as in the suite
print(plane._etcd.pid, plane._apiserver.pid, flush=True)
time.sleep(600)
"""


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.parametrize("ending", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_test_process_takes_its_control_planes_with_it(control_plane_assets, tmp_path, ending):
    test_process = subprocess.Popen([sys.executable, "-c", STARTS_A_PLANE, str(tmp_path)], cwd=REPO,
                                    stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    pids = [int(pid) for pid in test_process.stdout.readline().split()]
    assert len(pids) == 2 and all(running(pid) for pid in pids)

    test_process.send_signal(ending)
    test_process.wait(timeout=30)

    # every etcd and kube-apiserver of it, the plane the pool was starting in the background included
    # (by command line: a dead process's pid may already be another's)
    wait_until(lambda: not processes_naming(tmp_path), "its etcd and kube-apiserver to die with it", timeout=15)


def processes_naming(folder: Path) -> list[int]:
    """Live processes whose command line names `folder` (each plane's data lives under it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                command = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if str(folder) in command and running(int(entry.name)):
                found.append(int(entry.name))
    return found
