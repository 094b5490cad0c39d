"""A real etcd + kube-apiserver on 127.0.0.1, the way controller-runtime's envtest runs them.

TLS (the apiserver's self-signed serving certificate), RBAC, ServiceAccount token signing and an
admin bearer token in system:masters. No controller-manager: ServiceAccounts are created
explicitly and their tokens come from the TokenRequest API.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from tests.support.assets import Assets

READY_TIMEOUT_SECONDS = 90.0

# Runs a control-plane binary so that it dies with the thread that started it, however the test
# process ends (a CI timeout's SIGKILL included): PR_SET_PDEATHSIG, set before the exec and checked
# against a parent that died in between. Every binary is started from _SPAWNER's one thread, which
# lives as long as the process (a plane restarted from a short-lived thread would die with it).
_TIED_TO_PARENT = """
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
os.execv(sys.argv[2], sys.argv[2:])
"""
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="control-plane-spawner")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ControlPlane:
    def __init__(self, assets: Assets, workdir: Path | None = None) -> None:
        self.assets = assets
        self._tempdir = None if workdir else tempfile.TemporaryDirectory(prefix="calico-crd-hook-cp-")
        self.workdir = Path(workdir or self._tempdir.name)
        self.admin_token = secrets.token_hex(16)
        self.etcd_port = free_port()
        self.port = free_port()
        self.server = f"https://127.0.0.1:{self.port}"
        self._etcd: subprocess.Popen | None = None
        self._apiserver: subprocess.Popen | None = None

    # --- life cycle ---------------------------------------------------------------------------

    def start(self) -> ControlPlane:
        self._write_keys()
        self._etcd = self._spawn("etcd", [
            str(self.assets.etcd), "--data-dir", str(self.workdir / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{self.etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{self.etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{free_port()}",
            "--unsafe-no-fsync", "--log-level", "warn"])
        self.start_apiserver()
        return self

    def start_apiserver(self, port: int | None = None) -> None:
        self.port = port or self.port
        self._apiserver = self._spawn("kube-apiserver", [
            str(self.assets.kube_apiserver),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            f"--secure-port={self.port}", "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--cert-dir={self.workdir / 'certs'}",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--authorization-mode=RBAC",
            f"--token-auth-file={self.workdir / 'tokens.csv'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={self.workdir / 'sa.pub'}",
            f"--service-account-signing-key-file={self.workdir / 'sa.key'}",
            "--disable-admission-plugins=ServiceAccount",
            "--enable-priority-and-fairness=false",
            "--v=0"])
        self._wait_ready()

    def stop_apiserver(self, kill: bool = False) -> None:
        if kill and self._apiserver and self._apiserver.poll() is None:
            self._apiserver.kill()
            self._apiserver.wait(timeout=10)
        _terminate(self._apiserver)
        self._apiserver = None

    def stop(self, graceful: bool = True) -> None:
        """graceful=False kills both processes at once and removes etcd's data (the logs stay): for
        a plane whose data is thrown away. etcd preallocates two WAL segments, so each plane left
        on disk would hold their size until pytest's own clean-up, three sessions later."""
        self.stop_apiserver(kill=not graceful)
        if not graceful and self._etcd and self._etcd.poll() is None:
            self._etcd.kill()
        _terminate(self._etcd)
        self._etcd = None
        if not graceful:
            shutil.rmtree(self.workdir / "etcd", ignore_errors=True)
        if self._tempdir:
            self._tempdir.cleanup()

    def server_cpu_seconds(self) -> float:
        """CPU time the apiserver and etcd have used so far (user + system, from /proc): what a
        client's requests cost the server, for the benchmark."""
        ticks = os.sysconf("SC_CLK_TCK")
        used = 0.0
        for process in (self._apiserver, self._etcd):
            if process is not None:
                fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
                used += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        return used

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        """The binary in a session of its own, tied to this process (_TIED_TO_PARENT)."""
        log = open(self.workdir / f"{name}.log", "ab")
        command = [sys.executable, "-c", _TIED_TO_PARENT, str(os.getpid()), *args]
        return _SPAWNER.submit(subprocess.Popen, command, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True).result()

    def _write_keys(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "tokens.csv").write_text(f"{self.admin_token},test-admin,test-admin-uid,system:masters\n")
        private, public = _service_account_key_pair()
        (self.workdir / "sa.key").write_bytes(private)
        (self.workdir / "sa.pub").write_bytes(public)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        last = ""
        while time.monotonic() < deadline:
            if self._apiserver and self._apiserver.poll() is not None:
                raise RuntimeError(f"kube-apiserver exited: see {self.workdir / 'kube-apiserver.log'}")
            if not self.ca_file.exists():  # it writes its serving certificate before it serves
                time.sleep(0.2)
                continue
            try:
                response = requests.get(f"{self.server}/readyz", verify=str(self.ca_file), timeout=2,
                                        headers={"Authorization": f"Bearer {self.admin_token}"})
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}"
            except requests.RequestException as error:
                last = type(error).__name__
            time.sleep(0.2)
        raise RuntimeError(f"kube-apiserver not ready after {READY_TIMEOUT_SECONDS}s ({last})")

    # --- access -------------------------------------------------------------------------------

    @property
    def ca_file(self) -> Path:
        return self.workdir / "certs" / "apiserver.crt"

    def kubeconfig(self, token: str | None = None, name: str = "admin") -> Path:
        path = self.workdir / f"kubeconfig-{name}"
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.server,
                                                     "certificate-authority": str(self.ca_file)}}],
            "users": [{"name": name, "user": {"token": token or self.admin_token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": name}}],
        }
        path.write_text(json.dumps(config))
        return path

    def api(self, method: str, path: str, body: Any = None, token: str | None = None,
            content_type: str = "application/json", params: dict | None = None,
            accept: str = "application/json") -> requests.Response:
        """One request; a 429 (a new CRD's storage still initializing) is retried for a while."""
        deadline = time.monotonic() + 20
        while True:
            response = requests.request(method, self.server + path, params=params, verify=str(self.ca_file),
                                        data=None if body is None else json.dumps(body), timeout=60,
                                        headers={"Authorization": f"Bearer {token or self.admin_token}",
                                                 "Content-Type": content_type, "Accept": accept})
            if response.status_code != 429 or time.monotonic() > deadline:
                return response
            time.sleep(0.2)

    def get(self, path: str) -> dict[str, Any] | None:
        response = self.api("GET", path)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()

    def kubectl(self, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.assets.kubectl), "--kubeconfig", str(self.kubeconfig()), *args],
                              capture_output=True, text=True, check=check,
                              env={**os.environ, **(env or {})})

    def service_account_token(self, namespace: str, name: str) -> str:
        created = self.api("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts",
                           {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}})
        if created.status_code not in (201, 409):
            created.raise_for_status()
        response = self.api("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
                            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                             "spec": {"expirationSeconds": 3600}})
        response.raise_for_status()
        return response.json()["status"]["token"]


