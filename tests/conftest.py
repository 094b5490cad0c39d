"""Fixtures only: the real control plane and helm. The helpers tests, bench and demo share live in
tests/support/ (program.py runs the program, calico_cluster.py sets up and snapshots the cluster)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import assets as asset_provider
from tests.support.calico import manifest_path
from tests.support.charts import JOB_IMAGE_NAME
from tests.support.controlplane import ControlPlane, PlanePool
from tests.support.jobharness import HostRunner, ImageRunner, JobHarness


def _tools_missing(reason: str) -> None:
    """In CI a missing tool is a failure; on a user's machine a skip that says how to get it."""
    message = f"{reason} (CONTRIBUTING.md, 'Running the tests' says how to get it)"
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
    """Helm 3, for rendering."""
    if not asset_provider.can_provide():
        _tools_missing("no `go` to build helm and no KUBEBUILDER_ASSETS folder holding it")
    return asset_provider.helm_binary()


@pytest.fixture(scope="session", params=[asset_provider.HELM_VERSION, asset_provider.HELM4_VERSION],
                ids=["helm3", "helm4"])
def any_helm_binary(request) -> Path:
    """Helm 3 and Helm 4: the end-to-end scenarios run with both."""
    if not asset_provider.can_provide():
        _tools_missing("no `go` to build helm and no KUBEBUILDER_ASSETS folder holding it")
    return asset_provider.helm_binary(request.param)


@pytest.fixture(scope="session")
def image_builder():
    """buildah with the test storage, the Debian base made (or found in the cache)."""
    from tests.support import image

    missing = image.missing_tools()
    if missing:
        _tools_missing(f"{' and '.join(missing)} missing (tests/setup.sh apt-installs them when run as root)")
    buildah = image.Buildah()
    image.base_image(buildah)
    return buildah


@pytest.fixture(scope="session")
def program_image(image_builder) -> str:
    """The image built from our Dockerfile, once per session."""
    from tests.support import image

    return image.build_program_image(image_builder)


@pytest.fixture(scope="session")
def fresh_planes(control_plane_assets, tmp_path_factory) -> Iterator[PlanePool]:
    pool = PlanePool(control_plane_assets, lambda: tmp_path_factory.mktemp("control-plane"))
    yield pool
    pool.close()


@pytest.fixture
def control_plane(fresh_planes) -> Iterator[ControlPlane]:
    """A control plane of the test's own, for tests that change the cluster."""
    plane = fresh_planes.take()
    yield plane
    plane.stop(graceful=False)  # its data is thrown away: no need to wait for a clean shutdown


@pytest.fixture(scope="module")
def module_control_plane(fresh_planes) -> Iterator[ControlPlane]:
    """One control plane for a module whose tests only read or write under names of their own
    (each such module checks that the plane ends as it began: calico_cluster.ends_as_it_began)."""
    plane = fresh_planes.take()
    yield plane
    plane.stop(graceful=False)


@pytest.fixture
def harness(control_plane):
    """Hook Jobs run as local processes of the test's environment (fast)."""
    with JobHarness(control_plane, HostRunner(Path(sys.executable).parent)) as running:
        yield running


@pytest.fixture
def image_harness(control_plane, image_builder, program_image):
    """The Job's container in the image built from our Dockerfile (the Job names the image as a
    user's registry would hold it; here it is the local build)."""
    runner = ImageRunner(image_builder, {JOB_IMAGE_NAME: program_image})
    with JobHarness(control_plane, runner) as running:
        yield running


@pytest.fixture
def bundle(tmp_path) -> Path:
    """Manifests on a host path, mounted into the Job as a volume: the air-gapped setup. Real files
    readable by the image's user (a container does not see the host's symlink targets)."""
    root = tmp_path / "bundle"
    for tag in ("v3.28.2", "v3.29.1", "v3.30.7", "v3.31.7", "v3.32.1"):
        (root / tag).mkdir(parents=True)
        shutil.copyfile(manifest_path(tag), root / tag / "operator-crds.yaml")
        (root / tag).chmod(0o755)
    root.chmod(0o755)
    return root


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The long scenarios first: parallel workers (tests/run.sh) take tests in this order, so the
    run does not end with one worker alone on a scenario that started last."""
    def weight(item: pytest.Item) -> int:
        markers = {marker.name for marker in item.iter_markers()}
        return 0 if markers & {"gitops", "slow", "image"} else 1 if "helm" in markers else 2
    items.sort(key=weight)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    skipped = len(terminalreporter.stats.get("skipped", []))
    if os.environ.get("CI") and skipped:
        terminalreporter.write_line(f"CI: {skipped} skipped test(s) count as a failure here", red=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if os.environ.get("CI") and skipped and session.exitstatus == 0:
        session.exitstatus = 1  # a skipped check in CI would be reported as passing
