"""The Job's own start, in the image built from the Dockerfile (buildah, chroot isolation): the
interpreter and imports, the time to the first apiserver request, and the process from start to
exit for the upgrade of path (a) and for the no-op after it. Times are taken inside the container
(`date +%s%N` before the program starts) and by the delay proxy (0 ms) the kubeconfig points at,
so buildah's own container set-up (not what a kubelet does) is left out."""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from bench.run import delayed_kubeconfig
from tests.support.calico import manifest_path
from tests.support.calico_cluster import install_crds_like_helm, set_running_version
from tests.support.controlplane import ControlPlane
from tests.support.image import PROGRAM_IMAGE, Buildah, build_program_image

IMPORTS = "import calico_crd_hook.cli, calico_crd_hook.pipeline"
_STAMPED = 'echo "started $(date +%s%N)"; "$@"; code=$?; echo "ended $(date +%s%N)"; exit $code'


def measure_job_start(runs: int, assets) -> dict[str, list[float]]:
    buildah = Buildah()
    image = build_program_image(buildah, PROGRAM_IMAGE)
    found: dict[str, list[float]] = {}
    for _ in range(runs):
        found.setdefault("imports (python -X importtime, cumulative)", []).append(_import_seconds(buildah, image))
        with tempfile.TemporaryDirectory(prefix="calico-crd-hook-job-start-") as name:
            for key, value in _one_cluster(buildah, image, assets, Path(name)).items():
                found.setdefault(key, []).append(value)
    return found


def _import_seconds(buildah: Buildah, image: str) -> float:
    ran = buildah.run_container(image, ["python", "-X", "importtime", "-c", IMPORTS], {}, {}, None, 120)
    lines = [line for line in ran.stderr.splitlines() if line.startswith("import time:")]
    return max(int(line.split("|")[1]) for line in lines[1:]) / 1e6


def _one_cluster(buildah: Buildah, image: str, assets, folder: Path) -> dict[str, float]:
    plane = ControlPlane(assets, folder / "plane").start()
    try:
        install_crds_like_helm(plane, manifest_path("v3.28.2"))
        set_running_version(plane, "v3.28.2")
        mounts = _mounts(plane, folder)
        upgrade = _timed_in_container(buildah, image, mounts, plane, folder)
        noop = _timed_in_container(buildah, image, mounts, plane, folder)
        return {"path (a): start to first apiserver request": upgrade[0], "path (a): start to exit": upgrade[1],
                "no-op: start to first apiserver request": noop[0], "no-op: start to exit": noop[1]}
    finally:
        plane.stop()


def _mounts(plane: ControlPlane, folder: Path) -> dict[str, str]:
    kube, manifests = folder / "kube", folder / "manifests"
    kube.mkdir()
    manifests.mkdir()
    (kube / "ca.crt").write_bytes(plane.ca_file.read_bytes())
    (manifests / "operator-crds.yaml").write_bytes(manifest_path("v3.29.1").read_bytes())
    for path in (kube, manifests, *kube.iterdir(), *manifests.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return {"/kube": str(kube), "/manifests": str(manifests)}


def _timed_in_container(buildah: Buildah, image: str, mounts: dict[str, str], plane: ControlPlane,
                        folder: Path) -> tuple[float, float]:
    """(start to first apiserver connection, start to exit), seconds: a proxy of its own per run, so
    its first accepted connection is this run's first request."""
    proxy, kubeconfig = delayed_kubeconfig(plane, 0, folder / "kube" / "config", log_accepts=True,
                                           ca_file="/kube/ca.crt")
    try:
        kubeconfig.chmod(0o644)
        command = ["sh", "-c", _STAMPED, "sh", "calico-crd-hook", "apply", "--version", "v3.29.1",
                   "--manifest", "/manifests/operator-crds.yaml", "--kubeconfig", "/kube/config"]
        ran = buildah.run_container(image, command, {}, mounts, "65532:65532", 300)
        stamps = dict(line.split() for line in ran.stdout.splitlines() if line.startswith(("started ", "ended ")))
        if ran.returncode != 0 or len(stamps) != 2:
            raise RuntimeError(f"the container failed ({ran.returncode}): {ran.stderr[-2000:]}")
        first = int((proxy.stdout.readline() if proxy.stdout else "accepted 0").split()[1])
    finally:
        proxy.kill()
        proxy.wait()
    started, ended = int(stamps["started"]), int(stamps["ended"])
    return (first - started) / 1e9, (ended - started) / 1e9


def render_job_start(found: dict[str, list[float]]) -> str:
    lines = ["## The Job's own start (in the image)", "",
             "Inside the container built from our Dockerfile (buildah, chroot; its container set-up left out), "
             "medians and ranges in seconds:", "", "| what | median | range |", "|---|---|---|"]
    for what, values in found.items():
        lines.append(f"| {what} | {statistics.median(values):.3f} | {min(values):.3f}-{max(values):.3f} |")
    return "\n".join(lines) + "\n"