class PlanePool:
    """Fresh control planes with the start-up (~3 s) hidden: while a test uses one plane, the next
    one starts in the background. Only a test that takes a plane makes the pool start another."""

    def __init__(self, assets: Assets, new_folder: Callable[[], Path]) -> None:
        self._assets, self._new_folder = assets, new_folder
        self._starter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plane-pool")
        self._next: Future[ControlPlane] | None = None

    def take(self) -> ControlPlane:
        pending, self._next = self._next, None
        try:
            plane = pending.result() if pending else self._start(self._new_folder())
        except RuntimeError:  # a background start that failed (a port taken meanwhile): once more
            plane = self._start(self._new_folder())
        self._next = self._starter.submit(self._start, self._new_folder())  # the folder made here, in the test's thread
        return plane

    def _start(self, folder: Path) -> ControlPlane:
        return ControlPlane(self._assets, folder).start()

    def close(self) -> None:
        if self._next is not None:
            try:
                self._next.result().stop(graceful=False)
            except RuntimeError:
                pass
        self._starter.shutdown()


@functools.lru_cache(maxsize=1)
def _service_account_key_pair() -> tuple[bytes, bytes]:
    """One RSA key pair per test session: every plane signs ServiceAccount tokens with it."""
    with tempfile.TemporaryDirectory() as folder:
        key, pub = Path(folder) / "sa.key", Path(folder) / "sa.pub"
        subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
        subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(pub)],
                       check=True, capture_output=True)
        return key.read_bytes(), pub.read_bytes()


def _terminate(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)
