"""The image built from our Dockerfile with buildah, and containers run from it, as the kubelet would.

No Docker engine or image registry is reachable on these machines, so the base image is made from
Debian packages: `mmdebstrap` makes a root filesystem with python3, python3-venv and ca-certificates,
imported with `buildah from scratch` (plus `python` linked to `python3`) and passed to the Dockerfile
as its `PYTHON_IMAGE` build argument. The base is cached (the tarball in the cache folder, the image in
buildah's storage there); the program's image is built once per test session.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.support.assets import cache_root

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = "localhost/calico-crd-hook-base:bookworm"
PROGRAM_IMAGE = "localhost/calico-crd-hook:test"
DEBIAN_SUITE = "bookworm"
BASE_PACKAGES = "python3,python3-venv,ca-certificates"
# pip inside the build reaches the package index only through this machine's CA bundle (a
# TLS-inspecting proxy): it is mounted read-only over the image's own, as such a user would.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def missing_tools() -> list[str]:
    return [tool for tool in ("buildah", "mmdebstrap") if not shutil.which(tool)]


class Buildah:
    """buildah with storage of its own under the cache folder: overlay where this process may mount
    it (a container then costs no copy), else vfs, which copies the image's whole root filesystem
    for every container (CONTRIBUTING.md has both times)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or cache_root() / "containers"
        self.driver = "overlay" if _overlay_mounts_work() else "vfs"
        storage = "storage" if self.driver == "vfs" else f"storage-{self.driver}"
        self.global_flags = ["--root", str(self.root / storage), "--runroot", str(self.root / f"run-{self.driver}"),
                             "--storage-driver", self.driver]

    def __call__(self, *args: str, check: bool = True, timeout: float = 1800,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        completed = subprocess.run(["buildah", *self.global_flags, *args], capture_output=True, text=True,
                                   timeout=timeout, stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})
        if check and completed.returncode != 0:
            raise RuntimeError(f"buildah {' '.join(args[:3])} failed ({completed.returncode}):\n"
                               f"{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}")
        return completed

    def has_image(self, name: str) -> bool:
        return self("inspect", "--type", "image", name, check=False).returncode == 0

    def run_container(self, image: str, command: Sequence[str], env: dict[str, str], mounts: dict[str, str],
                      user: str | None, timeout: float) -> subprocess.CompletedProcess:
        """A throwaway working container of `image` running `command` (chroot isolation: it shares
        the host's network, so it reaches the loopback apiserver). Raises TimeoutExpired."""
        container = self("from", "--pull-never", "--quiet", image).stdout.strip()
        try:
            flags = ["--isolation", "chroot", *(["--user", user] if user else [])]
            flags += [flag for name, value in env.items() for flag in ("--env", f"{name}={value}")]
            flags += [flag for inside, outside in mounts.items() for flag in ("--volume", f"{outside}:{inside}")]
            return self("run", *flags, container, "--", *command, check=False, timeout=timeout)
        finally:
            self("rm", container, check=False)


@contextlib.contextmanager
def _one_build_at_a_time(buildah: Buildah) -> Iterator[None]:
    """Test workers run in parallel (pytest-xdist) and share one storage: one builds while the
    others wait, then finds the layers cached."""
    buildah.root.mkdir(parents=True, exist_ok=True)
    with open(buildah.root / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@functools.cache
def _overlay_mounts_work() -> bool:
    """Mounts one overlay (root, and a kernel that allows it here), then unmounts it."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    with tempfile.TemporaryDirectory() as folder:
        for part in ("lower", "upper", "work", "merged"):
            (Path(folder) / part).mkdir()
        options = f"lowerdir={folder}/lower,upperdir={folder}/upper,workdir={folder}/work"
        mounted = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, f"{folder}/merged"],
                                 capture_output=True).returncode == 0
        if mounted:
            subprocess.run(["umount", f"{folder}/merged"], capture_output=True, check=True)
        return mounted


def base_image(buildah: Buildah) -> str:
    """Debian's python3 as the base image, made once and kept in the cache."""
    with _one_build_at_a_time(buildah):
        return _base_image(buildah)


def _base_image(buildah: Buildah) -> str:
    if buildah.has_image(BASE_IMAGE):
        return BASE_IMAGE
    rootfs = cache_root() / "image" / f"{DEBIAN_SUITE}-python3-rootfs.tar"
    if not rootfs.is_file():
        rootfs.parent.mkdir(parents=True, exist_ok=True)
        partial = rootfs.with_name(f"partial-{os.getpid()}-{rootfs.name}")  # mmdebstrap picks the format by the suffix
        _run(["mmdebstrap", "--variant=apt", f"--include={BASE_PACKAGES}", DEBIAN_SUITE, str(partial)])
        partial.replace(rootfs)
    container = buildah("from", "--quiet", "scratch").stdout.strip()
    try:
        buildah("add", container, str(rootfs), "/")
        buildah("run", "--isolation", "chroot", container, "--", "ln", "-s", "/usr/bin/python3", "/usr/local/bin/python")
        buildah("commit", "--quiet", container, BASE_IMAGE)
    finally:
        buildah("rm", container, check=False)
    return BASE_IMAGE


def build_program_image(buildah: Buildah, tag: str = PROGRAM_IMAGE, build_args: dict[str, str] | None = None,
                        mounts: dict[str, str] | None = None) -> str:
    """`buildah bud` of the Dockerfile as it is, on the Debian base. `mounts`: more read-only binds
    for the build (a test mirror's CA)."""
    arguments = {"PYTHON_IMAGE": base_image(buildah), **(build_args or {})}
    with _one_build_at_a_time(buildah):
        _build(buildah, tag, arguments, mounts)
    return tag


def _build(buildah: Buildah, tag: str, arguments: dict[str, str], mounts: dict[str, str] | None) -> None:
    binds = {**({str(HOST_CA_BUNDLE): str(HOST_CA_BUNDLE)} if HOST_CA_BUNDLE.is_file() else {}), **(mounts or {})}
    flags = ["--isolation", "chroot", "--layers", "--tag", tag]
    flags += [flag for name, value in arguments.items() for flag in ("--build-arg", f"{name}={value}")]
    flags += [flag for outside, inside in binds.items() for flag in ("--volume", f"{outside}:{inside}:ro")]
    buildah("bud", *flags, "--file", str(REPO / "Dockerfile"), str(REPO))
    # The image this build replaced under the tag, and its layers: with vfs each is a whole copy,
    # so they would fill the disk over a few sessions. Layers of tagged images stay cached.
    buildah("rmi", "--prune", check=False)


def _run(args: list[str]) -> None:
    print("+", " ".join(args), file=sys.stderr, flush=True)
    completed = subprocess.run(args, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}")
